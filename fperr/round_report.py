"""What ``fperr round VALUE`` prints, for any number a user can type.

The value is read exactly (:class:`fractions.Fraction`) and rounded by the
reference :func:`~fperr.rounding.round_scalar`, so every printed error is
exact before its final formatting.  Three kinds of input need care:

* a sign of zero: ``Fraction("-0")`` is 0, so ``-0`` is read as the float
  ``-0.0`` (encoded with its sign bit);
* ``inf``, ``-inf`` and ``nan``, which a Fraction cannot hold, are floats;
* a decimal exponent beyond :data:`MAX_DECIMAL_EXPONENT` is not expanded
  (``10**(10**9)`` alone takes minutes).  Its mantissa has at most 4300
  digits (Python's limit on integer strings), so the value lies beyond
  10**5700 or below 10**-5700 in magnitude, outside the range of every format
  with exponents under 2**14 in magnitude; it then rounds exactly like the
  stand-in ``+-2**+-STAND_IN`` with its sign, which is used instead, and no
  error is printed (only that it is out of range).

Numbers outside float64's range are printed with :mod:`decimal`.
"""

from __future__ import annotations

import decimal
import math
import re
from fractions import Fraction

from .bits import to_bits, total_bits
from .errors import FperrInputError
from .formats import Format
from .rounding import Mode, round_scalar

__all__ = ["MAX_DECIMAL_EXPONENT", "parse_exact", "round_report"]

MAX_DECIMAL_EXPONENT = 10_000
STAND_IN = 20_000
_EXPONENT = re.compile(r"[eE]([-+]?)([\d_]+)\s*$")
_SPECIAL = ("inf", "infinity", "nan")

Exact = Fraction | float


def parse_exact(text: str) -> tuple[Exact, bool]:
    """``(value, far)``: the exact value of ``text`` and whether it is a stand-in
    for a value beyond every format's range (see the module docstring).

    ``value`` is a Fraction, or a float for -0, +-inf and nan.  Anything else
    raises :class:`~fperr.errors.FperrInputError`.
    """
    s = text.strip()
    if s.lower().lstrip("+-") in _SPECIAL:
        return float(s), False
    far_exp = _far_exponent(s)
    try:
        if far_exp is None:
            value = Fraction(s)
        else:
            mantissa = s[: _EXPONENT.search(s).start()]  # type: ignore[union-attr]
            if "/" in mantissa:
                raise ValueError(mantissa)
            value = Fraction(mantissa)
    except (ValueError, ZeroDivisionError):
        raise FperrInputError(f"not a number: {text!r}") from None
    if value == 0:
        return (-0.0 if s.startswith("-") else 0.0), False
    if far_exp is None:
        return value, False
    sign = -1 if value < 0 else 1
    return sign * Fraction(2) ** (STAND_IN * far_exp), True


def _far_exponent(s: str) -> int | None:
    """The sign (+-1) of a decimal exponent too large to expand, else None."""
    m = _EXPONENT.search(s)
    if m is None:
        return None
    digits = m.group(2).replace("_", "").lstrip("0")
    if len(digits) <= 5 and int(digits or "0") <= MAX_DECIMAL_EXPONENT:
        return None
    return -1 if m.group(1) == "-" else 1


def _float64(x: Exact) -> float:
    """Nearest float64, +-inf beyond its range (``float`` raises there)."""
    try:
        return float(x)
    except OverflowError:
        return math.inf if x > 0 else -math.inf


def _g(q: Fraction) -> str:
    """``q`` to 6 significant digits, also beyond float64's range."""
    x = _float64(q)
    if math.isfinite(x) and (x != 0 or q == 0):
        return f"{x:.6g}"
    with decimal.localcontext() as ctx:
        ctx.prec, ctx.Emax, ctx.Emin = 7, decimal.MAX_EMAX, decimal.MIN_EMIN
        d = (decimal.Decimal(q.numerator) / decimal.Decimal(q.denominator)).normalize()
        return f"{d:.6g}".replace("E", "e")


def _range_note(exact: Fraction, fmt: Format, far: bool) -> str | None:
    """One line when |exact| lies beyond the largest or below the smallest value of ``fmt``."""
    a = abs(exact)
    if a == 0:
        return None
    everywhere = far or not math.isfinite(_float64(a)) or _float64(a) == 0
    tail = ": outside every format's range" if everywhere else ""
    if far:
        tail += " (its exponent is not expanded; no error shown)"
    if a > Fraction(fmt.max):
        return f"range:        |input| exceeds {fmt.max:.6g}, the largest {fmt.name} value{tail}"
    if a < Fraction(fmt.smallest_subnormal):
        return (f"range:        |input| is below {fmt.smallest_subnormal:.6g}, the smallest "
                f"{fmt.name} subnormal{tail}")  # fmt: skip
    return None


def round_report(text: str, fmt: Format, mode: Mode) -> list[str]:
    """The lines of ``fperr round``: input, result, bits, range note, errors."""
    exact, far = parse_exact(text)
    y = round_scalar(exact, fmt, mode)
    nbits = total_bits(fmt)
    lines = [f"input:        {text.strip()} (nearest float64: {_float64(exact)!r})",
             f"{fmt.name}:{' ' * max(1, 13 - len(fmt.name))}{y!r}"]  # fmt: skip
    if not math.isnan(y):
        lines.append(f"bits:         0x{to_bits(y, fmt):0{(nbits + 3) // 4}x} ({nbits} bits)")
    if isinstance(exact, float) and not math.isfinite(exact):
        return lines  # inf and nan are their own roundings
    q = Fraction(exact)
    note = _range_note(q, fmt, far)
    if note is not None:
        lines.append(note)
    if far or not math.isfinite(y):
        return lines
    err = abs(Fraction(y) - q)
    binade = q.numerator.bit_length() - q.denominator.bit_length() if q else fmt.emin
    e = min(max(binade - (Fraction(2) ** binade > abs(q)), fmt.emin), fmt.emax)
    lines.append(f"abs error:    {_g(err)}")
    lines.append(f"error (ulps): {_g(err / Fraction(fmt.ulp(e)))}")
    if q != 0:
        lines.append(f"rel error:    {_g(err / abs(q))}  (u = {fmt.u:.6g})")
    return lines
