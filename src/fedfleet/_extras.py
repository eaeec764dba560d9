"""Optional dependencies: which extra installs which package, and a one-line error when one is
missing.

fedfleet's core (torch, NumPy, pydantic, typer/rich, safetensors, scikit-learn) runs a simulation;
everything else comes with an extra (``pyproject.toml``). Code that needs an optional package
imports it where it is used, after :func:`require`, so ``import fedfleet`` never pays for it and
a user without it reads which extra to install instead of a traceback::

    require("grpc", extra="deploy", feature="the gRPC deployment")
    import grpc
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from fedfleet.errors import MissingExtra

__all__ = ["EXTRA_OF", "check", "missing_extra", "require"]

EXTRA_OF: dict[str, str] = {
    "grpc": "deploy",
    "google.protobuf": "deploy",
    "cryptography": "deploy",
    "dp_accounting": "privacy",
    "phe": "he",
    "gmpy2": "he",
    "tenseal": "he",
    "numba": "fast",
    "ray": "ray",
    "tensorboard": "track",
    "mlflow": "track",
    "matplotlib": "report",
    "transformers": "llm",
    "peft": "llm",
    "datasets": "hf",
}
"""Importable module -> the extra that installs it (``pip install 'fedfleet[EXTRA]'``)."""


def require(module: str, *, extra: str | None = None, feature: str) -> ModuleType:
    """Import ``module`` and return it, or raise :class:`MissingExtra` naming the extra.

    Args:
        module: the import name (``"grpc"``, ``"dp_accounting"``).
        extra: the extra that installs it; default its entry in :data:`EXTRA_OF`.
        feature: what needs it, for the message (``"the gRPC deployment"``).

    Raises:
        MissingExtra: ``module`` is not installed. An installed package that fails inside its
            own import raises its own error: that is a broken install, not a missing extra.
    """
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if not _names(err, module):
            raise
        raise _error(module, extra or EXTRA_OF[module], feature) from err


def check(module: str, *, extra: str | None = None, feature: str) -> None:
    """Raise :class:`MissingExtra` as :func:`require` does, without importing ``module``: for a
    constructor whose package is imported later (Ray, seconds to import), so a run stops before
    it starts rather than at its first round."""
    try:
        found = importlib.util.find_spec(module) is not None
    except ModuleNotFoundError as err:  # a parent package of a dotted name is missing
        if not _names(err, module):
            raise
        found = False
    if not found:
        raise _error(module, extra or EXTRA_OF[module], feature)


def missing_extra(err: ImportError) -> MissingExtra | None:
    """The :class:`MissingExtra` for an ImportError of an optional package, else None; lets the
    command line turn an import that no :func:`require` guarded into the same one line."""
    if isinstance(err, MissingExtra):
        return err
    if not isinstance(err, ModuleNotFoundError) or not err.name:
        return None
    for module, extra in EXTRA_OF.items():
        if _names(err, module):
            return _error(module, extra, "this command")
    return None


def _names(err: ModuleNotFoundError, module: str) -> bool:
    """Whether ``err`` is ``module`` (or one of its parents or submodules) not being found."""
    name = err.name or ""
    return name == module or module.startswith(name + ".") or name.startswith(module + ".")


def _error(module: str, extra: str, feature: str) -> MissingExtra:
    return MissingExtra(
        f"{feature} needs {module}, which is not installed: pip install 'fedfleet[{extra}]'"
    )
