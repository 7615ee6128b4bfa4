"""The "numba-cpu" backend: the NumPy backend with numba-compiled CPU code where Python and
NumPy call overhead, not arithmetic, sets the time.

It computes what the NumPy backend computes (and is tested, like it, against the reference
backend); two compiled paths change the schedule, each taken only where it pays:

- **Whole epochs.** For a small network at a small batch (``compiled_pays``: the rule measured
  on a grid of networks and batches, bench/results/cpu/compiled/NOTES.md), ``MLP.fit`` hands
  this backend whole epochs (``train_epochs``): one compiled call gathers every batch, runs
  forward, loss, backward and the optimizer for every step of every epoch, with plain loops
  that the compiler vectorizes. A per-sample epoch is one call, not thousands.
- **Fused epilogues.** Everywhere else the steps are the NumPy backend's: BLAS for the matrix
  products, and around them compiled single passes for bias + activation, the activation's
  derivative and the optimizer's update (one pass where NumPy makes up to nine).

The math of every elementwise and per-row rule is bpgpu/backends/numba_rules.py, the code the
numba CUDA kernels compile too. Compiled functions release the GIL, so the NumPy backend's row
threads run them side by side on a large step; they are cached on disk by numba
(``cache=True``), so a new process does not compile them again.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from bpgpu.backends import numba_rules
from bpgpu.backends.base import (
    Array,
    BackendUnavailableError,
    EpochsRun,
    Network,
    OptimizerState,
    Workspace,
    check_index_values,
)
from bpgpu.backends.numpy_backend import NumpyBackend
from bpgpu.functions import ACTIVATIONS, LOSSES, OUTPUTS
from bpgpu.optimizers import Optimizer

#: a batch of at most this many rows trains compiled whatever the network: a per-sample step
#: is matrix-vector work, which the compiled loops do as fast as BLAS and without its calls
COMPILED_SMALL_BATCH = 1
#: a larger batch trains compiled when it has at most COMPILED_MAX_BATCH rows and its
#: multiply-adds per forward pass, batch x sum of k n over the layers, are at most
#: COMPILED_STEP_TERMS: past that BLAS's blocked products beat the compiled loops
COMPILED_MAX_BATCH = 256
COMPILED_STEP_TERMS = 1 << 18


def compiled_pays(layers: list[int], batch: int) -> bool:
    """Whether whole compiled epochs beat the NumPy steps for this network and batch size (the
    rule fitted to a measured grid, bench/results/cpu/compiled/)."""
    if batch <= COMPILED_SMALL_BATCH:
        return True
    terms = sum(k * n for k, n in itertools.pairwise(layers))
    return batch <= COMPILED_MAX_BATCH and batch * terms <= COMPILED_STEP_TERMS


@dataclass
class _EpochBuffers:
    """What the compiled epochs need besides the network and its workspace: gradient scratch
    and the two saved sets of weights (made once per network shape)."""

    gW: tuple[np.ndarray, ...]
    gb: tuple[np.ndarray, ...]
    saved_W: tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]
    saved_b: tuple[tuple[np.ndarray, ...], tuple[np.ndarray, ...]]


class NumbaCpuBackend(NumpyBackend):
    name = "numba-cpu"

    def __init__(self) -> None:
        super().__init__()
        self._buffers: dict[tuple[object, ...], _EpochBuffers] = {}

    @classmethod
    def probe(cls) -> None:
        try:
            import numba
        except ImportError:
            raise BackendUnavailableError(
                "numba is not installed (pip install numba, or the 'cpu' extra)"
            ) from None
        if numba.config.DISABLE_JIT:
            raise BackendUnavailableError("NUMBA_DISABLE_JIT is set: nothing would be compiled")

    def describe(self) -> dict[str, str]:
        import numba

        return {**super().describe(), "numba": numba.__version__}

    # ---- the fused epilogues ------------------------------------------------------------------

    def _bias_activate(self, z: np.ndarray, bias: np.ndarray, activation: str) -> None:
        # NumPy's own SIMD exp and tanh beat the compiled loop's scalar libm calls, so only
        # the activations without them are compiled
        if activation in ("relu", "identity"):
            numba_rules.bias_activate(z, bias[0], ACTIVATIONS[activation].code)
        else:
            super()._bias_activate(z, bias, activation)

    def _times_derivative(self, d: np.ndarray, a: np.ndarray, activation: str) -> None:
        if activation == "identity":
            return
        numba_rules.times_derivative(d, a, ACTIVATIONS[activation].code)

    def _apply_update(
        self,
        opt: Optimizer,
        P: np.ndarray,
        G: np.ndarray,
        slots: dict[str, np.ndarray],
        tmp: np.ndarray,
        t: int,
        decay: bool,
    ) -> None:
        if not (P.flags.c_contiguous and G.flags.c_contiguous):
            super()._apply_update(opt, P, G, slots, tmp, t, decay)
            return
        dtype = P.dtype.type
        lr, wd, *own = (dtype(v) for v in opt.kernel_scalars(t)[: numba_rules.RULE_SCALARS])
        rows = [a.reshape(1, -1) if a.ndim == 1 else a for a in (P, G, *slots.values())]
        s1 = rows[2] if len(rows) > 2 else rows[0]  # stand-ins for slots the rule does not keep
        s2 = rows[3] if len(rows) > 3 else rows[0]
        numba_rules.update(
            rows[0], rows[1], s1, s2, len(slots), dtype(1), opt.code, lr,
            wd if decay else dtype(0), *own,
        )  # fmt: skip

    # ---- whole epochs ---------------------------------------------------------------------------

    def compiled_epochs(self, layers: list[int], batch: int) -> bool:
        return compiled_pays(layers, batch)

    def train_epochs(
        self,
        net: Network,
        ws: Workspace,
        X: Array,
        Y: Array,
        orders: np.ndarray,
        states: list[OptimizerState],
    ) -> EpochsRun:
        buffers = self._epoch_buffers(net)
        done, stats = self._compiled(net, ws, X, Y, orders, states, buffers)
        starts = [
            [*buffers.saved_W[e % 2], *buffers.saved_b[e % 2]]
            for e in range(done - 1, max(done - 3, -1), -1)
        ]
        return EpochsRun(done, stats[:done], starts)

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
        """One step; compiled whole where compiled epochs pay (one epoch of one batch)."""
        sizes = [net.W[0].shape[0], *(W.shape[1] for W in net.W)]
        if not self.compiled_epochs(sizes, ws.rows):
            super().train_step(net, ws, X, Y, index, states, stats)
            return
        check_index_values(X, index)
        _, found = self._compiled(
            net, ws, X, Y, index.reshape(1, -1), states, self._epoch_buffers(net)
        )
        stats += found[0]

    def _compiled(
        self,
        net: Network,
        ws: Workspace,
        X: Array,
        Y: Array,
        orders: np.ndarray,
        states: list[OptimizerState],
        buffers: _EpochBuffers,
    ) -> tuple[int, np.ndarray]:
        """numba_rules.epochs on the network: (epochs run, per-epoch loss sums and counts)."""
        dtype = net.W[0].dtype
        opt, t = states[0].optimizer, states[0].t
        per_epoch = -(-orders.shape[1] // ws.rows)
        table = opt.kernel_scalars_table(t + 1, orders.shape[0] * per_epoch, dtype)
        slots = len(opt.slots)
        b = tuple(v.reshape(1, -1) for v in net.b)  # the rules take a bias as one row
        # a slot the rule does not keep is given the parameters as a stand-in, never touched
        S1W, S2W = (
            tuple(s.W[opt.slots[i]] for s in states) if i < slots else tuple(net.W) for i in (0, 1)
        )
        S1b, S2b = (
            tuple(s.b[opt.slots[i]].reshape(1, -1) for s in states) if i < slots else b
            for i in (0, 1)
        )
        stats = np.zeros((orders.shape[0], 2))
        done = numba_rules.epochs(
            tuple(net.W), b, S1W, S2W, S1b, S2b, slots, buffers.gW, buffers.gb,
            (ws.X, *ws.A), ws.Z, ws.P, ws.Y, tuple(ws.D),
            np.array([ACTIVATIONS[a].code for a in net.activations], np.int64),
            OUTPUTS[net.output].code, LOSSES[net.loss].code, X, Y, orders, ws.rows, table,
            opt.code, dtype.type(1), stats, buffers.saved_W, buffers.saved_b,
        )  # fmt: skip
        for state in states:
            state.t += done * per_epoch
        return done, stats

    def _epoch_buffers(self, net: Network) -> _EpochBuffers:
        key = (net.W[0].dtype.str, *(W.shape for W in net.W))
        found = self._buffers.get(key)
        if found is None:
            W, b = net.W, net.b
            found = _EpochBuffers(
                gW=tuple(np.empty_like(a) for a in W),
                gb=tuple(np.empty((1, a.shape[0]), a.dtype) for a in b),
                saved_W=(tuple(np.empty_like(a) for a in W), tuple(np.empty_like(a) for a in W)),
                saved_b=(tuple(np.empty_like(a) for a in b), tuple(np.empty_like(a) for a in b)),
            )
            self._buffers = {key: found}  # scratch of the last shapes trained
        return found
