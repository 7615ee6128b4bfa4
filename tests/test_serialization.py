"""save / bpgpu.load: round trip, plain .npz without pickle, bad files raise ValueError."""

from __future__ import annotations

import io
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import bpgpu
from bpgpu.backends import REGISTRY
from helpers import backend_or_skip


@pytest.fixture
def trained(rng) -> tuple[bpgpu.MLP, np.ndarray]:
    X, y = rng.normal(size=(40, 5)), rng.integers(0, 3, 40)
    net = bpgpu.MLP(
        [5, 7, 4, 3],
        activation=["tanh", "relu"],
        output="softmax",
        loss="mse",
        backend="numpy",
        dtype="float64",
        seed=2,
    )
    net.fit(X, y, epochs=3, batch_size=8, optimizer=bpgpu.Adam(lr=0.01))
    return net, X


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", list(REGISTRY))
def test_round_trip(tmp_path, rng, backend, dtype):
    """Saved from a model trained on each backend, loaded onto the same backend."""
    backend_or_skip(backend)
    X, y = rng.normal(size=(33, 5)), rng.integers(0, 2, 33)
    net = bpgpu.MLP(
        [5, 7, 4, 2],
        activation=["tanh", "relu"],
        output="sigmoid",
        loss="cross_entropy",
        backend=backend,
        dtype=dtype,
        seed=2,
    )
    net.fit(X, np.eye(2)[y], epochs=2, batch_size=8)
    path = tmp_path / "model.npz"
    net.save(path)
    back = bpgpu.load(path, backend=backend)
    assert back.backend.name == backend
    assert back.layers == net.layers
    assert back.activations == ["tanh", "relu"]
    assert (back.output, back.loss_name, back.dtype) == (
        "sigmoid",
        "cross_entropy",
        np.dtype(dtype),
    )
    for (W1, b1), (W2, b2) in zip(net.get_weights(), back.get_weights(), strict=True):
        assert W2.dtype == np.dtype(dtype)
        np.testing.assert_array_equal(W1, W2)
        np.testing.assert_array_equal(b1, b2)
    np.testing.assert_array_equal(net.predict_proba(X), back.predict_proba(X))
    np.testing.assert_array_equal(net.predict(X), back.predict(X))


def test_round_trip_of_a_network_without_hidden_layers(tmp_path, rng):
    net = bpgpu.MLP([3, 1], output="identity", backend="numpy", seed=0)
    net.save(tmp_path / "lin.npz")
    back = bpgpu.load(tmp_path / "lin.npz", backend="numpy")
    X = rng.normal(size=(4, 3))
    np.testing.assert_array_equal(net.predict(X), back.predict(X))


def test_file_is_plain_npz_without_pickle(tmp_path, trained):
    net, _ = trained
    path = tmp_path / "m.npz"
    net.save(str(path))  # a str path works too, and no second .npz is appended
    assert path.exists() and not (tmp_path / "m.npz.npz").exists()
    with np.load(path, allow_pickle=False) as data:
        assert int(data["format_version"]) >= 1
        np.testing.assert_array_equal(data["layers"], [5, 7, 4, 3])
        assert [str(a) for a in data["activations"]] == ["tanh", "relu"]
        assert str(data["output"]) == "softmax" and str(data["loss"]) == "mse"
        for key in data.files:
            assert data[key].dtype != object
        np.testing.assert_array_equal(data["W1"], net.get_weights()[0][0])


def test_truncated_file_raises_value_error(tmp_path, trained):
    net, _ = trained
    path = tmp_path / "m.npz"
    net.save(path)
    raw = path.read_bytes()
    for cut in (len(raw) // 2, 10, 0):
        bad = tmp_path / f"cut{cut}.npz"
        bad.write_bytes(raw[:cut])
        with pytest.raises(ValueError, match="model file"):
            bpgpu.load(bad, backend="numpy")


def test_corrupted_file_raises_value_error(tmp_path):
    bad = tmp_path / "junk.npz"
    bad.write_bytes(b"PK\x03\x04" + bytes(range(256)) * 4)
    with pytest.raises(ValueError, match="model file"):
        bpgpu.load(bad, backend="numpy")


def test_pickled_object_array_raises_value_error(tmp_path, trained):
    net, _ = trained
    path = tmp_path / "m.npz"
    net.save(path)
    with np.load(path) as data:
        fields = {k: data[k] for k in data.files}
    fields["W1"] = np.array([object(), {"evil": 1}], dtype=object)  # written with pickle
    evil = tmp_path / "evil.npz"
    np.savez(evil, **fields)
    with pytest.raises(ValueError, match="'W1': holds pickled Python objects"):
        bpgpu.load(evil, backend="numpy")


def test_file_that_is_not_a_model(tmp_path):
    other = tmp_path / "other.npz"
    np.savez(other, a=np.arange(3))
    with pytest.raises(ValueError, match=r"format_version|not a bpgpu model"):
        bpgpu.load(other, backend="numpy")


@pytest.mark.parametrize(
    "change,match",
    [
        (lambda f: f.update(format_version=np.array(99)), "version"),
        (lambda f: f.pop("W2"), "W2"),
        (lambda f: f.update(W1=f["W1"][:, :2]), "'W1'.*shape"),
        (lambda f: f.update(output=np.array("softplus")), "output"),
        (lambda f: f.update(W1=np.full_like(f["W1"], np.nan)), "'W1'.*NaN"),
    ],
)
def test_inconsistent_model_files_raise_value_error(tmp_path, trained, change, match):
    net, _ = trained
    buf = io.BytesIO()
    net.save(tmp_path / "m.npz")
    with np.load(tmp_path / "m.npz") as data:
        fields = {k: data[k] for k in data.files}
    change(fields)
    np.savez(buf, **fields)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(buf.getvalue())
    with pytest.raises(ValueError, match=match):
        bpgpu.load(bad, backend="numpy")


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        bpgpu.load(tmp_path / "absent.npz", backend="numpy")


def test_saved_file_is_a_zip_of_npy(tmp_path, trained):
    net, _ = trained
    net.save(tmp_path / "m.npz")
    with zipfile.ZipFile(tmp_path / "m.npz") as z:
        assert all(name.endswith(".npy") for name in z.namelist())


# ---- hostile and damaged files ------------------------------------------------------------------


def _fields(net: bpgpu.MLP, tmp_path) -> dict[str, np.ndarray]:
    net.save(tmp_path / "orig.npz")
    with np.load(tmp_path / "orig.npz") as data:
        return {k: data[k] for k in data.files}


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def _write_members(path, members: dict[str, bytes], compression=zipfile.ZIP_STORED) -> None:
    with zipfile.ZipFile(path, "w", compression=compression) as z:
        for name, data in members.items():
            z.writestr(name, data)


@pytest.fixture
def small(trained, tmp_path) -> dict[str, np.ndarray]:
    return _fields(trained[0], tmp_path)


PICKLE_BYTES = b"\x80\x04K\x01."  # a pickle of the integer 1 (protocol 4), written out by hand


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", "is empty"),
        (bytes(np.random.default_rng(0).integers(0, 256, 3000, dtype=np.uint8)), "not an .npz"),
        (b"hello, world\n", "not an .npz"),
        (PICKLE_BYTES, "is a Python pickle"),
        (_npy(np.arange(3)), r"single NumPy array \(a .npy file\)"),
        (b"PK\x03\x04" + bytes(range(256)) * 4, "directory at the end is missing or damaged"),
    ],
    ids=["empty", "random", "text", "pickle", "npy", "zip-start"],
)
def test_each_kind_of_wrong_file_has_its_own_message(tmp_path, content, message):
    path = tmp_path / "f.npz"
    path.write_bytes(content)
    with pytest.raises(bpgpu.ModelFileError, match=message) as info:
        bpgpu.load(path, backend="numpy")
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value) and info.value.path == str(path)
    if "pickle" not in message:
        assert "pickle" not in str(info.value)


def test_a_zip_of_other_files(tmp_path):
    _write_members(tmp_path / "f.npz", {"notes.txt": b"hi"})
    with pytest.raises(bpgpu.ModelFileError, match=r"'notes.txt' that is not a .npy array"):
        bpgpu.load(tmp_path / "f.npz", backend="numpy")


def test_truncation_anywhere_is_a_model_file_error(tmp_path, trained):
    net, _ = trained
    net.save(tmp_path / "m.npz")
    raw = (tmp_path / "m.npz").read_bytes()
    for cut in range(1, len(raw), 37):
        (tmp_path / "cut.npz").write_bytes(raw[:cut])
        with pytest.raises(bpgpu.ModelFileError, match=r"cut short|corrupted"):
            bpgpu.load(tmp_path / "cut.npz", backend="numpy")


def _tamper(fields: dict, key: str, value: object) -> dict:
    changed = dict(fields)
    if value is None:
        changed.pop(key)
    else:
        changed[key] = np.asarray(value)
    return changed


@pytest.mark.parametrize(
    "key,value,field,message",
    [
        ("layers", 5, "layers", "1-D integer array"),
        ("layers", [5.0, 7.0, 4.5, 3.0], "layers", "1-D integer array; got float64"),
        ("layers", [5, 7, 0, 3], "layers", "at least 1"),
        ("layers", [5, 7, 3], "layers", "must list 4 sizes"),
        ("format_version", "1", "format_version", "0-d integer array"),
        ("format_version", 2, "format_version", "version 2"),
        ("output", 3, "output", "0-d text"),
        ("output", "softplus", "output", "must be one of"),
        ("activations", [["tanh", "relu"]], "activations", "1-D text"),
        ("activations", ["tanh"], "activations", "2 activations"),
        ("activations", ["tanh", "swish"], "activations", "must be one of"),
        ("loss", "hinge", "loss", "must be one of"),
        ("dtype", "float16", "dtype", "must be one of"),
        ("W1", np.zeros((5, 7), dtype=np.int64), "W1", "must be float64"),
        ("W1", np.zeros((5, 7), dtype=np.float32), "W1", "must be float64"),
        ("b2", np.zeros(5), "b2", r"shape \(4,\)"),
        ("W3", None, None, r"lacks \['W3'\]"),
    ],
)
def test_tampered_fields_name_the_file_and_the_field(tmp_path, small, key, value, field, message):
    np.savez(tmp_path / "bad.npz", **_tamper(small, key, value))
    with pytest.raises(bpgpu.ModelFileError, match=message) as info:
        bpgpu.load(tmp_path / "bad.npz", backend="numpy")
    assert info.value.field == field
    assert str(tmp_path / "bad.npz") in str(info.value)
    if field:
        assert f"field {field!r}" in str(info.value)


def test_a_network_the_model_cannot_build(tmp_path, small):
    changed = dict(small)
    changed["layers"] = np.array([5, 7, 4, 1])
    changed["W3"], changed["b3"] = small["W3"][:, :1], small["b3"][:1]
    np.savez(tmp_path / "bad.npz", **changed)
    with pytest.raises(bpgpu.ModelFileError, match=r"cannot build.*softmax.*needs at least 2"):
        bpgpu.load(tmp_path / "bad.npz", backend="numpy")


def _peak_bytes(call) -> int:
    tracemalloc.start()
    try:
        call()
    except ValueError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


def test_a_small_file_claiming_huge_layers_allocates_nothing(tmp_path, small):
    """A 3 KB file whose layers say [10000, 10000, 4, 3] (a 400 MB W1) is refused from the
    header of its small W1, before anything that size is allocated."""
    changed = dict(small)
    changed["layers"] = np.array([10000, 10000, 4, 3])
    np.savez_compressed(tmp_path / "bad.npz", **changed)
    assert (tmp_path / "bad.npz").stat().st_size < 4000
    start = time.perf_counter()
    peak = _peak_bytes(lambda: bpgpu.load(tmp_path / "bad.npz", backend="numpy"))
    assert time.perf_counter() - start < 0.5
    assert peak < 1 << 20
    with pytest.raises(bpgpu.ModelFileError, match=r"'W1'.*shape \(10000, 10000\)"):
        bpgpu.load(tmp_path / "bad.npz", backend="numpy")


def test_a_header_claiming_more_than_its_member_holds(tmp_path, small):
    """W1's header says (10000, 10000) as the layers do, but the member holds 35 numbers:
    refused from the header and the directory, before 800 MB are allocated."""
    members = {f"{k}.npy": _npy(a) for k, a in small.items()}
    members["layers.npy"] = _npy(np.array([10000, 10000, 4, 3]))
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (10000, 10000)}
    )
    members["W1.npy"] = header.getvalue() + small["W1"].tobytes()
    _write_members(tmp_path / "m.npz", members)
    peak = _peak_bytes(lambda: bpgpu.load(tmp_path / "m.npz", backend="numpy"))
    assert peak < 1 << 20
    with pytest.raises(bpgpu.ModelFileError, match=r"'W1': declares shape \(10000, 10000\)"):
        bpgpu.load(tmp_path / "m.npz", backend="numpy")


def _zip_with_zeros(path, fields: dict, name: str, megabytes: int) -> None:
    """fields, deflated, and a member ``name`` of ``megabytes`` MiB of float64 zeros written in
    chunks (a few hundred KB on disk)."""
    count = megabytes << 17
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "<f8", "fortran_order": False, "shape": (count,)}
    )
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for key, a in fields.items():
            z.writestr(f"{key}.npy", _npy(a))
        with z.open(f"{name}.npy", "w", force_zip64=True) as f:
            f.write(header.getvalue())
            chunk = bytes(1 << 20)
            for _ in range(megabytes):
                f.write(chunk)


def test_an_extra_member_is_refused_without_decompressing_it(tmp_path, small):
    path = tmp_path / "bomb.npz"
    _zip_with_zeros(path, small, "extra", 200)
    assert path.stat().st_size < 1 << 20
    start = time.perf_counter()
    peak = _peak_bytes(lambda: bpgpu.load(path, backend="numpy"))
    assert time.perf_counter() - start < 0.5  # inflating 200 MB takes longer
    assert peak < 1 << 20
    with pytest.raises(bpgpu.ModelFileError, match=r"\['extra'\]; refused without reading"):
        bpgpu.load(path, backend="numpy")


def test_arrays_beyond_max_bytes_are_refused_before_reading(tmp_path, rng):
    net = bpgpu.MLP([100, 200, 3], backend="numpy", seed=0)
    net.save(tmp_path / "m.npz")
    peak = _peak_bytes(lambda: bpgpu.load(tmp_path / "m.npz", backend="numpy", max_bytes=10_000))
    assert peak < 50_000  # the 80 KB W1 was never read
    with pytest.raises(bpgpu.ModelFileError, match=r"more than the 9.77 KiB allowed \(max_bytes\)"):
        bpgpu.load(tmp_path / "m.npz", backend="numpy", max_bytes=10_000)
    X = rng.normal(size=(3, 100))
    np.testing.assert_array_equal(bpgpu.load(tmp_path / "m.npz").predict(X), net.predict(X))


def test_a_member_declaring_more_than_it_holds(tmp_path, small):
    """The directory's size of W1 raised: refused from the directory alone."""
    path = tmp_path / "m.npz"
    _write_members(path, {f"{k}.npy": _npy(a) for k, a in small.items()})
    raw = bytearray(path.read_bytes())
    entry = raw.index(b"PK\x01\x02")  # the central directory's entries
    while raw[entry + 46 : entry + 52] != b"W1.npy":
        entry = raw.index(b"PK\x01\x02", entry + 4)
    raw[entry + 24 : entry + 28] = (2**31).to_bytes(4, "little")  # uncompressed size
    path.write_bytes(bytes(raw))
    with pytest.raises(bpgpu.ModelFileError, match=r"'W1'.*more than its compression can produce"):
        bpgpu.load(path, backend="numpy")


def test_changed_array_data_fails_its_checksum(tmp_path, trained):
    net, _ = trained
    net.save(tmp_path / "m.npz")
    raw = bytearray((tmp_path / "m.npz").read_bytes())
    W1 = net.get_weights()[0][0]
    at = raw.index(W1.tobytes()[:16])
    raw[at + 3] ^= 0x10
    (tmp_path / "m.npz").write_bytes(bytes(raw))
    with pytest.raises(bpgpu.ModelFileError, match=r"'W1'.*corrupted.*CRC"):
        bpgpu.load(tmp_path / "m.npz", backend="numpy")
