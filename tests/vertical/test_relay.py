"""The vertical relay: party programs over gRPC with mutual TLS, identities from certificates."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("grpc")

from sklearn.datasets import load_breast_cancer

from fedfleet.net._certs import create_test_federation, issue_certificate
from fedfleet.vertical import (
    LocalNetwork,
    Message,
    PartyError,
    SplitNN,
    run_parties,
    split_columns,
)
from fedfleet.vertical._net import Relay, RelayChannel

PARTIES = ["guest", "host-0", "host-1"]


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = create_test_federation(tmp_path_factory.mktemp("certs"), 1)
    for name in PARTIES:
        issue_certificate(d, name)
    return d


def _relay(certs: Path, roster=PARTIES) -> tuple[Relay, str]:
    relay = Relay(roster, certs_dir=certs)
    return relay, f"127.0.0.1:{relay.start()}"


def _channel(address: str, certs: Path, party: str, **kw) -> RelayChannel:
    return RelayChannel(address, party=party, parties=PARTIES, certs_dir=certs, **kw)


def test_split_nn_over_the_relay_equals_the_local_network(certs: Path) -> None:
    x, y = load_breast_cancer(return_X_y=True)
    parties = split_columns(x, y, [range(0, 10), range(10, 20), range(20, 30)])
    split = SplitNN(bottom_widths=(4,), top_widths=(4,), epochs=2, batch_size=64)
    programs = split.programs({p.name: p for p in parties})
    local = run_parties(LocalNetwork(PARTIES), programs)

    relay, address = _relay(certs)
    results: dict[str, object] = {}
    try:

        def run(name: str) -> None:
            ch = _channel(address, certs, name)
            try:
                results[name] = programs[name](ch)
            finally:
                ch.close()

        threads = [threading.Thread(target=run, args=(n,)) for n in PARTIES]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        assert relay.wait(timeout=120)
    finally:
        relay.stop()
    for name in PARTIES:
        for key, value in local[name].bottom.items():
            np.testing.assert_array_equal(results[name].bottom[key], value)
    assert results["guest"].metrics == local["guest"].metrics
    assert all(relay.bytes_sent[p] > 0 for p in PARTIES)


def test_the_sender_is_the_certificate_not_a_claim(certs: Path) -> None:
    relay, address = _relay(certs)
    try:
        guest = _channel(address, certs, "guest")
        host1 = _channel(address, certs, "host-1")
        host1.send("guest", Message("hello", {"claims": "host-0"}))
        # it arrives from host-1, whatever it claims; nothing arrived from host-0
        assert guest.recv("host-1", "hello").body == {"claims": "host-0"}
        with pytest.raises(PartyError, match="sent nothing"):
            guest.recv("host-0", "hello", timeout=1.0)
        # host-1's key cannot be used with host-0's certificate: the handshake fails
        wrong_key = _channel(address, certs, "host-0", key=certs / "host-1.key", timeout_s=3.0)
        with pytest.raises(PartyError, match="host-0"):
            wrong_key.send("guest", Message("hello", {}))
        wrong_key.close()  # (an open channel would retry its handshake for the whole session)
        # a certificate of the same CA that names no party is refused
        stranger = _channel(address, certs, "client-0")
        with pytest.raises(PartyError, match="not a party"):
            stranger.send("guest", Message("hello", {}))
        stranger.close()
        # a party can send only to another party of the roster
        with pytest.raises(PartyError, match="not another party"):
            host1.send("host-1", Message("hello", {}))
        guest.close()
        host1.close()
    finally:
        relay.stop()


def test_a_certificate_is_its_party(certs: Path) -> None:
    with pytest.raises(PartyError, match="certificate of 'host-1'"):
        RelayChannel(
            "127.0.0.1:1",
            party="host-0",
            parties=PARTIES,
            certs_dir=certs,
            cert=certs / "host-1.pem",
        )


def test_a_failed_party_stops_the_others(certs: Path) -> None:
    relay, address = _relay(certs)
    try:
        guest = _channel(address, certs, "guest")
        host0 = _channel(address, certs, "host-0")
        host0.close(failure="out of memory")
        with pytest.raises(PartyError, match="host-0 failed: out of memory"):
            guest.recv("host-0", "activations", timeout=120)
        guest.close()
    finally:
        relay.stop()
