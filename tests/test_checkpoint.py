"""The optimizer state kept between fits: the same optimizer continues it, a new one or
reset=True starts it afresh, and a failed fit leaves it as it was."""

from __future__ import annotations

import numpy as np
import pytest

import bpgpu


def model(backend: str = "numpy", layers=(6, 9, 5, 3), dtype: str = "float32") -> bpgpu.MLP:
    return bpgpu.MLP(
        list(layers), activation=["tanh", "relu"], backend=backend, dtype=dtype, seed=1
    )


@pytest.fixture
def data(rng):
    return rng.normal(size=(103, 6)), rng.integers(0, 3, 103)


def weights_of(net: bpgpu.MLP) -> list[np.ndarray]:
    return [a for pair in net.get_weights() for a in pair]


def assert_same_weights(a: bpgpu.MLP, b: bpgpu.MLP) -> None:
    for i, (x, y) in enumerate(zip(weights_of(a), weights_of(b), strict=True)):
        np.testing.assert_array_equal(x, y, err_msg=f"parameter {i}")


OPTIMIZERS = {
    "adam": lambda: bpgpu.Adam(lr=0.01),
    "rmsprop": lambda: bpgpu.RMSprop(lr=0.005),
    "nesterov": lambda: bpgpu.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
}


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_two_one_epoch_fits_equal_one_two_epoch_fit(data, optimizer):
    X, y = data
    opt = OPTIMIZERS[optimizer]()
    once = model()
    once.fit(X, y, epochs=2, batch_size=16, optimizer=opt, shuffle=False)
    twice = model()
    twice.fit(X, y, epochs=1, batch_size=16, optimizer=opt, shuffle=False)
    twice.fit(X, y, epochs=1, batch_size=16, optimizer=opt, shuffle=False)
    assert_same_weights(twice, once)
    implied = model()  # no optimizer: the model's own continues
    implied.fit(X, y, epochs=1, batch_size=16, optimizer=opt, shuffle=False)
    implied.fit(X, y, epochs=1, batch_size=16, shuffle=False)
    assert_same_weights(implied, once)
    assert implied.optimizer is opt


@pytest.mark.parametrize("optimizer", list(OPTIMIZERS))
def test_a_new_optimizer_or_reset_starts_the_state_afresh(data, optimizer):
    X, y = data
    opt = OPTIMIZERS[optimizer]()
    kw = {"epochs": 1, "batch_size": 16, "shuffle": False}
    fresh = model()
    fresh.fit(X, y, optimizer=opt, **kw)
    fresh.fit(X, y, optimizer=OPTIMIZERS[optimizer](), **kw)  # a new object: fresh state
    reset = model()
    reset.fit(X, y, optimizer=opt, **kw)
    reset.fit(X, y, optimizer=opt, reset=True, **kw)
    assert_same_weights(reset, fresh)
    continued = model()
    continued.fit(X, y, optimizer=opt, epochs=2, batch_size=16, shuffle=False)
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(weights_of(continued), weights_of(fresh), strict=True)
    )


def test_a_failed_fit_leaves_the_optimizer_state_as_it_was(data, monkeypatch):
    X, y = data
    opt = bpgpu.Adam(lr=0.01)
    kw = {"epochs": 1, "batch_size": 16, "shuffle": False, "optimizer": opt}
    net, clean = model(), model()
    for m in (net, clean):
        m.fit(X, y, **kw)
    real, calls = net.backend.train_step, []

    def failing(*args):
        calls.append(1)
        if len(calls) == 4:
            raise RuntimeError("injected failure")
        return real(*args)

    with monkeypatch.context() as patch:
        patch.setattr(net.backend, "train_step", failing)
        with pytest.raises(RuntimeError, match="injected"):
            net.fit(X, y, **kw)
    assert_same_weights(net, clean)
    net.fit(X, y, **kw)  # continues the state as it was before the failed fit
    clean.fit(X, y, **kw)
    assert_same_weights(net, clean)
