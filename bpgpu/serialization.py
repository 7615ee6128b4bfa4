"""Model files: plain ``.npz`` archives of plain arrays (no pickle), written atomically
(bpgpu/files.py) and read through bpgpu/archive.py, which checks each member's name, size and
header before reading it. This module knows nothing of MLP: plain arrays in, plain arrays out,
every field type-checked on the way in.

A model file holds ``format_version`` (0-d int), ``layers`` (1-D int sizes), ``activations``
(1-D str, one per hidden layer), ``output``, ``loss``, ``dtype`` (0-d str) and ``W{l}``,
``b{l}`` for l = 1 .. L.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bpgpu.archive import Archive, ModelFileError
from bpgpu.files import atomic_write
from bpgpu.functions import ACTIVATIONS, COMBINATIONS, LOSSES, OUTPUTS
from bpgpu.validation import DTYPES

__all__ = ["ModelFileError", "SavedModel", "read", "save"]

FORMAT_VERSION = 1
MODEL_FILE = "model file"
MODEL_FIELDS = ("format_version", "layers", "activations", "output", "loss", "dtype")
#: the most bytes a metadata member (a name, the sizes) may declare
METADATA_BYTES = 1 << 16
#: why a weight-shaped member must have its shape and dtype
_BY_LAYERS = "as the file's layers and dtype say"
#: the most members' names printed in a message
_SHOWN = 5

_WEIGHT_KEY = re.compile(r"[Wb]([1-9][0-9]{0,5})")


@dataclass
class SavedModel:
    """What a model file holds: the architecture and one (W, b) pair per layer."""

    layers: list[int]
    activations: list[str]
    output: str
    loss: str
    dtype: str
    weights: list[tuple[np.ndarray, np.ndarray]]


# ---- writing ------------------------------------------------------------------------------------


def _write(path: str | os.PathLike, arrays: dict[str, np.ndarray]) -> None:
    with atomic_write(path) as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]


def _model_arrays(model: SavedModel) -> dict[str, np.ndarray]:
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
    return arrays


def save(path: str | os.PathLike, model: SavedModel) -> None:
    """Write ``model`` to ``path`` as an ``.npz`` of plain arrays, atomically: ``path`` holds
    either its old content or all of the new, whenever the process stops."""
    _write(path, _model_arrays(model))


# ---- reading: member headers ------------------------------------------------------------------


def _expect(
    what: str, kinds: str, shape: tuple[int, ...] | None = None, ndim: int | None = None
) -> Callable[[tuple[int, ...], np.dtype], str | None]:
    """A header check: dtype kind in ``kinds``, ``shape`` exactly (or ``ndim`` dimensions),
    at most METADATA_BYTES unless a shape is given (sized by the file's other fields)."""

    def check(got: tuple[int, ...], dtype: np.dtype) -> str | None:
        if dtype.kind not in kinds or (ndim is not None and len(got) != ndim):
            return f"must be {what}; got {dtype} of shape {got}"
        if shape is not None and got != shape:
            return f"must be {what}; got shape {got}"
        if shape is None and math.prod(got) * dtype.itemsize > METADATA_BYTES:
            return f"declares {math.prod(got)} elements of {dtype}: far more than the field holds"
        return None

    return check


def _text(archive: Archive, key: str) -> str:
    return str(archive.array(key, _expect("a 0-d text (str) array", "U", ndim=0))[()])


def _texts(archive: Archive, key: str) -> list[str]:
    return [str(s) for s in archive.array(key, _expect("a 1-D text (str) array", "U", ndim=1))]


def _ints(archive: Archive, key: str, ndim: int) -> np.ndarray:
    """An integer member of ``ndim`` (0 or 1) dimensions."""
    what = "a 1-D integer array" if ndim else "a 0-d integer array"
    return archive.array(key, _expect(what, "iu", ndim=ndim)).astype(np.int64)


def _floats(
    archive: Archive, key: str, shape: tuple[int, ...], itemsize: int, why: str
) -> np.ndarray:
    """A finite floating-point member of exactly ``shape`` and ``itemsize`` bytes per value,
    as ``why`` (the file's other fields) says it must be."""
    what = f"float{8 * itemsize} of shape {shape} ({why})"

    def check(got: tuple[int, ...], dtype: np.dtype) -> str | None:
        if dtype.kind != "f" or dtype.itemsize != itemsize or got != shape:
            return f"must be {what}; got {dtype} of shape {got}"
        return None

    a = archive.array(key, check)
    if not np.all(np.isfinite(a)):
        raise archive.error("holds NaN or infinite values", key)
    return a


def _name(archive: Archive, key: str, value: str, allowed: Any) -> str:
    if value not in allowed:
        raise archive.error(f"must be one of {sorted(allowed)}; got {value!r}", key)
    return value


# ---- reading: which members -------------------------------------------------------------------


def _show(keys: set[str]) -> str:
    listed = sorted(keys)
    return str(listed[:_SHOWN])[:-1] + (", ...]" if len(listed) > _SHOWN else "]")


def _weight_count(archive: Archive) -> int:
    """How many (W, b) pairs the directory lists, once every member's name has been checked
    against the names a model may hold; nothing has been read."""
    keys = archive.keys()
    # the highest layer named, within what the directory could hold, so a gap reads as missing
    found = [int(m.group(1)) for k in keys if (m := _WEIGHT_KEY.fullmatch(k))]
    n = min(max(found, default=0), len(keys))
    model = {*MODEL_FIELDS, *(f"{p}{l}" for p in "Wb" for l in range(1, n + 1))}
    unknown = keys - model
    if unknown:
        raise archive.error(
            f"holds members a bpgpu model does not: {_show(unknown)}; refused without reading "
            "them (not a bpgpu model, or one that was tampered with)"
        )
    missing = model - keys
    if missing:
        raise archive.error(f"lacks {_show(missing)}: not a complete bpgpu model")
    return n


def _read_model(archive: Archive, n_weights: int) -> SavedModel:
    version = int(_ints(archive, "format_version", 0))
    if version != FORMAT_VERSION:
        raise archive.error(
            f"is format version {version}; this bpgpu reads version {FORMAT_VERSION}",
            "format_version",
        )
    layers = [int(n) for n in _ints(archive, "layers", 1)]
    if len(layers) != n_weights + 1 or min(layers) < 1:
        raise archive.error(
            f"must list {n_weights + 1} sizes of at least 1 (the file holds {n_weights} weight "
            f"matrices); got {layers}",
            "layers",
        )
    dtype = _name(archive, "dtype", _text(archive, "dtype"), DTYPES)
    activations = _texts(archive, "activations")
    if len(activations) != len(layers) - 2:
        raise archive.error(
            f"must name {len(layers) - 2} activations, one per hidden layer; got {activations}",
            "activations",
        )
    for a in activations:
        _name(archive, "activations", a, ACTIVATIONS)
    output = _name(archive, "output", _text(archive, "output"), OUTPUTS)
    loss = _name(archive, "loss", _text(archive, "loss"), LOSSES)
    if (output, loss) not in COMBINATIONS:
        raise archive.error(f"{loss!r} cannot train a {output!r} output", "loss")
    return SavedModel(
        layers=layers,
        activations=activations,
        output=output,
        loss=loss,
        dtype=dtype,
        weights=_read_weights(archive, layers, DTYPES[dtype].itemsize),
    )


def _read_weights(
    archive: Archive, layers: list[int], itemsize: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (
            _floats(archive, f"W{l}", (layers[l - 1], layers[l]), itemsize, _BY_LAYERS),
            _floats(archive, f"b{l}", (layers[l],), itemsize, _BY_LAYERS),
        )
        for l in range(1, len(layers))
    ]


def read(path: str | os.PathLike, max_bytes: int | None = None) -> SavedModel:
    """The model saved at ``path``.

    Raises ModelFileError (a ValueError) naming the file and the field for anything that is not
    a bpgpu model: another kind of file, a damaged or cut-short one, a pickle, a member that
    should not be there, a field of the wrong type or shape, or arrays declaring more than
    ``max_bytes`` in all (None: no limit). FileNotFoundError when there is no such file.
    """
    with Archive(path, MODEL_FILE, max_bytes) as archive:
        return _read_model(archive, _weight_count(archive))
