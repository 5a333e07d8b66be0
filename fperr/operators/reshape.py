"""reshape: a new per-input shape of the same size (sizes explicit, no -1).

Values move without arithmetic, in order: errors keep their units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from .base import Array, Operator, OperatorSpec, Put, Shape, Weights, register
from .checks import PosInt, check_ints, mismatch
from .flatten import MovesValues

if TYPE_CHECKING:
    from ..arith import Arithmetic
    from ..model import Model


class ReshapeSpec(OperatorSpec):
    type: Literal["reshape"]
    shape: list[PosInt] = Field(min_length=1, description="shape without the batch dimension")


@register
@dataclass(frozen=True, eq=False)
class Reshape(MovesValues):
    shape: Shape
    type = "reshape"
    Spec = ReshapeSpec

    def __post_init__(self) -> None:
        check_ints("reshape", "shape", self.shape, 1, None)  # no -1: sizes are explicit

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        from ..model import Model
        from .conv2d import Conv2d
        from .flatten import Flatten

        w = rng.normal(size=(2, 1, 2, 2)) / 2
        return Model("reshape", (12,), (cls((1, 3, 4)), Conv2d(w), Flatten()))

    fx_functions = ("torch.unflatten",)
    fx_methods = ("unflatten",)

    @classmethod
    def from_fx(cls, node: Any, label: str, params: Any) -> Any:
        """x.unflatten(dim, sizes) and torch.unflatten, as nn.Unflatten (a reshape; nothing
        when the sizes keep the shape)."""
        from ..importers.from_torch import _arg, _unary, _unflatten
        from ..importers.graph import _Unsupported

        dim, sizes = _arg(node, 1, "dim"), _arg(node, 2, "sizes")
        if not isinstance(dim, int) or not all(isinstance(d, int) for d in sizes or ()):
            raise _Unsupported("dim or sizes are not constants")
        return _unary(node, label, _unflatten(int(dim), tuple(int(x) for x in sizes)))

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        return cls(tuple(spec.shape))

    def spec_fields(self, put: Put) -> dict[str, Any]:
        return {"shape": list(self.shape)}

    def out_shape(self, shape: Shape) -> Shape:
        if math.prod(shape) != math.prod(self.shape):
            raise mismatch("reshape", f"{math.prod(self.shape)} elements", shape)
        return tuple(self.shape)

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        return x.reshape((x.shape[0], *self.shape))

    def torch_module(self, in_shapes: list[Shape]) -> Any:
        from ..hardware.torch_env import require_torch

        base: Any = require_torch().nn.Module

        class ReshapeModule(base):
            def __init__(self, target: Shape) -> None:
                super().__init__()
                self.target = tuple(target)

            def forward(self, x: Any) -> Any:
                return x.reshape((x.shape[0], *self.target))

            def extra_repr(self) -> str:
                return f"shape={list(self.target)}"

        return ReshapeModule(self.shape)
