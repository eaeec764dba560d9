"""The README's three-terminal walk-through, run as written (with a free port instead of 50051)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "deploy"


def _fedfleet(*args: str) -> list[str]:
    return [sys.executable, "-m", "fedfleet", *args]


def test_three_terminal_walkthrough(tmp_path):
    for name in ("server.toml", "client.toml"):
        shutil.copy(EXAMPLE / name, tmp_path / name)
    certs = subprocess.run(
        _fedfleet("certs", "--out-dir", "certs", "--num-clients", "2"),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert certs.returncode == 0, certs.stderr
    port_file = tmp_path / "port"
    procs = []
    try:
        server = subprocess.Popen(
            _fedfleet(
                "server", "--config", "server.toml", "--port", "0", "--port-file", str(port_file)
            ),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        procs.append(server)
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            assert server.poll() is None, server.stdout.read()
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.1)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        for cid in ("0", "1"):
            procs.append(
                subprocess.Popen(
                    _fedfleet(
                        "client", "--config", "client.toml", "--client-id", cid, "--server", address
                    ),
                    cwd=tmp_path,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
        out, _ = server.communicate(timeout=180)
        assert server.returncode == 0, out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    run_dir = tmp_path / "runs" / "deploy"
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[-1]["test_accuracy"] > 0.5
    assert (run_dir / "model.safetensors").exists()
    assert (run_dir / "checkpoint.safetensors").exists()
