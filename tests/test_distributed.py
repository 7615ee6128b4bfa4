"""Data-parallel training over MPI, run for real: ``mpiexec -n 2`` and ``-n 3`` in child
processes (tests/distributed_worker.py is what every rank runs), each under a timeout that
kills the whole launch.

Checked: a distributed fit equals one process on the same global batches (1e-12 in float64,
every host backend); every rank ends with bitwise identical weights; each epoch takes every
sample once, in a new order, and uneven data (a last batch smaller than the ranks) does not
hang; an exception on one rank ends the job within seconds, with its message; ranks given
different data are refused; ``mpiexec -n 2 bpgpu train`` works, rank 0 alone printing and
writing; without mpiexec, a World of one. The NCCL path needs two GPUs (``gpu`` marker).
Skipped, with the reason, without mpi4py or mpiexec (``pip install -e '.[mpi-wheel]'``).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import bpgpu
from bpgpu.backends import REGISTRY, BackendUnavailableError, get_backend
from bpgpu.backends.base import HostMemory
from bpgpu.distributed.communicators import (
    NCCL_UNIQUE_ID_BYTES,
    pack_unique_id,
    unpack_unique_id,
)

HERE = Path(__file__).parent
WORKER = HERE / "distributed_worker.py"
#: no launch here needs more than a few seconds; past this it hangs
TIMEOUT = 120


def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"  # the mpich wheel's, in this venv
    return str(beside) if beside.exists() else shutil.which("mpiexec")


MPIEXEC = _mpiexec()
MISSING = (
    "mpi4py is not installed"
    if importlib.util.find_spec("mpi4py") is None
    else "no mpiexec found"
    if MPIEXEC is None
    else None
)
needs_mpi = pytest.mark.skipif(
    MISSING is not None, reason=f"{MISSING}: pip install -e '.[mpi-wheel]'"
)


def run(cmd: list[str], timeout: float = TIMEOUT, cwd: Path = HERE) -> subprocess.CompletedProcess:
    """``cmd`` in its own process group, all of which is killed past ``timeout`` (mpiexec's
    ranks included), failing the test."""
    env = {k: v for k, v in os.environ.items() if k != "BPGPU_BACKEND"}
    with subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    ) as proc:  # fmt: skip
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"{' '.join(cmd)} hung past {timeout} s:\n{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def launch(ranks: int, *args: str, timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
    assert MPIEXEC is not None
    return run([MPIEXEC, "-n", str(ranks), sys.executable, str(WORKER), *args], timeout)


def results(out: Path, ranks: int) -> list[dict[str, np.ndarray]]:
    found = []
    for r in range(ranks):
        with np.load(out / f"rank{r}.npz", allow_pickle=False) as f:
            found.append(dict(f))
    return found


def assert_ok(done: subprocess.CompletedProcess) -> None:
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"


def _host_backends() -> list[str]:
    """The registered backends whose arrays live on the host and that run here (the NumPy
    backends, the reference, the CPU execution of the CUDA C): MPI all-reduces their arrays."""
    names = []
    for name in REGISTRY:
        try:
            backend = get_backend(name)
        except BackendUnavailableError:
            continue
        if isinstance(backend, HostMemory):
            names.append(name)
    return names


#: (backend, ranks, optimizer): 2 and 3 ranks, every rule, uneven shards
CASES = [("numpy", 2, "adam"), ("numpy", 3, "nesterov"), ("reference", 3, "rmsprop")]
CASES += [(name, 2, "adam") for name in _host_backends() if name not in ("numpy", "reference")]


@needs_mpi
@pytest.mark.parametrize(("backend", "ranks", "optimizer"), CASES, ids=lambda v: str(v))
def test_distributed_fit_equals_one_process(tmp_path, backend, ranks, optimizer):
    """In float64, the weights and every epoch's loss, accuracy and validation figures of a
    fit over the ranks equal one process's on the same global batches to 1e-12, and every
    rank's weights are the same bit for bit."""
    assert_ok(launch(ranks, "equal", str(tmp_path), backend, optimizer))
    found = results(tmp_path, ranks)
    for r in range(ranks):
        with np.load(tmp_path / f"world{r}.npz") as f:
            assert list(f["world"]) == [r, ranks, r]  # one node: local rank = rank
        np.testing.assert_array_equal(found[r]["weights"], found[0]["weights"])
    first = found[0]
    names = [k for k in first if not k.startswith("alone_")]
    assert {"weights", "loss", "accuracy", "val_loss", "val_accuracy"} <= set(names)
    for name in names:
        got, want = first[name], first[f"alone_{name}"]
        scale = max(1.0, float(np.max(np.abs(want))))
        err = float(np.max(np.abs(got - want)))
        assert err <= 1e-12 * scale, f"{name}: {ranks} ranks differ from one process by {err}"


def _epochs(found: list[dict], name: str, ranks: int, batch: int, n: int) -> list[np.ndarray]:
    """Each epoch's global sample order, put together from the ranks' shards, after checking
    that every step's shards are disjoint, contiguous in rank order and cover its batch."""
    counts = [f[f"{name}_counts"] for f in found]
    steps_per_epoch = math.ceil(n / batch)
    assert all(len(c) == 3 * steps_per_epoch for c in counts), "ranks took different steps"
    starts = [np.concatenate([[0], np.cumsum(c)]) for c in counts]
    order = []
    for step in range(3 * steps_per_epoch):
        size = min(batch, n - (step % steps_per_epoch) * batch)
        shards = []
        for r in range(ranks):
            want = size * (r + 1) // ranks - size * r // ranks
            assert counts[r][step] == want, f"step {step}: rank {r} took {counts[r][step]} rows"
            shards.append(found[r][f"{name}_rows"][starts[r][step] : starts[r][step + 1]])
        order.append(np.concatenate(shards))
    return [
        np.concatenate(order[e * steps_per_epoch : (e + 1) * steps_per_epoch]) for e in range(3)
    ]


@needs_mpi
def test_each_epoch_takes_every_sample_once_in_a_new_order(tmp_path):
    """3 ranks, 50 samples in batches of 8 (the last batch of 2 leaves rank 0 without rows),
    3 epochs: every step's shards split its batch, every epoch takes each sample once, the
    orders differ; then 2 samples on 3 ranks. Every rank runs every step (or the job would
    hang) and ends with the same weights."""
    assert_ok(launch(3, "order", str(tmp_path)))
    found = results(tmp_path, 3)
    epochs = _epochs(found, "large", 3, 8, 50)
    for order in epochs:
        np.testing.assert_array_equal(np.sort(order), np.arange(50))
    assert len({tuple(order) for order in epochs}) == 3, "an epoch repeated another's order"
    small = _epochs(found, "small", 3, 8, 2)
    for order in small:
        np.testing.assert_array_equal(np.sort(order), np.arange(2))
    for f in found:
        assert np.all(np.isfinite(f["small_loss"]))
        for name in ("large", "small"):
            np.testing.assert_array_equal(f[f"{name}_weights"], found[0][f"{name}_weights"])
            np.testing.assert_array_equal(f[f"{name}_loss"], found[0][f"{name}_loss"])


@needs_mpi
def test_an_exception_on_one_rank_ends_the_job(tmp_path):
    """Rank 1 raises while rank 0 waits for it in the allreduce: the job ends within seconds,
    not at the timeout, with rank 1's message and a failing status."""
    start = time.perf_counter()
    done = launch(2, "fail", str(tmp_path), timeout=60)
    seconds = time.perf_counter() - start
    output = done.stdout + done.stderr
    assert done.returncode != 0, output[-3000:]
    assert "rank 1 fails on purpose" in output
    assert seconds < 20, f"the job took {seconds:.1f} s to end"


@needs_mpi
def test_ranks_with_different_data_are_refused(tmp_path):
    done = launch(2, "differ", str(tmp_path), timeout=60)
    assert done.returncode != 0
    assert "the ranks called fit with different data or settings" in done.stderr


@needs_mpi
def test_mpiexec_bpgpu_train(tmp_path):
    """``mpiexec -n 2 bpgpu train`` trains over both processes: one report, one epoch line per
    epoch and one model file, from rank 0, and the model equals one process's ``bpgpu train``
    (float64, 1e-12)."""
    bpgpu_cmd = str(Path(sys.executable).parent / "bpgpu")
    args = [
        "train", "--dataset", "iris", "--layers", "4-8-3", "--epochs", "3", "--batch-size",
        "16", "--backend", "numpy", "--dtype", "float64", "--validation-split", "0.2",
        "--verbose", "2",
    ]  # fmt: skip
    assert MPIEXEC is not None
    done = run(
        [MPIEXEC, "-n", "2", bpgpu_cmd, *args, "--save", "parallel.npz", "--checkpoint", "c.npz"],
        cwd=tmp_path,
    )
    assert_ok(done)
    assert "(float64, 2 processes)" in done.stdout
    assert done.stdout.count("test accuracy:") == 1
    assert done.stdout.count("model saved to parallel.npz") == 1
    assert done.stderr.count("epoch 3/3") == 1
    assert (tmp_path / "c.npz").exists()
    assert_ok(run([bpgpu_cmd, *args, "--save", "alone.npz"], cwd=tmp_path))
    parallel = bpgpu.load(tmp_path / "parallel.npz").get_weights()
    alone = bpgpu.load(tmp_path / "alone.npz").get_weights()
    for (W, b), (Wa, ba) in zip(parallel, alone, strict=True):
        np.testing.assert_allclose(W, Wa, rtol=0, atol=1e-12)
        np.testing.assert_allclose(b, ba, rtol=0, atol=1e-12)
    assert not list(tmp_path.glob(".*.tmp")), "a half-written file was left behind"


XOR = ["train", "--dataset", "xor", "--layers", "2-4-2", "--batch-size", "1", "--verbose", "0",
       "--backend", "numpy", "--dtype", "float64"]  # fmt: skip


def _bpgpu_under_mpiexec(*args: str) -> list[str]:
    assert MPIEXEC is not None
    return [MPIEXEC, "-n", "2", str(Path(sys.executable).parent / "bpgpu"), *XOR, *args]


@needs_mpi
def test_a_distributed_run_resumes_exactly(tmp_path):
    """3 epochs with a checkpoint, then resumed to 6 under mpiexec: the model equals 6
    epochs never interrupted, bit for bit."""
    assert_ok(run(_bpgpu_under_mpiexec("--epochs", "3", "--checkpoint", "c.npz"), cwd=tmp_path))
    resumed = ["--epochs", "6", "--resume", "c.npz", "--save", "resumed.npz"]
    assert_ok(run(_bpgpu_under_mpiexec(*resumed), cwd=tmp_path))
    assert_ok(run(_bpgpu_under_mpiexec("--epochs", "6", "--save", "whole.npz"), cwd=tmp_path))
    resumed_weights = bpgpu.load(tmp_path / "resumed.npz").get_weights()
    for (W, b), (Ww, bw) in zip(
        resumed_weights, bpgpu.load(tmp_path / "whole.npz").get_weights(), strict=True
    ):
        np.testing.assert_array_equal(W, Ww)
        np.testing.assert_array_equal(b, bw)


@needs_mpi
def test_ctrl_c_stops_every_rank_after_the_same_step(tmp_path):
    """Ctrl-C to mpiexec (which passes it to both ranks): both stop after the same step (the
    flag rides in the gradient allreduce), rank 0 writes the checkpoint and reports, and the
    job ends with status 130 instead of hanging in a collective."""
    cmd = _bpgpu_under_mpiexec("--epochs", "1000000", "--checkpoint", "c.npz")
    with subprocess.Popen(
        cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    ) as proc:  # fmt: skip
        deadline = time.monotonic() + 60
        while not (tmp_path / "c.npz").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate()
            pytest.fail(f"the job hung after Ctrl-C:\n{out[-2000:]}\n{err[-2000:]}")
    assert proc.returncode == 130, out[-2000:] + err[-2000:]
    # The signal lands inside an epoch or between two: an XOR epoch is a few steps.
    reports = re.findall(r"bpgpu: training interrupted (?:in|after) epoch \d+", err)
    assert len(reports) == 1, err[-2000:]
    assert out.count("test accuracy:") == 1


@needs_mpi
def test_without_mpiexec_one_process(tmp_path):
    """Started without mpiexec, init() is a World of one and fit(distributed=True) is the
    ordinary fit, bit for bit."""
    assert_ok(run([sys.executable, str(WORKER), "alone", str(tmp_path)]))
    with np.load(tmp_path / "rank0.npz") as f:
        np.testing.assert_array_equal(f["distributed"], f["alone"])


def test_the_distributed_argument_is_checked():
    net = bpgpu.MLP([3, 4, 2], backend="numpy", seed=0)
    before = net.get_weights()
    X, y = np.ones((8, 3)), np.arange(8) % 2
    with pytest.raises(TypeError, match="distributed must be True, False, None or a World"):
        net.fit(X, y, distributed="yes")
    for (W, b), (W0, b0) in zip(net.get_weights(), before, strict=True):
        np.testing.assert_array_equal(W, W0)
        np.testing.assert_array_equal(b, b0)
    assert net.history is None


@pytest.mark.parametrize(
    "uid",
    [bytes(range(128)), tuple(range(-64, 64))],
    ids=["bytes (CuPy 14)", "tuple (older CuPy)"],
)
def test_an_nccl_unique_id_crosses_mpi_as_bytes(uid):
    """The id NCCL's ranks rendezvous with travels as 129 uint8 (no pickle) and comes back in
    the form CuPy gave it."""
    packed = pack_unique_id(uid)
    assert packed.dtype == np.uint8 and packed.shape == (NCCL_UNIQUE_ID_BYTES + 1,)
    assert unpack_unique_id(packed) == uid
    with pytest.raises(ValueError, match="128 bytes"):
        pack_unique_id(bytes(5))


def _gpus() -> int:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:
        return 0


@pytest.mark.gpu
@needs_mpi
@pytest.mark.skipif(_gpus() < 2, reason="needs two CUDA GPUs and CuPy with NCCL")
@pytest.mark.parametrize("backend", ["cupy", "numba"])
def test_nccl_on_two_gpus(tmp_path, backend):
    """On two GPUs: each rank on its own GPU, NCCL all-reducing CuPy arrays; the fit equals
    one process's (float64). Never run yet: no machine with two GPUs has been available."""
    assert_ok(launch(2, "equal", str(tmp_path), backend, "adam"))
    found = results(tmp_path, 2)
    np.testing.assert_array_equal(found[1]["weights"], found[0]["weights"])
    for r in range(2):
        with np.load(tmp_path / f"device{r}.npz") as f:
            assert int(f["device"]) == r
    np.testing.assert_allclose(found[0]["weights"], found[0]["alone_weights"], atol=1e-10)
