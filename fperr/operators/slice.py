"""slice: a contiguous range of one per-input axis (``x[:, a:b]``, ``torch.narrow``).

Python semantics with step 1 (negative ``start``/``stop`` count from the end),
the result must be nonempty.  Values move without arithmetic: output unit o
carries the error of the input unit it came from, rows pull back by scattering
into zeros, the radius is sliced, and no local error is added.  With a reshape
after it, it picks a ViT's class token (axis 0, 0..1).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import SpecError
from .base import Array, Operator, OperatorSpec, Put, Shape, Weights, check_axis, register

if TYPE_CHECKING:
    from ..arith import Arithmetic
    from ..bounds.enclosure import Enclosure
    from ..bounds.rules import Context
    from ..bounds.steps import Step
    from ..model import Model


class SliceSpec(OperatorSpec):
    type: Literal["slice"]
    axis: int
    start: int
    stop: int


@register
class Slice(Operator):
    type = "slice"
    Spec = SliceSpec

    def __init__(self, axis: int, start: int, stop: int) -> None:
        self.axis, self.start, self.stop = int(axis), int(start), int(stop)

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        from ..layers import Dense, Flatten
        from ..model import Model

        w = rng.normal(size=(3, 12)) / 4
        return Model("slice", (3, 4, 2), (cls(1, 1, -1), Flatten(), Dense(w)))

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        return cls(spec.axis, spec.start, spec.stop)

    def spec_fields(self, put: Put) -> dict[str, Any]:
        return {"axis": self.axis, "start": self.start, "stop": self.stop}

    def _range(self, shape: Shape) -> tuple[int, int, int]:
        """(axis, start, stop) as nonnegative indices for a per-input ``shape``."""
        ax = check_axis("slice", self.axis, len(shape))
        n = shape[ax]
        lo, hi = (self.start + n if self.start < 0 else self.start,
                  self.stop + n if self.stop < 0 else self.stop)  # fmt: skip
        if not 0 <= lo < hi <= n:
            raise SpecError(f"slice: {self.start}..{self.stop} is empty or out of range for "
                            f"axis {self.axis} of length {n} (shape {list(shape)})")  # fmt: skip
        return ax, lo, hi

    def out_shape(self, shape: Shape) -> Shape:
        ax, lo, hi = self._range(shape)
        return (*shape[:ax], hi - lo, *shape[ax + 1 :])

    def _index(self, shape: Shape) -> tuple[slice, ...]:
        """The index of a batch (N, *shape)."""
        ax, lo, hi = self._range(shape)
        return (slice(None),) * (ax + 1) + (slice(lo, hi),)

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        return np.ascontiguousarray(x[self._index(x.shape[1:])])

    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int) -> Step:
        from ..bounds.backend import current, portable
        from ..bounds.steps import Step

        x, r = xs[0], rs[0]
        y = self.forward(x, ctx.arith)
        index = self._index(x.shape[1:])

        @portable
        def adjoint(lam: Array) -> Array:  # scatter: the transpose of a selection
            N, R = lam.shape[:2]
            rows = current().zeros((N, R, *x.shape[1:]))
            rows[(slice(None), *index)] = lam.reshape(N, R, *y.shape[1:])
            return rows.reshape(N, R, -1)

        image = self.forward(r.reshape(x.shape), ctx.arith).reshape(x.shape[0], -1)
        return Step(y, adjoint, image, group)

    def rule(self, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
        # output unit o carries the error of input unit src[o]: a gather, boxes stay diagonal
        N = enc.value.shape[0]
        y = self.forward(enc.value, ctx.arith)
        units = np.arange(enc.n).reshape(1, *enc.value.shape[1:])
        src = units[self._index(enc.value.shape[1:])].reshape(1, -1)
        src = np.broadcast_to(src, (N, src.size))
        return enc.gather_rows(y, src, np.ones(src.shape), overlapping=False)

    def torch_forward(self, xs: list[Any], params: dict[str, Any]) -> Any:
        ax, lo, hi = self._range(tuple(xs[0].shape[1:]))
        return xs[0].narrow(ax + 1, lo, hi - lo)

    def mpmath_forward(self, xs: list[Any]) -> Any:
        return xs[0][self._index(xs[0].shape[1:])]

    def __repr__(self) -> str:
        return f"Slice(axis={self.axis}, start={self.start}, stop={self.stop})"
