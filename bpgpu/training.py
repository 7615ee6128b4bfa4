"""What ``MLP.fit`` needs besides the model: its checked arguments, where a run stands
(``Run``), and the error that ends a diverging run and what it carries.

The epoch loop itself is in bpgpu/model.py (it drives the model's arrays).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bpgpu.backends.state import Array, HostOptimizerState, OptimizerState
from bpgpu.history import History
from bpgpu.optimizers import Optimizer, make_optimizer
from bpgpu.validation import check_int

if TYPE_CHECKING:
    from bpgpu.model import EarlyStopping

#: inputs larger than this in magnitude are named as the likely cause of a divergence
LARGE_INPUT = 100.0


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite. The model keeps the weights of the last epoch whose
    loss was finite and whose forward pass over the training data does not overflow
    (``kept_epoch``; None: the weights it had before ``fit``), and ``history`` holds the
    epochs that finished with a finite loss. The optimizer state is dropped."""

    def __init__(
        self, message: str, history: History | None = None, kept_epoch: int | None = None
    ) -> None:
        super().__init__(message)
        self.history = history
        self.kept_epoch = kept_epoch


@dataclass(frozen=True)
class FitSettings:
    """fit's own arguments, checked. ``optimizer`` None: the model's own optimizer (continued),
    else plain SGD."""

    epochs: int
    batch_size: int
    optimizer: Optimizer | None
    shuffle: bool
    seed: int | None
    patience: int | None
    verbose: bool
    reset: bool = False


def check_fit_arguments(
    epochs: object,
    batch_size: object,
    optimizer: Optimizer | str | None,
    lr: float | None,
    shuffle: object,
    seed: object,
    patience: object,
    verbose: object,
    reset: object = False,
) -> FitSettings:
    flags = {"shuffle": shuffle, "verbose": verbose, "reset": reset}
    for flag, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{flag} must be a bool; got {value!r}")
    return FitSettings(
        epochs=check_int(epochs, "epochs", 1),
        batch_size=check_int(batch_size, "batch_size", 1),
        optimizer=None if optimizer is None and lr is None else make_optimizer(optimizer, lr),
        shuffle=bool(shuffle),
        seed=None if seed is None else check_int(seed, "seed", 0),
        patience=None if patience is None else check_int(patience, "patience", 1),
        verbose=bool(verbose),
        reset=bool(reset),
    )


def check_validation_arguments(
    validation_split: object, validation_data: tuple[object, object] | None
) -> None:
    if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)):
        raise TypeError(f"validation_split must be a number in [0, 1); got {validation_split!r}")
    if not 0.0 <= validation_split < 1.0:
        raise ValueError(f"validation_split must be in [0, 1); got {validation_split}")
    if validation_split and validation_data is not None:
        raise ValueError("give validation_split or validation_data, not both")
    if validation_data is not None and (
        not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2
    ):
        raise ValueError("validation_data must be an (X, y) pair")


def divergence_message(
    epoch: int, loss: float, kept_epoch: int | None, inputs_reach: float, optimizer: Optimizer
) -> str:
    """Why training stopped, what the model keeps, and the likelier remedy: the inputs' scale
    when they are large (a smaller learning rate cannot help X @ W overflowing), else the
    learning rate."""
    if kept_epoch is None:
        kept = "the weights it had before fit"
    elif kept_epoch == 0:
        kept = "the weights fit started from"
    else:
        kept = f"the weights of epoch {kept_epoch}, the last whose forward pass stays finite"
    if inputs_reach > LARGE_INPUT:
        advice = (
            f"the inputs reach {inputs_reach:.3g} in magnitude: scale them to about 1 first, "
            "for example by standardizing each feature to mean 0 and standard deviation 1"
        )
    else:
        advice = f"try a smaller learning rate than lr={optimizer.lr:g}"
    return (
        f"training diverged at epoch {epoch}: the loss became {loss}; the model keeps {kept} "
        f"({advice})"
    )


@dataclass
class FitData:
    """fit's data on the host, checked: training X and Y, and the validation (X, Y)."""

    X: np.ndarray
    Y: np.ndarray
    val: tuple[np.ndarray, np.ndarray] | None


@dataclass
class ModelState:
    """What fit changes on the model, as it was before: the weights (device copies), the
    optimizer, its state (host copies of it when fit continues it) and the History."""

    weights: list[Array]
    optimizer: Optimizer | None
    states: list[OptimizerState] | None
    state_copies: list[HostOptimizerState]
    history: History | None


@dataclass
class Run:
    """One call of fit: its data on the device, each layer's optimizer state, and where the
    loop stands: ``epochs_done`` whole epochs, then ``batches_done`` steps of the next over
    ``order``."""

    settings: FitSettings
    optimizer: Optimizer
    X: Array
    Y: Array
    n: int
    held_out: tuple[Array, Array, int] | None
    host_X: np.ndarray
    states: list[OptimizerState]
    rng: np.random.Generator
    order: np.ndarray
    stats: Array
    history: History
    stopping: EarlyStopping | None
    before: list[Array]
    epochs_done: int = 0
    batches_done: int = 0
    #: (epoch, weights at its end) of the last two epochs, newest first
    kept: list[tuple[int, list[Array]]] = field(default_factory=list)
    bar: Any = None
    started: float = field(default_factory=time.perf_counter)

    def elapsed(self) -> float:
        """Training time of the run so far."""
        return time.perf_counter() - self.started
