"""``bpgpu.MLP``: a multi-layer perceptron trained by backpropagation on any backend.

The model holds its weights on the backend's device and drives the backend's composed steps
(``train_step``, ``evaluate_step``, ``predict_step`` of bpgpu/backends/base.py); it never
computes on the arrays itself. Every argument is checked before anything changes, so a call
that raises leaves the model as it was; ``fit`` stopped by Ctrl-C or by divergence keeps what
its exception says (bpgpu/training.py).
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any, NoReturn, TextIO

import numpy as np

from bpgpu import distributed as dist
from bpgpu import explain, initializers, serialization
from bpgpu.archive import ModelFileError
from bpgpu.backends import get_backend
from bpgpu.backends.base import (
    Array,
    Backend,
    Network,
    OptimizerState,
    Workspace,
)
from bpgpu.distributed.data_parallel import DataParallel
from bpgpu.functions import (
    ACTIVATIONS,
    OUTPUTS,
    check_combination,
    check_loss,
    check_name,
)
from bpgpu.history import History
from bpgpu.optimizers import SGD, Optimizer
from bpgpu.progress import Progress
from bpgpu.training import (
    FitData,
    FitSettings,
    InterruptGuard,
    ModelState,
    Run,
    TrainingDivergedError,
    TrainingInterrupted,
    check_fit_arguments,
    check_resume,
    check_validation_arguments,
    data_digest,
    divergence_message,
    finite_or_none,
)
from bpgpu.validation import (
    MemoryBudgetError,
    as_matrix,
    as_targets,
    check_dtype,
    check_int,
    check_layers,
    check_memory,
    input_scale,
    physical_memory,
)

__all__ = ["MLP", "TrainingDivergedError", "TrainingInterrupted", "load"]

#: rows per batch when evaluating or predicting
EVAL_BATCH = 4096
#: batch sizes whose buffers a model keeps at once
_WORKSPACES_KEPT = 4
#: the most work (samples x multiply-adds of a forward pass, summed over its epochs) one call of
#: whole compiled epochs holds: one to two seconds on a core of this project's test machine
_TERMS_PER_CALL = 1 << 30
#: ... and the most samples, summed over its epochs: the call's shuffled orders and per-update
#: numbers are made beforehand, so this bounds their memory (8 MiB of orders)
_SAMPLES_PER_CALL = 1 << 20


def _check_model_memory(layers: Sequence[int], dtype: np.dtype, backend: Backend) -> None:
    """Before any weight is drawn: each W within the backend's array size limit, and all of
    them (with the largest drawn in float64 first, on the host) within its memory."""
    sizes = [fan_in * fan_out for fan_in, fan_out in itertools.pairwise(layers)]
    limit = backend.max_elements
    for l, size in enumerate(sizes, start=1):
        if limit is not None and size > limit:
            raise MemoryBudgetError(
                f"layers {list(layers)}: W_{l} would hold {size} elements; the "
                f"{backend.name} kernels take at most {limit} per array"
            )
    params = sum(sizes) + sum(layers[1:])
    check_memory(
        params * dtype.itemsize + 8 * max(sizes),
        backend.memory_bytes(),
        f"layers {list(layers)} in {dtype.name} ({params} weights and biases of "
        f"{dtype.itemsize} bytes, the largest layer drawn in float64 first)",
        f"the {backend.name} backend's memory",
    )


class MLP:
    """A dense network ``layers[0] -> ... -> layers[-1]``.

    Args:
        layers: sizes from inputs to outputs, at least two.
        activation: hidden-layer activation, one name or one per hidden layer
            ("sigmoid", "relu", "tanh", "identity").
        output: "softmax", "sigmoid" or "identity".
        loss: "cross_entropy" or "mse"; default cross-entropy for softmax and sigmoid outputs
            (binary cross-entropy for sigmoid), mse for identity.
        backend: "auto", a backend's name (``bpgpu.backends.REGISTRY``) or a Backend.
        dtype: "float32" (default) or "float64".
        seed: seeds the initial weights and the shuffling in ``fit``.
        init: how the initial weights are drawn (``bpgpu.initializers.INITIALIZERS``):
            "torch" (PyTorch's nn.Linear default, the default here), "glorot" (Keras's),
            "he", "he-relu".
    """

    def __init__(
        self,
        layers: Sequence[int],
        activation: str | Sequence[str] = "sigmoid",
        output: str = "softmax",
        loss: str | None = None,
        backend: str | Backend | None = "auto",
        dtype: str | np.dtype = "float32",
        seed: int | None = None,
        init: str = initializers.DEFAULT,
    ) -> None:
        self.layers = check_layers(layers)
        self.activations = _check_activations(activation, len(self.layers) - 2, self.layers)
        self.output = check_name(output, OUTPUTS, "output")
        if loss is None:
            loss = "mse" if self.output == "identity" else "cross_entropy"
        self.loss_name = check_loss(loss)
        check_combination(self.output, self.loss_name)
        if output == "softmax" and self.layers[-1] < 2:
            raise ValueError(
                f"output='softmax' needs at least 2 units in layers[-1]; got {self.layers[-1]} "
                "(use output='sigmoid' for one)"
            )
        self.dtype = check_dtype(dtype)
        if seed is not None:
            check_int(seed, "seed", 0)
        self.seed = seed
        self.init = check_name(init, initializers.INITIALIZERS, "init")
        self.backend = get_backend(backend)
        xp = self.backend
        _check_model_memory(self.layers, self.dtype, xp)
        Ws, bs = [], []
        for W, b in initializers.draw_weights(self.layers, self.activations, seed, init):
            Ws.append(xp.asarray(W, self.dtype))  # each float64 layer freed once copied
            bs.append(xp.asarray(b, self.dtype))
        self._net = Network(
            W=Ws, b=bs, activations=self.activations, output=self.output, loss=self.loss_name
        )
        self._workspaces: dict[int, Workspace] = {}
        #: the History of the last fit (of the epochs completed, after an interruption)
        self.history: History | None = None
        self._optimizer: Optimizer | None = None
        self._states: list[OptimizerState] | None = None

    # ---- description ------------------------------------------------------------------------

    @property
    def is_classifier(self) -> bool:
        return self.output != "identity"

    def __repr__(self) -> str:
        acts = self.activations[0] if len(set(self.activations)) == 1 else self.activations
        return (
            f"MLP({list(self.layers)}, activation={acts!r}, output={self.output!r}, "
            f"loss={self.loss_name!r}, backend={self.backend.name!r}, dtype={self.dtype.name!r})"
        )

    # ---- weights ------------------------------------------------------------------------------

    def get_weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(W_1, b_1), ...] as NumPy copies; W_l has shape (layers[l-1], layers[l])."""
        xp = self.backend
        return [
            (xp.to_host(W), xp.to_host(b)) for W, b in zip(self._net.W, self._net.b, strict=True)
        ]

    def set_weights(self, weights: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        """Replace every weight and bias; all are checked before any is written."""
        checked = self._check_weights(weights)
        xp = self.backend
        for (W, b), dW, db in zip(checked, self._net.W, self._net.b, strict=True):
            xp.copy_into(dW, xp.asarray(W, self.dtype))
            xp.copy_into(db, xp.asarray(b, self.dtype))

    def _check_weights(
        self, weights: Sequence[tuple[np.ndarray, np.ndarray]]
    ) -> list[tuple[np.ndarray, np.ndarray]]:
        """``weights`` as NumPy (W, b) pairs of this network's shapes, finite; else ValueError
        naming the first that is not."""
        if not isinstance(weights, Sequence) or len(weights) != len(self._net.W):
            raise ValueError(f"weights must be a list of {len(self._net.W)} (W, b) pairs")
        checked = []
        for l, pair in enumerate(weights, start=1):
            if not isinstance(pair, Sequence) or len(pair) != 2:
                raise ValueError(f"weights[{l - 1}] must be a (W, b) pair")
            W, b = np.asarray(pair[0]), np.asarray(pair[1])
            for name, a, shape in (
                (f"W_{l}", W, (self.layers[l - 1], self.layers[l])),
                (f"b_{l}", b, (self.layers[l],)),
            ):
                if a.shape != shape:
                    raise ValueError(f"{name} must have shape {shape}; got {a.shape}")
                if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
                    raise ValueError(f"{name} must hold finite numbers")
            checked.append((W, b))
        return checked

    def _snapshot(self) -> list[Array]:
        """A device copy of every weight and bias."""
        xp = self.backend
        copies = [xp.empty(a.shape, a.dtype) for a in (*self._net.W, *self._net.b)]
        self._snapshot_into(copies)
        return copies

    def _snapshot_into(self, snapshot: list[Array]) -> None:
        """snapshot <- the weights."""
        for dst, src in zip(snapshot, (*self._net.W, *self._net.b), strict=True):
            self.backend.copy_into(dst, src)

    def _restore(self, snapshot: list[Array]) -> None:
        """The weights <- snapshot."""
        for dst, src in zip((*self._net.W, *self._net.b), snapshot, strict=True):
            self.backend.copy_into(dst, src)

    # ---- buffers and inputs -----------------------------------------------------------------

    def _workspace(self, rows: int) -> Workspace:
        ws = self._workspaces.get(rows)
        if ws is None:
            if len(self._workspaces) >= _WORKSPACES_KEPT:
                self._workspaces.pop(next(iter(self._workspaces)))
            ws = self.backend.workspace(list(self.layers), rows, self.dtype)
            self._workspaces[rows] = ws
        return ws

    def _stats(self) -> Array:
        return self.backend.zeros((2,), np.dtype(np.float64))

    def _inputs(self, X: object, name: str = "X") -> np.ndarray:
        return as_matrix(X, name, self.layers[0], self.dtype)

    def _targets(self, y: object, n: int, name: str = "y") -> np.ndarray:
        return as_targets(y, name, n, self.layers[-1], self.output, self.dtype)

    def _host_data(self, X: object, y: object) -> tuple[np.ndarray, np.ndarray]:
        Xh = self._inputs(X)
        return Xh, self._targets(y, Xh.shape[0])

    def _on_device(self, Xh: np.ndarray, Yh: np.ndarray) -> tuple[Array, Array, int]:
        xp = self.backend
        return xp.asarray(Xh, self.dtype), xp.asarray(Yh, self.dtype), Xh.shape[0]

    def _overflow_error(self, what: str, X: np.ndarray, Y: np.ndarray | None = None) -> ValueError:
        """The error for results that are not finite although X (and y) are: the forward pass
        (or the loss) overflowed the model's dtype."""
        scales = f"X reaches {input_scale(X):.3g}"
        if Y is not None:
            scales += f", y {input_scale(Y):.3g}"
        largest = max(input_scale(a) for pair in self.get_weights() for a in pair)
        return ValueError(
            f"{what} overflows {self.dtype.name} ({scales}, the weights {largest:.3g} in "
            "magnitude): scale the inputs to about 1, for example standardize each feature"
        )

    # ---- evaluation -----------------------------------------------------------------------------

    def _in_batches(
        self, n: int, run: Callable[[Workspace, Array, slice], None], part: range | None = None
    ) -> None:
        """``run(ws, index, rows)`` for each evaluation batch of n samples (of the samples
        ``part`` only, when given), in order: ``rows`` the batch's slice of the samples,
        ``index`` the same rows on the device, ``ws`` the workspace of the batch's size."""
        xp = self.backend
        part = range(n) if part is None else part
        index = xp.asarray(np.arange(n, dtype=np.int64), np.dtype(np.int64))
        for start in range(part.start, part.stop, EVAL_BATCH):
            rows = slice(start, min(start + EVAL_BATCH, part.stop))
            run(self._workspace(rows.stop - start), index[rows], rows)

    def _evaluate(
        self, X: Array, Y: Array, n: int, parallel: DataParallel | None = None
    ) -> tuple[float, float]:
        """Mean loss and fraction correct over n samples on the device, without updating; in
        a data-parallel fit, each rank evaluates its share and the sums are all-reduced."""
        xp, stats = self.backend, self._stats()
        part = None if parallel is None else range(*parallel.shard(0, n))
        self._in_batches(
            n, lambda ws, index, _: xp.evaluate_step(self._net, ws, X, Y, index, stats), part
        )
        if parallel is not None:
            parallel.reduce_stats(stats)
        total, correct = xp.to_host(stats)
        return float(total) / n, float(correct) / n

    def predict_proba(self, X: object) -> np.ndarray:
        """The output layer's activations, shape (n, layers[-1]), as a NumPy array; ValueError
        naming X if they overflow the model's dtype."""
        Xh = self._inputs(X)
        xp = self.backend
        Xd = xp.asarray(Xh, self.dtype)
        result = np.empty((Xh.shape[0], self.layers[-1]), dtype=self.dtype)

        def run(ws: Workspace, index: Array, rows: slice) -> None:
            result[rows] = xp.to_host(xp.predict_step(self._net, ws, Xd, index))

        with np.errstate(over="ignore", invalid="ignore"):  # reported below, as an error
            self._in_batches(Xh.shape[0], run)
        if not np.all(np.isfinite(result)):
            raise self._overflow_error("the forward pass of X", Xh)
        return result

    def predict(self, X: object) -> np.ndarray:
        """Class labels for a softmax output (argmax) or 0/1 for sigmoid outputs (p > 0.5,
        one column per output when there are several); the values for an identity output
        (1-D when there is one)."""
        P = self.predict_proba(X)
        if self.output == "softmax":
            return P.argmax(axis=1)
        if self.output == "sigmoid":
            labels = (P > 0.5).astype(np.int64)
            return labels[:, 0] if labels.shape[1] == 1 else labels
        return P[:, 0] if P.shape[1] == 1 else P

    def loss(self, X: object, y: object) -> float:
        """Mean loss over (X, y); no update."""
        return self._checked_evaluate(*self._host_data(X, y))[0]

    def _checked_evaluate(self, Xh: np.ndarray, Yh: np.ndarray) -> tuple[float, float]:
        """``_evaluate`` of host data; ValueError naming X and y if the loss overflows."""
        with np.errstate(over="ignore", invalid="ignore"):  # reported below, as an error
            loss, correct = self._evaluate(*self._on_device(Xh, Yh))
        if not math.isfinite(loss):
            raise self._overflow_error("the loss of X against y", Xh, Yh)
        return loss, correct

    def score(self, X: object, y: object) -> float:
        """Accuracy for a classifier (every output right for multi-output sigmoid), R^2 for
        regression (averaged over outputs)."""
        if self.is_classifier:
            return self._checked_evaluate(*self._host_data(X, y))[1]
        Xh = self._inputs(X)
        Y = self._targets(y, Xh.shape[0]).astype(np.float64)
        P = self.predict_proba(Xh).astype(np.float64)
        residual = ((Y - P) ** 2).sum(axis=0)
        spread = ((Y - Y.mean(axis=0)) ** 2).sum(axis=0)
        with np.errstate(divide="ignore", invalid="ignore"):
            r2 = np.where(spread > 0, 1.0 - residual / spread, np.where(residual == 0, 1.0, 0.0))
        return float(r2.mean())

    def gradients(self, X: object, y: object) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(dW_1, db_1), ...] of the mean loss over (X, y) as NumPy arrays; no update."""
        Xh, Yh = self._host_data(X, y)
        Xd, Yd, n = self._on_device(Xh, Yh)
        xp = self.backend
        grads = [
            (xp.empty(W.shape, self.dtype), xp.empty(b.shape, self.dtype))
            for W, b in zip(self._net.W, self._net.b, strict=True)
        ]
        total = [(np.zeros(W.shape), np.zeros(b.shape)) for W, b in grads]
        stats = self._stats()

        def run(ws: Workspace, index: Array, _: slice) -> None:
            xp.evaluate_step(self._net, ws, Xd, Yd, index, stats, grads)
            weight = ws.rows / n  # each batch's D carries 1/(its rows)
            for (tW, tb), (gW, gb) in zip(total, grads, strict=True):
                tW += weight * xp.to_host(gW)
                tb += weight * xp.to_host(gb)

        with np.errstate(over="ignore", invalid="ignore"):  # reported below, as an error
            self._in_batches(n, run)
        result = [(W.astype(self.dtype), b.astype(self.dtype)) for W, b in total]
        if not all(np.all(np.isfinite(g)) for pair in result for g in pair):
            raise self._overflow_error("the gradients of X against y", Xh, Yh)
        return result

    # ---- training -------------------------------------------------------------------------------

    @property
    def optimizer(self) -> Optimizer | None:
        """The optimizer whose state the model holds: what ``fit`` without an optimizer, or
        with this same object, continues. None before the first ``fit``."""
        return self._optimizer

    def fit(
        self,
        X: object,
        y: object,
        epochs: int = 10,
        batch_size: int = 32,
        optimizer: Optimizer | str | None = None,
        lr: float | None = None,
        shuffle: bool = True,
        seed: int | None = None,
        validation_split: float = 0.0,
        validation_data: tuple[object, object] | None = None,
        patience: int | None = None,
        verbose: int | bool = 0,
        validation_mode: str = "last",
        *,
        checkpoint: str | os.PathLike | None = None,
        checkpoint_every: int = 1,
        resume: str | os.PathLike | None = None,
        reset: bool = False,
        distributed: bool | dist.World | None = None,
    ) -> History:
        """Train by minibatch backpropagation; returns the per-epoch History (also kept as
        ``self.history``).

        ``optimizer`` is an Optimizer or a name ('sgd', 'rmsprop', 'adam'; ``lr`` sets a named
        one's rate). The model keeps the optimizer's state (momentum, Adam's moments, the update
        count): a later ``fit`` given the same optimizer object, or none, continues it, so two
        1-epoch fits equal one 2-epoch fit (with ``shuffle=False``); a new optimizer object or a
        name, or ``reset=True``, starts it afresh. With no optimizer to continue: plain SGD.

        ``batch_size=1`` is per-sample SGD. ``validation_split`` holds out that fraction of
        (X, y) before training: the last rows (``validation_mode="last"``, as Keras does; a
        warning says when that leaves a class on one side only), rows drawn at random
        ("shuffle") or each class in proportion ("stratified", classifiers); or
        ``validation_data`` is an (X, y) pair instead. With ``patience``, training stops once
        the validation loss (the training loss without validation data) has not improved for
        that many epochs, and the model keeps the weights of its best epoch. ``verbose``: 0
        nothing, 1 a progress bar over the steps, 2 a line per epoch.

        ``checkpoint`` names a file written atomically every ``checkpoint_every`` epochs, after
        the last one and on Ctrl-C: the weights, the optimizer state, where the loop stands, the
        shuffling generator and the History. ``resume`` names such a file: training continues
        exactly where it stopped, as if it had never been interrupted, on the same data with the
        same settings (``epochs`` counts from the run's start; raise it to train longer).

        ``distributed`` trains data-parallel over MPI ranks (``mpiexec -n N``): True for
        ``bpgpu.distributed.init()``'s World, or a World. Every rank passes the same data and
        settings; each global batch of ``batch_size`` samples is split across the ranks, their
        gradients all-reduced in one buffer, and every rank applies the same step: the result
        equals one process on the same batches, to rounding. Only rank 0 shows progress and
        writes the checkpoint. With one rank (no mpiexec) it is the ordinary fit.

        Ctrl-C stops after the step in progress with TrainingInterrupted (a KeyboardInterrupt):
        the model keeps that step's weights and optimizer state, and the History so far. A loss
        that turns NaN or infinite raises TrainingDivergedError: the model keeps the weights of
        the last epoch whose loss was finite and whose forward pass stays finite. Any other
        error leaves the model as it was.
        """
        # Everything is checked before anything changes.
        settings = check_fit_arguments(
            epochs, batch_size, optimizer, lr, shuffle, seed, patience, verbose,
            checkpoint, checkpoint_every, resume, reset,
        )  # fmt: skip
        check_validation_arguments(validation_split, validation_data, validation_mode)
        world = dist.resolve(distributed)
        data = self._fit_data(
            X, y, validation_split, validation_data, validation_mode, settings.seed
        )
        record = None
        if settings.checkpoint is not None or settings.resume is not None:
            record = self._run_record(settings, data)
        saved = None if settings.resume is None else self._read_resume(settings, record)
        opt = self._fit_optimizer(settings, saved)
        continuing = (
            saved is None and not settings.reset and opt is self._optimizer and bool(self._states)
        )
        self._check_fit_memory(settings, data, opt, continuing)
        before = self._state_before_fit(continuing)
        run: Run | None = None
        try:
            with InterruptGuard() as guard, np.errstate(over="ignore", invalid="ignore"):
                # (a loss overflowing on its way to divergence raises TrainingDivergedError,
                # not warnings)
                run = self._start_run(settings, data, opt, continuing, saved, record, before, world)
                run.guard = guard
                self._train(run)
        except (TrainingDivergedError, TrainingInterrupted):
            raise  # the model holds what the exception says
        except KeyboardInterrupt:
            if run is None:
                self._restore_state(before)
                raise
            self._stop_at_once(run)
        except BaseException:
            self._restore_state(before)  # a failed fit leaves the model as it was
            raise
        finally:
            if run is not None:
                run.progress.close()
        return run.history

    # ---- fit's arguments and what the model holds ---------------------------------------------

    def _fit_data(
        self,
        X: object,
        y: object,
        validation_split: float,
        validation_data: tuple[object, object] | None,
        mode: str,
        seed: int | None,
    ) -> FitData:
        Xh = self._inputs(X)
        Yh = self._targets(y, Xh.shape[0])
        return FitData(*self._hold_out(Xh, Yh, validation_split, validation_data, mode, seed))

    def _hold_out(
        self,
        X: np.ndarray,
        Y: np.ndarray,
        validation_split: float,
        validation_data: tuple[object, object] | None,
        mode: str,
        seed: int | None,
    ) -> tuple[np.ndarray, np.ndarray, tuple[np.ndarray, np.ndarray] | None]:
        """(training X, training Y, validation (X, Y) or None): ``validation_data`` checked,
        or ``validation_split`` of the rows held out as ``mode`` says."""
        if validation_data is not None:
            Xv = self._inputs(validation_data[0], "validation_data X")
            return X, Y, (Xv, self._targets(validation_data[1], len(Xv), "validation_data y"))
        if not validation_split:
            return X, Y, None
        n = X.shape[0]
        n_val = round(n * validation_split)
        if n_val < 1 or n_val >= n:
            raise ValueError(
                f"validation_split={validation_split} of {n} samples leaves {n_val} for "
                f"validation and {n - n_val} for training; both need at least one"
            )
        classes = _class_of_rows(Y, self.output)
        held = _held_out_rows(n, n_val, mode, classes, self.seed if seed is None else seed)
        if mode == "last" and classes is not None:
            _warn_if_classes_differ(classes[~held], classes[held], n_val)
        return X[~held], Y[~held], (X[held], Y[held])

    def _run_record(self, settings: FitSettings, data: FitData) -> serialization.RunRecord:
        """What a checkpoint records of this run's settings and data, to check a resume by."""
        arrays = [data.X, data.Y, *(data.val or ())]
        return serialization.RunRecord(
            batch_size=settings.batch_size,
            shuffle=settings.shuffle,
            patience=settings.patience,
            samples=len(data.X),
            validation_samples=0 if data.val is None else len(data.val[0]),
            data_sha256=data_digest(*arrays),
        )

    def _read_resume(
        self, settings: FitSettings, record: serialization.RunRecord | None
    ) -> serialization.SavedCheckpoint:
        """The checkpoint to resume from, once it is known to be of this model, this data and
        these settings; ValueError naming what differs otherwise."""
        assert settings.resume is not None and record is not None
        name = settings.resume
        saved = serialization.read_checkpoint(name, max_bytes=physical_memory())
        check_resume(name, saved, self._saved_model(with_weights=False), record, settings.epochs)
        return saved

    def _fit_optimizer(
        self, settings: FitSettings, saved: serialization.SavedCheckpoint | None
    ) -> Optimizer:
        """The optimizer of this fit: the one given, else the checkpoint's, else the model's
        own, else SGD. Resuming with an optimizer other than the checkpoint's is a ValueError."""
        given = settings.optimizer
        if saved is not None:
            if given is not None and given != saved.optimizer:
                raise ValueError(
                    f"optimizer {given!r} differs from the checkpoint's {saved.optimizer!r}; "
                    "resume with the same one, or none"
                )
            return saved.optimizer if given is None else given
        if given is not None:
            return given
        return self._optimizer if self._optimizer is not None else SGD()

    def _check_fit_memory(
        self, settings: FitSettings, data: FitData, opt: Optimizer, continuing: bool
    ) -> None:
        """MemoryBudgetError before anything is allocated when the training data, the
        optimizer state, the weight copies and the batch buffers cannot fit on the backend."""
        item = self.dtype.itemsize
        params = sum(W.size + b.size for W, b in zip(self._net.W, self._net.b, strict=True))
        samples = len(data.X) + (0 if data.val is None else len(data.val[0]))
        rows = min(settings.batch_size, len(data.X)) + min(EVAL_BATCH, samples)
        buffers = rows * (2 * sum(self.layers) + 2 * self.layers[-1])
        copies = 3 + (settings.patience is not None) + (0 if continuing else len(opt.slots))
        needed = item * (
            params * (1 + copies) + samples * (self.layers[0] + self.layers[-1]) + buffers
        )
        check_memory(
            needed,
            self.backend.memory_bytes(),
            f"training layers {list(self.layers)} in {self.dtype.name} on {samples} samples "
            f"with batch_size={settings.batch_size} (data, optimizer state, weight copies, "
            "batch buffers)",
            f"the {self.backend.name} backend's memory",
        )

    def _state_before_fit(self, continuing: bool) -> ModelState:
        """What fit may change, to put back if it fails: the weights (a device copy), the
        optimizer and its state (host copies, when fit continues and so changes them) and the
        History."""
        xp = self.backend
        copies = [xp.export_optimizer_state(s) for s in self._states or []] if continuing else []
        return ModelState(self._snapshot(), self._optimizer, self._states, copies, self.history)

    def _restore_state(self, state: ModelState) -> None:
        self._restore(state.weights)
        self._optimizer, self._states, self.history = state.optimizer, state.states, state.history
        for layer, host in zip(self._states or [], state.state_copies, strict=False):
            self.backend.import_optimizer_state(layer, host)

    def _start_run(
        self,
        settings: FitSettings,
        data: FitData,
        opt: Optimizer,
        continuing: bool,
        saved: serialization.SavedCheckpoint | None,
        record: serialization.RunRecord | None,
        before: ModelState,
        world: dist.World | None,
    ) -> Run:
        """The data on the device, the optimizer state (continued, fresh or the checkpoint's)
        and the loop's position (in a data-parallel fit, rank 0's on every rank); from here on
        the model holds this run's optimizer and History."""
        xp = self.backend
        states = self._states if continuing and self._states else []
        if not states:
            states = [
                xp.optimizer_state(opt, W, b) for W, b in zip(self._net.W, self._net.b, strict=True)
            ]
        held_out = None
        if data.val is not None:
            Xv, Yv = data.val
            held_out = (xp.from_host(Xv, self.dtype), xp.from_host(Yv, self.dtype), len(Xv))
        n = len(data.X)
        run = Run(
            settings=settings,
            optimizer=opt,
            X=xp.from_host(data.X, self.dtype),
            Y=xp.from_host(data.Y, self.dtype),
            n=n,
            held_out=held_out,
            host_X=data.X,
            record=record,
            states=states,
            rng=np.random.default_rng(self.seed if settings.seed is None else settings.seed),
            order=np.arange(n, dtype=np.int64),
            stats=self._stats(),
            history=History(backend=xp.name),
            stopping=EarlyStopping(self, settings.patience) if settings.patience else None,
            before=before.weights,
        )
        if saved is not None:
            self._resume(run, saved)
        if world is not None:
            run.parallel = DataParallel(world, xp, self._net, self.dtype)
            run.parallel.start(
                self._net, states, self._agreed(settings, data), run.rng, run.order, run.stats
            )
        self._optimizer, self._states, self.history = opt, states, run.history
        run.kept = [(run.epochs_done, self._snapshot())]
        steps = -(-n // settings.batch_size)
        run.progress = Progress(
            settings.verbose if run.parallel is None or run.parallel.is_root else 0,
            settings.epochs,
            steps,
            done=run.epochs_done * steps + run.batches_done,
        )
        return run

    def _agreed(self, settings: FitSettings, data: FitData) -> np.ndarray:
        """What every rank of a data-parallel fit must agree on, as int64 numbers: the
        network, the dtype, the settings that shape the loop, and the data's digest."""
        arrays = [data.X, data.Y, *(data.val or ())]
        digest = np.frombuffer(bytes.fromhex(data_digest(*arrays)), dtype=np.int64)
        return np.array(
            [
                *self.layers,
                self.dtype.itemsize,
                settings.epochs,
                settings.batch_size,
                settings.shuffle,
                -1 if settings.patience is None else settings.patience,
                *digest,
            ],
            dtype=np.int64,
        )

    def _resume(self, run: Run, saved: serialization.SavedCheckpoint) -> None:
        """``run`` and the model <- where the checkpoint's run stood."""
        xp = self.backend
        self.set_weights(saved.model.weights)
        for state, host in zip(run.states, saved.optimizer_states, strict=True):
            xp.import_optimizer_state(state, host)
        run.epochs_done, run.batches_done = saved.epochs_done, saved.batches_done
        run.order = saved.order.copy()
        run.rng.bit_generator.state = saved.rng_state
        xp.copy_into(run.stats, xp.asarray(np.array(saved.stats), np.dtype(np.float64)))
        run.history, run.history.backend = saved.history, xp.name
        run.wall_before = saved.history.wall_time
        if run.stopping is not None and saved.best_weights is not None:
            run.stopping.resume(saved.best_loss, saved.best_epoch, saved.best_weights)

    # ---- the epoch loop -------------------------------------------------------------------------

    def _train(self, run: Run) -> None:
        """The epochs of fit, from where ``run`` stands, then the best epoch's weights back
        under early stopping. Where the backend compiles whole epochs (numba-cpu, small
        networks), runs of epochs go to it in one call each."""
        if run.history.stopped_epoch is None:
            epoch = run.epochs_done + 1
            while epoch <= run.settings.epochs:
                count = self._epochs_per_call(run, epoch)
                if count:
                    stop = self._run_epochs(run, epoch, count)
                    epoch += count
                else:
                    self._run_epoch(run)
                    stop = self._end_epoch(run, epoch)
                    epoch += 1
                if stop:
                    break
        if run.stopping is not None:
            run.stopping.restore_best(run.history)
        self.backend.synchronize()
        run.history.wall_time = run.elapsed()

    def _epochs_per_call(self, run: Run, epoch: int) -> int:
        """How many epochs from ``epoch`` on the backend runs in one call; 0: step by step.

        One epoch a call where each is looked at (validation, early stopping); never past a
        checkpoint that is due; no more work than _TERMS_PER_CALL, so Ctrl-C is answered within
        a second or two, and no more samples than _SAMPLES_PER_CALL. A data-parallel fit goes
        step by step: every step of every rank meets the others in an allreduce."""
        settings = run.settings
        if (
            run.parallel is not None
            or run.batches_done
            or not self.backend.compiled_epochs(list(self.layers), min(settings.batch_size, run.n))
        ):
            return 0
        if run.held_out is not None or run.stopping is not None:
            return 1
        last = settings.epochs
        if settings.checkpoint is not None:
            every = settings.checkpoint_every
            last = min(last, -(-epoch // every) * every)
        per_epoch = run.n * sum(k * n for k, n in itertools.pairwise(self.layers))
        bound = min(_TERMS_PER_CALL // per_epoch, _SAMPLES_PER_CALL // run.n)
        return max(1, min(last - epoch + 1, bound))

    def _run_epochs(self, run: Run, first: int, count: int) -> bool:
        """Epochs ``first`` ... ``first + count - 1`` in one call of the backend, each reshuffled
        as ``_run_epoch`` does and recorded as ``_end_epoch`` does (the last one by it); returns
        whether early stopping ends training."""
        xp, settings = self.backend, run.settings
        orders = np.empty((count, run.n), np.int64)
        for row in orders:
            if settings.shuffle:
                run.rng.shuffle(run.order)
            row[...] = run.order
        ws = self._workspace(min(settings.batch_size, run.n))
        result = xp.train_epochs(self._net, ws, run.X, run.Y, orders, run.states)
        last = first + result.done - 1
        steps = -(-run.n // settings.batch_size)
        for epoch, (total, correct) in zip(range(first, last), result.stats, strict=False):
            figures = self._epoch_figures(run, epoch, total, correct)
            run.history.record(epoch, figures)
            run.progress.step(steps)
            run.progress.epoch_end(epoch, figures)
        if math.isfinite(result.stats[-1, 0]):
            if result.done > 1:  # the weights at the end of the epoch before the last
                _, oldest = run.kept.pop()
                for dst, src in zip(oldest, result.starts[0], strict=True):
                    xp.copy_into(dst, src)
                run.kept.insert(0, (last - 1, oldest))
        elif result.done > 1:  # the candidates for the weights kept on divergence
            run.kept = [(last - 1 - i, start) for i, start in enumerate(result.starts)]
        xp.copy_into(run.stats, xp.asarray(result.stats[-1], np.dtype(np.float64)))
        run.progress.step(steps)
        return self._end_epoch(run, last)

    def _run_epoch(self, run: Run) -> None:
        """The steps of an epoch not yet done: a new epoch reshuffles and zeroes its sums."""
        xp, settings = self.backend, run.settings
        if run.batches_done == 0:
            if settings.shuffle:
                run.rng.shuffle(run.order)
            xp.copy_into(run.stats, xp.zeros((2,), np.dtype(np.float64)))
        index = xp.asarray(run.order, np.dtype(np.int64))
        for start in range(run.batches_done * settings.batch_size, run.n, settings.batch_size):
            stop = min(start + settings.batch_size, run.n)
            if run.parallel is None:
                ws = self._workspace(stop - start)
                xp.train_step(self._net, ws, run.X, run.Y, index[start:stop], run.states, run.stats)
            else:
                run.parallel.step(
                    self._net, self._workspace, run.X, run.Y, index, start, stop,
                    run.states, run.stats, run.guard.requested,
                )  # fmt: skip
            run.batches_done += 1
            run.progress.step()
            if stop < run.n and run.stop_requested():  # after the last, the epoch ends first
                self._interrupted(run)
        if run.parallel is not None:
            run.parallel.reduce_stats(run.stats)

    def _end_epoch(self, run: Run, epoch: int) -> bool:
        """Record a finished epoch (or raise on divergence), keep its weights, write the
        checkpoint when one is due; returns whether early stopping ends training."""
        total, correct = self.backend.to_host(run.stats)
        figures = self._epoch_figures(run, epoch, total, correct)
        run.history.record(epoch, figures)
        run.epochs_done, run.batches_done = epoch, 0
        self._keep(run, epoch)
        stop = run.stopping is not None and run.stopping.stop(epoch, figures)
        if stop:
            run.history.stopped_epoch = epoch
        settings = run.settings
        if settings.checkpoint is not None and (
            stop or epoch == settings.epochs or epoch % settings.checkpoint_every == 0
        ):
            self._write_checkpoint(run)
        run.progress.epoch_end(epoch, figures)
        if run.stop_requested():
            self._interrupted(run)
        return stop

    def _epoch_figures(
        self, run: Run, epoch: int, total: float, correct: float
    ) -> dict[str, float]:
        """The epoch's loss (and accuracy, and validation figures) from its summed loss and
        correct count; TrainingDivergedError on a loss that is not finite."""
        figures = {"loss": float(total) / run.n}
        if not math.isfinite(figures["loss"]):
            self._diverged(run, epoch, figures["loss"])
        if self.is_classifier:
            figures["accuracy"] = float(correct) / run.n
        if run.held_out is not None:
            parallel = () if run.parallel is None else (run.parallel,)
            val_loss, val_acc = self._evaluate(*run.held_out, *parallel)
            figures["val_loss"] = val_loss
            if self.is_classifier:
                figures["val_accuracy"] = val_acc
        return figures

    def _keep(self, run: Run, epoch: int) -> None:
        """The weights at the end of ``epoch``, newest first, beside the previous epoch's:
        the candidates for the weights kept if training diverges."""
        if len(run.kept) < 2:
            run.kept.insert(0, (epoch, self._snapshot()))
            return
        _, oldest = run.kept.pop()
        self._snapshot_into(oldest)
        run.kept.insert(0, (epoch, oldest))

    def _diverged(self, run: Run, epoch: int, loss: float) -> NoReturn:
        """Put back the newest kept weights whose loss over the training data is finite (an
        epoch's loss is summed over its steps, so the weights at its end have not been
        through a whole forward pass yet), else the weights from before fit; drop the
        optimizer state, which the diverging steps have filled; raise."""
        kept_epoch = None
        for candidate_epoch, weights in run.kept:
            self._restore(weights)
            if math.isfinite(self._evaluate(run.X, run.Y, run.n)[0]):
                kept_epoch = candidate_epoch
                break
        else:
            self._restore(run.before)
        self._states = None
        run.history.wall_time = run.elapsed()
        raise TrainingDivergedError(
            divergence_message(epoch, loss, kept_epoch, input_scale(run.host_X), run.optimizer),
            history=run.history,
            kept_epoch=kept_epoch,
        )

    # ---- stopping early and checkpoints -------------------------------------------------------

    def _interrupted(self, run: Run) -> NoReturn:
        """Ctrl-C between steps: the checkpoint written (when asked for), then
        TrainingInterrupted; the model keeps the last step's weights and optimizer state."""
        if run.parallel is not None and run.batches_done:
            run.parallel.reduce_stats(run.stats)  # the epoch so far, of the whole job
        if run.settings.checkpoint is not None:
            self._write_checkpoint(run)
        self.backend.synchronize()
        run.history.wall_time = run.elapsed()
        raise TrainingInterrupted.between_steps(run)

    def _stop_at_once(self, run: Run) -> NoReturn:
        """A KeyboardInterrupt inside a step (a second Ctrl-C): the weights of the last
        completed epoch back, the half-updated optimizer state dropped."""
        epoch, weights = run.kept[0]
        self._restore(weights)
        self._states = None
        run.history.wall_time = run.elapsed()
        raise TrainingInterrupted(
            f"training stopped at once inside a step of epoch {run.epochs_done + 1}: the model "
            f"keeps the weights of epoch {epoch} and starts its optimizer state afresh",
            history=run.history,
            epoch=run.epochs_done + 1,
            step=run.batches_done,
        ) from None

    def _write_checkpoint(self, run: Run) -> None:
        """The run as it stands (at a step or an epoch's end) to its checkpoint file."""
        xp, path, record = self.backend, run.settings.checkpoint, run.record
        if path is None or record is None:
            return
        if run.parallel is not None and not run.parallel.is_root:
            return  # rank 0 writes the job's checkpoint
        total, correct = xp.to_host(run.stats)
        run.history.wall_time = run.elapsed()
        best = run.stopping
        ckpt = serialization.SavedCheckpoint(
            model=self._saved_model(),
            optimizer=run.optimizer,
            optimizer_states=[xp.export_optimizer_state(s) for s in run.states],
            epochs_done=run.epochs_done,
            batches_done=run.batches_done,
            stats=(float(total), float(correct)),
            order=run.order,
            rng_state=dict(run.rng.bit_generator.state),
            run=record,
            history=run.history,
            best_loss=None if best is None else finite_or_none(best.best_loss),
            best_epoch=0 if best is None else best.best_epoch,
            best_weights=None if best is None else best.host_weights(),
        )
        serialization.save_checkpoint(path, ckpt)

    # ---- explaining one sample ------------------------------------------------------------------

    def explain(
        self, x: Sequence[float], target: Sequence[float], file: TextIO | None = None
    ) -> None:
        """Print, for the one sample ``x`` with ``target``, every forward value, the error, every
        delta and every dE/dW and dE/db as the chain-rule product with its numbers (to stdout
        unless ``file``). For small networks only (bpgpu/explain.py)."""
        explain.explain(self, x, target, sys.stdout if file is None else file)

    # ---- files ----------------------------------------------------------------------------------

    def _saved_model(self, with_weights: bool = True) -> serialization.SavedModel:
        return serialization.SavedModel(
            layers=list(self.layers),
            activations=list(self.activations),
            output=self.output,
            loss=self.loss_name,
            dtype=self.dtype.name,
            weights=self.get_weights() if with_weights else [],
        )

    def save(self, path: str | os.PathLike) -> None:
        """Write the architecture and weights to an ``.npz`` file (no pickle), atomically: a
        crash while saving leaves the old file whole."""
        serialization.save(path, self._saved_model())


def load(
    path: str | os.PathLike, backend: str | Backend | None = "auto", max_bytes: int | None = None
) -> MLP:
    """A model written by ``MLP.save`` (or the model in a checkpoint), on ``backend``.

    The file is checked before anything is allocated; a file that is not a sound bpgpu model
    raises ModelFileError (a ValueError) naming the file and the field. ``max_bytes`` caps
    what its arrays may declare (default: the host's memory).
    """
    xp = get_backend(backend)
    name = os.fspath(path)
    if max_bytes is not None:
        check_int(max_bytes, "max_bytes", 1)
    saved = serialization.read(name, physical_memory() if max_bytes is None else max_bytes)
    try:
        model = MLP(
            saved.layers,
            activation=saved.activations if saved.activations else "sigmoid",
            output=saved.output,
            loss=saved.loss,
            backend=xp,
            dtype=saved.dtype,
        )
    except MemoryBudgetError:
        raise
    except ValueError as exc:
        raise ModelFileError(
            serialization.MODEL_FILE, name, f"describes a network bpgpu cannot build: {exc}"
        ) from None
    model.set_weights(saved.weights)
    return model


class EarlyStopping:
    """Stops once the monitored loss (validation loss, else training loss) has not improved for
    ``patience`` epochs, and puts the best epoch's weights back."""

    def __init__(self, model: MLP, patience: int) -> None:
        self.model, self.patience = model, patience
        self.best_loss, self.best_epoch = math.inf, 0
        self.best_weights = model._snapshot()

    def stop(self, epoch: int, figures: dict[str, float]) -> bool:
        monitored = figures.get("val_loss", figures["loss"])
        if monitored < self.best_loss:
            self.best_loss, self.best_epoch = monitored, epoch
            self.model._snapshot_into(self.best_weights)
            return False
        return epoch - self.best_epoch >= self.patience

    def restore_best(self, history: History) -> None:
        self.model._restore(self.best_weights)
        history.best_epoch = self.best_epoch

    def host_weights(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The best epoch's weights as NumPy (W, b) pairs."""
        xp, L = self.model.backend, len(self.best_weights) // 2
        return [
            (xp.to_host(self.best_weights[l]), xp.to_host(self.best_weights[L + l]))
            for l in range(L)
        ]

    def resume(
        self, best_loss: float | None, best_epoch: int, weights: list[tuple[np.ndarray, np.ndarray]]
    ) -> None:
        """The best epoch so far, from a checkpoint."""
        xp, dtype = self.model.backend, self.model.dtype
        self.best_loss = math.inf if best_loss is None else best_loss
        self.best_epoch = best_epoch
        host = [W for W, _ in weights] + [b for _, b in weights]
        for dst, src in zip(self.best_weights, host, strict=True):
            xp.copy_into(dst, xp.asarray(src, dtype))


def _check_activations(activation: object, n_hidden: int, layers: Sequence[int]) -> list[str]:
    """One activation name per hidden layer, from one name or a list of them."""
    if isinstance(activation, str) or not isinstance(activation, Sequence):
        check_name(activation, ACTIVATIONS, "activation")
        names: list[Any] = [activation] * n_hidden
    else:
        names = list(activation)
        if len(names) != n_hidden:
            raise ValueError(
                f"activation lists one name per hidden layer: {n_hidden} for layers "
                f"{list(layers)}; got {len(names)}"
            )
    return [check_name(a, ACTIVATIONS, f"activation[{i}]") for i, a in enumerate(names)]


def _class_of_rows(Y: np.ndarray, output: str) -> np.ndarray | None:
    """Each row's class (the target's largest output, or its 0/1 pattern for sigmoid outputs);
    None for regression."""
    if output == "softmax":
        return Y.argmax(axis=1)
    if output == "sigmoid":
        return (Y > 0.5) @ (1 << np.arange(Y.shape[1]))
    return None


def _held_out_rows(
    n: int, n_val: int, mode: str, classes: np.ndarray | None, seed: int | None
) -> np.ndarray:
    """A boolean mask of the n_val rows to hold out: the last ones, random ones, or (with
    classes) each class's share of them at random."""
    held = np.zeros(n, dtype=bool)
    if mode == "last":
        held[n - n_val :] = True
        return held
    rng = np.random.default_rng(seed)
    if mode == "shuffle" or classes is None:
        held[rng.choice(n, n_val, replace=False)] = True
        return held
    # stratified: each class gets its share of n_val (largest remainders), drawn at random
    labels, counts = np.unique(classes, return_counts=True)
    shares = counts * n_val / n
    take = np.floor(shares).astype(int)
    order = np.argsort(-(shares - take), kind="stable")
    take[order[: n_val - take.sum()]] += 1
    for label, k in zip(labels, take, strict=True):
        rows = np.flatnonzero(classes == label)
        held[rng.choice(rows, min(k, len(rows) - 1) if len(rows) > 1 else 0, replace=False)] = True
    return held


def _warn_if_classes_differ(train: np.ndarray, held: np.ndarray, n_val: int) -> None:
    """Warn when the last rows, held out for validation, have a class training lacks or miss
    one it has (sorted data: a validation set of one class)."""
    only_held = sorted(set(held.tolist()) - set(train.tolist()))
    only_train = sorted(set(train.tolist()) - set(held.tolist()))
    if only_held or only_train:
        warnings.warn(
            f"validation_split holds out the last {n_val} rows as they come; they "
            + (f"hold classes {only_held} that training never sees" if only_held else "")
            + (" and " if only_held and only_train else "")
            + (f"lack classes {only_train}" if only_train else "")
            + ". Shuffle the data first, or pass validation_mode='stratified' or 'shuffle'",
            UserWarning,
            stacklevel=5,
        )
