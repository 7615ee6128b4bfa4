"""A training step's rows split across CPU threads, for the NumPy backend.

NumPy runs a ufunc on one thread and a matrix product on BLAS's threads, so on a tall batch the
elementwise passes (bias, activation, derivative, optimizer) leave all but one core idle. For a
large step (``RowThreads.parallel``), each op's rows are cut into one contiguous range per
thread and each thread runs the whole op on its range, matrix product and epilogue alike; NumPy
releases the GIL inside both. BLAS is held to one thread for the whole step: its own workers
keep spinning for a while after each product and would take the cores from ours (a step mixing
the two is slower than either alone: bench/results/cpu/NOTES.md).

The thread count follows BLAS's (threadpoolctl reads it, so ``threadpool_limits`` and
``OPENBLAS_NUM_THREADS`` apply here too); without threadpoolctl everything runs on the caller's
thread, as it does for small steps, where handing work to a thread (tens of microseconds) and
running products on one BLAS thread cost more than they save.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any, TypeVar

from bpgpu.validation import check_int

T = TypeVar("T")

#: a step runs on several threads when its widest activation has this many elements (below it,
#: handing work to threads costs more than it saves: bench/results/cpu/NOTES.md)
MIN_STEP_ELEMENTS = 1 << 22
#: within such a step, an op touching fewer elements than this stays on the caller's thread
MIN_OP_ELEMENTS = 1 << 16


def _blas_controller() -> Any | None:
    """threadpoolctl's handle on the BLAS libraries loaded in this process, or None."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    blas = ThreadpoolController().select(user_api="blas")
    return blas if blas.lib_controllers else None


class RowThreads:
    """Runs an op's row ranges on up to ``threads`` threads inside ``parallel``.

    ``threads=None`` uses as many threads as BLAS would; ``threads=1`` never leaves the
    caller's thread.
    """

    def __init__(
        self, threads: int | None = None, min_step_elements: int = MIN_STEP_ELEMENTS
    ) -> None:
        self._threads = None if threads is None else check_int(threads, "threads")
        self.min_step_elements = check_int(min_step_elements, "min_step_elements", minimum=0)
        self.min_op_elements = MIN_OP_ELEMENTS
        self._blas = _blas_controller()
        self._pool: ThreadPoolExecutor | None = None
        self._workers = 0
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._local = threading.local()  # .active: threads of the step this thread is in

    @property
    def threads(self) -> int:
        """Threads a large step runs on now."""
        if self._threads is not None:
            return self._threads
        if self._blas is None:
            return 1
        return max(1, min(lib.num_threads for lib in self._blas.lib_controllers))

    def describe(self) -> str:
        if self._threads is None and self._blas is None:
            return "1 (install threadpoolctl, the 'cpu' extra, to use every core)"
        widest = self.min_step_elements
        return f"{self.threads} (for steps whose widest activation has {widest} elements or more)"

    @contextlib.contextmanager
    def parallel(self, elements: int) -> Iterator[None]:
        """Ops inside split their rows across threads if ``elements``, the size of the step's
        widest activation, is large enough; BLAS runs on one thread meanwhile."""
        n = self.threads if elements >= self.min_step_elements else 1
        if n == 1 or getattr(self._local, "active", 1) > 1:
            yield
            return
        self._local.active = n
        try:
            if self._blas is None:
                yield
            else:
                with self._blas.limit(limits=1):
                    yield
        finally:
            self._local.active = 1

    def split(self, rows: int, elements: int) -> list[slice]:
        """The row ranges an op over ``rows`` rows touching ``elements`` elements runs as."""
        n = getattr(self._local, "active", 1) if elements >= self.min_op_elements else 1
        n = max(1, min(n, rows))
        bounds = [rows * i // n for i in range(n + 1)]
        return [slice(bounds[i], bounds[i + 1]) for i in range(n)]

    def run(self, fn: Callable[[slice], T], rows: int, elements: int) -> list[T]:
        """``fn(r)`` for each range ``r`` of ``self.split(rows, elements)``, on parallel threads."""
        return self.map(fn, self.split(rows, elements))

    def map(self, fn: Callable[[Any], T], items: Sequence[Any]) -> list[T]:
        """``[fn(item) for item in items]``, one item per thread, the first on the caller's.

        Each thread runs in a copy of the caller's context, so ``np.errstate`` carries over.
        """
        if len(items) == 1:
            return [fn(items[0])]
        pool = self._pool_of(len(items) - 1)
        futures = [pool.submit(contextvars.copy_context().run, fn, item) for item in items[1:]]
        try:
            first = fn(items[0])
        finally:  # never return while a worker may still write into the caller's arrays
            wait(futures)
        return [first, *(f.result() for f in futures)]

    def _pool_of(self, workers: int) -> ThreadPoolExecutor:
        """A pool of at least ``workers`` threads, made again in a forked child (whose copy of
        the pool has no threads)."""
        with self._lock:
            if self._pool is None or self._workers < workers or self._pid != os.getpid():
                if self._pool is not None and self._pid == os.getpid():
                    self._pool.shutdown(wait=False)
                self._pool = ThreadPoolExecutor(workers, thread_name_prefix="bpgpu-rows")
                self._workers, self._pid = workers, os.getpid()
            return self._pool
