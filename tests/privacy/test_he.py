"""HE aggregation: exact Paillier sums, CKKS within tolerance, no secret on the server, and
clear errors for foreign or garbled ciphertexts."""

import dataclasses

import numpy as np
import phe
import pytest
from torch import nn

from fedfleet.client import FitInstructions, TorchTrainer
from fedfleet.privacy._he import (
    EncryptedVector,
    FixedPoint,
    HEError,
    PaillierKeyHolder,
    PaillierPublic,
    fixed_point_mean,
)
from fedfleet.privacy._he_ckks import (
    CKKS_TOLERANCE,
    CkksKeyHolder,
    CkksPublic,
)
from fedfleet.sim import Federation, Simulation, run_he_fedavg
from fedfleet.strategies import FedAvg, HEFedAvg, decrypt_aggregate, weighted_mean

LOCAL = FitInstructions(epochs=1, batch_size=16, lr=0.1)


@pytest.fixture(scope="module")
def paillier():
    return PaillierKeyHolder.generate(key_bits=1024)  # small key: tests only


@pytest.fixture(scope="module")
def ckks():
    return CkksKeyHolder.generate()


def _updates(length, k=5, seed=0):
    rng = np.random.default_rng(seed)
    deltas = [rng.normal(0, 0.5, length).astype(np.float32) for _ in range(k)]
    return deltas, [int(w) for w in rng.integers(1, 500, k)]


def _roundtrip(public, holder, deltas, weights):
    uploads = [public.encrypt(d, w).to_bytes() for d, w in zip(deltas, weights, strict=True)]
    agg = public.sum([EncryptedVector.from_bytes(b) for b in uploads]).to_bytes()
    return holder.decrypt_mean(EncryptedVector.from_bytes(agg))


@pytest.mark.parametrize("length", [1, 37, 500])
def test_paillier_aggregate_is_bit_exact(paillier, length):
    server = PaillierPublic.from_bytes(paillier.public.to_bytes())
    deltas, weights = _updates(length)
    got = _roundtrip(server, paillier, deltas, weights)
    assert np.array_equal(got, fixed_point_mean(deltas, weights, server.fixed_point))
    # and the fixed-point mean is the float mean up to the rounding 2^-(f+1)
    plain = weighted_mean(deltas, weights)
    assert np.abs(got - plain).max() <= 2.0 ** -(server.fixed_point.frac_bits + 1)


def test_paillier_packs_many_values_per_ciphertext(paillier):
    fp = paillier.public.fixed_point
    assert paillier.public.slots == 1023 // fp.slot_bits > 1
    enc = paillier.public.encrypt(np.zeros(100), 3)
    assert len(enc.chunks) == -(-100 // paillier.public.slots)


def test_extreme_values_and_weights_do_not_overflow_slots():
    fp = FixedPoint(frac_bits=8, value_bits=12, max_weight=1000)
    holder = PaillierKeyHolder.generate(key_bits=512, fixed_point=fp)
    deltas = [np.full(20, fp.max_abs), np.full(20, -fp.max_abs), np.full(20, fp.max_abs)]
    got = _roundtrip(holder.public, holder, deltas, [400, 300, 300])
    assert np.array_equal(got, fixed_point_mean(deltas, [400, 300, 300], fp))
    with pytest.raises(HEError, match="outside the fixed-point range"):
        holder.public.encrypt(np.full(3, 2 * fp.max_abs), 1)
    with pytest.raises(HEError, match="max_weight"):
        holder.public.sum([holder.public.encrypt(np.zeros(3), 600)] * 2)


def test_ckks_aggregate_within_tolerance(ckks):
    server = CkksPublic.from_bytes(ckks.public.to_bytes())
    deltas, weights = _updates(9000, k=4)  # three chunks of 4096 slots
    got = _roundtrip(server, ckks, deltas, weights)
    assert got.shape == (9000,)
    assert np.abs(got - weighted_mean(deltas, weights)).max() < CKKS_TOLERANCE


def test_the_server_holds_no_secret(paillier, ckks):
    server_key = PaillierPublic.from_bytes(paillier.public.to_bytes())
    strategy = HEFedAvg(public=server_key, clients_per_round=2)

    def secrets(obj, depth=0):
        if isinstance(obj, phe.PaillierPrivateKey):
            yield obj
        if depth < 4:
            children = (
                vars(obj).values()
                if hasattr(obj, "__dict__")
                else [getattr(obj, f.name) for f in dataclasses.fields(obj)]
                if dataclasses.is_dataclass(obj)
                else []
            )
            for child in children:
                yield from secrets(child, depth + 1)

    assert not list(secrets(strategy)) and list(secrets(paillier))
    assert not hasattr(server_key, "decrypt_mean") and not hasattr(strategy, "decrypt_mean")
    assert not CkksPublic.from_bytes(ckks.public.to_bytes())._ctx.has_secret_key()
    with pytest.raises(HEError, match="secret key"):
        CkksPublic(ckks._ctx.serialize(save_secret_key=True))


@pytest.mark.parametrize("scheme", ["paillier", "ckks"])
def test_foreign_and_garbled_ciphertexts_are_rejected(scheme, paillier, ckks):
    holder = paillier if scheme == "paillier" else ckks
    other = (
        PaillierKeyHolder.generate(key_bits=1024)
        if scheme == "paillier"
        else CkksKeyHolder.generate()
    )
    foreign = other.public.encrypt(np.zeros(10), 1)
    with pytest.raises(HEError, match="encrypted under key"):
        holder.decrypt_mean(foreign)
    with pytest.raises(HEError, match="encrypted under key"):
        holder.public.sum([holder.public.encrypt(np.zeros(10), 1), foreign])
    data = bytearray(holder.public.encrypt(np.ones(10), 2).to_bytes())
    data[len(data) // 2] ^= 0xFF
    with pytest.raises(HEError, match="checksum"):
        EncryptedVector.from_bytes(bytes(data))
    with pytest.raises(HEError, match=r"too short|checksum"):
        EncryptedVector.from_bytes(bytes(data[:40]))


def test_a_hostile_weight_or_ciphertext_is_rejected_alone_and_the_rest_is_summed(paillier, ckks):
    """One upload claiming a weight no sum can hold (or, for CKKS, carrying bytes that are no
    ciphertext) is refused with its client named; the valid uploads are still summed."""
    strategy = HEFedAvg(public=paillier.public, clients_per_round=3)
    good = [paillier.public.encrypt(np.full(4, 0.5), 3), paillier.public.encrypt(np.ones(4), 1)]
    huge = dataclasses.replace(paillier.public.encrypt(np.zeros(4), 1), weight=2**63)
    uploads = {0: good[0].to_bytes(), 1: huge.to_bytes(), 2: good[1].to_bytes()}
    aggregate, rejected = strategy.aggregate_encrypted(7, 4, uploads)
    assert [(r.client_id, r.round) for r in rejected] == [(1, 7)]
    assert "weight 9223372036854775808 is outside 1..max_weight" in str(rejected[0])
    mean = paillier.decrypt_mean(EncryptedVector.from_bytes(aggregate))
    np.testing.assert_allclose(mean, np.full(4, 0.625), atol=1e-6)  # (3 * 0.5 + 1) / 4

    real = ckks.public.encrypt(np.ones(5), 2)
    junk = dataclasses.replace(real, chunks=(b"not a ciphertext",))
    with pytest.raises(HEError, match="malformed CKKS ciphertext"):
        ckks.public.validate(junk, 5)
    ckks.public.validate(real, 5)


def test_a_forged_paillier_ciphertext_decrypts_out_of_range(paillier):
    good = paillier.public.encrypt(np.ones(10), 2)
    forged_int = paillier.public._pk.raw_encrypt(2**1000 + 12345)  # not a packed update
    forged = dataclasses.replace(good, chunks=(forged_int.to_bytes(len(good.chunks[0]), "big"),))
    with pytest.raises(HEError, match="tampered"):
        paillier.decrypt_mean(EncryptedVector.from_bytes(forged.to_bytes()))


def _fed(blobs):
    return Federation(blobs, [np.arange(i, 400, 10) for i in range(10)])


def test_he_fedavg_matches_plaintext_fedavg(blobs, paillier):
    trainer = TorchTrainer(lambda: nn.Linear(10, 4))
    strategy = HEFedAvg(public=paillier.public, clients_per_round=4, local=LOCAL)
    he = run_he_fedavg(trainer, _fed(blobs), strategy, paillier, rounds=3, seed=0)
    plain = Simulation(trainer, _fed(blobs), FedAvg(clients_per_round=4, local=LOCAL), seed=0).run(
        3
    )
    # same clients, same local training; only the 2^-24 fixed-point rounding differs
    np.testing.assert_allclose(he.vector, plain.vector, atol=1e-5)
    assert he.final["test_accuracy"] == pytest.approx(plain.final["test_accuracy"], abs=0.01)
    assert he.final["he_bytes_per_client"] > 0 and he.final["num_rejected"] == 0


def test_one_round_equals_the_fixed_point_fedavg_exactly(blobs, paillier):
    trainer = TorchTrainer(lambda: nn.Linear(10, 4))
    fed = _fed(blobs)
    strategy = HEFedAvg(public=paillier.public, clients_per_round=3, local=LOCAL)
    w = trainer.init_vector(0)
    results = {
        cid: strategy.client_fit(trainer, w, fed.train_data(cid), LOCAL, cid, None)
        for cid in (1, 4, 7)
    }
    uploads = {cid: strategy.encrypt_update(w, r) for cid, r in results.items()}
    foreign = PaillierKeyHolder.generate(key_bits=1024).public.encrypt(np.zeros(w.size), 5)
    uploads[9] = foreign.to_bytes()
    uploads[8] = paillier.public.encrypt(np.zeros(w.size + 1), 5).to_bytes()
    uploads[6] = uploads[1][:-1]
    aggregate, rejected = strategy.aggregate_encrypted(1, w.size, uploads)
    assert [r.client_id for r in rejected] == [6, 8, 9]
    assert "checksum" in rejected[0].reason
    assert f"holds {w.size + 1} values, expected {w.size}" in rejected[1].reason
    assert "encrypted under key" in rejected[2].reason and "round 1" in str(rejected[2])
    mean = decrypt_aggregate(paillier, aggregate)
    deltas = [r.fit.vector.astype(np.float64) - w for r in results.values()]
    weights = [r.fit.num_samples for r in results.values()]
    assert np.array_equal(mean, fixed_point_mean(deltas, weights, paillier.public.fixed_point))
    new, _ = strategy.apply(w, strategy.init(w), mean)
    assert np.array_equal(new, (w.astype(np.float64) + mean).astype(np.float32))


def test_ckks_fedavg_runs_within_tolerance(blobs, ckks):
    trainer = TorchTrainer(lambda: nn.Linear(10, 4))
    strategy = HEFedAvg(public=ckks.public, clients_per_round=4, local=LOCAL)
    he = run_he_fedavg(trainer, _fed(blobs), strategy, ckks, rounds=2, seed=0)
    plain = Simulation(trainer, _fed(blobs), FedAvg(clients_per_round=4, local=LOCAL), seed=0).run(
        2
    )
    np.testing.assert_allclose(he.vector, plain.vector, atol=2 * CKKS_TOLERANCE)


def test_secret_key_files_round_trip_and_refuse_other_bytes(paillier, ckks):
    from fedfleet.net.secure._he_keys import load_key_holder, load_public
    from fedfleet.privacy import HEError

    x = np.linspace(-1, 1, 300)
    for holder in (paillier, ckks):
        again = load_key_holder(holder.secret_bytes())
        public = load_public(holder.public.to_bytes())
        assert public.key_id == holder.public.key_id == again.public.key_id
        aggregate = public.sum([public.encrypt(x, 2), public.encrypt(-x / 2, 1)])
        np.testing.assert_allclose(again.decrypt_mean(aggregate), x / 2, atol=CKKS_TOLERANCE)
    assert b"FFPS" not in paillier.public.to_bytes()
    with pytest.raises(HEError, match="not a fedfleet HE secret key file"):
        load_key_holder(paillier.public.to_bytes())
    with pytest.raises(HEError, match="bad magic or length"):
        load_key_holder(paillier.secret_bytes()[:-1])
