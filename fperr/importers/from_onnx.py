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
) -> Model:
    """Convert an ONNX model (a file, its bytes or a ``ModelProto``) to a Model.

    Supported: Gemm (``transB``; ``alpha`` 1 or a power of two, any ``beta``),
    MatMul (+ Add of a constant, fused into a dense layer), Add of two values
    forming a residual block ``x + f(x)``, Conv, Relu, LeakyRelu, Tanh,
    Sigmoid, Gelu and the Div/Erf/Add/Mul/Mul GELU the TorchScript exporter
    writes, Softmax (last axis of vectors), MaxPool, AveragePool, Flatten
    (axis 1), Reshape to a constant shape, BatchNormalization,
    LayerNormalization, Dropout and Identity.  Weights come from
    initializers and Constant nodes.  The input shape comes from the graph
    input (static dims after the batch dim) unless ``input_shape`` is given.
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
    return _OnnxConverter(model).to_model(input_shape, name or default)
