"""A SecAgg client process for tests/net/test_secagg_net.py that stalls at one protocol step.

    python secagg_worker.py CONFIG SERVER CLIENT_ID CERTS_DIR MARKER

It runs ``FederatedClient`` unchanged, except that the upload of its masked input stops after
the stream's header: it touches MARKER and sleeps with the call open, so the test can SIGKILL it
after it shared its keys, in the middle of sending its masked input.
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
from fedfleet.net.secure import _secagg_wire as secagg_wire
from fedfleet.net.secure._secagg_wire import masked_chunks


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("server")
    ap.add_argument("client_id", type=int)
    ap.add_argument("certs")
    ap.add_argument("marker")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    marker = Path(args.marker)

    def stalled_upload(ref, masked, chunk_size):
        yield next(masked_chunks(ref, masked, chunk_size))  # the header
        marker.write_text("uploading")
        time.sleep(600)

    secagg_wire.masked_chunks = stalled_upload
    cfg, _ = read_config(Path(args.config))
    settings = ClientSettings(server=args.server, certs_dir=args.certs, backoff_max_s=1.0)
    FederatedClient.from_config(cfg, settings, args.client_id).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
