"""The fused training ops for your own training loops, with every argument checked.

Arrays may be NumPy arrays, arrays of a GPU backend (CuPy arrays, anything with
``__cuda_array_interface__`` the backend accepts), or any DLPack array (a torch tensor, ...),
taken without a copy: a CPU one as a NumPy view, a CUDA one as a CuPy view, so in-place
arguments are updated where they are. ``backend=None`` takes the backend whose arrays were
passed (NumPy arrays and CPU tensors: the numpy backend); naming a backend copies host arrays
to it. The results are that backend's arrays, or torch tensors (sharing their memory) when the
first argument is one. Outputs are allocated unless ``out`` is given.

    A1 = ops.dense_forward(X, W1, b1, activation="relu")        # f(X @ W1 + b1)
    D1 = ops.delta_backward(D2, W2, A1, activation="relu")      # (D2 @ W2.T) * f'(A1)
    state = ops.optimizer_state(bpgpu.Adam(), W1, b1)
    ops.weight_update(X, D1, W1, b1, state)                     # W1, b1 updated in place
    ops.optimizer_step(W1, b1, dW1, db1, state)                 # the same from given gradients

This module only finds the backend, brings host arrays to it and allocates outputs; the
backend's public ops check everything (bpgpu/backends/checks.py).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bpgpu.backends import REGISTRY, get_backend
from bpgpu.backends.base import Array, Backend, BackendUnavailableError, OptimizerState
from bpgpu.functions import check_loss
from bpgpu.optimizers import Optimizer
from bpgpu.validation import DTYPES

__all__ = [
    "delta_backward",
    "dense_forward",
    "optimizer_state",
    "optimizer_step",
    "output_delta",
    "output_forward",
    "weight_gradient",
    "weight_update",
]


_DLPACK_CPU, _DLPACK_CUDA = 1, 2  # DLPack's device types


def _view(a: Any) -> Any:
    """A DLPack array (not NumPy's or CuPy's own) as a NumPy view (on the CPU) or a CuPy view
    (on a GPU), sharing its memory; anything else as it is."""
    if a is None or isinstance(a, np.ndarray) or not hasattr(a, "__dlpack_device__"):
        return a
    if hasattr(a, "__cuda_array_interface__") and type(a).__module__.startswith("cupy"):
        return a
    device = a.__dlpack_device__()[0]
    if device == _DLPACK_CPU:
        return np.from_dlpack(a)
    if device == _DLPACK_CUDA:
        import cupy

        return cupy.from_dlpack(a)
    raise TypeError(f"arrays on DLPack device type {device} are not supported (CPU or CUDA)")


def _back(first: object, given: Any, result: Any) -> Any:
    """What an op returns: the caller's own ``out`` when it gave one, else the result, as a
    torch tensor sharing its memory when the caller works in torch."""
    if given is not None:
        return given
    if type(first).__module__.split(".")[0] == "torch":
        import torch

        return torch.from_dlpack(result)
    return result


def _backend_for(first: object, backend: str | Backend | None) -> Backend:
    """The named backend, else the one whose arrays ``first`` is (NumPy: numpy)."""
    if backend is not None:
        return get_backend(backend)
    first = _view(first)
    if isinstance(first, np.ndarray) or not hasattr(first, "__cuda_array_interface__"):
        return get_backend("numpy")
    for name, entry in REGISTRY.items():
        if not entry.engine or name == "numpy":
            continue
        try:
            candidate = get_backend(name)
        except BackendUnavailableError:
            continue
        if candidate.is_array(first):
            return candidate
    raise TypeError(f"no available backend accepts arrays of type {type(first).__name__}")


def _prepare(xp: Backend, in_place: tuple[str, ...] = (), **arrays: object) -> dict[str, Array]:
    """Each array on xp, all of one float dtype: DLPack arrays as views, host arrays copied to
    the backend; those updated in place must already be the backend's."""
    arrays = {k: _view(a) for k, a in arrays.items()}
    found = {k: _dtype(a) for k, a in arrays.items()}
    if len(set(found.values())) != 1 or next(iter(found.values())).name not in DTYPES:
        raise TypeError(
            "arrays must all be float32 or all float64; "
            f"got { {k: str(d) for k, d in found.items()} }"
        )
    dtype = next(iter(found.values()))
    prepared = {}
    for name, a in arrays.items():
        if xp.is_array(a):
            prepared[name] = a
        elif name in in_place:
            raise TypeError(f"{name} is updated in place, so it must be a {xp.name} backend array")
        else:
            prepared[name] = xp.asarray(np.asarray(a), dtype)
    return prepared


def _dtype(a: object) -> np.dtype:
    dtype = getattr(a, "dtype", None)
    return np.dtype(dtype) if dtype is not None else np.asarray(a).dtype


def _dim(a: Any, axis: int) -> int:
    shape = getattr(a, "shape", ())
    return int(shape[axis]) if len(shape) == 2 else 0


def _output(xp: Backend, out: Array | None, shape: tuple[int, ...], dtype: np.dtype) -> Array:
    """``out``, or new storage of ``shape`` when it is None and the shape is valid (when it is
    not, the op's check of its inputs reports why)."""
    if out is None and min(shape) > 0:
        return xp.empty(shape, dtype)
    return _view(out)


def dense_forward(
    X: Array,
    W: Array,
    b: Array,
    activation: str = "identity",
    *,
    out: Array | None = None,
    backend: str | Backend | None = None,
) -> Array:
    """activation(X @ W + b): X (m, k), W (k, n), b (n,) -> (m, n)."""
    xp = _backend_for(X, backend)
    a = _prepare(xp, X=X, W=W, b=b)
    res = _output(xp, out, (_dim(a["X"], 0), _dim(a["W"], 1)), a["X"].dtype)
    return _back(X, out, xp.dense_forward(a["X"], a["W"], a["b"], activation, res))


def output_forward(
    Z: Array,
    output: str = "softmax",
    *,
    out: Array | None = None,
    backend: str | Backend | None = None,
) -> Array:
    """output(Z) row-wise: Z (m, n) -> (m, n)."""
    xp = _backend_for(Z, backend)
    a = _prepare(xp, Z=Z)
    res = _output(xp, out, (_dim(a["Z"], 0), _dim(a["Z"], 1)), a["Z"].dtype)
    return _back(Z, out, xp.output_forward(a["Z"], output, res))


def output_delta(
    Z: Array,
    Y: Array,
    output: str = "softmax",
    loss: str = "cross_entropy",
    *,
    out_A: Array | None = None,
    out_D: Array | None = None,
    backend: str | Backend | None = None,
) -> tuple[Array, Array, float, int]:
    """(A, D, mean loss, number correct) for logits Z (m, n) and targets Y (m, n):
    A = output(Z), D = d(mean loss)/dZ."""
    loss = check_loss(loss)
    xp = _backend_for(Z, backend)
    a = _prepare(xp, Z=Z, Y=Y)
    shape = (_dim(a["Z"], 0), _dim(a["Z"], 1))
    A = _output(xp, out_A, shape, a["Z"].dtype)
    D = _output(xp, out_D, shape, a["Z"].dtype)
    stats = xp.zeros((2,), np.dtype(np.float64))
    xp.output_delta(a["Z"], a["Y"], output, loss, A, D, stats)
    total, correct = xp.to_host(stats)
    return _back(Z, out_A, A), _back(Z, out_D, D), float(total) / shape[0], int(correct)


def delta_backward(
    D: Array,
    W: Array,
    A_prev: Array,
    activation: str,
    *,
    out: Array | None = None,
    backend: str | Backend | None = None,
) -> Array:
    """(D @ W.T) * activation'(A_prev): D (m, n), W (k, n), A_prev (m, k) -> (m, k)."""
    xp = _backend_for(D, backend)
    a = _prepare(xp, D=D, W=W, A_prev=A_prev)
    res = _output(xp, out, (_dim(a["D"], 0), _dim(a["W"], 0)), a["D"].dtype)
    return _back(D, out, xp.delta_backward(a["D"], a["W"], a["A_prev"], activation, res))


def weight_gradient(
    A_prev: Array,
    D: Array,
    *,
    out_W: Array | None = None,
    out_b: Array | None = None,
    backend: str | Backend | None = None,
) -> tuple[Array, Array]:
    """(A_prev.T @ D, column sums of D): A_prev (m, k), D (m, n) -> (k, n), (n,)."""
    xp = _backend_for(A_prev, backend)
    a = _prepare(xp, A_prev=A_prev, D=D)
    k, n = _dim(a["A_prev"], 1), _dim(a["D"], 1)
    dW = _output(xp, out_W, (k, n), a["D"].dtype)
    db = _output(xp, out_b, (n,), a["D"].dtype)
    xp.weight_gradient(a["A_prev"], a["D"], dW, db)
    return _back(A_prev, out_W, dW), _back(A_prev, out_b, db)


def optimizer_state(
    optimizer: Optimizer, W: Array, b: Array, *, backend: str | Backend | None = None
) -> OptimizerState:
    """Fresh optimizer state for one layer's W (k, n) and b (n,)."""
    xp = _backend_for(W, backend)
    a = _prepare(xp, in_place=("W", "b"), W=W, b=b)
    return xp.optimizer_state(optimizer, a["W"], a["b"])


def weight_update(
    A_prev: Array,
    D: Array,
    W: Array,
    b: Array,
    state: OptimizerState,
    *,
    backend: str | Backend | None = None,
) -> None:
    """One optimizer step on W (k, n) and b (n,) in place from A_prev (m, k) and D (m, n)."""
    xp = _backend_for(W, backend)
    a = _prepare(xp, in_place=("W", "b"), A_prev=A_prev, D=D, W=W, b=b)
    xp.weight_update(a["A_prev"], a["D"], a["W"], a["b"], state)


def optimizer_step(
    W: Array,
    b: Array,
    dW: Array,
    db: Array,
    state: OptimizerState,
    *,
    backend: str | Backend | None = None,
) -> None:
    """One optimizer step on W (k, n) and b (n,) in place from the gradients dW (k, n) and
    db (n,), which stay as they were (``weight_update`` with the gradient computed elsewhere,
    for example summed over processes)."""
    xp = _backend_for(W, backend)
    a = _prepare(xp, in_place=("W", "b"), W=W, b=b, dW=dW, db=db)
    xp.optimizer_step(a["W"], a["b"], a["dW"], a["db"], state)
