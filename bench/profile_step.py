"""Where a training step's time goes: each fused op of a bpgpu backend, and PyTorch's own
profiler for the same step, on one workload.

    python bench/profile_step.py 64-64-64-64-2:65536:relu:softmax [--optimizer rmsprop]
                                 [--steps 20] [--threads 2] [--backend numpy]

Each op call is timed (synchronized) and attributed to (op, layer); ``weight_update`` includes
the ``weight_gradient`` it calls, shown nested.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from bpgpu.backends import get_backend
from bpgpu.benchmark.command import limit_threads
from bpgpu.benchmark.systems import Data, make_data, prepare_bpgpu, prepare_torch, torch_status
from bpgpu.benchmark.workloads import Workload, parse_workload
from bpgpu.optimizers import Optimizer, make_optimizer

OPS = (
    "gather_rows",
    "dense_forward",
    "output_delta",
    "delta_backward",
    "weight_update",
    "weight_gradient",
)


def profile_bpgpu(
    backend: str, w: Workload, opt: Optimizer, data: Data, steps: int
) -> dict[str, float]:
    """Milliseconds per step of each (op, call number within the step)."""
    xp = get_backend(backend)
    p = prepare_bpgpu(backend, w, opt, data, seed=0)
    for i in range(3):
        p.step(i)
    totals: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            xp.synchronize()
            key = f"{name}#{calls[name]}"
            calls[name] += 1
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            xp.synchronize()
            totals[key] += time.perf_counter() - t0
            return out

        return timed

    for name in OPS:
        setattr(xp, name, wrap(name, getattr(xp, name)))
    try:
        t0 = time.perf_counter()
        for i in range(steps):
            calls.clear()
            p.step(i)
        whole = (time.perf_counter() - t0) / steps
    finally:
        for name in OPS:
            delattr(xp, name)
    out = {k: 1e3 * v / steps for k, v in totals.items()}
    out["whole step (with timing overhead)"] = 1e3 * whole
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("workload", type=parse_workload)
    ap.add_argument("--optimizer", default="rmsprop")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="numpy")
    args = ap.parse_args()
    limit_threads(args.threads)
    w, opt = args.workload, make_optimizer(args.optimizer)
    data = make_data(w, 4, seed=0)
    print(f"== bpgpu {args.backend}: {w.name} {args.optimizer}, ms per step")
    for k, v in profile_bpgpu(args.backend, w, opt, data, args.steps).items():
        print(f"  {k:40s} {v:8.3f}")
    if torch_status() is None:
        import torch

        p = prepare_torch(w, opt, data, seed=0, device="cpu", compiled=False)
        for i in range(3):
            p.step(i)
        with torch.profiler.profile() as prof:
            for i in range(args.steps):
                p.step(i)
        print(f"== torch eager: {w.name} {args.optimizer} (totals over {args.steps} steps)")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


if __name__ == "__main__":
    main()
