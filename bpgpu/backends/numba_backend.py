"""The numba backend: the fused training ops as numba.cuda kernels (``numba_kernels.py``).

Arrays are CuPy arrays when CuPy is importable and a real GPU is present (kernels then launch
on CuPy's current stream and read the arrays through ``__cuda_array_interface__``, no copies,
without numba's default synchronisation of that stream per array argument);
otherwise numba's own device arrays. Under ``NUMBA_ENABLE_CUDASIM=1`` it runs on numba's CUDA
simulator and says so with ``simulated = True``.
"""

from __future__ import annotations

import math
import os

import numpy as np

from bpgpu.backends.base import Array, Backend, BackendUnavailableError, OptimizerState
from bpgpu.backends.cuda_launch import element_geometry, tile_grid
from bpgpu.functions import ACTIVATIONS, LOSSES, OUTPUTS
from bpgpu.validation import physical_memory


def _blocks(n: int, per_block: int) -> int:
    return max(1, math.ceil(n / per_block))


class NumbaBackend(Backend):
    name = "numba"
    device = "gpu"
    max_elements = 2**31 - 1

    @classmethod
    def probe(cls) -> None:
        try:
            from bpgpu.backends import numba_kernels
        except ImportError as exc:
            raise BackendUnavailableError(f"numba-cuda is not installed ({exc})") from None
        if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
            return
        if not numba_kernels.cuda.is_available():
            raise BackendUnavailableError("numba found no CUDA GPU (cuda.is_available() is False)")
        try:  # a GPU without NVVM would fail at the first kernel, deep in a fit: say so now
            numba_kernels.check_compiler()
        except Exception as exc:  # numba's NVVM errors have no common base class
            raise BackendUnavailableError(
                f"numba cannot compile CUDA kernels ({type(exc).__name__}: {exc}); numba-cuda "
                "needs NVVM: pip install 'numba-cuda[cu13]' (or [cu12]), or a CUDA toolkit"
            ) from None

    def __init__(self) -> None:
        from bpgpu.backends import numba_kernels

        self._cuda = numba_kernels.cuda
        self._k = numba_kernels
        self.simulated = numba_kernels.SIMULATED
        self._cupy = None
        if not self.simulated:
            try:
                import cupy
            except ImportError:
                cupy = None
            if cupy is not None:
                try:
                    if cupy.cuda.runtime.getDeviceCount() > 0:
                        self._cupy = cupy
                except cupy.cuda.runtime.CUDARuntimeError:  # CuPy sees no device: numba arrays
                    self._cupy = None
        self._row_stats: dict[int, Array] = {}
        self._dummy: dict[np.dtype, Array] = {}

    def describe(self) -> dict[str, str]:
        info = super().describe()
        info["numba"] = self._k.NUMBA_VERSION
        info["arrays"] = "cupy" if self._cupy is not None else "numba"
        info["device"] = (
            "CUDA simulator" if self.simulated else str(self._cuda.get_current_device().name)
        )
        return info

    def _launch(self, kernel, grid, block):
        """kernel[grid, block]; when arrays are CuPy's, on CuPy's current stream and without
        the stream synchronisation numba would do per array argument."""
        if self._cupy is None:
            return kernel[grid, block]
        stream = self._cuda.external_stream(self._cupy.cuda.get_current_stream().ptr)
        configured = kernel[grid, block, stream]

        def launch(*args):
            with self._k.interface_sync_off():
                configured(*args)

        return launch

    # ---- memory -----------------------------------------------------------------------------

    def asarray(self, host: np.ndarray, dtype: np.dtype) -> Array:
        host = np.ascontiguousarray(host, dtype=dtype)
        if self._cupy is not None:
            return self._cupy.array(host, dtype=dtype, order="C", copy=True)
        return self._cuda.to_device(host)

    def to_host(self, array: Array) -> np.ndarray:
        if self._cupy is not None:
            return self._cupy.asnumpy(array)
        return array.copy_to_host()

    def empty(self, shape: tuple[int, ...], dtype: np.dtype) -> Array:
        if self._cupy is not None:
            return self._cupy.empty(shape, dtype=dtype)
        return self._cuda.device_array(shape, dtype=dtype)

    def zeros(self, shape: tuple[int, ...], dtype: np.dtype) -> Array:
        if self._cupy is not None:
            return self._cupy.zeros(shape, dtype=dtype)
        return self._cuda.to_device(np.zeros(shape, dtype=dtype))

    def copy_into(self, dst: Array, src: Array) -> None:
        if self._cupy is not None:
            dst[...] = src
        else:
            dst.copy_to_device(src)

    def is_array(self, obj: object) -> bool:
        if self._cupy is not None:
            return isinstance(obj, self._cupy.ndarray)
        if self.simulated:  # the simulator's arrays have no __cuda_array_interface__
            return isinstance(obj, type(self._cuda.device_array(1)))
        return self._cuda.is_cuda_array(obj)

    def memory_bytes(self) -> int | None:
        if self.simulated:
            return physical_memory()  # the simulator's device arrays are host memory
        if self._cupy is not None:
            return int(self._cupy.cuda.Device().mem_info[1])  # (free, total)
        return int(self._cuda.current_context().get_memory_info()[1])  # (free, total)

    def synchronize(self) -> None:
        if self._cupy is not None:
            self._cupy.cuda.get_current_stream().synchronize()
        else:
            self._cuda.synchronize()

    def is_c_contiguous(self, array: Array) -> bool:
        if self._cupy is not None:
            return bool(array.flags.c_contiguous)
        return bool(array.is_c_contiguous())

    # ---- fused ops ----------------------------------------------------------------------------

    def _gemm(
        self, A, B, trans_a: bool, trans_b: bool, bias, aux, act: str, mode: int, out
    ) -> None:
        k = self._k
        grid = tile_grid(out.shape[0], out.shape[1], k.TILE, k.TILE)
        kernel = k.GEMM[np.dtype(out.dtype)]
        self._launch(kernel, grid, (k.THREADS, k.THREADS))(
            A, B, trans_a, trans_b, bias, aux, ACTIVATIONS[act].code, mode, out
        )

    def _dense_forward(self, X: Array, W: Array, b: Array, activation: str, out: Array) -> Array:
        self._gemm(X, W, False, False, b, out, activation, self._k.EPI_FORWARD, out)
        return out

    def _delta_backward(
        self, D: Array, W: Array, A_prev: Array, activation: str, out: Array
    ) -> Array:
        self._gemm(D, W, False, True, W[0], A_prev, activation, self._k.EPI_DERIVATIVE, out)
        return out

    def _weight_gradient(self, A_prev: Array, D: Array, out_W: Array, out_b: Array) -> None:
        n = D.shape[1]
        self._gemm(A_prev, D, True, False, out_b, out_W, "identity", self._k.EPI_STORE, out_W)
        self._launch(self._k.column_sum, _blocks(n, 128), 128)(D, out_b)

    def _output_forward(self, Z: Array, output: str, out: Array) -> Array:
        m = Z.shape[0]
        self._launch(self._k.output_forward, _blocks(m, 128), 128)(Z, OUTPUTS[output].code, out)
        return out

    def _output_delta(
        self, Z: Array, Y: Array, output: str, loss: str, out_A: Array, out_D: Array, stats: Array
    ) -> None:
        m = Z.shape[0]
        k = self._k
        row_stats = self._row_stats.get(m)
        if row_stats is None:
            row_stats = self._row_stats[m] = self.empty((m, 2), np.dtype(np.float64))
        self._launch(k.output_delta, _blocks(m, 128), 128)(
            Z, Y, OUTPUTS[output].code, LOSSES[loss].code, 1.0 / m, out_A, out_D, row_stats
        )
        self._launch(k.add_stats, 1, k.REDUCE_THREADS)(row_stats, stats)

    def _weight_update(
        self, A_prev: Array, D: Array, W: Array, b: Array, state: OptimizerState
    ) -> None:
        if state.scratch is None:
            state.scratch = (self.empty(W.shape, W.dtype), self.empty(b.shape, b.dtype))
        gW, gb = state.scratch
        self._weight_gradient(A_prev, D, gW, gb)
        self._optimizer_step(W, b, gW, gb, state)

    def _optimizer_step(
        self, W: Array, b: Array, dW: Array, db: Array, state: OptimizerState
    ) -> None:
        scalars = state.optimizer.kernel_scalars(state.t)
        self._step(state.optimizer.code, W, dW, state.W, scalars)
        self._step(state.optimizer.code, b, db, state.b, (scalars[0], 0.0, *scalars[2:]))

    def _scale(self, a: Array, factor: float) -> None:
        if self._cupy is not None:
            a *= factor
            return
        flat = a.reshape(a.size)
        grid, block = element_geometry(a.size)
        self._launch(self._k.scale, grid, block)(flat, factor)

    def _step(self, code: int, P: Array, G: Array, slots: dict, scalars: tuple[float, ...]) -> None:
        """P <- P - step(G + wd P) in place, the slot arrays updated (numba_kernels)."""
        k = self._k
        dummy = self._dummy.get(np.dtype(P.dtype))
        if dummy is None:
            dummy = self._dummy[np.dtype(P.dtype)] = self.zeros((1,), P.dtype)
        flat = [a.reshape(a.size) for a in (P, G, *slots.values())]
        s1 = flat[2] if len(flat) > 2 else dummy
        s2 = flat[3] if len(flat) > 3 else dummy
        numbers = (P.dtype.type(s) for s in scalars[: k.RULE_SCALARS])
        self._launch(k.optimizer_step, min(_blocks(P.size, 256), 1024), 256)(
            flat[0], flat[1], s1, s2, len(slots), P.dtype.type(1), code, *numbers
        )

    def _gather_rows(self, src: Array, index: Array, out: Array) -> Array:
        m, n = out.shape
        grid, block = element_geometry(m * n)
        self._launch(self._k.gather_rows, grid, block)(src, index, out)
        return out
