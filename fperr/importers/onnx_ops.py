"""ONNX computing nodes as fperr layers: the converters of op types that are no
one operator's (several operators: Add, Sub, Mul, Div; none: Cast, CastLike), in
:data:`CONVERTERS`, and the helpers the operators' own converters
(:meth:`fperr.operators.Operator.from_onnx`) share.  The importer's table joins
both (:func:`.onnx_converter.converters`), as onnx.reference keeps one class per op.

Each converter reads its data inputs as :class:`~.onnx_layout.Lay` index maps
from the converter and records the layout of its outputs.  Elementwise ops
apply to the node under any layout; ops on the last axis (dense layers, layer
norm, softmax) apply to the node when the value's rows are the node's rows
(the batch may be merged into the leading axes: ``(T N, D)`` in exported
attention); every other op needs its input per input (the batch axis found)
and refuses otherwise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..layers import Activation, Dense, Layer, Shape
from ..operators import REGISTRY
from .graph import _Unsupported
from .onnx_layout import canonical
from .onnx_nodes import _is_pow2

if TYPE_CHECKING:  # pragma: no cover
    import onnx

    from .onnx_converter import _OnnxConverter as Cv

MOVEMENT = frozenset({"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Slice",
                      "Gather", "Split", "Identity", "Expand", "Concat", "Tile"})  # fmt: skip
"""Nodes that only move values: applied to index maps (Concat: of one node's values)."""


@dataclass(frozen=True)
class Site:
    attrs: dict[str, Any]
    label: str
    x: str  # the first input


def _axis(axis: int, ndim: int, what: str) -> int:
    if not -ndim <= axis < ndim:
        raise _Unsupported(f"{what} axis {axis} of a rank-{ndim} value")
    return axis % ndim


def _per_axis(ax: int, a: int) -> int:
    """ONNX axis ``ax`` of a value whose batch axis is ``a``, per input."""
    if ax == a:
        raise _Unsupported("acts along the batch axis")
    return ax - (ax > a)


# -- elementwise ---------------------------------------------------------------------------------
def _clip(cv: Cv, n: onnx.NodeProto, a: dict[str, Any]) -> Layer:
    """Clip to [0, 6] is ReLU6 (bounds are inputs from opset 11, attributes before)."""
    if cv.opset >= 11:
        ends = [cv.const(n, i) for i in (1, 2)]
        lo, hi = (None if e is None or e.size != 1 else float(e.reshape(-1)[0]) for e in ends)
    else:
        lo, hi = a.get("min"), a.get("max")
    if lo != 0.0 or hi != 6.0:
        raise _Unsupported(f"Clip to [{lo}, {hi}]: only [0, 6] (ReLU6)")
    return Activation("relu6")


# -- binary: Add, Sub, Mul, Div ------------------------------------------------------------------
def binary(cv: Cv, n: onnx.NodeProto, s: Site) -> None:
    """Two activations: add (of one layout), mul; an activation and a constant: add
    of a parameter (a constant node), mul/div by a scalar (scale)."""
    t = n.op_type
    data = [i for i in n.input if i in cv.lays]
    if len(data) == 2:
        if t not in ("Add", "Mul"):
            raise _Unsupported(f"{t} of two activations")
        (ka, sa, a1), (kb, sb, a2) = (cv.per(cv.lays[i], s.label) for i in n.input)
        if a1 != a2 or cv.lays[n.input[0]].idx.shape != cv.lays[n.input[1]].idx.shape:
            raise _Unsupported("operands of different shapes or layouts (broadcasting)")
        layer = None if t == "Add" else REGISTRY["mul"]()
        node, per = cv.merge(s.label, [ka, kb], [sa, sb], layer)
        cv.lays[n.output[0]] = canonical(node, per, cv.batch, a1)
        return
    x = data[0]
    c = cv.need(n, 1 - list(n.input).index(x))
    if t in ("Mul", "Div"):
        if c.size != 1 and not np.all(c == c.reshape(-1)[0]):
            raise _Unsupported(f"{t} by a constant that is not a scalar")
        if np.broadcast_shapes(c.shape, cv.lays[x].idx.shape) != cv.lays[x].idx.shape:
            raise _Unsupported("a constant that broadcasts the value")
        v = float(c.reshape(-1)[0])
        if t == "Div":
            if n.input[0] != x or not _is_pow2(v):
                raise _Unsupported(f"division by {v:g}: only x / 2^k (an exact scale)")
            v = 1.0 / v
        cv.lays[n.output[0]] = cv.unary(s.label, x, [REGISTRY["scale"](v)])  # type: ignore[call-arg]
        return
    if t == "Sub" and n.input[0] != x:
        raise _Unsupported("constant minus an activation")
    add_constant(cv, s.label, x, -c if t == "Sub" else c, n.output[0])


def add_constant(cv: Cv, label: str, x: str, c: Any, out: str) -> None:
    lay = cv.lays[x]
    src, shape, a = cv.per(lay, label)
    per_c = cv.lift(c, lay.idx.shape, a, "the constant")
    if not np.any(per_c):
        cv.lays[out] = canonical(src, shape, cv.batch, a)
        return
    k, ks = cv.constant(label, per_c)
    node, per = cv.merge(label, [src, k], [shape, ks], None)
    cv.lays[out] = canonical(node, per, cv.batch, a)


# -- dense layers ----------------------------------------------------------------------------------
def _dense(w: Any, b: Any) -> Any:
    def build(shape: Shape) -> list[Layer]:
        if len(shape) == 1:
            return [Dense(np.array(w), None if b is None else np.array(b))]
        return [REGISTRY["linear"](np.array(w), None if b is None else np.array(b))]  # type: ignore[call-arg]

    return build


def _bias(c: Any, n_out: int) -> Any:
    if c.size == 1:
        return np.full(n_out, float(c.reshape(-1)[0]))
    if c.size != n_out or c.shape[-1] != n_out:
        raise _Unsupported(f"bias of shape {list(c.shape)}")
    return np.array(c.reshape(-1))


def matmul_two(cv: Cv, n: onnx.NodeProto, s: Site) -> None:
    la, lb = cv.lays[n.input[0]], cv.lays[n.input[1]]
    if la.idx.ndim != lb.idx.ndim or la.idx.ndim < 3:
        raise _Unsupported("operands of different ranks or without a batch axis")
    (ka, sa, a1), (kb, sb, a2) = cv.per(la, s.label), cv.per(lb, s.label)
    if a1 != a2 or a1 >= la.idx.ndim - 2:
        raise _Unsupported("operands with different batch axes, or the batch in a matrix axis")
    node, per = cv.merge(s.label, [ka, kb], [sa, sb], REGISTRY["matmul"]())
    cv.lays[n.output[0]] = canonical(node, per, cv.batch, a1)


# -- along an axis ---------------------------------------------------------------------------------
def along(cv: Cv, n: onnx.NodeProto, s: Site, build: Any, ax: int) -> None:
    """Layers along the per-input axis of ONNX axis ``ax``, built from (shape, axis)."""
    src, shape, a = cv.per(cv.lays[s.x], s.label)
    p = _per_axis(ax, a)
    node, per = cv.chain(s.label, src, shape, build(shape, p))
    cv.lays[n.output[0]] = canonical(node, per, cv.batch, a)


def norm_shape(cv: Cv, n: onnx.NodeProto, s: Site) -> tuple[int, Shape, Any, float]:
    """LayerNormalization and RMSNormalization: the axis from which they normalise,
    the normalised shape, the scale broadcast to it, and epsilon."""
    full = cv.lays[s.x].idx.shape
    ax = _axis(int(s.attrs.get("axis", -1)), len(full), "norm")
    eps = float(s.attrs.get("epsilon", 1e-5))
    ns = tuple(int(d) for d in full[ax:])
    return ax, ns, np.broadcast_to(cv.need(n, 1), ns).copy(), eps


def place_norm(cv: Cv, n: onnx.NodeProto, s: Site, layer: Layer, ax: int) -> None:
    """A norm over the axes from ``ax`` on: row-wise over the last axis alone, else
    per input (the batch axis before ``ax``)."""
    full = cv.lays[s.x].idx.shape
    if ax == len(full) - 1:
        cv.lays[n.output[0]] = cv.rowwise(s.label, s.x, int(full[ax]), lambda shape: [layer])
        return
    src, shape, a = cv.per(cv.lays[s.x], s.label)
    if a >= ax:
        raise _Unsupported("normalises over the batch axis")
    node, per = cv.chain(s.label, src, shape, [layer])
    cv.lays[n.output[0]] = canonical(node, per, cv.batch, a)


# -- images (batch axis first) -------------------------------------------------------------------
def image(cv: Cv, n: onnx.NodeProto, s: Site, build: Any) -> None:
    src, shape, a = cv.per(cv.lays[s.x], s.label)
    if a != 0 or len(shape) != 3:
        raise _Unsupported(f"needs [N, C, H, W] inputs, got a rank-{len(shape) + 1} value "
                           f"with the batch axis at {a}")  # fmt: skip
    node, per = cv.chain(s.label, src, shape, build(shape))
    cv.lays[n.output[0]] = canonical(node, per, cv.batch, 0)


def _pads(a: dict[str, Any]) -> tuple[int, int] | None:
    """Symmetric (top/bottom, left/right) pads; None for auto_pad SAME_*."""
    auto = a.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else str(auto)
    if auto == "VALID":
        return (0, 0)
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        return None
    if auto != "NOTSET":
        raise _Unsupported(f"auto_pad={auto}")
    p = [int(v) for v in a.get("pads", [0, 0, 0, 0])]
    if len(p) != 4 or p[0] != p[2] or p[1] != p[3]:
        raise _Unsupported(f"asymmetric pads {p}")
    return (p[0], p[1])


def cast(cv: Cv, n: onnx.NodeProto, s: Site) -> None:
    """A cast of data to a float type is the identity here: the model's arithmetic
    (exact, or emulated in a chosen format) decides every rounding."""
    if int(s.attrs.get("to", 0)) not in (1, 10, 11, 16):
        raise _Unsupported("a cast of data to a non-float type")
    cv.lays[n.output[0]] = cv.lays[s.x]


def cast_like(cv: Cv, n: onnx.NodeProto, s: Site) -> None:
    """CastLike to a float value (dynamo=True, optimize=False writes it): the identity
    on data, as Cast; a constant cast like a data value stays a float64 constant."""
    if n.input[0] in cv.values:
        cv.values[n.output[0]] = cv.values[n.input[0]]
        return
    like = cv.values.get(n.input[1])
    if like is not None and like.dtype.kind != "f":
        raise _Unsupported("a cast of data to a non-float type")
    cv.lays[n.output[0]] = cv.lays[s.x]


CONVERTERS: dict[str, Any] = {
    "Cast": cast,
    "CastLike": cast_like,
    "Add": binary,
    "Sub": binary,
    "Mul": binary,
    "Div": binary,
}  # fmt: skip
"""Op types that are no one operator's; the others: each operator's ``onnx_ops``."""

__all__ = ["CONVERTERS", "MOVEMENT", "Site", "math"]
