"""The NumPy backend: the reference every other backend is tested against.

Each op is the math of backpropagation written out once, batched over rows. A large op's rows
are split across CPU threads (``RowThreads``); each thread walks its rows in blocks small enough
to stay in the CPU cache, running the matrix product and then the elementwise work on the block
(the CPU version of a fused kernel's epilogue). Every result goes into a buffer the caller
allocated once.
"""

from __future__ import annotations

from contextlib import AbstractContextManager

import numpy as np

from bpgpu.backends.base import Array, Backend, Network, OptimizerState, Workspace
from bpgpu.backends.row_threads import MIN_STEP_ELEMENTS, RowThreads
from bpgpu.optimizers import Optimizer

#: elements of a row block, its input and output rows together (2 MiB of float32: measured
#: best of 2^17..2^20 on the issue-2 shapes, bench/results/cpu/issue2/NOTES.md)
_BLOCK_ELEMENTS = 1 << 19
#: optimizer state is flushed of subnormal numbers every this many updates (see _flush)
_FLUSH_EVERY = 64


#: rows of a block that starts with a matrix product: over fewer rows it packs W again too often
#: (1024 x 1024 x 1024: 14.3 ms in 256-row blocks, 12.7-13.2 ms in one)
_MIN_PRODUCT_ROWS = 1024


def _block_rows(width: int, min_rows: int = _MIN_PRODUCT_ROWS) -> int:
    """Rows in a cache-sized block of rows ``width`` elements wide, at least ``min_rows``."""
    return max(min_rows, _BLOCK_ELEMENTS // max(width, 1))


def _block(rows: slice, width: int, min_rows: int = _MIN_PRODUCT_ROWS):
    """Row slices covering ``rows`` of ``width`` elements each, a cache-sized block each."""
    step = _block_rows(width, min_rows)
    for start in range(rows.start, rows.stop, step):
        yield slice(start, min(start + step, rows.stop))


_ZEROS: dict[np.dtype, np.ndarray] = {}


def _zeros_like(z: np.ndarray) -> np.ndarray:
    """A read-only array of zeros shaped like ``z``."""
    flat = _ZEROS.get(z.dtype)
    if flat is None or flat.size < z.size:
        flat = np.zeros(max(z.size, _BLOCK_ELEMENTS), z.dtype)
        flat.flags.writeable = False
        _ZEROS[z.dtype] = flat
    return flat[: z.size].reshape(z.shape)


def _activate(z: np.ndarray, activation: str) -> None:
    """z <- f(z) in place."""
    if activation == "relu":
        # (against an array of zeros NumPy's maximum is about 5x faster than against 0)
        np.maximum(z, _zeros_like(z), out=z)
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
    """The first column holding each row's maximum, as ``M.argmax(axis=1)`` (which is slower
    for rows of up to 3 elements: measured 4096 and 65536 rows of 2..16)."""
    if M.shape[1] > 3:
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

    def __init__(
        self, threads: int | None = None, min_step_elements: int = MIN_STEP_ELEMENTS
    ) -> None:
        """``threads``: how many CPU threads a large step's ops split their rows across (None:
        as many as BLAS uses); a step whose widest activation has fewer than
        ``min_step_elements`` elements runs on one."""
        self._ones_cache: dict[tuple[int, np.dtype], np.ndarray] = {}
        self.rows = RowThreads(threads, min_step_elements)

    def describe(self) -> dict[str, str]:
        return {**super().describe(), "threads": self.rows.describe()}

    def step_scope(self, net: Network, ws: Workspace) -> AbstractContextManager[None]:
        # threads for a step whose widest activation is large enough (RowThreads.parallel)
        return self.rows.parallel(ws.rows * max(max(W.shape) for W in net.W))

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
        m, width = out.shape[0], X.shape[1] + out.shape[1]
        step = _block_rows(width)
        bias = np.broadcast_to(b, (min(m, step), b.shape[0]))
        if m > step:  # several blocks: b copied down a block's rows once adds ~2x faster
            bias = bias.copy()

        def rows(part: slice) -> None:
            for block in _block(part, width):
                z = out[block]
                np.matmul(X[block], W, out=z)
                z += bias[: z.shape[0]]
                _activate(z, activation)

        self.rows.run(rows, m, m * width)
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
        parts = self.rows.run(
            lambda r: self._output_delta_rows(
                Z[r], Y[r], output, loss, out_A[r], out_D[r], 1.0 / m
            ),
            m,
            4 * m * n,
        )
        stats[0] += sum(total for total, _ in parts)
        stats[1] += sum(correct for _, correct in parts)

    def _output_delta_rows(
        self, Z: Array, Y: Array, output: str, loss: str, A: Array, D: Array, scale: float
    ) -> tuple[float, int]:
        """output_delta on some of the batch's rows, D scaled by ``scale`` (1 / batch size);
        returns those rows' summed loss and correct count."""
        ones = self._ones(Z.shape[1], Z.dtype)
        if output == "softmax" and loss == "cross_entropy":
            # per sample: -sum_j y_j log p_j with log p_j = (z_j - max z) - log s,
            # s = sum_k e^(z_k - max z); dL/dz = p - y
            np.subtract(Z, _row_max(Z)[:, None], out=A)
            total = -float(np.vdot(Y, A))
            np.exp(A, out=A)
            s = A @ ones
            A /= s[:, None]
            total += float(np.dot(np.log(s), Y @ ones))
            np.subtract(A, Y, out=D)
        else:
            self.output_forward(Z, output, A)
            np.subtract(A, Y, out=D)  # a - y
            if output == "sigmoid" and loss == "cross_entropy":
                # per sample: -sum_j y log a + (1-y) log(1-a) = sum_j softplus(z) - y z;
                # dL/dz = a - y
                total = float(np.sum(_softplus(Z), dtype=np.float64)) - float(np.vdot(Y, Z))
            elif loss == "mse":
                # per sample: 1/2 sum_j (a_j - y_j)^2; dL/dz = J^T (a - y), J the output's Jacobian
                total = 0.5 * float(np.vdot(D, D))
                if output == "sigmoid":
                    _times_derivative(D, A, "sigmoid")
                elif output == "softmax":  # J = diag(p) - p p^T: g <- p * (g - <p, g>)
                    D -= ((A * D) @ ones)[:, None]
                    D *= A
            else:
                raise ValueError(f"output={output!r} cannot be trained with loss={loss!r}")
        D *= scale
        return total, _count_correct(A, Y, output)

    def delta_backward(
        self, D: Array, W: Array, A_prev: Array, activation: str, out: Array
    ) -> Array:
        # D_prev = (D W^T) * f'(A_prev), a block of rows at a time
        width = D.shape[1] + 2 * out.shape[1]

        def rows(part: slice) -> None:
            for block in _block(part, width):
                d = out[block]
                np.matmul(D[block], W.T, out=d)
                _times_derivative(d, A_prev[block], activation)

        self.rows.run(rows, out.shape[0], out.shape[0] * width)
        return out

    def weight_gradient(self, A_prev: Array, D: Array, out_W: Array, out_b: Array) -> None:
        self._weight_gradient(A_prev, D, out_W, out_b, {})

    def _weight_gradient(
        self, A_prev: Array, D: Array, out_W: Array, out_b: Array, partials: dict[str, Array]
    ) -> None:
        """weight_gradient, the partial sums of threads past the first kept in ``partials``
        (``gW1``, ``gb1``, ...: made on first use, so a step allocates nothing)."""
        # dW = A^T D, db = sum over the batch of D (as 1^T D: a matrix-vector product is much
        # faster than NumPy's reduction along the long axis). Split across threads, each sums
        # its own rows; the partial sums are added in a fixed order.
        m = D.shape[0]
        parts = self.rows.split(m, m * (A_prev.shape[1] + D.shape[1]))
        sums = [(out_W, out_b)]
        for i in range(1, len(parts)):
            if f"gW{i}" not in partials:
                partials.update({f"gW{i}": np.empty_like(out_W), f"gb{i}": np.empty_like(out_b)})
            sums.append((partials[f"gW{i}"], partials[f"gb{i}"]))
        ones = self._ones(m, D.dtype)

        def rows(i: int) -> None:
            r = parts[i]
            np.matmul(A_prev[r].T, D[r], out=sums[i][0])
            np.matmul(ones[r], D[r], out=sums[i][1])

        self.rows.map(rows, range(len(parts)))
        for gW, gb in sums[1:]:
            out_W += gW
            out_b += gb

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
        gW, tW = scratch["gW"], scratch["tW"]
        self._weight_gradient(A_prev, D, gW, scratch["gb"], scratch)
        state.t += 1
        opt, t = state.optimizer, state.t

        width = W.shape[1] * (3 + len(state.W))  # W, its gradient, scratch and the slots

        def rows(part: slice) -> None:
            for r in _block(part, width, min_rows=1):  # 1.3x faster for 1024 x 1024
                if opt.weight_decay:
                    gW[r] += opt.weight_decay * W[r]  # L2 on the weights only
                _apply(opt, W[r], gW[r], {k: v[r] for k, v in state.W.items()}, tW[r], t)

        self.rows.run(rows, W.shape[0], W.shape[0] * width)
        _apply(opt, b, scratch["gb"], state.b, scratch["tb"], t)
        if t % _FLUSH_EVERY == 0:
            for slot in (*state.W.values(), *state.b.values()):
                _flush(slot)

    def gather_rows(self, src: Array, index: Array, out: Array) -> Array:
        n = src.shape[0]
        if index.size and (index.min() < 0 or index.max() >= n):
            bad = index[(index < 0) | (index >= n)][0]
            raise IndexError(f"index holds {bad}: expected row numbers in [0, {n})")
        # mode="clip" changes nothing after the check above; NumPy's default mode would write
        # into a temporary and copy it to out, twice the memory traffic.
        self.rows.run(
            lambda r: np.take(src, index[r], axis=0, out=out[r], mode="clip"),
            out.shape[0],
            2 * out.size,
        )
        return out


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
