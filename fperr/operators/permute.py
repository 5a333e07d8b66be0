"""permute: reorder the axes of each input (``torch.permute`` / ``transpose``).

Values move without arithmetic, so the error of output unit o is the error of
the input unit it came from: rows pull back by the inverse permutation, the
radius is permuted, and no local error is added.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from ..errors import SpecError
from .base import Array, Operator, OperatorSpec, Put, Shape, Weights, register

if TYPE_CHECKING:
    from ..arith import Arithmetic
    from ..bounds.enclosure import Enclosure
    from ..bounds.rules import Context
    from ..bounds.steps import Step
    from ..model import Model


class PermuteSpec(OperatorSpec):
    type: Literal["permute"]
    axes: list[int] = Field(
        min_length=1, description="a permutation of the per-input axes (no batch axis)"
    )


@register
class Permute(Operator):
    type = "permute"
    Spec = PermuteSpec

    def __init__(self, axes: tuple[int, ...]) -> None:
        axes = tuple(int(a) for a in axes)
        if sorted(axes) != list(range(len(axes))):
            raise SpecError(f"permute: axes {list(axes)} are not a permutation of "
                            f"0..{len(axes) - 1}")  # fmt: skip
        self.axes = axes

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        from ..layers import Dense, Flatten
        from ..model import Model

        w = rng.normal(size=(3, 12)) / 4
        return Model("permute", (2, 3, 2), (cls((2, 0, 1)), Flatten(), Dense(w)))

    fx_functions = ("torch.transpose", "torch.swapaxes", "torch.permute")
    fx_methods = ("transpose", "swapaxes", "permute")
    aten_ops = ("aten.transpose", "aten.swapaxes", "aten.permute", "aten.mT")

    @classmethod
    def from_fx(cls, node: Any, label: str, params: Any) -> Any:
        """``x.transpose(a, b)``, ``torch.transpose`` / ``swapaxes``; ``x.permute(*dims)``,
        ``x.permute(dims)``, ``torch.permute(x, dims)`` (nothing for the identity)."""
        from ..importers.from_torch import _arg, _unary
        from ..importers.graph import _Unsupported
        from ..importers.torch_layout import constant_dims, permute_build, transpose_build

        t = node.target
        if (t if isinstance(t, str) else t.__name__) == "permute":
            dims = node.args[1:] or (node.kwargs.get("dims"),)
            return _unary(node, label, permute_build(constant_dims(dims)))
        a, b = _arg(node, 1, "dim0"), _arg(node, 2, "dim1")
        if not (isinstance(a, int) and isinstance(b, int)):
            raise _Unsupported("dims are not constants")
        return _unary(node, label, transpose_build(a, b))

    @classmethod
    def from_aten(cls, n: Any, label: str, ctx: Any) -> Any:
        from ..importers.torch_export import _kind, _unary
        from ..importers.torch_layout import permute_build, transpose_build

        kind = _kind(n)
        if kind == "aten.permute":
            return _unary(n, label, ctx, permute_build([int(d) for d in n.args[1]]))
        if kind == "aten.mT":
            return _unary(n, label, ctx, transpose_build(-2, -1))
        return _unary(n, label, ctx, transpose_build(int(n.args[1]), int(n.args[2])))

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        return cls(tuple(spec.axes))

    def spec_fields(self, put: Put) -> dict[str, Any]:
        return {"axes": list(self.axes)}

    def out_shape(self, shape: Shape) -> Shape:
        if len(shape) != len(self.axes):
            raise SpecError(f"permute: axes {list(self.axes)} for an input of shape {list(shape)}")
        return tuple(shape[a] for a in self.axes)

    def _batched(self) -> tuple[int, ...]:
        return (0, *(a + 1 for a in self.axes))

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        return np.ascontiguousarray(np.transpose(x, self._batched()))

    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int) -> Step:
        from ..bounds.backend import current, portable
        from ..bounds.steps import Step

        x, r = xs[0], rs[0]
        y = self.forward(x, ctx.arith)
        inverse = tuple(int(i) for i in np.argsort(self.axes))
        out_shape = y.shape[1:]

        @portable
        def adjoint(lam: Array) -> Array:
            N, R = lam.shape[:2]
            axes = (0, 1, *(a + 2 for a in inverse))
            rows = current().permute(lam.reshape(N, R, *out_shape), axes)
            return rows.reshape(N, R, -1)  # a copy where the axes moved

        image = self.forward(r.reshape(x.shape), ctx.arith).reshape(x.shape[0], -1)
        return Step(y, adjoint, image, group)

    def rule(self, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
        # output unit o carries the error of input unit src[o]: a gather, boxes stay diagonal
        N = enc.value.shape[0]
        idx = np.arange(enc.n).reshape(1, *enc.value.shape[1:])
        src = np.broadcast_to(np.transpose(idx, self._batched()).reshape(1, -1), (N, enc.n))
        y = self.forward(enc.value, ctx.arith)
        return enc.gather_rows(y, src, np.ones((N, enc.n)), overlapping=False)

    def torch_forward(self, xs: list[Any], params: dict[str, Any]) -> Any:
        return xs[0].permute(*self._batched())

    def mpmath_forward(self, xs: list[Any]) -> Any:
        return np.transpose(xs[0], self._batched())

    def __repr__(self) -> str:
        return f"Permute(axes={list(self.axes)})"
