"""Checkpoints and exact resume, the optimizer state kept across fits, and Ctrl-C during fit.

A resumed run must end bitwise equal to an uninterrupted one on the NumPy and reference
backends (same process or another), and within the suite's tolerance on the CPU emulation of
the CUDA kernels. Ctrl-C is a real SIGINT sent to this process from inside a step, between the
updates of two layers, so an unguarded fit would stop with half an update applied.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import bpgpu
from bpgpu import serialization
from bpgpu.backends import get_backend
from bpgpu.backends.base import Backend
from helpers import F32, assert_close, backend_or_skip

ROOT = Path(__file__).resolve().parents[1]

#: fit's settings for the resume tests: 83 training rows, 6 steps an epoch, early stopping on
FIT = {"epochs": 4, "batch_size": 14, "seed": 3, "validation_split": 0.2, "patience": 3}
EXACT = ["numpy", "reference"]


def model(backend: str = "numpy", layers=(6, 9, 5, 3), dtype: str = "float32") -> bpgpu.MLP:
    return bpgpu.MLP(
        list(layers), activation=["tanh", "relu"], backend=backend, dtype=dtype, seed=1
    )


@pytest.fixture
def data(rng):
    return rng.normal(size=(103, 6)), rng.integers(0, 3, 103)


def weights_of(net: bpgpu.MLP) -> list[np.ndarray]:
    return [a for pair in net.get_weights() for a in pair]


def assert_same_weights(a: bpgpu.MLP, b: bpgpu.MLP) -> None:
    for i, (x, y) in enumerate(zip(weights_of(a), weights_of(b), strict=True)):
        np.testing.assert_array_equal(x, y, err_msg=f"parameter {i}")


def assert_same_history(a: bpgpu.History, b: bpgpu.History) -> None:
    assert a.history == b.history
    assert (a.epochs, a.stopped_epoch, a.best_epoch) == (b.epochs, b.stopped_epoch, b.best_epoch)


def interrupt_at(monkeypatch, xp: Backend, update: int, times: int = 1) -> None:
    """SIGINT to this process ``times`` times, in the middle of weight update number
    ``update`` (counted over all layers and steps), before that layer is updated."""
    real = xp._weight_update
    count = [0]

    def update_then_maybe_interrupt(*args):
        count[0] += 1
        if count[0] == update:
            for _ in range(times):
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.01)  # the handler runs before the next bytecode after the signal
        return real(*args)

    monkeypatch.setattr(xp, "_weight_update", update_then_maybe_interrupt)


OPTIMIZERS = {
    "adam": lambda: bpgpu.Adam(lr=0.01),
    "rmsprop": lambda: bpgpu.RMSprop(lr=0.005),
    "nesterov": lambda: bpgpu.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
}


# ---- resume ------------------------------------------------------------------------------------


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
@pytest.mark.parametrize("backend", EXACT)
def test_resume_after_ctrl_c_equals_the_uninterrupted_run(
    tmp_path, monkeypatch, data, backend, optimizer
):
    """Interrupted in epoch 2 (between the layer updates of a step), resumed in a fresh model
    from the checkpoint: the weights, History and predictions equal an uninterrupted run's."""
    backend_or_skip(backend)
    X, y = data
    whole = model(backend)
    hist = whole.fit(X, y, optimizer=OPTIMIZERS[optimizer](), **FIT)

    path = tmp_path / "run.npz"
    part = model(backend)
    with monkeypatch.context() as patch:
        # 6 steps an epoch, 3 updates a step: step 9 (epoch 2's third), its second layer
        interrupt_at(patch, part.backend, update=3 * 8 + 2)
        with pytest.raises(bpgpu.TrainingInterrupted) as info:
            part.fit(X, y, optimizer=OPTIMIZERS[optimizer](), checkpoint=path, **FIT)
    assert (info.value.epoch, info.value.step, info.value.checkpoint) == (2, 3, str(path))
    assert info.value.history.epochs == [1] and part.history is info.value.history

    resumed = model(backend)
    again = resumed.fit(X, y, optimizer=OPTIMIZERS[optimizer](), resume=path, **FIT)
    assert_same_history(again, hist)
    assert_same_weights(resumed, whole)
    np.testing.assert_array_equal(resumed.predict_proba(X), whole.predict_proba(X))


def test_resume_on_the_cuda_emulation_matches_within_tolerance(tmp_path, monkeypatch, rng):
    """The CUDA C kernels (on the CPU): interrupted and resumed equals uninterrupted within
    the suite's tolerance rule (tiny shapes: the emulation is slow)."""
    backend_or_skip("cuda-emulated")
    X, y = rng.normal(size=(24, 5)), rng.integers(0, 3, 24)
    layers, settings = (5, 4, 3, 3), {"epochs": 3, "batch_size": 8, "seed": 2}
    whole = model("cuda-emulated", layers)
    hist = whole.fit(X, y, optimizer=bpgpu.Adam(lr=0.02), **settings)
    path = tmp_path / "run.npz"
    part = model("cuda-emulated", layers)
    with monkeypatch.context() as patch:
        # 3 steps an epoch, 3 updates a step: step 5 (epoch 2's second), its second layer
        interrupt_at(patch, part.backend, update=3 * 4 + 2)
        with pytest.raises(bpgpu.TrainingInterrupted):
            part.fit(X, y, optimizer=bpgpu.Adam(lr=0.02), checkpoint=path, **settings)
    resumed = model("cuda-emulated", layers)
    again = resumed.fit(X, y, optimizer=bpgpu.Adam(lr=0.02), resume=path, **settings)
    assert again.epochs == hist.epochs
    for i, (got, want) in enumerate(zip(weights_of(resumed), weights_of(whole), strict=True)):
        assert_close(got, want.astype(np.float64), None, F32, f"parameter {i}", 8)
    assert_close(np.array(again["loss"]), np.array(hist["loss"]), None, F32, "loss", 8)


def test_resume_in_another_process_after_sigkill(tmp_path, rng):
    """A training process killed (SIGKILL) at an arbitrary moment: the checkpoint file it
    leaves is whole, and resuming from it here ends bitwise equal to an uninterrupted run."""
    X, y = rng.normal(size=(3000, 6)), rng.integers(0, 3, 3000)
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    path = tmp_path / "run.npz"
    child = textwrap.dedent(
        f"""
        import numpy as np, bpgpu
        X, y = np.load({str(tmp_path / "X.npy")!r}), np.load({str(tmp_path / "y.npy")!r})
        net = bpgpu.MLP([6, 9, 5, 3], activation=["tanh", "relu"], backend="numpy", seed=1)
        net.fit(X, y, epochs=500, batch_size=4, optimizer=bpgpu.Adam(lr=0.001), seed=3,
                checkpoint={str(path)!r})
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", child], cwd=ROOT)
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if path.exists() and serialization.read_checkpoint(path).epochs_done >= 2:
                break
            time.sleep(0.005)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    saved = serialization.read_checkpoint(path)  # whole, though killed at any moment
    epochs = saved.epochs_done + 2
    settings = {"epochs": epochs, "batch_size": 4, "seed": 3}
    resumed = model()
    hist = resumed.fit(X, y, optimizer=bpgpu.Adam(lr=0.001), resume=path, **settings)
    whole = model()
    want = whole.fit(X, y, optimizer=bpgpu.Adam(lr=0.001), **settings)
    assert_same_history(hist, want)
    assert_same_weights(resumed, whole)


def test_resume_of_compiled_epochs_equals_the_uninterrupted_run(tmp_path, monkeypatch, data):
    """numba-cpu trains runs of epochs in one compiled call each, never past a due checkpoint:
    3 epochs checkpointed every 2, resumed to 7, equal one 7-epoch run bit for bit."""
    backend_or_skip("numba-cpu")
    X, y = data
    settings = {"batch_size": 14, "seed": 3}
    whole = model("numba-cpu")
    calls: list[int] = []
    compiled = type(whole.backend).train_epochs

    def counted(xp, net, ws, X_, Y_, orders, states):
        calls.append(len(orders))
        return compiled(xp, net, ws, X_, Y_, orders, states)

    monkeypatch.setattr(type(whole.backend), "train_epochs", counted)
    hist = whole.fit(X, y, optimizer=bpgpu.Adam(lr=0.01), epochs=7, **settings)
    assert calls == [7]
    path = tmp_path / "run.npz"
    short = model("numba-cpu")
    short.fit(
        X,
        y,
        optimizer=bpgpu.Adam(lr=0.01),
        epochs=3,
        checkpoint=path,
        checkpoint_every=2,
        **settings,
    )
    assert calls[1:] == [2, 1]  # epochs 1-2, checkpoint, epoch 3, checkpoint
    longer = model("numba-cpu")
    assert_same_history(longer.fit(X, y, resume=path, epochs=7, **settings), hist)
    assert calls[3:] == [4]
    assert_same_weights(longer, whole)


def test_resume_at_an_epoch_end_and_training_longer(tmp_path, data):
    """A run of 2 epochs resumed to 5 equals a run of 5; a finished run resumed with its own
    epochs changes nothing."""
    X, y = data
    settings = {**FIT, "epochs": 5}
    whole = model()
    hist = whole.fit(X, y, optimizer=bpgpu.Adam(lr=0.01), **settings)
    path = tmp_path / "run.npz"
    short = model()
    short.fit(X, y, optimizer=bpgpu.Adam(lr=0.01), checkpoint=path, **{**FIT, "epochs": 2})
    assert serialization.read_checkpoint(path).epochs_done == 2
    longer = model()
    assert_same_history(longer.fit(X, y, resume=path, checkpoint=path, **settings), hist)
    assert_same_weights(longer, whole)
    finished = model()
    assert_same_history(finished.fit(X, y, resume=path, **settings), hist)
    assert_same_weights(finished, whole)


def test_resume_under_early_stopping_stops_where_the_uninterrupted_run_stops(
    tmp_path, monkeypatch, rng
):
    X, y = rng.normal(size=(60, 6)), rng.integers(0, 3, 60)
    settings = {"epochs": 40, "batch_size": 12, "validation_split": 0.25, "patience": 2}
    whole = model()
    hist = whole.fit(X, y, optimizer=bpgpu.Adam(lr=0.05), **settings)
    assert hist.stopped_epoch is not None and hist.best_epoch < hist.stopped_epoch
    path = tmp_path / "run.npz"
    part = model()
    with monkeypatch.context() as patch:  # in the epoch after the best one
        interrupt_at(patch, part.backend, update=3 * (4 * hist.best_epoch + 2) + 1)
        with pytest.raises(bpgpu.TrainingInterrupted):
            part.fit(X, y, optimizer=bpgpu.Adam(lr=0.05), checkpoint=path, **settings)
    resumed = model()
    assert_same_history(resumed.fit(X, y, resume=path, **settings), hist)
    assert_same_weights(resumed, whole)  # the best epoch's, put back at the end


def test_checkpoint_every(tmp_path, data, monkeypatch):
    X, y = data
    written = []
    real = serialization.save_checkpoint

    def record(path, ckpt):
        written.append((ckpt.epochs_done, ckpt.batches_done))
        real(path, ckpt)

    monkeypatch.setattr(serialization, "save_checkpoint", record)
    model().fit(X, y, epochs=5, checkpoint=tmp_path / "c.npz", checkpoint_every=2)
    assert written == [(2, 0), (4, 0), (5, 0)]  # every second epoch and the last


def test_checkpoint_file_is_plain_npz_and_a_model(tmp_path, data):
    """No pickle; bpgpu.load reads the model in it (the run's weights at that point)."""
    X, y = data
    net = model()
    settings = {**FIT, "patience": None}
    net.fit(X, y, optimizer=bpgpu.Adam(lr=0.01), checkpoint=tmp_path / "c.npz", **settings)
    with np.load(tmp_path / "c.npz", allow_pickle=False) as d:
        assert all(d[k].dtype != object for k in d.files)
        assert "optimizer_W1_exp_avg" in d.files and "optimizer_t" in d.files
    assert_same_weights(bpgpu.load(tmp_path / "c.npz", backend="numpy"), net)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"batch_size": 13}, "batch_size=13 differs"),
        ({"shuffle": False}, "shuffle=False differs"),
        ({"patience": 4}, "patience=4 differs"),
        ({"validation_split": 0.25}, "X and y differ"),
        ({"X": 1e-3}, "X and y differ"),
        ({"optimizer": bpgpu.Adam(lr=0.02)}, "optimizer .* differs from the checkpoint's"),
        ({"epochs": 1}, "epochs=1 is fewer"),
        ({"layers": (6, 9, 4, 3)}, "layers"),
        ({"dtype": "float64"}, "dtype"),
    ],
)
def test_resume_refuses_another_run_and_changes_nothing(tmp_path, data, change, match):
    X, y = data
    path = tmp_path / "run.npz"
    model().fit(X, y, optimizer=bpgpu.Adam(lr=0.01), checkpoint=path, **{**FIT, "epochs": 2})
    net = model(layers=change.pop("layers", (6, 9, 5, 3)), dtype=change.pop("dtype", "float32"))
    net.fit(X, y, epochs=1, optimizer=bpgpu.SGD(lr=0.1, momentum=0.9))
    before, optimizer = weights_of(net), net.optimizer
    kwargs = {**FIT, "optimizer": bpgpu.Adam(lr=0.01), **change}
    with pytest.raises(ValueError, match=match):
        net.fit(X + kwargs.pop("X", 0.0), y, resume=path, **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(before, weights_of(net), strict=True))
    assert net.optimizer is optimizer


def test_resume_from_a_plain_model_file(tmp_path, data):
    X, y = data
    net = model()
    net.save(tmp_path / "m.npz")
    with pytest.raises(bpgpu.ModelFileError, match="without training state"):
        net.fit(X, y, resume=tmp_path / "m.npz")


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"checkpoint": "/no/such/folder/run.npz"}, ValueError, "checkpoint.*does not exist"),
        ({"checkpoint": 3}, TypeError, "checkpoint"),
        ({"resume": b"run.npz"}, TypeError, "resume"),
        ({"checkpoint": "c.npz", "checkpoint_every": 0}, ValueError, "checkpoint_every"),
        ({"reset": "yes"}, TypeError, "reset"),
    ],
)
def test_bad_checkpoint_arguments(data, kwargs, exc, match):
    X, y = data
    net = model()
    before = weights_of(net)
    with pytest.raises(exc, match=match):
        net.fit(X, y, epochs=1, **kwargs)
    assert all(np.array_equal(a, b) for a, b in zip(before, weights_of(net), strict=True))


# ---- the optimizer state across fits -----------------------------------------------------------


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_two_one_epoch_fits_equal_one_two_epoch_fit(data, optimizer):
    X, y = data
    opt = OPTIMIZERS[optimizer]()
    once = model()
    once.fit(X, y, epochs=2, batch_size=16, optimizer=opt, shuffle=False)
    twice = model()
    twice.fit(X, y, epochs=1, batch_size=16, optimizer=opt, shuffle=False)
    twice.fit(X, y, epochs=1, batch_size=16, optimizer=opt, shuffle=False)
    assert_same_weights(twice, once)
    implied = model()  # no optimizer: the model's own continues
    implied.fit(X, y, epochs=1, batch_size=16, optimizer=opt, shuffle=False)
    implied.fit(X, y, epochs=1, batch_size=16, shuffle=False)
    assert_same_weights(implied, once)
    assert implied.optimizer is opt


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_a_new_optimizer_or_reset_starts_the_state_afresh(data, optimizer):
    X, y = data
    opt = OPTIMIZERS[optimizer]()
    kw = {"epochs": 1, "batch_size": 16, "shuffle": False}
    fresh = model()
    fresh.fit(X, y, optimizer=opt, **kw)
    fresh.fit(X, y, optimizer=OPTIMIZERS[optimizer](), **kw)  # a new object: fresh state
    reset = model()
    reset.fit(X, y, optimizer=opt, **kw)
    reset.fit(X, y, optimizer=opt, reset=True, **kw)
    assert_same_weights(reset, fresh)
    continued = model()
    continued.fit(X, y, optimizer=opt, epochs=2, batch_size=16, shuffle=False)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(weights_of(continued), weights_of(fresh), strict=True)
    )


def test_a_failed_fit_leaves_the_optimizer_state_as_it_was(data, monkeypatch):
    X, y = data
    opt = bpgpu.Adam(lr=0.01)
    kw = {"epochs": 1, "batch_size": 16, "shuffle": False, "optimizer": opt}
    net, clean = model(), model()
    for m in (net, clean):
        m.fit(X, y, **kw)
    real, calls = net.backend.train_step, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("injected failure")
        return real(*args)

    with monkeypatch.context() as patch:
        patch.setattr(net.backend, "train_step", failing)
        with pytest.raises(RuntimeError, match="injected"):
            net.fit(X, y, **kw)
    assert_same_weights(net, clean)
    net.fit(X, y, **kw)  # continues the state as it was before the failed fit
    clean.fit(X, y, **kw)
    assert_same_weights(net, clean)


# ---- Ctrl-C ------------------------------------------------------------------------------------


def test_ctrl_c_keeps_the_last_completed_step(data, monkeypatch):
    """SIGINT between two layers' updates of the 3rd step of epoch 2: fit finishes that step
    and stops; the weights equal 1 epoch and then 3 steps, the History lists epoch 1."""
    X, y = data
    opt = bpgpu.Adam(lr=0.01)
    net = model()
    kw = {"batch_size": 16, "shuffle": False, "optimizer": opt}
    with monkeypatch.context() as patch:
        interrupt_at(patch, net.backend, update=3 * (7 + 3) - 1)  # 7 steps an epoch
        with pytest.raises(bpgpu.TrainingInterrupted, match="epoch 2 after step 3") as info:
            net.fit(X, y, epochs=5, **kw)
    assert isinstance(info.value, KeyboardInterrupt)
    assert info.value.history.epochs == [1] and len(info.value.history["loss"]) == 1
    assert net.history is info.value.history
    expected = model()
    expected.fit(X, y, epochs=1, **kw)
    expected.fit(X[:48], y[:48], epochs=1, **kw)  # the same optimizer: its state continues
    assert_same_weights(net, expected)
    net.fit(X, y, epochs=1, **kw)  # the model goes on from there, state and all
    expected.fit(X, y, epochs=1, **kw)
    assert_same_weights(net, expected)


def test_ctrl_c_in_an_epochs_last_step_ends_the_epoch_first(tmp_path, data, monkeypatch):
    """SIGINT inside the last step of epoch 2: the epoch is recorded and checkpointed as
    ended, and resuming from that checkpoint equals the uninterrupted run."""
    X, y = data
    kw = {"batch_size": 16, "seed": 3, "epochs": 4}
    whole = model()
    hist = whole.fit(X, y, optimizer=bpgpu.Adam(lr=0.01), **kw)
    path = tmp_path / "run.npz"
    part = model()
    with monkeypatch.context() as patch:
        interrupt_at(patch, part.backend, update=3 * 13 + 2)  # 7 steps an epoch: step 14
        with pytest.raises(bpgpu.TrainingInterrupted, match="after epoch 2") as info:
            part.fit(X, y, optimizer=bpgpu.Adam(lr=0.01), checkpoint=path, **kw)
    assert info.value.history.epochs == [1, 2]
    saved = serialization.read_checkpoint(path)
    assert (saved.epochs_done, saved.batches_done) == (2, 0)
    resumed = model()
    assert_same_history(resumed.fit(X, y, optimizer=bpgpu.Adam(lr=0.01), resume=path, **kw), hist)
    assert_same_weights(resumed, whole)


def test_second_ctrl_c_stops_inside_the_step(data, monkeypatch):
    """Two SIGINTs inside one step: fit stops at once and the model goes back to the last
    completed epoch's weights, its optimizer state dropped."""
    X, y = data
    opt = bpgpu.Adam(lr=0.01)
    net = model()
    kw = {"batch_size": 16, "shuffle": False, "optimizer": opt}
    with monkeypatch.context() as patch:
        interrupt_at(patch, net.backend, update=3 * (7 + 3) - 1, times=2)
        with pytest.raises(bpgpu.TrainingInterrupted, match="at once") as info:
            net.fit(X, y, epochs=5, **kw)
    assert info.value.history.epochs == [1]
    expected = model()
    expected.fit(X, y, epochs=1, **kw)
    assert_same_weights(net, expected)
    net.fit(X, y, epochs=1, **kw)
    expected.fit(X, y, epochs=1, reset=True, **kw)
    assert_same_weights(net, expected)


def test_ctrl_c_restores_python_handler(data, monkeypatch):
    X, y = data
    model().fit(X, y, epochs=1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with monkeypatch.context() as patch:
        interrupt_at(patch, get_backend("numpy"), update=2)
        with pytest.raises(bpgpu.TrainingInterrupted):
            model().fit(X, y, epochs=1)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


# ---- damaged and tampered checkpoints ----------------------------------------------------------


def _meta(change):
    def apply(fields: dict) -> None:
        meta = json.loads(str(fields["checkpoint"]))
        change(meta)
        fields["checkpoint"] = np.array(json.dumps(meta))

    return apply


def _set(key, value):
    return lambda fields: fields.__setitem__(key, np.asarray(value))


TAMPERED = {
    "rng-state-text": (_meta(lambda m: m["rng"]["state"].update(state="x")), "rng.state.state"),
    "rng-kind": (_meta(lambda m: m["rng"].update(bit_generator="MT19937")), "checkpoint.rng"),
    "optimizer-kind": (_meta(lambda m: m["optimizer"].update(kind="lbfgs")), "optimizer.kind"),
    "optimizer-lr": (
        _meta(lambda m: m["optimizer"]["params"].update(lr=-1)),
        "checkpoint.optimizer.params",
    ),
    "epochs-negative": (_meta(lambda m: m.update(epochs_done=-1)), "checkpoint.epochs_done"),
    "epochs-fraction": (_meta(lambda m: m.update(epochs_done=1.5)), "checkpoint.epochs_done"),
    "steps-too-many": (_meta(lambda m: m.update(batches_done=10**6)), "checkpoint.batches_done"),
    "stats-text": (_meta(lambda m: m.update(stats=["a", 1])), "checkpoint.stats"),
    "batch-size-bool": (_meta(lambda m: m["run"].update(batch_size=True)), "run.batch_size"),
    "json": (lambda f: f.__setitem__("checkpoint", np.array("{")), "checkpoint"),
    "order-repeats": (lambda f: f.__setitem__("order", np.zeros_like(f["order"])), "order"),
    "order-float": (lambda f: f.__setitem__("order", f["order"].astype(float)), "order"),
    "t-float": (lambda f: f.__setitem__("optimizer_t", f["optimizer_t"] + 0.5), "optimizer_t"),
    "slot-nan": (
        lambda f: f.__setitem__("optimizer_W1_exp_avg", f["optimizer_W1_exp_avg"] * np.nan),
        "optimizer_W1_exp_avg",
    ),
    "slot-extra": (_set("optimizer_W1_velocity", np.zeros((6, 9), np.float32)), None),
    "slot-missing": (lambda f: f.pop("optimizer_b2_exp_avg"), None),
    "history-length": (lambda f: f.__setitem__("history_loss", f["history_loss"][:1]), None),
    "history-epochs": (_set("history_epochs", [1, 3]), "history_epochs"),
}


@pytest.mark.parametrize("name", list(TAMPERED))
def test_tampered_checkpoints_name_the_file_and_the_field(tmp_path, data, name):
    X, y = data
    path = tmp_path / "run.npz"
    model().fit(X, y, optimizer=bpgpu.Adam(lr=0.01), checkpoint=path, **{**FIT, "epochs": 2})
    with np.load(path) as d:
        fields = {k: d[k] for k in d.files}
    change, field = TAMPERED[name]
    change(fields)
    np.savez(tmp_path / "bad.npz", **fields)
    with pytest.raises(bpgpu.ModelFileError) as info:
        serialization.read_checkpoint(tmp_path / "bad.npz")
    message = str(info.value)
    assert message.startswith(f"checkpoint file {str(tmp_path / 'bad.npz')!r}")
    if field is not None:
        assert field in message and field in (info.value.field or "")
    net = model()
    before = weights_of(net)
    with pytest.raises(bpgpu.ModelFileError):
        net.fit(X, y, resume=tmp_path / "bad.npz", **FIT)
    assert all(np.array_equal(a, b) for a, b in zip(before, weights_of(net), strict=True))


def test_compiled_runs_of_epochs_are_bounded_by_their_samples(monkeypatch):
    """A small network on many samples: each compiled call holds at most 2^20 samples of
    shuffled orders (they and the per-update numbers are made beforehand), and the calls
    together train every epoch."""
    backend_or_skip("numba-cpu")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(2**16, 2)), rng.integers(0, 2, 2**16)
    net = bpgpu.MLP([2, 2, 1], "tanh", "sigmoid", backend="numba-cpu", seed=0)
    calls: list[int] = []
    compiled = type(net.backend).train_epochs

    def counted(xp, net_, ws, X_, Y_, orders, states):
        calls.append(orders.size)
        return compiled(xp, net_, ws, X_, Y_, orders, states)

    monkeypatch.setattr(type(net.backend), "train_epochs", counted)
    history = net.fit(X, y, epochs=40, batch_size=64, optimizer=bpgpu.SGD(lr=0.1))
    assert history.epochs == list(range(1, 41))
    assert calls == [2**20, 2**20, 2**19]  # 16 + 16 + 8 epochs of 2^16 samples
