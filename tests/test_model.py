"""The MLP API surface of design.md: construction, backends, weights, defaults."""

from __future__ import annotations

import numpy as np
import pytest

import bpgpu
from bpgpu.backends.base import Backend


def test_import_needs_no_cuda_and_lists_numpy():
    assert "numpy" in bpgpu.available_backends()
    assert bpgpu.available_backends()[-1] == "numpy"


def test_auto_backend_reports_what_it_took(monkeypatch):
    monkeypatch.delenv("BPGPU_BACKEND", raising=False)
    net = bpgpu.MLP([3, 2])
    assert net.backend.name in bpgpu.available_backends()
    assert net.backend.name in repr(net)


def test_backend_from_environment(monkeypatch):
    monkeypatch.setenv("BPGPU_BACKEND", "numpy")
    assert bpgpu.MLP([3, 2], backend="auto").backend.name == "numpy"


def test_backend_instance_is_accepted():
    backend = bpgpu.get_backend("numpy")
    assert isinstance(backend, Backend)
    assert bpgpu.MLP([3, 2], backend=backend).backend is backend


def test_defaults():
    net = bpgpu.MLP([4, 6, 3], backend="numpy", seed=0)
    assert net.dtype == np.float32
    assert net.output == "softmax" and net.loss_name == "cross_entropy"
    assert net.activations == ["sigmoid"]
    assert bpgpu.MLP([4, 1], output="identity", backend="numpy").loss_name == "mse"
    assert bpgpu.MLP([4, 1], output="sigmoid", backend="numpy").loss_name == "cross_entropy"


@pytest.mark.parametrize(
    "alias,name", [("binary_cross_entropy", "cross_entropy"), ("squared_error", "mse")]
)
def test_loss_aliases(alias, name):
    assert bpgpu.MLP([2, 1], output="sigmoid", loss=alias, backend="numpy").loss_name == name


def test_activation_per_layer():
    net = bpgpu.MLP(
        [4, 5, 6, 7, 2], activation=["relu", "tanh", "identity"], backend="numpy", seed=0
    )
    assert net.activations == ["relu", "tanh", "identity"]
    assert bpgpu.MLP([4, 5, 6, 2], activation="tanh", backend="numpy").activations == [
        "tanh",
        "tanh",
    ]


def test_get_weights_shapes_and_copies():
    net = bpgpu.MLP([4, 5, 3], backend="numpy", dtype="float64", seed=0)
    weights = net.get_weights()
    assert [(W.shape, b.shape) for W, b in weights] == [((4, 5), (5,)), ((5, 3), (3,))]
    weights[0][0][...] = 7.0  # a copy: the model is unchanged
    assert not np.any(net.get_weights()[0][0] == 7.0)


def test_set_weights_copies_and_casts(rng):
    net = bpgpu.MLP([3, 2], backend="numpy", dtype="float32", seed=0)
    W, b = rng.normal(size=(3, 2)), rng.normal(size=2)
    net.set_weights([(W, b)])
    W[...] = 0  # the model took a copy
    [(W2, b2)] = net.get_weights()
    assert W2.dtype == np.float32 and np.any(W2 != 0)
    np.testing.assert_array_equal(b2, b.astype(np.float32))
    net.set_weights([(W2.tolist(), b2.tolist())])  # lists are fine too


@pytest.mark.parametrize("m", [1, 3, 129])
def test_predict_proba_matches_a_hand_forward_pass(rng, m):
    net = bpgpu.MLP(
        [6, 5, 4, 3], activation=["relu", "tanh"], backend="numpy", dtype="float64", seed=4
    )
    (W1, b1), (W2, b2), (W3, b3) = net.get_weights()
    X = rng.normal(size=(m, 6))
    z = np.tanh(np.maximum(X @ W1 + b1, 0) @ W2 + b2) @ W3 + b3
    want = np.exp(z - z.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    np.testing.assert_allclose(net.predict_proba(X), want, rtol=1e-12)


def test_prediction_over_several_evaluation_batches(rng, monkeypatch):
    from bpgpu import model

    net = bpgpu.MLP([4, 5, 3], backend="numpy", dtype="float64", seed=0)
    X, y = rng.normal(size=(23, 4)), rng.integers(0, 3, 23)
    whole = net.predict_proba(X), net.loss(X, y), net.score(X, y)
    monkeypatch.setattr(model, "EVAL_BATCH", 5)
    np.testing.assert_allclose(net.predict_proba(X), whole[0], rtol=1e-14)
    assert net.loss(X, y) == pytest.approx(whole[1], rel=1e-12)
    assert net.score(X, y) == whole[2]


def test_labels_and_one_hot_targets_agree(rng):
    net = bpgpu.MLP([4, 3], backend="numpy", dtype="float64", seed=0)
    X, y = rng.normal(size=(10, 4)), rng.integers(0, 3, 10)
    assert net.loss(X, y) == net.loss(X, np.eye(3)[y])
    for (a, b), (c, d) in zip(net.gradients(X, y), net.gradients(X, np.eye(3)[y]), strict=True):
        np.testing.assert_array_equal(a, c)
        np.testing.assert_array_equal(b, d)


def test_loss_and_score_by_hand(rng):
    net = bpgpu.MLP([4, 3], backend="numpy", dtype="float64", seed=0)
    X, y = rng.normal(size=(17, 4)), rng.integers(0, 3, 17)
    P = net.predict_proba(X)
    assert net.loss(X, y) == pytest.approx(-np.mean(np.log(P[np.arange(17), y])), rel=1e-12)
    assert net.score(X, y) == pytest.approx(np.mean(P.argmax(1) == y))


def test_float32_and_float64_models_agree(rng):
    X, y = rng.normal(size=(50, 4)), rng.integers(0, 3, 50)
    runs = []
    for dtype in ("float32", "float64"):
        net = bpgpu.MLP([4, 8, 3], activation="tanh", backend="numpy", dtype=dtype, seed=0)
        hist = net.fit(X, y, epochs=3, batch_size=10, optimizer=bpgpu.SGD(lr=0.1, momentum=0.9))
        runs.append((hist["loss"], net.predict_proba(X)))
    np.testing.assert_allclose(runs[0][0], runs[1][0], rtol=1e-4)
    np.testing.assert_allclose(runs[0][1], runs[1][1], atol=1e-4)


@pytest.mark.parametrize("dtype,shared", [("float32", True), ("float64", False)])
def test_fit_trains_on_the_callers_array_when_it_is_usable(monkeypatch, dtype, shared):
    """No copy of X for a host backend when X already is C-contiguous in the model's dtype
    (fit only reads it); a conversion otherwise."""
    X = np.random.default_rng(0).normal(size=(40, 3)).astype(dtype)
    net = bpgpu.MLP([3, 4, 2], backend="numpy", seed=0)
    seen = []
    real = type(net.backend).train_step

    def spy(xp, net_, ws, X_, *rest):
        seen.append(X_)
        return real(xp, net_, ws, X_, *rest)

    monkeypatch.setattr(type(net.backend), "train_step", spy)
    net.fit(X, np.arange(40) % 2, epochs=1, batch_size=20)
    assert len(seen) == 2 and np.shares_memory(seen[0], X) == shared


@pytest.mark.parametrize("at", [0, 65535, 65536, 3 * 70000 - 1])
def test_a_non_finite_value_anywhere_in_x_is_refused(at):
    """The finiteness check goes block by block: a NaN in any block, the last included."""
    X = np.zeros((70000, 3), np.float32)
    X.reshape(-1)[at] = np.nan
    net = bpgpu.MLP([3, 4, 2], backend="numpy", seed=0)
    with pytest.raises(ValueError, match="X holds NaN or infinite values"):
        net.fit(X, np.zeros(70000, int), epochs=1)
