"""What a newcomer runs into first: verbose levels and the progress bar, validation splits that
say what they hold out, History.plot, the CLI's help, version and early errors, bench's help,
BPGPU_BACKEND, and install hints that work from a checkout."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import numpy as np
import pytest

import bpgpu
from bpgpu import cli


def test_datasets_are_reachable_after_import_bpgpu():
    assert callable(bpgpu.datasets.mnist) and callable(bpgpu.datasets.digits)


@pytest.mark.parametrize("verbose", [0, 1, 2, False, True])
def test_verbose_levels(rng, capsys, verbose):
    pytest.importorskip("tqdm")
    X, y = rng.normal(size=(40, 3)), rng.integers(0, 2, 40)
    bpgpu.MLP([3, 2], backend="numpy", seed=0).fit(X, y, epochs=2, batch_size=2, verbose=verbose)
    err = capsys.readouterr().err
    if verbose in (0, False):
        assert err == ""
    elif verbose == 2:
        assert err.count("\n") == 2 and err.startswith("epoch 1/2 - loss ")
    else:  # a bar over the 2 x 20 steps: it moves within an epoch
        assert "40/40" in err and "epoch 2/2" in err


@pytest.mark.parametrize("bad,exc", [(3, ValueError), ("yes", TypeError), (1.0, TypeError)])
def test_bad_verbose(rng, bad, exc):
    with pytest.raises(exc, match="verbose must be 0, 1 or 2"):
        bpgpu.MLP([3, 2], backend="numpy").fit(rng.normal(size=(4, 3)), [0, 1, 0, 1], verbose=bad)


def sorted_iris():
    datasets = pytest.importorskip("sklearn.datasets")
    return datasets.load_iris(return_X_y=True)  # sorted by class


def test_the_last_rows_of_sorted_data_are_held_out_with_a_warning():
    X, y = sorted_iris()
    net = bpgpu.MLP([4, 5, 3], backend="numpy", seed=0)
    with pytest.warns(UserWarning, match=r"the last 30 rows .* lack classes \[0, 1\]"):
        hist = net.fit(X, y, epochs=1, validation_split=0.2)
    assert hist["val_accuracy"][0] in (0.0, 1.0)  # one class only


@pytest.mark.parametrize("mode", ["stratified", "shuffle"])
def test_stratified_and_shuffled_hold_outs(recwarn, mode):
    X, y = sorted_iris()
    net = bpgpu.MLP([4, 5, 3], backend="numpy", seed=0)
    seen = []
    original = net._evaluate

    def evaluate(Xd, Yd, n):
        seen.append(np.bincount(np.asarray(Yd).argmax(axis=1), minlength=3))
        return original(Xd, Yd, n)

    net._evaluate = evaluate
    net.fit(X, y, epochs=1, validation_split=0.2, validation_mode=mode)
    assert not [w for w in recwarn if issubclass(w.category, UserWarning)]
    counts = seen[0]
    assert counts.sum() == 30 and (counts > 0).all()
    if mode == "stratified":
        assert counts.tolist() == [10, 10, 10]


def test_bad_validation_mode():
    with pytest.raises(ValueError, match="validation_mode must be one of"):
        bpgpu.MLP([3, 2], backend="numpy").fit(np.zeros((4, 3)), [0, 1, 0, 1], validation_mode="x")


def test_history_plot(rng):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    X, y = rng.normal(size=(30, 3)), rng.integers(0, 2, 30)
    hist = bpgpu.MLP([3, 2], backend="numpy", seed=0).fit(X, y, epochs=3, validation_split=0.2)
    ax = hist.plot()
    labels = ax.get_legend().get_texts()
    assert {t.get_text() for t in labels} == {"loss", "accuracy", "val_loss", "val_accuracy"}
    with pytest.raises(ValueError, match="names must be among"):
        hist.plot(["f1"])


def run(capsys, argv):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_help_shows_defaults_and_version(capsys):
    code, out, _ = run(capsys, ["train", "--help"])
    assert (
        code == 0 and "default: digits" in out and "default: 30" in out and "default: torch" in out
    )
    code, out, _ = run(capsys, ["--version"])
    assert code == 0 and out.strip() == f"bpgpu {bpgpu.__version__}"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--seed", "-1"], "argument --seed: must be at least 0; got -1"),
        (["train", "--epochs", "0"], "argument --epochs: must be at least 1"),
        (["train", "--batch-size", "x"], "argument --batch-size: must be an integer"),
    ],
)
def test_cli_numbers_are_checked_naming_the_option(capsys, argv, message):
    code, _, err = run(capsys, argv)
    assert code == 2 and message in err


def test_cli_save_into_a_missing_folder_fails_before_training(capsys, tmp_path):
    code, out, err = run(
        capsys, ["train", "--dataset", "xor", "--save", str(tmp_path / "no" / "m.npz")]
    )
    assert code == 2 and "does not exist" in err and "training" not in out


def test_bench_help_reads_plainly():
    done = subprocess.run(
        [sys.executable, "-m", "bpgpu", "bench", "--help"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "``" not in done.stdout and "issue2" not in done.stdout and "cpu-compare" in done.stdout


def test_bench_without_matplotlib_says_so_first(monkeypatch, capsys):
    from bpgpu.benchmark import command

    real = importlib.util.find_spec
    monkeypatch.setattr(
        command.importlib.util,
        "find_spec",
        lambda name: None if name == "matplotlib" else real(name),
    )
    assert command._can_plot() is False
    assert "matplotlib is not installed" in capsys.readouterr().out


def test_bpgpu_backend_from_the_environment_is_named(monkeypatch, capsys):
    monkeypatch.setenv("BPGPU_BACKEND", "nonsense")
    with pytest.raises(ValueError, match="BPGPU_BACKEND='nonsense' in the environment"):
        bpgpu.MLP([3, 2])
    code, out, _ = run(capsys, ["info"])
    assert code == 0 and "BPGPU_BACKEND='nonsense'" in out
    monkeypatch.setenv("BPGPU_BACKEND", "numpy")
    code, out, _ = run(capsys, ["info"])
    assert "auto: numpy (BPGPU_BACKEND='numpy')" in out


def test_install_hints_work_from_a_checkout(monkeypatch):
    from bpgpu import datasets

    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"pip install -e '\.\[data\]'"):
        datasets.digits()
