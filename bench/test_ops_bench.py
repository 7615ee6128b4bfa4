"""pytest-benchmark micro-benchmarks of each fused op on every available bpgpu backend.

    python -m pytest bench/test_ops_bench.py --benchmark-only [--benchmark-json out.json]

Not part of the test suite (pytest collects tests/ only). Shapes are one MNIST-like layer,
m = 256 rows, k = 784 inputs, n = 512 outputs (n = 10 for the output ops); every call is
followed by the backend's synchronize so GPU work is counted.
"""

from __future__ import annotations

import numpy as np
import pytest

from bpgpu.backends import available_backends, get_backend
from bpgpu.optimizers import RMSprop

M, K, N, C = 256, 784, 512, 10
F32 = np.dtype(np.float32)
BACKENDS = [b for b in available_backends() if not get_backend(b).simulated]


@pytest.fixture(params=BACKENDS)
def xp(request):
    return get_backend(request.param)


def _rand(xp, rng, *shape):
    return xp.asarray(rng.standard_normal(shape), F32)


def _run(benchmark, xp, fn):
    def call():
        fn()
        xp.synchronize()

    benchmark(call)


@pytest.mark.parametrize("activation", ["relu", "sigmoid"])
def test_dense_forward(benchmark, xp, activation):
    rng = np.random.default_rng(0)
    X, W, b, out = (
        _rand(xp, rng, M, K),
        _rand(xp, rng, K, N),
        _rand(xp, rng, N),
        xp.empty((M, N), F32),
    )
    _run(benchmark, xp, lambda: xp.dense_forward(X, W, b, activation, out))


def test_output_delta_softmax_cross_entropy(benchmark, xp):
    rng = np.random.default_rng(1)
    Z = _rand(xp, rng, M, C)
    Y = xp.asarray(np.eye(C)[rng.integers(0, C, M)], F32)
    A, D = xp.empty((M, C), F32), xp.empty((M, C), F32)
    stats = xp.zeros((2,), np.dtype(np.float64))
    _run(benchmark, xp, lambda: xp.output_delta(Z, Y, "softmax", "cross_entropy", A, D, stats))


def test_delta_backward_relu(benchmark, xp):
    rng = np.random.default_rng(2)
    D, W, A, out = (
        _rand(xp, rng, M, N),
        _rand(xp, rng, K, N),
        _rand(xp, rng, M, K),
        xp.empty((M, K), F32),
    )
    _run(benchmark, xp, lambda: xp.delta_backward(D, W, A, "relu", out))


def test_weight_update_rmsprop(benchmark, xp):
    rng = np.random.default_rng(3)
    A, D, W, b = _rand(xp, rng, M, K), _rand(xp, rng, M, N), _rand(xp, rng, K, N), _rand(xp, rng, N)
    state = xp.optimizer_state(RMSprop(lr=1e-6), W, b)
    _run(benchmark, xp, lambda: xp.weight_update(A, D, W, b, state))


def test_gather_rows(benchmark, xp):
    rng = np.random.default_rng(4)
    src = _rand(xp, rng, 16 * M, K)
    index = xp.asarray(rng.permutation(16 * M)[:M], np.dtype(np.int64))
    out = xp.empty((M, K), F32)
    _run(benchmark, xp, lambda: xp.gather_rows(src, index, out))
