"""The systems a benchmark compares: each bpgpu backend, PyTorch eager and torch.compile, and
JAX's ``jit`` on the CPU.

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
from typing import TYPE_CHECKING, Any

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
    return get_backend(backend).device


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


# ---- JAX ----------------------------------------------------------------------------------------


def jax_status() -> str | None:
    """None when jax can be imported, else the reason for the report's row."""
    return None if importlib.util.find_spec("jax") is not None else "not installed"


class JaxTrainer:
    """The same network and optimizer in JAX, the whole step (gather, forward, loss, gradient,
    update, statistics) one ``jax.jit`` function on the CPU; the rules are those of
    bpgpu/optimizers.py written in jax.numpy, float32 throughout."""

    def __init__(self, w: Workload, opt: Optimizer, seed: int) -> None:
        import jax
        import jax.numpy as jnp

        self.jax, self.jnp, self.w, self.opt = jax, jnp, w, opt
        acts = {
            "relu": jax.nn.relu,
            "sigmoid": jax.nn.sigmoid,
            "tanh": jnp.tanh,
            "identity": lambda z: z,
        }
        act = acts[w.activation]
        self.initial = [
            (jnp.asarray(W, jnp.float32), jnp.asarray(b, jnp.float32))
            for W, b in initial_weights(w.layers, [w.activation] * (len(w.layers) - 2), seed)
        ]

        def loss_of(params, x, y):
            a = x
            for W, b in params[:-1]:
                a = act(a @ W + b)
            z = a @ params[-1][0] + params[-1][1]
            if w.output == "softmax":
                lp = jax.nn.log_softmax(z)
                loss = -jnp.mean(jnp.take_along_axis(lp, y[:, None], axis=1))
                correct = jnp.sum(jnp.argmax(z, axis=1) == y)
            elif w.output == "sigmoid":
                loss = jnp.mean(jnp.sum(jax.nn.softplus(z) - y * z, axis=1))
                correct = jnp.sum(jnp.all((z > 0) == (y > 0.5), axis=1))
            else:
                loss = 0.5 * jnp.mean(jnp.sum((z - y) ** 2, axis=1))
                correct = jnp.zeros((), jnp.int32)
            return loss, correct

        rule = _jax_rule(opt, jnp)

        def step(params, state, t, stats, X, Y, ix):
            x, y = X[ix], Y[ix]
            (loss, correct), grads = jax.value_and_grad(loss_of, has_aux=True)(params, x, y)
            params, state = rule(params, grads, state, t)
            stats = stats + jnp.array([loss * len(ix), correct], jnp.float32)
            return params, state, stats

        self.step_fn = jax.jit(step, donate_argnums=(0, 1, 3))
        self.reset()

    def reset(self) -> None:
        """The initial weights again, zero optimizer state and statistics, update count 0."""
        jnp = self.jnp
        self.params = [(W.copy(), b.copy()) for W, b in self.initial]
        self.state = [
            tuple((jnp.zeros_like(W), jnp.zeros_like(b)) for _ in range(2)) for W, b in self.params
        ]
        self.t = 0
        self.stats = jnp.zeros(2, jnp.float32)

    def device_data(self, data: Data) -> tuple[Any, Any]:
        """X and the targets as JAX arrays: class indices for softmax, else 0/1 rows."""
        jnp, k = self.jnp, self.w.layers[-1]
        labels = _labels(self.w, data)
        if self.w.output == "softmax":
            targets = jnp.asarray(labels.astype(np.int32))
        elif k == 1:
            targets = jnp.asarray(labels.astype(np.float32).reshape(-1, 1))
        else:
            targets = jnp.asarray(np.eye(k, dtype=np.float32)[labels])
        return jnp.asarray(data.X), targets

    def step(self, X: Any, Y: Any, ix: Any) -> None:
        self.t += 1
        self.params, self.state, self.stats = self.step_fn(
            self.params, self.state, self.t, self.stats, X, Y, ix
        )

    def fit(self, data: Data, epochs: int, seed: int) -> None:
        """What ``MLP.fit`` does: a shuffle each epoch from ``seed``, minibatches in order (the
        last one shorter, its own compiled shape), the statistics read back each epoch."""
        X, Y = self.device_data(data)
        order = np.arange(len(data.labels), dtype=np.int32)
        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            rng.shuffle(order)
            index = self.jnp.asarray(order)
            self.stats = self.jnp.zeros(2, self.jnp.float32)
            for start in range(0, len(order), self.w.batch):
                self.step(X, Y, index[start : start + self.w.batch])
            np.asarray(self.stats)

    def sync(self) -> None:
        self.jax.block_until_ready(self.params)

    def state_arrays(self) -> list[np.ndarray]:
        return [np.asarray(a) for layer in self.state for pair in layer for a in pair]


def _jax_rule(opt: Optimizer, jnp: Any) -> Callable[..., Any]:
    """``opt``'s update in jax.numpy: (params, grads, state, t) -> (params, state), each layer's
    state two (W, b) pairs of slots; weight decay on the weights only, as bpgpu's."""
    from bpgpu.optimizers import SGD, Adam, RMSprop

    def per_tensor(p, g, s1, s2, t, decay):
        if decay and opt.weight_decay:
            g = g + opt.weight_decay * p
        lr = opt.lr_at(1)
        if isinstance(opt, SGD):
            if opt.momentum:
                s1 = opt.momentum * s1 + g
                g = g + opt.momentum * s1 if opt.nesterov else s1
            return p - lr * g, s1, s2
        if isinstance(opt, RMSprop):
            s1 = opt.rho * s1 + (1 - opt.rho) * g * g
            return p - lr * g / (jnp.sqrt(s1) + opt.eps), s1, s2
        if isinstance(opt, Adam):
            s1 = opt.beta1 * s1 + (1 - opt.beta1) * g
            s2 = opt.beta2 * s2 + (1 - opt.beta2) * g * g
            m_hat = s1 / (1 - opt.beta1**t)
            v_hat = s2 / (1 - opt.beta2**t)
            return p - lr * m_hat / (jnp.sqrt(v_hat) + opt.eps), s1, s2
        raise ValueError(f"no JAX rule for {type(opt).__name__}")

    def rule(params, grads, state, t):
        new_params, new_state = [], []
        for (W, b), (gW, gb), ((s1W, s1b), (s2W, s2b)) in zip(params, grads, state, strict=True):
            W, s1W, s2W = per_tensor(W, gW, s1W, s2W, t, True)
            b, s1b, s2b = per_tensor(b, gb, s1b, s2b, t, False)
            new_params.append((W, b))
            new_state.append(((s1W, s1b), (s2W, s2b)))
        return new_params, new_state

    return rule


def prepare_jax(w: Workload, opt: Optimizer, data: Data, seed: int) -> Prepared:
    """A JaxTrainer's step on the rotated batches, data already in JAX arrays."""
    trainer = JaxTrainer(w, opt, seed)
    X, Y = trainer.device_data(data)
    index = [trainer.jnp.asarray(ix.astype(np.int32)) for ix in data.index]

    def step(i: int) -> None:
        trainer.step(X, Y, index[i % len(index)])

    return Prepared(step, trainer.sync, trainer.state_arrays, "cpu")


def prepare_jax_fit(w: Workload, opt: Optimizer, data: Data, seed: int, epochs: int) -> PreparedFit:
    """A JaxTrainer's fit; one trainer throughout, reset each time, so it compiles once."""
    trainer = JaxTrainer(w, opt, seed)

    def fresh() -> Callable[[], None]:
        trainer.reset()
        return lambda: trainer.fit(data, epochs, seed)

    return PreparedFit(fresh, trainer.sync, "cpu")
