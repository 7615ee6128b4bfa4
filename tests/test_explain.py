"""explain: the worked chain rule prints the tutorial's numbers, and every gradient it prints
is the one net.gradients computes."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest

import bpgpu
from bpgpu import cli
from bpgpu.functions import ACTIVATIONS, COMBINATIONS


def test_the_single_neuron_prints_the_tutorials_numbers(capsys):
    assert cli.main(["explain"]) == 0
    out = capsys.readouterr().out
    for number in (
        "0.8743521434846544",
        "0.3564652711035652",
        "0.009276092558183858",
        "0.027828277674551576",
        "0.09276092558183859",
    ):
        assert number in out


@pytest.mark.parametrize("output,loss", sorted(COMBINATIONS))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_printed_gradients_are_the_models(rng, activation, output, loss):
    k = 3 if output == "softmax" else 2
    net = bpgpu.MLP([3, 4, k], activation, output, loss, backend="numpy", dtype="float64", seed=1)
    net.set_weights(
        [(rng.normal(size=W.shape), rng.normal(size=b.shape)) for W, b in net.get_weights()]
    )
    x = rng.normal(size=3)
    target = np.eye(k)[1] if output == "softmax" else rng.uniform(size=k)
    text = io.StringIO()
    net.explain(x, target, file=text)
    printed = {
        m[0]: float(m[1])
        for m in re.findall(r"(dE/d[Wb]\d\[[\d,]+\]) = .* = (\S+)$", text.getvalue(), re.M)
    }
    grads = net.gradients(x.reshape(1, -1), target.reshape(1, -1))
    for l, (dW, db) in enumerate(grads, start=1):
        for (i, j), v in np.ndenumerate(dW):
            assert printed[f"dE/dW{l}[{i},{j}]"] == pytest.approx(v, rel=1e-12, abs=1e-15)
        for j, v in enumerate(db):
            assert printed[f"dE/db{l}[{j}]"] == pytest.approx(v, rel=1e-12, abs=1e-15)
    assert "E = " in text.getvalue()


def test_a_large_network_is_refused_with_the_way_out():
    net = bpgpu.MLP([64, 32, 10], backend="numpy")
    with pytest.raises(ValueError, match=r"use net\.gradients"):
        net.explain(np.zeros(64), np.eye(10)[0])


def test_explain_a_saved_model_from_the_cli(tmp_path, capsys):
    net = bpgpu.MLP([2, 2, 1], "relu", "identity", backend="numpy", dtype="float64")
    net.set_weights(
        [(np.array([[0.5, 0.6], [0.1, 0.2]]), np.zeros(2)), (np.array([[0.3], [0.4]]), np.zeros(1))]
    )
    net.save(tmp_path / "m.npz")
    assert (
        cli.main(["explain", "--model", str(tmp_path / "m.npz"), "--x", "1,2", "--target", "1"])
        == 0
    )
    assert "a2[0] = z2[0] = 0.61" in capsys.readouterr().out
    assert cli.main(["explain", "--model", str(tmp_path / "m.npz")]) == 2
