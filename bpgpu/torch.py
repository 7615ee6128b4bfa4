"""PyTorch interop: a ``bpgpu.MLP`` from a ``torch.nn.Sequential`` of Linear layers and back.

    model = bpgpu.torch.from_torch(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)))
    seq = bpgpu.torch.to_torch(model)           # Linear, ReLU, Linear, Softmax(dim=1)

A Sequential is read as Linear layers, each followed by its activation (``ReLU``, ``Sigmoid``,
``Tanh``, or nothing or ``Identity`` for identity); after the last Linear, ``Softmax(dim=1)``
or ``Sigmoid`` is the output layer; with nothing there, a network of several outputs is read
as a softmax classifier (the logits ``CrossEntropyLoss`` trains) and one of one output as a
regression, unless ``output`` says otherwise. Weights are copied: PyTorch's ``weight`` is
bpgpu's W transposed. torch is imported here only, and bpgpu never needs it otherwise.
``bpgpu.ops`` takes torch tensors directly (through DLPack, without copies).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bpgpu.backends import Backend
from bpgpu.model import MLP

#: torch.nn module class name -> bpgpu activation
_ACTIVATIONS = {"ReLU": "relu", "Sigmoid": "sigmoid", "Tanh": "tanh", "Identity": "identity"}
_OUTPUTS = {"Softmax": "softmax", "Sigmoid": "sigmoid"}


def _torch() -> Any:
    try:
        import torch
    except ImportError as exc:
        raise ImportError(f"bpgpu.torch needs PyTorch (pip install torch): {exc}") from None
    return torch


def _layers(module: Any, torch: Any) -> list[tuple[Any, str | None]]:
    """Each Linear of ``module`` with the name of the one module that follows it (None for
    nothing or Identity); ValueError naming the first module that does not fit."""
    layers: list[tuple[Any, str | None]] = []
    for i, layer in enumerate(module):
        kind = type(layer).__name__
        if isinstance(layer, torch.nn.Linear):
            layers.append((layer, None))
        elif not layers:
            raise ValueError(f"module[{i}] ({kind}) comes before any Linear layer")
        elif kind == "Identity":
            continue
        elif layers[-1][1] is not None:
            raise ValueError(f"module[{i}] ({kind}) follows {layers[-1][1]}: one per Linear")
        elif kind not in _ACTIVATIONS and kind != "Softmax":
            supported = sorted({"Linear", *_ACTIVATIONS, "Softmax"})
            raise ValueError(f"module[{i}] is a {kind}; bpgpu reads {supported}")
        elif kind == "Softmax" and (i != len(module) - 1 or layer.dim not in (1, -1)):
            raise ValueError(f"module[{i}]: Softmax only as the output layer, over dim 1")
        else:
            layers[-1] = (layers[-1][0], kind)
    if not layers:
        raise ValueError("module holds no Linear layer")
    return layers


def from_torch(
    module: Any,
    output: str | None = None,
    loss: str | None = None,
    backend: str | Backend | None = "auto",
    dtype: str | None = None,
) -> MLP:
    """An MLP with the layers, activations and weights of ``module`` (an ``nn.Sequential``).

    ``output`` overrides the output layer read from the module; ``dtype`` defaults to the
    weights' (float32 or float64). Raises ValueError naming the first module it cannot read.
    """
    torch = _torch()
    if not isinstance(module, torch.nn.Sequential):
        raise TypeError(f"module must be a torch.nn.Sequential; got {type(module).__name__}")
    layers = _layers(module, torch)
    hidden = [_ACTIVATIONS[kind] if kind else "identity" for _, kind in layers[:-1]]
    last = layers[-1][1]
    if last is not None and last not in _OUTPUTS:
        raise ValueError(f"the last Linear is followed by {last}, which is no output layer")
    sizes = [layers[0][0].in_features, *(lin.out_features for lin, _ in layers)]
    if output is None:
        output = _OUTPUTS[last] if last else ("softmax" if sizes[-1] > 1 else "identity")
    if dtype is None:
        dtype = "float64" if layers[0][0].weight.dtype == torch.float64 else "float32"
    model = MLP(
        sizes,
        activation=hidden if hidden else "identity",
        output=output,
        loss=loss,
        backend=backend,
        dtype=dtype,
    )
    weights = []
    for lin, _ in layers:
        W = lin.weight.detach().cpu().double().numpy().T
        bias = lin.bias
        b = np.zeros(lin.out_features) if bias is None else bias.detach().cpu().double().numpy()
        weights.append((W, b))
    model.set_weights(weights)
    return model


def to_torch(model: MLP, include_output: bool = True) -> Any:
    """An ``nn.Sequential`` computing what ``model`` computes, with copies of its weights (in
    the model's dtype): Linear layers, their activations, and (``include_output``) the output
    layer, ``Softmax(dim=1)`` or ``Sigmoid``; without it the module returns the logits."""
    torch = _torch()
    dtype = torch.float64 if model.dtype == np.float64 else torch.float32
    modules: list[Any] = []
    modules_of = {name: getattr(torch.nn, kind) for kind, name in _ACTIVATIONS.items()}
    for l, (W, b) in enumerate(model.get_weights()):
        lin = torch.nn.Linear(W.shape[0], W.shape[1], dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
            lin.bias.copy_(torch.from_numpy(b))
        modules.append(lin)
        if l < len(model.activations):
            act = model.activations[l]
            if act not in modules_of:
                raise ValueError(f"no torch module stands for the activation {act!r}")
            modules.append(modules_of[act]())
    if include_output and model.output != "identity":
        modules.append(torch.nn.Softmax(dim=1) if model.output == "softmax" else torch.nn.Sigmoid())
    return torch.nn.Sequential(*modules)
