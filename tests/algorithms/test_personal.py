"""FedPer and FedRep: personal heads stay on the clients, the body is averaged like FedAvg."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from fedfleet.client import FitInstructions, NumpyLogisticRegression, TorchTrainer
from fedfleet.data import ArrayDataset, load_digits
from fedfleet.data.partition import shards, train_test_split_clients
from fedfleet.errors import ConfigError
from fedfleet.models import mlp
from fedfleet.sim import TIMING_KEYS, Federation, Simulation, client_seed
from fedfleet.strategies import FedAvg, weighted_mean
from fedfleet.strategies._personal import HEAD_STATE, FedPer, FedRep, head_mask

LOCAL = FitInstructions(epochs=1, batch_size=16, lr=0.1)


def _factory():
    return nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 4))


def _fed(task, n=4):
    return Federation(task, [np.arange(i, len(task.train), n) for i in range(n)])


def _fedper(trainer, k=4, **kw):
    return FedPer(
        strategy=FedAvg(clients_per_round=k, local=LOCAL), layout=trainer.layout, head=("2.",), **kw
    )


def test_head_mask_selects_by_name_prefix_and_explains_mistakes():
    layout = TorchTrainer(_factory).layout  # 0.weight 160, 0.bias 16, 2.weight 64, 2.bias 4
    mask = head_mask(layout, ("2.",))
    assert mask.sum() == 68 and mask[-68:].all() and not mask[:-68].any()
    assert head_mask(layout, ("2.bias",)).sum() == 4
    with pytest.raises(ConfigError, match=r"'fc\.' matches no tensor.*0\.weight, 0\.bias"):
        head_mask(layout, ("fc.",))
    with pytest.raises(ConfigError, match="cover the whole model"):
        head_mask(layout, ("0.", "2."))
    with pytest.raises(ConfigError, match="list of name prefixes"):
        head_mask(layout, "2.")


def test_the_head_never_leaves_the_client(blobs):
    trainer = TorchTrainer(_factory)
    strategy = _fedper(trainer)
    mask = head_mask(trainer.layout, ("2.",))
    fed = _fed(blobs)
    w0 = trainer.init_vector(0)
    res = strategy.client_fit(trainer, w0, fed.train_data(1), LOCAL, 7, None)
    plain = trainer.fit(w0, fed.train_data(1), LOCAL, 7)  # first time: the global init head
    delta = res.fit.vector - w0
    assert not delta[mask].any()  # exactly zero on the head
    np.testing.assert_array_equal(res.fit.vector[~mask], plain.vector[~mask])
    np.testing.assert_array_equal(res.state[HEAD_STATE], plain.vector[mask])
    # through the engine: the server's head stays the initial one
    sim = Simulation(trainer, fed, strategy, seed=0)
    result = sim.run(3)
    np.testing.assert_array_equal(result.vector[mask], w0[mask])
    assert not np.array_equal(result.vector[~mask], w0[~mask])


def test_body_is_fedavg_restricted_to_the_body(blobs):
    trainer = TorchTrainer(_factory)
    fed = _fed(blobs, n=8)
    strategy = _fedper(trainer)
    result = Simulation(trainer, fed, strategy, seed=2).run(1)
    mask = head_mask(trainer.layout, ("2.",))
    w0 = trainer.init_vector(2)
    plan = strategy.configure_fit(
        1,
        w0,
        {},
        fed.client_ids,
        np.random.default_rng(np.random.SeedSequence(2, spawn_key=(1, 0))),
    )
    fits = [trainer.fit(w0, fed.train_data(c), i, client_seed(2, 1, c)) for c, i in plan]
    mean = weighted_mean([f.vector - w0 for f in fits], [f.num_samples for f in fits])
    expected = np.where(mask, w0, w0 + mean)
    np.testing.assert_allclose(result.vector, expected, rtol=0, atol=1e-7)


def test_heads_persist_across_rounds_in_the_client_store(blobs):
    trainer = TorchTrainer(_factory)
    fed = _fed(blobs)
    mask = head_mask(trainer.layout, ("2.",))
    strategy = _fedper(trainer)
    one = Simulation(trainer, fed, strategy, seed=0)
    x1 = one.run(1).vector
    heads1 = [one.client_states.get(c)[HEAD_STATE] for c in range(4)]
    assert not np.array_equal(heads1[0], heads1[1])
    two = Simulation(trainer, fed, strategy, seed=0)
    result = two.run(2)
    # round 2 by hand: each client starts from the global body and its own round-1 head
    starts = [np.where(mask, 0, x1) for _ in range(4)]
    for c in range(4):
        starts[c][mask] = heads1[c]
    fits = [
        trainer.fit(starts[c], fed.train_data(c), LOCAL, client_seed(0, 2, c)) for c in range(4)
    ]
    mean = weighted_mean([f.vector - s for f, s in zip(fits, starts, strict=True)], [100] * 4)
    np.testing.assert_allclose(result.vector, np.where(mask, x1, x1 + mean), rtol=0, atol=1e-7)
    for c in range(4):
        np.testing.assert_array_equal(two.client_states.get(c)[HEAD_STATE], fits[c].vector[mask])
    # the personalised model is the global body with the client's head
    own = strategy.personalize(result.vector, two.client_states.get(3))
    np.testing.assert_array_equal(own[~mask], result.vector[~mask])
    np.testing.assert_array_equal(own[mask], fits[3].vector[mask])
    assert strategy.personalize(result.vector, None) is result.vector


def test_fedrep_trains_the_head_then_the_body(blobs):
    trainer = TorchTrainer(_factory)
    fed = _fed(blobs)
    mask = head_mask(trainer.layout, ("2.",))
    strategy = FedRep(
        strategy=FedAvg(clients_per_round=4, local=LOCAL),
        layout=trainer.layout,
        head=("2.",),
        head_epochs=2,
    )
    w0 = trainer.init_vector(0)
    data = fed.train_data(0)
    res = strategy.client_fit(trainer, w0, data, LOCAL, 11, None)
    assert not (res.fit.vector - w0)[mask].any()
    assert res.fit.num_steps == 7  # the body epoch: ceil(100 / 16) steps
    assert res.fit.metrics["head_steps"] == 2 * 7  # 2 head epochs, reported, kept local
    assert all(p.requires_grad for p in trainer.model.parameters())  # flags restored

    # head phase oracle: the head alone, trained on the frozen body's features
    layers = trainer.export(w0)
    with torch.no_grad():
        feats = torch.relu(layers[0](torch.as_tensor(data.x))).numpy()
    head_trainer = TorchTrainer(lambda: nn.Linear(16, 4))
    head_seed = int(np.random.SeedSequence(11, spawn_key=(3,)).generate_state(1)[0])
    head = head_trainer.fit(
        w0[mask], ArrayDataset(feats, data.y), dataclasses.replace(LOCAL, epochs=2), head_seed
    ).vector
    np.testing.assert_allclose(res.state[HEAD_STATE], head, rtol=0, atol=1e-6)

    # body phase oracle: an optimizer that steps the body only, starting from the new head
    def body_only(params, lr):
        return torch.optim.SGD(list(params)[:2], lr=lr)

    mid = np.where(mask, 0, w0)
    mid[mask] = res.state[HEAD_STATE]
    body = TorchTrainer(_factory, optimizer=body_only).fit(mid, data, LOCAL, 11).vector
    np.testing.assert_array_equal(res.fit.vector[~mask], body[~mask])


def test_fedrep_needs_a_torch_model(blobs):
    trainer = NumpyLogisticRegression((10,), 4)
    strategy = FedRep(layout=trainer.layout, head=("bias",))
    with pytest.raises(ConfigError, match="head_epochs must be >= 1"):
        FedRep(layout=trainer.layout, head=("bias",), head_epochs=0)
    with pytest.raises(ConfigError, match="FedRep trains the head and the body in separate"):
        strategy.client_fit(
            trainer, trainer.init_vector(0), _fed(blobs).train_data(0), LOCAL, 0, None
        )


def test_a_strategy_built_for_another_layout_is_refused(blobs):
    strategy = _fedper(TorchTrainer(_factory))
    other = TorchTrainer(lambda: nn.Sequential(nn.Linear(10, 8), nn.ReLU(), nn.Linear(8, 4)))
    with pytest.raises(ConfigError, match=r"layout=trainer\.layout"):
        strategy.client_fit(other, other.init_vector(0), _fed(blobs).train_data(0), LOCAL, 0, None)


def _skewed_digits():
    task = load_digits(seed=0)
    parts = shards(task.train.y, num_clients=20, shards_per_client=2, seed=0)
    train, test = train_test_split_clients(parts, test_fraction=0.25, seed=0)
    return Federation(task, train, test)


@pytest.mark.parametrize("kind", ["fedper", "fedrep"])
def test_personal_heads_beat_the_global_model_on_label_skew(kind):
    fed = _skewed_digits()
    trainer = TorchTrainer(lambda: mlp((1, 8, 8), 10, hidden=(32,)))  # head: "3." (last Linear)
    base = FedAvg(clients_per_round=10, local=FitInstructions(epochs=2, batch_size=16, lr=0.1))
    if kind == "fedper":
        strategy = FedPer(strategy=base, layout=trainer.layout, head=("3.",))
    else:
        strategy = FedRep(strategy=base, layout=trainer.layout, head=("3.",), head_epochs=1)
    sim = Simulation(trainer, fed, strategy, seed=0, eval_every=0, federated_eval_every=5)
    final = sim.run(15).final
    assert "client_accuracy_mean" in final and "global_client_accuracy_mean" in final
    assert final["client_accuracy_mean"] > final["global_client_accuracy_mean"] + 0.2
    # and beats FedAvg's global model (a trained head, unlike FedPer's global one)
    fedavg = Simulation(trainer, fed, base, seed=0, eval_every=0, federated_eval_every=15)
    plain = fedavg.run(15).final
    assert "global_client_accuracy_mean" not in plain  # no personalize: keys as before
    assert final["client_accuracy_mean"] > plain["client_accuracy_mean"] + 0.1
    assert final["client_accuracy_mean"] > 0.8
    assert final["client_accuracy_worst10"] <= final["client_accuracy_mean"]
    for key in ("client_accuracy_std", "global_client_accuracy_worst10", "global_client_loss_mean"):
        assert np.isfinite(final[key])


def test_same_seed_gives_bit_identical_runs_and_heads(blobs):
    def run(seed):
        trainer = TorchTrainer(_factory)
        fed = _fed(blobs, n=8)
        sim = Simulation(trainer, fed, _fedper(trainer, k=3), seed=seed)
        result = sim.run(4)
        heads = {c: sim.client_states.get(c) for c in range(8)}
        return result, heads

    (a, ha), (b, hb), (c, _) = run(1), run(1), run(2)
    assert np.array_equal(a.vector, b.vector) and not np.array_equal(a.vector, c.vector)
    strip = [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in a.history]
    assert strip == [{k: v for k, v in h.items() if k not in TIMING_KEYS} for h in b.history]
    for cid in range(8):
        assert (ha[cid] is None) == (hb[cid] is None)
        if ha[cid] is not None:
            assert np.array_equal(ha[cid][HEAD_STATE], hb[cid][HEAD_STATE])
