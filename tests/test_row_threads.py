"""The NumPy backend's threaded steps: the same training as on one thread, BLAS held to one
thread and given back, worker errors and np.errstate carried to the caller."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

import bpgpu
from bpgpu.backends.numpy_backend import NumpyBackend
from bpgpu.backends.row_threads import RowThreads


def backend(threads: int) -> NumpyBackend:
    """A NumPy backend that splits every op of every step across ``threads`` threads."""
    xp = NumpyBackend(threads=threads, min_step_elements=0)
    xp.rows.min_op_elements = 0
    return xp


@pytest.mark.parametrize(
    "layers,activation,output,optimizer",
    [
        ([5, 7, 3], "relu", "softmax", bpgpu.Adam(lr=0.01, weight_decay=0.01)),
        ([5, 9, 4, 1], "sigmoid", "sigmoid", bpgpu.RMSprop(lr=0.01)),
        ([5, 33, 2], "tanh", "identity", bpgpu.SGD(lr=0.05, momentum=0.9, nesterov=True)),
    ],
)
def test_threaded_fit_matches_one_thread(rng, layers, activation, output, optimizer):
    # 131 samples in batches of 33: a last batch of 32, each split 11/11/11 or so on 3 threads
    X = rng.normal(size=(131, layers[0]))
    if output == "softmax":
        y = rng.integers(0, layers[-1], 131)
    elif output == "sigmoid":
        y = rng.integers(0, 2, (131, 1)).astype(float)
    else:
        y = rng.normal(size=(131, layers[-1]))
    fits = {}
    for threads in (1, 3):
        xp = backend(threads)
        net = bpgpu.MLP(
            layers, activation=activation, output=output, backend=xp, dtype="float64", seed=1
        )
        history = net.fit(X, y, epochs=3, batch_size=33, optimizer=optimizer, seed=2)
        fits[threads] = (net.get_weights(), history["loss"], net.predict_proba(X))
        assert xp.rows._workers == threads - 1  # the threaded run did use its threads
    (w1, loss1, p1), (w3, loss3, p3) = fits[1], fits[3]
    for (W1, b1), (W3, b3) in zip(w1, w3, strict=True):
        np.testing.assert_allclose(W3, W1, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(b3, b1, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(loss3, loss1, rtol=1e-10)
    np.testing.assert_allclose(p3, p1, rtol=1e-10, atol=1e-12)


def test_parallel_holds_blas_to_one_thread_and_gives_it_back():
    threadpoolctl = pytest.importorskip("threadpoolctl")

    def blas_threads() -> list[int]:
        return [
            i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"
        ]

    rows = RowThreads(threads=2, min_step_elements=100)
    with threadpoolctl.threadpool_limits(2, user_api="blas"):
        before = blas_threads()
        with rows.parallel(99):  # too small: nothing changes, one part
            assert blas_threads() == before
            assert rows.split(10, 10**9) == [slice(0, 10)]
        with rows.parallel(100):
            assert set(blas_threads()) == {1}
            assert rows.split(10, 10**9) == [slice(0, 5), slice(5, 10)]
            assert rows.split(10, 10) == [slice(0, 10)]  # an op below min_op_elements
        assert blas_threads() == before
        assert rows.split(10, 10**9) == [slice(0, 10)]


def test_split_covers_every_row_once():
    rows = RowThreads(threads=4, min_step_elements=0)
    rows.min_op_elements = 0
    with rows.parallel(0):
        for m in (1, 3, 4, 33, 127):
            parts = rows.split(m, 0)
            assert len(parts) == min(4, m)
            assert [i for p in parts for i in range(p.start, p.stop)] == list(range(m))


def test_a_worker_error_reaches_the_caller_after_every_part_finished():
    rows = RowThreads(threads=3)
    finished = []

    def work(i: int) -> int:
        if i == 1:
            raise ValueError("part 1 failed")
        threading.Event().wait(0.05)
        finished.append(i)
        return i

    with pytest.raises(ValueError, match="part 1 failed"):
        rows.map(work, [0, 1, 2])
    assert sorted(finished) == [0, 2]
    assert rows.map(lambda i: i * i, [1, 2, 3]) == [1, 4, 9]


def test_errstate_reaches_the_worker_threads():
    rows = RowThreads(threads=2)
    parts = [np.zeros(2, np.float32), np.full(2, 1000.0, np.float32)]  # the second on a worker
    with np.errstate(over="raise"), pytest.raises(FloatingPointError):
        rows.map(np.exp, parts)
    with np.errstate(over="ignore"):
        assert np.isinf(rows.map(np.exp, parts)[1]).all()


def test_threads_must_be_a_positive_integer():
    with pytest.raises(ValueError, match="threads must be at least 1; got 0"):
        NumpyBackend(threads=0)
    for bad in (2.5, "2", True):
        with pytest.raises(TypeError, match="threads must be an integer"):
            NumpyBackend(threads=bad)
    with pytest.raises(ValueError, match="min_step_elements must be at least 0; got -1"):
        NumpyBackend(min_step_elements=-1)


def test_describe_says_how_many_threads():
    assert NumpyBackend(threads=3).describe()["threads"].startswith("3 (")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # fork() of a threaded process
def test_a_forked_child_gets_its_own_threads():
    rows = RowThreads(threads=2)
    assert rows.map(abs, [-1, -2]) == [1, 2]  # the parent's pool now exists
    pid = os.fork()
    if pid == 0:  # the child: the parent's pool has no threads here
        code = 1
        try:
            code = 0 if rows.map(abs, [-3, -4]) == [3, 4] else 1
        finally:
            os._exit(code)
    deadline = time.monotonic() + 20
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung waiting for the parent's worker threads")
    assert os.waitstatus_to_exitcode(done[1]) == 0


def test_a_split_weight_gradient_keeps_its_partial_sums_with_the_optimizer_state(rng):
    # made on the first step, reused by the next: a step allocates nothing
    xp = backend(3)
    W, b = rng.normal(size=(4, 6)), rng.normal(size=6)
    state = xp.optimizer_state(bpgpu.SGD(lr=0.1), W, b)
    kept = {}
    for _ in range(2):
        with xp.rows.parallel(0):
            xp.weight_update(rng.normal(size=(9, 4)), rng.normal(size=(9, 6)), W, b, state)
        buffers = state.scratch
        assert len(buffers.partials) == 2  # two threads past the first
        arrays = {"gW": buffers.gW, "gb": buffers.gb, "tW": buffers.tW, "tb": buffers.tb}
        for i, (gW, gb) in enumerate(buffers.partials):
            arrays.update({f"gW{i}": gW, f"gb{i}": gb})
        assert all(kept.setdefault(k, v) is v for k, v in arrays.items())
