"""What a deployed run may not inherit from the simulation defaults.

Seeded DP noise is the simulation default: a run is bit-identical for a seed, which is what its
tests check. Deployed, the same noise is a leak: the server writes ``config.toml`` (with the
seed) beside the model, and whoever holds both can regenerate the central noise and subtract it.
:func:`for_deployment` is the rule the network server and client apply to their config:

- ``privacy.noise`` left unset -> ``"secure"`` (the OS CSPRNG);
- ``privacy.noise = "seeded"`` set explicitly -> refused with a :class:`FedfleetError`;
- ``privacy.noise = "seeded-testing-only"`` -> kept (it draws exactly the seeded noise, so a
  deployed test run still matches the simulation bit for bit), with a warning.
"""

from __future__ import annotations

import logging

from fedfleet.errors import FedfleetError
from fedfleet.runs._config import RunConfig

__all__ = ["for_deployment"]

log = logging.getLogger("fedfleet")


def for_deployment(config: RunConfig) -> RunConfig:
    """``config`` with the deployment rule for DP noise applied (module docs); a new config,
    the caller's is not changed.

    Raises:
        FedfleetError: ``privacy.noise = "seeded"`` was set explicitly.

    Examples:
        >>> from fedfleet.runs import load_config
        >>> for_deployment(load_config()).privacy.noise
        'secure'
    """
    privacy = config.privacy
    if "noise" not in privacy.model_fields_set:
        secure = privacy.model_copy(update={"noise": "secure"})
        return config.model_copy(update={"privacy": secure})
    if privacy.noise == "seeded":
        raise FedfleetError(
            "privacy.noise = 'seeded' is refused in a deployed run: deployed DP noise must come "
            "from the OS CSPRNG, because config.toml (with the seed) is written beside the model "
            "and seeded noise can be regenerated from it and subtracted. Remove the line (or set "
            'noise = "secure"); for a reproducible test run set noise = "seeded-testing-only"'
        )
    if privacy.noise == "seeded-testing-only":
        log.warning(
            "privacy.noise = 'seeded-testing-only': the DP noise of this deployed run is "
            "reproducible from its config (seed %d); it protects nothing, use it for tests only",
            config.seed,
        )
    return config
