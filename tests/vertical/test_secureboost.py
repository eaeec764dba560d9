"""SecureBoost: the federated trees are the centralised ones; no party sees what it must not."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedfleet.errors import ConfigError, DatasetError
from fedfleet.vertical import (
    LocalNetwork,
    Message,
    PartyData,
    PartyError,
    SecureBoost,
    SecureBoostHostModel,
    array_to_ints,
    fit_plain,
    ints_to_array,
    predict_plain,
    prediction_programs,
    run_parties,
    split_columns,
)

phe = pytest.importorskip("phe")
pytest.importorskip("gmpy2")
datasets = pytest.importorskip("sklearn.datasets")
metrics = pytest.importorskip("sklearn.metrics")

COLUMNS = [list(range(0, 8)), list(range(8, 19)), list(range(19, 30))]  # guest, host-0, host-1


@pytest.fixture(scope="module")
def keys() -> tuple[Any, Any]:
    return phe.paillier.generate_paillier_keypair(n_length=1024)


@pytest.fixture(scope="module")
def cancer() -> tuple[np.ndarray, np.ndarray]:
    x, y = datasets.load_breast_cancer(return_X_y=True)
    order = np.random.default_rng(0).permutation(len(y))
    return x[order], y[order].astype(np.float64)


def _parties(x: np.ndarray, y: np.ndarray, columns: list[list[int]]) -> dict[str, PartyData]:
    return {p.name: p for p in split_columns(x, y, columns)}


@pytest.fixture(scope="module")
def trained(cancer, keys) -> dict[str, Any]:
    x, y = cancer
    train = _parties(x[:400], y[:400], COLUMNS)
    test = _parties(x[400:], y[400:], COLUMNS)
    settings = SecureBoost(trees=2, max_depth=3, bins=8, key_bits=1024, keys=keys)
    net = LocalNetwork(list(train))
    out = run_parties(net, settings.programs(train))
    hosts = {k: v for k, v in out.items() if k != "guest"}
    pnet = LocalNetwork(list(test))
    scores = run_parties(pnet, prediction_programs(out["guest"], hosts, test))["guest"]
    return dict(
        settings=settings,
        train=train,
        test=test,
        net=net,
        pnet=pnet,
        model=out["guest"],
        hosts=hosts,
        scores=scores,
    )


def test_the_federated_trees_are_the_centralised_trees(trained) -> None:
    s, train, test = trained["settings"], trained["train"], trained["test"]
    names = ["guest", "host-0", "host-1"]
    trees, edges, base = fit_plain([train[p].x for p in names], train["guest"].y, s)
    model = trained["model"]
    assert model.hosts == ("host-0", "host-1") and model.base == base
    assert len(model.trees) == len(trees) == 2
    splits_by_party = [0, 0, 0]
    for fed, plain in zip(model.trees, trees, strict=True):
        assert fed.party == plain.party and fed.left == plain.left and fed.right == plain.right
        assert fed.weight == plain.weight  # exactly: same integer sums, same float steps
        for k, p in enumerate(plain.party):
            if p == 0:
                assert (fed.feature[k], fed.bin[k]) == (plain.feature[k], plain.bin[k])
            elif p > 0:  # the guest holds the host's split id; the host the threshold
                table: SecureBoostHostModel = trained["hosts"][names[p]]
                assert table.feature[fed.feature[k]] == plain.feature[k]
                assert table.threshold[fed.feature[k]] == edges[p][plain.feature[k]][plain.bin[k]]
                assert fed.bin[k] == -1
            if p >= 0:
                splits_by_party[p] += 1
    assert min(splits_by_party) > 0, f"every party should hold a split: {splits_by_party}"
    np.testing.assert_array_equal(
        model.train_score, predict_plain(trees, edges, base, [train[p].x for p in names])
    )
    central = predict_plain(trees, edges, base, [test[p].x for p in names])
    np.testing.assert_array_equal(trained["scores"], central)
    y_test = test["guest"].y
    auc = metrics.roc_auc_score(y_test, trained["scores"])
    acc = float(np.mean((trained["scores"] > 0) == (y_test == 1)))
    assert auc == metrics.roc_auc_score(y_test, central) and auc > 0.95 and acc > 0.9


def _floats_in(body: Any) -> list[float]:
    """Every real number in a message body (JSON), at any depth."""
    if isinstance(body, float):
        return [body]
    if isinstance(body, dict):
        body = list(body.values())
    if isinstance(body, list):
        return [v for item in body for v in _floats_in(item)]
    return []


def test_hosts_see_only_ciphertexts_of_gradients_and_never_labels(trained, keys) -> None:
    public, private = keys
    y = trained["train"]["guest"].y
    for host in ("host-0", "host-1"):
        seen = [d.decoded() for d in trained["net"].received(host)]
        seen += [d.decoded() for d in trained["pnet"].received(host)]
        kinds = {m.kind for m in seen}
        assert kinds == {"sb-setup", "sb-gh", "sb-nodes", "sb-split", "sb-ask"}
        for m in seen:
            assert not _floats_in(m.body), f"{m.kind} carries real numbers to {host}"
            for a in m.arrays:
                assert a.dtype.kind in "iu", f"{m.kind} carries {a.dtype} to {host}"
        gh = [m for m in seen if m.kind == "sb-gh"]
        assert len(gh) == 2
        # tree 1's gradients from the base score: what the ciphertexts must hide
        p0 = 1 / (1 + np.exp(-trained["model"].base))
        qg = np.rint((p0 - y) * 2.0**32).astype(np.int64)
        qh = np.rint(np.full_like(y, p0 * (1 - p0)) * 2.0**32).astype(np.int64)
        cipher = array_to_ints(gh[0].arrays[0])
        assert len(cipher) == len(y) and len(set(cipher)) == len(y)  # randomised: all distinct
        assert all(public.n < c < public.nsquare for c in cipher)
        slot = gh[0].body["shift"] // 3
        mask = (1 << slot) - 1
        plain = [private.raw_decrypt(c) for c in cipher]
        assert not set(cipher) & set(plain)
        assert [p & mask for p in plain] == [1] * len(y)  # the count slot
        assert [(p >> slot) & mask for p in plain] == qh.tolist()
        offsets = {(p >> (2 * slot)) - g for p, g in zip(plain, qg.tolist(), strict=True)}
        assert len(offsets) == 1 and offsets.pop() > int(np.abs(qg).max())
        for m in seen:  # labels and gradients never appear in any array, in any encoding
            for a in m.arrays:
                if a.dtype != np.uint8 and a.ndim == 1 and len(a) == len(y):
                    assert not np.array_equal(a, y) and not np.array_equal(a, qg)


def test_the_guest_never_receives_host_features_or_thresholds(trained) -> None:
    hosts = trained["hosts"]
    host_values = set()
    for name in ("host-0", "host-1"):
        host_values |= set(trained["train"][name].x.ravel().tolist())
        host_values |= set(trained["test"][name].x.ravel().tolist())
        host_values |= set(hosts[name].threshold)
    seen = [d.decoded() for d in trained["net"].received("guest")]
    seen += [d.decoded() for d in trained["pnet"].received("guest")]
    assert {m.kind for m in seen} == {"sb-bins", "sb-hist", "sb-left", "sb-go"}
    for m in seen:
        assert not set(_floats_in(m.body)) & host_values
        for a in m.arrays:
            assert a.dtype.kind in "iub", f"{m.kind} carries {a.dtype} to the guest"
    hist = [m for m in seen if m.kind == "sb-hist"]
    n_sq = (2 * 1024 + 7) // 8
    assert all(m.arrays[0].shape[1] == n_sq for m in hist)  # ciphertexts, not sums


def test_same_data_same_model_under_fresh_keys(cancer) -> None:
    """Paillier draws fresh randomness (and here fresh keys) every run; the model is exact, so
    it does not change."""
    x, y = cancer
    parties = _parties(x[:150], y[:150], [[0, 1, 2], [3, 4, 5, 6]])
    s = SecureBoost(trees=2, max_depth=2, bins=6, key_bits=1024)
    runs = [run_parties(LocalNetwork(list(parties)), s.programs(parties)) for _ in range(2)]
    assert runs[0]["guest"].trees == runs[1]["guest"].trees
    assert runs[0]["host-0"] == runs[1]["host-0"]
    np.testing.assert_array_equal(runs[0]["guest"].train_score, runs[1]["guest"].train_score)


def test_regression_with_a_label_only_guest(keys) -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=(200, 3))
    y = 2 * x[:, 0] - np.abs(x[:, 1]) + 0.1 * rng.normal(size=200)
    parties = _parties(x, y, [[], [0, 1, 2]])
    s = SecureBoost(trees=3, max_depth=2, bins=8, objective="regression", key_bits=1024, keys=keys)
    out = run_parties(LocalNetwork(list(parties)), s.programs(parties))
    trees, edges, base = fit_plain([parties["guest"].x, parties["host-0"].x], y, s)
    assert [t.weight for t in out["guest"].trees] == [t.weight for t in trees]
    assert all(p in (-1, 1) for t in out["guest"].trees for p in t.party)
    np.testing.assert_array_equal(
        out["guest"].train_score, predict_plain(trees, edges, base, [parties[p].x for p in parties])
    )
    assert np.mean((out["guest"].train_score - y) ** 2) < 0.5 * np.var(y)


def test_bad_settings_and_parties_are_named(cancer) -> None:
    x, y = cancer
    with pytest.raises(ConfigError, match="bins >= 2"):
        SecureBoost(bins=1)
    parties = _parties(x[:50], y[:50], [[0], [1]])
    bad = dict(
        parties,
        **{"host-0": PartyData("host-0", parties["host-0"].ids, parties["host-0"].x, y[:50])},
    )
    with pytest.raises(DatasetError, match="host host-0 holds labels"):
        SecureBoost(key_bits=1024).programs(bad)
    with pytest.raises(DatasetError, match="guest 'guest' with labels"):
        SecureBoost(key_bits=1024).programs({"host-0": parties["host-0"]})


def test_a_host_sending_a_malformed_histogram_is_named(cancer, keys) -> None:
    x, y = cancer
    parties = _parties(x[:60], y[:60], [[0, 1], [2, 3]])
    s = SecureBoost(trees=1, max_depth=1, bins=4, key_bits=1024, keys=keys)
    programs = s.programs(parties)

    def rogue(ch) -> None:
        ch.recv("guest", "sb-setup")
        ch.send("guest", Message("sb-bins", {}, [np.array([4, 4], dtype=np.int32)]))
        ch.recv("guest", "sb-gh")
        ch.recv("guest", "sb-nodes")
        ch.send("guest", Message("sb-hist", {}, [ints_to_array([1, 1])]))

    programs["host-0"] = rogue
    with pytest.raises(PartyError, match="host host-0 sent 2 histogram ciphertexts, expected 1"):
        run_parties(LocalNetwork(list(parties), timeout_s=120), programs)
