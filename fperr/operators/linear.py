"""linear: ``torch.nn.Linear`` on the last axis of an input of any rank >= 1.

A transformer's token-wise projection: input (T, D) -> (T, out), the same
weights for every token.  Each output unit is one dot product of length
``in`` (plus the bias), computed exactly as :class:`fperr.layers.Dense`
computes it, so the bound is the dense layer's applied to the input viewed as
(N T, in): Higham 2002, Lemma 3.1 / eq. 3.11 per dot product, the storage
roundings and the rounding of the parameters (:func:`fperr.bounds.rules.dense_local`).
The parameters' known error vector s = (W_hat - W) x + (b_hat - b) becomes ONE
signed generator per input over all tokens: every token sees the same W_hat - W.
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
    from ..bounds.rules import Affine, Context
    from ..bounds.steps import Step
    from ..model import Model


class LinearSpec(OperatorSpec):
    type: Literal["linear"]
    weight: str = Field(description="key of the (out, in) weight matrix")
    bias: str | None = Field(None, description="key of the (out,) bias")


@register
class Linear(Operator):
    type = "linear"
    Spec = LinearSpec

    def __init__(self, weight: Array, bias: Array | None = None) -> None:
        from ..layers import Dense

        weight = np.asarray(weight, dtype=np.float64)
        if weight.ndim != 2 or 0 in weight.shape:
            raise SpecError(f"linear: weight must be a nonempty (out, in) matrix, "
                            f"got shape {list(weight.shape)}")  # fmt: skip
        if bias is not None:
            bias = np.asarray(bias, dtype=np.float64)
            if bias.shape != (weight.shape[0],):
                raise SpecError(f"linear: bias has shape {list(bias.shape)}, weight "
                                f"{weight.shape[0]} rows")  # fmt: skip
        self.weight, self.bias = weight, bias
        self._dense = Dense(weight, bias)  # the arithmetic of one token

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        from ..layers import Dense
        from ..model import Model
        from .mean import Mean

        w, b = rng.normal(size=(5, 6)) / 3, rng.normal(size=5) / 4
        head = rng.normal(size=(3, 5)) / 2
        return Model("linear", (4, 6), (cls(w, b), Mean((0,)), Dense(head)))

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        return cls(weights.need(spec.weight, where, 2), weights.get(spec.bias, where, 1))

    def spec_fields(self, put: Put) -> dict[str, Any]:
        return {"weight": put("weight", self.weight), "bias": put("bias", self.bias)}

    # -- shapes and values ---------------------------------------------------------------
    @property
    def n_in(self) -> int:
        return int(self.weight.shape[1])

    @property
    def n_out(self) -> int:
        return int(self.weight.shape[0])

    def out_shape(self, shape: Shape) -> Shape:
        if len(shape) < 1 or shape[-1] != self.n_in:
            raise SpecError(f"linear: expects an input [..., {self.n_in}], got {list(shape)}")
        return (*shape[:-1], self.n_out)

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        # tokens are independent dot products: Dense's arithmetic on (N T, in)
        z = self._dense.forward(x.reshape(-1, self.n_in), arith)
        return z.reshape(*x.shape[:-1], self.n_out)

    # -- bounds ------------------------------------------------------------------------------
    def _local(self, x: Array, r: Array, ctx: Context) -> Affine:
        """:func:`~fperr.bounds.rules.dense_local` on the tokens as rows, reshaped back:
        every array (N, *lead, out) (``signed`` None or broadcast to that shape)."""
        from ..bounds.rules import Affine, dense_local

        f = dense_local(self._dense, x.reshape(-1, self.n_in), r.reshape(-1, self.n_in), ctx)
        shape = (*x.shape[:-1], self.n_out)

        def back(a: Any) -> Array:
            return np.broadcast_to(a, f.z.shape).reshape(shape)

        signed = None if f.signed is None else back(f.signed)
        return Affine(back(f.z), back(f.local), back(f.extra), back(f.w_abs_r), signed)

    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int) -> Step:
        from ..bounds.backend import on, portable
        from ..bounds.steps import Step, _local_boxes, _signed, exact_weight_image

        x, r = xs[0], rs[0]
        f = self._local(x, r, ctx)
        N = x.shape[0]
        T = math.prod(x.shape[1:-1])
        # |W| r per token: each output unit reads only its own token's radius
        r_sum = r.reshape(N, T, 1, self.n_in).sum(axis=-1)
        image = exact_weight_image(f.w_abs_r.reshape(N, T, self.n_out), r_sum, ctx.arith)
        w = self.weight

        @portable
        def adjoint(lam: Array) -> Array:
            R = lam.shape[1]
            return (lam.reshape(N, R, T, self.n_out) @ on(w)).reshape(N, R, T * self.n_in)

        flat = f.z.reshape(N, -1)
        signed = None if f.signed is None else _signed(f.signed.reshape(N, -1), flat)
        boxes = _local_boxes(ctx, f.local, f.extra)
        def exact_image() -> Array:  # |W| r per token, the exact weights
            return (r.reshape(N, T, self.n_in) @ np.abs(w).T).reshape(N, -1)

        return Step(f.z, adjoint, image.reshape(N, -1), group, boxes, signed,
                    exact_image=exact_image)

    def rule(self, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
        """As :func:`~fperr.bounds.rules.dense_rule`, the map acting on the last axis."""
        f = self._local(enc.value, enc.radius(), ctx)
        w = self.weight

        def apply(cols: Array) -> Array:
            return cols @ w.T  # (M, ..., in) -> (M, ..., out)

        out = enc.linear(f.z, apply, ctx.matrix_of(self, enc.value.shape[1:], apply))
        return ctx.add_signed(ctx.add_local(out, f.local, f.extra, index), f.signed, index)

    def work(self, in_shapes: list[Shape], out_shape: Shape) -> float:
        return float(math.prod(out_shape) * self.n_in)

    def products(self, in_shapes: list[Shape], out_shape: Shape) -> int:
        return math.prod(out_shape) * self.n_in

    # -- other executors ---------------------------------------------------------------------
    def torch_forward(self, xs: list[Any], params: dict[str, Any]) -> Any:
        import torch

        return torch.nn.functional.linear(xs[0], params["weight"], params.get("bias"))

    def mpmath_forward(self, xs: list[Any]) -> Any:
        # object arrays: every product and sum in mpmath at the caller's precision
        y = np.dot(xs[0], self.weight.T.astype(object))
        return y if self.bias is None else y + self.bias.astype(object)

    def __repr__(self) -> str:
        bias = "" if self.bias is None else ", bias"
        return f"Linear({self.n_in} -> {self.n_out}{bias})"
