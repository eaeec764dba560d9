"""Per-client state kept between the rounds a client takes part in.

SCAFFOLD's control variates, personalised heads and error-feedback residuals are state that
belongs to one client. In deployment each client process keeps its own; in simulation the engine
keeps all of them here, keyed by client id. :class:`MemoryStateStore` holds arrays in a dict and
suits small populations; :class:`DiskStateStore` keeps each named state in one memory-mapped
``[num_clients, size]`` file, so memory stays flat however many clients have state (the file is
sparse on disk until a client's row is written).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Protocol

import numpy as np

from fedfleet.errors import FedfleetError

__all__ = ["ClientState", "ClientStateStore", "DiskStateStore", "MemoryStateStore"]

ClientState = Mapping[str, np.ndarray]
"""Named float32 vectors belonging to one client."""


class ClientStateStore(Protocol):
    def get(self, cid: int) -> ClientState | None:
        """The client's state, or None if it has none yet."""
        ...

    def put(self, cid: int, state: ClientState) -> None: ...

    def __len__(self) -> int:
        """Number of clients holding state."""
        ...


class MemoryStateStore:
    """Client state in a dict; copies on the way in and out, so callers cannot alias it."""

    def __init__(self) -> None:
        self._states: dict[int, dict[str, np.ndarray]] = {}

    def get(self, cid: int) -> ClientState | None:
        state = self._states.get(cid)
        return None if state is None else {k: v.copy() for k, v in state.items()}

    def put(self, cid: int, state: ClientState) -> None:
        self._states[cid] = {k: np.array(v, dtype=np.float32) for k, v in state.items()}

    def __len__(self) -> int:
        return len(self._states)


class DiskStateStore:
    """Client state in memory-mapped files under ``directory``: ``<name>.f32`` holds row ``cid``
    of a ``[num_clients, size]`` float32 matrix for each state name, ``present.u8`` marks which
    clients have state. Reopening the same directory finds the state again (checkpoints)."""

    def __init__(self, directory: str | Path, num_clients: int) -> None:
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.num_clients = num_clients
        self._meta_path = self.directory / "state.json"
        self._sizes: dict[str, int] = (
            json.loads(self._meta_path.read_text()) if self._meta_path.exists() else {}
        )
        self._present = self._open("present.u8", "uint8", (num_clients,))
        self._maps = {
            name: self._open(f"{name}.f32", "float32", (num_clients, size))
            for name, size in self._sizes.items()
        }

    def _open(self, filename: str, dtype: str, shape: tuple[int, ...]) -> np.memmap:
        path = self.directory / filename
        return np.memmap(path, dtype=dtype, mode="r+" if path.exists() else "w+", shape=shape)

    def _check(self, cid: int) -> None:
        if not 0 <= cid < self.num_clients:
            raise FedfleetError(
                f"client id {cid} outside 0..{self.num_clients - 1}; the store was opened for "
                f"{self.num_clients} clients: open it with the federation's size"
            )

    def get(self, cid: int) -> ClientState | None:
        self._check(cid)
        if not self._present[cid]:
            return None
        return {name: np.array(m[cid]) for name, m in self._maps.items()}

    def put(self, cid: int, state: ClientState) -> None:
        self._check(cid)
        for name, value in state.items():
            flat = np.asarray(value, dtype=np.float32).reshape(-1)
            if name not in self._maps:
                if not name.isidentifier():
                    raise FedfleetError(f"state name {name!r} must be an identifier")
                self._sizes[name] = flat.size
                self._meta_path.write_text(json.dumps(self._sizes))
                self._maps[name] = self._open(
                    f"{name}.f32", "float32", (self.num_clients, flat.size)
                )
            if flat.size != self._sizes[name]:
                raise FedfleetError(
                    f"client {cid} state {name!r} has {flat.size} values, expected "
                    f"{self._sizes[name]}"
                )
            self._maps[name][cid] = flat
        self._present[cid] = 1

    def flush(self) -> None:
        """Write dirty pages to disk (before a checkpoint is declared complete)."""
        self._present.flush()
        for m in self._maps.values():
            m.flush()

    def __len__(self) -> int:
        return int(self._present.sum())
