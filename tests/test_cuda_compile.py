"""Every CUDA kernel family compiles without a GPU, and holds exactly the entry points
bpgpu/backends/cuda_launch.py lists: NVRTC (cuda-bindings) for sm_80 and sm_90, and the CMake
fatbin build with nvcc, whose ptxas report must show no register spills for float32.

These only compile: the conformance suite runs the same sources on the CPU (backend
"cuda-emulated") and on a GPU (backend "cupy").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bpgpu.backends.cuda_launch import entry_points
from bpgpu.backends.cuda_source import TUNABLES, defines, families, family_source, kernel_dir

ARCHS = ("80", "90")


def nvrtc_compile(family: str, arch: str) -> bytes:
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings is not installed")
    source = family_source(family)
    err, prog = nvrtc.nvrtcCreateProgram(source.read_bytes(), source.name.encode(), 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
    options = [
        f"--gpu-architecture=sm_{arch}",
        "--std=c++17",
        f"--include-path={kernel_dir()}",
        *defines(),
    ]
    try:
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(options), [o.encode() for o in options])
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            pytest.fail(f"NVRTC failed on {family} for sm_{arch}:\n{log.decode(errors='replace')}")
        _, size = nvrtc.nvrtcGetCUBINSize(prog)
        cubin = b" " * size
        nvrtc.nvrtcGetCUBIN(prog, cubin)
        return cubin
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", families())
def test_nvrtc_compiles(family, arch):
    cubin = nvrtc_compile(family, arch)
    assert cubin[:4] == b"\x7fELF"
    missing = [name for name in entry_points()[family] if name.encode() + b"\0" not in cubin]
    assert not missing, f"{family} for sm_{arch} lacks the entry points {missing}"


def test_header_defaults_match_the_loader():
    """The tunables the Python side passes are the headers' defaults (CMake relies on them)."""
    text = (kernel_dir() / "common.cuh").read_text()
    for name, value in TUNABLES.items():
        assert re.search(rf"#define {name} {value}\b", text), (
            f"{name} default differs from cuda_source.TUNABLES"
        )


def _cmake() -> str | None:
    """A cmake of 3.27 or newer: on PATH, or beside this Python (the test extra's wheel lands
    in the virtual environment's bin/, which need not be on PATH)."""
    candidates = [shutil.which("cmake"), str(Path(sys.executable).parent / "cmake")]
    for cmake in candidates:
        if not cmake or not os.path.isfile(cmake):
            continue
        out = subprocess.run([cmake, "--version"], capture_output=True, text=True, check=False)
        found = re.search(r"(\d+)\.(\d+)", out.stdout)
        if found and (int(found[1]), int(found[2])) >= (3, 27):
            return cmake
    return None


@pytest.fixture(scope="session")
def cmake_build(tmp_path_factory):
    cmake = _cmake()
    if cmake is None:
        pytest.skip("no cmake >= 3.27 (pip install cmake): the fatbin-only build needs it")
    nvcc = shutil.which("nvcc") or next(
        (p for p in ["/usr/local/cuda/bin/nvcc"] if os.path.exists(p)), None
    )
    if nvcc is None:
        pytest.skip("no nvcc on PATH or in /usr/local/cuda/bin")
    root = kernel_dir().parent
    if not (root / "CMakeLists.txt").is_file():
        pytest.skip("CMakeLists.txt is in a source checkout, not an installed package")
    build = tmp_path_factory.mktemp("cmake-build")
    configure = [
        cmake,
        "-S",
        str(root),
        "-B",
        str(build),
        f"-DCMAKE_CUDA_COMPILER={nvcc}",
        "-DCMAKE_CUDA_ARCHITECTURES=80;90",
        "-DBPGPU_PTXAS_VERBOSE=ON",
    ]
    log = ""
    for cmd in (configure, [cmake, "--build", str(build), f"-j{os.cpu_count() or 2}"]):
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        log += done.stdout + done.stderr
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed:\n{log[-6000:]}")
    return build, log


def test_cmake_builds_a_fatbin_per_family_with_its_entry_points(cmake_build):
    build, _ = cmake_build
    built = sorted(p.stem for p in (build / "fatbin").glob("*.fatbin"))
    assert built == families(), "CMakeLists.txt builds other families than kernels/*.cu"
    for family, names in entry_points().items():
        data = (build / "fatbin" / f"{family}.fatbin").read_bytes()
        missing = [name for name in names if name.encode() not in data]
        assert not missing, f"{family}.fatbin lacks {missing}"


def test_ptxas_reports_no_spills_for_float32(cmake_build):
    _, log = cmake_build
    # ptxas -v: "Compiling entry function 'NAME' for 'sm_XX'" ... "N bytes spill stores,
    # M bytes spill loads"
    entries = re.findall(
        r"Compiling entry function '(\w+)' for '(sm_\d+)'.*?"
        r"(\d+) bytes spill stores, (\d+) bytes spill loads",
        log,
        flags=re.DOTALL,
    )
    seen = {name for name, *_ in entries}
    expected = {name for names in entry_points().values() for name in names}
    assert expected <= seen, f"ptxas reported nothing for {sorted(expected - seen)[:5]}"
    spills = [
        f"{n} ({arch}): {s} B stored, {l} B loaded"
        for n, arch, s, l in entries
        if not n.endswith("_f64") and (int(s) or int(l))
    ]
    assert not spills, "float32 kernels spill registers:\n" + "\n".join(spills)
