"""The fused training ops for your own training loops, with every argument checked.

Arrays may be NumPy arrays or arrays of a GPU backend (CuPy arrays, anything with
``__cuda_array_interface__`` the backend accepts). ``backend=None`` takes the backend whose
arrays were passed (NumPy arrays: the numpy backend); naming a backend copies host arrays to it,
and the results are that backend's arrays. Outputs are allocated unless ``out`` is given.

    A1 = ops.dense_forward(X, W1, b1, activation="relu")        # f(X @ W1 + b1)
    D1 = ops.delta_backward(D2, W2, A1, activation="relu")      # (D2 @ W2.T) * f'(A1)
    state = ops.optimizer_state(bpgpu.Adam(), W1, b1)
    ops.weight_update(X, D1, W1, b1, state)                     # W1, b1 updated in place
"""

from __future__ import annotations

import numpy as np

from bpgpu.backends import REGISTRY, get_backend
from bpgpu.backends.base import Array, Backend, BackendUnavailableError, OptimizerState
from bpgpu.functions import (
    ACTIVATIONS,
    LOSS_ALIASES,
    LOSSES,
    OUTPUTS,
    check_combination,
    check_name,
)
from bpgpu.optimizers import Optimizer
from bpgpu.validation import DTYPES

__all__ = [
    "delta_backward",
    "dense_forward",
    "optimizer_state",
    "output_delta",
    "output_forward",
    "weight_gradient",
    "weight_update",
]


def _backend_for(arrays: dict[str, object], backend: str | Backend | None) -> Backend:
    if backend is not None:
        return get_backend(backend)
    first = next(iter(arrays.values()))
    if isinstance(first, np.ndarray) or not hasattr(first, "__cuda_array_interface__"):
        return get_backend("numpy")
    for name in REGISTRY:
        if name == "numpy":
            continue
        try:
            candidate = get_backend(name)
        except BackendUnavailableError:
            continue
        if candidate.is_array(first):
            return candidate
    raise TypeError(f"no available backend accepts arrays of type {type(first).__name__}")


def _prepare(
    xp: Backend, arrays: dict[str, object], in_place: tuple[str, ...] = ()
) -> dict[str, Array]:
    """Each array on xp, all of one float dtype; in-place arguments must already be xp's."""
    dtypes = {np.dtype(getattr(a, "dtype", None) or np.asarray(a).dtype) for a in arrays.values()}
    if len(dtypes) != 1 or next(iter(dtypes)).name not in DTYPES:
        found = {
            k: str(np.dtype(getattr(a, "dtype", np.asarray(a).dtype))) for k, a in arrays.items()
        }
        raise TypeError(f"arrays must all be float32 or all float64; got {found}")
    dtype = dtypes.pop()
    out = {}
    for name, a in arrays.items():
        if xp.is_array(a):
            if not _contiguous(a):
                raise ValueError(f"{name} must be C-contiguous")
            out[name] = a
        elif name in in_place:
            raise TypeError(f"{name} is updated in place, so it must be a {xp.name} backend array")
        else:
            out[name] = xp.asarray(np.asarray(a), dtype)
    return out


def _contiguous(a: object) -> bool:
    flags = getattr(a, "flags", None)
    if flags is None:
        return True
    try:
        return bool(flags["C_CONTIGUOUS"])
    except (KeyError, TypeError):
        return bool(getattr(flags, "c_contiguous", True))


def _shape(a: Array, name: str, ndim: int) -> tuple[int, ...]:
    if len(a.shape) != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got shape {tuple(a.shape)}")
    if 0 in a.shape:
        raise ValueError(f"{name} is empty (shape {tuple(a.shape)})")
    return tuple(a.shape)


def _out(
    xp: Backend, out: Array | None, shape: tuple[int, ...], dtype: np.dtype, name: str = "out"
) -> Array:
    if out is None:
        return xp.empty(shape, dtype)
    if not xp.is_array(out):
        raise TypeError(f"{name} must be a {xp.name} backend array")
    if tuple(out.shape) != shape or np.dtype(out.dtype) != dtype:
        raise ValueError(
            f"{name} must have shape {shape} and dtype {dtype}; got {tuple(out.shape)} {out.dtype}"
        )
    if not _contiguous(out):
        raise ValueError(f"{name} must be C-contiguous")
    return out


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
    check_name(activation, ACTIVATIONS, "activation")
    xp = _backend_for({"X": X}, backend)
    a = _prepare(xp, {"X": X, "W": W, "b": b})
    m, k = _shape(a["X"], "X", 2)
    k2, n = _shape(a["W"], "W", 2)
    if k2 != k:
        raise ValueError(f"W must have {k} rows to match X's {k} columns; got shape {(k2, n)}")
    if _shape(a["b"], "b", 1) != (n,):
        raise ValueError(f"b must have shape {(n,)}; got {tuple(a['b'].shape)}")
    res = _out(xp, out, (m, n), a["X"].dtype)
    return xp.dense_forward(a["X"], a["W"], a["b"], activation, res)


def output_forward(
    Z: Array,
    output: str = "softmax",
    *,
    out: Array | None = None,
    backend: str | Backend | None = None,
) -> Array:
    """output(Z) row-wise: Z (m, n) -> (m, n)."""
    check_name(output, OUTPUTS, "output")
    xp = _backend_for({"Z": Z}, backend)
    a = _prepare(xp, {"Z": Z})
    res = _out(xp, out, _shape(a["Z"], "Z", 2), a["Z"].dtype)
    return xp.output_forward(a["Z"], output, res)


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
    check_name(output, OUTPUTS, "output")
    loss = check_name(
        LOSS_ALIASES.get(loss, loss) if isinstance(loss, str) else loss, LOSSES, "loss"
    )
    check_combination(output, loss)
    xp = _backend_for({"Z": Z}, backend)
    a = _prepare(xp, {"Z": Z, "Y": Y})
    shape = _shape(a["Z"], "Z", 2)
    if tuple(a["Y"].shape) != shape:
        raise ValueError(f"Y must have Z's shape {shape}; got {tuple(a['Y'].shape)}")
    A = _out(xp, out_A, shape, a["Z"].dtype, "out_A")
    D = _out(xp, out_D, shape, a["Z"].dtype, "out_D")
    stats = xp.zeros((2,), np.dtype(np.float64))
    xp.output_delta(a["Z"], a["Y"], output, loss, A, D, stats)
    total, correct = xp.to_host(stats)
    return A, D, float(total) / shape[0], int(correct)


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
    check_name(activation, ACTIVATIONS, "activation")
    xp = _backend_for({"D": D}, backend)
    a = _prepare(xp, {"D": D, "W": W, "A_prev": A_prev})
    m, n = _shape(a["D"], "D", 2)
    k, n2 = _shape(a["W"], "W", 2)
    if n2 != n:
        raise ValueError(f"W must have {n} columns to match D's {n}; got shape {(k, n2)}")
    if _shape(a["A_prev"], "A_prev", 2) != (m, k):
        raise ValueError(f"A_prev must have shape {(m, k)}; got {tuple(a['A_prev'].shape)}")
    res = _out(xp, out, (m, k), a["D"].dtype)
    return xp.delta_backward(a["D"], a["W"], a["A_prev"], activation, res)


def _check_update_shapes(a: dict[str, Array]) -> tuple[int, int]:
    m, k = _shape(a["A_prev"], "A_prev", 2)
    m2, n = _shape(a["D"], "D", 2)
    if m2 != m:
        raise ValueError(f"A_prev and D must have the same number of rows; got {m} and {m2}")
    return k, n


def weight_gradient(
    A_prev: Array,
    D: Array,
    *,
    out_W: Array | None = None,
    out_b: Array | None = None,
    backend: str | Backend | None = None,
) -> tuple[Array, Array]:
    """(A_prev.T @ D, column sums of D): A_prev (m, k), D (m, n) -> (k, n), (n,)."""
    xp = _backend_for({"A_prev": A_prev}, backend)
    a = _prepare(xp, {"A_prev": A_prev, "D": D})
    k, n = _check_update_shapes(a)
    dW = _out(xp, out_W, (k, n), a["D"].dtype, "out_W")
    db = _out(xp, out_b, (n,), a["D"].dtype, "out_b")
    xp.weight_gradient(a["A_prev"], a["D"], dW, db)
    return dW, db


def optimizer_state(
    optimizer: Optimizer, W: Array, b: Array, *, backend: str | Backend | None = None
) -> OptimizerState:
    """Fresh optimizer state for one layer's W (k, n) and b (n,)."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"optimizer must be an Optimizer such as bpgpu.Adam(); got {type(optimizer).__name__}"
        )
    xp = _backend_for({"W": W}, backend)
    a = _prepare(xp, {"W": W, "b": b}, in_place=("W", "b"))
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
    if not isinstance(state, OptimizerState):
        raise TypeError("state must come from bpgpu.ops.optimizer_state(optimizer, W, b)")
    xp = _backend_for({"W": W}, backend)
    a = _prepare(xp, {"A_prev": A_prev, "D": D, "W": W, "b": b}, in_place=("W", "b"))
    k, n = _check_update_shapes(a)
    if tuple(a["W"].shape) != (k, n) or tuple(a["b"].shape) != (n,):
        raise ValueError(
            f"W and b must have shapes {(k, n)} and {(n,)}; got {tuple(a['W'].shape)} and {tuple(a['b'].shape)}"
        )
    slots = next(iter(state.W.values()), None)
    if slots is not None and tuple(slots.shape) != (k, n):
        raise ValueError(f"state was made for W of shape {tuple(slots.shape)}, not {(k, n)}")
    xp.weight_update(a["A_prev"], a["D"], a["W"], a["b"], state)
