"""Vertical protocols by name, for configs and the CLI (``[vertical] protocol = "split-nn"``).

A protocol is a frozen dataclass of its settings with ``programs(parties)`` (simulation:
:class:`~fedfleet.vertical.VerticalProtocol`); one that also has ``program(data, roster)``
(:class:`Deployable`: the program of the one party holding ``data``, knowing only the roster's
names, guest first) runs deployed, each party a process of its own. Parties without data
that a protocol adds (HeteroLR's arbiter) are its ``roles``, a tuple of names on the built
protocol: they join the roster after the hosts, get certificates like any party, and their
program gets :meth:`PartyData.dataless <fedfleet.vertical.PartyData.dataless>`.

To add a protocol, register its class here with one line::

    PROTOCOLS["hetero-lr"] = HeteroLR

Its config keys are the dataclass's fields (``[vertical.settings]``); lists become tuples where
the field's default is a tuple; unknown keys are refused with the valid ones listed. The CLI
reports the guest's result: a mapping, or an object whose ``metrics`` is one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from fedfleet.errors import ConfigError
from fedfleet.vertical._channel import Channel
from fedfleet.vertical._hetero_lr import HeteroLinear, HeteroLR
from fedfleet.vertical._party import PartyData
from fedfleet.vertical._secureboost import SecureBoost
from fedfleet.vertical._split_nn import SplitNN

__all__ = ["PROTOCOLS", "Deployable", "build_protocol"]

PROTOCOLS: dict[str, type] = {
    "split-nn": SplitNN,
    "hetero-lr": HeteroLR,
    "hetero-linear": HeteroLinear,
    "secureboost": SecureBoost,
}
"""Protocol name -> its settings dataclass."""


@runtime_checkable
class Deployable(Protocol):
    """A protocol whose parties can run as separate processes."""

    def program(self, data: PartyData, roster: Sequence[str]) -> Callable[[Channel], Any]: ...


def build_protocol(name: str, settings: Mapping[str, Any]) -> Any:
    """The protocol ``name`` with ``settings`` (a config's keys), checked."""
    if name not in PROTOCOLS:
        raise ConfigError(
            f"unknown vertical protocol {name!r}; known: {', '.join(sorted(PROTOCOLS))}"
        )
    cls = PROTOCOLS[name]
    # fields a config cannot express (SecureBoost's key objects) are left out: repr=False
    fields = {f.name: f for f in dataclasses.fields(cls) if f.repr}
    unknown = sorted(set(settings) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown key(s) {unknown} in [vertical.settings] for {name}; valid keys: "
            f"{', '.join(sorted(fields))}"
        )
    kwargs = {
        k: tuple(v) if isinstance(v, list) and isinstance(fields[k].default, tuple) else v
        for k, v in settings.items()
    }
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ConfigError(f"[vertical.settings] for {name}: {err}") from None
