"""Floating-point formats as data.

A :class:`Format` is defined by its precision ``p`` (significand bits,
including the implicit leading bit), its largest exponent ``emax``, whether it
has subnormals, and how it encodes infinities and NaNs.  Every other constant
is derived and named as :class:`numpy.finfo` names it (``eps``, ``max``,
``smallest_normal``, ``smallest_subnormal``), plus the unit roundoff ``u`` and
Higham's ``gamma(n)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from .errors import FperrInputError

__all__ = ["Format", "get_format", "format_names", "FORMATS"]

InfNaN = Literal["ieee", "fn"]


def gamma(n: int | float, u: float) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)`` (Higham 2002, eq. 3.8): the relative
    error bound of n operations with unit roundoff u; ``inf`` when ``n u >= 1``."""
    nu = n * u
    return math.inf if nu >= 1 else nu / (1 - nu)


@dataclass(frozen=True)
class Format:
    """A binary floating-point format.

    Parameters
    ----------
    name:
        Canonical name, e.g. ``"binary16"``.
    p:
        Precision in bits, including the implicit leading bit (binary16: 11).
    emax:
        Exponent of the largest binade; ``emin = 1 - emax`` for IEEE formats.
    subnormals:
        Whether gradual underflow is supported.  Without subnormals, results
        below ``smallest_normal`` in magnitude are flushed to signed zero
        after rounding.
    inf_nan:
        ``"ieee"``: the top exponent encodes inf and NaN (binary16, bfloat16,
        float8_e5m2, ...).  ``"fn"``: finite only; the top exponent holds
        normal numbers except the all-ones significand, which is NaN
        (float8_e4m3fn).  Overflow then gives NaN, or +-max when saturating.
    """

    name: str
    p: int
    emax: int
    subnormals: bool = True
    inf_nan: InfNaN = "ieee"

    def __post_init__(self) -> None:
        if self.p < 2:
            raise FperrInputError(f"precision p must be >= 2, got {self.p}")
        if self.emax < 1:
            raise FperrInputError(f"emax must be >= 1, got {self.emax}")
        if self.inf_nan not in ("ieee", "fn"):
            raise FperrInputError(f"inf_nan must be 'ieee' or 'fn', got {self.inf_nan!r}")

    # -- derived constants, named as numpy.finfo names them -----------------
    @property
    def bias(self) -> int:
        """Exponent bias of the encoding.

        IEEE formats reserve the top exponent field for inf/NaN, so the bias
        is ``emax``; "fn" formats use it for numbers, so it is ``emax - 1``.
        """
        return self.emax if self.inf_nan == "ieee" else self.emax - 1

    @property
    def emin(self) -> int:
        """Exponent of the smallest normal binade, ``1 - bias`` (``1 - emax`` for IEEE)."""
        return 1 - self.bias

    @property
    def u(self) -> float:
        """Unit roundoff ``2**-p`` (round to nearest)."""
        return 2.0 ** (-self.p)

    @property
    def eps(self) -> float:
        """Machine epsilon: the spacing of numbers in [1, 2), ``2**(1-p)``."""
        return 2.0 ** (1 - self.p)

    @property
    def smallest_normal(self) -> float:
        return 2.0**self.emin

    @property
    def smallest_subnormal(self) -> float:
        if not self.subnormals:
            return self.smallest_normal
        return 2.0 ** (self.emin - self.p + 1)

    @property
    def max(self) -> float:
        """Largest finite value."""
        # In an "fn" format the all-ones significand of the top binade is NaN,
        # so the largest finite value is one ulp below the IEEE one.
        reserved = 1 if self.inf_nan == "fn" else 0
        return (2.0**self.p - 1 - reserved) * 2.0 ** (self.emax - self.p + 1)

    @property
    def has_inf(self) -> bool:
        return self.inf_nan == "ieee"

    def same_values(self, other: Format) -> bool:
        """Whether both formats have the same numbers and specials (names may differ)."""
        return (self.p, self.emax, self.subnormals, self.inf_nan) == (
            other.p, other.emax, other.subnormals, other.inf_nan)  # fmt: skip

    def contains(self, other: Format) -> bool:
        """Whether every finite value of ``other`` is a value of this format."""
        sub = 0 if other.subnormals else other.p - 1  # lowest significand bit used
        return (
            self.p >= other.p
            and self.emax >= other.emax
            and self.emin - self.p <= other.emin - other.p + sub
            and (self.subnormals or self.emin <= other.emin)
        )

    def ulp(self, e: int) -> float:
        """Spacing of the format's numbers in the binade ``[2**e, 2**(e+1))``."""
        return 2.0 ** (max(e, self.emin) - self.p + 1)

    def gamma(self, n: int | float) -> float:
        """Higham's ``gamma_n`` for this format's unit roundoff; see :func:`gamma`."""
        return gamma(n, self.u)

    def __str__(self) -> str:
        return self.name


binary16 = Format("binary16", p=11, emax=15)
binary32 = Format("binary32", p=24, emax=127)
binary64 = Format("binary64", p=53, emax=1023)
bfloat16 = Format("bfloat16", p=8, emax=127)
tf32 = Format("tf32", p=11, emax=127)
float8_e4m3fn = Format("float8_e4m3fn", p=4, emax=8, inf_nan="fn")
float8_e5m2 = Format("float8_e5m2", p=3, emax=15)

FORMATS: dict[str, Format] = {
    f.name: f for f in (binary16, binary32, binary64, bfloat16, tf32, float8_e4m3fn, float8_e5m2)
}

_ALIASES: dict[str, str] = {
    "fp16": "binary16",
    "half": "binary16",
    "float16": "binary16",
    "fp32": "binary32",
    "single": "binary32",
    "float32": "binary32",
    "fp64": "binary64",
    "double": "binary64",
    "float64": "binary64",
    "bf16": "bfloat16",
    "e4m3": "float8_e4m3fn",
    "fp8_e4m3": "float8_e4m3fn",
    "e5m2": "float8_e5m2",
    "fp8_e5m2": "float8_e5m2",
}


def format_names() -> list[str]:
    """Canonical names and aliases accepted by :func:`get_format`."""
    return sorted(FORMATS) + sorted(_ALIASES)


def get_format(name: str | Format) -> Format:
    """Look up a format by canonical name or alias (case-insensitive).

    A :class:`Format` is returned unchanged.  An unknown name raises
    ``ValueError`` listing the valid names.
    """
    if isinstance(name, Format):
        return name
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    try:
        return FORMATS[key]
    except KeyError:
        raise FperrInputError(
            f"unknown format {name!r}; valid names: {', '.join(format_names())}"
        ) from None
