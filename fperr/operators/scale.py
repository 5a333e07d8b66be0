"""scale: y = fl(c x) for a constant c (attention's 1 / sqrt(d)).

PyTorch computes ``half_tensor * python_float`` in its float32 "opmath": the
scalar is converted to float32 (``iter.original_scalar_value<opmath_t>``, not
to the tensor's dtype), the product of the two float32 values is rounded to
float32 and the result rounded to the tensor's dtype.  The model here: c_acc =
c rounded to the accumulator, p = fl_acc(c_acc x), y = fl_storage(p).  For
every run (input x_run within 2r of the computed x, exact input within r of
every run):

    c x_ex - y_run = c (x_ex - x_run) + (c - c_acc) x_run + (c_acc x_run - y_run),

so the linear part is c, the scale's own rounding is the known vector
s = (c_acc - c) x (one signed generator, as :func:`fperr.bounds.rules.
parameter_rounding` keeps a weight's rounding) plus the box 2 |c_acc - c| r,
and the local error is the accumulator rounding u_acc |c_acc| m (Higham 2002,
eq. 2.4) and the storage rounding at m = |x| + 2r (a double rounding: two
boxes).  When c_acc has few significant bits (a power of two: 1/sqrt(64)) the
product of a storage value is exact in the accumulator above its normal
range, and for a power of two it is a storage value above storage's normal
range: those roundings are 0 there.
"""

from __future__ import annotations

import math
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
    from ..formats import Format
    from ..model import Model


class ScaleSpec(OperatorSpec):
    type: Literal["scale"]
    factor: float = Field(description="the constant c of y = c x (finite)")


def significant_bits(c: float) -> int:
    """Bits of the significand of the float64 ``c`` from its leading to its last
    nonzero bit (1 for a power of two, 0 for 0)."""
    if c == 0:
        return 0
    m, _ = math.frexp(abs(c))  # m in [0.5, 1): m 2^53 is an integer
    q = int(m * 2.0**53)
    return 53 - ((q & -q).bit_length() - 1)


class ScaleTerms:
    """The scale's local terms at computed input ``x`` and radius ``r`` (arrays like x)."""

    def __init__(self, c: float, x: Array, r: Array, ctx: Context) -> None:
        from ..bounds.enclosure import half_ulp
        from ..formats import gamma
        from ..rounding import round as fround

        a = ctx.arith
        acc, st = a.accumulate, a.storage
        c_acc = float(fround(np.float64(c), acc))
        dc = c_acc - c  # exact in float64: c and its rounding share the binade's ulp grid
        hi = np.abs(c_acc) * (np.abs(x) + 2 * r)  # |c_acc x_run| for every run
        lo = np.abs(c_acc) * np.maximum(np.abs(x) - 2 * r, 0.0)
        self.value = a.store(fround(x * c_acc, acc))
        # accumulator: exact for few bits of c_acc above the normal range, else u_acc |p|
        few_bits = significant_bits(c_acc) + st.p <= acc.p
        e_acc = np.where(few_bits, 0.0, a.u_acc * hi)
        e_acc = np.where(lo < acc.smallest_normal, e_acc + _below(hi, acc, ctx.eta()), e_acc)
        # storage: a power of two keeps a storage value a storage value (above normal)
        exact = few_bits and significant_bits(c_acc) == 1 and acc.contains(st)
        m = hi + e_acc
        e_st = half_ulp(m + half_ulp(m, st), st)
        if exact:
            e_st = np.where(lo >= st.smallest_normal, 0.0, np.minimum(e_st, _below(m, st, 0.0)))
            e_st = np.where(m <= st.max, e_st, np.inf)
        self.local = np.where(hi > 0, e_acc + e_st, 0.0)  # 0 x is 0 in every run
        # the scale's rounding: s = dc x (float64, relative error <= 2^-53 above its
        # underflow threshold) plus dc (x_run - x), |x_run - x| <= 2r
        self.signed: Array | None = dc * x if dc else None
        self.data = abs(dc) * (2 * r + gamma(2, 2.0**-53) * np.abs(x)) + (2.0**-1074 if dc else 0.0)


def _below(m: Array, fmt: Format, eta: float) -> Array:
    """Largest rounding error of a result of magnitude <= m that may fall below
    ``fmt``'s normal range: half the subnormal spacing, or (flushing) all of it."""
    from ..bounds.enclosure import half_ulp

    return np.maximum(half_ulp(np.minimum(m, fmt.smallest_normal), fmt), eta)


@register
class Scale(Operator):
    type = "scale"
    Spec = ScaleSpec

    def __init__(self, factor: float) -> None:
        factor = float(factor)
        if not math.isfinite(factor):
            raise SpecError(f"scale: factor must be finite, got {factor}")
        self.factor = factor

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        from ..layers import Dense
        from ..model import Model

        w1, w2 = rng.normal(size=(6, 5)) / 2, rng.normal(size=(3, 6)) / 2
        return Model("scale", (5,), (Dense(w1, rng.normal(size=6) * 0.1),
                                     cls(1 / math.sqrt(6)), Dense(w2)))  # fmt: skip

    fx_functions = ("operator.truediv", "torch.div")
    fx_methods = ("div",)
    aten_ops = ("aten.div",)

    @classmethod
    def from_fx(cls, node: Any, label: str, params: Any) -> Any:
        """x / c for a constant power of two c (attention's 1 / sqrt(d) for d a power
        of 4): this operator with factor 1 / c, the same rounded value."""
        from torch.fx import Node

        from ..importers.builders import _const
        from ..importers.from_torch import _arg, _unary
        from ..importers.graph import _Unsupported
        from ..importers.torch_layout import power_of_two

        x, c = node.args[0] if node.args else None, _arg(node, 1, "other")
        if not isinstance(x, Node) or params(x) is not None or isinstance(c, Node):
            raise _Unsupported("division of or by a tensor")
        if node.kwargs.get("rounding_mode") is not None:
            raise _Unsupported("rounding_mode")
        if not power_of_two(c):
            raise _Unsupported(f"division by {c!r}: only by a power of two (x / c and "
                               "x * (1/c) round differently otherwise); multiply by the "
                               "reciprocal")  # fmt: skip
        return _unary(node, label, _const([cls(1.0 / float(c))]))

    @classmethod
    def from_aten(cls, n: Any, label: str, ctx: Any) -> Any:
        from ..importers.builders import _const
        from ..importers.graph import _Unsupported
        from ..importers.torch_export import _scalar, _unary

        if n.kwargs.get("rounding_mode") is not None:
            raise _Unsupported("rounding_mode")
        return _unary(n, label, ctx, _const([cls(_scalar(n, True))]))

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        return cls(spec.factor)

    def spec_fields(self, put: Put) -> dict[str, Any]:
        return {"factor": self.factor}

    def out_shape(self, shape: Shape) -> Shape:
        return tuple(shape)

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        from ..arith import Exact
        from ..rounding import round as fround

        if isinstance(arith, Exact):
            return x * self.factor
        # the scalar held in the accumulator (torch's opmath), one product rounded there
        c_acc = float(fround(np.float64(self.factor), arith.accumulate))
        return arith.store(fround(x * c_acc, arith.accumulate))

    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int) -> Step:
        from ..bounds.backend import portable
        from ..bounds.steps import Step, _local_boxes, _signed

        x = xs[0]
        r = rs[0].reshape(x.shape)
        t = ScaleTerms(self.factor, x, r, ctx)
        c = self.factor
        image = (abs(c) * r).reshape(x.shape[0], -1)
        return Step(t.value, portable(lambda lam: c * lam), image, group,
                    _local_boxes(ctx, t.local, t.data), _signed(t.signed, t.value))  # fmt: skip

    def rule(self, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
        x = enc.value
        t = ScaleTerms(self.factor, x, enc.radius().reshape(x.shape), ctx)
        out = enc.scale_rows(t.value, np.full(x.shape, self.factor))
        return ctx.add_signed(ctx.add_local(out, t.local, t.data, index), t.signed, index)

    def work(self, in_shapes: list[Shape], out_shape: Shape) -> float:
        return float(math.prod(out_shape))

    def torch_forward(self, xs: list[Any], params: dict[str, Any]) -> Any:
        return xs[0] * self.factor

    def mpmath_forward(self, xs: list[Any]) -> Any:
        import mpmath

        return xs[0] * mpmath.mpf(self.factor)

    def __repr__(self) -> str:
        return f"Scale(factor={self.factor!r})"
