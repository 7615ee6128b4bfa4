"""The NumPy backend: the reference every other backend is tested against.

Each op is the math of backpropagation written out once, batched over rows. Elementwise work
runs over blocks of rows small enough to stay in the CPU cache (the CPU version of a fused
kernel's epilogue), and every result goes into a buffer the caller allocated once.
"""

from __future__ import annotations

import numpy as np

from bpgpu.backends.base import Array, Backend, OptimizerState
from bpgpu.optimizers import Optimizer

#: elements per row block for the elementwise epilogues (about 256 KiB of float32)
_BLOCK_ELEMENTS = 1 << 16
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
        # sigmoid(z) = (1 + tanh(z/2)) / 2: no overflow for any z
        z *= 0.5
        np.tanh(z, out=z)
        z += 1
        z *= 0.5
    elif activation == "tanh":
        np.tanh(z, out=z)
    elif activation != "identity":
        raise ValueError(f"activation must be one of sigmoid, relu, tanh, identity; got {activation!r}")


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
        raise ValueError(f"activation must be one of sigmoid, relu, tanh, identity; got {activation!r}")


def _softplus(z: np.ndarray) -> np.ndarray:
    """log(1 + e^z), without overflow."""
    return np.logaddexp(0, z)


class NumpyBackend(Backend):
    name = "numpy"

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
        # Z = X W + b, A = f(Z): one matrix product, then bias and activation block by block
        np.matmul(X, W, out=out)
        for rows in _block(out.shape[0], out.shape[1]):
            z = out[rows]
            z += b
            _activate(z, activation)
        return out

    def output_forward(self, Z: Array, output: str, out: Array) -> Array:
        if output == "softmax":
            # p_j = e^(z_j - max z) / sum_k e^(z_k - max z)
            np.subtract(Z, Z.max(axis=1, keepdims=True), out=out)
            np.exp(out, out=out)
            out /= out.sum(axis=1, keepdims=True)
        elif output in ("sigmoid", "identity"):
            np.copyto(out, Z)
            _activate(out, output)
        else:
            raise ValueError(f"output must be one of softmax, sigmoid, identity; got {output!r}")
        return out

    def output_delta(
        self, Z: Array, Y: Array, output: str, loss: str, out_A: Array, out_D: Array, stats: Array
    ) -> None:
        m = Z.shape[0]
        A = self.output_forward(Z, output, out_A)
        np.subtract(A, Y, out=out_D)  # A - Y, the delta of every matched pair before scaling
        if output == "softmax" and loss == "cross_entropy":
            # per sample: -sum_j y_j log p_j, log p_j = z_j - max z - log sum_k e^(z_k - max z);
            # dL/dz = p - y
            zmax = Z.max(axis=1, keepdims=True)
            logsum = np.log(np.exp(Z - zmax).sum(axis=1, keepdims=True))
            total = -np.sum(Y * (Z - zmax - logsum))
        elif output == "sigmoid" and loss == "cross_entropy":
            # per sample: -sum_j y log a + (1-y) log(1-a) = sum_j softplus(z) - y z; dL/dz = a - y
            total = np.sum(_softplus(Z) - Y * Z)
        elif loss == "mse":
            # per sample: 1/2 sum_j (a_j - y_j)^2; dL/dz = J^T (a - y), J the output's Jacobian
            total = 0.5 * np.sum(out_D * out_D, dtype=np.float64)
            if output == "sigmoid":
                _times_derivative(out_D, A, "sigmoid")
            elif output == "softmax":  # J = diag(p) - p p^T: g <- p * (g - <p, g>)
                out_D -= np.sum(A * out_D, axis=1, keepdims=True)
                out_D *= A
        else:
            raise ValueError(f"output={output!r} cannot be trained with loss={loss!r}")
        out_D /= m
        stats[0] += float(total)
        stats[1] += self._count_correct(A, Y, output)

    @staticmethod
    def _count_correct(A: np.ndarray, Y: np.ndarray, output: str) -> int:
        if output == "softmax":
            return int(np.count_nonzero(A.argmax(axis=1) == Y.argmax(axis=1)))
        if output == "sigmoid":
            return int(np.count_nonzero(np.all((A > 0.5) == (Y > 0.5), axis=1)))
        return 0

    def delta_backward(self, D: Array, W: Array, A_prev: Array, activation: str, out: Array) -> Array:
        # D_prev = (D W^T) * f'(A_prev)
        np.matmul(D, W.T, out=out)
        for rows in _block(out.shape[0], out.shape[1]):
            _times_derivative(out[rows], A_prev[rows], activation)
        return out

    def weight_gradient(self, A_prev: Array, D: Array, out_W: Array, out_b: Array) -> None:
        # dW = A^T D, db = sum over the batch of D
        np.matmul(A_prev.T, D, out=out_W)
        np.sum(D, axis=0, out=out_b)

    def weight_update(self, A_prev: Array, D: Array, W: Array, b: Array, state: OptimizerState) -> None:
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


def _apply(opt: Optimizer, P: np.ndarray, G: np.ndarray, slots: dict, tmp: np.ndarray, t: int) -> None:
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
