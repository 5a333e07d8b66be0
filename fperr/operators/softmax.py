"""softmax along one per-input axis (negative counts from the end): a
classifier's probabilities, or the attention scores (H, T, T) of a
transformer along the last axis.

One function evaluation per group rounded to storage; the bound is the mean
value form ds = J(xi) dz with J = diag(s) - s s^T per group, plus the kernel
allowance and the storage rounding (:func:`fperr.bounds.rules.softmax_local`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from ..errors import SpecError
from .base import Array, Operator, OperatorSpec, Put, Shape, Weights, register

if TYPE_CHECKING:
    import onnx

    from ..arith import Arithmetic
    from ..bounds.enclosure import Enclosure
    from ..bounds.rules import Context
    from ..bounds.steps import Step
    from ..importers.onnx_converter import _OnnxConverter as Cv
    from ..importers.onnx_ops import Site
    from ..model import Model


class SoftmaxSpec(OperatorSpec):
    type: Literal["softmax"]
    axis: int = Field(-1, description="per-input axis (no batch axis; negative from the end)")


def softmax(x: Array, axis: int = -1) -> Array:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@register
@dataclass(frozen=True, eq=False)
class Softmax(Operator):
    """Softmax along one per-input ``axis`` (negative counts from the end): the
    attention scores (H, T, T) of a transformer along the last axis."""

    axis: int = -1
    type = "softmax"
    Spec = SoftmaxSpec
    torch_module_classes = (("Softmax", False),)
    onnx_ops = ("Softmax",)

    def sharpen_threshold(self) -> float | None:
        from ..bounds.backward import SHARPEN

        return SHARPEN

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        from ..model import Model
        from .dense import Dense
        from .flatten import Flatten
        from .reshape import Reshape

        w1, w2 = rng.normal(size=(6, 4)) * 2, rng.normal(size=(3, 6)) / 2
        return Model("softmax", (4,), (Dense(w1), Reshape((2, 3)), cls(0), Flatten(), Dense(w2),
                                       cls()))  # fmt: skip

    fx_functions = ("torch.nn.functional.softmax", "torch.softmax")
    fx_methods = ("softmax",)
    aten_ops = ("aten.softmax", "aten._softmax")

    @classmethod
    def from_fx(cls, node: Any, label: str, params: Any) -> Any:
        """x.softmax(dim), F.softmax(x, dim, _stacklevel, dtype), torch.softmax(x, dim, dtype)."""
        import torch.nn.functional as F

        from ..importers.builders import _softmax_build
        from ..importers.from_torch import _arg, _unary
        from ..importers.graph import _Unsupported

        if node.op != "call_method":
            if _arg(node, 3 if node.target is F.softmax else 2, "dtype") is not None:
                raise _Unsupported("with dtype")
        return _unary(node, label, _softmax_build(_arg(node, 1, "dim")))

    @classmethod
    def from_aten(cls, n: Any, label: str, ctx: Any) -> Any:
        from ..importers.builders import _softmax_build
        from ..importers.graph import _Unsupported
        from ..importers.torch_export import _a, _unary

        extra = _a(n, 2, "half_to_float" if "_softmax" in str(n.target) else "dtype")
        if extra:
            raise _Unsupported("with a dtype")
        return _unary(n, label, ctx, _softmax_build(n.args[1]))

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        return cls(spec.axis)

    @classmethod
    def from_torch_module(cls, mod: Any) -> Any:
        """nn.Softmax over one dim other than the batch's."""
        from ..importers.builders import _softmax_build

        return _softmax_build(mod.dim), None, False

    @classmethod
    def from_onnx(cls, cv: Cv, n: onnx.NodeProto, s: Site) -> None:
        """Softmax over the last axis (row-wise), or over one other axis (opset 13+;
        before, the axes from ``axis`` on, taken only where that is the last)."""
        from ..importers.graph import _Unsupported
        from ..importers.onnx_ops import _axis, along

        nd = cv.lays[s.x].idx.ndim
        ax = _axis(int(s.attrs.get("axis", -1 if cv.opset >= 13 else 1)), nd, "softmax")
        if ax == nd - 1:
            k = cv.lays[s.x].idx.shape[-1]
            cv.lays[n.output[0]] = cv.rowwise(s.label, s.x, k, lambda shape: [cls(-1)])
            return
        if cv.opset < 13:
            raise _Unsupported(f"softmax over all axes from {ax} (opset < 13): only the last")
        along(cv, n, s, lambda shape, p: [cls(p - len(shape))], ax)

    def spec_fields(self, put: Put) -> dict[str, Any]:
        return {"axis": None if self.axis == -1 else self.axis}  # old files unchanged

    def out_shape(self, shape: Shape) -> Shape:
        if not -len(shape) <= self.axis < len(shape):
            raise SpecError(f"softmax: axis {self.axis} out of range for inputs of shape "
                            f"{list(shape)}")  # fmt: skip
        return shape

    def batched_axis(self, ndim: int) -> int:
        """The softmax axis of a batch ``(N, *shape)`` of ``ndim`` dimensions, >= 1."""
        return self.axis % (ndim - 1) + 1

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        if self.axis == -1:  # the vector case as it always was (bit for bit)
            return arith.func(softmax, x)
        ax = self.batched_axis(x.ndim)
        return arith.func(lambda v: softmax(v, ax), x)

    # -- bounds ------------------------------------------------------------------------------
    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int) -> Step:
        from ..bounds.steps import softmax_step

        return softmax_step(self, xs[0], rs[0], ctx, group)

    def rule(self, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
        from ..bounds.rules import softmax_rule

        return softmax_rule(self, enc, ctx, index)

    # -- other executors ---------------------------------------------------------------------
    def torch_module(self, in_shapes: list[Shape]) -> Any:
        from ..hardware.torch_env import require_torch

        return require_torch().nn.Softmax(dim=self.axis if self.axis < 0 else self.axis + 1)

    def mpmath_forward(self, xs: list[Any]) -> Any:
        import mpmath

        x = xs[0]
        moved = np.moveaxis(x, self.batched_axis(x.ndim), -1)
        rows = moved.reshape(-1, moved.shape[-1])
        out = np.empty(rows.shape, dtype=object)
        for s in range(rows.shape[0]):
            e = [mpmath.exp(v) for v in rows[s]]
            total = mpmath.fsum(e)
            for j, v in enumerate(e):
                out[s, j] = v / total
        return np.moveaxis(out.reshape(moved.shape), -1, self.batched_axis(x.ndim))
