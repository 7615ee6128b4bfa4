"""bpgpu: multi-layer perceptrons trained by backpropagation with fused CUDA kernels.

``import bpgpu`` touches no CUDA library; GPU backends load when first asked for.
"""

from __future__ import annotations

from bpgpu import datasets, ops
from bpgpu.archive import ModelFileError
from bpgpu.backends import BackendUnavailableError, available_backends, get_backend
from bpgpu.history import History
from bpgpu.model import MLP, load
from bpgpu.optimizers import SGD, Adam, Optimizer, RMSprop
from bpgpu.schedules import CosineDecay, ExponentialDecay, Schedule, StepDecay, Warmup
from bpgpu.training import TrainingDivergedError, TrainingInterrupted
from bpgpu.validation import MemoryBudgetError

__version__ = "0.1.0"

__all__ = [
    "MLP",
    "SGD",
    "Adam",
    "BackendUnavailableError",
    "CosineDecay",
    "ExponentialDecay",
    "History",
    "MemoryBudgetError",
    "ModelFileError",
    "Optimizer",
    "RMSprop",
    "Schedule",
    "StepDecay",
    "TrainingDivergedError",
    "TrainingInterrupted",
    "Warmup",
    "available_backends",
    "datasets",
    "get_backend",
    "load",
    "ops",
]
