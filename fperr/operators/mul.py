"""mul: the elementwise product of two activations of one shape (``x * y``, ``torch.mul``).

Gates (SwiGLU's silu(x W) * (x V)), attention-free mixers, any product of two
computed values: both operands carry error.  With computed x^, y^ and radii
rx, ry (the exact values and every run lie within r of each other), the
product's error splits as the elementwise case of matmul's bilinear rule
(:mod:`.matmul`):

    x_ex y_ex - x_run y_run = y^ e_x + x^ e_y + (x1 e_y + e_x y1 - e_x e_y),

with x_ex = x^ + x1, e_x = x_ex - x_run (|x1|, |e_x| <= rx, likewise y), so
the linear part is diag(y^), diag(x^) (the mean-value form) and the remainder
is at most 3 rx ry, a deterministic box.

The rounding: PyTorch multiplies float16/bfloat16 tensors in its float32
"opmath" (both operands converted exactly, one float32 product, one rounding
to the tensor's dtype); the model here is p = fl_acc(x y), z = fl_storage(p).
A product of two storage values has at most 2 p_storage significant bits, so
it is exact in an accumulator with p_acc >= 2 p_storage within its normal
range (binary16 or bfloat16 in binary32: one storage rounding, Higham 2002,
eq. 2.4); otherwise it costs u_acc |p|, plus half the subnormal spacing where
it may fall below the normal range; and with an accumulator of the storage's
values the storage rounding is the identity.  Both are evaluated at
magnitudes (|x^| + 2 rx)(|y^| + 2 ry) >= |x_run y_run| for every run.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import SpecError
from .base import Array, Operator, OperatorSpec, Shape, Weights, register

if TYPE_CHECKING:
    from ..arith import Arithmetic
    from ..bounds.rules import Context
    from ..bounds.steps import Step
    from ..model import Model


class MulSpec(OperatorSpec):
    type: Literal["mul"]


def product_local(hi: Array, lo: Array, ctx: Context) -> Array:
    """Bound on |z - x y| for z = fl_storage(fl_acc(x y)) of storage values x, y with
    ``lo`` <= |x y| <= ``hi`` (both known for every run)."""
    from ..bounds.enclosure import half_ulp
    from .scale import _below

    a = ctx.arith
    acc, st = a.accumulate, a.storage
    exact = 2 * st.p <= acc.p  # 2 p_storage bits: exact in the accumulator's normal range
    e_acc = np.zeros_like(hi) if exact else a.u_acc * hi
    e_acc = np.where(lo < acc.smallest_normal, e_acc + _below(hi, acc, ctx.eta()), e_acc)
    m = hi + e_acc  # >= |p| for every run
    e_st: Array | float = 0.0  # p a storage value already (same values): storing is exact
    if not acc.same_values(st):
        e_st = half_ulp(m + half_ulp(m, st), st)  # inf where m may overflow storage
    local = np.where(m <= acc.max, e_acc + e_st, np.inf)  # the accumulator may overflow
    return np.where(hi > 0, local, 0.0)  # a zero factor in every run: the product is 0


@register
class Mul(Operator):
    type = "mul"
    Spec = MulSpec
    arity = 2
    sharpen = 0.02  # the remainder |e_x||e_y| is second order in the ranges (as matmul)

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        """A gate: two dense maps of one input (both carry error), their product, a head."""
        from ..layers import Dense
        from ..model import Model

        def lin(m: int, n: int) -> Dense:
            return Dense(rng.normal(size=(m, n)) / 2, rng.normal(size=m) * 0.1)

        layers = (lin(5, 6), lin(5, 6), cls(), lin(3, 5))
        wiring = ((-1,), (-1,), (0, 1), (2,))
        return Model("mul", (6,), layers, wiring=wiring, names=("a", "b", "ab", "out"))

    fx_functions = ("operator.mul", "operator.imul", "torch.mul")
    fx_methods = ("mul", "mul_")

    @classmethod
    def from_fx(cls, node: Any, label: str, params: Any) -> Any:
        """``x * y``, ``x *= y``, ``torch.mul(x, y)``, ``x.mul(y)`` of two computed values of
        one shape (both carry error); by a constant or a parameter: refused."""
        from torch.fx import Node

        from ..importers.from_torch import _arg
        from ..importers.graph import _Op, _Unsupported

        x = node.args[0] if node.args else node.kwargs.get("input")
        other = _arg(node, 1, "other")
        if not (isinstance(x, Node) and isinstance(other, Node)):
            raise _Unsupported()  # x * constant: not a shape query either
        if params(x) is not None or params(other) is not None:
            raise _Unsupported("mul by a parameter")
        return _Op(label, (x, other), node, merge=lambda shapes: cls())

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        return cls()

    def merge_shape(self, shapes: list[Shape]) -> Shape:
        self._check_arity(len(shapes))
        sa, sb = (tuple(s) for s in shapes)
        if sa != sb:
            raise SpecError(f"mul: needs two inputs of one shape (no broadcasting), got "
                            f"{list(sa)} and {list(sb)}")  # fmt: skip
        return sa

    def merge(self, xs: list[Array], arith: Arithmetic) -> Array:
        from ..arith import Exact
        from ..rounding import round as fround

        self._check_arity(len(xs))
        x, y = xs
        if isinstance(arith, Exact):
            return x * y
        # storage values of <= 24 bits: their float64 product is exact, rounded once to
        # the accumulator (torch's float32 opmath), then once to storage
        with np.errstate(over="ignore"):
            return arith.store(fround(x * y, arith.accumulate))

    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int) -> Step:
        from ..bounds.backend import on, portable
        from ..bounds.steps import Step

        x, y = xs
        rx, ry = rs[0].reshape(x.shape), rs[1].reshape(y.shape)
        N = x.shape[0]
        z = self.merge(xs, ctx.arith)
        ax, ay = np.abs(x), np.abs(y)
        hi = (ax + 2 * rx) * (ay + 2 * ry)  # |x_run y_run| for every run
        lo = np.maximum(ax - 2 * rx, 0.0) * np.maximum(ay - 2 * ry, 0.0)
        local = product_local(hi, lo, ctx)
        image = (ay * rx + ax * ry).reshape(N, -1)
        remainder = (3 * rx * ry).reshape(N, -1)
        fy, fx = y.reshape(N, 1, -1), x.reshape(N, 1, -1)

        @portable
        def adjoint(lam: Array) -> list[Array]:
            return [lam * on(fy), lam * on(fx)]  # Lambda diag(y^), Lambda diag(x^)

        step = Step(z, adjoint, image, group, [(remainder, False), (local.reshape(N, -1), True)])
        step.arity = 2
        return step

    def work(self, in_shapes: list[Shape], out_shape: Shape) -> float:
        return float(math.prod(out_shape))

    def torch_forward(self, xs: list[Any], params: dict[str, Any]) -> Any:
        return xs[0] * xs[1]

    def mpmath_forward(self, xs: list[Any]) -> Any:
        return xs[0] * xs[1]  # object arrays: mpf products

    def __repr__(self) -> str:
        return "Mul()"
