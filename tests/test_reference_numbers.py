"""The worked numbers of design.md, reproduced in float64 through the public API."""

from __future__ import annotations

import numpy as np
import pytest

import bpgpu

TOL = 1e-10


@pytest.fixture
def neuron() -> bpgpu.MLP:
    """One sigmoid neuron, x = (0.1, 0.3), W = (0.5, 0.2), b = 1.83, squared error."""
    net = bpgpu.MLP([2, 1], output="sigmoid", loss="mse", backend="numpy", dtype="float64", seed=0)
    net.set_weights([(np.array([[0.5], [0.2]]), np.array([1.83]))])
    return net


X1 = np.array([[0.1, 0.3]])
T1 = np.array([[0.03]])


def test_neuron_forward(neuron):
    out = neuron.predict_proba(X1)
    assert out.shape == (1, 1)
    assert abs(out[0, 0] - 0.8743521434846544) < TOL
    # s = 1.94 before the sigmoid
    assert abs(np.log(out[0, 0] / (1 - out[0, 0])) - 1.94) < TOL


def test_neuron_error(neuron):
    assert abs(neuron.loss(X1, T1) - 0.3564652711035652) < TOL


def test_neuron_gradients(neuron):
    [(dW, db)] = neuron.gradients(X1, T1)
    assert dW.shape == (2, 1) and db.shape == (1,)
    np.testing.assert_allclose(
        dW[:, 0], [0.009276092558183858, 0.027828277674551576], rtol=0, atol=TOL
    )
    assert abs(db[0] - 0.09276092558183859) < TOL


def test_neuron_one_sgd_step_moves_by_lr_times_gradient(neuron):
    neuron.fit(X1, T1, epochs=1, batch_size=1, optimizer=bpgpu.SGD(lr=0.5), shuffle=False)
    [(W, b)] = neuron.get_weights()
    np.testing.assert_allclose(
        W[:, 0], [0.5 - 0.5 * 0.009276092558183858, 0.2 - 0.5 * 0.027828277674551576], atol=TOL
    )
    assert abs(b[0] - (1.83 - 0.5 * 0.09276092558183859)) < TOL


def test_relu_network_without_bias_outputs_0_61():
    net = bpgpu.MLP(
        [2, 2, 1],
        activation="relu",
        output="identity",
        loss="mse",
        backend="numpy",
        dtype="float64",
    )
    W1 = np.array([[0.5, 0.6], [0.1, 0.2]])
    W2 = np.array([[0.3], [0.4]])
    net.set_weights([(W1, np.zeros(2)), (W2, np.zeros(1))])
    out = net.predict_proba(np.array([[1.0, 2.0]]))
    assert abs(out[0, 0] - 0.61) < TOL  # hidden (0.7, 1.0) -> 0.3*0.7 + 0.4*1.0
    assert abs(net.predict(np.array([[1.0, 2.0]]))[0] - 0.61) < TOL
