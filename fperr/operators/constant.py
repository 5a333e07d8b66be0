"""constant: a parameter tensor as a graph node (a ViT's class token, its
positional embedding), combined with activations by the ``add`` and ``concat``
merges.

It reads one node only for the batch size N and outputs the parameter P
rounded to storage, broadcast to ``(N, *shape)``.  Nothing flows from its input:
the adjoint returns zero rows and the image is zero.  Its whole error is the
storage rounding P^ - P, known exactly: one signed deterministic generator, as
:func:`fperr.bounds.rules.parameter_rounding` treats weights (Higham 2002,
section 2.1: fl(p) = p (1 + delta), here with delta computed, not bounded).
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


class ConstantSpec(OperatorSpec):
    type: Literal["constant"]
    weight: str = Field(description="key of the parameter array; its shape is the output's "
                                    "per-input shape")  # fmt: skip


@register
class Constant(Operator):
    type = "constant"
    Spec = ConstantSpec

    def __init__(self, weight: Array) -> None:
        w = np.asarray(weight, dtype=np.float64)
        if w.ndim < 1 or w.size == 0:
            raise SpecError(f"constant: weight must be a nonempty array of rank >= 1, "
                            f"got shape {list(w.shape)}")  # fmt: skip
        if not np.all(np.isfinite(w)):
            raise SpecError("constant: weight holds a non-finite value")
        self.weight = w

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        from ..layers import Add, Dense, Flatten
        from ..model import Model

        p = rng.normal(size=(3, 4))
        w = rng.normal(size=(3, 12)) / 4
        layers = (cls(p), Add(), Flatten(), Dense(w))
        return Model("constant", (3, 4), layers, wiring=((-1,), (-1, 0), (1,), (2,)))

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        return cls(weights.need(spec.weight, where))

    def spec_fields(self, put: Put) -> dict[str, Any]:
        return {"weight": put("weight", self.weight)}

    def out_shape(self, shape: Shape) -> Shape:
        return tuple(int(d) for d in self.weight.shape)

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        p = arith.store(self.weight)
        return np.ascontiguousarray(np.broadcast_to(p, (x.shape[0], *self.weight.shape)))

    def _rounding(self, arith: Arithmetic) -> Array:
        """P^ - P: the storage rounding of the parameter, exact in float64 (both
        are float64 numbers within a factor 2 of each other, Sterbenz)."""
        return arith.store(self.weight) - self.weight

    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int) -> Step:
        from ..bounds.backend import current, portable
        from ..bounds.steps import Step, _signed

        x = xs[0]
        y = self.forward(x, ctx.arith)
        N, n_in = x.shape[0], int(np.prod(x.shape[1:]))

        @portable
        def adjoint(lam: Array) -> Array:  # the output does not depend on the input
            return current().zeros((lam.shape[0], lam.shape[1], n_in))

        image = np.zeros((N, self.weight.size))
        return Step(y, adjoint, image, group, signed=_signed(self._rounding(ctx.arith), y))

    def rule(self, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
        from ..bounds.enclosure import Enclosure

        y = self.forward(enc.value, ctx.arith)
        return ctx.add_signed(Enclosure(y), self._rounding(ctx.arith), index)

    def work(self, in_shapes: list[Shape], out_shape: Shape) -> float:
        return 0.0  # no arithmetic: the value is the stored parameter

    def torch_forward(self, xs: list[Any], params: dict[str, Any]) -> Any:
        w = params["weight"]
        return w.unsqueeze(0).expand(xs[0].shape[0], *w.shape)

    def mpmath_forward(self, xs: list[Any]) -> Any:
        import mpmath

        p = np.vectorize(mpmath.mpf, otypes=[object])(self.weight)
        out = np.empty((xs[0].shape[0], *self.weight.shape), dtype=object)
        out[...] = p  # exact P (float64 values are exact in any mpf precision)
        return out

    def __repr__(self) -> str:
        return f"Constant(shape={list(self.weight.shape)})"
