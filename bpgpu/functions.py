"""Names of the activations, output layers and losses bpgpu knows, and which go together.

Every backend implements exactly these; the math is in ``bpgpu/backends/numpy_backend.py``.
"""

from __future__ import annotations

#: Hidden-layer activations. Derivatives are taken from the stored output ``a``:
#: sigmoid a(1-a), relu [a > 0], tanh 1-a^2, identity 1.
ACTIVATIONS: tuple[str, ...] = ("sigmoid", "relu", "tanh", "identity")

#: Output layers, applied row-wise to the logits Z of the last layer.
OUTPUTS: tuple[str, ...] = ("softmax", "sigmoid", "identity")

#: Losses. ``cross_entropy`` with a sigmoid output is the binary cross-entropy.
LOSSES: tuple[str, ...] = ("cross_entropy", "mse")

#: (output, loss) pairs that make sense. Identity + cross-entropy does not: the log of an
#: unbounded output.
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


def check_name(value: object, allowed: tuple[str, ...], argument: str) -> str:
    """Return ``value`` if it is one of ``allowed``, else raise naming ``argument``."""
    if not isinstance(value, str):
        raise TypeError(f"{argument} must be a string, one of {list(allowed)}; got {value!r}")
    if value not in allowed:
        raise ValueError(f"{argument} must be one of {list(allowed)}; got {value!r}")
    return value


def check_combination(output: str, loss: str) -> None:
    if (output, loss) not in COMBINATIONS:
        pairs = ", ".join(f"{o}+{lo}" for o, lo in sorted(COMBINATIONS))
        raise ValueError(
            f"output={output!r} cannot be trained with loss={loss!r}; the supported pairs are {pairs}"
        )
