"""Communicators: allreduce (sum, mean), broadcast and barrier on a backend's arrays, in place.

One interface, three engines, chosen per backend by ``World.communicator``:

* ``MPICommunicator``: MPI (mpi4py's buffer methods ``Allreduce`` and ``Bcast``, never its
  pickle-based lowercase ones) on NumPy arrays, for the backends whose arrays live on the host.
* ``NCCLCommunicator``: NCCL through ``cupy.cuda.nccl`` on CuPy arrays, on CuPy's current
  stream. Its NCCL communicator is made on first use, once the process's GPU is chosen, from a
  unique id that rank 0 draws and broadcasts over MPI.
* ``HostStagingCommunicator``: any other device array, copied to the host, reduced over MPI and
  copied back.

Sums are MPI's (NCCL's) own, whose order is fixed for a given number of ranks and whose result
every rank receives alike; a mean is the sum times 1 / size.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from bpgpu.backends.base import Array, Backend

#: NCCL's unique id is this many bytes (ncclUniqueId)
NCCL_UNIQUE_ID_BYTES = 128
#: how a packed unique id says which form CuPy gave: bytes (CuPy 14) or a tuple of signed chars
_AS_BYTES, _AS_TUPLE = 1, 2


class Communicator(ABC):
    """Collectives over every rank of a group on the arrays of one backend, in place."""

    def __init__(self, comm: Any, backend: Backend) -> None:
        self.comm = comm  # an mpi4py communicator
        self.backend = backend
        self.rank: int = comm.Get_rank()
        self.size: int = comm.Get_size()

    @abstractmethod
    def allreduce_sum(self, buf: Array) -> None:
        """buf <- the sum over ranks of buf."""

    def allreduce_mean(self, buf: Array) -> None:
        """buf <- the mean over ranks of buf."""
        self.allreduce_sum(buf)
        if self.size > 1:
            self.backend._scale(buf, 1.0 / self.size)

    @abstractmethod
    def broadcast(self, buf: Array, root: int = 0) -> None:
        """buf <- rank ``root``'s buf."""

    def barrier(self) -> None:
        """Return once every rank has reached here, with this rank's queued work done."""
        self.backend.synchronize()
        self.comm.Barrier()


def _mpi() -> Any:
    from mpi4py import MPI

    return MPI


class MPICommunicator(Communicator):
    """MPI on NumPy arrays (C-contiguous, any dtype MPI knows)."""

    def allreduce_sum(self, buf: Array) -> None:
        MPI = _mpi()
        self.comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)

    def broadcast(self, buf: Array, root: int = 0) -> None:
        self.comm.Bcast(buf, root=root)


class HostStagingCommunicator(Communicator):
    """Device arrays through host copies and MPI: for device arrays NCCL cannot take."""

    def __init__(self, comm: Any, backend: Backend) -> None:
        super().__init__(comm, backend)
        self._host = MPICommunicator(comm, backend)

    def _staged(self, buf: Array, collective: Any) -> None:
        host = self.backend.to_host(buf)
        collective(host)
        self.backend.copy_into(buf, self.backend.asarray(host, host.dtype))

    def allreduce_sum(self, buf: Array) -> None:
        self._staged(buf, self._host.allreduce_sum)

    def broadcast(self, buf: Array, root: int = 0) -> None:
        self._staged(buf, lambda host: self._host.broadcast(host, root))


class NCCLCommunicator(Communicator):
    """NCCL on CuPy arrays, on CuPy's current stream (untested: no GPU has run it yet)."""

    def __init__(self, comm: Any, backend: Backend) -> None:
        super().__init__(comm, backend)
        self._nccl_comm: Any = None

    def _nccl(self) -> tuple[Any, Any]:
        """(cupy.cuda.nccl, this group's NcclCommunicator), the latter made on first use."""
        from cupy.cuda import nccl

        if self._nccl_comm is None:
            packed = np.zeros(NCCL_UNIQUE_ID_BYTES + 1, dtype=np.uint8)
            if self.rank == 0:
                packed[:] = pack_unique_id(nccl.get_unique_id())
            self.comm.Bcast(packed, root=0)
            self._nccl_comm = nccl.NcclCommunicator(self.size, unpack_unique_id(packed), self.rank)
        return nccl, self._nccl_comm

    def _args(self, nccl: Any, buf: Array) -> tuple[int, int, int, int]:
        """(device pointer, element count, NCCL datatype, stream) of a CuPy array."""
        import cupy

        types = {np.dtype(np.float32): nccl.NCCL_FLOAT32, np.dtype(np.float64): nccl.NCCL_FLOAT64}
        dtype = np.dtype(buf.dtype)
        if dtype not in types:
            raise TypeError(f"NCCL collectives here take float32 or float64; got {dtype}")
        ptr = int(buf.__cuda_array_interface__["data"][0])
        return ptr, int(buf.size), types[dtype], int(cupy.cuda.get_current_stream().ptr)

    def allreduce_sum(self, buf: Array) -> None:
        nccl, comm = self._nccl()
        ptr, count, dtype, stream = self._args(nccl, buf)
        comm.allReduce(ptr, ptr, count, dtype, nccl.NCCL_SUM, stream)

    def broadcast(self, buf: Array, root: int = 0) -> None:
        nccl, comm = self._nccl()
        ptr, count, dtype, stream = self._args(nccl, buf)
        comm.bcast(ptr, count, dtype, root, stream)


def pack_unique_id(uid: bytes | tuple[int, ...]) -> np.ndarray:
    """An NCCL unique id as CuPy gives it (bytes in CuPy 14, a tuple of 128 signed chars
    before) as 129 bytes to broadcast: the form, then the id."""
    if isinstance(uid, bytes):
        form, raw = _AS_BYTES, uid
    else:
        form, raw = _AS_TUPLE, bytes(int(v) & 0xFF for v in uid)
    if len(raw) != NCCL_UNIQUE_ID_BYTES:
        raise ValueError(f"an NCCL unique id has {NCCL_UNIQUE_ID_BYTES} bytes; got {len(raw)}")
    return np.frombuffer(bytes([form]) + raw, dtype=np.uint8).copy()


def unpack_unique_id(packed: np.ndarray) -> bytes | tuple[int, ...]:
    """The unique id ``pack_unique_id`` packed, in the form CuPy gave it."""
    raw = packed[1:].tobytes()
    if int(packed[0]) == _AS_BYTES:
        return raw
    return tuple(int(v) for v in np.frombuffer(raw, dtype=np.int8))
