"""Every bad input raises ValueError (TypeError for a wrong type) naming the
argument; a failed fit leaves the weights exactly as they were; divergence is reported."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import bpgpu
from bpgpu import ops
from bpgpu.backends import REGISTRY
from helpers import backend_or_skip

NAN, INF = float("nan"), float("inf")


@pytest.fixture
def net() -> bpgpu.MLP:
    return bpgpu.MLP([4, 5, 3], activation="tanh", backend="numpy", seed=0)


@pytest.fixture
def data(rng):
    return rng.normal(size=(12, 4)), rng.integers(0, 3, 12)


def same_weights(a, b) -> bool:
    return all(
        np.array_equal(W1, W2) and np.array_equal(b1, b2)
        for (W1, b1), (W2, b2) in zip(a, b, strict=True)
    )


# ---- constructing a model ------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"layers": [4]}, "layers"),
        ({"layers": []}, "layers"),
        ({"layers": [4, 0, 3]}, r"layers\[1\]"),
        ({"layers": [4, -2]}, r"layers\[1\]"),
        ({"layers": [4, 3], "activation": "softplus"}, "activation"),
        ({"layers": [4, 5, 6, 3], "activation": ["relu", "swish"]}, r"activation\[1\]"),
        ({"layers": [4, 5, 6, 3], "activation": ["relu"]}, "activation"),
        ({"layers": [4, 3], "output": "softmin"}, "output"),
        ({"layers": [4, 3], "loss": "hinge"}, "loss"),
        ({"layers": [4, 3], "output": "identity", "loss": "cross_entropy"}, "loss"),
        ({"layers": [4, 1], "output": "softmax"}, "softmax"),
        ({"layers": [4, 3], "backend": "opencl"}, "backend"),
        ({"layers": [4, 3], "dtype": "float16"}, "dtype"),
        ({"layers": [4, 3], "dtype": "int32"}, "dtype"),
        ({"layers": [4, 3], "seed": -1}, "seed"),
    ],
)
def test_bad_model_arguments_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bpgpu.MLP(**kwargs)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"layers": "4-3"}, "layers"),
        ({"layers": 4}, "layers"),
        ({"layers": [4, 2.5]}, r"layers\[1\]"),
        ({"layers": [4, "3"]}, r"layers\[1\]"),
        ({"layers": [4, 3], "activation": 3}, "activation"),
        ({"layers": [4, 3], "output": None}, "output"),
        ({"layers": [4, 3], "seed": 1.5}, "seed"),
        ({"layers": [4, 3], "backend": 7}, "backend"),
    ],
)
def test_wrong_model_argument_types_raise_type_error(kwargs, match):
    with pytest.raises(TypeError, match=match):
        bpgpu.MLP(**kwargs)


def test_unavailable_backend_says_why():
    reasons = bpgpu.backends.unavailable_reasons()
    if "cupy" not in reasons:
        pytest.skip("cupy runs here")
    with pytest.raises(bpgpu.BackendUnavailableError, match="cupy"):
        bpgpu.MLP([2, 2], backend="cupy")


def test_a_model_beyond_memory_is_refused_before_allocating():
    """Named by its layers, dtype and bytes, before NumPy is asked for 7 TiB."""
    with pytest.raises(
        bpgpu.MemoryBudgetError, match=r"layers \[1000000, 1000000\] in float32 .* need 10.9 TiB"
    ) as info:
        bpgpu.MLP([10**6, 10**6], backend="numpy")
    assert isinstance(info.value, ValueError) and isinstance(info.value, MemoryError)


def test_kernel_backends_refuse_arrays_beyond_32_bit_indexing():
    backend = backend_or_skip("cuda-emulated")
    with pytest.raises(bpgpu.MemoryBudgetError, match="W_1 would hold 2500000000 elements"):
        bpgpu.MLP([50000, 50000, 2], backend=backend)


def test_training_beyond_memory_is_refused_before_allocating(net, data, monkeypatch):
    X, y = data
    before = net.get_weights()
    monkeypatch.setattr(net.backend, "memory_bytes", lambda: 1000)
    with pytest.raises(bpgpu.MemoryBudgetError, match=r"layers \[4, 5, 3\].*batch_size=4"):
        net.fit(X, y, epochs=1, batch_size=4)
    assert same_weights(before, net.get_weights())


# ---- data: fit, predict, loss, score, gradients ---------------------------------------------

BAD_X = [
    (lambda X: X[:, :3], ValueError, "X.*features"),  # wrong feature count
    (lambda X: X[0], ValueError, "X.*2-D"),  # 1-D
    (lambda X: X[None], ValueError, "X.*2-D"),  # 3-D
    (lambda X: X[:0], ValueError, "X.*empty"),
    (lambda X: np.where(np.arange(X.size).reshape(X.shape) == 5, NAN, X), ValueError, "X.*NaN"),
    (
        lambda X: np.where(np.arange(X.size).reshape(X.shape) == 7, -INF, X),
        ValueError,
        "X.*infinite",
    ),
    (
        lambda X: np.where(np.arange(X.size).reshape(X.shape) == 3, 1e300, X),
        ValueError,
        "X holds values beyond the range of float32",  # the net is float32; 1e300 is a float64
    ),
    (lambda X: X.astype(str), TypeError, "X"),
    (lambda X: X + 1j, TypeError, "X"),  # complex: casting would drop the imaginary part
    (lambda X: [[1.0, 2.0], [3.0]], (TypeError, ValueError), "X"),  # ragged
]

BAD_X_IDS = [
    "features",
    "1d",
    "3d",
    "empty",
    "nan",
    "inf",
    "too-big",
    "strings",
    "complex",
    "ragged",
]


@pytest.mark.parametrize("bad,exc,match", BAD_X, ids=BAD_X_IDS)
@pytest.mark.parametrize(
    "method", ["fit", "predict", "predict_proba", "loss", "score", "gradients"]
)
def test_bad_X(net, data, method, bad, exc, match):
    X, y = data
    before = net.get_weights()
    args = (bad(X),) if method.startswith("predict") else (bad(X), y)
    with pytest.raises(exc, match=match):
        getattr(net, method)(*args)
    assert same_weights(before, net.get_weights())


@pytest.mark.parametrize("method", ["predict", "predict_proba", "loss", "score", "gradients"])
def test_inputs_that_overflow_the_forward_pass(method):
    """Finite float32 inputs near its largest value overflow X @ W: a ValueError naming X and
    the sizes at fault, not NaN outputs and RuntimeWarnings."""
    # (He-normal weights of seed 0 take the first row past float32's largest value)
    net = bpgpu.MLP([4, 5, 3], activation="relu", backend="numpy", seed=0, init="he-relu")
    X = np.array([[3e38, 3e38, -3e38, -3e38], [1.0, 2.0, 3.0, 4.0]])
    args = (X,) if method.startswith("predict") else (X, [0, 1])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # and no RuntimeWarning on the way
        with pytest.raises(ValueError, match=r"of X .*overflows float32 \(X reaches 3e\+38"):
            getattr(net, method)(*args)


BAD_Y = [
    (lambda y: np.where(np.arange(y.size) == 3, 3, y), "y.*label 3"),  # out of range
    (lambda y: np.where(np.arange(y.size) == 3, -1, y), "y.*label -1"),  # negative
    (lambda y: y + 0.5, "y.*integer"),  # fractional labels
    (lambda y: y[:-1], "X and y.*lengths"),
    (lambda y: np.where(np.arange(y.size) == 2, NAN, y), "y.*NaN"),
    (lambda y: np.where(np.arange(y.size) == 2, INF, y), "y.*infinite"),
    (lambda y: np.eye(3)[y][:, :2], "y.*columns"),  # one-hot of the wrong width
    (lambda y: np.eye(3)[y] * 2, r"y.*\[0, 1\]"),  # targets outside [0, 1] for softmax
    (lambda y: y[:, None, None], "y.*shape"),
]

BAD_Y_IDS = [
    "label-too-big",
    "label-negative",
    "fractional",
    "length",
    "nan",
    "inf",
    "width",
    "range",
    "3d",
]


@pytest.mark.parametrize("bad,match", BAD_Y, ids=BAD_Y_IDS)
@pytest.mark.parametrize("method", ["fit", "loss", "score", "gradients"])
def test_bad_y(net, data, method, bad, match):
    X, y = data
    before = net.get_weights()
    with pytest.raises(ValueError, match=match):
        getattr(net, method)(X, bad(y))
    assert same_weights(before, net.get_weights())


@pytest.mark.parametrize(
    "convert", [lambda y: y.astype(str), lambda y: y + 0j], ids=["strings", "complex"]
)
def test_y_of_the_wrong_type_is_a_type_error(net, data, convert):
    X, y = data
    before = net.get_weights()
    with pytest.raises(TypeError, match="y"):
        net.fit(X, convert(y))
    assert same_weights(before, net.get_weights())


def test_single_sigmoid_output_targets_must_be_in_0_1(rng):
    net = bpgpu.MLP([2, 1], output="sigmoid", backend="numpy")
    with pytest.raises(ValueError, match="y"):
        net.fit(rng.normal(size=(4, 2)), [0, 1, 2, 0])


def test_empty_y(net):
    with pytest.raises(ValueError, match=r"empty|lengths"):
        net.fit(np.zeros((0, 4)), np.zeros(0, dtype=int))


# ---- fit's own arguments -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,exc,match",
    [
        ({"epochs": 0}, ValueError, "epochs"),
        ({"epochs": 2.0}, TypeError, "epochs"),
        ({"batch_size": 0}, ValueError, "batch_size"),
        ({"batch_size": "32"}, TypeError, "batch_size"),
        ({"optimizer": "lbfgs"}, ValueError, "optimizer"),
        ({"optimizer": 0.1}, TypeError, "optimizer"),
        ({"optimizer": bpgpu.Adam(), "lr": 0.1}, ValueError, "lr"),
        ({"lr": -1.0, "optimizer": "sgd"}, ValueError, "lr"),
        ({"shuffle": "yes"}, TypeError, "shuffle"),
        ({"seed": -3}, ValueError, "seed"),
        ({"patience": 0}, ValueError, "patience"),
        ({"validation_split": 1.0}, ValueError, "validation_split"),
        ({"validation_split": -0.1}, ValueError, "validation_split"),
        ({"validation_split": "0.2"}, TypeError, "validation_split"),
        ({"validation_split": 0.01}, ValueError, "validation_split"),  # 12 samples: none held out
        ({"validation_split": 0.2, "validation_data": "later"}, ValueError, "validation"),
        ({"validation_data": (np.zeros((3, 4)),)}, ValueError, "validation_data"),
        ({"validation_data": (np.zeros((3, 5)), [0, 1, 2])}, ValueError, "validation_data X"),
        ({"validation_data": (np.zeros((3, 4)), [0, 1, 7])}, ValueError, "validation_data y"),
        ({"validation_data": (np.zeros((3, 4)), [0, 1])}, ValueError, "validation_data y"),
    ],
)
def test_bad_fit_arguments_leave_the_weights(net, data, kwargs, exc, match):
    X, y = data
    before = net.get_weights()
    with pytest.raises(exc, match=match):
        net.fit(X, y, epochs=kwargs.pop("epochs", 2), **kwargs)
    assert same_weights(before, net.get_weights())


def test_fit_failing_midway_restores_the_weights(net, data, monkeypatch):
    """An error after some steps have run (here a failing step) leaves the weights as before fit."""
    X, y = data
    backend = net.backend
    real_step = backend.train_step
    calls = []

    def failing_step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("injected failure")
        return real_step(*args, **kwargs)

    monkeypatch.setattr(backend, "train_step", failing_step)
    before = net.get_weights()
    with pytest.raises(RuntimeError, match="injected"):
        net.fit(X, y, epochs=3, batch_size=4, optimizer=bpgpu.SGD(lr=0.5))
    assert len(calls) == 5  # four steps did change the weights before the failure
    assert same_weights(before, net.get_weights())


# ---- divergence ---------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["numpy", "numba-cpu"])
def test_divergence_keeps_the_last_weights_whose_forward_pass_is_finite(rng, backend):
    """Full-batch SGD at lr=3 on a linear network: the loss of epoch e is the forward pass of
    the weights at the end of epoch e - 1, so when epoch E's loss overflows, the weights at the
    end of E - 1 overflow too; the model keeps epoch E - 2's, whose forward pass is finite, and
    says so; the History of the finite epochs comes with the exception. On numba-cpu all 30
    epochs are one compiled call, which stops at the diverging epoch."""
    if backend not in bpgpu.available_backends():
        pytest.skip(f"the {backend} backend cannot run here")
    X = rng.normal(size=(64, 3))
    y = X.sum(axis=1)

    def model():
        return bpgpu.MLP(
            [3, 8, 1], activation="identity", output="identity", backend=backend, seed=0
        )

    def fit(net, epochs):
        return net.fit(
            X, y, epochs=epochs, batch_size=64, optimizer=bpgpu.SGD(lr=3.0), shuffle=False
        )

    net = model()
    with pytest.raises(bpgpu.TrainingDivergedError, match="diverged") as info:
        fit(net, 30)
    exc = info.value
    assert isinstance(exc, FloatingPointError)
    diverged_at = int(str(exc).split("epoch ")[1].split(":")[0])
    assert diverged_at >= 3, "lr=3 should diverge after a few epochs"
    assert exc.history.epochs == list(range(1, diverged_at))
    assert all(np.isfinite(exc.history["loss"]))
    assert net.history is exc.history
    assert exc.kept_epoch == diverged_at - 2
    assert f"keeps the weights of epoch {exc.kept_epoch}" in str(exc)
    kept = model()
    fit(kept, exc.kept_epoch)
    assert same_weights(net.get_weights(), kept.get_weights())
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # NumPy warns of these
        assert np.all(np.isfinite(net.predict(X)))
        assert np.isfinite(net.loss(X, y))


def test_weights_kept_after_divergence_predict_without_overflow(rng):
    """A classifier whose weights grow to ~1e21 before its loss overflows: the weights it keeps
    give finite predictions without overflow warnings."""
    X, y = rng.normal(size=(100, 4)), rng.integers(0, 3, 100)
    net = bpgpu.MLP([4, 8, 3], activation="identity", backend="numpy", seed=0)
    with pytest.raises(bpgpu.TrainingDivergedError) as info:
        net.fit(X, y, epochs=20, optimizer=bpgpu.SGD(lr=100.0))
    assert info.value.kept_epoch is not None
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        assert np.all(np.isfinite(net.predict_proba(X)))


def test_divergence_from_huge_inputs_says_to_scale_them(rng):
    X, y = rng.normal(size=(100, 4)) * 1e30, rng.integers(0, 3, 100)
    net = bpgpu.MLP([4, 8, 3], activation="relu", backend="numpy", seed=0)
    before = net.get_weights()
    with pytest.raises(bpgpu.TrainingDivergedError) as info:
        net.fit(X, y, epochs=5, optimizer=bpgpu.SGD(lr=1e-3))
    message = str(info.value)
    assert "inputs reach" in message and "standardizing" in message
    assert "learning rate" not in message
    assert info.value.kept_epoch == 0  # the weights fit started from
    assert same_weights(before, net.get_weights())


def test_divergence_with_ordinary_inputs_advises_the_learning_rate(rng):
    X, y = rng.normal(size=(100, 4)), rng.integers(0, 3, 100)
    net = bpgpu.MLP([4, 8, 3], activation="identity", backend="numpy", seed=0)
    with pytest.raises(bpgpu.TrainingDivergedError, match="smaller learning rate than lr=100"):
        net.fit(X, y, epochs=20, optimizer=bpgpu.SGD(lr=100.0))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_with_huge_lr_on_a_classifier(data):
    X, y = data
    net = bpgpu.MLP([4, 5, 3], activation="relu", backend="numpy", seed=0)
    with pytest.raises(bpgpu.TrainingDivergedError, match="diverged"):
        net.fit(X * 1e3, y, epochs=50, batch_size=4, optimizer=bpgpu.SGD(lr=1e30))
    assert all(np.all(np.isfinite(W)) and np.all(np.isfinite(b)) for W, b in net.get_weights())


# ---- set_weights --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make,match",
    [
        (lambda w: w[:1], "weights"),
        (lambda w: [(w[0][0].T, w[0][1]), w[1]], "W_1"),
        (lambda w: [w[0], (w[1][0], w[1][1][:2])], "b_2"),
        (lambda w: [(np.full_like(w[0][0], np.nan), w[0][1]), w[1]], "W_1"),
        (lambda w: [w[0], (w[1][0], np.full_like(w[1][1], np.inf))], "b_2"),
        (lambda w: [w[0], (w[1][0],)], r"weights\[1\]"),
    ],
)
def test_bad_set_weights_changes_nothing(net, make, match):
    before = net.get_weights()
    with pytest.raises(ValueError, match=match):
        net.set_weights(make(net.get_weights()))
    assert same_weights(before, net.get_weights())


# ---- the public ops ---------------------------------------------------------------------------


def test_ops_reject_bad_shapes_and_names(rng):
    X, W, b = rng.normal(size=(5, 3)), rng.normal(size=(3, 4)), rng.normal(size=4)
    with pytest.raises(ValueError, match="W"):
        ops.dense_forward(X, W[:2], b)
    with pytest.raises(ValueError, match="b"):
        ops.dense_forward(X, W, b[:3])
    with pytest.raises(ValueError, match="activation"):
        ops.dense_forward(X, W, b, activation="gelu")
    with pytest.raises(ValueError, match="out"):
        ops.dense_forward(X, W, b, out=np.empty((5, 3)))
    with pytest.raises(TypeError, match="float32 or all float64"):
        ops.dense_forward(X.astype(np.float32), W, b)
    with pytest.raises(ValueError, match="A_prev"):
        ops.delta_backward(rng.normal(size=(5, 4)), W, rng.normal(size=(4, 3)), "relu")
    with pytest.raises(ValueError, match="Y"):
        ops.output_delta(rng.normal(size=(5, 4)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="loss"):
        ops.output_delta(rng.normal(size=(5, 4)), np.zeros((5, 4)), "identity", "cross_entropy")
    with pytest.raises(TypeError, match="optimizer"):
        ops.optimizer_state("adam", W, b)
    with pytest.raises(TypeError, match="in place"):
        ops.optimizer_state(bpgpu.Adam(), W.tolist(), b)


@pytest.mark.parametrize("backend", [None, *REGISTRY])
def test_ops_match_the_backend(rng, backend):
    """bpgpu.ops by backend name (None: the one of NumPy arrays), the CUDA C kernels on the CPU
    (cuda-emulated) included."""
    xp = backend_or_skip(backend or "numpy")
    launched = sum(getattr(xp, "launched", {}).values())  # the kernel backends count launches
    X, W, b, D = (rng.normal(size=s) for s in ((5, 3), (3, 4), (4,), (5, 4)))
    A = ops.dense_forward(X, W, b, "tanh", backend=backend)
    np.testing.assert_allclose(xp.to_host(A), np.tanh(X @ W + b), rtol=1e-13)
    Wd, bd = xp.asarray(W, W.dtype), xp.asarray(b, b.dtype)
    state = ops.optimizer_state(bpgpu.SGD(lr=0.1), Wd, bd, backend=backend)
    ops.weight_update(X, D, Wd, bd, state, backend=backend)
    np.testing.assert_allclose(xp.to_host(Wd), W - 0.1 * X.T @ D, rtol=1e-13)
    if hasattr(xp, "launched"):
        assert sum(xp.launched.values()) > launched, "no kernel ran"
