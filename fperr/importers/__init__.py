"""Import PyTorch modules and ONNX graphs into the fperr IR.

* :func:`from_torch` converts a module through ``torch.fx`` symbolic tracing
  (``tracer="fx"``, the default; ``nn.MultiheadAttention`` and
  ``nn.TransformerEncoderLayer`` are traced as leaves and expanded into
  operators) or through ``torch.export`` (``tracer="export"``: aten ops,
  ``scaled_dot_product_attention`` decomposed into its math form);
* :func:`from_onnx` converts an ONNX graph (a path, bytes or a
  ``ModelProto``) from either torch exporter (TorchScript or dynamo), from
  skl2onnx (the network, cut before its output activation), or written by
  hand: shape subgraphs are evaluated at import time, and a batch axis the
  exporter moves (attention merges it with the heads) is tracked through the
  data-movement nodes;
* :func:`from_sklearn` converts a fitted scikit-learn ``MLPClassifier`` or
  ``MLPRegressor`` (a two-class classifier has one output logit).

Chains become sequential models, ``x + f(x)`` residual blocks included; any
other graph (projection shortcuts ``proj(x) + f(x)``, ``torch.cat``,
attention) becomes a graph model: layers that name their inputs (see
:mod:`fperr.model`).

Both collect every unsupported operation first and raise one
:class:`~fperr.errors.SpecError` that counts them by kind
(``unsupported: 3 ops of 2 kinds: aten.sin (2), aten.cumsum (1); ...`` or
``unsupported ONNX ops: Sin x30, Cos x20 (50 nodes); ...``); structural and
shape problems raise a one-line ``SpecError`` naming the node.  Weights are
copied into float64 numpy arrays.  An import is what the model computes in
eval mode (BatchNorm uses the running statistics, Dropout is the identity) or
it is refused: training-mode ops (``F.dropout(x, training=True)``, ONNX
``training_mode``), and PyTorch in-place writes whose overwritten storage is
read again through another view.  Both torch exporters fold BatchNorm into
the convolutions by default; ``from_onnx`` says so in its ``notes`` and on
the ``fperr.importers.onnx`` logger.  ``from_torch`` also runs the module (a
float64 copy, eval mode) and the import on random inputs and refuses when
they disagree (``check=False`` skips this).

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
