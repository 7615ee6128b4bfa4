"""End-to-end training on the NumPy backend: XOR, digits, iris; seeds, History, validation,
early stopping."""

from __future__ import annotations

import numpy as np
import pytest

import bpgpu

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=float)
XOR_Y = np.array([0, 1, 1, 0], dtype=float)


def split(X, y, seed=0, test=0.25):
    """A stratified 75/25 split, as sklearn's train_test_split(stratify=y) would give."""
    from sklearn.model_selection import train_test_split

    return train_test_split(X, y, test_size=test, random_state=seed, stratify=y)


# ---- the classic examples --------------------------------------------------------------------


def test_xor_2_2_1_learns_with_per_sample_sgd():
    net = bpgpu.MLP(
        [2, 2, 1],
        activation="sigmoid",
        output="sigmoid",
        loss="mse",
        backend="numpy",
        dtype="float64",
        seed=0,
    )
    hist = net.fit(XOR_X, XOR_Y, epochs=3000, batch_size=1, optimizer=bpgpu.SGD(lr=0.5))
    np.testing.assert_array_equal(net.predict(XOR_X), [0, 1, 1, 0])
    assert net.score(XOR_X, XOR_Y) == 1.0
    assert hist["loss"][-1] < 0.01 < hist["loss"][0]
    assert hist["accuracy"][-1] == 1.0


def test_xor_2_1_cannot_learn():
    # one sigmoid unit draws one line: no seed gets all four points right
    for seed in range(5):
        net = bpgpu.MLP(
            [2, 1], output="sigmoid", loss="mse", backend="numpy", dtype="float64", seed=seed
        )
        net.fit(XOR_X, XOR_Y, epochs=500, batch_size=1, optimizer=bpgpu.SGD(lr=0.5), seed=seed)
        assert net.score(XOR_X, XOR_Y) <= 0.75, f"seed {seed}"


def test_digits_at_least_96_percent():
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_digits(return_X_y=True)
    Xtr, Xte, ytr, yte = split(X / 16.0, y)
    net = bpgpu.MLP(
        [64, 32, 16, 10], activation="sigmoid", output="softmax", backend="numpy", seed=0
    )
    hist = net.fit(Xtr, ytr, epochs=60, batch_size=32, optimizer=bpgpu.Adam(lr=0.01))
    acc = net.score(Xte, yte)
    assert acc >= 0.96, f"digits test accuracy {acc:.4f}"
    assert np.mean(net.predict(Xte) == yte) == pytest.approx(acc)
    assert hist["loss"][-1] < hist["loss"][0]


def test_iris_at_least_90_percent():
    datasets = pytest.importorskip("sklearn.datasets")
    X, y = datasets.load_iris(return_X_y=True)
    Xtr, Xte, ytr, yte = split(X, y)
    mean, std = Xtr.mean(axis=0), Xtr.std(axis=0)
    net = bpgpu.MLP(
        [4, 8, 9, 3],
        activation="relu",
        output="softmax",
        loss="cross_entropy",
        backend="numpy",
        seed=0,
    )
    hist = net.fit(
        (Xtr - mean) / std, ytr, epochs=100, batch_size=len(Xtr), optimizer=bpgpu.Adam(lr=0.01)
    )
    loss = hist["loss"]
    assert len(loss) == 100
    assert 0.8 < loss[0] < 1.6, f"first epoch's loss {loss[0]:.3f}, expected about 1.1"
    assert loss[-1] < 0.15, f"last epoch's loss {loss[-1]:.3f}"
    acc = net.score((Xte - mean) / std, yte)
    assert acc >= 0.90, f"iris test accuracy {acc:.4f}"


# ---- seeds -------------------------------------------------------------------------------------


def weights_equal(a, b) -> bool:
    return all(
        np.array_equal(W1, W2) and np.array_equal(b1, b2)
        for (W1, b1), (W2, b2) in zip(a, b, strict=True)
    )


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_same_seed_same_weights_different_seed_different(activation):
    def make(seed):
        return bpgpu.MLP(
            [7, 33, 3], activation=activation, backend="numpy", seed=seed
        ).get_weights()

    assert weights_equal(make(5), make(5))
    assert not weights_equal(make(5), make(6))


def test_initial_weights_do_not_depend_on_dtype():
    w32 = bpgpu.MLP([5, 4, 3], backend="numpy", dtype="float32", seed=9).get_weights()
    w64 = bpgpu.MLP([5, 4, 3], backend="numpy", dtype="float64", seed=9).get_weights()
    for (a, _), (b, _) in zip(w32, w64, strict=True):
        assert a.dtype == np.float32 and b.dtype == np.float64
        np.testing.assert_array_equal(a, b.astype(np.float32))


def test_fit_with_same_seeds_is_reproducible(rng):
    X, y = rng.normal(size=(129, 5)), rng.integers(0, 3, 129)

    def run(fit_seed):
        net = bpgpu.MLP([5, 7, 3], activation="tanh", backend="numpy", seed=1)
        hist = net.fit(
            X, y, epochs=4, batch_size=16, optimizer=bpgpu.RMSprop(lr=0.01), seed=fit_seed
        )
        return net.get_weights(), hist["loss"]

    (w1, l1), (w2, l2), (w3, _) = run(3), run(3), run(4)
    assert weights_equal(w1, w2) and l1 == l2
    assert not weights_equal(w1, w3)  # another shuffle


def test_shuffle_false_ignores_the_fit_seed(rng):
    X, y = rng.normal(size=(40, 3)), rng.integers(0, 2, 40)
    weights = []
    for seed in (1, 2):
        net = bpgpu.MLP([3, 4, 2], backend="numpy", seed=0)
        net.fit(X, y, epochs=3, batch_size=8, shuffle=False, seed=seed)
        weights.append(net.get_weights())
    assert weights_equal(*weights)


# ---- History, validation, early stopping ------------------------------------------------------


def test_history_fields(rng):
    X, y = rng.normal(size=(50, 4)), rng.integers(0, 3, 50)
    net = bpgpu.MLP([4, 5, 3], backend="numpy", seed=0)
    hist = net.fit(X, y, epochs=3, batch_size=7)
    assert isinstance(hist, bpgpu.History)
    assert hist.epochs == [1, 2, 3]
    assert set(hist.history) == {"loss", "accuracy"}
    assert all(len(v) == 3 for v in hist.history.values())
    assert hist["loss"] is hist.history["loss"]
    assert all(0.0 <= a <= 1.0 for a in hist["accuracy"])
    assert hist.backend == "numpy" and hist.wall_time > 0
    assert hist.stopped_epoch is None


def test_history_of_a_regression_has_no_accuracy(rng):
    X = rng.normal(size=(30, 2))
    net = bpgpu.MLP([2, 3, 1], output="identity", backend="numpy", seed=0)
    hist = net.fit(X, X.sum(axis=1), epochs=2, validation_split=0.2)
    assert set(hist.history) == {"loss", "val_loss"}


def test_loss_in_history_is_the_epoch_mean(rng):
    # one full batch with plain SGD: the epoch's loss is the loss before its single update
    X, y = rng.normal(size=(20, 3)), rng.integers(0, 2, 20)
    net = bpgpu.MLP([3, 4, 2], backend="numpy", dtype="float64", seed=0)
    before = net.loss(X, y)
    hist = net.fit(X, y, epochs=1, batch_size=20, shuffle=False)
    assert hist["loss"][0] == pytest.approx(before, rel=1e-12)


def test_validation_split_holds_out_the_last_rows(rng):
    X, y = rng.normal(size=(100, 4)), rng.integers(0, 3, 100)
    net = bpgpu.MLP([4, 6, 3], backend="numpy", dtype="float64", seed=0)
    hist = net.fit(X, y, epochs=2, batch_size=10, validation_split=0.2)
    assert set(hist.history) == {"loss", "accuracy", "val_loss", "val_accuracy"}
    assert hist["val_loss"][-1] == pytest.approx(net.loss(X[80:], y[80:]), rel=1e-12)
    assert hist["val_accuracy"][-1] == pytest.approx(net.score(X[80:], y[80:]))


def test_validation_data(rng):
    X, y = rng.normal(size=(60, 4)), rng.integers(0, 3, 60)
    Xv, yv = rng.normal(size=(13, 4)), rng.integers(0, 3, 13)
    net = bpgpu.MLP([4, 6, 3], backend="numpy", dtype="float64", seed=0)
    hist = net.fit(X, y, epochs=3, batch_size=8, validation_data=(Xv, yv))
    assert len(hist["val_loss"]) == 3
    assert hist["val_loss"][-1] == pytest.approx(net.loss(Xv, yv), rel=1e-12)
    assert hist["val_accuracy"][-1] == pytest.approx(net.score(Xv, yv))


def test_early_stopping_with_patience_keeps_the_best_weights(rng):
    # train on noise, validate on other noise: the validation loss soon stops improving
    X, y = rng.normal(size=(64, 10)), rng.integers(0, 2, 64)
    Xv, yv = rng.normal(size=(64, 10)), rng.integers(0, 2, 64)
    net = bpgpu.MLP([10, 64, 2], activation="relu", backend="numpy", dtype="float64", seed=0)
    hist = net.fit(
        X,
        y,
        epochs=500,
        batch_size=8,
        optimizer=bpgpu.Adam(lr=0.01),
        validation_data=(Xv, yv),
        patience=3,
    )
    assert hist.stopped_epoch is not None and hist.stopped_epoch < 500
    assert len(hist.epochs) == hist.stopped_epoch
    val = hist["val_loss"]
    best = int(np.argmin(val)) + 1
    assert hist.best_epoch == best
    # stops after exactly `patience` epochs without improvement
    assert hist.stopped_epoch - best == 3
    assert all(v >= val[best - 1] for v in val[best:])
    assert net.loss(Xv, yv) == pytest.approx(val[best - 1], rel=1e-12)  # the best epoch's weights


def test_early_stopping_without_validation_watches_the_training_loss(rng):
    X, y = rng.normal(size=(30, 3)), rng.integers(0, 2, 30)
    net = bpgpu.MLP([3, 4, 2], backend="numpy", seed=0)
    hist = net.fit(X, y, epochs=5, batch_size=30, optimizer=bpgpu.SGD(lr=0.01), patience=2)
    assert hist.stopped_epoch is None and hist.epochs == [1, 2, 3, 4, 5]  # the loss keeps falling
    assert hist.best_epoch == 5


def test_verbose_fit_shows_progress(rng, capsys):
    pytest.importorskip("tqdm")
    X, y = rng.normal(size=(10, 3)), rng.integers(0, 2, 10)
    bpgpu.MLP([3, 2], backend="numpy", seed=0).fit(X, y, epochs=2, verbose=True)
    assert "2/2" in capsys.readouterr().err


def test_predict_outputs(rng):
    X = rng.normal(size=(9, 3))
    soft = bpgpu.MLP([3, 4, 5], backend="numpy", seed=0)
    P = soft.predict_proba(X)
    assert P.shape == (9, 5) and P.dtype == np.float32
    np.testing.assert_allclose(P.sum(axis=1), 1, rtol=1e-6)
    np.testing.assert_array_equal(soft.predict(X), P.argmax(axis=1))
    multi = bpgpu.MLP([3, 4, 2], output="sigmoid", backend="numpy", seed=0)
    assert multi.predict(X).shape == (9, 2)
    reg = bpgpu.MLP([3, 4, 1], output="identity", backend="numpy", seed=0)
    assert reg.predict(X).shape == (9,)


def test_score_is_r2_for_regression(rng):
    X = rng.normal(size=(200, 2))
    y = X @ np.array([1.5, -2.0]) + 0.5
    net = bpgpu.MLP([2, 1], output="identity", backend="numpy", dtype="float64", seed=0)
    net.fit(X, y, epochs=30, batch_size=10, optimizer=bpgpu.SGD(lr=0.05))
    assert net.score(X, y) > 0.999
    pred = net.predict(X)
    r2 = 1 - np.sum((y - pred) ** 2) / np.sum((y - y.mean()) ** 2)
    assert net.score(X, y) == pytest.approx(r2, rel=1e-9)


# ---- fit's minibatches against gradients() by hand ---------------------------------------------


@pytest.mark.parametrize("n,batch_size", [(10, 4), (7, 7), (5, 1), (9, 100)])
def test_fit_is_minibatch_sgd_with_momentum_carried_across_batches(rng, n, batch_size):
    """Two epochs of fit (shuffle off, a short last batch) against the same updates computed
    from net.gradients on each batch; the velocity carries over batches and epochs."""
    X, y = rng.normal(size=(n, 3)), rng.integers(0, 2, n)
    opt = bpgpu.SGD(lr=0.3, momentum=0.7, nesterov=True, weight_decay=0.01)
    net = bpgpu.MLP([3, 5, 2], activation="tanh", backend="numpy", dtype="float64", seed=2)
    manual = bpgpu.MLP([3, 5, 2], activation="tanh", backend="numpy", dtype="float64", seed=2)
    weights = [(W.copy(), b.copy()) for W, b in manual.get_weights()]
    velocity = [(np.zeros_like(W), np.zeros_like(b)) for W, b in weights]
    for _ in range(2):
        for start in range(0, n, batch_size):
            manual.set_weights(weights)
            grads = manual.gradients(X[start : start + batch_size], y[start : start + batch_size])
            for (W, b), (vW, vb), (gW, gb) in zip(weights, velocity, grads, strict=True):
                gW = gW + opt.weight_decay * W
                vW *= opt.momentum
                vW += gW
                vb *= opt.momentum
                vb += gb
                W -= opt.lr * (gW + opt.momentum * vW)
                b -= opt.lr * (gb + opt.momentum * vb)
    net.fit(X, y, epochs=2, batch_size=batch_size, optimizer=opt, shuffle=False)
    for (W1, b1), (W2, b2) in zip(net.get_weights(), weights, strict=True):
        np.testing.assert_allclose(W1, W2, rtol=1e-11, atol=1e-13)
        np.testing.assert_allclose(b1, b2, rtol=1e-11, atol=1e-13)
