"""SCAFFOLD (Karimireddy et al. 2020, "SCAFFOLD: Stochastic Controlled Averaging for Federated
Learning", ICML), Algorithm 1 with option II.

The server keeps a control variate c, each client i its own c_i (zero before its first round).
In a round with sampled set S, every i in S starts from the global x and runs K local SGD steps
with learning rate eta_l on the corrected gradient

    y_i <- y_i - eta_l (g_i(y_i) - c_i + c),

then updates its control variate (option II) and uploads both differences:

    c_i+ = c_i - c + (x - y_i) / (K eta_l),     delta y_i = y_i - x,    delta c_i = c_i+ - c_i.

The server sets

    x <- x + eta_g * (1/|S|) sum_i delta y_i,      c <- c + (|S| / N) * (1/|S|) sum_i delta c_i.

Both means are unweighted, as in the paper: SCAFFOLD minimises the plain average
f(x) = (1/N) sum_i f_i(x), and c must stay the average of all N client control variates
(c = (1/N) sum_i c_i holds after every round when all start at zero), which a sample-weighted mean
would break. On the clients' side the correction ``c - c_i`` travels to the trainer as
``payload["grad_correction"]`` and c_i+ is the client's state (kept by the engine's client-state
store in simulation; :class:`fedfleet.client.DiskStateStore` holds millions of them).

Notes: option II reads the average gradient off the model difference, which is exact for plain
SGD; with client momentum or Adam it is only an approximation. A client that took no step (K = 0)
keeps its c_i and uploads a zero control delta. Float buffers in the layout (BatchNorm running
statistics) get control-variate entries too; they are never applied, since only parameters have
gradients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from fedfleet.client import GRAD_CORRECTION, ClientState, FitInstructions, Trainer
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError, FedfleetError
from fedfleet.strategies._aggregators import weighted_mean
from fedfleet.strategies._base import ClientResult, ClientUpdate, EvaluateAll, StrategyState
from fedfleet.strategies._sampling import Sampling

__all__ = ["CONTROL_DELTA", "SERVER_CONTROL", "Scaffold"]

SERVER_CONTROL = "c"
"""``FitInstructions.payload`` key of the server control variate c (float32), and the name of
the client's own c_i in its state."""

CONTROL_DELTA = "control_delta"
"""``ClientUpdate.extras`` key of a client's ``c_i+ - c_i``."""


@dataclass(frozen=True, kw_only=True)
class Scaffold(Sampling, EvaluateAll):
    """SCAFFOLD with uniform client sampling and option II control variates.

    Attributes:
        num_clients: N, the size of the whole population (scales the server's c update).
        clients_per_round, fraction: |S| as a count or a fraction of the available clients,
            as in :class:`~fedfleet.strategies._sampling.Sampling` (10 if neither).
        local: every sampled client's instructions (epochs, batch size, lr = eta_l); the client
            optimizer should be plain SGD for option II to be exact.
        server_lr: eta_g, the global step size on the averaged model delta.

    Examples:
        >>> strategy = Scaffold(
        ...     num_clients=100,
        ...     clients_per_round=10,
        ...     local=FitInstructions(epochs=1, batch_size=50, lr=0.05),
        ... )
    """

    num_clients: int
    local: FitInstructions = field(default_factory=FitInstructions)
    server_lr: float = 1.0

    def __post_init__(self) -> None:
        if self.num_clients < 1:
            raise ConfigError(f"scaffold: num_clients must be >= 1, got {self.num_clients}")
        if not self.server_lr > 0:
            raise ConfigError(f"scaffold: server_lr must be > 0, got {self.server_lr}")
        super().__post_init__()

    def init(self, vector: np.ndarray) -> StrategyState:
        return {"c": np.zeros(vector.shape, dtype=np.float64)}

    def configure_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        clients: Sequence[int],
        rng: np.random.Generator,
    ) -> list[tuple[int, FitInstructions]]:
        if len(clients) > self.num_clients:
            raise ConfigError(
                f"scaffold: {len(clients)} clients are available but num_clients is "
                f"{self.num_clients}; set num_clients to the population size"
            )
        c = np.asarray(state["c"]).astype(np.float32)
        instructions = dataclasses.replace(
            self.local, payload={**self.local.payload, SERVER_CONTROL: c}
        )
        return [(cid, instructions) for cid in self.sample(clients, rng)]

    def client_fit(
        self,
        trainer: Trainer,
        vector: np.ndarray,
        data: ArrayDataset,
        instructions: FitInstructions,
        seed: int,
        state: ClientState | None,
    ) -> ClientResult:
        """Corrected local SGD, then the option II control-variate update (module docstring)."""
        payload = dict(instructions.payload)
        c = payload.pop(SERVER_CONTROL, None)
        if c is None:
            raise ConfigError(
                "scaffold: the instructions carry no server control variate "
                f"payload[{SERVER_CONTROL!r}]; they must come from Scaffold.configure_fit"
            )
        c_i = state.get(SERVER_CONTROL) if state is not None else None
        if c_i is None:  # first participation: c_i = 0
            c_i = np.zeros_like(c)
        payload[GRAD_CORRECTION] = c - c_i
        fit = trainer.fit(vector, data, dataclasses.replace(instructions, payload=payload), seed)
        steps = fit.num_steps
        if steps == 0:  # no step, no gradient information: keep c_i
            return ClientResult(fit, {CONTROL_DELTA: np.zeros_like(c_i)}, {SERVER_CONTROL: c_i})
        avg_grad = (vector.astype(np.float64) - fit.vector) / (steps * instructions.lr)
        new_c_i = (c_i.astype(np.float64) - c + avg_grad).astype(np.float32)
        return ClientResult(fit, {CONTROL_DELTA: new_c_i - c_i}, {SERVER_CONTROL: new_c_i})

    def aggregate_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
        if not updates:  # nobody reported: keep model and control variate
            return vector, state, {"aggregated": 0.0}
        missing = [u.client_id for u in updates if CONTROL_DELTA not in u.extras]
        if missing:
            raise FedfleetError(
                f"scaffold round {rnd}: clients {missing} sent no {CONTROL_DELTA!r} extra; are "
                "they running Scaffold.client_fit?"
            )
        ones = [1.0] * len(updates)
        mean_delta = weighted_mean([u.delta for u in updates], ones)
        mean_control = weighted_mean([u.extras[CONTROL_DELTA] for u in updates], ones)
        c = np.asarray(state["c"], dtype=np.float64)
        c = c + (len(updates) / self.num_clients) * mean_control
        new = (vector.astype(np.float64) + self.server_lr * mean_delta).astype(np.float32)
        metrics = {"aggregated": float(len(updates)), "control_norm": float(np.linalg.norm(c))}
        return new, {"c": c}, metrics
