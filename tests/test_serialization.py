"""save / bpgpu.load: round trip, plain .npz without pickle, bad files raise ValueError."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest

import bpgpu


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
def test_round_trip(tmp_path, rng, dtype):
    X, y = rng.normal(size=(33, 5)), rng.integers(0, 2, 33)
    net = bpgpu.MLP(
        [5, 7, 4, 2],
        activation=["tanh", "relu"],
        output="sigmoid",
        loss="cross_entropy",
        backend="numpy",
        dtype=dtype,
        seed=2,
    )
    net.fit(X, np.eye(2)[y], epochs=2, batch_size=8)
    path = tmp_path / "model.npz"
    net.save(path)
    back = bpgpu.load(path, backend="numpy")
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
    with pytest.raises(ValueError, match="pickle"):
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
        (lambda f: f.update(W1=f["W1"][:, :2]), "W_1"),
        (lambda f: f.update(output=np.array("softplus")), "output"),
        (lambda f: f.update(W1=np.full_like(f["W1"], np.nan)), "W_1"),
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
