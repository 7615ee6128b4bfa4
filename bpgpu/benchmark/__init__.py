"""``bpgpu bench``: training-step time of every bpgpu backend against PyTorch, same process,
same data, same optimizer, with the machine's own ceilings for scale; and a whole ``fit``
of the first two workloads.

    bpgpu bench [--quick] [--out DIR] [--workload 784-512-10:256[:relu[:softmax]] ...]
                [--suite default|issue2] [--optimizer rmsprop,sgd] [--threads N]
                [--fit N] [--fit-samples N] [--fit-epochs N]

Reports go to bench/results/gpu/ when a GPU system ran, else bench/results/cpu/ (--quick:
a quick/ folder below), as report.json, report.md and three PNG plots. A CPU-only run
refuses to write into a folder named gpu (or gpu-*), so it never replaces a GPU report.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np

from bpgpu.backends import available_backends, get_backend
from bpgpu.benchmark import report as rep
from bpgpu.benchmark import systems as sysm
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
from bpgpu.benchmark.workloads import QUICK_MAX_BATCH, SUITES, Workload, parse_workload, rotations
from bpgpu.optimizers import Optimizer, make_optimizer

TORCH = "torch-eager"
COMPILED = "torch-compile"  # on a CUDA machine only


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bpgpu bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"few repeats, batches capped at {QUICK_MAX_BATCH} (CI)",
    )
    p.add_argument(
        "--out", type=Path, help="report folder (default bench/results/cpu or bench/results/gpu)"
    )
    p.add_argument(
        "--workload",
        action="append",
        type=parse_workload,
        help="LAYERS:BATCH[:ACT[:OUTPUT]], repeatable",
    )
    p.add_argument("--suite", choices=sorted(SUITES), default="default")
    p.add_argument("--optimizer", default="rmsprop", help="comma-separated: rmsprop, sgd, adam")
    p.add_argument("--systems", help="comma-separated subset, e.g. numpy,torch-eager")
    p.add_argument("--repeats", type=int, help="timed blocks per system (default 15, quick 3)")
    p.add_argument("--warmup", type=int, help="untimed steps per system first (default 3, quick 1)")
    p.add_argument(
        "--budget", type=float, help="seconds of timing per workload (default 20, quick 2)"
    )
    p.add_argument("--threads", type=int, help="CPU threads for BLAS and torch (default: all)")
    p.add_argument(
        "--drift-steps",
        type=int,
        default=0,
        help="then run this many more steps and time again (denormal watch)",
    )
    p.add_argument(
        "--fit",
        type=int,
        default=2,
        help="also time a whole fit of the first N workloads (default 2; 0: none)",
    )
    p.add_argument(
        "--fit-samples",
        type=int,
        help="samples a fit trains on, whole batches (default 16384, quick 1024)",
    )
    p.add_argument("--fit-epochs", type=int, help="epochs of each fit (default 2, quick 1)")
    p.add_argument("--fit-repeats", type=int, help="timed fits per system (default 3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plots", action="store_true")
    return p


def limit_threads(n: int | None) -> None:
    """At most ``n`` threads for BLAS (threadpoolctl, when installed) and torch."""
    if n is None:
        return
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        pass
    if sysm.torch_status() is None:
        import torch

        torch.set_num_threads(n)


def _systems(only: set[str] | None) -> tuple[list[str], dict[str, str]]:
    """System names to run and, for those that cannot, why."""
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
    if only is not None:
        names = [n for n in names if n in only]
        skipped = {k: v for k, v in skipped.items() if k in only}
    return names, skipped


def _step_system(
    name: str, w: Workload, opt: Optimizer, data: sysm.Data, seed: int, gpu: bool, warmup: int
) -> sysm.Prepared:
    """A system's training step, warmed up (a compile happens here, outside the numbers)."""
    if name in (TORCH, COMPILED):
        p = sysm.prepare_torch(w, opt, data, seed, "gpu" if gpu else "cpu", name == COMPILED)
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
    else:
        p = sysm.prepare_bpgpu_fit(name, w, opt, data, seed, epochs)
    time_fit(p)
    return p


def _cupy_ops() -> ArrayOps:
    import cupy

    return array_ops(cupy, cupy.cuda.Device().synchronize)


def _libraries(device: str) -> dict[str, Callable[[], ArrayOps]]:
    """The array libraries that probe ``device`` ("cpu" or "gpu")."""
    libs = {"numpy": partial(array_ops, np)} if device == "cpu" else {"cupy": _cupy_ops}
    if sysm.torch_status() is None:
        libs["torch"] = partial(torch_ops, "cpu" if device == "cpu" else "cuda")
    return libs


def _ceilings(gpu: bool, quick: bool) -> dict[str, dict]:
    """The machine's ceilings: the CPU's and, after a GPU run, the GPU's; each the best of
    the array libraries there (NumPy's BLAS or torch; cupy or torch)."""
    repeats = 3 if quick else 8
    found = {"cpu": probe_best(_libraries("cpu"), 2048, 1 << 26 if quick else 1 << 28, repeats)}
    if gpu:
        found["gpu"] = probe_best(_libraries("gpu"), 8192, 1 << 30, repeats)
    return found


def _derive(res: dict, w: Workload, slots: int, ceiling: dict) -> None:
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


def _speedups(results: dict[str, dict], key: str) -> None:
    """``speedup_vs_torch``: PyTorch eager's ``key`` over each system's (>1: faster)."""
    base = results.get(TORCH, {}).get(key)
    for res in results.values():
        if key in res:
            res["speedup_vs_torch"] = base / res[key] if base else None


def default_out(gpu: bool, quick: bool) -> Path:
    """bench/results/gpu after a GPU run, else bench/results/cpu (outside a checkout:
    bench-results/ here); a quick/ folder below for --quick."""
    base = (
        rep.ROOT / "bench" / "results"
        if (rep.ROOT / "bench").is_dir()
        else Path.cwd() / "bench-results"
    )
    folder = base / ("gpu" if gpu else "cpu")
    return folder / "quick" if quick else folder


def check_out(out: Path, gpu: bool) -> None:
    """Refuse a CPU-only run's report in a GPU report folder (a folder named gpu or gpu-*
    anywhere in the path), so a GPU report is never written over by a CPU run."""
    if not gpu and any(part == "gpu" or part.startswith("gpu-") for part in out.resolve().parts):
        raise SystemExit(f"refusing to write a CPU-only report into the GPU report folder {out}")


def main(argv: list[str] | None = None) -> int:
    """``bpgpu bench`` with the command line ``argv``; writes the report, returns 0."""
    args = _parser().parse_args(argv)
    limit_threads(args.threads)
    workloads = args.workload or SUITES[args.suite]
    if args.quick:
        workloads = [w.shrunk(QUICK_MAX_BATCH) for w in workloads]
    repeats = args.repeats or (3 if args.quick else 15)
    warmup = args.warmup if args.warmup is not None else (1 if args.quick else 3)
    budget = args.budget or (2.0 if args.quick else 20.0)
    block_s = 0.02 if args.quick else 0.1
    settle_s = 0.05 if args.quick else 0.2
    data_bytes = (8 if args.quick else 64) * 2**20
    fit_samples = args.fit_samples or (1024 if args.quick else 16384)
    fit_epochs = args.fit_epochs or (1 if args.quick else 2)
    fit_repeats = args.fit_repeats or 3
    names, skipped = _systems(set(args.systems.split(",")) if args.systems else None)
    optimizers = [o.strip() for o in args.optimizer.split(",")]
    gpu_ran = any(n not in ("numpy", TORCH) for n in names)
    out = args.out or default_out(gpu_ran, args.quick)
    check_out(out, gpu_ran)
    machine = rep.machine()
    ceilings = _ceilings(gpu_ran, args.quick)

    rows = []
    started = time.perf_counter()
    for wi, w in enumerate(workloads):
        for opt_name in optimizers:
            opt = make_optimizer(opt_name)
            data = sysm.make_data(w, rotations(w, 4, data_bytes), args.seed)
            step_of = partial(_step_system, w=w, opt=opt, data=data, seed=args.seed, gpu=gpu_ran)
            results, ready = guarded(
                {n: partial(step_of, n, warmup=warmup) for n in names},
                lambda ready: interleaved(ready, repeats, block_s, budget, settle_s),
            )
            for n, p in ready.items():
                if "median_ms" in results[n]:
                    results[n]["device"] = p.device
            results.update({n: {"status": why} for n, why in skipped.items()})
            if (
                args.drift_steps
                and opt.slots
                and ready
                and all("median_ms" in results[n] for n in ready)
            ):
                _drift(ready, results, args.drift_steps, repeats, block_s, budget, settle_s)
            _speedups(results, "median_ms")
            row = {
                "workload": w.name,
                "spec": w.spec,
                "optimizer": opt_name,
                "slots": len(opt.slots),
                "results": results,
                "w": w,
            }
            if wi < args.fit:
                row["fit"] = _time_fits(
                    names,
                    w,
                    opt,
                    args.seed,
                    gpu_ran,
                    fit_samples,
                    fit_epochs,
                    fit_repeats,
                    settle_s,
                )
                for n, res in row["fit"].items():
                    if "median_s" in res and "median_ms" in results.get(n, {}):
                        res["fit_over_step"] = res["ms_per_step"] / results[n]["median_ms"]
            rows.append(row)
            print(_progress_line(row), flush=True)

    if not args.quick:  # other work on the machine lowers a probe: probe again, keep the best
        for dev, again in _ceilings(gpu_ran, args.quick).items():
            keep_best(ceilings[dev], again)
    for row in rows:
        w = row.pop("w")
        for res in row["results"].values():
            if "median_ms" in res:
                _derive(res, w, row["slots"], ceilings[res["device"]])

    report = {
        "machine": machine,
        "settings": {
            "quick": args.quick,
            "quick_max_batch": QUICK_MAX_BATCH,
            "repeats": repeats,
            "warmup": warmup,
            "budget_s": budget,
            "threads": args.threads,
            "seed": args.seed,
            "dtype": "float32",
            "optimizers": optimizers,
            "drift_steps": args.drift_steps,
            "settle_s": settle_s,
            "fit_workloads": min(args.fit, len(workloads)),
            "fit_samples": fit_samples,
            "fit_epochs": fit_epochs,
            "fit_repeats": fit_repeats,
            "timing": (
                "perf_counter around blocks of steps (or a whole fit), the device synchronized "
                "before and after; warm-up (compilation) first; systems interleaved, a settle_s "
                "pause before each block so thread pools park"
            ),
        },
        "ceilings": ceilings,
        "systems": names + list(skipped),
        "rows": rows,
        "elapsed_s": time.perf_counter() - started,
        "load_average_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=float) + "\n")
    (out / "report.md").write_text(rep.markdown(report))
    if not args.no_plots:
        rep.plots(report, out)
    print(f"report written to {out}")
    return 0


def _drift(
    ready: dict[str, sysm.Prepared],
    results: dict[str, dict],
    drift_steps: int,
    repeats: int,
    block_s: float,
    budget: float,
    settle_s: float,
) -> None:
    """The denormal watch: many more steps (at most about 30 s of the slowest system), then
    the step time again and the subnormal fraction of the optimizer state."""
    slowest = max(results[n]["median_ms"] for n in ready) / 1e3
    steps = max(1, min(drift_steps, int(30.0 / slowest)))
    for n, p in ready.items():
        start = results[n]["steps_run"]
        for i in range(start, start + steps):
            p.step(i)
    after = interleaved(ready, repeats, block_s, budget, settle_s)
    for n, p in ready.items():
        results[n]["drift"] = {
            "steps": steps,
            **after[n],
            "subnormal_fraction": subnormal_fraction(p.state()),
        }


def _time_fits(
    names: list[str],
    w: Workload,
    opt: Optimizer,
    seed: int,
    gpu: bool,
    samples: int,
    epochs: int,
    repeats: int,
    settle_s: float,
) -> dict[str, dict]:
    """A whole fit of every system on the same ``samples`` rows (whole batches), ``epochs``
    epochs from the same initial weights; seconds, ms per step and samples per second."""
    batches = max(1, samples // w.batch)
    data = sysm.make_data(w, batches, seed)
    fit_of = partial(_fit_system, w=w, opt=opt, data=data, seed=seed, gpu=gpu, epochs=epochs)
    fits, _ = guarded(
        {n: partial(fit_of, n) for n in names},
        lambda ready: interleaved_fits(ready, repeats, settle_s),
    )
    n_samples = batches * w.batch
    for res in fits.values():
        if "median_s" in res:
            res.update(
                samples=n_samples,
                epochs=epochs,
                steps=batches * epochs,
                ms_per_step=1e3 * res["median_s"] / (batches * epochs),
                samples_per_s=n_samples * epochs / res["median_s"],
            )
    _speedups(fits, "median_s")
    return fits


def _progress_line(row: dict) -> str:
    def cell(r: dict, key: str, unit: str) -> str:
        return f"{r[key]:.3g} {unit}" if key in r else r["status"]

    line = f"{row['workload']} {row['optimizer']}: " + ", ".join(
        f"{n} {cell(r, 'median_ms', 'ms')}" for n, r in row["results"].items()
    )
    if "fit" in row:
        line += "; fit: " + ", ".join(
            f"{n} {cell(r, 'median_s', 's')}" for n, r in row["fit"].items()
        )
    return line
