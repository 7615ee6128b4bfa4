"""Backends by name, imported only when asked for, so ``import bpgpu`` never touches CUDA.

``auto`` (or the ``BPGPU_BACKEND`` environment variable) takes the first that can run, in the
order cupy, numba, numpy.
"""

from __future__ import annotations

import importlib
import os

from bpgpu.backends.base import Backend, BackendUnavailableError

#: name -> "module:Class", in the order ``auto`` tries them
REGISTRY: dict[str, str] = {
    "cupy": "bpgpu.backends.cupy_backend:CupyBackend",
    "numba": "bpgpu.backends.numba_backend:NumbaBackend",
    "numpy": "bpgpu.backends.numpy_backend:NumpyBackend",
}

_instances: dict[str, Backend] = {}
_unavailable: dict[str, str] = {}


def _load(name: str) -> Backend:
    if name in _instances:
        return _instances[name]
    if name in _unavailable:
        raise BackendUnavailableError(_unavailable[name])
    module_name, class_name = REGISTRY[name].split(":")
    try:
        module = importlib.import_module(module_name)
        cls = getattr(module, class_name)
        cls.probe()
        backend = cls()
    except BackendUnavailableError as exc:
        _unavailable[name] = f"backend {name!r} is not available: {exc}"
        raise BackendUnavailableError(_unavailable[name]) from None
    except ImportError as exc:
        _unavailable[name] = f"backend {name!r} is not available: {exc}"
        raise BackendUnavailableError(_unavailable[name]) from None
    _instances[name] = backend
    return backend


def get_backend(name: str | Backend | None = "auto") -> Backend:
    """The backend called ``name`` ('auto', 'cupy', 'numba', 'numpy'), or a Backend as given.

    ``None`` and 'auto' read ``BPGPU_BACKEND`` first; 'auto' then takes the first that runs.
    Raises BackendUnavailableError with the reason when a named backend cannot run here.
    """
    if isinstance(name, Backend):
        return name
    if name is None:
        name = "auto"
    if not isinstance(name, str):
        raise TypeError(f"backend must be a name or a Backend; got {type(name).__name__}")
    if name == "auto":
        name = os.environ.get("BPGPU_BACKEND", "auto") or "auto"
    if name == "auto":
        for candidate in REGISTRY:
            try:
                backend = _load(candidate)
            except BackendUnavailableError:
                continue
            if not backend.simulated:
                return backend
        raise BackendUnavailableError("no backend can run here")  # numpy always can
    if name not in REGISTRY:
        raise ValueError(f"backend must be one of {['auto', *REGISTRY]}; got {name!r}")
    return _load(name)


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine, in the order ``auto`` tries them."""
    names = []
    for name in REGISTRY:
        try:
            _load(name)
        except BackendUnavailableError:
            continue
        names.append(name)
    return names


def unavailable_reasons() -> dict[str, str]:
    """For each backend that cannot run here, why not."""
    available_backends()
    return dict(_unavailable)


__all__ = [
    "REGISTRY",
    "Backend",
    "BackendUnavailableError",
    "available_backends",
    "get_backend",
    "unavailable_reasons",
]
