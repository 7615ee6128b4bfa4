"""Optimizers: one class each, holding everything bpgpu knows about an update rule.

A class gives its hyperparameters (checked when it is made), the per-parameter state it keeps
(``slots``), its NumPy update (``update``, used by both NumPy backends), what its kernels read
(``code``, the case of kernels/optimizers.cuh and of the numba optimizer kernel, and
``kernel_scalars(t)``, the numbers of update t) and the PyTorch optimizer it equals (for the
benchmark's comparison; torch is never imported here).

Adding an optimizer: its class here and in OPTIMIZERS, its case in kernels/optimizers.cuh and
its case in ``optimizer_rule`` of bpgpu/backends/numba_rules.py (which the numba kernels and
the compiled CPU path share).

The rules, for a parameter P with gradient G; weight decay is L2 on the weights only, added to
the gradient first (G <- G + wd W); t counts updates from 1. These are PyTorch's conventions:

* SGD:      V <- mu V + G;  step = G + mu V (Nesterov) or V (momentum) or G (mu = 0);  P -= lr step
* RMSprop:  S <- rho S + (1 - rho) G^2;  P -= lr G / (sqrt(S) + eps)
* Adam:     M <- b1 M + (1 - b1) G;  V <- b2 V + (1 - b2) G^2;
            P -= lr (M / (1 - b1^t)) / (sqrt(V / (1 - b2^t)) + eps)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from bpgpu.schedules import Schedule

#: numbers every kernel update reads: (lr, weight_decay, then six of the rule's own)
KERNEL_SCALARS = 8


def hyperparameter(default: float, low: float, high: float = math.inf, *, open_low: bool = False):
    """A dataclass field holding a number in [low, high) ((low, high) with ``open_low``),
    checked by ``Optimizer.__post_init__``."""
    return field(default=default, metadata={"range": (low, high, open_low)})


def learning_rate(default: float):
    """The ``lr`` field: a positive number, or a Schedule (bpgpu/schedules.py)."""
    return field(default=default, metadata={"range": (0.0, math.inf, True), "schedule": True})


def _check(name: str, value: object, low: float, high: float, open_low: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number; got {value!r}")
    number = float(value)
    below = number <= low if open_low else number < low
    if not math.isfinite(number) or below or number >= high:
        lo = "(" if open_low else "["
        raise ValueError(f"{name} must be in {lo}{low}, {high}); got {value!r}")
    return number


@dataclass(frozen=True)
class Optimizer:
    """Base class: a frozen set of hyperparameters and the rule that uses them."""

    lr: float | Schedule

    #: the rule's name ('sgd', 'rmsprop', 'adam'), also the kernel entry points' name part
    kind: ClassVar[str] = "base"
    #: the rule's case in kernels/optimizers.cuh (enum Opt) and in the numba kernel
    code: ClassVar[int] = -1
    #: names of the per-parameter state arrays, each shaped like the parameter
    slots: ClassVar[tuple[str, ...]] = ()

    if TYPE_CHECKING:  # a field of every subclass, declared there after the rule's own
        weight_decay: float = 0.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.metadata.get("schedule") and isinstance(value, Schedule):
                continue
            if "range" in f.metadata:
                object.__setattr__(self, f.name, _check(f.name, value, *f.metadata["range"]))

    def lr_at(self, t: int) -> float:
        """The learning rate of update t (counted from 1)."""
        return self.lr(t) if isinstance(self.lr, Schedule) else self.lr

    def params(self) -> dict[str, Any]:
        """The hyperparameters by name."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def kernel_scalars(self, t: int) -> tuple[float, ...]:
        """What the kernels read for update ``t`` (counted from 1): (lr, weight_decay, then the
        rule's own numbers, see kernels/optimizers.cuh), KERNEL_SCALARS long."""
        own = self._kernel_scalars(t)
        return (self.lr_at(t), self.weight_decay, *own) + (0.0,) * (KERNEL_SCALARS - 2 - len(own))

    def _kernel_scalars(self, t: int) -> tuple[float, ...]:
        return ()

    def kernel_scalars_table(self, first: int, count: int, dtype: np.dtype) -> np.ndarray:
        """``kernel_scalars(t)`` of the updates t = first ... first + count - 1, a row each,
        in ``dtype``: the same formulas, evaluated on an array of update counts at once."""
        t = np.arange(first, first + count, dtype=np.int64)
        table = np.empty((count, KERNEL_SCALARS), dtype)
        for column, value in enumerate(self.kernel_scalars(t)):  # type: ignore[arg-type]
            table[:, column] = value
        return table

    def apply(
        self,
        P: np.ndarray,
        G: np.ndarray,
        slots: dict[str, np.ndarray],
        tmp: np.ndarray,
        t: int,
        *,
        decay: bool,
    ) -> None:
        """Update ``t`` of P in place from its gradient G, weight decay first when ``decay``
        (weights, not biases); G and tmp (shaped like P) are scratch and are overwritten."""
        if decay and self.weight_decay:
            G += self.weight_decay * P
        self.update(P, G, slots, tmp, t)

    def update(
        self, P: np.ndarray, G: np.ndarray, slots: dict[str, np.ndarray], tmp: np.ndarray, t: int
    ) -> None:
        """The rule in NumPy, in place: P <- P - step(G), the slot arrays updated."""
        raise NotImplementedError

    def torch_optimizer(self) -> tuple[str, dict[str, Any]]:
        """The ``torch.optim`` class name and keyword arguments of the same rule (with a
        schedule, its first rate; bpgpu decays weights only, so give torch's biases a parameter
        group without weight decay)."""
        raise NotImplementedError


@dataclass(frozen=True)
class SGD(Optimizer):
    lr: float | Schedule = learning_rate(0.01)  # noqa: RUF009 (a dataclasses.field)
    momentum: float = hyperparameter(0.0, 0.0, 1.0)
    nesterov: bool = False
    weight_decay: float = hyperparameter(0.0, 0.0)

    kind = "sgd"
    code = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.nesterov, bool):
            raise TypeError(f"nesterov must be a bool; got {self.nesterov!r}")
        if self.nesterov and self.momentum == 0.0:
            raise ValueError("nesterov=True needs momentum > 0")

    @property
    def slots(self) -> tuple[str, ...]:  # type: ignore[override]
        """Momentum needs a velocity; plain SGD needs no state."""
        return ("velocity",) if self.momentum > 0.0 else ()

    def _kernel_scalars(self, t: int) -> tuple[float, ...]:
        return (self.momentum, 1.0 if self.nesterov else 0.0)

    def update(
        self, P: np.ndarray, G: np.ndarray, slots: dict[str, np.ndarray], tmp: np.ndarray, t: int
    ) -> None:
        if self.momentum:
            v = slots["velocity"]
            v *= self.momentum
            v += G  # v = mu v + g
            if self.nesterov:
                np.multiply(v, self.momentum, out=tmp)
                G += tmp  # step = g + mu v
            else:
                np.copyto(G, v)  # step = v
        G *= self.lr_at(t)
        P -= G

    def torch_optimizer(self) -> tuple[str, dict[str, Any]]:
        return "SGD", {
            "lr": self.lr_at(1),
            "momentum": self.momentum,
            "nesterov": self.nesterov,
            "weight_decay": self.weight_decay,
        }


@dataclass(frozen=True)
class RMSprop(Optimizer):
    lr: float | Schedule = learning_rate(1e-3)  # noqa: RUF009 (a dataclasses.field)
    rho: float = hyperparameter(0.9, 0.0, 1.0)
    eps: float = hyperparameter(1e-7, 0.0, open_low=True)
    weight_decay: float = hyperparameter(0.0, 0.0)

    kind = "rmsprop"
    code = 2
    slots = ("square_avg",)

    def _kernel_scalars(self, t: int) -> tuple[float, ...]:
        return (self.rho, self.eps)

    def update(
        self, P: np.ndarray, G: np.ndarray, slots: dict[str, np.ndarray], tmp: np.ndarray, t: int
    ) -> None:
        s = slots["square_avg"]
        s *= self.rho
        np.multiply(G, G, out=tmp)
        tmp *= 1 - self.rho
        s += tmp  # s = rho s + (1 - rho) g^2
        np.sqrt(s, out=tmp)
        tmp += self.eps
        G /= tmp
        G *= self.lr_at(t)
        P -= G  # p -= lr g / (sqrt(s) + eps)

    def torch_optimizer(self) -> tuple[str, dict[str, Any]]:
        return "RMSprop", {
            "lr": self.lr_at(1),
            "alpha": self.rho,
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }


@dataclass(frozen=True)
class Adam(Optimizer):
    lr: float | Schedule = learning_rate(1e-3)  # noqa: RUF009 (a dataclasses.field)
    beta1: float = hyperparameter(0.9, 0.0, 1.0)
    beta2: float = hyperparameter(0.999, 0.0, 1.0)
    eps: float = hyperparameter(1e-8, 0.0, open_low=True)
    weight_decay: float = hyperparameter(0.0, 0.0)

    kind = "adam"
    code = 3
    slots = ("exp_avg", "exp_avg_sq")

    def _kernel_scalars(self, t: int) -> tuple[float, ...]:
        # the bias corrections of update t: lr / (1 - b1^t) and 1 / sqrt(1 - b2^t)
        return (
            self.beta1,
            self.beta2,
            self.eps,
            self.lr_at(t) / (1.0 - self.beta1**t),
            1.0 / np.sqrt(1.0 - self.beta2**t),
        )

    def update(
        self, P: np.ndarray, G: np.ndarray, slots: dict[str, np.ndarray], tmp: np.ndarray, t: int
    ) -> None:
        m, v = slots["exp_avg"], slots["exp_avg_sq"]
        m *= self.beta1
        np.multiply(G, 1 - self.beta1, out=tmp)
        m += tmp  # m = b1 m + (1 - b1) g
        np.multiply(G, G, out=tmp)
        tmp *= 1 - self.beta2
        v *= self.beta2
        v += tmp  # v = b2 v + (1 - b2) g^2
        # p -= lr m_hat / (sqrt(v_hat) + eps), m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)
        np.sqrt(v, out=tmp)
        tmp *= 1.0 / np.sqrt(1.0 - self.beta2**t)
        tmp += self.eps
        np.divide(m, tmp, out=G)
        G *= self.lr_at(t) / (1.0 - self.beta1**t)
        P -= G

    def torch_optimizer(self) -> tuple[str, dict[str, Any]]:
        return "Adam", {
            "lr": self.lr_at(1),
            "betas": (self.beta1, self.beta2),
            "eps": self.eps,
            "weight_decay": self.weight_decay,
        }


#: every optimizer by name, for ``make_optimizer``, the CLI and the benchmark
OPTIMIZERS: dict[str, type[SGD] | type[RMSprop] | type[Adam]] = {
    cls.kind: cls for cls in (SGD, RMSprop, Adam)
}


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
