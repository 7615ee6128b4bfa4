"""Argument checks of the backend ops: one function per op, called by every backend's public op
(``Backend.dense_forward`` ...) and so by ``bpgpu.ops``. Each raises TypeError or ValueError
naming the argument and what was expected, and returns the sizes.

The CUDA kernels trust their arguments (they do not bounds-check), so these checks are what
keeps a wrong shape, dtype, layout or device from reading or writing past an array.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from bpgpu.backends.state import HostOptimizerState, OptimizerState
from bpgpu.functions import ACTIVATIONS, LOSSES, OUTPUTS, check_combination, check_name
from bpgpu.optimizers import Optimizer


class Backend(Protocol):
    """What the checks ask of a backend (bpgpu.backends.base.Backend has it all)."""

    name: str
    max_elements: int | None

    def is_array(self, obj: object) -> bool: ...

    def is_c_contiguous(self, array: Any) -> bool: ...

    def check_device(self, name: str, array: Any) -> None: ...


FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


def array(xp: Backend, name: str, a: Any, shape: tuple[int, ...], dtype: np.dtype) -> None:
    """Raise, naming ``name``, unless ``a`` is a non-empty C-contiguous array of backend ``xp``
    with this shape and dtype, on its device and within its size limit."""
    if not xp.is_array(a):
        raise TypeError(f"{name} must be an array of the {xp.name} backend; got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}; got {a.dtype}")
    if a.ndim != len(shape):
        raise ValueError(f"{name} must be {len(shape)}-D; got shape {tuple(a.shape)}")
    if tuple(a.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}; got {tuple(a.shape)}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(a.shape)})")
    if not xp.is_c_contiguous(a):
        raise ValueError(f"{name} must be C-contiguous")
    if xp.max_elements is not None and a.size > xp.max_elements:
        raise ValueError(
            f"{name} has {a.size} elements; the {xp.name} kernels take at most {xp.max_elements}"
        )
    xp.check_device(name, a)


def _float_dtype(name: str, a: Any) -> np.dtype:
    """The dtype of an op's first array, which must be float32 or float64 (the kernels' two
    variants); the op's other float arrays must match it."""
    dtype = np.dtype(getattr(a, "dtype", np.float32))
    if dtype not in FLOATS:
        raise TypeError(f"{name} must be float32 or float64; got {dtype}")
    return dtype


def _dim(a: Any, axis: int) -> int:
    """Size of a matrix's ``axis``; -1 for anything that is not a matrix (its check fails)."""
    shape = getattr(a, "shape", ())
    return int(shape[axis]) if len(shape) == 2 else -1


def dense_forward(
    xp: Backend, X: Any, W: Any, b: Any, activation: str, out: Any
) -> tuple[int, int, int]:
    """X (m, k), W (k, n), b (n,), out (m, n); returns (m, k, n)."""
    check_name(activation, ACTIVATIONS, "activation")
    dt = _float_dtype("X", X)
    m, k, n = _dim(X, 0), _dim(X, 1), _dim(W, 1)
    for name, a, shape in (
        ("X", X, (m, k)),
        ("W", W, (k, n)),
        ("b", b, (n,)),
        ("out", out, (m, n)),
    ):
        array(xp, name, a, shape, dt)
    return m, k, n


def output_forward(xp: Backend, Z: Any, output: str, out: Any) -> tuple[int, int]:
    """Z, out (m, n); returns (m, n)."""
    check_name(output, OUTPUTS, "output")
    dt = _float_dtype("Z", Z)
    m, n = _dim(Z, 0), _dim(Z, 1)
    array(xp, "Z", Z, (m, n), dt)
    array(xp, "out", out, (m, n), dt)
    return m, n


def output_delta(
    xp: Backend, Z: Any, Y: Any, output: str, loss: str, out_A: Any, out_D: Any, stats: Any
) -> tuple[int, int]:
    """Z, Y, out_A, out_D (m, n) and stats (2,) float64; returns (m, n)."""
    check_name(output, OUTPUTS, "output")
    check_name(loss, LOSSES, "loss")
    check_combination(output, loss)
    dt = _float_dtype("Z", Z)
    m, n = _dim(Z, 0), _dim(Z, 1)
    for name, a in (("Z", Z), ("Y", Y), ("out_A", out_A), ("out_D", out_D)):
        array(xp, name, a, (m, n), dt)
    array(xp, "stats", stats, (2,), np.dtype(np.float64))
    return m, n


def delta_backward(
    xp: Backend, D: Any, W: Any, A_prev: Any, activation: str, out: Any
) -> tuple[int, int, int]:
    """D (m, n), W (k, n), A_prev and out (m, k); returns (m, k, n)."""
    check_name(activation, ACTIVATIONS, "activation")
    dt = _float_dtype("D", D)
    m, n, k = _dim(D, 0), _dim(D, 1), _dim(W, 0)
    for name, a, shape in (
        ("D", D, (m, n)),
        ("W", W, (k, n)),
        ("A_prev", A_prev, (m, k)),
        ("out", out, (m, k)),
    ):
        array(xp, name, a, shape, dt)
    return m, k, n


def weight_gradient(
    xp: Backend, A_prev: Any, D: Any, out_W: Any, out_b: Any
) -> tuple[int, int, int]:
    """A_prev (m, k), D (m, n), out_W (k, n), out_b (n,); returns (m, k, n)."""
    return _weight_step(xp, A_prev, D, ("out_W", out_W), ("out_b", out_b))


def weight_update(
    xp: Backend, A_prev: Any, D: Any, W: Any, b: Any, state: Any
) -> tuple[int, int, int]:
    """As weight_gradient for W and b, and a ``state`` made for them on this backend."""
    m, k, n = _weight_step(xp, A_prev, D, ("W", W), ("b", b))
    _state(xp, W, b, state)
    return m, k, n


def optimizer_step(xp: Backend, W: Any, b: Any, dW: Any, db: Any, state: Any) -> None:
    """W (k, n), b (n,), their gradients dW and db of the same shapes and dtype, and a
    ``state`` made for W and b on this backend."""
    dt = _float_dtype("W", W)
    k, n = _dim(W, 0), _dim(W, 1)
    for name, a, shape in (("W", W, (k, n)), ("b", b, (n,)), ("dW", dW, (k, n)), ("db", db, (n,))):
        array(xp, name, a, shape, dt)
    _state(xp, W, b, state)


def _state(xp: Backend, W: Any, b: Any, state: Any) -> None:
    """``state`` is an OptimizerState whose slots fit W and b."""
    if not isinstance(state, OptimizerState):
        raise TypeError(
            f"state must come from optimizer_state(optimizer, W, b); got {type(state).__name__}"
        )
    for part, param, slots in (("W", W, state.W), ("b", b, state.b)):
        if set(slots) != set(state.optimizer.slots):
            raise ValueError(
                f"state holds the slots {sorted(slots)} for {part}; "
                f"{state.optimizer.kind} needs {sorted(state.optimizer.slots)}"
            )
        for slot, a in slots.items():
            if tuple(getattr(a, "shape", ())) != tuple(param.shape):
                raise ValueError(
                    f"state was made for {part} of shape {tuple(getattr(a, 'shape', ()))}, "
                    f"not {tuple(param.shape)}"
                )
            array(xp, f"state.{part}[{slot!r}]", a, param.shape, param.dtype)


def _weight_step(
    xp: Backend, A_prev: Any, D: Any, W: tuple[str, Any], b: tuple[str, Any]
) -> tuple[int, int, int]:
    dt = _float_dtype("A_prev", A_prev)
    m, k, n = _dim(A_prev, 0), _dim(A_prev, 1), _dim(D, 1)
    array(xp, "A_prev", A_prev, (m, k), dt)
    array(xp, "D", D, (m, n), dt)
    array(xp, W[0], W[1], (k, n), dt)
    array(xp, b[0], b[1], (n,), dt)
    return m, k, n


def gather_rows(xp: Backend, src: Any, index: Any, out: Any) -> tuple[int, int]:
    """out (rows, n), src (any rows, n), index (rows,) int64; returns (rows, n)."""
    dt = _float_dtype("out", out)
    rows, n = _dim(out, 0), _dim(out, 1)
    array(xp, "out", out, (rows, n), dt)
    array(xp, "src", src, (_dim(src, 0), n), dt)
    array(xp, "index", index, (rows,), np.dtype(np.int64))
    return rows, n


def optimizer_state(xp: Backend, optimizer: Any, W: Any, b: Any) -> tuple[int, int]:
    """An Optimizer, W (k, n) and b (n,) of this backend; returns (k, n)."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(
            f"optimizer must be an Optimizer such as bpgpu.Adam(); got {type(optimizer).__name__}"
        )
    dt = _float_dtype("W", W)
    k, n = _dim(W, 0), _dim(W, 1)
    array(xp, "W", W, (k, n), dt)
    array(xp, "b", b, (n,), dt)
    return k, n


def host_optimizer_state(state: OptimizerState, saved: Any) -> None:
    """``saved`` is a HostOptimizerState with the slots of ``state``, each a finite NumPy array
    of its slot's shape, and an update count t >= 0."""
    if not isinstance(saved, HostOptimizerState):
        raise TypeError(f"saved must be a HostOptimizerState; got {type(saved).__name__}")
    if isinstance(saved.t, bool) or not isinstance(saved.t, (int, np.integer)) or saved.t < 0:
        raise ValueError(f"saved.t must be an update count (an integer >= 0); got {saved.t!r}")
    for part, slots, host in (("W", state.W, saved.W), ("b", state.b, saved.b)):
        if not isinstance(host, dict) or set(host) != set(slots):
            names = sorted(host) if isinstance(host, dict) else type(host).__name__
            raise ValueError(
                f"saved.{part} must hold the slots {sorted(slots)} of "
                f"{state.optimizer.kind}; got {names}"
            )
        for name, dst in slots.items():
            a = host[name]
            if not isinstance(a, np.ndarray) or a.shape != tuple(dst.shape):
                got = a.shape if isinstance(a, np.ndarray) else type(a).__name__
                raise ValueError(
                    f"saved.{part}[{name!r}] must have shape {tuple(dst.shape)}; got {got}"
                )
            if a.dtype.kind != "f" or not np.all(np.isfinite(a)):
                raise ValueError(f"saved.{part}[{name!r}] must hold finite floating-point numbers")
