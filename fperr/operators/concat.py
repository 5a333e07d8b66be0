"""concat: inputs joined along one per-input axis (0: channels), exact; rows
split back to the inputs they came from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from ..errors import SpecError
from .base import Array, Operator, OperatorSpec, Put, Shape, Weights, register
from .checks import NonNegInt, check_ints

if TYPE_CHECKING:
    from ..arith import Arithmetic
    from ..bounds.rules import Context
    from ..bounds.steps import Step
    from ..model import Model


class ConcatSpec(OperatorSpec):
    type: Literal["concat"]
    axis: NonNegInt = Field(0, description="axis of the per-input shape (0: channels)")


@register
@dataclass(frozen=True, eq=False)
class Concat(Operator):
    """Inputs joined along ``axis`` of the per-input shape (0: channels); exact."""

    axis: int = 0
    type = "concat"
    Spec = ConcatSpec
    arity = 0  # any number >= 2

    def __post_init__(self) -> None:
        check_ints("concat", "axis", (self.axis,), 0, 1)

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        """Two convolutions of one image joined along the channels, then a head."""
        from ..model import Model
        from .conv2d import Conv2d
        from .dense import Dense
        from .flatten import Flatten

        a = Conv2d(rng.normal(size=(2, 1, 2, 2)) / 2)
        b = Conv2d(rng.normal(size=(3, 1, 2, 2)) / 2, rng.normal(size=3) / 4)
        layers = (a, b, cls(0), Flatten(), Dense(rng.normal(size=(3, 5 * 3 * 3)) / 4))
        wiring = ((-1,), (-1,), (0, 1), (2,), (3,))
        return Model("concat", (1, 4, 4), layers, wiring=wiring,
                     names=("a", "b", "ab", "flat", "out"))  # fmt: skip

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        return cls(spec.axis)

    def spec_fields(self, put: Put) -> dict[str, Any]:
        return {"axis": self.axis}

    def merge_shape(self, shapes: list[Shape]) -> Shape:
        a = self.axis
        ok = len(shapes) >= 2 and all(len(s) > a for s in shapes)
        ok = ok and all(s[:a] + s[a + 1 :] == shapes[0][:a] + shapes[0][a + 1 :] for s in shapes)
        if not ok:
            raise SpecError(f"concat: inputs {[list(s) for s in shapes]} differ outside axis {a}")
        return (*shapes[0][:a], sum(s[a] for s in shapes), *shapes[0][a + 1 :])

    def merge(self, xs: list[Array], arith: Arithmetic) -> Array:
        return np.concatenate(xs, axis=self.axis + 1)

    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int) -> Step:
        from ..bounds.steps import concat_step

        return concat_step(xs, rs, self.axis, group)

    def torch_forward(self, xs: list[Any], params: dict[str, Any]) -> Any:
        from ..hardware.torch_env import require_torch

        return require_torch().cat(xs, dim=self.axis + 1)  # +1: the batch axis

    def mpmath_forward(self, xs: list[Any]) -> Any:
        return np.concatenate(xs, axis=self.axis + 1)  # +1: the batch axis
