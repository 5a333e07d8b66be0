"""Training-mode forward and backward of each layer type, float64 (numpy only).

One ``_fwd_*`` / ``_bwd_*`` pair per layer type.  ``forward(layer, x)``
returns the output and a cache; ``backward_layer(layer, cache, dy)`` returns
``dL/dx`` and the gradients of the layer's parameters, keyed by the
parameter's attribute name (``"weight"``, ``"bias"``; a residual block's by
``"{j}.weight"`` of its branch layer ``j``).  Graph nodes that read several
inputs (add, concat, mul, matmul) go through ``forward_node``/``backward_node``,
which take and return one array per wired input.  Every backward is the exact
vector-Jacobian product of the float64 forward of :mod:`fperr.operators`.

Training mode differs from the inference forward of :mod:`fperr.layers` in
one place: batch norm normalises with the batch statistics (biased variance,
as ``torch.nn.functional.batch_norm(training=True)``) and reports them for the
running-statistics update.  Dropout is the identity (its expectation; the
random mask does not change which magnitudes the gradients reach).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import erfc

from ..arith import Exact
from ..errors import FperrInputError
from ..layers import (
    Activation,
    Add,
    BatchNorm,
    Concat,
    Conv2d,
    Dense,
    Dropout,
    Flatten,
    Layer,
    LayerNorm,
    Pool2d,
    Reshape,
    Residual,
    Softmax,
    is_merge,
    softmax,
)
from ..operators.base import check_axis
from ..operators.constant import Constant
from ..operators.linear import Linear
from ..operators.matmul import MatMul
from ..operators.mul import Mul
from ..operators.permute import Permute
from ..operators.scale import Scale
from ..operators.slice import Slice
from ..operators.sum import Sum
from .constants import Array

SUPPORTED = (
    "dense, linear, conv2d, max/avg pool2d, batchnorm, layernorm, residual, flatten, reshape, "
    "dropout, relu/relu6/leaky_relu/tanh/sigmoid/gelu, softmax, add, concat, mul, matmul, "
    "permute, slice, scale, constant, mean, sum"
)
_ONE_INPUT = (Dense, Linear, Conv2d, Pool2d, BatchNorm, LayerNorm, Flatten, Reshape, Dropout,
              Activation, Softmax, Permute, Slice, Scale, Constant, Sum)  # fmt: skip
_MERGES = (Add, Concat, Mul, MatMul)


@dataclass
class Cache:
    """What a layer's backward needs from its forward; ``stats``: batch-norm batch statistics."""

    x: Array
    y: Array
    extra: dict[str, Any] = field(default_factory=dict)


def refuse_unsupported(layer: Layer, where: str) -> None:
    """FperrInputError in one line for a layer type without a training backward."""
    if isinstance(layer, Residual):
        for j, sub in enumerate(layer.layers):
            refuse_unsupported(sub, f"{where}.{j}")
        return
    if not isinstance(layer, _ONE_INPUT + _MERGES):
        raise FperrInputError(f"check-training supports {SUPPORTED}; layer {where} is {layer.type}")


# -- dense and conv2d (Higham 2002 is not needed here: these are exact float64) --------------
def _fwd_dense(layer: Dense, x: Array) -> Cache:
    y = x @ layer.weight.T
    if layer.bias is not None:
        y = y + layer.bias
    return Cache(x, y)


def _bwd_dense(layer: Dense, c: Cache, dy: Array) -> tuple[Array, dict[str, Array]]:
    g = {"weight": dy.T @ c.x}
    if layer.bias is not None:
        g["bias"] = dy.sum(axis=0)
    return dy @ layer.weight, g


def _fwd_conv(layer: Conv2d, x: Array) -> Cache:
    n = x.shape[0]
    _, ho, wo = layer.out_shape(x.shape[1:])
    og = layer.weight.shape[0] // layer.groups
    cols = layer.patches(x)  # per group (N, L, cg*kh*kw)
    outs = [cg @ layer.weight[g * og : (g + 1) * og].reshape(og, -1).T for g, cg in enumerate(cols)]
    y = np.concatenate(outs, axis=2).transpose(0, 2, 1).reshape(n, -1, ho, wo)
    if layer.bias is not None:
        y = y + layer.bias[None, :, None, None]
    return Cache(x, y, {"cols": cols})


def _col2im(dcols: Array, shape: tuple[int, ...], layer: Conv2d, ho: int, wo: int) -> Array:
    """Adjoint of :func:`fperr.layers.im2col`: scatter-add patch gradients back to the image."""
    n, c, h, w = shape
    (kh, kw), (sh, sw) = layer.kernel, layer.stride
    (ph, pw), (dh, dw) = layer.padding, layer.dilation
    cols = dcols.transpose(0, 2, 1).reshape(n, c, kh, kw, ho, wo)
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw))
    for i in range(kh):
        for j in range(kw):
            hi, wj = i * dh, j * dw
            dxp[:, :, hi : hi + sh * ho : sh, wj : wj + sw * wo : sw] += cols[:, :, i, j]
    return dxp[:, :, ph : ph + h, pw : pw + w]


def _bwd_conv(layer: Conv2d, c: Cache, dy: Array) -> tuple[Array, dict[str, Array]]:
    n, o, ho, wo = dy.shape
    og, cg = o // layer.groups, c.x.shape[1] // layer.groups
    dw = np.empty_like(layer.weight)
    dx = np.empty_like(c.x)
    for g, cols in enumerate(c.extra["cols"]):
        dyg = dy[:, g * og : (g + 1) * og].reshape(n, og, ho * wo).transpose(0, 2, 1)
        wg = layer.weight[g * og : (g + 1) * og].reshape(og, -1)
        dw[g * og : (g + 1) * og] = np.einsum("nlo,nlk->ok", dyg, cols).reshape(
            layer.weight[g * og : (g + 1) * og].shape
        )
        xg = c.x[:, g * cg : (g + 1) * cg]
        dx[:, g * cg : (g + 1) * cg] = _col2im(dyg @ wg, xg.shape, layer, ho, wo)
    grads = {"weight": dw}
    if layer.bias is not None:
        grads["bias"] = dy.sum(axis=(0, 2, 3))
    return dx, grads


# -- pooling ------------------------------------------------------------------------------
def _fwd_pool(layer: Pool2d, x: Array) -> Cache:
    win = layer.windows(x)  # (N, C, H', W', kh*kw)
    if layer.kind == "max":
        arg = win.argmax(axis=-1)  # the first maximum, as PyTorch's CPU kernel
        return Cache(x, np.take_along_axis(win, arg[..., None], -1)[..., 0], {"arg": arg})
    return Cache(x, win.sum(axis=-1) / (layer.kernel[0] * layer.kernel[1]))


def _bwd_pool(layer: Pool2d, c: Cache, dy: Array) -> tuple[Array, dict[str, Array]]:
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
    n, ch, ho, wo = dy.shape
    if layer.kind == "max":
        dwin = np.zeros((n, ch, ho, wo, kh * kw))
        np.put_along_axis(dwin, c.extra["arg"][..., None], dy[..., None], -1)
    else:  # count_include_pad: every window divides by kh*kw (the forward's sum / k)
        dwin = np.broadcast_to(dy[..., None] / (kh * kw), (n, ch, ho, wo, kh * kw))
    h, w = c.x.shape[2:]
    dxp = np.zeros((n, ch, h + 2 * ph, w + 2 * pw))
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i : i + sh * ho : sh, j : j + sw * wo : sw] += dwin[..., i * kw + j]
    return dxp[:, :, ph : ph + h, pw : pw + w], {}


# -- elementwise --------------------------------------------------------------------------
def _fwd_act(layer: Activation | Softmax, x: Array) -> Cache:
    if isinstance(layer, Softmax):
        ax = layer.batched_axis(x.ndim)
        return Cache(x, softmax(x, ax), {"axis": ax})
    if layer.type == "relu":
        return Cache(x, np.maximum(x, 0.0))
    if layer.type == "relu6":
        return Cache(x, np.minimum(np.maximum(x, 0.0), 6.0))
    if layer.type == "leaky_relu":
        return Cache(x, np.where(x > 0, x, layer.negative_slope * x))
    with np.errstate(over="ignore"):
        return Cache(x, layer.forward(x, _EXACT))


def _bwd_act(layer: Activation | Softmax, c: Cache, dy: Array) -> tuple[Array, dict[str, Array]]:
    x, y = c.x, c.y
    if isinstance(layer, Softmax):
        ax = c.extra["axis"]  # the Jacobian diag(y) - y y^T along the softmax axis
        return y * (dy - (dy * y).sum(axis=ax, keepdims=True)), {}
    kind = layer.type
    if kind == "relu":
        return dy * (x > 0), {}  # relu'(0) = 0, as PyTorch
    if kind == "relu6":  # 0 at the kinks 0 and 6, as PyTorch's hardtanh_backward
        return dy * ((x > 0) & (x < 6)), {}
    if kind == "leaky_relu":
        return dy * np.where(x > 0, 1.0, layer.negative_slope), {}
    if kind == "tanh":
        return dy * (1.0 - y * y), {}
    if kind == "sigmoid":
        return dy * (y * (1.0 - y)), {}
    # gelu (erf form): Phi(x) + x phi(x)
    phi = np.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)
    return dy * (0.5 * erfc(-x / math.sqrt(2.0)) + x * phi), {}


# -- normalisation ------------------------------------------------------------------------
def _norm_fwd(x: Array, axes: tuple[int, ...], eps: float, w: Array | None, b: Array | None,
              shape: tuple[int, ...]) -> Cache:  # fmt: skip
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)  # biased, as both PyTorch norms normalise
    inv = 1.0 / np.sqrt(var + eps)
    xhat = (x - mu) * inv
    y = xhat if w is None else xhat * w.reshape(shape)
    y = y if b is None else y + b.reshape(shape)
    m = math.prod(x.shape[a] for a in axes)
    return Cache(x, y, {"xhat": xhat, "inv": inv, "axes": axes, "m": m, "mu": mu, "var": var})


def _norm_bwd(c: Cache, dy: Array, w: Array | None, shape: tuple[int, ...],
              param_axes: tuple[int, ...]) -> tuple[Array, dict[str, Array]]:  # fmt: skip
    xhat, inv, axes, m = c.extra["xhat"], c.extra["inv"], c.extra["axes"], c.extra["m"]
    grads = {"weight": (dy * xhat).sum(axis=param_axes), "bias": dy.sum(axis=param_axes)}
    dxhat = dy if w is None else dy * w.reshape(shape)
    s1 = dxhat.sum(axis=axes, keepdims=True)
    s2 = (dxhat * xhat).sum(axis=axes, keepdims=True)
    return inv / m * (m * dxhat - s1 - xhat * s2), grads


def _fwd_bn(layer: BatchNorm, x: Array) -> Cache:
    axes = (0, *range(2, x.ndim))
    shape = layer.broadcast(layer.running_mean, x.ndim).shape
    c = _norm_fwd(x, axes, layer.eps, layer.weight, layer.bias, shape)
    c.extra["shape"] = shape
    return c


def _bwd_bn(layer: BatchNorm, c: Cache, dy: Array) -> tuple[Array, dict[str, Array]]:
    dx, g = _norm_bwd(c, dy, layer.weight, c.extra["shape"], c.extra["axes"])
    return dx, _affine_only(layer.weight, layer.bias, g)


def _fwd_ln(layer: LayerNorm, x: Array) -> Cache:
    k = len(layer.normalized_shape)
    axes = tuple(range(x.ndim - k, x.ndim))
    return _norm_fwd(x, axes, layer.eps, layer.weight, layer.bias, tuple(layer.normalized_shape))


def _bwd_ln(layer: LayerNorm, c: Cache, dy: Array) -> tuple[Array, dict[str, Array]]:
    lead = tuple(range(dy.ndim - len(layer.normalized_shape)))
    dx, g = _norm_bwd(c, dy, layer.weight, tuple(layer.normalized_shape), lead)
    return dx, _affine_only(layer.weight, layer.bias, g)


def _affine_only(w: Array | None, b: Array | None, g: dict[str, Array]) -> dict[str, Array]:
    return {k: v for k, v in g.items() if (w if k == "weight" else b) is not None}


# -- residual -----------------------------------------------------------------------------
def _fwd_res(layer: Residual, x: Array) -> Cache:
    caches, h = [], x
    for sub in layer.layers:
        cs = forward(sub, h)
        caches.append(cs)
        h = cs.y
    return Cache(x, x + h, {"caches": caches})


def _bwd_res(layer: Residual, c: Cache, dy: Array) -> tuple[Array, dict[str, Array]]:
    grads: dict[str, Array] = {}
    d = dy
    for j in range(len(layer.layers) - 1, -1, -1):
        d, g = backward_layer(layer.layers[j], c.extra["caches"][j], d)
        grads.update({f"{j}.{k}": v for k, v in g.items()})
    return dy + d, grads


# -- graph operators: token-wise linear, layout, constants, reductions ----------------------
def _fwd_linear(layer: Linear, x: Array) -> Cache:
    y = x @ layer.weight.T  # nn.Linear on the last axis: every token the same map
    return Cache(x, y if layer.bias is None else y + layer.bias)


def _bwd_linear(layer: Linear, c: Cache, dy: Array) -> tuple[Array, dict[str, Array]]:
    rows_dy = dy.reshape(-1, layer.n_out)  # tokens of every input as rows: sums over both
    g = {"weight": rows_dy.T @ c.x.reshape(-1, layer.n_in)}
    if layer.bias is not None:
        g["bias"] = rows_dy.sum(axis=0)
    return dy @ layer.weight, g


def _reduced(layer: Sum, x: Array) -> tuple[int, ...]:
    """The batched axes a sum or mean reduces (the per-input axes + 1)."""
    return tuple(sorted({check_axis(layer.type, a, x.ndim - 1) + 1 for a in layer.axes}))


def _bwd_sum(layer: Sum, c: Cache, dy: Array) -> Array:
    ax = _reduced(layer, c.x)
    d = dy if layer.keepdims else np.expand_dims(dy, ax)
    d = np.broadcast_to(d, c.x.shape)
    if layer.divides:  # mean: every term enters with weight 1/n
        d = d / math.prod(c.x.shape[a] for a in ax)
    return np.array(d)


def _bwd_one(layer: Layer, c: Cache, dy: Array) -> tuple[Array, dict[str, Array]] | None:
    """The VJPs of the one-input graph operators; None for the layers of a chain."""
    if isinstance(layer, Linear):
        return _bwd_linear(layer, c, dy)
    if isinstance(layer, Permute):  # the inverse permutation of the batched axes
        inv = np.argsort((0, *(a + 1 for a in layer.axes)))
        return np.ascontiguousarray(np.transpose(dy, tuple(int(a) for a in inv))), {}
    if isinstance(layer, Slice):  # scatter into zeros (the rows the slice dropped get 0)
        ax = check_axis("slice", layer.axis, c.x.ndim - 1)
        dx = np.zeros_like(c.x)
        dx[(slice(None),) * (ax + 1) + (slice(layer.start, layer.stop),)] = dy
        return dx, {}
    if isinstance(layer, Scale):  # the factor is a constant of the model, not a parameter
        return dy * layer.factor, {}
    if isinstance(layer, Constant):  # output independent of the input; one value per batch
        return np.zeros_like(c.x), {"weight": dy.sum(axis=0)}
    if isinstance(layer, Sum):  # mean too (a subclass)
        return _bwd_sum(layer, c, dy), {}
    return None


def _fwd_merge(layer: Layer, xs: list[Array]) -> Cache:
    y = layer.merge(xs, Exact())  # type: ignore[attr-defined]
    return Cache(xs[0], y, {"xs": xs})


def _bwd_merge(layer: Layer, c: Cache, dy: Array) -> list[Array]:
    """One ``dL/dx`` per wired input of add, concat, mul or matmul."""
    xs = c.extra["xs"]
    if isinstance(layer, Add):
        return [dy, dy]
    if isinstance(layer, Concat):  # split along the axis (+1: the batch axis)
        ends = np.cumsum([x.shape[layer.axis + 1] for x in xs])[:-1]
        return [np.ascontiguousarray(d) for d in np.split(dy, ends, axis=layer.axis + 1)]
    if isinstance(layer, Mul):  # the product rule
        return [dy * xs[1], dy * xs[0]]
    if isinstance(layer, MatMul):  # Y = A B on the last two axes: dA = dY B^T, dB = A^T dY
        a, b = xs
        return [dy @ np.swapaxes(b, -1, -2), np.swapaxes(a, -1, -2) @ dy]
    raise FperrInputError(f"check-training supports {SUPPORTED}; got {layer.type}")


def forward_node(layer: Layer, xs: list[Array]) -> Cache:
    """Training-mode forward of one graph node from its wired inputs (float64)."""
    return _fwd_merge(layer, xs) if is_merge(layer) else forward(layer, xs[0])


def backward_node(layer: Layer, c: Cache, dy: Array) -> tuple[list[Array], dict[str, Array]]:
    """One ``dL/dx`` per wired input of a graph node and its parameter gradients."""
    if is_merge(layer):
        return _bwd_merge(layer, c, dy), {}
    dx, g = backward_layer(layer, c, dy)
    return [dx], g


# -- dispatch -----------------------------------------------------------------------------
class _ExactArith:
    """float64 arithmetic for the elementwise forwards of :mod:`fperr.layers`."""

    def func(self, f: Any, x: Array) -> Array:
        return np.asarray(f(x), dtype=np.float64)


_EXACT: Any = _ExactArith()


def forward(layer: Layer, x: Array) -> Cache:
    """Training-mode forward of one layer (float64)."""
    if isinstance(layer, Dense):
        return _fwd_dense(layer, x)
    if isinstance(layer, Conv2d):
        return _fwd_conv(layer, x)
    if isinstance(layer, Pool2d):
        return _fwd_pool(layer, x)
    if isinstance(layer, Activation | Softmax):
        return _fwd_act(layer, x)
    if isinstance(layer, BatchNorm):
        return _fwd_bn(layer, x)
    if isinstance(layer, LayerNorm):
        return _fwd_ln(layer, x)
    if isinstance(layer, Residual):
        return _fwd_res(layer, x)
    if isinstance(layer, Linear):
        return _fwd_linear(layer, x)
    if isinstance(layer, Permute | Slice | Scale | Constant | Sum):  # float64 forward as is
        return Cache(x, layer.forward(x, Exact()))
    if isinstance(layer, Flatten | Reshape):
        return Cache(x, x.reshape((x.shape[0], *layer.out_shape(x.shape[1:]))))
    if isinstance(layer, Dropout):
        return Cache(x, x)
    raise FperrInputError(f"check-training supports {SUPPORTED}; got {layer.type}")


def backward_layer(layer: Layer, c: Cache, dy: Array) -> tuple[Array, dict[str, Array]]:
    """``dL/dx`` and the parameter gradients of one layer, given ``dL/dy``."""
    if isinstance(layer, Dense):
        return _bwd_dense(layer, c, dy)
    if isinstance(layer, Conv2d):
        return _bwd_conv(layer, c, dy)
    if isinstance(layer, Pool2d):
        return _bwd_pool(layer, c, dy)
    if isinstance(layer, Activation | Softmax):
        return _bwd_act(layer, c, dy)
    if isinstance(layer, BatchNorm):
        return _bwd_bn(layer, c, dy)
    if isinstance(layer, LayerNorm):
        return _bwd_ln(layer, c, dy)
    if isinstance(layer, Residual):
        return _bwd_res(layer, c, dy)
    out = _bwd_one(layer, c, dy)
    return out if out is not None else (dy.reshape(c.x.shape), {})  # flatten, reshape, dropout


def batchnorm_batches(layer: Layer, c: Cache, prefix: str) -> dict[str, tuple[Array, Array, int]]:
    """Batch mean, biased variance and element count of every batch norm in ``layer``."""
    if isinstance(layer, BatchNorm):
        return {prefix: (c.extra["mu"].ravel(), c.extra["var"].ravel(), int(c.extra["m"]))}
    out: dict[str, tuple[Array, Array, int]] = {}
    if isinstance(layer, Residual):
        for j, (sub, cs) in enumerate(zip(layer.layers, c.extra["caches"], strict=True)):
            out.update(batchnorm_batches(sub, cs, f"{prefix}.{j}"))
    return out
