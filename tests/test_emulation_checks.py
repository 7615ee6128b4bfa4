"""Proof that each check of the CPU execution of the CUDA C can fail: the kernels of
tests/broken_kernels.cu, each with one deliberate fault, are caught by the right check
(kernels/cpu/launch.cpp) under every schedule, with a message naming the kernel, block, threads,
address and source lines; their correct forms pass every check with the same bits under every
schedule. Without the checks, the schedules and the poisoned shared memory still expose the faults
whose results depend on them. tests/test_emulation_schedules.py runs the real kernels under the
same checks; here, taking any barrier out of a real kernel makes racecheck fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from bpgpu.backends.base import BackendUnavailableError, Network
from bpgpu.backends.cuda_emulated import CHECKS, CudaEmulatedBackend, KernelCheckError
from helpers import guarded, guards_intact

SOURCE = Path(__file__).with_name("broken_kernels.cu")
SCHEDULES = ("ascending", "descending", "random:7")


def line(kernel: str, text: str, below: int = 0) -> str:
    """tests/broken_kernels.cu:N, N the first line holding ``text`` in ``kernel``'s body (or
    ``below`` lines under it)."""
    lines = SOURCE.read_text().splitlines()
    start = next(i for i, s in enumerate(lines) if f"void {kernel}(" in s)
    found = next(i for i in range(start, len(lines)) if text in lines[i])
    return f"tests/broken_kernels.cu:{found + 1 + below}"


@dataclass
class Broken:
    """A kernel of broken_kernels.cu: its launch (n elements, blocks of ``block`` threads), what
    its correct form computes, the check that catches its broken form and the message that
    check gives (a regular expression)."""

    n: int
    block: int
    want: object  # x -> the correct out (NaN where it writes nothing)
    check: str
    message: str

    def grid(self) -> int:
        return -(-self.n // self.block)


T = r"threads? \d+"  # a thread
SHARED = r"shared memory at 0x[0-9a-f]+ \(byte \d+ of the shared block\)"
KERNELS = {
    "missing_barrier": Broken(
        256,
        256,
        lambda x: x + np.r_[0, x[:-1]],
        "racecheck",
        r"racecheck: kernel missing_barrier, block \(0,0,0\): "
        r"(read after write|write after read): "
        rf"{T} (writes|reads) {SHARED} at ({line('missing_barrier', 's[t] = x[t]')}|"
        rf"{line('missing_barrier', 'out[t] =')}) and {T} (reads|writes) it at "
        rf"({line('missing_barrier', 'out[t] =')}|{line('missing_barrier', 's[t] = x[t]')}), "
        r"with no __syncthreads\(\) between",
    ),
    "partial_barrier": Broken(
        512,
        256,
        lambda x: x,
        "synccheck",
        r"synccheck: kernel partial_barrier, block \([01],0,0\): threads 100-255 exited while "
        r"threads 0-99 wait at the __syncthreads\(\) of "
        rf"{line('partial_barrier', '__syncthreads')}",
    ),
    "divergent_barrier": Broken(
        256,
        256,
        lambda x: np.roll(x, -1),
        "synccheck",
        r"synccheck: kernel divergent_barrier, block \(0,0,0\): the threads wait at different "
        r"__syncthreads\(\) call sites; threads 0, 2, 4, 6, 8, 10, ... \(128 threads\) at "
        rf"{line('divergent_barrier', '} else {', 1)}; threads 1, 3, 5, 7, 9, 11, ... \(128 "
        rf"threads\) at {line('divergent_barrier', 'if (broken && t % 2)', 1)}\n",
    ),
    "shared_two_writers": Broken(
        256,
        256,
        lambda x: np.repeat(x[::2], 2),
        "racecheck",
        rf"racecheck: kernel shared_two_writers, block \(0,0,0\): two writers: {T} writes "
        rf"{SHARED} at {line('shared_two_writers', 's[t / 2] = x[t]')} and {T} writes it at "
        rf"{line('shared_two_writers', 's[t / 2] = x[t]')}, with no __syncthreads\(\) between",
    ),
    "uninitialised_read": Broken(
        256,
        256,
        lambda x: x[::-1],
        "initcheck",
        rf"initcheck: kernel uninitialised_read, block \(0,0,0\): {T} reads {SHARED}, which no "
        rf"thread of the block has written, at {line('uninitialised_read', 'out[t] =')}",
    ),
    "shared_from_another_block": Broken(
        512,
        256,
        lambda x: np.tile(x[:256], 2),
        "initcheck",
        r"initcheck: kernel shared_from_another_block, block \(1,0,0\): "
        rf"{T} reads {SHARED}, which no thread of the block has written, at "
        rf"{line('shared_from_another_block', 'out[blockIdx.x')}",
    ),
    "out_of_bounds_write": Broken(
        250,
        256,
        lambda x: 2 * x,
        "memcheck",
        r"memcheck: kernel out_of_bounds_write, block \(0,0,0\): thread 250 writes 4 bytes of "
        r"global memory at 0x[0-9a-f]+, 0 bytes past the end of argument 1 \(an array of 1000 "
        rf"bytes\) at {line('out_of_bounds_write', 'out[i] =')}",
    ),
    "global_two_writers": Broken(
        300,
        128,
        lambda x: np.r_[x[::2], np.full(150, np.nan, np.float32)],
        "racecheck",
        r"racecheck: kernel global_two_writers: two writers: thread \d+ of block \(\d,0,0\) "
        r"writes global memory at 0x[0-9a-f]+ \(byte \d+ of argument 1\) at "
        rf"{line('global_two_writers', 'out[i / 2]')} and thread \d+ of block \(\d,0,0\) "
        rf"writes it at {line('global_two_writers', 'out[i / 2]')}, so the value left depends "
        "on their order",
    ),
}


@pytest.fixture(scope="module")
def emulation():
    """emulation(schedule, checks): a backend running broken_kernels.cu."""
    try:
        CudaEmulatedBackend.probe()
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    made: dict[tuple[str, str], CudaEmulatedBackend] = {}

    def get(schedule: str, checks: str) -> CudaEmulatedBackend:
        key = (schedule, checks)
        if key not in made:
            made[key] = CudaEmulatedBackend(schedule=schedule, checks=checks, sources=[SOURCE])
        return made[key]

    return get


def launch(xp: CudaEmulatedBackend, name: str, broken: int) -> np.ndarray:
    """Run kernel ``name`` on x = 1, 2, ..., n; its output (guarded, NaN where not written)."""
    spec = KERNELS[name]
    x = np.arange(1, spec.n + 1, dtype=np.float32)
    out = guarded(np.full(spec.n, np.nan, np.float32))
    geometry = ((spec.grid(), 1, 1), (spec.block, 1, 1))
    xp._launch(name, "broken", geometry, (x, out, np.int32(spec.n), np.int32(broken)), "")
    return out


@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("name", KERNELS)
def test_the_broken_kernel_is_caught_by_its_check(emulation, name, schedule):
    with pytest.raises(KernelCheckError) as caught:
        launch(emulation(schedule, "all"), name, broken=1)
    message = str(caught.value)
    assert re.match(KERNELS[name].message, message), message
    assert f"schedule {schedule}" in message


@pytest.mark.parametrize("name", KERNELS)
def test_its_check_alone_catches_it(emulation, name):
    check = KERNELS[name].check
    with pytest.raises(KernelCheckError, match=f"^{check}: kernel {name}"):
        launch(emulation("descending", check), name, broken=1)


@pytest.mark.parametrize("name", KERNELS)
def test_the_correct_form_passes_every_check_with_the_same_bits(emulation, name):
    outs = [launch(emulation(s, "all"), name, broken=0) for s in SCHEDULES]
    want = KERNELS[name].want(np.arange(1, KERNELS[name].n + 1, dtype=np.float32))
    for schedule, out in zip(SCHEDULES, outs, strict=True):
        np.testing.assert_array_equal(out, want, err_msg=f"{name} under {schedule}")
        assert guards_intact(out)


def test_without_checks_the_schedules_disagree_on_a_missing_barrier(emulation):
    """The reviewer's probe: in ascending order the lower neighbour has always written its slot
    already, so the broken kernel looked right; in descending order it has not, and the
    poisoned slot shows."""
    outs = {s: launch(emulation(s, "none"), "missing_barrier", broken=1) for s in SCHEDULES}
    want = KERNELS["missing_barrier"].want(np.arange(1, 257, dtype=np.float32))
    np.testing.assert_array_equal(outs["ascending"], want)
    assert np.isnan(outs["descending"][1:]).all()


def test_without_checks_shared_memory_does_not_outlive_a_block(emulation):
    """Shared memory is poisoned before every block, so a block reading what another block
    left gets NaN, as it gets garbage on a GPU."""
    out = launch(emulation("ascending", "none"), "shared_from_another_block", broken=1)
    np.testing.assert_array_equal(out[:256], np.arange(1, 257))
    assert np.isnan(out[256:]).all()


def test_without_memcheck_the_guard_catches_the_stray_write_after_the_fact(emulation):
    out = launch(emulation("ascending", "none"), "out_of_bounds_write", broken=1)
    assert not guards_intact(out)


def test_a_partial_barrier_completes_silently_without_synccheck(emulation):
    """What the reviewer saw before synccheck existed."""
    out = launch(emulation("ascending", "none"), "partial_barrier", broken=1)
    np.testing.assert_array_equal(out, np.arange(1, 513))


def test_the_checks_are_named_and_validated(monkeypatch):
    assert list(CHECKS) == ["synccheck", "racecheck", "initcheck", "memcheck"]
    with pytest.raises(ValueError, match="checks must be among"):
        CudaEmulatedBackend(checks="racecheck,bogus")
    with pytest.raises(ValueError, match="schedule must be one of"):
        CudaEmulatedBackend(schedule="sideways")
    xp = CudaEmulatedBackend(schedule="random:5", checks="all")
    assert xp.describe()["checks"] == "synccheck,racecheck,initcheck,memcheck"
    assert xp.describe()["schedule"] == "random:5" and xp.instrumented
    assert not CudaEmulatedBackend(checks="synccheck").instrumented
    assert CudaEmulatedBackend().checks == ("synccheck",)  # the default: cheap, no rebuild
    monkeypatch.setenv("BPGPU_EMULATION_CHECKS", "racecheck,memcheck")
    monkeypatch.setenv("BPGPU_EMULATION_SCHEDULE", "descending")
    xp = CudaEmulatedBackend()  # what the registered backend takes in a test run
    assert (xp.schedule, xp.checks) == ("descending", ("racecheck", "memcheck"))
    monkeypatch.setenv("BPGPU_EMULATION_CHECKS", "1")
    assert CudaEmulatedBackend().checks == tuple(CHECKS)
    monkeypatch.setenv("BPGPU_EMULATION_CHECKS", "racecheck,bogus")
    with pytest.raises(ValueError, match="BPGPU_EMULATION_CHECKS='racecheck,bogus' in the env"):
        CudaEmulatedBackend()
    monkeypatch.setenv("BPGPU_EMULATION_SCHEDULE", "sideways")
    with pytest.raises(ValueError, match="BPGPU_EMULATION_SCHEDULE='sideways' in the env"):
        CudaEmulatedBackend(checks="none")


#: a user's script: a model on the registered backend, trained and described
USER_SCRIPT = """
import numpy as np, bpgpu
net = bpgpu.MLP([5, 7, 3], activation="tanh", backend="cuda-emulated", seed=0)
rng = np.random.default_rng(0)
net.fit(rng.normal(size=(20, 5)), rng.integers(0, 3, 20), epochs=2, batch_size=8, verbose=0)
print(net.backend.describe()["schedule"], net.backend.describe()["checks"])
print(sum(net.backend.launched.values()), net.backend.instrumented)
"""


def test_any_user_model_runs_under_the_checks_from_the_environment():
    """BPGPU_EMULATION_CHECKS=1 and a schedule set outside a script that trains on
    backend="cuda-emulated": its kernels run on the instrumented build, under every check."""
    try:
        CudaEmulatedBackend.probe()
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    env = {**os.environ, "BPGPU_EMULATION_CHECKS": "1", "BPGPU_EMULATION_SCHEDULE": "random:3"}
    done = subprocess.run(
        [sys.executable, "-c", USER_SCRIPT], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    described, ran = done.stdout.splitlines()
    assert described == "random:3 synccheck,racecheck,initcheck,memcheck"
    launches, instrumented = ran.split()
    assert int(launches) > 0 and instrumented == "True"


# ---- the real kernels' barriers are watched -------------------------------------------------

KERNEL_DIR = Path(__file__).resolve().parents[1] / "kernels"


def _barriers() -> list[tuple[str, int]]:
    """Every __syncthreads() of the real kernels: (file name, line number)."""
    found = []
    for path in sorted([*KERNEL_DIR.glob("*.cu"), *KERNEL_DIR.glob("*.cuh")]):
        for number, text in enumerate(path.read_text().splitlines(), start=1):
            if "__syncthreads();" in text:
                found.append((path.name, number))
    return found


@pytest.mark.parametrize("name,number", _barriers(), ids=lambda v: str(v))
def test_removing_any_barrier_of_the_real_kernels_is_caught(tmp_path, name, number):
    """A copy of the kernels with one __syncthreads() taken out: the op that runs it, on the
    instrumented build of that copy, fails racecheck (the copy's families include the mutated
    file before the real one)."""
    try:
        CudaEmulatedBackend.probe()
    except BackendUnavailableError as exc:
        pytest.skip(str(exc))
    copy = tmp_path / "kernels"
    shutil.copytree(KERNEL_DIR, copy)
    lines = (copy / name).read_text().splitlines(keepends=True)
    lines[number - 1] = lines[number - 1].replace("__syncthreads();", ";  // removed")
    (copy / name).write_text("".join(lines))
    sources = [copy / f"{f}.cu" for f in ("dense_forward", "output", "gather")]
    xp = CudaEmulatedBackend(checks="all", sources=sources)
    rng = np.random.default_rng(0)
    X, W = rng.standard_normal((67, 33)), rng.standard_normal((33, 5)) / 6
    net = Network([W], [np.zeros(5)], [], "softmax", "cross_entropy")
    ws = xp.workspace([33, 5], 67, np.dtype(np.float64))
    Y = np.eye(5)[rng.integers(0, 5, 67)]
    with pytest.raises(KernelCheckError, match=r"^racecheck: kernel \w+"):
        # a GEMM (gemm.cuh), the fused last layer (its own barrier), the stats reduction
        xp.evaluate_step(net, ws, X, Y, np.arange(67), np.zeros(2))
