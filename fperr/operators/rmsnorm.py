"""rmsnorm: ``torch.nn.RMSNorm`` over the trailing ``normalized_shape``:
y = x / sqrt(mean(x^2) + eps) * w (Zhang & Sennrich 2019), layer norm without
the centring and the bias; its bound is layer norm's with P = I.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from .base import Array, Operator, OperatorSpec, Put, Shape, Weights, register
from .checks import PosInt
from .layernorm import Norm

if TYPE_CHECKING:
    import onnx

    from ..arith import Arithmetic
    from ..importers.onnx_converter import _OnnxConverter as Cv
    from ..importers.onnx_ops import Site
    from ..model import Model


class RMSNormSpec(OperatorSpec):
    type: Literal["rmsnorm"]
    weight: str | None = None
    eps: float = Field(2.0**-23, gt=0, description="default: torch.finfo(torch.float32).eps")
    normalized_shape: list[PosInt] | None = Field(
        None, min_length=1, description="trailing dimensions normalised over (default: from weight)"
    )


RMS_EPS_DEFAULT = 2.0**-23
"""torch.finfo(torch.float32).eps: what ``nn.RMSNorm(eps=None)`` uses in float32, and
(measured bit for bit on torch 2.13 CPU) in float16 and bfloat16 too, whose kernel
computes in float32; a float64 torch run would use 2^-52 instead."""


@register
@dataclass(frozen=True, eq=False)
class RMSNorm(Norm):
    """Root-mean-square norm over the trailing ``normalized_shape``.  ``eps`` is a
    number, never "the format's eps": importers pin torch's ``eps=None`` to
    :data:`RMS_EPS_DEFAULT`."""

    normalized_shape: Shape
    weight: Array | None = None
    eps: float = RMS_EPS_DEFAULT
    type = "rmsnorm"
    Spec = RMSNormSpec
    torch_module_classes = (("RMSNorm", False),)
    onnx_ops = ("RMSNormalization",)

    def __post_init__(self) -> None:
        self._check()

    @property
    def bias(self) -> None:
        """No bias (so code shared with :class:`LayerNorm` reads one)."""
        return None

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        from ..model import Model
        from .dense import Dense
        from .flatten import Flatten
        from .reshape import Reshape

        w1, b1 = rng.normal(size=(8, 5)), rng.normal(size=8)
        norm = cls((4,), rng.normal(size=4) + 1, 1e-5)
        return Model("rmsnorm", (5,), (Dense(w1, b1), Reshape((2, 4)), norm, Flatten(),
                                       Dense(rng.normal(size=(3, 8)) / 3)))  # fmt: skip

    fx_functions = ("torch.nn.functional.rms_norm", "torch.rms_norm")
    aten_ops = ("aten.rms_norm",)

    @classmethod
    def from_fx(cls, node: Any, label: str, params: Any) -> Any:
        """F.rms_norm(x, normalized_shape, weight, eps) and torch.rms_norm, eps given."""
        from ..importers.builders import _const
        from ..importers.from_torch import _arg, _rms_eps, _unary
        from ..importers.graph import _Unsupported

        ns, wnode = _arg(node, 1, "normalized_shape"), _arg(node, 2, "weight")
        eps = _arg(node, 3, "eps")
        w = None if wnode is None else params(wnode)
        if wnode is not None and w is None:
            raise _Unsupported("weight is not a module tensor")
        if eps is None:  # nn.RMSNorm's None is pinned; a call's None is left to the user
            raise _Unsupported("eps=None (torch then picks it by dtype): pass eps, e.g. "
                               "torch.finfo(torch.float32).eps, what float32 runs use")
        if not isinstance(eps, int | float):
            raise _Unsupported("eps is not a constant")
        dims = (ns,) if isinstance(ns, int) else tuple(ns or ())
        if not dims or not all(isinstance(d, int) for d in dims):
            raise _Unsupported("normalized_shape is not constant")
        return _unary(node, label, _const([cls(tuple(dims), w, _rms_eps(eps))]))

    @classmethod
    def from_aten(cls, n: Any, label: str, ctx: Any) -> Any:
        from ..importers.builders import _const
        from ..importers.from_torch import _rms_eps
        from ..importers.torch_export import _a, _opt, _unary

        ns = tuple(int(d) for d in n.args[1])
        layer = cls(ns, _opt(ctx, _a(n, 2, "weight"), "weight"), _rms_eps(_a(n, 3, "eps")))
        return _unary(n, label, ctx, _const([layer]))

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        weight = weights.get(spec.weight, where)
        return cls(cls._shape_from(spec, weight), weight, spec.eps)

    @classmethod
    def from_torch_module(cls, mod: Any) -> Any:
        """nn.RMSNorm, ``eps=None`` pinned (:func:`fperr.importers.from_torch._rms_eps`)."""
        from ..importers.builders import _const
        from ..importers.from_torch import _np, _rms_eps

        ns = tuple(int(d) for d in mod.normalized_shape)
        return _const([cls(ns, _np(mod.weight), _rms_eps(mod.eps))]), ns, False

    @classmethod
    def from_onnx(cls, cv: Cv, n: onnx.NodeProto, s: Site) -> None:
        """RMSNormalization (opset 23) over the axes from ``axis`` on."""
        from ..importers.onnx_ops import norm_shape, place_norm

        ax, ns, scale, eps = norm_shape(cv, n, s)
        place_norm(cv, n, s, cls(ns, scale, eps), ax)

    def spec_fields(self, put: Put) -> dict[str, Any]:
        return {"normalized_shape": list(self.normalized_shape),
                "weight": put("weight", self.weight), "eps": self.eps}  # fmt: skip

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        """Exact on the stored input and weight, rounded once to storage: torch's
        CPU kernel computes x * rsqrt(mean(x^2) + eps) * w in float32 and rounds
        once (checked bit for bit on float16 and bfloat16); the bound rule allows
        for the float32 steps."""
        axes = self._axes(x.ndim)
        w = None if self.weight is None else arith.store(self.weight)

        def f(v: Array) -> Array:
            y = v / np.sqrt(np.mean(v * v, axis=axes, keepdims=True) + self.eps)
            return y if w is None else y * w

        return arith.func(f, x)

    def torch_module(self, in_shapes: list[Shape]) -> Any:
        from ..hardware.torch_env import require_torch
        from ..hardware.torch_exec import float64_parameter

        torch = require_torch()  # eps pinned: never torch's per-dtype default
        rms = torch.nn.RMSNorm(tuple(self.normalized_shape), eps=self.eps,
                               elementwise_affine=self.weight is not None,
                               dtype=torch.float64)  # fmt: skip
        if self.weight is not None:
            rms.weight = float64_parameter(self.weight)
        return rms

    def mpmath_forward(self, xs: list[Any]) -> Any:
        import mpmath

        from ..mpmath_exec import to_mp

        rows, lead, m = self._mp_rows(xs[0])
        w = None if self.weight is None else to_mp(self.weight).reshape(-1)
        eps, mm = mpmath.mpf(self.eps), mpmath.mpf(m)
        out = np.empty(rows.shape, dtype=object)
        for r in range(rows.shape[0]):
            inv = 1 / mpmath.sqrt(mpmath.fsum(v * v for v in rows[r]) / mm + eps)
            for j in range(m):
                y = rows[r, j] * inv
                out[r, j] = y if w is None else y * w[j]
        return out.reshape((*lead, *self.normalized_shape))
