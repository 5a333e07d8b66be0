"""flatten: ``torch.nn.Flatten`` (every per-input axis into one).

Values move without arithmetic: each output unit carries the error of the
input unit it came from, in the same order, so rows pass back unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .base import Array, Operator, OperatorSpec, Shape, Weights, register

if TYPE_CHECKING:
    from ..arith import Arithmetic
    from ..bounds.enclosure import Enclosure
    from ..bounds.quick import Quick
    from ..bounds.rules import Context
    from ..bounds.steps import Step
    from ..model import Model


class FlattenSpec(OperatorSpec):
    type: Literal["flatten"]


class MovesValues(Operator):
    """What flatten, reshape and inference-mode dropout share: the output is the
    input's values in the same order, so every bound rule is the identity on errors."""

    moves_units = True

    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int) -> Step:
        from ..bounds.steps import shape_step

        return shape_step(self, xs[0], rs[0], ctx, group)

    def has_quick(self) -> bool:
        return True

    def quick(self, q: Quick, lo: Context, ref: Context) -> Quick:
        return q.moved(lambda x: self.forward(x, lo.arith))

    def rule(self, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
        from ..bounds.rules import shape_rule

        return shape_rule(self, enc, ctx, index)

    def apriori(self, lo: Array, hi: Array, r: Array, arith: Any,
                out_shape: Shape) -> tuple[Array, Array, Array]:  # fmt: skip
        return lo.reshape(out_shape), hi.reshape(out_shape), r.reshape(out_shape)

    def mpmath_forward(self, xs: list[Any]) -> Any:
        x = xs[0]
        return x.reshape((x.shape[0], *self.out_shape(x.shape[1:])))


@register
@dataclass(frozen=True, eq=False)
class Flatten(MovesValues):
    type = "flatten"
    Spec = FlattenSpec
    torch_module_classes = (("Flatten", False), ("Unflatten", False))

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        from ..model import Model
        from .dense import Dense

        return Model("flatten", (2, 3, 2), (cls(), Dense(rng.normal(size=(3, 12)) / 4)))

    # a flatten to vectors is this operator; a partial one (start_dim > 1 or end_dim
    # before the last axis) is a reshape (builders._flatten_layers chooses by shape)
    fx_functions = ("torch.flatten",)
    fx_methods = ("flatten",)
    aten_ops = ("aten.flatten",)

    @classmethod
    def from_fx(cls, node: Any, label: str, params: Any) -> Any:
        """torch.flatten(x, start_dim, end_dim) and x.flatten(...)."""
        from ..importers.builders import _flatten_dims
        from ..importers.from_torch import _arg, _unary

        s, e = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
        return _unary(node, label, lambda shape: _flatten_dims(shape, s, e))

    @classmethod
    def from_aten(cls, n: Any, label: str, ctx: Any) -> Any:
        from ..importers.builders import _flatten_dims
        from ..importers.torch_export import _a, _unary

        s, e = int(_a(n, 1, "start_dim", 0)), int(_a(n, 2, "end_dim", -1))
        return _unary(n, label, ctx, lambda shape: _flatten_dims(shape, s, e))

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        return cls()

    @classmethod
    def from_torch_module(cls, mod: Any) -> Any:
        """nn.Flatten and nn.Unflatten: a flatten or a reshape of the per-input shape
        (nothing where it stays)."""
        from torch import nn

        from ..importers.builders import _flatten_dims
        from ..importers.from_torch import _unflatten

        if isinstance(mod, nn.Unflatten):
            dim, sizes = int(mod.dim), tuple(int(x) for x in mod.unflattened_size)
            return _unflatten(dim, sizes), None, False
        s, e = int(mod.start_dim), int(mod.end_dim)
        return (lambda shape: _flatten_dims(shape, s, e)), None, False

    def out_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        return x.reshape(x.shape[0], -1)

    def torch_module(self, in_shapes: list[Shape]) -> Any:
        from ..hardware.torch_env import require_torch

        return require_torch().nn.Flatten()
