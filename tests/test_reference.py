"""The oracle checked on its own: each op of the reference backend against formulas written out
here another way (derivatives in terms of z, the softmax Jacobian as a matrix per sample,
cross-entropies from their definitions), in float64, with outputs poisoned first. Every other
backend is tested against the reference (tests/test_conformance.py), so this is where the math
itself is pinned down; tests/test_gradients.py checks the whole backward pass against finite
differences."""

from __future__ import annotations

import numpy as np
import pytest

from bpgpu.backends.reference import ReferenceBackend
from bpgpu.functions import ACTIVATIONS, COMBINATIONS, OUTPUTS

REF = ReferenceBackend()
SHAPES = [(1, 1, 1), (3, 7, 2), (33, 31, 129), (129, 127, 3)]


def f(z: np.ndarray, act: str) -> np.ndarray:
    if act == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if act == "relu":
        return np.where(z > 0, z, 0.0)
    if act == "tanh":
        return np.tanh(z)
    return z.copy()


def f_prime_of_z(z: np.ndarray, act: str) -> np.ndarray:
    """The derivative in terms of z (the backends use the stored output): another route."""
    if act == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-z))
        return s * (1.0 - s)
    if act == "relu":
        return (z > 0).astype(np.float64)
    if act == "tanh":
        return 1.0 / np.cosh(z) ** 2
    return np.ones_like(z)


def output(z: np.ndarray, name: str) -> np.ndarray:
    if name == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return f(z, name)


def loss_and_delta(z, y, name: str, loss: str) -> tuple[float, np.ndarray]:
    """(mean loss, dLoss/dZ) by the chain rule written per sample."""
    m = z.shape[0]
    a = output(z, name)
    if loss == "mse":
        total = 0.5 * np.sum((a - y) ** 2)
        g = a - y  # dL/dA per sample
        if name == "softmax":
            D = np.empty_like(z)
            for i in range(m):
                J = np.diag(a[i]) - np.outer(a[i], a[i])
                D[i] = J.T @ g[i]
        else:
            D = g * f_prime_of_z(z, name)
    elif name == "softmax":
        total = -np.sum(y * np.log(a))
        D = a - y
    else:  # sigmoid + binary cross-entropy
        total = -np.sum(y * np.log(a) + (1 - y) * np.log(1 - a))
        D = a - y
    return total / m, D / m


def nan(shape: tuple[int, ...]) -> np.ndarray:
    return np.full(shape, np.nan)


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_dense_forward(rng, act, m, k, n):
    X, W, b = rng.normal(size=(m, k)), rng.normal(size=(k, n)), rng.normal(size=n)
    out = REF.dense_forward(X, W, b, act, nan((m, n)))
    np.testing.assert_allclose(out, f(X @ W + b, act), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_delta_backward(rng, act, m, k, n):
    D, W, Z = rng.normal(size=(m, n)), rng.normal(size=(k, n)), rng.normal(size=(m, k))
    out = REF.delta_backward(D, W, f(Z, act), act, nan((m, k)))
    np.testing.assert_allclose(out, (D @ W.T) * f_prime_of_z(Z, act), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_weight_gradient(rng, m, k, n):
    A, D = rng.normal(size=(m, k)), rng.normal(size=(m, n))
    gW, gb = nan((k, n)), nan((n,))
    REF.weight_gradient(A, D, gW, gb)
    np.testing.assert_allclose(gW, np.einsum("ik,in->kn", A, D), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gb, [sum(D[i, j] for i in range(m)) for j in range(n)], rtol=1e-12)


@pytest.mark.parametrize("m,n", [(1, 3), (3, 1), (33, 10), (7, 257)])
@pytest.mark.parametrize("name", OUTPUTS)
def test_output_forward(rng, name, m, n):
    Z = 3 * rng.normal(size=(m, n))
    np.testing.assert_allclose(
        REF.output_forward(Z, name, nan((m, n))), output(Z, name), rtol=1e-13
    )


@pytest.mark.parametrize("m,n", [(1, 2), (3, 1), (33, 10), (129, 3)])
@pytest.mark.parametrize("name,loss", sorted(COMBINATIONS))
def test_output_delta(rng, name, loss, m, n):
    if name == "softmax" and n < 2:
        n = 2  # softmax needs two units
    Z = 2 * rng.normal(size=(m, n))
    if name == "softmax":
        Y = np.eye(n)[rng.integers(0, n, m)]
    elif name == "sigmoid":
        Y = rng.uniform(size=(m, n))
    else:
        Y = rng.normal(size=(m, n))
    A, D, stats = nan((m, n)), nan((m, n)), np.array([1.5, 2.0])  # the op adds to stats
    REF.output_delta(Z, Y, name, loss, A, D, stats)
    want_loss, want_D = loss_and_delta(Z, Y, name, loss)
    np.testing.assert_allclose(A, output(Z, name), rtol=1e-13)
    np.testing.assert_allclose(D, want_D, rtol=1e-10, atol=1e-14)
    assert stats[0] - 1.5 == pytest.approx(want_loss * m, rel=1e-10)
    if name == "softmax":
        correct = np.sum(Z.argmax(1) == Y.argmax(1))
    elif name == "sigmoid":
        correct = np.sum(np.all((output(Z, "sigmoid") > 0.5) == (Y > 0.5), axis=1))
    else:
        correct = 0
    assert stats[1] - 2.0 == correct


def test_softmax_and_sigmoid_do_not_overflow():
    Z = np.array([[1000.0, -1000.0, 0.0], [-800.0, -800.0, -800.0]])
    with np.errstate(over="raise", invalid="raise"):
        np.testing.assert_allclose(
            REF.output_forward(Z, "softmax", nan(Z.shape)), [[1, 0, 0], [1 / 3] * 3], atol=1e-15
        )
    np.testing.assert_allclose(
        REF.output_forward(Z, "sigmoid", nan(Z.shape)), [[1, 0, 0.5], [0, 0, 0]], atol=1e-15
    )


def test_binary_cross_entropy_is_finite_for_saturated_logits():
    Z, Y = np.array([[60.0], [-60.0]]), np.array([[0.0], [1.0]])
    A, D, stats = nan((2, 1)), nan((2, 1)), np.zeros(2)
    REF.output_delta(Z, Y, "sigmoid", "cross_entropy", A, D, stats)
    assert stats[0] == pytest.approx(120.0, rel=1e-12)  # log(1 + e^60) ~ 60 each
    np.testing.assert_allclose(D, [[0.5], [-0.5]], atol=1e-15)


@pytest.mark.parametrize("bad", [-1, 50, 10**9])
def test_gather_rows_rejects_an_index_out_of_range_and_leaves_out_as_it_was(rng, bad):
    src, out = rng.normal(size=(50, 3)), nan((4, 3))
    with pytest.raises(IndexError, match=rf"index holds {bad}: expected row numbers in \[0, 50\)"):
        REF.gather_rows(src, np.array([0, 49, bad, 7]), out)
    assert np.isnan(out).all()
