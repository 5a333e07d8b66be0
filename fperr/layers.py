"""The model IR: one small dataclass per layer type, with its forward pass.

Shapes follow PyTorch: dense weight (out, in), conv weight (out, in/groups,
kh, kw), activations (N, C, H, W).  Each ``forward(x, arith)`` is written
once against :mod:`fperr.arith`, so the same code runs exactly (float64) or
emulated in any format.  ``out_shape`` infers shapes without data (per input,
batch dimension excluded) and raises :class:`~fperr.errors.SpecError` on a
mismatch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
from scipy.special import erf

from .arith import Arithmetic
from .errors import SpecError

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


# -- linear layers ------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class Dense:
    weight: Array  # (out, in)
    bias: Array | None = None
    type: str = "dense"

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
    """(N, C, H, W) -> (N, H'*W', C*kh*kw) patches, zero padded, in (c, i, j) order."""
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

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        return x  # inference: identity


# -- elementwise ------------------------------------------------------------------
def _sigmoid(x: Array) -> Array:
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _gelu(x: Array) -> Array:
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    "tanh": np.tanh,
    "sigmoid": _sigmoid,
    "gelu": _gelu,
}


@dataclass(frozen=True, eq=False)
class Activation:
    type: str  # relu, tanh, sigmoid, gelu, leaky_relu
    negative_slope: float = 0.01

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        if self.type == "relu":
            return np.maximum(x, 0.0)  # exact
        if self.type == "leaky_relu":
            return np.where(x > 0, x, arith.store(self.negative_slope * x))
        return arith.func(ACTIVATIONS[self.type], x)


def softmax(x: Array) -> Array:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


@dataclass(frozen=True, eq=False)
class Softmax:
    type: str = "softmax"

    def out_shape(self, shape: Shape) -> Shape:
        if len(shape) != 1:
            raise _mismatch("softmax", "a vector", shape)
        return shape

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        return arith.func(softmax, x)


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
        s = self.broadcast(arith.store(self.scale), x.ndim)
        t = self.broadcast(arith.store(self.shift), x.ndim)
        return arith.func(lambda v: v * s + t, x)


@dataclass(frozen=True, eq=False)
class LayerNorm:
    normalized_shape: Shape
    weight: Array | None = None
    bias: Array | None = None
    eps: float = 1e-5
    type: str = "layernorm"

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
