"""Backends by name, imported only when asked for, so ``import bpgpu`` never touches CUDA.

``REGISTRY`` is the one list of backends: ``get_backend``, ``bpgpu info``, ``bpgpu.ops`` and
the test suite's backend fixture all follow it. ``auto`` (or the ``BPGPU_BACKEND`` environment
variable) takes the first engine that can run natively, in the order cupy, numba, numba-cpu,
numpy: on a machine without a GPU, numba-cpu where numba is installed (it runs the NumPy
backend's steps wherever its compiled paths do not pay, by a measured rule), numpy otherwise.
The reference and the CPU emulation of the CUDA C kernels are there for tests and teaching.
"""

from __future__ import annotations

import contextlib
import importlib
import os
from dataclasses import dataclass

from bpgpu.backends.base import Backend, BackendUnavailableError


@dataclass(frozen=True)
class Entry:
    """Where a backend's class lives ("module:Class"), and whether it is an engine: one that
    ``auto`` may choose and ``available_backends`` lists, in the registry's order."""

    target: str
    engine: bool


REGISTRY: dict[str, Entry] = {
    "cupy": Entry("bpgpu.backends.cupy_backend:CupyBackend", engine=True),
    "numba": Entry("bpgpu.backends.numba_backend:NumbaBackend", engine=True),
    "numba-cpu": Entry("bpgpu.backends.numba_cpu:NumbaCpuBackend", engine=True),
    "numpy": Entry("bpgpu.backends.numpy_backend:NumpyBackend", engine=True),
    "cuda-emulated": Entry("bpgpu.backends.cuda_emulated:CudaEmulatedBackend", engine=False),
    "reference": Entry("bpgpu.backends.reference:ReferenceBackend", engine=False),
}

_instances: dict[str, Backend] = {}
_unavailable: dict[str, str] = {}


def _load(name: str) -> Backend:
    if name in _instances:
        return _instances[name]
    if name in _unavailable:
        raise BackendUnavailableError(_unavailable[name])
    module_name, class_name = REGISTRY[name].target.split(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        cls.probe()
        backend = cls()
    except (BackendUnavailableError, ImportError) as exc:
        _unavailable[name] = f"backend {name!r} is not available: {exc}"
        raise BackendUnavailableError(_unavailable[name]) from None
    _instances[name] = backend
    return backend


def get_backend(name: str | Backend | None = "auto") -> Backend:
    """The backend called ``name`` (see REGISTRY, or 'auto'), or a Backend as given.

    ``None`` and 'auto' read ``BPGPU_BACKEND`` first; 'auto' then takes the first engine that
    runs natively. Raises BackendUnavailableError with the reason when a named backend cannot
    run here.
    """
    if isinstance(name, Backend):
        return name
    if name is None:
        name = "auto"
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name or a Backend; got {type(name).__name__}")
    chosen_by = ""
    if name == "auto":
        name = os.environ.get("BPGPU_BACKEND", "auto") or "auto"
        chosen_by = "" if name == "auto" else f"BPGPU_BACKEND={name!r} in the environment: "
    if name == "auto":
        for candidate in available_backends():
            backend = _load(candidate)
            if not backend.simulated:
                return backend
        raise BackendUnavailableError("no backend can run here")  # numpy always can
    if name not in REGISTRY:
        raise ValueError(f"{chosen_by}backend must be one of {['auto', *REGISTRY]}; got {name!r}")
    try:
        return _load(name)
    except BackendUnavailableError as exc:
        raise BackendUnavailableError(f"{chosen_by}{exc}") from None


def available_backends() -> list[str]:
    """Names of the engines that can run on this machine, in the order ``auto`` tries them."""
    names = []
    for name, entry in REGISTRY.items():
        if not entry.engine:
            continue
        try:
            _load(name)
        except BackendUnavailableError:
            continue
        names.append(name)
    return names


def unavailable_reasons() -> dict[str, str]:
    """For each registered backend that cannot run here, why not."""
    for name in REGISTRY:
        with contextlib.suppress(BackendUnavailableError):
            _load(name)
    return dict(_unavailable)


__all__ = [
    "REGISTRY",
    "Backend",
    "BackendUnavailableError",
    "Entry",
    "available_backends",
    "get_backend",
    "unavailable_reasons",
]
