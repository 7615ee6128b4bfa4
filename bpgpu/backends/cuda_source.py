"""Where the CUDA C sources live, what they are called, and what every build of them passes.

The sources are ``kernels/*.cu`` in a checkout and the package data ``bpgpu.kernels`` when
installed. Each ``.cu`` file is one kernel family, compiled as one module (an NVRTC module, a
CMake fatbin, a translation unit of the CPU emulation), so the families are the files: nothing
lists them. Their entry points are listed once, in ``bpgpu.backends.cuda_launch``. No CUDA
import here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from importlib import resources
from pathlib import Path

#: the tunables every build passes explicitly (kernels/common.cuh holds the same defaults)
TUNABLES: dict[str, int] = {
    "TILE_M": 64,
    "TILE_N": 64,
    "TILE_K": 16,
    "THREAD_M": 4,
    "THREAD_N": 4,
    "ROW_THREADS": 128,
    "REDUCE_THREADS": 256,
    "ELEMENT_THREADS": 256,
}


def kernel_dir() -> Path:
    """The folder holding the ``.cu`` sources (installed package data, else the checkout's)."""
    try:
        installed = Path(str(resources.files("bpgpu.kernels")))
        if (installed / "common.cuh").is_file():
            return installed
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / "kernels"


def families() -> list[str]:
    """The kernel families: the stems of ``kernels/*.cu``, sorted."""
    return sorted(p.stem for p in kernel_dir().glob("*.cu"))


def family_source(family: str) -> Path:
    """The source file of a kernel family."""
    return kernel_dir() / f"{family}.cu"


def source_files() -> list[Path]:
    """Every kernel source and header, sorted by name."""
    d = kernel_dir()
    return sorted([*d.glob("*.cu"), *d.glob("*.cuh")])


def sources_hash() -> str:
    """sha256 over the kernel sources and the tunables: names a compiled module in a cache."""
    h = hashlib.sha256(repr(sorted(TUNABLES.items())).encode())
    for path in source_files():
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def kernel_file_hashes() -> dict[str, str]:
    """sha256 of each kernel source, keyed ``kernels/<name>`` as the benchmark's report.json
    keys them under ``machine.kernels_sha256``."""
    return {f"kernels/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest() for p in source_files()}


def defines() -> list[str]:
    """``-DNAME=value`` for every tunable."""
    return [f"-D{k}={v}" for k, v in TUNABLES.items()]


def header_tunables() -> dict[str, int]:
    """The tunables' defaults as kernels/common.cuh defines them (``#define NAME value``)."""
    text = (kernel_dir() / "common.cuh").read_text()
    found = re.findall(r"^#define (\w+) (\d+)\b", text, flags=re.MULTILINE)
    return {name: int(value) for name, value in found if name in TUNABLES}


#: the compiler flags of every GPU build that change the arithmetic. CuPy appends -ftz=true to
#: every NVRTC compile (cupy.cuda.compiler, after the caller's options; NVRTC takes the last), so
#: the fatbin build passes the same (CMakeLists.txt records it in the fatbins' manifest) and the
#: two load paths flush float32 subnormals alike.
NUMERICS: tuple[str, ...] = ("-ftz=true",)


def nvrtc_options() -> tuple[str, ...]:
    """The options of every NVRTC compile of a kernel family (without the architecture): the
    language, the include folder, the tunables, the numerics, and the sha256 of every kernel
    source as a macro no source reads. CuPy's compile cache keys on a family's own text and on
    these options, so the hash makes an edited header (gemm.cuh, ...) compile anew rather than
    reuse a cubin of the old one."""
    return (
        "-std=c++17",
        f"-I{kernel_dir()}",
        *defines(),
        *NUMERICS,
        f"-DBPGPU_SOURCES_SHA256={sources_hash()}",
    )


# ---- the ahead-of-time build: CMake's fatbins and their manifest -----------------------------

#: how the cupy backend loads kernels: BPGPU_CUDA_LOAD = auto (the fatbins when built, else
#: NVRTC), fatbin (the fatbins or an error) or nvrtc (never the fatbins)
LOAD_MODES = ("auto", "fatbin", "nvrtc")
MANIFEST = "manifest.json"


class FatbinMismatchError(RuntimeError):
    """The fatbins on disk were not built from these sources, tunables and flags."""


def fatbin_dir() -> Path:
    """Where CMake's fatbins are looked for: $BPGPU_FATBIN_DIR, else build/fatbin of the
    checkout."""
    return Path(os.environ.get("BPGPU_FATBIN_DIR") or kernel_dir().parent / "build" / "fatbin")


def fatbin_problems(folder: Path) -> list[str]:
    """Why the fatbins in ``folder`` do not fit these sources (none: they do). CMakeLists.txt
    writes ``manifest.json`` beside them: the sha256 of each kernel source, the tunables it was
    given (BPGPU_CUDA_DEFINES, over the defaults of kernels/common.cuh), the numerics flags."""
    missing = [f for f in families() if not (folder / f"{f}.fatbin").is_file()]
    if missing:
        return [f"no fatbin of {', '.join(missing)}"]
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files, given = manifest["files_sha256"], manifest["defines"]
        flags = tuple(manifest["flags"])
        built = header_tunables() | {
            name: int(value) for name, _, value in (d.partition("=") for d in given)
        }
    except (OSError, ValueError, KeyError, TypeError) as exc:
        return [f"no readable {MANIFEST} ({type(exc).__name__}: {exc})"]
    problems = []
    current = kernel_file_hashes()
    changed = sorted(k for k in current.keys() | files.keys() if current.get(k) != files.get(k))
    if changed:
        problems.append(f"built from other sources ({', '.join(changed)} changed since)")
    tunables = sorted(
        f"{k}={built.get(k)} (bpgpu launches with {v})"
        for k, v in TUNABLES.items()
        if built.get(k) != v
    )
    if tunables:
        problems.append(f"built with other tunables: {', '.join(tunables)}")
    if flags != NUMERICS:
        problems.append(f"built with the flags {list(flags)}, not {list(NUMERICS)}")
    return problems


def kernel_load() -> tuple[str, Path | None]:
    """("fatbin", folder) or ("nvrtc", None): how the cupy backend gets its modules, by
    BPGPU_CUDA_LOAD. Raises FatbinMismatchError, saying why and what to do, for fatbins that
    do not fit the sources (or none, when BPGPU_CUDA_LOAD=fatbin asks for them)."""
    mode = os.environ.get("BPGPU_CUDA_LOAD") or "auto"
    if mode not in LOAD_MODES:
        raise ValueError(f"BPGPU_CUDA_LOAD must be one of {', '.join(LOAD_MODES)}; got {mode!r}")
    folder = fatbin_dir()
    if mode == "nvrtc" or (mode == "auto" and not any(folder.glob("*.fatbin"))):
        return "nvrtc", None
    problems = fatbin_problems(folder)
    if problems:
        raise FatbinMismatchError(
            f"refusing the fatbins in {folder}: {'; '.join(problems)}. Rebuild them from these "
            'sources with bpgpu\'s tunables (cmake -S . -B build -DBPGPU_CUDA_DEFINES="" && '
            "cmake --build build), or compile with NVRTC instead (BPGPU_CUDA_LOAD=nvrtc, or "
            "remove the folder)"
        )
    return "fatbin", folder


def describe_kernel_load() -> str:
    """kernel_load() in words, for ``describe()``; never raises."""
    try:
        mode, folder = kernel_load()
    except (FatbinMismatchError, ValueError) as exc:
        return f"none: {exc}"
    if mode == "fatbin":
        return f"fatbin ({folder})"
    return "nvrtc (compiled at first use, cached by CuPy)"


def gpu_report_status(report: str | Path = "bench/results/gpu/report.json") -> str:
    """One line saying whether the GPU report at ``report`` was measured on the current kernel
    sources (the per-file sha256 it holds against ``kernel_file_hashes()``). Informational: a
    missing or unreadable report is said, never raised."""
    path = Path(report)
    if not path.is_file():
        return f"GPU report: none at {path}"
    try:
        recorded = json.loads(path.read_text())["machine"]["kernels_sha256"]
        recorded = {k: v for k, v in recorded.items() if re.fullmatch(r"kernels/[^/]+\.cuh?", k)}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        return f"GPU report: {path} holds no per-file kernel hashes ({type(exc).__name__}: {exc})"
    current = kernel_file_hashes()
    changed = sorted(
        k for k in current.keys() | recorded.keys() if current.get(k) != recorded.get(k)
    )
    if not changed:
        return f"GPU report: {path} matches the current kernel sources ({len(current)} files)"
    return f"GPU report: {path} is STALE, changed since it was measured: {', '.join(changed)}"
