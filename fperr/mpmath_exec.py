"""A high-precision reference executor on mpmath numbers.

:func:`run_mpmath` runs an IR model on a small batch with every operation in
``dps`` significant decimal digits (mpmath's ``workdps``; the global mpmath
precision is left alone).  It is written independently of the numpy forward
passes in :mod:`fperr.layers` (direct loops, no im2col, batch norm and layer
norm from their definitions) so that it can serve as the reference in
soundness tests of the error bounds: with ``dps=50`` its own error is far
below anything a float64, let alone a binary16, computation can show.

Inputs and weights are float64 values, taken exactly.  Results are numpy
object arrays of ``mpmath.mpf`` (``as_float64`` converts).  Cost is about a
microsecond per multiply-add of pure Python per input: keep batches and
models small (the digits MLP takes ~0.1 s per input).  Graph models run node by
node in their order, each node reading the outputs its wiring names.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import mpmath
import numpy as np
import numpy.typing as npt

from .errors import FperrInputError
from .layers import (
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
    RMSNorm,
    Softmax,
    is_merge,
)
from .model import Model, check_inputs
from .operators import Operator

__all__ = ["as_float64", "mpmath_activations", "run_mpmath", "to_mp"]

Obj = npt.NDArray[np.object_]


def to_mp(a: npt.ArrayLike) -> Obj:
    """float64 values as an object array of exactly equal ``mpf``."""
    x = np.asarray(a, dtype=np.float64)
    out = np.empty(x.shape, dtype=object)
    flat = out.reshape(-1)
    for i, v in enumerate(x.reshape(-1)):
        flat[i] = mpmath.mpf(float(v))
    return out


def as_float64(a: Obj) -> npt.NDArray[np.float64]:
    """Round an object array of mpf to float64 (nearest)."""
    return np.asarray(a, dtype=object).astype(np.float64)


def _map(f: Callable[[Any], Any], x: Obj) -> Obj:
    out = np.empty(x.shape, dtype=object)
    flat, src = out.reshape(-1), x.reshape(-1)
    for i, v in enumerate(src):
        flat[i] = f(v)
    return out


def _dot(a: Obj, b: Obj) -> Any:
    """Sum of products of two equally long 1-D object arrays, in mp precision."""
    return mpmath.fsum(a[i] * b[i] for i in range(len(a)))


def _dense(x: Obj, layer: Dense) -> Obj:
    w = to_mp(layer.weight)
    bias = None if layer.bias is None else to_mp(layer.bias)
    n, (o, _) = x.shape[0], w.shape
    out = np.empty((n, o), dtype=object)
    for s in range(n):
        for j in range(o):
            z = _dot(x[s], w[j])
            out[s, j] = z if bias is None else z + bias[j]
    return out


def _conv2d(x: Obj, layer: Conv2d) -> Obj:
    w = to_mp(layer.weight)
    bias = None if layer.bias is None else to_mp(layer.bias)
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw), g = layer.stride, layer.padding, layer.dilation, layer.groups
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


def _pool(x: Obj, layer: Pool2d) -> Obj:
    n, c, h, wd = x.shape
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
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
                    if layer.kind == "max":
                        out[s, ch, i, j] = max(vals)  # padding is -inf: never chosen
                    else:
                        out[s, ch, i, j] = mpmath.fsum(vals) / k  # zero padding counts
    return out


def _activation(x: Obj, layer: Activation) -> Obj:
    slope = mpmath.mpf(layer.negative_slope)
    sqrt2 = mpmath.sqrt(2)
    alpha = mpmath.mpf(layer.alpha)
    gc, gk = mpmath.sqrt(2 / mpmath.pi), mpmath.mpf("0.044715")  # GELU, tanh form
    funcs: dict[str, Callable[[Any], Any]] = {
        "relu": lambda v: v if v > 0 else mpmath.mpf(0),
        "relu6": lambda v: min(max(v, mpmath.mpf(0)), mpmath.mpf(6)),
        "leaky_relu": lambda v: v if v > 0 else slope * v,
        "tanh": mpmath.tanh,
        "sigmoid": lambda v: 1 / (1 + mpmath.exp(-v)),
        "gelu": lambda v: v * (1 + mpmath.erf(v / sqrt2)) / 2,
        "gelu_tanh": lambda v: v / (1 + mpmath.exp(-2 * gc * (v + gk * v**3))),
        "silu": lambda v: v / (1 + mpmath.exp(-v)),
        "elu": lambda v: v if v > 0 else alpha * mpmath.expm1(v),
        "hardsigmoid": lambda v: min(max(v + 3, mpmath.mpf(0)), mpmath.mpf(6)) / 6,
        "hardswish": lambda v: v * min(max(v + 3, mpmath.mpf(0)), mpmath.mpf(6)) / 6,
    }
    return _map(funcs[layer.type], x)


def _softmax(x: Obj, axis: int = -1) -> Obj:
    """Softmax along ``axis`` of the batch (each group of units along it summed exactly)."""
    moved = np.moveaxis(x, axis, -1)
    rows = moved.reshape(-1, moved.shape[-1])
    out = np.empty(rows.shape, dtype=object)
    for s in range(rows.shape[0]):
        e = [mpmath.exp(v) for v in rows[s]]
        total = mpmath.fsum(e)
        for j, v in enumerate(e):
            out[s, j] = v / total
    return np.moveaxis(out.reshape(moved.shape), -1, axis)


def _batchnorm(x: Obj, layer: BatchNorm) -> Obj:
    c = layer.running_mean.shape[0]
    mean, var = to_mp(layer.running_mean), to_mp(layer.running_var)
    w = to_mp(layer.weight) if layer.weight is not None else to_mp(np.ones(c))
    b = to_mp(layer.bias) if layer.bias is not None else to_mp(np.zeros(c))
    eps = mpmath.mpf(layer.eps)
    out = np.empty(x.shape, dtype=object)
    for ch in range(c):
        inv = 1 / mpmath.sqrt(var[ch] + eps)
        src, dst = x[:, ch].reshape(-1), out[:, ch]
        dst[...] = np.array([(v - mean[ch]) * inv * w[ch] + b[ch] for v in src],
                            dtype=object).reshape(dst.shape)  # fmt: skip
    return out


def _layernorm(x: Obj, layer: LayerNorm) -> Obj:
    k = len(layer.normalized_shape)
    lead, m = x.shape[: x.ndim - k], math.prod(layer.normalized_shape)
    rows = x.reshape((-1, m))
    w = None if layer.weight is None else to_mp(layer.weight).reshape(-1)
    b = None if layer.bias is None else to_mp(layer.bias).reshape(-1)
    eps, mm = mpmath.mpf(layer.eps), mpmath.mpf(m)
    out = np.empty(rows.shape, dtype=object)
    for r in range(rows.shape[0]):
        mu = mpmath.fsum(rows[r]) / mm
        var = mpmath.fsum((v - mu) ** 2 for v in rows[r]) / mm
        inv = 1 / mpmath.sqrt(var + eps)
        for j in range(m):
            y = (rows[r, j] - mu) * inv
            y = y if w is None else y * w[j]
            out[r, j] = y if b is None else y + b[j]
    return out.reshape((*lead, *layer.normalized_shape))


def _rmsnorm(x: Obj, layer: RMSNorm) -> Obj:
    k = len(layer.normalized_shape)
    lead, m = x.shape[: x.ndim - k], math.prod(layer.normalized_shape)
    rows = x.reshape((-1, m))
    w = None if layer.weight is None else to_mp(layer.weight).reshape(-1)
    eps, mm = mpmath.mpf(layer.eps), mpmath.mpf(m)
    out = np.empty(rows.shape, dtype=object)
    for r in range(rows.shape[0]):
        inv = 1 / mpmath.sqrt(mpmath.fsum(v * v for v in rows[r]) / mm + eps)
        for j in range(m):
            y = rows[r, j] * inv
            out[r, j] = y if w is None else y * w[j]
    return out.reshape((*lead, *layer.normalized_shape))


def _forward(layer: Layer, x: Obj) -> Obj:
    if isinstance(layer, Dense):
        return _dense(x, layer)
    if isinstance(layer, Conv2d):
        return _conv2d(x, layer)
    if isinstance(layer, Pool2d):
        return _pool(x, layer)
    if isinstance(layer, Flatten):
        return x.reshape((x.shape[0], -1))
    if isinstance(layer, Reshape):
        return x.reshape((x.shape[0], *layer.shape))
    if isinstance(layer, Dropout):
        return x
    if isinstance(layer, Activation):
        return _activation(x, layer)
    if isinstance(layer, Softmax):
        return _softmax(x, layer.batched_axis(x.ndim))
    if isinstance(layer, BatchNorm):
        return _batchnorm(x, layer)
    if isinstance(layer, LayerNorm):
        return _layernorm(x, layer)
    if isinstance(layer, RMSNorm):
        return _rmsnorm(x, layer)
    if isinstance(layer, Operator):
        return layer.mpmath_forward([x])
    if isinstance(layer, Residual):
        h = x
        for sub in layer.layers:
            h = _forward(sub, h)
        return x + h  # elementwise mpf additions
    raise FperrInputError(f"run_mpmath: unsupported layer type {layer.type!r}")


def _merge(layer: Layer, xs: list[Obj]) -> Obj:
    """A merge node of a graph model: several inputs, one output."""
    if isinstance(layer, Add):
        return xs[0] + xs[1]  # elementwise mpf additions
    if isinstance(layer, Concat):
        return np.concatenate(xs, axis=layer.axis + 1)  # +1: the batch axis
    if isinstance(layer, Operator):
        return layer.mpmath_forward(xs)
    raise FperrInputError(f"run_mpmath: unsupported merge type {layer.type!r}")


def run_mpmath(model: Model, X: npt.ArrayLike, dps: int = 50) -> Obj:
    """Outputs of ``model`` on the batch ``X``, computed with ``dps`` decimal digits.

    Returns an object array of ``mpmath.mpf`` of shape ``(N, *output_shape)``.
    ``X`` is checked like :meth:`Model.forward` (shape, finiteness) and taken
    exactly.
    """
    return mpmath_activations(model, X, dps)[-1]


def mpmath_activations(model: Model, X: npt.ArrayLike, dps: int = 50) -> list[Obj]:
    """The input and every layer's output, like :meth:`Model.activations`."""
    x = check_inputs(X, model.input_shape)
    with mpmath.workdps(dps):
        hs = [to_mp(x)]
        for i, layer in enumerate(model.layers):
            ins = [hs[j + 1] for j in model.inputs_of(i)]  # a chain: the layer before
            hs.append(_merge(layer, ins) if is_merge(layer) else _forward(layer, ins[0]))
    return hs
