"""Elementwise activations: relu, relu6, leaky_relu, elu, tanh, sigmoid, gelu
(erf and tanh forms), silu, hardswish and hardsigmoid, one class for all.

The piecewise-linear ones are exact in every format but leaky ReLU's
product; the curved ones are one function evaluation rounded to storage.
The bound rule is the mean value form f(z_hat) - f(z) = f'(xi)(z_hat - z)
with f' enclosed over [z_hat - 2r, z_hat + 2r], plus the kernel allowance of
the function and the storage rounding (:func:`fperr.bounds.rules.activation_local`).
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt
from pydantic import Field
from scipy.special import erfc

from ..errors import SpecError
from .base import Array, Operator, OperatorSpec, Put, Shape, Weights, register
from .checks import check_scalar

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


class ActivationSpec(OperatorSpec):
    type: Literal["relu", "relu6", "tanh", "sigmoid", "gelu", "gelu_tanh", "silu", "hardswish",
                  "hardsigmoid"]  # fmt: skip


class EluSpec(OperatorSpec):
    type: Literal["elu"]
    alpha: float = Field(1.0, allow_inf_nan=False)


class LeakyReluSpec(OperatorSpec):
    type: Literal["leaky_relu"]
    negative_slope: float = 0.01


def _sigmoid(x: Array) -> Array:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _gelu(x: Array) -> Array:
    # erfc, not 1 + erf: 1 + erf(x / sqrt 2) cancels for x < -6 (100% error)
    return 0.5 * x * erfc(-x / math.sqrt(2.0))


GELU_TANH_C = math.sqrt(2.0 / math.pi)
GELU_TANH_K = 0.044715


def _gelu_tanh(x: Array) -> Array:
    """0.5 x (1 + tanh t), t = sqrt(2/pi) (x + 0.044715 x^3) (torch's approximate="tanh"),
    as x sigmoid(2t): 1 + tanh t cancels for t << 0."""
    with np.errstate(over="ignore", invalid="ignore"):
        t = GELU_TANH_C * (x + GELU_TANH_K * x**3)
        return x * _sigmoid(2 * t)


def _silu(x: Array) -> Array:
    return x * _sigmoid(x)


def _hardsigmoid(x: Array) -> Array:
    return np.minimum(np.maximum(x + 3.0, 0.0), 6.0) / 6.0


def _hardswish(x: Array) -> Array:
    return x * _hardsigmoid(x)


def elu(x: Array, alpha: float = 1.0) -> Array:
    """x for x > 0, alpha (e^x - 1) otherwise (expm1: no cancellation near 0)."""
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "gelu": _gelu,
    "gelu_tanh": _gelu_tanh,
    "silu": _silu,
    "hardswish": _hardswish,
    "hardsigmoid": _hardsigmoid,
}
"""Curved elementwise functions without parameters (ELU, with its alpha, is
:meth:`Activation.function`)."""

ACTIVATION_TYPES = ("relu", "relu6", "leaky_relu", "elu", *ACTIVATIONS)

PIECEWISE_LINEAR = ("relu", "relu6", "leaky_relu")
APRIORI = ("relu", "relu6", "leaky_relu", "tanh", "sigmoid", "gelu")
"""Activations with an a-priori rule (:mod:`fperr.bounds.apriori`)."""


@register
@dataclass(frozen=True, eq=False)
class Activation(Operator):
    type: str  # type: ignore[misc]  # one of ACTIVATION_TYPES: the instance says which
    negative_slope: float = 0.01  # leaky_relu
    alpha: float = 1.0  # elu
    types = ACTIVATION_TYPES
    Spec = ActivationSpec
    uses_spread = True
    torch_module_classes = (
        *((name, True) for name in ("ReLU", "ReLU6", "Tanh", "Sigmoid", "SiLU", "Hardswish",
                                    "Hardsigmoid", "ELU", "Hardtanh")),
        ("LeakyReLU", False),
        ("GELU", False),
    )  # fmt: skip
    onnx_ops = ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "Elu", "HardSwish", "HardSigmoid",
                "Clip", "Gelu")  # fmt: skip

    def __post_init__(self) -> None:
        if self.type not in ACTIVATION_TYPES:
            raise SpecError(f"activation: unknown type {self.type!r}; valid: "
                            f"{', '.join(ACTIVATION_TYPES)}")  # fmt: skip
        check_scalar(self.type, "negative_slope", self.negative_slope, None, False)
        check_scalar(self.type, "alpha", self.alpha, None, False)

    def sharpen_threshold(self) -> float | None:
        # the slopes of a kink, or a curved function's remainders, depend on the range
        from ..bounds.backward import SHARPEN, SHARPEN_KINK

        return SHARPEN_KINK if self.type in PIECEWISE_LINEAR else SHARPEN

    def unstable(self, x: Array, reach: Array) -> npt.NDArray[np.bool_] | None:
        # a piecewise linear unit whose range stays on one piece has that piece's
        # slope and no remainder however wide the range: only kinks in reach matter
        from ..bounds.rules import activation_pieces, kink_reached

        pieces = activation_pieces(self)
        return None if pieces is None else kink_reached(pieces[0], x, reach)

    @classmethod
    def specs(cls) -> tuple[builtins.type[OperatorSpec], ...]:
        return (ActivationSpec, EluSpec, LeakyReluSpec)

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        return cls.example_for("tanh", rng)

    @classmethod
    def example_for(cls, type_name: str, rng: np.random.Generator) -> Model:
        from ..model import Model
        from .dense import Dense

        w1, b1 = rng.normal(size=(8, 5)) * 1.5, rng.normal(size=8)
        w2 = rng.normal(size=(3, 8)) / 3
        act = cls(type_name, negative_slope=0.2, alpha=0.7)
        return Model(type_name, (5,), (Dense(w1, b1), act, Dense(w2)))

    # F.relu_ is torch.relu_ (one object, declared once)
    fx_functions = tuple(f"torch.nn.functional.{k}" for k in (
        "relu", "relu6", "hardtanh", "hardtanh_", "tanh", "sigmoid", "gelu", "silu",
        "hardswish", "hardsigmoid", "elu", "elu_", "leaky_relu", "leaky_relu_")) + tuple(
        f"torch.{k}" for k in ("relu", "relu_", "clamp", "clip", "clamp_", "clip_", "tanh",
                               "tanh_", "sigmoid", "sigmoid_"))  # fmt: skip
    fx_methods = ("relu", "relu_", "tanh", "tanh_", "sigmoid", "sigmoid_", "clamp", "clamp_",
                  "clip", "clip_")  # fmt: skip
    aten_ops = tuple(f"aten.{k}" for k in ("hardtanh", "relu6", "gelu", "elu", "leaky_relu",
                                           "relu", "sigmoid", "tanh", "silu", "hardswish",
                                           "hardsigmoid"))  # fmt: skip

    @classmethod
    def from_fx(cls, node: Any, label: str, params: Any) -> Any:
        """F.relu, torch.relu, x.relu() and the other activations (in-place forms too);
        hardtanh, clamp and clip to [0, 6] are ReLU6; by the function's or method's name."""
        from ..importers.builders import _const, _gelu
        from ..importers.from_torch import _arg, _elu_layer, _relu6_layer, _unary

        t = node.target
        kind = (t if isinstance(t, str) else t.__name__).rstrip("_")
        if kind == "hardtanh":
            layer = _relu6_layer(_arg(node, 1, "min_val", -1.0), _arg(node, 2, "max_val", 1.0))
        elif kind in ("clamp", "clip"):
            layer = _relu6_layer(_arg(node, 1, "min"), _arg(node, 2, "max"))
        elif kind == "gelu":
            return _unary(node, label, _gelu(_arg(node, 1, "approximate", "none"))[0],
                          elementwise=True)  # fmt: skip
        elif kind == "elu":
            layer = _elu_layer(_arg(node, 1, "alpha", 1.0))
        elif kind == "leaky_relu":
            layer = cls("leaky_relu", float(_arg(node, 1, "negative_slope", 0.01)))
        else:  # relu, relu6, tanh, sigmoid, silu, hardswish, hardsigmoid
            layer = cls(kind)
        return _unary(node, label, _const([layer]), elementwise=True)

    @classmethod
    def from_aten(cls, n: Any, label: str, ctx: Any) -> Any:
        """aten.relu and the other activations; aten.hardtanh to [0, 6] is ReLU6."""
        from ..importers.builders import _const, _gelu
        from ..importers.from_torch import _elu_layer, _relu6_layer
        from ..importers.graph import _Unsupported
        from ..importers.torch_export import _a, _kind, _unary

        kind = _kind(n).removeprefix("aten.")
        if kind == "hardtanh":
            layer = _relu6_layer(_a(n, 1, "min_val", -1.0), _a(n, 2, "max_val", 1.0))
        elif kind == "gelu":
            return _unary(n, label, ctx, _gelu(_a(n, 1, "approximate", "none"))[0], True)
        elif kind == "elu":
            if _a(n, 2, "scale", 1) != 1 or _a(n, 3, "input_scale", 1) != 1:
                raise _Unsupported("scale or input_scale other than 1 (SELU/CELU)")
            layer = _elu_layer(_a(n, 1, "alpha", 1.0))
        elif kind == "leaky_relu":
            layer = cls("leaky_relu", float(_a(n, 1, "negative_slope", 0.01)))
        else:  # relu6, relu, sigmoid, tanh, silu, hardswish, hardsigmoid
            layer = cls(kind)
        return _unary(n, label, ctx, _const([layer]), True)

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        if spec.type == "elu":
            return cls("elu", 0.01, spec.alpha)
        if spec.type == "leaky_relu":
            return cls("leaky_relu", spec.negative_slope)
        return cls(spec.type)

    @classmethod
    def from_torch_module(cls, mod: Any) -> Any:
        """ReLU, Tanh, Sigmoid, ...: the class name, lower case, is the activation's;
        Hardtanh to [0, 6] is ReLU6; ELU, LeakyReLU and GELU carry their parameter."""
        from torch import nn

        from ..importers.builders import _const, _gelu
        from ..importers.from_torch import _elu_layer, _relu6_layer

        if isinstance(mod, nn.LeakyReLU):
            return _const([cls("leaky_relu", float(mod.negative_slope))]), None, True
        if isinstance(mod, nn.GELU):
            b, _ = _gelu(mod.approximate)
            return b, None, True
        if type(mod) is nn.ELU:
            return _const([_elu_layer(mod.alpha)]), None, True
        if type(mod) is nn.Hardtanh:  # not ReLU6, its subclass, named as its activation
            return _const([_relu6_layer(mod.min_val, mod.max_val)]), None, True
        return _const([cls(type(mod).__name__.lower())]), None, True

    @classmethod
    def from_onnx(cls, cv: Cv, n: onnx.NodeProto, s: Site) -> None:
        """Relu, Tanh, Sigmoid, ...: the op type, lower case, is the activation's;
        LeakyRelu, Elu and Gelu carry their parameter; HardSigmoid only torch's
        (alpha 1/6, beta 1/2); Clip only to [0, 6] (ReLU6).  Any layout: elementwise."""
        from ..importers.builders import _gelu
        from ..importers.graph import _Unsupported
        from ..importers.onnx_ops import _clip

        t = n.op_type
        a = s.attrs
        layer: Any
        if t == "LeakyRelu":
            layer = cls("leaky_relu", float(a.get("alpha", 0.01)))
        elif t == "Elu":
            layer = cls("elu", alpha=float(a.get("alpha", 1.0)))
        elif t in ("HardSwish", "HardSigmoid"):
            if t == "HardSigmoid":
                alpha, beta = float(a.get("alpha", 0.2)), float(a.get("beta", 0.5))
                if np.float32(alpha) != np.float32(1 / 6) or beta != 0.5:
                    raise _Unsupported(f"HardSigmoid with alpha {alpha}, beta {beta}: only "
                                       "alpha = 1/6, beta = 1/2 (torch's)")  # fmt: skip
            layer = cls(t.lower())
        elif t == "Clip":
            layer = _clip(cv, n, a)
        elif t == "Gelu":
            approx = a.get("approximate", b"none")
            approx = approx.decode() if isinstance(approx, bytes) else str(approx)
            layer = _gelu(approx)[0](())[0]
        else:
            layer = cls(t.lower())
        cv.lays[n.output[0]] = cv.unary(s.label, s.x, [layer])

    def spec_fields(self, put: Put) -> dict[str, Any]:
        if self.type == "leaky_relu":
            return {"negative_slope": self.negative_slope}
        return {"alpha": self.alpha} if self.type == "elu" else {}

    # -- shapes and values ---------------------------------------------------------------
    def out_shape(self, shape: Shape) -> Shape:
        return shape

    @property
    def function(self) -> Callable[[Array], Array]:
        """The exact function in float64 of a curved activation (not relu, relu6, leaky_relu)."""
        if self.type == "elu":
            alpha = float(self.alpha)
            return lambda x: elu(x, alpha)
        return ACTIVATIONS[self.type]

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        if self.type == "relu":
            return np.maximum(x, 0.0)  # exact
        if self.type == "relu6":
            return np.minimum(np.maximum(x, 0.0), 6.0)  # exact: 0 and 6 are in every format
        if self.type == "leaky_relu":
            return np.where(x > 0, x, arith.store(self.negative_slope * x))
        return arith.func(self.function, x)

    # -- bounds ------------------------------------------------------------------------------
    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int,
             spread: list[Array] | None = None) -> Step:  # fmt: skip
        from ..bounds.steps import activation_step

        return activation_step(self, xs[0], rs[0], ctx, group, None if spread is None
                               else spread[0])  # fmt: skip

    def has_quick(self) -> bool:
        return self.type in ("relu", "relu6")  # slopes 0 and 1, exact in every format

    def quick(self, q: Quick, lo: Context, ref: Context) -> Quick:
        from ..bounds.quick import clamp_quick
        from ..bounds.rules import activation_pieces

        pieces = activation_pieces(self) if self.has_quick() else None
        if pieces is None:
            return super().quick(q, lo, ref)
        return clamp_quick(q, *pieces, lambda x: self.forward(x, lo.arith))

    def rule(self, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
        from ..bounds.rules import activation_rule

        return activation_rule(self, enc, ctx, index)

    def apriori(self, lo: Array, hi: Array, r: Array, arith: Any,
                out_shape: Shape) -> tuple[Array, Array, Array]:  # fmt: skip
        if self.type not in APRIORI:
            return super().apriori(lo, hi, r, arith, out_shape)
        from ..bounds.apriori import activation_apriori

        return activation_apriori(self, lo, hi, r, arith)

    # -- other executors ---------------------------------------------------------------------
    def torch_module(self, in_shapes: list[Shape]) -> Any:
        from ..hardware.torch_env import require_torch

        nn = require_torch().nn
        if self.type == "leaky_relu":
            return nn.LeakyReLU(self.negative_slope)
        if self.type == "elu":
            return nn.ELU(self.alpha)
        if self.type == "gelu_tanh":
            return nn.GELU(approximate="tanh")
        cls = {"relu": nn.ReLU, "relu6": nn.ReLU6, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
               "gelu": nn.GELU, "silu": nn.SiLU, "hardswish": nn.Hardswish,
               "hardsigmoid": nn.Hardsigmoid}  # fmt: skip
        return cls[self.type]()

    def mpmath_forward(self, xs: list[Any]) -> Any:
        # each function from its definition, in mpmath: independent of :meth:`forward`
        import mpmath

        slope = mpmath.mpf(self.negative_slope)
        sqrt2 = mpmath.sqrt(2)
        alpha = mpmath.mpf(self.alpha)
        gc, gk = mpmath.sqrt(2 / mpmath.pi), mpmath.mpf("0.044715")  # GELU, tanh form
        zero, six = mpmath.mpf(0), mpmath.mpf(6)
        funcs: dict[str, Callable[[Any], Any]] = {
            "relu": lambda v: v if v > 0 else zero,
            "relu6": lambda v: min(max(v, zero), six),
            "leaky_relu": lambda v: v if v > 0 else slope * v,
            "tanh": mpmath.tanh,
            "sigmoid": lambda v: 1 / (1 + mpmath.exp(-v)),
            "gelu": lambda v: v * (1 + mpmath.erf(v / sqrt2)) / 2,
            "gelu_tanh": lambda v: v / (1 + mpmath.exp(-2 * gc * (v + gk * v**3))),
            "silu": lambda v: v / (1 + mpmath.exp(-v)),
            "elu": lambda v: v if v > 0 else alpha * mpmath.expm1(v),
            "hardsigmoid": lambda v: min(max(v + 3, zero), six) / 6,
            "hardswish": lambda v: v * min(max(v + 3, zero), six) / 6,
        }
        f = funcs[self.type]
        x = xs[0]
        out = np.empty(x.shape, dtype=object)
        flat, src = out.reshape(-1), x.reshape(-1)
        for i, v in enumerate(src):
            flat[i] = f(v)
        return out
