"""Named entries at the config edge: what ``strategy.name``, ``data.name`` and ``model.name`` may
be, which keys each one takes, and how to build it.

A :class:`Registry` holds one kind of entry (algorithms, datasets or models). Each entry names a
frozen pydantic :class:`Params` model, one docstring per field, whose ``name`` field is
``Literal[<its name>]``; the config section of that kind is validated with the model its ``name``
picks (:meth:`Registry.validate`), so every entry gets its own keys, defaults and bounds, and the
section is a union keyed on ``name`` built from the registry at validation time. Errors say what is
registered: an unknown name lists the registered names, an unknown key lists the keys of *that*
entry and which other entries take it.

Capabilities (runs asynchronously, needs the torch backend, ...) are fields of the entry types in
:mod:`fedfleet.runs.algorithms`, :mod:`fedfleet.runs._datasets` and :mod:`fedfleet.runs._models`;
the run config's validator asks the registry for them instead of keeping lists of names.

Examples:
    >>> from fedfleet.runs.algorithms import ALGORITHMS
    >>> ALGORITHMS.validate({"name": "fedprox", "mu": 0.1}).mu
    0.1
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Generic, NoReturn, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic_core import InitErrorDetails, PydanticCustomError

from fedfleet.errors import ConfigError

__all__ = ["Entry", "Params", "Registry"]


class Params(BaseModel):
    """The base of a named section's parameters: frozen, unknown keys forbidden, the attribute
    docstrings kept as the fields' descriptions. A registered subclass declares
    ``name: Literal["its-name"] = "its-name"``."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    name: str
    """The registered name that selects these parameters (the entry's summary documents it)."""


P = TypeVar("P", bound=Params)


@dataclass(frozen=True, kw_only=True)
class Entry(Generic[P]):
    """One registered name: its parameters and a one-line summary (with the paper, if any)."""

    name: str
    params: type[P]
    summary: str

    def keys(self) -> list[str]:
        """The keys its section accepts, in declaration order."""
        return list(self.params.model_fields)


E = TypeVar("E", bound=Entry[Any])
B = TypeVar("B", bound=Params)


def _or_list(names: list[str]) -> str:
    """``'a', 'b' or 'c'``, as pydantic words a Literal's choices."""
    quoted = [repr(n) for n in names]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


class Registry(Generic[E, B]):
    """The entries of one kind, by name, in registration order.

    Args:
        kind: what an entry is, for messages ('strategy', 'dataset', 'model').
        section: the config section whose ``name`` selects an entry ('strategy', 'data', ...).
        base: the class every entry's parameters derive from.
        default: the name used when the section gives none.
    """

    def __init__(self, *, kind: str, section: str, base: type[B], default: str) -> None:
        self.kind = kind
        self.section = section
        self.base = base
        self.default = default
        self._entries: dict[str, E] = {}

    def register(self, entry: E) -> E:
        """Add ``entry``; its parameters must be a ``base`` subclass whose ``name`` defaults to
        the entry's name and whose every other field has a docstring.

        Raises:
            ConfigError: a name registered twice, or parameters that break those rules.
        """
        name, params = entry.name, entry.params
        if name in self._entries:
            raise ConfigError(f"{self.kind} {name!r} is registered twice; pick another name")
        if not issubclass(params, self.base):
            raise ConfigError(
                f"{self.kind} {name!r}: its parameters {params.__name__} must derive from "
                f"{self.base.__name__}"
            )
        if params.model_fields["name"].default != name:
            raise ConfigError(
                f"{self.kind} {name!r}: {params.__name__} must declare "
                f'name: Literal["{name}"] = "{name}"'
            )
        undocumented = [
            k for k, f in params.model_fields.items() if k != "name" and not f.description
        ]
        if undocumented:
            raise ConfigError(
                f"{self.kind} {name!r}: give {params.__name__}'s fields "
                f"{', '.join(undocumented)} a docstring (one line under each says what it does)"
            )
        self._entries[name] = entry
        return entry

    def __getitem__(self, name: str) -> E:
        try:
            return self._entries[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}; registered: {', '.join(self._entries)}"
                f"{self._did_you_mean(name)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[E]:
        return iter(self._entries.values())

    def names(self, where: Callable[[E], bool] | None = None) -> list[str]:
        """The registered names (those whose entry satisfies ``where``, if given)."""
        return [n for n, e in self._entries.items() if where is None or where(e)]

    def validate(self, value: Any, context: Mapping[str, Any] | None = None) -> B:
        """The section's raw value (a mapping from TOML or ``--set``, or parameters already
        built) validated with the parameters of the entry its ``name`` picks (``context``:
        pydantic's validation context, e.g. the config file's folder).

        Raises:
            pydantic.ValidationError: its errors are located inside the section, and say what is
                valid (the registered names; the keys of the entry named).
        """
        if isinstance(value, self.base):
            return value
        if not isinstance(value, Mapping):
            self._raise(
                {
                    "type": PydanticCustomError(
                        "section_expected",
                        "[{section}] is a section of keys, not a value: write [{section}] with "
                        "name = ... (or --set {section}.name=...)",
                        {"section": self.section},
                    ),
                    "loc": (),
                    "input": value,
                }
            )
        name = value.get("name", self.default)
        if not isinstance(name, str) or name not in self._entries:
            hint = self._did_you_mean(name) if isinstance(name, str) else ""
            self._raise(
                {
                    "type": PydanticCustomError(
                        "unknown_name",
                        "Input should be {expected}{hint}",
                        {"expected": _or_list(list(self._entries)), "hint": hint},
                    ),
                    "loc": ("name",),
                    "input": name,
                }
            )
        entry = self._entries[name]
        unknown = [k for k in value if k not in entry.params.model_fields]
        if unknown:
            self._raise(*(self._unknown_key(entry, str(k), value[k]) for k in unknown))
        params: B = entry.params.model_validate(dict(value), context=context)
        return params

    def _unknown_key(self, entry: E, key: str, value: Any) -> InitErrorDetails:
        others = [e.name for e in self if key in e.params.model_fields]
        where = (
            f"; {key} is a parameter of {', '.join(others)} and has no effect with {entry.name}"
            if others
            else ""
        )
        return {
            "type": PydanticCustomError(
                "unknown_key",
                "unknown key {key} for {kind} {quoted}{where}; valid keys in [{section}] for "
                "{name}: {valid}",
                {
                    "key": repr(f"{self.section}.{key}"),
                    "kind": self.kind,
                    "quoted": repr(entry.name),
                    "name": entry.name,
                    "where": where,
                    "section": self.section,
                    "valid": ", ".join(entry.keys()),
                },
            ),
            "loc": (key,),
            "input": value,
        }

    def _raise(self, *errors: InitErrorDetails) -> NoReturn:
        raise ValidationError.from_exception_data(self.section, list(errors))

    def _did_you_mean(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._entries), n=1)
        return f"; did you mean {close[0]!r}?" if close else ""
