"""Bit-level encoding of format values (for display and tests)."""

from __future__ import annotations

import math

from .errors import FperrInputError
from .formats import Format


def exponent_bits(fmt: Format) -> int:
    """Width of the exponent field, from the bias (bias = 2**(w-1) - 1)."""
    return (2 * fmt.bias + 1).bit_length()


def total_bits(fmt: Format) -> int:
    return 1 + exponent_bits(fmt) + fmt.p - 1


def to_bits(value: float, fmt: Format) -> int:
    """The encoding of ``value`` (which must belong to ``fmt``) as an integer."""
    w, m = exponent_bits(fmt), fmt.p - 1
    bias = fmt.bias
    sign = 1 if math.copysign(1.0, value) < 0 else 0
    top = (1 << w) - 1
    if math.isnan(value):
        exp_field, frac = top, (1 << m) - 1 if fmt.inf_nan == "fn" else 1 << (m - 1)
        return (sign << (w + m)) | (exp_field << m) | frac
    if math.isinf(value):
        if not fmt.has_inf:
            raise FperrInputError(f"{fmt.name} has no infinity")
        return (sign << (w + m)) | (top << m)
    a = abs(value)
    if a == 0:
        return sign << (w + m)
    e = max(math.frexp(a)[1] - 1, fmt.emin)
    scaled = a / 2.0 ** (e - m)  # integer significand, exact for format values
    if scaled != int(scaled) or scaled >= 2 ** (m + 1) or a > fmt.max:
        raise FperrInputError(f"{value!r} is not a {fmt.name} value")
    n = int(scaled)
    exp_field = e + bias if n >= (1 << m) else 0  # subnormals have field 0
    return (sign << (w + m)) | (exp_field << m) | (n & ((1 << m) - 1))
