"""Checks on what users pass in: each failure names the argument and what was expected."""

from __future__ import annotations

import numbers
import os
from collections.abc import Iterable

import numpy as np

DTYPES: dict[str, np.dtype] = {"float32": np.dtype(np.float32), "float64": np.dtype(np.float64)}


class MemoryBudgetError(ValueError, MemoryError):
    """What was asked for needs more memory than there is: raised before allocating, with the
    sizes that were asked for and the bytes they need. Both a ValueError (bad arguments) and a
    MemoryError."""


def format_bytes(n: float) -> str:
    """``n`` bytes in the largest binary unit that keeps it at least 1: '1.5 GiB'."""
    value, unit = float(n), "bytes"
    for next_unit in ("KiB", "MiB", "GiB", "TiB", "PiB", "EiB"):
        if value < 1024:
            break
        value, unit = value / 1024, next_unit
    return f"{int(value)} bytes" if unit == "bytes" else f"{value:.3g} {unit}"


def physical_memory() -> int | None:
    """The host's physical memory in bytes, None where the platform does not say."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):
        return None


def check_memory(needed: int, available: int | None, what: str, where: str) -> None:
    """Raise MemoryBudgetError unless ``needed`` bytes fit in ``available`` (None: unknown,
    nothing is checked). ``what`` says what needs them, ``where`` which memory it is."""
    if available is not None and needed > available:
        raise MemoryBudgetError(
            f"{what} need {format_bytes(needed)}, more than the {format_bytes(available)} of "
            f"{where}"
        )


def input_scale(X: np.ndarray) -> float:
    """The largest magnitude in X, without a temporary as large as X."""
    return float(max(abs(float(X.max())), abs(float(X.min())))) if X.size else 0.0


def check_dtype(dtype: object) -> np.dtype:
    try:
        key = None if dtype is None else np.dtype(dtype).name  # type: ignore[call-overload]
    except TypeError:
        key = None
    if key not in DTYPES:
        raise ValueError(f"dtype must be one of {list(DTYPES)}; got {dtype!r}")
    return DTYPES[key]


def check_int(value: object, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be at least {minimum}; got {value}")
    return int(value)


def check_layers(layers: object) -> tuple[int, ...]:
    if isinstance(layers, (str, bytes)) or not isinstance(layers, Iterable):
        raise TypeError(
            f"layers must be a list of layer sizes such as [784, 512, 10]; got {layers!r}"
        )
    sizes = tuple(layers)
    if len(sizes) < 2:
        raise ValueError(
            f"layers must hold at least two sizes (inputs and outputs); got {list(sizes)}"
        )
    return tuple(check_int(n, f"layers[{i}]", 1) for i, n in enumerate(sizes))


def _real_array(value: object, name: str) -> np.ndarray:
    """``value`` as a NumPy array of real numbers (bool, integer or float), else TypeError."""
    try:
        arr = np.asarray(value)
    except Exception as exc:  # ragged lists and the like
        raise TypeError(f"{name} must be an array of numbers; got {type(value).__name__}") from exc
    real = (
        arr.dtype == bool
        or np.issubdtype(arr.dtype, np.integer)
        or np.issubdtype(arr.dtype, np.floating)
    )
    if not real:
        raise TypeError(f"{name} must hold real numbers; got dtype {arr.dtype}")
    return arr


#: elements checked at a time by ``all_finite``: its temporary stays in the CPU cache
_FINITE_BLOCK = 1 << 16


def all_finite(a: np.ndarray) -> bool:
    """Whether every element of ``a`` is finite: one pass, a block at a time, stopping at the
    first block that is not."""
    flat = a.reshape(-1)
    if flat.dtype.kind not in "fc":
        return True
    seen = np.empty(min(flat.size, _FINITE_BLOCK), bool)
    for start in range(0, flat.size, _FINITE_BLOCK):
        block = flat[start : start + _FINITE_BLOCK]
        found = seen[: block.size]
        np.isfinite(block, out=found)
        if not found.all():
            return False
    return True


def as_matrix(X: object, name: str, n_features: int, dtype: np.dtype) -> np.ndarray:
    """X as a C-contiguous (n, n_features) array of ``dtype``, finite and not empty."""
    arr = _real_array(X, name)
    if arr.ndim == 1 and n_features == 1:
        arr = arr.reshape(-1, 1)
    if arr.ndim != 2:
        raise ValueError(
            f"{name} must be 2-D (samples, {n_features} features); got shape {arr.shape}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} is empty: it needs at least one sample")
    if arr.shape[1] != n_features:
        raise ValueError(
            f"{name} has {arr.shape[1]} features per sample but the network takes {n_features}"
        )
    with np.errstate(over="ignore"):
        converted = np.ascontiguousarray(arr, dtype=dtype)
    if not all_finite(converted):
        if np.all(np.isfinite(arr)):
            raise ValueError(
                f"{name} holds values beyond the range of {dtype} "
                f"(largest magnitude {np.abs(arr).max():.3g})"
            )
        raise ValueError(f"{name} holds NaN or infinite values")
    return converted


def as_targets(
    y: object, name: str, n_samples: int, n_outputs: int, output: str, dtype: np.dtype
) -> np.ndarray:
    """The target matrix (n_samples, n_outputs) for y given as labels or as a 2-D array.

    Class labels (integers in [0, n_outputs)) are one-hot encoded for softmax and multi-output
    sigmoid; a 1-D y is a column for a single output.
    """
    arr = _real_array(y, name)
    if arr.ndim not in (1, 2):
        raise ValueError(f"{name} must be 1-D labels or 2-D targets; got shape {arr.shape}")
    if arr.shape[0] != n_samples:
        raise ValueError(f"X and {name} have different lengths: {n_samples} and {arr.shape[0]}")
    if not all_finite(arr):
        raise ValueError(f"{name} holds NaN or infinite values")
    if arr.ndim == 2:
        if arr.shape[1] != n_outputs:
            raise ValueError(
                f"{name} has {arr.shape[1]} columns but the network has {n_outputs} outputs"
            )
        if output != "identity" and (arr.min() < 0 or arr.max() > 1):
            raise ValueError(f"{name} targets for a {output} output must lie in [0, 1]")
        return np.ascontiguousarray(arr, dtype=dtype)
    if n_outputs == 1:
        if output == "softmax":
            raise ValueError(
                "a softmax output needs at least 2 units; use output='sigmoid' for one"
            )
        if output == "sigmoid" and (arr.min() < 0 or arr.max() > 1):
            raise ValueError(f"{name} for a single sigmoid output must lie in [0, 1]")
        return np.ascontiguousarray(arr.reshape(-1, 1), dtype=dtype)
    if output == "identity":
        raise ValueError(
            f"{name} must be 2-D (samples, {n_outputs}) for {n_outputs} identity outputs"
        )
    labels = check_labels(arr, name, n_outputs)
    Y = np.zeros((n_samples, n_outputs), dtype=dtype)
    Y[np.arange(n_samples), labels] = 1
    return Y


def check_labels(arr: np.ndarray, name: str, n_classes: int) -> np.ndarray:
    """Integer class labels in [0, n_classes) as int64."""
    if np.issubdtype(arr.dtype, np.floating) and not np.all(arr == np.round(arr)):
        raise ValueError(f"{name} must hold integer class labels; got fractional values")
    labels = arr.astype(np.int64)
    if labels.min() < 0 or labels.max() >= n_classes:
        bad = labels[(labels < 0) | (labels >= n_classes)][0]
        raise ValueError(f"{name} holds label {bad}, outside the classes 0 .. {n_classes - 1}")
    return labels
