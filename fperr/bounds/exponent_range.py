"""The ends of the exponent range, where fl(x op y) = (x op y)(1 + d) stops holding.

Higham's gamma_n bounds (Higham 2002, Lemma 3.1) rest on the model
fl(x op y) = (x op y)(1 + d), |d| <= u, which ignores the exponent range.
With it (Higham 2002, sec. 2.2, the model of Theorem 2.3 with gradual
underflow):

    fl(x op y) = (x op y)(1 + d) + e,   |d| <= u,  |e| <= eta,  d e = 0,

where ``eta`` is half the smallest subnormal spacing (:func:`eta`), and no
operation may produce a magnitude that rounds beyond the largest finite
number (:func:`may_overflow`).  Additions and subtractions never need ``e``
under gradual underflow (:func:`eta_add`), and products of two numbers whose
quanta multiply to at least the accumulator's quantum never need it either
(:func:`products_exact`); the rules of :mod:`fperr.bounds.rules` add the
absolute terms only where an operation can err that way.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..formats import Format, gamma
from ..layers import Layer, parameters

Array = npt.NDArray[np.float64]


def quantum(fmt: Format) -> float:
    """``2**(emin - p + 1)``: every value of ``fmt`` is an integer multiple of it.

    A normal value of exponent e >= emin is a p-bit integer times
    2**(e - p + 1), a multiple of the quantum; a subnormal is a multiple of it
    by definition.  (It is the smallest subnormal when ``fmt`` has them.)
    """
    return 2.0 ** (fmt.emin - fmt.p + 1)


def eta(fmt: Format, chop: bool = False) -> float:
    """Largest absolute error ``e`` of one product, quotient or fused
    multiply-add whose result lies below ``fmt``'s normal range.

    Gradual underflow: the result is rounded to a multiple of the quantum,
    so to nearest it errs by at most half of it (Higham 2002, sec. 2.2), a
    chopping accumulator by less than all of it.  Flush to zero
    (``subnormals`` false): a result rounded below ``smallest_normal`` becomes
    0, an error below ``smallest_normal``.
    """
    if not fmt.subnormals:
        return fmt.smallest_normal
    return quantum(fmt) * (1.0 if chop else 0.5)


def eta_add(fmt: Format) -> float:
    """Largest absolute error of one addition or subtraction below the normal range.

    0 with gradual underflow: x and y are multiples of the quantum q, so is
    x + y, and every multiple of q below 2**emin is a subnormal of ``fmt``:
    a sum that lands there is exact (Hauser 1996, ACM TOPLAS 18(2));
    above it the relative model holds.  A flushing format may lose a sum
    below ``smallest_normal`` entirely.
    """
    return 0.0 if fmt.subnormals else fmt.smallest_normal


def eta_func(fmt: Format, ulps: float) -> float:
    """Absolute error of an elementwise function (exp, tanh, ...) accurate to
    ``ulps`` ulps, where its value lies below ``fmt``'s normal range: an ulp
    there is the quantum, not 2u times the value; a flushing format may also
    lose the value entirely."""
    if not fmt.subnormals:
        return fmt.smallest_normal + ulps * quantum(fmt)
    return ulps * quantum(fmt)


def products_exact(x: Format, w: Format, acc: Format) -> bool:
    """Whether no product of a value of ``x`` and a value of ``w`` can err
    *absolutely* when rounded to ``acc`` (it may still err relatively, which
    gamma_n covers; overflow is :func:`may_overflow`'s business).

    Gradual underflow in ``acc``: x w is a multiple of quantum(x) quantum(w)
    (see :func:`quantum`).  If that is at least quantum(acc) -- both are
    powers of two, so x w is then a multiple of quantum(acc) -- a product
    below 2**acc.emin is a subnormal of ``acc``, exact; one above it is in
    the normal range, where only the relative model applies.  Otherwise the
    two smallest positive values (smallest subnormals) multiply to a power of
    two below quantum(acc), which ``acc`` cannot represent: an absolute error
    is possible, so the condition is exact for formats with subnormals (and
    conservative for flushing operand formats).
    binary16 x binary16 -> binary32: 2**-24 * 2**-24 = 2**-48 >= 2**-149, exact;
    binary16 -> binary16, bfloat16 -> binary32, binary32 -> binary32: not.

    Flush to zero in ``acc``: a product is exact or relative iff no nonzero
    product falls below smallest_normal(acc); the smallest nonzero product is
    the product of the smallest positive values.
    """
    if acc.subnormals:
        return quantum(x) * quantum(w) >= quantum(acc)
    return x.smallest_subnormal * w.smallest_subnormal >= acc.smallest_normal


def overflow_threshold(fmt: Format) -> float:
    """Smallest magnitude that rounds to nearest beyond ``fmt.max``: max plus
    half its ulp (a tie rounds to the even neighbour beyond max, inf or NaN)."""
    return fmt.max + 2.0 ** (fmt.emax - fmt.p)


def sum_bound(total: Array | float, n: int, u: float, absolute: Array | float = 0.0) -> Array:
    """Bound on every value computed while summing n terms of total magnitude
    <= ``total`` in *any* order, without overflow: a partial sum is a rounded
    sum of a subset of the terms, <= (1 + u)^n sum |t| + absolute
    (Higham 2002, Lemma 3.1 on the subset), and (1 + u)^n <= 1 + gamma_n.
    ``absolute``: the underflow terms (already times 1 + gamma_n)."""
    growth = 1 + gamma(n, u)
    t = np.asarray(total)
    with np.errstate(invalid="ignore"):
        # a total that is not a number stays NaN (it "may overflow", :func:`may_overflow`):
        # mapped to 0 it hid, in a batch holding a NaN input, every other input's
        # overflow from the engines' test of the batch's largest total first
        return np.where(t <= 0, 0.0, growth * t) + absolute


def may_overflow(total: Array | float, n: int, u: float, fmt: Format,
                 absolute: Array | float = 0.0) -> npt.NDArray[np.bool_]:  # fmt: skip
    """Whether some operation of some summation order of n terms with total
    magnitude <= ``total`` may round beyond ``fmt``'s range (or ``total`` is
    not a number): the condition for an infinite bound, whichever order the
    emulator happened to take."""
    b = sum_bound(total, n, u, absolute)
    return np.asarray(~(b < overflow_threshold(fmt)))


def dot_underflow(count: Array | float, n: int, u: float, fmt: Format, exact: bool,
                  chop: bool = False) -> Array | float:  # fmt: skip
    """Absolute error of a sum of n terms from the exponent range's bottom end.

    ``count``: how many terms may be nonzero products (a bound).  Each may
    err by eta (unless :func:`products_exact`), each addition of two nonzero
    operands by eta_add; every such error then passes through at most n
    further roundings, (1 + u)^n <= 1 + gamma_n.
    """
    per_term = (0.0 if exact else eta(fmt, chop)) + eta_add(fmt)
    if per_term == 0.0:
        return 0.0
    growth = 1 + gamma(n, u)
    c = np.asarray(count, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        return np.where(c > 0, c * per_term * growth, 0.0)


def beyond_accumulator(
    layer: Layer, mag: Array, storage: Format, operand: Format, acc: Format
) -> npt.NDArray[np.bool_]:
    """(N,): rows of magnitudes ``mag`` (N, ...) entering ``layer`` for which a
    value, or one of the layer's parameters, may lie beyond the accumulator's
    range.  Only where that range is narrower than storage's (bfloat16 values,
    binary16 accumulator): a kernel converts its operands into the
    accumulator, where such a value overflows (and inf * 0 is NaN), whatever
    the products' magnitudes; the bound is then infinite."""
    N = mag.shape[0]
    if acc.max >= max(storage.max, operand.max):
        return np.zeros(N, dtype=bool)
    thr = overflow_threshold(acc)
    if any(np.any(np.abs(p) >= thr) for p in parameters(layer)):
        return np.ones(N, dtype=bool)
    return np.asarray(~(mag.reshape(N, -1) < thr).all(axis=1))
