"""The datasets ``data.name`` may select: each registered with its parameters and how to load it.

Two kinds: a *partitioned* dataset is one pool of samples that ``data.partition`` splits across
``data.num_clients`` clients (its parameters derive from :class:`PartitionParams`); a
*population* generates each client's data only when it is sampled (its entry has a
``population`` builder). The loaders themselves are in :mod:`fedfleet.data` (``fedfleet
datasets`` lists them) and :mod:`fedfleet.sim._population`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field, ValidationInfo, field_validator, model_validator

from fedfleet.data import TaskData, load_task
from fedfleet.data import partition as part
from fedfleet.errors import DatasetError
from fedfleet.runs._registry import Entry, Params, Registry
from fedfleet.runs._user_code import load_reference, resolve_reference
from fedfleet.sim import SyntheticPopulation

__all__ = ["DATASETS", "DataParams", "Dataset", "PartitionParams", "partition_clients"]


class DataParams(Params):
    """What every ``[data]`` section has."""

    num_clients: int = Field(20, ge=1)
    """Number of clients (the train pool is split across them; ignored by the natural
    partition)."""

    def held_out_clients(self) -> bool:
        """Whether clients have held-out data for federated evaluation."""
        return False

    def split(self) -> str:
        """How clients get their data, in a few words (for the run's banner)."""
        return "generated per client"


class PartitionParams(DataParams):
    """A dataset that is one pool of samples, split across clients."""

    partition: Literal["iid", "dirichlet", "shards", "quantity", "natural"] = "dirichlet"
    """How samples are split across clients ('natural': the dataset's own users)."""
    alpha: float = Field(0.5, gt=0)
    """Dirichlet concentration for label skew (smaller = more skewed)."""
    shards_per_client: int = Field(2, ge=1)
    """Shards per client for the pathological 'shards' partition."""
    quantity_distribution: Literal["lognormal", "power-law"] = "lognormal"
    """Client-size distribution for the 'quantity' partition."""
    quantity_sigma: float = Field(1.0, gt=0)
    """Lognormal sigma of client sizes."""
    quantity_exponent: float = Field(1.5, gt=0)
    """Power-law exponent of client sizes."""
    client_test_fraction: float = Field(0.0, ge=0, lt=1)
    """Held-out fraction of each client's samples for federated evaluation (0 = none)."""

    def held_out_clients(self) -> bool:
        return self.client_test_fraction > 0 or self.partition == "natural"

    def split(self) -> str:
        return self.partition


@dataclass(frozen=True, kw_only=True)
class Dataset(Entry[Any]):
    """A registered dataset.

    Attributes:
        load: the task (train pool, server test set) from the parameters and the run seed.
        population: for a lazily generated population, the population itself (its ``task``
            is the server's test set); None for a partitioned dataset.
        natural: whether the dataset has its own users (``data.partition = 'natural'``).
        tokens: whether samples are windows of token ids (text), for the language models.
    """

    load: Callable[[Any, int], TaskData]
    population: Callable[[Any, int], SyntheticPopulation] | None = None
    natural: bool = False
    tokens: bool = False


DATASETS: Registry[Dataset, DataParams] = Registry(
    kind="dataset", section="data", base=DataParams, default="digits"
)
"""Every dataset the config can name."""

_PARTITIONS: dict[str, Callable[[PartitionParams, TaskData, int], list[np.ndarray]]] = {
    "iid": lambda d, task, seed: part.iid(len(task.train), d.num_clients, seed=seed),
    "dirichlet": lambda d, task, seed: part.dirichlet(
        task.train.y, d.num_clients, d.alpha, seed=seed
    ),
    "shards": lambda d, task, seed: part.shards(
        task.train.y, d.num_clients, d.shards_per_client, seed=seed
    ),
    "quantity": lambda d, task, seed: part.quantity_skew(
        len(task.train),
        d.num_clients,
        seed=seed,
        distribution=d.quantity_distribution,
        sigma=d.quantity_sigma,
        exponent=d.quantity_exponent,
    ),
    "natural": lambda d, task, seed: part.natural(task),
}


def partition_clients(data: PartitionParams, task: TaskData, seed: int) -> list[np.ndarray]:
    """Each client's sample indices into ``task.train``, as ``data.partition`` splits them."""
    return _PARTITIONS[data.partition](data, task, seed)


# -- bundled and generated ------------------------------------------------------------------


class DigitsParams(PartitionParams):
    name: Literal["digits"] = "digits"
    test_fraction: float = Field(0.2, gt=0, lt=1)
    """Share of the images held out as the server's test set."""


DATASETS.register(
    Dataset(
        name="digits",
        params=DigitsParams,
        summary="8x8 handwritten digits bundled with scikit-learn (1,797 images, 10 classes)",
        load=lambda d, seed: load_task("digits", test_fraction=d.test_fraction, seed=seed),
    )
)


class _SyntheticParams(PartitionParams):
    synthetic_alpha: float = Field(1.0, ge=0)
    """Synthetic(alpha, beta): model heterogeneity across devices."""
    synthetic_beta: float = Field(1.0, ge=0)
    """Synthetic(alpha, beta): data heterogeneity across devices."""
    num_devices: int = Field(30, ge=1)
    """Number of Synthetic devices (the natural partition's clients)."""
    test_fraction: float = Field(0.2, gt=0, lt=1)
    """Share of each device's samples held out as the server's test set."""


class SyntheticParams(_SyntheticParams):
    name: Literal["synthetic"] = "synthetic"


class SyntheticIidParams(_SyntheticParams):
    name: Literal["synthetic-iid"] = "synthetic-iid"


def _synthetic(d: _SyntheticParams, seed: int) -> TaskData:
    return load_task(
        d.name,
        alpha=d.synthetic_alpha,
        beta=d.synthetic_beta,
        num_devices=d.num_devices,
        test_fraction=d.test_fraction,
        seed=seed,
    )


DATASETS.register(
    Dataset(
        name="synthetic",
        params=SyntheticParams,
        summary="FedProx Synthetic(alpha, beta): heterogeneous softmax-regression devices",
        load=_synthetic,
        natural=True,
    )
)
DATASETS.register(
    Dataset(
        name="synthetic-iid",
        params=SyntheticIidParams,
        summary="FedProx Synthetic IID: one model and input distribution for all devices",
        load=_synthetic,
        natural=True,
    )
)


# -- read from files ------------------------------------------------------------------------


class _FilesParams(PartitionParams):
    path: str | None = None
    """Directory of the files; default $FEDFLEET_DATA/<name> (see `fedfleet datasets`)."""


class MnistParams(_FilesParams):
    name: Literal["mnist"] = "mnist"


class FashionMnistParams(_FilesParams):
    name: Literal["fashion-mnist"] = "fashion-mnist"


class FemnistParams(_FilesParams):
    name: Literal["femnist"] = "femnist"


class LeafParams(_FilesParams):
    name: Literal["leaf"] = "leaf"


def _files(d: _FilesParams, seed: int) -> TaskData:
    return load_task(d.name, path=d.path)


DATASETS.register(
    Dataset(
        name="mnist",
        params=MnistParams,
        summary="MNIST 28x28 digits (IDX files)",
        load=_files,
    )
)
DATASETS.register(
    Dataset(
        name="fashion-mnist",
        params=FashionMnistParams,
        summary="Fashion-MNIST 28x28 clothing (IDX files)",
        load=_files,
    )
)
DATASETS.register(
    Dataset(
        name="femnist",
        params=FemnistParams,
        summary="LEAF FEMNIST 28x28 characters, 62 classes, one user per writer",
        load=_files,
        natural=True,
    )
)
DATASETS.register(
    Dataset(
        name="leaf",
        params=LeafParams,
        summary="any numeric LEAF dataset (train/ and test/ JSON), one user per LEAF user",
        load=_files,
        natural=True,
    )
)


# -- where users keep their data (Hugging Face datasets) -----------------------------------


class HfParams(PartitionParams):
    name: Literal["hf"] = "hf"
    path: str | None = None
    """A save_to_disk folder, a Parquet or CSV file (or a folder of them), or an image folder."""
    format: Literal["auto", "disk", "parquet", "csv", "imagefolder"] = "auto"
    """How to read `path` ('auto': a save_to_disk folder, else by the files' suffixes)."""
    features: str | tuple[str, ...] | None = None
    """Input column(s): numeric ones stacked, or one image column (default: all but label and
    client_id)."""
    label: str = "label"
    """The class column (integers, a ClassLabel, or strings)."""
    client_id: str | None = None
    """The column naming each row's client: data.partition = 'natural' gives one client each."""
    train_split: str | None = None
    """The split to train on (default 'train', or the only one)."""
    test_split: str | None = None
    """The server's test split (default 'test' or 'validation' if present, else test_fraction)."""
    test_fraction: float = Field(0.2, gt=0, lt=1)
    """Share of the rows (of each client's, with client_id) held out when there is no test split."""

    @model_validator(mode="after")
    def _natural_needs_ids(self) -> HfParams:
        if self.partition == "natural" and self.client_id is None:
            raise ValueError(
                "data.partition = 'natural' needs data.client_id, the column naming each row's "
                "client; or split the rows with iid, dirichlet, shards or quantity"
            )
        return self


def _hf(d: HfParams, seed: int) -> TaskData:
    if d.path is None:
        raise DatasetError(
            "data.name = 'hf' reads your data from data.path: set it to a save_to_disk folder, "
            "a Parquet or CSV file (or a folder of them) or an image folder "
            "(--set data.path=PATH)"
        )
    return load_task(
        "hf",
        path=d.path,
        format=d.format,
        features=d.features,
        label=d.label,
        client_id=d.client_id,
        train_split=d.train_split,
        test_split=d.test_split,
        test_fraction=d.test_fraction,
        seed=seed,
    )


DATASETS.register(
    Dataset(
        name="hf",
        params=HfParams,
        summary="your own data via Hugging Face datasets (save_to_disk, Parquet, CSV, image "
        "folder), by column names; natural clients by client_id (the hf extra)",
        load=_hf,
        natural=True,
    )
)


# -- the user's own loader ------------------------------------------------------------------


class CustomDataParams(PartitionParams):
    name: Literal["custom"] = "custom"
    loader: str | None = None
    """Your loader: 'FILE.py:FUNCTION' (FILE relative to the config file), called as
    FUNCTION(seed) -> fedfleet.data.TaskData."""

    @field_validator("loader")
    @classmethod
    def _resolve(cls, value: str | None, info: ValidationInfo) -> str | None:
        return resolve_reference(value, info)


def _custom(d: CustomDataParams, seed: int) -> TaskData:
    if d.loader is None:
        raise DatasetError(
            "data.name = 'custom' loads your data with data.loader = 'FILE.py:FUNCTION' "
            "(e.g. 'data.py:load'); set it"
        )
    task = load_reference(d.loader, "data.loader")(seed)
    if not isinstance(task, TaskData):
        raise DatasetError(
            f"data.loader = {d.loader!r} returned {type(task).__name__}, not a "
            "fedfleet.data.TaskData; return TaskData(name, train, test, num_classes, "
            "input_shape) with ArrayDataset(x, y) for train and test"
        )
    return task


DATASETS.register(
    Dataset(
        name="custom",
        params=CustomDataParams,
        summary="your own data, loaded by data.loader = 'FILE.py:FUNCTION' (fedfleet new "
        "writes one); natural users if its TaskData has them",
        load=_custom,
        natural=True,
    )
)


class _TextParams(_FilesParams):
    partition: Literal["iid", "dirichlet", "shards", "quantity", "natural"] = "natural"
    """How windows are split across clients ('natural': one client per role or file)."""
    window: int = Field(80, ge=1)
    """Characters of context per sample (LEAF: 80 predict the 81st)."""
    test_fraction: float = Field(0.2, gt=0, lt=1)
    """Last share of each client's windows held out (client and server test sets)."""
    min_windows: int = Field(64, ge=2)
    """Clients (roles, files) with fewer windows are dropped."""
    test_stride: int = Field(1, ge=1)
    """Keep every k-th held-out window (cheaper evaluation of the same text)."""


class ShakespeareParams(_TextParams):
    name: Literal["shakespeare"] = "shakespeare"


class TextParams(_TextParams):
    name: Literal["text"] = "text"


def _text(d: _TextParams, seed: int) -> TaskData:
    return load_task(
        d.name,
        path=d.path,
        window=d.window,
        test_fraction=d.test_fraction,
        min_windows=d.min_windows,
        test_stride=d.test_stride,
    )


DATASETS.register(
    Dataset(
        name="shakespeare",
        params=ShakespeareParams,
        summary="tiny Shakespeare, next character from 80, one client per speaking role (LEAF)",
        load=_text,
        natural=True,
        tokens=True,
    )
)
DATASETS.register(
    Dataset(
        name="text",
        params=TextParams,
        summary="a folder of .txt files, next character from 80, one client per file",
        load=_text,
        natural=True,
        tokens=True,
    )
)


# -- generated populations ------------------------------------------------------------------


class _PopulationParams(DataParams):
    iid: ClassVar[bool] = False
    synthetic_alpha: float = Field(1.0, ge=0)
    """Synthetic(alpha, beta): model heterogeneity across devices."""
    synthetic_beta: float = Field(1.0, ge=0)
    """Synthetic(alpha, beta): data heterogeneity across devices."""
    max_samples: int | None = Field(None, ge=1)
    """Cap on a device's sample count (its sizes have a long tail)."""


class SyntheticPopulationParams(_PopulationParams):
    name: Literal["synthetic-population"] = "synthetic-population"


class SyntheticIidPopulationParams(_PopulationParams):
    name: Literal["synthetic-iid-population"] = "synthetic-iid-population"
    iid: ClassVar[bool] = True


def _population(d: _PopulationParams, seed: int) -> SyntheticPopulation:
    return SyntheticPopulation(
        num_clients=d.num_clients,
        iid=d.iid,
        alpha=d.synthetic_alpha,
        beta=d.synthetic_beta,
        seed=seed,
        max_samples=d.max_samples,
    )


def _population_task(d: _PopulationParams, seed: int) -> TaskData:
    return _population(d, seed).task


DATASETS.register(
    Dataset(
        name="synthetic-population",
        params=SyntheticPopulationParams,
        summary="num_clients Synthetic(alpha, beta) devices generated only when sampled (a "
        "million work); the server tests on 50 devices never trained on",
        load=_population_task,
        population=_population,
    )
)
DATASETS.register(
    Dataset(
        name="synthetic-iid-population",
        params=SyntheticIidPopulationParams,
        summary="the same with one model shared by every device",
        load=_population_task,
        population=_population,
    )
)
