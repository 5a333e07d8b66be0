"""ONNX computing nodes as fperr layers: one function per op type (the table
:data:`CONVERTERS`, as onnx.reference keeps one class per op).

Each function reads its data inputs as :class:`~.onnx_layout.Lay` index maps
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

from ..errors import SpecError
from ..layers import (
    Activation,
    BatchNorm,
    Concat,
    Conv2d,
    Dense,
    Dropout,
    Layer,
    LayerNorm,
    Pool2d,
    RMSNorm,
    Shape,
    Softmax,
)
from ..operators import REGISTRY
from .builders import _gelu, _pair
from .graph import _Unsupported
from .onnx_layout import canonical
from .onnx_nodes import _is_pow2, _same_pads

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
def activation(cv: Cv, n: onnx.NodeProto, s: Site) -> None:
    t = n.op_type
    a = s.attrs
    layer: Layer
    if t == "LeakyRelu":
        layer = Activation("leaky_relu", float(a.get("alpha", 0.01)))
    elif t == "Elu":
        layer = Activation("elu", alpha=float(a.get("alpha", 1.0)))
    elif t in ("HardSwish", "HardSigmoid"):
        if t == "HardSigmoid":
            alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
            if np.float32(alpha) != np.float32(1 / 6) or beta != 0.5:
                raise _Unsupported(f"HardSigmoid with alpha {alpha}, beta {beta}: only "
                                   "alpha = 1/6, beta = 1/2 (torch's)")  # fmt: skip
        layer = Activation(t.lower())
    elif t == "Clip":
        layer = _clip(cv, n, a)
    elif t == "Gelu":
        approx = a.get("approximate", b"none")
        approx = approx.decode() if isinstance(approx, bytes) else str(approx)
        layer = _gelu(approx)[0](())[0]
    else:
        layer = Activation(t.lower())
    cv.lays[n.output[0]] = cv.unary(s.label, s.x, [layer])


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


def dropout(cv: Cv, n: onnx.NodeProto, s: Site) -> None:
    cv.check_dropout(n)
    ratio = cv.const(n, 1)
    p = float(ratio.reshape(-1)[0]) if ratio is not None else float(s.attrs.get("ratio", 0.5))
    cv.lays[n.output[0]] = cv.unary(s.label, s.x, [Dropout(p)])


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


def gemm(cv: Cv, n: onnx.NodeProto, s: Site) -> None:
    """alpha A B' + beta C: alpha folds into the weights only if it is a power of two."""
    a = s.attrs
    if a.get("transA", 0) or n.input[0] not in cv.lays:
        raise _Unsupported("transA=1 or a constant A")
    b = cv.need(n, 1)
    w = b if a.get("transB", 0) else b.T
    alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
    if alpha != 1.0:
        if not _is_pow2(alpha):
            raise _Unsupported(f"alpha={alpha:g}: only 1 or a power of two, which folds "
                               "exactly into the weights")  # fmt: skip
        w = w * alpha
    c = cv.const(n, 2)
    bias = None if c is None else _bias(beta * c, w.shape[0])
    k = int(w.shape[1])
    cv.lays[n.output[0]] = cv.rowwise(s.label, s.x, k, _dense(w, bias))


def matmul(cv: Cv, n: onnx.NodeProto, s: Site) -> None:
    """x W (an Add of a constant that only reads it fused in as the bias), or the
    product of two activations."""
    if n.input[1] in cv.lays:
        return matmul_two(cv, n, s)
    if n.input[0] not in cv.lays:
        raise _Unsupported("a constant left operand")
    b = cv.need(n, 1)
    if b.ndim != 2:
        raise _Unsupported(f"{b.ndim}-D weight")
    w, bias, label, out = np.array(b.T), None, s.label, n.output[0]
    add = cv.only_reader(out)
    other = cv.data_other(add, out) if add is not None and add.op_type == "Add" else None
    if add is not None and other is not None and other in cv.values:
        c = np.asarray(cv.values[other], dtype=np.float64)
        if c.size in (1, w.shape[0]) and c.shape[-1:] in ((1,), (w.shape[0],), ()):
            bias = _bias(c, w.shape[0])
            cv.skip[id(add)] = label
            out = add.output[0]
            label = f"{label} + Add {(add.name or add.output[0])!r}"
    cv.lays[out] = cv.rowwise(label, s.x, int(w.shape[1]), _dense(w, bias))


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
def softmax(cv: Cv, n: onnx.NodeProto, s: Site) -> None:
    nd = cv.lays[s.x].idx.ndim
    ax = _axis(int(s.attrs.get("axis", -1 if cv.opset >= 13 else 1)), nd, "softmax")
    if ax == nd - 1:
        k = cv.lays[s.x].idx.shape[-1]
        cv.lays[n.output[0]] = cv.rowwise(s.label, s.x, k, lambda shape: [Softmax(-1)])
        return
    if cv.opset < 13:
        raise _Unsupported(f"softmax over all axes from {ax} (opset < 13): only the last")
    along(cv, n, s, lambda shape, p: [Softmax(p - len(shape))], ax)


def along(cv: Cv, n: onnx.NodeProto, s: Site, build: Any, ax: int) -> None:
    """Layers along the per-input axis of ONNX axis ``ax``, built from (shape, axis)."""
    src, shape, a = cv.per(cv.lays[s.x], s.label)
    p = _per_axis(ax, a)
    node, per = cv.chain(s.label, src, shape, build(shape, p))
    cv.lays[n.output[0]] = canonical(node, per, cv.batch, a)


def norm(cv: Cv, n: onnx.NodeProto, s: Site) -> None:
    """LayerNormalization and RMSNormalization over the axes from ``axis`` on."""
    full = cv.lays[s.x].idx.shape
    ax = _axis(int(s.attrs.get("axis", -1)), len(full), "norm")
    eps = float(s.attrs.get("epsilon", 1e-5))
    ns = tuple(int(d) for d in full[ax:])
    scale = np.broadcast_to(cv.need(n, 1), ns).copy()
    if n.op_type == "RMSNormalization":
        layer: Layer = RMSNorm(ns, scale, eps)
    else:
        if any(o and cv.readers.get(o) for o in n.output[1:]):
            raise _Unsupported("mean/inv_std_dev outputs used")
        bias = cv.const(n, 2)
        layer = LayerNorm(ns, scale, None if bias is None else np.broadcast_to(bias, ns).copy(),
                          eps)  # fmt: skip
    if ax == len(full) - 1:
        cv.lays[n.output[0]] = cv.rowwise(s.label, s.x, ns[0], lambda shape: [layer])
        return
    src, shape, a = cv.per(cv.lays[s.x], s.label)
    if a >= ax:
        raise _Unsupported("normalises over the batch axis")
    node, per = cv.chain(s.label, src, shape, [layer])
    cv.lays[n.output[0]] = canonical(node, per, cv.batch, a)


def reduce_mean(cv: Cv, n: onnx.NodeProto, s: Site) -> None:
    full = cv.lays[s.x].idx.shape
    a_ = s.attrs
    axes_c = cv.const(n, 1) if cv.opset >= 18 else None
    raw = a_.get("axes") if axes_c is None else [int(v) for v in axes_c.reshape(-1)]
    if not raw:
        if a_.get("noop_with_empty_axes", 0):
            cv.lays[n.output[0]] = cv.lays[s.x]
            return
        raise _Unsupported("a mean over every axis, the batch's included")
    axes = sorted({_axis(int(v), len(full), "mean") for v in raw})
    keep = bool(a_.get("keepdims", 1))
    src, shape, a = cv.per(cv.lays[s.x], s.label)
    per_axes = tuple(_per_axis(v, a) for v in axes)
    node, per = cv.chain(s.label, src, shape, [REGISTRY["mean"](per_axes, keep)])  # type: ignore[call-arg]
    cv.lays[n.output[0]] = canonical(node, per, cv.batch, a if keep else
                                     a - sum(v < a for v in axes))  # fmt: skip


def concat(cv: Cv, n: onnx.NodeProto, s: Site) -> None:
    """Activations (and constants: a class token) joined along a per-input axis."""
    data = [i for i in n.input if i in cv.lays]
    full = cv.lays[data[0]].idx.shape
    ax = _axis(int(s.attrs["axis"]), len(full), "concat")
    got = [cv.per(cv.lays[i], s.label) for i in data]
    a = got[0][2]
    if any(g[2] != a for g in got):
        raise _Unsupported("inputs with different batch axes")
    keys: list[Any] = []
    shapes: list[Shape] = []
    for i in n.input:
        if i in cv.lays:
            k, sh, _ = got[data.index(i)]
        else:
            c = np.asarray(cv.values[i], dtype=np.float64)
            if c.ndim != len(full) or c.shape[a] not in (1, cv.batch):
                raise _Unsupported(f"a constant of shape {list(c.shape)}")
            want = tuple(cv.batch if d == a else c.shape[d] for d in range(c.ndim))
            k, sh = cv.constant(s.label, cv.lift(c, want, a, "the constant"))
        keys.append(k)
        shapes.append(sh)
    node, per = cv.merge(s.label, keys, shapes, Concat(_per_axis(ax, a)))
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


def conv(cv: Cv, n: onnx.NodeProto, s: Site) -> None:
    a = s.attrs
    w = cv.need(n, 1)
    if w.ndim != 4:
        raise _Unsupported(f"{w.ndim - 2}-D convolution")
    bias, group = cv.const(n, 2), int(a.get("group", 1))
    stride, dil = _pair(a.get("strides", 1)), _pair(a.get("dilations", 1))
    k = (int(w.shape[2]), int(w.shape[3]))
    pads = _pads(a)

    def build(shape: Shape) -> list[Layer]:
        p = _same_pads(shape, k, stride, dil) if pads is None else pads
        return [Conv2d(w, bias, stride, p, dil, group)]

    image(cv, n, s, build)


def pool(cv: Cv, n: onnx.NodeProto, s: Site) -> None:
    """MaxPool, AveragePool, and GlobalAveragePool (a mean over H and W)."""
    a = s.attrs
    if n.op_type == "GlobalAveragePool":
        image(cv, n, s, lambda shape: [REGISTRY["mean"]((1, 2), True)])  # type: ignore[call-arg]
        return
    if a.get("ceil_mode", 0) or _pair(a.get("dilations", 1)) != (1, 1):
        raise _Unsupported("ceil_mode or dilations")
    if len(n.output) > 1 and n.output[1] and cv.readers.get(n.output[1]):
        raise _Unsupported("indices output")
    if "kernel_shape" not in a:
        raise _Unsupported("no kernel_shape")
    kind = "max" if n.op_type == "MaxPool" else "avg"
    k, stride = _pair(a["kernel_shape"]), _pair(a.get("strides", 1))
    pads = _pads(a)
    exclude = kind == "avg" and not a.get("count_include_pad", 0)
    if exclude and pads is not None and any(pads):
        raise _Unsupported("count_include_pad=0 with padding")

    def build(shape: Shape) -> list[Layer]:
        p = _same_pads(shape, k, stride, (1, 1)) if pads is None else pads
        if exclude and any(p):
            raise SpecError("count_include_pad=0 with padding is not supported")
        return [Pool2d(kind, k, stride, p)]

    image(cv, n, s, build)


def batch_norm(cv: Cv, n: onnx.NodeProto, s: Site) -> None:
    a = s.attrs
    # training mode normalises by batch statistics: training_mode=1 (opset 14+),
    # the running-statistics outputs (opsets 7-13) or is_test=0 (opsets 1-6)
    if a.get("training_mode", 0) or any(n.output[1:]) or (cv.opset < 7 and not a.get("is_test", 0)):
        raise _Unsupported("training mode")
    if not a.get("spatial", 1):
        raise _Unsupported("spatial=0 (per-activation statistics)")
    bn = BatchNorm(cv.need(n, 3), cv.need(n, 4), cv.need(n, 1), cv.need(n, 2),
                   float(a.get("epsilon", 1e-5)))  # fmt: skip
    src, shape, ax = cv.per(cv.lays[s.x], s.label)
    if ax != 0:
        raise _Unsupported("the batch axis is not the first")
    node, per = cv.chain(s.label, src, shape, [bn])
    cv.lays[n.output[0]] = canonical(node, per, cv.batch, 0)


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
    **{t: activation for t in ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "Elu", "HardSwish",
                               "HardSigmoid", "Clip", "Gelu")},
    "Dropout": dropout,
    "Add": binary,
    "Sub": binary,
    "Mul": binary,
    "Div": binary,
    "Gemm": gemm,
    "MatMul": matmul,
    "Softmax": softmax,
    "LayerNormalization": norm,
    "RMSNormalization": norm,
    "ReduceMean": reduce_mean,
    "Concat": concat,
    "Conv": conv,
    "MaxPool": pool,
    "AveragePool": pool,
    "GlobalAveragePool": pool,
    "BatchNormalization": batch_norm,
}  # fmt: skip

__all__ = ["CONVERTERS", "MOVEMENT", "Site", "math"]
