"""What is particular to the CPU emulation of the CUDA C kernels (their ops are in the
conformance suite): the build, its cache, which kernels a launch runs, and launch geometry
recorded for shapes too large to run here."""

from __future__ import annotations

import re

import numpy as np
import pytest

import bpgpu
from bpgpu import backends, cli
from bpgpu.backends import cuda_emulated, cuda_launch, cuda_source
from bpgpu.backends.base import BackendUnavailableError
from bpgpu.backends.cuda_launch import MAX_GRID_Y, entry_points, gemm_geometry, tile_grid
from bpgpu.backends.cuda_source import TUNABLES
from bpgpu.optimizers import SGD


@pytest.fixture
def emulated():
    try:
        cuda_emulated.CudaEmulatedBackend.probe()
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    return cuda_emulated.CudaEmulatedBackend()


def test_the_build_registers_exactly_the_listed_entry_points(emulated):
    listed = sorted(name for names in entry_points().values() for name in names)
    assert emulated.kernel_names() == listed


def test_a_long_narrow_batch_takes_the_split_path(emulated):
    """Fewer weight tiles than the device's blocks and a long batch: the weight gradient sums
    slices of the batch (weight_partial) and finishes with the step (weight_finish)."""
    A, D = np.ones((4097, 3), np.float32), np.ones((4097, 5), np.float32)
    W, b = np.zeros((3, 5), np.float32), np.zeros(5, np.float32)
    emulated.weight_update(A, D, W, b, emulated.optimizer_state(SGD(lr=1.0), W, b))
    assert set(emulated.launched) == {"weight_partial_f32", "weight_finish_sgd_f32"}
    np.testing.assert_array_equal(W, -4097.0)
    short = cuda_emulated.CudaEmulatedBackend()
    short.weight_gradient(A[:100], D[:100], W, b)
    assert set(short.launched) == {"weight_update_store_f32"}


def test_a_build_is_cached_and_a_failed_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("BPGPU_CACHE_DIR", str(tmp_path))
    cxx = cuda_emulated.compiler()
    if cxx is None:
        pytest.skip("no C++ compiler")
    monkeypatch.setattr(cuda_emulated, "_FLAGS", (*cuda_emulated._FLAGS, "--no-such-option"))
    with pytest.raises(RuntimeError, match=r"building the CPU emulation .* failed"):
        cuda_emulated.build(cxx)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    monkeypatch.setenv("BPGPU_CACHE_DIR", str(tmp_path))
    first = cuda_emulated.build(cxx)
    mtime = first.stat().st_mtime_ns
    assert cuda_emulated.build(cxx) == first and first.stat().st_mtime_ns == mtime
    assert [p.name for p in tmp_path.iterdir()] == [first.name]


class Recorded(cuda_emulated.CudaEmulatedBackend):
    """The emulated backend recording each launch's name and grid instead of running it."""

    def _launch(self, name, family, geometry, args, shapes):
        self.launched[(name, geometry[0])] += 1


def test_gemm_launch_past_grid_y():
    """A batch of more row tiles than gridDim.y takes (65536 tiles of TILE_M rows) puts them on
    grid.x, for every GEMM launcher; too many column tiles is refused with the limit."""
    ops = Recorded()
    m = (MAX_GRID_Y + 1) * TUNABLES["TILE_M"]
    X, W, b = np.zeros((m, 2), np.float32), np.zeros((2, 3), np.float32), np.zeros(3, np.float32)
    out, D = np.zeros((m, 3), np.float32), np.zeros((m, 2), np.float32)
    ops.dense_forward(X, W, b, "relu", out)
    ops.delta_backward(out, W, X, "relu", D)
    assert list(ops.launched) == [
        ("dense_forward_relu_f32", (MAX_GRID_Y + 1, 1, 1)),
        ("delta_backward_relu_f32", (MAX_GRID_Y + 1, 1, 1)),
    ]
    wide = MAX_GRID_Y * TUNABLES["TILE_N"] + 1
    with pytest.raises(ValueError, match=f"{wide} columns exceed"):
        gemm_geometry(1, wide)


@pytest.mark.parametrize("tile", [16, 64])  # the numba kernels' TILE, the CUDA C TILE_M
def test_tile_grid_puts_row_tiles_on_grid_x(tile) -> None:
    assert tile_grid(1, 1, tile, tile) == (1, 1)
    assert tile_grid(tile + 1, 2 * tile, tile, tile) == (2, 2)
    rows = (MAX_GRID_Y + 1) * tile  # one row tile more than gridDim.y takes
    assert tile_grid(rows, 10, tile, tile) == (MAX_GRID_Y + 1, 1)
    assert tile_grid(10, MAX_GRID_Y * tile, tile, tile) == (1, MAX_GRID_Y)
    with pytest.raises(ValueError, match="columns exceed"):
        tile_grid(10, MAX_GRID_Y * tile + 1, tile, tile)
    with pytest.raises(ValueError, match="rows exceed"):
        tile_grid(cuda_launch.MAX_GRID_X * tile + 1, 10, tile, tile)


def _no_compiler_on_path(monkeypatch, tmp_path):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))


def _no_kernel_sources(monkeypatch, tmp_path):
    """As in an installed wheel without its kernels: every lookup of the folder finds none."""
    empty = tmp_path / "kernels"
    (empty / "cpu").mkdir(parents=True)
    for module in (cuda_emulated, cuda_source):
        monkeypatch.setattr(module, "kernel_dir", lambda: empty)


@pytest.mark.parametrize(
    "cause,reason",
    [
        (lambda mp, tmp: mp.setenv("CXX", "nonexistent"), "CXX='nonexistent' is not an executable"),
        (_no_compiler_on_path, r"no C\+\+ compiler \(set CXX, or install g\+\+ or clang\+\+\)"),
        (_no_kernel_sources, r"no kernel sources \(\*\.cu\) in .*kernels"),
    ],
    ids=["CXX-not-a-program", "no-compiler-on-PATH", "no-kernel-sources"],
)
def test_unavailable_with_the_reason_in_info_and_in_the_error(
    monkeypatch, tmp_path, capsys, cause, reason
):
    monkeypatch.setattr(backends, "_instances", {})  # probe every backend afresh
    monkeypatch.setattr(backends, "_unavailable", {})
    cause(monkeypatch, tmp_path)
    assert cli.main(["info"]) == 0
    line = next(s for s in capsys.readouterr().out.splitlines() if s.startswith("cuda-emulated:"))
    assert re.search(f"not available: .*{reason}", line), line
    with pytest.raises(BackendUnavailableError, match=reason):
        bpgpu.MLP([2, 2], backend="cuda-emulated")


def test_auto_never_picks_it(monkeypatch):
    """Not even when no engine can run: auto then fails rather than take the emulation."""
    assert not backends.REGISTRY["cuda-emulated"].engine
    assert "cuda-emulated" not in backends.available_backends()
    monkeypatch.delenv("BPGPU_BACKEND", raising=False)
    monkeypatch.setattr(
        backends, "_instances", {"cuda-emulated": backends.get_backend("cuda-emulated")}
    )
    engines = [n for n, entry in backends.REGISTRY.items() if entry.engine]
    gone = {n: f"backend {n!r} is not available: test" for n in engines}
    monkeypatch.setattr(backends, "_unavailable", gone)
    with pytest.raises(BackendUnavailableError, match="no backend can run here"):
        backends.get_backend("auto")


def test_the_cache_folder_and_the_hash_of_what_is_built(monkeypatch, tmp_path):
    """$BPGPU_CACHE_DIR, else $XDG_CACHE_HOME/bpgpu, else ~/.cache/bpgpu; the library's name
    changes with the compiler ($CXX) and with any source."""
    monkeypatch.delenv("BPGPU_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cuda_emulated.cache_dir() == tmp_path / "home" / ".cache" / "bpgpu"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cuda_emulated.cache_dir() == tmp_path / "xdg" / "bpgpu"
    monkeypatch.setenv("BPGPU_CACHE_DIR", str(tmp_path / "own"))
    assert cuda_emulated.cache_dir() == tmp_path / "own"

    monkeypatch.setenv("CXX", "/usr/bin/true")
    assert cuda_emulated.compiler() == "/usr/bin/true"
    source = tmp_path / "one.cu"
    source.write_text("// one\n")
    path = cuda_emulated.library_path("g++", [source], instrumented=False)
    assert path.parent == tmp_path / "own" and path.name.startswith("cuda-emulated-plain-")
    assert cuda_emulated.library_path("g++", [source], instrumented=False) == path
    assert cuda_emulated.library_path("clang++", [source], instrumented=False) != path
    assert cuda_emulated.library_path("g++", [source], instrumented=True) != path
    source.write_text("// two\n")
    assert cuda_emulated.library_path("g++", [source], instrumented=False) != path
