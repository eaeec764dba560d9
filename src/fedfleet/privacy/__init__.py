"""Privacy: DP accounting (dp-accounting), clipping and noise mechanisms, local DP, sample-level
DP-SGD, homomorphic-encryption aggregation, and secure aggregation
(:mod:`fedfleet.privacy.secagg`, SecAgg/SecAgg+)."""

from fedfleet.privacy._accountant import DpAccounting, calibrate_noise_multiplier
from fedfleet.privacy._dpsgd import DPSGDTrainer, dpsgd_epsilon
from fedfleet.privacy._dpsgd_ledger import DPSGDLedger
from fedfleet.privacy._he import (
    EncryptedVector,
    HEError,
    PaillierKeyHolder,
    PaillierPublic,
)
from fedfleet.privacy._he_ckks import (
    CkksKeyHolder,
    CkksPublic,
)
from fedfleet.privacy._local_dp import LocalDP, local_epsilon
from fedfleet.transforms._dp import NoiseSource, clip_by_l2, gaussian, secure_normal

__all__ = [
    "CkksKeyHolder",
    "CkksPublic",
    "DPSGDLedger",
    "DPSGDTrainer",
    "DpAccounting",
    "EncryptedVector",
    "HEError",
    "LocalDP",
    "NoiseSource",
    "PaillierKeyHolder",
    "PaillierPublic",
    "calibrate_noise_multiplier",
    "clip_by_l2",
    "dpsgd_epsilon",
    "gaussian",
    "local_epsilon",
    "secure_normal",
]
