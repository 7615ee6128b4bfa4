"""Learning-rate schedules: the rate of update t (counted from 1 over the optimizer's life).

Give one as an optimizer's ``lr``: ``bpgpu.Adam(lr=bpgpu.CosineDecay(1e-3, steps=10_000))``.
Every backend asks it for the rate of each update: the NumPy backends in their update, the
kernels among the optimizer's numbers of the update (``Optimizer.kernel_scalars``), which live
in device memory, so a captured CUDA graph replays with the new rate and nothing is recompiled.
A schedule also takes an array of update counts and gives their rates (the compiled CPU path
asks for a whole epoch's at once).

    StepDecay(lr, step_size, gamma)   lr * gamma^floor((t - 1) / step_size)
    ExponentialDecay(lr, gamma)       lr * gamma^(t - 1)
    CosineDecay(lr, steps, min_lr)    min_lr + (lr - min_lr) (1 + cos(pi s)) / 2,
                                      s = min(t - 1, steps) / steps
    Warmup(schedule, steps)           schedule(t) * min(1, t / steps)  (a float: a constant rate)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import numpy as np

from bpgpu.validation import check_int


def _positive(name: str, value: object, upper: float = math.inf, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number; got {value!r}")
    number = float(value)
    low_ok = number >= 0 if zero else number > 0
    if not (math.isfinite(number) and low_ok and number <= upper):
        span = "[0" if zero else "(0"
        raise ValueError(f"{name} must be in {span}, {upper}]; got {value!r}")
    return number


class Schedule:
    """Base class: ``schedule(t)`` is the learning rate of update t >= 1."""

    def __call__(self, t: int) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self))  # type: ignore[arg-type]
        return f"{type(self).__name__}({args})"


@dataclass(frozen=True, repr=False)
class StepDecay(Schedule):
    lr: float
    step_size: int
    gamma: float = 0.1

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", _positive("lr", self.lr))
        object.__setattr__(self, "step_size", check_int(self.step_size, "step_size", 1))
        object.__setattr__(self, "gamma", _positive("gamma", self.gamma, 1.0))

    def __call__(self, t: int) -> float:
        return self.lr * self.gamma ** ((t - 1) // self.step_size)


@dataclass(frozen=True, repr=False)
class ExponentialDecay(Schedule):
    lr: float
    gamma: float

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", _positive("lr", self.lr))
        object.__setattr__(self, "gamma", _positive("gamma", self.gamma, 1.0))

    def __call__(self, t: int) -> float:
        return self.lr * self.gamma ** (t - 1)


@dataclass(frozen=True, repr=False)
class CosineDecay(Schedule):
    lr: float
    steps: int
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", _positive("lr", self.lr))
        object.__setattr__(self, "steps", check_int(self.steps, "steps", 1))
        object.__setattr__(self, "min_lr", _positive("min_lr", self.min_lr, self.lr, zero=True))

    def __call__(self, t: int) -> float:
        done = np.minimum(t - 1, self.steps) / self.steps
        return self.min_lr + (self.lr - self.min_lr) * (1 + np.cos(math.pi * done)) / 2


@dataclass(frozen=True, repr=False)
class Warmup(Schedule):
    schedule: Schedule | float
    steps: int

    def __post_init__(self) -> None:
        if not isinstance(self.schedule, Schedule):
            object.__setattr__(self, "schedule", _positive("schedule", self.schedule))
        object.__setattr__(self, "steps", check_int(self.steps, "steps", 1))

    def __call__(self, t: int) -> float:
        base = self.schedule(t) if isinstance(self.schedule, Schedule) else self.schedule
        return base * np.minimum(1.0, t / self.steps)
