"""numba.cuda kernels of the numba backend: one tiled GEMM with a fused epilogue, the output
layer with its loss, a deterministic stats reduction, the optimizer step, a scaling and a row
gather.

The numba backend reaches numba through this module only, and ``import bpgpu`` never loads
numba. Kernels that need shared memory of the element type are built per dtype. The
elementwise and per-row math (activations, output layer and loss, optimizer rules) is that of
bpgpu/backends/numba_rules.py, which the compiled CPU path compiles too; its codes are those of
the tables (bpgpu/functions.py, bpgpu/optimizers.py), the same the CUDA C kernels switch on.
"""

from __future__ import annotations

import contextlib
import importlib
import math
from collections.abc import Iterator

import numba
import numpy as np
from numba import cuda, float64

from bpgpu.backends.numba_rules import RULE_SCALARS as RULE_SCALARS
from bpgpu.backends.numba_rules import compile_rules

NUMBA_VERSION: str = numba.__version__
#: True on numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1 before numba was first imported)
SIMULATED: bool = bool(numba.config.ENABLE_CUDASIM)

#: GEMM epilogues: out = act(acc + b) | out = acc * act'(aux) | out = acc
EPI_FORWARD, EPI_DERIVATIVE, EPI_STORE = 0, 1, 2

TILE = 16  # output tile of a block, and the k-step of the shared-memory tiles
REG = 2  # each thread computes a REG x REG register block
THREADS = TILE // REG  # a block is THREADS x THREADS threads
REDUCE_THREADS = 128


_rules = compile_rules(cuda.jit(device=True))
_act, _deriv, _row_output = _rules.activate, _rules.derivative, _rules.row_output
_row_output_delta, _optimizer_rule = _rules.row_output_delta, _rules.optimizer_rule


def _make_gemm(dtype):
    # out (M,N) = epilogue(op(A) @ op(B)), op(A) = A or A^T (trans_a), op(B) likewise.
    # Block (x, y) computes the TILE x TILE output tile of row tile x and column tile y (rows on
    # grid.x, which is not limited to 65535 blocks: cuda_source.tile_grid), stepping over K in
    # TILE-wide tiles of op(A) and op(B) staged in shared memory (zero past the edges); each
    # thread keeps a REG x REG block of sums in registers. Epilogue: mode 0 act(acc + bias[c]),
    # mode 1 acc * act'(aux[r, c]), mode 2 acc.
    @cuda.jit
    def gemm(A, B, trans_a, trans_b, bias, aux, act, mode, out):
        sA = cuda.shared.array((TILE, TILE), dtype)
        sB = cuda.shared.array((TILE, TILE), dtype)
        acc = cuda.local.array((REG, REG), dtype)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * THREADS + tx
        row0 = cuda.blockIdx.x * TILE
        col0 = cuda.blockIdx.y * TILE
        M = out.shape[0]
        N = out.shape[1]
        K = A.shape[0] if trans_a else A.shape[1]
        for i in range(REG):
            for j in range(REG):
                acc[i, j] = 0
        for k0 in range(0, K, TILE):
            for e in range(tid, TILE * TILE, THREADS * THREADS):
                r = e // TILE
                c = e % TILE
                gr = row0 + r
                gk = k0 + c
                if gr < M and gk < K:
                    sA[r, c] = A[gk, gr] if trans_a else A[gr, gk]
                else:
                    sA[r, c] = 0
                gk = k0 + r
                gc = col0 + c
                if gk < K and gc < N:
                    sB[r, c] = B[gc, gk] if trans_b else B[gk, gc]
                else:
                    sB[r, c] = 0
            cuda.syncthreads()
            for p in range(TILE):
                for i in range(REG):
                    a = sA[ty * REG + i, p]
                    for j in range(REG):
                        acc[i, j] += a * sB[p, tx * REG + j]
            cuda.syncthreads()
        for i in range(REG):
            r = row0 + ty * REG + i
            for j in range(REG):
                c = col0 + tx * REG + j
                if r < M and c < N:
                    v = acc[i, j]
                    if mode == 0:
                        v = _act(v + bias[c], act)
                    elif mode == 1:
                        v = v * _deriv(aux[r, c], act)
                    out[r, c] = v

    return gemm


GEMM = {np.dtype(np.float32): _make_gemm(np.float32), np.dtype(np.float64): _make_gemm(np.float64)}


@cuda.jit
def column_sum(D, out):
    # out[j] = sum_i D[i, j], one thread per column, rows in order (deterministic)
    j = cuda.grid(1)
    if j < D.shape[1]:
        s = D[0, j] * 0
        for i in range(D.shape[0]):
            s += D[i, j]
        out[j] = s


@cuda.jit
def output_forward(Z, code, out):
    # out = output(Z) row-wise, one thread per row
    i = cuda.grid(1)
    if i < Z.shape[0]:
        _row_output(Z, i, code, out)


@cuda.jit
def output_delta(Z, Y, code, loss, inv_m, A, D, row_stats):
    # One thread per row i: A = output(Z), D = dL/dZ / m, the sample's loss into row_stats[i, 0]
    # and 1 or 0 for a right answer into row_stats[i, 1] (numba_rules.row_output_delta)
    i = cuda.grid(1)
    if i < Z.shape[0]:
        total, right = _row_output_delta(Z, Y, i, code, loss, inv_m, A, D)
        row_stats[i, 0] = total
        row_stats[i, 1] = right


@cuda.jit
def add_stats(row_stats, stats):
    # stats[c] += sum_i row_stats[i, c] in one block, a fixed order of additions (deterministic):
    # each thread sums a stride of rows, then a tree over the threads
    part = cuda.shared.array((REDUCE_THREADS, 2), float64)
    t = cuda.threadIdx.x
    for c in range(2):
        s = float64(0.0)
        for i in range(t, row_stats.shape[0], REDUCE_THREADS):
            s += row_stats[i, c]
        part[t, c] = s
    cuda.syncthreads()
    width = REDUCE_THREADS // 2
    while width > 0:
        if t < width:
            part[t, 0] += part[t + width, 0]
            part[t, 1] += part[t + width, 1]
        cuda.syncthreads()
        width //= 2
    if t == 0:
        stats[0] += part[0, 0]
        stats[1] += part[0, 1]


@cuda.jit
def optimizer_step(P, G, S1, S2, slots, one, code, lr, wd, s2, s3, s4, s5, s6):
    # Elementwise on flat arrays: each parameter's update from its gradient by the rule of
    # ``code`` (numba_rules' optimizer_rule; wd = 0 for biases); ``one`` and the numbers are in
    # P's dtype; the rule keeps ``slots`` state arrays, S1 and S2, the others being stand-ins
    # that are never read or written
    n = P.shape[0]
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for k in range(start, n, stride):
        a = S1[k] if slots > 0 else P[k] * 0
        b = S2[k] if slots > 1 else P[k] * 0
        p, a, b = _optimizer_rule(code, P[k], G[k], a, b, one, lr, wd, s2, s3, s4, s5, s6)
        P[k] = p
        if slots > 0:
            S1[k] = a
        if slots > 1:
            S2[k] = b


@cuda.jit
def scale(a, factor):
    # a *= factor, elementwise on a flat array, grid-stride
    for k in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        a[k] *= factor


@cuda.jit
def gather_rows(src, index, out):
    # out[i, j] = src[index[i], j], grid-stride over the flat e = i * n + j (any size); an
    # index outside [0, src rows) gives a row of NaN, as the CUDA C kernel does
    n = out.shape[1]
    for e in range(cuda.grid(1), out.shape[0] * n, cuda.gridsize(1)):
        i = e // n
        j = e - i * n
        s = index[i]
        out[i, j] = src[s, j] if 0 <= s < src.shape[0] else math.nan


# ---- what the backend needs of numba besides the kernels ------------------------------------


def check_compiler() -> None:
    """Compile a trivial kernel to PTX, which needs numba's NVVM but no GPU: raises (numba's
    NvvmSupportError and the like) where numba could not compile the backend's kernels."""

    def touch(a):
        i = cuda.grid(1)
        if i < a.size:
            a[i] = 0.0

    cuda.compile_ptx(touch, (numba.float32[:],), cc=(8, 0))


def select_device(index: int) -> int | None:
    """Make GPU ``index % count`` numba's current device (a data-parallel process's GPU from
    its rank on the node); None on the simulator or without GPUs."""
    if SIMULATED or not cuda.is_available():
        return None
    device = index % len(cuda.gpus)
    cuda.select_device(device)
    return device


def _interface_configs() -> list:
    """The config objects whose CUDA_ARRAY_INTERFACE_SYNC numba reads when it imports an array
    through ``__cuda_array_interface__`` (numba.core.config in current numba-cuda)."""
    found: dict[int, object] = {}
    for name in ("numba.cuda.api", "numba.cuda.cudadrv.devicearray"):
        try:
            config = getattr(importlib.import_module(name), "config", None)
        except ImportError:  # the simulator has neither
            continue
        if hasattr(config, "CUDA_ARRAY_INTERFACE_SYNC"):
            found[id(config)] = config
    return list(found.values())


@contextlib.contextmanager
def interface_sync_off() -> Iterator[None]:
    """Within: numba imports ``__cuda_array_interface__`` arrays (CuPy's) without synchronizing
    the stream they name, which it does by default once per array argument
    (NUMBA_CUDA_ARRAY_INTERFACE_SYNC). The backend launches on that very stream, so stream order
    already holds; the setting is restored after."""
    configs = _interface_configs()
    saved = [c.CUDA_ARRAY_INTERFACE_SYNC for c in configs]
    for c in configs:
        c.CUDA_ARRAY_INTERFACE_SYNC = 0
    try:
        yield
    finally:
        for c, value in zip(configs, saved, strict=True):
            c.CUDA_ARRAY_INTERFACE_SYNC = value
