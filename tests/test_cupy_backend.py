"""What is particular to the cupy backend's host code (its ops are in the conformance suite,
on a GPU as "cupy" and on the CPU as "cupy-on-emulation"): a fit runs its steps through captured
CUDA graphs whose replays read the current optimizer numbers from device memory. On the CPU the
stand-in for CuPy of tests/fake_cupy.py records and replays the launches; the kernels are the
emulation's."""

from __future__ import annotations

import fake_cupy
import numpy as np
import pytest

import bpgpu
from bpgpu.backends.base import BackendUnavailableError
from bpgpu.backends.cuda_emulated import CudaEmulatedBackend
from helpers import F64, assert_close


@pytest.fixture
def xp():
    try:
        CudaEmulatedBackend.probe()
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    with fake_cupy.cupy_backend() as backend:
        yield backend


@pytest.mark.parametrize(
    "lr", [0.01, bpgpu.ExponentialDecay(0.02, gamma=0.95)], ids=["constant", "scheduled"]
)
def test_a_fit_replays_captured_graphs_and_matches_the_reference(xp, rng, lr):
    """200 samples in batches of 48: four full batches and one of 8, so two graphs (one per
    batch size), each captured on its second step and replayed after; Adam's numbers change
    every update (and a schedule's rate too), so a replay that read stale ones would drift
    from the reference; a schedule needs no new capture."""
    X, y = rng.normal(size=(200, 20)), rng.integers(0, 3, 200)
    runs = []
    for backend in (xp, "reference"):
        net = bpgpu.MLP([20, 33, 3], activation="tanh", backend=backend, dtype="float64", seed=0)
        hist = net.fit(X, y, epochs=4, batch_size=48, optimizer=bpgpu.Adam(lr=lr), seed=1)
        runs.append((np.array(hist["loss"]), net.get_weights()))
    assert len(xp._graphs) == 2
    # every step of a size but its first (eager) launches the graph: 4 x 1 - 1 and 4 x 4 - 1
    assert sorted(g.replays for g in xp._graphs.values()) == [3, 15]
    (loss, weights), (want_loss, want_weights) = runs
    assert_close(loss, want_loss, None, F64, "loss curve", 48)
    for (W, b), (wW, wb) in zip(weights, want_weights, strict=True):
        assert_close(W, wW, None, F64, "W", 48)
        assert_close(b, wb, None, F64, "b", 48)
    assert fake_cupy.RawModule.made and all(m["code"] for m in fake_cupy.RawModule.made)
