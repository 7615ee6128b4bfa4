"""The CUDA C kernels of ``kernels/`` as the backend ops: their entry points, launch geometry
and the launcher, shared by the CuPy backend (on a GPU) and the CPU emulation.

``ENTRY_POINTS`` lists every ``extern "C"`` kernel once, by family (source file), as patterns
whose parts come from the concept tables: ``{act}`` an activation, ``{out}`` an output (with
``{loss}``: an (output, loss) pair), ``{opt}`` an optimizer kernel, ``{t}`` f32 or f64.
``KernelOps`` is every op of the Backend interface written once against them; a subclass gives
memory, ``_launch`` and ``_upload``. No CUDA import here.
"""

from __future__ import annotations

import itertools
import math
import string
from dataclasses import dataclass
from typing import Any

import numpy as np

from bpgpu.backends.base import Array, Backend, Network, OptimizerState, Workspace
from bpgpu.backends.cuda_source import TUNABLES
from bpgpu.functions import ACTIVATIONS, COMBINATIONS, OUTPUTS
from bpgpu.optimizers import KERNEL_SCALARS, OPTIMIZERS, Optimizer

#: family -> its entry points' name patterns (the .cu files' X-macro tables generate them)
ENTRY_POINTS: dict[str, tuple[str, ...]] = {
    "dense_forward": ("dense_forward_{act}_{t}",),
    "delta_backward": ("delta_backward_{act}_{t}",),
    "output": (
        "output_forward_{out}_{t}",
        "output_delta_{out}_{loss}_{t}",
        "dense_output_delta_{out}_{loss}_{t}",
        "row_stats_reduce",
    ),
    "weight_update": ("weight_update_{opt}_{t}", "weight_finish_{opt}_{t}", "weight_partial_{t}"),
    "gather": ("gather_rows_{t}",),
}
_FAMILY = {pattern: family for family, patterns in ENTRY_POINTS.items() for pattern in patterns}

#: the weight-update kernels' variants (enum Opt of kernels/optimizers.cuh): "store" writes the
#: gradient itself (weight_gradient), then one per optimizer
OPTIMIZER_KERNELS: dict[str, int] = {
    "store": 0,
    **{cls.kind: cls.code for cls in OPTIMIZERS.values()},
}

#: the entry-point suffix of each dtype
SUFFIXES: dict[np.dtype, str] = {np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}

GEMM_THREADS = (TUNABLES["TILE_M"] // TUNABLES["THREAD_M"]) * (
    TUNABLES["TILE_N"] // TUNABLES["THREAD_N"]
)
#: at most this many blocks for the grid-stride elementwise kernels
_MAX_ELEMENT_BLOCKS = 65535
#: CUDA's limits on gridDim.x and on gridDim.y (and z)
MAX_GRID_X = 2**31 - 1
MAX_GRID_Y = 65535


def _expand(pattern: str) -> list[str]:
    """Every entry point a pattern names."""
    fields = {f for _, f, _, _ in string.Formatter().parse(pattern) if f}
    choices: list[list[dict[str, str]]] = []
    if "t" in fields:
        choices.append([{"t": s} for s in SUFFIXES.values()])
    if "act" in fields:
        choices.append([{"act": a} for a in ACTIVATIONS])
    if "loss" in fields:
        choices.append([{"out": o, "loss": lo} for o, lo in sorted(COMBINATIONS)])
    elif "out" in fields:
        choices.append([{"out": o} for o in OUTPUTS])
    if "opt" in fields:
        choices.append([{"opt": o} for o in OPTIMIZER_KERNELS])
    names = []
    for combo in itertools.product(*choices):
        names.append(pattern.format(**{k: v for part in combo for k, v in part.items()}))
    return names


def entry_points() -> dict[str, list[str]]:
    """Every extern "C" kernel name, by family."""
    return {
        family: sorted(n for p in patterns for n in _expand(p))
        for family, patterns in ENTRY_POINTS.items()
    }


def kernel(pattern: str, **parts: str) -> tuple[str, str]:
    """(entry point name, family) of ``pattern`` filled with ``parts``."""
    return pattern.format(**parts), _FAMILY[pattern]


def suffix(dtype: np.dtype) -> str:
    """The entry-point suffix for an array dtype: f32 or f64."""
    try:
        return SUFFIXES[np.dtype(dtype)]
    except KeyError:
        raise TypeError(f"the CUDA kernels take float32 or float64 arrays; got {dtype}") from None


# ---- launch geometry: (grid, block) --------------------------------------------------------

Geometry = tuple[tuple[int, int, int], tuple[int, int, int]]


def tile_grid(rows: int, cols: int, tile_rows: int, tile_cols: int) -> tuple[int, int]:
    """(grid.x, grid.y) of a GEMM whose blocks own tile_rows x tile_cols output tiles: row tiles
    on grid.x (up to 2^31 - 1, so the batch is never what runs out), column tiles on grid.y (up
    to 65535). Shared by the CUDA C and the numba kernels; raises ValueError past a limit."""
    row_tiles = max(1, math.ceil(rows / tile_rows))
    col_tiles = max(1, math.ceil(cols / tile_cols))
    if row_tiles > MAX_GRID_X:
        raise ValueError(f"{rows} rows exceed the {MAX_GRID_X * tile_rows} one GEMM launch covers")
    if col_tiles > MAX_GRID_Y:
        raise ValueError(
            f"{cols} columns exceed the {MAX_GRID_Y * tile_cols} one GEMM launch covers"
        )
    return row_tiles, col_tiles


def gemm_geometry(rows: int, cols: int, splits: int = 1) -> Geometry:
    """Blocks covering a (rows, cols) output with TILE_M x TILE_N tiles, ``splits`` deep."""
    grid = tile_grid(rows, cols, TUNABLES["TILE_M"], TUNABLES["TILE_N"])
    return (*grid, splits), (GEMM_THREADS, 1, 1)


def row_geometry(m: int) -> Geometry:
    """One thread per row."""
    t = TUNABLES["ROW_THREADS"]
    return (math.ceil(m / t), 1, 1), (t, 1, 1)


def reduce_geometry() -> Geometry:
    """The single block of the deterministic reductions."""
    return (1, 1, 1), (TUNABLES["REDUCE_THREADS"], 1, 1)


def element_geometry(total: int) -> Geometry:
    """Elementwise kernels: one thread per element (grid-stride beyond the cap)."""
    t = TUNABLES["ELEMENT_THREADS"]
    return (max(1, min(math.ceil(total / t), _MAX_ELEMENT_BLOCKS)), 1, 1), (t, 1, 1)


def split_count(m: int, k: int, n: int, target_blocks: int) -> int:
    """How many slices of the batch the weight gradient takes (1: the fused single pass).

    Split when W's (k, n) tiles are too few to occupy ``target_blocks`` blocks and each slice
    still keeps at least 32 TILE_K steps (512 rows) of the batch, so the partial sums and the
    extra launch are worth it: a short batch (784-512-10 at 256) never splits.
    """
    tiles = math.ceil(k / TUNABLES["TILE_M"]) * math.ceil(n / TUNABLES["TILE_N"])
    if tiles >= target_blocks:
        return 1
    most = m // (32 * TUNABLES["TILE_K"])
    return max(1, min(math.ceil(target_blocks / tiles), most))


def rows_per_split(m: int, splits: int) -> int:
    """Batch rows per slice, a multiple of TILE_K so slices align with the shared-memory steps."""
    step = TUNABLES["TILE_K"]
    return math.ceil(math.ceil(m / splits) / step) * step


# ---- the ops ---------------------------------------------------------------------------------

i32 = np.int32
_F64 = np.dtype(np.float64)


@dataclass
class KernelUpdate:
    """A layer's state for the weight-update kernels: the numbers of the current update
    (``Optimizer.kernel_scalars``) in device memory, and the values last written there."""

    scalars: Array
    written: tuple[float, ...] | None = None


class KernelOps(Backend):
    """The fused ops on the CUDA C kernels. Subclasses provide memory, ``_launch``,
    ``_upload`` and ``_target_blocks``."""

    max_elements = 2**31 - 1

    def __init__(self) -> None:
        self._buffers: dict[tuple, Array] = {}

    # ---- what a subclass provides -------------------------------------------------------------

    def _launch(self, name: str, family: str, geometry: Geometry, args: tuple, shapes: str) -> None:
        """Run kernel ``name`` of ``family`` with ``args`` (arrays, np.int32); raise naming it,
        the geometry and ``shapes``."""
        raise NotImplementedError

    def _upload(self, dst: Array, host: np.ndarray) -> None:
        """dst[...] = host, a host array copied into this backend's array."""
        raise NotImplementedError

    def _target_blocks(self) -> int:
        """Blocks that fill the device; fewer weight tiles than this split the batch."""
        raise NotImplementedError

    # ---- scratch ------------------------------------------------------------------------------

    def _buffer(self, key: str, shape: tuple[int, ...], dtype: Any) -> Array:
        """Scratch memory kept for reuse (stable addresses, as a captured graph needs)."""
        full = (key, tuple(shape), np.dtype(dtype).str)
        buf = self._buffers.get(full)
        if buf is None:
            buf = self._buffers[full] = self.zeros(shape, np.dtype(dtype))
        return buf

    # ---- ops --------------------------------------------------------------------------------

    def _dense_forward(self, X: Array, W: Array, b: Array, activation: str, out: Array) -> Array:
        (m, k), n = X.shape, W.shape[1]
        name, family = kernel("dense_forward_{act}_{t}", act=activation, t=suffix(X.dtype))
        args = (X, W, b, out, i32(m), i32(k), i32(n))
        self._launch(name, family, gemm_geometry(m, n), args, f"m={m} k={k} n={n}")
        return out

    def _output_forward(self, Z: Array, output: str, out: Array) -> Array:
        m, n = Z.shape
        name, family = kernel("output_forward_{out}_{t}", out=output, t=suffix(Z.dtype))
        self._launch(name, family, row_geometry(m), (Z, out, i32(m), i32(n)), f"m={m} n={n}")
        return out

    def _output_delta(
        self, Z: Array, Y: Array, output: str, loss: str, out_A: Array, out_D: Array, stats: Array
    ) -> None:
        m, n = Z.shape
        rows = self._buffer("rows", (m, 2), _F64)
        name, family = kernel(
            "output_delta_{out}_{loss}_{t}", out=output, loss=loss, t=suffix(Z.dtype)
        )
        args = (Z, Y, out_A, out_D, rows, i32(m), i32(n))
        self._launch(name, family, row_geometry(m), args, f"m={m} n={n}")
        self._reduce_rows(rows, m, stats, f"m={m} n={n}")

    def _reduce_rows(self, rows: Array, m: int, stats: Array, shapes: str) -> None:
        """stats += the column sums of the per-sample (loss, correct) rows."""
        name, family = kernel("row_stats_reduce")
        self._launch(name, family, reduce_geometry(), (rows, i32(m), stats), shapes)

    def _forward_loss(self, net: Network, ws: Workspace, stats: Array) -> None:
        """As the base class; an output of at most TILE_N units takes the fused last layer
        (a GEMM block then owns whole rows)."""
        if net.W[-1].shape[1] > TUNABLES["TILE_N"]:
            super()._forward_loss(net, ws, stats)
            return
        A = self._forward_hidden(net, ws)
        W, b = net.W[-1], net.b[-1]
        (m, k), n = A.shape, W.shape[1]
        rows = self._buffer("rows", (m, 2), _F64)
        name, family = kernel(
            "dense_output_delta_{out}_{loss}_{t}", out=net.output, loss=net.loss, t=suffix(A.dtype)
        )
        args = (A, W, b, ws.Z, ws.Y, ws.P, ws.D[-1], rows, i32(m), i32(k), i32(n))
        shapes = f"m={m} k={k} n={n}"
        self._launch(name, family, gemm_geometry(m, n), args, shapes)
        self._reduce_rows(rows, m, stats, shapes)

    def _delta_backward(
        self, D: Array, W: Array, A_prev: Array, activation: str, out: Array
    ) -> Array:
        (m, n), k = D.shape, W.shape[0]
        name, family = kernel("delta_backward_{act}_{t}", act=activation, t=suffix(D.dtype))
        args = (D, W, A_prev, out, i32(m), i32(k), i32(n))
        self._launch(name, family, gemm_geometry(m, k), args, f"m={m} k={k} n={n}")
        return out

    def _optimizer_state(self, optimizer: Optimizer, W: Array, b: Array) -> OptimizerState:
        state = super()._optimizer_state(optimizer, W, b)
        state.scratch = KernelUpdate(self.zeros((KERNEL_SCALARS,), _F64))
        return state

    def _advance(self, state: OptimizerState) -> None:
        """Count the update and write its numbers where the kernels read them (only when they
        changed: Adam's change every update, the others' never)."""
        super()._advance(state)
        scratch: KernelUpdate = state.scratch
        values = state.optimizer.kernel_scalars(state.t)
        if values != scratch.written:
            self._upload(scratch.scalars, np.array(values, dtype=_F64))
            scratch.written = values

    def _weight_update(
        self, A_prev: Array, D: Array, W: Array, b: Array, state: OptimizerState
    ) -> None:
        opt = state.optimizer
        self._weight_step(A_prev, D, W, b, opt.kind, state.scratch.scalars, self._slots(state))

    def _weight_gradient(self, A_prev: Array, D: Array, out_W: Array, out_b: Array) -> None:
        scalars = self._buffer("store-scalars", (KERNEL_SCALARS,), _F64)
        self._weight_step(A_prev, D, out_W, out_b, "store", scalars, ([], []))

    def _optimizer_step(
        self, W: Array, b: Array, dW: Array, db: Array, state: OptimizerState
    ) -> None:
        # the split path's finishing kernel over one "split": the gradient as given, then the step
        (k, n), opt = W.shape, state.optimizer
        shapes = f"k={k} n={n}"
        self._finish(dW, db, 1, W, b, opt.kind, state.scratch.scalars, self._slots(state), shapes)

    @staticmethod
    def _slots(state: OptimizerState) -> tuple[list[Array], list[Array]]:
        """The optimizer's slot arrays of W and of b, in the order the kernels take them."""
        slots = state.optimizer.slots
        return [state.W[s] for s in slots], [state.b[s] for s in slots]

    def _weight_step(
        self,
        A: Array,
        D: Array,
        W: Array,
        b: Array,
        variant: str,
        scalars: Array,
        slots: tuple[list[Array], list[Array]],
    ) -> None:
        """W, b <- variant(A^T D, sum_rows D): fused, or split over the batch for a small W."""
        (m, k), n = A.shape, D.shape[1]
        sfx = suffix(A.dtype)
        shapes = f"m={m} k={k} n={n}"
        splits = split_count(m, k, n, self._target_blocks())
        if splits == 1:
            sW1, sW2, sb1, sb2 = self._slot_args(slots, A.dtype)
            name, family = kernel("weight_update_{opt}_{t}", opt=variant, t=sfx)
            args: tuple = (A, D, W, b, sW1, sW2, sb1, sb2, scalars, i32(m), i32(k), i32(n))
            self._launch(name, family, gemm_geometry(k, n), args, shapes)
            return
        rows = rows_per_split(m, splits)
        splits = -(-m // rows)
        shapes += f" splits={splits}"
        partW = self._buffer("partW", (splits, k, n), A.dtype)
        partb = self._buffer("partb", (splits, n), A.dtype)
        name, family = kernel("weight_partial_{t}", t=sfx)
        args = (A, D, partW, partb, i32(m), i32(k), i32(n), i32(rows))
        self._launch(name, family, gemm_geometry(k, n, splits), args, shapes)
        self._finish(partW, partb, splits, W, b, variant, scalars, slots, shapes)

    def _finish(
        self,
        partW: Array,
        partb: Array,
        splits: int,
        W: Array,
        b: Array,
        variant: str,
        scalars: Array,
        slots: tuple[list[Array], list[Array]],
        shapes: str,
    ) -> None:
        """W, b <- variant(the sums of ``splits`` partial gradients), elementwise."""
        k, n = W.shape
        sW1, sW2, sb1, sb2 = self._slot_args(slots, W.dtype)
        name, family = kernel("weight_finish_{opt}_{t}", opt=variant, t=suffix(W.dtype))
        args = (partW, partb, i32(splits), W, b, sW1, sW2, sb1, sb2, scalars, i32(k), i32(n))
        self._launch(name, family, element_geometry(k * n + n), args, shapes)

    def _slot_args(self, slots: tuple[list[Array], list[Array]], dtype: Any) -> list[Array]:
        """sW1, sW2, sb1, sb2: the slot arrays, a dummy for each the rule does not keep."""
        dummy = self._buffer("dummy", (1,), dtype)
        return (slots[0] + [dummy, dummy])[:2] + (slots[1] + [dummy, dummy])[:2]

    def _gather_rows(self, src: Array, index: Array, out: Array) -> Array:
        rows, n = out.shape
        name, family = kernel("gather_rows_{t}", t=suffix(out.dtype))
        args = (src, index, out, i32(rows), i32(n), i32(src.shape[0]))
        shapes = f"rows={rows} n={n} src_rows={src.shape[0]}"
        self._launch(name, family, element_geometry(rows * n), args, shapes)
        return out
