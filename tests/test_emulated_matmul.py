"""The emulated GEMM's fast storage paths (fperr.arith.Emulated.matmul).

A float64 GEMM is rounded to binary32 (the accumulator) and then stored.  For
binary16 storage it casts float32 -> float16 directly rather than through
float64, and for binary32 storage it skips the second (identity) rounding.  The
oracle for both is the float64 cast path of :func:`fperr.rounding.round`, which
tests/test_rounding.py checks against exact rationals.
"""

from __future__ import annotations

import numpy as np

from fperr.arith import Emulated
from fperr.rounding import round as fround


def _halfway_sweep() -> np.ndarray:
    """float32 values at and beside every binary16 rounding boundary: all sign,
    exponent and top-10 mantissa bits, with the 13 low bits at 0, 1, just below,
    at and just above the half-ulp (0x1000) and at the top."""
    high = np.arange(2**19, dtype=np.uint32) << np.uint32(13)
    low = np.array([0, 1, 0x0FFF, 0x1000, 0x1001, 0x1FFE, 0x1FFF], dtype=np.uint32)
    bits = (high[:, None] | low[None, :]).ravel()
    x = bits.view(np.float32)
    return x[np.isfinite(x)]


def test_float32_to_float16_cast_matches_the_float64_path():
    x = _halfway_sweep()
    with np.errstate(over="ignore"):
        direct = x.astype(np.float16).astype(np.float64)
    via64 = fround(x.astype(np.float64), "binary16")
    np.testing.assert_array_equal(direct, via64)  # inf where both overflow, same zeros' signs
    assert np.array_equal(np.signbit(direct), np.signbit(via64))


def _old_matmul(arith: Emulated, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    wide = np.matmul(a, b)
    with np.errstate(over="ignore"):
        return arith.store(wide.astype(np.float32).astype(np.float64))


def test_matmul_stores_as_the_float64_path_does():
    rng = np.random.default_rng(0)
    for storage in ("binary16", "binary32", "bfloat16"):
        arith = Emulated.from_names(storage, "binary32")
        for scale in (1e-6, 1.0, 1e4):  # subnormal, ordinary and overflowing sums in binary16
            a = arith.store(rng.standard_normal((64, 48)) * scale)
            b = arith.store(rng.standard_normal((48, 40)))
            got = arith.matmul(a, b)
            want = _old_matmul(arith, a, b)
            np.testing.assert_array_equal(got, want)
            assert np.array_equal(np.signbit(got), np.signbit(want))
            if storage == "binary16":  # the sweep reaches both ends of the range
                assert np.isinf(want).any() if scale > 1 else (want[want != 0] < 2.0**-14).any()
