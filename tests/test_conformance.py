"""The backend conformance suite: every op of the backend interface, the composed steps and
whole training, on every backend that can run here, against the reference backend in float64.

The backends come from ``bpgpu.backends.REGISTRY`` (all but the reference itself, which is the
oracle), plus the NumPy backend with every op split across 3 threads. A backend that cannot run
here is skipped with its reason; cupy and numba on a GPU carry the ``gpu`` marker. numba's CUDA
simulator must be switched on before numba is first imported, so ``test_numba_simulator`` runs
this file again in a child process with ``NUMBA_ENABLE_CUDASIM=1``, where only the numba case
runs, on tiny shapes (the simulator runs every CUDA thread as a Python thread).

Every test draws fresh seeded inputs (held exactly in the tested dtype), poisons its outputs
with NaN, fences host inputs and guards host outputs (helpers.Memory), and compares with one
tolerance rule (helpers.tolerance).
"""

from __future__ import annotations

import itertools
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

import fake_cupy
import numpy as np
import pytest

import bpgpu
from bpgpu.backends import REGISTRY, get_backend
from bpgpu.backends.base import Array, Backend, BackendUnavailableError, Network
from bpgpu.backends.numpy_backend import NumpyBackend
from bpgpu.functions import ACTIVATIONS, COMBINATIONS, OUTPUTS
from bpgpu.optimizers import SGD, Adam, Optimizer, RMSprop
from bpgpu.schedules import StepDecay, Warmup
from helpers import F32, F64, REF, Memory, assert_close, random, reference, targets

IN_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
DTYPES = [F32, F64]

# ---- the backends ------------------------------------------------------------------------------


@contextmanager
def _threaded() -> Iterator[Backend]:
    """The NumPy backend with every op split across 3 threads, however small."""
    xp = NumpyBackend(threads=3, min_step_elements=0)
    xp.rows.min_op_elements = 0
    with xp.rows.parallel(0):
        yield xp


@dataclass
class Case:
    """A backend under test: ``open()`` gives it for one test; which shapes it takes."""

    id: str
    open: Callable[[], AbstractContextManager[Backend]]
    size: str = "full"  # "full", "tiny" (the numba simulator) or "gpu" (adds larger shapes)
    skip: str | None = None
    marks: list = field(default_factory=list)


#: extra configurations tested beside a registered backend that runs here: the NumPy backend on
#: threads, and the CuPy backend's host code on a stand-in for CuPy running the emulation's
#: kernels (tests/fake_cupy.py: launches, device-memory optimizer numbers, graph capture/replay)
VARIANTS = {
    "numpy": [Case("numpy-3-threads", _threaded)],
    "cuda-emulated": [Case("cupy-on-emulation", fake_cupy.cupy_backend)],
}
#: backends that run on a GPU: larger shapes, the ``gpu`` marker
ON_GPU = {"cupy", "numba"}


def _cases() -> list[Case]:
    cases = []
    for name in REGISTRY:
        if name == "reference":
            continue
        case = Case(name, lambda name=name: nullcontext(get_backend(name)))
        if IN_SIMULATOR and name != "numba":
            case.skip = "the simulator child process runs only the numba backend"
        else:
            try:
                xp = get_backend(name)
            except BackendUnavailableError as exc:
                case.skip = str(exc)
            else:
                if name in ON_GPU:
                    case.size = "tiny" if xp.simulated else "gpu"
                    case.marks = [] if xp.simulated else [pytest.mark.gpu]
        cases.append(case)
        if case.skip is None:
            cases += VARIANTS.get(name, [])
    return cases


CASES = _cases()

#: each size once in each position of (m, k, n), odd on purpose: tails of every tile
_SIZES = (1, 3, 31, 33, 127, 129, 1000)
SHAPES: dict[str, dict[str, list[tuple[int, ...]]]] = {
    "gemm": {
        "full": [(s, _SIZES[(i + 3) % 7], _SIZES[(i + 5) % 7]) for i, s in enumerate(_SIZES)],
        "tiny": [(1, 3, 5), (17, 5, 3), (3, 17, 1)],
        "gpu": [(4097, 33, 129), (256, 784, 512), (256, 512, 10)],
    },
    "rows": {
        "full": [(1, 1), (3, 7), (33, 10), (129, 3), (1000, 31), (5, 127)],
        "tiny": [(1, 3), (17, 5), (5, 1)],
        "gpu": [(4097, 10), (256, 1000)],
    },
    # (m, k, n): 4097 x 3 x 5 is long and narrow enough for the kernels' split-batch path
    "update": {
        "full": [(1, 1, 1), (33, 127, 3), (129, 3, 1000), (1000, 31, 33), (4097, 3, 5)],
        "tiny": [(5, 17, 3)],
        "gpu": [(256, 784, 512), (100000, 3, 10)],
    },
    # (m, k, n) of a last layer: n up to TILE_N takes the kernels' fused last layer
    "last": {
        "full": [(1, 1, 2), (67, 33, 10), (130, 3, 64), (33, 5, 65)],
        "tiny": [(5, 3, 4)],
        "gpu": [(4097, 512, 10)],
    },
}


def _shapes(kind: str, size: str) -> list[tuple[int, ...]]:
    found = SHAPES[kind]["tiny" if size == "tiny" else "full"]
    return found + SHAPES[kind]["gpu"] if size == "gpu" else found


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``case`` over CASES, with the shapes of its size for a test that takes
    ``gemm_shape``, ``rows_shape``, ``update_shape`` or ``last_shape``."""
    if "case" not in metafunc.fixturenames:
        return
    kind = next((k for k in SHAPES if f"{k}_shape" in metafunc.fixturenames), None)
    params = []
    for case in CASES:
        marks = [*case.marks, *([pytest.mark.skip(reason=case.skip)] if case.skip else [])]
        if kind is None:
            params.append(pytest.param(case, marks=marks, id=case.id))
            continue
        shapes = _shapes(kind, case.size)[: 1 if case.skip else None]
        for shape in shapes:
            shape_id = "x".join(map(str, shape))
            params.append(pytest.param(case, shape, marks=marks, id=f"{case.id}-{shape_id}"))
    metafunc.parametrize("case" if kind is None else f"case,{kind}_shape", params)


@pytest.fixture
def xp(case: Case) -> Iterator[Backend]:
    with case.open() as backend:
        yield backend


@pytest.fixture
def mem(xp: Backend) -> Iterator[Memory]:
    memory = Memory(xp)
    yield memory
    memory.check()


# ---- the ops -------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_dense_forward(xp, mem, rng, gemm_shape, activation, dtype):
    m, k, n = gemm_shape
    X, W, b = (
        random(rng, (m, k), dtype),
        random(rng, (k, n), dtype, 1 / math.sqrt(k)),
        random(rng, (n,), dtype),
    )
    out = mem.output((m, n), dtype)
    got = xp.dense_forward(
        mem.input(X, dtype), mem.input(W, dtype), mem.input(b, dtype), activation, out
    )
    assert got is out
    (r64,), (r32,) = reference(
        REF.dense_forward, dtype, [X, W, b, activation, np.zeros((m, n))], [4]
    )
    assert_close(xp.to_host(out), r64, r32, dtype, f"dense_forward {activation} {gemm_shape}", k)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_delta_backward(xp, mem, rng, gemm_shape, activation, dtype):
    m, k, n = gemm_shape
    D, W = random(rng, (m, n), dtype), random(rng, (k, n), dtype, 1 / math.sqrt(n))
    # A_prev as the activation leaves it (relu's zeros, sigmoid's (0, 1), ...)
    A = ACTIVATIONS[activation].f(random(rng, (m, k), dtype)).astype(dtype).astype(np.float64)
    out = mem.output((m, k), dtype)
    xp.delta_backward(
        mem.input(D, dtype), mem.input(W, dtype), mem.input(A, dtype), activation, out
    )
    (r64,), (r32,) = reference(
        REF.delta_backward, dtype, [D, W, A, activation, np.zeros((m, k))], [4]
    )
    assert_close(xp.to_host(out), r64, r32, dtype, f"delta_backward {activation} {gemm_shape}", n)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("output", OUTPUTS)
def test_output_forward(xp, mem, rng, rows_shape, output, dtype):
    Z = random(rng, rows_shape, dtype, 3.0)
    out = mem.output(rows_shape, dtype)
    xp.output_forward(mem.input(Z, dtype), output, out)
    (r64,), (r32,) = reference(REF.output_forward, dtype, [Z, output, np.zeros(rows_shape)], [2])
    assert_close(
        xp.to_host(out), r64, r32, dtype, f"output_forward {output} {rows_shape}", rows_shape[1]
    )


def check_stats(
    got: np.ndarray, r64: np.ndarray, r32: np.ndarray | None, dtype, what: str, inner: int
) -> None:
    """The loss sum as any result; the count of right answers exactly in float64, and in
    float32 off by no more than twice the reference's own float32 flips (a tie or a 1/2
    rounded the other way), at least one."""
    assert_close(got[:1], r64[:1], None if r32 is None else r32[:1], dtype, f"{what} loss", inner)
    flips = 0 if r32 is None else max(1, 2 * abs(r32[1] - r64[1]))
    assert abs(got[1] - r64[1]) <= flips, f"{what}: {got[1]} right, want {r64[1]}"


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pair", sorted(COMBINATIONS), ids="+".join)
def test_output_delta(xp, mem, rng, rows_shape, pair, dtype):
    output, loss = pair
    m, n = rows_shape
    Z, Y = random(rng, rows_shape, dtype, 3.0), targets(rng, output, m, n)
    A, D = mem.output(rows_shape, dtype), mem.output(rows_shape, dtype)
    stats = xp.asarray(np.array([1.5, 2.0]), F64)  # the op adds to it
    xp.output_delta(mem.input(Z, dtype), mem.input(Y, dtype), output, loss, A, D, stats)
    args = [Z, Y, output, loss, np.zeros(rows_shape), np.zeros(rows_shape), np.array([1.5, 2.0])]
    refs = reference(REF.output_delta, dtype, args, [4, 5, 6], keep=[6])
    what = f"output_delta {output}+{loss} {rows_shape}"
    (a64, d64, s64), (a32, d32, s32) = refs
    assert_close(xp.to_host(A), a64, a32, dtype, f"{what} A", n)
    assert_close(xp.to_host(D), d64, d32, dtype, f"{what} D", n)
    check_stats(xp.to_host(stats), s64, s32, dtype, what, m * n)


def _evaluate(
    be: Backend, dtype: np.dtype, host: dict, index: np.ndarray, pair: tuple[str, str], place
) -> dict[str, np.ndarray]:
    """evaluate_step of a [7, k, n] tanh network on backend ``be``; its buffers and stats.
    ``place(values, dtype)`` puts an array on the backend; with ``mem`` the buffers start
    poisoned."""
    W1, W2 = place(host["W1"], dtype), place(host["W2"], dtype)
    net = Network([W1, W2], [place(host["b1"], dtype), place(host["b2"], dtype)], ["tanh"], *pair)
    (m,), (k, n) = index.shape, host["W2"].shape
    ws = be.workspace([7, k, n], m, dtype)
    if isinstance(place, Memory):  # poisoned: what the step does not write shows
        ws.A, ws.D = (
            [place.output((m, k), dtype)],
            [place.output((m, k), dtype), place.output((m, n), dtype)],
        )
        ws.Z, ws.P = place.output((m, n), dtype), place.output((m, n), dtype)
    stats = be.asarray(np.array([1.5, 2.0]), F64)
    X, Y = place(host["X"], dtype), place(host["Y"], dtype)
    be.evaluate_step(net, ws, X, Y, be.asarray(index, np.dtype(np.int64)), stats)
    return {
        "Z": be.to_host(ws.Z),
        "P": be.to_host(ws.P),
        "D": be.to_host(ws.D[-1]),
        "stats": be.to_host(stats),
    }


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("pair", sorted(COMBINATIONS), ids="+".join)
def test_evaluate_step(xp, mem, rng, last_shape, pair, dtype):
    """A hidden layer, then the last layer with its loss (which the kernels fuse into one
    kernel for up to TILE_N outputs), on gathered rows: every buffer against the reference."""
    m, k, n = last_shape
    host = {
        "X": random(rng, (m + 3, 7), dtype),
        "Y": targets(rng, pair[0], m + 3, n),
        "W1": random(rng, (7, k), dtype, 0.5),
        "b1": random(rng, (k,), dtype),
        "W2": random(rng, (k, n), dtype, 1 / math.sqrt(k)),
        "b2": random(rng, (n,), dtype),
    }
    index = rng.permutation(m + 3)[:m].astype(np.int64)
    got = _evaluate(xp, dtype, host, index, pair, mem)
    r64 = _evaluate(REF, F64, host, index, pair, REF.asarray)
    r32 = _evaluate(REF, F32, host, index, pair, REF.asarray) if dtype == F32 else None
    what = f"evaluate_step {'+'.join(pair)} {last_shape}"
    for name in ("Z", "P", "D"):
        assert_close(
            got[name], r64[name], None if r32 is None else r32[name], dtype, f"{what} {name}", k
        )
    check_stats(
        got["stats"], r64["stats"], None if r32 is None else r32["stats"], dtype, what, m * n
    )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_weight_gradient(xp, mem, rng, update_shape, dtype):
    m, k, n = update_shape
    A, D = random(rng, (m, k), dtype), random(rng, (m, n), dtype, 1 / math.sqrt(m))
    gW, gb = mem.output((k, n), dtype), mem.output((n,), dtype)
    xp.weight_gradient(mem.input(A, dtype), mem.input(D, dtype), gW, gb)
    (w64, b64), (w32, b32) = reference(
        REF.weight_gradient, dtype, [A, D, np.zeros((k, n)), np.zeros(n)], [2, 3]
    )
    assert_close(xp.to_host(gW), w64, w32, dtype, f"dW {update_shape}", m)
    assert_close(xp.to_host(gb), b64, b32, dtype, f"db {update_shape}", m)


OPTIMIZERS: dict[str, Optimizer] = {
    "sgd": SGD(lr=0.1),
    "sgd-decay": SGD(lr=0.1, weight_decay=0.01),
    "momentum": SGD(lr=0.1, momentum=0.9),
    "nesterov": SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.001),
    "rmsprop": RMSprop(lr=0.01, weight_decay=0.01),
    "adam": Adam(lr=0.01, weight_decay=0.01),
}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_weight_update(xp, mem, rng, update_shape, opt, dtype):
    """Three updates in place; W, b and every slot of the state against the reference's."""
    optimizer = OPTIMIZERS[opt]
    m, k, n = update_shape
    W0, b0 = random(rng, (k, n), dtype), random(rng, (n,), dtype)
    W, b = mem.inout(W0, dtype), mem.inout(b0, dtype)
    state = xp.optimizer_state(optimizer, W, b)
    refs = {}
    for d in {F64, dtype}:
        Wr, br = W0.astype(d), b0.astype(d)
        refs[d] = (Wr, br, REF.optimizer_state(optimizer, Wr, br))
    for step in range(1, 4):
        A, D = random(rng, (m, k), dtype), random(rng, (m, n), dtype, 1 / m)
        xp.weight_update(mem.input(A, dtype), mem.input(D, dtype), W, b, state)
        for d, (Wr, br, sr) in refs.items():
            REF.weight_update(A.astype(d), D.astype(d), Wr, br, sr)
        check_update(xp, W, b, state, refs, dtype, f"{opt} {update_shape} update {step}", m)
    assert state.t == 3


def check_update(xp, W, b, state, refs, dtype, what: str, inner: int) -> None:
    """W, b and every optimizer slot of ``state`` against the reference's, ``refs`` holding
    (W, b, state) of the reference in float64 and, for float32, in float32."""
    r64, r32 = refs[F64], refs[dtype] if dtype == F32 else None
    for name, arr, i in (("W", W, 0), ("b", b, 1)):
        want32 = None if r32 is None else r32[i]
        assert_close(xp.to_host(arr), r64[i], want32, dtype, f"{name} {what}", inner)
    for slot in state.optimizer.slots:
        for part in ("W", "b"):
            want32 = None if r32 is None else getattr(r32[2], part)[slot]
            got = xp.to_host(getattr(state, part)[slot])
            want = getattr(r64[2], part)[slot]
            assert_close(got, want, want32, dtype, f"{slot} of {part} {what}", inner)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("opt", OPTIMIZERS)
def test_optimizer_step(xp, mem, rng, update_shape, opt, dtype):
    """Three steps from given gradients (the all-reduced step of data-parallel training): W, b
    and every slot against the reference's weight_update on the same gradients; the gradients
    are left as they were."""
    optimizer = OPTIMIZERS[opt]
    m, k, n = update_shape
    W0, b0 = random(rng, (k, n), dtype), random(rng, (n,), dtype)
    W, b = mem.inout(W0, dtype), mem.inout(b0, dtype)
    state = xp.optimizer_state(optimizer, W, b)
    refs = {}
    for d in {F64, dtype}:
        Wr, br = W0.astype(d), b0.astype(d)
        refs[d] = (Wr, br, REF.optimizer_state(optimizer, Wr, br))
    for step in range(1, 4):
        A, D = random(rng, (m, k), dtype), random(rng, (m, n), dtype, 1 / m)
        # the gradients held exactly in the tested dtype, so every backend steps from the same
        dW, db = (g.astype(dtype).astype(np.float64) for g in (A.T @ D, D.sum(axis=0)))
        dWd, dbd = mem.input(dW, dtype), mem.input(db, dtype)
        xp.optimizer_step(W, b, dWd, dbd, state)
        np.testing.assert_array_equal(xp.to_host(dWd), dW.astype(dtype))
        np.testing.assert_array_equal(xp.to_host(dbd), db.astype(dtype))
        for d, (Wr, br, sr) in refs.items():
            REF.optimizer_step(Wr, br, dW.astype(d), db.astype(d), sr)
        what = f"{opt} {update_shape} optimizer_step {step}"
        check_update(xp, W, b, state, refs, dtype, what, m)
    assert state.t == 3


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gradient_then_step_equals_the_fused_update(xp, rng, dtype):
    """weight_gradient then optimizer_step, the data-parallel form of a layer's update, gives
    the fused weight_update's W, b and state on this backend (Adam with decay, a split-batch
    shape for the kernels too), within the tolerance of the two summation orders."""
    optimizer = OPTIMIZERS["adam"]
    m, k, n = (5, 17, 3) if IN_SIMULATOR else (4097, 3, 5)
    W0, b0 = random(rng, (k, n), dtype), random(rng, (n,), dtype)
    pairs = [(xp.asarray(W0, dtype), xp.asarray(b0, dtype)) for _ in range(2)]
    states = [xp.optimizer_state(optimizer, W, b) for W, b in pairs]
    gW, gb = xp.empty((k, n), dtype), xp.empty((n,), dtype)
    for _ in range(3):
        A = xp.asarray(random(rng, (m, k), dtype), dtype)
        D = xp.asarray(random(rng, (m, n), dtype, 1 / m), dtype)
        xp.weight_update(A, D, *pairs[0], states[0])
        xp.weight_gradient(A, D, gW, gb)
        xp.optimizer_step(*pairs[1], gW, gb, states[1])
    for i, name in enumerate(("W", "b")):
        fused, split = xp.to_host(pairs[0][i]), xp.to_host(pairs[1][i])
        assert_close(split, fused.astype(np.float64), None, dtype, f"{name} split vs fused", m)
    for slot in optimizer.slots:
        assert_close(
            xp.to_host(states[1].W[slot]),
            xp.to_host(states[0].W[slot]).astype(np.float64),
            None,
            dtype,
            slot,
            m,
        )


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gather_rows(xp, mem, rng, rows_shape, dtype):
    m, n = rows_shape
    src = random(rng, (m + 5, n), dtype)
    index = rng.integers(0, m + 5, m).astype(np.int64)
    out = mem.output((m, n), dtype)
    xp.gather_rows(mem.input(src, dtype), xp.asarray(index, np.dtype(np.int64)), out)
    np.testing.assert_array_equal(xp.to_host(out), src[index])


@pytest.mark.parametrize("bad", [-1, 6, 10**9], ids=["negative", "past-the-end", "far"])
def test_gather_rows_with_an_index_out_of_range(xp, bad):
    """The GPU kernels write a row of NaN (checking on the host would cost a round trip every
    step); the NumPy backends raise, naming the value, and leave ``out`` as it was."""
    src = xp.asarray(np.arange(12.0).reshape(6, 2), F32)
    out = xp.asarray(np.full((3, 2), 7.0), F32)
    index = xp.asarray(np.array([0, bad, 5]), np.dtype(np.int64))
    if not isinstance(xp, NumpyBackend):  # the kernel backends
        xp.gather_rows(src, index, out)
        np.testing.assert_array_equal(xp.to_host(out), [[0, 1], [np.nan, np.nan], [10, 11]])
    else:
        with pytest.raises(
            IndexError, match=rf"index holds {bad}: expected row numbers in \[0, 6\)"
        ):
            xp.gather_rows(src, index, out)
        np.testing.assert_array_equal(xp.to_host(out), np.full((3, 2), 7.0))


# ---- arguments and memory ------------------------------------------------------------------------


def test_bad_arguments_are_named(xp):
    """Every public op checks its arguments (bpgpu/backends/checks.py) the same way on every
    backend: the message names the argument and what was expected."""
    f32 = F32

    def a(*shape, dtype=f32):
        return xp.zeros(shape, np.dtype(dtype))

    X, W, b = a(3, 4), a(4, 5), a(5)
    with pytest.raises(TypeError, match="W must have dtype float32"):
        xp.dense_forward(X, a(4, 5, dtype=np.float64), b, "relu", a(3, 5))
    with pytest.raises(ValueError, match=r"out must have shape \(3, 5\)"):
        xp.dense_forward(X, W, b, "relu", a(3, 4))
    with pytest.raises(ValueError, match="activation must be one of"):
        xp.dense_forward(X, W, b, "gelu", a(3, 5))
    with pytest.raises(ValueError, match=r"W must be 2-D; got shape \(20,\)"):
        xp.dense_forward(X, a(20), b, "relu", a(3, 5))
    with pytest.raises(TypeError, match="X must be float32 or float64; got int32"):
        ints = xp.zeros((3, 4), np.dtype(np.int32))
        xp.dense_forward(ints, W, b, "relu", a(3, 5))
    with pytest.raises(TypeError, match=f"out_W must be an array of the {xp.name} backend"):
        xp.weight_gradient(X, a(3, 5), [[0.0]], b)
    with pytest.raises(ValueError, match=r"index must have shape \(3,\)"):
        xp.gather_rows(X, xp.zeros((2,), np.dtype(np.int64)), a(3, 4))
    with pytest.raises(ValueError, match="cannot be trained with"):
        Z = a(3, 2)
        xp.output_delta(Z, Z, "identity", "cross_entropy", Z, Z, a(2, dtype=np.float64))
    with pytest.raises(ValueError, match=r"A_prev must have shape \(3, 4\)"):
        xp.delta_backward(a(3, 5), W, a(4, 3), "relu", a(3, 4))
    with pytest.raises(ValueError, match="X is empty"):
        xp.dense_forward(a(0, 4), W, b, "relu", a(0, 5))
    state = xp.optimizer_state(Adam(), W, b)
    with pytest.raises(ValueError, match=r"state was made for W of shape \(4, 5\), not \(4, 3\)"):
        xp.weight_update(X, a(3, 3), a(4, 3), a(3), state)
    with pytest.raises(TypeError, match="optimizer must be an Optimizer"):
        xp.optimizer_state("adam", W, b)
    with pytest.raises(ValueError, match=r"dW must have shape \(4, 5\)"):
        xp.optimizer_step(W, b, a(5, 4), b, state)
    with pytest.raises(TypeError, match="db must have dtype float32"):
        xp.optimizer_step(W, b, W, a(5, dtype=np.float64), state)
    with pytest.raises(TypeError, match="state must come from optimizer_state"):
        xp.optimizer_step(W, b, W, b, "adam")


def test_memory(xp, rng):
    host = rng.standard_normal((3, 5))
    a = xp.asarray(host, F32)
    b = xp.empty((3, 5), F32)
    xp.copy_into(b, a)
    assert xp.is_array(b) and not xp.is_array([1.0])
    np.testing.assert_array_equal(xp.to_host(b), host.astype(np.float32))
    np.testing.assert_array_equal(xp.to_host(xp.zeros((2, 3), F64)), np.zeros((2, 3)))
    back = xp.to_host(a)
    back[0, 0] = 99.0  # a copy
    assert xp.to_host(a)[0, 0] != 99.0


# ---- composed steps and whole training -------------------------------------------------


@dataclass(frozen=True)
class Net:
    """A small network and its data for the training-level tests."""

    sizes: list[int]
    samples: int
    batch: int
    epochs: int


NETS = {"full": Net([33, 129, 31, 10], 300, 127, 3), "tiny": Net([5, 3, 3], 8, 4, 2)}
NETS["gpu"] = NETS["full"]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("classes", [3, 70], ids=["fused-last-layer", "separate-last-layer"])
def test_train_steps(xp, case, rng, classes, dtype):
    """Three train_step calls with Adam: weights and stats against the reference's."""
    if case.size == "tiny" and classes > 3:
        pytest.skip("the simulator runs the small output only (numba has no fused last layer)")
    sizes = [7, 33, 5, classes] if case.size != "tiny" else [5, 3, classes]
    acts = ["relu", "tanh"][: len(sizes) - 2]
    X, Y = random(rng, (40, sizes[0]), dtype), targets(rng, "softmax", 40, classes)
    params = [
        (random(rng, (p, q), dtype, 0.5), random(rng, (q,), dtype, 0.1))
        for p, q in itertools.pairwise(sizes)
    ]
    runs = {}
    for be, d in ((xp, dtype), (REF, F64), (REF, F32)):
        net = Network(
            [be.asarray(W, d) for W, _ in params],
            [be.asarray(b, d) for _, b in params],
            acts,
            "softmax",
            "cross_entropy",
        )
        states = [
            be.optimizer_state(Adam(lr=0.01, weight_decay=0.01), W, b)
            for W, b in zip(net.W, net.b, strict=True)
        ]
        ws, stats = be.workspace(sizes, 13, d), be.zeros((2,), F64)
        Xd, Yd = be.asarray(X, d), be.asarray(Y, d)
        for step in range(3):
            index = be.asarray(np.arange(step * 13, step * 13 + 13) % 40, np.dtype(np.int64))
            be.train_step(net, ws, Xd, Yd, index, states, stats)
        runs[be is xp, d] = ([be.to_host(W) for W in net.W], be.to_host(stats))
    (gotW, got_stats), (W64, s64), (W32, s32) = (
        runs[True, dtype],
        runs[False, F64],
        runs[False, F32],
    )
    f32 = dtype == F32
    for l, (g, r) in enumerate(zip(gotW, W64, strict=True)):
        assert_close(g, r, W32[l] if f32 else None, dtype, f"W{l + 1}", 13)
    check_stats(got_stats, s64, s32 if f32 else None, dtype, "train_step", 39 * classes)


def _train_epochs_by_steps(
    be: Backend, net: Network, X: Array, Y: Array, orders: np.ndarray, batch: int, states
) -> np.ndarray:
    """What ``train_epochs`` must do, as train_step calls: per-epoch (loss sum, correct)."""
    n, sizes = orders.shape[1], [net.W[0].shape[0], *(W.shape[1] for W in net.W)]
    found = []
    for order in orders:
        stats = be.zeros((2,), F64)
        for start in range(0, n, batch):
            rows = order[start : start + batch]
            ws = be.workspace(sizes, len(rows), net.W[0].dtype)
            be.train_step(net, ws, X, Y, be.asarray(rows, np.dtype(np.int64)), states, stats)
        found.append(be.to_host(stats))
    return np.array(found)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "optimizer,pair",
    [
        (SGD(lr=0.1), ("sigmoid", "mse")),
        (SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.01), ("softmax", "mse")),
        (RMSprop(lr=0.01, weight_decay=0.01), ("sigmoid", "cross_entropy")),
        (Adam(lr=Warmup(0.02, steps=4)), ("softmax", "cross_entropy")),
        (Adam(lr=0.01), ("identity", "mse")),
    ],
    ids=["sgd", "nesterov", "rmsprop", "adam-warmup", "adam-identity"],
)
def test_train_epochs(xp, case, rng, optimizer, pair, dtype):
    """Whole epochs in one call, on a backend that compiles them: the weights, each epoch's
    loss and correct count and the update counts are the reference's train_step calls' over
    the same batches (a short last batch in every epoch)."""
    if type(xp).train_epochs is Backend.train_epochs:
        pytest.skip(f"the {xp.name} backend trains step by step")
    output, loss = pair
    sizes, n, batch = [7, 9, 5, 3], 23, 5
    X, Y = random(rng, (n, sizes[0]), dtype), targets(rng, output, n, sizes[-1])
    orders = np.stack([rng.permutation(n) for _ in range(3)])
    params = [
        (random(rng, (p, q), dtype, 0.5), random(rng, (q,), dtype, 0.1))
        for p, q in itertools.pairwise(sizes)
    ]
    runs = {}
    for be, d in ((xp, dtype), (REF, F64), (REF, F32)):
        net = Network(
            [be.asarray(W, d) for W, _ in params],
            [be.asarray(b, d) for _, b in params],
            ["sigmoid", "tanh"],
            output,
            loss,
        )
        states = [be.optimizer_state(optimizer, W, b) for W, b in zip(net.W, net.b, strict=True)]
        Xd, Yd = be.asarray(X, d), be.asarray(Y, d)
        if be is xp:
            ws = xp.workspace(sizes, batch, d)
            for buffer in (ws.X, ws.Y, ws.Z, ws.P, *ws.A, *ws.D):
                buffer[...] = np.nan
            done = xp.train_epochs(net, ws, Xd, Yd, orders, states)
            assert done.done == len(orders)
            stats = done.stats
        else:
            stats = _train_epochs_by_steps(be, net, Xd, Yd, orders, batch, states)
        assert [s.t for s in states] == [3 * 5] * 3
        runs[be is xp, d] = ([be.to_host(a) for a in (*net.W, *net.b)], stats)
    (got, got_stats), (r64, s64), (r32, s32) = runs[True, dtype], runs[False, F64], runs[False, F32]
    f32 = dtype == F32
    for i, (g, r) in enumerate(zip(got, r64, strict=True)):
        assert_close(g, r, r32[i] if f32 else None, dtype, f"parameter {i}", batch)
    for e in range(len(orders)):
        check_stats(got_stats[e], s64[e], s32[e] if f32 else None, dtype, f"epoch {e}", n * 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_data_parallel_steps(xp, case, rng, dtype):
    """The step of data-parallel training on this backend, in a World of one process
    (MPI.COMM_SELF): every layer's gradient into one flat buffer, its all-reduce through the
    backend's communicator (MPI for host arrays, host staging for device arrays here), then
    ``apply_gradients``; three steps against the reference's train_step."""
    MPI = pytest.importorskip("mpi4py.MPI", reason="mpi4py is not installed")
    from bpgpu import distributed
    from bpgpu.distributed.data_parallel import DataParallel

    world = distributed.init(MPI.COMM_SELF, select_device=False, abort_on_error=False)
    sizes = [5, 3, 4] if case.size == "tiny" else [7, 33, 5, 70]
    X, Y = random(rng, (40, sizes[0]), dtype), targets(rng, "softmax", 40, sizes[-1])
    params = [
        (random(rng, (p, q), dtype, 0.5), random(rng, (q,), dtype, 0.1))
        for p, q in itertools.pairwise(sizes)
    ]
    acts = ["relu", "tanh"][: len(sizes) - 2]
    runs = {}
    for be, d in ((xp, dtype), (REF, F64), (REF, F32)):
        net = Network(
            [be.asarray(W, d) for W, _ in params],
            [be.asarray(b, d) for _, b in params],
            acts,
            "softmax",
            "cross_entropy",
        )
        states = [
            be.optimizer_state(RMSprop(lr=0.01, weight_decay=0.01), W, b)
            for W, b in zip(net.W, net.b, strict=True)
        ]
        stats, Xd, Yd = be.zeros((2,), F64), be.asarray(X, d), be.asarray(Y, d)
        index = be.asarray(np.arange(40)[::-1].copy(), np.dtype(np.int64))
        parallel = DataParallel(world, be, net, d) if be is xp else None
        for start, stop in ((0, 13), (13, 26), (26, 40)):
            if parallel is not None:
                workspace = lambda rows, be=be, d=d: be.workspace(sizes, rows, d)  # noqa: E731
                parallel.step(net, workspace, Xd, Yd, index, start, stop, states, stats, False)
            else:
                ws = be.workspace(sizes, stop - start, d)
                be.train_step(net, ws, Xd, Yd, index[start:stop], states, stats)
        runs[be is xp, d] = ([be.to_host(W) for W in net.W], be.to_host(stats))
    (gotW, got_stats), (W64, s64) = runs[True, dtype], runs[False, F64]
    W32, s32 = runs[False, F32]
    f32 = dtype == F32
    for l, (g, r) in enumerate(zip(gotW, W64, strict=True)):
        assert_close(g, r, W32[l] if f32 else None, dtype, f"W{l + 1}", 14)
    check_stats(got_stats, s64, s32 if f32 else None, dtype, "data-parallel step", 40 * sizes[-1])


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scale(xp, rng, dtype):
    """The in-place scaling of a flat buffer (uneven shards of data-parallel training)."""
    host = random(rng, (1000,) if xp.name != "numba" else (37,), dtype)
    a = xp.asarray(host, dtype)
    xp._scale(a, 33 / 32)
    np.testing.assert_array_equal(xp.to_host(a), (host.astype(dtype) * dtype.type(33 / 32)))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "optimizer",
    [
        Adam(lr=1e-2),
        RMSprop(lr=1e-3),
        SGD(lr=0.1, momentum=0.9, nesterov=True),
        SGD(lr=Warmup(StepDecay(0.1, step_size=3, gamma=0.5), steps=2), momentum=0.9),
    ],
    ids=["adam", "rmsprop", "sgd", "sgd-scheduled"],
)
def test_fit_matches_the_reference(xp, case, rng, optimizer, dtype):
    """bpgpu.MLP on this backend and on the reference from the same seed: the loss curve, the
    final weights and the predictions agree (a learning-rate schedule too: every update's rate
    reaches the kernels without recompiling or recapturing)."""
    if case.size == "tiny" and optimizer.kind != "adam":
        pytest.skip("the simulator fits with Adam only (test_weight_update covers every rule)")
    net_spec = NETS[case.size]
    sizes, n = net_spec.sizes, net_spec.samples
    X, y = random(rng, (n, sizes[0]), dtype), rng.integers(0, sizes[-1], n)
    runs = {}
    for be, d in ((xp, dtype), (REF, F64), (REF, F32)):
        net = bpgpu.MLP(
            sizes, activation=["relu", "tanh"][: len(sizes) - 2], backend=be, dtype=d.name, seed=0
        )
        hist = net.fit(
            X, y, epochs=net_spec.epochs, batch_size=net_spec.batch, optimizer=optimizer, seed=1
        )
        weights = [w for pair in net.get_weights() for w in pair]
        runs[be is xp, d] = (np.array(hist["loss"]), weights, net.predict_proba(X))
    got, r64, r32 = runs[True, dtype], runs[False, F64], runs[False, F32]
    f32 = dtype == F32
    assert_close(got[0], r64[0], r32[0] if f32 else None, dtype, "loss curve", net_spec.batch)
    for i, (g, r) in enumerate(zip(got[1], r64[1], strict=True)):
        assert_close(g, r, r32[1][i] if f32 else None, dtype, f"parameter {i}", net_spec.batch)
    assert_close(got[2], r64[2], r32[2] if f32 else None, dtype, "predict_proba", sizes[1])


@pytest.mark.parametrize("pair", sorted(COMBINATIONS), ids="+".join)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradients_match_the_reference(xp, case, rng, activation, pair):
    """MLP.loss and MLP.gradients in float64 (the backward pass writing gradients, no update)."""
    output, loss = pair
    tiny = case.size == "tiny"
    if tiny and list(ACTIVATIONS).index(activation) != sorted(COMBINATIONS).index(pair) % 4:
        pytest.skip("the simulator runs each activation with one or two (output, loss) pairs")
    k = 3 if output == "softmax" else 2
    sizes, m = ([5, 4, k], 9) if tiny else ([33, 129, 7, k], 131)
    X, y = rng.normal(size=(m, sizes[0])), targets(rng, output, m, k)
    weights = [
        (rng.normal(size=(p, q)) / math.sqrt(p), rng.normal(size=q))
        for p, q in itertools.pairwise(sizes)
    ]
    found = []
    for be in (xp, REF):
        net = bpgpu.MLP(sizes, activation, output, loss, backend=be, dtype="float64")
        net.set_weights(weights)
        found.append((net.loss(X, y), net.gradients(X, y)))
    (loss_got, grads_got), (loss_want, grads_want) = found
    assert_close(np.array([loss_got]), np.array([loss_want]), None, F64, "loss", m)
    for l, ((gW, gb), (wW, wb)) in enumerate(zip(grads_got, grads_want, strict=True), start=1):
        assert_close(gW, wW, None, F64, f"dW_{l}", m)
        assert_close(gb, wb, None, F64, f"db_{l}", m)


# ---- the numba simulator -------------------------------------------------------------------------


@pytest.mark.skipif(IN_SIMULATOR, reason="this is the simulator child")
def test_numba_simulator() -> None:
    """This file and tests/test_numba_backend.py again in a child process on numba's CUDA
    simulator, where the numba case runs (tiny shapes)."""
    pytest.importorskip("numba.cuda", reason="numba-cuda is not installed")
    here = Path(__file__).parent
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(Path(__file__)),
            str(here / "test_numba_backend.py"),
            "-q",
            "-m",
            "not gpu",
            "-p",
            "no:cacheprovider",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
        cwd=here.parent,
    )
    seconds = time.perf_counter() - start
    summary = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else ""
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    assert " passed" in summary, done.stdout[-2000:]
    print(f"numba simulator: {seconds:.1f} s: {summary}")
