"""PLD epsilon and seconds per call: the old fixed 1e-3 grid, the adaptive grid
(fedfleet.privacy._accountant.pld_epsilon) and a 1e-5 reference, side by side.

    .venv/bin/python bench/accountant_precision.py            # the four test vectors
    .venv/bin/python bench/accountant_precision.py --no-ref   # skip the slow 1e-5 reference
"""

from __future__ import annotations

import argparse
import time

import dp_accounting as dpa

from fedfleet.privacy._accountant import PLD_COARSE, pld_epsilon

DELTA = 1e-5
VECTORS = [  # (q, z, steps)
    (256 / 60000, 1.1, 14062),  # MNIST DP-SGD, 60 epochs (the issue)
    (0.001, 1.0, 100_000),  # small rate, long run (the issue)
    (0.01, 1.0, 1000),  # DP-FedAvg, 1000 rounds
    (0.1, 1.0, 100),  # DP-FedAvg, 100 rounds
]


def timed(q: float, z: float, steps: int, interval: float | None) -> tuple[float, float]:
    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(z)), steps)
    t0 = time.perf_counter()
    eps = pld_epsilon(event, DELTA, interval)
    return eps, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-ref", action="store_true", help="skip the 1e-5 reference")
    args = parser.parse_args()
    timed(0.5, 1.0, 1, PLD_COARSE)  # import and warm dp_accounting outside the timings
    print(
        f"{'q':>9} {'z':>4} {'steps':>7} | {'old 1e-3':>9} {'s':>5} | {'adaptive':>9} {'s':>5}"
        f" | {'ref 1e-5':>9} {'s':>5} | {'old err':>8} {'new err':>8}"
    )
    for q, z, steps in VECTORS:
        old, t_old = timed(q, z, steps, PLD_COARSE)
        new, t_new = timed(q, z, steps, None)
        ref, t_ref = (float("nan"), float("nan")) if args.no_ref else timed(q, z, steps, 1e-5)
        print(
            f"{q:9.6f} {z:4.1f} {steps:7d} | {old:9.5f} {t_old:5.2f} | {new:9.5f} {t_new:5.2f}"
            f" | {ref:9.5f} {t_ref:5.2f} | {old / ref - 1:8.2e} {new / ref - 1:8.2e}"
        )


if __name__ == "__main__":
    main()
