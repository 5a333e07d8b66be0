"""The model IR: one small dataclass per layer type, with its forward pass.

Shapes follow PyTorch: dense weight (out, in), conv weight (out, in/groups,
kh, kw), activations (N, C, H, W).  Each ``forward(x, arith)`` is written
once against :mod:`fperr.arith`, so the same code runs exactly (float64) or
emulated in any format.  ``out_shape`` infers shapes without data (per input,
batch dimension excluded) and raises :class:`~fperr.errors.SpecError` on a
mismatch.

Constructors check the structure of their parameters (array ranks and
lengths, sizes and strides >= 1, paddings >= 0, finite positive ``eps``,
nonnegative running variances) and raise :class:`~fperr.errors.SpecError`
with one line, so that a bad layer fails where it is made rather than as a
ZeroDivisionError or a numpy index error inside a forward pass.  Array
*values* (real dtype, finite) are checked once per model by
:class:`fperr.model.Model`: the bound rules build layers from rounded
weights, which may legitimately overflow to inf.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from scipy.special import erfc

from .arith import Arithmetic
from .errors import SpecError
from .rounding import round as fround

Array = npt.NDArray[np.float64]
Shape = tuple[int, ...]
Pair = tuple[int, int]


class Layer(Protocol):
    @property
    def type(self) -> str: ...

    def out_shape(self, shape: Shape) -> Shape: ...

    def forward(self, x: Array, arith: Arithmetic) -> Array: ...


def _mismatch(layer: str, expected: str, got: Shape) -> SpecError:
    return SpecError(f"{layer}: expects input {expected}, got {list(got)}")


# -- parameter checks (structure only; see the module docstring) -------------------
def _check_ints(layer: str, name: str, values: Iterable[object], low: int, n: int | None) -> None:
    """``values``: ``n`` integers (any count if None), each >= ``low``."""
    vals = tuple(values)
    ok = (n is None or len(vals) == n) and all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= low for v in vals
    )
    if not ok or not vals:
        count = f"{n} " if n is not None else ""
        raise SpecError(f"{layer}: {name} must be {count}integers >= {low}, got {list(vals)}")


def _check_array(layer: str, name: str, a: object, ndim: int, size: int | None = None) -> None:
    """``a``: a numpy array of rank ``ndim``, no empty axis, ``size`` entries if given."""
    if not isinstance(a, np.ndarray):
        raise SpecError(f"{layer}: {name} must be a numpy array, got {type(a).__name__}")
    if a.ndim != ndim or 0 in a.shape or (size is not None and a.size != size):
        want = f"{ndim}-D" + (f" with {size} entries" if size is not None else ", nonempty")
        raise SpecError(f"{layer}: {name} has shape {list(a.shape)}, expected {want}")


def _check_scalar(layer: str, name: str, v: object, low: float | None, strict: bool) -> None:
    """A finite real number, > ``low`` (``strict``) or >= ``low`` when given."""
    ok = False
    if isinstance(v, int | float | np.integer | np.floating) and math.isfinite(v):
        ok = low is None or bool(v > low if strict else v >= low)
    if not ok:
        bound = "" if low is None else f" {'>' if strict else '>='} {low:g}"
        raise SpecError(f"{layer}: {name} must be a finite number{bound}, got {v!r}")


# -- linear layers ------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Dense:
    weight: Array  # (out, in)
    bias: Array | None = None
    type: str = "dense"

    def __post_init__(self) -> None:
        _check_array("dense", "weight", self.weight, 2)
        if self.bias is not None:
            _check_array("dense", "bias", self.bias, 1, self.weight.shape[0])

    def out_shape(self, shape: Shape) -> Shape:
        if len(shape) != 1 or shape[0] != self.weight.shape[1]:
            raise _mismatch("dense", f"[{self.weight.shape[1]}]", shape)
        return (self.weight.shape[0],)

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        # numpy/cuBLAS semantics: x @ W.T rounded to storage, then the bias add
        # rounded again (an fp32 epilogue rounds once; the bounds cover both).
        # matmul operands: weights and activations both (TF32 rounds both)
        z = arith.matmul(arith.activation_operand(x), arith.to_operand(self.weight).T)
        if self.bias is not None:
            z = arith.store(z + arith.store(self.bias))
        return z


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


@dataclass(frozen=True, eq=False)
class Conv2d:
    weight: Array  # (out, in/groups, kh, kw)
    bias: Array | None = None
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    type: str = "conv2d"

    def __post_init__(self) -> None:
        _check_array("conv2d", "weight", self.weight, 4)
        _check_ints("conv2d", "stride", self.stride, 1, 2)
        _check_ints("conv2d", "padding", self.padding, 0, 2)
        _check_ints("conv2d", "dilation", self.dilation, 1, 2)
        _check_ints("conv2d", "groups", (self.groups,), 1, 1)
        if self.weight.shape[0] % self.groups:
            raise SpecError(f"conv2d: {self.weight.shape[0]} output channels do not split "
                            f"into {self.groups} groups")  # fmt: skip
        if self.bias is not None:
            _check_array("conv2d", "bias", self.bias, 1, self.weight.shape[0])

    @property
    def kernel(self) -> Pair:
        return (int(self.weight.shape[2]), int(self.weight.shape[3]))

    def out_shape(self, shape: Shape) -> Shape:
        cin = self.weight.shape[1] * self.groups
        if len(shape) != 3 or shape[0] != cin or self.weight.shape[0] % self.groups:
            raise _mismatch("conv2d", f"[{cin}, H, W]", shape)
        ho, wo = (
            conv_output_size(shape[d + 1], self.kernel[d], self.stride[d], self.padding[d],
                             self.dilation[d])
            for d in (0, 1)
        )  # fmt: skip
        if ho < 1 or wo < 1:
            raise _mismatch("conv2d", "an image at least as large as the kernel", shape)
        return (int(self.weight.shape[0]), ho, wo)

    def patches(self, x: Array) -> list[Array]:
        """im2col patches of each channel group."""
        cg = x.shape[1] // self.groups
        return [
            im2col(x[:, g * cg : (g + 1) * cg], self.kernel, self.stride, self.padding,
                   self.dilation)
            for g in range(self.groups)
        ]  # fmt: skip

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


# -- pooling and shape ----------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Pool2d:
    kind: str  # "max" or "avg"
    kernel: Pair
    stride: Pair
    padding: Pair = (0, 0)

    def __post_init__(self) -> None:
        if self.kind not in ("max", "avg"):
            raise SpecError(f"pool2d: kind must be 'max' or 'avg', got {self.kind!r}")
        _check_ints(self.type, "kernel_size", self.kernel, 1, 2)
        _check_ints(self.type, "stride", self.stride, 1, 2)
        _check_ints(self.type, "padding", self.padding, 0, 2)

    @property
    def type(self) -> str:
        return f"{self.kind}pool2d"

    def out_shape(self, shape: Shape) -> Shape:
        if len(shape) != 3:
            raise _mismatch(self.type, "[C, H, W]", shape)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel, strict=True)):
            raise SpecError(f"{self.type}: padding {list(self.padding)} exceeds half the kernel")
        ho, wo = (
            conv_output_size(shape[d + 1], self.kernel[d], self.stride[d], self.padding[d], 1)
            for d in (0, 1)
        )
        if ho < 1 or wo < 1:
            raise _mismatch(self.type, "an image at least as large as the window", shape)
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

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        win = self.windows(x)
        if self.kind == "max":
            return win.max(axis=-1)  # exact in any format
        k = self.kernel[0] * self.kernel[1]
        return arith.func(lambda v: v.sum(axis=-1) / k, win)


@dataclass(frozen=True, eq=False)
class Flatten:
    type: str = "flatten"

    def out_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        return x.reshape(x.shape[0], -1)


@dataclass(frozen=True, eq=False)
class Reshape:
    shape: Shape
    type: str = "reshape"

    def __post_init__(self) -> None:
        _check_ints("reshape", "shape", self.shape, 1, None)  # no -1: sizes are explicit

    def out_shape(self, shape: Shape) -> Shape:
        if math.prod(shape) != math.prod(self.shape):
            raise _mismatch("reshape", f"{math.prod(self.shape)} elements", shape)
        return tuple(self.shape)

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        return x.reshape((x.shape[0], *self.shape))


@dataclass(frozen=True, eq=False)
class Dropout:
    p: float = 0.5
    type: str = "dropout"

    def __post_init__(self) -> None:
        _check_scalar("dropout", "p", self.p, 0.0, False)
        if self.p > 1:
            raise SpecError(f"dropout: p must be a probability in [0, 1], got {self.p!r}")

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        return x  # inference: identity


# -- elementwise ------------------------------------------------------------------
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


@dataclass(frozen=True, eq=False)
class Activation:
    type: str  # one of ACTIVATION_TYPES
    negative_slope: float = 0.01  # leaky_relu
    alpha: float = 1.0  # elu

    def __post_init__(self) -> None:
        if self.type not in ACTIVATION_TYPES:
            raise SpecError(f"activation: unknown type {self.type!r}; valid: "
                            f"{', '.join(ACTIVATION_TYPES)}")  # fmt: skip
        _check_scalar(self.type, "negative_slope", self.negative_slope, None, False)
        _check_scalar(self.type, "alpha", self.alpha, None, False)

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


def softmax(x: Array, axis: int = -1) -> Array:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


@dataclass(frozen=True, eq=False)
class Softmax:
    """Softmax along one per-input ``axis`` (negative counts from the end): the
    attention scores (H, T, T) of a transformer along the last axis."""

    axis: int = -1
    type: str = "softmax"

    def out_shape(self, shape: Shape) -> Shape:
        if not -len(shape) <= self.axis < len(shape):
            raise SpecError(f"softmax: axis {self.axis} out of range for inputs of shape "
                            f"{list(shape)}")  # fmt: skip
        return shape

    def batched_axis(self, ndim: int) -> int:
        """The softmax axis of a batch ``(N, *shape)`` of ``ndim`` dimensions, >= 1."""
        return self.axis % (ndim - 1) + 1

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        if self.axis == -1:  # the vector case as it always was (bit for bit)
            return arith.func(softmax, x)
        ax = self.batched_axis(x.ndim)
        return arith.func(lambda v: softmax(v, ax), x)


# -- normalisation ----------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class BatchNorm:
    """Eval-mode batch norm over channel axis 1: y = x * scale + shift."""

    running_mean: Array
    running_var: Array
    weight: Array | None = None
    bias: Array | None = None
    eps: float = 1e-5
    type: str = "batchnorm"

    def __post_init__(self) -> None:
        _check_array("batchnorm", "running_mean", self.running_mean, 1)
        c = self.running_mean.shape[0]
        for name in ("running_var", "weight", "bias"):
            if name == "running_var" or getattr(self, name) is not None:
                _check_array("batchnorm", name, getattr(self, name), 1, c)
        _check_scalar("batchnorm", "eps", self.eps, 0.0, True)
        negative = np.flatnonzero(self.running_var < 0)
        if negative.size:  # a variance: sqrt(var + eps) would be NaN
            i, v = int(negative[0]), float(self.running_var[negative[0]])
            raise SpecError(f"batchnorm: running_var has {negative.size} negative entries "
                            f"(first {v!r} at index {i}); a variance is >= 0")  # fmt: skip

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
            raise _mismatch("batchnorm", f"[{self.running_mean.shape[0]}, ...]", shape)
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


@dataclass(frozen=True, eq=False)
class LayerNorm:
    normalized_shape: Shape
    weight: Array | None = None
    bias: Array | None = None
    eps: float = 1e-5
    type: str = "layernorm"

    def __post_init__(self) -> None:
        _check_ints("layernorm", "normalized_shape", self.normalized_shape, 1, None)
        for name in ("weight", "bias"):
            a = getattr(self, name)
            if a is not None:
                _check_array("layernorm", name, a, len(self.normalized_shape))
                if tuple(a.shape) != tuple(self.normalized_shape):
                    raise SpecError(f"layernorm: {name} has shape {list(a.shape)}, expected "
                                    f"normalized_shape {list(self.normalized_shape)}")  # fmt: skip
        _check_scalar("layernorm", "eps", self.eps, 0.0, True)

    def out_shape(self, shape: Shape) -> Shape:
        k = len(self.normalized_shape)
        if tuple(shape[-k:]) != tuple(self.normalized_shape):
            raise _mismatch("layernorm", f"[..., {list(self.normalized_shape)}]", shape)
        return shape

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        axes = tuple(range(x.ndim - len(self.normalized_shape), x.ndim))
        w = None if self.weight is None else arith.store(self.weight)
        b = None if self.bias is None else arith.store(self.bias)

        def f(v: Array) -> Array:
            mu = v.mean(axis=axes, keepdims=True)
            var = ((v - mu) ** 2).mean(axis=axes, keepdims=True)
            y = (v - mu) / np.sqrt(var + self.eps)
            y = y if w is None else y * w
            return y if b is None else y + b

        return arith.func(f, x)


RMS_EPS_DEFAULT = 2.0**-23
"""torch.finfo(torch.float32).eps: what ``nn.RMSNorm(eps=None)`` uses in float32, and
(measured bit for bit on torch 2.13 CPU) in float16 and bfloat16 too, whose kernel
computes in float32; a float64 torch run would use 2^-52 instead."""


@dataclass(frozen=True, eq=False)
class RMSNorm:
    """Root-mean-square norm over the trailing ``normalized_shape``:
    y = x / sqrt(mean(x^2) + eps) * w (Zhang & Sennrich 2019): layer norm without
    the centring and the bias.  ``eps`` is a number, never "the format's eps":
    importers pin torch's ``eps=None`` to :data:`RMS_EPS_DEFAULT`."""

    normalized_shape: Shape
    weight: Array | None = None
    eps: float = RMS_EPS_DEFAULT
    type: str = "rmsnorm"

    def __post_init__(self) -> None:
        _check_ints("rmsnorm", "normalized_shape", self.normalized_shape, 1, None)
        if self.weight is not None:
            _check_array("rmsnorm", "weight", self.weight, len(self.normalized_shape))
            if tuple(self.weight.shape) != tuple(self.normalized_shape):
                raise SpecError(f"rmsnorm: weight has shape {list(self.weight.shape)}, expected "
                                f"normalized_shape {list(self.normalized_shape)}")  # fmt: skip
        _check_scalar("rmsnorm", "eps", self.eps, 0.0, True)

    @property
    def bias(self) -> None:
        """No bias (so code shared with :class:`LayerNorm` reads one)."""
        return None

    def out_shape(self, shape: Shape) -> Shape:
        k = len(self.normalized_shape)
        if tuple(shape[-k:]) != tuple(self.normalized_shape):
            raise _mismatch("rmsnorm", f"[..., {list(self.normalized_shape)}]", shape)
        return shape

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        """Exact on the stored input and weight, rounded once to storage: torch's
        CPU kernel computes x * rsqrt(mean(x^2) + eps) * w in float32 and rounds
        once (checked bit for bit on float16 and bfloat16); the bound rule allows
        for the float32 steps."""
        axes = tuple(range(x.ndim - len(self.normalized_shape), x.ndim))
        w = None if self.weight is None else arith.store(self.weight)

        def f(v: Array) -> Array:
            y = v / np.sqrt(np.mean(v * v, axis=axes, keepdims=True) + self.eps)
            return y if w is None else y * w

        return arith.func(f, x)


@dataclass(frozen=True, eq=False)
class Residual:
    """y = x + F(x), F a nested list of layers with the same output shape."""

    layers: tuple[Layer, ...]
    type: str = "residual"

    def out_shape(self, shape: Shape) -> Shape:
        s = shape
        for i, layer in enumerate(self.layers):
            try:
                s = layer.out_shape(s)
            except SpecError as exc:
                raise SpecError(f"residual branch layer {i} ({layer.type}): {exc}") from None
        if s != shape:
            raise SpecError(f"residual: branch output {list(s)} differs from input {list(shape)}")
        return shape

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        h = x
        for layer in self.layers:
            h = layer.forward(h, arith)
        return arith.store(x + h)


def parameters(layer: Layer) -> list[Array]:
    """Every parameter array of a layer, those of a residual block's layers included."""
    if isinstance(layer, Residual):
        return [p for sub in layer.layers for p in parameters(sub)]
    return [v for v in vars(layer).values() if isinstance(v, np.ndarray)]


# -- merges: operators with several inputs (graph models) ---------------------------
class _Merge:
    """What a merge answers where one input is expected: it reads several (a graph)."""

    type: str

    def out_shape(self, shape: Shape) -> Shape:
        raise SpecError(f"{self.type} reads several inputs: it needs a graph model ('inputs:')")

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        raise SpecError(f"{self.type} reads several inputs: it needs a graph model ('inputs:')")


@dataclass(frozen=True, eq=False)
class Add(_Merge):
    """y = a + b of two activations of one shape, rounded once to storage (a
    projection shortcut ``proj(x) + f(x)``; both operands carry error)."""

    type: str = "add"
    arity: int = 2

    def merge_shape(self, shapes: list[Shape]) -> Shape:
        if len(shapes) != 2 or shapes[0] != shapes[1]:
            got = [list(s) for s in shapes]
            raise SpecError(f"add: expects two inputs of one shape, got {got}")
        return shapes[0]

    def merge(self, xs: list[Array], arith: Arithmetic) -> Array:
        return arith.store(xs[0] + xs[1])


@dataclass(frozen=True, eq=False)
class Concat(_Merge):
    """Inputs joined along ``axis`` of the per-input shape (0: channels); exact."""

    axis: int = 0
    type: str = "concat"
    arity: int = 0  # any number >= 2

    def __post_init__(self) -> None:
        _check_ints("concat", "axis", (self.axis,), 0, 1)

    def merge_shape(self, shapes: list[Shape]) -> Shape:
        a = self.axis
        ok = len(shapes) >= 2 and all(len(s) > a for s in shapes)
        ok = ok and all(s[:a] + s[a + 1 :] == shapes[0][:a] + shapes[0][a + 1 :] for s in shapes)
        if not ok:
            raise SpecError(f"concat: inputs {[list(s) for s in shapes]} differ outside axis {a}")
        return (*shapes[0][:a], sum(s[a] for s in shapes), *shapes[0][a + 1 :])

    def merge(self, xs: list[Array], arith: Arithmetic) -> Array:
        return np.concatenate(xs, axis=self.axis + 1)


def is_merge(layer: object) -> bool:
    """Whether a layer reads several inputs (``merge``) rather than one (``forward``):
    the merges above and registered operators (:mod:`fperr.operators`) of arity != 1."""
    return getattr(layer, "arity", 1) != 1
