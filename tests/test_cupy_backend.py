"""What is particular to the cupy backend's host code (its ops are in the conformance suite,
on a GPU as "cupy" and on the CPU as "cupy-on-emulation"): a fit runs its steps through captured
CUDA graphs whose replays read the current optimizer numbers from device memory. On the CPU the
stand-in for CuPy of tests/fake_cupy.py records and replays the launches; the kernels are the
emulation's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import fake_cupy
import numpy as np
import pytest

import bpgpu
from bpgpu.backends import cuda_source
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


# ---- how modules are loaded: NVRTC options, CMake's fatbins and their manifest ---------------


def _train(xp, steps: int = 3) -> None:
    """A few training steps: every module the step needs gets loaded."""
    X, y = np.random.default_rng(0).normal(size=(24, 5)), np.arange(24) % 3
    net = bpgpu.MLP([5, 7, 3], backend=xp, dtype="float64", seed=0)
    net.fit(X, y, epochs=steps, batch_size=24, optimizer=bpgpu.SGD(lr=0.1))


def test_nvrtc_options_key_every_kernel_source(xp, tmp_path, monkeypatch):
    """CuPy's compile cache keys on a family's own text and the options, so the options carry
    the hash of every kernel source: an edited header compiles anew."""
    _train(xp, 1)
    options = {tuple(m["options"]) for m in fake_cupy.RawModule.made}
    assert options == {cuda_source.nvrtc_options()}
    assert f"-DBPGPU_SOURCES_SHA256={cuda_source.sources_hash()}" in options.pop()
    copy = tmp_path / "kernels"
    shutil.copytree(cuda_source.kernel_dir(), copy)
    monkeypatch.setattr(cuda_source, "kernel_dir", lambda: copy)
    before = cuda_source.nvrtc_options()
    with (copy / "gemm.cuh").open("a") as f:
        f.write("// an edit\n")
    changed = [(b, a) for b, a in zip(before, cuda_source.nvrtc_options(), strict=True) if b != a]
    assert len(changed) == 1 and changed[0][0].startswith("-DBPGPU_SOURCES_SHA256=")


def fatbins(folder: Path, **changes: object) -> Path:
    """A folder of stand-in fatbins (one per family) and the manifest.json CMakeLists.txt would
    write for these sources, with ``changes`` to its fields."""
    folder.mkdir(parents=True, exist_ok=True)
    for family in cuda_source.families():
        (folder / f"{family}.fatbin").write_bytes(b"stand-in")
    manifest = {
        "defines": [],
        "flags": list(cuda_source.NUMERICS),
        "architectures": ["90"],
        "files_sha256": cuda_source.kernel_file_hashes(),
        **changes,
    }
    (folder / cuda_source.MANIFEST).write_text(json.dumps(manifest))
    return folder


def test_matching_fatbins_are_loaded_and_said(tmp_path):
    folder = fatbins(tmp_path / "fatbin", defines=["TILE_K=16"])  # the default, given: fine
    with fake_cupy.cupy_backend(fatbins=str(folder)) as backend:
        assert backend.describe()["kernel_load"] == f"fatbin ({folder})"
        _train(backend)
    assert {m["path"] for m in fake_cupy.RawModule.made} == {
        str(folder / f"{family}.fatbin") for family in cuda_source.families()
    }


STALE = {
    "tunables": (
        {"defines": ["TILE_K=32"]},
        r"built with other tunables: TILE_K=32 \(bpgpu launches with 16\)",
    ),
    "sources": (
        {"files_sha256": {**cuda_source.kernel_file_hashes(), "kernels/gemm.cuh": "0" * 64}},
        r"built from other sources \(kernels/gemm.cuh changed since\)",
    ),
    "flags": ({"flags": []}, r"built with the flags \[\], not \['-ftz=true'\]"),
}


@pytest.mark.parametrize("stale", STALE)
def test_fatbins_of_other_sources_tunables_or_flags_are_refused(tmp_path, monkeypatch, stale):
    changes, why = STALE[stale]
    folder = fatbins(tmp_path / "fatbin", **changes)
    with fake_cupy.cupy_backend(fatbins=str(folder)) as backend:
        assert backend.describe()["kernel_load"].startswith("none: refusing the fatbins")
        with pytest.raises(RuntimeError, match=f"refusing the fatbins in {folder}: {why}"):
            _train(backend)
    monkeypatch.setenv("BPGPU_CUDA_LOAD", "nvrtc")  # asked for: NVRTC, whatever is on disk
    with fake_cupy.cupy_backend(fatbins=str(folder)) as backend:
        _train(backend)
    assert all(m["code"] for m in fake_cupy.RawModule.made)


def test_fatbins_without_a_manifest_or_asked_for_and_absent_are_refused(tmp_path, monkeypatch):
    folder = fatbins(tmp_path / "fatbin")
    (folder / cuda_source.MANIFEST).unlink()
    monkeypatch.setenv("BPGPU_FATBIN_DIR", str(folder))
    with pytest.raises(cuda_source.FatbinMismatchError, match=r"no readable manifest\.json"):
        cuda_source.kernel_load()
    monkeypatch.setenv("BPGPU_FATBIN_DIR", str(tmp_path / "empty"))
    assert cuda_source.kernel_load() == ("nvrtc", None)
    monkeypatch.setenv("BPGPU_CUDA_LOAD", "fatbin")
    with pytest.raises(cuda_source.FatbinMismatchError, match="no fatbin of "):
        cuda_source.kernel_load()
    monkeypatch.setenv("BPGPU_CUDA_LOAD", "sometimes")
    with pytest.raises(ValueError, match="BPGPU_CUDA_LOAD must be one of auto, fatbin, nvrtc"):
        cuda_source.kernel_load()


def test_without_graphs_every_step_launches_eagerly():
    with fake_cupy.cupy_backend(graphs=False) as backend:
        assert backend.describe()["graphs"] == "off"
        _train(backend, 4)
        assert backend._graphs == {}


@pytest.mark.gpu
def test_fatbin_and_nvrtc_modules_train_alike(monkeypatch):
    """On a GPU with fatbins built from these sources: training steps with modules from the
    fatbins and from NVRTC agree (both compile with the same numerics flags; the two
    compilers' versions may differ, so within the float32 tolerance, not bitwise)."""
    from bpgpu.backends.cupy_backend import CupyBackend

    monkeypatch.setenv("BPGPU_CUDA_LOAD", "fatbin")
    try:
        cuda_source.kernel_load()
    except cuda_source.FatbinMismatchError as exc:
        pytest.skip(f"no usable fatbins here: {exc}")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(600, 33)), rng.integers(0, 10, 600)
    runs = {}
    for mode in ("fatbin", "nvrtc"):
        monkeypatch.setenv("BPGPU_CUDA_LOAD", mode)
        xp = CupyBackend()
        assert xp.describe()["kernel_load"].startswith(mode)
        net = bpgpu.MLP([33, 65, 10], activation="tanh", backend=xp, dtype="float32", seed=0)
        net.fit(X, y, epochs=3, batch_size=128, optimizer=bpgpu.Adam(lr=1e-3), seed=1)
        runs[mode] = [w for pair in net.get_weights() for w in pair]
    for i, (a, b) in enumerate(zip(runs["fatbin"], runs["nvrtc"], strict=True)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"parameter {i}")
