"""Reading ``.npz`` files that may be damaged or hostile, without trusting a byte of them.

``np.load`` decompresses whatever a file holds, allocates whatever shape a header claims, and
reports a damaged file with whatever exception its parser met. ``Archive`` reads in this order
instead, refusing at the first thing wrong with a ``ModelFileError`` that names the file and
the member:

1. the first bytes: an empty file, a single ``.npy`` array, a pickle and anything else that is
   not a zip each get their own message;
2. the zip directory alone: every member's name is checked by the caller (``keys``) before any
   member is read, so an unknown or extra member is refused undecompressed; members must be
   stored or deflated, unencrypted, inside the file, and declare no more than deflate can
   produce from their compressed size, and all of them together no more than ``max_bytes``;
3. per member, when the caller asks for it: the ``.npy`` header alone (no object dtypes: those
   are pickles), checked by the caller against what the field must be, and its shape against
   the member's size in the directory; only then the array is allocated and read, in chunks,
   to its end, where zipfile checks the CRC (so changed data is refused, never loaded).
"""

from __future__ import annotations

import math
import os
import zipfile
from collections.abc import Callable
from typing import IO

import numpy as np

from bpgpu.validation import format_bytes

#: a member's ``.npy`` header is read with this limit (NumPy's own default)
MAX_HEADER_BYTES = 10_000
#: deflate turns one compressed byte into at most about 1032; a member claiming more is a lie
DEFLATE_MAX_RATIO = 1100
#: arrays are read this many bytes at a time (never a second copy of a whole array)
CHUNK_BYTES = 1 << 23
#: the zip signatures: a local file header (any non-empty archive) and an empty archive's end
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
NPY_MAGIC = b"\x93NUMPY"

#: checks a member's (shape, dtype) before it is read; returns what is wrong, or None
HeaderCheck = Callable[[tuple[int, ...], np.dtype], "str | None"]


class ModelFileError(ValueError):
    """A model or checkpoint file that is not what it should be (damaged, cut short, tampered
    with, or another kind of file). ``path`` is the file, ``field`` the member or metadata field
    at fault (None for the file as a whole)."""

    def __init__(self, kind: str, path: str, problem: str, field: str | None = None) -> None:
        self.path, self.field = path, field
        where = f"{kind} {path!r}" + (f", field {field!r}" if field else "")
        super().__init__(f"{where}: {problem}")


def _sniff(head: bytes) -> str | None:
    """What a file that is not a zip is, from its first bytes; None for a zip."""
    if not head:
        return "is empty (0 bytes)"
    if head.startswith(NPY_MAGIC):
        return "is a single NumPy array (a .npy file), not an .npz archive of named arrays"
    if head[0] == 0x80 and len(head) > 1 and 2 <= head[1] <= 5:  # pickle's PROTO opcode
        return "is a Python pickle; bpgpu never loads pickles"
    if head.startswith(ZIP_MAGIC):
        return None
    if len(head) < 4 and any(magic.startswith(head) for magic in ZIP_MAGIC):
        return f"ends after {len(head)} bytes: the file was cut short"
    return f"is not an .npz (zip) archive: it starts with the bytes {head[:8]!r}"


class Archive:
    """An ``.npz`` file opened for checked reading: only its directory has been read.

    ``kind`` names the file in messages ("model file", "checkpoint file"); ``max_bytes`` caps
    the bytes all its arrays may declare together (None: no cap).
    """

    def __init__(self, path: str | os.PathLike, kind: str, max_bytes: int | None) -> None:
        self.path, self.kind, self.max_bytes = os.fspath(path), kind, max_bytes
        # closed by close(), through the with-block the reader is used in
        self._file: IO[bytes] = open(path, "rb")  # noqa: SIM115 (a missing file: FileNotFoundError)
        try:
            self._open()
        except BaseException:
            self._file.close()
            raise

    def _open(self) -> None:
        size = os.fstat(self._file.fileno()).st_size
        problem = _sniff(self._file.read(8))
        if problem is not None:
            raise self.error(problem)
        self._file.seek(0)
        try:
            self._zip = zipfile.ZipFile(self._file)
            infos = self._zip.infolist()
        except MemoryError:
            raise
        except Exception as exc:  # zipfile reports a damaged directory in many ways
            raise self.error(
                "starts as a zip (.npz) archive but its directory at the end is missing or "
                f"damaged: the file was cut short or corrupted ({exc})"
            ) from None
        self.members: dict[str, zipfile.ZipInfo] = {}
        declared = 0
        for info in infos:
            key = self._member_key(info, size)
            self.members[key] = info
            declared += info.file_size
        if self.max_bytes is not None and declared > self.max_bytes:
            raise self.error(
                f"its members declare {format_bytes(declared)} in all, more than the "
                f"{format_bytes(self.max_bytes)} allowed (max_bytes); nothing was read"
            )

    def _member_key(self, info: zipfile.ZipInfo, size: int) -> str:
        """A member's key (its name less ``.npy``) once its directory entry is checked."""
        name = info.filename
        if not name.endswith(".npy") or len(name) == 4:
            raise self.error(f"holds a member {name!r} that is not a .npy array; nothing was read")
        key = name[:-4]
        if key in self.members:
            raise self.error(f"holds the member {name!r} twice", key)
        if info.flag_bits & 0x1:
            raise self.error("member is encrypted", key)
        if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
            raise self.error(
                f"member uses zip compression method {info.compress_type}; bpgpu reads stored "
                "and deflated members only",
                key,
            )
        if info.header_offset + info.compress_size > size:
            raise self.error(
                f"member claims {format_bytes(info.compress_size)} at offset "
                f"{info.header_offset}, past the end of the {format_bytes(size)} file: the file "
                "was cut short or corrupted",
                key,
            )
        most = (
            info.compress_size
            if info.compress_type == zipfile.ZIP_STORED
            else DEFLATE_MAX_RATIO * info.compress_size + 1024
        )
        if info.file_size > most:
            raise self.error(
                f"member declares {format_bytes(info.file_size)} from "
                f"{format_bytes(info.compress_size)} compressed, more than its compression can "
                "produce; nothing was read",
                key,
            )
        return key

    # ---- use ----------------------------------------------------------------------------------

    def __enter__(self) -> Archive:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._file.close()

    def error(self, problem: str, field: str | None = None) -> ModelFileError:
        return ModelFileError(self.kind, self.path, problem, field)

    def keys(self) -> set[str]:
        """The members' names without ``.npy``, from the directory."""
        return set(self.members)

    def array(self, key: str, check: HeaderCheck) -> np.ndarray:
        """Member ``key``, read once ``check(shape, dtype)`` of its header has passed and the
        header's size has matched the directory's."""
        info = self.members.get(key)
        if info is None:
            raise self.error("is missing: not a complete bpgpu file", key)
        try:
            with self._zip.open(info) as stream:
                shape, dtype, fortran = self._header(key, stream, check)
                count = math.prod(shape)
                nbytes = count * dtype.itemsize
                if stream.tell() + nbytes != info.file_size:
                    raise self.error(
                        f"declares shape {shape} of {dtype} ({format_bytes(nbytes)}), but the "
                        f"member holds {format_bytes(info.file_size - stream.tell())} of data",
                        key,
                    )
                data = np.empty(count, dtype=dtype)
                self._read_into(key, stream, data)
        except (ModelFileError, MemoryError):
            raise
        except Exception as exc:  # zlib, zipfile (bad CRC) and header parsers raise many kinds
            raise self.error(f"member is corrupted ({type(exc).__name__}: {exc})", key) from None
        if fortran:
            return data.reshape(shape[::-1]).T
        return data.reshape(shape)

    def _header(
        self, key: str, stream: IO[bytes], check: HeaderCheck
    ) -> tuple[tuple[int, ...], np.dtype, bool]:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            header = np.lib.format.read_array_header_1_0(stream, MAX_HEADER_BYTES)
        elif version == (2, 0):
            header = np.lib.format.read_array_header_2_0(stream, MAX_HEADER_BYTES)
        else:
            raise self.error(
                f"is a .npy array of format version {version}; bpgpu reads 1.0 and 2.0"
            )
        shape, fortran, dtype = header
        if dtype.hasobject:
            raise self.error(
                f"holds pickled Python objects (dtype {dtype}); bpgpu never loads pickles", key
            )
        problem = check(tuple(int(n) for n in shape), dtype)
        if problem is not None:
            raise self.error(problem, key)
        return tuple(int(n) for n in shape), dtype, bool(fortran)

    def _read_into(self, key: str, stream: IO[bytes], data: np.ndarray) -> None:
        """data's bytes <- the rest of the member, a chunk at a time; reading to the member's
        end makes zipfile check its CRC."""
        flat = data.reshape(-1).view(np.uint8)
        done = 0
        while done < flat.size:
            chunk = stream.read(min(CHUNK_BYTES, flat.size - done))
            if not chunk:
                raise self.error("member ends early: the file was cut short", key)
            flat[done : done + len(chunk)] = np.frombuffer(chunk, dtype=np.uint8)
            done += len(chunk)
        if stream.read(1):
            raise self.error("member holds more data than its shape", key)
