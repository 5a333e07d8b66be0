"""conv2d: ``torch.nn.Conv2d`` (stride, padding, dilation, groups; depthwise
when groups equals the channels).

Computed as dense products over im2col patches, one matmul per channel group,
then the bias add rounded to storage; the bound is the dense layer's lemma
with n = C/g kh kw terms per output (:func:`fperr.bounds.rules.conv_local`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from ..errors import SpecError
from .base import Array, Operator, OperatorSpec, Put, Shape, Weights, register
from .checks import NonNegPair, Pair, PosInt, PosPair, check_array, check_ints, mismatch, pair
from .dense import mp_parameters, with_parameters

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


class Conv2dSpec(OperatorSpec):
    type: Literal["conv2d"]
    weight: str = Field(description="key of the (out, in/groups, kh, kw) kernel")
    bias: str | None = None
    stride: PosPair = 1
    padding: NonNegPair = 0
    dilation: PosPair = 1
    groups: PosInt = 1


def conv_output_size(n: int, k: int, stride: int, pad: int, dil: int) -> int:
    return (n + 2 * pad - dil * (k - 1) - 1) // stride + 1


def im2col(x: Array, kernel: Pair, stride: Pair, padding: Pair, dilation: Pair) -> Array:
    """``(N, C, H, W) -> (N, H'*W', C*kh*kw)`` patches, zero padded, in (c, i, j) order."""
    n, c, h, w = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    ho = conv_output_size(h, kh, sh, ph, dh)
    wo = conv_output_size(w, kw, sw, pw, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    cols = np.empty((n, c, kh, kw, ho, wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            hi, wj = i * dh, j * dw
            cols[:, :, i, j] = xp[:, :, hi : hi + sh * ho : sh, wj : wj + sw * wo : sw]
    return cols.reshape(n, c * kh * kw, ho * wo).transpose(0, 2, 1)


@register
@dataclass(frozen=True, eq=False)
class Conv2d(Operator):
    weight: Array  # (out, in/groups, kh, kw)
    bias: Array | None = None
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    type = "conv2d"
    Spec = Conv2dSpec
    torch_module_classes = (("Conv2d", True),)
    onnx_ops = ("Conv",)

    def __post_init__(self) -> None:
        check_array("conv2d", "weight", self.weight, 4)
        check_ints("conv2d", "stride", self.stride, 1, 2)
        check_ints("conv2d", "padding", self.padding, 0, 2)
        check_ints("conv2d", "dilation", self.dilation, 1, 2)
        check_ints("conv2d", "groups", (self.groups,), 1, 1)
        if self.weight.shape[0] % self.groups:
            raise SpecError(f"conv2d: {self.weight.shape[0]} output channels do not split "
                            f"into {self.groups} groups")  # fmt: skip
        if self.bias is not None:
            check_array("conv2d", "bias", self.bias, 1, self.weight.shape[0])

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        from ..model import Model
        from .dense import Dense
        from .flatten import Flatten

        w1, b1 = rng.normal(size=(4, 2, 3, 3)) / 3, rng.normal(size=4) / 4
        w2 = rng.normal(size=(4, 2, 2, 2)) / 2  # grouped, strided, dilated
        head = rng.normal(size=(3, 4 * 2 * 4)) / 4
        return Model("conv2d", (2, 6, 6), (
            cls(w1, b1, padding=(1, 1)), cls(w2, None, (2, 2), (0, 1), (2, 1), 2),
            Flatten(), Dense(head)))  # fmt: skip

    fx_functions = ("torch.nn.functional.conv2d",)
    aten_ops = ("aten.conv2d",)

    @classmethod
    def from_fx(cls, node: Any, label: str, params: Any) -> Any:
        from ..importers.builders import _const, _pair
        from ..importers.from_torch import _arg, _unary
        from ..importers.graph import _Unsupported

        w = params(_arg(node, 1, "weight"))
        pad = _arg(node, 4, "padding", 0)
        if w is None or isinstance(pad, str):
            raise _Unsupported("weight is not a parameter, or string padding")
        conv = cls(w, params(_arg(node, 2, "bias")), _pair(_arg(node, 3, "stride", 1)),
                   _pair(pad), _pair(_arg(node, 5, "dilation", 1)),
                   int(_arg(node, 6, "groups", 1)))  # fmt: skip
        return _unary(node, label, _const([conv]))

    @classmethod
    def from_aten(cls, n: Any, label: str, ctx: Any) -> Any:
        from ..importers.builders import _const, _pair
        from ..importers.graph import _Unsupported
        from ..importers.torch_export import _a, _need, _opt, _unary

        pad = _a(n, 4, "padding", 0)
        if isinstance(pad, str):
            raise _Unsupported(f"padding={pad!r}")
        conv = cls(_need(ctx, n.args[1], "weight"), _opt(ctx, _a(n, 2, "bias"), "bias"),
                   _pair(_a(n, 3, "stride", 1)), _pair(pad), _pair(_a(n, 5, "dilation", 1)),
                   int(_a(n, 6, "groups", 1)))  # fmt: skip
        return _unary(n, label, ctx, _const([conv]))

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        weight = weights.need(spec.weight, where, 4)
        bias = weights.get(spec.bias, where, 1)
        return cls(weight, bias, pair(spec.stride), pair(spec.padding), pair(spec.dilation),
                   spec.groups)  # fmt: skip

    @classmethod
    def from_torch_module(cls, mod: Any) -> Any:
        """nn.Conv2d with zero padding ('same' where it is symmetric)."""
        from ..importers.builders import _const, _pair
        from ..importers.from_torch import _need, _np
        from ..importers.graph import _Unsupported

        if mod.padding_mode != "zeros":
            raise _Unsupported(f"padding_mode={mod.padding_mode!r}")
        k = _pair(mod.kernel_size)
        d = _pair(mod.dilation)
        if mod.padding == "valid":
            pad = (0, 0)
        elif mod.padding == "same":
            tot = [d[i] * (k[i] - 1) for i in (0, 1)]
            if any(t % 2 for t in tot):
                raise _Unsupported("padding='same' with asymmetric padding")
            pad = (tot[0] // 2, tot[1] // 2)
        else:
            pad = _pair(mod.padding)
        layer = cls(_need(mod.weight, "weight"), _np(mod.bias), _pair(mod.stride), pad, d,
                    int(mod.groups))  # fmt: skip
        return _const([layer]), None, False

    @classmethod
    def from_onnx(cls, cv: Cv, n: onnx.NodeProto, s: Site) -> None:
        """A 2-D Conv of [N, C, H, W] with symmetric pads (auto_pad SAME_* where the
        input's shape makes them symmetric)."""
        from ..importers.builders import _pair
        from ..importers.graph import _Unsupported
        from ..importers.onnx_nodes import _same_pads
        from ..importers.onnx_ops import _pads, image

        a = s.attrs
        w = cv.need(n, 1)
        if w.ndim != 4:
            raise _Unsupported(f"{w.ndim - 2}-D convolution")
        bias, group = cv.const(n, 2), int(a.get("group", 1))
        stride, dil = _pair(a.get("strides", 1)), _pair(a.get("dilations", 1))
        k = (int(w.shape[2]), int(w.shape[3]))
        pads = _pads(a)

        def build(shape: Shape) -> list[Any]:
            p = _same_pads(shape, k, stride, dil) if pads is None else pads
            return [cls(w, bias, stride, p, dil, group)]

        image(cv, n, s, build)

    def spec_fields(self, put: Put) -> dict[str, Any]:
        return {"weight": put("weight", self.weight), "bias": put("bias", self.bias),
                "stride": list(self.stride), "padding": list(self.padding),
                "dilation": list(self.dilation), "groups": self.groups}  # fmt: skip

    # -- shapes and values ---------------------------------------------------------------
    @property
    def kernel(self) -> Pair:
        return (int(self.weight.shape[2]), int(self.weight.shape[3]))

    def out_shape(self, shape: Shape) -> Shape:
        cin = self.weight.shape[1] * self.groups
        if len(shape) != 3 or shape[0] != cin or self.weight.shape[0] % self.groups:
            raise mismatch("conv2d", f"[{cin}, H, W]", shape)
        ho, wo = (
            conv_output_size(shape[d + 1], self.kernel[d], self.stride[d], self.padding[d],
                             self.dilation[d])
            for d in (0, 1)
        )  # fmt: skip
        if ho < 1 or wo < 1:
            raise mismatch("conv2d", "an image at least as large as the kernel", shape)
        return (int(self.weight.shape[0]), ho, wo)

    def patches(self, x: Array) -> list[Array]:
        """im2col patches of each channel group: one im2col of every channel, whose
        (c, i, j) columns hold each group's as one block (a depthwise convolution of
        576 channels would otherwise pad and gather 576 times per call)."""
        k = (x.shape[1] // self.groups) * self.kernel[0] * self.kernel[1]
        cols = im2col(x, self.kernel, self.stride, self.padding, self.dilation)
        return [cols[:, :, g * k : (g + 1) * k] for g in range(self.groups)]

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        n = x.shape[0]
        _, ho, wo = self.out_shape(x.shape[1:])
        w = arith.to_operand(self.weight)
        og = w.shape[0] // self.groups
        outs = []
        for g, cols in enumerate(self.patches(arith.activation_operand(x))):
            wg = w[g * og : (g + 1) * og].reshape(og, -1)
            outs.append(arith.matmul(cols, wg.T))  # (N, L, og)
        z = np.concatenate(outs, axis=2).transpose(0, 2, 1).reshape(n, -1, ho, wo)
        if self.bias is not None:
            z = arith.store(z + arith.store(self.bias)[None, :, None, None])
        return z

    # -- bounds ------------------------------------------------------------------------------
    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int) -> Step:
        from ..bounds.steps import conv2d_step

        return conv2d_step(self, xs[0], rs[0], ctx, group)

    def has_quick(self) -> bool:
        return True

    def quick(self, q: Quick, lo: Context, ref: Context) -> Quick:
        from ..bounds.quick import affine_quick
        from ..bounds.rules import conv_sums, conv_with

        bias = None if self.bias is None else self.bias.reshape(1, -1, 1, 1)
        return affine_quick(self, q, lo, ref, lambda a, x: conv_sums(self, a, x),
                            lambda m, v: conv_with(self, m, v), self.weight, bias,
                            int(np.prod(self.weight.shape[1:])))  # fmt: skip

    def rule(self, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
        from ..bounds.rules import conv_rule

        return conv_rule(self, enc, ctx, index)

    def apriori(self, lo: Array, hi: Array, r: Array, arith: Any,
                out_shape: Shape) -> tuple[Array, Array, Array]:  # fmt: skip
        from ..bounds.apriori import affine_apriori

        return affine_apriori(self, lo, hi, r, arith)

    def zonotope_matrix_floats(self, in_shape: Shape, out_shape: Shape) -> int:
        n, m = math.prod(in_shape), math.prod(out_shape)
        kh, kw = self.kernel
        patches = n * in_shape[0] * kh * kw * out_shape[1] * out_shape[2]  # im2col of unit images
        return n * n + patches + 3 * n * m

    def work(self, in_shapes: list[Shape], out_shape: Shape) -> float:
        return float(math.prod(out_shape) * math.prod(self.weight.shape[1:]))

    def products(self, in_shapes: list[Shape], out_shape: Shape) -> int:
        return math.prod(out_shape) * math.prod(self.weight.shape[1:])

    # -- other executors ---------------------------------------------------------------------
    def torch_module(self, in_shapes: list[Shape]) -> Any:
        from ..hardware.torch_env import require_torch

        torch = require_torch()
        o, ig, kh, kw = self.weight.shape
        m = torch.nn.Conv2d(ig * self.groups, o, (kh, kw), self.stride, self.padding,
                            self.dilation, self.groups, bias=self.bias is not None,
                            dtype=torch.float64)  # fmt: skip
        return with_parameters(m, self.weight, self.bias)

    def mpmath_forward(self, xs: list[Any]) -> Any:
        # direct loops over the window (no im2col): independent of :meth:`forward`
        import mpmath

        x = xs[0]
        w, bias = mp_parameters(self.weight, self.bias)
        n, _, h, wd = x.shape
        o, cg, kh, kw = w.shape
        (sh, sw), (ph, pw), (dh, dw), g = self.stride, self.padding, self.dilation, self.groups
        ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        og = o // g
        zero = mpmath.mpf(0)
        out = np.empty((n, o, ho, wo), dtype=object)
        for s in range(n):
            for oc in range(o):
                grp = oc // og
                for i in range(ho):
                    for j in range(wo):
                        terms = []
                        for ci in range(cg):
                            cin = grp * cg + ci
                            for a in range(kh):
                                r = i * sh - ph + a * dh
                                if not 0 <= r < h:
                                    continue
                                for b in range(kw):
                                    q = j * sw - pw + b * dw
                                    if 0 <= q < wd:
                                        terms.append(x[s, cin, r, q] * w[oc, ci, a, b])
                        z = mpmath.fsum(terms) if terms else zero
                        out[s, oc, i, j] = z if bias is None else z + bias[oc]
        return out
