"""The files ``fedfleet new NAME`` writes, as text: ``{{name}}`` becomes the project's name and
``{{path}}`` the folder as the user typed it.

Strings rather than template files shipped as package data: nothing to declare in the packaging,
and the templates cannot be collected as tests or checked as modules of fedfleet by mistake.
"""

from __future__ import annotations

__all__ = ["FILES"]

MODEL = '''"""The model of {{name}}: edit `build` to change the network fedfleet trains.

fedfleet calls build(input_shape, num_classes) for every copy of the model it needs (the
server's, each training lane's) and federates every floating-point tensor of its state_dict.
Any torch.nn.Module works: convolutions for images (input_shape is (C, H, W)), an embedding
and a GRU for token ids, a pretrained backbone you load here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import nn


def build(input_shape: Sequence[int], num_classes: int) -> nn.Module:
    """A small MLP: flatten, one hidden ReLU layer of 64 units, then the class logits."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), 64),
        nn.ReLU(),
        nn.Linear(64, num_classes),
    )
'''

DATA = '''"""The data of {{name}}: edit `load` to return your own samples.

fedfleet calls load(seed) once per run. `train` is the pool that [data] in fedfleet.toml splits
across clients (num_clients, partition); `test` is the server's held-out set. For one client per
user of your data, also return natural_train (each user's row indices into train),
natural_test (their rows of test) and user_ids, and set partition = "natural".

To read a table or an image folder instead (the hf extra: pip install 'fedfleet[hf]'):

    from fedfleet.data import load_hf
    return load_hf(HERE / "clients.parquet", features=["x0", "x1"], label="y", seed=seed)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fedfleet.data import ArrayDataset, TaskData

HERE = Path(__file__).resolve().parent
CLASSES = 3
FEATURES = 8


def load(seed: int) -> TaskData:
    """A learnable stand-in for your data: Gaussian blobs, one mean per class.

    x is float32 [N, *input_shape]; y is int64 class labels in 0..num_classes-1.
    """
    rng = np.random.default_rng(seed)
    means = rng.normal(0.0, 2.0, size=(CLASSES, FEATURES))

    def draw(n: int) -> ArrayDataset:
        y = rng.integers(0, CLASSES, size=n)
        x = means[y] + rng.normal(0.0, 1.0, size=(n, FEATURES))
        return ArrayDataset(x.astype(np.float32), y.astype(np.int64))

    return TaskData(
        name="{{name}}",
        train=draw(1200),
        test=draw(300),
        num_classes=CLASSES,
        input_shape=(FEATURES,),
    )
'''

CONFIG = """# {{name}}: a federated run of your model on your data.
#   fedfleet run --config {{path}}/fedfleet.toml --out runs/first
# Paths to your code are relative to this file. `fedfleet algorithms` lists the strategies
# (`fedfleet algorithms NAME`: one's keys); fedfleet's README lists every other key.
seed = 0
rounds = 20

[data]
name = "custom"
loader = "data.py:load"       # load(seed) -> fedfleet.data.TaskData
num_clients = 10
partition = "dirichlet"       # iid, dirichlet, shards, quantity, natural
alpha = 0.5                   # label skew (smaller: each client sees fewer classes)

[model]
name = "custom"
factory = "model.py:build"    # build(input_shape, num_classes) -> torch.nn.Module

[strategy]
name = "fedavg"
clients_per_round = 5

[client]
epochs = 1
batch_size = 32
lr = 0.1
"""

TEST = '''"""Tests of {{name}}: `python -m pytest` in this folder. Edit them as your code grows.

They check that the data and the model fit together, and that a short federated run through
fedfleet.toml learns (better than chance on the server's test set).
"""

from __future__ import annotations

from pathlib import Path

import data
import model
import torch

from fedfleet.runs import load_config
from fedfleet.runs._build import build_run

HERE = Path(__file__).resolve().parent


def test_the_data_has_samples_of_one_shape_and_labels_in_range():
    task = data.load(seed=0)
    assert len(task.train) > 0 and len(task.test) > 0
    assert task.train.x.shape[1:] == task.test.x.shape[1:] == tuple(task.input_shape)
    assert task.train.y.min() >= 0 and task.train.y.max() < task.num_classes


def test_the_model_gives_one_logit_per_class():
    task = data.load(seed=0)
    net = model.build(task.input_shape, task.num_classes)
    logits = net(torch.from_numpy(task.test.x[:4]))
    assert logits.shape == (4, task.num_classes)


def test_a_short_federated_run_learns():
    config = load_config(HERE / "fedfleet.toml", ["rounds=5"])
    pieces = build_run(config)
    result = pieces.simulation.run(config.rounds)
    assert [r["round"] for r in result.history] == [1, 2, 3, 4, 5]
    assert result.final["test_accuracy"] > 1 / pieces.task.num_classes
'''

PYTEST_INI = """[pytest]
# this folder is the project's root: its tests import model.py and data.py from here
pythonpath = .
testpaths = .
"""

README = """# {{name}}

A federated learning project made by `fedfleet new`: your model, your data, a run config and a
test. Run it from the folder above this one:

```bash
fedfleet run --config {{path}}/fedfleet.toml --out runs/first   # train; metrics in runs/first
cd {{path}} && python -m pytest                                  # the project's tests
```

| file | what to edit |
|---|---|
| `model.py` | `build(input_shape, num_classes)`: the `torch.nn.Module` every client trains |
| `data.py` | `load(seed)`: a `fedfleet.data.TaskData` (train pool, server test set) |
| `fedfleet.toml` | clients, partition, rounds, strategy, training (`--set key=value` too) |
| `test_project.py` | checks that data and model fit and that a short run learns |

`fedfleet.toml` names your code as `FILE.py:FUNCTION` (`model.factory`, `data.loader`), relative
to the config file, so the project runs from any folder; rename the functions there too.
"""

FILES: dict[str, str] = {
    "model.py": MODEL,
    "data.py": DATA,
    "fedfleet.toml": CONFIG,
    "test_project.py": TEST,
    "pytest.ini": PYTEST_INI,
    "README.md": README,
}
"""File name -> template, in the order they are written."""
