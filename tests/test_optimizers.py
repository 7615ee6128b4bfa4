"""Every optimizer rule of bpgpu/optimizers.py over several steps, against a float64 loop
written out here, through the weight update of the reference backend and of the NumPy backend
(on one thread and split across three). The other backends are compared with the reference in
tests/test_conformance.py."""

from __future__ import annotations

from contextlib import nullcontext

import numpy as np
import pytest

import bpgpu
from bpgpu.backends.numpy_backend import NumpyBackend
from bpgpu.backends.reference import ReferenceBackend
from bpgpu.optimizers import make_optimizer

STEPS = 7

OPTIMIZERS = [
    bpgpu.SGD(lr=0.1),
    bpgpu.SGD(lr=0.05, momentum=0.9),
    bpgpu.SGD(lr=0.05, momentum=0.8, nesterov=True),
    bpgpu.SGD(lr=0.05, momentum=0.9, weight_decay=0.01),
    bpgpu.SGD(lr=0.1, weight_decay=0.1),
    bpgpu.RMSprop(lr=0.01),
    bpgpu.RMSprop(lr=0.003, rho=0.5, eps=1e-3, weight_decay=0.02),
    bpgpu.Adam(lr=0.01),
    bpgpu.Adam(lr=0.02, beta1=0.5, beta2=0.9, eps=1e-4, weight_decay=0.05),
]


class Reference:
    """One parameter's optimizer in float64, straight from the docstring of bpgpu/optimizers.py."""

    def __init__(self, opt: bpgpu.Optimizer, shape: tuple[int, ...], decay: bool) -> None:
        self.opt, self.decay, self.t = opt, decay, 0
        self.v = np.zeros(shape)
        self.s = np.zeros(shape)

    def step(self, P: np.ndarray, G: np.ndarray) -> np.ndarray:
        o = self.opt
        self.t += 1
        if self.decay and o.weight_decay:
            G = G + o.weight_decay * P
        if o.kind == "sgd":
            if o.momentum:
                self.v = o.momentum * self.v + G
                G = G + o.momentum * self.v if o.nesterov else self.v
            return P - o.lr * G
        if o.kind == "rmsprop":
            self.s = o.rho * self.s + (1 - o.rho) * G**2
            return P - o.lr * G / (np.sqrt(self.s) + o.eps)
        self.v = o.beta1 * self.v + (1 - o.beta1) * G
        self.s = o.beta2 * self.s + (1 - o.beta2) * G**2
        m_hat = self.v / (1 - o.beta1**self.t)
        v_hat = self.s / (1 - o.beta2**self.t)
        return P - o.lr * m_hat / (np.sqrt(v_hat) + o.eps)


def backend(name: str):
    """The reference, or the NumPy backend on 1 or 3 threads (every op split however small)."""
    if name == "reference":
        return ReferenceBackend(), nullcontext
    xp = NumpyBackend(threads=int(name[-1]))
    xp.rows.min_op_elements = 0
    return xp, lambda: xp.rows.parallel(xp.rows.min_step_elements)


@pytest.mark.parametrize("name", ["reference", "numpy-1", "numpy-3"])
@pytest.mark.parametrize("opt", OPTIMIZERS, ids=repr)
@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (5, 3, 7), (33, 129, 10), (2, 600, 1000)])
def test_update_rule_over_several_steps(rng, opt, m, k, n, name):
    # numpy-3: gradient and update split across threads however small the arrays;
    # 600 x 1000: the NumPy backend walks W in several cache-sized row blocks
    xp, scope = backend(name)
    W, b = rng.normal(size=(k, n)), rng.normal(size=n)
    state = xp.optimizer_state(opt, W, b)
    refW, refb = Reference(opt, W.shape, decay=True), Reference(opt, b.shape, decay=False)
    W_want, b_want = W.copy(), b.copy()
    for _ in range(STEPS):  # fresh gradients each step so every slot matters
        A, D = rng.normal(size=(m, k)), rng.normal(size=(m, n))
        W_want = refW.step(W_want, A.T @ D)
        b_want = refb.step(b_want, D.sum(axis=0))
        with scope():
            xp.weight_update(A, D, W, b, state)
    assert state.t == STEPS
    np.testing.assert_allclose(W, W_want, rtol=1e-11, atol=1e-12)
    np.testing.assert_allclose(b, b_want, rtol=1e-11, atol=1e-12)


def test_adam_first_step_is_lr_times_sign():
    # bias correction makes the first Adam step lr * g / (|g| + eps) ~ lr * sign(g)
    xp = NumpyBackend()
    W, b = np.zeros((2, 2)), np.zeros(2)
    state = xp.optimizer_state(bpgpu.Adam(lr=0.1), W, b)
    A = np.array([[1.0, -2.0]])
    D = np.array([[3.0, -0.5]])
    xp.weight_update(A, D, W, b, state)
    np.testing.assert_allclose(W, -0.1 * np.sign(A.T @ D), rtol=1e-7)
    np.testing.assert_allclose(b, -0.1 * np.sign(D[0]), rtol=1e-7)


def test_weight_decay_does_not_touch_biases():
    xp = NumpyBackend()
    W, b = np.ones((1, 1)), np.ones(1)
    state = xp.optimizer_state(bpgpu.SGD(lr=0.5, weight_decay=0.2), W, b)
    xp.weight_update(np.zeros((1, 1)), np.zeros((1, 1)), W, b, state)  # zero gradient
    assert W[0, 0] == pytest.approx(1 - 0.5 * 0.2)
    assert b[0] == 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_subnormal_state_is_flushed(dtype):
    """State decaying under a zero gradient passes through subnormals; the backend zeroes them
    periodically (every 64 updates), as a GPU's flush-to-zero would, and keeps normal numbers."""
    xp = NumpyBackend()
    tiny = np.finfo(dtype).tiny
    W, b = np.zeros((2, 3), dtype), np.zeros(3, dtype)
    state = xp.optimizer_state(bpgpu.RMSprop(lr=1e-3, rho=0.999), W, b)
    state.W["square_avg"][...] = [[tiny / 8, tiny / 1024, 1.0], [tiny * 4, 0.0, tiny / 2]]
    state.b["square_avg"][...] = tiny / 16
    A, D = np.zeros((1, 2), dtype), np.zeros((1, 3), dtype)
    for _ in range(64):
        xp.weight_update(A, D, W, b, state)
    s = state.W["square_avg"]
    assert state.t == 64
    assert not np.any((s != 0) & (np.abs(s) < tiny)), f"subnormals left: {s}"
    assert np.all(state.b["square_avg"] == 0)
    assert s[0, 2] == pytest.approx(0.999**64, rel=1e-5)  # normal numbers decay, not flushed
    assert s[1, 0] > 0  # 4 tiny * 0.999^64 is still normal


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: bpgpu.SGD(lr=0), "lr"),
        (lambda: bpgpu.SGD(lr=-1), "lr"),
        (lambda: bpgpu.SGD(lr=float("nan")), "lr"),
        (lambda: bpgpu.SGD(momentum=1.0), "momentum"),
        (lambda: bpgpu.SGD(nesterov=True), "nesterov"),
        (lambda: bpgpu.SGD(weight_decay=-0.1), "weight_decay"),
        (lambda: bpgpu.RMSprop(rho=1.5), "rho"),
        (lambda: bpgpu.RMSprop(eps=0), "eps"),
        (lambda: bpgpu.Adam(beta1=1.0), "beta1"),
        (lambda: bpgpu.Adam(beta2=-0.1), "beta2"),
        (lambda: make_optimizer("lbfgs"), "optimizer"),
        (lambda: make_optimizer(bpgpu.Adam(), lr=0.1), "lr"),
    ],
)
def test_bad_hyperparameters_raise_value_error(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda: bpgpu.SGD(lr="0.1"), "lr"),
        (lambda: bpgpu.SGD(lr=True), "lr"),
        (lambda: bpgpu.SGD(momentum=0.5, nesterov=1), "nesterov"),
        (lambda: make_optimizer(3), "optimizer"),
    ],
)
def test_wrong_types_raise_type_error(make, match):
    with pytest.raises(TypeError, match=match):
        make()


def test_make_optimizer_by_name():
    assert make_optimizer(None) == bpgpu.SGD()
    assert make_optimizer("Adam", lr=0.5) == bpgpu.Adam(lr=0.5)
    assert make_optimizer("rmsprop").kind == "rmsprop"
