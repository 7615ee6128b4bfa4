"""What is particular to the numba backend (its ops are in the conformance suite): how it runs
on numba's CUDA simulator, its launch geometry for a batch past gridDim.y, its probe, and its
launches on CuPy arrays. The ``*_sim`` tests run in the simulator child process that
tests/test_conformance.py starts."""

from __future__ import annotations

import inspect
import os
import time
import types

import numpy as np
import pytest

from bpgpu.backends import get_backend
from bpgpu.backends.base import BackendUnavailableError

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


not_sim = pytest.mark.skipif(IN_SIMULATOR, reason="numba's real CUDA target, not the simulator")


@not_sim
def test_probe_compiles_a_kernel_and_says_when_it_cannot(monkeypatch) -> None:
    """A GPU without NVVM is unavailable up front, with the reason, not at the first kernel."""
    from numba.cuda.cudadrv.error import NvvmSupportError

    from bpgpu.backends import numba_kernels
    from bpgpu.backends.numba_backend import NumbaBackend

    try:
        numba_kernels.check_compiler()  # NVVM, no GPU: compiles here
    except Exception as exc:
        pytest.skip(f"numba cannot compile here either ({exc})")
    monkeypatch.setattr(numba_kernels.cuda, "is_available", lambda: True)

    def no_nvvm() -> None:
        raise NvvmSupportError("libNVVM cannot be found")

    monkeypatch.setattr(numba_kernels, "check_compiler", no_nvvm)
    with pytest.raises(
        BackendUnavailableError,
        match=r"numba cannot compile CUDA kernels \(NvvmSupportError: libNVVM cannot be found\)",
    ):
        NumbaBackend.probe()


@not_sim
def test_launches_on_cupy_arrays_skip_numbas_stream_sync(monkeypatch) -> None:
    """numba synchronizes the stream an imported __cuda_array_interface__ array names, once per
    array argument, unless CUDA_ARRAY_INTERFACE_SYNC is off: the backend turns it off around
    its launches (on that very stream) and restores it after. A stand-in kernel records the
    setting as numba's import would read it."""
    import numba.cuda.api

    from bpgpu.backends import numba_kernels
    from bpgpu.backends.numba_backend import NumbaBackend

    configs = numba_kernels._interface_configs()
    assert numba.cuda.api.config in configs  # what from_cuda_array_interface reads
    assert "config.CUDA_ARRAY_INTERFACE_SYNC" in inspect.getsource(
        numba.cuda.api.from_cuda_array_interface
    )
    seen: list[list[int]] = []

    class Kernel:
        def __getitem__(self, launch):
            assert launch[2] == ("stream", 1234)  # CuPy's current stream
            return lambda *args: seen.append([c.CUDA_ARRAY_INTERFACE_SYNC for c in configs])

    nb = NumbaBackend()
    stream = types.SimpleNamespace(ptr=1234)
    nb._cupy = types.SimpleNamespace(cuda=types.SimpleNamespace(get_current_stream=lambda: stream))
    monkeypatch.setattr(nb._cuda, "external_stream", lambda ptr: ("stream", ptr))
    monkeypatch.setattr(nb._k, "gather_rows", Kernel())
    before = [c.CUDA_ARRAY_INTERFACE_SYNC for c in configs]
    assert any(before), "numba syncs by default (NUMBA_CUDA_ARRAY_INTERFACE_SYNC=1)"
    out = np.zeros((3, 2))
    nb._gather_rows(np.zeros((4, 2)), np.zeros(3, np.int64), out)
    nb._gather_rows(np.zeros((4, 2)), np.zeros(3, np.int64), out)
    assert seen == [[0] * len(configs)] * 2
    assert [c.CUDA_ARRAY_INTERFACE_SYNC for c in configs] == before


@pytest.mark.gpu
def test_a_launch_on_cupy_arrays_does_not_wait_for_the_stream() -> None:
    """On a GPU: behind a long GEMM, a launch on CuPy arrays returns at once (a launch that
    synchronized the stream would wait for the GEMM)."""
    cupy = pytest.importorskip("cupy")
    nb = get_backend("numba")
    if nb.describe()["arrays"] != "cupy":
        pytest.skip("the numba backend runs on numba's arrays here")
    m = 4096
    X, W = cupy.ones((m, m), cupy.float32), cupy.ones((m, m), cupy.float32)
    b, out = cupy.zeros(m, cupy.float32), cupy.empty((m, m), cupy.float32)
    small = cupy.empty((8, 2), cupy.float32)
    index = cupy.zeros(8, cupy.int64)
    nb.dense_forward(X, W, b, "identity", out)  # compiled and warm
    nb.gather_rows(out[:, :2].copy(), index, small)
    nb.synchronize()
    start, stop = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    nb.dense_forward(X, W, b, "identity", out)
    stop.record()
    began = time.perf_counter()
    nb.gather_rows(small, index, small)
    returned_after = time.perf_counter() - began
    stop.synchronize()
    gemm_s = cupy.cuda.get_elapsed_time(start, stop) / 1e3
    assert gemm_s > 0.005, f"the GEMM took {gemm_s * 1e3:.2f} ms: too short to tell"
    assert returned_after < 0.2 * gemm_s, (
        f"the launch took {returned_after * 1e3:.2f} ms behind a {gemm_s * 1e3:.2f} ms GEMM: "
        "it waited for the stream"
    )
