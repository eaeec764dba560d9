"""A function of the user's own project named in the config: ``"FILE.py:FUNCTION"``.

``model.name = "custom"`` builds the network with ``model.factory``, ``data.name = "custom"``
loads the task with ``data.loader`` (the project ``fedfleet new`` writes uses both). A relative
``FILE`` is resolved when the config is validated, against the folder of the config file that
names it (the working directory when there is none), and kept absolute, so the resolved config a
run writes (``config.toml``, which ``--resume`` reads) points at the same file from anywhere.

The file is imported as ``python FILE.py`` would see it (its folder on ``sys.path``, so it can
import its neighbours), once per process and again when it changes, under a private module name
(so two projects' ``model.py`` never clash); it is the user's own code, chosen by the user's own
config, so importing it is what the user asked for.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from pydantic import ValidationInfo
from pydantic_core import PydanticCustomError

from fedfleet.errors import ConfigError

__all__ = ["BASE_DIR", "load_reference", "resolve_reference"]

BASE_DIR = "base_dir"
"""The validation-context key holding the config file's folder (None: the working directory)."""

_MODULES: dict[Path, tuple[tuple[int, int], ModuleType]] = {}
"""Imported files: (modification time, size) when imported, and the module."""


def resolve_reference(value: str | None, info: ValidationInfo) -> str | None:
    """``value`` checked to read ``FILE.py:FUNCTION``, with a relative ``FILE`` made absolute
    against the config file's folder (a field validator's body).

    Raises:
        PydanticCustomError: another shape (pydantic reports it under the field's key).
    """
    if value is None:
        return None
    file, sep, function = value.rpartition(":")
    if not sep or not file.endswith(".py") or not function.isidentifier():
        raise PydanticCustomError(
            "code_reference",
            "{value} is not a reference to your code: write 'FILE.py:FUNCTION', e.g. "
            "'model.py:build' (FILE relative to the config file)",
            {"value": repr(value)},
        )
    path = Path(file).expanduser()
    if not path.is_absolute():
        base = (info.context or {}).get(BASE_DIR)
        path = (Path(base) if base is not None else Path.cwd()) / path
    return f"{path.resolve()}:{function}"


def load_reference(reference: str, key: str) -> Any:
    """The function a resolved reference names, importing its file on first use.

    Args:
        reference: ``"/abs/FILE.py:FUNCTION"``, as :func:`resolve_reference` leaves it.
        key: the config key that named it, for messages (``model.factory``).

    Raises:
        ConfigError: the file is missing, fails to import (the message gives the file and line
            where it failed), or defines no such function (the message lists those it does).
    """
    file, _, function = reference.rpartition(":")
    path = Path(file)
    if not path.is_file():
        raise ConfigError(
            f"{key} = {reference!r}: there is no file {path}; a relative path is read from the "
            "config file's folder"
        )
    module = _import(path, key)
    found = getattr(module, function, None)
    if not callable(found):
        defined = sorted(
            n
            for n, v in vars(module).items()
            if callable(v)
            and not n.startswith("_")
            and getattr(v, "__module__", None) == module.__name__
        )
        raise ConfigError(
            f"{key} = {reference!r}: {path.name} defines no function {function!r}; it defines "
            f"{', '.join(defined) or 'no functions'}"
        )
    return found


def _import(path: Path, key: str) -> ModuleType:
    path = path.resolve()
    stat = path.stat()
    stamp = (stat.st_mtime_ns, stat.st_size)
    if path in _MODULES and _MODULES[path][0] == stamp:
        return _MODULES[path][1]  # edited since (in a notebook, say): imported again
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:10]
    name = f"_fedfleet_user_{path.stem}_{digest}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None  # a .py file always has a loader
    module = importlib.util.module_from_spec(spec)
    folder = str(path.parent)
    if folder not in sys.path:
        sys.path.append(folder)  # after everything installed: the project never shadows a library
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename == str(path)]
        where = f"{path}, line {frames[-1].lineno}" if frames else str(path)
        raise ConfigError(f"{key}: importing {where} failed: {type(e).__name__}: {e}") from e
    _MODULES[path] = (stamp, module)
    return module
