"""The CUDA C kernels of kernels/ executed on the CPU, against the float64 NumPy reference.

The same .cu sources are compiled as C++ with kernels/cpu/cuda_cpu.h standing in for the CUDA
built-ins (the threads of a block run as fibers, __syncthreads is a barrier between them), and
driven by the CuPy backend's own launch code (``KernelOps``) on NumPy arrays. This checks the
kernels' arithmetic, indexing, tails and launch geometry without a GPU; it says nothing about
their speed or about races between real threads.
"""

from __future__ import annotations

import ctypes
import itertools
import mmap
import os
import shutil
import subprocess

import numpy as np
import pytest

from bpgpu.backends import cuda_source as cs
from bpgpu.backends.base import Network
from bpgpu.backends.cupy_backend import KernelOps
from bpgpu.backends.numpy_backend import NumpyBackend
from bpgpu.functions import ACTIVATIONS, COMBINATIONS, OUTPUTS
from bpgpu.optimizers import SGD, Adam, RMSprop

DTYPES = (np.float32, np.float64)
#: (m, k, n): batch, inputs, outputs; odd on purpose, crossing the 64-wide tiles and 16-deep steps
GEMM_SHAPES = [(1, 1, 1), (3, 33, 67), (67, 3, 33), (33, 67, 1), (130, 17, 65)]
OPTIMIZERS = {
    "sgd": SGD(lr=0.1),
    "sgd-decay": SGD(lr=0.1, weight_decay=0.01),
    "momentum": SGD(lr=0.1, momentum=0.9),
    "nesterov": SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.001),
    "rmsprop": RMSprop(lr=0.01),
    "adam": Adam(lr=0.01, weight_decay=0.01),
}


@pytest.fixture(scope="session")
def cpu_lib(tmp_path_factory) -> ctypes.CDLL:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")
    if not cxx:
        pytest.skip(
            "no C++ compiler (g++ or clang++) to build the CPU emulation of the CUDA kernels"
        )
    main = cs.kernel_dir() / "cpu" / "cpu_kernels.cpp"
    if not main.is_file():
        pytest.skip(
            f"{main} is missing: the CPU emulation is in a source checkout, not an installed package"
        )
    lib = tmp_path_factory.mktemp("cpu-kernels") / f"libbpgpu_cpu_{cs.sources_hash()[:16]}.so"
    cmd = [cxx, "-O1", "-std=c++17", "-shared", "-fPIC", *cs.defines(), str(main), "-o", str(lib)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        pytest.fail(f"building the CPU emulation failed:\n{' '.join(cmd)}\n{done.stderr[-4000:]}")
    dll = ctypes.CDLL(str(lib))
    dll.bpgpu_cpu_launch.restype = ctypes.c_int
    return dll


class CpuKernels(KernelOps):
    """KernelOps on NumPy arrays, launching the C++-compiled kernels."""

    name = "cpu-emulated"

    def __init__(self, lib: ctypes.CDLL, target_blocks: int = 1) -> None:
        super().__init__()
        self._lib = lib
        self._blocks = target_blocks
        self.launched: list[str] = []

    def asarray(self, host, dtype):
        return np.array(host, dtype=dtype, order="C", copy=True)

    def to_host(self, array):
        return np.array(array, copy=True)

    def empty(self, shape, dtype):
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape, dtype):
        return np.zeros(shape, dtype=dtype)

    def copy_into(self, dst, src):
        np.copyto(dst, src)

    def is_array(self, obj):
        return isinstance(obj, np.ndarray)

    def _target_blocks(self) -> int:
        return self._blocks

    def _launch(self, name, geometry, args, shapes):
        grid, block = geometry
        values = []
        for a in args:
            if isinstance(a, np.ndarray):
                values.append(ctypes.c_void_p(a.ctypes.data))
            elif isinstance(a, np.int32):
                values.append(ctypes.c_int(int(a)))
            elif isinstance(a, np.float64):
                values.append(ctypes.c_double(float(a)))
            else:
                raise TypeError(f"kernel {name}: argument of type {type(a).__name__}")
        argv = (ctypes.c_void_p * len(values))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values]
        )
        rc = self._lib.bpgpu_cpu_launch(
            name.encode(), (ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), argv
        )
        if rc != 0:
            raise RuntimeError(f"kernel {name} is not in the CPU build ({shapes})")
        self.launched.append(name)


REF = NumpyBackend()


#: Inputs end where an inaccessible page begins, so a read past their end crashes the test
#: (electric-fence style) instead of passing silently; the bytes before them are NaN. Outputs
#: sit between GUARD_ELEMENTS-long zones of GUARD, which check_guards verifies after the run.
GUARD_ELEMENTS = 64
GUARD = 12345.0
_PAGE = mmap.PAGESIZE
_libc = ctypes.CDLL(None, use_errno=True)


def fenced_input(values: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``values`` ending right at a PROT_NONE page."""
    nbytes = values.nbytes
    pages = -(-nbytes // _PAGE) + 1
    mem = mmap.mmap(-1, pages * _PAGE)
    base = ctypes.addressof(ctypes.c_char.from_buffer(mem))
    if _libc.mprotect(ctypes.c_void_p(base + (pages - 1) * _PAGE), _PAGE, 0) != 0:
        raise OSError(ctypes.get_errno(), "mprotect failed")
    start = (pages - 1) * _PAGE - nbytes
    mem[:start] = b"\xff" * start  # all-ones bytes are NaN in float32 and float64
    view = np.frombuffer(mem, dtype=values.dtype, count=values.size, offset=start).reshape(
        values.shape
    )
    view[...] = values
    return view


def fenced_output(values: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of ``values`` between two zones of GUARD."""
    buf = np.full(values.size + 2 * GUARD_ELEMENTS, GUARD, dtype=values.dtype)
    view = buf[GUARD_ELEMENTS : GUARD_ELEMENTS + values.size].reshape(values.shape)
    view[...] = values
    return view


def check_guards(*arrays: np.ndarray) -> None:
    for a in arrays:
        buf = a.base
        assert buf is not None and buf.size == a.size + 2 * GUARD_ELEMENTS
        edges = np.concatenate([buf[:GUARD_ELEMENTS], buf[-GUARD_ELEMENTS:]])
        assert (edges == GUARD).all(), "a kernel wrote outside its output array"


def rand(rng, *shape, dtype=np.float64):
    return fenced_input(rng.standard_normal(shape).astype(dtype))


def poisoned(shape, dtype):
    return fenced_output(np.full(shape, np.nan, dtype=dtype))


def assert_close(got, ref64, ref32=None, what="", floor=1e-6):
    """float64 kernels: agree to ~1e-12 relative. float32: error at most twice the NumPy float32
    backend's error against float64 (``ref32``), plus ``floor`` times the reference's scale."""
    got = np.asarray(got, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(ref64)))) if ref64.size else 1.0
    if ref32 is None:
        tol = 1e-12 * scale
    else:
        tol = 2 * float(np.max(np.abs(ref32.astype(np.float64) - ref64))) + floor * scale
    err = np.abs(got - ref64)
    bad = ~(err <= tol)  # NaN counts as bad
    if bad.any():
        where = np.argwhere(bad)[:5]
        lines = [f"  at {tuple(i)}: got {got[tuple(i)]!r}, want {ref64[tuple(i)]!r}" for i in where]
        pytest.fail(
            f"{what}: {int(bad.sum())} of {got.size} mismatches; largest error {np.nanmax(err)} "
            f"(tolerance {tol})\n" + "\n".join(lines)
        )


def reference(op, dtype, *args, outputs):
    """Run the NumPy op in float64 and (for float32 kernels) in float32; returns the outputs."""
    res64 = _run(op, np.float64, args, outputs)
    res32 = _run(op, np.float32, args, outputs) if dtype == np.float32 else [None] * len(res64)
    return res64, res32


def _run(op, dtype, args, outputs):
    conv = [
        a.astype(dtype) if isinstance(a, np.ndarray) and a.dtype.kind == "f" and a.ndim else a
        for a in args
    ]
    op(*conv)
    return [conv[i] for i in outputs]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", GEMM_SHAPES)
def test_dense_forward(cpu_lib, shape, activation, dtype):
    m, k, n = shape
    rng = np.random.default_rng([m, k, n, 1])
    X, W, b = rand(rng, m, k, dtype=dtype), rand(rng, k, n, dtype=dtype), rand(rng, n, dtype=dtype)
    out = poisoned((m, n), dtype)
    CpuKernels(cpu_lib).dense_forward(X, W, b, activation, out)
    check_guards(out)
    (r64,), (r32,) = reference(
        REF.dense_forward, dtype, X, W, b, activation, np.zeros((m, n)), outputs=[4]
    )
    assert_close(out, r64, r32, f"dense_forward {activation} {shape}")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", GEMM_SHAPES)
def test_delta_backward(cpu_lib, shape, activation, dtype):
    m, k, n = shape
    rng = np.random.default_rng([m, k, n, 2])
    D, W = rand(rng, m, n, dtype=dtype), rand(rng, k, n, dtype=dtype)
    A = fenced_input(rng.uniform(-0.9, 0.9, (m, k)).astype(dtype))  # valid for every activation
    A[A < -0.3] = 0  # relu's zeros
    out = poisoned((m, k), dtype)
    CpuKernels(cpu_lib).delta_backward(D, W, A, activation, out)
    check_guards(out)
    (r64,), (r32,) = reference(
        REF.delta_backward, dtype, D, W, A, activation, np.zeros((m, k)), outputs=[4]
    )
    assert_close(out, r64, r32, f"delta_backward {activation} {shape}")


ROW_SHAPES = [(1, 1), (3, 7), (33, 10), (129, 3), (5, 67)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_output_forward(cpu_lib, shape, output, dtype):
    rng = np.random.default_rng([*shape, 3])
    Z = fenced_input(3 * rng.standard_normal(shape).astype(dtype))
    out = poisoned(shape, dtype)
    CpuKernels(cpu_lib).output_forward(Z, output, out)
    check_guards(out)
    (r64,), (r32,) = reference(REF.output_forward, dtype, Z, output, np.zeros(shape), outputs=[2])
    assert_close(out, r64, r32, f"output_forward {output} {shape}")


def targets(rng, output, m, n):
    if output == "softmax":
        return np.eye(n)[rng.integers(0, n, m)]
    if output == "sigmoid":
        return (rng.random((m, n)) > 0.5).astype(np.float64)
    return rng.standard_normal((m, n))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pair", sorted(COMBINATIONS))
@pytest.mark.parametrize("shape", ROW_SHAPES + [(300, 10)])
def test_output_delta(cpu_lib, shape, pair, dtype):
    output, loss = pair
    m, n = shape
    rng = np.random.default_rng([m, n, 4])
    Z = fenced_input(3 * rng.standard_normal((m, n)).astype(dtype))
    Y = fenced_input(targets(rng, output, m, n).astype(dtype))
    A, D = poisoned(shape, dtype), poisoned(shape, dtype)
    stats = np.array([1.5, 2.0])  # the op adds to it
    CpuKernels(cpu_lib).output_delta(Z, Y, output, loss, A, D, stats)
    check_guards(A, D)
    s64, s32 = np.array([1.5, 2.0]), np.array([1.5, 2.0])
    (a64, d64), (a32, d32) = reference(
        lambda *a: REF.output_delta(*a, s64 if a[0].dtype == np.float64 else s32),
        dtype,
        Z,
        Y,
        output,
        loss,
        np.zeros(shape),
        np.zeros(shape),
        outputs=[4, 5],
    )
    assert_close(A, a64, a32, f"output_delta A {pair} {shape}")
    assert_close(D, d64, d32, f"output_delta D {pair} {shape}")
    ref_loss32 = None if dtype == np.float64 else s32[:1]
    assert_close(stats[:1], s64[:1], ref_loss32, f"output_delta loss {pair} {shape}", floor=1e-5)
    # the count of right answers may differ only where float32 rounding flips a tie or a 1/2
    assert abs(stats[1] - s64[1]) <= (
        0 if dtype == np.float64 else max(1, abs(s32[1] - s64[1]) * 2)
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
def test_weight_gradient(cpu_lib, split, dtype):
    m, k, n = (1100, 3, 5) if split else (67, 70, 33)
    rng = np.random.default_rng([m, k, n, 5])
    A, D = rand(rng, m, k, dtype=dtype), rand(rng, m, n, dtype=dtype)
    gW, gb = poisoned((k, n), dtype), poisoned((n,), dtype)
    ops = CpuKernels(cpu_lib, target_blocks=64 if split else 1)
    ops.weight_gradient(A, D, gW, gb)
    check_guards(gW, gb)
    assert any(name.startswith("weight_partial") for name in ops.launched) == split
    (w64, b64), (w32, b32) = reference(
        REF.weight_gradient, dtype, A, D, np.zeros((k, n)), np.zeros(n), outputs=[2, 3]
    )
    assert_close(gW, w64, w32, "dW")
    assert_close(gb, b64, b32, "db")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("split", [False, True], ids=["fused", "split"])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_weight_update(cpu_lib, opt, split, dtype):
    """Three optimizer steps in place, W, b and every slot compared after each."""
    optimizer = OPTIMIZERS[opt]
    m, k, n = (1100, 3, 5) if split else (67, 70, 33)
    rng = np.random.default_rng([m, k, n, 6])
    W0, b0 = rand(rng, k, n), rand(rng, n)
    ops = CpuKernels(cpu_lib, target_blocks=64 if split else 1)
    W, b = fenced_output(W0.astype(dtype)), fenced_output(b0.astype(dtype))
    state = ops.optimizer_state(optimizer, W, b)
    refs = {}
    for ref_dtype in {np.float64, dtype}:
        Wr, br = W0.astype(ref_dtype), b0.astype(ref_dtype)
        refs[ref_dtype] = (Wr, br, REF.optimizer_state(optimizer, Wr, br))
    # the kernels sum the batch's products in order (BLAS pairs them): float32 slack of
    # about m * eps relative to the gradient's scale, squared in Adam's and RMSprop's slots
    floor = 2e-4
    for step in range(3):
        A, D = rand(rng, m, k), rand(rng, m, n)
        ops.weight_update(fenced_input(A.astype(dtype)), fenced_input(D.astype(dtype)), W, b, state)
        for ref_dtype, (Wr, br, sr) in refs.items():
            REF.weight_update(A.astype(ref_dtype), D.astype(ref_dtype), Wr, br, sr)
        r64 = refs[np.float64]
        r32 = refs[dtype] if dtype == np.float32 else None
        tag = f"{opt} step {step + 1}"
        assert_close(W, r64[0], None if r32 is None else r32[0], f"W {tag}", floor)
        assert_close(b, r64[1], None if r32 is None else r32[1], f"b {tag}", floor)
        for slot in optimizer.slots:
            assert_close(
                state.W[slot],
                r64[2].W[slot],
                None if r32 is None else r32[2].W[slot],
                f"{slot} {tag}",
                floor,
            )
            assert_close(
                state.b[slot],
                r64[2].b[slot],
                None if r32 is None else r32[2].b[slot],
                f"{slot} {tag}",
                floor,
            )
    check_guards(W, b)
    assert state.t == 3 and int(state.scratch["step"][0]) == (3 if optimizer.kind == "adam" else 0)
    assert any(name.startswith("weight_partial") for name in ops.launched) == split


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_rows(cpu_lib, dtype):
    rng = np.random.default_rng(7)
    src = rand(rng, 130, 33, dtype=dtype)
    index = rng.integers(0, 130, 67).astype(np.int64)
    index[5] = 130  # out of range: a NaN row, not a stray read
    out = poisoned((67, 33), dtype)
    CpuKernels(cpu_lib).gather_rows(src, index, out)
    check_guards(out)
    good = np.arange(67) != 5
    np.testing.assert_array_equal(out[good], src[index[good]])
    assert np.isnan(out[5]).all()


class RecordedLaunches(CpuKernels):
    """KernelOps that records each launch's name and grid instead of running it."""

    def _launch(self, name, geometry, args, shapes):
        self.launched.append((name, geometry[0]))


def test_gemm_launch_past_grid_y():
    """A batch of more row tiles than gridDim.y takes (65536 tiles of TILE_M rows) puts them on
    grid.x, for every GEMM launcher; too many column tiles is refused with the limit."""
    ops = RecordedLaunches(lib=None)
    m = (cs.MAX_GRID_Y + 1) * cs.TUNABLES["TILE_M"]
    X, W, b = np.zeros((m, 2), np.float32), np.zeros((2, 3), np.float32), np.zeros(3, np.float32)
    out, D = np.zeros((m, 3), np.float32), np.zeros((m, 2), np.float32)
    ops.dense_forward(X, W, b, "relu", out)
    ops.delta_backward(out, W, X, "relu", D)
    assert ops.launched == [
        ("dense_forward_relu_f32", (cs.MAX_GRID_Y + 1, 1, 1)),
        ("delta_backward_relu_f32", (cs.MAX_GRID_Y + 1, 1, 1)),
    ]
    wide = cs.MAX_GRID_Y * cs.TUNABLES["TILE_N"] + 1
    with pytest.raises(ValueError, match=f"{wide} columns exceed"):
        cs.gemm_geometry(1, wide)


def test_launchers_name_the_bad_argument(cpu_lib):
    ops = CpuKernels(cpu_lib)
    X, W, b = np.zeros((3, 4), np.float32), np.zeros((4, 5), np.float32), np.zeros(5, np.float32)
    with pytest.raises(TypeError, match="W must have dtype float32"):
        ops.dense_forward(X, W.astype(np.float64), b, "relu", np.empty((3, 5), np.float32))
    with pytest.raises(ValueError, match="out must have shape"):
        ops.dense_forward(X, W, b, "relu", np.empty((3, 4), np.float32))
    with pytest.raises(ValueError, match="X must be C-contiguous"):
        ops.dense_forward(
            np.zeros((4, 3), np.float32).T, W, b, "relu", np.empty((3, 5), np.float32)
        )
    with pytest.raises(ValueError, match="activation must be one of"):
        ops.dense_forward(X, W, b, "gelu", np.empty((3, 5), np.float32))
    with pytest.raises(ValueError, match=r"W must be 2-D; got shape \(20,\)"):
        ops.dense_forward(X, W.ravel(), b, "relu", np.empty((3, 5), np.float32))
    with pytest.raises(TypeError, match="X must be float32 or float64; got int32"):
        ints = np.zeros((3, 4), np.int32)
        ops.dense_forward(ints, W.astype(np.int32), b.astype(np.int32), "relu", ints[:, :1])
    with pytest.raises(TypeError, match="out_W must be an array of the"):
        ops.weight_gradient(X, np.zeros((3, 5), np.float32), [[0.0]], b)
    with pytest.raises(ValueError, match="index must have shape"):
        ops.gather_rows(X, np.zeros(2, np.int64), np.empty((3, 4), np.float32))
    with pytest.raises(ValueError, match="cannot be trained with"):
        Z = np.zeros((3, 2), np.float32)
        ops.output_delta(Z, Z, "identity", "cross_entropy", Z, Z, np.zeros(2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("classes", [3, 70], ids=["fused-last-layer", "separate-last-layer"])
def test_train_steps_match_numpy(cpu_lib, classes, dtype):
    """KernelOps.train_step (gather, forward, loss, backward with Adam) against the base class's
    step on NumPy, 3 steps; an output of at most TILE_N classes takes the fused last layer."""
    rng = np.random.default_rng(8)
    sizes, acts = [7, 33, 5, classes], ["relu", "tanh"]
    X, y = rng.standard_normal((40, 7)), rng.integers(0, classes, 40)
    Y = np.eye(classes)[y]
    params = [
        (rng.standard_normal((a, b)) * 0.5, rng.standard_normal(b) * 0.1)
        for a, b in itertools.pairwise(sizes)
    ]
    results = []
    kernels = CpuKernels(cpu_lib, target_blocks=1)
    for backend, dt in ((kernels, dtype), (REF, np.float64)):
        net = Network(
            W=[backend.asarray(W, dt) for W, _ in params],
            b=[backend.asarray(b, dt) for _, b in params],
            activations=acts,
            output="softmax",
            loss="cross_entropy",
        )
        states = [backend.optimizer_state(Adam(lr=0.01), W, b) for W, b in zip(net.W, net.b)]
        ws = backend.workspace(sizes, 13, dt)
        stats = backend.zeros((2,), np.float64)
        Xb, Yb = backend.asarray(X, dt), backend.asarray(Y, dt)
        for step in range(3):
            index = backend.asarray(np.arange(step * 13, step * 13 + 13) % 40, np.int64)
            backend.train_step(net, ws, Xb, Yb, index, states, stats)
        results.append(([backend.to_host(W) for W in net.W], backend.to_host(stats)))
    (Wk, sk), (Wr, sr) = results
    tol = 1e-10 if dtype == np.float64 else 1e-4
    for l, (a, r) in enumerate(zip(Wk, Wr)):
        np.testing.assert_allclose(a, r, rtol=tol, atol=tol, err_msg=f"W{l + 1}")
    np.testing.assert_allclose(sk, sr, rtol=tol)
    assert any(name.startswith("dense_output_delta") for name in kernels.launched) == (
        classes <= 64
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pair", sorted(COMBINATIONS))
@pytest.mark.parametrize("shape", [(1, 1, 1), (67, 33, 10), (130, 3, 64)])
def test_dense_output_delta(cpu_lib, shape, pair, dtype):
    """The fused last layer: Z = A W + b, then output_delta, against the two NumPy ops."""
    output, loss = pair
    m, k, n = shape
    rng = np.random.default_rng([m, k, n, 9])
    A, W, b = rand(rng, m, k, dtype=dtype), rand(rng, k, n, dtype=dtype), rand(rng, n, dtype=dtype)
    Y = fenced_input(targets(rng, output, m, n).astype(dtype))
    net = Network(W=[W], b=[b], activations=[], output=output, loss=loss)
    ops = CpuKernels(cpu_lib)
    ws = ops.workspace([k, n], m, dtype)
    ws.Z, ws.P, ws.D[-1] = (poisoned((m, n), dtype) for _ in range(3))
    ws.Y = Y
    stats = np.zeros(2)
    ops._dense_output_delta(A, W, b, net, ws, stats)
    check_guards(ws.Z, ws.P, ws.D[-1])
    refs = {}
    for d in {np.float64, dtype}:
        Z = np.zeros((m, n), d)
        REF.dense_forward(A.astype(d), W.astype(d), b.astype(d), "identity", Z)
        P, D, s = np.zeros((m, n), d), np.zeros((m, n), d), np.zeros(2)
        REF.output_delta(Z, Y.astype(d), output, loss, P, D, s)
        refs[d] = (Z, P, D, s[:1])
    r64, r32 = refs[np.float64], refs[dtype] if dtype == np.float32 else (None,) * 4
    for name, got, i in (
        ("Z", ws.Z, 0),
        ("A", ws.P, 1),
        ("D", ws.D[-1], 2),
        ("loss", stats[:1], 3),
    ):
        assert_close(got, r64[i], r32[i], f"dense_output_delta {name} {pair} {shape}", floor=1e-5)
