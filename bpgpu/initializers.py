"""Initial weights: one table of schemes, drawn in float64 on the host from a seed, so every
backend and dtype starts from the same numbers.

For a layer with ``fan_in`` inputs and ``fan_out`` outputs:

* ``torch``: PyTorch's ``nn.Linear`` default: W and b uniform in +-1/sqrt(fan_in)
  (kaiming_uniform with a = sqrt(5) for W, the same bound for b).
* ``glorot``: Keras's ``Dense`` default: W uniform in +-sqrt(6 / (fan_in + fan_out)), b = 0.
* ``he``: W normal with std sqrt(2 / fan_in), b = 0.
* ``he-relu``: ``he`` for a ReLU layer, ``glorot`` for the others (bpgpu's default before
  ``torch`` measured more robust, bench/results/cpu/init/).

The default is ``torch``: over the tutorial tasks and ten seeds each it was the most robust
(the table in bench/results/cpu/init/report.md).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np

Scheme = Callable[[np.random.Generator, int, int, str], tuple[np.ndarray, np.ndarray]]


def _torch(rng: np.random.Generator, fan_in: int, fan_out: int, act: str):
    bound = 1.0 / math.sqrt(fan_in)
    W = rng.uniform(-bound, bound, size=(fan_in, fan_out))
    return W, rng.uniform(-bound, bound, size=fan_out)


def _glorot(rng: np.random.Generator, fan_in: int, fan_out: int, act: str):
    limit = math.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-limit, limit, size=(fan_in, fan_out)), np.zeros(fan_out)


def _he(rng: np.random.Generator, fan_in: int, fan_out: int, act: str):
    return rng.normal(0.0, math.sqrt(2.0 / fan_in), size=(fan_in, fan_out)), np.zeros(fan_out)


def _he_relu(rng: np.random.Generator, fan_in: int, fan_out: int, act: str):
    return (_he if act == "relu" else _glorot)(rng, fan_in, fan_out, act)


#: scheme name -> (rng, fan_in, fan_out, the layer's activation) -> (W, b)
INITIALIZERS: dict[str, Scheme] = {
    "torch": _torch,
    "glorot": _glorot,
    "he": _he,
    "he-relu": _he_relu,
}
DEFAULT = "torch"


def draw_weights(
    layers: Sequence[int], activations: Sequence[str], seed: int | None, init: str = DEFAULT
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Float64 (W, b) of each layer in turn from ``seed`` by scheme ``init`` (a caller that
    copies each to its device holds one float64 layer at a time); the output layer's
    activation counts as "output"."""
    rng = np.random.default_rng(seed)
    scheme = INITIALIZERS[init]
    for l, (fan_in, fan_out) in enumerate(itertools.pairwise(layers)):
        yield scheme(rng, fan_in, fan_out, activations[l] if l < len(activations) else "output")


def initial_weights(
    layers: Sequence[int], activations: Sequence[str], seed: int | None, init: str = DEFAULT
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Float64 (W, b) of every layer (``draw_weights``), the same for every backend."""
    return list(draw_weights(layers, activations, seed, init))
