"""What is particular to the numba backend (its ops are in the conformance suite): how it runs
on numba's CUDA simulator, and its launch geometry for a batch past gridDim.y. The ``*_sim``
tests run in the simulator child process that tests/test_conformance.py starts."""

from __future__ import annotations

import os

import numpy as np
import pytest

from bpgpu.backends import get_backend

IN_SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM") == "1"
sim_only = pytest.mark.skipif(
    not IN_SIMULATOR, reason="runs in the simulator child process of test_conformance.py"
)


@pytest.fixture
def sim():
    nb = get_backend("numba")
    assert nb.simulated
    return nb


@sim_only
def test_the_simulator_is_never_chosen_by_auto(sim) -> None:
    assert sim.describe()["device"] == "CUDA simulator"
    assert get_backend("auto").name != "numba"


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
