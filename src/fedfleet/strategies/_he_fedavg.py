"""FedAvg over homomorphically encrypted updates: the server sums what it cannot read.

One round (:func:`fedfleet.sim.run_he_fedavg` drives it in memory;
:mod:`fedfleet.net.secure` runs the same steps over the network, with the key holder a client):

1. server, :meth:`HEFedAvg.configure_fit`: sample clients as FedAvg does;
2. client, :meth:`HEFedAvg.client_fit`: local training (the delta never leaves in the clear);
3. client, :meth:`HEFedAvg.encrypt_update`: encrypt ``n_k * delta_k`` under the federation's
   public key (Paillier: fixed point, exact; CKKS: approximate), as bytes;
4. server, :meth:`HEFedAvg.aggregate_encrypted`: check each upload's key, scheme and length
   (rejecting bad ones by client id and round), multiply/add the ciphertexts; the weights n_k
   travel in the clear, so the aggregate carries n = sum_k n_k;
5. key holder (a client), :func:`decrypt_aggregate`: decrypt the aggregate only, giving
   sum_k n_k delta_k / n - FedAvg's mean delta (bit-exact to
   :func:`fedfleet.privacy._he.fixed_point_mean` for Paillier, within
   :data:`fedfleet.privacy._he_ckks.CKKS_TOLERANCE` for CKKS);
6. server, :meth:`HEFedAvg.apply`: the server transform on the mean (``sgd(1.0)`` = FedAvg).

The strategy object holds only the public side (:class:`fedfleet.privacy._he.HEPublic`), so the
server never has a secret key. What it does learn: who took part, their n_k, and the new global
model (as in any FedAvg). What it cannot do: validate the content of an update (norm, NaN), so
clients validate their own delta before encrypting, and HE fits federations of known silos.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedfleet.client import FitInstructions
from fedfleet.errors import FedfleetError, UpdateRejected
from fedfleet.privacy._he import (
    EncryptedVector,
    HEError,
    HEPublic,
    PaillierKeyHolder,
)
from fedfleet.privacy._he_ckks import (
    CkksKeyHolder,
)
from fedfleet.strategies._base import (
    ClientResult,
    ClientUpdate,
    EvaluateAll,
    StrategyState,
    plain_client_fit,
)
from fedfleet.strategies._sampling import Sampling
from fedfleet.transforms._base import ServerTransform, apply_delta, sgd

__all__ = ["HEFedAvg", "decrypt_aggregate"]

KeyHolder = PaillierKeyHolder | CkksKeyHolder


@dataclass(frozen=True, kw_only=True)
class HEFedAvg(Sampling, EvaluateAll):
    """Sample-weighted FedAvg whose updates are summed under additively homomorphic encryption.

    Attributes:
        public: the federation's public key (from the key holder's ``public.to_bytes()``); the
            server holds nothing else.
        clients_per_round, fraction: K or C, as in :class:`~fedfleet.strategies._sampling.
            Sampling` (10 clients a round if neither).
        local: instructions every sampled client gets.
        server_optimizer: transform applied to the decrypted mean pseudo-gradient.
        key_holder: the secret side, on clients only (over the network the server picks one
            client per round to decrypt the aggregate); None on the server, which refuses one.

    Examples:
        >>> holder = PaillierKeyHolder.generate()                      # on a client
        >>> server_key = PaillierPublic.from_bytes(holder.public.to_bytes())
        >>> strategy = HEFedAvg(public=server_key, clients_per_round=5)  # on the server
    """

    public: HEPublic
    local: FitInstructions = field(default_factory=FitInstructions)
    server_optimizer: ServerTransform = field(default_factory=sgd)
    key_holder: KeyHolder | None = None

    def init(self, vector: np.ndarray) -> StrategyState:
        return {"server_optimizer": self.server_optimizer.init(vector)}

    def configure_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        clients: Sequence[int],
        rng: np.random.Generator,
    ) -> list[tuple[int, FitInstructions]]:
        return [(cid, self.local) for cid in self.sample(clients, rng)]

    client_fit = staticmethod(plain_client_fit)

    def encrypt_update(self, vector: np.ndarray, result: ClientResult) -> bytes:
        """Client side: ``n_k * (trained - vector)`` encrypted under the public key, as bytes.
        The client checks its own delta (the server cannot)."""
        fit = result.fit
        delta = fit.vector.astype(np.float64) - vector
        if delta.shape != vector.shape or not np.isfinite(delta).all():
            raise HEError(
                f"refusing to encrypt a delta of shape {delta.shape} with non-finite values or "
                f"the wrong shape (expected {vector.shape}); local training diverged?"
            )
        return self.public.encrypt(delta, fit.num_samples).to_bytes()

    def aggregate_encrypted(
        self, rnd: int, size: int, uploads: Mapping[int, bytes]
    ) -> tuple[bytes | None, list[UpdateRejected]]:
        """Server side: the encrypted sum of the valid uploads (None if there are none) and
        the rejected ones, each naming the client and round."""
        good: dict[int, EncryptedVector] = {}
        rejected: list[UpdateRejected] = []
        for cid in sorted(uploads):
            try:
                v = EncryptedVector.from_bytes(uploads[cid])
                self.public.validate(v, size)
                good[cid] = v
            except HEError as err:
                rejected.append(UpdateRejected(cid, rnd, f"encrypted update unusable: {err}"))
        if not good:
            return None, rejected
        try:
            return self.public.sum(list(good.values())).to_bytes(), rejected
        except HEError as err:  # e.g. the weights total more than the packing holds
            rejected += [UpdateRejected(c, rnd, f"round not summed: {err}") for c in good]
            return None, rejected

    def aggregate_fit(
        self,
        rnd: int,
        vector: np.ndarray,
        state: StrategyState,
        updates: Sequence[ClientUpdate],
    ) -> tuple[np.ndarray, StrategyState, dict[str, float]]:
        """Not how HE aggregates: its transports sum encrypted uploads and call :meth:`apply`
        on the decrypted mean (the round loop does that for you)."""
        raise FedfleetError(
            "HEFedAvg sums encrypted uploads; run it through fedfleet.sim.Simulation or "
            "fedfleet.net.FederatedServer, whose transports encrypt, sum and decrypt"
        )

    def apply(
        self, vector: np.ndarray, state: StrategyState, mean_delta: np.ndarray | None
    ) -> tuple[np.ndarray, StrategyState]:
        """Server side: the next global vector from the decrypted mean delta (None: keep)."""
        if mean_delta is None:
            return vector, state
        new, opt_state = apply_delta(
            self.server_optimizer,
            vector,
            mean_delta,
            state["server_optimizer"],  # type: ignore[arg-type]
        )
        return new, {"server_optimizer": opt_state}


def decrypt_aggregate(key_holder: KeyHolder, aggregate: bytes) -> np.ndarray:
    """Key-holder side: the weighted mean delta (float64) from the encrypted aggregate."""
    return key_holder.decrypt_mean(EncryptedVector.from_bytes(aggregate))
