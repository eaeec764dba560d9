"""The compiled loop of :class:`~fedfleet.client._compiled_trainer.CompiledTrainer`.

One call trains one client: every SGD step of an ``nn.Sequential`` MLP (Linear layers, ReLU
optional after each, cross-entropy on the last) from its batch table, in one function compiled
by numba. A small model's torch step is some 25 operator calls of a few microseconds each; here
a step costs what its arithmetic costs (a 60-10 logistic regression at batch 10: ~7 us against
~80 us). Written by hand because no library trains a whole local loop without per-operation
dispatch; numba is the well-kept tool for compiling such a loop.

Arithmetic is float32 in a fixed order (no fastmath), so results are the same run to run and
independent of threads. The inner loops run over 1-D slices, which is what lets LLVM vectorise
them (indexing the whole arrays with offsets, it cannot rule out aliasing and stays scalar:
measured 5-10x slower).

Kernel layout (``compiled_trainer.kernel_order`` maps a model's flat vector to it): layer
``l``'s weight transposed, ``[dims[l], dims[l + 1]]`` row-major, at ``w_at[l]``, so that the
forward pass and the weight gradient both stream along output units; its bias at ``b_at[l]``
(-1: none).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["train_mlp"]

Array = np.ndarray


@numba.njit(cache=True, nogil=True)
def _forward(
    z: Array, h_in: Array, h_out: Array, w: Array, wa: int, ba: int, rows: int, d_in: int,
    d_out: int, relu: bool,
) -> None:  # fmt: skip
    """``z = h_in @ W^T + b`` row by row (summing inputs in order), ``h_out = relu(z)`` or z."""
    zero = np.float32(0.0)
    for i in range(rows):
        zr = z[i * d_out : (i + 1) * d_out]
        if ba >= 0:
            zr[:] = w[ba : ba + d_out]
        else:
            zr[:] = zero
        for j in range(d_in):
            hv = h_in[i * d_in + j]
            wr = w[wa + j * d_out : wa + (j + 1) * d_out]
            for c in range(d_out):
                zr[c] += hv * wr[c]
        hr = h_out[i * d_out : (i + 1) * d_out]
        for c in range(d_out):
            hr[c] = max(zr[c], zero) if relu else zr[c]


@numba.njit(cache=True, nogil=True)
def _weight_grad(
    grad: Array, err: Array, h_in: Array, wa: int, ba: int, rows: int, d_in: int, d_out: int
) -> None:
    """``grad += h_in^T @ err`` (the transposed weight's gradient, summed over rows in order)
    and the bias's ``sum(err)``."""
    for i in range(rows):
        er = err[i * d_out : (i + 1) * d_out]
        if ba >= 0:
            gb = grad[ba : ba + d_out]
            for c in range(d_out):
                gb[c] += er[c]
        for j in range(d_in):
            hv = h_in[i * d_in + j]
            gr = grad[wa + j * d_out : wa + (j + 1) * d_out]
            for c in range(d_out):
                gr[c] += hv * er[c]


@numba.njit(cache=True, nogil=True)
def _backprop(
    below: Array, err: Array, z_below: Array, w: Array, wa: int, rows: int, d_in: int,
    d_out: int, relu: bool,
) -> None:  # fmt: skip
    """``below = err @ W`` (summing output units in order), zeroed where ReLU was off."""
    zero = np.float32(0.0)
    for i in range(rows):
        er = err[i * d_out : (i + 1) * d_out]
        for j in range(d_in):
            wr = w[wa + j * d_out : wa + (j + 1) * d_out]
            acc = zero
            for c in range(d_out):
                acc += er[c] * wr[c]
            if relu and z_below[i * d_in + j] <= zero:
                acc = zero
            below[i * d_in + j] = acc


@numba.njit(cache=True, nogil=True)
def train_mlp(
    w: Array, w0: Array, corr: Array, mom: Array, grad: Array, x: Array, y: Array,
    batches: Array, sgd: Array, nesterov: bool, dims: Array, w_at: Array, b_at: Array,
    relu: Array, h: Array, z: Array, d: Array,
) -> float:  # fmt: skip
    """Train ``w`` (float32, kernel layout, starts as the global vector ``w0``) in place on
    every row of ``batches`` (``[steps, B]`` sample indices, -1 past the end of an epoch's last
    batch) and return the sum of the per-sample losses.

    ``sgd = [lr, mu, weight_decay, momentum, dampening]`` (float32): each step follows
    ``torch.optim.SGD`` on ``g + mu (w - w0) + corr + weight_decay w`` (``corr`` in kernel
    layout, or empty: none). ``mom``, ``grad``: ``[P]`` scratch; ``h`` ``[L + 1, B * widest]``,
    ``z`` and ``d`` ``[L, B * widest]``: activations, pre-activations and back-propagated
    errors. Labels must lie in ``[0, dims[-1])``: they index without bounds checks.
    """
    layers = dims.shape[0] - 1
    steps, width = batches.shape
    size = w.shape[0]
    lr, mu, decay, momentum, dampening = sgd[0], sgd[1], sgd[2], sgd[3], sgd[4]
    one, zero = np.float32(1.0), np.float32(0.0)
    has_corr = corr.shape[0] == size
    classes = dims[layers]
    total = 0.0
    for t in range(steps):
        rows = 0
        while rows < width and batches[t, rows] >= 0:
            rows += 1
        d_in = dims[0]
        for i in range(rows):
            h[0, i * d_in : (i + 1) * d_in] = x[batches[t, i]]
        for layer in range(layers):
            _forward(
                z[layer], h[layer], h[layer + 1], w, w_at[layer], b_at[layer], rows,
                dims[layer], dims[layer + 1], relu[layer],
            )  # fmt: skip
        # cross-entropy: d loss / d logits = (softmax - onehot) / rows
        logits, err = h[layers], d[layers - 1]
        inv = one / np.float32(rows)
        for i in range(rows):
            lr_, er = logits[i * classes : (i + 1) * classes], err[i * classes : (i + 1) * classes]
            top = lr_[0]
            for c in range(1, classes):
                top = max(top, lr_[c])
            s = zero
            for c in range(classes):
                e = np.exp(lr_[c] - top)
                er[c] = e
                s += e
            label = y[batches[t, i]]
            total += np.log(s) - (lr_[label] - top)
            for c in range(classes):
                er[c] = er[c] / s * inv
            er[label] -= inv
            if relu[layers - 1]:  # a ReLU on the logits passes no gradient where it was off
                zr = z[layers - 1, i * classes : (i + 1) * classes]
                for c in range(classes):
                    if zr[c] <= zero:
                        er[c] = zero
        grad[:] = zero
        for layer in range(layers - 1, -1, -1):
            _weight_grad(
                grad, d[layer], h[layer], w_at[layer], b_at[layer], rows, dims[layer],
                dims[layer + 1],
            )  # fmt: skip
            if layer > 0:  # the error below, through this layer's weights and ReLU
                _backprop(
                    d[layer - 1], d[layer], z[layer - 1], w, w_at[layer], rows, dims[layer],
                    dims[layer + 1], relu[layer - 1],
                )  # fmt: skip
        for p in range(size):
            g = grad[p]
            if mu != zero:
                g += mu * (w[p] - w0[p])
            if has_corr:
                g += corr[p]
            if decay != zero:
                g += decay * w[p]
            if momentum != zero:
                if t == 0:
                    mom[p] = g
                else:
                    mom[p] = momentum * mom[p] + (one - dampening) * g
                g = g + momentum * mom[p] if nesterov else mom[p]
            w[p] -= lr * g
    return total
