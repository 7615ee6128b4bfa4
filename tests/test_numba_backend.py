"""The numba backend's ops against the NumPy float64 reference, on the CUDA simulator and a GPU.

How the simulator is enabled: ``NUMBA_ENABLE_CUDASIM`` must be set before numba is first
imported, and turning it on for the whole pytest process would make the numba backend
"available" (simulated) to every other test module. So ``test_simulator_suite`` runs this very
file in a child pytest with ``NUMBA_ENABLE_CUDASIM=1`` and ``-m "not gpu"``; in the child the
``*_sim`` tests run on the simulator (tiny odd shapes: it is very slow). In the parent process
those tests skip, and the ``gpu``-marked tests run the same comparisons on a real GPU with
larger shapes (skipped with the reason where there is none). The child also runs on a GPU
machine: it is cheap and checks the same kernels CI checks.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import bpgpu
from bpgpu.backends import cuda_source as cs
from bpgpu.backends import get_backend
from bpgpu.backends.base import Network, Workspace
from bpgpu.backends.numpy_backend import NumpyBackend
from bpgpu.functions import ACTIVATIONS, COMBINATIONS, OUTPUTS
from bpgpu.optimizers import SGD, Adam, RMSprop

IN_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
sim_only = pytest.mark.skipif(
    not IN_SIMULATOR, reason="runs in the simulator subprocess started by test_simulator_suite"
)
DTYPES = (np.float32, np.float64)
SIM_SHAPES = [(1, 3, 5), (17, 5, 3), (3, 17, 1)]  # (m, k, n)
GPU_SIZES = (1, 3, 31, 33, 127, 129, 1000)
GPU_SHAPES = [
    (m, k, n)
    for m, k, n in zip(GPU_SIZES, GPU_SIZES[3:] + GPU_SIZES[:3], GPU_SIZES[5:] + GPU_SIZES[:5])
]
OPTIMIZERS = [
    SGD(lr=0.1),
    SGD(lr=0.1, momentum=0.9, weight_decay=0.01),
    SGD(lr=0.1, momentum=0.9, nesterov=True),
    RMSprop(lr=0.01, weight_decay=0.01),
    Adam(lr=0.01),
    Adam(lr=0.01, weight_decay=0.1),
]
REF = NumpyBackend()


def _tol(dtype) -> dict[str, float]:
    return (
        {"rtol": 2e-4, "atol": 2e-5}
        if np.dtype(dtype) == np.float32
        else {"rtol": 1e-10, "atol": 1e-12}
    )


def _inputs(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
    """Random values that ``dtype`` holds exactly, as float64 (the reference's input)."""
    return rng.standard_normal(shape).astype(dtype).astype(np.float64)


def _poisoned(nb, shape: tuple[int, ...], dtype):
    return nb.asarray(np.full(shape, np.nan), dtype)


# ---- the comparisons, shared by the simulator and GPU tests ---------------------------------


def check_dense_forward(nb, rng, m, k, n, dtype, act) -> None:
    X, W, b = _inputs(rng, (m, k), dtype), _inputs(rng, (k, n), dtype), _inputs(rng, (n,), dtype)
    out = _poisoned(nb, (m, n), dtype)
    nb.dense_forward(nb.asarray(X, dtype), nb.asarray(W, dtype), nb.asarray(b, dtype), act, out)
    ref = REF.dense_forward(X, W, b, act, np.empty((m, n)))
    np.testing.assert_allclose(nb.to_host(out), ref, **_tol(dtype))


def check_delta_backward(nb, rng, m, k, n, dtype, act) -> None:
    D, W = _inputs(rng, (m, n), dtype), _inputs(rng, (k, n), dtype)
    A = np.empty((m, k))
    REF.dense_forward(_inputs(rng, (m, 1), dtype), _inputs(rng, (1, k), dtype), np.zeros(k), act, A)
    A = A.astype(dtype).astype(np.float64)
    out = _poisoned(nb, (m, k), dtype)
    nb.delta_backward(nb.asarray(D, dtype), nb.asarray(W, dtype), nb.asarray(A, dtype), act, out)
    ref = REF.delta_backward(D, W, A, act, np.empty((m, k)))
    np.testing.assert_allclose(nb.to_host(out), ref, **_tol(dtype))


def _targets(rng, m, n, output) -> np.ndarray:
    if output == "softmax":
        return np.eye(n)[rng.integers(0, n, m)]
    if output == "sigmoid":
        return (rng.random((m, n)) > 0.5).astype(np.float64)
    return rng.standard_normal((m, n))


def check_output_delta(nb, rng, m, n, dtype, output, loss) -> None:
    Z, Y = 3 * _inputs(rng, (m, n), dtype), _targets(rng, m, n, output)
    Z = Z.astype(dtype).astype(np.float64)
    A, D = _poisoned(nb, (m, n), dtype), _poisoned(nb, (m, n), dtype)
    stats = nb.asarray(np.array([1.5, 2.0]), np.float64)
    nb.output_delta(nb.asarray(Z, dtype), nb.asarray(Y, dtype), output, loss, A, D, stats)
    rA, rD, rstats = np.empty((m, n)), np.empty((m, n)), np.array([1.5, 2.0])
    REF.output_delta(Z, Y, output, loss, rA, rD, rstats)
    np.testing.assert_allclose(nb.to_host(A), rA, **_tol(dtype))
    np.testing.assert_allclose(nb.to_host(D), rD, **_tol(dtype))
    np.testing.assert_allclose(
        nb.to_host(stats), rstats, rtol=1e-5 if dtype == np.float32 else 1e-10
    )


def check_output_forward(nb, rng, m, n, dtype, output) -> None:
    Z = 3 * _inputs(rng, (m, n), dtype)
    Z = Z.astype(dtype).astype(np.float64)
    out = _poisoned(nb, (m, n), dtype)
    nb.output_forward(nb.asarray(Z, dtype), output, out)
    np.testing.assert_allclose(
        nb.to_host(out), REF.output_forward(Z, output, np.empty((m, n))), **_tol(dtype)
    )


def check_weight_gradient(nb, rng, m, k, n, dtype) -> None:
    A, D = _inputs(rng, (m, k), dtype), _inputs(rng, (m, n), dtype)
    gW, gb = _poisoned(nb, (k, n), dtype), _poisoned(nb, (n,), dtype)
    nb.weight_gradient(nb.asarray(A, dtype), nb.asarray(D, dtype), gW, gb)
    rW, rb = np.empty((k, n)), np.empty(n)
    REF.weight_gradient(A, D, rW, rb)
    np.testing.assert_allclose(nb.to_host(gW), rW, **_tol(dtype))
    np.testing.assert_allclose(nb.to_host(gb), rb, **_tol(dtype))


def check_weight_update(nb, rng, m, k, n, dtype, opt, steps: int = 3) -> None:
    W, b = _inputs(rng, (k, n), dtype), _inputs(rng, (n,), dtype)
    dW, db = nb.asarray(W, dtype), nb.asarray(b, dtype)
    state, rstate = nb.optimizer_state(opt, dW, db), REF.optimizer_state(opt, W, b)
    for _ in range(steps):
        A, D = _inputs(rng, (m, k), dtype), _inputs(rng, (m, n), dtype)
        nb.weight_update(nb.asarray(A, dtype), nb.asarray(D, dtype), dW, db, state)
        REF.weight_update(A, D, W, b, rstate)
    tol = {"rtol": 1e-3, "atol": 1e-4} if dtype == np.float32 else _tol(dtype)
    np.testing.assert_allclose(nb.to_host(dW), W, **tol)
    np.testing.assert_allclose(nb.to_host(db), b, **tol)
    for slot in opt.slots:
        np.testing.assert_allclose(nb.to_host(state.W[slot]), rstate.W[slot], **tol)
        np.testing.assert_allclose(nb.to_host(state.b[slot]), rstate.b[slot], **tol)
    assert state.t == rstate.t == steps


def check_gather_rows(nb, rng, m, k, dtype) -> None:
    src = _inputs(rng, (m + 2, k), dtype)
    index = rng.integers(0, m + 2, m).astype(np.int64)
    out = _poisoned(nb, (m, k), dtype)
    nb.gather_rows(nb.asarray(src, dtype), nb.asarray(index, np.int64), out)
    np.testing.assert_array_equal(nb.to_host(out), src[index])


def check_training(nb, rng, sizes, dtype, opt, output, loss, rows, steps) -> None:
    """A few train_step calls from the same start on both backends, weights compared."""
    samples = 2 * rows + 1
    X, Y = _inputs(rng, (samples, sizes[0]), dtype), _targets(rng, samples, sizes[-1], output)
    W0 = [_inputs(rng, (a, c), dtype) * 0.5 for a, c in itertools.pairwise(sizes)]
    b0 = [_inputs(rng, (c,), dtype) * 0.1 for c in sizes[1:]]
    acts = ["tanh", "relu", "sigmoid"][: len(sizes) - 2]
    runs = []
    for be, dt in ((nb, dtype), (REF, np.float64)):
        net = Network(
            [be.asarray(w, dt) for w in W0], [be.asarray(v, dt) for v in b0], acts, output, loss
        )
        ws: Workspace = be.workspace(sizes, rows, dt)
        states = [be.optimizer_state(opt, w, v) for w, v in zip(net.W, net.b)]
        stats = be.zeros((2,), np.float64)
        Xd, Yd = be.asarray(X, dt), be.asarray(Y, dt)
        for s in range(steps):
            index = be.asarray(np.random.default_rng(s).permutation(samples)[:rows], np.int64)
            be.train_step(net, ws, Xd, Yd, index, states, stats)
        runs.append(
            ([be.to_host(w) for w in net.W] + [be.to_host(v) for v in net.b], be.to_host(stats))
        )
    tol = {"rtol": 1e-3, "atol": 1e-4} if dtype == np.float32 else {"rtol": 1e-9, "atol": 1e-11}
    for got, want in zip(runs[0][0], runs[1][0]):
        np.testing.assert_allclose(got, want, **tol)
    np.testing.assert_allclose(runs[0][1], runs[1][1], rtol=1e-4 if dtype == np.float32 else 1e-9)


# ---- on the simulator (run by test_simulator_suite in a child process) ------------------------


def test_simulator_suite() -> None:
    """Runs this file's simulator tests in a child pytest with NUMBA_ENABLE_CUDASIM=1."""
    if IN_SIMULATOR:
        pytest.skip("this is the simulator child")
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "1"}
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(Path(__file__)),
            "-q",
            "-m",
            "not gpu",
            "-p",
            "no:cacheprovider",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    assert " passed" in done.stdout.splitlines()[-1], done.stdout[-2000:]
    print(f"numba simulator suite: {seconds:.1f} s: {done.stdout.splitlines()[-1]}")


@pytest.fixture
def sim():
    nb = get_backend("numba")
    assert nb.simulated
    return nb


@sim_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("shape", SIM_SHAPES)
def test_dense_forward_sim(sim, rng, shape, act, dtype) -> None:
    check_dense_forward(sim, rng, *shape, dtype, act)


@sim_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize("shape", SIM_SHAPES)
def test_delta_backward_sim(sim, rng, shape, act, dtype) -> None:
    check_delta_backward(sim, rng, *shape, dtype, act)


@sim_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pair", sorted(COMBINATIONS))
@pytest.mark.parametrize("shape", [(1, 3), (17, 5), (5, 1)])
def test_output_delta_sim(sim, rng, shape, pair, dtype) -> None:
    check_output_delta(sim, rng, *shape, dtype, *pair)


@sim_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("output", OUTPUTS)
def test_output_forward_sim(sim, rng, output, dtype) -> None:
    check_output_forward(sim, rng, 17, 5, dtype, output)


@sim_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SIM_SHAPES)
def test_weight_gradient_sim(sim, rng, shape, dtype) -> None:
    check_weight_gradient(sim, rng, *shape, dtype)


@sim_only
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=repr)
def test_weight_update_sim(sim, rng, opt, dtype) -> None:
    check_weight_update(sim, rng, 5, 17, 3, dtype, opt)


@sim_only
def test_memory_sim(sim, rng) -> None:
    host = rng.standard_normal((3, 5))
    a = sim.asarray(host, np.float32)
    b = sim.empty((3, 5), np.float32)
    sim.copy_into(b, a)
    assert sim.is_array(b) and not sim.is_array(host)
    np.testing.assert_array_equal(sim.to_host(b), host.astype(np.float32))
    np.testing.assert_array_equal(sim.to_host(sim.zeros((2, 3), np.float64)), np.zeros((2, 3)))
    assert sim.describe()["device"] == "CUDA simulator"
    assert get_backend("auto").name != "numba"  # auto never picks the simulator


@sim_only
def test_argument_checks_sim(sim) -> None:
    X, W, b = (sim.zeros(s, np.float32) for s in ((3, 5), (5, 2), (2,)))
    with pytest.raises(ValueError, match="out must have shape"):
        sim.dense_forward(X, W, b, "relu", sim.zeros((3, 3), np.float32))
    with pytest.raises(TypeError, match="W must have dtype float32"):
        sim.dense_forward(
            X, sim.zeros((5, 2), np.float64), b, "relu", sim.zeros((3, 2), np.float32)
        )
    with pytest.raises(TypeError, match="must be an array of the numba backend"):
        sim.dense_forward(np.zeros((3, 5), np.float32), W, b, "relu", sim.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="activation must be one of"):
        sim.dense_forward(X, W, b, "swish", sim.zeros((3, 2), np.float32))
    with pytest.raises(ValueError, match="cannot be trained with"):
        Z = sim.zeros((3, 2), np.float32)
        sim.output_delta(Z, Z, "identity", "cross_entropy", Z, Z, sim.zeros((2,), np.float64))


@sim_only
@pytest.mark.parametrize("dtype", DTYPES)
def test_gather_rows_sim(sim, rng, dtype) -> None:
    check_gather_rows(sim, rng, 5, 3, dtype)


@sim_only
@pytest.mark.parametrize("bad", [-1, 6], ids=["negative", "past-the-end"])
def test_gather_rows_bad_index_values_give_nan_rows_sim(sim, bad) -> None:
    src = sim.asarray(np.arange(12.0).reshape(6, 2), np.float32)
    out = sim.asarray(np.full((3, 2), 7.0), np.float32)
    sim.gather_rows(src, sim.asarray(np.array([0, bad, 5]), np.int64), out)
    np.testing.assert_array_equal(sim.to_host(out), [[0, 1], [np.nan, np.nan], [10, 11]])
    with pytest.raises(TypeError, match="out must be an array of the numba backend"):
        sim.gather_rows(src, sim.zeros((3,), np.int64), np.zeros((3, 2), np.float32))


@sim_only
def test_gemm_launch_past_grid_y_sim(sim, monkeypatch) -> None:
    """A batch of more row tiles than gridDim.y takes (2^20 rows is 65536 tiles of 16) puts them
    on grid.x; the launch is recorded, not run (the simulator would take hours)."""
    launched = []
    monkeypatch.setattr(
        sim, "_launch", lambda kernel, grid, block: lambda *args: launched.append(grid)
    )
    m = 2**20
    X, W, b, out = (sim.empty(s, np.float32) for s in ((m, 1), (1, 3), (3,), (m, 3)))
    sim.dense_forward(X, W, b, "relu", out)
    sim.gather_rows(out, sim.asarray(np.zeros(m, np.int64), np.int64), out)
    assert launched == [(65536, 1), (12288, 1, 1)]  # GEMM (row tiles, col tiles); gather


@pytest.mark.parametrize("tile", [16, 64])  # the numba kernels' TILE, the CUDA C TILE_M
def test_tile_grid_puts_row_tiles_on_grid_x(tile) -> None:
    assert cs.tile_grid(1, 1, tile, tile) == (1, 1)
    assert cs.tile_grid(tile + 1, 2 * tile, tile, tile) == (2, 2)
    rows = (cs.MAX_GRID_Y + 1) * tile  # one row tile more than gridDim.y takes
    assert cs.tile_grid(rows, 10, tile, tile) == (cs.MAX_GRID_Y + 1, 1)
    assert cs.tile_grid(10, cs.MAX_GRID_Y * tile, tile, tile) == (1, cs.MAX_GRID_Y)
    with pytest.raises(ValueError, match="columns exceed"):
        cs.tile_grid(10, cs.MAX_GRID_Y * tile + 1, tile, tile)
    with pytest.raises(ValueError, match="rows exceed"):
        cs.tile_grid(cs.MAX_GRID_X * tile + 1, 10, tile, tile)


@sim_only
@pytest.mark.parametrize(
    "dtype, opt, output, loss",
    [
        (np.float32, Adam(lr=0.01), "softmax", "cross_entropy"),
        (np.float64, SGD(lr=0.1, momentum=0.9), "sigmoid", "mse"),
    ],
)
def test_training_sim(sim, rng, dtype, opt, output, loss) -> None:
    check_training(sim, rng, [5, 3, 3], dtype, opt, output, loss, rows=5, steps=3)


@sim_only
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mlp_fit_sim(rng, dtype) -> None:
    """bpgpu.MLP(..., backend="numba") fits, predicts and matches the numpy backend's weights."""
    X, y = rng.standard_normal((20, 4)), rng.integers(0, 3, 20)
    models = []
    for backend in ("numba", "numpy"):
        model = bpgpu.MLP([4, 5, 3], activation="tanh", backend=backend, dtype=dtype, seed=1)
        history = model.fit(X, y, epochs=2, batch_size=7, optimizer="adam")
        models.append((model, history))
    (got, got_history), (want, want_history) = models
    tol = {"rtol": 1e-3, "atol": 1e-5} if dtype == "float32" else {"rtol": 1e-9, "atol": 1e-12}
    for (gW, gb), (wW, wb) in zip(got.get_weights(), want.get_weights()):
        np.testing.assert_allclose(gW, wW, **tol)
        np.testing.assert_allclose(gb, wb, **tol)
    np.testing.assert_allclose(got.predict_proba(X), want.predict_proba(X), **tol)
    assert got_history.history.keys() == want_history.history.keys()
    for name, values in want_history.history.items():
        np.testing.assert_allclose(got_history.history[name], values, rtol=1e-4)


# ---- on a GPU ----------------------------------------------------------------------------------


@pytest.fixture
def gpu():
    nb = get_backend("numba")
    if nb.simulated:
        pytest.skip("numba runs on the simulator here")
    return nb


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", GPU_SHAPES)
def test_ops_gpu(gpu, rng, shape, dtype) -> None:
    m, k, n = shape
    for act in ACTIVATIONS:
        check_dense_forward(gpu, rng, m, k, n, dtype, act)
        check_delta_backward(gpu, rng, m, k, n, dtype, act)
    for pair in sorted(COMBINATIONS):
        check_output_delta(gpu, rng, m, n, dtype, *pair)
    for output in OUTPUTS:
        check_output_forward(gpu, rng, m, n, dtype, output)
    check_weight_gradient(gpu, rng, m, k, n, dtype)
    for opt in OPTIMIZERS:
        check_weight_update(gpu, rng, m, k, n, dtype, opt)
    check_gather_rows(gpu, rng, m, k, dtype)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", DTYPES)
def test_training_gpu(gpu, rng, dtype) -> None:
    check_training(
        gpu,
        rng,
        [33, 129, 31, 10],
        dtype,
        Adam(lr=0.01),
        "softmax",
        "cross_entropy",
        rows=127,
        steps=5,
    )
