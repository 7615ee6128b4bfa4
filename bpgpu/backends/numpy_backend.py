"""The NumPy backend: the reference every other backend is tested against.

Each op is the math of backpropagation written out once, batched over rows. Elementwise work
runs over blocks of rows small enough to stay in the CPU cache (the CPU version of a fused
kernel's epilogue), and every result goes into a buffer the caller allocated once.
"""

from __future__ import annotations

import numpy as np

from bpgpu.backends.base import Array, Backend, OptimizerState
from bpgpu.optimizers import Optimizer

#: elements per row block for the elementwise epilogues (1 MiB of float32: measured best of
#: 2^14..2^20 on the issue-2 shapes, bench/results/cpu/issue2/NOTES.md)
_BLOCK_ELEMENTS = 1 << 18
#: optimizer state is flushed of subnormal numbers every this many updates (see _flush)
_FLUSH_EVERY = 64


def _block(rows: int, width: int):
    """Row slices covering ``rows`` rows of ``width`` elements, a cache-sized block each."""
    step = max(256, _BLOCK_ELEMENTS // max(width, 1))
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


def _activate(z: np.ndarray, activation: str) -> None:
    """z <- f(z) in place."""
    if activation == "relu":
        np.maximum(z, 0, out=z)
    elif activation == "sigmoid":
        # sigmoid(z) = 1 / (1 + e^-z); e^-z overflowing to inf gives the right limit 0.
        # (NumPy's exp is about 1.5x faster than its tanh in float32.)
        with np.errstate(over="ignore"):
            np.negative(z, out=z)
            np.exp(z, out=z)
        z += 1
        np.reciprocal(z, out=z)
    elif activation == "tanh":
        np.tanh(z, out=z)
    elif activation != "identity":
        raise ValueError(
            f"activation must be one of sigmoid, relu, tanh, identity; got {activation!r}"
        )


def _times_derivative(d: np.ndarray, a: np.ndarray, activation: str) -> None:
    """d <- d * f'(z), with f' written in terms of the stored output a = f(z)."""
    if activation == "relu":
        np.multiply(d, a > 0, out=d)
    elif activation == "sigmoid":  # a (1 - a)
        d *= a
        d *= 1 - a
    elif activation == "tanh":  # 1 - a^2
        d *= 1 - a * a
    elif activation != "identity":
        raise ValueError(
            f"activation must be one of sigmoid, relu, tanh, identity; got {activation!r}"
        )


def _row_max(M: np.ndarray) -> np.ndarray:
    """max over each row. NumPy reduces a short axis slowly, so narrow rows go column by column."""
    if M.shape[1] > 32:
        return M.max(axis=1)
    best = M[:, 0].copy()
    for j in range(1, M.shape[1]):
        np.maximum(best, M[:, j], out=best)
    return best


def _row_argmax(M: np.ndarray) -> np.ndarray:
    """The first column holding each row's maximum, as ``M.argmax(axis=1)``."""
    if M.shape[1] > 32:
        return M.argmax(axis=1)
    best = M[:, 0].copy()
    index = np.zeros(M.shape[0], dtype=np.intp)
    for j in range(1, M.shape[1]):
        np.putmask(index, M[:, j] > best, j)
        np.maximum(best, M[:, j], out=best)
    return index


def _count_correct(A: np.ndarray, Y: np.ndarray, output: str) -> int:
    """Samples classified right: the largest output is the target's largest (softmax), or
    every output is on the target's side of 1/2 (sigmoid); none for regression."""
    if output == "softmax":
        return int(np.count_nonzero(_row_argmax(A) == _row_argmax(Y)))
    if output == "sigmoid":
        wrong = (A > 0.5) != (Y > 0.5)
        return A.shape[0] - int(np.count_nonzero(wrong.any(axis=1) if A.shape[1] > 1 else wrong))
    return 0


def _softplus(z: np.ndarray) -> np.ndarray:
    """log(1 + e^z), without overflow."""
    return np.logaddexp(0, z)


class NumpyBackend(Backend):
    name = "numpy"

    def __init__(self) -> None:
        self._ones_cache: dict[tuple[int, np.dtype], np.ndarray] = {}

    # ---- memory -----------------------------------------------------------------------------

    def asarray(self, host: np.ndarray, dtype: np.dtype) -> np.ndarray:
        return np.array(host, dtype=dtype, order="C", copy=True)

    def to_host(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, copy=True)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def copy_into(self, dst: np.ndarray, src: np.ndarray) -> None:
        np.copyto(dst, src)

    def is_array(self, obj: object) -> bool:
        return isinstance(obj, np.ndarray)

    # ---- fused ops ----------------------------------------------------------------------------

    def dense_forward(self, X: Array, W: Array, b: Array, activation: str, out: Array) -> Array:
        # Z = X W + b, A = f(Z), a block of rows at a time so the epilogue finds Z in cache
        for rows in _block(out.shape[0], max(X.shape[1], out.shape[1])):
            z = out[rows]
            np.matmul(X[rows], W, out=z)
            z += b
            _activate(z, activation)
        return out

    def output_forward(self, Z: Array, output: str, out: Array) -> Array:
        if output == "softmax":
            # p_j = e^(z_j - max z) / sum_k e^(z_k - max z)
            np.subtract(Z, _row_max(Z)[:, None], out=out)
            np.exp(out, out=out)
            out /= (out @ self._ones(out.shape[1], out.dtype))[:, None]
        elif output in ("sigmoid", "identity"):
            np.copyto(out, Z)
            _activate(out, output)
        else:
            raise ValueError(f"output must be one of softmax, sigmoid, identity; got {output!r}")
        return out

    def output_delta(
        self, Z: Array, Y: Array, output: str, loss: str, out_A: Array, out_D: Array, stats: Array
    ) -> None:
        m, n = Z.shape
        ones = self._ones(n, Z.dtype)
        if output == "softmax" and loss == "cross_entropy":
            # per sample: -sum_j y_j log p_j with log p_j = (z_j - max z) - log s,
            # s = sum_k e^(z_k - max z); dL/dz = p - y
            A = out_A
            np.subtract(Z, _row_max(Z)[:, None], out=A)
            total = -float(np.vdot(Y, A))
            np.exp(A, out=A)
            s = A @ ones
            A /= s[:, None]
            total += float(np.dot(np.log(s), Y @ ones))
            np.subtract(A, Y, out=out_D)
        else:
            A = self.output_forward(Z, output, out_A)
            np.subtract(A, Y, out=out_D)  # a - y
            if output == "sigmoid" and loss == "cross_entropy":
                # per sample: -sum_j y log a + (1-y) log(1-a) = sum_j softplus(z) - y z;
                # dL/dz = a - y
                total = float(np.sum(_softplus(Z), dtype=np.float64)) - float(np.vdot(Y, Z))
            elif loss == "mse":
                # per sample: 1/2 sum_j (a_j - y_j)^2; dL/dz = J^T (a - y), J the output's Jacobian
                total = 0.5 * float(np.vdot(out_D, out_D))
                if output == "sigmoid":
                    _times_derivative(out_D, A, "sigmoid")
                elif output == "softmax":  # J = diag(p) - p p^T: g <- p * (g - <p, g>)
                    out_D -= ((A * out_D) @ ones)[:, None]
                    out_D *= A
            else:
                raise ValueError(f"output={output!r} cannot be trained with loss={loss!r}")
        out_D *= 1.0 / m
        stats[0] += total
        stats[1] += _count_correct(A, Y, output)

    def delta_backward(
        self, D: Array, W: Array, A_prev: Array, activation: str, out: Array
    ) -> Array:
        # D_prev = (D W^T) * f'(A_prev), a block of rows at a time
        for rows in _block(out.shape[0], max(D.shape[1], out.shape[1])):
            d = out[rows]
            np.matmul(D[rows], W.T, out=d)
            _times_derivative(d, A_prev[rows], activation)
        return out

    def weight_gradient(self, A_prev: Array, D: Array, out_W: Array, out_b: Array) -> None:
        # dW = A^T D, db = sum over the batch of D (as 1^T D: a matrix-vector product is much
        # faster than NumPy's reduction along the long axis)
        np.matmul(A_prev.T, D, out=out_W)
        np.matmul(self._ones(D.shape[0], D.dtype), D, out=out_b)

    def _ones(self, n: int, dtype: np.dtype) -> np.ndarray:
        key = (n, np.dtype(dtype))
        ones = self._ones_cache.get(key)
        if ones is None:
            ones = self._ones_cache[key] = np.ones(n, dtype=dtype)
        return ones

    def weight_update(
        self, A_prev: Array, D: Array, W: Array, b: Array, state: OptimizerState
    ) -> None:
        scratch = state.scratch
        if not scratch:
            scratch.update(
                gW=np.empty_like(W), gb=np.empty_like(b), tW=np.empty_like(W), tb=np.empty_like(b)
            )
        self.weight_gradient(A_prev, D, scratch["gW"], scratch["gb"])
        state.t += 1
        opt = state.optimizer
        if opt.weight_decay:
            scratch["gW"] += opt.weight_decay * W  # L2 on the weights only
        _apply(opt, W, scratch["gW"], state.W, scratch["tW"], state.t)
        _apply(opt, b, scratch["gb"], state.b, scratch["tb"], state.t)
        if state.t % _FLUSH_EVERY == 0:
            for slot in (*state.W.values(), *state.b.values()):
                _flush(slot)

    def gather_rows(self, src: Array, index: Array, out: Array) -> Array:
        return np.take(src, index, axis=0, out=out)


def _apply(
    opt: Optimizer, P: np.ndarray, G: np.ndarray, slots: dict, tmp: np.ndarray, t: int
) -> None:
    """P <- P - step(G), updating the slot arrays; G and tmp are scratch and are overwritten."""
    kind = opt.kind
    if kind == "sgd":
        if opt.momentum:
            v = slots["velocity"]
            v *= opt.momentum
            v += G  # v = mu v + g
            if opt.nesterov:
                np.multiply(v, opt.momentum, out=tmp)
                G += tmp  # step = g + mu v
            else:
                np.copyto(G, v)  # step = v
        G *= opt.lr
        P -= G
    elif kind == "rmsprop":
        s = slots["square_avg"]
        s *= opt.rho
        np.multiply(G, G, out=tmp)
        tmp *= 1 - opt.rho
        s += tmp  # s = rho s + (1 - rho) g^2
        np.sqrt(s, out=tmp)
        tmp += opt.eps
        G /= tmp
        G *= opt.lr
        P -= G  # p -= lr g / (sqrt(s) + eps)
    elif kind == "adam":
        m, v = slots["exp_avg"], slots["exp_avg_sq"]
        m *= opt.beta1
        np.multiply(G, 1 - opt.beta1, out=tmp)
        m += tmp  # m = b1 m + (1 - b1) g
        np.multiply(G, G, out=tmp)
        tmp *= 1 - opt.beta2
        v *= opt.beta2
        v += tmp  # v = b2 v + (1 - b2) g^2
        # p -= lr m_hat / (sqrt(v_hat) + eps), m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)
        np.sqrt(v, out=tmp)
        tmp *= 1.0 / np.sqrt(1.0 - opt.beta2**t)
        tmp += opt.eps
        np.divide(m, tmp, out=G)
        G *= opt.lr / (1.0 - opt.beta1**t)
        P -= G
    else:
        raise ValueError(f"unknown optimizer kind {kind!r}")


def _flush(a: np.ndarray) -> None:
    """Set subnormal numbers to zero, as a GPU's flush-to-zero does.

    Optimizer state that decays geometrically (a unit whose gradient stays zero) passes
    through the subnormal range, where every CPU operation on it is many times slower.
    """
    np.putmask(a, np.abs(a) < np.finfo(a.dtype).tiny, 0)
