from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import bpgpu
from bpgpu import cli, serialization
from bpgpu.backends import REGISTRY
from helpers import backend_or_skip

QUICK = ["--epochs", "3", "--quiet", "--backend", "numpy"]
#: what ``bpgpu train`` prints after training, each followed by its number
KEYS = ("final training loss", "test accuracy")


def _run(capsys, argv: list[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_train_digits_prints_accuracy_time_backend(capsys):
    argv = ["train", "--dataset", "digits", "--layers", "64-32-16-10", "--optimizer", "adam"]
    code, out, err = _run(capsys, [*argv, "--lr", "0.01", *QUICK])
    assert code == 0, err
    accuracy = float(out.split("test accuracy:")[1].split()[0])
    assert 0.5 < accuracy <= 1.0  # 3 epochs of Adam at 0.01 learn most of digits
    assert "wall time:" in out and "backend: numpy" in out


@pytest.mark.parametrize("backend", [b for b in REGISTRY if b != "numpy"])
def test_train_xor_on_every_backend_gives_numpys_result(capsys, tmp_path, backend):
    """``bpgpu train --dataset xor --backend cuda-emulated`` (and every other backend that runs
    here): the loss and accuracy numpy prints, and a saved model with numpy's weights."""
    backend_or_skip(backend)
    printed, weights = {}, {}
    for name in ("numpy", backend):
        model = tmp_path / f"{name}.npz"
        argv = ["train", "--dataset", "xor", "--backend", name, "--quiet", "--save", str(model)]
        code, out, err = _run(capsys, argv)
        assert code == 0, err
        assert f"backend: {name}" in out
        printed[name] = [float(re.search(f"{key}:? (\\S+)", out)[1]) for key in KEYS]
        weights[name] = bpgpu.load(model, backend=name).get_weights()
    assert printed[backend] == pytest.approx(printed["numpy"], rel=1e-4)
    for (W, b), (W0, b0) in zip(weights[backend], weights["numpy"], strict=True):
        np.testing.assert_allclose(W, W0, rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(b, b0, rtol=1e-4, atol=1e-6)


def test_train_shows_progress_bar(capsys):
    code, _out, err = _run(
        capsys, ["train", "--dataset", "xor", "--epochs", "2", "--backend", "numpy"]
    )
    assert code == 0
    assert "2/2" in err  # tqdm writes its bar to stderr


def test_train_iris_validation_save_and_plot(tmp_path, capsys):
    model, png = tmp_path / "m.npz", tmp_path / "loss.png"
    argv = [
        "train",
        "--dataset",
        "iris",
        "--layers",
        "4-8-3",
        "--optimizer",
        "rmsprop",
        "--validation-split",
        "0.2",
        "--save",
        str(model),
        "--plot",
        str(png),
        *QUICK,
    ]
    code, out, err = _run(capsys, argv)
    assert code == 0, err
    assert "validation loss" in out
    assert png.read_bytes()[:4] == b"\x89PNG"
    net = bpgpu.load(model, backend="numpy")
    assert list(net.layers) == [4, 8, 3]


@pytest.mark.parametrize(
    "layers, message",
    [
        ("64-x-10", "sizes joined by '-'"),
        ("64", "at least two sizes"),
        ("64-0-10", "at least two sizes"),
        ("63-32-10", "64 features"),
        ("64-32-9", "10 classes"),
    ],
)
def test_bad_layers_exit_2(capsys, layers, message):
    code, _out, err = _run(capsys, ["train", "--dataset", "digits", "--layers", layers, *QUICK])
    assert code == 2
    assert err.startswith("bpgpu: error:") and message in err
    assert "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--dataset", "nope"], "invalid choice"),
        (["train", "--epochs", "many"], "argument --epochs: must be an integer"),
        (["train", "--dataset", "digits", "--data-dir", "/x"], "only for --dataset mnist"),
        (["train", "--dataset", "mnist", "--data-dir", "/no/such/dir"], "not a folder"),
        (["train", "--dataset", "xor", "--backend", "cupy"], "cupy"),
        (["train", "--dataset", "xor", "--backend", "tpu"], "backend must be one of"),
        (["train", "--dataset", "xor", "--epochs", "0"], "epochs"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_user_errors_exit_2(capsys, argv, message):
    code, _out, err = _run(capsys, argv)
    assert code == 2
    assert "bpgpu: error:" in err and message in err
    assert "Traceback" not in err


def test_info(capsys):
    code, out, _err = _run(capsys, ["info"])
    assert code == 0
    assert f"bpgpu {bpgpu.__version__}" in out and f"numpy {np.__version__}" in out
    lines = {line.split(":")[0]: line for line in out.splitlines() if not line.startswith(" ")}
    assert lines["numpy"] == "numpy: available"
    if "cupy" not in bpgpu.available_backends():
        assert "not available" in lines["cupy"] and len(lines["cupy"]) > len(
            "cupy: not available: "
        )


def test_bench_is_forwarded(monkeypatch):
    seen = []
    import bpgpu.benchmark

    monkeypatch.setattr(bpgpu.benchmark, "main", lambda argv: seen.append(argv) or 0)
    assert cli.main(["bench", "--quick", "--systems", "numpy"]) == 0
    assert seen == [["--quick", "--systems", "numpy"]]


def test_bench_missing_module(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bpgpu.benchmark", None)
    code, _out, err = _run(capsys, ["bench"])
    assert code == 2 and "benchmark" in err


def test_python_dash_m():
    result = subprocess.run(
        [sys.executable, "-m", "bpgpu", "train", "--layers", "1-2"],
        capture_output=True,
        check=False,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("bpgpu: error:") and "Traceback" not in result.stderr


def test_train_checkpoint_and_resume_equal_one_run(tmp_path, capsys):
    """--checkpoint on a 2-epoch run, then --resume to 4 epochs: the saved model equals a
    4-epoch run's."""
    base = ["train", "--dataset", "iris", "--layers", "4-8-3", *QUICK[2:]]
    code, _, err = _run(capsys, [*base, "--epochs", "4", "--save", str(tmp_path / "whole.npz")])
    assert code == 0, err
    ckpt = tmp_path / "c.npz"
    code, _, err = _run(capsys, [*base, "--epochs", "2", "--checkpoint", str(ckpt)])
    assert code == 0, err
    argv = [*base, "--epochs", "4", "--resume", str(ckpt), "--save", str(tmp_path / "r.npz")]
    code, out, err = _run(capsys, argv)
    assert code == 0, err
    assert f"resuming the run in {ckpt}: 2 epochs done" in out and "for 4 epochs" in out
    whole, resumed = (bpgpu.load(tmp_path / n, backend="numpy") for n in ("whole.npz", "r.npz"))
    for (W1, b1), (W2, b2) in zip(whole.get_weights(), resumed.get_weights(), strict=True):
        np.testing.assert_array_equal(W1, W2)
        np.testing.assert_array_equal(b1, b2)
    # the run does start from the checkpoint: from other weights there, it ends elsewhere
    saved = serialization.read_checkpoint(ckpt)
    W, b = saved.model.weights[0]
    saved.model.weights[0] = (W * 0.5, b)
    serialization.save_checkpoint(ckpt, saved)
    assert _run(capsys, argv)[0] == 0
    moved = bpgpu.load(tmp_path / "r.npz", backend="numpy")
    assert not np.array_equal(moved.get_weights()[0][0], whole.get_weights()[0][0])


def test_resume_with_other_arguments_is_a_user_error(tmp_path, capsys):
    base = ["train", "--dataset", "iris", "--layers", "4-8-3", *QUICK[2:]]
    ckpt = tmp_path / "c.npz"
    assert _run(capsys, [*base, "--epochs", "2", "--checkpoint", str(ckpt)])[0] == 0
    code, _, err = _run(capsys, [*base, "--batch-size", "8", "--resume", str(ckpt)])
    assert code == 2 and "batch_size=8 differs" in err and "Traceback" not in err


def test_ctrl_c_says_where_it_stopped_and_still_writes_the_outputs(tmp_path):
    """A real SIGINT to `bpgpu train` once its first checkpoint exists: exit status 130, one
    line saying where it stopped (no traceback), and --save, --plot and the checkpoint of the
    model as it stands."""
    files = {name: tmp_path / name for name in ("m.npz", "loss.png", "c.npz")}
    argv = [
        "train", "--dataset", "digits", "--layers", "64-32-10", "--epochs", "100000",
        "--backend", "numpy", "--quiet", "--save", str(files["m.npz"]),
        "--plot", str(files["loss.png"]), "--checkpoint", str(files["c.npz"]),
    ]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "bpgpu", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not files["c.npz"].exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == cli.INTERRUPTED, err
    assert "Traceback" not in err
    assert "bpgpu: training interrupted " in err and "epoch" in err
    assert "model saved to" in out and "test accuracy:" in out
    assert files["loss.png"].read_bytes()[:4] == b"\x89PNG"
    saved = bpgpu.load(files["m.npz"], backend="numpy")
    checkpoint = serialization.read_checkpoint(files["c.npz"])
    for (W1, _), (W2, _) in zip(saved.get_weights(), checkpoint.model.weights, strict=True):
        np.testing.assert_array_equal(W1, W2)  # both the model as it stood
