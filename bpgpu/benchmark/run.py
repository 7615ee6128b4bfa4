"""Running a benchmark: which systems run, each one prepared and warmed up, the training step
of every workload x optimizer timed with the systems interleaved, whole fits, the denormal
watch, the machine's ceilings, and the figures derived from them (TFLOP/s, GB/s, fraction of
the floor, speed-up against PyTorch eager).

``run(settings, lineup)`` returns a ``RunResult``; it prints nothing (``on_row`` is told of
each row as it is finished) and writes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from bpgpu.backends import available_backends, get_backend
from bpgpu.benchmark import systems as sysm
from bpgpu.benchmark.results import Figures, Row, RunResult
from bpgpu.benchmark.timing import (
    ArrayOps,
    array_ops,
    guarded,
    interleaved,
    interleaved_fits,
    keep_best,
    probe_best,
    subnormal_fraction,
    time_fit,
    torch_ops,
    warm_up,
)
from bpgpu.benchmark.workloads import QUICK_MAX_BATCH, Workload, rotations
from bpgpu.optimizers import Optimizer, make_optimizer

TORCH = "torch-eager"
COMPILED = "torch-compile"  # on a CUDA machine only
JAX = "jax-jit"  # on the CPU, in a run without GPU systems
#: the comparisons (never dependencies): ``speedup_vs_peer`` is over the fastest of these
PEERS = (TORCH, COMPILED, JAX)

#: how the numbers are taken, for the report's settings
TIMING = (
    "perf_counter around blocks of steps (or a whole fit), the device synchronized "
    "before and after; warm-up (compilation) first; systems interleaved, a settle_s "
    "pause before each block so thread pools park"
)


@dataclass(frozen=True)
class Settings:
    """What to time and how long: every figure already resolved (the command line's defaults
    depend on --quick)."""

    workloads: tuple[Workload, ...]
    optimizers: tuple[str, ...]
    quick: bool
    repeats: int  # timed blocks per system (fewer when the budget runs out)
    warmup: int  # untimed steps per system first
    budget_s: float  # seconds of step timing per workload x optimizer
    block_s: float  # seconds one timed block of steps lasts
    settle_s: float  # pause before each block, so the last system's thread pools park
    data_bytes: int  # rotated input data per workload, enough to outgrow the caches
    drift_steps: int  # denormal watch: this many more steps, then time again (0: none)
    fit_workloads: int  # a whole fit of the first this many workloads
    fit_samples: int
    fit_epochs: int
    fit_repeats: int
    seed: int
    threads: int | None  # as limited by the caller (None: all), recorded in the report

    def as_dict(self) -> dict[str, Any]:
        """report.json's "settings"."""
        return {
            "quick": self.quick,
            "quick_max_batch": QUICK_MAX_BATCH,
            "repeats": self.repeats,
            "warmup": self.warmup,
            "budget_s": self.budget_s,
            "threads": self.threads,
            "seed": self.seed,
            "dtype": "float32",
            "optimizers": list(self.optimizers),
            "drift_steps": self.drift_steps,
            "settle_s": self.settle_s,
            "fit_workloads": min(self.fit_workloads, len(self.workloads)),
            "fit_samples": self.fit_samples,
            "fit_epochs": self.fit_epochs,
            "fit_repeats": self.fit_repeats,
            "timing": TIMING,
        }


@dataclass(frozen=True)
class Lineup:
    """The systems of a run: those to time, in order, and for each one that cannot run, why."""

    names: list[str]
    skipped: dict[str, str]

    @property
    def gpu(self) -> bool:
        """Whether any bpgpu system of the run is a GPU backend."""
        return any(get_backend(n).device == "gpu" for n in self.names if n not in PEERS)


def choose_systems(only: set[str] | None = None) -> Lineup:
    """Every bpgpu backend that runs on real hardware, PyTorch eager, torch.compile when torch
    sees a GPU, JAX's jit when there is no GPU backend; ``only``: just those named."""
    names: list[str] = []
    skipped: dict[str, str] = {}
    for b in available_backends():
        if not get_backend(b).simulated:
            names.append(b)
    torch_missing = sysm.torch_status()
    if torch_missing:
        skipped[TORCH] = torch_missing
    else:
        names.append(TORCH)
        if sysm.torch_has_cuda():
            names.append(COMPILED)
    if not any(get_backend(n).device == "gpu" for n in names if n not in PEERS):
        jax_missing = sysm.jax_status()
        if jax_missing:
            skipped[JAX] = jax_missing
        else:
            names.append(JAX)
    if only is not None:
        names = [n for n in names if n in only]
        skipped = {k: v for k, v in skipped.items() if k in only}
    return Lineup(names, skipped)


def run(
    settings: Settings, lineup: Lineup, on_row: Callable[[Row], None] = lambda row: None
) -> RunResult:
    """Probe the ceilings, time every workload x optimizer (``on_row`` gets each row when
    its timings are in), then derive each result's rates against the ceilings."""
    gpu = lineup.gpu
    ceilings = _ceilings(gpu, settings.quick)
    rows: list[Row] = []
    started = time.perf_counter()
    for wi, w in enumerate(settings.workloads):
        for opt_name in settings.optimizers:
            row = _row(settings, lineup, w, opt_name, wi < settings.fit_workloads)
            rows.append(row)
            on_row(row)
    if not settings.quick:  # other work on the machine lowers a probe: probe again, keep the best
        for dev, again in _ceilings(gpu, settings.quick).items():
            keep_best(ceilings[dev], again)
    for row in rows:
        for res in row.results.values():
            if "median_ms" in res:
                _derive(res, row.workload, row.slots, ceilings[res["device"]])
    return RunResult(
        systems=lineup.names + list(lineup.skipped),
        rows=rows,
        ceilings=ceilings,
        elapsed_s=time.perf_counter() - started,
    )


def _row(settings: Settings, lineup: Lineup, w: Workload, opt_name: str, fit: bool) -> Row:
    """One workload x optimizer: every system's step timed interleaved, the denormal watch
    when asked for and the optimizer has state, speed-ups, and whole fits when ``fit``."""
    s = settings
    opt = make_optimizer(opt_name)
    data = sysm.make_data(w, rotations(w, 4, s.data_bytes), s.seed)
    step_of = partial(_step_system, w=w, opt=opt, data=data, seed=s.seed, gpu=lineup.gpu)
    results, ready = guarded(
        {n: partial(step_of, n, warmup=s.warmup) for n in lineup.names},
        lambda ready: interleaved(ready, s.repeats, s.block_s, s.budget_s, s.settle_s),
    )
    for n, p in ready.items():
        if "median_ms" in results[n]:
            results[n]["device"] = p.device
    results.update({n: {"status": why} for n, why in lineup.skipped.items()})
    if s.drift_steps and opt.slots and ready and all("median_ms" in results[n] for n in ready):
        _drift(ready, results, s)
    _speedups(results, "median_ms")
    row = Row(workload=w, optimizer=opt_name, slots=len(opt.slots), results=results)
    if fit:
        row.fit = _time_fits(lineup.names, w, opt, s, lineup.gpu)
        for n, res in row.fit.items():
            if "median_s" in res and "median_ms" in results.get(n, {}):
                res["fit_over_step"] = res["ms_per_step"] / results[n]["median_ms"]
    return row


# ---- systems, prepared and warmed up --------------------------------------------------------


def _step_system(
    name: str, w: Workload, opt: Optimizer, data: sysm.Data, seed: int, gpu: bool, warmup: int
) -> sysm.Prepared:
    """A system's training step, warmed up (a compile happens here, outside the numbers)."""
    if name in (TORCH, COMPILED):
        p = sysm.prepare_torch(w, opt, data, seed, "gpu" if gpu else "cpu", name == COMPILED)
    elif name == JAX:
        p = sysm.prepare_jax(w, opt, data, seed)
    else:
        p = sysm.prepare_bpgpu(name, w, opt, data, seed)
    warm_up(p, warmup)
    return p


def _fit_system(
    name: str, w: Workload, opt: Optimizer, data: sysm.Data, seed: int, gpu: bool, epochs: int
) -> sysm.PreparedFit:
    """A system's whole fit, warmed up by one untimed fit."""
    if name in (TORCH, COMPILED):
        device = "gpu" if gpu else "cpu"
        p = sysm.prepare_torch_fit(w, opt, data, seed, device, name == COMPILED, epochs)
    elif name == JAX:
        p = sysm.prepare_jax_fit(w, opt, data, seed, epochs)
    else:
        p = sysm.prepare_bpgpu_fit(name, w, opt, data, seed, epochs)
    time_fit(p)
    return p


# ---- the denormal watch and whole fits ------------------------------------------------------


def _drift(ready: dict[str, sysm.Prepared], results: dict[str, Figures], s: Settings) -> None:
    """The denormal watch: many more steps (at most about 30 s of the slowest system), then
    the step time again and the subnormal fraction of the optimizer state."""
    slowest = max(results[n]["median_ms"] for n in ready) / 1e3
    steps = max(1, min(s.drift_steps, int(30.0 / slowest)))
    for n, p in ready.items():
        start = results[n]["steps_run"]
        for i in range(start, start + steps):
            p.step(i)
    after = interleaved(ready, s.repeats, s.block_s, s.budget_s, s.settle_s)
    for n, p in ready.items():
        results[n]["drift"] = {
            "steps": steps,
            **after[n],
            "subnormal_fraction": subnormal_fraction(p.state()),
        }


def _time_fits(
    names: list[str], w: Workload, opt: Optimizer, s: Settings, gpu: bool
) -> dict[str, Figures]:
    """A whole fit of every system on the same ``s.fit_samples`` rows (whole batches),
    ``s.fit_epochs`` epochs from the same initial weights; seconds, ms per step and samples
    per second."""
    batches = max(1, s.fit_samples // w.batch)
    data = sysm.make_data(w, batches, s.seed)
    fit_of = partial(
        _fit_system, w=w, opt=opt, data=data, seed=s.seed, gpu=gpu, epochs=s.fit_epochs
    )
    fits, _ = guarded(
        {n: partial(fit_of, n) for n in names},
        lambda ready: interleaved_fits(ready, s.fit_repeats, s.settle_s),
    )
    n_samples = batches * w.batch
    steps = batches * s.fit_epochs
    for res in fits.values():
        if "median_s" in res:
            res.update(
                samples=n_samples,
                epochs=s.fit_epochs,
                steps=steps,
                ms_per_step=1e3 * res["median_s"] / steps,
                samples_per_s=n_samples * s.fit_epochs / res["median_s"],
            )
    _speedups(fits, "median_s")
    return fits


# ---- ceilings and derived figures -----------------------------------------------------------


def _cupy_ops() -> ArrayOps:
    import cupy

    return array_ops(cupy, cupy.cuda.Device().synchronize)


def _libraries(device: str) -> dict[str, Callable[[], ArrayOps]]:
    """The array libraries that probe ``device`` ("cpu" or "gpu")."""
    libs: dict[str, Callable[[], ArrayOps]] = (
        {"numpy": partial(array_ops, np)} if device == "cpu" else {"cupy": _cupy_ops}
    )
    if sysm.torch_status() is None:
        libs["torch"] = partial(torch_ops, "cpu" if device == "cpu" else "cuda")
    return libs


def _ceilings(gpu: bool, quick: bool) -> dict[str, dict[str, Any]]:
    """The machine's ceilings: the CPU's and, after a GPU run, the GPU's; each the best of
    the array libraries there (NumPy's BLAS or torch; cupy or torch)."""
    repeats = 3 if quick else 8
    found = {"cpu": probe_best(_libraries("cpu"), 2048, 1 << 26 if quick else 1 << 28, repeats)}
    if gpu:
        found["gpu"] = probe_best(_libraries("gpu"), 8192, 1 << 30, repeats)
    return found


def _derive(res: Figures, w: Workload, slots: int, ceiling: dict[str, Any]) -> None:
    """Add the step's work, its achieved rates, and the floor (the time at the ceilings) and
    the fraction of it reached."""
    t = res["median_ms"] / 1e3
    flops, nbytes = w.flops(), w.bytes(4, slots)
    floor = max(flops / (ceiling["matmul_gflops"] * 1e9), nbytes / (ceiling["copy_gbs"] * 1e9))
    res.update(
        flops=flops,
        bytes=nbytes,
        gflops=flops / t / 1e9,
        gbs=nbytes / t / 1e9,
        fraction_of_matmul=flops / t / 1e9 / ceiling["matmul_gflops"],
        fraction_of_copy=nbytes / t / 1e9 / ceiling["copy_gbs"],
        floor_ms=floor * 1e3,
        fraction_of_floor=floor / t,
    )


def _speedups(results: dict[str, Figures], key: str) -> None:
    """``speedup_vs_torch``: PyTorch eager's ``key`` over each system's (>1: faster);
    ``speedup_vs_peer``: the fastest peer's (PEERS) over each bpgpu system's."""
    base = results.get(TORCH, {}).get(key)
    peers = [results[n][key] for n in PEERS if key in results.get(n, {})]
    for name, res in results.items():
        if key in res:
            res["speedup_vs_torch"] = base / res[key] if base else None
            if name not in PEERS:
                res["speedup_vs_peer"] = min(peers) / res[key] if peers else None
