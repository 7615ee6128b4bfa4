"""``bpgpu bench``: training-step time of every bpgpu backend against PyTorch, same process,
same data, same optimizer, with the machine's own ceilings for scale; and a whole ``fit``
of the first two workloads.

    bpgpu bench [--quick] [--out DIR] [--workload 784-512-10:256[:relu[:softmax]] ...]
                [--suite default|cpu-compare] [--optimizer rmsprop,sgd] [--threads N]
                [--fit N] [--fit-samples N] [--fit-epochs N]

Reports go to bench/results/gpu/ when a GPU system ran, else bench/results/cpu/ (--quick:
a quick/ folder below), as report.json, report.md and three PNG plots. A CPU-only run
refuses to write into a folder named gpu (or gpu-*), so it never replaces a GPU report.

This module turns the command line into ``Settings``, has ``run`` time them and ``report``
write them.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from bpgpu.benchmark import report, systems
from bpgpu.benchmark.run import Settings, choose_systems, run
from bpgpu.benchmark.workloads import QUICK_MAX_BATCH, SUITES, parse_workload
from bpgpu.optimizers import OPTIMIZERS


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bpgpu bench",
        description="Time the training step (and a whole fit) of every bpgpu backend against "
        "PyTorch (and JAX's jit on a CPU), in one process on the same data with the same "
        "optimizer, with the machine's own ceilings for scale; writes report.json, report.md "
        "and plots.",
    )
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
    p.add_argument(
        "--suite",
        choices=sorted(SUITES),
        default="default",
        help="default: seven workloads from per-sample to GEMM-bound; cpu-compare: the CPU "
        "backends' six shapes against PyTorch and JAX (default: %(default)s)",
    )
    p.add_argument(
        "--optimizer", default="rmsprop", help=f"comma-separated: {', '.join(OPTIMIZERS)}"
    )
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


def to_settings(args: argparse.Namespace) -> Settings:
    """The run's settings from parsed arguments: what was not given takes its default, which
    for most figures is smaller with --quick."""
    quick = args.quick
    workloads = args.workload or SUITES[args.suite]
    if quick:
        workloads = [w.shrunk(QUICK_MAX_BATCH) for w in workloads]
    return Settings(
        workloads=tuple(workloads),
        optimizers=tuple(o.strip() for o in args.optimizer.split(",")),
        quick=quick,
        repeats=args.repeats or (3 if quick else 15),
        warmup=args.warmup if args.warmup is not None else (1 if quick else 3),
        budget_s=args.budget or (2.0 if quick else 20.0),
        block_s=0.02 if quick else 0.1,
        settle_s=0.05 if quick else 0.2,
        data_bytes=(8 if quick else 64) * 2**20,
        drift_steps=args.drift_steps,
        fit_workloads=args.fit,
        fit_samples=args.fit_samples or (1024 if quick else 16384),
        fit_epochs=args.fit_epochs or (1 if quick else 2),
        fit_repeats=args.fit_repeats or 3,
        seed=args.seed,
        threads=args.threads,
    )


def limit_threads(n: int | None) -> None:
    """At most ``n`` threads for BLAS (threadpoolctl, when installed) and torch."""
    if n is None:
        return
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(n)
    except ImportError:
        pass
    if systems.torch_status() is None:
        import torch

        torch.set_num_threads(n)


def default_out(gpu: bool, quick: bool) -> Path:
    """bench/results/gpu after a GPU run, else bench/results/cpu (outside a checkout:
    bench-results/ here); a quick/ folder below for --quick."""
    base = (
        report.ROOT / "bench" / "results"
        if (report.ROOT / "bench").is_dir()
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
    chosen = to_settings(args)
    lineup = choose_systems(set(args.systems.split(",")) if args.systems else None)
    out = args.out or default_out(lineup.gpu, args.quick)
    check_out(out, lineup.gpu)  # before any timing, so a refused run costs nothing
    plots = not args.no_plots and _can_plot()
    machine = report.machine()  # before the run: its load average is the one at the start
    result = run(chosen, lineup, on_row=lambda row: print(report.progress_line(row), flush=True))
    report.write(out, report.assemble(machine, chosen.as_dict(), result), plots)
    print(f"report written to {out}")
    return 0


def _can_plot() -> bool:
    """Whether matplotlib is there for the plots; says so, before any timing, when it is not
    (the report is written without them)."""
    if importlib.util.find_spec("matplotlib") is not None:
        return True
    print(
        "bpgpu bench: matplotlib is not installed: the report will have no plots "
        "(pip install -e '.[bench]')",
        flush=True,
    )
    return False
