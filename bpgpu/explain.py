"""Backpropagation worked by hand for one sample of a small network, as the tutorials write it:
every forward value, the error, every delta and every dE/dW and dE/db as the chain-rule product
with its numbers. ``MLP.explain(x, target)`` and ``bpgpu explain`` print it.

The numbers are computed here in float64 from the model's weights with the formulas of
design.md (the same the reference backend uses), so they read as the textbook's; the loss is the
model's, for one sample: E = 1/2 sum (a - y)^2 (mse), -sum y log a (softmax cross-entropy) or
-sum y log a + (1 - y) log(1 - a) (sigmoid cross-entropy).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING, TextIO

import numpy as np

from bpgpu.backends.reference import per_sample_loss
from bpgpu.functions import ACTIVATIONS, OUTPUTS

if TYPE_CHECKING:
    from bpgpu.model import MLP

#: the most weights and biases a network may have to be explained (every one is printed)
MAX_PARAMETERS = 60

_F = {"sigmoid": "sigmoid", "relu": "relu", "tanh": "tanh", "identity": ""}
_DERIVATIVE = {
    "sigmoid": "a (1 - a)",
    "relu": "[a > 0]",
    "tanh": "1 - a^2",
    "identity": "1",
}


def _n(v: float) -> str:
    return repr(float(v))


def explain(model: MLP, x: Sequence[float], target: Sequence[float], out: TextIO) -> None:
    """Print the worked forward and backward pass of ``model`` for one sample to ``out``."""
    params = sum(n_in * n_out + n_out for n_in, n_out in itertools.pairwise(model.layers))
    if params > MAX_PARAMETERS:
        raise ValueError(
            f"explain prints every weight; this network has {params} weights and biases, more "
            f"than {MAX_PARAMETERS}: use net.gradients(X, y) for the numbers"
        )
    X = model._inputs(np.asarray(x, dtype=float).reshape(1, -1), "x").astype(np.float64)
    Y = model._targets(np.asarray(target, dtype=float).reshape(1, -1), 1, "target")
    Y = Y.astype(np.float64)
    weights = [(W.astype(np.float64), b.astype(np.float64)) for W, b in model.get_weights()]
    p = lambda *a: print(*a, file=out)  # noqa: E731
    L = len(weights)
    functions = [*model.activations, model.output]

    p(f"Forward pass of x = {[_n(v) for v in X[0]]}")
    a, outputs = X[0], [X[0]]
    z = np.zeros(0)
    for l, (W, b) in enumerate(weights, start=1):
        f = functions[l - 1]
        z = a @ W + b
        for j in range(W.shape[1]):
            terms = " + ".join(f"{_n(a[i])} * {_n(W[i, j])}" for i in range(W.shape[0]))
            p(f"  z{l}[{j}] = {terms} + {_n(b[j])} = {_n(z[j])}")
        a = ACTIVATIONS[f].f(z) if l < L else OUTPUTS[f].f(z.reshape(1, -1))[0]
        for j in range(W.shape[1]):
            name = "softmax" if f == "softmax" else _F[f]
            p(
                f"  a{l}[{j}] = {name}(z{l}[{j}]) = {_n(a[j])}"
                if name
                else f"  a{l}[{j}] = z{l}[{j}] = {_n(a[j])}"
            )
        outputs.append(a)

    loss = model.loss_name
    E = float(per_sample_loss(z.reshape(1, -1), a.reshape(1, -1), Y, model.output, loss)[0])
    y = Y[0]
    p("Error")
    if loss == "mse":
        terms = " + ".join(f"({_n(y[j])} - {_n(a[j])})^2" for j in range(len(y)))
        p(f"  E = 1/2 [{terms}] = {_n(E)}")
    elif model.output == "softmax":
        p(f"  E = -sum_j y_j log a_j = {_n(E)}")
    else:
        p(f"  E = -sum_j y_j log a_j + (1 - y_j) log(1 - a_j) = {_n(E)}")

    p("Backward pass (chain rule)")
    if loss == "cross_entropy":
        delta = a - y
        for j in range(len(y)):
            p(f"  dE/dz{L}[{j}] = a{L}[{j}] - y[{j}] = {_n(a[j])} - {_n(y[j])} = {_n(delta[j])}")
    else:
        g = a - y
        delta = OUTPUTS[model.output].backprop(a.reshape(1, -1), g.reshape(1, -1))[0]
        for j in range(len(y)):
            if model.output == "sigmoid":
                p(
                    f"  dE/dz{L}[{j}] = dE/da * da/dz = (a - y) a (1 - a) = "
                    f"({_n(a[j])} - {_n(y[j])}) * {_n(a[j])} * (1 - {_n(a[j])}) = {_n(delta[j])}"
                )
            elif model.output == "softmax":
                p(f"  dE/dz{L}[{j}] = a_j ((a_j - y_j) - sum_k a_k (a_k - y_k)) = {_n(delta[j])}")
            else:
                p(f"  dE/dz{L}[{j}] = a - y = {_n(a[j])} - {_n(y[j])} = {_n(delta[j])}")
    deltas = [delta]
    for l in range(L - 1, 0, -1):
        W_next = weights[l][0]
        a_l = outputs[l]
        f = functions[l - 1]
        back = W_next @ deltas[0]
        slope = ACTIVATIONS[f].df(a_l)
        d = back * slope
        for i in range(len(d)):
            terms = " + ".join(
                f"{_n(deltas[0][j])} * {_n(W_next[i, j])}" for j in range(W_next.shape[1])
            )
            p(
                f"  dE/dz{l}[{i}] = ({terms}) * f'(z{l}[{i}]) = {_n(back[i])} * {_n(slope[i])} "
                f"= {_n(d[i])}   ({f}: f' = {_DERIVATIVE[f]}, a = {_n(a_l[i])})"
            )
        deltas.insert(0, d)
    p("Gradients")
    for l, (W, _) in enumerate(weights, start=1):
        a_prev, d = outputs[l - 1], deltas[l - 1]
        for i in range(W.shape[0]):
            for j in range(W.shape[1]):
                p(
                    f"  dE/dW{l}[{i},{j}] = a{l - 1}[{i}] * dE/dz{l}[{j}] = {_n(a_prev[i])} * "
                    f"{_n(d[j])} = {_n(a_prev[i] * d[j])}"
                )
        for j in range(W.shape[1]):
            p(f"  dE/db{l}[{j}] = dE/dz{l}[{j}] = {_n(d[j])}")
