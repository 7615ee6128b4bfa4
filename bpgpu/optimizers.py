"""Optimizers: hyperparameters only. Each backend applies them inside its weight-update op.

The step every backend implements, for a parameter P with gradient G (weight decay is L2 on
the weights, not on the biases, and is added to the gradient first: G <- G + wd * W):

* SGD:      V <- mu V + G;  step = G + mu V (Nesterov) or V (momentum) or G (mu = 0);  P -= lr step
* RMSprop:  S <- rho S + (1 - rho) G^2;  P -= lr G / (sqrt(S) + eps)
* Adam:     M <- b1 M + (1 - b1) G;  V <- b2 V + (1 - b2) G^2;  t counts updates from 1;
            P -= lr (M / (1 - b1^t)) / (sqrt(V / (1 - b2^t)) + eps)

These are PyTorch's conventions, so the benchmark compares like with like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import ClassVar


def _check(
    name: str, value: float, low: float, high: float = math.inf, *, open_low: bool = False
) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number; got {value!r}")
    value = float(value)
    below = value <= low if open_low else value < low
    if not math.isfinite(value) or below or value >= high:
        lo = "(" if open_low else "["
        raise ValueError(f"{name} must be in {lo}{low}, {high}); got {value!r}")
    return value


@dataclass(frozen=True)
class Optimizer:
    """Base class: ``kind`` names the update rule; fields are its hyperparameters."""

    lr: float

    #: the update rule's name, as backends dispatch on it
    kind: ClassVar[str] = "base"
    #: names of the per-parameter state arrays, each shaped like the parameter
    slots: ClassVar[tuple[str, ...]] = ()

    def params(self) -> dict[str, float]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class SGD(Optimizer):
    lr: float = 0.01
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0

    kind = "sgd"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", _check("lr", self.lr, 0.0, open_low=True))
        object.__setattr__(self, "momentum", _check("momentum", self.momentum, 0.0, 1.0))
        object.__setattr__(self, "weight_decay", _check("weight_decay", self.weight_decay, 0.0))
        if not isinstance(self.nesterov, bool):
            raise TypeError(f"nesterov must be a bool; got {self.nesterov!r}")
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0")

    @property
    def slots(self) -> tuple[str, ...]:  # type: ignore[override]
        """Momentum needs a velocity; plain SGD needs no state."""
        return ("velocity",) if self.momentum > 0.0 else ()


@dataclass(frozen=True)
class RMSprop(Optimizer):
    lr: float = 1e-3
    rho: float = 0.9
    eps: float = 1e-7
    weight_decay: float = 0.0

    kind = "rmsprop"
    slots = ("square_avg",)

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", _check("lr", self.lr, 0.0, open_low=True))
        object.__setattr__(self, "rho", _check("rho", self.rho, 0.0, 1.0))
        object.__setattr__(self, "eps", _check("eps", self.eps, 0.0, open_low=True))
        object.__setattr__(self, "weight_decay", _check("weight_decay", self.weight_decay, 0.0))


@dataclass(frozen=True)
class Adam(Optimizer):
    lr: float = 1e-3
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0

    kind = "adam"
    slots = ("exp_avg", "exp_avg_sq")

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", _check("lr", self.lr, 0.0, open_low=True))
        object.__setattr__(self, "beta1", _check("beta1", self.beta1, 0.0, 1.0))
        object.__setattr__(self, "beta2", _check("beta2", self.beta2, 0.0, 1.0))
        object.__setattr__(self, "eps", _check("eps", self.eps, 0.0, open_low=True))
        object.__setattr__(self, "weight_decay", _check("weight_decay", self.weight_decay, 0.0))


OPTIMIZERS: dict[str, type[Optimizer]] = {"sgd": SGD, "rmsprop": RMSprop, "adam": Adam}


def make_optimizer(optimizer: Optimizer | str | None, lr: float | None = None) -> Optimizer:
    """An optimizer from an instance, a name ('sgd', 'rmsprop', 'adam') or None (SGD)."""
    if optimizer is None:
        optimizer = "sgd"
    if isinstance(optimizer, Optimizer):
        if lr is not None:
            raise ValueError("lr is given twice: pass it to the optimizer, not to fit")
        return optimizer
    if isinstance(optimizer, str):
        key = optimizer.lower()
        if key not in OPTIMIZERS:
            raise ValueError(
                f"optimizer must be one of {sorted(OPTIMIZERS)} or an Optimizer; got {optimizer!r}"
            )
        cls = OPTIMIZERS[key]
        return cls() if lr is None else cls(lr=lr)
    raise TypeError(f"optimizer must be an Optimizer or a name; got {type(optimizer).__name__}")
