"""The federated algorithms ``strategy.name`` may select: each registered with its parameters (the
keys of its ``[strategy]`` section), its capabilities and a build function.

Parameters are composed from a few bases (``_base.py``), so a key exists exactly where it has an
effect: :class:`CohortParams` (who takes part: ``clients_per_round`` / ``fraction``), the straggler
keys, the server SGD step (``server_lr``, ``server_momentum``) and the aggregation ``weighting``.
Capabilities that are not keys are fields of :class:`Algorithm` (needs the torch backend, uploads
only its delta, needs DP noise, runs its own asynchronous engine); the run config's validator
reads them from :data:`ALGORITHMS`.

Adding an algorithm: its strategy module in :mod:`fedfleet.strategies`; here, in a module of this
package, a params class (``name: Literal["its-name"] = "its-name"`` plus its keys, a docstring
under each), a build function ``(params, BuildContext) -> Strategy`` and an :class:`Algorithm`
entry in the module's ``ENTRIES``; that module's ``ENTRIES`` in the tuple below. ``_robust.py``
is the worked example.
"""

from fedfleet.runs.algorithms import _fedavg, _fedbuff, _personal, _privacy, _robust
from fedfleet.runs.algorithms._base import (
    ALGORITHMS,
    Algorithm,
    BuildContext,
    CohortParams,
    StrategyParams,
    WeightedParams,
)

__all__ = [
    "ALGORITHMS",
    "Algorithm",
    "BuildContext",
    "CohortParams",
    "StrategyParams",
    "WeightedParams",
]

for _entry in (
    *_fedavg.ENTRIES,
    *_personal.ENTRIES,
    *_fedbuff.ENTRIES,
    *_privacy.ENTRIES,
    *_robust.ENTRIES,
):
    ALGORITHMS.register(_entry)
