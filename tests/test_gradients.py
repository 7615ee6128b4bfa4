"""net.gradients against central finite differences of net.loss, in float64, for every
hidden activation x every valid (output, loss) pair, on random small networks."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

import bpgpu
from bpgpu.functions import ACTIVATIONS, COMBINATIONS

H = 1e-6


def targets(rng: np.random.Generator, m: int, n: int, output: str) -> np.ndarray:
    if output == "softmax":
        return rng.integers(0, n, m)  # labels: one-hot inside
    if output == "sigmoid":
        return rng.uniform(size=(m, n))  # soft targets in [0, 1]
    return rng.normal(size=(m, n))


def random_weights(rng, layers):
    return [
        (rng.normal(size=(a, b)) / np.sqrt(a) * 1.5, rng.normal(size=b) * 0.5)
        for a, b in itertools.pairwise(layers)
    ]


def numeric_gradients(net: bpgpu.MLP, X, y, weights):
    """Central differences (L(p + h) - L(p - h)) / 2h of every weight and bias."""
    result = []
    for W, b in weights:
        grads = []
        for P in (W, b):
            G = np.empty_like(P)
            for i in np.ndindex(P.shape):
                old = P[i]
                P[i] = old + H
                net.set_weights(weights)
                up = net.loss(X, y)
                P[i] = old - H
                net.set_weights(weights)
                down = net.loss(X, y)
                P[i] = old
                G[i] = (up - down) / (2 * H)
            grads.append(G)
        result.append(tuple(grads))
    net.set_weights(weights)
    return result


def check(net, X, y, weights):
    net.set_weights(weights)
    analytic = net.gradients(X, y)
    numeric = numeric_gradients(net, X, y, weights)
    for l, ((aW, ab), (nW, nb)) in enumerate(zip(analytic, numeric, strict=True), start=1):
        for name, a, n in ((f"dW_{l}", aW, nW), (f"db_{l}", ab, nb)):
            assert a.shape == n.shape and a.dtype == np.float64
            err = np.max(np.abs(a - n))
            assert err <= 1e-7 + 1e-6 * np.max(np.abs(n)), (
                f"{name}: max |analytic - numeric| = {err:.3g}"
            )


@pytest.mark.parametrize("output,loss", sorted(COMBINATIONS))
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_gradients_match_finite_differences(rng, activation, output, loss):
    k = 3 if output == "softmax" else 2
    layers = [3, 4, 5, k]
    net = bpgpu.MLP(
        layers,
        activation=activation,
        output=output,
        loss=loss,
        backend="numpy",
        dtype="float64",
        seed=1,
    )
    m = 7
    X = rng.normal(size=(m, layers[0]))
    check(net, X, targets(rng, m, k, output), random_weights(rng, layers))


@pytest.mark.parametrize("output", ["sigmoid", "identity"])
def test_single_output_and_per_layer_activations(rng, output):
    layers = [5, 3, 4, 1]
    net = bpgpu.MLP(
        layers, activation=["tanh", "sigmoid"], output=output, backend="numpy", dtype="float64"
    )
    X = rng.normal(size=(9, 5))
    y = rng.integers(0, 2, 9) if output == "sigmoid" else rng.normal(size=9)
    check(net, X, y, random_weights(rng, layers))


def test_gradients_over_several_evaluation_batches(rng, monkeypatch):
    # gradients() averages batch gradients weighted by size; force uneven batches
    from bpgpu import model

    layers = [4, 6, 3]
    net = bpgpu.MLP(layers, activation="relu", backend="numpy", dtype="float64")
    X, y = rng.normal(size=(11, 4)), rng.integers(0, 3, 11)
    weights = random_weights(rng, layers)
    net.set_weights(weights)
    whole = net.gradients(X, y)
    monkeypatch.setattr(model, "EVAL_BATCH", 4)
    for (aW, ab), (bW, bb) in zip(whole, net.gradients(X, y), strict=True):
        np.testing.assert_allclose(aW, bW, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(ab, bb, rtol=1e-12, atol=1e-14)


def test_gradients_do_not_change_the_weights(rng):
    net = bpgpu.MLP([3, 4, 2], backend="numpy", seed=3)
    before = net.get_weights()
    net.gradients(rng.normal(size=(5, 3)), rng.integers(0, 2, 5))
    for (W0, b0), (W1, b1) in zip(before, net.get_weights(), strict=True):
        np.testing.assert_array_equal(W0, W1)
        np.testing.assert_array_equal(b0, b1)
