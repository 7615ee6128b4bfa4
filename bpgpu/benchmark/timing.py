"""Timing done right: warm-up outside the numbers, a sync before every clock read (so GPU
work queued before the clock starts is not counted, and work queued inside it is), blocks of
steps long enough for the clock, systems interleaved so they see the same machine load, and
the median and interquartile range over repeats. Plus the machine's own ceilings."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

from bpgpu.benchmark.systems import Prepared, PreparedFit

T = TypeVar("T")


def warm_up(p: Prepared, steps: int) -> None:
    """Untimed steps (compilation, allocation, graph capture), then a sync so that a fault
    in them is raised here."""
    for i in range(steps):
        p.step(i)
    p.sync()


def time_block(p: Prepared, start: int, steps: int) -> float:
    """Seconds per step over ``steps`` steps from rotation ``start`` (synchronized)."""
    p.sync()
    t0 = time.perf_counter()
    for i in range(start, start + steps):
        p.step(i)
    p.sync()
    return (time.perf_counter() - t0) / steps


def time_fit(p: PreparedFit) -> float:
    """Seconds of one whole fit from fresh weights (the reset is outside the clock)."""
    fit = p.fresh()
    p.sync()
    t0 = time.perf_counter()
    fit()
    p.sync()
    return time.perf_counter() - t0


def summary(samples: list[float], unit: str = "ms") -> dict[str, float]:
    """Median, quartiles and IQR of samples in seconds, given in ``unit`` ("ms" or "s")."""
    scale = {"ms": 1e3, "s": 1.0}[unit]
    q1, med, q3 = np.percentile(np.asarray(samples) * scale, [25, 50, 75])
    return {
        f"median_{unit}": float(med),
        f"q1_{unit}": float(q1),
        f"q3_{unit}": float(q3),
        f"iqr_{unit}": float(q3 - q1),
        "repeats": len(samples),
    }


def rounds(names: list[str], repeats: int) -> Iterator[str]:
    """``names`` ``repeats`` times, each round starting one system later, so that no system
    always runs first (or right after the same neighbour)."""
    for r in range(repeats):
        k = r % len(names)
        yield from names[k:] + names[:k]


def interleaved(
    systems: dict[str, Prepared],
    repeats: int,
    block_s: float,
    budget_s: float,
    settle_s: float = 0.0,
) -> dict[str, dict]:
    """Time every (warmed-up) system ``repeats`` times, rotating the order each round.

    Two timed steps size the blocks: each block runs enough steps to last about ``block_s``.
    Repeats are cut (to no fewer than 3) when a round would push the total past
    ``budget_s``. Every step takes the next rotation of the inputs.

    ``settle_s``: a pause before each block. BLAS and OpenMP thread pools (OpenBLAS for NumPy,
    libgomp for PyTorch) busy-wait for a while after each call; on a 2-core machine the last
    system's spinning threads take the cores from the next one's for tens of milliseconds
    (bench/results/cpu/NOTES.md). The pause lets them park first.
    """
    per_step: dict[str, float] = {}
    for name, p in systems.items():
        time.sleep(settle_s)
        per_step[name] = min(time_block(p, j, 1) for j in range(2))
    steps = {n: max(1, int(block_s / max(t, 1e-9))) for n, t in per_step.items()}
    round_s = sum(steps[n] * per_step[n] for n in systems)
    repeats = max(3, min(repeats, int(budget_s / max(round_s, 1e-9))))
    samples: dict[str, list[float]] = {n: [] for n in systems}
    cursor = dict.fromkeys(systems, 2)
    for n in rounds(list(systems), repeats):
        time.sleep(settle_s)
        samples[n].append(time_block(systems[n], cursor[n], steps[n]))
        cursor[n] += steps[n]
    return {
        n: {**summary(samples[n]), "steps_per_block": steps[n], "steps_run": cursor[n]}
        for n in systems
    }


def interleaved_fits(
    systems: dict[str, PreparedFit], repeats: int, settle_s: float = 0.0
) -> dict[str, dict]:
    """Time a whole fit of every (warmed-up) system ``repeats`` times, the order rotating
    each round; median and spread in seconds."""
    samples: dict[str, list[float]] = {n: [] for n in systems}
    for n in rounds(list(systems), repeats):
        time.sleep(settle_s)
        samples[n].append(time_fit(systems[n]))
    return {n: summary(samples[n], "s") for n in systems}


def subnormal_fraction(arrays: list[np.ndarray]) -> float:
    """Fraction of optimizer-state entries that are subnormal (non-zero, below float32 tiny)."""
    total = sum(a.size for a in arrays)
    if not total:
        return 0.0
    tiny = np.finfo(np.float32).tiny
    count = sum(int(np.count_nonzero((a != 0) & (np.abs(a) < tiny))) for a in arrays)
    return count / total


# ---- ceilings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ArrayOps:
    """What the ceiling probe needs of an array library: float32 ones of a shape,
    ``matmul(a, b, c)`` writing a @ b into c, ``copy(dst, src)``, and a wait for queued
    work."""

    ones: Callable[[tuple[int, ...]], Any]
    matmul: Callable[[Any, Any, Any], object]
    copy: Callable[[Any, Any], object]
    sync: Callable[[], None]


def array_ops(xp: Any, sync: Callable[[], None] = lambda: None) -> ArrayOps:
    """ArrayOps of numpy or cupy (``sync``: the device's synchronize)."""
    return ArrayOps(
        lambda shape: xp.ones(shape, dtype=np.float32),
        lambda a, b, c: xp.matmul(a, b, out=c),
        xp.copyto,
        sync,
    )


def torch_ops(device: str) -> ArrayOps:
    """ArrayOps of torch on ``device`` ("cpu" or "cuda")."""
    import torch

    dev = torch.device(device)
    return ArrayOps(
        lambda shape: torch.ones(shape, dtype=torch.float32, device=dev),
        lambda a, b, c: torch.matmul(a, b, out=c),
        lambda dst, src: dst.copy_(src),
        torch.cuda.synchronize if dev.type == "cuda" else lambda: None,
    )


def _best(fn: Callable[[], object], sync: Callable[[], None], repeats: int) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def probe_ceilings(ops: ArrayOps, n: int, copy_bytes: int, repeats: int = 5) -> dict[str, float]:
    """The matrix rate (float32 n x n x n product, best of repeats) and copy bandwidth (read +
    write of a ``copy_bytes`` float32 array) of an array library."""
    a, b, c = ops.ones((n, n)), ops.ones((n, n)), ops.ones((n, n))
    t_mm = _best(lambda: ops.matmul(a, b, c), ops.sync, repeats)
    src, dst = ops.ones((copy_bytes // 4,)), ops.ones((copy_bytes // 4,))
    t_cp = _best(lambda: ops.copy(dst, src), ops.sync, repeats)
    return {
        "matmul_n": n,
        "matmul_gflops": 2.0 * n**3 / t_mm / 1e9,
        "copy_bytes": copy_bytes,
        "copy_gbs": 2.0 * copy_bytes / t_cp / 1e9,
    }


def probe_best(
    libraries: dict[str, Callable[[], ArrayOps]], n: int, nbytes: int, repeats: int
) -> dict:
    """The best matrix rate and copy bandwidth any of ``libraries`` reaches, and which one;
    NaN (with the errors) when none can run."""
    best: dict = {"matmul_gflops": float("nan"), "copy_gbs": float("nan"), "errors": {}}
    for lib, ops in libraries.items():
        try:
            found = probe_ceilings(ops(), n, nbytes, repeats)
        # a library that cannot run: the report says why; the others still count
        except Exception as exc:
            best["errors"][lib] = failure(exc)
        else:
            keep_best(best, {**found, "matmul_by": lib, "copy_by": lib})
    return best


def keep_best(best: dict, found: dict) -> None:
    """Take each of found's figures (with its size and library) that beats best's."""
    for keys in (("matmul_gflops", "matmul_n", "matmul_by"), ("copy_gbs", "copy_bytes", "copy_by")):
        new, old = found[keys[0]], best[keys[0]]
        if not math.isnan(new) and not new <= old:  # also when old is still NaN
            best.update({k: found[k] for k in keys})


# ---- systems that fail ------------------------------------------------------------------


def failure(exc: BaseException) -> str:
    """The row text for a system that could not run: the exception, cut to 200 characters."""
    return f"failed: {type(exc).__name__}: {exc}"[:200]


def guarded(
    factories: dict[str, Callable[[], T]], run: Callable[[dict[str, T]], dict[str, dict]]
) -> tuple[dict[str, dict], dict[str, T]]:
    """Prepare and warm up each system (``factories``), then ``run`` the ready ones together.

    A system whose preparation or warm-up raises (a backend that refuses the shape, a
    ``torch.compile`` that cannot compile) gets ``{"status": "failed: ..."}`` and the others
    are still timed; if ``run`` itself raises, every ready system gets that failure. Returns
    the results by name and the ready systems."""
    results: dict[str, dict] = {}
    ready: dict[str, T] = {}
    for name, make in factories.items():
        try:
            ready[name] = make()
        except Exception as exc:
            results[name] = {"status": failure(exc)}
    try:
        results.update(run(ready))
    except Exception as exc:
        results.update({name: {"status": failure(exc)} for name in ready})
    return results, ready
