"""Server and client processes of an HE (Paillier) federation for tests/net/test_he_net.py.

    python he_worker.py server CONFIG CERTS_DIR PUBLIC_KEY PORT_FILE OUT_NPY
    python he_worker.py client CONFIG CERTS_DIR SECRET_KEY SERVER CLIENT_ID

The run config has no HE strategy, so these build ``HEFedAvg`` from its client settings and the
key file: the server gets the public key only, each client the shared key pair.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import torch

from fedfleet.client import FitInstructions
from fedfleet.net import ClientSettings, FederatedClient, FederatedServer, ServerSettings
from fedfleet.net._cli import read_config
from fedfleet.net.secure._he_keys import load_key_holder, load_public
from fedfleet.strategies import HEFedAvg


def he_strategy(cfg, public, key_holder=None) -> HEFedAvg:
    c = cfg.client
    return HEFedAvg(
        public=public,
        key_holder=key_holder,
        clients_per_round=cfg.strategy.clients_per_round,
        local=FitInstructions(epochs=c.epochs, batch_size=c.batch_size, lr=c.lr),
    )


def main(role: str, config: str, certs: str, key: str, where: str, extra: str) -> int:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    torch.set_num_threads(1)
    cfg, _ = read_config(Path(config))
    data = Path(key).read_bytes()
    if role == "server":
        settings = ServerSettings(
            certs_dir=certs, min_clients=cfg.data.num_clients, round_timeout_s=60, poll_wait_s=0.5
        )
        server = FederatedServer.from_config(
            cfg, settings, strategy=he_strategy(cfg, load_public(data))
        )
        Path(where).write_text(str(server.start()))
        try:
            result = server.run()
        finally:
            server.stop()
        np.save(extra, result["vector"])
        print(f"done: {len(result['history'])} rounds", flush=True)
        return 0
    holder = load_key_holder(data)
    strategy = he_strategy(cfg, holder.public, holder)
    settings = ClientSettings(server=where, certs_dir=certs, backoff_max_s=1.0)
    rounds = FederatedClient.from_config(cfg, settings, int(extra), strategy=strategy).run()
    print(f"client {extra} done: rounds {rounds}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:7]))
