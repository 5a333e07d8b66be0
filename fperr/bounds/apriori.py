"""A-priori bounds: one error bound valid for every input in a box.

Interval propagation of the exact values ([lo, hi] per unit) and of the
error radius r (|computed - exact| <= r for any run, any summation order).
Sound for the whole box, but, like any forward |W| propagation, it assumes
that errors align in sign; the per-input bounds of :mod:`fperr.bounds` are
far tighter for a given input.  The per-layer radius formulas are the sympy
expressions of :mod:`fperr.bounds.symbolic`, evaluated numerically.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..arith import Emulated, Exact
from ..errors import FperrInputError
from ..layers import ACTIVATIONS, Conv2d, Pool2d
from ..model import Model
from .rules import _derivative_range, _gamma

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class AprioriBound:
    """Enclosures valid for every input in the box."""

    lo: Array  # exact output lower bounds (K,)
    hi: Array  # exact output upper bounds (K,)
    radius: Array  # bound on |computed - exact| per output (K,)
    layer_radius: list[float]  # max radius after each layer

    def to_dict(self) -> dict[str, Any]:
        return {
            "lo": self.lo.tolist(),
            "hi": self.hi.tolist(),
            "radius": self.radius.tolist(),
            "layer_radius": self.layer_radius,
        }


def _affine(layer: Any, lo: Array, hi: Array, r: Array, a: Emulated) -> tuple[Array, ...]:
    """Dense or conv: value interval, and the radius by the 'dense' formula."""
    if isinstance(layer, Conv2d):

        def apply(w: Array, v: Array) -> Array:
            c = Conv2d(w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
            return c.forward(v[None], Exact())[0]

        n = int(np.prod(layer.weight.shape[1:]))
        bias = None if layer.bias is None else layer.bias[:, None, None]
    else:

        def apply(w: Array, v: Array) -> Array:
            return np.asarray(w @ v)

        n = layer.weight.shape[1]
        bias = layer.bias
    w = layer.weight
    w_hat = a.to_operand(w)
    c, half = (lo + hi) / 2, (hi - lo) / 2
    zc = apply(w, c) + (0 if bias is None else bias)
    zw = apply(np.abs(w), half)
    m = np.maximum(np.abs(lo), np.abs(hi)) + r
    s_r = apply(np.abs(w), r)
    s_m = apply(np.abs(w_hat), m)
    d_w = apply(np.abs(w_hat - w), m)
    d_b = 0.0 if bias is None else np.abs(a.store(bias) - bias)
    z0 = np.abs(zc) + zw
    acc = a.accumulate.gamma(n) if a.acc_rounding == "nearest" else _gamma(n, a.u_acc)
    zb = (z0 + s_r + acc * s_m + d_w + d_b) / (1 - 2 * a.storage.u)
    zb = np.maximum(zb, a.storage.smallest_normal)  # u_s * that = half the subnormal spacing
    from .symbolic import evaluate  # sympy is heavy: import on use

    rad = evaluate("dense", S_R=s_r, S_m=s_m, Z=zb, D_W=d_w, D_b=d_b, n=n,
                   u_a=a.u_acc, u_s=a.storage.u)  # fmt: skip
    return zc - zw, zc + zw, rad


def _activation(layer: Any, lo: Array, hi: Array, r: Array, a: Emulated) -> tuple[Array, ...]:
    t = layer.type
    wlo, whi = lo - r, hi + r  # every computed or exact pre-activation lies here
    if t in ("relu", "leaky_relu"):
        alpha = 0.0 if t == "relu" else layer.negative_slope
        f_lo = np.where(lo > 0, lo, alpha * lo)
        f_hi = np.where(hi > 0, hi, alpha * hi)
        lip = np.where(whi <= 0, alpha, 1.0)
        tiny = a.storage.smallest_normal
        rounding = 0.0 if alpha == 0 else a.storage.u * np.maximum(alpha * np.abs(wlo), tiny)
        return f_lo, f_hi, lip * r + rounding
    f = ACTIVATIONS[t]
    f_lo, f_hi = f(lo), f(hi)
    if t == "gelu":  # not monotone: minimum -0.17 at x = -0.7518
        inside = (lo <= -0.7518) & (hi >= -0.7518)
        f_lo = np.where(inside, -0.17, np.minimum(f_lo, f_hi))
        f_hi = np.maximum(f(lo), f(hi))
    dlo, dhi = _derivative_range(t, wlo, whi)
    lip = np.maximum(np.abs(dlo), np.abs(dhi))
    big = np.maximum(np.maximum(np.abs(f(wlo)), np.abs(f(whi))), 0.17 if t == "gelu" else 0.0)
    big = np.maximum(big * (1 + 2 * a.accumulate.u), a.storage.smallest_normal)
    from .symbolic import evaluate

    rad = evaluate("activation", L=lip, r=r, F=big, u_s=a.storage.u, u_a=a.accumulate.u)
    return f_lo, f_hi, rad


def _pool(layer: Pool2d, lo: Array, hi: Array, r: Array, a: Emulated) -> tuple[Array, ...]:
    wl, wh, wr = (layer.windows(v[None])[0] for v in (lo, hi, r))
    if layer.kind == "max":
        wr = np.where(np.isfinite(wl), wr, 0.0)
        return wl.max(-1), wh.max(-1), wr.max(-1)
    k = wl.shape[-1]
    m = np.maximum(np.abs(wl), np.abs(wh)) + wr
    z = np.maximum(m.mean(-1) * (1 + _gamma(k, a.u_acc)), a.storage.smallest_normal)
    rad = wr.mean(-1) + _gamma(k, a.u_acc) * m.mean(-1) + a.storage.u * z / (1 - a.storage.u)
    return wl.mean(-1), wh.mean(-1), rad


def apriori_bound(model: Model, lo: npt.ArrayLike, hi: npt.ArrayLike,
                  arith: Emulated | None = None) -> AprioriBound:  # fmt: skip
    """Bound the error of ``model`` in ``arith`` for every input in [lo, hi].

    ``lo``/``hi``: scalars or arrays of the input shape (e.g. 0 and 1 for
    pixels).  Supported layers: dense, conv2d, relu, leaky_relu, tanh,
    sigmoid, gelu, max/avg pooling, flatten, reshape, dropout.
    """
    a = arith or Emulated.from_names("binary16", "binary32")
    shape = model.input_shape
    vlo = np.broadcast_to(np.asarray(lo, dtype=np.float64), shape).copy()
    vhi = np.broadcast_to(np.asarray(hi, dtype=np.float64), shape).copy()
    if np.any(vlo > vhi) or not (np.all(np.isfinite(vlo)) and np.all(np.isfinite(vhi))):
        raise FperrInputError("input box needs finite lo <= hi")
    # inputs are rounded to storage: error <= u_s |x| (or half a subnormal spacing)
    r = a.storage.u * np.maximum(np.maximum(np.abs(vlo), np.abs(vhi)), a.storage.smallest_normal)
    r = np.where(vlo == vhi, np.abs(a.store(vlo) - vlo), r)
    radii = []
    for i, layer in enumerate(model.layers):
        t = layer.type
        if t in ("dense", "conv2d"):
            vlo, vhi, r = _affine(layer, vlo, vhi, r, a)
        elif t in ("relu", "leaky_relu", "tanh", "sigmoid", "gelu"):
            vlo, vhi, r = _activation(layer, vlo, vhi, r, a)
        elif t in ("maxpool2d", "avgpool2d"):
            vlo, vhi, r = _pool(layer, vlo, vhi, r, a)  # type: ignore[arg-type]
        elif t in ("flatten", "reshape", "dropout"):
            new = model.shapes()[i + 1]
            vlo, vhi, r = vlo.reshape(new), vhi.reshape(new), r.reshape(new)
        else:
            raise FperrInputError(f"a-priori bounds do not support layer type {t!r} (layer {i})")
        radii.append(float(np.max(r)))
    return AprioriBound(vlo.ravel(), vhi.ravel(), np.asarray(r).ravel(), radii)
