"""Composable server-side transforms: server optimizers (SGD/momentum, Adam, Yogi, Adagrad);
the differential-privacy pieces (clip, Gaussian noise, adaptive clipping) are in
:mod:`fedfleet.transforms._dp`."""

from fedfleet.transforms._base import ServerTransform, TransformState, chain, sgd
from fedfleet.transforms._fedopt import adagrad, adam, yogi

__all__ = ["ServerTransform", "TransformState", "adagrad", "adam", "chain", "sgd", "yogi"]
