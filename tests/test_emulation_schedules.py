"""Every CUDA C entry point, run by the CPU execution of the CUDA C with every check on
(synccheck, racecheck, initcheck, memcheck: kernels/cpu/launch.cpp) under three schedules: a
block's threads, and the grid's blocks, in ascending order, in descending order, and in a seeded
random order drawn afresh at every barrier. Odd shapes, several blocks, the tails of every tile.

Every kernel is deterministic, so each result must be bitwise the same under every schedule and
the same as the uninstrumented build's; a kernel whose result depended on the order of its
threads (a missing barrier the checks did not see) would differ. The ops are ``KernelOps``', the
launch code the GPU backend runs. How close the results are to the reference is the conformance
suite's business (tests/test_conformance.py); tests/test_emulation_checks.py shows each check
catching a broken kernel.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest

from bpgpu.backends.base import BackendUnavailableError, Network
from bpgpu.backends.cuda_emulated import CudaEmulatedBackend
from bpgpu.backends.cuda_launch import OPTIMIZER_KERNELS, entry_points
from bpgpu.functions import ACTIVATIONS, COMBINATIONS, OUTPUTS
from bpgpu.optimizers import SGD, Adam, RMSprop
from helpers import F32, F64, random, targets

SCHEDULES = ("ascending", "descending", "random:20261202")
DTYPES = {"f32": F32, "f64": F64}
#: (m, k, n): two row tiles and two column tiles of the GEMMs, three TILE_K steps, every tail
GEMM = (67, 33, 70)
#: (m, n): two blocks of the row kernels
ROWS = (131, 7)
#: a long batch over one weight tile: the weight gradient splits the batch (weight_partial)
SPLIT = (1100, 3, 5)
STEPS = {"sgd": SGD(lr=0.1, momentum=0.9, nesterov=True), "rmsprop": RMSprop(lr=0.01)}
STEPS["adam"] = Adam(lr=0.01, weight_decay=0.01)


@pytest.fixture(scope="module")
def backends() -> dict[str, CudaEmulatedBackend]:
    """The plain build (the reference order: ascending, synccheck only) and the instrumented
    build under each schedule with every check."""
    try:
        CudaEmulatedBackend.probe()
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    found = {"plain": CudaEmulatedBackend(schedule="ascending", checks="synccheck")}
    found.update({s: CudaEmulatedBackend(schedule=s, checks="all") for s in SCHEDULES})
    return found


@dataclass
class Case:
    """An op run on a backend (fresh inputs from a fixed seed, results as host arrays) and the
    entry points it must launch."""

    id: str
    run: Callable[[CudaEmulatedBackend], list[np.ndarray]]
    kernels: set[str]


def _rng() -> np.random.Generator:
    return np.random.default_rng(20261202)


def _dense_forward(act: str, t: str) -> Case:
    def run(xp: CudaEmulatedBackend) -> list[np.ndarray]:
        (m, k, n), d, rng = GEMM, DTYPES[t], _rng()
        X, W, b = (
            random(rng, (m, k), d),
            random(rng, (k, n), d, 1 / math.sqrt(k)),
            random(rng, (n,), d),
        )
        out = np.full((m, n), np.nan, d)
        xp.dense_forward(X.astype(d), W.astype(d), b.astype(d), act, out)
        return [out]

    return Case(f"dense_forward-{act}-{t}", run, {f"dense_forward_{act}_{t}"})


def _delta_backward(act: str, t: str) -> Case:
    def run(xp: CudaEmulatedBackend) -> list[np.ndarray]:
        (m, n, k), d, rng = GEMM, DTYPES[t], _rng()
        D, W = random(rng, (m, n), d), random(rng, (k, n), d)
        A = ACTIVATIONS[act].f(random(rng, (m, k), d))
        out = np.full((m, k), np.nan, d)
        xp.delta_backward(D.astype(d), W.astype(d), A.astype(d), act, out)
        return [out]

    return Case(f"delta_backward-{act}-{t}", run, {f"delta_backward_{act}_{t}"})


def _output_forward(output: str, t: str) -> Case:
    def run(xp: CudaEmulatedBackend) -> list[np.ndarray]:
        d = DTYPES[t]
        out = np.full(ROWS, np.nan, d)
        xp.output_forward(random(_rng(), ROWS, d, 3.0).astype(d), output, out)
        return [out]

    return Case(f"output_forward-{output}-{t}", run, {f"output_forward_{output}_{t}"})


def _output_delta(output: str, loss: str, t: str) -> Case:
    def run(xp: CudaEmulatedBackend) -> list[np.ndarray]:
        d, rng = DTYPES[t], _rng()
        Z, Y = random(rng, ROWS, d, 3.0).astype(d), targets(rng, output, *ROWS).astype(d)
        A, D, stats = np.full(ROWS, np.nan, d), np.full(ROWS, np.nan, d), np.zeros(2)
        xp.output_delta(Z, Y, output, loss, A, D, stats)
        return [A, D, stats]

    kernels = {f"output_delta_{output}_{loss}_{t}", "row_stats_reduce"}
    return Case(f"output_delta-{output}-{loss}-{t}", run, kernels)


def _evaluate_step(output: str, loss: str, t: str) -> Case:
    """A hidden tanh layer, then the last layer fused with its loss (n <= TILE_N)."""

    def run(xp: CudaEmulatedBackend) -> list[np.ndarray]:
        (m, k, _), n, d, rng = GEMM, 5, DTYPES[t], _rng()
        sizes = [7, k, n]
        params = [(random(rng, (p, q), d, 0.5), random(rng, (q,), d)) for p, q in [(7, k), (k, n)]]
        net = Network(
            [W.astype(d) for W, _ in params],
            [b.astype(d) for _, b in params],
            ["tanh"],
            output,
            loss,
        )
        ws = xp.workspace(sizes, m, d)
        X, Y = random(rng, (m + 3, 7), d).astype(d), targets(rng, output, m + 3, n).astype(d)
        index = rng.permutation(m + 3)[:m].astype(np.int64)
        stats = np.zeros(2)
        xp.evaluate_step(net, ws, X, Y, index, stats)
        return [ws.Z, ws.P, ws.D[-1], stats]

    kernels = {
        f"gather_rows_{t}",
        f"dense_forward_tanh_{t}",
        f"dense_output_delta_{output}_{loss}_{t}",
        "row_stats_reduce",
    }
    return Case(f"evaluate_step-{output}-{loss}-{t}", run, kernels)


def _weight_step(variant: str, t: str, shape: tuple[int, int, int]) -> Case:
    """Two updates in place (the optimizer state carried over), or the plain gradient."""

    def run(xp: CudaEmulatedBackend) -> list[np.ndarray]:
        (m, k, n), d, rng = shape, DTYPES[t], _rng()
        W, b = random(rng, (k, n), d).astype(d), random(rng, (n,), d).astype(d)
        if variant == "store":
            A, D = random(rng, (m, k), d).astype(d), random(rng, (m, n), d, 1 / m).astype(d)
            xp.weight_gradient(A, D, W, b)
            return [W, b]
        state = xp.optimizer_state(STEPS[variant], W, b)
        for _ in range(2):
            A, D = random(rng, (m, k), d).astype(d), random(rng, (m, n), d, 1 / m).astype(d)
            xp.weight_update(A, D, W, b, state)
        return [W, b, *state.W.values(), *state.b.values()]

    split = shape == SPLIT
    kernels = (
        {f"weight_partial_{t}", f"weight_finish_{variant}_{t}"}
        if split
        else {f"weight_update_{variant}_{t}"}
    )
    return Case(f"weight_{'split' if split else 'update'}-{variant}-{t}", run, kernels)


def _gather_rows(t: str) -> Case:
    def run(xp: CudaEmulatedBackend) -> list[np.ndarray]:
        d, rng = DTYPES[t], _rng()
        src = random(rng, (ROWS[0] + 9, ROWS[1]), d).astype(d)
        out = np.full(ROWS, np.nan, d)
        xp.gather_rows(src, rng.integers(0, len(src), ROWS[0]).astype(np.int64), out)
        return [out]

    return Case(f"gather_rows-{t}", run, {f"gather_rows_{t}"})


def _cases() -> list[Case]:
    cases: list[Case] = []
    for t in DTYPES:
        cases += [_dense_forward(a, t) for a in ACTIVATIONS]
        cases += [_delta_backward(a, t) for a in ACTIVATIONS]
        cases += [_output_forward(o, t) for o in OUTPUTS]
        cases += [_output_delta(o, lo, t) for o, lo in sorted(COMBINATIONS)]
        cases += [_evaluate_step(o, lo, t) for o, lo in sorted(COMBINATIONS)]
        for variant in OPTIMIZER_KERNELS:
            cases += [_weight_step(variant, t, GEMM), _weight_step(variant, t, SPLIT)]
        cases.append(_gather_rows(t))
    return cases


CASES = _cases()


def test_the_cases_launch_every_entry_point() -> None:
    listed = {name for names in entry_points().values() for name in names}
    covered = set().union(*(case.kernels for case in CASES))
    assert listed <= covered, f"no case launches {sorted(listed - covered)}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_every_schedule_gives_the_same_bits(backends, case: Case) -> None:
    results = {}
    for schedule, xp in backends.items():
        before = Counter(xp.launched)
        results[schedule] = case.run(xp)
        assert set(xp.launched - before) == case.kernels, schedule
    want = results["plain"]
    for schedule, got in results.items():
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            same = g.tobytes() == w.tobytes()
            where = np.argwhere(g != w)[:3].tolist()
            assert same, (
                f"{case.id} result {i} under {schedule} differs from the plain build at {where}"
            )
    assert not any(np.isnan(r).any() for r in want), f"{case.id} left a NaN (an unwritten output)"
