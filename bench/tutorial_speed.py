"""The source tutorials' per-sample training, timed: ``python bench/tutorial_speed.py
[--backend auto]``.

- digits 64-32-16-10 sigmoid/softmax, the 1347 training samples of the 75/25 split, SGD lr 0.1,
  batch 1 (the PyImageSearch tutorial's settings): microseconds per step, and the 1000 epochs
  of the tutorial that makes;
- XOR 2-2-1 sigmoid/MSE, SGD lr 0.5, batch 1: seconds for 20000 epochs.

Each figure is the median of ``--repeats`` fits after one untimed fit (which loads or compiles
the compiled functions), float32, the model made afresh from the same seed each time.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

import bpgpu
from bpgpu.benchmark.report import cpu_name, load_average


def timed_fit(
    make: Callable[[], bpgpu.MLP], X: np.ndarray, y: np.ndarray, repeats: int, **fit: Any
) -> float:
    """Median seconds of ``make().fit(X, y, **fit)`` over ``repeats`` fits after a warm-up."""
    times = []
    for i in range(repeats + 1):
        net = make()
        start = time.perf_counter()
        net.fit(X, y, **fit)
        if i:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--digits-epochs", type=int, default=20)
    parser.add_argument("--xor-epochs", type=int, default=20000)
    args = parser.parse_args()
    print(f"host: {cpu_name()}, load average {load_average()}; backend {args.backend}")

    digits = bpgpu.datasets.digits(seed=0)
    X, y = digits.X_train, digits.y_train
    seconds = timed_fit(
        lambda: bpgpu.MLP([64, 32, 16, 10], "sigmoid", backend=args.backend, seed=0),
        X, y, args.repeats,
        epochs=args.digits_epochs, batch_size=1, optimizer=bpgpu.SGD(lr=0.1),
    )  # fmt: skip
    per_step = seconds / (args.digits_epochs * len(X))
    print(
        f"digits 64-32-16-10 per-sample SGD: {per_step * 1e6:.2f} us a step, "
        f"1000 epochs of {len(X)} samples in {per_step * 1000 * len(X):.1f} s"
    )

    xor = bpgpu.datasets.xor()
    seconds = timed_fit(
        lambda: bpgpu.MLP([2, 2, 1], "sigmoid", output="sigmoid", loss="mse",
                          backend=args.backend, seed=0),
        xor.X_train, xor.y_train, args.repeats,
        epochs=args.xor_epochs, batch_size=1, optimizer=bpgpu.SGD(lr=0.5),
    )  # fmt: skip
    print(f"XOR 2-2-1 per-sample SGD, {args.xor_epochs} epochs: {seconds:.3f} s")


if __name__ == "__main__":
    main()
