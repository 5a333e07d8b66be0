"""Import PyTorch modules and ONNX graphs into the fperr IR.

* :func:`from_torch` converts an ``nn.Sequential`` (nested ones included) or
  any module that ``torch.fx`` can trace whose graph is a chain of supported
  operations, optionally with residual blocks ``y = x + f(x)``;
* :func:`from_onnx` converts an ONNX graph (a path, bytes or a
  ``ModelProto``) of the same shape;
* :func:`from_sklearn` converts a fitted scikit-learn ``MLPClassifier`` or
  ``MLPRegressor`` (a two-class classifier has one output logit).

Graphs that are not a chain with residual blocks (projection shortcuts
``proj(x) + f(x)``, ``torch.cat``) become graph models: layers that name
their inputs (see :mod:`fperr.model`).

Both collect every unsupported operation first and raise one
:class:`~fperr.errors.SpecError` listing them all (``unsupported: ... (3
ops)``); structural problems (a graph that is not a chain, an ``add`` that is
not ``x + f(x)``) and shape problems raise a one-line ``SpecError`` naming the
node.  Weights are copied into float64 numpy arrays.  An import is what the
model computes in eval mode (BatchNorm uses the running statistics, Dropout is
the identity) or it is refused: training-mode ops (``F.dropout(x,
training=True)``, ONNX ``training_mode``), and PyTorch in-place writes whose
overwritten storage is read again through another view.  ``from_torch`` also
runs the module (a float64 copy, eval mode) and the import on random inputs
and refuses when they disagree (``check=False`` skips this).

torch and onnx are imported inside the functions: ``import fperr`` needs
neither.
"""

from __future__ import annotations

from .from_onnx import from_onnx
from .from_sklearn import from_sklearn
from .from_torch import from_torch
from .graph import Array as Array
from .graph import Build as Build

__all__ = ["from_onnx", "from_sklearn", "from_torch"]
