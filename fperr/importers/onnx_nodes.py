"""Helpers on single ONNX nodes: attributes, constants, shape arithmetic, padding."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..errors import SpecError
from ..layers import Pair, Shape

if TYPE_CHECKING:  # pragma: no cover
    import onnx


# =============================================================================================
# ONNX
# =============================================================================================
def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _constant_value(node: onnx.NodeProto) -> npt.NDArray[Any]:
    """The value of a Constant node, in its own dtype."""
    from onnx import numpy_helper

    for a in node.attribute:
        if a.name == "value":
            return np.asarray(numpy_helper.to_array(a.t))
        if a.name in ("value_float", "value_floats"):
            return np.asarray(a.f if a.name == "value_float" else list(a.floats), np.float64)
        if a.name in ("value_int", "value_ints"):
            return np.asarray(a.i if a.name == "value_int" else list(a.ints), np.int64)
    raise SpecError(f"Constant node {node.name!r} has no numeric value")


def _same_pads(shape: Shape, k: Pair, stride: Pair, dil: Pair) -> Pair:
    """Pads of auto_pad SAME_* (output size ceil(in / stride)) if they are symmetric."""
    if len(shape) != 3:
        raise SpecError(f"expects input [C, H, W], got {list(shape)}")
    pads = []
    for d in (0, 1):
        n = shape[d + 1]
        total = max((-(-n // stride[d]) - 1) * stride[d] + dil[d] * (k[d] - 1) + 1 - n, 0)
        if total % 2:
            raise SpecError(f"auto_pad SAME needs asymmetric padding on inputs {list(shape)}")
        pads.append(total // 2)
    return (pads[0], pads[1])


def _is_pow2(a: float) -> bool:
    return a != 0 and math.isfinite(a) and math.frexp(abs(a))[0] == 0.5
