"""The backend interface: the fused training ops, memory, and host transfer.

A backend owns arrays of its own kind (NumPy arrays, CuPy arrays, numba device arrays) and
five fused ops. Shapes, row-major, a row is a sample (m = batch, k = inputs, n = outputs):

    dense_forward(X (m,k), W (k,n), b (n,), act, out (m,n))      out = act(X @ W + b)
    output_forward(Z (m,n), output, out (m,n))                   out = output(Z), row-wise
    output_delta(Z, Y, output, loss, out_A, out_D, stats)        A = output(Z); D = dLoss/dZ;
                                                                 stats += (sum of per-sample
                                                                 losses, number correct)
    delta_backward(D (m,n), W (k,n), A (m,k), act, out (m,k))    out = (D @ W^T) * act'(A)
    weight_update(A (m,k), D (m,n), W, b, state)                 W, b <- optimizer step with
                                                                 dW = A^T D, db = sum_rows D
    weight_gradient(A, D, out_W (k,n), out_b (n,))               out_W = A^T D, out_b = sum_rows D

``Loss`` is the mean over the batch, so ``D`` carries the 1/m. ``stats`` is a float64 array of
two elements on the backend's device that the op adds to, so a whole epoch's loss and accuracy
are read back once. The generic training step composes the ops; a backend may override
``train_step`` (the CuPy backend captures it in a CUDA graph) as long as the result is the same.

The ops trust their arguments (``bpgpu.ops`` validates for callers outside the model) except
where a GPU launcher must guard memory safety itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bpgpu.functions import ACTIVATIONS, OUTPUTS, check_combination, check_name
from bpgpu.optimizers import Optimizer

Array = Any  # an array of the backend's own kind


class BackendUnavailableError(RuntimeError):
    """A backend was asked for by name but cannot run here; the message says why."""


@dataclass
class OptimizerState:
    """One layer's optimizer state: the slot arrays for W and b, and the update count.

    ``t`` counts the updates applied so far (Adam's bias correction uses t + 1 for the next).
    ``scratch`` holds whatever buffers the backend needs for the gradient, allocated once.
    """

    optimizer: Optimizer
    W: dict[str, Array]
    b: dict[str, Array]
    t: int = 0
    scratch: dict[str, Array] = field(default_factory=dict)


@dataclass
class Network:
    """What a training step needs to know about the model, on the backend's device."""

    W: list[Array]
    b: list[Array]
    activations: list[str]  # one per hidden layer: len(W) - 1 names
    output: str
    loss: str


@dataclass
class Workspace:
    """Per-batch-size buffers, allocated once and reused by every step of that size.

    ``A[l]`` is layer l's output for l = 1 .. L-1 (``A[0]`` is the batch ``X``), ``Z`` the last
    layer's logits, ``P`` its output activations, ``D[l]`` the delta at layer l + 1.
    """

    rows: int
    X: Array
    Y: Array
    A: list[Array]
    Z: Array
    P: Array
    D: list[Array]


class Backend(ABC):
    """Base class of every backend. Subclasses set ``name`` and implement the abstract ops."""

    name: str = "base"
    #: True for a backend that runs on a simulator (numba's CUDA simulator): correct, very
    #: slow, and never chosen by ``auto``
    simulated: bool = False

    # ---- availability -------------------------------------------------------------------

    @classmethod
    def probe(cls) -> None:
        """Raise BackendUnavailableError saying why this backend cannot run here."""

    def describe(self) -> dict[str, str]:
        """Versions and the device, for ``bpgpu info`` and benchmark reports."""
        return {"backend": self.name, "numpy": np.__version__}

    # ---- memory and transfer --------------------------------------------------------------

    @abstractmethod
    def asarray(self, host: np.ndarray, dtype: np.dtype) -> Array:
        """A C-contiguous copy of ``host`` as ``dtype`` on this backend."""

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

    def synchronize(self) -> None:
        """Wait for queued work (a no-op on the CPU)."""

    # ---- fused ops ------------------------------------------------------------------------

    @abstractmethod
    def dense_forward(self, X: Array, W: Array, b: Array, activation: str, out: Array) -> Array:
        """out = activation(X @ W + b)."""

    @abstractmethod
    def output_forward(self, Z: Array, output: str, out: Array) -> Array:
        """out = output(Z) row-wise (softmax, sigmoid or identity)."""

    @abstractmethod
    def output_delta(
        self,
        Z: Array,
        Y: Array,
        output: str,
        loss: str,
        out_A: Array,
        out_D: Array,
        stats: Array,
    ) -> None:
        """out_A = output(Z); out_D = d(mean loss)/dZ; stats += (sum loss, count correct)."""

    @abstractmethod
    def delta_backward(
        self, D: Array, W: Array, A_prev: Array, activation: str, out: Array
    ) -> Array:
        """out = (D @ W^T) * activation'(A_prev)."""

    @abstractmethod
    def weight_update(
        self, A_prev: Array, D: Array, W: Array, b: Array, state: OptimizerState
    ) -> None:
        """One optimizer step on W and b in place, from dW = A_prev^T D and db = sum_rows D."""

    @abstractmethod
    def weight_gradient(self, A_prev: Array, D: Array, out_W: Array, out_b: Array) -> None:
        """out_W = A_prev^T D; out_b = sum over rows of D."""

    @abstractmethod
    def gather_rows(self, src: Array, index: Array, out: Array) -> Array:
        """out = src[index] (rows), index an int64 array on this backend.

        The GPU backends do not check the values (that would cost a round trip to the host
        every step): their kernels write a row of NaN for an index outside [0, rows). The NumPy
        backend raises IndexError naming the bad value and leaves ``out`` as it was.
        """

    # ---- argument checks for the kernel backends (their kernels do not bounds-check) --------

    def _check(self, name: str, array: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
        """Raise, naming ``name``, unless ``array`` is a C-contiguous array of this backend
        with this shape and dtype, on its device and small enough for 32-bit indexing."""
        if not self.is_array(array):
            raise TypeError(
                f"{name} must be an array of the {self.name} backend; got {type(array).__name__}"
            )
        if array.dtype != dtype:
            raise TypeError(f"{name} must have dtype {np.dtype(dtype)}; got {array.dtype}")
        if array.ndim != len(shape):
            raise ValueError(f"{name} must be {len(shape)}-D; got shape {tuple(array.shape)}")
        if tuple(array.shape) != tuple(shape):
            raise ValueError(f"{name} must have shape {tuple(shape)}; got {tuple(array.shape)}")
        if not self._is_c_contiguous(array):
            raise ValueError(f"{name} must be C-contiguous")
        if array.size >= 2**31:
            raise ValueError(
                f"{name} has {array.size} elements; the kernels index with 32-bit sizes"
            )
        self._check_device(name, array)

    def _check_all(self, **arrays: tuple[Any, tuple[int, ...], np.dtype]) -> None:
        """``_check`` of each ``name=(array, shape, dtype)``, in order; the first array's dtype
        must be float32 or float64 (the kernels' two variants)."""
        for name, (array, shape, dtype) in arrays.items():
            self._check(name, array, shape, dtype)
            if array.dtype not in _KERNEL_DTYPES:
                raise TypeError(f"{name} must be float32 or float64; got {array.dtype}")

    # The argument checks of each op, shared by the kernel backends; each returns the sizes.

    def _check_dense_forward(
        self, X: Array, W: Array, b: Array, activation: str, out: Array
    ) -> tuple[int, int, int]:
        check_name(activation, ACTIVATIONS, "activation")
        m, k, n, dt = _dim(X, 0), _dim(X, 1), _dim(W, 1), _dtype(X)
        self._check_all(
            X=(X, (m, k), dt), W=(W, (k, n), dt), b=(b, (n,), dt), out=(out, (m, n), dt)
        )
        return m, k, n

    def _check_delta_backward(
        self, D: Array, W: Array, A_prev: Array, activation: str, out: Array
    ) -> tuple[int, int, int]:
        check_name(activation, ACTIVATIONS, "activation")
        m, n, k, dt = _dim(D, 0), _dim(D, 1), _dim(W, 0), _dtype(D)
        self._check_all(
            D=(D, (m, n), dt), W=(W, (k, n), dt), A_prev=(A_prev, (m, k), dt), out=(out, (m, k), dt)
        )
        return m, k, n

    def _check_weight_step(
        self, A_prev: Array, D: Array, W: Array, b: Array, names: tuple[str, str] = ("W", "b")
    ) -> tuple[int, int, int]:
        """For weight_update (``W``, ``b``) and weight_gradient (``out_W``, ``out_b``)."""
        m, k, n, dt = _dim(A_prev, 0), _dim(A_prev, 1), _dim(D, 1), _dtype(A_prev)
        self._check_all(
            A_prev=(A_prev, (m, k), dt),
            D=(D, (m, n), dt),
            **{names[0]: (W, (k, n), dt), names[1]: (b, (n,), dt)},
        )
        return m, k, n

    def _check_output_forward(self, Z: Array, output: str, out: Array) -> tuple[int, int]:
        check_name(output, OUTPUTS, "output")
        m, n, dt = _dim(Z, 0), _dim(Z, 1), _dtype(Z)
        self._check_all(Z=(Z, (m, n), dt), out=(out, (m, n), dt))
        return m, n

    def _check_output_delta(
        self, Z: Array, Y: Array, output: str, loss: str, out_A: Array, out_D: Array, stats: Array
    ) -> tuple[int, int]:
        check_combination(output, loss)
        m, n, dt = _dim(Z, 0), _dim(Z, 1), _dtype(Z)
        self._check_all(
            Z=(Z, (m, n), dt),
            Y=(Y, (m, n), dt),
            out_A=(out_A, (m, n), dt),
            out_D=(out_D, (m, n), dt),
        )
        self._check("stats", stats, (2,), np.dtype(np.float64))
        return m, n

    def _check_gather_rows(self, src: Array, index: Array, out: Array) -> tuple[int, int]:
        rows, n, dt = _dim(out, 0), _dim(out, 1), _dtype(out)
        self._check_all(out=(out, (rows, n), dt), src=(src, (_dim(src, 0), n), dt))
        self._check("index", index, (rows,), np.dtype(np.int64))
        return rows, n

    def _is_c_contiguous(self, array: Any) -> bool:
        return bool(array.flags.c_contiguous)

    def _check_device(self, name: str, array: Any) -> None:
        """Raise if ``array`` is not on this backend's device."""

    # ---- built from the ops ---------------------------------------------------------------

    def optimizer_state(self, optimizer: Optimizer, W: Array, b: Array) -> OptimizerState:
        """Fresh (zeroed) state for one layer."""
        dtype = W.dtype
        return OptimizerState(
            optimizer=optimizer,
            W={s: self.zeros(W.shape, dtype) for s in optimizer.slots},
            b={s: self.zeros(b.shape, dtype) for s in optimizer.slots},
        )

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
        """What a training step or a forward pass of ``ws.rows`` samples runs inside (the NumPy
        backend spreads a large one across CPU threads); nothing by default."""
        return nullcontext()

    def forward(self, net: Network, X: Array, ws: Workspace) -> Array:
        """Logits of the last layer for the batch X (``ws.rows`` samples); returns ``ws.Z``."""
        with self.step_scope(net, ws):
            A = X
            for l, act in enumerate(net.activations):
                A = self.dense_forward(A, net.W[l], net.b[l], act, ws.A[l])
            return self.dense_forward(A, net.W[-1], net.b[-1], "identity", ws.Z)

    def backward(
        self,
        net: Network,
        ws: Workspace,
        states: list[OptimizerState] | None,
        grads: list | None = None,
    ) -> None:
        """From ``ws.D[-1]`` back to layer 1: each delta from the old W, then W's update.

        With ``states`` the optimizer updates W in place; with ``grads`` (a list of (dW, db)
        backend arrays) the gradients are written there instead.
        """
        L = len(net.W)
        for l in range(L - 1, -1, -1):
            A_prev = ws.X if l == 0 else ws.A[l - 1]
            if l > 0:
                self.delta_backward(ws.D[l], net.W[l], A_prev, net.activations[l - 1], ws.D[l - 1])
            if states is not None:
                self.weight_update(A_prev, ws.D[l], net.W[l], net.b[l], states[l])
            else:
                self.weight_gradient(A_prev, ws.D[l], grads[l][0], grads[l][1])

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
        """One step of minibatch training on the rows ``index`` of X and Y."""
        with self.step_scope(net, ws):
            self.gather_rows(X, index, ws.X)
            self.gather_rows(Y, index, ws.Y)
            self.forward(net, ws.X, ws)
            self.output_delta(ws.Z, ws.Y, net.output, net.loss, ws.P, ws.D[-1], stats)
            self.backward(net, ws, states)


_KERNEL_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def _dim(array: Any, axis: int) -> int:
    """Size of a matrix's ``axis``, -1 for anything that is not a matrix (its check fails)."""
    shape = getattr(array, "shape", ())
    return int(shape[axis]) if len(shape) == 2 else -1


def _dtype(array: Any) -> np.dtype:
    return np.dtype(getattr(array, "dtype", np.float32))
