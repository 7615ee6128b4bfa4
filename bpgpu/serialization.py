"""Model files: a model's description and weights as a plain ``.npz``, readable with
``allow_pickle=False``, written atomically (bpgpu/files.py). Plain arrays in, plain arrays out:
this module knows nothing of MLP.

Keys: ``format_version`` (int), ``layers`` (int64 sizes), ``activations`` (str array, one per
hidden layer), ``output``, ``loss``, ``dtype`` (0-d str arrays), and ``W{l}``, ``b{l}`` for
l = 1 .. L.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass

import numpy as np

from bpgpu.files import atomic_write

FORMAT_VERSION = 1


@dataclass
class SavedModel:
    """What a model file holds: the architecture and one (W, b) pair per layer."""

    layers: list[int]
    activations: list[str]
    output: str
    loss: str
    dtype: str
    weights: list[tuple[np.ndarray, np.ndarray]]


def save(path: str | os.PathLike, model: SavedModel) -> None:
    """Write ``model`` to ``path`` as an ``.npz`` of plain arrays, atomically: ``path`` holds
    either its old content or all of the new, whenever the process stops."""
    arrays: dict[str, np.ndarray] = {
        "format_version": np.array(FORMAT_VERSION, dtype=np.int64),
        "layers": np.array(model.layers, dtype=np.int64),
        "activations": np.array(model.activations, dtype=np.str_),
        "output": np.array(model.output, dtype=np.str_),
        "loss": np.array(model.loss, dtype=np.str_),
        "dtype": np.array(model.dtype, dtype=np.str_),
    }
    for l, (W, b) in enumerate(model.weights, start=1):
        arrays[f"W{l}"], arrays[f"b{l}"] = W, b
    with atomic_write(path) as f:  # a file object: np.savez would append .npz to a bare name
        np.savez(f, **arrays)  # type: ignore[arg-type]


def read(path: str | os.PathLike) -> SavedModel:
    """The model saved at ``path``. Raises ValueError for a file that is not a bpgpu model, is
    truncated or corrupted, or holds pickled objects (FileNotFoundError when it is missing)."""
    name = os.fspath(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            fields = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc):
            raise ValueError(
                f"model file {name!r} holds pickled objects; bpgpu never loads those"
            ) from None
        raise ValueError(f"model file {name!r} is not a readable .npz file: {exc}") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise ValueError(f"model file {name!r} is truncated or corrupted: {exc}") from None

    def field(key: str) -> np.ndarray:
        if key not in fields:
            raise ValueError(f"model file {name!r} lacks {key!r}: not a bpgpu model")
        return fields[key]

    version = int(field("format_version"))
    if version != FORMAT_VERSION:
        raise ValueError(
            f"model file {name!r} has format version {version}; this bpgpu reads {FORMAT_VERSION}"
        )
    layers = [int(n) for n in field("layers")]
    return SavedModel(
        layers=layers,
        activations=[str(a) for a in field("activations")],
        output=str(field("output")),
        loss=str(field("loss")),
        dtype=str(field("dtype")),
        weights=[(field(f"W{l}"), field(f"b{l}")) for l in range(1, len(layers))],
    )
