"""The DP primitives' old home: L2 clipping and Gaussian noise now live with the transforms built
from them, :mod:`fedfleet.transforms._dp`; these names stay importable from here."""

from fedfleet.transforms._dp import NoiseSource, clip_by_l2, gaussian, is_seeded, secure_normal

__all__ = ["NoiseSource", "clip_by_l2", "gaussian", "is_seeded", "secure_normal"]
