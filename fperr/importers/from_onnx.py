"""from_onnx: ONNX graphs to the fperr IR; onnx is imported lazily."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import SpecError
from ..model import Model
from .onnx_converter import _OnnxConverter

if TYPE_CHECKING:  # pragma: no cover
    import onnx


def from_onnx(
    path_or_model: str | Path | bytes | onnx.ModelProto,
    input_shape: Sequence[int] | None = None,
    name: str | None = None,
    notes: list[str] | None = None,
) -> Model:
    """Convert an ONNX model (a file, its bytes or a ``ModelProto``) to a Model.

    Any DAG of supported nodes (a graph model where it is not a chain with
    residual blocks): Conv (grouped and depthwise), BatchNormalization,
    Gemm, MatMul of an activation and a weight (+ Add of a constant, fused as
    the bias; a linear layer on the last axis for token inputs) or of two
    activations, Add of two activations or of a parameter, Mul of two
    activations, Mul/Div by a scalar constant (scale; Div by a power of two
    only), Concat (of activations and parameters: a class token),
    LayerNormalization, RMSNormalization, Softmax along any axis, ReduceMean,
    GlobalAveragePool, MaxPool, AveragePool, Relu, Clip to [0, 6] (ReLU6),
    LeakyRelu, Elu, Tanh, Sigmoid, HardSwish, HardSigmoid, Gelu and the
    Erf-form GELU both torch exporters write, SiLU, Dropout, Cast/CastLike to
    floats; data movement anywhere (Transpose, Reshape, Flatten, (Un)Squeeze,
    Slice, Gather and Split with constant indices, Expand, Identity), the
    batch axis followed through it (:mod:`.onnx_layout`); and shape
    subgraphs (Shape, Gather, Concat, ConstantOfShape, Range, Equal, Where,
    Expand, ...), evaluated at import time with the batch size fixed (the
    graph's static one, else 3 for the analysis).  Weights come from
    initializers and Constant nodes.  The input shape comes from the graph
    input (static dims after the batch dim) unless ``input_shape`` is given.

    Nodes that do not convert are refused together in one line counting the
    op kinds.  A scikit-learn classifier graph (skl2onnx) is cut before its
    final Sigmoid/Softmax: the model outputs the logits.

    ``notes``, if given, receives the lines of the import report (also logged
    to the ``fperr.importers.onnx`` logger): that the exporter folded BatchNorm
    into the convolutions (see ``_OnnxConverter.folded_batchnorms`` for the
    detection; torch 2.13 keeps BatchNorm as a node with ``dynamo=True,
    optimize=False``, or ``dynamo=False`` with ``do_constant_folding=False`` or
    ``training=torch.onnx.TrainingMode.PRESERVE``), and where a scikit-learn
    graph was cut.
    """
    try:
        import onnx
    except ImportError:
        raise SpecError("from_onnx needs the onnx package (pip install onnx)") from None
    if isinstance(path_or_model, onnx.ModelProto):
        model = path_or_model
        default = model.graph.name or "onnx"
    elif isinstance(path_or_model, bytes):
        try:
            model = onnx.load_from_string(path_or_model)
        except Exception as exc:  # protobuf decode errors
            raise SpecError(f"cannot parse ONNX bytes: {exc}") from None
        default = model.graph.name or "onnx"
    else:
        path = Path(path_or_model)
        if not path.is_file():
            raise SpecError(f"ONNX file not found: {path}")
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # protobuf decode errors
            raise SpecError(f"cannot read ONNX file {path}: {exc}") from None
        default = path.stem
    return _OnnxConverter(model).to_model(input_shape, name or default, notes)
