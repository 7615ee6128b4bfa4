from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from bpgpu import datasets


def _check(ds: datasets.Dataset, features: int, classes: int) -> None:
    assert ds.X_train.dtype == np.float32 and ds.X_test.dtype == np.float32
    assert ds.y_train.dtype == np.int64 and ds.y_test.dtype == np.int64
    assert ds.X_train.shape[1] == ds.X_test.shape[1] == ds.n_features == features
    assert len(ds.X_train) == len(ds.y_train) and len(ds.X_test) == len(ds.y_test)
    assert ds.n_classes == classes
    assert set(np.unique(ds.y_train)) == set(range(classes))
    assert set(np.unique(ds.y_test)) == set(range(classes))
    assert np.isfinite(ds.X_train).all() and np.isfinite(ds.X_test).all()


def test_xor():
    ds = datasets.xor()
    _check(ds, 2, 2)
    np.testing.assert_array_equal(ds.y_train, [0, 1, 1, 0])


def test_digits_split_and_range():
    ds = datasets.digits()
    _check(ds, 64, 10)
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert abs(len(ds.y_test) / 1797 - 0.25) < 0.01
    for X in (ds.X_train, ds.X_test):
        assert X.min() == 0.0 and X.max() == 1.0
    # stratified: every class about a quarter in test
    counts = np.bincount(ds.y_test) / (np.bincount(ds.y_test) + np.bincount(ds.y_train))
    assert np.all(np.abs(counts - 0.25) < 0.02)
    # seeded: same seed same split, other seed other split
    np.testing.assert_array_equal(datasets.digits().X_test, ds.X_test)
    assert not np.array_equal(datasets.digits(seed=1).X_test, ds.X_test)


def test_iris_standardised_with_train_statistics():
    ds = datasets.iris()
    _check(ds, 4, 3)
    np.testing.assert_allclose(ds.X_train.mean(axis=0), 0, atol=1e-5)
    np.testing.assert_allclose(ds.X_train.std(axis=0), 1, atol=1e-5)
    assert np.abs(ds.X_test.mean(axis=0)).max() > 1e-4  # test part not re-centred
    assert (len(ds.y_train), len(ds.y_test)) == (114, 36)  # 12 of each 50 held out


def test_mnist_subset():
    ds = datasets.mnist()
    _check(ds, 784, 10)
    assert (len(ds.y_train), len(ds.y_test)) == (4000, 1000)
    assert ds.X_train.min() == 0.0 and ds.X_train.max() == 1.0


def _idx(data: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in data.shape)
    return header + data.astype(np.uint8).tobytes()


def _write_mnist(folder: Path, compress: bool, rng: np.random.Generator) -> dict:
    parts = {}
    for stem_images, stem_labels, n in (
        ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", 7),
        ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", 3),
    ):
        images = rng.integers(0, 256, size=(n, 5, 3), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        for stem, arr, magic in ((stem_images, images, 0x803), (stem_labels, labels, 0x801)):
            raw = _idx(arr, magic)
            if compress:
                (folder / (stem + ".gz")).write_bytes(gzip.compress(raw))
            else:
                (folder / stem).write_bytes(raw)
        parts[stem_images] = (images, labels)
    return parts


@pytest.mark.parametrize("compress", [False, True], ids=["plain", "gzip"])
def test_mnist_idx_round_trip(tmp_path, compress):
    parts = _write_mnist(tmp_path, compress, np.random.default_rng(3))
    ds = datasets.mnist(tmp_path)
    images, labels = parts["train-images-idx3-ubyte"]
    np.testing.assert_array_equal(ds.X_train, images.reshape(7, 15).astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.y_train, labels)
    images, labels = parts["t10k-images-idx3-ubyte"]
    np.testing.assert_array_equal(ds.X_test, images.reshape(3, 15).astype(np.float32) / 255)
    np.testing.assert_array_equal(ds.y_test, labels)
    assert ds.X_train.dtype == np.float32 and ds.n_classes == 10


def _corrupt(path: Path, how: str) -> None:
    raw = path.read_bytes()
    if how == "truncated-data":
        path.write_bytes(raw[:-1])
    elif how == "extra-data":
        path.write_bytes(raw + b"\0")
    elif how == "truncated-header":
        path.write_bytes(raw[:10])
    elif how == "bad-magic":
        path.write_bytes(b"\x00\x00\x0d\x03" + raw[4:])
    elif how == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize(
    "how", ["truncated-data", "extra-data", "truncated-header", "bad-magic", "empty"]
)
def test_corrupt_idx_raises(tmp_path, how):
    _write_mnist(tmp_path, False, np.random.default_rng(4))
    _corrupt(tmp_path / "train-images-idx3-ubyte", how)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte"):
        datasets.mnist(tmp_path)


def test_truncated_gzip_raises(tmp_path):
    _write_mnist(tmp_path, True, np.random.default_rng(5))
    path = tmp_path / "t10k-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-6])
    with pytest.raises(ValueError, match="t10k-labels"):
        datasets.mnist(tmp_path)


def test_mismatched_counts_and_labels(tmp_path):
    _write_mnist(tmp_path, False, np.random.default_rng(6))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(np.zeros(6), 0x801))
    with pytest.raises(ValueError, match="7 images but"):
        datasets.mnist(tmp_path)
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(_idx(np.full(7, 10), 0x801))
    with pytest.raises(ValueError, match=r"labels must be 0\.\.9"):
        datasets.mnist(tmp_path)


def test_missing_files_and_folder(tmp_path):
    with pytest.raises(ValueError, match="no train-images"):
        datasets.mnist(tmp_path)
    with pytest.raises(ValueError, match="not a folder"):
        datasets.mnist(tmp_path / "nope")
