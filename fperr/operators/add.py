"""add: y = a + b of two activations of one shape, rounded once to storage (a
projection shortcut ``proj(x) + f(x)``; both operands carry error).

The errors add, then one storage rounding at magnitudes |y| + 2 (r_a + r_b),
as a residual block's sum (:func:`fperr.bounds.rules.residual_local`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import SpecError
from .base import Array, Operator, OperatorSpec, Shape, Weights, register

if TYPE_CHECKING:
    from ..arith import Arithmetic
    from ..bounds.rules import Context
    from ..bounds.steps import Step
    from ..model import Model


class AddSpec(OperatorSpec):
    type: Literal["add"]


@register
@dataclass(frozen=True, eq=False)
class Add(Operator):
    type = "add"
    Spec = AddSpec
    arity = 2

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        """A projection shortcut: proj(x) + f(x), then a head."""
        from ..model import Model
        from .activation import Activation
        from .dense import Dense

        proj = Dense(rng.normal(size=(5, 4)) / 2)
        body = Dense(rng.normal(size=(5, 4)), rng.normal(size=5) / 4)
        layers = (proj, body, Activation("tanh"), cls(), Dense(rng.normal(size=(3, 5)) / 2))
        wiring = ((-1,), (-1,), (1,), (0, 2), (3,))
        return Model("add", (4,), layers, wiring=wiring, names=("proj", "body", "f", "sum", "out"))

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        return cls()

    def merge_shape(self, shapes: list[Shape]) -> Shape:
        if len(shapes) != 2 or shapes[0] != shapes[1]:
            got = [list(s) for s in shapes]
            raise SpecError(f"add: expects two inputs of one shape, got {got}")
        return shapes[0]

    def merge(self, xs: list[Array], arith: Arithmetic) -> Array:
        return arith.store(xs[0] + xs[1])

    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int) -> Step:
        from ..bounds.steps import add_step

        return add_step(xs, rs, ctx, group)

    def torch_forward(self, xs: list[Any], params: dict[str, Any]) -> Any:
        return xs[0] + xs[1]

    def mpmath_forward(self, xs: list[Any]) -> Any:
        return xs[0] + xs[1]  # elementwise mpf additions
