"""PyTorch interop (bpgpu/torch.py and DLPack in bpgpu.ops), and training that equals PyTorch's
from the same initial weights. PyTorch is a comparison, never a dependency: without it these
tests skip."""

from __future__ import annotations

import numpy as np
import pytest

import bpgpu
from bpgpu import ops
from bpgpu.backends import REGISTRY
from helpers import backend_or_skip

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch)")
from bpgpu.torch import from_torch, to_torch  # noqa: E402 (after the importorskip)

nn = torch.nn


def test_from_torch_reads_layers_activations_and_weights(rng):
    seq = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 9), nn.Tanh(), nn.Linear(9, 3))
    seq = seq.double()
    model = from_torch(seq, backend="numpy")
    assert (list(model.layers), model.activations, model.output) == (
        [4, 8, 9, 3],
        ["relu", "tanh"],
        "softmax",
    )
    assert model.dtype == np.float64
    X = rng.normal(size=(7, 4))
    logits = seq(torch.from_numpy(X)).detach().numpy()
    np.testing.assert_allclose(
        model.predict_proba(X), torch.softmax(torch.from_numpy(logits), 1), rtol=1e-12
    )


@pytest.mark.parametrize(
    "last,output",
    [(nn.Sigmoid(), "sigmoid"), (nn.Softmax(dim=1), "softmax"), (nn.Identity(), "identity")],
)
def test_the_output_layer_and_back(rng, last, output):
    width = 3 if output == "softmax" else 1
    seq = nn.Sequential(nn.Linear(5, 6), nn.Sigmoid(), nn.Linear(6, width), last).double()
    model = from_torch(seq, backend="numpy")
    assert model.output == output and model.activations == ["sigmoid"]
    X = rng.normal(size=(4, 5))
    want = seq(torch.from_numpy(X)).detach().numpy()
    np.testing.assert_allclose(model.predict_proba(X), want, rtol=1e-12)
    back = to_torch(model)
    np.testing.assert_allclose(back(torch.from_numpy(X)).detach().numpy(), want, rtol=1e-12)
    again = from_torch(back, backend="numpy")
    for (W, b), (W2, b2) in zip(model.get_weights(), again.get_weights(), strict=True):
        np.testing.assert_array_equal(W, W2)
        np.testing.assert_array_equal(b, b2)


def test_to_torch_float32_and_logits(rng):
    model = bpgpu.MLP([3, 4, 2], activation="relu", backend="numpy", seed=0)
    seq = to_torch(model, include_output=False)
    assert [type(m).__name__ for m in seq] == ["Linear", "ReLU", "Linear"]
    assert seq[0].weight.dtype == torch.float32
    X = rng.normal(size=(5, 3)).astype(np.float32)
    P = torch.softmax(seq(torch.from_numpy(X)), 1).detach().numpy()
    np.testing.assert_allclose(model.predict_proba(X), P, rtol=1e-6)


@pytest.mark.parametrize(
    "seq,match",
    [
        (lambda: nn.Linear(3, 2), "must be a torch.nn.Sequential"),
        (lambda: nn.Sequential(nn.ReLU(), nn.Linear(3, 2)), r"module\[0\] \(ReLU\) comes before"),
        (lambda: nn.Sequential(nn.Linear(3, 2), nn.Dropout()), r"module\[1\] is a Dropout"),
        (
            lambda: nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Tanh()),
            r"module\[2\] \(Tanh\) follows",
        ),
        (lambda: nn.Sequential(nn.Linear(3, 2), nn.ReLU()), "followed by ReLU, which is no output"),
        (lambda: nn.Sequential(nn.Linear(3, 2), nn.Softmax(dim=0)), "Softmax only as the output"),
    ],
)
def test_modules_it_cannot_read_are_named(seq, match):
    with pytest.raises((TypeError, ValueError), match=match):
        from_torch(seq(), backend="numpy")


def test_ops_take_torch_tensors_without_copies(rng):
    X, W, b = (torch.from_numpy(rng.normal(size=s)) for s in ((5, 3), (3, 4), (4,)))
    A = ops.dense_forward(X, W, b, "tanh")
    assert isinstance(A, torch.Tensor)
    np.testing.assert_allclose(A.numpy(), np.tanh(X.numpy() @ W.numpy() + b.numpy()), rtol=1e-13)
    out = torch.full((5, 4), float("nan"), dtype=torch.float64)
    assert ops.dense_forward(X, W, b, "relu", out=out) is out and not torch.isnan(out).any()
    state = ops.optimizer_state(bpgpu.SGD(lr=0.1), W, b)
    D = torch.from_numpy(rng.normal(size=(5, 4)))
    W0 = W.clone()
    ops.weight_update(X, D, W, b, state)  # the tensors themselves are updated
    np.testing.assert_allclose(W.numpy(), (W0 - 0.1 * X.T @ D).numpy(), rtol=1e-13)
    dW, db = ops.weight_gradient(X, D)
    assert isinstance(dW, torch.Tensor) and torch.allclose(db, D.sum(0))


OPTIMIZERS = [
    bpgpu.SGD(lr=0.1),
    bpgpu.SGD(lr=0.05, momentum=0.9, weight_decay=0.01),
    bpgpu.SGD(lr=0.05, momentum=0.9, nesterov=True),
    bpgpu.RMSprop(lr=0.01, weight_decay=0.001),
    bpgpu.Adam(lr=0.01, weight_decay=0.01),
]
LOSSES = [
    ("softmax", "cross_entropy"),
    ("sigmoid", "cross_entropy"),
    ("softmax", "mse"),
    ("sigmoid", "mse"),
    ("identity", "mse"),
]


def torch_loss(output: str, loss: str, logits, y):
    """bpgpu's losses in torch: the mean over samples of each sample's loss summed over the
    outputs (mse: half the squared error)."""
    m = logits.shape[0]
    if loss == "cross_entropy" and output == "softmax":
        return nn.functional.cross_entropy(logits, y.argmax(1))
    if loss == "cross_entropy":
        return nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum") / m
    a = {"softmax": lambda z: torch.softmax(z, 1), "sigmoid": torch.sigmoid}.get(
        output, lambda z: z
    )(logits)
    return 0.5 * ((a - y) ** 2).sum() / m


@pytest.mark.parametrize("output,loss", LOSSES, ids=["+".join(p) for p in LOSSES])
@pytest.mark.parametrize("optimizer", OPTIMIZERS, ids=repr)
@pytest.mark.parametrize("backend", [b for b in REGISTRY if b != "reference"])
def test_training_equals_pytorchs_from_the_same_weights(rng, backend, optimizer, output, loss):
    """25 minibatch steps in float64 from the same initial weights, on every engine that runs
    here and the CUDA C kernels on the CPU (cuda-emulated): the same weights as PyTorch to 1e-10
    (bpgpu decays weights only, so torch's biases go in a group without decay). The reference
    is left out for time: the conformance suite holds every backend to it. On numba-cpu the
    whole epoch is one compiled call."""
    backend_or_skip(backend)
    k = 3 if output == "softmax" else 2
    X = rng.normal(size=(100, 6))
    Y = np.eye(k)[rng.integers(0, k, 100)] if output != "identity" else rng.normal(size=(100, k))
    if output == "sigmoid":
        Y = (rng.random((100, k)) > 0.5).astype(float)
    model = bpgpu.MLP(
        [6, 7, 5, k], ["tanh", "relu"], output, loss, backend=backend, dtype="float64", seed=3
    )
    seq = to_torch(model, include_output=False)
    name, kwargs = optimizer.torch_optimizer()
    weights = [p for n, p in seq.named_parameters() if n.endswith("weight")]
    biases = [p for n, p in seq.named_parameters() if n.endswith("bias")]
    torch_opt = getattr(torch.optim, name)(
        [{"params": weights}, {"params": biases, "weight_decay": 0.0}], **kwargs
    )
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    for start in range(0, 100, 4):  # 25 steps of 4
        torch_opt.zero_grad()
        torch_loss(output, loss, seq(Xt[start : start + 4]), Yt[start : start + 4]).backward()
        torch_opt.step()
    model.fit(X, Y, epochs=1, batch_size=4, optimizer=optimizer, shuffle=False)
    worst = 0.0
    for (W, b), lin in zip(
        model.get_weights(), [m for m in seq if isinstance(m, nn.Linear)], strict=True
    ):
        worst = max(
            worst,
            np.abs(W - lin.weight.detach().numpy().T).max(),
            np.abs(b - lin.bias.detach().numpy()).max(),
        )
    assert worst <= 1e-10, f"largest difference from PyTorch's weights: {worst:.3g}"
