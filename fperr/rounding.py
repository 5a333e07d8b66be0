"""Rounding float64 values to a :class:`~fperr.formats.Format`.

Two implementations of one specification:

* :func:`round_scalar` -- a readable reference on exact rationals
  (:class:`fractions.Fraction`); slow, obviously correct, the oracle.
* :func:`round` -- the vectorised version used everywhere else.

Both return, for each float64 input, the value of the format selected by the
rounding mode, as a float64: subnormals (gradual underflow), overflow,
signed zeros and NaN propagation included.

Overflow: a result whose magnitude would exceed ``fmt.max`` becomes +-inf if
the mode rounds away from zero there (nearest, nearest_away, stochastic, and
``up``/``down`` in their own direction) and +-max otherwise, as IEEE 754
prescribes.  Formats without infinities (``inf_nan="fn"``) give NaN instead of
inf; ``saturate=True`` gives +-max instead of inf or NaN.
"""

from __future__ import annotations

import builtins
import math
from fractions import Fraction
from typing import Literal, get_args

import numpy as np
import numpy.typing as npt

from .errors import FperrInputError
from .formats import FORMATS, Format, get_format

__all__ = ["round", "round_scalar", "Mode", "MODES"]

Mode = Literal["nearest", "nearest_away", "toward_zero", "up", "down", "stochastic"]
MODES: tuple[str, ...] = get_args(Mode)

RandomLike = np.random.Generator | int | None


def _check_mode(mode: str) -> None:
    if mode not in MODES:
        raise FperrInputError(f"unknown rounding mode {mode!r}; valid modes: {', '.join(MODES)}")


def _check_range(fmt: Format) -> None:
    # The vectorised kernel builds quanta 2**k from float64 exponent bits, so
    # every quantum of the format must be a normal float64.
    if fmt.p > 53 or fmt.emax > 1023 or fmt.emin - fmt.p + 1 < -1074:
        raise FperrInputError(f"format {fmt.name} is wider than binary64 and cannot be emulated")


def _rounds_away_on_overflow(mode: str, negative: bool) -> bool:
    if mode == "toward_zero":
        return False
    if mode == "up":
        return not negative
    if mode == "down":
        return negative
    return True


# -- reference --------------------------------------------------------------
def _floor_log2(a: Fraction) -> int:
    """Exact floor(log2(a)) for a positive rational."""
    e = a.numerator.bit_length() - a.denominator.bit_length()
    # 2**e <= a < 2**(e+1) after at most one correction step.
    if Fraction(2) ** e > a:
        e -= 1
    return e


def round_scalar(
    x: float | Fraction,
    fmt: Format | str,
    mode: Mode = "nearest",
    *,
    saturate: bool = False,
    random: float | None = None,
) -> float:
    """Round one value to ``fmt`` with exact rational arithmetic.

    The reference implementation: it follows the definition of rounding
    literally and is used to test :func:`round`.  ``random`` is the uniform
    [0, 1) draw used by ``mode="stochastic"``: the value rounds up iff
    ``random < (x - lo) / (hi - lo)``.
    """
    fmt = get_format(fmt)
    _check_mode(mode)
    if isinstance(x, float):
        if math.isnan(x):
            return math.nan
        if math.isinf(x):
            if saturate:
                return math.copysign(fmt.max, x)
            return x if fmt.has_inf else math.nan
    X = Fraction(x)
    if X == 0:
        return math.copysign(0.0, x) if isinstance(x, float) else 0.0
    negative = X < 0
    a = -X if negative else X

    e = builtins.max(_floor_log2(a), fmt.emin)  # below emin: subnormal spacing
    q = Fraction(2) ** (e - fmt.p + 1)  # spacing of the format at a
    t = a / q
    n = math.floor(t)
    frac = t - n
    if frac:
        if mode == "nearest":
            n += frac > Fraction(1, 2) or (frac == Fraction(1, 2) and n % 2 == 1)
        elif mode == "nearest_away":
            n += frac >= Fraction(1, 2)
        elif mode == "up":
            n += not negative
        elif mode == "down":
            n += negative
        elif mode == "stochastic":
            if random is None:
                raise FperrInputError("stochastic rounding needs a random draw in [0, 1)")
            n += Fraction(random) < frac
    y = n * q
    if y > Fraction(fmt.max):
        if saturate or not _rounds_away_on_overflow(mode, negative):
            y = Fraction(fmt.max)
        else:
            return (-math.inf if negative else math.inf) if fmt.has_inf else math.nan
    if not fmt.subnormals and y < Fraction(fmt.smallest_normal):
        y = Fraction(0)
    return math.copysign(float(y), -1.0 if negative else 1.0)


# -- vectorised -------------------------------------------------------------
def _is_numpy_native(fmt: Format) -> type[np.floating] | None:
    """The numpy dtype whose cast from float64 rounds exactly like ``fmt``."""
    for dtype, name in ((np.float16, "binary16"), (np.float32, "binary32")):
        if fmt.same_values(FORMATS[name]):
            return dtype
    return None


def _pow2(k: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """2.0**k for integer arrays with -1022 <= k <= 1023, exactly, from bits."""
    return ((k + 1023) << 52).view(np.float64)


def _as_generator(rng: RandomLike) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def round(  # noqa: A001 - the name users expect: fperr.round(x, fmt)
    x: npt.ArrayLike,
    fmt: Format | str,
    mode: Mode = "nearest",
    *,
    saturate: bool = False,
    rng: RandomLike = None,
) -> npt.NDArray[np.float64]:
    """Round each element of ``x`` (cast to float64) to ``fmt``.

    Returns a new float64 array of the same shape whose values all belong to
    ``fmt``.  ``mode`` is one of :data:`MODES`; ``"stochastic"`` rounds to
    one of the two neighbours with probability proportional to proximity
    (unbiased), drawing from ``rng`` (a :class:`numpy.random.Generator` or a
    seed).  See the module docstring for overflow and ``saturate``.
    """
    fmt = get_format(fmt)
    _check_mode(mode)
    _check_range(fmt)
    xa = np.asarray(x, dtype=np.float64)
    if fmt.p == 53 and fmt.emax == 1023 and fmt.subnormals and fmt.inf_nan == "ieee":
        return xa.copy()  # binary64: every float64 already belongs to it

    native = _is_numpy_native(fmt)
    if native is not None and mode == "nearest" and not saturate:
        # numpy's float64 -> float16/float32 casts round once, correctly, to
        # nearest-even (tested against the rational reference).
        with np.errstate(over="ignore"):
            return xa.astype(native).astype(np.float64)
    return _round_generic(xa, fmt, mode, saturate, rng)


def _round_generic(
    x: npt.NDArray[np.float64], fmt: Format, mode: str, saturate: bool, rng: RandomLike
) -> npt.NDArray[np.float64]:
    a = np.abs(x)
    # Exponent of each |x| from its bits; clamped to [emin, emax] so that
    # tiny values get the subnormal spacing and huge ones overflow below.
    e = (np.ascontiguousarray(a).view(np.int64) >> 52) - 1023
    np.clip(e, fmt.emin, fmt.emax, out=e)
    e -= fmt.p - 1  # now the exponent of the spacing q at |x|
    # q = 2**e may be subnormal in float64 only for formats with tiny emin;
    # ldexp handles that case exactly, the bit trick the common one.
    if fmt.emin - fmt.p + 1 >= -1022:
        q = _pow2(e)
        qinv = _pow2(-e)
    else:
        q = np.ldexp(1.0, e)
        qinv = np.ldexp(1.0, -e)
    with np.errstate(invalid="ignore", over="ignore"):
        t = a * qinv  # |x| in units of q: exact (power-of-two scaling)
        if mode == "nearest":
            n = np.rint(t)  # ties to even
        elif mode == "toward_zero":
            n = np.floor(t)
        else:
            n = np.floor(t)
            frac = t - n  # exact
            if mode == "nearest_away":
                n += frac >= 0.5
            elif mode == "up":
                n += (frac > 0) & (x > 0)
            elif mode == "down":
                n += (frac > 0) & (x < 0)
            else:  # stochastic
                n += _as_generator(rng).random(x.shape) < frac
        y = n * q

        over = y > fmt.max
        if over.any():
            if saturate:
                away = np.zeros(x.shape, dtype=bool)
            elif mode in ("up", "down"):
                away = (x > 0) if mode == "up" else (x < 0)
            else:
                away = np.full(x.shape, mode != "toward_zero")
            # Infinite inputs are exact in IEEE formats and NaN in "fn"
            # formats, whatever the mode; only saturation clamps them.
            if not saturate:
                away |= np.isinf(x)
            big = np.inf if fmt.has_inf else np.nan
            y[over] = np.where(away[over], big, fmt.max)
        if not fmt.subnormals:
            y[y < fmt.smallest_normal] = 0.0
    return np.copysign(y, x).reshape(x.shape)  # 0-d stays 0-d
