"""HE aggregation cost: Paillier and CKKS against plaintext, 10 clients.

For each scheme and vector length (Paillier: 1k, 10k; CKKS: 1k, 10k, 100k; plaintext for all):

    keygen_s       key generation on the key holder (once)
    encrypt_s      one client encrypting its weighted update (mean over clients)
    sum_s          the server summing the 10 clients' ciphertexts (including parsing them)
    decrypt_s      the key holder decrypting the aggregate to the mean delta
    bytes          bytes one client uploads (the serialised EncryptedVector; plaintext: float32)
    max_abs_err    largest error of the decrypted mean against the float64 weighted mean
    exact          Paillier only: decrypted mean == the fixed-point plaintext mean, bit for bit

Paillier uses a 2048-bit key with the default fixed point (f = 24, b = 32, max weight 2^20):
38 values packed per ciphertext. CKKS uses degree 8192, moduli (60, 40, 40, 60), scale 2^40.
Timings are single-threaded wall seconds on a shared machine (gmpy2 installed makes phe ~10x
faster). Writes ``bench/out/he_cost.jsonl`` and ``bench/out/he_cost.md``.

    python bench/he_cost.py [--clients 10]
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from fedfleet.privacy import (
    CkksKeyHolder,
    CkksPublic,
)
from fedfleet.privacy._he import (
    EncryptedVector,
    PaillierKeyHolder,
    PaillierPublic,
    fixed_point_mean,
)

OUT = Path(__file__).resolve().parent / "out"


def _updates(length: int, clients: int) -> tuple[list[np.ndarray], list[int]]:
    rng = np.random.default_rng(length)
    deltas = [rng.normal(0, 0.05, length).astype(np.float32) for _ in range(clients)]
    return deltas, [int(n) for n in rng.integers(50, 1000, clients)]


def _plain_mean(deltas: list[np.ndarray], weights: list[int]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    return (w / w.sum()) @ np.stack(deltas).astype(np.float64)


def bench_plain(length: int, clients: int) -> dict[str, object]:
    deltas, weights = _updates(length, clients)
    t = time.perf_counter()
    blobs = [d.tobytes() for d in deltas]
    enc = (time.perf_counter() - t) / clients
    t = time.perf_counter()
    parsed = [np.frombuffer(b, dtype=np.float32) for b in blobs]
    _plain_mean(parsed, weights)
    total = time.perf_counter() - t
    return {
        "keygen_s": 0.0,
        "encrypt_s": enc,
        "sum_s": total,
        "decrypt_s": 0.0,
        "bytes": len(blobs[0]),
        "max_abs_err": 0.0,
    }


def bench_he(scheme: str, holder, public_cls, length: int, clients: int) -> dict[str, object]:  # type: ignore[no-untyped-def]
    deltas, weights = _updates(length, clients)
    server = public_cls.from_bytes(holder.public.to_bytes())  # what the server holds
    t = time.perf_counter()
    uploads = [holder.public.encrypt(d, w).to_bytes() for d, w in zip(deltas, weights, strict=True)]
    enc = (time.perf_counter() - t) / clients
    t = time.perf_counter()
    agg = server.sum([EncryptedVector.from_bytes(b) for b in uploads]).to_bytes()
    sum_s = time.perf_counter() - t
    t = time.perf_counter()
    mean = holder.decrypt_mean(EncryptedVector.from_bytes(agg))
    dec = time.perf_counter() - t
    row: dict[str, object] = {
        "encrypt_s": enc,
        "sum_s": sum_s,
        "decrypt_s": dec,
        "bytes": len(uploads[0]),
        "max_abs_err": float(np.abs(mean - _plain_mean(deltas, weights)).max()),
    }
    if scheme == "paillier":
        row["exact"] = bool(
            np.array_equal(mean, fixed_point_mean(deltas, weights, holder.public.fixed_point))
        )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=10)
    args = parser.parse_args()
    OUT.mkdir(exist_ok=True)
    rows = []
    t = time.perf_counter()
    paillier = PaillierKeyHolder.generate(key_bits=2048)
    paillier_keygen = time.perf_counter() - t
    t = time.perf_counter()
    ckks = CkksKeyHolder.generate()
    ckks_keygen = time.perf_counter() - t
    plan = [("plaintext", n) for n in (1_000, 10_000, 100_000)]
    plan += [("paillier", n) for n in (1_000, 10_000)]
    plan += [("ckks", n) for n in (1_000, 10_000, 100_000)]
    for scheme, length in plan:
        if scheme == "plaintext":
            row = bench_plain(length, args.clients)
        elif scheme == "paillier":
            row = {
                "keygen_s": paillier_keygen,
                **bench_he(scheme, paillier, PaillierPublic, length, args.clients),
            }
        else:
            row = {
                "keygen_s": ckks_keygen,
                **bench_he(scheme, ckks, CkksPublic, length, args.clients),
            }
        row = {
            "scheme": scheme,
            "length": length,
            "clients": args.clients,
            **row,
            "machine": platform.machine(),
            "python": platform.python_version(),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    plain = {r["length"]: r for r in rows if r["scheme"] == "plaintext"}
    lines = [
        f"HE aggregation cost, {args.clients} clients (Paillier 2048-bit, 38 values per "
        "ciphertext; CKKS N=8192, scale 2^40)",
        "",
        "| scheme | length | encrypt / client (s) | server sum (s) | decrypt (s) | bytes / client "
        "| size vs plaintext | max abs err | exact |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        ratio = r["bytes"] / plain[r["length"]]["bytes"]  # type: ignore[operator]
        lines.append(
            f"| {r['scheme']} | {r['length']:,} | {r['encrypt_s']:.4f} | {r['sum_s']:.4f} | "
            f"{r['decrypt_s']:.4f} | {r['bytes']:,} | {ratio:.1f}x | {r['max_abs_err']:.1e} | "
            f"{r.get('exact', '')} |"
        )
    lines += ["", f"key generation: Paillier {paillier_keygen:.2f} s, CKKS {ckks_keygen:.2f} s"]
    (OUT / "he_cost.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (OUT / "he_cost.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
