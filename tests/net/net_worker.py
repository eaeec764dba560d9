"""A client process for the tests: FederatedClient, optionally slowed down to be killed mid-round.

    python net_worker.py CONFIG SERVER CLIENT_ID (--insecure | --certs DIR) [--slow-file PATH]
        [--slow-after N] [--state-dir DIR]

With ``--slow-file`` the client touches PATH when it starts local training (after ``N`` normal
fits) and then sleeps, so a test can SIGKILL it in the middle of a round.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from fedfleet.net import ClientSettings, FederatedClient
from fedfleet.net._cli import read_config
from fedfleet.runs._build import build_trainer, load_task_for


class _Slow:
    def __init__(self, inner, marker: Path, after: int) -> None:
        self.inner, self.marker, self.after = inner, marker, after

    def __getattr__(self, name):
        return getattr(self.inner, name)

    @property
    def layout(self):
        return self.inner.layout

    def fit(self, *args, **kwargs):
        if self.after > 0:
            self.after -= 1
            return self.inner.fit(*args, **kwargs)
        self.marker.write_text("training")
        time.sleep(600)
        return self.inner.fit(*args, **kwargs)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("server")
    ap.add_argument("client_id", type=int)
    ap.add_argument("--insecure", action="store_true")
    ap.add_argument("--certs")
    ap.add_argument("--slow-file")
    ap.add_argument("--slow-after", type=int, default=0)
    ap.add_argument("--state-dir")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    cfg, _ = read_config(Path(args.config))
    trainer = build_trainer(cfg, load_task_for(cfg))
    if args.slow_file:
        trainer = _Slow(trainer, Path(args.slow_file), args.slow_after)
    settings = ClientSettings(
        server=args.server,
        insecure=args.insecure,
        certs_dir=args.certs,
        backoff_max_s=1.0,
        state_dir=args.state_dir,
    )
    rounds = FederatedClient.from_config(cfg, settings, args.client_id, trainer=trainer).run()
    print(f"client {args.client_id} done: rounds {rounds}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
