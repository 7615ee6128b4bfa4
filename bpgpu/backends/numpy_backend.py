"""The NumPy backend: the reference backend's math, scheduled for speed on a CPU.

It computes what bpgpu/backends/reference.py computes, and is tested against it; what differs
is the schedule. Each op walks its rows in blocks small enough to stay in the CPU cache,
running the matrix product and then the elementwise work on the block (the CPU version of a
fused kernel's epilogue); a large step's rows are split across CPU threads (``RowThreads``);
every result goes into a buffer allocated once; optimizer state is flushed of subnormal
numbers, as a GPU's flush-to-zero does. Why each block size and threshold is what it is:
bench/results/cpu/NOTES.md.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import numpy as np

from bpgpu.backends.base import (
    Array,
    Backend,
    HostMemory,
    Network,
    OptimizerState,
    Workspace,
    check_index_values,
)
from bpgpu.backends.row_threads import MIN_STEP_ELEMENTS, RowThreads
from bpgpu.functions import ACTIVATIONS
from bpgpu.optimizers import Optimizer

#: elements of a row block, its input and output rows together (2 MiB of float32)
_BLOCK_ELEMENTS = 1 << 19
#: a block that starts with a matrix product has at least this many rows: over fewer, the
#: product packs W again too often
_MIN_PRODUCT_ROWS = 1024
#: optimizer state is flushed of subnormal numbers every this many updates (see _flush)
_FLUSH_EVERY = 64


def _block_rows(width: int, min_rows: int = _MIN_PRODUCT_ROWS) -> int:
    """Rows in a cache-sized block of rows ``width`` elements wide, at least ``min_rows``."""
    return max(min_rows, _BLOCK_ELEMENTS // max(width, 1))


def _blocks(rows: slice, width: int, min_rows: int = _MIN_PRODUCT_ROWS) -> Iterator[slice]:
    """Row slices covering ``rows`` of ``width`` elements each, a cache-sized block each."""
    step = _block_rows(width, min_rows)
    for start in range(rows.start, rows.stop, step):
        yield slice(start, min(start + step, rows.stop))


_ZEROS: dict[np.dtype, np.ndarray] = {}


def _zeros_like(z: np.ndarray) -> np.ndarray:
    """A read-only array of zeros shaped like ``z`` (views of one cached buffer)."""
    flat = _ZEROS.get(z.dtype)
    if flat is None or flat.size < z.size:
        flat = np.zeros(max(z.size, _BLOCK_ELEMENTS), z.dtype)
        flat.flags.writeable = False
        _ZEROS[z.dtype] = flat
    return flat[: z.size].reshape(z.shape)


def _activate(z: np.ndarray, activation: str) -> None:
    """z <- f(z) in place: in-place forms of the table's functions where they pay, the table's
    ``f`` otherwise."""
    if activation == "relu":
        # against an array of zeros NumPy's maximum takes its SIMD loop (a scalar 0 does not)
        np.maximum(z, _zeros_like(z), out=z)
    elif activation == "sigmoid":
        with np.errstate(over="ignore"):  # e^-z = inf gives the right limit, 0
            np.negative(z, out=z)
            np.exp(z, out=z)
        z += 1
        np.reciprocal(z, out=z)  # 1 / (1 + e^-z)
    elif activation == "tanh":
        np.tanh(z, out=z)
    elif activation != "identity":
        z[...] = ACTIVATIONS[activation].f(z)


def _times_derivative(d: np.ndarray, a: np.ndarray, activation: str) -> None:
    """d <- d * f'(z), f' written in terms of the stored output a = f(z)."""
    if activation == "relu":
        np.multiply(d, a > 0, out=d)
    elif activation == "sigmoid":  # a (1 - a)
        d *= a
        d *= 1 - a
    elif activation == "tanh":  # 1 - a^2
        d *= 1 - a * a
    elif activation != "identity":
        d *= ACTIVATIONS[activation].df(a)


def _row_max(M: np.ndarray) -> np.ndarray:
    """max over each row; NumPy reduces a short axis slowly, so narrow rows go column by column."""
    if M.shape[1] > 32:
        return M.max(axis=1)
    best = M[:, 0].copy()
    for j in range(1, M.shape[1]):
        np.maximum(best, M[:, j], out=best)
    return best


def _row_argmax(M: np.ndarray) -> np.ndarray:
    """The first column holding each row's maximum, as ``M.argmax(axis=1)`` (which is slower
    for rows of up to 3 elements)."""
    if M.shape[1] > 3:
        return M.argmax(axis=1)
    best = M[:, 0].copy()
    index = np.zeros(M.shape[0], dtype=np.intp)
    for j in range(1, M.shape[1]):
        np.putmask(index, M[:, j] > best, j)
        np.maximum(best, M[:, j], out=best)
    return index


def _count_correct(A: np.ndarray, Y: np.ndarray, output: str) -> int:
    """Samples classified right, as ``reference.correct`` counts them."""
    if output == "softmax":
        return int(np.count_nonzero(_row_argmax(A) == _row_argmax(Y)))
    if output == "sigmoid":
        wrong = (A > 0.5) != (Y > 0.5)
        return A.shape[0] - int(np.count_nonzero(wrong.any(axis=1) if A.shape[1] > 1 else wrong))
    return 0


@dataclass
class _UpdateBuffers:
    """A layer's scratch for its update: the gradients, the optimizer's temporaries and the
    partial sums of the threads past the first, made on the layer's first update."""

    gW: np.ndarray
    gb: np.ndarray
    tW: np.ndarray
    tb: np.ndarray
    partials: list[tuple[np.ndarray, np.ndarray]] = field(default_factory=list)


class NumpyBackend(HostMemory, Backend):
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
        return self.rows.parallel(ws.rows * max(max(W.shape) for W in net.W))

    def _ones(self, n: int, dtype: np.dtype) -> np.ndarray:
        key = (n, np.dtype(dtype))
        ones = self._ones_cache.get(key)
        if ones is None:
            ones = self._ones_cache[key] = np.ones(n, dtype=dtype)
        return ones

    # ---- ops ------------------------------------------------------------------------------

    def _dense_forward(self, X: Array, W: Array, b: Array, activation: str, out: Array) -> Array:
        # Z = X W + b, A = f(Z), a block of rows at a time so the epilogue finds Z in cache
        m, width = out.shape[0], X.shape[1] + out.shape[1]
        step = _block_rows(width)
        bias = np.broadcast_to(b, (min(m, step), b.shape[0]))
        if m > step:  # several blocks: adding b from a block of copies beats broadcasting it
            bias = bias.copy()

        def rows(part: slice) -> None:
            for block in _blocks(part, width):
                z = out[block]
                np.matmul(X[block], W, out=z)
                self._bias_activate(z, bias[: z.shape[0]], activation)

        self.rows.run(rows, m, m * width)
        return out

    def _output_forward(self, Z: Array, output: str, out: Array) -> Array:
        if output == "softmax":
            # p_j = e^(z_j - max z) / sum_k e^(z_k - max z)
            np.subtract(Z, _row_max(Z)[:, None], out=out)
            np.exp(out, out=out)
            out /= (out @ self._ones(out.shape[1], out.dtype))[:, None]
        else:
            np.copyto(out, Z)
            _activate(out, output)  # sigmoid or identity, as the hidden activation
        return out

    def _output_delta(
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
            self._output_forward(Z, output, A)
            np.subtract(A, Y, out=D)  # a - y
            if loss == "cross_entropy":  # sigmoid, binary
                # per sample: sum_j softplus(z_j) - y_j z_j; dL/dz = a - y
                total = float(np.sum(np.logaddexp(0, Z), dtype=np.float64)) - float(np.vdot(Y, Z))
            else:
                # per sample: 1/2 sum_j (a_j - y_j)^2; dL/dz = J^T (a - y), J the output's Jacobian
                total = 0.5 * float(np.vdot(D, D))
                if output == "sigmoid":
                    _times_derivative(D, A, "sigmoid")
                elif output == "softmax":  # J = diag(p) - p p^T: g <- p * (g - <p, g>)
                    D -= ((A * D) @ ones)[:, None]
                    D *= A
        D *= scale
        return total, _count_correct(A, Y, output)

    def _delta_backward(
        self, D: Array, W: Array, A_prev: Array, activation: str, out: Array
    ) -> Array:
        # D_prev = (D W^T) * f'(A_prev), a block of rows at a time
        width = D.shape[1] + 2 * out.shape[1]

        def rows(part: slice) -> None:
            for block in _blocks(part, width):
                d = out[block]
                np.matmul(D[block], W.T, out=d)
                self._times_derivative(d, A_prev[block], activation)

        self.rows.run(rows, out.shape[0], out.shape[0] * width)
        return out

    def _weight_gradient(self, A_prev: Array, D: Array, out_W: Array, out_b: Array) -> None:
        self._gradient_into(A_prev, D, out_W, out_b, [])

    def _gradient_into(
        self,
        A_prev: Array,
        D: Array,
        out_W: Array,
        out_b: Array,
        partials: list[tuple[np.ndarray, np.ndarray]],
    ) -> None:
        """dW = A^T D and db = 1^T D (a matrix-vector product: much faster than NumPy's
        reduction along the long axis). Split across threads, each thread sums its own rows
        into a buffer of ``partials`` (made on first use, kept by the caller) and the partial
        sums are added in a fixed order."""
        m = D.shape[0]
        parts = self.rows.split(m, m * (A_prev.shape[1] + D.shape[1]))
        while len(partials) < len(parts) - 1:
            partials.append((np.empty_like(out_W), np.empty_like(out_b)))
        sums = [(out_W, out_b), *partials[: len(parts) - 1]]
        ones = self._ones(m, D.dtype)

        def rows(i: int) -> None:
            r = parts[i]
            np.matmul(A_prev[r].T, D[r], out=sums[i][0])
            np.matmul(ones[r], D[r], out=sums[i][1])

        self.rows.map(rows, range(len(parts)))
        for gW, gb in sums[1:]:
            out_W += gW
            out_b += gb

    def _weight_update(
        self, A_prev: Array, D: Array, W: Array, b: Array, state: OptimizerState
    ) -> None:
        buf = self._update_buffers(W, b, state)
        self._gradient_into(A_prev, D, buf.gW, buf.gb, buf.partials)
        self._apply(W, b, buf, state)

    def _optimizer_step(
        self, W: Array, b: Array, dW: Array, db: Array, state: OptimizerState
    ) -> None:
        buf = self._update_buffers(W, b, state)
        np.copyto(buf.gW, dW)  # the rule overwrites its gradient; the caller's stays whole
        np.copyto(buf.gb, db)
        self._apply(W, b, buf, state)

    @staticmethod
    def _update_buffers(W: Array, b: Array, state: OptimizerState) -> _UpdateBuffers:
        if state.scratch is None:
            state.scratch = _UpdateBuffers(*(np.empty_like(a) for a in (W, b, W, b)))
        return state.scratch

    def _apply(self, W: Array, b: Array, buf: _UpdateBuffers, state: OptimizerState) -> None:
        """The optimizer's update ``state.t`` of W and b from the gradients in ``buf`` (which
        it overwrites), W's rows in cache-sized blocks across the threads."""
        opt, t = state.optimizer, state.t
        width = W.shape[1] * (3 + len(state.W))  # W, its gradient, scratch and the slots

        def rows(part: slice) -> None:
            for r in _blocks(part, width, min_rows=1):
                slots = {k: v[r] for k, v in state.W.items()}
                self._apply_update(opt, W[r], buf.gW[r], slots, buf.tW[r], t, True)

        self.rows.run(rows, W.shape[0], W.shape[0] * width)
        self._apply_update(opt, b, buf.gb, state.b, buf.tb, t, False)
        if t % _FLUSH_EVERY == 0:
            for slot in (*state.W.values(), *state.b.values()):
                _flush(slot)

    # ---- the elementwise passes around the matrix products (a subclass may compile them) ----

    def _bias_activate(self, z: np.ndarray, bias: np.ndarray, activation: str) -> None:
        """z <- f(z + bias) in place; ``bias`` holds b in each of z's rows (a broadcast view or a
        block of copies)."""
        z += bias
        _activate(z, activation)

    def _times_derivative(self, d: np.ndarray, a: np.ndarray, activation: str) -> None:
        """d <- d * f'(z) in place, from the stored outputs a = f(z)."""
        _times_derivative(d, a, activation)

    def _apply_update(
        self,
        opt: Optimizer,
        P: np.ndarray,
        G: np.ndarray,
        slots: dict[str, np.ndarray],
        tmp: np.ndarray,
        t: int,
        decay: bool,
    ) -> None:
        """Update t of P from its gradient G (Optimizer.apply; G and tmp are scratch)."""
        opt.apply(P, G, slots, tmp, t, decay=decay)

    def _gather_rows(self, src: Array, index: Array, out: Array) -> Array:
        check_index_values(src, index)
        # mode="clip" changes nothing after the check; NumPy's default mode would write into a
        # temporary and copy it to out, twice the memory traffic
        self.rows.run(
            lambda r: np.take(src, index[r], axis=0, out=out[r], mode="clip"),
            out.shape[0],
            2 * out.size,
        )
        return out


def _flush(a: np.ndarray) -> None:
    """Set subnormal numbers to zero, as a GPU's flush-to-zero does.

    Optimizer state that decays geometrically (a unit whose gradient stays zero) passes
    through the subnormal range, where every CPU operation on it is many times slower.
    """
    np.putmask(a, np.abs(a) < np.finfo(a.dtype).tiny, 0)
