"""What ``MLP.fit`` needs besides the model: its checked arguments, where a run stands (``Run``:
what a checkpoint records), the checks of a resume, the errors that end a run early and what
they carry, and Ctrl-C that stops between steps rather than inside one.

The epoch loop itself is in bpgpu/model.py (it drives the model's arrays); a checkpoint's file
format is in bpgpu/serialization.py.
"""

from __future__ import annotations

import hashlib
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import numpy as np

from bpgpu.backends.state import Array, HostOptimizerState, OptimizerState
from bpgpu.functions import check_name
from bpgpu.history import History
from bpgpu.optimizers import Optimizer, make_optimizer
from bpgpu.progress import Progress, check_verbose
from bpgpu.serialization import RunRecord, SavedCheckpoint, SavedModel
from bpgpu.validation import check_int

if TYPE_CHECKING:
    from bpgpu.distributed.data_parallel import DataParallel
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


class TrainingInterrupted(KeyboardInterrupt):
    """``fit`` stopped on Ctrl-C (a KeyboardInterrupt, so code that catches those still does).

    The model keeps the weights of the last completed step and the optimizer state that goes
    with them, so ``fit`` with the same optimizer continues; ``history`` (also the model's
    ``history``) lists the completed epochs; ``epoch`` is the epoch in progress and ``step``
    the steps of it done (0: it stopped between epochs); ``checkpoint`` the file written, if
    ``fit`` was asked for one. A second Ctrl-C stops at once, inside a step: then the model
    keeps the weights of the last completed epoch and drops the optimizer state.
    """

    def __init__(
        self,
        message: str,
        history: History | None = None,
        epoch: int = 0,
        step: int = 0,
        checkpoint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.history, self.epoch, self.step, self.checkpoint = history, epoch, step, checkpoint

    @classmethod
    def between_steps(cls, run: Run) -> TrainingInterrupted:
        """The interruption of ``run`` where it stands: after a step, or after an epoch."""
        epoch = run.epochs_done + (1 if run.batches_done else 0)
        steps = -(-run.n // run.settings.batch_size)
        where = (
            f"in epoch {epoch} after step {run.batches_done} of {steps}"
            if run.batches_done
            else f"after epoch {epoch}"
        )
        path = run.settings.checkpoint
        saved = (
            f"; checkpoint written to {path!r} (continue with fit(..., resume={path!r}))"
            if path is not None
            else ""
        )
        done = len(run.history.epochs)
        return cls(
            f"training interrupted {where}: the model keeps the weights of that step and the "
            f"History of its {done} completed epoch{'' if done == 1 else 's'}{saved}",
            history=run.history,
            epoch=epoch,
            step=run.batches_done,
            checkpoint=path,
        )


@dataclass(frozen=True)
class FitSettings:
    """fit's own arguments, checked. ``optimizer`` None: the model's own optimizer (continued),
    the checkpoint's when resuming, else plain SGD."""

    epochs: int
    batch_size: int
    optimizer: Optimizer | None
    shuffle: bool
    seed: int | None
    patience: int | None
    verbose: int
    checkpoint: str | None = None
    checkpoint_every: int = 1
    resume: str | None = None
    reset: bool = False


def _path(value: object, name: str, folder_must_exist: bool) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name} must be a file path; got {value!r}")
    path = os.fspath(value)
    if not isinstance(path, str) or not path:
        raise TypeError(f"{name} must be a non-empty file path; got {value!r}")
    folder = Path(path).parent
    if folder_must_exist and not folder.is_dir():
        raise ValueError(f"{name}: the folder {str(folder)!r} of {path!r} does not exist")
    return path


def check_fit_arguments(
    epochs: object,
    batch_size: object,
    optimizer: Optimizer | str | None,
    lr: float | None,
    shuffle: object,
    seed: object,
    patience: object,
    verbose: object,
    checkpoint: object = None,
    checkpoint_every: object = 1,
    resume: object = None,
    reset: object = False,
) -> FitSettings:
    flags = {"shuffle": shuffle, "reset": reset}
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
        verbose=check_verbose(verbose),
        checkpoint=_path(checkpoint, "checkpoint", folder_must_exist=True),
        checkpoint_every=check_int(checkpoint_every, "checkpoint_every", 1),
        resume=_path(resume, "resume", folder_must_exist=False),
        reset=bool(reset),
    )


#: how validation_split picks the rows it holds out (MLP.fit)
VALIDATION_MODES = ("last", "shuffle", "stratified")


def check_validation_arguments(
    validation_split: object, validation_data: tuple[object, object] | None, mode: object
) -> None:
    check_name(mode, VALIDATION_MODES, "validation_mode")
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


def check_resume(
    name: str, saved: SavedCheckpoint, model: SavedModel, record: RunRecord, epochs: int
) -> None:
    """ValueError, saying what differs, unless the checkpoint ``saved`` (read from ``name``) is
    of this model (``model``: its description), these settings and data (``record``), and has
    not run past ``epochs``."""
    for attr in ("layers", "activations", "output", "loss", "dtype"):
        theirs, ours = getattr(saved.model, attr), getattr(model, attr)
        if theirs != ours:
            raise ValueError(
                f"resume: checkpoint {name!r} is of a model with {attr} {theirs!r}; "
                f"this model has {ours!r}"
            )
    for attr in ("batch_size", "shuffle", "patience"):
        theirs, ours = getattr(saved.run, attr), getattr(record, attr)
        if theirs != ours:
            raise ValueError(
                f"{attr}={ours!r} differs from the {theirs!r} of the run in checkpoint "
                f"{name!r}; resume with the settings the run started with"
            )
    if saved.run != record:
        raise ValueError(
            f"X and y differ from the data the run in checkpoint {name!r} trained on "
            f"({saved.run.samples} training, {saved.run.validation_samples} validation "
            "samples); resume on the same data, split the same way"
        )
    reached = saved.epochs_done + (1 if saved.batches_done else 0)
    if epochs < reached:
        raise ValueError(
            f"epochs={epochs} is fewer than the run in checkpoint {name!r} has reached "
            f"(epoch {reached}); epochs counts from the run's start"
        )


def data_digest(*arrays: np.ndarray) -> str:
    """sha256 of the arrays' shapes, dtypes and bytes: a resumed run checks it trains on the
    data its checkpoint was written for."""
    digest = hashlib.sha256()
    for a in arrays:
        digest.update(f"{a.shape}{a.dtype.str};".encode())
        digest.update(np.ascontiguousarray(a).data)
    return digest.hexdigest()


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


class InterruptGuard:
    """While active in the main thread, Ctrl-C (SIGINT) sets ``requested`` instead of raising
    KeyboardInterrupt in the middle of a step: training stops after the step in progress. A
    second Ctrl-C raises KeyboardInterrupt at once. Where Python's own SIGINT handler is not the
    one in place (another thread, a program that handles SIGINT itself), it changes nothing."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> InterruptGuard:
        if (
            threading.current_thread() is threading.main_thread()
            and signal.getsignal(signal.SIGINT) is signal.default_int_handler
        ):
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # no printing here: the main thread may be inside a write to the same stream
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True


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
    loop stands (what a checkpoint records): ``epochs_done`` whole epochs, then
    ``batches_done`` steps of the next over ``order``."""

    settings: FitSettings
    optimizer: Optimizer
    X: Array
    Y: Array
    n: int
    held_out: tuple[Array, Array, int] | None
    host_X: np.ndarray
    record: RunRecord | None
    states: list[OptimizerState]
    rng: np.random.Generator
    order: np.ndarray
    stats: Array
    history: History
    stopping: EarlyStopping | None
    before: list[Array]
    guard: InterruptGuard = field(default_factory=InterruptGuard)
    epochs_done: int = 0
    batches_done: int = 0
    #: (epoch, weights at its end) of the last two epochs, newest first
    kept: list[tuple[int, list[Array]]] = field(default_factory=list)
    progress: Progress = field(default_factory=lambda: Progress(0, 0, 0))
    wall_before: float = 0.0
    started: float = field(default_factory=time.perf_counter)
    #: this rank's part of a data-parallel fit (None: one process)
    parallel: DataParallel | None = None

    def elapsed(self) -> float:
        """Training time of the whole run, the part before a resume included."""
        return self.wall_before + time.perf_counter() - self.started

    def stop_requested(self) -> bool:
        """Whether Ctrl-C asks the loop to stop: this process's, or in a data-parallel fit
        any rank's by the last step (so that every rank stops after the same step)."""
        return self.guard.requested if self.parallel is None else self.parallel.stop_requested


def finite_or_none(value: float) -> float | None:
    return value if math.isfinite(value) else None
