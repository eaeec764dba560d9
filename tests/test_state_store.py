"""Per-client state: the stores, and the engine keeping a client's state between its rounds."""

import dataclasses

import numpy as np
import pytest
from torch import nn

from fedfleet.client import DiskStateStore, FitInstructions, MemoryStateStore, TorchTrainer
from fedfleet.errors import FedfleetError, UpdateRejected
from fedfleet.params import Layout
from fedfleet.sim import Federation, Simulation
from fedfleet.strategies import ClientResult, ClientUpdate, FedAvg
from fedfleet.validation import validate_update


@pytest.mark.parametrize(
    "make", [lambda tmp: MemoryStateStore(), lambda tmp: DiskStateStore(tmp / "s", num_clients=10)]
)
def test_store_get_put(tmp_path, make):
    store = make(tmp_path)
    assert store.get(3) is None and len(store) == 0
    v = np.arange(5, dtype=np.float32)
    store.put(3, {"c": v})
    v[0] = 99  # the store keeps its own copy
    got = store.get(3)
    assert np.array_equal(got["c"], np.arange(5, dtype=np.float32)) and len(store) == 1


def test_disk_store_reopens_and_checks_sizes(tmp_path):
    store = DiskStateStore(tmp_path, num_clients=1000)
    store.put(7, {"c": np.full(4, 2.0, np.float32), "h": np.ones(2, np.float32)})
    store.flush()
    again = DiskStateStore(tmp_path, num_clients=1000)
    assert np.array_equal(again.get(7)["c"], np.full(4, 2.0, np.float32))
    assert again.get(8) is None and len(again) == 1
    with pytest.raises(FedfleetError, match="client 7 state 'c' has 3 values, expected 4"):
        again.put(7, {"c": np.zeros(3, np.float32)})
    with pytest.raises(FedfleetError, match="outside"):
        again.get(1000)
    # a sparse file: a million-client store with nothing written costs next to no disk
    big = DiskStateStore(tmp_path / "big", num_clients=1_000_000)
    big.put(999_999, {"c": np.ones(1000, np.float32)})
    big.flush()
    used = sum(p.stat().st_blocks * 512 for p in (tmp_path / "big").iterdir())
    assert used < 50_000_000  # the dense matrix would be 4 GB


@dataclasses.dataclass(frozen=True, kw_only=True)
class _Counting(FedAvg):
    """FedAvg whose clients count their participations in their own state and upload an extra."""

    bad_extra_for: int = -1

    def client_fit(self, trainer, vector, data, instructions, seed, state):
        fit = trainer.fit(vector, data, instructions, seed)
        seen = 0.0 if state is None else float(state["seen"][0])
        extra = np.zeros(trainer.layout.size, np.float32)
        if seed == self.bad_extra_for:
            extra[0] = np.nan
        return ClientResult(fit, {"probe": extra}, {"seen": np.array([seen + 1], np.float32)})


def _factory():
    return nn.Linear(10, 4)


def test_engine_keeps_state_only_for_accepted_updates(blobs):
    from fedfleet.sim import client_seed

    parts = [np.arange(i, 400, 4) for i in range(4)]
    fed = Federation(blobs, parts)
    local = FitInstructions(epochs=1, batch_size=32, lr=0.1)
    # every client every round; client 2's extra is NaN in round 2
    strategy = _Counting(clients_per_round=4, local=local, bad_extra_for=client_seed(0, 2, 2))
    sim = Simulation(TorchTrainer(_factory), fed, strategy, seed=0)
    result = sim.run(3)
    assert [h["num_rejected"] for h in result.history] == [0, 1, 0]
    assert "extra 'probe' has non-finite" in str(result.rejected[0])
    seen = [float(sim.client_states.get(c)["seen"][0]) for c in range(4)]
    assert seen == [3.0, 3.0, 2.0, 3.0]


def test_extras_must_be_layout_sized_float32():
    layout = Layout.from_shapes({"w": (4,)})
    ok = ClientUpdate(0, np.zeros(4, np.float32), 1, 1, {}, {"c": np.zeros(4, np.float32)})
    validate_update(ok, layout, 1, {0})
    bad = dataclasses.replace(ok, extras={"c": np.zeros(3, np.float32)})
    with pytest.raises(UpdateRejected, match=r"extra 'c' has shape \(3,\)"):
        validate_update(bad, layout, 1, {0})
