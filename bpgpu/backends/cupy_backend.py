"""The CuPy backend: the hand-written CUDA C kernels of ``kernels/`` on CuPy arrays.

``KernelOps`` is every op of the Backend interface written once against the kernels' entry points
(names, argument lists and launch geometry from ``cuda_source``): it validates the arguments,
picks the variant and launches through ``_launch``. ``CupyBackend`` supplies CuPy memory, the
module loader (the CMake-built fatbin when present, else NVRTC through ``cupy.RawModule``) and a
training step captured in a CUDA graph. The CPU-emulation tests run the same ``KernelOps`` on
NumPy arrays with the kernels compiled as C++, so the launch code is exercised without a GPU.

CuPy is imported only inside ``probe`` and the methods: ``import bpgpu`` never touches CUDA.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from bpgpu.backends import cuda_source as cs
from bpgpu.backends.base import (
    Array,
    Backend,
    BackendUnavailableError,
    Network,
    OptimizerState,
    Workspace,
)
from bpgpu.optimizers import Optimizer

i32 = np.int32
f64 = np.float64

#: set BPGPU_CUDA_DEBUG=1 to synchronize after every launch, so a fault names its kernel
_DEBUG = os.environ.get("BPGPU_CUDA_DEBUG", "") not in ("", "0")
#: captured training-step graphs kept at once (one per batch size and buffer set)
_GRAPHS_KEPT = 16


class KernelOps(Backend):
    """The fused ops on the CUDA C kernels. Subclasses provide memory and ``_launch``."""

    def __init__(self) -> None:
        self._buffers: dict[tuple, Array] = {}

    # ---- what a subclass provides ----------------------------------------------------------------

    def _launch(self, name: str, geometry: cs.Geometry, args: tuple, shapes: str) -> None:
        """Run kernel ``name`` with ``args`` (arrays, np.int32, np.float64); raise naming it."""
        raise NotImplementedError

    def _target_blocks(self) -> int:
        """Blocks that fill the device; fewer weight tiles than this split the batch."""
        raise NotImplementedError

    # ---- scratch ------------------------------------------------------------------------------------

    def _buffer(self, key: tuple, shape: tuple[int, ...], dtype: np.dtype) -> Array:
        """Scratch memory kept for reuse (stable addresses, as a captured graph needs)."""
        key = (*key, tuple(shape), np.dtype(dtype).str)
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = self.zeros(shape, dtype)
        return buf

    # ---- ops ------------------------------------------------------------------------------------------

    def dense_forward(self, X: Array, W: Array, b: Array, activation: str, out: Array) -> Array:
        m, k, n = self._check_dense_forward(X, W, b, activation, out)
        kernel = f"dense_forward_{activation}_{cs.suffix(X.dtype)}"
        self._launch(
            kernel,
            cs.gemm_geometry(m, n),
            (X, W, b, out, i32(m), i32(k), i32(n)),
            f"m={m} k={k} n={n}",
        )
        return out

    def output_forward(self, Z: Array, output: str, out: Array) -> Array:
        m, n = self._check_output_forward(Z, output, out)
        kernel = f"output_forward_{output}_{cs.suffix(Z.dtype)}"
        self._launch(kernel, cs.row_geometry(m), (Z, out, i32(m), i32(n)), f"m={m} n={n}")
        return out

    def output_delta(
        self, Z: Array, Y: Array, output: str, loss: str, out_A: Array, out_D: Array, stats: Array
    ) -> None:
        m, n = self._check_output_delta(Z, Y, output, loss, out_A, out_D, stats)
        rows = self._buffer(("rows",), (m, 2), np.float64)
        shapes = f"m={m} n={n}"
        kernel = f"output_delta_{output}_{loss}_{cs.suffix(Z.dtype)}"
        self._launch(kernel, cs.row_geometry(m), (Z, Y, out_A, out_D, rows, i32(m), i32(n)), shapes)
        self._launch("row_stats_reduce", cs.reduce_geometry(), (rows, i32(m), stats), shapes)

    def delta_backward(
        self, D: Array, W: Array, A_prev: Array, activation: str, out: Array
    ) -> Array:
        m, k, n = self._check_delta_backward(D, W, A_prev, activation, out)
        kernel = f"delta_backward_{activation}_{cs.suffix(D.dtype)}"
        self._launch(
            kernel,
            cs.gemm_geometry(m, k),
            (D, W, A_prev, out, i32(m), i32(k), i32(n)),
            f"m={m} k={k} n={n}",
        )
        return out

    def optimizer_state(self, optimizer: Optimizer, W: Array, b: Array) -> OptimizerState:
        state = super().optimizer_state(optimizer, W, b)
        state.scratch["step"] = self.zeros((1,), np.int32)  # Adam's t, read by the kernels
        return state

    def weight_update(
        self, A_prev: Array, D: Array, W: Array, b: Array, state: OptimizerState
    ) -> None:
        self._check_weight_step(A_prev, D, W, b)
        self._advance(state)
        self._weight_step(A_prev, D, W, b, state)

    def weight_gradient(self, A_prev: Array, D: Array, out_W: Array, out_b: Array) -> None:
        self._check_weight_step(A_prev, D, out_W, out_b, ("out_W", "out_b"))
        self._weight_step(A_prev, D, out_W, out_b, None)

    def _advance(self, state: OptimizerState) -> None:
        """Count one more update, on the host and, for Adam (the only rule that reads it), in
        the device word the kernels read."""
        state.t += 1
        if state.optimizer.kind == "adam":
            state.scratch["step"].fill(state.t)

    def _weight_step(
        self, A: Array, D: Array, W: Array, b: Array, state: OptimizerState | None
    ) -> None:
        """W, b <- step(A^T D, sum_rows D): fused, or split over the batch for a small W.
        The arguments have been checked."""
        m, k = A.shape
        n = D.shape[1]
        dtype = A.dtype
        opt = state.optimizer if state is not None else None
        kind = cs.optimizer_kernel(opt)
        dummy = self._buffer(("dummy",), (1,), dtype)
        slots = [state.W[s] for s in opt.slots] if state else []
        bslots = [state.b[s] for s in opt.slots] if state else []
        sW1, sW2 = (slots + [dummy, dummy])[:2]
        sb1, sb2 = (bslots + [dummy, dummy])[:2]
        step = state.scratch["step"] if state else self._buffer(("step",), (1,), np.int32)
        opt_args = (step, *(f64(v) for v in cs.optimizer_args(opt)))
        sfx = cs.suffix(dtype)
        shapes = f"m={m} k={k} n={n}"
        splits = cs.split_count(m, k, n, self._target_blocks())
        if splits == 1:
            self._launch(
                f"weight_update_{kind}_{sfx}",
                cs.gemm_geometry(k, n),
                (A, D, W, b, sW1, sW2, sb1, sb2, *opt_args, i32(m), i32(k), i32(n)),
                shapes,
            )
            return
        rows = cs.rows_per_split(m, splits)
        splits = -(-m // rows)
        partW = self._buffer(("partW",), (splits, k, n), dtype)
        partb = self._buffer(("partb",), (splits, n), dtype)
        self._launch(
            f"weight_partial_{sfx}",
            cs.gemm_geometry(k, n, splits),
            (A, D, partW, partb, i32(m), i32(k), i32(n), i32(rows)),
            f"{shapes} splits={splits}",
        )
        self._launch(
            f"weight_finish_{kind}_{sfx}",
            cs.element_geometry(k * n + n),
            (partW, partb, i32(splits), W, b, sW1, sW2, sb1, sb2, *opt_args, i32(k), i32(n)),
            f"{shapes} splits={splits}",
        )

    def gather_rows(self, src: Array, index: Array, out: Array) -> Array:
        rows, n = self._check_gather_rows(src, index, out)
        self._launch(
            f"gather_rows_{cs.suffix(out.dtype)}",
            cs.element_geometry(rows * n),
            (src, index, out, i32(rows), i32(n), i32(src.shape[0])),
            f"rows={rows} n={n} src_rows={src.shape[0]}",
        )
        return out

    # ---- the training step ------------------------------------------------------------------

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
        """The base class's step, with the last layer's forward fused into its output delta."""
        for state in states:
            self._advance(state)
        self._step_kernels(net, ws, X, Y, index, states, stats)

    def _step_kernels(self, net, ws, X, Y, index, states, stats) -> None:
        """The kernels of one step; the update counts are already advanced."""
        self.gather_rows(X, index, ws.X)
        self.gather_rows(Y, index, ws.Y)
        A = ws.X
        for l, act in enumerate(net.activations):
            A = self.dense_forward(A, net.W[l], net.b[l], act, ws.A[l])
        if net.W[-1].shape[1] <= cs.TUNABLES["TILE_N"]:
            self._dense_output_delta(A, net.W[-1], net.b[-1], net, ws, stats)
        else:
            self.dense_forward(A, net.W[-1], net.b[-1], "identity", ws.Z)
            self.output_delta(ws.Z, ws.Y, net.output, net.loss, ws.P, ws.D[-1], stats)
        for l in range(len(net.W) - 1, -1, -1):
            A_prev = ws.X if l == 0 else ws.A[l - 1]
            if l > 0:
                self.delta_backward(ws.D[l], net.W[l], A_prev, net.activations[l - 1], ws.D[l - 1])
            self._weight_step(A_prev, ws.D[l], net.W[l], net.b[l], states[l])

    def _dense_output_delta(
        self, A: Array, W: Array, b: Array, net: Network, ws: Workspace, stats
    ) -> None:
        """ws.Z = A @ W + b, then output_delta into ws.P, ws.D[-1] and stats: one kernel, as a
        GEMM block owns whole rows when the output is at most TILE_N wide."""
        m, k = A.shape
        n = W.shape[1]
        for name, arr, shape in (
            ("A", A, (m, k)),
            ("W", W, (k, n)),
            ("b", b, (n,)),
            ("Z", ws.Z, (m, n)),
            ("Y", ws.Y, (m, n)),
            ("P", ws.P, (m, n)),
            ("D", ws.D[-1], (m, n)),
        ):
            self._check(name, arr, shape, A.dtype)
        self._check("stats", stats, (2,), np.dtype(np.float64))
        rows = self._buffer(("rows",), (m, 2), np.float64)
        shapes = f"m={m} k={k} n={n}"
        kernel = f"dense_output_delta_{net.output}_{net.loss}_{cs.suffix(A.dtype)}"
        args = (A, W, b, ws.Z, ws.Y, ws.P, ws.D[-1], rows, i32(m), i32(k), i32(n))
        self._launch(kernel, cs.gemm_geometry(m, n), args, shapes)
        self._launch("row_stats_reduce", cs.reduce_geometry(), (rows, i32(m), stats), shapes)


class CupyBackend(KernelOps):
    """CUDA kernels on CuPy arrays; weights, optimizer state and stats stay on the GPU."""

    name = "cupy"

    @classmethod
    def probe(cls) -> None:
        try:
            import cupy
        except ImportError as exc:
            raise BackendUnavailableError(
                f"CuPy is not installed ({exc}); pip install 'bpgpu[cuda13]'"
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
                f"the kernels need compute capability 8.0 or newer; the GPU has {capability / 10:.1f}"
            )

    def __init__(self) -> None:
        import cupy

        super().__init__()
        self._cp = cupy
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
            "kernels_sha256": cs.sources_hash(),
        }

    # ---- memory -------------------------------------------------------------------------------------

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

    def _check_device(self, name: str, array: Array) -> None:
        if array.device.id != self._device:
            raise ValueError(
                f"{name} is on GPU {array.device.id}; the cupy backend runs on GPU {self._device}"
            )

    def _target_blocks(self) -> int:
        return self._blocks

    # ---- modules and launches --------------------------------------------------------------------

    def _module(self, family: str) -> Any:
        """The compiled module of one kernel family: the CMake fatbin if built, else NVRTC."""
        module = self._modules.get(family)
        if module is None:
            cp = self._cp
            fatbin = _fatbin_path(family)
            if fatbin is not None:
                module = cp.RawModule(path=str(fatbin))
            else:
                source = (cs.kernel_dir() / cs.FAMILIES[family]).read_text()
                options = ("-std=c++17", f"-I{cs.kernel_dir()}", *cs.defines())
                module = cp.RawModule(code=source, options=options, backend="nvrtc")
            self._modules[family] = module
        return module

    def _launch(self, name: str, geometry: cs.Geometry, args: tuple, shapes: str) -> None:
        grid, block = geometry
        try:
            kernel = self._functions.get(name)
            if kernel is None:
                kernel = self._functions[name] = self._module(_family(name)).get_function(name)
            kernel(grid, block, args)
            if _DEBUG and not self._capturing:
                self.synchronize()
        except Exception as exc:
            raise RuntimeError(
                f"kernel {name} failed (grid={grid}, block={block}, {shapes}): {exc}"
            ) from exc

    # ---- one training step, one CUDA graph ------------------------------------------------------------

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
        """KernelOps's step, captured in a CUDA graph after its first run with these buffers.

        The graph's kernel arguments are frozen, so everything that changes between steps lives
        in device memory: the batch indices are copied into a fixed buffer, and each layer's
        update count (Adam's bias correction) is written to its device word before replay.
        """
        fixed_index = self._buffer(("index",), (ws.rows,), np.int64)
        fixed_index[...] = index
        for state in states:
            self._advance(state)
        key = _step_key(net, ws, X, Y, states, stats)
        graph = self._graphs.get(key)
        if graph is None and key not in self._seen:
            # first step with these buffers: eager, compiling modules and allocating scratch
            self._seen.add(key)
            self._step_kernels(net, ws, X, Y, fixed_index, states, stats)
            return
        if graph is None:
            graph = self._capture(net, ws, X, Y, fixed_index, states, stats)
            if len(self._graphs) >= _GRAPHS_KEPT:
                self._graphs.pop(next(iter(self._graphs)))
            self._graphs[key] = graph
        graph.launch(self._cp.cuda.get_current_stream())

    def _capture(self, net, ws, X, Y, index, states, stats) -> Any:
        """The step's kernels recorded (not run) into a CUDA graph on a side stream."""
        cp = self._cp
        stream = cp.cuda.get_current_stream()
        capture = cp.cuda.Stream(non_blocking=True)
        capture.wait_event(stream.record())
        self._capturing = True
        try:
            with capture:
                capture.begin_capture()
                try:
                    self._step_kernels(net, ws, X, Y, index, states, stats)
                finally:
                    graph = capture.end_capture()
        finally:
            self._capturing = False
        return graph


def _step_key(net: Network, ws: Workspace, X, Y, states: list[OptimizerState], stats) -> tuple:
    """What a captured step depends on: every buffer's address and shape, the layer functions
    and the optimizer hyperparameters (kernel arguments are frozen in a graph)."""
    arrays = [X, Y, stats, ws.X, ws.Y, ws.Z, ws.P, *ws.A, *ws.D, *net.W, *net.b]
    for state in states:
        arrays += [*state.W.values(), *state.b.values(), state.scratch["step"]]
    layout = tuple((a.data.ptr, a.shape, a.dtype.str) for a in arrays)
    optimizers = tuple(
        (s.optimizer.kind, tuple(sorted(s.optimizer.params().items()))) for s in states
    )
    return (layout, tuple(net.activations), net.output, net.loss, optimizers)


def _family(kernel: str) -> str:
    """The family (source file) of an entry point name."""
    if kernel.startswith(("weight_update_", "weight_finish_", "weight_partial_")):
        return "weight_update"
    if kernel.startswith(("output_", "row_stats_", "dense_output_delta_")):
        return "output"
    if kernel.startswith("gather_rows_"):
        return "gather"
    for family in ("dense_forward", "delta_backward"):
        if kernel.startswith(family):
            return family
    raise KeyError(f"no kernel family for {kernel!r}")


def _fatbin_path(family: str) -> Path | None:
    """The CMake-built fatbin of a family (``BPGPU_FATBIN_DIR``, else ``build/fatbin`` in a
    checkout), when it is newer than every kernel source; else None (compile with NVRTC)."""
    folder = os.environ.get("BPGPU_FATBIN_DIR") or str(cs.kernel_dir().parent / "build" / "fatbin")
    path = Path(folder) / (Path(cs.FAMILIES[family]).stem + ".fatbin")
    if not path.is_file():
        return None
    newest_source = max(p.stat().st_mtime for p in cs.source_files())
    return path if path.stat().st_mtime >= newest_source else None
