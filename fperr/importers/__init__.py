"""Import PyTorch modules and ONNX graphs into the fperr IR.

* :func:`from_torch` converts an ``nn.Sequential`` (nested ones included) or
  any module that ``torch.fx`` can trace whose graph is a chain of supported
  operations, optionally with residual blocks ``y = x + f(x)``;
* :func:`from_onnx` converts an ONNX graph (a path, bytes or a
  ``ModelProto``) of the same shape.

Both collect every unsupported operation first and raise one
:class:`~fperr.errors.SpecError` listing them all (``unsupported: ... (3
ops)``); structural problems (a graph that is not a chain, an ``add`` that is
not ``x + f(x)``) and shape problems raise a one-line ``SpecError`` naming the
node.  Weights are copied into float64 numpy arrays.  BatchNorm always uses the
running statistics (eval-mode semantics) and Dropout is the identity.

torch and onnx are imported inside the functions: ``import fperr`` needs
neither.
"""

from __future__ import annotations

from .from_onnx import from_onnx
from .from_torch import from_torch
from .graph import Array as Array
from .graph import Build as Build

__all__ = ["from_onnx", "from_torch"]
