"""Composable server-side transforms (server optimizers; later clipping, noise, compression)."""

from fedfleet.transforms.base import ServerTransform, TransformState, chain, sgd

__all__ = ["ServerTransform", "TransformState", "chain", "sgd"]
