"""Child processes for the network benchmarks: logs in one folder, every one killed at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path


class Procs:
    """Starts child processes with their logs in ``out``; ``kill_all`` ends every one."""

    def __init__(self, out: Path) -> None:
        self.out, self.procs = out, []

    def start(self, name: str, *argv: str) -> subprocess.Popen:
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
        log = (self.out / f"{name}.log").open("wb")
        p = subprocess.Popen([sys.executable, *argv], stdout=log, stderr=subprocess.STDOUT, env=env)
        self.procs.append(p)
        return p

    def kill_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGKILL)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                pass
