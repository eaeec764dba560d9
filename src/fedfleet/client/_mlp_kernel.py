"""The compiled loop of :class:`~fedfleet.client.compiled_trainer.CompiledTrainer`.

One call trains one client: every SGD step of an ``nn.Sequential`` MLP (Linear layers, ReLU
optional after each, cross-entropy on the last) from its batch table, in one function compiled
by numba. A small model's torch step is some 25 operator calls of a few microseconds each; here
a step costs what its arithmetic costs (a 60-10 logistic regression at batch 10: ~7 us against
~80 us). Written by hand because no library trains a whole local loop without per-operation
dispatch; numba is the well-kept tool for compiling such a loop.

Arithmetic is float32 in a fixed order (no fastmath), so results are the same run to run and
independent of threads. Flat layout: layer ``l``'s weight ``[dims[l + 1], dims[l]]`` (row-major,
as ``nn.Linear`` stores it) at ``w_at[l]``, its bias at ``b_at[l]`` (-1: none).
"""

from __future__ import annotations

import numba
import numpy as np

__all__ = ["train_mlp"]


@numba.njit(cache=True, nogil=True)
def train_mlp(
    w: np.ndarray,
    w0: np.ndarray,
    corr: np.ndarray,
    mom: np.ndarray,
    grad: np.ndarray,
    x: np.ndarray,
    y: np.ndarray,
    batches: np.ndarray,
    sgd: np.ndarray,
    nesterov: bool,
    dims: np.ndarray,
    w_at: np.ndarray,
    b_at: np.ndarray,
    relu: np.ndarray,
    h: np.ndarray,
    z: np.ndarray,
    d: np.ndarray,
) -> float:
    """Train ``w`` (float32, starts as the global vector ``w0``) in place on every row of
    ``batches`` (``[steps, B]`` sample indices, -1 past the end of an epoch's last batch) and
    return the sum of the per-sample losses.

    ``sgd = [lr, mu, weight_decay, momentum, dampening]`` (float32): each step follows
    ``torch.optim.SGD`` on ``g + mu (w - w0) + corr + weight_decay w`` (``corr`` empty: none).
    ``mom``, ``grad``: ``[P]`` scratch; ``h`` ``[L + 1, B * widest]``, ``z`` and ``d``
    ``[L, B * widest]``: activations, pre-activations and back-propagated errors. Labels must
    lie in ``[0, dims[-1])``: they index without bounds checks.
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
            src = batches[t, i]
            for j in range(d_in):
                h[0, i * d_in + j] = x[src, j]
        for layer in range(layers):
            d_in, d_out = dims[layer], dims[layer + 1]
            wa, ba = w_at[layer], b_at[layer]
            for i in range(rows):
                for c in range(d_out):
                    acc = w[ba + c] if ba >= 0 else zero
                    row = wa + c * d_in
                    for j in range(d_in):
                        acc += h[layer, i * d_in + j] * w[row + j]
                    z[layer, i * d_out + c] = acc
                    h[layer + 1, i * d_out + c] = max(acc, zero) if relu[layer] else acc
        # cross-entropy: d loss / d logits = (softmax - onehot) / rows
        last = layers - 1
        inv = one / np.float32(rows)
        for i in range(rows):
            base = i * classes
            top = h[layers, base]
            for c in range(1, classes):
                top = max(top, h[layers, base + c])
            s = zero
            for c in range(classes):
                e = np.exp(h[layers, base + c] - top)
                d[last, base + c] = e
                s += e
            label = y[batches[t, i]]
            total += np.log(s) - (h[layers, base + label] - top)
            for c in range(classes):
                d[last, base + c] = d[last, base + c] / s * inv
            d[last, base + label] -= inv
        grad[:] = zero
        for layer in range(layers - 1, -1, -1):
            d_in, d_out = dims[layer], dims[layer + 1]
            wa, ba = w_at[layer], b_at[layer]
            for i in range(rows):
                for c in range(d_out):
                    err = d[layer, i * d_out + c]
                    if ba >= 0:
                        grad[ba + c] += err
                    row = wa + c * d_in
                    for j in range(d_in):
                        grad[row + j] += err * h[layer, i * d_in + j]
            if layer > 0:  # the error below, through this layer's weights and ReLU
                below = layer - 1
                for i in range(rows):
                    for j in range(d_in):
                        d[below, i * d_in + j] = zero
                    for c in range(d_out):
                        err = d[layer, i * d_out + c]
                        row = wa + c * d_in
                        for j in range(d_in):
                            d[below, i * d_in + j] += err * w[row + j]
                    if relu[below]:
                        for j in range(d_in):
                            if z[below, i * d_in + j] <= zero:
                                d[below, i * d_in + j] = zero
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
