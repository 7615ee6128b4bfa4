"""The data a training step works on, on a backend's device: the network's parameters, the
per-batch-size buffers and each layer's optimizer state."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from bpgpu.optimizers import Optimizer

Array = Any  # an array of a backend's own kind (NumPy, CuPy, numba device arrays)


@dataclass
class OptimizerState:
    """One layer's optimizer state: the slot arrays for W and b, and the update count.

    ``t`` counts the updates applied so far; ``scratch`` holds whatever buffers the backend's
    update needs (made once, on the layer's first update).
    """

    optimizer: Optimizer
    W: dict[str, Array]
    b: dict[str, Array]
    t: int = 0
    scratch: Any = None


@dataclass
class HostOptimizerState:
    """One layer's optimizer state as NumPy copies on the host, what a checkpoint holds: the
    slot arrays for W and b by slot name, and ``t``, the updates applied so far."""

    W: dict[str, np.ndarray]
    b: dict[str, np.ndarray]
    t: int


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

    ``A[l]`` is layer l + 1's output for the hidden layers (the batch itself is ``X``), ``Z``
    the last layer's logits, ``P`` its output activations, ``D[l]`` the delta at layer l + 1.
    """

    rows: int
    X: Array
    Y: Array
    A: list[Array]
    Z: Array
    P: Array
    D: list[Array]
