"""Datasets and partitioners: everything between files on disk and per-client index arrays.

Loaders return a :class:`TaskData` (train pool, server test set, and natural users when the data
has them); :mod:`fedfleet.data.partition` splits the train pool across clients; ``load_task`` and
``DATASETS`` name the datasets for configs and the CLI.
"""

from fedfleet.data import partition
from fedfleet.data.arrays import load_arrays, save_arrays
from fedfleet.data.base import ArrayDataset, Subset, TaskData
from fedfleet.data.digits import load_digits
from fedfleet.data.hf import load_hf
from fedfleet.data.idx import fashion_mnist, load_idx, mnist
from fedfleet.data.leaf import femnist, load_leaf
from fedfleet.data.registry import DATASETS, DatasetInfo, load_task
from fedfleet.data.synthetic import SyntheticDevice, synthetic, synthetic_device
from fedfleet.data.text import load_text_folder, shakespeare
from fedfleet.data.windows import TokenWindows

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "DatasetInfo",
    "Subset",
    "SyntheticDevice",
    "TaskData",
    "TokenWindows",
    "fashion_mnist",
    "femnist",
    "load_arrays",
    "load_digits",
    "load_hf",
    "load_idx",
    "load_leaf",
    "load_task",
    "load_text_folder",
    "mnist",
    "partition",
    "save_arrays",
    "shakespeare",
    "synthetic",
    "synthetic_device",
]
