"""The "cuda-emulated" backend: the CUDA C kernels of ``kernels/`` run on the CPU.

Every ``kernels/*.cu`` is compiled as its own C++ translation unit with
``kernels/cpu/cuda_cpu.h`` standing in for the CUDA built-ins (a block's threads run as fibers,
``__syncthreads`` is a barrier between them) and linked with ``kernels/cpu/launch.cpp`` into a
shared library, built on first use with the system's C++ compiler and cached. The ops are
``KernelOps``, the very launch code the CuPy backend runs on a GPU, here on NumPy arrays. It
checks the kernels' arithmetic, indexing, tails and launch geometry without a GPU (slow: for
tests, debugging and teaching), and, as a sanitizer, their barriers and memory hazards:

- ``schedule``: the order of a block's threads in each round between barriers, and of the grid's
  blocks: ``ascending``, ``descending`` or ``random[:SEED]`` (a permutation drawn afresh every
  round). Shared memory is filled with 0xFF bytes (NaN) before every block.
- ``checks``: ``synccheck`` (cheap, on by default), ``racecheck``, ``initcheck``, ``memcheck``
  (named after compute-sanitizer's tools; the last three take the build whose kernels call an
  access hook on every load and store), or ``"all"``. A failed check raises
  ``KernelCheckError`` naming the kernel, block, threads, address and source lines.

The defaults come from ``BPGPU_EMULATION_SCHEDULE`` and ``BPGPU_EMULATION_CHECKS``, so any test
or script runs under the sanitizing emulation unchanged. It says nothing about speed; ``auto``
never picks it.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np

from bpgpu.backends.base import BackendUnavailableError, HostMemory
from bpgpu.backends.cuda_launch import Geometry, KernelOps
from bpgpu.backends.cuda_source import defines, families, family_source, kernel_dir

#: the orders threads and blocks run in (the enum of kernels/cpu/launch.cpp, in its order)
SCHEDULES = ("ascending", "descending", "random")
_T = TypeVar("_T")

#: the checks and their bits in launch.cpp's ``checks``
CHECKS = {"synccheck": 1, "racecheck": 2, "initcheck": 4, "memcheck": 8}
#: the checks that need the kernels' loads and stores to call launch.cpp's hooks
INSTRUMENTED_CHECKS = ("racecheck", "initcheck", "memcheck")

#: every translation unit: -O1 keeps the build short and the kernels fast enough; hidden
#: visibility keeps two builds in one process apart (launch.cpp exports its C interface)
_FLAGS = ("-O1", "-std=c++17", "-fPIC", "-fvisibility=hidden")
#: the kernels of the instrumented build: GCC's ThreadSanitizer instrumentation (a call per load
#: and store) without its runtime, whose hooks launch.cpp defines; -g lets messages name lines
_INSTRUMENT = ("-g", "-fsanitize=thread")
#: linking: every symbol resolved now (a missing hook fails the build, not the first launch)
_LINK = ("-shared", "-Wl,-z,defs")


class KernelCheckError(RuntimeError):
    """A check of the emulation (synccheck, racecheck, initcheck, memcheck) failed."""


def compiler() -> str | None:
    """The C++ compiler to build with: $CXX, else g++ or clang++ on PATH."""
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("clang++")


def cpu_dir() -> Path:
    return kernel_dir() / "cpu"


def kernel_sources() -> tuple[Path, ...]:
    """The kernel families' sources: what the backend's library is built from."""
    return tuple(family_source(f) for f in families())


def build_commands(
    cxx: str, sources: Sequence[Path], instrumented: bool, objects: Path, output: Path
) -> list[list[str]]:
    """The compiler commands that build the emulation library into ``output``: one per
    translation unit (objects in ``objects``), then the link."""
    kernel_flags = [*_FLAGS, *(_INSTRUMENT if instrumented else ()), *defines()]
    compiles = [
        [
            cxx,
            *kernel_flags,
            f"-I{kernel_dir()}",
            "-include",
            str(cpu_dir() / "cuda_cpu.h"),
            "-x",
            "c++",
            "-c",
            str(source),
            "-o",
            str(objects / f"{i}-{source.stem}.o"),
        ]
        for i, source in enumerate(sources)
    ]
    launcher = [
        cxx,
        *_FLAGS,
        f"-DBPGPU_CPU_INSTRUMENTED={int(instrumented)}",
        "-c",
        str(cpu_dir() / "launch.cpp"),
        "-o",
        str(objects / "launch.o"),
    ]
    # launch.o first: where a template instance (std::string, ...) is in both, the linker keeps
    # the first, so the launcher's own code never runs instrumented
    link = [cxx, *_LINK, *(c[-1] for c in [launcher, *compiles]), "-o", str(output)]
    return [*compiles, launcher, link]


def cache_dir() -> Path:
    """Where built libraries are kept: $BPGPU_CACHE_DIR, else $XDG_CACHE_HOME/bpgpu or
    ~/.cache/bpgpu."""
    folder = os.environ.get("BPGPU_CACHE_DIR")
    if folder:
        return Path(folder)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bpgpu"


def library_path(cxx: str, sources: Sequence[Path], instrumented: bool) -> Path:
    """The cached library's path, named by the hash of everything that goes into it."""
    commands = build_commands(cxx, sources, instrumented, Path("obj"), Path("out"))
    h = hashlib.sha256(repr(commands).encode())
    # the headers the sources may include: the kernels', and any beside the sources
    folders = {kernel_dir(), *(s.parent for s in sources)}
    headers = [*(h for d in folders for h in d.glob("*.cuh")), *cpu_dir().iterdir()]
    for path in sorted({*headers, *sources}):
        if path.is_file():
            h.update(path.name.encode())
            h.update(path.read_bytes())
    kind = "instrumented" if instrumented else "plain"
    return cache_dir() / f"cuda-emulated-{kind}-{h.hexdigest()[:20]}.so"


_build_lock = threading.Lock()


def build(cxx: str, sources: Sequence[Path] | None = None, instrumented: bool = False) -> Path:
    """The emulation library of ``sources`` (by default the kernel families), built now unless
    the cache holds it. Translation units compile in parallel; an atomic rename puts a finished
    build in place, so a build that fails or is killed leaves nothing behind."""
    sources = tuple(sources) if sources is not None else kernel_sources()
    path = library_path(cxx, sources, instrumented)
    with _build_lock:
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=path.parent, prefix=".building-") as tmp:
            output = Path(tmp) / path.name
            *compiles, link = build_commands(cxx, sources, instrumented, Path(tmp), output)
            with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
                for done in [*pool.map(_run, compiles), _run(link)]:
                    if done.returncode != 0:
                        raise RuntimeError(
                            "building the CPU emulation of the CUDA kernels failed:\n"
                            f"{' '.join(done.args)}\n{done.stderr[-4000:]}"
                        )
            os.replace(output, path)
    return path


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def parse_schedule(spec: str) -> tuple[int, int]:
    """(index in SCHEDULES, seed) of "ascending", "descending", "random" or "random:SEED"."""
    kind, _, seed = spec.partition(":")
    if kind not in SCHEDULES or (seed and kind != "random") or not (seed or "0").isdigit():
        raise ValueError(
            f"schedule must be one of {', '.join(SCHEDULES)} or random:SEED; got {spec!r}"
        )
    return SCHEDULES.index(kind), int(seed or 0)


def parse_checks(checks: str | Iterable[str]) -> tuple[str, ...]:
    """The checks named by "all" (or "1"), "none" (or "0"), a comma-separated string or an
    iterable of names."""
    if isinstance(checks, str):
        checks = {"all": "all", "1": "all", "0": "none"}.get(checks.strip(), checks)
        checks = CHECKS if checks == "all" else [c for c in checks.split(",") if c != "none"]
    names = tuple(dict.fromkeys(c.strip() for c in checks if c.strip()))
    unknown = [c for c in names if c not in CHECKS]
    if unknown:
        raise ValueError(f"checks must be among {', '.join(CHECKS)} (or 'all'); got {unknown}")
    return names


def _from_environment(
    parse: Callable[[str], object], given: _T | None, variable: str, default: str
) -> _T | str:
    """``given``, else the environment's ``variable``, else ``default``; a value the
    environment gives that ``parse`` refuses raises a ValueError naming the variable."""
    if given is not None:
        return given
    value = os.environ.get(variable) or default
    try:
        parse(value)
    except ValueError as exc:
        raise ValueError(f"{variable}={value!r} in the environment: {exc}") from None
    return value


class _Options(ctypes.Structure):
    """struct bpgpu_cpu_options of kernels/cpu/launch.cpp."""

    _fields_ = [
        ("schedule", ctypes.c_int),
        ("checks", ctypes.c_uint),
        ("rng", ctypes.c_uint64),
        ("arrays", ctypes.POINTER(ctypes.c_uint64)),
        ("nargs", ctypes.c_int),
    ]


#: launch.cpp keeps the running launch in globals: one launch at a time per process
_launch_lock = threading.Lock()


def source_lines(message: str, library: Path) -> str:
    """``message`` with each {pc:HEX} (an offset into ``library``) replaced by its source line
    (addr2line, from the instrumented build's debug information) and paths under the
    repository shortened."""
    offsets = re.findall(r"\{pc:([0-9a-f]+)\}", message)
    lines: dict[str, str] = {}
    tool = shutil.which("addr2line")
    if offsets and tool:
        cmd = [tool, "-e", str(library), "-a", "-p", "-i", *(f"0x{o}" for o in offsets)]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        for line in done.stdout.splitlines():
            found = re.match(r"0x0*([0-9a-f]+): (.*)$", line)
            if found:  # the first line of an address is its innermost inlined frame
                lines[found[1]] = found[2].split(" (discriminator")[0]
    for o in offsets:
        message = message.replace(f"{{pc:{o}}}", lines.get(o.lstrip("0"), f"library offset 0x{o}"))
    return message.replace(f"{kernel_dir().parent}/", "")


class CudaEmulatedBackend(HostMemory, KernelOps):
    """KernelOps on NumPy arrays, launching the C++-compiled kernels.

    ``target_blocks``: the device size the launcher plans for (a weight gradient over few
    weight tiles and a long batch splits the batch below it), by default that of a small GPU.
    ``schedule`` and ``checks``: see the module's docstring. ``sources``: the ``.cu`` files to
    build (the kernel families unless given; tests build their own). ``launched`` counts the
    kernels run, by name.
    """

    name = "cuda-emulated"
    simulated = True

    @classmethod
    def probe(cls) -> None:
        """Raises BackendUnavailableError saying what is missing: a C++ compiler, or the
        sources the library is built from (an installed wheel may lack them). Nothing is
        built here, so ``bpgpu info`` stays quick; the first launch builds."""
        cxx = compiler()
        if cxx is None:
            raise BackendUnavailableError(
                "no C++ compiler (set CXX, or install g++ or clang++) to build the CPU "
                "emulation of the CUDA kernels"
            )
        if shutil.which(cxx) is None:  # CXX names a program that is not there
            raise BackendUnavailableError(
                f"the C++ compiler CXX={cxx!r} is not an executable program; set CXX to one, "
                "or unset it to take g++ or clang++ from PATH"
            )
        if not kernel_sources():
            raise BackendUnavailableError(
                f"no kernel sources (*.cu) in {kernel_dir()} to build the CPU emulation from"
            )
        missing = [n for n in ("launch.cpp", "cuda_cpu.h") if not (cpu_dir() / n).is_file()]
        if missing:
            raise BackendUnavailableError(
                f"{cpu_dir()} lacks the CPU emulation sources ({', '.join(missing)})"
            )

    def __init__(
        self,
        target_blocks: int = 8,
        schedule: str | None = None,
        checks: str | Iterable[str] | None = None,
        sources: Sequence[Path] | None = None,
    ) -> None:
        super().__init__()
        self._blocks = target_blocks
        self.schedule = _from_environment(
            parse_schedule, schedule, "BPGPU_EMULATION_SCHEDULE", "ascending"
        )
        kind, seed = parse_schedule(self.schedule)
        self.checks = parse_checks(
            _from_environment(parse_checks, checks, "BPGPU_EMULATION_CHECKS", "synccheck")
        )
        self.instrumented = any(c in INSTRUMENTED_CHECKS for c in self.checks)
        self._sources = tuple(sources) if sources is not None else kernel_sources()
        self._options = _Options(kind, sum(CHECKS[c] for c in self.checks), seed, None, 0)
        self._lib: ctypes.CDLL | None = None
        self._path: Path | None = None
        self.launched: Counter[str] = Counter()

    def describe(self) -> dict[str, str]:
        cxx = compiler() or "none"
        return {
            **super().describe(),
            "device": "the CPU, through the emulation of kernels/cpu (slow; never chosen by auto)",
            "compiler": cxx,
            "library": str(library_path(cxx, self._sources, self.instrumented)),
            "schedule": self.schedule,
            "checks": ",".join(self.checks) or "none",
        }

    def library(self) -> ctypes.CDLL:
        """The emulation library, built on first use."""
        if self._lib is None:
            cxx = compiler()
            if cxx is None:
                raise BackendUnavailableError("no C++ compiler to build the CPU emulation")
            self._path = build(cxx, self._sources, self.instrumented)
            lib = ctypes.CDLL(str(self._path))
            lib.bpgpu_cpu_launch.restype = ctypes.c_int
            lib.bpgpu_cpu_kernel_count.restype = ctypes.c_int
            lib.bpgpu_cpu_kernel_name.restype = ctypes.c_char_p
            lib.bpgpu_cpu_error.restype = ctypes.c_char_p
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
        extents: list[int] = []  # each argument's array [begin, end), for memcheck
        for a in args:
            if isinstance(a, np.ndarray):
                values.append(ctypes.c_void_p(a.ctypes.data))
                extents += [a.ctypes.data, a.ctypes.data + a.nbytes]
            elif isinstance(a, np.int32):
                values.append(ctypes.c_int(int(a)))
                extents += [0, 0]
            else:
                raise TypeError(f"kernel {name}: argument of type {type(a).__name__}")
        argv = (ctypes.c_void_p * len(values))(
            *[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values]
        )
        arrays = (ctypes.c_uint64 * len(extents))(*extents)
        lib = self.library()
        with _launch_lock:
            self._options.arrays, self._options.nargs = arrays, len(values)
            rc = lib.bpgpu_cpu_launch(
                name.encode(),
                (ctypes.c_uint * 3)(*grid),
                (ctypes.c_uint * 3)(*block),
                argv,
                ctypes.byref(self._options),
            )
            message = lib.bpgpu_cpu_error().decode() if rc == -2 else ""
        if rc == -1:
            raise RuntimeError(
                f"kernel {name} (family {family}) is not in the CPU emulation build "
                f"(grid={grid}, block={block}, {shapes})"
            )
        if rc != 0:
            assert self._path is not None
            described = ", ".join(
                f"{i}: {a.dtype} {a.shape}" if isinstance(a, np.ndarray) else f"{i}: {int(a)}"
                for i, a in enumerate(args)
            )
            raise KernelCheckError(
                f"{source_lines(message, self._path)}\n(kernel {name}, grid={grid}, "
                f"block={block}, {shapes}, schedule {self.schedule}; arguments {described})"
            )
        self.launched[name] += 1
