"""Where the compiled whole epochs of numba-cpu pay: a grid of networks and batch sizes, each
timed both ways in one process, interleaved, medians (``python bench/cpu_paths.py OUT``).

"compiled": every epoch one compiled call; "numpy steps": the NumPy backend's steps with the
compiled epilogues (what numba-cpu runs where ``compiled_pays`` says no). Each figure is one
``fit`` epoch over the same data from the same weights. The report says, per case, which was
faster and what ``compiled_pays`` chooses; bench/results/cpu/compiled/NOTES.md reads it.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

import bpgpu
from bpgpu.backends.numba_cpu import NumbaCpuBackend, compiled_pays
from bpgpu.files import write_text

NETWORKS = ["2-2-1", "4-8-9-3", "64-32-16-10", "64-64-64-64-2", "784-128-10", "784-512-10"]
BATCHES = [1, 16, 64, 256, 1024]


class Forced(NumbaCpuBackend):
    """numba-cpu with the choice of path fixed."""

    def __init__(self, compiled: bool) -> None:
        super().__init__()
        self.compiled = compiled

    def compiled_epochs(self, layers: list[int], batch: int) -> bool:
        return self.compiled


def case(layers: list[int], batch: int, repeats: int) -> dict:
    """One epoch of fit both ways: median seconds and what the rule picks."""
    n = min(max(batch * 16, 512), 16384)
    rng = np.random.default_rng(0)
    X = rng.random((n, layers[0]), dtype=np.float32)
    y = rng.integers(0, layers[-1], n) if layers[-1] > 1 else rng.integers(0, 2, n)
    models = {
        name: bpgpu.MLP(
            layers, "relu", "softmax" if layers[-1] > 1 else "sigmoid", backend=Forced(flag), seed=0
        )
        for name, flag in (("compiled", True), ("numpy steps", False))
    }
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(repeats + 1):  # the first round compiles and warms up
        for name, model in models.items():
            start = time.perf_counter()
            model.fit(X, y, epochs=1, batch_size=batch, optimizer="rmsprop", seed=1)
            times[name].append(time.perf_counter() - start)
    medians = {name: float(np.median(t[1:])) for name, t in times.items()}
    faster = min(medians, key=medians.__getitem__)
    picked = "compiled" if compiled_pays(layers, batch) else "numpy steps"
    return {
        "layers": "-".join(map(str, layers)),
        "batch": batch,
        "samples": n,
        "seconds": medians,
        "faster": faster,
        "ratio": medians["numpy steps"] / medians["compiled"],
        "rule_picks": picked,
        "rule_right": picked == faster,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rows = []
    for net in NETWORKS:
        for batch in BATCHES:
            row = case([int(v) for v in net.split("-")], batch, args.repeats)
            rows.append(row)
            print(
                f"{row['layers']} b{batch}: compiled {row['seconds']['compiled'] * 1e3:.2f} ms, "
                f"numpy steps {row['seconds']['numpy steps'] * 1e3:.2f} ms, "
                f"ratio {row['ratio']:.2f}, rule {'right' if row['rule_right'] else 'WRONG'}",
                flush=True,
            )
    right = sum(r["rule_right"] for r in rows)
    lines = [
        "# Compiled whole epochs against the NumPy steps (numba-cpu)",
        "",
        f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, "
        f"float32, RMSprop, one fit epoch, median of {args.repeats} interleaved repeats. "
        f"The rule (`compiled_pays`) picks the faster path in {right} of {len(rows)} cases.",
        "",
        "| network | batch | samples | compiled ms | NumPy steps ms | NumPy / compiled | rule |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layers']} | {r['batch']} | {r['samples']} | "
            f"{r['seconds']['compiled'] * 1e3:.2f} | {r['seconds']['numpy steps'] * 1e3:.2f} | "
            f"{r['ratio']:.2f} | {r['rule_picks']}{'' if r['rule_right'] else ' (slower)'} |"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    write_text(args.out / "grid.md", "\n".join(lines) + "\n")
    write_text(args.out / "grid.json", json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
