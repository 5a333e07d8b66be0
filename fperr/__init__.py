"""fperr: floating-point error analysis of neural networks.

Emulates IEEE binary16/binary32 (and bfloat16, TF32, fp8, any (p, emax))
exactly, bounds the rounding error of a network layer by layer, and certifies
per input that a low-precision run predicts the same class as the reference.

The public names below are re-exported from private-ish modules; ``import
fperr`` imports neither torch, onnx nor matplotlib.
"""

from __future__ import annotations

import os as _os

# torch, where fperr imports it later (lazily), backs large CPU tensors with huge
# pages as numpy does by default: without them each fresh tensor of the backward
# rows is page-faulted in 4 kB at a time, and torch's CPU backend ran its
# elementwise row work 2x slower than numpy (fperr.bounds.backend).  A value the
# user set wins; it acts only if torch is imported after fperr.
_os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from . import examples
from .arith import Emulated, Exact
from .bounds import BoundResult, RunBound, bound, bound_run
from .bounds.apriori import AprioriBound, apriori_bound
from .certify import CertifyResult, Suggestion, certify, suggest_fp32
from .datasets import load_inputs, load_labels
from .errors import FperrInputError, SpecError
from .formats import FORMATS, Format, format_names, get_format
from .importers import from_onnx, from_sklearn, from_torch
from .model import Model, load_model
from .rounding import MODES, round, round_scalar
from .training import TrainingReport, check_training

__version__ = "0.1.0"

__all__ = [
    "FORMATS",
    "MODES",
    "AprioriBound",
    "BoundResult",
    "CertifyResult",
    "Emulated",
    "Exact",
    "Format",
    "FperrInputError",
    "Model",
    "RunBound",
    "SpecError",
    "Suggestion",
    "TrainingReport",
    "__version__",
    "apriori_bound",
    "examples",
    "bound",
    "bound_run",
    "certify",
    "check_training",
    "format_names",
    "from_onnx",
    "from_sklearn",
    "from_torch",
    "get_format",
    "load_inputs",
    "load_labels",
    "load_model",
    "round",
    "round_scalar",
    "suggest_fp32",
]
