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
from bpgpu.backends.cuda_source import (
    NUMERICS,
    TUNABLES,
    defines,
    families,
    family_source,
    fatbin_problems,
    header_tunables,
    kernel_dir,
    nvrtc_options,
)

ARCHS = ("80", "90")


def nvrtc_compile(source: Path, arch: str, extra: tuple[str, ...] = ()) -> bytes:
    """``source`` compiled by NVRTC with the options of the cupy backend's NVRTC path (and
    ``extra`` after them, as CuPy appends its own): a cubin for sm_ARCH, PTX for compute_ARCH."""
    nvrtc = pytest.importorskip("cuda.bindings.nvrtc", reason="cuda-bindings is not installed")
    err, prog = nvrtc.nvrtcCreateProgram(source.read_bytes(), source.name.encode(), 0, [], [])
    assert err == nvrtc.nvrtcResult.NVRTC_SUCCESS, err
    options = [f"--gpu-architecture={arch}", *nvrtc_options(), *extra]
    try:
        (err,) = nvrtc.nvrtcCompileProgram(prog, len(options), [o.encode() for o in options])
        _, size = nvrtc.nvrtcGetProgramLogSize(prog)
        log = b" " * size
        nvrtc.nvrtcGetProgramLog(prog, log)
        if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            pytest.fail(
                f"NVRTC failed on {source.name} for {arch}:\n{log.decode(errors='replace')}"
            )
        ptx = arch.startswith("compute_")
        get_size, get = (
            (nvrtc.nvrtcGetPTXSize, nvrtc.nvrtcGetPTX)
            if ptx
            else (nvrtc.nvrtcGetCUBINSize, nvrtc.nvrtcGetCUBIN)
        )
        _, size = get_size(prog)
        out = b" " * size
        get(prog, out)
        return out
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("family", families())
def test_nvrtc_compiles(family, arch):
    cubin = nvrtc_compile(family_source(family), f"sm_{arch}")
    assert cubin[:4] == b"\x7fELF"
    missing = [name for name in entry_points()[family] if name.encode() + b"\0" not in cubin]
    assert not missing, f"{family} for sm_{arch} lacks the entry points {missing}"


def test_header_defaults_match_the_loader():
    """The tunables the Python side passes are the headers' defaults (CMake relies on them)."""
    assert header_tunables() == TUNABLES


def test_the_broken_kernels_of_the_emulation_tests_are_cuda():
    """tests/broken_kernels.cu (the faults the emulation's checks must catch) is real CUDA."""
    cubin = nvrtc_compile(Path(__file__).with_name("broken_kernels.cu"), "sm_90")
    assert b"missing_barrier\0" in cubin and b"global_two_writers\0" in cubin


#: a float32 arithmetic instruction of PTX (with its modifiers), e.g. add.rn.ftz.f32
F32_OP = re.compile(
    r"^\s*(?:@!?%p\d+\s+)?((?:add|sub|mul|fma|div|ex2|lg2|rcp|sqrt|max|min|neg|abs|setp)"
    r"[.\w]*\.f32)\b",
    re.MULTILINE,
)


def nvcc_ptx(source: Path, tmp: Path, flags: tuple[str, ...]) -> str:
    nvcc = _nvcc()
    if nvcc is None:
        pytest.skip("no nvcc on PATH or in /usr/local/cuda/bin")
    out = tmp / f"{source.stem}.ptx"
    cmd = [nvcc, "-ptx", "-arch=compute_90", "-std=c++17", f"-I{kernel_dir()}", *defines()]
    done = subprocess.run(
        [*cmd, *flags, str(source), "-o", str(out)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    return out.read_text()


def test_nvrtc_and_the_fatbin_build_flush_float32_subnormals_alike(tmp_path):
    """CuPy appends -ftz=true to every NVRTC compile; nvcc's default is -ftz=false. The fatbin
    build passes cuda_source.NUMERICS (CMakeLists.txt, checked by its manifest), so both paths
    compile every float32 instruction flushing subnormals. The output layer has the most
    float32 math (exp, log, division); without the flag nvcc's PTX differs."""
    source = family_source("output")
    nvrtc = nvrtc_compile(source, "compute_90", ("-ftz=true",)).decode(errors="replace")
    fatbin = nvcc_ptx(source, tmp_path, NUMERICS)
    default = nvcc_ptx(source, tmp_path, ())
    ops = {name: F32_OP.findall(ptx) for name, ptx in [("nvrtc", nvrtc), ("nvcc", fatbin)]}
    for name, found in ops.items():
        assert len(found) > 100, f"{name}: too few float32 instructions found: the pattern"
        plain = sorted({op for op in found if ".ftz" not in op})
        assert not plain, f"{name} PTX has float32 instructions without .ftz: {plain}"
    assert any(".ftz" not in op for op in F32_OP.findall(default)), "nvcc flushes by default?"


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


def _nvcc() -> str | None:
    return shutil.which("nvcc") or next(
        (p for p in ["/usr/local/cuda/bin/nvcc"] if os.path.exists(p)), None
    )


@pytest.fixture(scope="session")
def cmake_build(tmp_path_factory):
    cmake = _cmake()
    if cmake is None:
        pytest.skip("no cmake >= 3.27 (pip install cmake): the fatbin-only build needs it")
    nvcc = _nvcc()
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
    compile_all = [cmake, "--build", str(build), f"-j{os.cpu_count() or 2}", "--verbose"]
    for cmd in (configure, compile_all):
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


def test_cmake_builds_with_the_numerics_and_writes_a_manifest_bpgpu_accepts(cmake_build):
    """Every nvcc compile of the build gets the NVRTC path's numerics flags, and the manifest
    it writes beside the fatbins fits these sources, tunables and flags."""
    build, log = cmake_build
    compiles = [line for line in log.splitlines() if "nvcc" in line and " -fatbin " in line]
    assert len(compiles) >= len(families()), "the verbose build log shows no nvcc compiles"
    assert all(all(flag in line for flag in NUMERICS) for line in compiles), compiles[0]
    assert fatbin_problems(build / "fatbin") == []
