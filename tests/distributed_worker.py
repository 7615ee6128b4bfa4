"""What each MPI process runs for tests/test_distributed.py (started by mpiexec, or alone).

    python distributed_worker.py SCENARIO OUT [BACKEND OPTIMIZER]

Each rank writes what it found to OUT/rank<r>.npz; the test compares the ranks. Scenarios:

* ``equal``: a data-parallel fit and, on every rank, the same fit in one process; the weights
  and every epoch's figures of both.
* ``order``: which samples each rank's steps took, epoch by epoch (a backend that records the
  rows of every gradient step), on data that leaves some ranks without rows in a step.
* ``fail``: rank 1 raises while rank 0 trains (waiting for rank 1 in the allreduce).
* ``differ``: rank 1 passes other data than rank 0.
* ``alone``: without mpiexec: init() is a World of one, and fit(distributed=True) is fit().
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

import bpgpu
from bpgpu import distributed
from bpgpu.backends.numpy_backend import NumpyBackend

OPTIMIZERS = {
    "adam": lambda: bpgpu.Adam(lr=1e-2, weight_decay=1e-3),
    "nesterov": lambda: bpgpu.SGD(lr=0.05, momentum=0.9, nesterov=True),
    "rmsprop": lambda: bpgpu.RMSprop(lr=1e-2),
}


def data(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 7)), rng.integers(0, 3, n)


def fit(backend: object, optimizer: str, world: object) -> tuple[bpgpu.MLP, dict]:
    """106 samples, 21 held out, 85 in batches of 16: the last of 5 leaves uneven shards on
    2 and on 3 ranks."""
    X, y = data(106)
    net = bpgpu.MLP([7, 9, 5, 3], ["tanh", "relu"], backend=backend, dtype="float64", seed=1)
    hist = net.fit(
        X, y, epochs=3, batch_size=16, optimizer=OPTIMIZERS[optimizer](), validation_split=0.2,
        validation_mode="shuffle", distributed=world,
    )  # fmt: skip
    return net, hist.history


def flat(net: bpgpu.MLP) -> np.ndarray:
    return np.concatenate([a.ravel() for pair in net.get_weights() for a in pair])


def equal(world: distributed.World, out: Path, backend: str, optimizer: str) -> None:
    parallel, figures = fit(backend, optimizer, world)
    alone, alone_figures = fit(backend, optimizer, None)
    arrays = {"weights": flat(parallel), "alone_weights": flat(alone)}
    for name, values in figures.items():
        arrays[name], arrays[f"alone_{name}"] = np.array(values), np.array(alone_figures[name])
    np.savez(out / f"rank{world.rank}.npz", **arrays)


class Recording(NumpyBackend):
    """The NumPy backend, noting the rows of every optimizer step (none: an empty shard)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[np.ndarray] = []
        self._rows = np.zeros(0, dtype=np.int64)

    def evaluate_step(self, net, ws, X, Y, index, stats, grads=None):  # type: ignore[override]
        if grads is not None:
            self._rows = np.array(index)
        super().evaluate_step(net, ws, X, Y, index, stats, grads)

    def apply_gradients(self, net, grads, states):  # type: ignore[override]
        self.seen.append(self._rows)
        self._rows = np.zeros(0, dtype=np.int64)
        super().apply_gradients(net, grads, states)


def order(world: distributed.World, out: Path) -> None:
    """50 samples in batches of 8 over 3 epochs (the last batch of 2: a rank of 3 has none),
    then 2 samples in a batch of 8 (fewer samples than ranks); unseeded."""
    arrays = {}
    for name, n in (("large", 50), ("small", 2)):
        backend = Recording()
        X, y = data(n)
        # no seed: each rank draws its own weights and shuffling, and rank 0's must win
        net = bpgpu.MLP([7, 4, 3], backend=backend, dtype="float64")
        hist = net.fit(X, y, epochs=3, batch_size=8, distributed=world)
        arrays[f"{name}_rows"] = np.concatenate(backend.seen)
        arrays[f"{name}_counts"] = np.array([len(rows) for rows in backend.seen], dtype=np.int64)
        arrays[f"{name}_loss"] = np.array(hist["loss"])
        arrays[f"{name}_weights"] = flat(net)
    np.savez(out / f"rank{world.rank}.npz", **arrays)


def fail(world: distributed.World) -> None:
    if world.rank == 1:
        time.sleep(0.5)  # rank 0 is in the allreduce by now
        raise RuntimeError("rank 1 fails on purpose")
    X, y = data(64)
    bpgpu.MLP([7, 4, 3], backend="numpy").fit(X, y, epochs=10**6, distributed=world)


def differ(world: distributed.World) -> None:
    X, y = data(64, seed=world.rank)
    bpgpu.MLP([7, 4, 3], backend="numpy").fit(X, y, epochs=2, distributed=world)


def alone(out: Path) -> None:
    world = distributed.init()
    assert (world.rank, world.size, world.local_rank) == (0, 1, 0), world
    X, y = data(40)
    weights = []
    for flag in (True, False):
        net = bpgpu.MLP([7, 4, 3], backend="numpy", dtype="float64", seed=1)
        net.fit(X, y, epochs=2, batch_size=8, optimizer=bpgpu.Adam(), distributed=flag)
        weights.append(flat(net))
    np.savez(out / "rank0.npz", distributed=weights[0], alone=weights[1])


def main(argv: list[str]) -> None:
    scenario, out = argv[0], Path(argv[1])
    if scenario == "alone":
        alone(out)
        return
    world = distributed.init()
    np.savez(out / f"world{world.rank}.npz", world=[world.rank, world.size, world.local_rank])
    np.savez(out / f"device{world.rank}.npz", device=-1 if world.device is None else world.device)
    if scenario == "equal":
        equal(world, out, argv[2], argv[3])
    elif scenario == "order":
        order(world, out)
    elif scenario == "fail":
        fail(world)
    elif scenario == "differ":
        differ(world)
    else:
        raise ValueError(f"unknown scenario {scenario!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
