"""Every CUDA kernel compiles without a GPU: NVRTC (cuda-bindings) for sm_80 and sm_90, and the
CMake fatbin build with nvcc, whose ptxas report must show no register spills for float32.

These only compile: tests/test_cuda_kernels_cpu.py runs the same sources on the CPU, and
tests/test_cupy_backend_gpu.py runs them on a GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from bpgpu.backends import cuda_source as cs

ARCHS = ("80", "90")


def nvrtc_compile(family: str, arch: str) -> bytes:
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings is not installed")
    source = (cs.kernel_dir() / cs.FAMILIES[family]).read_bytes()
    err, prog = nvrtc.nvrtcCreateProgram(source, cs.FAMILIES[family].encode(), 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
    options = [
        f"--gpu-architecture=sm_{arch}",
        "--std=c++17",
        f"--include-path={cs.kernel_dir()}",
        *cs.defines(),
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
@pytest.mark.parametrize("family", sorted(cs.FAMILIES))
def test_nvrtc_compiles(family, arch):
    cubin = nvrtc_compile(family, arch)
    assert cubin[:4] == b"\x7fELF"
    missing = [name for name in cs.entry_points()[family] if name.encode() + b"\0" not in cubin]
    assert not missing, f"{family} for sm_{arch} lacks the entry points {missing}"


def test_header_defaults_match_the_loader():
    """The tunables the Python side passes are the headers' defaults (CMake relies on them)."""
    text = (cs.kernel_dir() / "common.cuh").read_text()
    for name, value in cs.TUNABLES.items():
        assert re.search(rf"#define {name} {value}\b", text), (
            f"{name} default differs from cuda_source.TUNABLES"
        )


def _cmake() -> str | None:
    cmake = shutil.which("cmake")
    if cmake is None:
        return None
    out = subprocess.run([cmake, "--version"], capture_output=True, text=True, check=False).stdout
    found = re.search(r"(\d+)\.(\d+)", out)
    return cmake if found and (int(found[1]), int(found[2])) >= (3, 27) else None


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
    build = tmp_path_factory.mktemp("cmake-build")
    root = cs.kernel_dir().parent
    if not (root / "CMakeLists.txt").is_file():
        pytest.skip("CMakeLists.txt is in a source checkout, not an installed package")
    configure = [
        cmake,
        "-S",
        str(root),
        "-B",
        str(build),
        f"-DCMAKE_CUDA_COMPILER={nvcc}",
        "-DCMAKE_CUDA_ARCHITECTURES=80;90",
        "-DBPGPU_PTXAS_VERBOSE=ON",
        "-DBPGPU_CPU_EMULATION=OFF",
    ]
    log = ""
    for cmd in (configure, [cmake, "--build", str(build), "-j2"]):
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        log += done.stdout + done.stderr
        if done.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} failed:\n{log[-6000:]}")
    return build, log


def test_cmake_builds_every_fatbin(cmake_build):
    build, _ = cmake_build
    for family, source in cs.FAMILIES.items():
        fatbin = build / "fatbin" / source.replace(".cu", ".fatbin")
        assert fatbin.is_file() and fatbin.stat().st_size > 0, f"no {fatbin}"
        data = fatbin.read_bytes()
        missing = [name for name in cs.entry_points()[family] if name.encode() not in data]
        assert not missing, f"{fatbin.name} lacks {missing}"


def test_ptxas_reports_no_spills_for_float32(cmake_build):
    _, log = cmake_build
    # ptxas -v: "Compiling entry function 'NAME' for 'sm_XX'" ... "N bytes spill stores, M bytes spill loads"
    entries = re.findall(
        r"Compiling entry function '(\w+)' for '(sm_\d+)'.*?(\d+) bytes spill stores, (\d+) bytes spill loads",
        log,
        flags=re.DOTALL,
    )
    seen = {name for name, *_ in entries}
    expected = {name for names in cs.entry_points().values() for name in names}
    assert expected <= seen, f"ptxas reported nothing for {sorted(expected - seen)[:5]}"
    spills = [
        f"{n} ({arch}): {s} B stored, {l} B loaded"
        for n, arch, s, l in entries
        if not n.endswith("_f64") and (int(s) or int(l))
    ]
    assert not spills, "float32 kernels spill registers:\n" + "\n".join(spills)
