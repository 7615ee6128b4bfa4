"""One rank's part of a data-parallel fit: the shard of each global batch, one flat gradient
buffer and its allreduce, then the optimizer step.

A step over the global batch ``order[start:stop]`` of B samples on N ranks:

1. rank r takes the rows ``[start + B r // N, start + B (r + 1) // N)``: contiguous shards in
   rank order, together the whole batch (a rank may get none when B < N);
2. ``evaluate_step`` gives its loss sums and the gradient of its mean loss, every layer's dW and
   db written into one flat buffer (a fixed layout: dW_1, db_1, dW_2, ...);
3. the buffer is scaled by m_r N / B (only when the shards are uneven; a rank without rows
   zeroes it), so that its mean over the ranks is the gradient of the global batch's mean loss;
4. one ``allreduce_mean`` of the buffer, which also carries each rank's Ctrl-C flag in its
   last element;
5. ``apply_gradients``: every rank applies the same optimizer step to the same weights.

Every rank runs the same number of steps whatever the data size, so none waits for a rank that
has left the loop, and every rank ends with the same weights bit for bit. In float64 the result
equals one process training on the same global batches to rounding (the sums are split
differently). The loss sums are summed over the ranks at each epoch's end.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from bpgpu.backends.base import Array, Backend, Network, OptimizerState, Workspace

if TYPE_CHECKING:
    from bpgpu.distributed import World

#: the low 64 bits of PCG64's 128-bit numbers, to send its state as uint64 words
_LOW = (1 << 64) - 1


class DataParallel:
    """A fit's data-parallel steps on ``backend`` over ``world``'s ranks."""

    def __init__(self, world: World, backend: Backend, net: Network, dtype: np.dtype) -> None:
        self.world, self.xp = world, backend
        self.rank, self.size = world.rank, world.size
        self.comm = world.communicator(backend)
        sizes = [(W.shape[0] * W.shape[1], W.shape[1]) for W in net.W]
        total = sum(w + b for w, b in sizes)
        #: the gradients of every layer, then the Ctrl-C flag: one allreduce per step
        self.flat = backend.zeros((total + 1,), dtype)
        self.grads: list[tuple[Array, Array]] = []
        offset = 0
        for W, (w, b) in zip(net.W, sizes, strict=True):
            dW = self.flat[offset : offset + w].reshape(W.shape)
            self.grads.append((dW, self.flat[offset + w : offset + w + b]))
            offset += w + b
        self._gradients = self.flat[:total]
        self._flag = self.flat[total:]
        self._flags = {
            False: backend.zeros((1,), dtype),
            True: backend.asarray(np.ones(1), dtype),
        }
        self._zeros: Array | None = None
        #: whether any rank asked to stop (Ctrl-C) by the last step
        self.stop_requested = False

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def shard(self, start: int, stop: int) -> tuple[int, int]:
        """This rank's rows [lo, hi) of the rows [start, stop)."""
        B = stop - start
        return start + B * self.rank // self.size, start + B * (self.rank + 1) // self.size

    # ---- the start of a fit -------------------------------------------------------------------

    def start(
        self,
        net: Network,
        states: list[OptimizerState],
        settings: np.ndarray,
        rng: np.random.Generator,
        order: np.ndarray,
        stats: Array,
    ) -> None:
        """Check that every rank trains alike (``settings``: int64 numbers that must agree,
        the data's digest among them), then rank 0's weights, optimizer state, shuffling
        generator and sample order on every rank. The loss sums stay on rank 0 only (a
        resumed epoch's sums are the whole job's)."""
        if not self.world.agree(settings):
            raise ValueError(
                "distributed fit: the ranks called fit with different data or settings (X, y, "
                "validation data, epochs, batch_size, shuffle, dtype or layers); every rank "
                "must pass the same"
            )
        for W, b in zip(net.W, net.b, strict=True):
            self.comm.broadcast(W)
            self.comm.broadcast(b)
        host = self.world.host()
        counts = np.array([state.t for state in states], dtype=np.int64)
        host.broadcast(counts)
        for state, t in zip(states, counts, strict=True):
            for slot in (*state.W.values(), *state.b.values()):
                self.comm.broadcast(slot)
            state.t = int(t)
        words = _rng_words(rng)
        host.broadcast(words)
        _set_rng_words(rng, words)
        host.broadcast(order)
        if not self.is_root:
            self.xp.copy_into(stats, self.xp.zeros((2,), np.dtype(np.float64)))

    # ---- the steps ----------------------------------------------------------------------------

    def step(
        self,
        net: Network,
        workspace: Callable[[int], Workspace],
        X: Array,
        Y: Array,
        index: Array,
        start: int,
        stop: int,
        states: list[OptimizerState],
        stats: Array,
        requested: bool,
    ) -> None:
        """One training step over the global batch ``index[start:stop]`` (this rank's shard of
        it), its loss sums added to ``stats``; ``requested``: Ctrl-C on this rank."""
        xp = self.xp
        lo, hi = self.shard(start, stop)
        rows, total = hi - lo, stop - start
        if rows:
            xp.evaluate_step(net, workspace(rows), X, Y, index[lo:hi], stats, self.grads)
            if rows * self.size != total:
                xp._scale(self._gradients, rows * self.size / total)
        else:
            if self._zeros is None:
                self._zeros = xp.zeros(self._gradients.shape, self._gradients.dtype)
            xp.copy_into(self._gradients, self._zeros)
        xp.copy_into(self._flag, self._flags[requested])
        self.comm.allreduce_mean(self.flat)
        xp.apply_gradients(net, self.grads, states)
        self.stop_requested = bool(xp.to_host(self._flag)[0] > 0)

    def reduce_stats(self, stats: Array) -> None:
        """stats (loss sum, correct count) <- their sums over the ranks."""
        self.comm.allreduce_sum(stats)


def _rng_words(rng: np.random.Generator) -> np.ndarray:
    """A PCG64 generator's state as uint64 words, to broadcast without pickle."""
    state = rng.bit_generator.state
    if state["bit_generator"] != "PCG64":
        raise TypeError(f"the shuffling generator must be PCG64; got {state['bit_generator']}")
    s, inc = state["state"]["state"], state["state"]["inc"]
    return np.array(
        [s >> 64, s & _LOW, inc >> 64, inc & _LOW, state["has_uint32"], state["uinteger"]],
        dtype=np.uint64,
    )


def _set_rng_words(rng: np.random.Generator, words: np.ndarray) -> None:
    w = [int(v) for v in words]
    rng.bit_generator.state = {
        "bit_generator": "PCG64",
        "state": {"state": (w[0] << 64) | w[1], "inc": (w[2] << 64) | w[3]},
        "has_uint32": w[4],
        "uinteger": w[5],
    }
