"""Learning-rate schedules: their rates, their checks, and an optimizer following one (every
backend follows it too: tests/test_conformance.py fits with one against the reference)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import bpgpu
from bpgpu.backends.reference import ReferenceBackend


def test_rates():
    step = bpgpu.StepDecay(0.1, step_size=2, gamma=0.5)
    assert [step(t) for t in range(1, 6)] == [0.1, 0.1, 0.05, 0.05, 0.025]
    exp = bpgpu.ExponentialDecay(0.2, gamma=0.9)
    assert exp(1) == 0.2 and exp(3) == pytest.approx(0.2 * 0.81)
    cos = bpgpu.CosineDecay(1.0, steps=4, min_lr=0.2)
    assert [cos(t) for t in (1, 3, 5, 9)] == pytest.approx([1.0, 0.6, 0.2, 0.2])
    warm = bpgpu.Warmup(step, steps=4)
    assert [warm(t) for t in (1, 2, 4, 5)] == pytest.approx([0.025, 0.05, 0.05, 0.025])
    assert bpgpu.Warmup(0.3, steps=3)(1) == pytest.approx(0.1)
    assert repr(cos) == "CosineDecay(lr=1.0, steps=4, min_lr=0.2)"


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: bpgpu.StepDecay(0, 3), ValueError, "lr"),
        (lambda: bpgpu.StepDecay(0.1, 0), ValueError, "step_size"),
        (lambda: bpgpu.StepDecay(0.1, 2.5), TypeError, "step_size"),
        (lambda: bpgpu.ExponentialDecay(0.1, 1.5), ValueError, "gamma"),
        (lambda: bpgpu.CosineDecay(0.1, 10, min_lr=0.2), ValueError, "min_lr"),
        (lambda: bpgpu.Warmup("fast", 3), TypeError, "schedule"),
        (lambda: bpgpu.Adam(lr="0.1"), TypeError, "lr"),
    ],
)
def test_bad_schedules_name_the_argument(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("kind", ["sgd", "rmsprop", "adam"])
def test_an_optimizer_follows_its_schedule(rng, kind):
    """Updates with a schedule equal updates whose constant rate is the schedule's at each t."""
    schedule = bpgpu.Warmup(bpgpu.CosineDecay(0.1, steps=5, min_lr=0.01), steps=2)
    cls = bpgpu.optimizers.OPTIMIZERS[kind]
    xp = ReferenceBackend()
    W, b = rng.normal(size=(3, 4)), rng.normal(size=4)
    scheduled = cls(lr=schedule)
    state = xp.optimizer_state(scheduled, W, b)
    W_want, b_want = W.copy(), b.copy()
    want_state = xp.optimizer_state(cls(), W_want, b_want)
    for t in range(1, 8):
        A, D = rng.normal(size=(5, 3)), rng.normal(size=(5, 4))
        xp.weight_update(A, D, W, b, state)
        want_state.optimizer = cls(lr=schedule(t))
        xp.weight_update(A, D, W_want, b_want, want_state)
        assert scheduled.kernel_scalars(t)[0] == schedule(t)
    np.testing.assert_allclose(W, W_want, rtol=1e-13)
    np.testing.assert_allclose(b, b_want, rtol=1e-13)
    assert not math.isclose(schedule(1), schedule(5))
