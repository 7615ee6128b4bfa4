"""The CuPy backend's kernels on a GPU against the float64 NumPy reference (marked ``gpu``).

Every op on fresh seeded inputs with outputs poisoned (NaN) beforehand, over the sizes 1, 3, 31,
33, 127, 129, 1000, 4097 in every position and the training shapes; then a short fit against the
NumPy backend from the same seed, which also runs the CUDA-graph training step.

Tolerance (style.md): float64 kernels agree to ~1e-12 relative; a float32 kernel's error against
float64 is at most twice the NumPy float32 backend's error plus a floor. The floor grows with
the summation length: the kernels add a dot product's terms in order, BLAS in pairs.
"""

from __future__ import annotations

import numpy as np
import pytest

import bpgpu
from bpgpu.backends import get_backend
from bpgpu.backends.base import BackendUnavailableError, Network
from bpgpu.backends.numpy_backend import NumpyBackend
from bpgpu.functions import ACTIVATIONS, COMBINATIONS, OUTPUTS
from bpgpu.optimizers import SGD, Adam, RMSprop

pytestmark = pytest.mark.gpu

SIZES = (1, 3, 31, 33, 127, 129, 1000, 4097)
#: (m, k, n): each size once in each position, and the 784-512-10 training shapes
GEMM_SHAPES = [(s, SIZES[(i + 3) % 8], SIZES[(i + 5) % 8]) for i, s in enumerate(SIZES)]
GEMM_SHAPES += [(256, 784, 512), (256, 512, 10)]
ROW_SHAPES = [(s, SIZES[(i + 2) % 8]) for i, s in enumerate(SIZES)] + [(256, 10)]
DTYPES = (np.float32, np.float64)
OPTIMIZERS = {
    "sgd": SGD(lr=0.1, weight_decay=0.01),
    "momentum": SGD(lr=0.1, momentum=0.9),
    "nesterov": SGD(lr=0.1, momentum=0.9, nesterov=True),
    "rmsprop": RMSprop(lr=0.01),
    "adam": Adam(lr=0.01, weight_decay=0.01),
}
REF = NumpyBackend()


@pytest.fixture(scope="module")
def gpu():
    try:
        return get_backend("cupy")
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))


def rand(rng, *shape):
    return rng.standard_normal(shape)


def assert_close(got, ref64, ref32, what, inner=1):
    got = np.asarray(got, dtype=np.float64)
    scale = max(1.0, float(np.max(np.abs(ref64)))) if ref64.size else 1.0
    if ref32 is None:
        tol = 1e-12 * scale * max(1.0, np.sqrt(inner))
    else:
        err32 = float(np.max(np.abs(ref32.astype(np.float64) - ref64))) if ref64.size else 0.0
        tol = 2 * err32 + 1e-5 * np.sqrt(inner) * scale
    err = np.abs(got - ref64)
    bad = ~(err <= tol)
    if bad.any():
        where = np.argwhere(bad)[:5]
        lines = [f"  at {tuple(i)}: got {got[tuple(i)]!r}, want {ref64[tuple(i)]!r}" for i in where]
        pytest.fail(
            f"{what}: {int(bad.sum())} of {got.size} mismatches; largest error {np.nanmax(err)} "
            f"(tolerance {tol})\n" + "\n".join(lines)
        )


def on_numpy(op, dtype, args, outputs):
    """The reference in float64, and in float32 for float32 kernels: lists of the outputs."""
    results = []
    for d in (np.float64, np.float32) if dtype == np.float32 else (np.float64,):
        conv = [
            a.astype(d) if isinstance(a, np.ndarray) and a.dtype.kind == "f" else a for a in args
        ]
        op(*conv)
        results.append([conv[i] for i in outputs])
    if dtype != np.float32:
        results.append([None] * len(outputs))
    return results


def dev(gpu, a, dtype):
    return gpu.asarray(a, dtype)


def poison(gpu, shape, dtype):
    return gpu.asarray(np.full(shape, np.nan), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", GEMM_SHAPES)
def test_dense_forward(gpu, shape, activation, dtype):
    m, k, n = shape
    rng = np.random.default_rng([m, k, n, 1])
    X, W, b = rand(rng, m, k), rand(rng, k, n) / np.sqrt(k), rand(rng, n)
    out = poison(gpu, (m, n), dtype)
    gpu.dense_forward(dev(gpu, X, dtype), dev(gpu, W, dtype), dev(gpu, b, dtype), activation, out)
    (r64,), (r32,) = on_numpy(
        REF.dense_forward, dtype, [X, W, b, activation, np.zeros((m, n))], [4]
    )
    assert_close(gpu.to_host(out), r64, r32, f"dense_forward {activation} {shape}", k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape", GEMM_SHAPES)
def test_delta_backward(gpu, shape, activation, dtype):
    m, k, n = shape
    rng = np.random.default_rng([m, k, n, 2])
    D, W = rand(rng, m, n), rand(rng, k, n) / np.sqrt(n)
    A = rng.uniform(-0.9, 0.9, (m, k))
    A[A < -0.3] = 0
    out = poison(gpu, (m, k), dtype)
    gpu.delta_backward(dev(gpu, D, dtype), dev(gpu, W, dtype), dev(gpu, A, dtype), activation, out)
    (r64,), (r32,) = on_numpy(
        REF.delta_backward, dtype, [D, W, A, activation, np.zeros((m, k))], [4]
    )
    assert_close(gpu.to_host(out), r64, r32, f"delta_backward {activation} {shape}", n)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output", OUTPUTS)
@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_output_forward(gpu, shape, output, dtype):
    rng = np.random.default_rng([*shape, 3])
    Z = 3 * rand(rng, *shape)
    out = poison(gpu, shape, dtype)
    gpu.output_forward(dev(gpu, Z, dtype), output, out)
    (r64,), (r32,) = on_numpy(REF.output_forward, dtype, [Z, output, np.zeros(shape)], [2])
    assert_close(gpu.to_host(out), r64, r32, f"output_forward {output} {shape}", shape[1])


def targets(rng, output, m, n):
    if output == "softmax":
        return np.eye(n)[rng.integers(0, n, m)]
    if output == "sigmoid":
        return (rng.random((m, n)) > 0.5).astype(np.float64)
    return rng.standard_normal((m, n))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pair", sorted(COMBINATIONS))
@pytest.mark.parametrize("shape", ROW_SHAPES)
def test_output_delta(gpu, shape, pair, dtype):
    output, loss = pair
    m, n = shape
    rng = np.random.default_rng([m, n, 4])
    Z, Y = 3 * rand(rng, m, n), targets(rng, output, m, n)
    A, D = poison(gpu, shape, dtype), poison(gpu, shape, dtype)
    stats = gpu.asarray(np.array([1.5, 2.0]), np.float64)
    gpu.output_delta(dev(gpu, Z, dtype), dev(gpu, Y, dtype), output, loss, A, D, stats)
    s = {np.float64: np.array([1.5, 2.0]), np.float32: np.array([1.5, 2.0])}
    res = []
    for d in (np.float64, np.float32):
        a, dd = np.zeros(shape, d), np.zeros(shape, d)
        REF.output_delta(Z.astype(d), Y.astype(d), output, loss, a, dd, s[d])
        res.append((a, dd))
    (a64, d64), (a32, d32) = res
    f32 = dtype == np.float32
    assert_close(gpu.to_host(A), a64, a32 if f32 else None, f"A {pair} {shape}", n)
    assert_close(gpu.to_host(D), d64, d32 if f32 else None, f"D {pair} {shape}", n)
    got = gpu.to_host(stats)
    assert_close(got[:1], s[np.float64][:1], s[np.float32][:1] if f32 else None, "loss", m * n)
    flips = 0 if not f32 else max(1, 2 * abs(s[np.float32][1] - s[np.float64][1]))
    assert abs(got[1] - s[np.float64][1]) <= flips


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", GEMM_SHAPES + [(100000, 3, 10)])
def test_weight_gradient(gpu, shape, dtype):
    m, k, n = shape
    rng = np.random.default_rng([m, k, n, 5])
    A, D = rand(rng, m, k), rand(rng, m, n) / m
    gW, gb = poison(gpu, (k, n), dtype), poison(gpu, (n,), dtype)
    gpu.weight_gradient(dev(gpu, A, dtype), dev(gpu, D, dtype), gW, gb)
    args = [A, D, np.zeros((k, n)), np.zeros(n)]
    (w64, b64), (w32, b32) = on_numpy(REF.weight_gradient, dtype, args, [2, 3])
    assert_close(gpu.to_host(gW), w64, w32, f"dW {shape}", m)
    assert_close(gpu.to_host(gb), b64, b32, f"db {shape}", m)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(129, 127, 33), (4097, 3, 31), (256, 784, 512)])
@pytest.mark.parametrize("opt", sorted(OPTIMIZERS))
def test_weight_update(gpu, opt, shape, dtype):
    optimizer = OPTIMIZERS[opt]
    m, k, n = shape
    rng = np.random.default_rng([m, k, n, 6])
    W0, b0 = rand(rng, k, n), rand(rng, n)
    W, b = dev(gpu, W0, dtype), dev(gpu, b0, dtype)
    state = gpu.optimizer_state(optimizer, W, b)
    refs = {d: [W0.astype(d), b0.astype(d)] for d in {np.float64, dtype}}
    for d, r in refs.items():
        r.append(REF.optimizer_state(optimizer, r[0], r[1]))
    for step in range(3):
        A, D = rand(rng, m, k), rand(rng, m, n) / m
        gpu.weight_update(dev(gpu, A, dtype), dev(gpu, D, dtype), W, b, state)
        for d, (Wr, br, sr) in refs.items():
            REF.weight_update(A.astype(d), D.astype(d), Wr, br, sr)
        r64, r32 = refs[np.float64], refs[dtype] if dtype == np.float32 else [None] * 3
        assert_close(gpu.to_host(W), r64[0], r32[0], f"W {opt} {shape} step {step + 1}", m)
        assert_close(gpu.to_host(b), r64[1], r32[1], f"b {opt} {shape} step {step + 1}", m)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_rows(gpu, dtype):
    rng = np.random.default_rng(7)
    src = rand(rng, 4097, 33)
    index = rng.integers(0, 4097, 1000).astype(np.int64)
    out = poison(gpu, (1000, 33), dtype)
    gpu.gather_rows(dev(gpu, src, dtype), gpu.asarray(index, np.int64), out)
    np.testing.assert_array_equal(gpu.to_host(out), src.astype(dtype)[index])


@pytest.mark.parametrize(
    "optimizer", [Adam(lr=0.01), SGD(lr=0.1, momentum=0.9)], ids=["adam", "momentum"]
)
def test_fit_matches_numpy(gpu, optimizer):
    """A short float64 fit (the graph-captured step, a partial last batch) against NumPy."""
    rng = np.random.default_rng(9)
    X = rng.standard_normal((200, 20))
    y = (X[:, 0] + X[:, 1] > 0).astype(int) + (X[:, 2] > 0.5)
    curves = {}
    for name in ("cupy", "numpy"):
        net = bpgpu.MLP(
            [20, 33, 3],
            activation="tanh",
            output="softmax",
            loss="cross_entropy",
            backend=name,
            dtype="float64",
            seed=0,
        )
        hist = net.fit(
            X, y, epochs=4, batch_size=48, optimizer=optimizer, shuffle=True, verbose=False
        )
        curves[name] = (hist.history["loss"], [w for pair in net.get_weights() for w in pair])
    np.testing.assert_allclose(curves["cupy"][0], curves["numpy"][0], rtol=1e-9)
    for a, r in zip(curves["cupy"][1], curves["numpy"][1]):
        np.testing.assert_allclose(a, r, rtol=1e-8, atol=1e-10)
    assert gpu._graphs, "the training step was never captured in a CUDA graph"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pair", sorted(COMBINATIONS))
@pytest.mark.parametrize("shape", [(1, 1, 1), (4097, 33, 10), (256, 512, 10), (129, 1000, 64)])
def test_dense_output_delta(gpu, shape, pair, dtype):
    """The fused last layer (Z = A W + b, then output_delta) against the two NumPy ops."""
    output, loss = pair
    m, k, n = shape
    rng = np.random.default_rng([m, k, n, 9])
    A, W, b = rand(rng, m, k), rand(rng, k, n) / np.sqrt(k), rand(rng, n)
    Y = targets(rng, output, m, n)
    net = Network(
        W=[dev(gpu, W, dtype)], b=[dev(gpu, b, dtype)], activations=[], output=output, loss=loss
    )
    ws = gpu.workspace([k, n], m, dtype)
    ws.Z, ws.P, ws.D[-1] = (poison(gpu, (m, n), dtype) for _ in range(3))
    ws.Y = dev(gpu, Y, dtype)
    stats = gpu.zeros((2,), np.float64)
    gpu._dense_output_delta(dev(gpu, A, dtype), net.W[0], net.b[0], net, ws, stats)
    refs = {}
    for d in (np.float64, np.float32):
        Z = np.zeros((m, n), d)
        REF.dense_forward(A.astype(d), W.astype(d), b.astype(d), "identity", Z)
        P, D, s = np.zeros((m, n), d), np.zeros((m, n), d), np.zeros(2)
        REF.output_delta(Z, Y.astype(d), output, loss, P, D, s)
        refs[d] = (Z, P, D, s[:1])
    f32 = dtype == np.float32
    got = (gpu.to_host(ws.Z), gpu.to_host(ws.P), gpu.to_host(ws.D[-1]), gpu.to_host(stats)[:1])
    for i, name in enumerate(("Z", "A", "D", "loss")):
        ref32 = refs[np.float32][i] if f32 else None
        assert_close(got[i], refs[np.float64][i], ref32, f"{name} {pair} {shape}", k * n)
