"""Model and checkpoint files: plain ``.npz`` archives of plain arrays (no pickle), written
atomically (bpgpu/files.py) and read through bpgpu/archive.py, which checks each member's name,
size and header before reading it. This module knows nothing of MLP: plain arrays in, plain
arrays out, every field type-checked on the way in.

A model file holds ``format_version`` (0-d int), ``layers`` (1-D int sizes), ``activations``
(1-D str, one per hidden layer), ``output``, ``loss``, ``dtype`` (0-d str) and ``W{l}``,
``b{l}`` for l = 1 .. L.

A checkpoint file is a model file (``bpgpu.load`` reads it as one) and also holds where a
``fit`` stood: ``checkpoint`` (0-d str: JSON of the loop's position, the shuffling generator's
state, the optimizer's hyperparameters, fit's settings and History's scalars), ``order``
(int64: the sample order of the epoch), ``optimizer_t`` (int64: each layer's update count),
``optimizer_W{l}_{slot}`` and ``optimizer_b{l}_{slot}`` (the optimizer's slot arrays),
``history_epochs`` and ``history_{figure}`` (History's lists), and with early stopping
``best_W{l}``, ``best_b{l}`` (the best epoch's weights).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bpgpu.archive import Archive, ModelFileError
from bpgpu.backends.state import HostOptimizerState
from bpgpu.files import atomic_write
from bpgpu.functions import ACTIVATIONS, COMBINATIONS, LOSSES, OUTPUTS
from bpgpu.history import History
from bpgpu.optimizers import OPTIMIZERS, Optimizer
from bpgpu.validation import DTYPES

__all__ = [
    "ModelFileError",
    "RunRecord",
    "SavedCheckpoint",
    "SavedModel",
    "read",
    "read_checkpoint",
    "save",
    "save_checkpoint",
]

FORMAT_VERSION = 1
CHECKPOINT_VERSION = 1
MODEL_FILE, CHECKPOINT_FILE = "model file", "checkpoint file"
MODEL_FIELDS = ("format_version", "layers", "activations", "output", "loss", "dtype")
#: History's figures, in the order a checkpoint lists them
FIGURES = ("loss", "accuracy", "val_loss", "val_accuracy")
#: the most bytes a metadata member (a name, the sizes, the checkpoint's JSON) may declare
METADATA_BYTES = 1 << 16
#: why a weight-shaped member must have its shape and dtype
_BY_LAYERS = "as the file's layers and dtype say"
#: the most members' names printed in a message
_SHOWN = 5

#: members a checkpoint adds to a model file, by pattern (checked before anything is read)
_CHECKPOINT_KEY = re.compile(
    r"checkpoint|order|optimizer_t|history_epochs|history_[a-z_]+|optimizer_[Wb][0-9]+_[a-z_]+"
    r"|best_[Wb][0-9]+"
)
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


@dataclass(frozen=True)
class RunRecord:
    """fit's settings that decide its path, and what the data were: a resumed fit must match
    them to continue the same run. ``data_sha256`` is the digest of the training and
    validation arrays as trained on."""

    batch_size: int
    shuffle: bool
    patience: int | None
    samples: int
    validation_samples: int
    data_sha256: str


@dataclass
class SavedCheckpoint:
    """Where a ``fit`` stood: the model, the optimizer and its state per layer, the loop's
    position (``epochs_done`` whole epochs, then ``batches_done`` batches of the next, whose
    sample ``order`` and partial ``stats`` (loss sum, correct count) are kept), the shuffling
    generator's state, the History so far and early stopping's best epoch."""

    model: SavedModel
    optimizer: Optimizer
    optimizer_states: list[HostOptimizerState]
    epochs_done: int
    batches_done: int
    stats: tuple[float, float]
    order: np.ndarray
    rng_state: dict[str, Any]
    run: RunRecord
    history: History
    best_loss: float | None = None
    best_epoch: int = 0
    best_weights: list[tuple[np.ndarray, np.ndarray]] | None = None


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


def save_checkpoint(path: str | os.PathLike, ckpt: SavedCheckpoint) -> None:
    """Write ``ckpt`` to ``path`` atomically (see ``save``)."""
    arrays = _model_arrays(ckpt.model)
    meta = {
        "version": CHECKPOINT_VERSION,
        "epochs_done": ckpt.epochs_done,
        "batches_done": ckpt.batches_done,
        "stats": [float(ckpt.stats[0]), float(ckpt.stats[1])],
        "rng": ckpt.rng_state,
        "optimizer": {"kind": ckpt.optimizer.kind, "params": ckpt.optimizer.params()},
        "run": dataclasses.asdict(ckpt.run),
        "history": {
            "stopped_epoch": ckpt.history.stopped_epoch,
            "best_epoch": ckpt.history.best_epoch,
            "backend": ckpt.history.backend,
            "wall_time": ckpt.history.wall_time,
        },
        "early_stopping": None
        if ckpt.best_weights is None
        else {"best_loss": ckpt.best_loss, "best_epoch": ckpt.best_epoch},
    }
    arrays["checkpoint"] = np.array(json.dumps(meta), dtype=np.str_)
    arrays["order"] = np.asarray(ckpt.order, dtype=np.int64)
    arrays["optimizer_t"] = np.array([s.t for s in ckpt.optimizer_states], dtype=np.int64)
    for l, state in enumerate(ckpt.optimizer_states, start=1):
        for part, slots in (("W", state.W), ("b", state.b)):
            for slot, a in slots.items():
                arrays[f"optimizer_{part}{l}_{slot}"] = a
    arrays["history_epochs"] = np.array(ckpt.history.epochs, dtype=np.int64)
    for name, values in ckpt.history.history.items():
        arrays[f"history_{name}"] = np.array(values, dtype=np.float64)
    for l, (W, b) in enumerate(ckpt.best_weights or [], start=1):
        arrays[f"best_W{l}"], arrays[f"best_b{l}"] = W, b
    _write(path, arrays)


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


def _ints(
    archive: Archive, key: str, ndim: int, sized: tuple[int, str] | None = None
) -> np.ndarray:
    """An integer member: 0-d or 1-D, or with ``sized`` = (length, what each element is for)
    exactly that long."""
    if sized is not None:
        length, each = sized
        what = f"a 1-D integer array of {length}, one per {each}"
        return archive.array(key, _expect(what, "iu", shape=(length,))).astype(np.int64)
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
    against the names a model (and a checkpoint) may hold; nothing has been read."""
    keys = archive.keys()
    # the highest layer named, within what the directory could hold, so a gap reads as missing
    found = [int(m.group(1)) for k in keys if (m := _WEIGHT_KEY.fullmatch(k))]
    n = min(max(found, default=0), len(keys))
    model = {*MODEL_FIELDS, *(f"{p}{l}" for p in "Wb" for l in range(1, n + 1))}
    is_checkpoint = "checkpoint" in keys
    unknown = {k for k in keys - model if not (is_checkpoint and _CHECKPOINT_KEY.fullmatch(k))}
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
        weights=_read_weights(archive, "", layers, DTYPES[dtype].itemsize),
    )


def _read_weights(
    archive: Archive, prefix: str, layers: list[int], itemsize: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    return [
        (
            _floats(archive, f"{prefix}W{l}", (layers[l - 1], layers[l]), itemsize, _BY_LAYERS),
            _floats(archive, f"{prefix}b{l}", (layers[l],), itemsize, _BY_LAYERS),
        )
        for l in range(1, len(layers))
    ]


def read(path: str | os.PathLike, max_bytes: int | None = None) -> SavedModel:
    """The model saved at ``path`` (a model or a checkpoint file).

    Raises ModelFileError (a ValueError) naming the file and the field for anything that is not
    a bpgpu model: another kind of file, a damaged or cut-short one, a pickle, a member that
    should not be there, a field of the wrong type or shape, or arrays declaring more than
    ``max_bytes`` in all (None: no limit). FileNotFoundError when there is no such file.
    """
    with Archive(path, MODEL_FILE, max_bytes) as archive:
        return _read_model(archive, _weight_count(archive))


# ---- reading: checkpoints -----------------------------------------------------------------------


class _Json:
    """The checkpoint's JSON metadata, each value type-checked as it is taken."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        try:
            value = json.loads(_text(archive, "checkpoint"))
        except (ValueError, RecursionError) as exc:
            raise archive.error(f"is not valid JSON ({exc})", "checkpoint") from None
        self.root = self._dict(value, "checkpoint")

    def error(self, where: str, problem: str) -> ModelFileError:
        return self.archive.error(problem, where)

    def _dict(self, value: object, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.error(where, f"must be a JSON object; got {type(value).__name__}")
        return value

    def get(self, obj: dict[str, Any], key: str, kind: str, where: str) -> Any:
        """obj[key] as ``kind``: 'int' (>= 0), 'int?' (or None), 'float', 'float?', 'bool',
        'str', 'dict', 'dict?'."""
        field = f"{where}.{key}"
        if key not in obj:
            raise self.error(field, "is missing")
        value = obj[key]
        optional = kind.endswith("?")
        if optional and value is None:
            return None
        base = kind.rstrip("?")
        is_int = isinstance(value, int) and not isinstance(value, bool)
        ok = {
            "int": is_int and value >= 0,
            "float": _finite(value),
            "bool": isinstance(value, bool),
            "str": isinstance(value, str),
            "dict": isinstance(value, dict),
        }[base]
        if not ok:
            wanted = {"int": "an integer >= 0", "float": "a finite number"}.get(base, f"a {base}")
            raise self.error(
                field, f"must be {wanted}{' or null' if optional else ''}; got {value!r}"
            )
        return float(value) if base == "float" else value


def _finite(value: object) -> bool:
    """Whether ``value`` is a JSON number (not a bool) that a float holds finite."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(float(value))
    except OverflowError:
        return False


def _rng_state(meta: _Json) -> dict[str, Any]:
    """The shuffling generator's state (NumPy's PCG64), checked by building one from it."""
    state = meta.get(meta.root, "rng", "dict", "checkpoint")
    inner = meta.get(state, "state", "dict", "checkpoint.rng")
    if state.get("bit_generator") != "PCG64":
        raise meta.error(
            "checkpoint.rng", f"must be a PCG64 state; got {state.get('bit_generator')!r}"
        )
    for key, limit in (("state", 2**128), ("inc", 2**128)):
        if meta.get(inner, key, "int", "checkpoint.rng.state") >= limit:
            raise meta.error(f"checkpoint.rng.state.{key}", "must be below 2**128")
    for key, limit in (("has_uint32", 2), ("uinteger", 2**32)):
        if meta.get(state, key, "int", "checkpoint.rng") >= limit:
            raise meta.error(f"checkpoint.rng.{key}", f"must be below {limit}")
    probe = np.random.PCG64()
    try:
        probe.state = state
    except (TypeError, ValueError, KeyError, OverflowError) as exc:
        raise meta.error("checkpoint.rng", f"is not a generator state ({exc})") from None
    return state


def _optimizer(meta: _Json) -> Optimizer:
    spec = meta.get(meta.root, "optimizer", "dict", "checkpoint")
    kind = meta.get(spec, "kind", "str", "checkpoint.optimizer")
    params = meta.get(spec, "params", "dict", "checkpoint.optimizer")
    if kind not in OPTIMIZERS:
        raise meta.error(
            "checkpoint.optimizer.kind", f"must be one of {sorted(OPTIMIZERS)}; got {kind!r}"
        )
    cls = OPTIMIZERS[kind]
    names = {f.name for f in dataclasses.fields(cls)}
    if set(params) != names:
        raise meta.error(
            "checkpoint.optimizer.params", f"must give {sorted(names)}; got {sorted(params)}"
        )
    try:
        return cls(**params)
    except (TypeError, ValueError) as exc:
        raise meta.error("checkpoint.optimizer.params", str(exc)) from None


def _run_record(meta: _Json) -> RunRecord:
    spec = meta.get(meta.root, "run", "dict", "checkpoint")
    where = "checkpoint.run"
    record = RunRecord(
        batch_size=meta.get(spec, "batch_size", "int", where),
        shuffle=meta.get(spec, "shuffle", "bool", where),
        patience=meta.get(spec, "patience", "int?", where),
        samples=meta.get(spec, "samples", "int", where),
        validation_samples=meta.get(spec, "validation_samples", "int", where),
        data_sha256=meta.get(spec, "data_sha256", "str", where),
    )
    if record.batch_size < 1 or record.samples < 1 or record.patience == 0:
        raise meta.error(where, "batch_size, samples and patience must be at least 1")
    return record


def _history(archive: Archive, meta: _Json, keys: set[str]) -> History:
    spec = meta.get(meta.root, "history", "dict", "checkpoint")
    where = "checkpoint.history"
    epochs = _ints(archive, "history_epochs", 1)
    n = len(epochs)
    if n and not np.array_equal(epochs, np.arange(epochs[0], epochs[0] + n)):
        raise archive.error("must count epochs one by one", "history_epochs")
    history = History(
        epochs=[int(e) for e in epochs],
        stopped_epoch=meta.get(spec, "stopped_epoch", "int?", where),
        best_epoch=meta.get(spec, "best_epoch", "int?", where),
        backend=meta.get(spec, "backend", "str", where),
        wall_time=meta.get(spec, "wall_time", "float", where),
    )
    for name in FIGURES:
        if f"history_{name}" in keys:
            values = _floats(archive, f"history_{name}", (n,), 8, "one per epoch")
            history.history[name] = [float(v) for v in values]
    if "loss" not in history.history:
        raise archive.error("lacks the loss of each epoch", "history_loss")
    return history


def _checkpoint_keys(
    n: int, optimizer: Optimizer, early_stopping: bool, history_keys: set[str]
) -> set[str]:
    """The members of a checkpoint of n layers with this optimizer and History."""
    keys = {*MODEL_FIELDS, "checkpoint", "order", "optimizer_t", "history_epochs", *history_keys}
    for l in range(1, n + 1):
        keys |= {f"W{l}", f"b{l}"}
        keys |= {f"optimizer_{p}{l}_{s}" for p in "Wb" for s in optimizer.slots}
        if early_stopping:
            keys |= {f"best_W{l}", f"best_b{l}"}
    return keys


def read_checkpoint(path: str | os.PathLike, max_bytes: int | None = None) -> SavedCheckpoint:
    """The checkpoint saved at ``path`` by ``fit(..., checkpoint=...)``; raises as ``read``
    does (a model file that is not a checkpoint included)."""
    with Archive(path, CHECKPOINT_FILE, max_bytes) as archive:
        n = _weight_count(archive)
        keys = archive.keys()
        if "checkpoint" not in keys:
            raise archive.error(
                "is a model file without training state (it has no 'checkpoint' member); "
                "load it with bpgpu.load, or resume from a file written by fit(checkpoint=...)"
            )
        meta = _Json(archive)
        version = meta.get(meta.root, "version", "int", "checkpoint")
        if version != CHECKPOINT_VERSION:
            raise meta.error(
                "checkpoint.version", f"is {version}; this bpgpu reads {CHECKPOINT_VERSION}"
            )
        optimizer = _optimizer(meta)
        early = meta.get(meta.root, "early_stopping", "dict?", "checkpoint")
        history_keys = {k for k in keys if k.startswith("history_") and k != "history_epochs"}
        unknown = history_keys - {f"history_{f}" for f in FIGURES}
        if unknown:
            raise archive.error(f"holds unknown History figures {_show(unknown)}")
        # every member's name is known now: the directory must list exactly those
        expected = _checkpoint_keys(n, optimizer, early is not None, history_keys)
        if keys != expected:
            extra = keys - expected
            raise archive.error(
                f"does not hold the members its optimizer and settings call for: "
                f"{_show(extra or expected - keys)} {'should not be there' if extra else 'missing'}"
            )
        ckpt = SavedCheckpoint(
            model=_read_model(archive, n),
            optimizer=optimizer,
            optimizer_states=[],
            epochs_done=meta.get(meta.root, "epochs_done", "int", "checkpoint"),
            batches_done=meta.get(meta.root, "batches_done", "int", "checkpoint"),
            stats=(0.0, 0.0),
            order=np.zeros(0, dtype=np.int64),
            rng_state=_rng_state(meta),
            run=_run_record(meta),
            history=History(),
            best_weights=[] if early is not None else None,
        )
        _read_progress(archive, meta, ckpt, early, keys)
        return ckpt


def _read_progress(
    archive: Archive, meta: _Json, ckpt: SavedCheckpoint, early: dict | None, keys: set[str]
) -> None:
    """The arrays and numbers of a checkpoint past its model, into ``ckpt``."""
    layers, itemsize = ckpt.model.layers, DTYPES[ckpt.model.dtype].itemsize
    stats = meta.root.get("stats")
    if not isinstance(stats, list) or len(stats) != 2 or not all(_finite(v) for v in stats):
        raise meta.error("checkpoint.stats", f"must be two finite numbers; got {stats!r}")
    ckpt.stats = (float(stats[0]), float(stats[1]))
    run = ckpt.run
    ckpt.order = _ints(archive, "order", 1, (run.samples, "training sample"))
    if not np.array_equal(np.sort(ckpt.order), np.arange(run.samples)):
        raise archive.error(f"must order the samples 0 .. {run.samples - 1}", "order")
    batches = -(-run.samples // run.batch_size)
    if ckpt.batches_done >= batches:
        raise meta.error(
            "checkpoint.batches_done", f"must be below the {batches} batches of an epoch"
        )
    t = _ints(archive, "optimizer_t", 1, (len(layers) - 1, "layer"))
    for l in range(1, len(layers)):
        shapes = {"W": (layers[l - 1], layers[l]), "b": (layers[l],)}
        slots = {
            p: {
                s: _floats(archive, f"optimizer_{p}{l}_{s}", shapes[p], itemsize, _BY_LAYERS)
                for s in ckpt.optimizer.slots
            }
            for p in "Wb"
        }
        ckpt.optimizer_states.append(HostOptimizerState(slots["W"], slots["b"], int(t[l - 1])))
    ckpt.history = _history(archive, meta, keys)
    if len(ckpt.history.epochs) != ckpt.epochs_done:
        raise archive.error(
            f"lists {len(ckpt.history.epochs)} epochs; the checkpoint has {ckpt.epochs_done} done",
            "history_epochs",
        )
    if early is not None:
        ckpt.best_loss = meta.get(early, "best_loss", "float?", "checkpoint.early_stopping")
        ckpt.best_epoch = meta.get(early, "best_epoch", "int", "checkpoint.early_stopping")
        ckpt.best_weights = _read_weights(archive, "best_", layers, itemsize)
