"""Synchronous data-parallel training over MPI (mpi4py), with NCCL for GPU arrays.

    mpiexec -n 4 python train.py                # or: mpiexec -n 4 bpgpu train ...

    from bpgpu import distributed
    world = distributed.init()                  # MPI.COMM_WORLD: size 1 without mpiexec
    net = bpgpu.MLP([784, 512, 10], seed=0)     # after init: on this rank's GPU
    net.fit(X, y, batch_size=256, distributed=world)     # or distributed=True

Every rank calls ``fit`` with the same data and settings; each global batch of ``batch_size``
samples is split across the ranks, the gradients of all layers are summed in one flat buffer by
one allreduce per step, and every rank applies the same optimizer step (bpgpu/distributed/
data_parallel.py). ``init`` picks the GPU from the rank's place on its node (a shared-memory
split of the communicator) and, unless told not to, makes an uncaught exception on any rank end
the whole job (``MPI.Abort``), as ``python -m mpi4py`` does, instead of leaving the other ranks
waiting in a collective.

mpi4py is imported by ``init`` only: ``import bpgpu`` never starts MPI.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any, NoReturn

import numpy as np

from bpgpu.backends import get_backend
from bpgpu.backends.base import Backend, HostMemory
from bpgpu.distributed.communicators import (
    Communicator,
    HostStagingCommunicator,
    MPICommunicator,
    NCCLCommunicator,
)

__all__ = [
    "Communicator",
    "World",
    "current",
    "init",
    "launched_by_mpi",
    "resolve",
]

#: device files whose absence means no NVIDIA GPU (Linux, WSL): then CuPy and numba, slow to
#: import, are not asked
GPU_DEVICE_FILES = ("/dev/nvidiactl", "/dev/dxg")
#: environment variables that MPI launchers set in every process they start (MPICH's and
#: Intel MPI's hydra, Open MPI, PMIx launchers such as Slurm's srun)
LAUNCHER_VARIABLES = ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK")

MISSING_MPI4PY = (
    "distributed training needs mpi4py: pip install 'bpgpu[mpi-wheel]' (mpi4py with MPICH's "
    "wheel), or 'bpgpu[mpi]' where the cluster brings its own MPI"
)


class World:
    """The processes of one data-parallel job: an MPI communicator, this process's rank and
    its place on its node, and a communicator per backend (made on first use)."""

    def __init__(self, comm: Any) -> None:
        MPI = _mpi()
        self.comm = comm
        self.rank: int = comm.Get_rank()
        self.size: int = comm.Get_size()
        local = comm.Split_type(MPI.COMM_TYPE_SHARED, key=self.rank)
        #: this process's rank among the group's processes on its node, and how many there are
        self.local_rank: int = local.Get_rank()
        self.local_size: int = local.Get_size()
        local.Free()
        #: the GPU this process uses (None: no GPU, or not chosen here)
        self.device: int | None = None
        # by id(backend), the backend kept with its communicator so that its id stays its own
        self._communicators: dict[int, tuple[Backend, Communicator]] = {}

    def __repr__(self) -> str:
        return (
            f"World(rank={self.rank}, size={self.size}, local_rank={self.local_rank}, "
            f"device={self.device})"
        )

    @property
    def is_root(self) -> bool:
        """Rank 0: the one that prints, draws progress and writes files."""
        return self.rank == 0

    def communicator(self, backend: Backend) -> Communicator:
        """The communicator for ``backend``'s arrays: MPI for host arrays, NCCL for CuPy
        arrays (when CuPy has NCCL), host staging for any other device array."""
        found = self._communicators.get(id(backend))
        if found is None:
            found = (backend, _communicator_for(self.comm, backend))
            self._communicators[id(backend)] = found
        return found[1]

    def host(self) -> MPICommunicator:
        """MPI on NumPy arrays (the job's metadata: settings, the shuffling state, the order)."""
        return MPICommunicator(self.comm, get_backend("reference"))

    def agree(self, values: np.ndarray) -> bool:
        """Whether every rank passed the same int64 ``values`` (a collective)."""
        MPI = _mpi()
        values = np.ascontiguousarray(values, dtype=np.int64)
        low, high = values.copy(), values.copy()
        self.comm.Allreduce(MPI.IN_PLACE, low, op=MPI.MIN)
        self.comm.Allreduce(MPI.IN_PLACE, high, op=MPI.MAX)
        return bool(np.array_equal(low, high))

    def abort(self, status: int = 1) -> NoReturn:
        """End every process of the job now, with ``status``."""
        sys.stdout.flush()
        sys.stderr.flush()
        self.comm.Abort(status)
        raise SystemExit(status)  # Abort does not return; this satisfies the type checker


_world: World | None = None


def _mpi() -> Any:
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(f"{MISSING_MPI4PY} ({exc})") from None
    return MPI


def launched_by_mpi() -> bool:
    """Whether an MPI launcher (mpiexec, mpirun, srun) started this process."""
    return any(name in os.environ for name in LAUNCHER_VARIABLES)


def init(comm: Any = None, *, select_device: bool = True, abort_on_error: bool = True) -> World:
    """Start (or join) the job: ``comm`` (default ``MPI.COMM_WORLD``) as a World.

    With ``select_device``, a process takes GPU ``local_rank % GPUs on the node`` when CuPy (or
    numba) sees GPUs, before any model allocates memory. With ``abort_on_error`` and more than
    one rank, an uncaught exception prints its traceback and aborts the whole job. Called
    again without ``comm``, returns the same World.
    """
    global _world
    MPI = _mpi()
    if comm is None and _world is not None:
        return _world
    world = World(MPI.COMM_WORLD if comm is None else comm)
    if select_device:
        world.device = _select_device(world.local_rank)
    if abort_on_error and world.size > 1:
        _abort_on_uncaught_exception(world)
    if comm is None:
        _world = world
    return world


def current() -> World | None:
    """The World ``init()`` made, if it has been called."""
    return _world


def resolve(distributed: object) -> World | None:
    """``fit``'s ``distributed`` argument as the World to train over, or None for one process
    (also for a World of one rank: then the fused single-process step runs)."""
    if distributed is None or distributed is False:
        return None
    if distributed is True:
        world = init()
    elif isinstance(distributed, World):
        world = distributed
    else:
        raise TypeError(
            "distributed must be True, False, None or a World from bpgpu.distributed.init(); "
            f"got {type(distributed).__name__}"
        )
    return world if world.size > 1 else None


def _communicator_for(comm: Any, backend: Backend) -> Communicator:
    if isinstance(backend, HostMemory):
        return MPICommunicator(comm, backend)
    probe = backend.zeros((1,), np.dtype(np.float32))
    if type(probe).__module__.split(".")[0] == "cupy" and _cupy_has_nccl():
        return NCCLCommunicator(comm, backend)
    return HostStagingCommunicator(comm, backend)


def _cupy_has_nccl() -> bool:
    try:
        from cupy.cuda import nccl
    except ImportError:
        return False
    return bool(getattr(nccl, "available", True))


def _select_device(local_rank: int) -> int | None:
    """Make GPU ``local_rank % count`` current for CuPy (and numba); None without GPUs."""
    if not any(os.path.exists(path) for path in GPU_DEVICE_FILES):
        return None
    try:
        import cupy
    except ImportError:
        cupy = None
    if cupy is not None:
        try:
            count = int(cupy.cuda.runtime.getDeviceCount())
        except Exception:  # CuPy without a driver or a GPU raises its own runtime errors
            count = 0
        if count:
            device = local_rank % count
            cupy.cuda.Device(device).use()
            return device
    if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
        return None
    try:
        from bpgpu.backends import numba_kernels
    except ImportError:
        return None
    return numba_kernels.select_device(local_rank)


def _abort_on_uncaught_exception(world: World) -> None:
    """An uncaught exception prints its traceback as usual, then aborts every rank."""
    previous = sys.excepthook

    def hook(
        kind: type[BaseException], value: BaseException, tb: types.TracebackType | None
    ) -> None:
        previous(kind, value, tb)
        sys.stderr.write(f"bpgpu.distributed: rank {world.rank} aborts the job\n")
        world.abort(1)

    sys.excepthook = hook
