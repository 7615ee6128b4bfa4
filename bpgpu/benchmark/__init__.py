"""``bpgpu bench``: training-step time of every bpgpu backend against PyTorch, same process,
same data, same optimizer, with the machine's own ceilings for scale.

    bpgpu bench [--quick] [--out DIR] [--workload 784-512-10:256[:relu[:softmax]] ...]
                [--suite default|issue2] [--optimizer rmsprop,sgd] [--threads N]

Reports go to bench/results/gpu-<name>/ when a GPU system ran, else bench/results/cpu/
(--quick: a quick/ folder below), as report.json, report.md and three PNG plots.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from pathlib import Path

import numpy as np

from bpgpu.backends import available_backends, get_backend
from bpgpu.benchmark import report as rep
from bpgpu.benchmark import systems as sysm
from bpgpu.benchmark.timing import interleaved, probe_ceilings, subnormal_fraction
from bpgpu.benchmark.workloads import QUICK_MAX_BATCH, SUITES, parse_workload, rotations

TORCH = "torch-eager"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="bpgpu bench", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"few repeats, batches capped at {QUICK_MAX_BATCH} (CI)",
    )
    p.add_argument(
        "--out", type=Path, help="report folder (default bench/results/cpu or gpu-<name>)"
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
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-plots", action="store_true")
    return p


def limit_threads(n: int | None) -> None:
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
            names.append("torch-compile")
    if only is not None:
        names = [n for n in names if n in only]
        skipped = {k: v for k, v in skipped.items() if k in only}
    return names, skipped


def _prepare(name: str, w, opt, data, seed: int, gpu: bool):
    if name == TORCH:
        return sysm.prepare_torch(w, opt, data, seed, "gpu" if gpu else "cpu", compiled=False)
    if name == "torch-compile":
        return sysm.prepare_torch(w, opt, data, seed, "gpu", compiled=True)
    return sysm.prepare_bpgpu(name, w, opt, data, seed)


def _ceilings(gpu: bool, quick: bool) -> dict[str, dict]:
    nbytes = 1 << 26 if quick else 1 << 28
    found = {"cpu": probe_ceilings(np, lambda: None, 2048, nbytes, repeats=3 if quick else 8)}
    if gpu:
        try:
            import cupy

            found["gpu"] = probe_ceilings(cupy, cupy.cuda.Device().synchronize, 8192, 1 << 30)
        # no cupy, or it fails: the report says the GPU ceiling is unknown, and why
        except Exception as exc:  # noqa: BLE001
            found["gpu"] = {
                "matmul_gflops": float("nan"),
                "copy_gbs": float("nan"),
                "error": str(exc),
            }
    return found


def _best_of(ceilings: dict[str, dict], again: dict[str, dict]) -> None:
    for dev, c in again.items():
        for key in ("matmul_gflops", "copy_gbs"):
            ceilings[dev][key] = max(ceilings[dev][key], c[key])


def _derive(res: dict, w, slots: int, ceiling: dict) -> None:
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


def _default_out(gpu_name: str | None, quick: bool) -> Path:
    base = (
        rep.ROOT / "bench" / "results"
        if (rep.ROOT / "bench").is_dir()
        else Path.cwd() / "bench-results"
    )
    folder = base / (
        "gpu-" + re.sub(r"[^a-z0-9]+", "-", gpu_name.lower()).strip("-") if gpu_name else "cpu"
    )
    return folder / "quick" if quick else folder


def main(argv: list[str] | None = None) -> int:
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
    names, skipped = _systems(set(args.systems.split(",")) if args.systems else None)
    optimizers = [o.strip() for o in args.optimizer.split(",")]
    gpu_ran = any(n not in ("numpy", TORCH) for n in names) or "torch-compile" in names
    machine = rep.machine()
    gpu_name = (
        machine["gpu"]["name"] if gpu_ran and machine["gpu"] else ("gpu" if gpu_ran else None)
    )
    out = args.out or _default_out(gpu_name, args.quick)
    if not gpu_ran and any(part.startswith("gpu-") for part in out.resolve().parts):
        raise SystemExit(f"refusing to write a CPU-only report into the GPU report folder {out}")
    ceilings = _ceilings(gpu_ran, args.quick)

    rows = []
    started = time.perf_counter()
    for w in workloads:
        for opt_name in optimizers:
            opt = sysm.make_optimizer(opt_name)
            data = sysm.make_data(w, rotations(w, 4, data_bytes), args.seed)
            results: dict[str, dict] = {n: {"status": why} for n, why in skipped.items()}
            ready = {}
            for n in names:
                try:
                    ready[n] = _prepare(n, w, opt, data, args.seed, gpu_ran)
                # a system that cannot run this workload gets a row saying why
                except Exception as exc:  # noqa: BLE001
                    results[n] = {"status": f"failed: {type(exc).__name__}: {exc}"[:200]}
            try:
                timed = interleaved(ready, warmup, repeats, block_s, budget, settle_s)
            except Exception as exc:  # noqa: BLE001 -- the rows say why
                timed = {}
                for n in ready:
                    results[n] = {"status": f"failed: {type(exc).__name__}: {exc}"[:200]}
            for n, res in timed.items():
                results[n] = {**res, "device": ready[n].device}
            if args.drift_steps and timed and opt.slots:  # state that can decay
                slowest = max(r["median_ms"] for r in timed.values()) / 1e3
                steps = max(1, min(args.drift_steps, int(30.0 / slowest)))
                for n, p in ready.items():
                    start = timed[n]["steps_run"]
                    for i in range(start, start + steps):
                        p.step(i)
                after = interleaved(ready, 0, repeats, block_s, budget, settle_s)
                for n, p in ready.items():
                    results[n]["drift"] = {
                        "steps": steps,
                        **after[n],
                        "subnormal_fraction": subnormal_fraction(p.state()),
                    }
            base = results.get(TORCH, {}).get("median_ms")
            for res in results.values():
                if "median_ms" in res:
                    res["speedup_vs_torch"] = base / res["median_ms"] if base else None
            rows.append(
                {
                    "workload": w.name,
                    "spec": w.spec,
                    "optimizer": opt_name,
                    "slots": len(opt.slots),
                    "results": results,
                    "w": w,
                }
            )
            print(
                f"{w.name} {opt_name}: "
                + ", ".join(
                    f"{n} {r['median_ms']:.3g} ms" if "median_ms" in r else f"{n} {r['status']}"
                    for n, r in results.items()
                ),
                flush=True,
            )

    if (
        not args.quick
    ):  # other work on the machine lowers a probe: probe again at the end, keep the best
        _best_of(ceilings, _ceilings(gpu_ran, args.quick))
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
            "timing": (
                "perf_counter around blocks of steps, synchronized before and after; systems "
                "interleaved, a settle_s pause before each block so thread pools park"
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
