"""Benchmark workloads: a network shape, a batch size, and the work one training step does.

A workload is written ``LAYERS:BATCH[:ACTIVATION[:OUTPUT]]`` on the command line, e.g.
``784-512-10:256:relu:softmax``. The output defaults to softmax (sigmoid for one unit).

Work per step (design.md, "Work and the floor"), m = batch, layers n_0 .. n_L:

    FLOPs = forward 2 m sum_l n_{l-1} n_l + delta 2 m sum_{l>=2} n_{l-1} n_l
            + weight gradient 2 m sum_l n_{l-1} n_l
    bytes = itemsize * (P (4 + 2 slots) + 3 m (sum_{l>=0} n_l + sum_{l>=1} n_l))

the fewest bytes: each of the P parameters read three times (forward, delta, update) and
written once, each optimizer slot read and written once, each activation and delta written
once and read twice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import pairwise


@dataclass(frozen=True)
class Workload:
    layers: tuple[int, ...]
    batch: int
    activation: str = "relu"
    output: str = "softmax"

    @property
    def name(self) -> str:
        return f"{'-'.join(map(str, self.layers))} b{self.batch} {self.activation}/{self.output}"

    @property
    def spec(self) -> str:
        return f"{'-'.join(map(str, self.layers))}:{self.batch}:{self.activation}:{self.output}"

    def flops(self) -> float:
        """Floating-point operations of one training step (forward, backward, update)."""
        pairs = [a * b for a, b in pairwise(self.layers)]
        return 2.0 * self.batch * (2 * sum(pairs) + sum(pairs[1:]))

    def bytes(self, itemsize: int, slots: int) -> float:
        """The fewest bytes one step moves (see the module docstring)."""
        params = sum(a * b + b for a, b in pairwise(self.layers))
        acts = sum(self.layers) + sum(self.layers[1:])
        return float(itemsize * (params * (4 + 2 * slots) + 3 * self.batch * acts))

    def shrunk(self, max_batch: int) -> Workload:
        """The same network at a batch of at most ``max_batch`` (for --quick)."""
        return Workload(self.layers, min(self.batch, max_batch), self.activation, self.output)


def parse_workload(text: str) -> Workload:
    """``784-512-10:256[:relu[:softmax]]`` -> Workload; errors name the part that is wrong."""
    parts = text.split(":")
    if not 2 <= len(parts) <= 4:
        raise ValueError(f"a workload is LAYERS:BATCH[:ACTIVATION[:OUTPUT]]; got {text!r}")
    try:
        layers = tuple(int(n) for n in parts[0].split("-"))
        batch = int(parts[1])
    except ValueError:
        raise ValueError(f"layers and batch must be integers in {text!r}") from None
    if len(layers) < 2 or min(layers) < 1 or batch < 1:
        raise ValueError(
            f"a workload needs at least two positive layer sizes and a positive batch; got {text!r}"
        )
    activation = parts[2] if len(parts) > 2 else "relu"
    output = parts[3] if len(parts) > 3 else ("softmax" if layers[-1] > 1 else "sigmoid")
    return Workload(layers, batch, activation, output)


#: the standard report: from per-sample SGD (the tutorials') and launch-bound (MNIST-shaped)
#: to GEMM-bound
DEFAULT = [
    parse_workload(s)
    for s in (
        "64-32-16-10:1:sigmoid:softmax",
        "784-512-10:256:relu:softmax",
        "784-784-512-10:256:relu:softmax",
        "64-32-16-10:4096:sigmoid:softmax",
        "64-64-64-64-1:65536:relu:sigmoid",
        "1024-1024-1024-10:1024:relu:softmax",
        "4096-4096-4096-10:4096:relu:softmax",
    )
]

#: the CPU backends against PyTorch's CPU build and JAX, per-sample to GEMM-bound (--suite
#: cpu-compare, as bench/compare_torch_cpu.py runs it)
CPU_COMPARE = [
    parse_workload(s)
    for s in (
        "64-32-16-10:1:sigmoid:softmax",
        "784-512-10:256:relu:softmax",
        "784-784-512-10:256:relu:softmax",
        "64-32-16-10:4096:sigmoid:softmax",
        "1024-1024-1024-10:1024:relu:softmax",
        "64-64-64-64-2:65536:relu:softmax",
    )
]

SUITES = {"default": DEFAULT, "cpu-compare": CPU_COMPARE}

#: --quick keeps every shape but caps the batch at this many rows
QUICK_MAX_BATCH = 256


def rotations(w: Workload, itemsize: int, budget_bytes: float) -> int:
    """How many distinct batches to cycle through so the data outgrows the caches."""
    per_batch = itemsize * w.batch * (w.layers[0] + w.layers[-1])
    return int(min(64, max(2, math.ceil(budget_bytes / per_batch))))
