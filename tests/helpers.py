"""What the tests share: the one tolerance rule, the reference run it compares with, and
memory that catches a kernel reading or writing past an array."""

from __future__ import annotations

import ctypes
import math
import mmap
from collections.abc import Callable, Sequence

import numpy as np
import pytest

from bpgpu.backends import get_backend
from bpgpu.backends.base import Backend, BackendUnavailableError, HostMemory
from bpgpu.backends.reference import ReferenceBackend

REF = ReferenceBackend()
F32, F64 = np.dtype(np.float32), np.dtype(np.float64)


def backend_or_skip(name: str) -> Backend:
    """The backend called ``name``; the test is skipped, with the reason, where it cannot run."""
    try:
        return get_backend(name)
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))


#: the tolerance floor per dtype, relative to the reference's scale, per sqrt of the length of
#: the sums behind an element (summation orders differ: in order in the kernels, pairwise in
#: BLAS, so rounding grows like the square root of the length)
FLOOR = {F32: 1e-5, F64: 1e-12}


def tolerance(ref64: np.ndarray, ref32: np.ndarray | None, dtype: np.dtype, inner: int) -> float:
    """The one rule: a result may differ from the float64 reference by twice the reference
    backend's own float32 error (for float32 results) plus FLOOR[dtype] * sqrt(inner) * scale,
    scale = max(1, max |reference|)."""
    scale = max(1.0, float(np.max(np.abs(ref64)))) if ref64.size else 1.0
    err32 = 0.0
    if ref32 is not None and ref64.size:
        err32 = float(np.max(np.abs(ref32.astype(np.float64) - ref64)))
    return 2 * err32 + FLOOR[np.dtype(dtype)] * math.sqrt(max(inner, 1)) * scale


def assert_close(
    got: np.ndarray,
    ref64: np.ndarray,
    ref32: np.ndarray | None,
    dtype: np.dtype,
    what: str,
    inner: int = 1,
) -> None:
    """Fail, printing the first mismatches and the largest error, unless every element of
    ``got`` is within ``tolerance`` of ``ref64`` (NaN never is)."""
    got = np.asarray(got, dtype=np.float64)
    ref64 = np.asarray(ref64, dtype=np.float64)
    tol = tolerance(ref64, ref32, dtype, inner)
    err = np.abs(got - ref64)
    bad = ~(err <= tol)
    if bad.any():
        where = np.argwhere(bad)[:5]
        lines = [f"  at {tuple(i)}: got {got[tuple(i)]!r}, want {ref64[tuple(i)]!r}" for i in where]
        pytest.fail(
            f"{what}: {int(bad.sum())} of {got.size} mismatches; largest error "
            f"{np.nanmax(np.where(np.isnan(err), np.inf, err))} (tolerance {tol})\n"
            + "\n".join(lines)
        )


def reference(
    op: Callable[..., object],
    dtype: np.dtype,
    args: Sequence[object],
    outputs: Sequence[int],
    keep: Sequence[int] = (),
) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """``op`` (a reference backend method) run on copies of ``args`` in float64, and in float32
    for float32 results (the arrays at ``keep`` copied as they are: float64 stats); returns the
    arguments at ``outputs`` of each run."""

    def run(d: np.dtype) -> list[np.ndarray]:
        conv = [
            a.copy()
            if i in keep
            else a.astype(d)
            if isinstance(a, np.ndarray) and a.dtype.kind == "f"
            else a
            for i, a in enumerate(args)
        ]
        op(*conv)
        return [conv[i] for i in outputs]  # type: ignore[misc]

    res64 = run(F64)
    res32: list[np.ndarray | None] = list(run(F32)) if dtype == F32 else [None] * len(res64)
    return res64, res32


def random(rng: np.random.Generator, shape: tuple[int, ...], dtype: np.dtype, scale: float = 1.0):
    """Standard normal values that ``dtype`` holds exactly, as float64 (what the reference
    sees is then exactly what the backend sees)."""
    return (scale * rng.standard_normal(shape)).astype(dtype).astype(np.float64)


def targets(rng: np.random.Generator, output: str, m: int, n: int) -> np.ndarray:
    """Targets an output layer is trained on: one-hot rows, 0/1, or real values."""
    if output == "softmax":
        return np.eye(n)[rng.integers(0, n, m)]
    if output == "sigmoid":
        return (rng.random((m, n)) > 0.5).astype(np.float64)
    return rng.standard_normal((m, n))


# ---- memory that catches stray reads and writes ---------------------------------------------

#: outputs sit between GUARD_ELEMENTS-long zones of GUARD, checked after the op
GUARD_ELEMENTS = 64
GUARD = 12345.0
_PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)


def fenced(values: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``values`` ending right at an inaccessible page, so a read past
    its end crashes the test instead of passing silently; the bytes before it are NaN."""
    nbytes = values.nbytes
    pages = -(-nbytes // _PAGE) + 1
    mem = mmap.mmap(-1, pages * _PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    if _libc.mprotect(ctypes.c_void_p(base + (pages - 1) * _PAGE), _PAGE, 0) != 0:
        raise OSError(ctypes.get_errno(), "mprotect failed")
    start = (pages - 1) * _PAGE - nbytes
    mem[:start] = b"\xff" * start  # all-ones bytes are NaN in float32 and float64
    view = np.frombuffer(mem, dtype=values.dtype, count=values.size, offset=start)
    view = view.reshape(values.shape)
    view[...] = values
    return view


def guarded(values: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``values`` between two zones of GUARD."""
    buf = np.full(values.size + 2 * GUARD_ELEMENTS, GUARD, dtype=values.dtype)
    view = buf[GUARD_ELEMENTS : GUARD_ELEMENTS + values.size].reshape(values.shape)
    view[...] = values
    return view


def guards_intact(a: np.ndarray) -> bool:
    buf = a.base
    assert buf is not None and buf.size == a.size + 2 * GUARD_ELEMENTS
    return bool((np.concatenate([buf[:GUARD_ELEMENTS], buf[-GUARD_ELEMENTS:]]) == GUARD).all())


class Memory:
    """Arrays of a backend for one test; ``memory(values, dtype)`` is ``input``. On host-memory
    backends inputs are fenced and outputs
    guarded (``check`` then says whether anything wrote outside an output); on devices they are
    plain device arrays. Outputs start as NaN, so an element an op fails to write shows."""

    def __init__(self, xp: Backend) -> None:
        self.xp = xp
        self.host = isinstance(xp, HostMemory)
        self._guarded: list[np.ndarray] = []

    def __call__(self, values: np.ndarray, dtype: np.dtype) -> object:
        return self.input(values, dtype)

    def input(self, values: np.ndarray, dtype: np.dtype) -> object:
        values = np.asarray(values, dtype=dtype)
        return fenced(values) if self.host else self.xp.asarray(values, dtype)

    def inout(self, values: np.ndarray, dtype: np.dtype) -> object:
        values = np.asarray(values, dtype=dtype)
        if not self.host:
            return self.xp.asarray(values, dtype)
        view = guarded(values)
        self._guarded.append(view)
        return view

    def output(self, shape: tuple[int, ...], dtype: np.dtype) -> object:
        return self.inout(np.full(shape, np.nan), dtype)

    def check(self) -> None:
        assert all(guards_intact(a) for a in self._guarded), "an op wrote outside its output"
