"""Named datasets for the config file and the CLI: ``data.name`` -> loader.

Datasets read from files (MNIST, Fashion-MNIST, FEMNIST, generic LEAF) take ``data.path``; when it
is not given, the file-based ones are looked up under ``$FEDFLEET_DATA``, a directory holding
``mnist/``, ``fashion-mnist/``, ``femnist/`` and ``shakespeare/`` subfolders.
"""

from __future__ import annotations

import difflib
import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from fedfleet.data._base import TaskData
from fedfleet.data._digits import load_digits
from fedfleet.data._hf import load_hf
from fedfleet.data._idx import fashion_mnist, mnist
from fedfleet.data._leaf import femnist, load_leaf
from fedfleet.data._synthetic import synthetic
from fedfleet.data._text import load_text_folder, shakespeare
from fedfleet.errors import DatasetError

__all__ = ["DATASETS", "ENV_VAR", "DatasetInfo", "default_path", "describe", "load_task"]

ENV_VAR = "FEDFLEET_DATA"
_NOT_FOUND = f"not found: pass data.path or set {ENV_VAR}"


@dataclass(frozen=True)
class DatasetInfo:
    """One named dataset.

    Attributes:
        name: the name used in configs (``data.name``) and on the command line.
        description: one line for ``fedfleet datasets``.
        needs_path: whether it is read from files (``data.path`` or ``$FEDFLEET_DATA``).
        loader: builds the task; called with the directory first when ``needs_path``, then the
            options.
        source: where the data comes from when it is not read from files (for files in no
            standard folder, what ``fedfleet datasets`` says instead of "not found").
        subdir: the folder under ``$FEDFLEET_DATA`` that holds it, if any.
    """

    name: str
    description: str
    needs_path: bool
    loader: Callable[..., TaskData]
    source: str = ""
    subdir: str | None = None

    def options(self) -> list[str]:
        """The keyword options :meth:`load` accepts."""
        params = list(inspect.signature(self.loader).parameters.values())
        if self.needs_path:
            params = params[1:]
        fixed = getattr(self.loader, "keywords", {})  # set by functools.partial
        return [p.name for p in params if p.name not in fixed]

    def load(self, path: str | None = None, **options: Any) -> TaskData:
        """Load the dataset, from ``path`` (or the default location) when it is read from files.

        Raises:
            DatasetError: a path given to a dataset that reads none, no path found for one that
                needs it, an unknown option, or any problem of the loader itself.
        """
        unknown = sorted(set(options) - set(self.options()))
        if unknown:
            valid = ", ".join(self.options()) or "none"
            raise DatasetError(
                f"dataset {self.name!r} has no option {', '.join(map(repr, unknown))}; "
                f"valid: {valid}"
            )
        if not self.needs_path:
            if path is not None:
                raise DatasetError(
                    f"dataset {self.name!r} is {self.source} and reads no files, but data.path "
                    f"is set to {path!r}; remove data.path"
                )
            return self.loader(**options)
        where = Path(path) if path is not None else default_path(self.name)
        if where is None:
            hint = f" with a {self.subdir}/ subfolder" if self.subdir else ""
            raise DatasetError(
                f"dataset {self.name!r} is read from files: pass data.path "
                f"(--set data.path=DIR) or set {ENV_VAR} to a directory{hint}"
            )
        return self.loader(where, **options)


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo(
            "digits",
            "8x8 handwritten digits (1,797 images, 10 classes)",
            needs_path=False,
            loader=load_digits,
            source="bundled with scikit-learn",
        ),
        DatasetInfo(
            "mnist",
            "MNIST 28x28 digits (60,000 train / 10,000 test IDX files)",
            needs_path=True,
            loader=mnist,
            subdir="mnist",
        ),
        DatasetInfo(
            "fashion-mnist",
            "Fashion-MNIST 28x28 clothing (60,000 train / 10,000 test IDX files)",
            needs_path=True,
            loader=fashion_mnist,
            subdir="fashion-mnist",
        ),
        DatasetInfo(
            "femnist",
            "LEAF FEMNIST 28x28 characters, 62 classes, one client per writer",
            needs_path=True,
            loader=femnist,
            subdir="femnist",
        ),
        DatasetInfo(
            "leaf",
            "any numeric LEAF dataset (train/ and test/ JSON), one client per user",
            needs_path=True,
            loader=load_leaf,
        ),
        DatasetInfo(
            "hf",
            "your own data with Hugging Face datasets: a save_to_disk folder, Parquet, CSV or an "
            "image folder, by column names (needs the hf extra)",
            needs_path=True,
            loader=load_hf,
            source="your files at data.path",
        ),
        DatasetInfo(
            "shakespeare",
            "tiny Shakespeare next-character prediction, one client per speaking role",
            needs_path=True,
            loader=shakespeare,
            subdir="shakespeare",
        ),
        DatasetInfo(
            "text",
            "next-character prediction on a folder of .txt files, one client per file",
            needs_path=True,
            loader=load_text_folder,
        ),
        DatasetInfo(
            "synthetic",
            "FedProx Synthetic(alpha, beta): heterogeneous softmax-regression devices",
            needs_path=False,
            loader=partial(synthetic, iid=False),
            source="generated",
        ),
        DatasetInfo(
            "synthetic-iid",
            "FedProx Synthetic IID: one model and input distribution for all devices",
            needs_path=False,
            loader=partial(synthetic, iid=True),
            source="generated",
        ),
    )
}
"""Every dataset ``load_task`` knows, by name."""


def default_path(name: str) -> Path | None:
    """Where ``name`` is read from when no path is given: ``$FEDFLEET_DATA/<subdir>`` if it exists.

    None for datasets that read no files, for generic LEAF (which has no standard folder), and
    when the variable is unset or the folder is missing.
    """
    info = _info(name)
    root = os.environ.get(ENV_VAR)
    if not info.needs_path or info.subdir is None or not root:
        return None
    candidate = Path(root).expanduser() / info.subdir
    return candidate if candidate.is_dir() else None


def describe() -> list[tuple[str, str, str]]:
    """Rows (name, description, source) for ``fedfleet datasets``; source says where it is read
    from, or that it is bundled, generated, or not found."""
    rows = []
    for info in DATASETS.values():
        if not info.needs_path:
            source = info.source
        else:
            found = default_path(info.name)
            missing = _NOT_FOUND if info.subdir else info.source or "not found: pass data.path"
            source = str(found) if found is not None else missing
        rows.append((info.name, info.description, source))
    return rows


def load_task(name: str, path: str | None = None, **options: Any) -> TaskData:
    """Load a dataset by name; options go to its loader (e.g. ``seed``, ``test_fraction``).

    Examples:
        >>> task = load_task("synthetic", alpha=0.5, beta=0.5, num_devices=10, seed=0)
        >>> task.name
        'synthetic(0.5,0.5)'
    """
    return _info(name).load(path, **options)


def _info(name: str) -> DatasetInfo:
    if name not in DATASETS:
        close = difflib.get_close_matches(name, DATASETS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise DatasetError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}{hint}")
    return DATASETS[name]
