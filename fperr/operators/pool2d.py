"""maxpool2d / avgpool2d: ``torch.nn.MaxPool2d`` and ``AvgPool2d`` (zero padding
counted, ``count_include_pad=True``).

Max pooling is exact in every format: the error of an output is the winner's
when it wins for every run, else at most the largest error in the window
(|max a - max b| <= max |a_i - b_i|).  Average pooling is a sum of the window
then one division: the linear map plus the sum's accumulation error (Higham
2002, eq. 4.4) and one storage rounding.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import numpy.typing as npt

from ..errors import SpecError
from .base import Array, Operator, OperatorSpec, Put, Shape, Weights, register
from .checks import NonNegPair, Pair, PosPair, check_ints, mismatch, pair

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


class MaxPool2dSpec(OperatorSpec):
    type: Literal["maxpool2d"]
    kernel_size: PosPair
    stride: PosPair | None = None
    padding: NonNegPair = 0


class AvgPool2dSpec(OperatorSpec):
    type: Literal["avgpool2d"]
    kernel_size: PosPair
    stride: PosPair | None = None
    padding: NonNegPair = 0


@register
@dataclass(frozen=True, eq=False)
class Pool2d(Operator):
    kind: str  # "max" or "avg"
    kernel: Pair
    stride: Pair
    padding: Pair = (0, 0)
    types = ("maxpool2d", "avgpool2d")
    Spec = MaxPool2dSpec
    uses_spread = True
    torch_module_classes = (("MaxPool2d", False), ("AvgPool2d", False),
                            ("AdaptiveAvgPool2d", False))  # fmt: skip
    onnx_ops = ("MaxPool", "AveragePool")

    def __post_init__(self) -> None:
        if self.kind not in ("max", "avg"):
            raise SpecError(f"pool2d: kind must be 'max' or 'avg', got {self.kind!r}")
        check_ints(self.type, "kernel_size", self.kernel, 1, 2)
        check_ints(self.type, "stride", self.stride, 1, 2)
        check_ints(self.type, "padding", self.padding, 0, 2)

    @property
    def type(self) -> str:  # type: ignore[override]  # one class, two types: the instance's
        return f"{self.kind}pool2d"

    def sharpen_threshold(self) -> float | None:
        # max pooling's winners decide the error; average pooling is linear
        from ..bounds.backward import SHARPEN_KINK

        return SHARPEN_KINK if self.kind == "max" else None

    def unstable(self, x: Array, reach: Array) -> npt.NDArray[np.bool_] | None:
        # a window whose winner is sure passes its error on exactly, whatever the ranges
        from ..bounds.rules import winner_in_doubt

        return winner_in_doubt(self, x, reach) if self.kind == "max" else None

    @classmethod
    def specs(cls) -> tuple[builtins.type[OperatorSpec], ...]:
        return (MaxPool2dSpec, AvgPool2dSpec)

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        return cls.example_for("maxpool2d", rng)

    @classmethod
    def example_for(cls, type_name: str, rng: np.random.Generator) -> Model:
        from ..model import Model
        from .conv2d import Conv2d
        from .dense import Dense
        from .flatten import Flatten

        w = rng.normal(size=(3, 2, 3, 3)) / 3
        head = rng.normal(size=(3, 3 * 3 * 3)) / 3
        pool = cls(type_name[:3], (3, 3), (2, 2), (1, 1))
        return Model(type_name, (2, 6, 6), (Conv2d(w, None, padding=(1, 1)), pool, Flatten(),
                                            Dense(head)))  # fmt: skip

    fx_functions = ("torch.nn.functional.max_pool2d", "torch.nn.functional.avg_pool2d",
                    "torch.nn.functional.adaptive_avg_pool2d")  # fmt: skip
    aten_ops = ("aten.max_pool2d", "aten.avg_pool2d", "aten.adaptive_avg_pool2d")

    @classmethod
    def from_fx(cls, node: Any, label: str, params: Any) -> Any:
        """F.max_pool2d and F.avg_pool2d without the options the IR lacks;
        F.adaptive_avg_pool2d as a plain average pool (sizes that divide)."""
        import torch.nn.functional as F

        from ..importers.builders import _const, _pair
        from ..importers.from_torch import _adaptive_avg, _arg, _unary
        from ..importers.graph import _Unsupported

        if node.target is F.adaptive_avg_pool2d:
            return _unary(node, label, _adaptive_avg(_arg(node, 1, "output_size")))
        kind = "max" if node.target is F.max_pool2d else "avg"
        k = _pair(_arg(node, 1, "kernel_size"))
        st = _arg(node, 2, "stride")
        st = _pair(st) if st else k
        pad = _pair(_arg(node, 3, "padding", 0))
        if kind == "max":
            dil = _pair(_arg(node, 4, "dilation", 1))
            bad = (
                dil != (1, 1)
                or _arg(node, 5, "ceil_mode", False)
                or _arg(node, 6, "return_indices", False)
            )
        else:
            bad = (_arg(node, 4, "ceil_mode", False) or _arg(node, 6, "divisor_override")
                   or (not _arg(node, 5, "count_include_pad", True) and any(pad)))  # fmt: skip
        if bad:
            raise _Unsupported("options")
        return _unary(node, label, _const([cls(kind, k, st, pad)]))

    @classmethod
    def from_aten(cls, n: Any, label: str, ctx: Any) -> Any:
        from ..importers.builders import _const, _pair
        from ..importers.from_torch import _adaptive_avg
        from ..importers.graph import _Unsupported
        from ..importers.torch_export import _a, _kind, _unary

        if _kind(n) == "aten.adaptive_avg_pool2d":
            return _unary(n, label, ctx, _adaptive_avg(list(n.args[1])))
        kind = "max" if "max" in str(n.target) else "avg"
        k = _pair(n.args[1])
        st = _a(n, 2, "stride")
        st = _pair(st) if st else k
        pad = _pair(_a(n, 3, "padding", 0))
        if kind == "max":
            bad = _pair(_a(n, 4, "dilation", 1)) != (1, 1) or _a(n, 5, "ceil_mode", False)
        else:
            bad = (_a(n, 4, "ceil_mode", False) or _a(n, 6, "divisor_override") is not None
                   or (not _a(n, 5, "count_include_pad", True) and any(pad)))  # fmt: skip
        if bad:
            raise _Unsupported("ceil_mode, dilation, divisor_override or count_include_pad")
        return _unary(n, label, ctx, _const([cls(kind, k, st, pad)]))

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        k = pair(spec.kernel_size)
        return cls(spec.type[:3], k, pair(spec.stride, k), pair(spec.padding))

    @classmethod
    def from_torch_module(cls, mod: Any) -> Any:
        """nn.MaxPool2d, nn.AvgPool2d (floor mode), nn.AdaptiveAvgPool2d (sizes that divide)."""
        from torch import nn

        from ..importers.builders import _const, _pair
        from ..importers.from_torch import _adaptive_avg
        from ..importers.graph import _Unsupported

        if isinstance(mod, nn.AdaptiveAvgPool2d):
            return _adaptive_avg(mod.output_size), None, False
        if isinstance(mod, nn.MaxPool2d):
            if mod.ceil_mode or mod.return_indices or _pair(mod.dilation) != (1, 1):
                raise _Unsupported("ceil_mode, return_indices or dilation")
            k = _pair(mod.kernel_size)
            st = _pair(mod.stride) if mod.stride else k
            return _const([cls("max", k, st, _pair(mod.padding))]), None, False
        pad = _pair(mod.padding)
        if mod.ceil_mode or mod.divisor_override or (not mod.count_include_pad and any(pad)):
            raise _Unsupported("ceil_mode, divisor_override or count_include_pad=False")
        k = _pair(mod.kernel_size)
        st = _pair(mod.stride) if mod.stride else k
        return _const([cls("avg", k, st, pad)]), None, False

    @classmethod
    def from_onnx(cls, cv: Cv, n: onnx.NodeProto, s: Site) -> None:
        """MaxPool and AveragePool of [N, C, H, W] (floor mode, no dilations, the
        indices output unused; count_include_pad=0 only without padding)."""
        from ..importers.builders import _pair
        from ..importers.graph import _Unsupported
        from ..importers.onnx_nodes import _same_pads
        from ..importers.onnx_ops import _pads, image

        a = s.attrs
        if a.get("ceil_mode", 0) or _pair(a.get("dilations", 1)) != (1, 1):
            raise _Unsupported("ceil_mode or dilations")
        if len(n.output) > 1 and n.output[1] and cv.readers.get(n.output[1]):
            raise _Unsupported("indices output")
        if "kernel_shape" not in a:
            raise _Unsupported("no kernel_shape")
        kind = "max" if n.op_type == "MaxPool" else "avg"
        k, stride = _pair(a["kernel_shape"]), _pair(a.get("strides", 1))
        pads = _pads(a)
        exclude = kind == "avg" and not a.get("count_include_pad", 0)
        if exclude and pads is not None and any(pads):
            raise _Unsupported("count_include_pad=0 with padding")

        def build(shape: Shape) -> list[Any]:
            p = _same_pads(shape, k, stride, (1, 1)) if pads is None else pads
            if exclude and any(p):
                raise SpecError("count_include_pad=0 with padding is not supported")
            return [cls(kind, k, stride, p)]

        image(cv, n, s, build)

    def spec_fields(self, put: Put) -> dict[str, Any]:
        return {"kernel_size": list(self.kernel), "stride": list(self.stride),
                "padding": list(self.padding)}  # fmt: skip

    # -- shapes and values ---------------------------------------------------------------
    def out_shape(self, shape: Shape) -> Shape:
        if len(shape) != 3:
            raise mismatch(self.type, "[C, H, W]", shape)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel, strict=True)):
            raise SpecError(f"{self.type}: padding {list(self.padding)} exceeds half the kernel")
        from .conv2d import conv_output_size

        ho, wo = (
            conv_output_size(shape[d + 1], self.kernel[d], self.stride[d], self.padding[d], 1)
            for d in (0, 1)
        )
        if ho < 1 or wo < 1:
            raise mismatch(self.type, "an image at least as large as the window", shape)
        return (shape[0], ho, wo)

    def windows(self, x: Array) -> Array:
        """(N, C, H', W', kh*kw) windows; max pooling pads with -inf, avg with 0."""
        n, c = x.shape[:2]
        fill = -np.inf if self.kind == "max" else 0.0
        ph, pw = self.padding
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
        _, ho, wo = self.out_shape(x.shape[1:])
        (kh, kw), (sh, sw) = self.kernel, self.stride
        out = np.empty((n, c, ho, wo, kh * kw), dtype=x.dtype)
        for i in range(kh):
            for j in range(kw):
                out[..., i * kw + j] = xp[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw]
        return out

    def _max(self, x: Array) -> Array:
        """The windows' maxima (NaN where a window holds one), one strided
        np.maximum per kernel offset: some 20 times faster than reducing the copied
        windows (:meth:`windows`) on the digits CNN's pooling layers."""
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        _, ho, wo = self.out_shape(x.shape[1:])
        xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
        out: Array | None = None
        for i in range(kh):
            for j in range(kw):
                v = xp[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw]
                out = v.copy() if out is None else np.maximum(out, v, out=out)
        assert out is not None  # a kernel has at least one offset
        return out

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        if self.kind == "max":  # exact in any format
            return self._max(x)
        win = self.windows(x)
        k = self.kernel[0] * self.kernel[1]
        return arith.func(lambda v: v.sum(axis=-1) / k, win)

    # -- bounds ------------------------------------------------------------------------------
    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int,
             spread: list[Array] | None = None) -> Step:  # fmt: skip
        from ..bounds.steps import pool_step

        return pool_step(self, xs[0], rs[0], ctx, group, None if spread is None else spread[0])

    def has_quick(self) -> bool:
        return self.kind == "max"  # exact in every format

    def quick(self, q: Quick, lo: Context, ref: Context) -> Quick:
        from ..bounds.quick import max_quick

        if not self.has_quick():
            return super().quick(q, lo, ref)
        return max_quick(q, lambda x: self.forward(x, lo.arith))

    def rule(self, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
        from ..bounds.rules import pool_rule

        return pool_rule(self, enc, ctx, index)

    def apriori(self, lo: Array, hi: Array, r: Array, arith: Any,
                out_shape: Shape) -> tuple[Array, Array, Array]:  # fmt: skip
        from ..bounds.apriori import pool_apriori

        return pool_apriori(self, lo, hi, r, arith)

    def zonotope_matrix_floats(self, in_shape: Shape, out_shape: Shape) -> int:
        if self.kind != "avg":
            return 0
        n, m = int(np.prod(in_shape)), int(np.prod(out_shape))
        patches = n * m * self.kernel[0] * self.kernel[1]  # windows of the n unit images
        return n * n + patches + 3 * n * m

    # -- other executors ---------------------------------------------------------------------
    def torch_module(self, in_shapes: list[Shape]) -> Any:
        from ..hardware.torch_env import require_torch

        nn = require_torch().nn
        if self.kind == "max":
            return nn.MaxPool2d(self.kernel, self.stride, self.padding)
        return nn.AvgPool2d(self.kernel, self.stride, self.padding, count_include_pad=True)

    def mpmath_forward(self, xs: list[Any]) -> Any:
        import mpmath

        x = xs[0]
        n, c, h, wd = x.shape
        (kh, kw), (sh, sw), (ph, pw) = self.kernel, self.stride, self.padding
        ho = (h + 2 * ph - kh) // sh + 1
        wo = (wd + 2 * pw - kw) // sw + 1
        out = np.empty((n, c, ho, wo), dtype=object)
        k = mpmath.mpf(kh * kw)
        for s in range(n):
            for ch in range(c):
                for i in range(ho):
                    for j in range(wo):
                        vals = [
                            x[s, ch, r, q]
                            for r in range(i * sh - ph, i * sh - ph + kh)
                            for q in range(j * sw - pw, j * sw - pw + kw)
                            if 0 <= r < h and 0 <= q < wd
                        ]
                        if self.kind == "max":
                            out[s, ch, i, j] = max(vals)  # padding is -inf: never chosen
                        else:
                            out[s, ch, i, j] = mpmath.fsum(vals) / k  # zero padding counts
        return out
