"""Datasets and partitioners: everything between files on disk and per-client index arrays.

Loaders return a :class:`TaskData` (train pool, server test set, and natural users when the data
has them); :mod:`fedfleet.data.partition` splits the train pool across clients; ``load_task`` and
``DATASETS`` name the datasets for configs and the CLI.
"""

from fedfleet.data import partition
from fedfleet.data._arrays import load_arrays, save_arrays
from fedfleet.data._base import ArrayDataset, Subset, TaskData
from fedfleet.data._digits import load_digits
from fedfleet.data._hf import load_hf
from fedfleet.data._idx import fashion_mnist, load_idx, mnist
from fedfleet.data._leaf import femnist, load_leaf
from fedfleet.data._registry import DATASETS, DatasetInfo, load_task
from fedfleet.data._synthetic import SyntheticDevice, synthetic, synthetic_device
from fedfleet.data._text import load_text_folder, shakespeare
from fedfleet.data._windows import TokenWindows

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
