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
from ..formats import Format, gamma
from ..layers import ACTIVATIONS, Conv2d, Pool2d
from ..model import Model
from ..operators import Operator, OperatorUnsupported
from . import exponent_range as xr
from .enclosure import half_ulp
from .rules import Context, derivative_range, piecewise_slopes, relu_slopes

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


def affine_apriori(layer: Any, lo: Array, hi: Array, r: Array,
                   a: Emulated) -> tuple[Array, Array, Array]:  # fmt: skip
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
    wc = apply(w, c)
    zc = wc + (0 if bias is None else bias)
    zw = apply(np.abs(w), half)
    m = np.maximum(np.abs(lo), np.abs(hi)) + r
    s_r = apply(np.abs(w), r)
    s_m = apply(np.abs(w_hat), m)
    if bias is not None:  # a kernel may add the bias in the accumulator: term n + 1
        n, s_m = n + 1, s_m + np.abs(a.store(bias))
    d_w = apply(np.abs(w_hat - w), m)
    d_b = 0.0 if bias is None else np.abs(a.store(bias) - bias)
    # Z bounds both stored values, fl(W x) and fl(fl(W x) + b): a bias that cancels
    # W x leaves a small output but the first rounding is of |W x|.
    z0 = np.maximum(np.abs(wc), np.abs(zc)) + zw
    acc = a.accumulate.gamma(n) if a.acc_rounding == "nearest" else gamma(n, a.u_acc)
    # the bottom of the exponent range: c nonzero products, eta each (exponent_range.py)
    count = apply((w_hat != 0).astype(np.float64), (m > 0).astype(np.float64))
    if bias is not None:
        count = count + (bias != 0)
    f, chop = a.operand_format, a.acc_rounding == "truncate"
    # the bias, if added in the accumulator, must also enter it exactly
    exact = xr.products_exact(f, f, a.accumulate) and (
        bias is None or a.accumulate.contains(a.storage))  # fmt: skip
    eta = (0.0 if exact else xr.eta(a.accumulate, chop)) + xr.eta_add(a.accumulate)
    under = xr.dot_underflow(count, n, a.u_acc, a.accumulate, exact, chop)
    zb = (z0 + s_r + acc * s_m + under + d_w + d_b) / (1 - 2 * a.storage.u)
    zb = np.maximum(zb, _tiny(a.storage))  # u_s * that = half the subnormal spacing
    from .symbolic import evaluate  # sympy is heavy: import on use

    rad = evaluate("dense", S_R=s_r, S_m=s_m, Z=zb, D_W=d_w, D_b=d_b, n=n,
                   u_a=a.u_acc, u_s=a.storage.u, c=count, eta=eta)  # fmt: skip
    # the top: some summation order may overflow
    rad = np.where(xr.may_overflow(s_m, n, a.u_acc, a.accumulate, under), np.inf, rad)
    return zc - zw, zc + zw, rad


def _tiny(fmt: Format) -> float:
    """Magnitude floor Z with u Z >= the largest rounding error below the normal
    range: half the subnormal spacing, or (flush to zero) smallest_normal."""
    return fmt.smallest_normal if fmt.subnormals else fmt.smallest_normal / fmt.u


def activation_apriori(layer: Any, lo: Array, hi: Array, r: Array,
                       a: Emulated) -> tuple[Array, Array, Array]:  # fmt: skip
    t = layer.type
    wlo, whi = lo - r, hi + r  # every computed or exact pre-activation lies here
    if t in ("relu", "leaky_relu"):
        return _leaky_relu(0.0 if t == "relu" else float(layer.negative_slope), lo, hi, r, a)
    if t == "relu6":
        return _relu6(lo, hi, r)
    f = ACTIVATIONS[t]
    f_lo, f_hi = f(lo), f(hi)
    if t == "gelu":  # not monotone: minimum -0.17 at x = -0.7518
        inside = (lo <= -0.7518) & (hi >= -0.7518)
        f_lo = np.where(inside, -0.17, np.minimum(f_lo, f_hi))
        f_hi = np.maximum(f(lo), f(hi))
    dlo, dhi = derivative_range(t, wlo, whi)
    lip = np.maximum(np.abs(dlo), np.abs(dhi))
    fmag = np.maximum(np.maximum(np.abs(f(wlo)), np.abs(f(whi))), 0.17 if t == "gelu" else 0.0)
    # the local error is the per-input rule's: the kernel allowance (measured, or
    # func_ulps ulps of the accumulator) and the storage rounding, at |f| <= fmag
    return f_lo, f_hi, lip * r + Context(a).func_error(t, fmag)


def _leaky_relu(alpha: float, lo: Array, hi: Array, r: Array,
                a: Emulated) -> tuple[Array, Array, Array]:  # fmt: skip
    """Leaky ReLU for any slope alpha (negative, 0, above 1): the image of
    [lo, hi] (piecewise linear: ends and the kink at 0), Lipschitz constant
    max(1, |alpha|) over the parts touched, and the rounding of alpha x (a
    function evaluation, then one storage rounding) on the negative part."""
    f = lambda v: np.where(v > 0, v, alpha * v)  # noqa: E731
    kink = np.where((lo < 0) & (hi > 0), 0.0, np.nan)
    ends = np.stack([f(lo), f(hi), kink])
    f_lo, f_hi = np.nanmin(ends, axis=0), np.nanmax(ends, axis=0)
    wlo, whi = lo - r, hi + r  # every computed or exact pre-activation lies here
    dlo, dhi = relu_slopes(alpha, wlo, whi)
    lip = np.maximum(np.abs(dlo), np.abs(dhi))
    if alpha == 0:
        return f_lo, f_hi, lip * r
    ctx = Context(a)
    mag = abs(alpha) * np.maximum(-wlo, 0.0)  # largest |alpha x| with x < 0
    mag = mag * (1 + ctx.func_rel()) + ctx.func_abs()
    local = half_ulp(mag, a.storage) + ctx.func_rel() * mag + ctx.func_abs()
    return f_lo, f_hi, lip * r + np.where(wlo < 0, local, 0.0)


def _relu6(lo: Array, hi: Array, r: Array) -> tuple[Array, Array, Array]:
    """ReLU6 = min(max(x, 0), 6): monotone, so the image of [lo, hi] is
    [f(lo), f(hi)]; exact in every format (0 and 6 are representable), so the
    error is the incoming one times the largest slope of the pieces touched."""
    wlo, whi = lo - r, hi + r  # every computed or exact pre-activation lies here
    dlo, dhi = piecewise_slopes((0.0, 6.0), (0.0, 1.0, 0.0), wlo, whi)
    lip = np.maximum(np.abs(dlo), np.abs(dhi))
    return np.clip(lo, 0.0, 6.0), np.clip(hi, 0.0, 6.0), lip * r


def pool_apriori(layer: Pool2d, lo: Array, hi: Array, r: Array,
                 a: Emulated) -> tuple[Array, Array, Array]:  # fmt: skip
    wl, wh, wr = (layer.windows(v[None])[0] for v in (lo, hi, r))
    if layer.kind == "max":
        wr = np.where(np.isfinite(wl), wr, 0.0)
        return wl.max(-1), wh.max(-1), wr.max(-1)
    k = wl.shape[-1]
    m = np.maximum(np.abs(wl), np.abs(wh)) + wr
    # sum then divide: the quotient may underflow, a flushing sum lose its additions
    chop = a.acc_rounding == "truncate"
    under = (xr.eta(a.accumulate, chop) + xr.eta_add(a.accumulate)) * (1 + gamma(k, a.u_acc))
    z = np.maximum(m.mean(-1) * (1 + gamma(k, a.u_acc)) + under, _tiny(a.storage))
    rad = (wr.mean(-1) + gamma(k, a.u_acc) * m.mean(-1) + under
           + a.storage.u * z / (1 - a.storage.u))  # fmt: skip
    rad = np.where(xr.may_overflow(m.sum(-1), k, a.u_acc, a.accumulate, under), np.inf, rad)
    return wl.mean(-1), wh.mean(-1), rad


def apriori_bound(model: Model, lo: npt.ArrayLike, hi: npt.ArrayLike,
                  arith: Emulated | None = None) -> AprioriBound:  # fmt: skip
    """Bound the error of ``model`` in ``arith`` for every input in [lo, hi].

    ``lo``/``hi``: scalars or arrays of the input shape (e.g. 0 and 1 for
    pixels).  Supported layers: dense, conv2d, relu, relu6, leaky_relu, tanh,
    sigmoid, gelu, max/avg pooling, flatten, reshape, dropout.
    """
    a = arith or Emulated.from_names("binary16", "binary32")
    shape = model.input_shape
    vlo = np.broadcast_to(np.asarray(lo, dtype=np.float64), shape).copy()
    vhi = np.broadcast_to(np.asarray(hi, dtype=np.float64), shape).copy()
    if np.any(vlo > vhi) or not (np.all(np.isfinite(vlo)) and np.all(np.isfinite(vhi))):
        raise FperrInputError("input box needs finite lo <= hi")
    # inputs are rounded to storage: error <= u_s |x| (or half a subnormal spacing)
    r = a.storage.u * np.maximum(np.maximum(np.abs(vlo), np.abs(vhi)), _tiny(a.storage))
    r = np.where(vlo == vhi, np.abs(a.store(vlo) - vlo), r)
    model.require_chain("the a-priori bound")
    radii = []
    for i, layer in enumerate(model.layers):
        t = layer.type
        mag = np.maximum(np.abs(vlo), np.abs(vhi)) + r
        if xr.beyond_accumulator(layer, mag[None], a.storage, a.operand_format,
                                 a.accumulate)[0]:  # fmt: skip
            out = model.shapes()[i + 1]
            vlo, vhi, r = np.full(out, -np.inf), np.full(out, np.inf), np.full(out, np.inf)
            radii.append(np.inf)
            continue
        try:
            if not isinstance(layer, Operator):  # a residual block
                raise OperatorUnsupported(t)
            vlo, vhi, r = layer.apriori(vlo, vhi, r, a, model.shapes()[i + 1])
        except OperatorUnsupported:
            raise FperrInputError(f"a-priori bounds do not support layer type {t!r} "
                                  f"(layer {i})") from None  # fmt: skip
        r = np.where(np.isnan(r), np.inf, r)  # inf - inf after an overflow: no bound
        radii.append(float(np.max(r)))
    return AprioriBound(vlo.ravel(), vhi.ravel(), np.asarray(r).ravel(), radii)
