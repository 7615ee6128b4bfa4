"""Timing done right: warm-up outside the numbers, a sync before every clock read, blocks of
steps long enough for the clock, systems interleaved so they see the same machine load, and
the median and interquartile range over repeats. Plus the machine's own ceilings."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from bpgpu.benchmark.systems import Prepared


def time_block(p: Prepared, start: int, steps: int) -> float:
    """Seconds per step over ``steps`` steps from rotation ``start`` (synchronized)."""
    p.sync()
    t0 = time.perf_counter()
    for i in range(start, start + steps):
        p.step(i)
    p.sync()
    return (time.perf_counter() - t0) / steps


def summary(samples: list[float]) -> dict[str, float]:
    """Median, quartiles and IQR of per-step seconds, in milliseconds."""
    q1, med, q3 = np.percentile(np.asarray(samples) * 1e3, [25, 50, 75])
    return {
        "median_ms": float(med),
        "q1_ms": float(q1),
        "q3_ms": float(q3),
        "iqr_ms": float(q3 - q1),
        "repeats": len(samples),
    }


def interleaved(
    systems: dict[str, Prepared],
    warmup: int,
    repeats: int,
    block_s: float,
    budget_s: float,
    settle_s: float = 0.0,
) -> dict[str, dict]:
    """Time every system ``repeats`` times, rotating the order each round.

    Warm-up: ``warmup`` steps each (compilation, allocation, graph capture), then one timed
    step to size the blocks: each block runs enough steps to last about ``block_s``. Repeats
    are cut (to no fewer than 3) when a round would push the total past ``budget_s``.

    ``settle_s``: a pause before each block. BLAS and OpenMP thread pools (OpenBLAS for NumPy,
    libgomp for PyTorch) busy-wait for a while after each call; on a 2-core machine the last
    system's spinning threads take the cores from the next one's for tens of milliseconds
    (measured: 4.5 ms NumPy steps read as 5-70 ms). The pause lets them park first.
    """
    per_step: dict[str, float] = {}
    for name, p in systems.items():
        for i in range(warmup):
            p.step(i)
        time.sleep(settle_s)
        per_step[name] = min(time_block(p, warmup + j, 1) for j in range(2))
    steps = {n: max(1, int(block_s / max(t, 1e-9))) for n, t in per_step.items()}
    round_s = sum(steps[n] * per_step[n] for n in systems)
    repeats = max(3, min(repeats, int(budget_s / max(round_s, 1e-9))))
    samples: dict[str, list[float]] = {n: [] for n in systems}
    names = list(systems)
    cursor = {n: warmup + 2 for n in systems}
    for r in range(repeats):
        for n in names[r % len(names) :] + names[: r % len(names)]:
            time.sleep(settle_s)
            samples[n].append(time_block(systems[n], cursor[n], steps[n]))
            cursor[n] += steps[n]
    return {
        n: {**summary(samples[n]), "steps_per_block": steps[n], "steps_run": cursor[n]}
        for n in systems
    }


def subnormal_fraction(arrays: list[np.ndarray]) -> float:
    """Fraction of optimizer-state entries that are subnormal (non-zero, below float32 tiny)."""
    total = sum(a.size for a in arrays)
    if not total:
        return 0.0
    tiny = np.finfo(np.float32).tiny
    count = sum(int(np.count_nonzero((a != 0) & (np.abs(a) < tiny))) for a in arrays)
    return count / total


# ---- ceilings ----------------------------------------------------------------------------


def _best(fn: Callable[[], None], sync: Callable[[], None], repeats: int) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t0)
    return best


def probe_ceilings(
    xp, sync: Callable[[], None], n: int, copy_bytes: int, repeats: int = 5
) -> dict[str, float]:
    """The matrix rate (float32 n x n x n product, best of repeats) and copy bandwidth (read +
    write of a ``copy_bytes`` float32 array) of the array module ``xp`` (numpy or cupy)."""
    a = xp.ones((n, n), dtype=np.float32)
    b = xp.ones((n, n), dtype=np.float32)
    c = xp.empty((n, n), dtype=np.float32)
    t_mm = _best(lambda: xp.matmul(a, b, out=c), sync, repeats)
    src = xp.ones(copy_bytes // 4, dtype=np.float32)
    dst = xp.empty_like(src)
    t_cp = _best(lambda: xp.copyto(dst, src), sync, repeats)
    return {
        "matmul_n": n,
        "matmul_gflops": 2.0 * n**3 / t_mm / 1e9,
        "copy_bytes": copy_bytes,
        "copy_gbs": 2.0 * copy_bytes / t_cp / 1e9,
    }
