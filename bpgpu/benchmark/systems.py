"""The systems a benchmark compares: each bpgpu backend, PyTorch eager and torch.compile.

A system turns (workload, optimizer, data) into a ``step(i)`` callable that runs one
training step on the i-th rotated batch, plus ``sync()`` that waits for queued work; or, for
a whole ``fit``, into ``fresh()`` that resets the weights and optimizer state and returns the
fit to time. All systems start from the same initial weights
(``bpgpu.initializers.initial_weights``) and see the same batches in the same order.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from bpgpu.backends import get_backend
from bpgpu.benchmark.workloads import Workload
from bpgpu.initializers import initial_weights
from bpgpu.model import MLP
from bpgpu.optimizers import Optimizer

if TYPE_CHECKING:
    import torch


@dataclass
class Prepared:
    """A ready system: ``step(i)`` runs a training step on rotation i; ``state()`` returns the
    optimizer state as host arrays (to count subnormal numbers)."""

    step: Callable[[int], None]
    sync: Callable[[], None]
    state: Callable[[], list[np.ndarray]]
    device: str  # "cpu" or "gpu"


@dataclass
class PreparedFit:
    """A ready whole-``fit``: ``fresh()`` resets the weights to the shared initial ones and
    the optimizer state to zero (untimed) and returns the fit to time, which takes the host
    data to the device, shuffles each epoch and reads the loss back each epoch, as
    ``MLP.fit`` does."""

    fresh: Callable[[], Callable[[], object]]
    sync: Callable[[], None]
    device: str


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


def _labels(w: Workload, data: Data) -> np.ndarray:
    """Class labels, or 0/1 for a single output unit."""
    return data.labels if w.layers[-1] > 1 else data.labels % 2


# ---- bpgpu backends ------------------------------------------------------------------------


def _model(backend: str, w: Workload, seed: int) -> MLP:
    return MLP(
        list(w.layers),
        activation=w.activation,
        output=w.output,
        backend=backend,
        dtype="float32",
        seed=seed,
    )


def prepare_bpgpu(backend: str, w: Workload, opt: Optimizer, data: Data, seed: int) -> Prepared:
    """The training step exactly as ``MLP.fit`` runs it: ``Backend.train_step`` on the model's
    Network and Workspace with one OptimizerState per layer."""
    model = _model(backend, w, seed)
    xp = model.backend
    net = model._net
    Xd = xp.asarray(data.X, model.dtype)
    Yd = xp.asarray(model._targets(_labels(w, data), len(data.labels)), model.dtype)
    index = [xp.asarray(ix, np.dtype(np.int64)) for ix in data.index]
    states = [xp.optimizer_state(opt, W, b) for W, b in zip(net.W, net.b, strict=True)]
    ws = model._workspace(w.batch)
    stats = model._stats()

    def step(i: int) -> None:
        xp.train_step(net, ws, Xd, Yd, index[i % len(index)], states, stats)

    def state() -> list[np.ndarray]:
        return [xp.to_host(a) for s in states for a in (*s.W.values(), *s.b.values())]

    return Prepared(step, xp.synchronize, state, _device(backend))


def prepare_bpgpu_fit(
    backend: str, w: Workload, opt: Optimizer, data: Data, seed: int, epochs: int
) -> PreparedFit:
    """``MLP.fit`` on all of ``data.X``: a new model from the shared initial weights each
    time."""
    y = _labels(w, data)

    def fresh() -> Callable[[], object]:
        model = _model(backend, w, seed)
        return lambda: model.fit(
            data.X, y, epochs=epochs, batch_size=w.batch, optimizer=opt, seed=seed
        )

    return PreparedFit(fresh, get_backend(backend).synchronize, _device(backend))


def _device(backend: str) -> str:
    return "cpu" if backend == "numpy" else "gpu"


# ---- PyTorch --------------------------------------------------------------------------------


def torch_status() -> str | None:
    """None when torch can be imported, else the reason for the report's row."""
    return None if importlib.util.find_spec("torch") is not None else "not installed"


def torch_has_cuda() -> bool:
    """Whether torch is importable and sees a CUDA device."""
    if torch_status() is not None:
        return False
    import torch

    return bool(torch.cuda.is_available())


class TorchTrainer:
    """The same network in plain PyTorch (Linear layers, fused loss on logits, torch.optim),
    accumulating the loss sum and the number correct on the device as bpgpu's step does.
    ``compiled``: the forward pass and loss through ``torch.compile`` (compiled on the first
    step, so a warm-up keeps it out of the numbers)."""

    optimizer: torch.optim.Optimizer

    def __init__(self, w: Workload, opt: Optimizer, seed: int, device: str, compiled: bool) -> None:
        import torch

        self.torch, self.w, self.opt = torch, w, opt
        self.dev = torch.device("cuda" if device == "gpu" else "cpu")
        acts = {
            "relu": torch.nn.ReLU,
            "sigmoid": torch.nn.Sigmoid,
            "tanh": torch.nn.Tanh,
            "identity": torch.nn.Identity,
        }
        modules: list[torch.nn.Module] = []
        for i, (W, b) in enumerate(
            initial_weights(w.layers, [w.activation] * (len(w.layers) - 2), seed)
        ):
            lin = torch.nn.Linear(W.shape[0], W.shape[1])
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(W.T.astype(np.float32)))
                lin.bias.copy_(torch.from_numpy(b.astype(np.float32)))
            modules.append(lin)
            if i < len(w.layers) - 2:
                modules.append(acts[w.activation]())
        self.net = torch.nn.Sequential(*modules).to(self.dev)
        self.initial = [p.detach().clone() for p in self.net.parameters()]
        self.loss_fn: torch.nn.Module = {
            "softmax": torch.nn.CrossEntropyLoss,
            "sigmoid": torch.nn.BCEWithLogitsLoss,
            "identity": torch.nn.MSELoss,
        }[w.output]()
        if compiled:
            # Each trainer's forward is the same code object, and dynamo compiles a code object
            # at most recompile_limit (8) times before running it eagerly without a word; only
            # one compiled trainer is in use at a time, so start each from empty caches.
            torch._dynamo.reset()
        self.run = torch.compile(self._forward_loss) if compiled else self._forward_loss
        self.reset()

    def reset(self) -> None:
        """The initial weights again, a new optimizer (zero state) and zero statistics."""
        torch = self.torch
        with torch.no_grad():
            for p, p0 in zip(self.net.parameters(), self.initial, strict=True):
                p.copy_(p0)
        # The optimizer declares its torch.optim equivalent (class name, keyword arguments).
        # bpgpu's weight decay is on the weights only, so the biases are a group without it.
        name, kwargs = self.opt.torch_optimizer()
        linears = [m for m in self.net if isinstance(m, torch.nn.Linear)]
        groups = [
            {"params": [m.weight for m in linears]},
            {"params": [m.bias for m in linears], "weight_decay": 0.0},
        ]
        self.optimizer = getattr(torch.optim, name)(groups, **kwargs)
        self.stats = torch.zeros(2, dtype=torch.float64, device=self.dev)

    def device_data(self, data: Data) -> tuple[torch.Tensor, torch.Tensor]:
        """X (n, k) float32 and the targets on the device: class indices for softmax, else
        0/1 (one column) or one-hot rows."""
        torch, k = self.torch, self.w.layers[-1]
        labels = torch.from_numpy(_labels(self.w, data))
        if self.w.output == "softmax":
            targets = labels
        elif k == 1:
            targets = labels.float().reshape(-1, 1)
        else:
            targets = torch.nn.functional.one_hot(labels, k).float()
        return torch.from_numpy(data.X).to(self.dev), targets.to(self.dev)

    def _forward_loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        loss = self.loss_fn(logits, y)
        if self.w.output == "softmax":
            correct = (logits.argmax(dim=1) == y).sum()
        else:
            correct = ((logits > 0) == (y > 0.5)).sum()
        return loss, correct

    def step(self, X: torch.Tensor, targets: torch.Tensor, ix: torch.Tensor) -> None:
        """One training step on the rows ``ix`` of (X, targets), all on the device."""
        x, y = X.index_select(0, ix), targets.index_select(0, ix)
        self.optimizer.zero_grad(set_to_none=True)
        loss, correct = self.run(x, y)
        loss.backward()
        self.optimizer.step()
        self.stats[0] += loss.detach() * len(ix)
        self.stats[1] += correct

    def fit(self, data: Data, epochs: int, seed: int) -> None:
        """What ``MLP.fit`` does: data to the device, a shuffle each epoch from ``seed``,
        minibatches in order, the statistics read back at each epoch's end."""
        torch = self.torch
        X, targets = self.device_data(data)
        order = np.arange(len(data.labels), dtype=np.int64)
        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            rng.shuffle(order)
            index = torch.tensor(order, device=self.dev)
            self.stats.zero_()
            for start in range(0, len(order), self.w.batch):
                self.step(X, targets, index[start : start + self.w.batch])
            self.stats.tolist()

    def sync(self) -> None:
        if self.dev.type == "cuda":
            self.torch.cuda.synchronize()

    def state(self) -> list[np.ndarray]:
        """The optimizer's state tensors on the host."""
        return [
            v.detach().cpu().numpy()
            for s in self.optimizer.state.values()
            for v in s.values()
            if self.torch.is_tensor(v) and v.dim() > 0
        ]


def prepare_torch(
    w: Workload, opt: Optimizer, data: Data, seed: int, device: str, compiled: bool
) -> Prepared:
    """A TorchTrainer's step on the rotated batches, data already on the device."""
    trainer = TorchTrainer(w, opt, seed, device, compiled)
    X, targets = trainer.device_data(data)
    index = [trainer.torch.from_numpy(ix).to(trainer.dev) for ix in data.index]

    def step(i: int) -> None:
        trainer.step(X, targets, index[i % len(index)])

    return Prepared(step, trainer.sync, trainer.state, device)


def prepare_torch_fit(
    w: Workload, opt: Optimizer, data: Data, seed: int, device: str, compiled: bool, epochs: int
) -> PreparedFit:
    """A TorchTrainer's fit; one trainer throughout, reset each time, so ``torch.compile``
    compiles once."""
    trainer = TorchTrainer(w, opt, seed, device, compiled)

    def fresh() -> Callable[[], None]:
        trainer.reset()
        return lambda: trainer.fit(data, epochs, seed)

    return PreparedFit(fresh, trainer.sync, device)
