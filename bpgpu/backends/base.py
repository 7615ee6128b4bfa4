"""The backend interface: the fused training ops, memory, and the training step built from them.

A backend owns arrays of its own kind (NumPy arrays, CuPy arrays, numba device arrays) and
seven ops. Shapes, row-major, a row is a sample (m = batch, k = inputs, n = outputs):

    dense_forward(X (m,k), W (k,n), b (n,), act, out (m,n))      out = act(X @ W + b)
    output_forward(Z (m,n), output, out (m,n))                   out = output(Z), row-wise
    output_delta(Z, Y, output, loss, out_A, out_D, stats)        A = output(Z); D = dLoss/dZ;
                                                                 stats += (sum of per-sample
                                                                 losses, number correct)
    delta_backward(D (m,n), W (k,n), A (m,k), act, out (m,k))    out = (D @ W^T) * act'(A)
    weight_gradient(A, D, out_W (k,n), out_b (n,))               out_W = A^T D, out_b = sum_rows D
    weight_update(A (m,k), D (m,n), W, b, state)                 W, b <- optimizer step with
                                                                 dW = A^T D, db = sum_rows D
    optimizer_step(W, b, dW (k,n), db (n,), state)               W, b <- optimizer step with
                                                                 the gradients given
    gather_rows(src (r,n), index (m,), out (m,n))                out = src[index]

``Loss`` is the mean over the batch, so ``D`` carries the 1/m. ``stats`` is a float64 array of
two elements on the backend's device that the op adds to, so a whole epoch's loss and accuracy
are read back once.

Each public op checks its arguments (bpgpu/backends/checks.py) and calls the backend's
``_op``, which trusts them. The model and the training step call the ``_op`` methods directly:
they pass buffers they made themselves. A backend implements the ``_op`` methods and memory;
``train_step``, ``evaluate_step``, ``predict_step`` and ``apply_gradients`` compose them, and a
backend may override the composition only where it keeps the same result (the CuPy backend
replays a captured step; the kernel backends fuse the last layer with its loss).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np

from bpgpu.backends import checks
from bpgpu.backends.state import Array, HostOptimizerState, Network, OptimizerState, Workspace
from bpgpu.optimizers import Optimizer
from bpgpu.validation import physical_memory

__all__ = [
    "Array",
    "Backend",
    "BackendUnavailableError",
    "EpochsRun",
    "HostMemory",
    "HostOptimizerState",
    "Network",
    "OptimizerState",
    "Workspace",
    "check_index_values",
]


@dataclass
class EpochsRun:
    """What ``train_epochs`` did: ``done`` epochs run; ``stats[e]`` epoch e's summed loss and
    correct count (float64, host); ``starts``: the weights at the start of the last epoch run
    and of the one before it (where the call ran it), newest first, in MLP's snapshot layout
    (every W, then every b). Those are the backend's buffers, valid until its next call."""

    done: int
    stats: np.ndarray
    starts: list[list[Array]]


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here; the message says why."""


class Backend(ABC):
    """Base class of every backend. Subclasses set ``name`` and implement memory and the
    ``_op`` methods."""

    name: str = "base"
    #: True for a backend that emulates or simulates a device (the CUDA C kernels run on the
    #: CPU, numba's CUDA simulator): correct, slow, never chosen by ``auto``
    simulated: bool = False
    #: where its arrays live and its work runs: "cpu" or "gpu"
    device: str = "cpu"
    #: the most elements one array may hold (the CUDA kernels index with 32-bit integers)
    max_elements: int | None = None

    # ---- availability -------------------------------------------------------------------

    @classmethod
    def probe(cls) -> None:
        """Raise BackendUnavailableError saying why this backend cannot run here."""
        return None  # by default it can

    def describe(self) -> dict[str, str]:
        """Versions and the device, for ``bpgpu info`` and benchmark reports."""
        return {"backend": self.name, "numpy": np.__version__}

    # ---- memory and transfer --------------------------------------------------------------

    @abstractmethod
    def asarray(self, host: np.ndarray, dtype: np.dtype) -> Array:
        """A C-contiguous copy of ``host`` as ``dtype`` on this backend."""

    def from_host(self, host: np.ndarray, dtype: np.dtype) -> Array:
        """``host`` as a C-contiguous ``dtype`` array on this backend, to be read only (fit's
        data): a copy, except on a host backend when ``host`` already is one."""
        return self.asarray(host, dtype)

    @abstractmethod
    def to_host(self, array: Array) -> np.ndarray:
        """A NumPy copy of ``array``."""

    @abstractmethod
    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> Array:
        """Uninitialised C-contiguous storage."""

    @abstractmethod
    def zeros(self, shape: tuple[int, ...], dtype: np.dtype) -> Array:
        """Zero-filled C-contiguous storage."""

    @abstractmethod
    def copy_into(self, dst: Array, src: Array) -> None:
        """dst[...] = src, both on this backend, same shape and dtype."""

    @abstractmethod
    def is_array(self, obj: object) -> bool:
        """Whether ``obj`` is an array this backend's ops accept without a copy."""

    def is_c_contiguous(self, array: Array) -> bool:
        return bool(array.flags.c_contiguous)

    def check_device(self, name: str, array: Array) -> None:
        """Raise, naming ``name``, if ``array`` is not on this backend's device."""
        return None  # one device, or none: the host

    def synchronize(self) -> None:
        """Wait for queued work."""
        return None  # nothing is queued on the CPU

    def memory_bytes(self) -> int | None:
        """The memory this backend's arrays live in, in bytes (None: unknown); what a model
        and its training are checked against before anything is allocated."""
        return None

    # ---- the ops, arguments checked ---------------------------------------------------------

    def dense_forward(self, X: Array, W: Array, b: Array, activation: str, out: Array) -> Array:
        """out = activation(X @ W + b); returns out."""
        checks.dense_forward(self, X, W, b, activation, out)
        return self._dense_forward(X, W, b, activation, out)

    def output_forward(self, Z: Array, output: str, out: Array) -> Array:
        """out = output(Z) row-wise (softmax, sigmoid or identity); returns out."""
        checks.output_forward(self, Z, output, out)
        return self._output_forward(Z, output, out)

    def output_delta(
        self, Z: Array, Y: Array, output: str, loss: str, out_A: Array, out_D: Array, stats: Array
    ) -> None:
        """out_A = output(Z); out_D = d(mean loss)/dZ; stats += (sum loss, count correct)."""
        checks.output_delta(self, Z, Y, output, loss, out_A, out_D, stats)
        self._output_delta(Z, Y, output, loss, out_A, out_D, stats)

    def delta_backward(
        self, D: Array, W: Array, A_prev: Array, activation: str, out: Array
    ) -> Array:
        """out = (D @ W^T) * activation'(A_prev); returns out."""
        checks.delta_backward(self, D, W, A_prev, activation, out)
        return self._delta_backward(D, W, A_prev, activation, out)

    def weight_gradient(self, A_prev: Array, D: Array, out_W: Array, out_b: Array) -> None:
        """out_W = A_prev^T D; out_b = sum over rows of D."""
        checks.weight_gradient(self, A_prev, D, out_W, out_b)
        self._weight_gradient(A_prev, D, out_W, out_b)

    def weight_update(
        self, A_prev: Array, D: Array, W: Array, b: Array, state: OptimizerState
    ) -> None:
        """One optimizer step on W and b in place, from dW = A_prev^T D and db = sum_rows D."""
        checks.weight_update(self, A_prev, D, W, b, state)
        self._advance(state)
        self._weight_update(A_prev, D, W, b, state)

    def optimizer_step(
        self, W: Array, b: Array, dW: Array, db: Array, state: OptimizerState
    ) -> None:
        """One optimizer step on W and b in place from the gradients dW and db (left as they
        were): ``weight_update`` without the gradient, for gradients summed elsewhere (the
        all-reduce of data-parallel training)."""
        checks.optimizer_step(self, W, b, dW, db, state)
        self._advance(state)
        self._optimizer_step(W, b, dW, db, state)

    def gather_rows(self, src: Array, index: Array, out: Array) -> Array:
        """out = src[index] (rows), index an int64 array on this backend; returns out.

        The GPU kernels do not check the values (that would cost a round trip to the host
        every step): they write a row of NaN for an index outside [0, rows). The NumPy backends
        raise IndexError naming the bad value and leave ``out`` as it was.
        """
        checks.gather_rows(self, src, index, out)
        return self._gather_rows(src, index, out)

    def optimizer_state(self, optimizer: Optimizer, W: Array, b: Array) -> OptimizerState:
        """Fresh (zeroed) optimizer state for one layer's W (k, n) and b (n,)."""
        checks.optimizer_state(self, optimizer, W, b)
        return self._optimizer_state(optimizer, W, b)

    def export_optimizer_state(self, state: OptimizerState) -> HostOptimizerState:
        """Host copies of a layer's optimizer state: its slot arrays and update count."""
        return HostOptimizerState(
            W={k: self.to_host(v) for k, v in state.W.items()},
            b={k: self.to_host(v) for k, v in state.b.items()},
            t=state.t,
        )

    def import_optimizer_state(self, state: OptimizerState, saved: HostOptimizerState) -> None:
        """A layer's optimizer state <- ``saved`` (what ``export_optimizer_state`` gave, maybe
        from another backend). Every slot is checked first (names, shapes, finite values), so a
        ValueError naming the slot leaves ``state`` as it was. The update count moves to
        ``saved.t``: the next update is ``saved.t + 1`` (kernel backends write its numbers in
        ``_advance``, as for any update)."""
        checks.host_optimizer_state(state, saved)
        for slots, host in ((state.W, saved.W), (state.b, saved.b)):
            for name, dst in slots.items():
                self.copy_into(dst, self.asarray(host[name], dst.dtype))
        state.t = saved.t

    # ---- the ops each backend implements (arguments trusted) ---------------------------------

    @abstractmethod
    def _dense_forward(
        self, X: Array, W: Array, b: Array, activation: str, out: Array
    ) -> Array: ...

    @abstractmethod
    def _output_forward(self, Z: Array, output: str, out: Array) -> Array: ...

    @abstractmethod
    def _output_delta(
        self, Z: Array, Y: Array, output: str, loss: str, out_A: Array, out_D: Array, stats: Array
    ) -> None: ...

    @abstractmethod
    def _delta_backward(
        self, D: Array, W: Array, A_prev: Array, activation: str, out: Array
    ) -> Array: ...

    @abstractmethod
    def _weight_gradient(self, A_prev: Array, D: Array, out_W: Array, out_b: Array) -> None: ...

    @abstractmethod
    def _weight_update(
        self, A_prev: Array, D: Array, W: Array, b: Array, state: OptimizerState
    ) -> None:
        """The step for ``state.t``, already counted by ``_advance``."""

    @abstractmethod
    def _optimizer_step(
        self, W: Array, b: Array, dW: Array, db: Array, state: OptimizerState
    ) -> None:
        """The step for ``state.t``, already counted by ``_advance``; dW and db unchanged."""

    @abstractmethod
    def _gather_rows(self, src: Array, index: Array, out: Array) -> Array: ...

    def _scale(self, a: Array, factor: float) -> None:
        """a *= factor in place (NumPy and CuPy arrays; a backend with other arrays overrides)."""
        a *= factor

    def _optimizer_state(self, optimizer: Optimizer, W: Array, b: Array) -> OptimizerState:
        return OptimizerState(
            optimizer=optimizer,
            W={s: self.zeros(W.shape, W.dtype) for s in optimizer.slots},
            b={s: self.zeros(b.shape, b.dtype) for s in optimizer.slots},
        )

    def _advance(self, state: OptimizerState) -> None:
        """Count the update about to be applied (a backend whose kernels read the update's
        numbers from device memory writes them here, outside any captured graph)."""
        state.t += 1

    # ---- composed from the ops ------------------------------------------------------------

    def workspace(self, sizes: list[int], rows: int, dtype: np.dtype) -> Workspace:
        """Buffers for a batch of ``rows`` samples through layers of ``sizes``."""
        e = self.empty
        return Workspace(
            rows=rows,
            X=e((rows, sizes[0]), dtype),
            Y=e((rows, sizes[-1]), dtype),
            A=[e((rows, n), dtype) for n in sizes[1:-1]],
            Z=e((rows, sizes[-1]), dtype),
            P=e((rows, sizes[-1]), dtype),
            D=[e((rows, n), dtype) for n in sizes[1:]],
        )

    def step_scope(self, net: Network, ws: Workspace) -> AbstractContextManager[None]:
        """What a step over ``ws.rows`` samples runs inside (the NumPy backend spreads a large
        one across CPU threads); nothing by default."""
        return nullcontext()

    def compiled_epochs(self, layers: list[int], batch: int) -> bool:
        """Whether ``fit`` should hand this backend whole epochs at once (``train_epochs``) for
        a network of these layer sizes at this batch size; no backend but numba-cpu does."""
        return False

    def train_epochs(
        self,
        net: Network,
        ws: Workspace,
        X: Array,
        Y: Array,
        orders: np.ndarray,
        states: list[OptimizerState],
    ) -> EpochsRun:
        """Epochs of training in one call: epoch e over the rows ``orders[e]`` of X and Y in
        batches of ``ws.rows``, each step as ``train_step`` takes it. Stops after the first
        epoch whose summed loss is not finite."""
        raise NotImplementedError(f"the {self.name} backend trains step by step")

    def train_step(
        self,
        net: Network,
        ws: Workspace,
        X: Array,
        Y: Array,
        index: Array,
        states: list[OptimizerState],
        stats: Array,
    ) -> None:
        """One step of minibatch training on the rows ``index`` of X and Y: forward, loss
        into ``stats``, backward, one optimizer update of every layer."""
        with self.step_scope(net, ws):
            for state in states:
                self._advance(state)
            self._train_ops(net, ws, X, Y, index, states, stats)

    def _train_ops(
        self,
        net: Network,
        ws: Workspace,
        X: Array,
        Y: Array,
        index: Array,
        states: list[OptimizerState],
        stats: Array,
    ) -> None:
        """The ops of a training step, update counts already advanced."""
        self._gather_rows(X, index, ws.X)
        self._gather_rows(Y, index, ws.Y)
        self._forward_loss(net, ws, stats)
        self._backward(net, ws, states, None)

    def evaluate_step(
        self,
        net: Network,
        ws: Workspace,
        X: Array,
        Y: Array,
        index: Array,
        stats: Array,
        grads: list[tuple[Array, Array]] | None = None,
    ) -> None:
        """Loss and correct count of the rows ``index`` into ``stats``, no update; with
        ``grads`` (one (dW, db) pair of backend arrays per layer) also the gradients."""
        with self.step_scope(net, ws):
            self._gather_rows(X, index, ws.X)
            self._gather_rows(Y, index, ws.Y)
            self._forward_loss(net, ws, stats)
            if grads is not None:
                self._backward(net, ws, None, grads)

    def apply_gradients(
        self, net: Network, grads: list[tuple[Array, Array]], states: list[OptimizerState]
    ) -> None:
        """One optimizer update of every layer from the gradients ``grads`` (one (dW, db) pair
        per layer, as ``evaluate_step`` writes them): a training step whose gradients were
        reduced between the two (data-parallel training)."""
        for W, b, (dW, db), state in zip(net.W, net.b, grads, states, strict=True):
            self._advance(state)
            self._optimizer_step(W, b, dW, db, state)

    def predict_step(self, net: Network, ws: Workspace, X: Array, index: Array) -> Array:
        """The output layer's activations of the rows ``index`` of X; returns ``ws.P``."""
        with self.step_scope(net, ws):
            self._gather_rows(X, index, ws.X)
            A = self._forward_hidden(net, ws)
            self._dense_forward(A, net.W[-1], net.b[-1], "identity", ws.Z)
            return self._output_forward(ws.Z, net.output, ws.P)

    def _forward_hidden(self, net: Network, ws: Workspace) -> Array:
        """The hidden layers from ``ws.X``; returns the last hidden output (or ws.X)."""
        A = ws.X
        for l, act in enumerate(net.activations):
            A = self._dense_forward(A, net.W[l], net.b[l], act, ws.A[l])
        return A

    def _forward_loss(self, net: Network, ws: Workspace, stats: Array) -> None:
        """Forward from ``ws.X``, then the output layer with its loss against ``ws.Y``: logits
        in ws.Z, outputs in ws.P, the last delta in ws.D[-1], the loss added to stats."""
        A = self._forward_hidden(net, ws)
        self._dense_forward(A, net.W[-1], net.b[-1], "identity", ws.Z)
        self._output_delta(ws.Z, ws.Y, net.output, net.loss, ws.P, ws.D[-1], stats)

    def _backward(
        self,
        net: Network,
        ws: Workspace,
        states: list[OptimizerState] | None,
        grads: list[tuple[Array, Array]] | None,
    ) -> None:
        """From ``ws.D[-1]`` back to layer 1: each delta from the old W, then W's update.

        With ``states`` the optimizer updates W in place; with ``grads`` the gradients are
        written there instead.
        """
        for l in range(len(net.W) - 1, -1, -1):
            A_prev = ws.X if l == 0 else ws.A[l - 1]
            if l > 0:
                self._delta_backward(ws.D[l], net.W[l], A_prev, net.activations[l - 1], ws.D[l - 1])
            if states is not None:
                self._weight_update(A_prev, ws.D[l], net.W[l], net.b[l], states[l])
            elif grads is not None:
                self._weight_gradient(A_prev, ws.D[l], *grads[l])


class HostMemory:
    """Memory for backends whose arrays are NumPy arrays on the host."""

    def memory_bytes(self) -> int | None:
        return physical_memory()

    def asarray(self, host: np.ndarray, dtype: np.dtype) -> np.ndarray:
        return np.array(host, dtype=dtype, order="C", copy=True)

    def from_host(self, host: np.ndarray, dtype: np.dtype) -> np.ndarray:
        return np.ascontiguousarray(host, dtype=dtype)

    def to_host(self, array: np.ndarray) -> np.ndarray:
        return np.array(array, copy=True)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    def zeros(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    def copy_into(self, dst: np.ndarray, src: np.ndarray) -> None:
        np.copyto(dst, src)

    def is_array(self, obj: object) -> bool:
        return isinstance(obj, np.ndarray)


def check_index_values(src: np.ndarray, index: np.ndarray) -> None:
    """Raise IndexError, naming the first bad value, unless every index is a row of src."""
    n = src.shape[0]
    if index.size and (index.min() < 0 or index.max() >= n):
        bad = index[(index < 0) | (index >= n)][0]
        raise IndexError(f"index holds {bad}: expected row numbers in [0, {n})")
