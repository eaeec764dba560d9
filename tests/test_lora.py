"""LoRA adapters through peft: only adapters travel, the frozen base never changes, and FFA-LoRA's
aggregate is exactly the clients' mean weight update. Tiny models defined here; seconds each."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from fedfleet._codec import encode_results, to_frame
from fedfleet.client import EvalResult, FitInstructions, FitResult, TorchTrainer
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError
from fedfleet.models import (
    LoraSpec,
    adapter_factors,
    from_base,
    lora_factory,
    pretrain_base,
    product_gap,
    save_base,
    split_for_pretraining,
)
from fedfleet.params import Layout
from fedfleet.runs._build import build_federation, build_run, build_strategy, load_task_for
from fedfleet.runs._config import validate_config
from fedfleet.runs._models import model_factory
from fedfleet.sim import Simulation
from fedfleet.strategies import ClientResult

peft = pytest.importorskip("peft")

VOCAB, DIM, SEQ = 12, 16, 6


class TinyAttention(nn.Module):
    """One causal self-attention block and a next-token head: the Linear layers a language
    model adapts (q, k, v, o, the MLP), with an embedding and a LayerNorm that stay frozen."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.norm = nn.LayerNorm(DIM)
        self.q, self.k, self.v, self.o = (nn.Linear(DIM, DIM) for _ in range(4))
        self.ff = nn.Sequential(nn.Linear(DIM, 2 * DIM), nn.GELU(), nn.Linear(2 * DIM, DIM))
        self.head = nn.Linear(DIM, VOCAB)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.norm(self.embed(tokens))
        att = nn.functional.scaled_dot_product_attention(
            self.q(h), self.k(h), self.v(h), is_causal=True
        )
        h = h + self.o(att)
        h = h + self.ff(h)
        return self.head(h[:, -1])  # the next token after the window


def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))


def token_data(n: int, seed: int) -> ArrayDataset:
    """Windows of a counting sequence with a per-client stride: the next token is predictable."""
    rng = np.random.default_rng(seed)
    start = rng.integers(0, VOCAB, size=(n, 1))
    stride = 1 + seed % 3
    seq = (start + stride * np.arange(SEQ + 1)) % VOCAB
    return ArrayDataset(seq[:, :SEQ].astype(np.int64), seq[:, SEQ].astype(np.int64))


def digit_like(n: int, seed: int) -> ArrayDataset:
    rng = np.random.default_rng(seed)
    return ArrayDataset(
        rng.normal(size=(n, 1, 8, 8)).astype(np.float32), rng.integers(0, 10, n).astype(np.int64)
    )


def frozen(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every tensor of the model outside its state_dict (the frozen base, and A under FFA)."""
    state = model.state_dict()
    return {n: b.clone() for n, b in model.named_buffers() if n not in state}


CASES = {
    "mlp": (mlp, None, digit_like),
    "attention-qv": (TinyAttention, ("q", "v"), token_data),
}


@pytest.mark.parametrize("freeze_a", [False, True], ids=["lora", "ffa-lora"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_only_adapter_tensors_are_in_the_layout_and_on_the_wire(case, freeze_a):
    build, targets, _ = CASES[case]
    spec = LoraSpec(rank=4, alpha=8, targets=targets, freeze_a=freeze_a)
    layout = TorchTrainer(lora_factory(build, spec)).layout
    # what peft itself says trains, on a model it adapted on its own
    linear = [n for n, m in build().named_modules() if isinstance(m, nn.Linear)]
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(targets or linear))
    reference = peft.get_peft_model(build(), config)
    trainable = dict(
        (n.removesuffix(".weight"), p.numel())
        for n, p in reference.named_parameters()
        if p.requires_grad
    )
    assert sum(trainable.values()) == reference.get_nb_trainable_parameters()[0]
    expected = {n: k for n, k in trainable.items() if not freeze_a or ".lora_B." in n}
    # our adapter's name is a digest of the base (adapter_name), peft's default is "default"
    adapter = {s.name.split(".")[-2] for s in layout.specs}
    assert len(adapter) == 1 and re.fullmatch("b[0-9a-f]{12}", adapter.pop())
    got = {
        re.sub(r"\.b[0-9a-f]{12}$", ".default", s.name.removesuffix(".weight")): s.numel
        for s in layout.specs
    }
    assert got == expected
    assert all(".lora_B." in n or (".lora_A." in n and not freeze_a) for n in layout.names)
    # the update a client sends: the adapters' float32 bytes plus a small header
    vector = np.zeros(layout.size, np.float32)
    frame = to_frame(encode_results([ClientResult(FitResult(vector, 10, 1, {}))], with_state=False))
    full = Layout.from_module(build()).size
    assert layout.size * 4 <= len(frame) < layout.size * 4 + 1024
    assert layout.size < full / 2


@pytest.mark.parametrize("case", sorted(CASES))
def test_frozen_base_is_bit_identical_after_every_clients_fit_and_in_exports(case, tmp_path):
    build, targets, data = CASES[case]
    torch.manual_seed(123)
    base_file = save_base(build(), tmp_path / "base.safetensors")
    factory = lora_factory(build, LoraSpec(rank=2, targets=targets, base=base_file))
    trainer = TorchTrainer(factory, optimizer="sgd")
    before = frozen(trainer.model)
    # the base file's tensors are the frozen ones: peft's names wrap the plain model's
    plain = build()
    plain.load_state_dict(load_file(str(base_file)))
    for name, t in plain.state_dict().items():
        wrapped = "base_model.model." + name
        if wrapped not in before:
            head, _, leaf = wrapped.rpartition(".")
            wrapped = f"{head}.base_layer.{leaf}"
        assert torch.equal(before[wrapped], t), name
    vector = trainer.init_vector(0)
    instructions = FitInstructions(epochs=2, batch_size=8, lr=0.5)
    for client in range(3):
        fit = trainer.fit(vector, data(40, client), instructions, seed=client)
        assert not np.array_equal(fit.vector, vector)  # the adapters did train
        after = frozen(trainer.model)
        assert after.keys() == before.keys()
        assert all(torch.equal(after[n], before[n]) for n in before), f"client {client}"
        vector = fit.vector
    exported = frozen(trainer.export(vector))
    assert all(torch.equal(exported[n], before[n]) for n in before)


class Recording:
    """A trainer that keeps every fit's result, so a test can aggregate them by hand."""

    def __init__(self, inner: TorchTrainer) -> None:
        self.inner = inner
        self.fits: list[FitResult] = []

    @property
    def layout(self) -> Layout:
        return self.inner.layout

    def init_vector(self, seed: int) -> np.ndarray:
        return self.inner.init_vector(seed)

    def fit(self, vector, data, instructions, seed) -> FitResult:
        result = self.inner.fit(vector, data, instructions, seed)
        self.fits.append(result)
        return result

    def evaluate(self, vector: np.ndarray, data: ArrayDataset) -> EvalResult:
        return self.inner.evaluate(vector, data)


def digits_config(**model: object) -> dict:
    return {
        "seed": 5,
        "rounds": 1,
        "data": {"name": "digits", "num_clients": 4},
        "model": {"name": "mlp", "hidden": [32], "lora_rank": 4, **model},
        "strategy": {"name": "fedavg", "clients_per_round": 4},
        "client": {"epochs": 2, "batch_size": 16, "lr": 0.5},
        "eval": {"every": 1},
    }


def one_round(raw: dict) -> tuple[Recording, np.ndarray]:
    """One FedAvg round of all clients: (their fits, the aggregate)."""
    cfg = validate_config(raw)
    task = load_task_for(cfg)
    fed = build_federation(cfg, task)
    trainer = Recording(TorchTrainer(model_factory(cfg.model, task), optimizer="sgd"))
    strategy = build_strategy(cfg, trainer.inner, fed.num_clients)
    sim = Simulation(trainer, fed, strategy, seed=cfg.seed, eval_every=1)
    return trainer, sim.run(1).vector


def test_ffa_lora_aggregate_times_a_is_the_weighted_mean_of_the_clients_products():
    """FFA-LoRA's definition: with A shared, FedAvg of the B's (weights: sample counts) gives
    B_agg A = sum_k w_k B_k A, to float32 rounding (relative 1e-5); plain LoRA's separate
    averaging of A and B misses the mean of the products by far more."""
    gaps = {}
    for freeze_a in (True, False):
        rec, aggregate = one_round(digits_config(lora_freeze_a=freeze_a))
        assert len(rec.fits) == 4
        model, layout = rec.inner.model, rec.layout
        clients = [adapter_factors(model, layout.unflatten(f.vector)) for f in rec.fits]
        weights = np.array([f.num_samples for f in rec.fits], float)
        merged = adapter_factors(model, layout.unflatten(aggregate))
        w = weights / weights.sum()
        num = den = 0.0
        for layer, got in merged.items():
            want = sum(wk * c[layer].product for wk, c in zip(w, clients, strict=True))
            num += float(np.sum((got.product - want) ** 2))
            den += float(np.sum(want**2))
        gaps[freeze_a] = (np.sqrt(num / den), product_gap(clients, weights))
        if freeze_a:  # every client's A is the one shared, seeded A
            a0 = {k: f.a for k, f in adapter_factors(model).items()}
            assert all(np.array_equal(c[k].a, a0[k]) for c in clients for k in a0)
    assert gaps[True][0] < 1e-5 and gaps[True][1] < 1e-6
    assert gaps[False][1] > 100 * gaps[True][1] and gaps[False][1] > 1e-4
    assert gaps[False][0] == pytest.approx(gaps[False][1], rel=1e-3)


def test_same_seed_gives_bit_identical_runs_and_another_base_seed_another_model():
    runs = [build_run(validate_config(digits_config() | {"rounds": 2})) for _ in "ab"]
    a, b = (r.simulation.run(2) for r in runs)
    assert np.array_equal(a.vector, b.vector)
    assert [h["test_loss"] for h in a.history] == [h["test_loss"] for h in b.history]
    other = build_run(validate_config(digits_config(base_seed=1) | {"rounds": 2}))
    assert not np.array_equal(other.simulation.run(2).vector, a.vector)


def test_pretrained_base_then_federated_lora_on_the_other_clients(tmp_path):
    cfg = validate_config(digits_config())
    task = load_task_for(cfg)
    fed = build_federation(cfg, task)
    pooled, rest = split_for_pretraining(fed, [0, 1])
    assert len(pooled) == fed.num_samples(0) + fed.num_samples(1)
    assert rest.num_clients == 2 and rest.num_samples(0) == fed.num_samples(2)

    def build() -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    path = pretrain_base(build, pooled, tmp_path / "a.safetensors", epochs=3, lr=0.2)
    again = pretrain_base(build, pooled, tmp_path / "b.safetensors", epochs=3, lr=0.2)
    assert path.read_bytes() == again.read_bytes()
    base_model = from_base(build, path)()
    plain = TorchTrainer(build)
    base_vector = Layout.from_module(base_model).flatten(base_model.state_dict())
    base_eval = plain.evaluate(base_vector, task.test)
    trainer = TorchTrainer(lora_factory(build, LoraSpec(rank=4, freeze_a=True, base=path)))
    zero = trainer.evaluate(trainer.init_vector(0), task.test)
    assert zero.loss == pytest.approx(base_eval.loss, rel=1e-6)  # B = 0: the base itself
    strategy = build_strategy(cfg, trainer, rest.num_clients)
    result = Simulation(trainer, rest, strategy, seed=0, eval_every=1).run(5)
    assert result.history[-1]["test_loss"] < base_eval.loss


def test_config_errors_name_the_key_and_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="lora_alpha set without lora_rank"):
        validate_config({"model": {"lora_alpha": 16}})
    with pytest.raises(ConfigError, match="lora_rank"):
        validate_config({"model": {"lora_rank": 0}})
    cfg = validate_config(digits_config(lora_targets=["nope"]))
    with pytest.raises(ConfigError, match=r"LoRA targets \['nope'\] match no module.*nn.Linear"):
        model_factory(cfg.model, load_task_for(cfg))()
    wrong = save_base(nn.Linear(3, 2), tmp_path / "wrong.safetensors")
    cfg = validate_config(digits_config(base=str(wrong)))
    with pytest.raises(ConfigError, match="does not fit the model: missing"):
        model_factory(cfg.model, load_task_for(cfg))()
    cfg = validate_config(digits_config() | {"executor": "vectorised"})
    with pytest.raises(ConfigError, match=r"cannot train from model\.base or LoRA"):
        build_run(cfg)


def test_readme_lora_example_runs_and_federates_only_b(tmp_path, monkeypatch):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = next(b for b in readme.split("```python\n")[1:] if "lora_factory" in b)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(block.split("```")[0], "README.md", "exec"), namespace)
    layout = namespace["trainer"].layout
    assert layout.names and all(".lora_B." in n for n in layout.names)
    assert len(namespace["result"].history) == 5
    assert (tmp_path / "base.safetensors").exists()


def test_threaded_and_process_executors_train_lora_bit_identically_to_sequential():
    """Every lane and worker builds the same base and A from the seed (one torch thread each)."""
    vectors = {}
    for executor in ("sequential", "threaded", "process"):
        raw = digits_config(lora_freeze_a=True) | {"rounds": 2, "executor": executor}
        pieces = build_run(validate_config(raw | {"threads": 1 if executor == "sequential" else 2}))
        assert pieces.executor.startswith(executor)
        vectors[executor] = pieces.simulation.run(2).vector
    assert np.array_equal(vectors["threaded"], vectors["sequential"])
    assert np.array_equal(vectors["process"], vectors["sequential"])


def test_dpsgd_trains_the_adapters_only():
    """DP-SGD's per-sample gradients (torch.func over the layout's tensors) cover B alone; the
    frozen base and A stay buffers of the module and come back as built."""
    raw = digits_config(lora_freeze_a=True) | {"rounds": 2}
    raw["privacy"] = {"sgd_noise_multiplier": 1.0, "sgd_clip_norm": 1.0}
    cfg = validate_config(raw)
    pieces = build_run(cfg)
    trainer = pieces.simulation.trainer
    assert type(trainer).__name__ == "DPSGDTrainer"
    assert trainer.layout.names and all(".lora_B." in n for n in trainer.layout.names)
    result = pieces.simulation.run(2)
    assert result.history[-1]["dpsgd_epsilon_max"] > 0
    assert not np.array_equal(result.vector, trainer.init_vector(cfg.seed))
    built = frozen(model_factory(cfg.model, pieces.task)())
    exported = frozen(trainer.export(result.vector))
    assert exported.keys() == built.keys()
    assert all(torch.equal(exported[n], built[n]) for n in built)


def test_default_targets_are_every_linear_even_where_names_nest():
    """'1' names a Sequential here and '1.1' a Linear inside it: the default adapts exactly the
    three Linear layers (a plain-name target '1' would reach the Sequential, which peft refuses)."""

    def build() -> nn.Module:
        return nn.Sequential(
            nn.Linear(4, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 4)), nn.Linear(4, 2)
        )

    layout = TorchTrainer(lora_factory(build, LoraSpec(rank=2, freeze_a=True))).layout
    assert [n.split(".lora_B.")[0] for n in layout.names] == [
        "base_model.model.0",
        "base_model.model.1.1",
        "base_model.model.2",
    ]
    assert layout.size == 2 * (4 + 4 + 2)


def test_another_base_is_another_layout_so_a_server_refuses_its_updates(tmp_path):
    """The adapters are named after a digest of the base and the settings: the layout's
    fingerprint (what the server checks at registration and on every update) tells apart
    parties whose bases differ, and not parties holding the same bytes at another path."""
    torch.manual_seed(0)
    first = save_base(mlp(), tmp_path / "a.safetensors")
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(first.read_bytes())
    torch.manual_seed(1)
    other = save_base(mlp(), tmp_path / "b.safetensors")

    def fingerprint(base, **kw) -> str:
        spec = LoraSpec(rank=2, base=base, **kw)
        return TorchTrainer(lora_factory(mlp, spec)).layout.fingerprint

    assert fingerprint(first) == fingerprint(copy)
    assert fingerprint(first) != fingerprint(other)
    assert fingerprint(first) != fingerprint(first, seed=1)  # another A
