"""The character LSTM and the causal transformer, and federated runs of them on a text folder
from the Python API and the command line: what executor ``auto`` picks, the perplexity and byte
counts in the round record, and bit-identical reruns."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fedfleet._threads import cores
from fedfleet.errors import ConfigError
from fedfleet.models import causal_transformer, char_lstm
from fedfleet.runs import load_config
from fedfleet.runs._build import build_run
from fedfleet.sim import TIMING_KEYS


def _lstm_params(vocab: int, embed: int, hidden: int, layers: int) -> int:
    """Parameters by the LSTM's equations: four gates, each with input and recurrent weights
    and two biases (PyTorch keeps b_ih and b_hh)."""
    inputs = [embed] + [hidden] * (layers - 1)
    recurrent = sum(4 * hidden * (n + hidden + 2) for n in inputs)
    return vocab * embed + recurrent + hidden * vocab + vocab


def test_the_leaf_lstm_has_the_papers_shape():
    model = char_lstm(97)
    assert sum(p.numel() for p in model.parameters()) == _lstm_params(97, 8, 256, 2)
    assert model.embedding.embedding_dim == 8
    assert (model.lstm.hidden_size, model.lstm.num_layers) == (256, 2)
    assert model(torch.randint(0, 97, (3, 80))).shape == (3, 97)


def test_the_transformer_is_causal_and_reads_out_the_last_position():
    torch.manual_seed(0)
    model = causal_transformer(97, context=12, d_model=16, layers=2, heads=2)
    x = torch.randint(0, 97, (4, 12))
    changed = x.clone()
    changed[:, 7] = (changed[:, 7] + 1) % 97
    a, b = model.sequence_logits(x), model.sequence_logits(changed)
    assert torch.equal(a[:, :7], b[:, :7])  # positions before 7 cannot see token 7
    assert not torch.allclose(a[:, 7:], b[:, 7:])
    assert torch.equal(model(x), a[:, -1])
    with pytest.raises(ValueError, match="13 tokens exceed the model's context of 12"):
        model(torch.zeros(1, 13, dtype=torch.int64))
    with pytest.raises(ConfigError, match="divisible by heads"):
        causal_transformer(97, 12, d_model=10, heads=4)


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """Three clients whose text repeats a phrase: predictable from a few characters."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    for name, phrase in (("ann", "the cat sat. "), ("bob", "the rat ran. "), ("cy", "a cat ran. ")):
        (folder / f"{name}.txt").write_text(phrase * 30)
    return folder


def _config(corpus: Path, *extra: str, model: tuple[str, ...] = ("char-lstm", "hidden=16")):
    name, *params = model
    return load_config(
        None,
        [
            "seed=5",
            "rounds=6",
            "data.name=text",
            f"data.path={corpus}",
            "data.window=8",
            f"model.name={name}",
            *(f"model.{p}" for p in params),
            "strategy.clients_per_round=3",
            "client.batch_size=16",
            "client.lr=1.0",
            "eval.federated_every=1",
            *extra,
        ],
    )


def test_a_tiny_lstm_learns_the_clients_text_with_perplexity_and_bytes_in_the_record(corpus):
    config = _config(corpus)
    pieces = build_run(config)
    assert pieces.executor == "sequential (a language model, client by client)"
    history = pieces.simulation.run(config.rounds).history
    size = pieces.simulation.trainer.layout.size
    for r in history:
        assert r["test_perplexity"] == math.exp(r["test_loss"])
        assert r["client_perplexity"] == math.exp(r["client_loss_mean"])
        assert r["uplink_bytes"] == r["downlink_bytes"] == 3 * size * 4
    first, last = history[0], history[-1]
    assert last["test_perplexity"] < first["test_perplexity"] / 2
    assert last["test_accuracy"] > 0.5 > first["test_accuracy"]

    again = build_run(config).simulation.run(config.rounds).history
    strip = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in history]
    assert strip == [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in again]


def test_the_transformer_trains_on_the_same_task(corpus):
    # lr 1.0 sits at SGD's edge of stability for this transformer (some seeds diverge)
    config = _config(
        corpus, "rounds=2", "client.lr=0.3", model=("transformer", "d_model=16", "heads=2")
    )
    pieces = build_run(config)
    history = pieces.simulation.run(config.rounds).history
    assert history[-1]["test_loss"] < history[0]["train_loss"]
    assert history[-1]["test_perplexity"] == math.exp(history[-1]["test_loss"])


@pytest.mark.skipif(cores() < 2, reason="threaded lanes need 2 cores")
def test_auto_trains_a_full_size_lstm_one_client_per_core(corpus):
    pieces = build_run(_config(corpus, model=("char-lstm",)))
    assert pieces.executor.startswith("threaded")


def test_executors_and_datasets_that_cannot_take_a_language_model_say_so(corpus):
    with pytest.raises(ConfigError, match=r"torch\.func\.vmap has no batching rule"):
        build_run(_config(corpus, "executor=vectorised"))
    with pytest.raises(ConfigError, match=r"does not fit data.name = 'digits'.*'mlp'"):
        load_config(None, ["model.name=char-lstm"])
    with pytest.raises(ConfigError, match=r"token windows \(text\).*'char-lstm' or 'transformer'"):
        _config(corpus, model=("mlp",))


def test_fedfleet_run_from_the_command_line(corpus, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedfleet",
            "run",
            "-q",
            "--out",
            str(out),
            *(
                arg
                for kv in (
                    "rounds=2",
                    "data.name=text",
                    f"data.path={corpus}",
                    "data.window=8",
                    "model.name=char-lstm",
                    "model.hidden=16",
                    "strategy.clients_per_round=2",
                )
                for arg in ("--set", kv)
            ),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2]
    assert rows[-1]["test_perplexity"] == pytest.approx(math.exp(rows[-1]["test_loss"]))
    assert rows[-1]["uplink_bytes"] > 0


def test_threaded_lanes_train_the_lstm_bit_for_bit_as_the_sequential_loop(corpus):
    runs = {}
    for executor in ("sequential", "threaded"):
        config = _config(corpus, "rounds=2", f"executor={executor}")
        pieces = build_run(config)
        assert pieces.executor.startswith(executor)
        runs[executor] = pieces.simulation.run(config.rounds).vector
    assert np.array_equal(runs["sequential"], runs["threaded"])


def test_lora_adapts_the_transformers_attention_and_mlp_and_every_adapter_learns():
    """Regression: with nn.MultiheadAttention, peft's adapter on ``out_proj`` was never used
    (MHA reads ``out_proj.weight`` directly), so it travelled without ever training."""
    pytest.importorskip("peft")
    from fedfleet.models import LoraSpec, lora_factory

    def build() -> torch.nn.Module:
        return causal_transformer(97, context=12, d_model=16, layers=2, heads=2)

    model = lora_factory(build, LoraSpec(rank=2))()
    for name, p in model.named_parameters():  # B starts at zero: give A and B values
        torch.nn.init.normal_(p, generator=torch.Generator().manual_seed(len(name)))
    model(
        torch.randint(0, 97, (3, 12), generator=torch.Generator().manual_seed(1))
    ).sum().backward()
    adapted = sorted(
        {n.split(".lora_")[0].removeprefix("base_model.model.") for n in model.state_dict()}
    )
    assert adapted == [f"blocks.{i}.{m}" for i in (0, 1) for m in ("fc1", "fc2", "proj", "qkv")] + [
        "head"
    ]
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
