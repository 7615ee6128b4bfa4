"""Writing files so that a crash never leaves half of one: every file bpgpu writes (models,
checkpoints, benchmark reports, plots) goes through ``atomic_write``.

The content goes to a temporary file in the target's own folder (so the final rename stays on
one file system), is flushed and fsynced, and is then renamed over the target, which
``os.replace`` does atomically on POSIX and Windows. A process killed at any moment leaves
either the old file or the new one, never a mixture; the folder is fsynced too, so the rename
itself survives a power cut. A kill can leave the temporary file behind: it is named
``.<target name>.<random>.tmp``, next to the target.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["atomic_write", "write_bytes", "write_text"]


def _new_file_mode(target: Path) -> int:
    """The permission bits the target would get from a plain ``open``: the old file's, else
    0o666 less the umask (mkstemp's own 0o600 would hide a model from its other readers)."""
    try:
        return os.stat(target).st_mode & 0o7777
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (where the platform can open a folder)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # Windows cannot open a folder; its rename is durable by itself
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the data itself is synced
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[IO[bytes]]:
    """A binary file to write ``path``'s new content into; on leaving the block without an
    exception it replaces ``path`` in one step. On an exception (KeyboardInterrupt included)
    the temporary file is removed and ``path`` is untouched."""
    target = Path(os.fspath(path))
    folder = target.parent
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(target))
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_folder(folder)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """``path`` holds ``data``, written atomically."""
    with atomic_write(path) as f:
        f.write(data)


def write_text(path: str | os.PathLike, text: str) -> None:
    """``path`` holds ``text`` as UTF-8, written atomically."""
    write_bytes(path, text.encode("utf-8"))
