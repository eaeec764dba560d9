"""Next-token samples as windows over one token array, so 80-character contexts are not stored
80 times.

A text of ``N`` tokens gives ``N - window`` samples: ``x[i] = tokens[s : s + window]`` and
``y[i] = tokens[s + window]`` for each start ``s``. Storing them as a dense ``[N, 80]`` int64
array costs 640 bytes a sample (713 MB for the 1.1 MB tiny Shakespeare); a :class:`TokenWindows`
keeps only the tokens and the starts (16 bytes a sample) and builds rows on demand.
"""

from __future__ import annotations

import numpy as np

from fedfleet.data._base import ArrayDataset

__all__ = ["TokenWindows"]


class TokenWindows(ArrayDataset):
    """Windows of ``window`` tokens over ``tokens`` starting at ``starts``, each labelled with
    the token that follows it.

    ``x`` is int64 ``[len(starts), window]``: when the starts are consecutive (one client's
    windows over its own text) it is a strided view of ``tokens`` that copies nothing (never
    write into it); otherwise it is gathered once and kept. :meth:`rows` and :meth:`subset`
    never gather more than they return (:class:`~fedfleet.data.Subset` reads through
    :meth:`rows`), so a federation's clients read their own windows without the pool being
    built.
    """

    __slots__ = ("starts", "tokens", "window")

    def __init__(self, tokens: np.ndarray, starts: np.ndarray, window: int) -> None:
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        starts = np.asarray(starts, dtype=np.int64)
        if tokens.ndim != 1 or starts.ndim != 1:
            raise ValueError(f"tokens and starts must be 1-D, got {tokens.shape}, {starts.shape}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if starts.size and (starts.min() < 0 or starts.max() + window >= len(tokens)):
            raise ValueError(
                f"a window of {window} tokens and its label at starts "
                f"{int(starts.min())}..{int(starts.max())} do not fit in {len(tokens)} tokens"
            )
        self.tokens = tokens
        self.starts = starts
        self.window = int(window)
        self._x = None
        self._y = tokens[starts + window]

    @property
    def x(self) -> np.ndarray:
        if self._x is None:
            self._x = self._gather(self.starts)
        return self._x

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return (self.window,)

    def rows(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        starts = self.starts[index]
        return self._gather(starts), self.tokens[starts + self.window]

    def subset(self, indices: np.ndarray) -> TokenWindows:
        return TokenWindows(self.tokens, self.starts[indices], self.window)

    def _gather(self, starts: np.ndarray) -> np.ndarray:
        if starts.ndim == 1 and starts.size > 1 and np.all(np.diff(starts) == 1):
            first = int(starts[0])
            view = np.lib.stride_tricks.as_strided(
                self.tokens[first:],
                shape=(len(starts), self.window),
                strides=(self.tokens.itemsize, self.tokens.itemsize),
                # writeable only because torch.as_tensor warns on read-only arrays: the rows
                # overlap, so nothing may write into them
                writeable=True,
            )
            return view
        return self.tokens[starts[..., None] + np.arange(self.window)]
