"""How the parties of a vertical protocol talk: named parties exchanging messages over channels.

A vertical protocol (PSI, hetero logistic regression, SecureBoost, split learning) is one
program per party, written against :class:`Channel`: ``send(to, message)`` and
``recv(sender, kind)``. Where the parties run is the channel's business:

- :class:`LocalNetwork`: every party a thread of this process. Each message is encoded into the
  codec's frame (:func:`fedfleet._codec.to_frame`: a JSON header and raw numeric arrays,
  nothing else) and decoded by the receiver, so what a simulated party gets is byte for byte
  what would travel; the network keeps a log of every delivery for tests that check what each
  party sees.
- over gRPC with mutual TLS (:mod:`fedfleet.vertical._net`), the same frames through a relay.

Messages are :class:`fedfleet._codec.Message`: a ``kind``, a JSON ``body`` and numeric
arrays. Big integers (Paillier ciphertexts) travel as fixed-width little-endian ``uint8`` rows
(:func:`ints_to_array`, :func:`array_to_ints`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedfleet._codec import Message, from_frame, to_frame
from fedfleet.errors import FedfleetError

__all__ = [
    "Channel",
    "Delivery",
    "LocalNetwork",
    "PartyError",
    "array_to_ints",
    "ints_to_array",
    "run_parties",
]


class PartyError(FedfleetError, RuntimeError):
    """A party of a vertical protocol failed, or waited too long for a message."""


class Channel(Protocol):
    """One party's end of a vertical protocol's network."""

    @property
    def party(self) -> str:
        """This party's name (``"guest"``, ``"host-0"``, ``"arbiter"``)."""
        ...

    def send(self, to: str, message: Message) -> None:
        """Deliver ``message`` to party ``to`` (in order, per sender and receiver)."""
        ...

    def recv(self, sender: str, kind: str, timeout: float | None = None) -> Message:
        """The next message from ``sender``; it must be of ``kind`` (protocols are lockstep: a
        message of another kind is a protocol error, named)."""
        ...


@dataclass(frozen=True)
class Delivery:
    """One message as it travelled: who sent it to whom, its kind and its encoded bytes."""

    sender: str
    receiver: str
    kind: str
    frame: bytes

    def decoded(self) -> Message:
        return from_frame(self.frame, source=f"{self.sender} -> {self.receiver}")


@dataclass
class LocalNetwork:
    """Parties in one process: one FIFO queue per (sender, receiver) pair, frames on the wire.

    Attributes:
        parties: the parties' names.
        timeout_s: how long ``recv`` waits by default before failing (a party that died or a
            protocol that deadlocked ends with an error naming who waited for whom).
        log: every delivery, in order of sending.
    """

    parties: Sequence[str]
    timeout_s: float = 600.0
    log: list[Delivery] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(set(self.parties)) != len(self.parties):
            raise PartyError(f"party names must be distinct, got {list(self.parties)}")
        self._queues: dict[tuple[str, str], queue.Queue[bytes]] = {
            (a, b): queue.Queue() for a in self.parties for b in self.parties if a != b
        }
        self._lock = threading.Lock()
        self._failed: str | None = None

    def abort(self, party: str) -> None:
        """``party`` failed: every party waiting in ``recv`` stops at once, saying so."""
        self._failed = self._failed or party

    def channel(self, party: str) -> _LocalChannel:
        if party not in self.parties:
            raise PartyError(f"unknown party {party!r}; parties are {list(self.parties)}")
        return _LocalChannel(self, party)

    def received(self, party: str) -> list[Delivery]:
        """Every message ``party`` was sent: what it has seen, for checks of what leaks."""
        return [d for d in self.log if d.receiver == party]

    def bytes_sent(self, sender: str | None = None) -> int:
        """Bytes of the frames sent (by ``sender``, or by everyone)."""
        return sum(len(d.frame) for d in self.log if sender is None or d.sender == sender)

    def _put(self, sender: str, receiver: str, message: Message) -> None:
        if receiver not in self.parties:
            raise PartyError(f"{sender} sent {message.kind!r} to unknown party {receiver!r}")
        frame = to_frame(message)
        with self._lock:
            self.log.append(Delivery(sender, receiver, message.kind, frame))
        self._queues[(sender, receiver)].put(frame)

    def _get(self, sender: str, receiver: str, kind: str, timeout: float | None) -> Message:
        wait = self.timeout_s if timeout is None else timeout
        deadline = time.monotonic() + wait
        while True:
            if self._failed is not None:
                raise PartyError(f"{receiver} stopped waiting for {kind!r}: {self._failed} failed")
            try:
                frame = self._queues[(sender, receiver)].get(timeout=0.2)
                break
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise PartyError(
                        f"{receiver} waited {wait:g} s for {kind!r} from {sender}, which sent "
                        "nothing"
                    ) from None
        message = from_frame(frame, source=f"{sender} -> {receiver}")
        if message.kind != kind:
            raise PartyError(f"{receiver} expected {kind!r} from {sender} but got {message.kind!r}")
        return message


@dataclass(frozen=True)
class _LocalChannel:
    network: LocalNetwork
    name: str

    @property
    def party(self) -> str:
        return self.name

    def send(self, to: str, message: Message) -> None:
        self.network._put(self.name, to, message)

    def recv(self, sender: str, kind: str, timeout: float | None = None) -> Message:
        return self.network._get(sender, self.name, kind, timeout)


def run_parties(
    network: LocalNetwork, programs: Mapping[str, Callable[[Channel], Any]]
) -> dict[str, Any]:
    """Run each party's program on its own thread with its channel; their results by party.
    The first failure is raised (as a :class:`PartyError` naming the party) once every thread
    ended; a party waiting on a failed one ends at its ``recv`` timeout."""
    results: dict[str, Any] = {}
    errors: dict[str, BaseException] = {}

    def run(party: str, program: Callable[[Channel], Any]) -> None:
        try:
            results[party] = program(network.channel(party))
        except BaseException as err:  # reported below, with the party's name
            errors[party] = err
            network.abort(party)

    threads = [
        threading.Thread(target=run, args=(p, f), name=f"party-{p}", daemon=True)
        for p, f in programs.items()
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        first = network._failed if network._failed in errors else next(iter(errors))
        raise PartyError(f"party {first} failed: {errors[first]}") from errors[first]
    return results


def ints_to_array(values: Sequence[int], width: int | None = None) -> np.ndarray:
    """Non-negative big integers (ciphertexts) as a ``(len, width)`` uint8 array, little-endian;
    ``width`` defaults to the widest value's byte length."""
    if any(v < 0 for v in values):
        raise ValueError("ints_to_array encodes non-negative integers only")
    if width is None:
        width = max((max(v.bit_length(), 1) + 7) // 8 for v in values) if values else 1
    out = np.zeros((len(values), width), dtype=np.uint8)
    for i, v in enumerate(values):
        out[i] = np.frombuffer(v.to_bytes(width, "little"), dtype=np.uint8)
    return out


def array_to_ints(array: np.ndarray) -> list[int]:
    """The integers :func:`ints_to_array` encoded."""
    if array.dtype != np.uint8 or array.ndim != 2:
        raise ValueError(f"expected a 2-D uint8 array of integers, got {array.dtype} {array.shape}")
    return [int.from_bytes(row.tobytes(), "little") for row in array]
