"""The NumPy backend against PyTorch's CPU build, side by side (the "cpu-compare" suite).

    python bench/compare_torch_cpu.py [extra bpgpu-bench options]

Four (batch, layers) shapes, RMSprop and SGD, float32, 2 threads for both systems, timed
interleaved in one process so both see the same machine load; then 2000 more RMSprop steps
and a second timing, to catch optimizer state decaying into subnormal floats. Writes
bench/results/cpu/issue2/.
"""

from __future__ import annotations

import sys
from pathlib import Path

from bpgpu.benchmark import main

OUT = Path(__file__).resolve().parent / "results" / "cpu" / "issue2"

if __name__ == "__main__":
    sys.exit(
        main(
            [
                "--suite", "cpu-compare",
                "--optimizer", "rmsprop,sgd",
                "--systems", "numpy,torch-eager",
                "--threads", "2",
                "--drift-steps", "2000",
                "--fit", "0",
                "--out", str(OUT),
                *sys.argv[1:],
            ]
        )
    )  # fmt: skip
