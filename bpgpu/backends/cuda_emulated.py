"""The "cuda-emulated" backend: the CUDA C kernels of ``kernels/`` run on the CPU.

Every ``kernels/*.cu`` is compiled as C++ with ``kernels/cpu/cuda_cpu.h`` standing in for the
CUDA built-ins (a block's threads run as fibers, ``__syncthreads`` is a barrier between them)
and linked with ``kernels/cpu/launch.cpp`` into a shared library, built on first use with the
system's C++ compiler and cached. The ops are ``KernelOps``, the very launch code the CuPy
backend runs on a GPU, here on NumPy arrays. It checks the kernels' arithmetic, indexing, tails
and launch geometry without a GPU (slow: for tests, debugging and teaching); it says nothing
about their speed or about races between real threads. ``auto`` never picks it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from pathlib import Path

import numpy as np

from bpgpu.backends.base import BackendUnavailableError, HostMemory
from bpgpu.backends.cuda_launch import Geometry, KernelOps
from bpgpu.backends.cuda_source import defines, families, family_source, kernel_dir

#: the optimisation level of the build: -O1 keeps the build short and the kernels fast enough
_FLAGS = ("-O1", "-std=c++17", "-shared", "-fPIC")


def compiler() -> str | None:
    """The C++ compiler to build with: $CXX, else g++ or clang++ on PATH."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


def cpu_dir() -> Path:
    return kernel_dir() / "cpu"


def build_command(cxx: str, output: Path) -> list[str]:
    """The compiler command that builds the emulation library into ``output``."""
    sources = [str(family_source(f)) for f in families()]
    return [
        cxx,
        *_FLAGS,
        *defines(),
        f"-I{kernel_dir()}",
        "-include",
        str(cpu_dir() / "cuda_cpu.h"),
        "-x",
        "c++",
        *sources,
        str(cpu_dir() / "launch.cpp"),
        "-o",
        str(output),
    ]


def cache_dir() -> Path:
    """Where built libraries are kept: $BPGPU_CACHE_DIR, else $XDG_CACHE_HOME/bpgpu or
    ~/.cache/bpgpu."""
    folder = os.environ.get("BPGPU_CACHE_DIR")
    if folder:
        return Path(folder)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bpgpu"


def _library_path(cxx: str) -> Path:
    """The cached library's path, named by the hash of everything that goes into it."""
    h = hashlib.sha256(" ".join(build_command(cxx, Path("out"))).encode())
    for path in sorted([*kernel_dir().glob("*.cu*"), *cpu_dir().iterdir()]):
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    return cache_dir() / f"cuda-emulated-{h.hexdigest()[:20]}.so"


_build_lock = threading.Lock()


def build(cxx: str) -> Path:
    """The emulation library, built now unless the cache holds it (an atomic rename puts a
    finished build in place, so a build that fails or is killed leaves nothing behind)."""
    path = _library_path(cxx)
    with _build_lock:
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".building-", suffix=".so")
        os.close(fd)
        cmd = build_command(cxx, Path(tmp))
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(
                    "building the CPU emulation of the CUDA kernels failed:\n"
                    f"{' '.join(cmd)}\n{done.stderr[-4000:]}"
                )
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


class CudaEmulatedBackend(HostMemory, KernelOps):
    """KernelOps on NumPy arrays, launching the C++-compiled kernels.

    ``target_blocks``: the device size the launcher plans for (a weight gradient over few
    weight tiles and a long batch splits the batch below it), by default that of a small GPU.
    ``launched`` counts the kernels run, by name.
    """

    name = "cuda-emulated"
    simulated = True

    @classmethod
    def probe(cls) -> None:
        if compiler() is None:
            raise BackendUnavailableError(
                "no C++ compiler (set CXX, or install g++ or clang++) to build the CPU "
                "emulation of the CUDA kernels"
            )
        if not (cpu_dir() / "launch.cpp").is_file():
            raise BackendUnavailableError(
                f"{cpu_dir()} lacks the CPU emulation sources (launch.cpp, cuda_cpu.h)"
            )

    def __init__(self, target_blocks: int = 8) -> None:
        super().__init__()
        self._blocks = target_blocks
        self._lib: ctypes.CDLL | None = None
        self.launched: Counter[str] = Counter()

    def describe(self) -> dict[str, str]:
        cxx = compiler() or "none"
        return {
            **super().describe(),
            "device": "the CPU, through the emulation of kernels/cpu (slow; never chosen by auto)",
            "compiler": cxx,
            "library": str(_library_path(cxx)),
        }

    def library(self) -> ctypes.CDLL:
        """The emulation library, built on first use."""
        if self._lib is None:
            cxx = compiler()
            if cxx is None:
                raise BackendUnavailableError("no C++ compiler to build the CPU emulation")
            lib = ctypes.CDLL(str(build(cxx)))
            lib.bpgpu_cpu_launch.restype = ctypes.c_int
            lib.bpgpu_cpu_kernel_count.restype = ctypes.c_int
            lib.bpgpu_cpu_kernel_name.restype = ctypes.c_char_p
            self._lib = lib
        return self._lib

    def kernel_names(self) -> list[str]:
        """Every entry point the built library registered."""
        lib = self.library()
        return sorted(
            lib.bpgpu_cpu_kernel_name(i).decode() for i in range(lib.bpgpu_cpu_kernel_count())
        )

    def _target_blocks(self) -> int:
        return self._blocks

    def _upload(self, dst: np.ndarray, host: np.ndarray) -> None:
        np.copyto(dst, host)

    def _launch(self, name: str, family: str, geometry: Geometry, args: tuple, shapes: str) -> None:
        grid, block = geometry
        values: list[ctypes._SimpleCData] = []
        for a in args:
            if isinstance(a, np.ndarray):
                values.append(ctypes.c_void_p(a.ctypes.data))
            elif isinstance(a, np.int32):
                values.append(ctypes.c_int(int(a)))
            else:
                raise TypeError(f"kernel {name}: argument of type {type(a).__name__}")
        argv = (ctypes.c_void_p * len(values))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values]
        )
        rc = self.library().bpgpu_cpu_launch(
            name.encode(), (ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), argv
        )
        if rc != 0:
            raise RuntimeError(
                f"kernel {name} (family {family}) is not in the CPU emulation build "
                f"(grid={grid}, block={block}, {shapes})"
            )
        self.launched[name] += 1
