"""One bound rule per layer type: enclosure in -> enclosure out.

Each rule computes the layer in the run's arithmetic, maps the incoming
generators through the layer's (interval) derivative, and appends the local
error of the layer as new generators.  Notation: ``s`` storage format,
``u_acc`` the accumulator's unit roundoff (doubled for truncating
accumulators), ``mag`` a bound on magnitudes that holds for every run (the
computed value inflated by twice the incoming radius).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.special import erf

from ..arith import Emulated, Exact
from ..errors import FperrInputError
from ..layers import (
    ACTIVATIONS,
    Activation,
    BatchNorm,
    Conv2d,
    Dense,
    LayerNorm,
    Pool2d,
    Residual,
    Softmax,
    softmax,
)
from .zonotope import Array, Enclosure, half_ulp


@dataclass(frozen=True)
class Context:
    """How local errors are bounded.

    ``accumulation``: ``"worst"`` uses gamma_n(u_acc) |W||x| for a dot
    product of length n (Higham 2002, Lemma 3.1 and eq. 3.11, any order);
    ``"probabilistic"`` uses lambda sqrt(n) u_acc |W||x| (Higham & Mary 2019,
    Theorem 2.4), valid with probability >= 1 - 2 exp(-lambda^2 (1-u)^2 / 2)
    per dot product under their model of independent zero-mean rounding
    errors.
    """

    arith: Emulated
    accumulation: str = "worst"
    lam: float = 0.0
    _matrices: dict[int, Array] = field(default_factory=dict, compare=False, repr=False)

    def matrix_of(self, layer: Any, in_shape: tuple[int, ...], apply: Callable[[Array], Array]):
        """The (m, n) matrix of a layer's linear part, computed once per layer."""

        def get() -> Array:
            key = id(layer)
            if key not in self._matrices:
                n = int(np.prod(in_shape))
                img = apply(np.eye(n).reshape((n, *in_shape)))
                self._matrices[key] = np.ascontiguousarray(img.reshape(n, -1).T)
            return self._matrices[key]

        return get

    def gamma(self, n: int) -> float:
        u = self.arith.u_acc
        if self.accumulation == "probabilistic":
            return float(min(self.lam * math.sqrt(n) * u + n * u * u, _gamma(n, u)))
        return _gamma(n, u)

    def sum_of_errors(
        self, abs_sq: Callable[[Callable[[Array], Array]], Array], abs_lin: Array
    ) -> Array:
        """Bound on a sum of independent rounding errors with the given bounds.

        Worst case: the sum of the bounds (``abs_lin``).  Probabilistic: the
        Hoeffding bound lambda sqrt(sum of squared bounds), where
        ``abs_sq(square)`` maps squared operands through the squared weights.
        """
        if self.accumulation != "probabilistic":
            return abs_lin
        return np.minimum(abs_lin, self.lam * np.sqrt(abs_sq(np.square)))

    def func_rel(self) -> float:
        """Relative error allowed for elementwise functions before the storage rounding."""
        return self.arith.func_ulps * 2 * self.arith.accumulate.u


def _gamma(n: int, u: float) -> float:
    nu = n * u
    return math.inf if nu >= 1 else nu / (1 - nu)


Rule = Callable[[Any, Enclosure, Context, int], Enclosure]
RULES: dict[str, Rule] = {}


def rule(*types: str) -> Callable[[Rule], Rule]:
    def register(fn: Rule) -> Rule:
        for t in types:
            RULES[t] = fn
        return fn

    return register


def apply_rule(layer: Any, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
    try:
        fn = RULES[layer.type]
    except KeyError:
        raise FperrInputError(
            f"no bound rule for layer type {layer.type!r} (have: {', '.join(sorted(RULES))})"
        ) from None
    return fn(layer, enc, ctx, index)


def _affine_local(
    s_st: Array, z: Array, w_abs_mag: Array, w_abs_r: Array, extra: Array, ctx: Context, n: int
) -> Array:
    """Local error of y = fl(fl(sum) + b) for a dot product of length n.

    ``s_st``: the stored sum, ``z``: the stored result (after the bias add,
    or ``s_st`` itself without bias), ``w_abs_mag`` = |W| mag(x),
    ``w_abs_r`` = |W| r(x), ``extra`` = parameter-rounding terms.
    Any run's pre-rounding sum lies within 2|W|r + 2 acc of ours.
    """
    s = ctx.arith.storage
    acc = ctx.gamma(n) * w_abs_mag
    drift = 2 * w_abs_r + 2 * acc
    e1 = half_ulp(np.abs(s_st) + half_ulp(np.abs(s_st), s) + drift, s)
    e2 = 0.0 if z is s_st else half_ulp(np.abs(z) + half_ulp(np.abs(z), s) + drift + 2 * e1, s)
    return acc + e1 + e2 + extra


def _operand_error(mag: Array, a: Emulated) -> Array | None:
    """Error of rounding activations of magnitude <= mag to the operand format.

    A full ulp (not half): hardware conversions to TF32 may chop.
    """
    if not a.operand_narrower:
        return None
    return 2 * half_ulp(mag, a.operand_format)


def _weight_error(w_hat: Array, w: Array, a: Emulated) -> Array:
    """|W_hat - W|, or a full ulp of the operand format where it may chop (TF32)."""
    dw = np.abs(w_hat - w)
    if a.operand_narrower:
        dw = np.maximum(dw, 2 * half_ulp(np.abs(w), a.operand_format))
    return dw


@rule("dense")
def dense_rule(layer: Dense, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
    """Dense layer: Higham 2002, Lemma 3.1 / eq. 3.11 for each dot product,
    plus weight/bias rounding and the storage roundings; errors map through W."""
    a = ctx.arith
    x = enc.value
    w_hat = a.to_operand(layer.weight)
    s_st = a.matmul(a.activation_operand(x), w_hat.T)
    z = s_st if layer.bias is None else a.store(s_st + a.store(layer.bias))
    r = enc.radius()
    mag = np.abs(x) + 2 * r
    wa = np.abs(w_hat)
    dw = _weight_error(w_hat, layer.weight, a)
    # weight rounding: a sum of n independent errors (dw_ij x_j)
    extra = ctx.sum_of_errors(lambda sq: sq(mag) @ sq(dw).T, mag @ dw.T)
    dx = _operand_error(mag, a)
    if dx is not None:  # activations rounded to a narrower operand format (TF32)
        extra = extra + ctx.sum_of_errors(lambda sq: sq(dx) @ sq(wa).T, dx @ wa.T)
    if layer.bias is not None:
        extra = extra + np.abs(a.store(layer.bias) - layer.bias)
    local = _affine_local(s_st, z, mag @ wa.T, r @ wa.T, extra, ctx, layer.weight.shape[1])
    out = enc.linear(z, lambda cols: cols @ layer.weight.T, lambda: layer.weight)
    return out.add_box(local, index, random=True)


@rule("conv2d")
def conv_rule(layer: Conv2d, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
    """Conv2d as dense products over im2col patches (same lemma, n = C/g kh kw)."""
    a, exact = ctx.arith, Exact()
    x = enc.value
    w_hat = a.to_operand(layer.weight)
    nobias = Conv2d(w_hat, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    s_st = nobias.forward(x, a)  # rounds x to the operand format itself
    z = s_st
    if layer.bias is not None:
        z = a.store(s_st + a.store(layer.bias)[None, :, None, None])

    def conv_with(w: Array, v: Array) -> Array:
        return Conv2d(w, None, layer.stride, layer.padding, layer.dilation, layer.groups).forward(
            v, exact
        )

    r = enc.radius()
    mag = np.abs(x) + 2 * r
    dw = _weight_error(w_hat, layer.weight, a)
    extra = ctx.sum_of_errors(lambda sq: conv_with(sq(dw), sq(mag)), conv_with(dw, mag))
    wa = np.abs(w_hat)
    dx = _operand_error(mag, a)
    if dx is not None:  # activations rounded to a narrower operand format (TF32)
        extra = extra + ctx.sum_of_errors(lambda sq: conv_with(sq(wa), sq(dx)), conv_with(wa, dx))
    if layer.bias is not None:
        extra = extra + np.abs(a.store(layer.bias) - layer.bias)[None, :, None, None]
    n = int(np.prod(layer.weight.shape[1:]))
    local = _affine_local(s_st, z, conv_with(wa, mag), conv_with(wa, r), extra, ctx, n)
    lin = lambda cols: conv_with(layer.weight, cols)  # noqa: E731
    out = enc.linear(z, lin, ctx.matrix_of(layer, x.shape[1:], lin))
    return out.add_box(local, index, random=True)


# -- elementwise ---------------------------------------------------------------------
def _derivative_range(kind: str, lo: Array, hi: Array) -> tuple[Array, Array]:
    """Range of f' over [lo, hi] (elementwise), exact for each activation."""
    if kind in ("tanh", "sigmoid"):
        f = ACTIVATIONS[kind]

        def d(v: Array) -> Array:
            y = f(v)
            return 1 - y * y if kind == "tanh" else y * (1 - y)

        # f' is even and decreasing in |x|: max nearest 0, min at the far end
        near = np.where((lo <= 0) & (hi >= 0), 0.0, np.minimum(np.abs(lo), np.abs(hi)))
        far = np.maximum(np.abs(lo), np.abs(hi))
        return d(far), d(near)
    if kind == "gelu":

        def d(v: Array) -> Array:
            return 0.5 * (1 + erf(v / math.sqrt(2))) + v * np.exp(-v * v / 2) / math.sqrt(
                2 * math.pi
            )

        cands = [d(lo), d(hi)]
        for c in (-math.sqrt(2), math.sqrt(2)):  # extrema of GELU'
            inside = (lo <= c) & (c <= hi)
            cands.append(np.where(inside, d(np.full_like(lo, c)), np.nan))
        st = np.stack(cands)
        return np.nanmin(st, axis=0), np.nanmax(st, axis=0)
    raise FperrInputError(f"no derivative enclosure for {kind!r}")  # pragma: no cover


@rule("relu", "leaky_relu", "tanh", "sigmoid", "gelu")
def activation_rule(layer: Activation, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
    """Mean value form: f(z_hat) - f(z) = f'(xi)(z_hat - z), f'(xi) enclosed over
    [z_hat - 2r, z_hat + 2r]; the spread of f' becomes a deterministic box."""
    a = ctx.arith
    z = enc.value
    y = layer.forward(z, a)
    r = enc.radius()
    lo, hi = z - 2 * r, z + 2 * r
    s = a.storage
    if layer.type in ("relu", "leaky_relu"):
        alpha = 0.0 if layer.type == "relu" else layer.negative_slope
        dlo = np.where(lo >= 0, 1.0, alpha)
        dhi = np.where(hi <= 0, alpha, 1.0)
        local = np.zeros_like(z)
        if alpha:
            local = np.where(lo < 0, half_ulp(alpha * np.maximum(np.abs(lo), np.abs(hi)), s), 0.0)
    else:
        dlo, dhi = _derivative_range(layer.type, lo, hi)
        f = ACTIVATIONS[layer.type]
        fmag = np.maximum(np.abs(f(lo)), np.abs(f(hi)))
        if layer.type == "gelu":  # GELU's minimum -0.17 at x = -0.7518 inside [lo, hi]
            fmag = np.where((lo <= -0.7518) & (hi >= -0.7518), np.maximum(fmag, 0.17), fmag)
        fmag = fmag * (1 + ctx.func_rel())
        local = half_ulp(fmag, s) + ctx.func_rel() * fmag
    dc, dr = (dlo + dhi) / 2, (dhi - dlo) / 2
    out = enc.scale_rows(y, dc)
    out = out.add_box(dr * r, index, random=False)
    return out.add_box(local, index, random=True)


@rule("softmax")
def softmax_rule(layer: Softmax, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
    """Softmax, mean value form: ds = J(xi) dz with J = diag(s) - s s^T.

    Generators go through J at the computed logits, signed.  Over the
    enclosure, log s_i moves by at most rho_i = 2 r_i + 2 max r (logsumexp is
    1-Lipschitz in the max norm), so s_i(xi) is within ds_i = s_i (e^rho_i - 1)
    of s_i, and the spread of J times |dz| <= r is a deterministic box.
    Kernel allowance: exp, sum and divide in the accumulator, gamma_{k+4}(u_acc).
    """
    a = ctx.arith
    enc = enc.materialize()
    z = enc.value
    y = layer.forward(z, a)
    s = softmax(z)  # at the computed logits, before the storage rounding
    r = enc.radius()
    k = y.shape[-1]
    rel = _gamma(k + 4, a.accumulate.u)
    g = enc.gens  # (N, k, q)
    gens = s[:, :, None] * g - s[:, :, None] * np.einsum("bk,bkq->bq", s, g)[:, None, :]
    rho = 2 * r + 2 * r.max(axis=-1, keepdims=True)
    with np.errstate(over="ignore"):
        ds = np.minimum(s * np.expm1(rho), 1.0)  # softmax values stay in [0, 1]
    remainder = (
        ds * r
        + ds * ((s + ds) * r).sum(axis=-1, keepdims=True)
        + s * (ds * r).sum(axis=-1, keepdims=True)
    )
    fmag = np.minimum(y + half_ulp(y, a.storage) + rel * y + ds, 1.0)
    local = half_ulp(fmag * (1 + rel), a.storage) + rel * fmag
    out = Enclosure(y, gens, enc.groups, enc.random)
    out = out.add_box(remainder, index, random=False)
    return out.add_box(local, index, random=True)


# -- pooling, shape, normalisation ------------------------------------------------
@rule("maxpool2d", "avgpool2d")
def pool_rule(layer: Pool2d, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
    """Max: exact; the error is the winner's when it wins for every run, else a
    box max_i r_i (|max a - max b| <= max |a_i - b_i|).  Avg: linear map plus
    the sum's accumulation error (Higham 2002, eq. 4.4) and one storage rounding."""
    a = ctx.arith
    x = enc.value
    y = layer.forward(x, a)
    r = enc.radius()
    k = layer.kernel[0] * layer.kernel[1]
    # flat input index of every window slot (padding slots get 0; they never win)
    idx = np.arange(int(np.prod(x.shape[1:])), dtype=np.float64).reshape((1, *x.shape[1:]))
    index_pool = Pool2d("avg", layer.kernel, layer.stride, layer.padding)
    win_idx = index_pool.windows(idx).astype(np.int64)[0]  # (C, H', W', k)
    if layer.kind == "avg":
        lin = lambda cols: layer.windows(cols).sum(axis=-1) / k  # noqa: E731
        out = enc.linear(y, lin, ctx.matrix_of(layer, x.shape[1:], lin))
        mag = layer.windows(np.abs(x) + 2 * r).sum(axis=-1) / k
        local = _gamma(k, a.u_acc) * mag
        local = local + half_ulp(np.abs(y) + half_ulp(np.abs(y), a.storage) + 2 * local +
                                 4 * layer.windows(r).max(axis=-1), a.storage)  # fmt: skip
        return out.add_box(local, index, random=True)
    wv, wr = layer.windows(x), layer.windows(r)
    wr = np.where(np.isfinite(wv), wr, 0.0)  # padding never carries error
    arg = np.argmax(wv, axis=-1)
    top = np.take_along_axis(wv - 2 * wr, arg[..., None], -1)[..., 0]
    rivals = np.where(np.arange(k) == arg[..., None], -np.inf, wv + 2 * wr).max(axis=-1)
    sure = top > rivals
    N = x.shape[0]
    flat_w = np.broadcast_to(win_idx, (N, *win_idx.shape))
    src = np.take_along_axis(flat_w, arg[..., None], -1)[..., 0].reshape(N, -1)
    overlapping = any(s < k for s, k in zip(layer.stride, layer.kernel, strict=True))
    out = enc.gather_rows(y, src, sure.astype(np.float64), overlapping)
    return out.add_box(np.where(sure, 0.0, wr.max(axis=-1)), index, random=False)


@rule("flatten", "reshape", "dropout")
def shape_rule(layer: Any, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
    """Reshapes move values without arithmetic: generators keep their rows."""
    return enc.with_value(layer.forward(enc.value, ctx.arith))


@rule("batchnorm")
def batchnorm_rule(layer: BatchNorm, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
    """Eval batch norm y = x s + t: errors scale by s; local error from the
    rounded s, t, the fp evaluation (gamma_2(u_acc)) and the storage rounding."""
    a = ctx.arith
    x = enc.value
    y = layer.forward(x, a)
    s, t = layer.broadcast(layer.scale, x.ndim), layer.broadcast(layer.shift, x.ndim)
    s_hat, t_hat = (
        layer.broadcast(a.store(layer.scale), x.ndim),
        layer.broadcast(a.store(layer.shift), x.ndim),
    )
    r = enc.radius()
    mag = np.abs(x) + 2 * r
    evaluation = _gamma(2, a.accumulate.u) * (np.abs(s_hat) * mag + np.abs(t_hat))
    params = np.abs(s_hat - s) * mag + np.abs(t_hat - t)
    drift = 2 * np.abs(s_hat) * r + 2 * evaluation
    store = half_ulp(np.abs(y) + half_ulp(np.abs(y), a.storage) + drift, a.storage)
    out = enc.scale_rows(y, np.broadcast_to(s, x.shape))
    return out.add_box(evaluation + params + store, index, random=True)


@rule("residual")
def residual_rule(layer: Residual, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
    """y = x + F(x): generators add (shared columns align), plus one rounding."""
    enc = enc.materialize()
    branch = enc
    for sub in layer.layers:
        branch = apply_rule(sub, branch, ctx, index)
    a = ctx.arith
    y = a.store(enc.value + branch.value)
    q0 = enc.gens.shape[2]
    gens = branch.gens.copy()
    gens[:, :, :q0] += enc.gens
    out = Enclosure(y, gens, branch.groups, branch.random, branch.boxes)
    r = out.radius()
    local = half_ulp(np.abs(y) + half_ulp(np.abs(y), a.storage) + 2 * r, a.storage)
    return out.add_box(local, index, random=True)


@rule("layernorm")
def layernorm_rule(layer: LayerNorm, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
    """Layer norm y = w u + b, u = z / s, z = x - mean x, s = sqrt(|z|^2/n + eps).

    Mean value form per component: du = J(xi) dz with J = I/s - a a^T,
    a = z / (sqrt(n) s^1.5).  The generators go through J at the computed
    point, signed; the spread of J over the enclosure (|1/s - 1/s_hat| and
    |a_i a_j - a_hat_i a_hat_j|, with s in [s_min, s_max] and z within 2 rho of
    the computed z, rho = r + mean r) times |dz| <= rho is a deterministic box.
    Kernel allowance (stated, for an fp32 kernel): u within gamma_{2n+8}(u_acc)
    (|u| + 1 + mean|x| / s_min) of exact (mean and variance are sums of n
    terms); the affine part adds 2 u_acc (|w u| + |b|).
    """
    a = ctx.arith
    enc = enc.materialize()
    x = enc.value
    y = layer.forward(x, a)
    n = int(np.prod(layer.normalized_shape))
    N, shape = x.shape[0], x.shape
    xg = x.reshape(N, -1, n)
    rg = enc.radius().reshape(xg.shape)
    w = np.ones(n) if layer.weight is None else layer.weight.reshape(-1)
    b = np.zeros(n) if layer.bias is None else layer.bias.reshape(-1)
    w_hat, b_hat = a.store(w), a.store(b)
    z = xg - xg.mean(axis=-1, keepdims=True)
    rho = rg + rg.mean(axis=-1, keepdims=True)
    rho2 = np.sqrt(np.square(rho).sum(axis=-1, keepdims=True))
    znorm = np.sqrt(np.square(z).sum(axis=-1, keepdims=True))
    s_hat = np.sqrt(np.square(znorm) / n + layer.eps)
    s_min = np.sqrt(np.maximum(znorm - 2 * rho2, 0.0) ** 2 / n + layer.eps)
    s_max = np.sqrt((znorm + 2 * rho2) ** 2 / n + layer.eps)
    # signed part: J(z_hat) (P gens), P = centring
    q = enc.gens.shape[2]
    g = enc.gens.reshape(N, -1, n, q)
    pg = g - g.mean(axis=2, keepdims=True)
    dot = np.einsum("bgn,bgnq->bgq", z, pg)[:, :, None, :]
    jg = pg / s_hat[..., None] - z[..., None] * dot / (n * s_hat[..., None] ** 3)
    gens = (jg * w[None, None, :, None]).reshape(N, -1, q)
    # spread of J over the enclosure, applied to |dz| <= rho
    a_hat = z / (math.sqrt(n) * s_hat**1.5)
    da = (2 * rho * s_min**-1.5 + np.abs(z) * (s_min**-1.5 - s_max**-1.5)) / math.sqrt(n)
    spread = (
        (1 / s_min - 1 / s_max) * rho
        + da * ((np.abs(a_hat) + da) * rho).sum(axis=-1, keepdims=True)
        + np.abs(a_hat) * (da * rho).sum(axis=-1, keepdims=True)
    )
    u_mag = (np.abs(z) + 2 * rho) / s_min
    kernel_u = _gamma(2 * n + 8, a.u_acc) * (
        u_mag + 1 + (np.abs(xg) + 2 * rg).mean(axis=-1, keepdims=True) / s_min
    )
    remainder = np.abs(w) * spread
    local = (
        np.abs(w_hat) * kernel_u
        + 2 * a.accumulate.u * (np.abs(w_hat) * u_mag + np.abs(b_hat))
        + np.abs(w_hat - w) * u_mag
        + np.abs(b_hat - b)
    )
    yg = y.reshape(xg.shape)
    prop = np.abs(w) * (rho / s_min + np.abs(z) * rho2 / (math.sqrt(n) * s_min**2))
    local = local + half_ulp(
        np.abs(yg) + half_ulp(np.abs(yg), a.storage) + 2 * (prop + local), a.storage
    )
    out = Enclosure(y, gens, enc.groups, enc.random)
    out = out.add_box(remainder.reshape(shape), index, random=False)
    return out.add_box(local.reshape(shape), index, random=True)
