"""A stand-in for the few parts of CuPy the cupy backend uses, whose kernels are the CPU
emulation's: so the backend's host code (module loading, launches, the optimizer's numbers in
device memory, CUDA-graph capture and replay) runs without a GPU.

Arrays are NumPy arrays with CuPy's ``.data.ptr``, ``.device`` and ``.set``. A stream in capture
mode records launches instead of running them; a graph replays the recorded launches with the
very arguments they were recorded with (pointers frozen, contents read at replay), as a CUDA
graph does. Events read the host clock. tests/fake_gpu/cupy.py makes ``import cupy`` give this
module in another process (the first-contact script's test). Nothing here says anything about a
real GPU.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import types
from collections.abc import Callable, Iterator
from typing import Any, ClassVar

import numpy as np

__version__ = "fake"


class ndarray(np.ndarray):
    @property
    def data(self) -> Any:
        return types.SimpleNamespace(ptr=self.__array_interface__["data"][0])

    @property
    def device(self) -> Any:
        return types.SimpleNamespace(id=0)

    def set(self, host: np.ndarray) -> None:
        np.copyto(self, host)


def _wrap(a: np.ndarray) -> ndarray:
    return np.ascontiguousarray(a).view(ndarray)


def array(a: Any, dtype: Any = None, order: str = "C", copy: bool = True) -> ndarray:
    return _wrap(np.array(a, dtype=dtype, order="C", copy=True))


def empty(shape: Any, dtype: Any = np.float64) -> ndarray:
    return _wrap(np.full(shape, np.nan, dtype=dtype))  # poisoned, as fresh device memory may be


def zeros(shape: Any, dtype: Any = np.float64) -> ndarray:
    return _wrap(np.zeros(shape, dtype=dtype))


def asnumpy(a: np.ndarray) -> np.ndarray:
    return np.array(a, copy=True)


class _Capture:
    """What the stream being captured records: (function, grid, block, args) per launch."""

    recording: list | None = None


class Graph:
    def __init__(self, launches: list) -> None:
        self.launches = launches
        self.replays = 0

    def launch(self, stream: Any = None) -> None:
        self.replays += 1
        for function, grid, block, args in self.launches:
            function.run(grid, block, args)


class Stream:
    def __init__(self, non_blocking: bool = False) -> None:
        self._recorded: list = []

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def synchronize(self) -> None:
        return None

    def record(self) -> object:
        return object()

    def wait_event(self, event: object) -> None:
        return None

    def begin_capture(self) -> None:
        _Capture.recording = self._recorded

    def end_capture(self) -> Graph:
        _Capture.recording = None
        return Graph(self._recorded)


class _Function:
    """A kernel: run now through the emulation, or recorded while a stream captures."""

    def __init__(self, name: str, launch: Callable) -> None:
        self.name, self._launch = name, launch

    def run(self, grid: tuple, block: tuple, args: tuple) -> None:
        self._launch(self.name, "", (grid, block), args, "")

    def __call__(self, grid: tuple, block: tuple, args: tuple) -> None:
        if _Capture.recording is not None:
            _Capture.recording.append((self, grid, block, args))
        else:
            self.run(grid, block, args)


class RawModule:
    """Every entry point of the emulation library, whatever the source or path it is given."""

    launch: Callable | None = None  # set by install()
    made: ClassVar[list[dict]] = []

    def __init__(self, code: str | None = None, path: str | None = None, **options: Any) -> None:
        RawModule.made.append({"code": code is not None, "path": path, **options})

    def get_function(self, name: str) -> _Function:
        assert RawModule.launch is not None
        return _Function(name, RawModule.launch)


class CUDARuntimeError(RuntimeError):
    pass


class Event:
    """A CUDA event: the host clock when recorded (launches here run when made)."""

    def record(self, stream: Any = None) -> None:
        self.at = time.perf_counter()

    def synchronize(self) -> None:
        return None


def get_elapsed_time(start: Event, stop: Event) -> float:
    """Milliseconds between two recorded events."""
    return (stop.at - start.at) * 1e3


_stream = Stream()
cuda = types.SimpleNamespace(
    runtime=types.SimpleNamespace(
        getDeviceCount=lambda: 1,
        getDeviceProperties=lambda device: {"multiProcessorCount": 4, "name": b"fake GPU"},
        CUDARuntimeError=CUDARuntimeError,
        runtimeGetVersion=lambda: 13000,
    ),
    # the device's memory is the host's here: mem_info is (free, total) bytes
    Device=lambda *a: types.SimpleNamespace(id=0, compute_capability="90", mem_info=(2**34, 2**34)),
    get_current_stream=lambda: _stream,
    Stream=Stream,
    Event=Event,
    get_elapsed_time=get_elapsed_time,
    set_allocator=lambda allocator=None: None,
    set_pinned_memory_allocator=lambda allocator=None: None,
)


def install(launch: Callable) -> None:
    """Kernels run through ``launch(name, family, geometry, args, shapes)``."""
    RawModule.launch = launch
    RawModule.made = []


def install_emulation() -> None:
    """Kernels run by the CPU emulation of the CUDA C, with its threads in a random order: a
    schedule other than the emulated backend's own (ascending), so the conformance suite runs
    every kernel under two orders of its threads and blocks."""
    from bpgpu.backends.cuda_emulated import CudaEmulatedBackend

    install(CudaEmulatedBackend(schedule="random:1")._launch)


@contextlib.contextmanager
def cupy_backend(fatbins: str = os.devnull, **options: Any) -> Iterator[Any]:
    """The cupy backend (made with ``options``) over this stand-in (installed as ``cupy``
    meanwhile), its kernels run by the emulation with its threads in a random order. Modules
    come from the NVRTC path unless ``fatbins`` names a folder of fatbins (whose kernels are
    the emulation's all the same)."""
    install_emulation()
    saved = {k: sys.modules.get(k) for k in ("cupy",)}
    saved_fatbins = os.environ.get("BPGPU_FATBIN_DIR")
    sys.modules["cupy"] = sys.modules[__name__]  # type: ignore[assignment]
    os.environ["BPGPU_FATBIN_DIR"] = str(fatbins)
    try:
        from bpgpu.backends.cupy_backend import CupyBackend

        CupyBackend.probe()
        yield CupyBackend(**options)
    finally:
        for key, module in saved.items():
            if module is None:
                sys.modules.pop(key, None)
            else:
                sys.modules[key] = module
        if saved_fatbins is None:
            os.environ.pop("BPGPU_FATBIN_DIR", None)
        else:
            os.environ["BPGPU_FATBIN_DIR"] = saved_fatbins
