"""The activations, output layers and losses bpgpu knows: one table each.

Every backend follows these tables. The reference backend computes with the NumPy functions
given here; the CUDA C kernels switch on ``code`` (the enums of kernels/activations.cuh and
kernels/output.cu hold the same values in the same order) and the numba kernels on the same
codes. tests/test_tables.py checks the CUDA C enums and X-macro tables against these.

Adding an activation: its row here, its case in kernels/activations.cuh (enum, the two
switches, the BPGPU_ACTIVATIONS table) and in ``_act`` / ``_deriv`` of
bpgpu/backends/numba_kernels.py. The tuned NumPy backend falls back to ``f`` and ``df``.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass

import numpy as np

ArrayFn = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Activation:
    """A hidden-layer activation: ``f(z)``, and ``df(a)``, its derivative f'(z) written in
    terms of the stored output a = f(z), so Z never needs to be kept."""

    name: str
    code: int
    f: ArrayFn
    df: ArrayFn


def _sigmoid(z: np.ndarray) -> np.ndarray:
    # e^-z overflowing to inf for very negative z gives the right limit, 0
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


def _relu_derivative(a: np.ndarray) -> np.ndarray:
    return (a > 0).astype(a.dtype)  # f'(0) is taken as 0


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("sigmoid", 0, _sigmoid, lambda a: a * (1 - a)),
        Activation("relu", 1, lambda z: np.maximum(z, 0), _relu_derivative),
        Activation("tanh", 2, np.tanh, lambda a: 1 - a * a),
        Activation("identity", 3, lambda z: z, np.ones_like),
    )
}


@dataclass(frozen=True)
class Output:
    """An output layer, applied row-wise to the last layer's logits Z: ``f(Z)``, and
    ``backprop(A, G)``, the product J^T g of each row's Jacobian dA/dZ (from A = f(Z)) with the
    gradient g = dL/dA of that row."""

    name: str
    code: int
    f: ArrayFn
    backprop: Callable[[np.ndarray, np.ndarray], np.ndarray]


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))  # shifted by the row max: no overflow
    return e / e.sum(axis=1, keepdims=True)


def _softmax_backprop(a: np.ndarray, g: np.ndarray) -> np.ndarray:
    # J = diag(a) - a a^T, so J^T g = a * (g - <a, g>)
    return a * (g - (a * g).sum(axis=1, keepdims=True))


OUTPUTS: dict[str, Output] = {
    o.name: o
    for o in (
        Output("softmax", 0, _softmax, _softmax_backprop),
        Output("sigmoid", 1, _sigmoid, lambda a, g: g * a * (1 - a)),
        Output("identity", 2, lambda z: z, lambda a, g: g),
    )
}


@dataclass(frozen=True)
class Loss:
    """A loss, the mean over the batch of a per-sample loss (the reference backend and the
    kernels hold the per-sample formulas for each output it pairs with)."""

    name: str
    code: int


LOSSES: dict[str, Loss] = {lo.name: lo for lo in (Loss("cross_entropy", 0), Loss("mse", 1))}

#: (output, loss) pairs that make sense. Identity + cross-entropy does not: the log of an
#: unbounded output. ``cross_entropy`` with a sigmoid output is the binary cross-entropy.
COMBINATIONS: frozenset[tuple[str, str]] = frozenset(
    {
        ("softmax", "cross_entropy"),
        ("softmax", "mse"),
        ("sigmoid", "cross_entropy"),
        ("sigmoid", "mse"),
        ("identity", "mse"),
    }
)

#: Loss names accepted as aliases.
LOSS_ALIASES: dict[str, str] = {
    "binary_cross_entropy": "cross_entropy",
    "categorical_cross_entropy": "cross_entropy",
    "squared_error": "mse",
}


def check_name(value: object, allowed: Collection[str], argument: str) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise naming ``argument``."""
    if not isinstance(value, str):
        raise TypeError(f"{argument} must be a string, one of {list(allowed)}; got {value!r}")
    if value not in allowed:
        raise ValueError(f"{argument} must be one of {list(allowed)}; got {value!r}")
    return value


def check_loss(value: object, argument: str = "loss") -> str:
    """The loss named by ``value`` (an alias resolved), else raise naming ``argument``."""
    name = LOSS_ALIASES.get(value, value) if isinstance(value, str) else value
    return check_name(name, LOSSES, argument)


def check_combination(output: str, loss: str) -> None:
    if (output, loss) not in COMBINATIONS:
        pairs = ", ".join(f"{o}+{lo}" for o, lo in sorted(COMBINATIONS))
        raise ValueError(
            f"output={output!r} cannot be trained with loss={loss!r}; "
            f"the supported pairs are {pairs}"
        )
