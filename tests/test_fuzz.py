"""Fuzzing: the public API with generated arguments (hypothesis), and model and checkpoint
files with mutated bytes.

API: each call either returns a correct result or raises a bpgpu error, TypeError or
ValueError whose message names the argument at fault, and a call that raises leaves the model
as it was. One argument at a time is drawn from a wide strategy (right and wrong types, sizes,
shapes, dtypes and values) while the others stay valid, so the argument to be named is known.

Files: thousands of mutants of a saved model and of a checkpoint (bit flips, bytes and 32/64-bit
integers overwritten with edge values, insertions, deletions, truncations, copied chunks, half of
them aimed at the zip directory at the end) either load identical to the original or raise
ModelFileError, never another exception, and never allocate more than a set budget.

Both are derandomized (a fixed seed) so CI runs the same cases every time.
"""

from __future__ import annotations

import itertools
import math
import tracemalloc
import zipfile
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import bpgpu
from bpgpu import ops, serialization
from bpgpu.functions import ACTIVATIONS, OUTPUTS

FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
#: what a call may raise: the argument's type or value is wrong, or bpgpu says why it cannot
RAISES = (TypeError, ValueError, bpgpu.BackendUnavailableError, bpgpu.TrainingDivergedError)


def assert_names(exc: BaseException, *names: str) -> None:
    message = str(exc)
    assert any(name in message for name in names), f"{names} not named in: {message}"


def weights(net: bpgpu.MLP) -> list[np.ndarray]:
    return [a.copy() for pair in net.get_weights() for a in pair]


def unchanged(before: list[np.ndarray], net: bpgpu.MLP) -> bool:
    return all(np.array_equal(a, b) for a, b in zip(before, weights(net), strict=True))


# ---- strategies ------------------------------------------------------------------------------


def _branch(*strategies: st.SearchStrategy) -> st.SearchStrategy:
    """One of ``strategies``, as one branch when nested in another one_of (which would
    otherwise flatten it, giving each of its parts the weight of a branch)."""
    return st.one_of(*strategies).map(lambda value: value)


JUNK = _branch(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=4),
    st.binary(max_size=4),
    st.lists(st.integers(-2, 3), max_size=3),
    st.just(object()),
)
NUMBERS = _branch(
    st.integers(-3, 4),
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(1, 4).map(np.int64),
    st.integers(1, 4).map(float),
    JUNK,
)
#: sizes a network may have here: small (a network that is built), or a pair so large that
#: no memory holds it (refused before allocating)
SIZE = st.one_of(st.integers(1, 9), st.integers(1, 9).map(np.int32), NUMBERS)
LAYERS = st.one_of(
    st.lists(st.integers(1, 9), min_size=2, max_size=4),
    st.lists(SIZE, max_size=5),
    st.lists(st.integers(1, 9), min_size=2, max_size=4).map(tuple),
    st.lists(st.integers(1, 9), min_size=2, max_size=4).map(np.array),
    st.tuples(st.integers(10**7, 10**12), st.integers(10**7, 10**12)).map(list),
    JUNK,
)
NAMES = {
    "activation": [*ACTIVATIONS, "gelu", "RELU", ""],
    "output": [*OUTPUTS, "softmin", ""],
    "loss": ["cross_entropy", "mse", "binary_cross_entropy", "squared_error", "hinge", ""],
}


def names_of(kind: str) -> st.SearchStrategy:
    name = st.sampled_from(NAMES[kind])
    return st.one_of(name, name, st.lists(name, max_size=3), JUNK)


CONSTRUCTOR = {
    "layers": LAYERS,
    "activation": names_of("activation"),
    "output": names_of("output"),
    "loss": names_of("loss"),
    "backend": st.one_of(st.sampled_from(["numpy", "reference", "auto", "opencl", ""]), JUNK),
    # (cupy and numba, when not available here, raise BackendUnavailableError naming them)
    "dtype": st.one_of(
        st.sampled_from(["float32", "float64", "float16", "int32", "f4", "<f8", np.float32]),
        JUNK,
    ),
    "seed": st.one_of(st.integers(-5, 2**70), NUMBERS),
}
VALID_MODEL = {"layers": [4, 5, 3], "activation": "tanh", "backend": "numpy", "seed": 0}


def numpy_forward(net: bpgpu.MLP, X: np.ndarray) -> np.ndarray:
    """The network's output in float64 NumPy, from X as the model sees it (in its dtype)."""
    A = np.asarray(X, dtype=net.dtype).astype(np.float64)
    pairs = net.get_weights()
    for (W, b), act in zip(pairs[:-1], net.activations, strict=True):
        A = ACTIVATIONS[act].f(A @ W.astype(np.float64) + b)
    W, b = pairs[-1]
    return OUTPUTS[net.output].f(A @ W.astype(np.float64) + b)


@FUZZ
@given(st.data())
def test_constructor(data):
    arg = data.draw(st.sampled_from(list(CONSTRUCTOR)), label="argument")
    value = data.draw(CONSTRUCTOR[arg], label=arg)
    kwargs = {**VALID_MODEL, arg: value}
    try:
        net = bpgpu.MLP(**kwargs)
    except RAISES as exc:
        event(f"{arg}: {type(exc).__name__}")
        assert_names(exc, arg)
        return
    event(f"{arg}: built")
    sizes = [int(n) for n in kwargs["layers"]]
    assert list(net.layers) == sizes
    assert [(W.shape, b.shape) for W, b in net.get_weights()] == [
        ((p, q), (q,)) for p, q in itertools.pairwise(sizes)
    ]
    X = np.linspace(-1, 1, 3 * sizes[0]).reshape(3, sizes[0])
    np.testing.assert_allclose(net.predict_proba(X), numpy_forward(net, X), atol=1e-5)


DTYPES = [
    np.float16, np.float32, np.float64, np.int8, np.int64, np.uint8, np.bool_,
    np.complex64, np.dtype("<U3"), np.dtype(object),
]  # fmt: skip


SAMPLES = st.integers(1, 6)


@st.composite
def matrices(draw, columns: int, rows: st.SearchStrategy = SAMPLES):
    """Mostly (n, columns) arrays of a real dtype with moderate values; also other shapes,
    dtypes, special values, values near float32's largest, lists and junk."""
    kind = draw(
        st.sampled_from(
            ["good", "good", "good", "shape", "dtype", "values", "huge", "huge", "junk"]
        )
    )
    n = draw(rows)
    if kind == "junk":
        return draw(st.one_of(JUNK, st.lists(st.lists(st.floats(), max_size=3), max_size=3)))
    shape = (n, columns)
    if kind == "shape":
        shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=6))
    dtype = np.dtype(np.float64)
    if kind == "dtype":
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    if dtype.kind in "UO":
        return np.full(shape, draw(st.sampled_from(["1", "a", ""])), dtype=dtype)
    elements = st.floats(-1e3, 1e3, width=16 if dtype.itemsize == 2 else 64)
    if kind == "values":  # NaN, infinities, beyond float32, up to float32's largest
        elements = st.one_of(
            st.floats(allow_nan=True, allow_infinity=True),
            st.floats(-1, 1),
            st.floats(width=32, allow_nan=False, allow_infinity=False),
        )
    event(f"X: {kind}")
    if kind == "huge":  # finite in float32, but X @ W may overflow it; every element drawn
        big = st.floats(float(np.float32(1e38)), float(np.finfo(np.float32).max), width=32)
        signed = st.one_of(big, big.map(lambda v: -v))
        return draw(hnp.arrays(dtype, shape, elements=signed, fill=st.nothing()))
    return draw(hnp.arrays(dtype, shape, elements=elements if dtype.kind == "f" else None))


def rows_of(X: object) -> int:
    """The samples X holds if it is array-like, else 1 (to draw a y of that length)."""
    try:
        shape = np.shape(X)
    except ValueError:  # ragged
        return 1
    return int(shape[0]) if len(shape) >= 1 and shape[0] else 1


def finite_moderate(X: object) -> bool:
    try:
        a = np.asarray(X, dtype=np.float64)
    except (TypeError, ValueError):
        return False
    return bool(np.all(np.isfinite(a)) and np.all(np.abs(a) <= 1e3))


@FUZZ
@given(st.data())
def test_data_methods(data):
    activation = data.draw(st.sampled_from(list(ACTIVATIONS)), label="activation")
    net = bpgpu.MLP([4, 5, 3], activation=activation, backend="numpy", seed=0)
    method = data.draw(st.sampled_from(["predict_proba", "predict", "loss", "score", "gradients"]))
    X = data.draw(matrices(4), label="X")
    n = rows_of(X)
    y = data.draw(st.one_of(st.just(np.arange(n) % 3), matrices(3, st.just(n))), label="y")
    args = (X,) if method.startswith("predict") else (X, y)
    before = weights(net)
    try:
        result = getattr(net, method)(*args)
    except RAISES as exc:
        event(f"{type(exc).__name__}")
        assert_names(exc, "X", "y")
        assert unchanged(before, net)
        return
    event("returned")
    assert unchanged(before, net)
    if method == "predict_proba":
        assert result.shape == (n, 3) and np.all(np.isfinite(result))
        if finite_moderate(X):
            np.testing.assert_allclose(result, numpy_forward(net, np.asarray(X)), atol=1e-3)
    elif method == "predict":  # the exact network's class wherever it is clear
        P = numpy_forward(net, np.asarray(X))
        top2 = np.sort(P, axis=1)[:, -2:]
        clear = top2[:, 1] - top2[:, 0] > 1e-3
        np.testing.assert_array_equal(result[clear], P.argmax(axis=1)[clear])
    elif method in ("loss", "score"):
        assert math.isfinite(result)
    elif method == "gradients":
        assert all(np.all(np.isfinite(g)) for pair in result for g in pair)


FIT_ARGUMENTS = {
    "epochs": st.one_of(st.integers(-2, 3), NUMBERS),
    "batch_size": st.one_of(st.integers(-2, 20), st.just(10**12), NUMBERS),
    "optimizer": st.one_of(
        st.sampled_from(["sgd", "adam", "rmsprop", "ADAM", "lbfgs"]),
        st.builds(bpgpu.SGD, lr=st.floats(1e-3, 1.0), momentum=st.floats(0, 0.99)),
        st.builds(bpgpu.Adam, lr=st.floats(1e-4, 1.0)),
        JUNK,
    ),
    "lr": st.one_of(st.floats(-1, 10), st.just(math.nan), st.just(1e30), NUMBERS),
    "shuffle": st.one_of(st.booleans(), JUNK),
    "seed": st.one_of(st.integers(-3, 2**64), NUMBERS),
    "validation_split": st.one_of(st.floats(-0.5, 1.5), st.just(math.nan), JUNK),
    "validation_data": st.one_of(
        st.tuples(matrices(4), st.just(np.array([0, 1, 2]))), st.tuples(JUNK), JUNK
    ),
    "patience": st.one_of(st.integers(-1, 3), NUMBERS),
    "verbose": st.one_of(st.booleans(), JUNK),
    "checkpoint_every": st.one_of(st.integers(-1, 3), NUMBERS),
    "reset": st.one_of(st.booleans(), JUNK),
}
#: the words a message uses for an argument besides its own name
ALSO = {"optimizer": ["lr"], "lr": ["optimizer"], "validation_data": ["validation"]}


@FUZZ
@given(st.data())
def test_fit_arguments(data):
    net = bpgpu.MLP([4, 5, 3], activation="tanh", backend="numpy", seed=0)
    X = np.linspace(-2, 2, 48).reshape(12, 4)
    y = np.arange(12) % 3
    arg = data.draw(st.sampled_from(list(FIT_ARGUMENTS)), label="argument")
    value = data.draw(FIT_ARGUMENTS[arg], label=arg)
    kwargs = {"epochs": 2, arg: value}
    before = weights(net)
    try:
        hist = net.fit(X, y, **kwargs)
    except bpgpu.TrainingDivergedError:
        event(f"{arg}: diverged")
        assert all(np.all(np.isfinite(w)) for w in weights(net))
        return
    except RAISES as exc:
        event(f"{arg}: {type(exc).__name__}")
        assert_names(exc, arg, *ALSO.get(arg, []))
        assert unchanged(before, net)
        return
    event(f"{arg}: trained")
    assert hist.epochs == list(range(1, len(hist.epochs) + 1))
    assert 1 <= len(hist.epochs) <= kwargs["epochs"]
    assert all(math.isfinite(v) for values in hist.history.values() for v in values)
    assert net.history is hist


@FUZZ
@given(st.data())
def test_set_weights(data):
    net = bpgpu.MLP([3, 2, 2], backend="numpy", seed=0)
    shapes = [((3, 2), (2,)), ((2, 2), (2,))]

    def part(shape):
        right = hnp.arrays(np.float64, shape, elements=st.floats(-10, 10))
        return st.one_of(
            right,
            right,
            right.map(lambda a: a.tolist()),
            matrices(shape[-1], st.just(shape[0])) if len(shape) == 2 else JUNK,
            JUNK,
        )

    pairs = st.one_of(
        st.tuples(*(st.tuples(part(w), part(b)) for w, b in shapes)).map(list),
        st.lists(st.tuples(part((3, 2)), part((2,))), max_size=3),
        JUNK,
    )
    value = data.draw(pairs, label="weights")
    before = weights(net)
    try:
        net.set_weights(value)
    except RAISES as exc:
        event(type(exc).__name__)
        assert_names(exc, "weights", "W_", "b_")
        assert unchanged(before, net)
        return
    event("set")
    for (W, b), (gW, gb) in zip(value, net.get_weights(), strict=True):
        np.testing.assert_array_equal(gW, np.asarray(W, dtype=np.float32))
        np.testing.assert_array_equal(gb, np.asarray(b, dtype=np.float32))


@FUZZ
@given(st.data())
def test_dense_forward_op(data):
    m, k, n = (data.draw(st.integers(0, 5), label=d) for d in "mkn")
    dtype = data.draw(st.sampled_from([np.float32, np.float64]), label="dtype")
    arrays = {
        "X": hnp.arrays(dtype, (m, k), elements=st.floats(-4, 4, width=32)),
        "W": hnp.arrays(dtype, (k, n), elements=st.floats(-4, 4, width=32)),
        "b": hnp.arrays(dtype, (n,), elements=st.floats(-4, 4, width=32)),
    }
    args = {name: data.draw(s, label=name) for name, s in arrays.items()}
    args["activation"] = data.draw(st.sampled_from([*ACTIVATIONS, "gelu"]), label="activation")
    wrong = data.draw(st.sampled_from([None, "X", "W", "b", "activation"]), label="wrong")
    if wrong is not None:
        args[wrong] = data.draw(
            st.one_of(matrices(3), JUNK, hnp.arrays(np.float32, (2, 2, 2))), label="bad"
        )
    try:
        out = ops.dense_forward(args["X"], args["W"], args["b"], args["activation"])
    except RAISES as exc:
        event(f"{wrong}: {type(exc).__name__}")
        assert_names(exc, "X", "W", "b", "activation", "arrays")
        return
    event(f"{wrong}: returned")
    want = ACTIVATIONS[args["activation"]].f(
        np.asarray(args["X"], np.float64) @ np.asarray(args["W"], np.float64) + args["b"]
    )
    np.testing.assert_allclose(out, want, rtol=1e-4, atol=1e-4)


# ---- mutated files -------------------------------------------------------------------------------

#: mutants of each file per run; the most any one load may allocate (the files are a few KB)
MUTANTS = 2000
BUDGET = 1 << 20
EDGE_BYTES = [0x00, 0x01, 0x7F, 0x80, 0xFF]
EDGE_INTS = [0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF]
EDGE_LONGS = [0, 2**40, 2**63 - 1, 2**64 - 1]


def mutate(raw: bytes, rng: np.random.Generator) -> bytes:
    """One to three random edits of ``raw``, half of them in its last quarter (the zip
    directory, whose sizes and offsets a reader must not trust)."""
    data = bytearray(raw)
    for _ in range(int(rng.integers(1, 4))):
        size = max(len(data), 1)
        at = int(rng.integers(size * 3 // 4, size) if rng.random() < 0.5 else rng.integers(size))
        op = int(rng.integers(9))
        if op == 0 and data:
            data[min(at, len(data) - 1)] ^= 1 << int(rng.integers(8))
        elif op == 1 and data:
            data[min(at, len(data) - 1)] = int(rng.integers(256))
        elif op == 2 and data:
            data[min(at, len(data) - 1)] = EDGE_BYTES[int(rng.integers(len(EDGE_BYTES)))]
        elif op == 3:
            value = EDGE_INTS[int(rng.integers(len(EDGE_INTS)))]
            data[at : at + 4] = value.to_bytes(4, "little")
        elif op == 4:
            value = [*EDGE_LONGS, len(raw)][int(rng.integers(len(EDGE_LONGS) + 1))]
            data[at : at + 8] = value.to_bytes(8, "little")
        elif op == 5:
            data[at:at] = rng.integers(0, 256, int(rng.integers(1, 17)), dtype=np.uint8).tobytes()
        elif op == 6:
            del data[at : at + int(rng.integers(1, 65))]
        elif op == 7:
            del data[at:]
        else:
            length = int(rng.integers(1, 128))
            src = int(rng.integers(size))
            data[at : at + length] = data[src : src + length]
    return bytes(data)


def same_model(a: serialization.SavedModel, b: serialization.SavedModel) -> bool:
    return (a.layers, a.activations, a.output, a.loss, a.dtype) == (
        b.layers,
        b.activations,
        b.output,
        b.loss,
        b.dtype,
    ) and all(
        np.array_equal(x, y)
        for pa, pb in zip(a.weights, b.weights, strict=True)
        for x, y in zip(pa, pb, strict=True)
    )


def same_checkpoint(a: serialization.SavedCheckpoint, b: serialization.SavedCheckpoint) -> bool:
    slots = all(
        sa.t == sb.t
        and all(np.array_equal(sa.W[k], sb.W[k]) and np.array_equal(sa.b[k], sb.b[k]) for k in sa.W)
        for sa, sb in zip(a.optimizer_states, b.optimizer_states, strict=True)
    )
    best = (a.best_weights is None) == (b.best_weights is None) and all(
        np.array_equal(x, y)
        for pa, pb in zip(a.best_weights or [], b.best_weights or [], strict=True)
        for x, y in zip(pa, pb, strict=True)
    )
    return (
        same_model(a.model, b.model)
        and slots
        and best
        and a.optimizer == b.optimizer
        and (a.epochs_done, a.batches_done, a.stats, a.rng_state, a.run)
        == (b.epochs_done, b.batches_done, b.stats, b.rng_state, b.run)
        and np.array_equal(a.order, b.order)
        and a.history == b.history
        and (a.best_loss, a.best_epoch) == (b.best_loss, b.best_epoch)
    )


def fuzz_file(
    tmp_path, raw: bytes, read: Callable[[str], object], same: Callable, seed: int
) -> dict[str, int]:
    """Read MUTANTS mutants of ``raw``; each must read as the original or raise
    ModelFileError, within BUDGET bytes of allocation. Returns the outcome counts."""
    original = read(str(tmp_path / "original.npz"))
    rng = np.random.default_rng(seed)
    path = tmp_path / "mutant.npz"
    counts = {"identical": 0, "refused": 0}
    tracemalloc.start()
    try:
        for i in range(MUTANTS):
            mutant = mutate(raw, rng)
            path.write_bytes(mutant)
            tracemalloc.reset_peak()
            try:
                got = read(str(path))
            except bpgpu.ModelFileError:
                counts["refused"] += 1
            else:
                assert same(got, original), f"mutant {i} read as a different model"
                counts["identical"] += 1
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < BUDGET, f"mutant {i} allocated {peak} bytes"
    finally:
        tracemalloc.stop()
    return counts


def _same_bytes_every_run(path) -> None:
    """Rewrite the archive at ``path`` with its members' zip timestamps fixed (np.savez stamps
    the time of writing), as np.savez lays members out, so every run mutates the same bytes."""
    with zipfile.ZipFile(path) as z:
        members = [(info.filename, z.read(info)) for info in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members:
            with z.open(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), "w",
                        force_zip64=True) as f:  # fmt: skip
                f.write(data)


@pytest.fixture(scope="module")
def saved_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz")
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(40, 5)), rng.integers(0, 3, 40)
    net = bpgpu.MLP([5, 7, 4, 3], activation=["tanh", "relu"], backend="numpy", seed=0)
    net.fit(
        X, y, epochs=2, batch_size=8, optimizer=bpgpu.Adam(lr=0.01), validation_split=0.25,
        patience=3, checkpoint=folder / "checkpoint.npz",
    )  # fmt: skip
    checkpoint = serialization.read_checkpoint(folder / "checkpoint.npz")
    checkpoint.history.wall_time = 0.0  # (the one number that differs from run to run)
    serialization.save_checkpoint(folder / "checkpoint.npz", checkpoint)
    net.save(folder / "model.npz")
    for name in ("checkpoint.npz", "model.npz"):
        _same_bytes_every_run(folder / name)
    return folder


@pytest.mark.parametrize("kind", ["model", "checkpoint"])
def test_mutated_files(tmp_path, saved_files, kind):
    raw = (saved_files / f"{kind}.npz").read_bytes()
    (tmp_path / "original.npz").write_bytes(raw)
    if kind == "model":
        counts = fuzz_file(
            tmp_path,
            raw,
            lambda p: serialization.read(p, max_bytes=BUDGET),
            same_model,
            seed=1,
        )
    else:
        counts = fuzz_file(
            tmp_path,
            raw,
            lambda p: serialization.read_checkpoint(p, max_bytes=BUDGET),
            same_checkpoint,
            seed=2,
        )
    assert counts["refused"] > MUTANTS // 2  # most edits must be caught, not ignored
    print(f"{kind}: {counts}")


def test_mutated_models_through_load(tmp_path, saved_files):
    """bpgpu.load (the file read, then the network built) on a few hundred mutants."""
    raw = (saved_files / "model.npz").read_bytes()
    rng = np.random.default_rng(3)
    original = bpgpu.load(saved_files / "model.npz", backend="numpy")
    path = tmp_path / "mutant.npz"
    for i in range(300):
        path.write_bytes(mutate(raw, rng))
        try:
            got = bpgpu.load(path, backend="numpy", max_bytes=BUDGET)
        except bpgpu.ModelFileError:
            continue
        assert got.layers == original.layers, f"mutant {i}"
        assert unchanged(weights(original), got), f"mutant {i}"
