"""A low-precision arithmetic written for the soundness tests, independent of fperr.

Values are exact rationals (:class:`fractions.Fraction`) or +-inf / NaN
(floats).  Every operation computes its exact result and rounds it once to
the format: formats with subnormals through MPFR (gmpy2, correctly rounded,
``subnormalize=True`` for gradual underflow, overflow to inf), formats that
flush subnormals to zero through a rounder written here on Fractions (round
to nearest even at the subnormal spacing, then flush what lies below the
normal range).  Sums are taken in many orders, with or without fused
multiply-adds, so that a bound can be checked against orders the emulator of
fperr never takes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction

import gmpy2

Value = Fraction | float  # a float only for inf and NaN


@dataclass(frozen=True)
class Fmt:
    """A binary format: precision p (with the implicit bit), IEEE emax
    (emin = 1 - emax), gradual underflow or flush to zero."""

    p: int
    emax: int
    subnormals: bool = True

    @property
    def emin(self) -> int:
        return 1 - self.emax

    @property
    def max(self) -> Fraction:
        return Fraction(2**self.p - 1) * Fraction(2) ** (self.emax - self.p + 1)


BINARY16 = Fmt(11, 15)
BINARY32 = Fmt(24, 127)
BFLOAT16 = Fmt(8, 127)
BINARY16_FTZ = Fmt(11, 15, subnormals=False)
FMTS = {"binary16": BINARY16, "binary32": BINARY32, "bfloat16": BFLOAT16}


def _round_fraction(v: Fraction, f: Fmt) -> Value:
    """Round to nearest even at spacing 2**(max(e, emin) - p + 1); overflow to
    inf; below the normal range flush to zero when ``f`` has no subnormals."""
    if v == 0:
        return Fraction(0)
    a = abs(v)
    e = a.numerator.bit_length() - a.denominator.bit_length()
    if Fraction(2) ** e > a:  # floor(log2 a)
        e -= 1
    q = Fraction(2) ** (max(e, f.emin) - f.p + 1)
    t = a / q
    n = math.floor(t)
    rest = t - n
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and n % 2 == 1):
        n += 1
    y = n * q
    if y > f.max:
        return math.copysign(math.inf, v)
    if not f.subnormals and y < Fraction(2) ** f.emin:
        return Fraction(0)
    return y if v > 0 else -y


def _round_mpfr(v: Fraction, f: Fmt) -> Value:
    # MPFR exponents: x = m 2^e with m in [1/2, 1); the smallest subnormal
    # 2^(emin - p + 1) is 1/2 * 2^(emin - p + 2).
    with gmpy2.context(precision=f.p, emin=f.emin - f.p + 2, emax=f.emax + 1,
                       subnormalize=True, round=gmpy2.RoundToNearest):  # fmt: skip
        r = gmpy2.mpfr(gmpy2.mpq(v.numerator, v.denominator))
    if gmpy2.is_infinite(r):
        return math.copysign(math.inf, v)
    return Fraction(*r.as_integer_ratio())


def rnd(v: Value, f: Fmt) -> Value:
    """The value of ``f`` nearest ``v`` (ties to even), as the format rounds."""
    if isinstance(v, float):
        return v
    return _round_mpfr(v, f) if f.subnormals else _round_fraction(v, f)


def _op(a: Value, b: Value, fn: Callable[[float, float], float],
        exact: Callable[[Fraction, Fraction], Fraction], f: Fmt) -> Value:  # fmt: skip
    if isinstance(a, float) or isinstance(b, float):
        return fn(float(a), float(b))  # inf / NaN arithmetic of IEEE
    return rnd(exact(a, b), f)


def add(a: Value, b: Value, f: Fmt) -> Value:
    return _op(a, b, lambda x, y: x + y, lambda x, y: x + y, f)


def mul(a: Value, b: Value, f: Fmt) -> Value:
    return _op(a, b, lambda x, y: x * y, lambda x, y: x * y, f)


def fma(a: Value, b: Value, c: Value, f: Fmt) -> Value:
    """fl(a b + c), one rounding."""
    if any(isinstance(v, float) for v in (a, b, c)):
        return float(a) * float(b) + float(c)
    return rnd(a * b + c, f)  # type: ignore[operator]


# -- orders -------------------------------------------------------------------------
def _key_order(terms: Sequence[Value], name: str) -> list[int]:
    idx = list(range(len(terms)))
    mag = [abs(float(t)) for t in terms]
    if name == "reversed":
        return idx[::-1]
    if name == "ascending":
        return sorted(idx, key=lambda i: mag[i])
    if name == "descending":
        return sorted(idx, key=lambda i: -mag[i])
    if name == "alternating":  # largest positive, largest negative, ...
        pos = sorted((i for i in idx if float(terms[i]) >= 0), key=lambda i: -mag[i])
        neg = sorted((i for i in idx if float(terms[i]) < 0), key=lambda i: -mag[i])
        out: list[int] = []
        for k in range(max(len(pos), len(neg))):
            out += pos[k : k + 1] + neg[k : k + 1]
        return out
    if name == "same_sign_first":  # all positives, then all negatives: largest partial sums
        return sorted(idx, key=lambda i: (float(terms[i]) < 0, -mag[i]))
    return idx


ORDERS = ("sequential", "reversed", "pairwise", "ascending", "descending", "alternating",
          "same_sign_first")  # fmt: skip


def sum_in_order(terms: Sequence[Value], f: Fmt, order: str) -> Value:
    """Sum already-rounded terms in ``f``: sequentially from 0 in a
    permutation named by ``order``, or pairwise (adjacent pairs, level by level)."""
    if order == "pairwise":
        level = list(terms) or [Fraction(0)]
        while len(level) > 1:
            nxt = [add(level[i], level[i + 1], f) for i in range(0, len(level) - 1, 2)]
            level = nxt + level[len(level) - len(level) % 2 :]
        return level[0]
    s: Value = Fraction(0)
    for i in _key_order(terms, order):
        s = add(s, terms[i], f)
    return s


def dot(x: Sequence[Value], w: Sequence[Value], f: Fmt, order: str, fused: bool = False) -> Value:
    """sum_j x_j w_j in ``f``: products rounded then summed in ``order``, or
    (``fused``) fused multiply-adds s = fl(x_j w_j + s) in that order."""
    if not fused:
        return sum_in_order([mul(a, b, f) for a, b in zip(x, w, strict=True)], f, order)
    exact_terms = [a * b for a, b in zip(x, w, strict=True)]  # for the ordering only
    s: Value = Fraction(0)
    for i in _key_order(exact_terms, "sequential" if order == "pairwise" else order):
        s = fma(x[i], w[i], s, f)
    return s


def to_fraction(v: float) -> Value:
    return Fraction(v) if math.isfinite(v) else v
