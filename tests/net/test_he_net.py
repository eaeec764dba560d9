"""HE aggregation over the network: a TLS server that holds only the public key sums Paillier
ciphertexts from client processes; one client decrypts the aggregate; exact against the
in-memory HE FedAvg."""

from __future__ import annotations

import numpy as np
import pytest
from he_worker import he_strategy

from conftest import HERE, wait_for
from fedfleet.errors import FedfleetError
from fedfleet.net import FederatedServer, ServerSettings
from fedfleet.net._cli import read_config
from fedfleet.net.secure import write_he_keys
from fedfleet.net.secure._he_keys import load_key_holder, load_public
from fedfleet.privacy import PaillierKeyHolder, PaillierPublic
from fedfleet.runs._build import build_federation, build_trainer, load_task_for
from fedfleet.sim import SequentialExecutor, run_he_fedavg

HE_TOML = """\
seed = 11
rounds = 2
[data]
num_clients = 3
[model]
hidden = [16]
[strategy]
clients_per_round = 3
[client]
epochs = 1
batch_size = 32
lr = 0.1
"""


def test_paillier_over_tls_equals_in_memory_he_fedavg_exactly(procs, certs_dir):
    config = procs.tmp / "run.toml"
    config.write_text(HE_TOML)
    # a small key: this is a test, not a deployment
    public, secret = write_he_keys(procs.tmp / "keys", "paillier", key_bits=1024)
    assert secret.stat().st_mode & 0o077 == 0  # the secret file is the owner's only
    holder = load_key_holder(secret.read_bytes())
    port_file, out = procs.tmp / "server.port", procs.tmp / "final.npy"
    worker = str(HERE / "he_worker.py")
    server = procs.start(
        "server", worker, "server", str(config), str(certs_dir), str(public), str(port_file),
        str(out),
    )  # fmt: skip
    wait_for(port_file.exists, 300, "the server to listen", (server,))
    addr = f"127.0.0.1:{port_file.read_text()}"
    clients = [
        procs.start(f"client{c}", worker, "client", str(config), str(certs_dir), str(secret),
                    addr, str(c))
        for c in range(3)
    ]  # fmt: skip

    cfg, _ = read_config(config)
    task = load_task_for(cfg)
    trainer = build_trainer(cfg, task)
    reference = run_he_fedavg(
        trainer,
        build_federation(cfg, task),
        he_strategy(cfg, holder.public),
        holder,
        2,
        cfg.seed,
        executor=SequentialExecutor(),  # deployed clients train the sequential loop
    ).vector

    assert procs.wait(server, 300) == 0, procs.log("server")
    for p in clients:
        assert procs.wait(p, 300) == 0, procs.log(p.name)
    got = np.load(out, allow_pickle=False)
    assert got.dtype == np.float32 and np.array_equal(got, reference), (
        f"max diff {np.abs(got - reference).max()}"
    )
    log = procs.log("server")
    assert log.count("client 0 decrypts the sum") == 2
    assert "secret" not in log.lower()
    decrypted = sum("decrypted the sum" in procs.log(f"client{c}") for c in range(3))
    assert decrypted == 1  # only the key holder of the rounds (client 0) saw an aggregate


def test_a_server_given_the_secret_key_refuses_to_start(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text(HE_TOML)
    cfg, _ = read_config(config)
    holder = PaillierKeyHolder.generate(key_bits=512)
    strategy = he_strategy(cfg, load_public(holder.public.to_bytes()), holder)
    assert isinstance(strategy.public, PaillierPublic)
    with pytest.raises(FedfleetError, match="holds a secret key; give the server only the public"):
        FederatedServer.from_config(cfg, ServerSettings(insecure=True), strategy=strategy)
