"""Synthetic(alpha, beta): the heterogeneous logistic-regression devices of FedProx.

Li et al., "Federated Optimization in Heterogeneous Networks" (MLSys 2020), Section 5.1. Device k
draws its own softmax-regression model and its own input distribution:

    u_k ~ N(0, alpha^2)        B_k ~ N(0, beta^2)
    W_k [classes x dim], b_k [classes] ~ N(u_k, 1)      v_k [dim] ~ N(B_k, 1)
    x ~ N(v_k, Sigma),  Sigma diagonal with Sigma_jj = j^(-1.2)  (j = 1..dim)
    y = argmax softmax(W_k x + b_k)

alpha controls how much the local models differ, beta how much the local inputs differ. The
device sizes follow the FedProx code: ``int(lognormal(mean=4, sigma=2)) + 50``, a heavy tail in
which a few devices hold tens of thousands of samples. The IID variant (the FedProx repository's
``data/synthetic_iid/generate_iid.py``) shares one W, b ~ N(0, 1) across devices and draws every
x from the same N(0, Sigma).

Every device is generated from ``(seed, k)`` alone, so one device can be built without the
others (:func:`synthetic_device`); a federation of millions of devices can be generated lazily.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

import fedfleet._streams as _streams
from fedfleet.data._base import ArrayDataset, TaskData
from fedfleet.errors import DatasetError

__all__ = ["SyntheticDevice", "device_rng", "synthetic", "synthetic_device"]


@dataclass(frozen=True)
class SyntheticDevice:
    """One device's samples and the parameters that generated them.

    Attributes:
        x: float32 ``[n, dim]`` inputs.
        y: int64 ``[n]`` labels, ``argmax(W x + b)``.
        W: float64 ``[classes, dim]`` the device's model weights (shared in the IID variant).
        b: float64 ``[classes]`` the device's model bias (shared in the IID variant).
        v: float64 ``[dim]`` the mean of the device's inputs.
    """

    x: np.ndarray
    y: np.ndarray
    W: np.ndarray
    b: np.ndarray
    v: np.ndarray


def device_rng(seed: int, k: int) -> np.random.Generator:
    """The generator device k draws from: depends on ``(seed, k)`` only.

    Its first draw is the device size, ``int(lognormal(4, 2)) + 50``, so a caller can learn a
    device's size without generating its samples.
    """
    return _streams.generator([_streams.SYNTHETIC_ENTROPY, seed], _streams.synthetic_device(k))


def synthetic_device(
    k: int,
    *,
    alpha: float = 1.0,
    beta: float = 1.0,
    iid: bool = False,
    dim: int = 60,
    num_classes: int = 10,
    seed: int = 0,
) -> SyntheticDevice:
    """Generate device k of Synthetic(alpha, beta) (or of the IID variant) on its own.

    The result depends on ``(seed, k)`` and the shape arguments only, never on other devices.
    In the IID variant the shared W, b come from a separate stream of ``seed``, so every device
    sees the same ones; alpha and beta are then unused.

    Examples:
        >>> d = synthetic_device(3, alpha=0.5, beta=0.5, seed=0)
        >>> d.x.shape[1], d.x.shape[0] >= 50
        (60, True)
    """
    _check(alpha=alpha, beta=beta, dim=dim, num_classes=num_classes, seed=seed)
    if k < 0:
        raise DatasetError(f"synthetic: device index must be >= 0, got {k}")
    rng = device_rng(seed, k)
    n = int(rng.lognormal(4.0, 2.0)) + 50
    if iid:
        shared = _streams.generator([_streams.SYNTHETIC_ENTROPY, seed], _streams.synthetic_shared())
        w = shared.normal(0.0, 1.0, size=(num_classes, dim))
        b = shared.normal(0.0, 1.0, size=num_classes)
        v = np.zeros(dim)
    else:
        u = rng.normal(0.0, alpha)
        big_b = rng.normal(0.0, beta)
        w = rng.normal(u, 1.0, size=(num_classes, dim))
        b = rng.normal(u, 1.0, size=num_classes)
        v = rng.normal(big_b, 1.0, size=dim)
    scale = np.arange(1, dim + 1, dtype=np.float64) ** -0.6  # sqrt(j^-1.2)
    x = (v + rng.standard_normal((n, dim)) * scale).astype(np.float32)
    # softmax is monotone, so its argmax is the argmax of the logits; labels are computed from
    # the stored float32 inputs so that they are exactly a function of what a model sees.
    y = np.argmax(x.astype(np.float64) @ w.T + b, axis=1).astype(np.int64)
    return SyntheticDevice(x=x, y=y, W=w, b=b, v=v)


def synthetic(
    alpha: float = 1.0,
    beta: float = 1.0,
    num_devices: int = 30,
    iid: bool = False,
    dim: int = 60,
    num_classes: int = 10,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> TaskData:
    """Synthetic(alpha, beta) over ``num_devices`` devices, each a natural client.

    Device k keeps its last ``round(test_fraction * n_k)`` samples for testing (its samples are
    i.i.d. draws, so that is a uniformly random split fixed by the seed). The train and test
    pools concatenate the devices in order; ``natural_train[k]`` / ``natural_test[k]`` index
    device k's samples in them, and the server's test set is the union of the devices' tests.

    Args:
        alpha: model heterogeneity (std of u_k); 0 gives every device the same mean weight.
        beta: input heterogeneity (std of B_k).
        num_devices: number of devices (clients).
        iid: generate the IID variant (shared W, b and input distribution) instead.
        dim: input dimension (60 in FedProx).
        num_classes: number of labels (10 in FedProx).
        test_fraction: share of each device's samples held out, in [0, 1).
        seed: the one seed every device's stream derives from.

    Examples:
        >>> task = synthetic(0.5, 0.5, num_devices=30, seed=0)
        >>> task.name, task.input_shape, len(task.user_ids)
        ('synthetic(0.5,0.5)', (60,), 30)
    """
    if num_devices < 1:
        raise DatasetError(f"synthetic: num_devices must be >= 1, got {num_devices}")
    if not 0.0 <= test_fraction < 1.0:
        raise DatasetError(f"synthetic: test_fraction must be in [0, 1), got {test_fraction}")
    xs_train, ys_train, xs_test, ys_test = [], [], [], []
    nat_train, nat_test = [], []
    n_train_total = n_test_total = 0
    for k in range(num_devices):
        d = synthetic_device(
            k, alpha=alpha, beta=beta, iid=iid, dim=dim, num_classes=num_classes, seed=seed
        )
        n = len(d.y)
        n_test = min(int(np.floor(test_fraction * n + 0.5)), n - 1)
        cut = n - n_test
        xs_train.append(d.x[:cut])
        ys_train.append(d.y[:cut])
        xs_test.append(d.x[cut:])
        ys_test.append(d.y[cut:])
        nat_train.append(np.arange(n_train_total, n_train_total + cut, dtype=np.int64))
        nat_test.append(np.arange(n_test_total, n_test_total + n_test, dtype=np.int64))
        n_train_total += cut
        n_test_total += n_test
    return TaskData(
        name="synthetic-iid" if iid else f"synthetic({alpha},{beta})",
        train=ArrayDataset(np.concatenate(xs_train), np.concatenate(ys_train)),
        test=ArrayDataset(np.concatenate(xs_test), np.concatenate(ys_test)),
        num_classes=num_classes,
        input_shape=(dim,),
        natural_train=tuple(nat_train),
        natural_test=tuple(nat_test),
        user_ids=tuple(f"device-{k}" for k in range(num_devices)),
    )


def _check(*, alpha: float, beta: float, dim: int, num_classes: int, seed: int) -> None:
    if alpha < 0 or beta < 0:
        raise DatasetError(
            f"synthetic: alpha and beta are standard deviations and must be >= 0, "
            f"got alpha={alpha}, beta={beta}"
        )
    if dim < 1:
        raise DatasetError(f"synthetic: dim must be >= 1, got {dim}")
    if num_classes < 2:
        raise DatasetError(f"synthetic: num_classes must be >= 2, got {num_classes}")
    if seed < 0:
        raise DatasetError(f"synthetic: seed must be a non-negative integer, got {seed}")
