"""mean: the average over some axes of each input (``torch.mean(x, dim=...)``).

Transformer mean pooling over tokens, global average pooling.  A kernel sums
the n terms in the accumulator (any order), divides by n (or multiplies by a
rounded 1/n, as torch's reduction does) and stores the quotient once: an
average pool with one window (:func:`fperr.bounds.rules.avgpool_local`).  The
bound covers n - 1 additions and two roundings of the scaling, gamma_{n+1}
(Higham 2002, eq. 4.4 and Lemma 3.3), the bottom of the exponent range, and
the storage rounding of a value within that of the exact mean.
(torch 2.x CPU and CUDA round once; torch 1.x's CPU ``sum().div_()`` stored
the sum first, an extra rounding not covered here.)

The reduction itself (axes, shapes, the emulated sum, the step and the
zonotope rule) is :class:`~fperr.operators.sum.Sum`'s; a mean adds the
quotient's terms and pulls rows back with weights 1/n.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from .base import Array, OperatorSpec, register
from .sum import Sum

if TYPE_CHECKING:
    import onnx

    from ..bounds.rules import Context
    from ..importers.onnx_converter import _OnnxConverter as Cv
    from ..importers.onnx_ops import Site


class MeanSpec(OperatorSpec):
    type: Literal["mean"]
    axes: list[int] = Field(min_length=1, description="per-input axes to average over")
    keepdims: bool = Field(False, description="keep the reduced axes with length 1")


@register
class Mean(Sum):
    type = "mean"
    Spec = MeanSpec
    divides = True
    onnx_ops = ("ReduceMean", "GlobalAveragePool")

    # a mean over H and W of [C, H, W] is built as a global average pool (and a flatten
    # without keepdim), as before (from_torch._spatial_mean chooses by shape); over other
    # axes (tokens) this operator: declared here, on the common case
    fx_functions = ("torch.mean",)
    fx_methods = ("mean",)
    aten_ops = ("aten.mean",)

    @classmethod
    def from_fx(cls, node: Any, label: str, params: Any) -> Any:
        """x.mean(dims) and torch.mean(x, dims)."""
        from ..importers.from_torch import _arg, _spatial_mean, _unary
        from ..importers.graph import _Unsupported

        dims = _arg(node, 1, "dim")
        if dims is None or _arg(node, 3, "dtype") is not None:
            raise _Unsupported("mean over every axis or with a dtype")
        return _unary(node, label, _spatial_mean(dims, bool(_arg(node, 2, "keepdim", False))))

    @classmethod
    def from_aten(cls, n: Any, label: str, ctx: Any) -> Any:
        from ..importers.from_torch import _spatial_mean
        from ..importers.graph import _Unsupported
        from ..importers.torch_export import _a, _unary

        dims = _a(n, 1, "dim")
        if not dims or _a(n, 3, "dtype") is not None:
            raise _Unsupported("mean over every axis or with a dtype")
        return _unary(n, label, ctx, _spatial_mean(list(dims), bool(_a(n, 2, "keepdim", False))))

    @classmethod
    def from_onnx(cls, cv: Cv, n: onnx.NodeProto, s: Site) -> None:
        """ReduceMean over axes other than the batch's (attributes, or an input from
        opset 18), and GlobalAveragePool (a mean over H and W of [N, C, H, W])."""
        from ..importers.graph import _Unsupported
        from ..importers.onnx_layout import canonical
        from ..importers.onnx_ops import _axis, _per_axis, image

        if n.op_type == "GlobalAveragePool":
            image(cv, n, s, lambda shape: [cls((1, 2), True)])
            return
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
        node, per = cv.chain(s.label, src, shape, [cls(per_axes, keep)])
        cv.lays[n.output[0]] = canonical(node, per, cv.batch, a if keep else
                                         a - sum(v < a for v in axes))  # fmt: skip

    def _reduce(self, v: Array, ax: tuple[int, ...], keepdims: bool) -> Array:
        return v.mean(axis=ax, keepdims=keepdims)

    def accumulation(self, mag: Array, n: int, ctx: Context) -> Array:
        """The sum's n - 1 additions and the quotient's two roundings (1/n rounded, the
        product; each term's rounding on entry where the accumulator lacks storage's
        values), ``mag`` >= mean |x_run|; the flushes of the sum count divided by n."""
        from ..formats import gamma

        a = ctx.arith
        ops = n + 1 if a.accumulate.contains(a.storage) else n + 2  # + each term's rounding
        per_op = ctx.eta() + ctx.eta_add()  # the quotient's (or a term's) and the flushes
        under = per_op * (2 if ops > n + 1 else 1) * (1 + gamma(ops, a.u_acc))
        acc = ctx.gamma(ops) * mag + under
        return np.where(ctx.sum_may_overflow(n * mag, n, under), np.inf, acc)

    def _pull(self, rows: Array, n: int) -> Array:
        return rows / n

    def torch_forward(self, xs: list[Any], params: dict[str, Any]) -> Any:
        x = xs[0]
        return x.mean(dim=self._batched(x), keepdim=self.keepdims)

    def mpmath_forward(self, xs: list[Any]) -> Any:
        x = xs[0]
        ax = self._batched(x)
        n = math.prod(x.shape[i] for i in ax)
        return x.sum(axis=ax, keepdims=self.keepdims) / n
