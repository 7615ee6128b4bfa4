"""The systems a benchmark compares: each bpgpu backend, PyTorch eager and torch.compile.

A system turns (workload, optimizer, data) into a ``step(i)`` callable that runs one
training step on the i-th rotated batch, plus ``sync()`` that waits for queued work. All
systems start from the same initial weights (``bpgpu.model.initial_weights``) and see the
same batches in the same order.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bpgpu.benchmark.workloads import Workload
from bpgpu.model import MLP, initial_weights
from bpgpu.optimizers import SGD, Adam, Optimizer, RMSprop


@dataclass
class Prepared:
    """A ready system: ``step(i)`` runs a training step on rotation i; ``state()`` returns the
    optimizer state as host arrays (to count subnormal numbers)."""

    step: Callable[[int], None]
    sync: Callable[[], None]
    state: Callable[[], list[np.ndarray]]
    device: str  # "cpu" or "gpu"


@dataclass
class Data:
    """Host data shared by every system: X (n, k) float32, labels (n,) int64, and the row
    index of each rotation (``rotations`` arrays of ``batch`` rows)."""

    X: np.ndarray
    labels: np.ndarray
    index: list[np.ndarray]


def make_data(w: Workload, n_rotations: int, seed: int) -> Data:
    """MNIST-like inputs: many columns rarely non-zero (so some weights stop getting gradient
    and RMSprop's state decays, as on real data), labels from a random linear teacher."""
    rng = np.random.default_rng(seed)
    n = w.batch * n_rotations
    k, classes = w.layers[0], w.layers[-1]
    p_nonzero = rng.beta(0.3, 0.6, size=k)  # U-shaped: many columns almost always zero
    X = (rng.random((n, k), dtype=np.float32) * (rng.random((n, k)) < p_nonzero)).astype(np.float32)
    teacher = rng.standard_normal((k, max(classes, 2)))
    labels = np.argmax(X @ teacher, axis=1).astype(np.int64)
    order = rng.permutation(n)
    index = [np.sort(order[r * w.batch : (r + 1) * w.batch]) for r in range(n_rotations)]
    return Data(X, labels, index)


def make_optimizer(name: str) -> Optimizer:
    return {"rmsprop": RMSprop, "sgd": SGD, "adam": Adam}[name]()


# ---- bpgpu backends ------------------------------------------------------------------------


def prepare_bpgpu(backend: str, w: Workload, opt: Optimizer, data: Data, seed: int) -> Prepared:
    """The training step exactly as ``MLP.fit`` runs it: ``Backend.train_step`` on the model's
    Network and Workspace with one OptimizerState per layer."""
    model = MLP(
        list(w.layers),
        activation=w.activation,
        output=w.output,
        backend=backend,
        dtype="float32",
        seed=seed,
    )
    xp = model.backend
    net = model._net
    Xd = xp.asarray(data.X, model.dtype)
    Yd = xp.asarray(
        model._targets(data.labels if w.layers[-1] > 1 else data.labels % 2, len(data.labels)),
        model.dtype,
    )
    index = [xp.asarray(ix, np.dtype(np.int64)) for ix in data.index]
    states = [xp.optimizer_state(opt, W, b) for W, b in zip(net.W, net.b)]
    ws = model._workspace(w.batch)
    stats = model._stats()

    def step(i: int) -> None:
        xp.train_step(net, ws, Xd, Yd, index[i % len(index)], states, stats)

    def state() -> list[np.ndarray]:
        return [xp.to_host(a) for s in states for a in (*s.W.values(), *s.b.values())]

    device = "cpu" if backend == "numpy" else "gpu"
    return Prepared(step, xp.synchronize, state, device)


# ---- PyTorch --------------------------------------------------------------------------------


def torch_status() -> str | None:
    """None when torch can be imported, else the reason for the report's row."""
    return None if importlib.util.find_spec("torch") is not None else "not installed"


def prepare_torch(
    w: Workload, opt: Optimizer, data: Data, seed: int, device: str, compiled: bool
) -> Prepared:
    """The same network in plain PyTorch (Linear layers, fused loss on logits, torch.optim),
    accumulating the loss sum and the number correct on the device as bpgpu's step does."""
    import torch

    dev = torch.device("cuda" if device == "gpu" else "cpu")
    acts = {
        "relu": torch.nn.ReLU,
        "sigmoid": torch.nn.Sigmoid,
        "tanh": torch.nn.Tanh,
        "identity": torch.nn.Identity,
    }
    modules: list[torch.nn.Module] = []
    for l, (W, b) in enumerate(
        initial_weights(w.layers, [w.activation] * (len(w.layers) - 2), seed)
    ):
        lin = torch.nn.Linear(W.shape[0], W.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(W.T.astype(np.float32)))
            lin.bias.copy_(torch.from_numpy(b.astype(np.float32)))
        modules.append(lin)
        if l < len(w.layers) - 2:
            modules.append(acts[w.activation]())
    net = torch.nn.Sequential(*modules).to(dev)
    if w.output == "softmax":
        loss_fn: torch.nn.Module = torch.nn.CrossEntropyLoss()
        targets = torch.from_numpy(data.labels).to(dev)
    elif w.output == "sigmoid":
        loss_fn = torch.nn.BCEWithLogitsLoss()
        targets = torch.from_numpy((data.labels % 2).astype(np.float32)).reshape(-1, 1).to(dev)
    else:
        loss_fn = torch.nn.MSELoss()
        targets = (
            torch.nn.functional.one_hot(torch.from_numpy(data.labels), w.layers[-1]).float().to(dev)
        )
    p = opt.params()
    if opt.kind == "rmsprop":
        topt = torch.optim.RMSprop(
            net.parameters(),
            lr=p["lr"],
            alpha=p["rho"],
            eps=p["eps"],
            weight_decay=p["weight_decay"],
        )
    elif opt.kind == "sgd":
        topt = torch.optim.SGD(
            net.parameters(),
            lr=p["lr"],
            momentum=p["momentum"],
            nesterov=p["nesterov"],
            weight_decay=p["weight_decay"],
        )
    else:
        topt = torch.optim.Adam(
            net.parameters(),
            lr=p["lr"],
            betas=(p["beta1"], p["beta2"]),
            eps=p["eps"],
            weight_decay=p["weight_decay"],
        )
    X = torch.from_numpy(data.X).to(dev)
    index = [torch.from_numpy(ix).to(dev) for ix in data.index]
    stats = torch.zeros(2, dtype=torch.float64, device=dev)

    def forward_loss(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = net(x)
        loss = loss_fn(logits, y)
        if w.output == "softmax":
            correct = (logits.argmax(dim=1) == y).sum()
        else:
            correct = ((logits > 0) == (y > 0.5)).sum()
        return loss, correct

    run = torch.compile(forward_loss) if compiled else forward_loss

    def step(i: int) -> None:
        ix = index[i % len(index)]
        x, y = X.index_select(0, ix), targets.index_select(0, ix)
        topt.zero_grad(set_to_none=True)
        loss, correct = run(x, y)
        loss.backward()
        topt.step()
        stats[0] += loss.detach() * len(ix)
        stats[1] += correct

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def state() -> list[np.ndarray]:
        return [
            v.detach().cpu().numpy()
            for s in topt.state.values()
            for v in s.values()
            if torch.is_tensor(v) and v.dim() > 0
        ]

    return Prepared(step, sync, state, device)


def torch_has_cuda() -> bool:
    if torch_status() is not None:
        return False
    import torch

    return bool(torch.cuda.is_available())
