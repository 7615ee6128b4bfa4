"""``bpgpu.MLP``: a multi-layer perceptron trained by backpropagation on any backend.

The model holds its weights on the backend's device and drives the backend's fused ops
(bpgpu/backends/base.py); it never computes on the arrays itself. Every argument is checked
before anything changes, so a call that raises leaves the model as it was.
"""

from __future__ import annotations

import itertools
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence

import numpy as np

from bpgpu import serialization
from bpgpu.backends import get_backend
from bpgpu.backends.base import Array, Backend, Network, OptimizerState, Workspace
from bpgpu.functions import (
    ACTIVATIONS,
    LOSS_ALIASES,
    LOSSES,
    OUTPUTS,
    check_combination,
    check_name,
)
from bpgpu.history import History
from bpgpu.optimizers import Optimizer, make_optimizer
from bpgpu.validation import as_matrix, as_targets, check_dtype, check_int, check_layers

#: rows per batch when evaluating or predicting
EVAL_BATCH = 4096
#: batch sizes whose buffers a model keeps at once
_WORKSPACES_KEPT = 4


class TrainingDivergedError(FloatingPointError):
    """The loss became NaN or infinite; the model kept its last finite weights."""


def initial_weights(
    layers: Sequence[int], activations: Sequence[str], seed: int | None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Float64 weights drawn on the host, the same for every backend: He normal for a ReLU
    layer (std sqrt(2 / fan_in)), Glorot uniform otherwise (limit sqrt(6 / (fan_in + fan_out)));
    zero biases."""
    rng = np.random.default_rng(seed)
    weights = []
    for l, (fan_in, fan_out) in enumerate(itertools.pairwise(layers)):
        act = activations[l] if l < len(activations) else "output"
        if act == "relu":
            W = rng.normal(0.0, math.sqrt(2.0 / fan_in), size=(fan_in, fan_out))
        else:
            limit = math.sqrt(6.0 / (fan_in + fan_out))
            W = rng.uniform(-limit, limit, size=(fan_in, fan_out))
        weights.append((W, np.zeros(fan_out)))
    return weights


class MLP:
    """A dense network ``layers[0] -> ... -> layers[-1]``.

    Args:
        layers: sizes from inputs to outputs, at least two.
        activation: hidden-layer activation, one name or one per hidden layer
            ("sigmoid", "relu", "tanh", "identity").
        output: "softmax", "sigmoid" or "identity".
        loss: "cross_entropy" or "mse"; default cross-entropy for softmax and sigmoid outputs
            (binary cross-entropy for sigmoid), mse for identity.
        backend: "auto", "cupy", "numba", "numpy" or a Backend.
        dtype: "float32" (default) or "float64".
        seed: seeds the initial weights and the shuffling in ``fit``.
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
    ) -> None:
        self.layers = check_layers(layers)
        n_hidden = len(self.layers) - 2
        if isinstance(activation, str) or not isinstance(activation, Sequence):
            acts = [activation] * n_hidden
            check_name(activation, ACTIVATIONS, "activation")
        else:
            acts = list(activation)
            if len(acts) != n_hidden:
                raise ValueError(
                    f"activation lists one name per hidden layer: {n_hidden} for layers "
                    f"{list(self.layers)}; got {len(acts)}"
                )
        self.activations = [
            check_name(a, ACTIVATIONS, f"activation[{i}]") for i, a in enumerate(acts)
        ]
        self.output = check_name(output, OUTPUTS, "output")
        if loss is None:
            loss = "mse" if output == "identity" else "cross_entropy"
        loss = LOSS_ALIASES.get(loss, loss) if isinstance(loss, str) else loss
        self.loss_name = check_name(loss, LOSSES, "loss")
        check_combination(self.output, self.loss_name)
        if output == "softmax" and self.layers[-1] < 2:
            raise ValueError(
                "a softmax output needs at least 2 units; use output='sigmoid' for one"
            )
        self.dtype = check_dtype(dtype)
        if seed is not None:
            check_int(seed, "seed", 0)
        self.seed = seed
        self.backend = get_backend(backend)
        xp = self.backend
        init = initial_weights(self.layers, self.activations, seed)
        self._net = Network(
            W=[xp.asarray(W, self.dtype) for W, _ in init],
            b=[xp.asarray(b, self.dtype) for _, b in init],
            activations=self.activations,
            output=self.output,
            loss=self.loss_name,
        )
        self._workspaces: dict[int, Workspace] = {}

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
        return [(xp.to_host(W), xp.to_host(b)) for W, b in zip(self._net.W, self._net.b)]

    def set_weights(self, weights: Sequence[tuple[np.ndarray, np.ndarray]]) -> None:
        """Replace every weight and bias; all are checked before any is written."""
        if not isinstance(weights, Sequence) or len(weights) != len(self._net.W):
            raise ValueError(f"weights must be a list of {len(self._net.W)} (W, b) pairs")
        checked = []
        for l, pair in enumerate(weights, start=1):
            if not isinstance(pair, Sequence) or len(pair) != 2:
                raise ValueError(f"weights[{l - 1}] must be a (W, b) pair")
            shape_W = (self.layers[l - 1], self.layers[l])
            W = np.asarray(pair[0])
            b = np.asarray(pair[1])
            if W.shape != shape_W:
                raise ValueError(f"W_{l} must have shape {shape_W}; got {W.shape}")
            if b.shape != (self.layers[l],):
                raise ValueError(f"b_{l} must have shape {(self.layers[l],)}; got {b.shape}")
            for name, a in ((f"W_{l}", W), (f"b_{l}", b)):
                if not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
                    raise ValueError(f"{name} must hold finite numbers")
            checked.append((W, b))
        xp = self.backend
        for (W, b), dW, db in zip(checked, self._net.W, self._net.b):
            xp.copy_into(dW, xp.asarray(W, self.dtype))
            xp.copy_into(db, xp.asarray(b, self.dtype))

    def _snapshot(self) -> list[Array]:
        xp = self.backend
        copies = []
        for a in (*self._net.W, *self._net.b):
            c = xp.empty(a.shape, a.dtype)
            xp.copy_into(c, a)
            copies.append(c)
        return copies

    def _restore(self, snapshot: list[Array]) -> None:
        """The weights <- snapshot."""
        for dst, src in zip((*self._net.W, *self._net.b), snapshot):
            self.backend.copy_into(dst, src)

    def _snapshot_into(self, snapshot: list[Array]) -> None:
        """snapshot <- the weights."""
        for dst, src in zip(snapshot, (*self._net.W, *self._net.b)):
            self.backend.copy_into(dst, src)

    # ---- buffers --------------------------------------------------------------------------------

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

    # ---- inputs --------------------------------------------------------------------------------

    def _inputs(self, X: object, name: str = "X") -> np.ndarray:
        return as_matrix(X, name, self.layers[0], self.dtype)

    def _targets(self, y: object, n: int, name: str = "y") -> np.ndarray:
        return as_targets(y, name, n, self.layers[-1], self.output, self.dtype)

    # ---- evaluation -----------------------------------------------------------------------------

    def _batches(self, n: int, batch: int) -> Iterator[tuple[int, int]]:
        for start in range(0, n, batch):
            yield start, min(start + batch, n)

    def _evaluate(self, X: Array, Y: Array, n: int) -> tuple[float, float]:
        """Mean loss and fraction correct over n samples on the device, without updating."""
        xp = self.backend
        stats = self._stats()
        index = xp.asarray(np.arange(n, dtype=np.int64), np.dtype(np.int64))
        for start, stop in self._batches(n, EVAL_BATCH):
            ws = self._workspace(stop - start)
            xp.gather_rows(X, index[start:stop], ws.X)
            xp.gather_rows(Y, index[start:stop], ws.Y)
            xp.forward(self._net, ws.X, ws)
            xp.output_delta(ws.Z, ws.Y, self.output, self.loss_name, ws.P, ws.D[-1], stats)
        total, correct = xp.to_host(stats)
        return float(total) / n, float(correct) / n

    def predict_proba(self, X: object) -> np.ndarray:
        """The output layer's activations, shape (n, layers[-1]), as a NumPy array."""
        Xh = self._inputs(X)
        xp = self.backend
        Xd = xp.asarray(Xh, self.dtype)
        n = Xh.shape[0]
        index = xp.asarray(np.arange(n, dtype=np.int64), np.dtype(np.int64))
        result = np.empty((n, self.layers[-1]), dtype=self.dtype)
        for start, stop in self._batches(n, EVAL_BATCH):
            ws = self._workspace(stop - start)
            xp.gather_rows(Xd, index[start:stop], ws.X)
            xp.forward(self._net, ws.X, ws)
            result[start:stop] = xp.to_host(xp.output_forward(ws.Z, self.output, ws.P))
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

    def _device_data(self, X: object, y: object) -> tuple[Array, Array, int]:
        Xh = self._inputs(X)
        Yh = self._targets(y, Xh.shape[0])
        xp = self.backend
        return xp.asarray(Xh, self.dtype), xp.asarray(Yh, self.dtype), Xh.shape[0]

    def loss(self, X: object, y: object) -> float:
        """Mean loss over (X, y); no update."""
        return self._evaluate(*self._device_data(X, y))[0]

    def score(self, X: object, y: object) -> float:
        """Accuracy for a classifier (every output right for multi-output sigmoid), R^2 for
        regression (averaged over outputs)."""
        if self.is_classifier:
            return self._evaluate(*self._device_data(X, y))[1]
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
        Xd, Yd, n = self._device_data(X, y)
        xp = self.backend
        index = xp.asarray(np.arange(n, dtype=np.int64), np.dtype(np.int64))
        total = [(np.zeros((a, b)), np.zeros(b)) for a, b in zip(self.layers[:-1], self.layers[1:])]
        grads = [
            (xp.empty(W.shape, self.dtype), xp.empty(b.shape, self.dtype))
            for W, b in zip(self._net.W, self._net.b)
        ]
        stats = self._stats()
        for start, stop in self._batches(n, EVAL_BATCH):
            ws = self._workspace(stop - start)
            xp.gather_rows(Xd, index[start:stop], ws.X)
            xp.gather_rows(Yd, index[start:stop], ws.Y)
            xp.forward(self._net, ws.X, ws)
            xp.output_delta(ws.Z, ws.Y, self.output, self.loss_name, ws.P, ws.D[-1], stats)
            xp.backward(self._net, ws, None, grads)
            weight = (stop - start) / n  # each batch's D carries 1/(its rows)
            for (tW, tb), (gW, gb) in zip(total, grads):
                tW += weight * xp.to_host(gW)
                tb += weight * xp.to_host(gb)
        return [(W.astype(self.dtype), b.astype(self.dtype)) for W, b in total]

    # ---- training -------------------------------------------------------------------------------

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
        verbose: bool = False,
    ) -> History:
        """Train by minibatch backpropagation; returns the per-epoch History.

        ``optimizer`` is an Optimizer or a name ('sgd' default, 'rmsprop', 'adam'; ``lr`` sets
        a named one's rate). ``batch_size=1`` is per-sample SGD. ``validation_split`` holds out
        the last fraction of (X, y) before shuffling; ``validation_data`` is an (X, y) pair
        instead. With ``patience``, training stops once the validation loss (the training loss
        without validation data) has not improved for that many epochs, and the model keeps
        the weights of its best epoch. If the loss turns NaN or infinite, TrainingDivergedError
        is raised and the model keeps the weights of the last epoch whose loss was finite.
        """
        # Check everything before anything changes.
        epochs = check_int(epochs, "epochs", 1)
        batch_size = check_int(batch_size, "batch_size", 1)
        opt = make_optimizer(optimizer, lr)
        for flag, value in (("shuffle", shuffle), ("verbose", verbose)):
            if not isinstance(value, bool):
                raise TypeError(f"{flag} must be a bool; got {value!r}")
        if seed is not None:
            check_int(seed, "seed", 0)
        if patience is not None:
            check_int(patience, "patience", 1)
        if isinstance(validation_split, bool) or not isinstance(validation_split, (int, float)):
            raise TypeError(
                f"validation_split must be a number in [0, 1); got {validation_split!r}"
            )
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"validation_split must be in [0, 1); got {validation_split}")
        if validation_split and validation_data is not None:
            raise ValueError("give validation_split or validation_data, not both")
        Xh = self._inputs(X)
        Yh = self._targets(y, Xh.shape[0])
        val: tuple[np.ndarray, np.ndarray] | None = None
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise ValueError("validation_data must be an (X, y) pair")
            Xv = self._inputs(validation_data[0], "validation_data X")
            val = (Xv, self._targets(validation_data[1], Xv.shape[0], "validation_data y"))
        elif validation_split:
            n_val = round(Xh.shape[0] * validation_split)
            if n_val < 1 or n_val >= Xh.shape[0]:
                raise ValueError(
                    f"validation_split={validation_split} of {Xh.shape[0]} samples leaves "
                    f"{n_val} for validation and {Xh.shape[0] - n_val} for training; both need at least one"
                )
            val = (Xh[-n_val:], Yh[-n_val:])
            Xh, Yh = Xh[:-n_val], Yh[:-n_val]

        xp = self.backend
        n = Xh.shape[0]
        Xd, Yd = xp.asarray(Xh, self.dtype), xp.asarray(Yh, self.dtype)
        Vd = (
            None
            if val is None
            else (xp.asarray(val[0], self.dtype), xp.asarray(val[1], self.dtype), val[0].shape[0])
        )
        states: list[OptimizerState] = [
            xp.optimizer_state(opt, W, b) for W, b in zip(self._net.W, self._net.b)
        ]
        rng = np.random.default_rng(self.seed if seed is None else seed)
        before = self._snapshot()
        last_finite = self._snapshot()
        best_weights = self._snapshot() if patience is not None else []
        best_loss, best_epoch = math.inf, 0
        history = History(backend=xp.name)
        stats = self._stats()
        order = np.arange(n, dtype=np.int64)
        started = time.perf_counter()
        bar = _progress(epochs, verbose)
        try:
            # A loss overflowing on its way to divergence raises TrainingDivergedError, not warnings.
            with np.errstate(over="ignore", invalid="ignore"):
                for epoch in range(1, epochs + 1):
                    if shuffle:
                        rng.shuffle(order)
                    index = xp.asarray(order, np.dtype(np.int64))
                    xp.copy_into(stats, xp.zeros((2,), np.dtype(np.float64)))
                    for start, stop in self._batches(n, batch_size):
                        ws = self._workspace(stop - start)
                        xp.train_step(self._net, ws, Xd, Yd, index[start:stop], states, stats)
                    total, correct = xp.to_host(stats)
                    figures = {"loss": float(total) / n}
                    if not math.isfinite(figures["loss"]):
                        self._restore(last_finite)
                        raise TrainingDivergedError(
                            f"training diverged at epoch {epoch}: the loss became {figures['loss']}; "
                            f"the model keeps the weights of epoch {epoch - 1} (try a smaller learning rate)"
                        )
                    if self.is_classifier:
                        figures["accuracy"] = float(correct) / n
                    if Vd is not None:
                        val_loss, val_acc = self._evaluate(*Vd)
                        figures["val_loss"] = val_loss
                        if self.is_classifier:
                            figures["val_accuracy"] = val_acc
                    history.record(epoch, figures)
                    self._snapshot_into(last_finite)
                    if bar is not None:
                        bar.set_postfix({k: f"{v:.4f}" for k, v in figures.items()})
                        bar.update(1)
                    if patience is not None:
                        monitored = figures.get("val_loss", figures["loss"])
                        if monitored < best_loss:
                            best_loss, best_epoch = monitored, epoch
                            self._snapshot_into(best_weights)
                        elif epoch - best_epoch >= patience:
                            history.stopped_epoch = epoch
                            break
        except Exception as exc:
            if not isinstance(exc, TrainingDivergedError):
                self._restore(before)  # a failed fit leaves the model as it was
            raise
        finally:
            if bar is not None:
                bar.close()
        if patience is not None:
            self._restore(best_weights)
            history.best_epoch = best_epoch
        xp.synchronize()
        history.wall_time = time.perf_counter() - started
        return history

    # ---- files ----------------------------------------------------------------------------------

    def save(self, path: str | os.PathLike) -> None:
        """Write the architecture and weights to an ``.npz`` file (no pickle)."""
        serialization.save(self, path)


def load(path: str | os.PathLike, backend: str | Backend | None = "auto") -> MLP:
    """A model written by ``MLP.save``, on ``backend``."""
    return serialization.load(path, backend)


def _progress(epochs: int, verbose: bool):
    """A tqdm bar over epochs when verbose and tqdm is installed; None otherwise."""
    if not verbose:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        print(
            "bpgpu: install tqdm (pip install bpgpu[progress]) for a progress bar", file=sys.stderr
        )
        return None
    return tqdm(total=epochs, unit="epoch", desc="fit", file=sys.stderr)
