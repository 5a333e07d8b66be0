"""layernorm: ``torch.nn.LayerNorm`` over the trailing ``normalized_shape``:
y = (x - mean) / sqrt(var + eps) * w + b per group.

The bound (:func:`fperr.bounds.steps.layernorm_step`) needs the signed
projections of the incoming error on each group's centred value: the backward
engine hands the step the radius of any functional of its input pulled back
through every earlier layer (``needs_functional``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from ..errors import SpecError
from .base import Array, Operator, OperatorSpec, Put, Shape, Weights, register
from .checks import PosInt, check_array, check_ints, check_scalar, mismatch

if TYPE_CHECKING:
    import onnx

    from ..arith import Arithmetic
    from ..bounds.enclosure import Enclosure
    from ..bounds.rules import Context
    from ..bounds.steps import FunctionalRadius, Step
    from ..importers.onnx_converter import _OnnxConverter as Cv
    from ..importers.onnx_ops import Site
    from ..model import Model


class LayerNormSpec(OperatorSpec):
    type: Literal["layernorm"]
    weight: str | None = None
    bias: str | None = None
    eps: float = Field(1e-5, gt=0)
    normalized_shape: list[PosInt] | None = Field(
        None, min_length=1, description="trailing dimensions normalised over (default: from weight)"
    )


class Norm(Operator):
    """What layer norm and RMS norm share: groups over the trailing
    ``normalized_shape``, and one bound rule with or without the centring."""

    normalized_shape: Shape
    weight: Array | None
    eps: float
    needs_functional = True

    def _check(self) -> None:
        check_ints(self.type, "normalized_shape", self.normalized_shape, 1, None)
        for name in ("weight", "bias"):
            a = getattr(self, name)
            if a is not None:
                check_array(self.type, name, a, len(self.normalized_shape))
                if tuple(a.shape) != tuple(self.normalized_shape):
                    raise SpecError(f"{self.type}: {name} has shape {list(a.shape)}, expected "
                                    f"normalized_shape {list(self.normalized_shape)}")  # fmt: skip
        check_scalar(self.type, "eps", self.eps, 0.0, True)

    def sharpen_threshold(self) -> float | None:
        from ..bounds.backward import SHARPEN

        return SHARPEN

    @staticmethod
    def _shape_from(spec: Any, weight: Array | None) -> Shape:
        shape = spec.normalized_shape or (None if weight is None else list(weight.shape))
        if shape is None:
            raise SpecError(f"{spec.type} needs normalized_shape or weight")
        return tuple(shape)

    def out_shape(self, shape: Shape) -> Shape:
        k = len(self.normalized_shape)
        if tuple(shape[-k:]) != tuple(self.normalized_shape):
            raise mismatch(self.type, f"[..., {list(self.normalized_shape)}]", shape)
        return shape

    def _axes(self, ndim: int) -> tuple[int, ...]:
        return tuple(range(ndim - len(self.normalized_shape), ndim))

    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int,
             functional: FunctionalRadius | None = None) -> Step:  # fmt: skip
        from ..bounds.steps import layernorm_step

        if functional is None:  # pragma: no cover - the engine always hands one
            raise TypeError(f"{self.type}: the step needs functional=")
        return layernorm_step(self, xs[0], rs[0], ctx, group, functional)  # type: ignore[arg-type]

    def rule(self, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
        from ..bounds.rules import layernorm_rule

        return layernorm_rule(self, enc, ctx, index)  # type: ignore[arg-type]

    def _mp_rows(self, x: Any) -> tuple[Any, Any, int]:
        k = len(self.normalized_shape)
        lead, m = x.shape[: x.ndim - k], math.prod(self.normalized_shape)
        return x.reshape((-1, m)), lead, m


@register
@dataclass(frozen=True, eq=False)
class LayerNorm(Norm):
    normalized_shape: Shape
    weight: Array | None = None
    bias: Array | None = None
    eps: float = 1e-5
    type = "layernorm"
    Spec = LayerNormSpec
    torch_module_classes = (("LayerNorm", False),)
    onnx_ops = ("LayerNormalization",)

    def __post_init__(self) -> None:
        self._check()

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        from ..model import Model
        from .dense import Dense
        from .flatten import Flatten
        from .reshape import Reshape

        w1, b1 = rng.normal(size=(8, 5)), rng.normal(size=8)
        ln = cls((4,), rng.normal(size=4) + 1, rng.normal(size=4) / 4)
        return Model("layernorm", (5,), (Dense(w1, b1), Reshape((2, 4)), ln, Flatten(),
                                         Dense(rng.normal(size=(3, 8)) / 3)))  # fmt: skip

    aten_ops = ("aten.layer_norm",)

    @classmethod
    def from_aten(cls, n: Any, label: str, ctx: Any) -> Any:
        from ..importers.builders import _const
        from ..importers.torch_export import _a, _opt, _unary

        ns = tuple(int(d) for d in n.args[1])
        ln = cls(ns, _opt(ctx, _a(n, 2, "weight"), "weight"), _opt(ctx, _a(n, 3, "bias"), "bias"),
                 float(_a(n, 4, "eps", 1e-5)))  # fmt: skip
        return _unary(n, label, ctx, _const([ln]))

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        weight = weights.get(spec.weight, where)
        return cls(cls._shape_from(spec, weight), weight, weights.get(spec.bias, where), spec.eps)

    @classmethod
    def from_torch_module(cls, mod: Any) -> Any:
        """nn.LayerNorm (the normalized shape is the per-input shape's hint)."""
        from ..importers.builders import _const
        from ..importers.from_torch import _np

        ns = tuple(int(d) for d in mod.normalized_shape)
        ln = cls(ns, _np(mod.weight), _np(getattr(mod, "bias", None)), float(mod.eps))
        return _const([ln]), ns, False

    @classmethod
    def from_onnx(cls, cv: Cv, n: onnx.NodeProto, s: Site) -> None:
        """LayerNormalization over the axes from ``axis`` on (its mean and inverse
        standard deviation outputs unused)."""
        from ..importers.graph import _Unsupported
        from ..importers.onnx_ops import norm_shape, place_norm

        ax, ns, scale, eps = norm_shape(cv, n, s)
        if any(o and cv.readers.get(o) for o in n.output[1:]):
            raise _Unsupported("mean/inv_std_dev outputs used")
        bias = cv.const(n, 2)
        layer = cls(ns, scale, None if bias is None else np.broadcast_to(bias, ns).copy(), eps)
        place_norm(cv, n, s, layer, ax)

    def spec_fields(self, put: Put) -> dict[str, Any]:
        return {"normalized_shape": list(self.normalized_shape),
                "weight": put("weight", self.weight), "bias": put("bias", self.bias),
                "eps": self.eps}  # fmt: skip

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        axes = self._axes(x.ndim)
        w = None if self.weight is None else arith.store(self.weight)
        b = None if self.bias is None else arith.store(self.bias)

        def f(v: Array) -> Array:
            mu = v.mean(axis=axes, keepdims=True)
            var = ((v - mu) ** 2).mean(axis=axes, keepdims=True)
            y = (v - mu) / np.sqrt(var + self.eps)
            y = y if w is None else y * w
            return y if b is None else y + b

        return arith.func(f, x)

    def torch_module(self, in_shapes: list[Shape]) -> Any:
        from ..hardware.torch_env import require_torch
        from ..hardware.torch_exec import float64_parameter

        torch = require_torch()
        ns = tuple(self.normalized_shape)
        affine = self.weight is not None or self.bias is not None
        m = torch.nn.LayerNorm(ns, eps=self.eps, elementwise_affine=affine,
                               bias=self.bias is not None, dtype=torch.float64)  # fmt: skip
        if affine:
            m.weight = float64_parameter(self.weight if self.weight is not None else np.ones(ns))
            if self.bias is not None:
                m.bias = float64_parameter(self.bias)
        return m

    def mpmath_forward(self, xs: list[Any]) -> Any:
        import mpmath

        from ..mpmath_exec import to_mp

        rows, lead, m = self._mp_rows(xs[0])
        w = None if self.weight is None else to_mp(self.weight).reshape(-1)
        b = None if self.bias is None else to_mp(self.bias).reshape(-1)
        eps, mm = mpmath.mpf(self.eps), mpmath.mpf(m)
        out = np.empty(rows.shape, dtype=object)
        for r in range(rows.shape[0]):
            mu = mpmath.fsum(rows[r]) / mm
            var = mpmath.fsum((v - mu) ** 2 for v in rows[r]) / mm
            inv = 1 / mpmath.sqrt(var + eps)
            for j in range(m):
                y = (rows[r, j] - mu) * inv
                y = y if w is None else y * w[j]
                out[r, j] = y if b is None else y + b[j]
        return out.reshape((*lead, *self.normalized_shape))
