"""Where the CUDA C kernels live, what their entry points are called, and how they are launched.

Shared by the CuPy backend, the NVRTC/CMake compile checks and the CPU emulation tests, so all
three use the same sources, names, tunables and launch geometry. No CUDA import here.

The sources are ``kernels/*.cu`` in a checkout and the package data ``bpgpu.kernels`` when
installed. One file per kernel family (see each file's opening comment for the math).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from importlib import resources
from pathlib import Path

import numpy as np

#: kernel family -> source file
FAMILIES: dict[str, str] = {
    "dense_forward": "dense_forward.cu",
    "delta_backward": "delta_backward.cu",
    "output": "output.cu",
    "weight_update": "weight_update.cu",
    "gather": "gather.cu",
}

#: the tunables every build passes explicitly (the headers' #ifndef defaults are the same)
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
GEMM_THREADS = (TUNABLES["TILE_M"] // TUNABLES["THREAD_M"]) * (
    TUNABLES["TILE_N"] // TUNABLES["THREAD_N"]
)

#: optimizer kind (and SGD variant) -> kernel name part, see kernels/optimizers.cuh
OPTIMIZER_KERNELS = ("store", "sgd", "momentum", "nesterov", "rmsprop", "adam")

#: the GPU architectures the fatbin is built for
ARCHITECTURES = ("80", "86", "89", "90")

#: at most this many blocks for the grid-stride elementwise kernels
_MAX_ELEMENT_BLOCKS = 65535
#: CUDA's limits on gridDim.x and on gridDim.y (and z)
MAX_GRID_X = 2**31 - 1
MAX_GRID_Y = 65535


def kernel_dir() -> Path:
    """The folder holding the ``.cu`` sources (installed package data, else the checkout's)."""
    try:
        installed = Path(str(resources.files("bpgpu.kernels")))
        if (installed / "common.cuh").is_file():
            return installed
    except ModuleNotFoundError:
        pass
    return Path(__file__).resolve().parents[2] / "kernels"


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


def defines() -> list[str]:
    """``-DNAME=value`` for every tunable."""
    return [f"-D{k}={v}" for k, v in TUNABLES.items()]


def suffix(dtype: np.dtype) -> str:
    """The entry-point suffix for an array dtype: f32 or f64."""
    dtype = np.dtype(dtype)
    if dtype == np.float32:
        return "f32"
    if dtype == np.float64:
        return "f64"
    raise TypeError(f"the CUDA kernels take float32 or float64 arrays; got {dtype}")


def optimizer_kernel(optimizer) -> str:
    """The weight_update variant for an Optimizer (or None: the plain gradient store)."""
    if optimizer is None:
        return "store"
    if optimizer.kind == "sgd":
        if not optimizer.momentum:
            return "sgd"
        return "nesterov" if optimizer.nesterov else "momentum"
    return optimizer.kind


def optimizer_args(optimizer) -> tuple[float, float, float, float, float]:
    """(lr, wd, h1, h2, eps) as the weight_update kernels take them (optimizers.cuh)."""
    if optimizer is None:
        return (0.0, 0.0, 0.0, 0.0, 0.0)
    p = optimizer.params()
    h1 = p.get("momentum", p.get("rho", p.get("beta1", 0.0)))
    return (p["lr"], p.get("weight_decay", 0.0), float(h1), p.get("beta2", 0.0), p.get("eps", 0.0))


# ---- launch geometry: (grid, block) --------------------------------------------------------------

Geometry = tuple[tuple[int, int, int], tuple[int, int, int]]


def tile_grid(rows: int, cols: int, tile_rows: int, tile_cols: int) -> tuple[int, int]:
    """(grid.x, grid.y) of a GEMM whose blocks own tile_rows x tile_cols output tiles: row tiles
    on grid.x (up to 2^31 - 1, so the batch is never what runs out), column tiles on grid.y (up
    to 65535). Shared by the CUDA C and the numba kernels; raises ValueError past a limit."""
    row_tiles = max(1, math.ceil(rows / tile_rows))
    col_tiles = max(1, math.ceil(cols / tile_cols))
    if row_tiles > MAX_GRID_X:
        raise ValueError(f"{rows} rows exceed the {MAX_GRID_X * tile_rows} one GEMM launch covers")
    if col_tiles > MAX_GRID_Y:
        raise ValueError(
            f"{cols} columns exceed the {MAX_GRID_Y * tile_cols} one GEMM launch covers"
        )
    return row_tiles, col_tiles


def gemm_geometry(rows: int, cols: int, splits: int = 1) -> Geometry:
    """Blocks covering a (rows, cols) output with TILE_M x TILE_N tiles, ``splits`` deep."""
    grid = tile_grid(rows, cols, TUNABLES["TILE_M"], TUNABLES["TILE_N"])
    return (*grid, splits), (GEMM_THREADS, 1, 1)


def row_geometry(m: int) -> Geometry:
    """One thread per row."""
    t = TUNABLES["ROW_THREADS"]
    return (math.ceil(m / t), 1, 1), (t, 1, 1)


def reduce_geometry() -> Geometry:
    """The single block of the deterministic reductions."""
    return (1, 1, 1), (TUNABLES["REDUCE_THREADS"], 1, 1)


def element_geometry(total: int) -> Geometry:
    """Elementwise kernels: one thread per element (grid-stride beyond the cap)."""
    t = TUNABLES["ELEMENT_THREADS"]
    return (max(1, min(math.ceil(total / t), _MAX_ELEMENT_BLOCKS)), 1, 1), (t, 1, 1)


def split_count(m: int, k: int, n: int, target_blocks: int) -> int:
    """How many slices of the batch the weight gradient takes (1: the fused single pass).

    Split when W's (k, n) tiles are too few to occupy ``target_blocks`` blocks and each slice
    still keeps at least 32 TILE_K steps (512 rows) of the batch, so the partial sums and the
    extra launch are worth it: a short batch (the launch-bound 784-512-10 at 256) never splits.
    """
    tiles = math.ceil(k / TUNABLES["TILE_M"]) * math.ceil(n / TUNABLES["TILE_N"])
    if tiles >= target_blocks:
        return 1
    most = m // (32 * TUNABLES["TILE_K"])
    return max(1, min(math.ceil(target_blocks / tiles), most))


def rows_per_split(m: int, splits: int) -> int:
    """Batch rows per slice, a multiple of TILE_K so slices align with the shared-memory steps."""
    step = TUNABLES["TILE_K"]
    return math.ceil(math.ceil(m / splits) / step) * step


def entry_points() -> dict[str, list[str]]:
    """Every extern "C" kernel name, by family, as the .cu files' tables generate them."""
    from bpgpu.functions import ACTIVATIONS, COMBINATIONS, OUTPUTS

    sfx = ("f32", "f64")
    return {
        "dense_forward": [f"dense_forward_{a}_{s}" for a in ACTIVATIONS for s in sfx],
        "delta_backward": [f"delta_backward_{a}_{s}" for a in ACTIVATIONS for s in sfx],
        "output": [f"output_forward_{o}_{s}" for o in OUTPUTS for s in sfx]
        + [f"output_delta_{o}_{lo}_{s}" for o, lo in sorted(COMBINATIONS) for s in sfx]
        + [f"dense_output_delta_{o}_{lo}_{s}" for o, lo in sorted(COMBINATIONS) for s in sfx]
        + ["row_stats_reduce"],
        "weight_update": [
            f"weight_{v}_{o}_{s}"
            for v in ("update", "finish")
            for o in OPTIMIZER_KERNELS
            for s in sfx
        ]
        + [f"weight_partial_{s}" for s in sfx],
        "gather": [f"gather_rows_{s}" for s in sfx],
    }
