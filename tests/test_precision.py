"""``precision = "bf16"``: mixed-precision local steps (bfloat16 autocast, float32 weights) for the
language models, from the trainer and from the config; float32 stays the default."""

from __future__ import annotations

import numpy as np
import pytest

from fedfleet.client import FitInstructions, TorchTrainer
from fedfleet.data._text import VOCAB_SIZE, text_task
from fedfleet.errors import ConfigError
from fedfleet.models import causal_transformer, char_lstm
from fedfleet.runs import load_config
from fedfleet.runs._build import build_run

TEXT = {"ann": "the cat sat on the mat. " * 20, "bob": "a rat ran to the barn. " * 20}


def _task():
    return text_task(TEXT, "t", window=12)


@pytest.mark.parametrize(
    "build",
    [
        lambda: causal_transformer(VOCAB_SIZE, 12, d_model=32, layers=2, heads=4),
        lambda: char_lstm(VOCAB_SIZE, hidden=32),
    ],
    ids=["transformer", "char-lstm"],
)
def test_bf16_local_steps_learn_as_fp32_does_and_repeat_bit_for_bit(build):
    task = _task()
    local = FitInstructions(epochs=3, batch_size=16, lr=3e-3)
    results = {}
    for precision in ("fp32", "bf16", "bf16"):
        trainer = TorchTrainer(build, optimizer="adam", precision=precision)
        start = trainer.init_vector(0)
        try:
            fit = trainer.fit(start, task.train, local, seed=1)
        except ConfigError as e:  # oneDNN's LSTM has bf16 only on CPUs with bf16 units
            assert "use precision = 'fp32'" in str(e)
            pytest.skip(f"no bf16 kernel on this CPU: {e}")
        before = trainer.evaluate(start, task.test).loss
        after = trainer.evaluate(fit.vector, task.test)  # evaluation is float32 either way
        assert fit.vector.dtype == np.float32
        assert after.loss < 0.6 * before
        if precision in results:
            assert np.array_equal(fit.vector, results[precision][0])  # same seed, same bits
        results[precision] = (fit.vector, after.loss)
    fp32, bf16 = results["fp32"], results["bf16"]
    assert not np.array_equal(fp32[0], bf16[0])  # bfloat16 products did run
    # stated tolerance: bf16's held-out loss within 10% of fp32's after the same steps
    assert abs(bf16[1] - fp32[1]) <= 0.1 * fp32[1]


def test_an_unknown_precision_is_refused():
    with pytest.raises(ConfigError, match=r"precision 'fp16' is not one of fp32, bf16"):
        TorchTrainer(lambda: char_lstm(VOCAB_SIZE, hidden=8), precision="fp16")


def test_client_precision_from_the_config_trains_client_by_client(tmp_path):
    for name, text in TEXT.items():
        (tmp_path / f"{name}.txt").write_text(text)
    overrides = [
        "seed=1", "rounds=2", "data.name=text", f"data.path={tmp_path}", "data.window=8",
        "model.name=transformer", "model.d_model=16", "model.heads=2",
        "strategy.clients_per_round=2", "client.optimizer=adam", "client.lr=0.003",
    ]  # fmt: skip
    pieces = build_run(load_config(None, [*overrides, "client.precision=bf16"]))
    assert pieces.executor == "sequential (bf16 autocast)"
    assert pieces.simulation.trainer.precision == "bf16"
    history = pieces.simulation.run(2).history
    assert history[-1]["test_loss"] < history[0]["train_loss"]
    assert build_run(load_config(None, overrides)).simulation.trainer.precision == "fp32"
    with pytest.raises(ConfigError, match="trains in float32"):
        build_run(load_config(None, [*overrides, "client.precision=bf16", "executor=vectorised"]))
    with pytest.raises(ConfigError, match=r"client\.precision"):
        load_config(None, [*overrides, "client.precision=fp8"])
