"""fperr: floating-point error analysis of neural networks.

Emulates IEEE binary16/binary32 (and bfloat16, TF32, fp8, any (p, emax))
exactly, bounds the rounding error of a network layer by layer, and certifies
per input that a low-precision run predicts the same class as the reference.
"""

from __future__ import annotations

from .formats import FORMATS, Format, format_names, get_format
from .rounding import MODES, round, round_scalar

__version__ = "0.1.0"

__all__ = [
    "FORMATS",
    "Format",
    "MODES",
    "__version__",
    "format_names",
    "get_format",
    "round",
    "round_scalar",
]
