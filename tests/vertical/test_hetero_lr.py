"""Vertical logistic and linear regression: equal to centralised training on all columns (up to
the fixed-point rounding) and nothing in the clear that a party should not see.

Keys are 1024 bits here to keep the tests fast (deployments use 2048 or more)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes
from sklearn.metrics import roc_auc_score

from fedfleet.vertical import (
    HeteroLR,
    HeteroPredict,
    LocalNetwork,
    PartyError,
    array_to_ints,
    run_parties,
    split_columns,
)

pytest.importorskip("phe")

KEY_BITS = 1024
# the fixed-point rounding (2^-24 per value) moves the weights by ~1e-9 over these runs
WEIGHT_TOL = 1e-6


def _central(x: np.ndarray, y: np.ndarray, proto: HeteroLR) -> np.ndarray:
    """Mini-batch gradient descent on all columns in float64, the same batches: the reference.
    Logistic: the Taylor-approximated loss, residual z/4 - y/2 with y in {-1, +1}."""
    xb = np.hstack([x, np.ones((len(x), 1))])
    w = np.zeros(xb.shape[1])
    rng = np.random.default_rng(proto.seed)
    for _ in range(proto.epochs):
        order = rng.permutation(len(x))
        for s in range(0, len(x), proto.batch_size):
            idx = order[s : s + proto.batch_size]
            z = xb[idx] @ w
            d = 0.25 * z - 0.5 * (2 * y[idx] - 1) if proto.loss == "logistic" else z - y[idx]
            penalty = proto.l2 * w
            penalty[-1] = 0.0
            w = w - proto.lr * (xb[idx].T @ d / len(idx) + penalty)
    return w


def _cancer() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    x, y = load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order].astype(np.float64)
    train, test = slice(0, 455), slice(455, None)
    mean, std = x[train].mean(0), x[train].std(0)
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


def _fit(x, y, columns, proto):
    parties = {p.name: p for p in split_columns(x, y, columns)}
    net = LocalNetwork([*parties, proto.arbiter], timeout_s=600)
    return run_parties(net, proto.programs(parties)), net


def _predict(models, x, y, columns, loss="logistic"):
    parties = {p.name: p for p in split_columns(x, y, columns)}
    net = LocalNetwork(list(parties), timeout_s=600)
    return run_parties(net, HeteroPredict(models=models, loss=loss).programs(parties)), net


def _joined(models, names) -> np.ndarray:
    w = np.concatenate([models[n].weights for n in names])
    return np.append(w, models["guest"].intercept)


TWO = [list(range(0, 10)), list(range(10, 30))]
THREE = [[], list(range(0, 12)), list(range(12, 30))]  # the guest holds labels only


@pytest.fixture(scope="module")
def two_party_run():
    xtr, ytr, xte, yte = _cancer()
    proto = HeteroLR(epochs=2, batch_size=64, lr=0.3, l2=1e-3, key_bits=KEY_BITS, seed=5)
    models, net = _fit(xtr, ytr, TWO, proto)
    return proto, models, net, (xtr, ytr, xte, yte)


def _score(prob: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    return float(((prob > 0.5) == (y == 1)).mean()), float(roc_auc_score(y, prob))


def test_logistic_two_parties_equals_centralised(two_party_run) -> None:
    proto, models, _, (xtr, ytr, xte, yte) = two_party_run
    ref = _central(xtr, ytr, proto)
    np.testing.assert_allclose(_joined(models, ["guest", "host-0"]), ref, rtol=0, atol=WEIGHT_TOL)
    out, net = _predict(models, xte, yte, TWO)
    assert out["host-0"] is None
    acc, auc = _score(out["guest"], yte)
    ref_acc, ref_auc = _score(
        1 / (1 + np.exp(-(np.hstack([xte, np.ones((len(xte), 1))]) @ ref))), yte
    )
    assert acc > 0.9 and auc > 0.95  # it learned something
    assert abs(acc - ref_acc) <= 0.01 and abs(auc - ref_auc) <= 0.01
    # at prediction the guest receives the host's partial scores only (the documented leak)
    (scores,) = net.received("guest")
    np.testing.assert_allclose(scores.decoded().arrays[0], xte[:, 10:] @ models["host-0"].weights)


def test_logistic_guest_with_labels_only_and_two_hosts() -> None:
    xtr, ytr, xte, yte = _cancer()
    proto = HeteroLR(epochs=1, batch_size=50, lr=0.3, key_bits=KEY_BITS, seed=1)
    models, _ = _fit(xtr, ytr, THREE, proto)
    assert models["guest"].weights.shape == (0,) and models["arbiter"] is None
    ref = _central(xtr, ytr, proto)
    got = _joined(models, ["guest", "host-0", "host-1"])
    np.testing.assert_allclose(got, ref, rtol=0, atol=WEIGHT_TOL)
    out, _ = _predict(models, xte, yte, THREE)
    ref_prob = 1 / (1 + np.exp(-(np.hstack([xte, np.ones((len(xte), 1))]) @ ref)))
    np.testing.assert_allclose(out["guest"], ref_prob, atol=1e-6)


def test_linear_regression_equals_centralised() -> None:
    x, y = load_diabetes(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    y = (y - y.mean()) / y.std()
    cols = [[0, 1, 2], [3, 4, 5, 6, 7, 8, 9]]
    proto = HeteroLR(loss="squared", epochs=2, batch_size=64, lr=0.1, key_bits=KEY_BITS, seed=2)
    models, _ = _fit(x, y, cols, proto)
    ref = _central(x, y, proto)
    np.testing.assert_allclose(_joined(models, ["guest", "host-0"]), ref, rtol=0, atol=WEIGHT_TOL)
    out, _ = _predict(models, x, y, cols, loss="squared")
    np.testing.assert_allclose(out["guest"], np.hstack([x, np.ones((len(x), 1))]) @ ref, atol=1e-5)


def test_same_seed_same_weights_bit_for_bit_whatever_the_keys() -> None:
    xtr, ytr, _, _ = _cancer()
    proto = HeteroLR(epochs=1, batch_size=40, key_bits=KEY_BITS, seed=9)
    a, _ = _fit(xtr[:80], ytr[:80], TWO, proto)
    b, _ = _fit(xtr[:80], ytr[:80], TWO, proto)  # fresh keys, fresh masks
    for p in ("guest", "host-0"):
        assert a[p].weights.tobytes() == b[p].weights.tobytes()
    assert a["guest"].intercept == b["guest"].intercept


def _modulus(net: LocalNetwork) -> int:
    (key,) = [d for d in net.log if d.kind == "hlr-public-key" and d.receiver == "guest"]
    return array_to_ints(key.decoded().arrays[0])[0]


def test_what_each_party_sees(two_party_run) -> None:
    proto, _, net, (xtr, ytr, _, _) = two_party_run
    n = _modulus(net)
    small = 2 ** (2 * proto.frac_bits + 40)  # far above any true |gradient sum| in fixed point
    kinds = {p: {d.kind for d in net.received(p)} for p in ("guest", "host-0", "arbiter")}
    assert kinds["host-0"] == {"hlr-public-key", "hlr-residuals", "hlr-unmasked"}
    assert kinds["guest"] == {"hlr-public-key", "hlr-host-scores", "hlr-unmasked"}
    assert kinds["arbiter"] == {"hlr-plan", "hlr-masked-gradient"}
    for party in ("guest", "host-0", "arbiter"):
        for d in net.received(party):
            if d.kind in ("hlr-public-key", "hlr-plan"):
                continue
            (array,) = d.decoded().arrays
            assert array.dtype == np.uint8  # big integers only: no float crosses a party line
            values = array_to_ints(array)
            if d.kind == "hlr-unmasked":
                # what the arbiter decrypted: gradient + a uniform mask mod n, never the
                # gradient itself (a small signed integer) or anything near it
                assert all(small < v < n - small for v in values)
            else:
                # ciphertexts mod n^2: a plaintext (< n) would be in the clear
                assert all(n < v < n * n for v in values)
    # no labels or features of another party as bytes in anything received
    host_bytes = b"".join(d.frame for d in net.received("host-0"))
    guest_bytes = b"".join(d.frame for d in net.received("guest"))
    for row in range(0, len(xtr), 50):
        assert xtr[row, :10].tobytes() not in host_bytes
        assert xtr[row, 10:].tobytes() not in guest_bytes
        assert (2 * ytr[row : row + 8] - 1).tobytes() not in host_bytes


def test_unaligned_parties_are_refused() -> None:
    xtr, ytr, _, _ = _cancer()
    guest, host = split_columns(xtr, ytr, TWO)
    short = type(host)(host.name, host.ids[:10], host.x[:10])
    with pytest.raises(PartyError, match="host-0 has 10 rows, the guest 455: align"):
        HeteroLR(key_bits=KEY_BITS).programs({"guest": guest, "host-0": short})
    with pytest.raises(PartyError, match="labels in"):
        HeteroLR().programs(
            {"guest": type(guest)("guest", guest.ids, guest.x, guest.y + 2), "host-0": host}
        )
