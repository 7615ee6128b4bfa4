"""The reference backend: backpropagation as design.md writes it, in plain NumPy.

This is the specification every other backend is tested against (the tuned NumPy backend, the
CUDA C kernels, the numba kernels). It works in any float dtype, float64 for the oracle, and
keeps to the obvious form of each formula: no blocking, threads, caches or in-place tricks.

For layer l with weights W (n_{l-1}, n_l), bias b (n_l,) and activation f, a batch of m rows:

    forward        Z = A_prev @ W + b,  A = f(Z)
    output delta   D_L = dLoss/dZ_L (the loss is the mean over the batch, so D carries 1/m)
    backward       D_prev = (D @ W^T) * f'(A_prev),  f' written in terms of the output A_prev
    gradients      dW = A_prev^T @ D,  db = sum over the rows of D
"""

from __future__ import annotations

import numpy as np

from bpgpu.backends.base import (
    Array,
    Backend,
    HostMemory,
    OptimizerState,
    check_index_values,
)
from bpgpu.functions import ACTIVATIONS, OUTPUTS


class ReferenceBackend(HostMemory, Backend):
    name = "reference"

    def _dense_forward(self, X: Array, W: Array, b: Array, activation: str, out: Array) -> Array:
        out[...] = ACTIVATIONS[activation].f(X @ W + b)
        return out

    def _output_forward(self, Z: Array, output: str, out: Array) -> Array:
        out[...] = OUTPUTS[output].f(Z)
        return out

    def _output_delta(
        self, Z: Array, Y: Array, output: str, loss: str, out_A: Array, out_D: Array, stats: Array
    ) -> None:
        A = OUTPUTS[output].f(Z)
        # mse: dL/da = a - y, carried back through the output layer's Jacobian. Cross-entropy
        # with its own output (softmax, sigmoid: the canonical link): the chain rule through
        # the output layer simplifies to dL/dz = a - y.
        D = A - Y if loss == "cross_entropy" else OUTPUTS[output].backprop(A, A - Y)
        out_A[...] = A
        out_D[...] = D / Z.shape[0]
        stats[0] += float(per_sample_loss(Z, A, Y, output, loss).sum(dtype=np.float64))
        stats[1] += int(correct(A, Y, output).sum())

    def _delta_backward(
        self, D: Array, W: Array, A_prev: Array, activation: str, out: Array
    ) -> Array:
        out[...] = (D @ W.T) * ACTIVATIONS[activation].df(A_prev)
        return out

    def _weight_gradient(self, A_prev: Array, D: Array, out_W: Array, out_b: Array) -> None:
        out_W[...] = A_prev.T @ D
        out_b[...] = D.sum(axis=0)

    def _weight_update(
        self, A_prev: Array, D: Array, W: Array, b: Array, state: OptimizerState
    ) -> None:
        opt, t = state.optimizer, state.t
        opt.apply(W, A_prev.T @ D, state.W, np.empty_like(W), t, decay=True)
        opt.apply(b, D.sum(axis=0), state.b, np.empty_like(b), t, decay=False)

    def _optimizer_step(
        self, W: Array, b: Array, dW: Array, db: Array, state: OptimizerState
    ) -> None:
        opt, t = state.optimizer, state.t
        opt.apply(W, dW.copy(), state.W, np.empty_like(W), t, decay=True)
        opt.apply(b, db.copy(), state.b, np.empty_like(b), t, decay=False)

    def _gather_rows(self, src: Array, index: Array, out: Array) -> Array:
        check_index_values(src, index)
        out[...] = src[index]
        return out


def per_sample_loss(
    Z: np.ndarray, A: np.ndarray, Y: np.ndarray, output: str, loss: str
) -> np.ndarray:
    """Each row's loss, from the logits Z and the outputs A = output(Z)."""
    if loss == "mse":
        return 0.5 * ((A - Y) ** 2).sum(axis=1)  # 1/2 |a - y|^2
    if output == "softmax":
        # -sum_j y_j log p_j, with log p_j = (z_j - max z) - log sum_k e^(z_k - max z)
        shifted = Z - Z.max(axis=1, keepdims=True)
        log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        return -(Y * log_p).sum(axis=1)
    # sigmoid, binary: -sum_j y log a + (1 - y) log(1 - a) = sum_j softplus(z) - y z
    return (np.logaddexp(0, Z) - Y * Z).sum(axis=1)


def correct(A: np.ndarray, Y: np.ndarray, output: str) -> np.ndarray:
    """Whether each row is classified right: the largest output is the target's largest
    (softmax, the first of equal ones), or every output is on its target's side of 1/2
    (sigmoid); never for regression."""
    if output == "softmax":
        return A.argmax(axis=1) == Y.argmax(axis=1)
    if output == "sigmoid":
        return np.all((A > 0.5) == (Y > 0.5), axis=1)
    return np.zeros(A.shape[0], dtype=bool)
