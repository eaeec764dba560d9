"""What the codec costs the process executor a round, against the floor of copying the bytes.

One round of workload a as the process executor frames it (10 clients in 2 chunks of 5; per
chunk: the jobs frame with the global vector, its decoding in the worker, the results frame
with 5 trained vectors, its decoding in the parent), for a model of ``--params`` floats. The
floor moves the same arrays without a codec: each frame's arrays joined into one fresh buffer,
then copied out of it into fresh arrays (the two copies any frame on a pipe needs). CPU time of
this process (``time.process_time``), median over ``--repeats`` rounds, so other processes'
load counts less.

    python bench/codec_frames.py [--params 101770 2000000] [--repeats 200]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np

from fedfleet._codec import (
    decode_jobs,
    decode_results,
    encode_jobs,
    encode_results,
    from_frame,
    to_frame,
)
from fedfleet.client import FitInstructions, FitResult
from fedfleet.data import ArrayDataset
from fedfleet.sim._cohort import ClientJob
from fedfleet.strategies import ClientResult

CLIENTS, CHUNKS = 10, [(0, 5), (5, 10)]


def cpu_ms(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return statistics.median(times) * 1e3


def measure(p: int, repeats: int, rng: np.random.Generator) -> tuple[float, float]:
    """CPU ms of one round's codec work and of its floor, for a model of ``p`` floats."""
    data = ArrayDataset(np.zeros((600, 784), np.float32), np.zeros(600, np.int64))
    vector = rng.standard_normal(p, dtype=np.float32)
    jobs = [ClientJob(c, data, FitInstructions(), c, None) for c in range(CLIENTS)]
    trained = [rng.standard_normal(p, dtype=np.float32) for _ in range(CLIENTS)]
    metrics = {"train_loss": np.float32(0.5)}
    results = [ClientResult(FitResult(v, 600, 19, metrics)) for v in trained]

    def one_round() -> None:
        for lo, hi in CHUNKS:
            frame = to_frame(encode_jobs(vector, jobs[lo:hi]))
            decode_jobs(from_frame(frame, "the parent"))
            decode_results(from_frame(to_frame(encode_results(results[lo:hi])), "worker"))

    def floor() -> None:  # the same bytes into one fresh buffer per frame and out again
        for lo, hi in CHUNKS:
            for arrays in ([vector], trained[lo:hi]):
                frame = b"".join([a.data for a in arrays])
                for i in range(len(arrays)):
                    np.frombuffer(frame, np.float32, p, i * p * 4).copy()

    return cpu_ms(one_round, repeats), cpu_ms(floor, repeats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", type=int, nargs="+", default=[101_770, 2_000_000])
    ap.add_argument("--repeats", type=int, default=200)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    print(f"{'params':>10}{'MB/round':>10}{'codec ms':>10}{'floor ms':>10}{'ratio':>7}")
    for p in args.params:
        codec, base = measure(p, args.repeats, rng)
        mb = (len(CHUNKS) + CLIENTS) * p * 4 / 2**20
        print(f"{p:>10,}{mb:>10.1f}{codec:>10.2f}{base:>10.2f}{codec / base:>7.2f}")


if __name__ == "__main__":
    main()
