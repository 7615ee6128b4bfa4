"""The compiled CPU path's e^x and tanh x (bpgpu/backends/numba_math.py) against NumPy's, in
ulps, over every range a network meets and the special values."""

from __future__ import annotations

import numpy as np
import pytest

numba = pytest.importorskip("numba")
numba_math = pytest.importorskip("bpgpu.backends.numba_math")

SPECIAL = np.array(
    [0.0, -0.0, np.inf, -np.inf, np.nan, 709.78, 709.79, -708.3, -745.1, -745.2, 1e-300,
     -1e-300, 5e-324, 19.99, 20.0, -20.0, 40.0, 0.5 * np.log(2), -0.5 * np.log(2)]
)  # fmt: skip


@numba.njit
def _exp_all(x, out):
    for i in range(x.shape[0]):
        out[i] = numba_math.exp(x[i])


@numba.njit
def _tanh_all(x, out):
    for i in range(x.shape[0]):
        out[i] = numba_math.tanh(x[i])


def _inputs(rng: np.random.Generator) -> np.ndarray:
    return np.concatenate(
        [
            rng.uniform(-750, 750, 100_000),
            rng.uniform(-30, 30, 100_000),
            rng.uniform(-1, 1, 100_000),
            rng.normal(0, 1e-6, 10_000),
            SPECIAL,
        ]
    )


def _ulps(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """|got - want| in units of the last place of want; 0 where both are equal (inf, NaN too)."""
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    with np.errstate(invalid="ignore"):
        d = np.abs(got - want) / np.spacing(np.abs(want))
    return np.where(same, 0.0, d)


@pytest.mark.parametrize(
    "fn,reference,ulps", [(_exp_all, np.exp, 1.0), (_tanh_all, np.tanh, 3.0)], ids=["exp", "tanh"]
)
def test_within_ulps_of_numpy(rng, fn, reference, ulps) -> None:
    x = _inputs(rng)
    got = np.full_like(x, 12345.0)
    fn(x, got)
    with np.errstate(over="ignore"):
        want = reference(x)
    worst = _ulps(got, want)
    assert worst.max() <= ulps, f"{worst.max()} ulps at x = {x[np.argmax(worst)]!r}"
    # the special values exactly: NaN, the limits at +-inf, signed zeros, overflow to inf
    special = got[-len(SPECIAL) :]
    np.testing.assert_array_equal(np.signbit(special), np.signbit(want[-len(SPECIAL) :]))
    assert np.array_equal(np.isnan(special), np.isnan(SPECIAL))


def test_float32_arguments_are_computed_in_float64(rng) -> None:
    x = rng.uniform(-20, 20, 1000).astype(np.float32)
    got = np.empty(1000)
    _tanh_all(x, got)
    assert _ulps(got, np.tanh(x.astype(np.float64))).max() <= 3.0
