"""sum: the sum over some axes of each input (``torch.sum(x, dim=...)``, ``x.sum(dim)``).

A kernel adds the n terms in the accumulator (any order) and stores the sum
once: n - 1 additions, gamma_{n-1} sum |x_i| (Higham 2002, eq. 4.4 and Lemma
3.1), plus one rounding per term where the accumulator does not hold the
storage format's values, the bottom of the exponent range (a flushing
accumulator's additions, terms that underflow on entry), overflow of some
order's partial sum, and the storage rounding of the result -- none when the
accumulator has the storage's values (the sum is stored as it is).

The reduction machinery (axes, shapes, the emulated sum, the step and the
zonotope rule) is shared with :class:`~fperr.operators.mean.Mean`, which
subclasses this one and divides (its own terms: the quotient's roundings).
"""

from __future__ import annotations

import builtins
import math
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from ..errors import SpecError
from .base import Array, Operator, OperatorSpec, Put, Shape, Weights, check_axis, register

if TYPE_CHECKING:
    from ..arith import Arithmetic
    from ..bounds.enclosure import Enclosure
    from ..bounds.rules import Context
    from ..bounds.steps import Step
    from ..model import Model


class SumSpec(OperatorSpec):
    type: Literal["sum"]
    axes: list[int] = Field(min_length=1, description="per-input axes to sum over")
    keepdims: bool = Field(False, description="keep the reduced axes with length 1")


def emulated_reduce(x: Array, axes: tuple[int, ...], arith: Any, divide: bool) -> Array:
    """Sum along ``axes`` in the accumulator in ``arith``'s order, (``divide``) one
    quotient by n rounded to the accumulator, one storage rounding (reduced axes
    dropped)."""
    from ..accumulation import AccumulationModel
    from ..accumulation import sum as acc_sum
    from ..rounding import round as fround

    k = len(axes)
    moved = np.moveaxis(x, axes, tuple(range(x.ndim - k, x.ndim)))
    n = math.prod(moved.shape[x.ndim - k :])
    terms = moved.reshape(*moved.shape[: x.ndim - k], n)
    acc = arith.accumulate
    model = AccumulationModel(acc, acc, arith.order, arith.block)  # no rounding to storage
    with np.errstate(over="ignore", invalid="ignore"):
        s = acc_sum(terms, model, axis=-1)
        if divide:
            s = fround(s / n, acc)  # float64 quotient: one rounding
    return np.asarray(arith.store(s))


@register
class Sum(Operator):
    type = "sum"
    Spec: ClassVar[builtins.type[OperatorSpec]] = SumSpec
    divides: ClassVar[bool] = False  # Mean: the sum divided by n

    def __init__(self, axes: tuple[int, ...], keepdims: bool = False) -> None:
        if not axes:
            raise SpecError(f"{self.type}: axes must name at least one axis")
        self.axes = tuple(int(a) for a in axes)
        self.keepdims = bool(keepdims)

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        from ..layers import Dense, Flatten
        from ..model import Model

        w = rng.normal(size=(3, 8)) / 2
        return Model(cls.type, (2, 5, 4), (cls((1,), keepdims=True), Flatten(), Dense(w)))

    fx_functions = ("torch.sum",)
    fx_methods = ("sum",)

    @classmethod
    def from_fx(cls, node: Any, label: str, params: Any) -> Any:
        """x.sum(dims) and torch.sum(x, dims): the sum operator over per-input axes."""
        from ..importers.from_torch import _arg, _unary
        from ..importers.graph import _Unsupported

        dims = _arg(node, 1, "dim")
        if dims is None or _arg(node, 3, "dtype") is not None:
            raise _Unsupported("sum over every axis or with a dtype")
        keepdim = bool(_arg(node, 2, "keepdim", False))

        def build(shape: Shape) -> list[Any]:
            nd = len(shape) + 1
            given = [int(v) for v in ((dims,) if isinstance(dims, int) else dims)]
            if not all(-nd <= v < nd for v in given):
                raise SpecError(f"sum over dims {dims}: out of range for rank {nd}")
            d = sorted(v % nd for v in given)
            if 0 in d:
                raise SpecError(f"sum over dims {dims}: the batch axis cannot be summed")
            return [cls(tuple(a - 1 for a in d), keepdim)]

        return _unary(node, label, build)

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        return cls(tuple(spec.axes), spec.keepdims)

    def spec_fields(self, put: Put) -> dict[str, Any]:
        return {"axes": list(self.axes), "keepdims": self.keepdims}

    # -- shapes and values ---------------------------------------------------------------
    def _reduced(self, ndim: int) -> tuple[int, ...]:
        """The reduced per-input axes, nonnegative and sorted (each once)."""
        ax = sorted({check_axis(self.type, a, ndim) for a in self.axes})
        if len(ax) != len(self.axes):
            raise SpecError(f"{self.type}: axes {list(self.axes)} name an axis twice")
        return tuple(ax)

    def _batched(self, x: Array) -> tuple[int, ...]:
        return tuple(a + 1 for a in self._reduced(x.ndim - 1))

    def _reduce(self, v: Array, ax: tuple[int, ...], keepdims: bool) -> Array:
        """The float64 reduction (sum; Mean: mean)."""
        return v.sum(axis=ax, keepdims=keepdims)

    def out_shape(self, shape: Shape) -> Shape:
        ax = self._reduced(len(shape))
        if self.keepdims:
            return tuple(1 if i in ax else d for i, d in enumerate(shape))
        return tuple(d for i, d in enumerate(shape) if i not in ax)

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        from ..arith import Emulated

        ax = self._batched(x)
        if isinstance(arith, Emulated):
            y = emulated_reduce(x, ax, arith, self.divides)
        else:
            y = arith.func(lambda v: self._reduce(v, ax, False), x)
        return np.expand_dims(y, ax) if self.keepdims else y

    # -- bounds ------------------------------------------------------------------------------
    def accumulation(self, mag: Array, n: int, ctx: Context) -> Array:
        """Bound on |s_run - sum(x_run)| before the storage rounding, for terms of
        total magnitude <= ``mag`` (inf where some order may overflow)."""
        from ..bounds import exponent_range as xr

        a = ctx.arith
        inside = a.accumulate.contains(a.storage)
        ops = n - 1 if inside else n  # additions (+ each term's rounding on entry)
        under = xr.dot_underflow(float(n), n, a.u_acc, a.accumulate, inside,
                                 a.acc_rounding == "truncate")  # fmt: skip
        acc = ctx.gamma(ops) * mag + under
        return np.where(ctx.sum_may_overflow(mag, n, under), np.inf, acc)

    def local(self, x: Array, r: Array, ctx: Context) -> tuple[Array, Array]:
        """(y, local): the computed result and a bound on |y_run - f(x_run)| for every
        run, its input x_run within 2r of ``x`` (magnitudes |x| + 2r, as every rule)."""
        from ..bounds.enclosure import half_ulp
        from ..formats import gamma

        a = ctx.arith
        y = self.forward(x, a)
        ax = self._batched(x)
        n = math.prod(x.shape[i] for i in ax)
        red = lambda v: self._reduce(v, ax, self.keepdims)  # noqa: E731
        mag = red(np.abs(x) + 2 * r)  # >= f(|x_run|)
        acc = self.accumulation(mag, n, ctx)
        one = n == 1 and a.accumulate.contains(a.storage)  # the term itself, unrounded
        if not self.divides and (one or a.accumulate.same_values(a.storage)):
            return y, acc  # the accumulator's sum is a storage value: stored exactly
        # |f(x_run)| <= |f(x)| + 2 f(r): sharper than mag under cancellation
        # (the float64 reduction errs by at most gamma_{n+1}(2^-53) f(|x|), Higham eq. 3.5)
        near = np.abs(red(x)) + gamma(n + 1, 2.0**-53) * red(np.abs(x)) + 2 * red(r)
        top = np.minimum(mag, near) + acc  # >= |any run's result before storage|
        return y, acc + half_ulp(top, a.storage)

    def _pull(self, rows: Array, n: int) -> Array:
        """Rows of the output pulled back through the reduction's weights (1; Mean: 1/n)."""
        return rows

    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int) -> Step:
        from ..bounds.backend import current, portable
        from ..bounds.steps import Step
        from ..formats import gamma

        x, r = xs[0], rs[0]
        y, local = self.local(x, r, ctx)
        ax = self._batched(x)
        N, n_in = x.shape[0], x[0].size
        n = n_in // y[0].size
        kept = np.expand_dims(y, ax).shape if not self.keepdims else y.shape
        # |A| r = f(r) (weights > 0), rounded up over the float64 reduction's error
        image = self._reduce(r, ax, False).reshape(N, -1) * (1 + gamma(n + 1, 2.0**-53))

        @portable
        def adjoint(lam: Array) -> Array:
            R = lam.shape[1]
            rows = self._pull(lam.reshape(N, R, *kept[1:]), n)
            return current().broadcast_to(rows, (N, R, *x.shape[1:])).reshape(N, R, n_in)

        return Step(y, adjoint, image, group, [(local.reshape(N, -1), True)])

    def rule(self, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
        y, local = self.local(enc.value, enc.radius(), ctx)
        ax = self._batched(enc.value)

        def apply(cols: Array) -> Array:
            return self._reduce(cols, ax, self.keepdims)

        out = enc.linear(y, apply, ctx.matrix_of(self, enc.value.shape[1:], apply))
        return out.add_box(local, index, random=True)

    def work(self, in_shapes: list[Shape], out_shape: Shape) -> float:
        return float(math.prod(in_shapes[0]))

    def products(self, in_shapes: list[Shape], out_shape: Shape) -> int:
        return math.prod(in_shapes[0])  # n terms per output

    # -- other executors ---------------------------------------------------------------------
    def torch_forward(self, xs: list[Any], params: dict[str, Any]) -> Any:
        x = xs[0]
        return x.sum(dim=self._batched(x), keepdim=self.keepdims)

    def mpmath_forward(self, xs: list[Any]) -> Any:
        x = xs[0]
        return x.sum(axis=self._batched(x), keepdims=self.keepdims)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(axes={list(self.axes)}, keepdims={self.keepdims})"
