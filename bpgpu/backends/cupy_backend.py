"""The CuPy backend: the CUDA C kernels of ``kernels/`` on CuPy arrays.

The ops are ``KernelOps`` (bpgpu/backends/cuda_launch.py: entry points, geometry, launches);
this module gives them CuPy memory, the module loader (CMake's fatbins when built, and built
from these sources, tunables and flags, else NVRTC through ``cupy.RawModule``: chosen by
``BPGPU_CUDA_LOAD``, see ``cuda_source.kernel_load``) and a training step captured in a CUDA
graph.

CuPy is imported only inside ``probe`` and the methods: ``import bpgpu`` never touches CUDA.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bpgpu.backends.base import (
    Array,
    BackendUnavailableError,
    Network,
    OptimizerState,
    Workspace,
)
from bpgpu.backends.cuda_launch import Geometry, KernelOps
from bpgpu.backends.cuda_source import (
    describe_kernel_load,
    family_source,
    kernel_load,
    nvrtc_options,
    sources_hash,
)

#: set BPGPU_CUDA_DEBUG=1 to synchronize after every launch, so a fault names its kernel
_DEBUG = os.environ.get("BPGPU_CUDA_DEBUG", "") not in ("", "0")
#: captured training-step graphs kept at once (one per batch size and buffer set)
_GRAPHS_KEPT = 16


class CupyBackend(KernelOps):
    """CUDA kernels on CuPy arrays; weights, optimizer state and stats stay on the GPU."""

    name = "cupy"
    device = "gpu"

    @classmethod
    def probe(cls) -> None:
        try:
            import cupy
        except ImportError as exc:
            raise BackendUnavailableError(
                f"CuPy is not installed ({exc}); pip install -e '.[cuda13]'"
            ) from None
        try:
            count = cupy.cuda.runtime.getDeviceCount()
        except cupy.cuda.runtime.CUDARuntimeError as exc:  # no driver, or a broken one
            raise BackendUnavailableError(f"no usable CUDA driver ({exc})") from None
        if count == 0:
            raise BackendUnavailableError("no CUDA GPU found")
        capability = int(cupy.cuda.Device().compute_capability)  # "80", "90", "100"
        if capability < 80:
            raise BackendUnavailableError(
                "the kernels need compute capability 8.0 or newer; "
                f"the GPU has {capability / 10:.1f}"
            )

    def __init__(self, graphs: bool = True) -> None:
        """``graphs``: capture each training step in a CUDA graph and replay it (False: every
        step launches its kernels one by one, as the first step does; the micro-benchmark
        times both)."""
        import cupy

        super().__init__()
        self._cp = cupy
        self._use_graphs = graphs
        self._load: tuple[str, Path | None] | None = None
        self._device = cupy.cuda.Device().id
        self._modules: dict[str, Any] = {}
        self._functions: dict[str, Any] = {}
        self._graphs: dict[tuple, Any] = {}
        self._seen: set[tuple] = set()
        self._capturing = False
        sm = cupy.cuda.runtime.getDeviceProperties(self._device)["multiProcessorCount"]
        self._blocks = 2 * int(sm)

    def describe(self) -> dict[str, str]:
        cp = self._cp
        props = cp.cuda.runtime.getDeviceProperties(self._device)
        name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
        return {
            **super().describe(),
            "cupy": cp.__version__,
            "device": name,
            "kernels_sha256": sources_hash(),
            "kernel_load": describe_kernel_load(),
            "graphs": "on" if self._use_graphs else "off",
        }

    # ---- memory -------------------------------------------------------------------------------

    def asarray(self, host: np.ndarray, dtype: np.dtype) -> Array:
        return self._cp.array(np.ascontiguousarray(host, dtype=dtype))

    def to_host(self, array: Array) -> np.ndarray:
        return self._cp.asnumpy(array)

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> Array:
        return self._cp.empty(shape, dtype=dtype)

    def zeros(self, shape: tuple[int, ...], dtype: np.dtype) -> Array:
        return self._cp.zeros(shape, dtype=dtype)

    def copy_into(self, dst: Array, src: Array) -> None:
        dst[...] = src

    def is_array(self, obj: object) -> bool:
        return isinstance(obj, self._cp.ndarray)

    def synchronize(self) -> None:
        self._cp.cuda.get_current_stream().synchronize()

    def memory_bytes(self) -> int | None:
        return int(self._cp.cuda.Device(self._device).mem_info[1])  # (free, total)

    def check_device(self, name: str, array: Array) -> None:
        if array.device.id != self._device:
            raise ValueError(
                f"{name} is on GPU {array.device.id}; the cupy backend runs on GPU {self._device}"
            )

    def _upload(self, dst: Array, host: np.ndarray) -> None:
        dst.set(host)

    def _target_blocks(self) -> int:
        return self._blocks

    # ---- modules and launches --------------------------------------------------------------------

    def _module(self, family: str) -> Any:
        """The compiled module of one kernel family: CMake's fatbin when built (and built from
        these sources, tunables and flags: cuda_source.kernel_load), else NVRTC."""
        module = self._modules.get(family)
        if module is None:
            cp = self._cp
            if self._load is None:
                self._load = kernel_load()
            folder = self._load[1]
            if folder is not None:
                module = cp.RawModule(path=str(folder / f"{family}.fatbin"))
            else:
                source = family_source(family).read_text()
                module = cp.RawModule(code=source, options=nvrtc_options(), backend="nvrtc")
            self._modules[family] = module
        return module

    def _launch(self, name: str, family: str, geometry: Geometry, args: tuple, shapes: str) -> None:
        grid, block = geometry
        try:
            function = self._functions.get(name)
            if function is None:
                function = self._functions[name] = self._module(family).get_function(name)
            function(grid, block, args)
            if _DEBUG and not self._capturing:
                self.synchronize()
        except Exception as exc:
            raise RuntimeError(
                f"kernel {name} failed (grid={grid}, block={block}, {shapes}): {exc}"
            ) from exc

    # ---- one training step, one CUDA graph ---------------------------------------------------

    def train_step(
        self,
        net: Network,
        ws: Workspace,
        X: Array,
        Y: Array,
        index: Array,
        states: list[OptimizerState],
        stats: Array,
    ) -> None:
        """The base class's step, captured in a CUDA graph after its first run with these
        buffers.

        The graph's kernel arguments are frozen, so everything that changes between steps lives
        in device memory: the batch indices are copied into a fixed buffer, and each layer's
        optimizer numbers for the update (``_advance``) are written to its device buffer before
        replay.
        """
        fixed_index = self._buffer("index", (ws.rows,), np.int64)
        fixed_index[...] = index
        for state in states:
            self._advance(state)
        key = _step_key(net, ws, X, Y, states, stats)
        graph = self._graphs.get(key)

        def ops() -> None:
            self._train_ops(net, ws, X, Y, fixed_index, states, stats)

        if not self._use_graphs or (graph is None and key not in self._seen):
            # eager: the first step with these buffers (compiling modules, allocating scratch),
            # or every step without graphs
            self._seen.add(key)
            ops()
            return
        if graph is None:
            graph = self._capture(ops)
            if len(self._graphs) >= _GRAPHS_KEPT:
                self._graphs.pop(next(iter(self._graphs)))
            self._graphs[key] = graph
        graph.launch(self._cp.cuda.get_current_stream())

    def _capture(self, ops: Callable[[], None]) -> Any:
        """The kernels ``ops`` launches, recorded (not run) into a CUDA graph on a side
        stream."""
        cp = self._cp
        stream = cp.cuda.get_current_stream()
        capture = cp.cuda.Stream(non_blocking=True)
        capture.wait_event(stream.record())
        self._capturing = True
        try:
            with capture:
                capture.begin_capture()
                try:
                    ops()
                finally:
                    graph = capture.end_capture()
        finally:
            self._capturing = False
        return graph


def _step_key(
    net: Network, ws: Workspace, X: Array, Y: Array, states: list[OptimizerState], stats: Array
) -> tuple:
    """What a captured step depends on: every buffer's address and shape, the layer functions
    and the optimizer kernels (their numbers live in device memory, not in the graph)."""
    arrays = [X, Y, stats, ws.X, ws.Y, ws.Z, ws.P, *ws.A, *ws.D, *net.W, *net.b]
    for state in states:
        arrays += [*state.W.values(), *state.b.values(), state.scratch.scalars]
    layout = tuple((a.data.ptr, a.shape, a.dtype.str) for a in arrays)
    optimizers = tuple((s.optimizer.kind, s.optimizer.slots) for s in states)
    return (layout, tuple(net.activations), net.output, net.loss, optimizers)
