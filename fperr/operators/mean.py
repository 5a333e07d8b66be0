"""mean: the average over some axes of each input (``torch.mean(x, dim=...)``).

Transformer mean pooling over tokens, global average pooling.  A kernel sums
the n terms in the accumulator (any order), divides by n (or multiplies by a
rounded 1/n, as torch's reduction does) and stores the quotient once: an
average pool with one window (:func:`fperr.bounds.rules.avgpool_local`).  The
bound covers n - 1 additions and two roundings of the scaling, gamma_{n+1}
(Higham 2002, eq. 4.4 and Lemma 3.3), the bottom of the exponent range, and
the storage rounding of a value within that of the exact mean.
(torch 2.x CPU and CUDA round once; torch 1.x's CPU ``sum().div_()`` stored
the sum first, an extra rounding not covered here.)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

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


class MeanSpec(OperatorSpec):
    type: Literal["mean"]
    axes: list[int] = Field(min_length=1, description="per-input axes to average over")
    keepdims: bool = Field(False, description="keep the reduced axes with length 1")


def _emulated_mean(x: Array, axes: tuple[int, ...], arith: Any) -> Array:
    """Sum along ``axes`` in the accumulator in ``arith``'s order, one quotient by n
    rounded to the accumulator, one storage rounding (reduced axes dropped)."""
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
        q = fround(acc_sum(terms, model, axis=-1) / n, acc)  # float64 quotient: one rounding
    return np.asarray(arith.store(q))


@register
class Mean(Operator):
    type = "mean"
    Spec = MeanSpec

    def __init__(self, axes: tuple[int, ...], keepdims: bool = False) -> None:
        if not axes:
            raise SpecError("mean: axes must name at least one axis")
        self.axes = tuple(int(a) for a in axes)
        self.keepdims = bool(keepdims)

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        from ..layers import Dense, Flatten
        from ..model import Model

        w = rng.normal(size=(3, 8)) / 2
        return Model("mean", (2, 5, 4), (cls((1,), keepdims=True), Flatten(), Dense(w)))

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        return cls(tuple(spec.axes), spec.keepdims)

    def spec_fields(self, put: Put) -> dict[str, Any]:
        return {"axes": list(self.axes), "keepdims": self.keepdims}

    # -- shapes and values ---------------------------------------------------------------
    def _reduced(self, ndim: int) -> tuple[int, ...]:
        """The reduced per-input axes, nonnegative and sorted (each once)."""
        ax = sorted({check_axis("mean", a, ndim) for a in self.axes})
        if len(ax) != len(self.axes):
            raise SpecError(f"mean: axes {list(self.axes)} name an axis twice")
        return tuple(ax)

    def _batched(self, x: Array) -> tuple[int, ...]:
        return tuple(a + 1 for a in self._reduced(x.ndim - 1))

    def out_shape(self, shape: Shape) -> Shape:
        ax = self._reduced(len(shape))
        if self.keepdims:
            return tuple(1 if i in ax else d for i, d in enumerate(shape))
        return tuple(d for i, d in enumerate(shape) if i not in ax)

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        from ..arith import Emulated

        ax = self._batched(x)
        if isinstance(arith, Emulated):
            y = _emulated_mean(x, ax, arith)
        else:
            y = arith.func(lambda v: v.mean(axis=ax), x)
        return np.expand_dims(y, ax) if self.keepdims else y

    # -- bounds ------------------------------------------------------------------------------
    def local(self, x: Array, r: Array, ctx: Context) -> tuple[Array, Array]:
        """(y, local): the computed mean and a bound on |y_run - mean(x_run)| for every
        run, its input x_run within 2r of ``x`` (magnitudes |x| + 2r, as every rule)."""
        from ..bounds.enclosure import half_ulp
        from ..formats import gamma

        a = ctx.arith
        y = self.forward(x, a)
        ax = self._batched(x)
        n = math.prod(x.shape[i] for i in ax)
        mean = lambda v: v.mean(axis=ax, keepdims=self.keepdims)  # noqa: E731
        mag = mean(np.abs(x) + 2 * r)  # >= mean |x_run|
        ops = n + 1 if a.accumulate.contains(a.storage) else n + 2  # + each term's rounding
        per_op = ctx.eta() + ctx.eta_add()  # the quotient's (or a term's) and the flushes
        under = per_op * (2 if ops > n + 1 else 1) * (1 + gamma(ops, a.u_acc))
        acc = ctx.gamma(ops) * mag + under
        acc = np.where(ctx.sum_may_overflow(n * mag, n, under), np.inf, acc)
        # |mean(x_run)| <= |mean(x)| + 2 mean(r): sharper than mag under cancellation
        # (the float64 mean errs by at most gamma_{n+1}(2^-53) mean |x|, Higham eq. 3.5)
        near = np.abs(mean(x)) + gamma(n + 1, 2.0**-53) * mean(np.abs(x)) + 2 * mean(r)
        top = np.minimum(mag, near) + acc  # >= |any run's quotient before storage|
        return y, acc + half_ulp(top, a.storage)

    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int) -> Step:
        from ..bounds.steps import Step
        from ..formats import gamma

        x, r = xs[0], rs[0]
        y, local = self.local(x, r, ctx)
        ax = self._batched(x)
        N, n_in = x.shape[0], x[0].size
        n = n_in // y[0].size
        kept = np.expand_dims(y, ax).shape if not self.keepdims else y.shape
        # |A| r = mean of r (weights 1/n > 0), rounded up over the float64 mean's error
        image = r.mean(axis=ax).reshape(N, -1) * (1 + gamma(n + 1, 2.0**-53))

        def adjoint(lam: Array) -> Array:
            R = lam.shape[1]
            rows = lam.reshape(N, R, *kept[1:]) / n
            return np.broadcast_to(rows, (N, R, *x.shape[1:])).reshape(N, R, n_in)

        return Step(y, adjoint, image, group, [(local.reshape(N, -1), True)])

    def rule(self, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
        y, local = self.local(enc.value, enc.radius(), ctx)
        ax = self._batched(enc.value)

        def apply(cols: Array) -> Array:
            return cols.mean(axis=ax, keepdims=self.keepdims)

        out = enc.linear(y, apply, ctx.matrix_of(self, enc.value.shape[1:], apply))
        return out.add_box(local, index, random=True)

    def work(self, in_shapes: list[Shape], out_shape: Shape) -> float:
        return float(math.prod(in_shapes[0]))

    def products(self, in_shapes: list[Shape], out_shape: Shape) -> int:
        return math.prod(in_shapes[0])  # n terms per output

    # -- other executors ---------------------------------------------------------------------
    def torch_forward(self, xs: list[Any], params: dict[str, Any]) -> Any:
        x = xs[0]
        return x.mean(dim=self._batched(x), keepdim=self.keepdims)

    def mpmath_forward(self, xs: list[Any]) -> Any:
        x = xs[0]
        ax = self._batched(x)
        n = math.prod(x.shape[i] for i in ax)
        return x.sum(axis=ax, keepdims=self.keepdims) / n

    def __repr__(self) -> str:
        return f"Mean(axes={list(self.axes)}, keepdims={self.keepdims})"
