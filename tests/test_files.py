"""Atomic writes: a file bpgpu writes holds its old content or all of the new, whatever happens
to the process while it writes."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import bpgpu
from bpgpu import serialization
from bpgpu.files import atomic_write, write_text

ROOT = Path(__file__).resolve().parents[1]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_new_content_replaces_the_old(tmp_path):
    path = tmp_path / "f.txt"
    write_text(path, "old")
    write_text(path, "new")
    assert path.read_text() == "new" and leftovers(tmp_path) == []


def test_an_error_while_writing_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.txt"
    write_text(path, "old")
    with pytest.raises(RuntimeError, match="midway"), atomic_write(path) as f:
        f.write(b"half of the new")
        raise RuntimeError("midway")
    assert path.read_text() == "old" and leftovers(tmp_path) == []


def test_a_failed_model_save_leaves_the_old_model(tmp_path, monkeypatch):
    net = bpgpu.MLP([3, 4, 2], backend="numpy", seed=0)
    path = tmp_path / "m.npz"
    net.save(path)
    before = path.read_bytes()

    def savez_halfway(f, **arrays):
        f.write(b"PK\x03\x04 a few bytes of a zip")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", savez_halfway)
    with pytest.raises(OSError, match="disk full"):
        bpgpu.MLP([3, 4, 2], backend="numpy", seed=1).save(path)
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_permissions_of_the_old_file_are_kept(tmp_path):
    path = tmp_path / "f.txt"
    write_text(path, "old")
    os.chmod(path, 0o640)
    write_text(path, "new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    fresh = tmp_path / "g.txt"
    write_text(fresh, "x")
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o666 & ~umask  # as open() would make it


def test_a_folder_that_does_not_exist(tmp_path):
    with pytest.raises(FileNotFoundError):
        write_text(tmp_path / "no" / "f.txt", "x")


#: the child overwrites ``path`` with model a, then b, then a ... until it is killed
_SAVER = """
import sys, bpgpu
path, a, b = sys.argv[1:4]
models = [bpgpu.load(a, backend="numpy"), bpgpu.load(b, backend="numpy")]
print("saving", flush=True)
i = 0
while True:
    models[i % 2].save(path)
    i += 1
"""


def test_a_process_killed_while_saving_leaves_a_whole_model(tmp_path):
    """SIGKILL at 12 moments spread over several saves of a 24 MB model: the file always loads,
    and holds one of the two models, whole."""
    nets = [bpgpu.MLP([1024, 2048, 2048, 10], backend="numpy", seed=s) for s in (1, 2)]
    sources = [tmp_path / "a.npz", tmp_path / "b.npz"]
    for net, source in zip(nets, sources, strict=True):
        net.save(source)
    weights = [serialization.read(source).weights for source in sources]
    path = tmp_path / "model.npz"
    start = time.perf_counter()
    nets[0].save(path)
    seconds = time.perf_counter() - start  # one save
    for kill in range(12):
        child = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_SAVER), str(path), *map(str, sources)],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        try:
            assert child.stdout is not None and child.stdout.readline() == "saving\n"
            time.sleep(seconds * (0.5 + kill / 4))  # from mid-way through the first save on
        finally:
            os.kill(child.pid, signal.SIGKILL)
            child.wait()
        saved = serialization.read(path)  # loads whole ...
        assert any(  # ... and is one of the two models
            all(np.array_equal(W, V) for (W, _), (V, _) in zip(saved.weights, w, strict=True))
            for w in weights
        )
        for name in leftovers(tmp_path):  # a killed save leaves its temporary file
            (tmp_path / name).unlink()
    assert bpgpu.load(path, backend="numpy").layers == (1024, 2048, 2048, 10)
