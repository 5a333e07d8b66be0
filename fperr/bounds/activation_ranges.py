"""Derivatives, derivative enclosures and value magnitudes of SiLU, ELU, hard-swish,
hard-sigmoid and GELU's tanh form, for the mean value form of the activation rule.

Every enclosure of f' over [lo, hi] comes from the monotonicity of f' analysed by
hand (below), evaluated at the ends and at the critical points inside -- never
from samples.  Float64 evaluation errs by a few units of 2^-53 (and the constants
by less than 1e-19), so every enclosure is widened outward by ``WIDEN`` relative
plus ``TINY`` absolute.

SiLU, f = x s(x) (s the logistic sigmoid): f' = s(x) + x s(x) s(-x) and
f'' = s(x) s(-x) (2 - x tanh(x/2)).  x tanh(x/2) is even and increasing on
[0, inf) from 0 to inf, so f'' has exactly two zeros +-x0 (x0 tanh(x0/2) = 2,
x0 = 2.39935728...), f'' > 0 on (-x0, x0), < 0 outside: f' decreases on
(-inf, -x0] from 0 to f'(-x0) = -0.09983932..., increases to f'(x0) = 1.09983932...,
then decreases to 1.  Hence f' over [lo, hi] is the hull of f'(lo), f'(hi) and
f'(+-x0) where inside.  f'(x) + f'(-x) = 1 (f(x) - f(-x) = x).

GELU, tanh form, f = x s(g), g = 2t = 2c (x + k x^3), c = sqrt(2/pi), k = 0.044715
(0.5 (1 + tanh t) = s(2t)): f' = s(g) + x s(g) s(-g) g' and, with s'' = s'(1 - 2s),
1 - 2 s(g) = -tanh t, f'' = s'(g) h(x),
h = 2 g' + x g'' - x g'^2 tanh t = 4c (1 + 3k x^2)^2 q(x),
q = (1 + 6k x^2) / (1 + 3k x^2)^2 - c x tanh t.
q is even; on [0, inf) its first term (1 + 2y)/(1 + y)^2, y = 3k x^2, has
d/dy = -2y/(1 + y)^3 <= 0, and c x tanh t(x) is a product of non-negative
increasing functions: q decreases strictly from q(0) = 1 to -inf, one root x1 =
1.41850400..., and f' has the shape of SiLU's: minimum f'(-x1) = -0.12899306...,
maximum f'(x1) = 1.12899306..., limits 0 and 1.

ELU (alpha a): f' = 1 for x > 0, a e^x for x < 0 (monotone); at 0 both sides.
Hard-sigmoid: f' = 0, 1/6, 0 on (-inf, -3), (-3, 3), (3, inf).
Hard-swish, f = x relu6(x + 3)/6: f' = 0, (2x + 3)/6 (increasing), 1 on the same
pieces.  Piecewise C^1 and continuous, so a secant slope (f(b) - f(a))/(b - a) is
a length-weighted mean of f' over the pieces it crosses: the enclosure is the hull
of each touched piece's f' range, both one-sided values at a kink included.

|f|: SiLU and GELU-tanh are negative on (-inf, 0) with one minimum (SiLU -0.27846454
at -1.27846454, GELU-tanh -0.17004075 at -0.75246142), |f| -> 0 at -inf, positive
and increasing on (0, inf); hard-swish likewise with minimum -0.375 at -1.5 and
f = 0 on (-inf, -3]; hard-sigmoid and ELU are monotone.  So max |f| over [lo, hi]
is at an end or at the minimum, and min |f| at an end, or 0 where 0 is inside.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..layers import ACTIVATIONS, GELU_TANH_C, GELU_TANH_K
from .enclosure import Array

NEW_CURVED = ("silu", "gelu_tanh", "elu", "hardswish", "hardsigmoid")

WIDEN = 1e-13
TINY = 1e-300

# (x_c, f'(-x_c), f'(x_c)): the critical points of f' (see the module docstring)
_CRITICAL = {
    "silu": (2.3993572805154676678, -0.099839320128866916958, 1.099839320128866917),
    "gelu_tanh": (1.4185040087908283555, -0.12899306865877176546, 1.1289930686587717655),
}
# (argmin f, a bound >= max |f| on (-inf, 0]): the negative lobe's peak
_LOBE = {"silu": (-1.2784645427610737951, 0.2784646), "gelu_tanh": (-0.75246142207101625849,
                                                                    0.1700408),
         "hardswish": (-1.5, 0.375)}  # fmt: skip


def _s(v: Array) -> Array:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-v))


def derivative(kind: str, v: Array, alpha: float = 1.0) -> Array:
    """f'(v) for the kinds of this module, limits at +-inf (a kink: the right side)."""
    v = np.asarray(v, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        if kind == "silu":
            w = np.clip(v, -1e3, 1e3)  # beyond: f' is 0 or 1 to float64 (e^-1000 underflows)
            return _s(w) + w * _s(w) * _s(-w)
        if kind == "gelu_tanh":
            w = np.clip(v, -30.0, 30.0)  # |g(30)| > 1900: s(-|g|) underflows, f' = 0 or 1
            g = 2 * GELU_TANH_C * (w + GELU_TANH_K * w**3)
            dg = 2 * GELU_TANH_C * (1 + 3 * GELU_TANH_K * w * w)
            return _s(g) + w * dg * _s(g) * _s(-g)
        if kind == "elu":
            return np.where(v > 0, 1.0, alpha * np.exp(np.minimum(v, 0.0)))
        if kind == "hardsigmoid":
            return np.where((v > -3) & (v < 3), 1 / 6, 0.0)
        if kind == "hardswish":
            return np.where(v <= -3, 0.0, np.where(v >= 3, 1.0, (2 * v + 3) / 6))
    raise ValueError(f"no derivative for {kind!r}")  # pragma: no cover


def _hull(cands: list[tuple[Array, Array]]) -> tuple[Array, Array]:
    """Smallest and largest of the candidate values where their mask holds."""
    lo = np.full(np.shape(cands[0][0]), np.inf)
    hi = np.full(np.shape(cands[0][0]), -np.inf)
    for val, mask in cands:
        lo = np.where(mask, np.minimum(lo, val), lo)
        hi = np.where(mask, np.maximum(hi, val), hi)
    return lo, hi


def derivative_range(kind: str, lo: Array, hi: Array, alpha: float = 1.0) -> tuple[Array, Array]:
    """An enclosure [dlo, dhi] of f' over [lo, hi] (elementwise), NaN where an end is NaN."""
    lo, hi = np.broadcast_arrays(np.asarray(lo, np.float64), np.asarray(hi, np.float64))
    every = np.ones(lo.shape, dtype=bool)
    d = lambda v: derivative(kind, v, alpha)  # noqa: E731
    if kind in _CRITICAL:
        xc, dmin, dmax = _CRITICAL[kind]
        cands = [(d(lo), every), (d(hi), every),
                 (np.full(lo.shape, dmin), (lo <= -xc) & (hi >= -xc)),
                 (np.full(lo.shape, dmax), (lo <= xc) & (hi >= xc))]  # fmt: skip
    elif kind == "elu":  # a e^x on the negative piece (monotone), 1 on the positive one
        neg = lo <= 0
        cands = [
            (alpha * np.exp(np.minimum(lo, 0.0)), neg),
            (alpha * np.exp(np.minimum(hi, 0.0)), neg),
            (np.ones(lo.shape), hi >= 0),
        ]
    elif kind in ("hardsigmoid", "hardswish"):
        mid = (lo <= 3) & (hi >= -3)
        if kind == "hardsigmoid":
            m_lo = m_hi = np.full(lo.shape, 1 / 6)
        else:  # (2x + 3)/6, increasing, over [lo, hi] cut to [-3, 3]
            m_lo, m_hi = (2 * np.clip(lo, -3, 3) + 3) / 6, (2 * np.clip(hi, -3, 3) + 3) / 6
        right = 0.0 if kind == "hardsigmoid" else 1.0
        cands = [(np.zeros(lo.shape), lo <= -3), (m_lo, mid), (m_hi, mid),
                 (np.full(lo.shape, right), hi >= 3)]  # fmt: skip
    else:  # pragma: no cover
        raise ValueError(f"no derivative enclosure for {kind!r}")
    dlo, dhi = _hull(cands)
    dlo = dlo - WIDEN * np.abs(dlo) - TINY
    dhi = dhi + WIDEN * np.abs(dhi) + TINY
    bad = np.isnan(lo) | np.isnan(hi)
    return np.where(bad, np.nan, dlo), np.where(bad, np.nan, dhi)


def magnitudes(kind: str, lo: Array, hi: Array, alpha: float = 1.0) -> tuple[Array, Array]:
    """(fmag, fmin) with fmag >= max |f| and fmin <= min |f| over [lo, hi] (see the
    module docstring for the shapes of |f|).  ELU: over the negative part of [lo, hi]
    only, the positive part being computed exactly (:func:`exact_zone`)."""
    if kind == "elu":  # |alpha expm1| decreases on (-inf, 0] towards 0
        with np.errstate(over="ignore", invalid="ignore"):
            neg_lo = np.abs(alpha * np.expm1(np.minimum(lo, 0.0)))
            neg_hi = np.abs(alpha * np.expm1(np.minimum(hi, 0.0)))
        return neg_lo * (1 + WIDEN), neg_hi * (1 - 1e-12)
    f = ACTIVATIONS[kind]
    with np.errstate(over="ignore", invalid="ignore"):
        a, b = np.abs(f(lo)), np.abs(f(hi))
    fmag = np.maximum(a, b) * (1 + WIDEN)
    if kind in _LOBE:
        xm, peak = _LOBE[kind]
        fmag = np.where((lo <= xm + 1e-6) & (hi >= xm - 1e-6), np.maximum(fmag, peak), fmag)
    fmin = np.minimum(a, b) * (1 - 1e-12)
    if kind != "hardsigmoid":  # every other kind is 0 at 0
        fmin = np.where((lo <= 0) & (hi >= 0), 0.0, fmin)
    return fmag, fmin


def exact_zone(kind: str, lo: Array, hi: Array) -> npt.NDArray[np.bool_]:
    """Where every input in [lo, hi] is computed exactly by the kernel (and by the
    emulation): ELU's x * 1 for x > 0 (ATen: x * scale, scale = 1); hard-swish's and
    hard-sigmoid's 0 for x <= -3 (x + 3 <= 0 after rounding, clamped to 0, times x, / 6)."""
    if kind == "elu":
        return lo > 0
    if kind in ("hardswish", "hardsigmoid"):
        return hi <= -3
    return np.zeros(np.shape(lo), dtype=bool)


__all__ = ["NEW_CURVED", "derivative", "derivative_range", "exact_zone", "magnitudes"]
