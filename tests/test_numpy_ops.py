"""Each NumPy backend op against a plain float64 implementation written out here.

Outputs are poisoned with NaN before the op runs, so an element it fails to write fails the test.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest

from bpgpu.backends.numpy_backend import NumpyBackend, _block_rows
from bpgpu.functions import ACTIVATIONS, COMBINATIONS, OUTPUTS

SHAPES = [(1, 1, 1), (3, 7, 2), (33, 31, 129), (129, 127, 3), (300, 5, 1000)]
DTYPES = [np.float64, np.float32]
TOL = {np.float64: 1e-12, np.float32: 2e-5}


def f_ref(z: np.ndarray, act: str) -> np.ndarray:
    if act == "sigmoid":
        return 1.0 / (1.0 + np.exp(-z))
    if act == "relu":
        return np.where(z > 0, z, 0.0)
    if act == "tanh":
        return np.tanh(z)
    return z.copy()


def fprime_ref(z: np.ndarray, act: str) -> np.ndarray:
    """Derivative in terms of z (not the stored output), an independent route."""
    if act == "sigmoid":
        s = 1.0 / (1.0 + np.exp(-z))
        return s * (1.0 - s)
    if act == "relu":
        return (z > 0).astype(np.float64)
    if act == "tanh":
        return 1.0 / np.cosh(z) ** 2
    return np.ones_like(z)


def out_ref(z: np.ndarray, output: str) -> np.ndarray:
    if output == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)
    return f_ref(z, output)


def loss_ref(z: np.ndarray, y: np.ndarray, output: str, loss: str) -> tuple[float, np.ndarray]:
    """(mean loss, dLoss/dZ) by the chain rule written per sample in float64."""
    m = z.shape[0]
    a = out_ref(z, output)
    if loss == "mse":
        total = 0.5 * np.sum((a - y) ** 2)
        g = a - y  # dL/dA per sample
        if output == "softmax":
            D = np.empty_like(z)
            for i in range(m):
                J = np.diag(a[i]) - np.outer(a[i], a[i])
                D[i] = J.T @ g[i]
        else:
            D = g * fprime_ref(z, output)
    elif output == "softmax":
        total = -np.sum(y * np.log(a))
        D = a - y
    else:  # sigmoid + binary cross-entropy
        total = -np.sum(y * np.log(a) + (1 - y) * np.log(1 - a))
        D = a - y
    return total / m, D / m


def nan_like(shape: tuple[int, ...], dtype) -> np.ndarray:
    return np.full(shape, np.nan, dtype=dtype)


def close(got: np.ndarray, want: np.ndarray, dtype) -> None:
    scale = max(1.0, float(np.max(np.abs(want))))
    err = np.abs(got.astype(np.float64) - want)
    assert np.all(np.isfinite(got)), "output has NaN: an element was not written"
    assert err.max() <= TOL[dtype] * scale * 10, (
        f"max error {err.max():.3g} at {np.unravel_index(err.argmax(), err.shape)}"
    )


@pytest.fixture(scope="module", params=[1, 3], ids=["1 thread", "3 threads"])
def xp(request: pytest.FixtureRequest) -> Iterator[NumpyBackend]:
    """The backend on one thread, and inside a parallel step with every op's rows split across
    3 threads however small (uneven parts, and fewer rows than threads when m < 3)."""
    yield from threaded(NumpyBackend(threads=request.param))


def threaded(xp: NumpyBackend) -> Iterator[NumpyBackend]:
    """``xp`` inside a step that splits every op across its threads."""
    xp.rows.min_op_elements = 0
    with xp.rows.parallel(xp.rows.min_step_elements):
        yield xp


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_dense_forward(xp, rng, act, m, k, n, dtype):
    X, W, b = rng.normal(size=(m, k)), rng.normal(size=(k, n)) / np.sqrt(k), rng.normal(size=n)
    out = nan_like((m, n), dtype)
    res = xp.dense_forward(X.astype(dtype), W.astype(dtype), b.astype(dtype), act, out)
    assert res is out
    close(
        out,
        f_ref(X.astype(dtype).astype(np.float64) @ W.astype(dtype) + b.astype(dtype), act),
        dtype,
    )


def test_dense_forward_large_rows_crosses_blocks(xp, rng):
    # more rows than one cache block per thread, so block boundaries within a part are covered
    m = 4 * _block_rows(33 + 17) + 5
    X, W, b = rng.normal(size=(m, 33)), rng.normal(size=(33, 17)), rng.normal(size=17)
    out = nan_like((m, 17), np.float64)
    xp.dense_forward(X, W, b, "tanh", out)
    close(out, np.tanh(X @ W + b), np.float64)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", SHAPES)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_delta_backward(xp, rng, act, m, k, n, dtype):
    D, W, Zp = rng.normal(size=(m, n)), rng.normal(size=(k, n)), rng.normal(size=(m, k))
    A_prev = f_ref(Zp, act).astype(dtype)
    out = nan_like((m, k), dtype)
    xp.delta_backward(D.astype(dtype), W.astype(dtype), A_prev, act, out)
    want = (D.astype(dtype).astype(np.float64) @ W.astype(dtype).T.astype(np.float64)) * fprime_ref(
        Zp, act
    )
    if act == "relu":  # f'(0) is 0 by convention from the stored output
        want = want * (A_prev > 0)
    close(out, want, dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,k,n", SHAPES)
def test_weight_gradient(xp, rng, m, k, n, dtype):
    A, D = rng.normal(size=(m, k)).astype(dtype), rng.normal(size=(m, n)).astype(dtype)
    gW, gb = nan_like((k, n), dtype), nan_like((n,), dtype)
    xp.weight_gradient(A, D, gW, gb)
    A64, D64 = A.astype(np.float64), D.astype(np.float64)
    close(gW, np.einsum("ik,in->kn", A64, D64), dtype)
    close(gb, D64.sum(axis=0), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n", [(1, 3), (3, 1), (33, 10), (129, 33), (7, 257)])
@pytest.mark.parametrize("output", OUTPUTS)
def test_output_forward(xp, rng, output, m, n, dtype):
    Z = (3 * rng.normal(size=(m, n))).astype(dtype)
    out = nan_like((m, n), dtype)
    xp.output_forward(Z, output, out)
    close(out, out_ref(Z.astype(np.float64), output), dtype)


def test_softmax_and_sigmoid_do_not_overflow(xp):
    Z = np.array([[1000.0, -1000.0, 0.0], [-800.0, -800.0, -800.0]])
    out = nan_like(Z.shape, np.float64)
    xp.output_forward(Z, "softmax", out)
    np.testing.assert_allclose(out, [[1, 0, 0], [1 / 3, 1 / 3, 1 / 3]], atol=1e-15)
    xp.output_forward(Z, "sigmoid", out)
    np.testing.assert_allclose(out, [[1, 0, 0.5], [0, 0, 0]], atol=1e-15)


def _targets(rng, m, n, output, loss):
    if output == "softmax" or (
        output == "sigmoid" and loss == "cross_entropy" and n > 1 and rng.random() < 0.5
    ):
        Y = np.zeros((m, n))
        Y[np.arange(m), rng.integers(0, n, m)] = 1
        return Y
    if output == "sigmoid":
        return rng.uniform(size=(m, n))
    return rng.normal(size=(m, n))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("m,n", [(1, 2), (3, 1), (33, 10), (129, 3)])
@pytest.mark.parametrize("output,loss", sorted(COMBINATIONS))
def test_output_delta(xp, rng, output, loss, m, n, dtype):
    if output == "softmax" and n < 2:
        n = 2  # softmax needs two units
    Z = (2 * rng.normal(size=(m, n))).astype(dtype)
    Y = _targets(rng, m, n, output, loss).astype(dtype)
    A, D = nan_like((m, n), dtype), nan_like((m, n), dtype)
    stats = np.array([1.5, 2.0])  # the op adds to what is there
    xp.output_delta(Z, Y, output, loss, A, D, stats)
    Z64, Y64 = Z.astype(np.float64), Y.astype(np.float64)
    want_loss, want_D = loss_ref(Z64, Y64, output, loss)
    close(A, out_ref(Z64, output), dtype)
    close(D, want_D, dtype)
    assert stats[0] - 1.5 == pytest.approx(want_loss * m, rel=TOL[dtype] * 10, abs=TOL[dtype])
    if output == "softmax":
        correct = np.sum(Z64.argmax(1) == Y64.argmax(1))
    elif output == "sigmoid":
        correct = np.sum(np.all((out_ref(Z64, "sigmoid") > 0.5) == (Y64 > 0.5), axis=1))
    else:
        correct = 0
    assert stats[1] - 2.0 == correct


def test_binary_cross_entropy_is_finite_for_saturated_logits(xp):
    Z = np.array([[60.0], [-60.0]])
    Y = np.array([[0.0], [1.0]])
    A, D, stats = nan_like((2, 1), np.float64), nan_like((2, 1), np.float64), np.zeros(2)
    xp.output_delta(Z, Y, "sigmoid", "cross_entropy", A, D, stats)
    assert stats[0] == pytest.approx(120.0, rel=1e-12)  # log(1 + e^60) ~ 60 each
    np.testing.assert_allclose(D, [[0.5], [-0.5]], atol=1e-15)


@pytest.mark.parametrize("m,n", [(1, 3), (129, 1), (2, 3)])
def test_gather_rows(xp, rng, m, n):
    src = rng.normal(size=(50, n))
    index = rng.integers(0, 50, m).astype(np.int64)
    out = nan_like((m, n), np.float64)
    xp.gather_rows(src, index, out)
    np.testing.assert_array_equal(out, src[index])


@pytest.mark.parametrize("bad", [-1, 50, 10**9])
def test_gather_rows_rejects_an_index_out_of_range_and_leaves_out_as_it_was(xp, rng, bad):
    src = rng.normal(size=(50, 3))
    index = np.array([0, 49, bad, 7], dtype=np.int64)
    out = nan_like((4, 3), np.float64)
    with pytest.raises(IndexError, match=rf"index holds {bad}: expected row numbers in \[0, 50\)"):
        xp.gather_rows(src, index, out)
    assert np.isnan(out).all()


def test_memory_helpers(xp, rng):
    a = rng.normal(size=(3, 5))
    d = xp.asarray(a, np.dtype(np.float32))
    assert d.dtype == np.float32 and d.flags.c_contiguous and d is not a
    h = xp.to_host(d)
    h[0, 0] = 99
    assert d[0, 0] != 99  # to_host copies
    z = xp.zeros((4,), np.dtype(np.float64))
    assert np.all(z == 0)
    xp.copy_into(z, np.arange(4.0))
    np.testing.assert_array_equal(z, np.arange(4.0))
    assert xp.is_array(z) and not xp.is_array([1.0])
