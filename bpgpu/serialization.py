"""Models saved as ``.npz``: plain arrays and strings, readable with ``allow_pickle=False``.

Keys: ``format_version`` (int), ``layers`` (int64 sizes), ``activations`` (str array, one per
hidden layer), ``output``, ``loss``, ``dtype`` (0-d str arrays), and ``W{l}``, ``b{l}`` for
l = 1 .. L.
"""

from __future__ import annotations

import os
import zipfile
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from bpgpu.model import MLP

FORMAT_VERSION = 1


def save(model: MLP, path: str | os.PathLike) -> None:
    arrays: dict[str, np.ndarray] = {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "layers": np.array(model.layers, dtype=np.int64),
        "activations": np.array(model.activations, dtype=np.str_),
        "output": np.array(model.output, dtype=np.str_),
        "loss": np.array(model.loss_name, dtype=np.str_),
        "dtype": np.array(model.dtype.name, dtype=np.str_),
    }
    for l, (W, b) in enumerate(model.get_weights(), start=1):
        arrays[f"W{l}"], arrays[f"b{l}"] = W, b
    with open(path, "wb") as f:  # a file object: np.savez would append .npz to a bare name
        np.savez(f, **arrays)


def load(path: str | os.PathLike, backend: str | None = "auto") -> MLP:
    """The model saved at ``path``, on ``backend``. Raises ValueError for a file that is not a
    bpgpu model, is truncated or corrupted, or holds pickled objects."""
    from bpgpu.model import MLP

    try:
        with np.load(path, allow_pickle=False) as data:
            fields = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc):
            raise ValueError(
                f"model file {os.fspath(path)!r} holds pickled objects; bpgpu never loads those"
            ) from None
        raise ValueError(
            f"model file {os.fspath(path)!r} is not a readable .npz file: {exc}"
        ) from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(
            f"model file {os.fspath(path)!r} is truncated or corrupted: {exc}"
        ) from None

    def field(key: str) -> np.ndarray:
        if key not in fields:
            raise ValueError(f"model file {os.fspath(path)!r} lacks {key!r}: not a bpgpu model")
        return fields[key]

    version = int(field("format_version"))
    if version != FORMAT_VERSION:
        raise ValueError(
            f"model file {os.fspath(path)!r} has format version {version}; this bpgpu reads {FORMAT_VERSION}"
        )
    layers = [int(n) for n in field("layers")]
    activations = [str(a) for a in field("activations")]
    model = MLP(
        layers,
        activation=activations if activations else "sigmoid",
        output=str(field("output")),
        loss=str(field("loss")),
        backend=backend,
        dtype=str(field("dtype")),
    )
    weights = [(field(f"W{l}"), field(f"b{l}")) for l in range(1, len(layers))]
    model.set_weights(weights)
    return model
