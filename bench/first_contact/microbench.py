"""The first-contact micro-benchmark (bench/gpu_report.sh, stage microbench), about a minute:

- every kernel of a 784-512-10 batch-256 relu/softmax RMSprop training step, in microseconds
  (the launches of one eager step recorded, then each launched in blocks between two CUDA
  events: the mean per launch, the median over blocks);
- dense_forward at 4096 x 4096 x 4096 (identity), in TFLOP/s;
- the whole training step, in ms, of the cupy backend with its CUDA graph and without, and of
  PyTorch eager beside them (same weights, data and optimizer: bpgpu.benchmark's systems; host
  clock around blocks of steps with the device synchronized, the systems interleaved).

    python3 bench/first_contact/microbench.py --out OUT [--seconds 60] [--small]

Writes OUT/microbench.json and OUT/microbench.md, after every part, so a run cut off still
leaves what it measured. --small shrinks every shape (the no-GPU test of the script).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bpgpu.backends.cupy_backend import CupyBackend
from bpgpu.benchmark import systems
from bpgpu.benchmark.timing import time_block, warm_up
from bpgpu.benchmark.workloads import parse_workload
from bpgpu.optimizers import RMSprop


class Clock:
    """The seconds left of the run's budget."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def event_us(cp, run: Callable[[], None], launches: int, blocks: int) -> float:
    """Median over ``blocks`` of the mean microseconds per call of ``run`` over ``launches``
    calls, between two CUDA events."""
    times = []
    for _ in range(blocks):
        start, stop = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        for _ in range(launches):
            run()
        stop.record()
        stop.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, stop) * 1e3 / launches)
    return statistics.median(times)


def kernels(cp, spec: str, launches: int, blocks: int) -> list[dict]:
    """Each kernel one eager training step of ``spec`` launches, timed on its own."""
    w = parse_workload(spec)
    xp = CupyBackend(graphs=False)
    data = systems.make_data(w, 2, seed=0)
    step = systems.prepare_bpgpu(xp, w, RMSprop(lr=1e-3), data, seed=0)
    warm_up(step, 2)
    recorded: list[tuple] = []
    launch = xp._launch

    def record(*args: object) -> None:
        recorded.append(args)
        launch(*args)

    xp._launch = record  # type: ignore[method-assign]
    step.step(0)
    xp._launch = launch  # type: ignore[method-assign]
    found = []
    for name, family, geometry, args, shapes in recorded:
        us = event_us(
            cp, lambda a=(name, family, geometry, args, shapes): launch(*a), launches, blocks
        )
        found.append({"kernel": name, "shapes": shapes, "grid": geometry[0], "us": us})
    return found


def gemm_tflops(cp, n: int, blocks: int) -> dict:
    """dense_forward (identity) of n x n by n x n: TFLOP/s, the median of ``blocks`` runs."""
    xp = CupyBackend(graphs=False)
    rng = np.random.default_rng(0)
    f32 = np.dtype(np.float32)
    X, W = (xp.asarray(rng.standard_normal((n, n)) / n**0.5, f32) for _ in range(2))
    b, out = xp.zeros((n,), f32), xp.empty((n, n), f32)
    xp.dense_forward(X, W, b, "identity", out)  # compiled and warm
    us = event_us(cp, lambda: xp.dense_forward(X, W, b, "identity", out), 1, blocks)
    return {"n": n, "us": us, "tflops": 2.0 * n**3 / (us * 1e-6) / 1e12}


def steps(spec: str, repeats: int, steps_per_block: int, clock: Clock) -> dict[str, dict]:
    """ms per training step: cupy with and without its graph, PyTorch eager when importable."""
    w = parse_workload(spec)
    opt = RMSprop(lr=1e-3)
    data = systems.make_data(w, 8, seed=0)
    prepared = {
        "cupy (CUDA graph)": systems.prepare_bpgpu(CupyBackend(graphs=True), w, opt, data, 0),
        "cupy (no graph)": systems.prepare_bpgpu(CupyBackend(graphs=False), w, opt, data, 0),
    }
    skipped = {}
    if systems.torch_has_cuda():
        prepared["torch eager"] = systems.prepare_torch(w, opt, data, 0, "gpu", False)
    else:
        skipped["torch eager"] = systems.torch_status() or "torch sees no CUDA device"
    for p in prepared.values():
        warm_up(p, 3)
    times: dict[str, list[float]] = {name: [] for name in prepared}
    for r in range(repeats):
        if r and clock.left() < 2:
            break
        for name, p in prepared.items():
            times[name].append(time_block(p, r * steps_per_block, steps_per_block))
    found = {
        name: {
            "ms": 1e3 * statistics.median(t),
            "blocks": len(t),
            "steps_per_block": steps_per_block,
        }
        for name, t in times.items()
    }
    torch_ms = found.get("torch eager", {}).get("ms")
    for res in found.values():
        if torch_ms:
            res["speedup_vs_torch"] = torch_ms / res["ms"]
    return {**found, **{name: {"skipped": why} for name, why in skipped.items()}}


def markdown(result: dict) -> str:
    lines = [f"# First-contact micro-benchmark ({result['device']})", ""]
    if "kernels" in result:
        lines += [f"Kernels of one {result['workload']} step (µs per launch, CUDA events):", ""]
        lines += ["| kernel | shapes | grid | µs |", "|---|---|---|---|"]
        lines += [
            f"| {k['kernel']} | {k['shapes']} | {tuple(k['grid'])} | {k['us']:.1f} |"
            for k in result["kernels"]
        ]
        total = sum(k["us"] for k in result["kernels"])
        lines += [f"| (sum) | | | {total:.1f} |", ""]
    if "gemm" in result:
        g = result["gemm"]
        lines += [f"dense_forward {g['n']}³: {g['us'] / 1e3:.2f} ms, {g['tflops']:.2f} TFLOP/s", ""]
    if "steps" in result:
        lines += [f"Training step, {result['workload']} (ms):", ""]
        lines += ["| system | ms per step | speed-up vs torch eager |", "|---|---|---|"]
        for name, res in result["steps"].items():
            if "skipped" in res:
                lines.append(f"| {name} | skipped: {res['skipped']} | |")
            else:
                up = f"{res['speedup_vs_torch']:.2f}x" if "speedup_vs_torch" in res else ""
                lines.append(f"| {name} | {res['ms']:.3f} | {up} |")
        lines.append("")
    lines += (
        [f"Not measured (out of time): {', '.join(result['cut'])}", ""] if result["cut"] else []
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--small", action="store_true", help="tiny shapes (no-GPU test)")
    args = parser.parse_args()
    import cupy as cp

    clock = Clock(args.seconds)
    spec = "64-32-10:16:relu:softmax" if args.small else "784-512-10:256:relu:softmax"
    props = cp.cuda.runtime.getDeviceProperties(0)
    name = props["name"]
    result: dict = {
        "device": name.decode() if isinstance(name, bytes) else str(name),
        "workload": spec,
        "cut": ["kernels", "gemm", "steps"],
    }

    def save() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "microbench.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out / "microbench.md").write_text(markdown(result))

    save()
    result["kernels"] = kernels(cp, spec, 5 if args.small else 200, 3 if args.small else 9)
    result["cut"].remove("kernels")
    save()
    if clock.left() > 0.6 * args.seconds:
        result["gemm"] = gemm_tflops(cp, 64 if args.small else 4096, 3 if args.small else 7)
        result["cut"].remove("gemm")
        save()
    if clock.left() > 5:
        result["steps"] = steps(spec, 5 if args.small else 15, 3 if args.small else 50, clock)
        result["cut"].remove("steps")
        save()
    print(markdown(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
