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
    import onnx

    from ..arith import Arithmetic
    from ..bounds.enclosure import Enclosure
    from ..bounds.quick import Quick
    from ..bounds.rules import Context
    from ..bounds.steps import Step
    from ..importers.onnx_converter import _OnnxConverter as Cv
    from ..importers.onnx_ops import Site
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
    onnx_ops = ("Gemm", "MatMul")

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

    # F.linear and aten.linear build this operator on vectors and the linear operator on
    # the last axis of anything else (from_torch._linear_build chooses by rank): declared
    # here, on the common case, as nn.Linear is
    fx_functions = ("torch.nn.functional.linear",)
    aten_ops = ("aten.linear",)

    @classmethod
    def from_fx(cls, node: Any, label: str, params: Any) -> Any:
        from ..importers.from_torch import _arg, _linear_build, _unary
        from ..importers.graph import _Unsupported

        w = params(_arg(node, 1, "weight"))
        if w is None:
            raise _Unsupported("weight is not a parameter")
        b = params(_arg(node, 2, "bias"))
        return _unary(node, label, _linear_build(w, b), hint=(int(w.shape[1]),))

    @classmethod
    def from_aten(cls, n: Any, label: str, ctx: Any) -> Any:
        from ..importers.from_torch import _linear_build
        from ..importers.torch_export import _a, _need, _opt, _unary

        w = _need(ctx, n.args[1], "weight")
        return _unary(n, label, ctx, _linear_build(w, _opt(ctx, _a(n, 2, "bias"), "bias")))

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

    @classmethod
    def from_onnx(cls, cv: Cv, n: onnx.NodeProto, s: Site) -> None:
        """Gemm, and MatMul by a constant: a dense layer on vectors, the linear operator
        on the last axis of anything else (the build chooses by the input's rank).  A
        MatMul of two activations is the matmul operator's: MatMul is declared here, the
        common case (every projection of a transformer), and hands that case on."""
        if n.op_type == "Gemm":
            cls._from_onnx_gemm(cv, n, s)
        else:
            cls._from_onnx_matmul(cv, n, s)

    @classmethod
    def _from_onnx_gemm(cls, cv: Cv, n: onnx.NodeProto, s: Site) -> None:
        """alpha A B' + beta C: alpha folds into the weights only if it is a power of two."""
        from ..importers.graph import _Unsupported
        from ..importers.onnx_nodes import _is_pow2
        from ..importers.onnx_ops import _bias, _dense

        a = s.attrs
        if a.get("transA", 0) or n.input[0] not in cv.lays:
            raise _Unsupported("transA=1 or a constant A")
        b = cv.need(n, 1)
        w = b if a.get("transB", 0) else b.T
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        if alpha != 1.0:
            if not _is_pow2(alpha):
                raise _Unsupported(f"alpha={alpha:g}: only 1 or a power of two, which folds "
                                   "exactly into the weights")  # fmt: skip
            w = w * alpha
        c = cv.const(n, 2)
        bias = None if c is None else _bias(beta * c, w.shape[0])
        k = int(w.shape[1])
        cv.lays[n.output[0]] = cv.rowwise(s.label, s.x, k, _dense(w, bias))

    @classmethod
    def _from_onnx_matmul(cls, cv: Cv, n: onnx.NodeProto, s: Site) -> None:
        """x W (an Add of a constant that only reads it fused in as the bias), or the
        product of two activations (:func:`~fperr.importers.onnx_ops.matmul_two`)."""
        from ..importers.graph import _Unsupported
        from ..importers.onnx_ops import _bias, _dense, matmul_two

        if n.input[1] in cv.lays:
            return matmul_two(cv, n, s)
        if n.input[0] not in cv.lays:
            raise _Unsupported("a constant left operand")
        b = cv.need(n, 1)
        if b.ndim != 2:
            raise _Unsupported(f"{b.ndim}-D weight")
        w, bias, label, out = np.array(b.T), None, s.label, n.output[0]
        add = cv.only_reader(out)
        other = cv.data_other(add, out) if add is not None and add.op_type == "Add" else None
        if add is not None and other is not None and other in cv.values:
            c = np.asarray(cv.values[other], dtype=np.float64)
            if c.size in (1, w.shape[0]) and c.shape[-1:] in ((1,), (w.shape[0],), ()):
                bias = _bias(c, w.shape[0])
                cv.skip[id(add)] = label
                out = add.output[0]
                label = f"{label} + Add {(add.name or add.output[0])!r}"
        cv.lays[out] = cv.rowwise(label, s.x, int(w.shape[1]), _dense(w, bias))

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

    def has_quick(self) -> bool:
        return True

    def quick(self, q: Quick, lo: Context, ref: Context) -> Quick:
        from ..bounds.quick import affine_quick
        from ..bounds.rules import dense_apply, dense_sums

        return affine_quick(self, q, lo, ref, lambda a, x: dense_sums(self, a, x), dense_apply,
                            self.weight, self.bias, int(self.weight.shape[1]))  # fmt: skip

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
