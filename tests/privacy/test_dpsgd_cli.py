"""DP-SGD from the command line reports its cumulative epsilon (regression: none was written)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path


def test_fedfleet_run_with_dpsgd_writes_a_growing_epsilon(tmp_path: Path):
    out = tmp_path / "run"
    fedfleet = Path(sys.executable).with_name("fedfleet")
    proc = subprocess.run(
        [
            str(fedfleet), "run", "--set", "rounds=2", "--set", "privacy.sgd_noise_multiplier=1",
            "--set", "privacy.sgd_clip_norm=1", "--set", "data.num_clients=4",
            "--set", "strategy.clients_per_round=4", "--set", "client.epochs=1",
            "--out", str(out),
        ],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    eps = [r["dpsgd_epsilon_max"] for r in records]
    assert len(eps) == 2
    assert all(math.isfinite(e) and e > 0 for e in eps)
    assert eps[1] > eps[0]
    # all four clients trained in round 2, so its worst client is the run's worst so far
    assert records[1]["dpsgd_epsilon_round_max"] == eps[1]
    assert "DP-SGD epsilon (worst client)" in proc.stdout, proc.stdout
    assert f"{eps[1]:.3f}" in proc.stdout
