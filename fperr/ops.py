"""Correctly rounded elementwise arithmetic in a floating-point format.

``add``, ``sub``, ``mul``, ``div``, ``sqrt`` and ``fma`` return, for every
element, the exact real result rounded once to ``fmt`` in the requested mode
(IEEE 754-2019, sections 5.4.1 and 6.3 for the sign of exact zeros), as a
float64 array whose values all belong to ``fmt``.

Operands are float64 arrays whose values are meant to belong to ``fmt``; each
operation first rounds them to ``fmt`` (to nearest), which leaves values that
already belong to ``fmt`` unchanged.

Method: compute the float64 result ``s`` and an error term ``e`` such that
``s + e`` is the exact result (TwoSum for ``add``/``sub``/``fma``, whose
product is exact in float64 because ``2p <= 53``; Dekker's TwoProduct for the
residual of ``div`` and ``sqrt``, of which only the sign is needed), then round
``s + e`` with :func:`round_with_residual`.

Supported formats: those with ``p <= 26`` and ``emax <= 480`` (binary16,
bfloat16, tf32, binary32, the fp8 formats, custom ones) in every mode of
:data:`fperr.rounding.MODES`, and binary64 with ``mode="nearest"`` only (plain
numpy arithmetic; no ``fma``, which numpy cannot round once).
``mode="stochastic"`` rounds the float64 result ``s``, so its probabilities
use the float64 approximation of the exact fraction.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import numpy.typing as npt

from .errors import FperrInputError
from .formats import FORMATS, Format, get_format
from .rounding import MODES, Mode, RandomLike
from .rounding import round as _fround

__all__ = [
    "add",
    "sub",
    "mul",
    "div",
    "sqrt",
    "fma",
    "round_with_residual",
    "two_sum",
    "two_product",
]

FloatArray = npt.NDArray[np.float64]

# p <= 26 makes the product of two format numbers exact in float64 (2p <= 53)
# and keeps every midpoint of the format (p + 1 bits) a float64 number.
_MAX_P = 26
# emax <= 480 keeps quotients (up to 2**(2 emax + p)) and their Veltkamp split
# (times 2**27) finite, and every residual far above float64's underflow
# threshold, so TwoProduct is exact and the residual's sign never lost.
_MAX_EMAX = 480
# Veltkamp's splitting constant 2**ceil(53/2) + 1 for binary64.
_SPLITTER = float(2**27 + 1)


def _is_binary64(fmt: Format) -> bool:
    return fmt.same_values(FORMATS["binary64"])


def _check(fmt: Format | str, mode: str) -> Format:
    fmt = get_format(fmt)
    if mode not in MODES:
        raise FperrInputError(f"unknown rounding mode {mode!r}; valid modes: {', '.join(MODES)}")
    if _is_binary64(fmt):
        if mode != "nearest":
            raise FperrInputError(
                "binary64 operations support only mode='nearest' (numpy arithmetic)"
            )
    elif fmt.p > _MAX_P or fmt.emax > _MAX_EMAX:
        raise FperrInputError(
            f"format {fmt.name} (p={fmt.p}, emax={fmt.emax}) is not supported: "
            f"exact emulation needs p <= {_MAX_P} and emax <= {_MAX_EMAX}, or binary64"
        )
    return fmt


@lru_cache(maxsize=64)
def _grid(fmt: Format) -> Format:
    """The format with one more bit: it holds every number *and* midpoint of
    ``fmt`` (subnormal ones included), i.e. every point where rounding to
    ``fmt`` can change value in any mode, and has no other numbers between two
    consecutive such points."""
    return Format(f"{fmt.name}+1bit", p=fmt.p + 1, emax=fmt.emax)


def _round(
    x: npt.ArrayLike, fmt: Format, mode: Mode = "nearest", *, rng: RandomLike = None
) -> FloatArray:
    # fperr.round's generic path returns shape (1,) for 0-d input; keep the shape
    xa = np.asarray(x, dtype=np.float64)
    return _fround(xa.reshape(-1), fmt, mode, rng=rng).reshape(xa.shape)


def _operand(x: npt.ArrayLike, fmt: Format) -> FloatArray:
    return _round(np.asarray(x, dtype=np.float64), fmt)


# -- error-free transformations -----------------------------------------------
def two_sum(a: FloatArray, b: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Knuth's TwoSum: ``s = fl(a + b)`` and ``e`` with ``s + e == a + b``
    exactly (no branch on magnitudes; exact unless ``a + b`` overflows)."""
    s = a + b
    bb = s - a
    e = (a - (s - bb)) + (b - bb)
    return s, e


def _split(a: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Veltkamp's split: ``a == hi + lo`` with ``hi``, ``lo`` of <= 26 bits."""
    c = _SPLITTER * a
    hi = c - (c - a)
    return hi, a - hi


def two_product(a: FloatArray, b: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Dekker's TwoProduct: ``p = fl(a * b)`` and ``e`` with ``p + e == a * b``
    exactly, provided ``a * b`` neither overflows nor comes within 2**-969 of
    underflow (Dekker 1971; Boldo 2006)."""
    p = a * b
    ah, al = _split(a)
    bh, bl = _split(b)
    e = ((ah * bh - p) + ah * bl + al * bh) + al * bl
    return p, e


# -- the shared rounding step -------------------------------------------------
def round_with_residual(
    s: npt.ArrayLike,
    e: npt.ArrayLike,
    fmt: Format | str,
    mode: Mode = "nearest",
    *,
    rng: RandomLike = None,
) -> FloatArray:
    """Correctly round ``t = s + e`` to ``fmt``, where ``s = fl64(t)``.

    ``s`` is the float64 nearest to the exact result ``t`` and ``e = t - s``
    (so ``|e| <= ulp64(s)/2``); only the *sign* of ``e`` is used, so for
    ``div``/``sqrt`` any ``e`` of the right sign will do.  Returns the float64
    array of ``t`` rounded once to ``fmt`` in ``mode``.

    Why this is exact (``fmt`` with ``p <= 26``, ``emax <= 480``):

    1. Every number of ``fmt`` and every midpoint between two of them has at
       most ``p + 1 <= 27`` significant bits and lies within float64's normal
       range, so it is a float64 number.  These are the only points where
       rounding to ``fmt`` changes value (midpoints for the nearest modes,
       numbers for the directed ones).
    2. Rounding to nearest float64 is monotone, so for every float64 ``m``:
       ``t < m`` implies ``s <= m``.  Hence ``s`` never crosses a point of
       (1) that it does not sit on: ``round(s)`` is already correct unless,
       for the nearest modes, ``s`` is exactly a midpoint of ``fmt`` and
       ``e != 0``, or, for the directed modes, ``s`` is exactly in ``fmt``
       and ``e != 0``.
    3. In those cases the answer is the neighbour in the direction of
       ``sign(e)``.  It is found by rounding ``s' = nextafter(s, sign(e)*inf)``
       instead: ``t`` lies strictly between ``s`` and ``s'``, and ``s'`` is no
       point of (1) because those are at least ``2**(e_s - p - 1)`` apart,
       far more than one float64 ulp.  Rounding ``s'`` with
       :func:`fperr.round` then handles overflow (to inf, max or NaN per
       mode and format), subnormals and flush-to-zero exactly as for any
       other value.

    The test for (2) does not look at ``mode``: ``s`` is nudged whenever it is
    a number or a midpoint of ``fmt`` (a number of the format with one more
    bit of precision) and ``e != 0``; nudging a format number under a nearest
    mode changes nothing, by the same argument.

    ``mode="stochastic"`` rounds ``s`` itself with ``rng``: the probability
    of rounding up uses the float64 fraction of ``s``, not of ``t``.
    For binary64 (``mode="nearest"`` only) ``s`` is already the answer.
    """
    fmt = _check(fmt, mode)
    s_arr = np.asarray(s, dtype=np.float64)
    e_arr = np.asarray(e, dtype=np.float64)
    s_arr, e_arr = np.broadcast_arrays(s_arr, e_arr)
    if _is_binary64(fmt):
        return np.array(s_arr, dtype=np.float64)
    if mode == "stochastic":
        return _round(s_arr, fmt, "stochastic", rng=rng)
    with np.errstate(invalid="ignore", over="ignore"):
        # A non-finite s (inf or NaN operands) has a NaN or meaningless e.
        nudge = (e_arr != 0) & np.isfinite(s_arr) & np.isfinite(e_arr)
        if nudge.any():
            on_grid = _round(s_arr, _grid(fmt), "toward_zero") == s_arr
            nudge &= on_grid
        if nudge.any():
            s_arr = np.array(s_arr, dtype=np.float64)
            s_arr[nudge] = np.nextafter(s_arr[nudge], np.copysign(np.inf, e_arr[nudge]))
    return _round(s_arr, fmt, mode)


# -- operations -----------------------------------------------------------------
def _sum_of_two(
    x: FloatArray, y: FloatArray, fmt: Format, mode: Mode, rng: RandomLike
) -> FloatArray:
    """Round the exact ``x + y`` (float64 operands) to ``fmt``."""
    if mode == "down":
        # IEEE 754 6.3: an exact zero sum of opposite-signed operands is -0
        # under roundTowardNegative (+0 otherwise); numpy adds to nearest,
        # where it is +0, so add the negations and negate back.
        s, e = two_sum(-x, -y)
        s, e = -s, -e
    else:
        s, e = two_sum(x, y)
    return round_with_residual(s, e, fmt, mode, rng=rng)


def add(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    fmt: Format | str,
    mode: Mode = "nearest",
    *,
    rng: RandomLike = None,
) -> FloatArray:
    """``x + y`` correctly rounded to ``fmt`` (IEEE 754 addition)."""
    fmt = _check(fmt, mode)
    xa, ya = _operand(x, fmt), _operand(y, fmt)
    if _is_binary64(fmt):
        return np.asarray(xa + ya, dtype=np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        return _sum_of_two(xa, ya, fmt, mode, rng)


def sub(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    fmt: Format | str,
    mode: Mode = "nearest",
    *,
    rng: RandomLike = None,
) -> FloatArray:
    """``x - y`` correctly rounded to ``fmt``: ``x + (-y)``, as IEEE defines it."""
    return add(x, -np.asarray(y, dtype=np.float64), fmt, mode, rng=rng)


def mul(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    fmt: Format | str,
    mode: Mode = "nearest",
    *,
    rng: RandomLike = None,
) -> FloatArray:
    """``x * y`` correctly rounded to ``fmt`` (the float64 product is exact)."""
    fmt = _check(fmt, mode)
    xa, ya = _operand(x, fmt), _operand(y, fmt)
    with np.errstate(invalid="ignore", over="ignore"):
        p = xa * ya  # exact: 2p <= 53 bits and no float64 over/underflow
    if _is_binary64(fmt):
        return np.asarray(p, dtype=np.float64)
    return _round(p, fmt, mode, rng=rng)


def fma(
    a: npt.ArrayLike,
    b: npt.ArrayLike,
    c: npt.ArrayLike,
    fmt: Format | str,
    mode: Mode = "nearest",
    *,
    rng: RandomLike = None,
) -> FloatArray:
    """Fused multiply-add ``a * b + c`` with a single rounding to ``fmt``.

    Not available for binary64, whose product is not exact in float64 (and
    numpy has no vectorised fma).
    """
    fmt = _check(fmt, mode)
    if _is_binary64(fmt):
        raise FperrInputError("fma is not supported for binary64")
    aa, ba, ca = _operand(a, fmt), _operand(b, fmt), _operand(c, fmt)
    with np.errstate(invalid="ignore", over="ignore"):
        p = aa * ba  # exact, sign of a zero product included
        return _sum_of_two(p, ca, fmt, mode, rng)


def div(
    x: npt.ArrayLike,
    y: npt.ArrayLike,
    fmt: Format | str,
    mode: Mode = "nearest",
    *,
    rng: RandomLike = None,
) -> FloatArray:
    """``x / y`` correctly rounded to ``fmt`` (x/0 is a signed infinity)."""
    fmt = _check(fmt, mode)
    xa, ya = _operand(x, fmt), _operand(y, fmt)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        q = xa / ya
        if _is_binary64(fmt):
            return np.asarray(q, dtype=np.float64)
        # r = x - q*y exactly in sign: q*y is within a factor 2 of x, so
        # x - fl(q*y) is exact (Sterbenz) and the last subtraction keeps the
        # sign.  sign(x/y - q) = sign(r) * sign(y).
        ph, pl = two_product(q, ya)
        r = (xa - ph) - pl
        e = np.where(np.isfinite(q) & (q != 0), r / ya, 0.0)
    return round_with_residual(q, e, fmt, mode, rng=rng)


def sqrt(
    x: npt.ArrayLike,
    fmt: Format | str,
    mode: Mode = "nearest",
    *,
    rng: RandomLike = None,
) -> FloatArray:
    """Square root correctly rounded to ``fmt`` (sqrt(-0) = -0, x < 0 gives NaN)."""
    fmt = _check(fmt, mode)
    xa = _operand(x, fmt)
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        s = np.sqrt(xa)
        if _is_binary64(fmt):
            return np.asarray(s, dtype=np.float64)
        # x - s*s is exact in sign (Sterbenz on x - fl(s*s), as for div), and
        # sign(sqrt(x) - s) = sign(x - s*s) since sqrt(x) + s > 0.
        ph, pl = two_product(s, s)
        r = (xa - ph) - pl
        e = np.where(np.isfinite(s) & (s > 0), r / (2.0 * s), 0.0)
    return round_with_residual(s, e, fmt, mode, rng=rng)
