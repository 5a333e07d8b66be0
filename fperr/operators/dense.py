"""dense: ``torch.nn.Linear`` on a flat input, y = W x + b.

Each output unit is one dot product of length ``in`` plus the bias, computed
as numpy and cuBLAS compute it: x W^T rounded to storage, then the bias add
rounded again (an fp32 epilogue rounds once; the bounds cover both).  Its
bound is Higham 2002, Lemma 3.1 / eq. 3.11 per dot product, plus the rounding
of the parameters and the storage roundings
(:func:`fperr.bounds.rules.dense_local`); errors map through W.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from ..errors import SpecError
from .base import Array, Operator, OperatorSpec, Put, Shape, Weights, register
from .checks import check_array, mismatch

if TYPE_CHECKING:
    from ..arith import Arithmetic
    from ..bounds.enclosure import Enclosure
    from ..bounds.rules import Context
    from ..bounds.steps import Step
    from ..model import Model


class DenseSpec(OperatorSpec):
    type: Literal["dense"]
    weight: str = Field(description="key of the (out, in) weight matrix")
    bias: str | None = Field(None, description="key of the (out,) bias")


@register
@dataclass(frozen=True, eq=False)
class Dense(Operator):
    weight: Array  # (out, in)
    bias: Array | None = None
    type = "dense"
    Spec = DenseSpec
    torch_module_classes = (("Linear", False),)

    def __post_init__(self) -> None:
        check_array("dense", "weight", self.weight, 2)
        if self.bias is not None:
            check_array("dense", "bias", self.bias, 1, self.weight.shape[0])

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        from ..model import Model

        w1, b1 = rng.normal(size=(8, 6)) / 2, rng.normal(size=8) / 4
        w2 = rng.normal(size=(3, 8)) / 3
        return Model("dense", (6,), (cls(w1, b1), cls(w2)))

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        weight = weights.need(spec.weight, where, 2)
        bias = weights.get(spec.bias, where, 1)
        if bias is not None and bias.shape[0] != weight.shape[0]:
            raise SpecError(f"bias has {bias.shape[0]} entries, weight {weight.shape[0]} rows")
        return cls(weight, bias)

    @classmethod
    def from_torch_module(cls, mod: Any) -> Any:
        """nn.Linear: a dense layer on vectors, the linear operator on the last axis of
        anything else (the build chooses by the input's rank)."""
        from ..importers.from_torch import _linear_build, _need, _np

        w = _need(mod.weight, "weight")
        return _linear_build(w, _np(mod.bias)), (int(w.shape[1]),), False

    def spec_fields(self, put: Put) -> dict[str, Any]:
        return {"weight": put("weight", self.weight), "bias": put("bias", self.bias)}

    # -- shapes and values ---------------------------------------------------------------
    def out_shape(self, shape: Shape) -> Shape:
        if len(shape) != 1 or shape[0] != self.weight.shape[1]:
            raise mismatch("dense", f"[{self.weight.shape[1]}]", shape)
        return (self.weight.shape[0],)

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        # numpy/cuBLAS semantics: x @ W.T rounded to storage, then the bias add
        # rounded again (an fp32 epilogue rounds once; the bounds cover both).
        # matmul operands: weights and activations both (TF32 rounds both)
        z = arith.matmul(arith.activation_operand(x), arith.to_operand(self.weight).T)
        if self.bias is not None:
            z = arith.store(z + arith.store(self.bias))
        return z

    # -- bounds ------------------------------------------------------------------------------
    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int) -> Step:
        from ..bounds.steps import dense_step

        return dense_step(self, xs[0], rs[0], ctx, group)

    def rule(self, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
        from ..bounds.rules import dense_rule

        return dense_rule(self, enc, ctx, index)

    def apriori(self, lo: Array, hi: Array, r: Array, arith: Any,
                out_shape: Shape) -> tuple[Array, Array, Array]:  # fmt: skip
        from ..bounds.apriori import affine_apriori

        return affine_apriori(self, lo, hi, r, arith)

    def work(self, in_shapes: list[Shape], out_shape: Shape) -> float:
        return float(self.weight.size)

    def products(self, in_shapes: list[Shape], out_shape: Shape) -> int:
        return math.prod(out_shape) * int(self.weight.shape[1])

    # -- other executors ---------------------------------------------------------------------
    def torch_module(self, in_shapes: list[Shape]) -> Any:
        from ..hardware.torch_env import require_torch

        torch = require_torch()
        out_f, in_f = self.weight.shape
        m = torch.nn.Linear(in_f, out_f, bias=self.bias is not None, dtype=torch.float64)
        return with_parameters(m, self.weight, self.bias)

    def mpmath_forward(self, xs: list[Any]) -> Any:
        import mpmath

        x = xs[0]
        w, bias = mp_parameters(self.weight, self.bias)
        n, (o, k) = x.shape[0], w.shape
        out = np.empty((n, o), dtype=object)
        for s in range(n):
            for j in range(o):
                z = mpmath.fsum(x[s, i] * w[j, i] for i in range(k))
                out[s, j] = z if bias is None else z + bias[j]
        return out


def with_parameters(module: Any, weight: Array, bias: Array | None) -> Any:
    """A torch layer (Linear, Conv2d) with ``weight`` and ``bias`` as float64 parameters."""
    from ..hardware.torch_exec import float64_parameter

    module.weight = float64_parameter(weight)
    if bias is not None:
        module.bias = float64_parameter(bias)
    return module


def mp_parameters(weight: Array, bias: Array | None) -> tuple[Any, Any]:
    """``weight`` and ``bias`` as object arrays of exactly equal mpf (the mpmath executor)."""
    from ..mpmath_exec import to_mp

    return to_mp(weight), None if bias is None else to_mp(bias)
