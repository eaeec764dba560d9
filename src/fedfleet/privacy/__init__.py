"""Privacy: DP accounting (dp-accounting), clipping and noise mechanisms, and secure aggregation
(:mod:`fedfleet.privacy.secagg`, SecAgg/SecAgg+)."""

from fedfleet.privacy.accountant import DpAccounting, calibrate_noise_multiplier
from fedfleet.privacy.mechanisms import NoiseSource, clip_by_l2, gaussian, secure_normal

__all__ = [
    "DpAccounting",
    "NoiseSource",
    "calibrate_noise_multiplier",
    "clip_by_l2",
    "gaussian",
    "secure_normal",
]
