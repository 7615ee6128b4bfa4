"""e^x and tanh x for the compiled CPU path, written in plain arithmetic so the compiler can
vectorize a loop that calls them (a call to the C library's exp or tanh stops it).

Both work in float64 whatever the dtype of their argument:

- ``exp``: x = n ln 2 + r with |r| <= ln 2 / 2 (ln 2 split in two parts, Cody and Waite, so n ln 2
  is exact), e^r by its Taylor series to r^13 / 13! (the next term is below 2^-56 of the sum),
  then scaled by 2^n built in the exponent bits (in two halves, so results that overflow,
  underflow or are subnormal come out right). Within 1 ulp of the correctly rounded result.
- ``tanh``: tanh |x| = m / (m + 2) with m = e^(2|x|) - 1 from the same reduction (no
  cancellation near 0), the sign put back; |x| >= 20 gives +-1. Within 3 ulps.

NaN gives NaN, +-inf the limits, -0 keeps its sign in tanh; tests/test_numba_math.py holds them to
NumPy on every range and special value.

numba's disk cache of the compiled rules is keyed on numba_rules.py alone, not on this file: after
editing here, touch numba_rules.py (or delete its __pycache__) so that they compile again.
"""

from __future__ import annotations

import math
from typing import Any

import numba
from llvmlite import ir
from numba import float64, int64
from numba.extending import intrinsic

_jit = numba.njit(nogil=True, error_model="numpy", inline="always")

_LOG2E = 1.4426950408889634
#: ln 2 = _LN2_HI + _LN2_LO, the high part with its low 21 bits zero: n * _LN2_HI is exact
_LN2_HI = 6.93147180369123816490e-01
_LN2_LO = 1.90821492927058770002e-10
#: 1 / k!, k = 0 ... 13
_F = tuple(1.0 / math.factorial(k) for k in range(14))


@intrinsic
def _two_to(typingctx: Any, n: Any) -> Any:
    """2^n as a float64, for an int64 n in [-1022, 1023]: n + 1023 written to the exponent bits."""

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        biased = builder.add(args[0], ir.Constant(ir.IntType(64), 1023))
        bits = builder.shl(biased, ir.Constant(ir.IntType(64), 52))
        return builder.bitcast(bits, ir.DoubleType())

    return float64(int64), codegen


@_jit
def _reduce(x):
    # x = n ln 2 + r, |r| <= ln 2 / 2; returns (n, e^r - 1) with e^r - 1 = r + r^2/2! + ... r^13/13!
    n = math.floor(x * _LOG2E + 0.5)
    r = (x - n * _LN2_HI) - n * _LN2_LO
    q = _F[12] + r * _F[13]
    q = _F[8] + r * (_F[9] + r * (_F[10] + r * (_F[11] + r * q)))
    q = _F[4] + r * (_F[5] + r * (_F[6] + r * (_F[7] + r * q)))
    q = r * (1.0 + r * (_F[2] + r * (_F[3] + r * q)))
    return int64(n), q


@_jit
def exp(x):
    # e^x = 2^n e^r; x clamped where e^x already is inf or 0, 2^n applied in two halves
    x = float64(x)
    n, q = _reduce(min(max(x, -746.0), 710.0))
    half = n >> 1
    e = (1.0 + q) * _two_to(half) * _two_to(n - half)
    return e if x == x else x


@_jit
def tanh(x):
    # tanh |x| = m / (m + 2), m = e^(2|x|) - 1 = 2^n (e^r - 1) + (2^n - 1); |x| clamped at 20
    x = float64(x)
    n, q = _reduce(2.0 * min(abs(x), 20.0))
    s = _two_to(n)
    m = s * q + (s - 1.0)
    t = math.copysign(m / (m + 2.0), x)
    return t if x == x else x
