"""batchnorm: ``torch.nn.BatchNorm1d/2d/3d`` in eval mode over channel axis 0
(per input): y = x * scale + shift with the running statistics.

Computed as PyTorch's CPU kernel computes it (see :meth:`BatchNorm.forward`);
the bound (:func:`fperr.bounds.rules.batchnorm_local`) covers that and the
two-step order (x - mean) alpha + b alike: errors scale by alpha, plus the
rounding of the statistics and of the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from ..errors import FperrInputError, SpecError
from ..rounding import round as fround
from .base import Array, Operator, OperatorSpec, Put, Shape, Weights, register
from .checks import check_array, check_scalar, mismatch

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


class BatchNormSpec(OperatorSpec):
    type: Literal["batchnorm"]
    weight: str | None = None
    bias: str | None = None
    running_mean: str
    running_var: str
    eps: float = Field(1e-5, gt=0)


@register
@dataclass(frozen=True, eq=False)
class BatchNorm(Operator):
    """Eval-mode batch norm over channel axis 1: y = x * scale + shift."""

    running_mean: Array
    running_var: Array
    weight: Array | None = None
    bias: Array | None = None
    eps: float = 1e-5
    type = "batchnorm"
    Spec = BatchNormSpec
    torch_module_classes = (("BatchNorm1d", True), ("BatchNorm2d", True))
    onnx_ops = ("BatchNormalization",)

    def __post_init__(self) -> None:
        check_array("batchnorm", "running_mean", self.running_mean, 1)
        c = self.running_mean.shape[0]
        for name in ("running_var", "weight", "bias"):
            if name == "running_var" or getattr(self, name) is not None:
                check_array("batchnorm", name, getattr(self, name), 1, c)
        check_scalar("batchnorm", "eps", self.eps, 0.0, True)
        negative = np.flatnonzero(self.running_var < 0)
        if negative.size:  # a variance: sqrt(var + eps) would be NaN
            i, v = int(negative[0]), float(self.running_var[negative[0]])
            raise SpecError(f"batchnorm: running_var has {negative.size} negative entries "
                            f"(first {v!r} at index {i}); a variance is >= 0")  # fmt: skip

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        from ..model import Model
        from .conv2d import Conv2d
        from .dense import Dense
        from .flatten import Flatten

        w = rng.normal(size=(3, 2, 3, 3)) / 3
        bn = cls(rng.normal(size=3) / 4, rng.uniform(0.2, 2.0, size=3),
                 rng.normal(size=3) + 1, rng.normal(size=3) / 4)  # fmt: skip
        head = rng.normal(size=(3, 3 * 4 * 4)) / 4
        return Model("batchnorm", (2, 6, 6), (Conv2d(w), bn, Flatten(), Dense(head)))

    fx_functions = ("torch.nn.functional.batch_norm",)
    aten_ops = ("aten.batch_norm", "aten._native_batch_norm_legit_no_training")

    @classmethod
    def from_fx(cls, node: Any, label: str, params: Any) -> Any:
        from ..importers.from_torch import _batch_norm, _unary

        return _unary(node, label, _batch_norm(node, params))

    @classmethod
    def from_aten(cls, n: Any, label: str, ctx: Any) -> Any:
        """aten.batch_norm(x, w, b, mean, var, training, momentum, eps, cudnn) and
        _native_batch_norm_legit_no_training(x, w, b, mean, var, momentum, eps)."""
        from ..importers.builders import _const
        from ..importers.graph import _Unsupported
        from ..importers.torch_export import _a, _need, _opt, _unary

        legit = "legit" in str(n.target)
        if not legit and _a(n, 5, "training"):
            raise _Unsupported("training=True normalises by batch statistics")
        eps = _a(n, 6 if legit else 7, "eps", 1e-5)
        mean, var = _need(ctx, n.args[3], "running_mean"), _need(ctx, n.args[4], "running_var")
        w, b = _opt(ctx, n.args[1], "weight"), _opt(ctx, n.args[2], "bias")
        return _unary(n, label, ctx, _const([cls(mean, var, w, b, float(eps))]))

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        return cls(weights.need(spec.running_mean, where, 1),
                   weights.need(spec.running_var, where, 1), weights.get(spec.weight, where, 1),
                   weights.get(spec.bias, where, 1), spec.eps)  # fmt: skip

    @classmethod
    def from_torch_module(cls, mod: Any) -> Any:
        """BatchNorm1d (inputs [C] or [C, L]) and BatchNorm2d ([C, H, W]), running statistics."""
        from torch import nn

        from ..importers.from_torch import _need, _np
        from ..importers.graph import _Unsupported

        if mod.running_mean is None or mod.running_var is None:
            raise _Unsupported("track_running_stats=False: batch statistics also in eval mode")
        bn = cls(_need(mod.running_mean, "running_mean"), _need(mod.running_var, "running_var"),
                 _np(mod.weight), _np(mod.bias), float(mod.eps))  # fmt: skip
        ranks = (1, 2) if isinstance(mod, nn.BatchNorm1d) else (3,)

        def batchnorm(shape: Shape) -> list[Any]:
            if len(shape) not in ranks:
                raise SpecError(f"{type(mod).__name__} on inputs {list(shape)}")
            return [bn]

        return batchnorm, None, False

    @classmethod
    def from_onnx(cls, cv: Cv, n: onnx.NodeProto, s: Site) -> None:
        """BatchNormalization in inference (running statistics), spatial, the batch
        axis first."""
        from ..importers.graph import _Unsupported
        from ..importers.onnx_layout import canonical

        a = s.attrs
        # training mode normalises by batch statistics: training_mode=1 (opset 14+),
        # the running-statistics outputs (opsets 7-13) or is_test=0 (opsets 1-6)
        training = a.get("training_mode", 0) or (cv.opset < 7 and not a.get("is_test", 0))
        if training or any(n.output[1:]):
            raise _Unsupported("training mode")
        if not a.get("spatial", 1):
            raise _Unsupported("spatial=0 (per-activation statistics)")
        bn = cls(cv.need(n, 3), cv.need(n, 4), cv.need(n, 1), cv.need(n, 2),
                 float(a.get("epsilon", 1e-5)))  # fmt: skip
        src, shape, ax = cv.per(cv.lays[s.x], s.label)
        if ax != 0:
            raise _Unsupported("the batch axis is not the first")
        node, per = cv.chain(s.label, src, shape, [bn])
        cv.lays[n.output[0]] = canonical(node, per, cv.batch, 0)

    def spec_fields(self, put: Put) -> dict[str, Any]:
        return {"running_mean": put("running_mean", self.running_mean),
                "running_var": put("running_var", self.running_var),
                "weight": put("weight", self.weight), "bias": put("bias", self.bias),
                "eps": self.eps}  # fmt: skip

    # -- shapes and values ---------------------------------------------------------------
    @property
    def scale(self) -> Array:
        w = 1.0 if self.weight is None else self.weight
        return w / np.sqrt(self.running_var + self.eps)

    @property
    def shift(self) -> Array:
        b = 0.0 if self.bias is None else self.bias
        return b - self.running_mean * self.scale

    def out_shape(self, shape: Shape) -> Shape:
        if len(shape) < 1 or shape[0] != self.running_mean.shape[0]:
            raise mismatch("batchnorm", f"[{self.running_mean.shape[0]}, ...]", shape)
        return shape

    def broadcast(self, v: Array, ndim: int) -> Array:
        return v.reshape((1, -1) + (1,) * (ndim - 2))

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        """As PyTorch's CPU kernel computes it (checked bit for bit on fp16 and fp32):
        the statistics and affine parameters are stored (rounded to storage), then
        alpha = w / sqrt(var + eps) and beta = b - mean alpha in the accumulator
        ("opmath"), then y = x alpha + beta (one FMA), rounded to storage.  The bound
        rule covers this and the two-step order (x - mean) alpha + b alike."""
        acc = getattr(arith, "accumulate", None)

        def opmath(v: Array) -> Array:
            return v if acc is None else fround(v, acc)

        m, v = arith.store(self.running_mean), arith.store(self.running_var)
        w = 1.0 if self.weight is None else arith.store(self.weight)
        b = 0.0 if self.bias is None else arith.store(self.bias)
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            alpha = opmath(w / np.sqrt(opmath(v + self.eps)))
            beta = opmath(b - m * alpha)
        s, t = self.broadcast(alpha, x.ndim), self.broadcast(beta, x.ndim)
        return arith.func(lambda z: z * s + t, x)

    # -- bounds ------------------------------------------------------------------------------
    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int) -> Step:
        from ..bounds.steps import batchnorm_step

        return batchnorm_step(self, xs[0], rs[0], ctx, group)

    def has_quick(self) -> bool:
        return True

    def quick(self, q: Quick, lo: Context, ref: Context) -> Quick:
        from ..bounds.quick import scale_quick

        return scale_quick(self, q, lo, ref)

    def rule(self, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
        from ..bounds.rules import batchnorm_rule

        return batchnorm_rule(self, enc, ctx, index)

    # -- other executors ---------------------------------------------------------------------
    def torch_module(self, in_shapes: list[Shape]) -> Any:
        from ..hardware.torch_env import require_torch
        from ..hardware.torch_exec import float64_parameter

        torch = require_torch()
        nn = torch.nn
        shape = in_shapes[0]
        c = self.running_mean.shape[0]
        bns = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
        if len(shape) + 1 not in bns:
            raise FperrInputError(f"batchnorm on inputs {list(shape)} has no torch module")
        affine = self.weight is not None or self.bias is not None
        m = bns[len(shape) + 1](c, eps=self.eps, affine=affine, dtype=torch.float64)
        m.running_mean.copy_(torch.from_numpy(self.running_mean))
        m.running_var.copy_(torch.from_numpy(self.running_var))
        if affine:
            m.weight = float64_parameter(self.weight if self.weight is not None else np.ones(c))
            m.bias = float64_parameter(self.bias if self.bias is not None else np.zeros(c))
        return m

    def mpmath_forward(self, xs: list[Any]) -> Any:
        # from the definition (x - mean) / sqrt(var + eps) w + b: not the kernel's order
        import mpmath

        from ..mpmath_exec import to_mp

        x = xs[0]
        c = self.running_mean.shape[0]
        mean, var = to_mp(self.running_mean), to_mp(self.running_var)
        w = to_mp(self.weight) if self.weight is not None else to_mp(np.ones(c))
        b = to_mp(self.bias) if self.bias is not None else to_mp(np.zeros(c))
        eps = mpmath.mpf(self.eps)
        out = np.empty(x.shape, dtype=object)
        for ch in range(c):
            inv = 1 / mpmath.sqrt(var[ch] + eps)
            src, dst = x[:, ch].reshape(-1), out[:, ch]
            dst[...] = np.array([(v - mean[ch]) * inv * w[ch] + b[ch] for v in src],
                                dtype=object).reshape(dst.shape)  # fmt: skip
        return out
