"""The vertical parties' local network: frames on the wire, lockstep kinds, failures named."""

from __future__ import annotations

import numpy as np
import pytest

from fedfleet.vertical import (
    LocalNetwork,
    Message,
    PartyError,
    array_to_ints,
    ints_to_array,
    run_parties,
)


def test_messages_travel_as_frames_and_are_logged() -> None:
    net = LocalNetwork(["guest", "host"])
    big = [3**200, 0, 7]

    def guest(ch):
        ch.send("host", Message("ask", {"n": 3}, [ints_to_array(big)], ["ciphertexts"]))
        reply = ch.recv("host", "answer")
        return reply.body["sum"], reply.arrays[0]

    def host(ch):
        ask = ch.recv("guest", "ask")
        ints = array_to_ints(ask.arrays[0])
        ch.send("guest", Message("answer", {"sum": str(sum(ints))}, [np.arange(3.0)]))
        return ints

    out = run_parties(net, {"guest": guest, "host": host})
    assert out["host"] == big
    assert out["guest"][0] == str(sum(big))
    np.testing.assert_array_equal(out["guest"][1], np.arange(3.0))
    assert [(d.sender, d.receiver, d.kind) for d in net.log] == [
        ("guest", "host", "ask"),
        ("host", "guest", "answer"),
    ]
    assert [d.kind for d in net.received("guest")] == ["answer"]
    assert net.bytes_sent("guest") == len(net.log[0].frame) > 3 * 40  # 3 x 40-byte integers


def test_a_message_of_another_kind_is_a_named_protocol_error() -> None:
    net = LocalNetwork(["guest", "host"], timeout_s=60)

    def guest(ch):
        ch.send("host", Message("wrong", {}))

    def host(ch):
        ch.recv("guest", "right")

    with pytest.raises(PartyError, match="host failed: host expected 'right' from guest"):
        run_parties(net, {"guest": guest, "host": host})


def test_a_failed_party_stops_the_others_at_once() -> None:
    net = LocalNetwork(["guest", "host"], timeout_s=600)

    def guest(ch):
        raise ValueError("labels missing")

    def host(ch):
        ch.recv("guest", "gradients")  # would wait 600 s without the abort

    with pytest.raises(PartyError, match="party guest failed: labels missing"):
        run_parties(net, {"guest": guest, "host": host})


def test_unknown_parties_are_refused() -> None:
    net = LocalNetwork(["guest", "host"])
    with pytest.raises(PartyError, match="unknown party 'arbiter'"):
        net.channel("arbiter")
    with pytest.raises(PartyError, match="distinct"):
        LocalNetwork(["a", "a"])
