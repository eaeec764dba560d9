"""Trainers for models that are plain arrays: no PyTorch needed on the client.

:class:`NumpyLogisticRegression` is multinomial logistic regression written in NumPy;
:class:`SklearnTrainer` federates a scikit-learn linear classifier (``SGDClassifier``) by moving
its ``coef_`` and ``intercept_`` through the flat vector. Both satisfy
:class:`fedfleet.client.Trainer`, so any strategy and engine runs them unchanged.

:class:`NumpyLogisticRegression` honours the gradient terms strategies ask of a trainer (FedProx's
``prox_mu``, SCAFFOLD's ``grad_correction``; see :func:`fedfleet.client.gradient_terms`);
:class:`SklearnTrainer` cannot, and refuses them.
"""

from __future__ import annotations

from collections.abc import Callable
from math import prod
from typing import Any

import numpy as np

from fedfleet.client._protocol import (
    EvalResult,
    FitInstructions,
    FitResult,
    gradient_terms,
)
from fedfleet.data import ArrayDataset
from fedfleet.errors import ConfigError
from fedfleet.params import Layout

__all__ = [
    "NumpyLogisticRegression",
    "SklearnTrainer",
]


def _softmax_xent(logits: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-sample cross-entropy and softmax probabilities, computed stably."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -logp[np.arange(len(y)), y], np.exp(logp)


class NumpyLogisticRegression:
    """Multinomial logistic regression trained by mini-batch SGD, in NumPy.

    Parameters are ``weight`` ``[classes, features]`` and ``bias`` ``[classes]``; the loss is the
    mean cross-entropy of ``softmax(x @ weight.T + bias)``. Honours FedProx's ``prox_mu`` and
    SCAFFOLD's ``grad_correction`` (see :func:`gradient_terms`).
    """

    def __init__(self, input_shape: tuple[int, ...] | int, num_classes: int) -> None:
        self.num_features = input_shape if isinstance(input_shape, int) else prod(input_shape)
        self.num_classes = num_classes
        self._layout = Layout.from_shapes(
            {"weight": (num_classes, self.num_features), "bias": (num_classes,)}
        )

    @property
    def layout(self) -> Layout:
        return self._layout

    def init_vector(self, seed: int) -> np.ndarray:
        return np.zeros(self._layout.size, dtype=np.float32)

    def _logits(self, w: np.ndarray, b: np.ndarray, x: np.ndarray) -> np.ndarray:
        return x.reshape(len(x), -1) @ w.T + b

    def fit(
        self, vector: np.ndarray, data: ArrayDataset, instructions: FitInstructions, seed: int
    ) -> FitResult:
        mu, correction = gradient_terms(instructions, self._layout)
        out = vector.copy()
        parts = self._layout.unflatten(out)
        w, b = parts["weight"], parts["bias"]
        # a step's extra gradient terms mu * (w - w0) + correction, as one flat vector
        add_terms = mu != 0.0 or correction is not None
        shift = np.zeros_like(out) if correction is None else correction.copy()
        shift_parts = self._layout.unflatten(shift)
        shift_w, shift_b = shift_parts["weight"], shift_parts["bias"]
        x = data.x.reshape(len(data), -1)
        rng = np.random.default_rng(seed)
        steps, loss_sum, seen = 0, 0.0, 0
        for _ in range(instructions.epochs):
            order = rng.permutation(len(data))
            for start in range(0, len(data), instructions.batch_size):
                if instructions.max_steps is not None and steps >= instructions.max_steps:
                    break
                idx = order[start : start + instructions.batch_size]
                xb, yb = x[idx], data.y[idx]
                losses, probs = _softmax_xent(self._logits(w, b, xb), yb)
                probs[np.arange(len(yb)), yb] -= 1.0
                grad = probs / len(yb)
                grad_w = (grad.T @ xb).astype(np.float32)
                grad_b = grad.sum(axis=0).astype(np.float32)
                if add_terms:
                    if mu != 0.0:  # else the shift is the constant correction
                        np.subtract(out, vector, out=shift)
                        shift *= np.float32(mu)
                        if correction is not None:
                            shift += correction
                    grad_w += shift_w
                    grad_b += shift_b
                w -= np.float32(instructions.lr) * grad_w
                b -= np.float32(instructions.lr) * grad_b
                loss_sum += float(losses.sum())
                seen += len(yb)
                steps += 1
        return FitResult(out, len(data), steps, {"train_loss": loss_sum / seen} if seen else {})

    def evaluate(self, vector: np.ndarray, data: ArrayDataset) -> EvalResult:
        parts = self._layout.unflatten(vector)
        logits = self._logits(parts["weight"], parts["bias"], data.x)
        losses, _ = _softmax_xent(logits, data.y)
        acc = float((logits.argmax(axis=1) == data.y).mean()) if len(data) else float("nan")
        return EvalResult(float(losses.mean()) if len(data) else float("nan"), acc, len(data))


class SklearnTrainer:
    """Federates a scikit-learn linear classifier such as ``SGDClassifier``.

    Each fit builds a fresh estimator with ``make_estimator()``, sets ``coef_``/``intercept_``
    from the global vector and runs ``partial_fit`` once per local epoch with a constant learning
    rate ``instructions.lr`` (the estimator's ``eta0``), so nothing from an earlier round leaks in.
    It refuses FedProx's ``prox_mu`` and SCAFFOLD's ``grad_correction`` rather than ignore them.

    Args:
        make_estimator: builds an unfitted estimator, e.g.
            ``lambda: SGDClassifier(loss="log_loss", learning_rate="constant", eta0=0.01)``.
        input_shape: shape of one sample (flattened for the estimator).
        num_classes: labels are ``0..num_classes-1``.
    """

    def __init__(
        self, make_estimator: Callable[[], Any], input_shape: tuple[int, ...], num_classes: int
    ) -> None:
        self.make_estimator = make_estimator
        self.num_features = prod(input_shape)
        self.classes = np.arange(num_classes)
        rows = 1 if num_classes == 2 else num_classes  # scikit-learn keeps one row for binary
        self._layout = Layout.from_shapes({"coef": (rows, self.num_features), "intercept": (rows,)})

    @property
    def layout(self) -> Layout:
        return self._layout

    def init_vector(self, seed: int) -> np.ndarray:
        return np.zeros(self._layout.size, dtype=np.float32)

    def _estimator(self, vector: np.ndarray, lr: float | None = None, seed: int = 0) -> Any:
        est = self.make_estimator()
        if lr is not None:
            est.set_params(eta0=lr, learning_rate="constant", random_state=seed)
        parts = self._layout.unflatten(vector)
        est.coef_ = parts["coef"].astype(np.float64)
        est.intercept_ = parts["intercept"].astype(np.float64)
        est.classes_ = self.classes
        return est

    def fit(
        self, vector: np.ndarray, data: ArrayDataset, instructions: FitInstructions, seed: int
    ) -> FitResult:
        mu, correction = gradient_terms(instructions, self._layout)
        if mu != 0.0 or correction is not None:
            raise ConfigError(
                "SklearnTrainer cannot add FedProx's proximal term or SCAFFOLD's gradient "
                "correction (the estimator's partial_fit owns the gradient step); use "
                "NumpyLogisticRegression or TorchTrainer for FedProx and SCAFFOLD"
            )
        est = self._estimator(vector, instructions.lr, seed)
        x = data.x.reshape(len(data), -1).astype(np.float64)  # the estimator's own dtype
        for _ in range(instructions.epochs):
            est.partial_fit(x, data.y, classes=self.classes)
        out = self._layout.flatten({"coef": est.coef_, "intercept": est.intercept_})
        loss = self.evaluate(out, data).loss
        return FitResult(out, len(data), instructions.epochs * len(data), {"train_loss": loss})

    def evaluate(self, vector: np.ndarray, data: ArrayDataset) -> EvalResult:
        est = self._estimator(vector)
        x = data.x.reshape(len(data), -1)
        scores = np.asarray(est.decision_function(x), dtype=np.float64)
        if scores.ndim == 1:  # binary: the score is the logit of class 1 against class 0
            scores = np.stack([np.zeros_like(scores), scores], axis=1)
        losses, _ = _softmax_xent(scores, data.y)
        acc = float((scores.argmax(axis=1) == data.y).mean()) if len(data) else float("nan")
        return EvalResult(float(losses.mean()) if len(data) else float("nan"), acc, len(data))
