"""Data-parallel scaling on this CPU: time per training step and allreduce time per step for
one and two MPI ranks, on the same global batches.

    python bench/distributed_scaling.py [--workload 784-512-10:256:relu:softmax ...]
                                        [--rounds 5] [--steps 30] [--out DIR]

Three configurations share the machine's cores differently: one rank with one BLAS thread, one
rank with two, two ranks with one each (``mpiexec -n 2``). One rank runs the ordinary fused step
(``Backend.train_step``, what ``fit`` runs in one process); two ranks run the data-parallel step
(bpgpu/distributed/data_parallel.py: each rank half of the global batch, the flat gradient
buffer all-reduced, then the optimizer step). Each launch times every workload: ``--steps``
steps after 5 of warm-up, the batches rotating over 4 global batches, and separately the
allreduce alone (after a barrier) on the same flat buffer. Launches are interleaved over
``--rounds`` rounds (this shared VM's speed drifts); a figure is the median over rounds of each
launch's median (and the spread of the launch medians). Writes report.json and report.md.

The allreduce inside a step also waits for the slower rank; "allreduce alone" is the
collective's own cost, what the paper estimate for GPUs in README.md uses.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

#: (ranks, BLAS threads per rank)
CONFIGS = ((1, 1), (1, 2), (2, 1))
DEFAULT_WORKLOADS = (
    "784-512-10:256:relu:softmax",
    "784-784-512-10:256:relu:softmax",
    "1024-1024-1024-10:1024:relu:softmax",
)
WARMUP = 5
ROTATIONS = 4


def _worker(args: argparse.Namespace) -> None:
    """One rank of one launch: every workload's step and allreduce times, rank 0 writing them
    to ``--json``."""
    from bpgpu import distributed
    from bpgpu.backends.numpy_backend import NumpyBackend
    from bpgpu.benchmark.command import limit_threads

    limit_threads(args.threads)
    world = distributed.init(select_device=False)
    xp = NumpyBackend(threads=args.threads)
    found = [_time_workload(spec, world, xp, args.steps) for spec in args.workload]
    if world.is_root:
        Path(args.json).write_text(json.dumps(found))


def _time_workload(spec: str, world: Any, xp: Any, steps: int) -> dict[str, Any]:
    """Median ms of a step, of the allreduce within it and of the allreduce alone."""
    import bpgpu
    from bpgpu.benchmark.systems import make_data
    from bpgpu.benchmark.workloads import parse_workload
    from bpgpu.distributed.data_parallel import DataParallel

    f32 = np.dtype(np.float32)
    w = parse_workload(spec)
    net = bpgpu.MLP(list(w.layers), w.activation, w.output, backend=xp, seed=0)
    model = net._net
    data = make_data(w, ROTATIONS, seed=0)
    X = xp.asarray(data.X, f32)
    Y = xp.asarray(net._targets(data.labels, len(data.labels)), f32)
    index = [xp.asarray(ix, np.dtype(np.int64)) for ix in data.index]
    states = [
        xp.optimizer_state(bpgpu.RMSprop(), W, b) for W, b in zip(model.W, model.b, strict=True)
    ]
    stats = net._stats()
    in_step: list[float] = []
    parallel = DataParallel(world, xp, model, net.dtype) if world.size > 1 else None
    ws = net._workspace(w.batch)

    def allreduce_timed(buf: Any) -> None:
        assert parallel is not None
        t0 = time.perf_counter()
        type(parallel.comm).allreduce_mean(parallel.comm, buf)
        in_step.append(time.perf_counter() - t0)

    if parallel is not None:
        parallel.comm.allreduce_mean = allreduce_timed  # type: ignore[method-assign]

    def step(i: int) -> None:
        if parallel is None:
            xp.train_step(model, ws, X, Y, index[i % ROTATIONS], states, stats)
        else:
            parallel.step(
                model, net._workspace, X, Y, index[i % ROTATIONS], 0, w.batch, states, stats,
                False,
            )  # fmt: skip

    for i in range(WARMUP):
        step(i)
    in_step.clear()
    world.comm.Barrier()
    step_seconds = []
    for i in range(steps):
        t0 = time.perf_counter()
        step(i)
        step_seconds.append(time.perf_counter() - t0)
    alone = []
    if parallel is not None:
        for _ in range(steps):
            world.comm.Barrier()
            t0 = time.perf_counter()
            type(parallel.comm).allreduce_mean(parallel.comm, parallel.flat)
            alone.append(time.perf_counter() - t0)
    return {
        "workload": w.name,
        "parameters": int(sum(W.size + b.size for W, b in zip(model.W, model.b, strict=True))),
        "step_ms": 1e3 * statistics.median(step_seconds),
        "allreduce_in_step_ms": 1e3 * statistics.median(in_step) if in_step else 0.0,
        "allreduce_alone_ms": 1e3 * statistics.median(alone) if alone else 0.0,
    }


def _launch(ranks: int, threads: int, args: argparse.Namespace, out: Path) -> list[dict]:
    mpiexec = Path(sys.executable).parent / "mpiexec"
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)}
    cmd = [
        str(mpiexec), "-n", str(ranks), sys.executable, __file__, "--worker", "--threads",
        str(threads), "--steps", str(args.steps), "--json", str(out),
    ]  # fmt: skip
    for spec in args.workload:
        cmd += ["--workload", spec]
    subprocess.run(cmd, env=env, check=True, timeout=600)
    return json.loads(out.read_text())


def _machine() -> dict[str, Any]:
    from bpgpu.benchmark.report import machine

    facts = machine()
    try:
        from mpi4py import MPI

        facts["mpi"] = MPI.Get_library_version().strip().splitlines()[0]
    except ImportError:
        facts["mpi"] = "mpi4py not installed"
    return facts


def _markdown(report: dict[str, Any]) -> str:
    lines = [
        "# Data-parallel scaling on the CPU",
        "",
        f"Host: {report['machine']['cpu']}, {report['machine']['cores']} cores; "
        f"{report['machine']['mpi']}; load average {report['machine']['load_average']} at the "
        f"start, {report['load_average_end']} at the end; commit "
        f"{str(report['machine']['git_commit'])[:7]}. NumPy backend, float32, RMSprop; "
        f"{report['rounds']} interleaved rounds of {report['steps']} steps; median ms over "
        "rounds [min-max of the rounds' medians]. Speed-up: against one rank on one thread.",
        "",
        "| workload | parameters | ranks x threads | ms per step | allreduce in step | "
        "allreduce alone | speed-up |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        base = row["configs"]["1x1"]["step_ms"]["median"]
        for name, fig in row["configs"].items():
            s, a, r = fig["step_ms"], fig["allreduce_in_step_ms"], fig["allreduce_alone_ms"]
            lines.append(
                f"| {row['workload']} | {row['parameters']} | {name} | "
                f"{s['median']:.3g} [{s['min']:.3g}-{s['max']:.3g}] | {a['median']:.3g} | "
                f"{r['median']:.3g} | {base / s['median']:.2f}x |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workload", action="append")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results/cpu/distributed"))
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--json", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workload = args.workload or list(DEFAULT_WORKLOADS)
    if args.worker:
        _worker(args)
        return
    facts = _machine()
    runs: dict[str, list[list[dict]]] = {f"{r}x{t}": [] for r, t in CONFIGS}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            for ranks, threads in CONFIGS:
                name = f"{ranks}x{threads}"
                runs[name].append(_launch(ranks, threads, args, Path(tmp) / f"{name}.json"))
                print(f"round {k + 1}/{args.rounds} {name}: " + ", ".join(
                    f"{f['step_ms']:.3g} ms" for f in runs[name][-1]), flush=True)  # fmt: skip
    rows = []
    for i, spec in enumerate(args.workload):
        configs = {}
        for name, launches in runs.items():
            configs[name] = {
                key: {
                    "median": statistics.median(launch[i][key] for launch in launches),
                    "min": min(launch[i][key] for launch in launches),
                    "max": max(launch[i][key] for launch in launches),
                }
                for key in ("step_ms", "allreduce_in_step_ms", "allreduce_alone_ms")
            }
        first = runs["1x1"][0][i]
        rows.append({"workload": first["workload"], "spec": spec, "parameters": first["parameters"],
                     "configs": configs})  # fmt: skip
    report = {
        "machine": facts,
        "rounds": args.rounds,
        "steps": args.steps,
        "rows": rows,
        "load_average_end": list(os.getloadavg()),
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    (out / "report.md").write_text(_markdown(report))
    print(_markdown(report))


if __name__ == "__main__":
    main()
