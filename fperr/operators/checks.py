"""Checks and field types the operators' constructors and YAML specs share.

Constructors check the structure of their parameters (array ranks and
lengths, sizes and strides >= 1, paddings >= 0, finite positive ``eps``,
nonnegative running variances) and raise :class:`~fperr.errors.SpecError`
with one line, so that a bad layer fails where it is made rather than as a
ZeroDivisionError or a numpy index error inside a forward pass.  Array
*values* (real dtype, finite) are checked once per model by
:class:`fperr.model.Model`: the bound rules build layers from rounded
weights, which may legitimately overflow to inf.

The spec's integer types give every number its legal range, so that a bad spec
fails validation with one line: sizes, strides and dilations are >= 1,
paddings >= 0 (integers, at most :data:`MAX_INT`, the int32 range PyTorch
uses); YAML writes integers as integers, so 2.0, 1.0e+12 and ``true`` are
refused (strict).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Annotated

import numpy as np
from pydantic import Field

from ..errors import SpecError

Shape = tuple[int, ...]
Pair = tuple[int, int]

MAX_INT = 2**31 - 1
"""Largest size, stride, padding or dilation (int32, as in PyTorch)."""

PosInt = Annotated[int, Field(strict=True, ge=1, le=MAX_INT)]
NonNegInt = Annotated[int, Field(strict=True, ge=0, le=MAX_INT)]
PosPair = PosInt | tuple[PosInt, PosInt]
NonNegPair = NonNegInt | tuple[NonNegInt, NonNegInt]


def pair(v: int | tuple[int, int] | None, default: Pair | None = None) -> Pair:
    """A spec's ``k`` or ``[kh, kw]`` as a pair (``default`` where absent)."""
    if v is None:
        assert default is not None
        return default
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def mismatch(layer: str, expected: str, got: Shape) -> SpecError:
    return SpecError(f"{layer}: expects input {expected}, got {list(got)}")


def check_ints(layer: str, name: str, values: Iterable[object], low: int, n: int | None) -> None:
    """``values``: ``n`` integers (any count if None), each >= ``low``."""
    vals = tuple(values)
    ok = (n is None or len(vals) == n) and all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= low for v in vals
    )
    if not ok or not vals:
        count = f"{n} " if n is not None else ""
        raise SpecError(f"{layer}: {name} must be {count}integers >= {low}, got {list(vals)}")


def check_array(layer: str, name: str, a: object, ndim: int, size: int | None = None) -> None:
    """``a``: a numpy array of rank ``ndim``, no empty axis, ``size`` entries if given."""
    if not isinstance(a, np.ndarray):
        raise SpecError(f"{layer}: {name} must be a numpy array, got {type(a).__name__}")
    if a.ndim != ndim or 0 in a.shape or (size is not None and a.size != size):
        want = f"{ndim}-D" + (f" with {size} entries" if size is not None else ", nonempty")
        raise SpecError(f"{layer}: {name} has shape {list(a.shape)}, expected {want}")


def check_scalar(layer: str, name: str, v: object, low: float | None, strict: bool) -> None:
    """A finite real number, > ``low`` (``strict``) or >= ``low`` when given."""
    ok = False
    if isinstance(v, int | float | np.integer | np.floating) and math.isfinite(v):
        ok = low is None or bool(v > low if strict else v >= low)
    if not ok:
        bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
        raise SpecError(f"{layer}: {name} must be a finite number{bound}, got {v!r}")
