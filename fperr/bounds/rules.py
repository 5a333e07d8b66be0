"""One bound rule per layer type: enclosure in -> enclosure out.

Each rule computes the layer in the run's arithmetic, maps the incoming
generators through the layer's (interval) derivative, and appends the local
error of the layer as new generators.  Notation: ``s`` storage format,
``u_acc`` the accumulator's unit roundoff (doubled for truncating
accumulators), ``mag`` a bound on magnitudes that holds for every run (the
computed value inflated by twice the incoming radius).  Every sum and
product in an accumulator also carries the exponent range's terms
(:mod:`.exponent_range`): an absolute eta where a value may fall below the
normal range, and an infinite error where some summation order may overflow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
from scipy.special import erfc

from ..arith import Emulated, Exact
from ..errors import FperrInputError
from ..formats import Format, gamma, get_format
from ..layers import (
    ACTIVATIONS,
    Activation,
    BatchNorm,
    Conv2d,
    Dense,
    LayerNorm,
    Pool2d,
    Residual,
    RMSNorm,
    Softmax,
    softmax,
)
from ..operators import Operator
from ..rounding import round as fround
from . import activation_ranges as more
from . import exponent_range as xr
from .allowance import default_allowance
from .backend import current
from .enclosure import Array, Enclosure, half_ulp, zero_error
from .weight_memo import memo


@dataclass(frozen=True)
class Context:
    """How local errors are bounded.

    ``method``: ``"deterministic"`` uses gamma_n(u_acc) |W||x| for a dot
    product of length n (Higham 2002, Lemma 3.1 and eq. 3.11, any order);
    ``"probabilistic"`` uses lambda sqrt(n) u_acc |W||x| (Higham & Mary 2019,
    Theorem 2.4), valid with probability >= 1 - 2 exp(-lambda^2 (1-u)^2 / 2)
    per dot product under their model of independent zero-mean rounding
    errors.
    """

    arith: Emulated
    method: str = "deterministic"
    lam: float = 0.0
    _matrices: dict[tuple[int, tuple[int, ...]], Array] = field(
        default_factory=dict, compare=False, repr=False
    )

    def matrix_of(self, layer: Any, in_shape: tuple[int, ...], apply: Callable[[Array], Array]):
        """The (m, n) matrix of a layer's linear part, computed once per layer."""

        def get() -> Array:
            # one layer object may be used at several places with different input shapes
            key = (id(layer), tuple(in_shape))
            if key not in self._matrices:
                n = int(np.prod(in_shape))
                img = apply(np.eye(n).reshape((n, *in_shape)))
                self._matrices[key] = np.ascontiguousarray(img.reshape(n, -1).T)
            return self._matrices[key]

        return get

    def gamma(self, n: int) -> float:
        """gamma_n(u_acc), or Higham & Mary's (2019, Theorem 2.1) probabilistic
        gamma~_n(lambda) = exp(lambda' sqrt(n) u + n u^2 / (1 - u)) - 1 with
        lambda' = lambda / (1 - u): their failure probability per factor is
        2 exp(-lambda'^2 (1 - u)^2 / 2) = 2 exp(-lambda^2 / 2), the figure
        :func:`fperr.bounds.lambda_for` budgets (one event per product)."""
        u = self.arith.u_acc
        if self.method == "probabilistic":
            lam = self.lam / (1 - u)
            return float(min(math.expm1(lam * math.sqrt(n) * u + n * u * u / (1 - u)),
                             gamma(n, u)))  # fmt: skip
        return gamma(n, u)

    def add_local(self, enc: Enclosure, computed: Array, data: Array, index: int) -> Enclosure:
        """Append a layer's local error: ``computed``, the roundings of computed
        values, and ``data``, the roundings of parameters (weights, biases,
        scales) and operands, which are deterministic functions of the data.

        In the probabilistic model only the first are independent zero-mean
        random terms; the second align for structured data (equal inputs,
        weights of one sign), so they stay worst-case (``random=False``).  In
        the worst case both go into one box (fewer generator rows later).
        """
        if self.method != "probabilistic":
            return enc.add_box(computed + data, index, random=True)
        return enc.add_box(computed, index, random=True).add_box(data, index, random=False)

    def add_signed(self, enc: Enclosure, s: Array | None, index: int) -> Enclosure:
        """Append one signed generator ``s`` ``(N, *shape)``: a known error vector
        (parameter rounding, :func:`parameter_rounding`), deterministic."""
        if s is None or not np.any(s):
            return enc
        N = enc.value.shape[0]
        part = np.ascontiguousarray(np.broadcast_to(s, enc.value.shape).reshape(N, 1, -1))
        return Enclosure(enc.value, None, [*enc.groups, index], [*enc.random, False],
                         enc.boxes, parts=[*enc.parts, part])  # fmt: skip

    def func_rel(self) -> float:
        """Relative error allowed for one elementwise operation (leaky ReLU's alpha x,
        or any function under an explicit ``func_ulps``) before the storage rounding."""
        return _ulps(self.arith) * 2 * self.arith.accumulate.u

    def func_error(self, name: str, fmag: Array, fmin: Array | float = 0.0) -> Array:
        """Bound on |y - f(x)| for the stored value y of an elementwise function with
        ``fmin`` <= |f(x)| <= ``fmag``: the measured kernel allowance (fperr/data, see
        :mod:`.allowance`), or, with an explicit ``func_ulps``, the storage rounding
        of a value within ``func_ulps`` ulps of the accumulator."""
        a = self.arith
        if a.func_ulps is None:
            return default_allowance().error(name, fmag, a.storage, a.accumulate, fmin)
        m = fmag * (1 + self.func_rel()) + self.func_abs()
        return half_ulp(m, a.storage) + self.func_rel() * m + self.func_abs()

    def func_relative(self, name: str) -> tuple[float, float]:
        """(rho, alpha): |f_hat - f| <= rho |f| + alpha for ``name`` computed inside a
        composite kernel (softmax's exp, layer norm's rsqrt) in the accumulator."""
        a = self.arith
        if a.func_ulps is None:
            return default_allowance().relative(name, a.accumulate)
        return self.func_rel(), self.func_abs()

    # -- the ends of the exponent range (see exponent_range.py) ------------------
    def func_abs(self) -> float:
        """Absolute error allowed for elementwise function values below the
        accumulator's normal range (where func_rel does not hold)."""
        return xr.eta_func(self.arith.accumulate, _ulps(self.arith))

    def eta(self) -> float:
        """Absolute error of one product or quotient below the normal range."""
        return xr.eta(self.arith.accumulate, self.arith.acc_rounding == "truncate")

    def eta_add(self) -> float:
        """Absolute error of one addition below the normal range (0 unless flushing)."""
        return xr.eta_add(self.arith.accumulate)

    def dot_underflow(self, n: int, count: Callable[[], Array]) -> Array | float:
        """Underflow term of dot products of length n of matmul operands;
        ``count()`` bounds the number of nonzero products (asked only if the
        term is not 0: products of the operand format may be inexact in the
        accumulator, or it flushes)."""
        a = self.arith
        f = a.operand_format  # holds the activations too (storage or operand)
        exact = xr.products_exact(f, f, a.accumulate)
        if exact and not self.eta_add():
            return 0.0
        return xr.dot_underflow(count(), n, a.u_acc, a.accumulate, exact,
                                a.acc_rounding == "truncate")  # fmt: skip

    def term_underflow(self, t: Array, fmt: Format, n: int) -> Array | float:
        """Underflow error of one term of magnitude ``t`` held in ``fmt`` entering
        the accumulator (exact there when ``fmt``'s values all are) and passing
        through at most n further additions: :func:`exponent_range.dot_underflow`
        with one term."""
        a = self.arith
        return xr.dot_underflow((np.asarray(t) > 0).astype(np.float64), n, a.u_acc,
                                a.accumulate, a.accumulate.contains(fmt),
                                a.acc_rounding == "truncate")  # fmt: skip

    def sum_may_overflow(
        self, total: Array | float, n: int, absolute: Array | float = 0.0
    ) -> npt.NDArray[np.bool_]:
        """Whether some order of a sum of n terms of magnitudes summing to
        <= ``total`` may overflow the accumulator (worst-case gamma_n even in
        the probabilistic mode: overflow in any order must be excluded)."""
        return xr.may_overflow(total, n, self.arith.u_acc, self.arith.accumulate, absolute)


def _ulps(a: Emulated) -> float:
    # without an explicit func_ulps, a single operation (leaky ReLU's alpha x) gets 1 ulp
    return 1.0 if a.func_ulps is None else a.func_ulps


def convert_rule(enc: Enclosure, old: Format, new: Format, index: int) -> Enclosure:
    """Values move to another storage format between layers (mixed precision):
    exact where ``new`` holds every value of ``old``, else one rounding of values
    within 2r of the computed ones."""
    if new.contains(old):
        return enc
    mag = np.abs(enc.value) + 2 * enc.radius()
    return enc.with_value(fround(enc.value, new)).add_box(half_ulp(mag, new), index, random=True)


def apply_rule(layer: Any, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
    if isinstance(layer, Operator):
        return layer.rule(enc, ctx, index)
    if isinstance(layer, Residual):
        return residual_rule(layer, enc, ctx, index)
    raise FperrInputError(f"no bound rule for layer type {layer.type!r}")


def affine_local(
    s_st: Array,
    z: Array,
    w_abs_mag: Array,
    w_abs_r: Array,
    extra: Array,
    ctx: Context,
    n: int,
    count: Callable[[], Array],
    bias: Array | None = None,
) -> Array:
    """Local error of y = fl(fl(sum) + b) for a dot product of length n.

    ``s_st``: the stored sum, ``z``: the stored result (after the bias add,
    or ``s_st`` itself without bias), ``w_abs_mag`` = |W| mag(x) (operands as
    rounded), ``w_abs_r`` = |W| r(x), ``extra`` = parameter-rounding terms,
    ``count()`` = how many products may be nonzero (asked only when one may
    underflow), ``bias`` = |b_hat| where there is a bias.  A kernel may also
    add the bias inside the accumulator (a fused epilogue, or a GEMM with
    C = b): the bias is then the (n+1)-th term of the sum, converted into the
    accumulator (where it may underflow) and added with the others, so the
    accumulation term is gamma_{n+1} (|W| |x| + |b|); the two storage
    roundings below cover both the fused and the separate order.  Any run's
    pre-rounding sum lies within 2|W|r + 2 acc of ours.
    """
    s = ctx.arith.storage
    under = ctx.dot_underflow(n, count)
    terms, total = n, w_abs_mag
    if bias is not None:
        terms, total = n + 1, w_abs_mag + bias
        under = under + ctx.term_underflow(bias, ctx.arith.storage, n + 1)
    acc = ctx.gamma(terms) * total + under
    # no unit may overflow unless the largest may: one pass instead of the mask's six
    if ctx.sum_may_overflow(np.max(total, initial=0.0), terms, np.max(under, initial=0.0)):
        acc = np.where(ctx.sum_may_overflow(total, terms, under), np.inf, acc)
    # the rounding of a stored value y within |y_hat| + half_ulp(y_hat) + drift of ours;
    # half_ulp(m) <= u m + e0 (e0: the error at zero) saves evaluating it twice
    u, e0 = s.u, zero_error(s)
    drift = 2 * w_abs_r + 2 * acc + e0
    e1 = half_ulp((1 + u) * np.abs(s_st) + drift, s)
    e2 = 0.0 if z is s_st else half_ulp((1 + u) * np.abs(z) + drift + 2 * e1, s)
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


class Affine(NamedTuple):
    """What a dense or convolution layer adds to a run's error (see :func:`dense_local`)."""

    z: Array  # stored output
    local: Array  # accumulation and storage roundings (random in the probabilistic model)
    extra: Array  # parameter and operand roundings not in ``signed`` (worst case)
    w_abs_r: Array  # |W_hat| r: the rounded weights' image of the incoming radius
    signed: Array | None  # the parameter roundings' exact effect on the computed input


def parameter_rounding(
    apply: Callable[[Array, Array], Array],
    x: Array,
    r: Array,
    w_hat: Array,
    w: Array,
    db: Array | float,
    w_abs_x: Array,
    w_abs_r: Array,
    n: int,
    tiny: float,
) -> tuple[Array, Array]:
    """(s, box): the effect (W_hat - W) x_run + (b_hat - b) of rounding the
    parameters, for every run's input x_run (within 2r of the computed ``x``).

    It is s + (W_hat - W)(x_run - x) with the known vector s = (W_hat - W) x +
    (b_hat - b), kept signed (one generator, so later layers' cancellations
    apply to it as to the true error), and a second-order box 2 |dW| r.
    ``apply(M, v)`` is the layer's linear map with weights M (no bias);
    ``w_abs_x`` >= |W_hat| |x| (|W_hat| times any bound on |x|) and ``w_abs_r`` =
    |W_hat| r.

    |dW| <= rho |W_hat| on entries with |W_hat| >= ``tiny`` (the format's
    smallest normal; rho the largest ratio, so no GEMM with |dW| is needed);
    entries with subnormal or zero W_hat get an exact GEMM of their own, only
    if some exist.  s is evaluated in float64:
    its error is at most gamma_{n+2}(2^-53) |dW| |x| (Higham 2002, eq. 3.5).
    """
    dw, rho, sub = weight_rounding(w_hat, w, tiny)
    if dw is None:  # weights already in the format (a binary32 run of float32 weights)
        return np.zeros_like(w_abs_r) + db, np.zeros_like(w_abs_r)
    s = apply(dw, x) + db
    g64 = gamma(n + 2, 2.0**-53)
    box = 2 * rho * w_abs_r + g64 * (rho * w_abs_x + np.abs(db))
    if sub is not None:  # 2 |dW| r + g64 |dW| |x| over these entries: one map
        box = box + apply(sub, 2 * r + g64 * np.abs(x))
    return s, box


def weight_rounding(w_hat: Array, w: Array, tiny: float) -> tuple[Array | None, float,
                                                                  Array | None]:  # fmt: skip
    """(dW = W_hat - W or None where zero, rho >= |dW| / |W_hat| over the entries with
    |W_hat| >= ``tiny``, |dW| on the others or None), once per call and weights."""
    return memo("rounding", (w_hat, w), tiny, lambda: _weight_rounding(w_hat, w, tiny))


def _weight_rounding(w_hat: Array, w: Array, tiny: float) -> tuple[Array | None, float,
                                                                   Array | None]:  # fmt: skip
    """(dW or None where zero, rho, |dW| on the entries below ``tiny`` or None):
    what :func:`parameter_rounding` needs of the weights alone."""
    dw = w_hat - w
    if not dw.any():
        return None, 0.0, None
    adw = np.abs(dw)
    normal = np.abs(w_hat) >= tiny
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(normal, adw / np.where(normal, np.abs(w_hat), 1.0), 0.0)
    rho = float(ratio.max(initial=0.0)) * (1 + 2.0**-50)  # the division may round down
    return dw, rho, None if normal.all() else np.where(normal, 0.0, adw)


def operand_weights(a: Emulated, w: Array) -> Array:
    """``w`` rounded to ``a``'s operand format (once per call, :mod:`.weight_memo`)."""
    return memo("operand", (w,), a, lambda: a.to_operand(w))


def _product_count(mag: Array, wa: Array) -> Array:
    """(N, out): how many products of each dot product may be nonzero, (mag > 0) @
    (|W_hat| != 0)^T; without zero weights the row count of nonzero magnitudes (the
    same integers, without a GEMM)."""
    live = mag > 0
    if wa.all():
        return np.broadcast_to(live.sum(axis=1, keepdims=True).astype(np.float64),
                               (mag.shape[0], wa.shape[0]))  # fmt: skip
    return live @ (wa != 0).astype(np.float64).T


def dense_sums(layer: Dense, a: Emulated, x: Array) -> tuple[Array, Array, Array]:
    """(W_hat, stored sum, stored output) of a dense layer's run in ``a`` at stored
    input ``x``: the rounded weights, fl(x W_hat^T) and fl(fl(sum) + fl(b))."""
    w_hat = operand_weights(a, layer.weight)
    s_st = a.matmul(a.activation_operand(x), w_hat.T)
    z = s_st if layer.bias is None else a.store(s_st + a.store(layer.bias))
    return w_hat, s_st, z


def dense_apply(m: Array, v: Array) -> Array:
    """v @ m^T (a dense layer's map with weights m, exact), over only the input units
    some weight reads where those are few (the weights whose rounding lies below the
    normal range, :func:`parameter_rounding`): a GEMM of that width, not the layer's."""
    cols = np.flatnonzero(m.any(axis=0))
    if 8 * cols.size < m.shape[1]:
        return np.asarray(v[:, cols] @ m[:, cols].T)
    return np.asarray(current().gemm(v, m.T))


def dense_local(layer: Dense, x: Array, r: Array, ctx: Context) -> Affine:
    """The stored output, the accumulation and storage errors, the rounding of
    parameters and operands (see :meth:`Context.add_local`), and the rounded
    weights' image of the radius, of a dense layer at computed input ``x`` with
    incoming radius ``r``.  Rounded-to-nearest parameters give their error as a
    signed vector (:func:`parameter_rounding`); parameters that may be chopped
    (TF32 operands) as a worst-case box."""
    a = ctx.arith
    w_hat, s_st, z = dense_sums(layer, a, x)
    mag = np.abs(x) + 2 * r
    wa = np.abs(w_hat)
    dx = _operand_error(mag, a)
    mag_op = mag if dx is None else mag + dx  # magnitudes of the operands as rounded
    gemm = current().gemm  # float64 magnitudes: any order of the sums (the margin covers it)
    w_abs_mag = gemm(mag_op, wa.T)
    w_abs_r = gemm(r, wa.T)
    db = 0.0 if layer.bias is None else a.store(layer.bias) - layer.bias
    signed = None
    if a.operand_narrower:  # a chopping conversion: the weights' error is not known
        dw = _weight_error(w_hat, layer.weight, a)
        extra = mag @ dw.T + np.abs(db)
        if dx is not None:  # activations rounded to the narrower format too
            extra = extra + dx @ wa.T
    else:
        signed, extra = parameter_rounding(dense_apply, x, r, w_hat, layer.weight, db,
                                           w_abs_mag, w_abs_r, layer.weight.shape[1],
                                           a.operand_format.smallest_normal)  # fmt: skip
    b_abs = None if layer.bias is None else np.abs(a.store(layer.bias))
    local = affine_local(s_st, z, w_abs_mag, w_abs_r, np.zeros_like(z), ctx,
                          layer.weight.shape[1], lambda: _product_count(mag, wa),
                          b_abs)  # fmt: skip
    return Affine(z, local, extra, w_abs_r, signed)


def dense_rule(layer: Dense, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
    """Dense layer: Higham 2002, Lemma 3.1 / eq. 3.11 for each dot product,
    plus weight/bias rounding and the storage roundings; errors map through W."""
    f = dense_local(layer, enc.value, enc.radius(), ctx)
    out = enc.linear(f.z, lambda cols: cols @ layer.weight.T, lambda: layer.weight)
    return ctx.add_signed(ctx.add_local(out, f.local, f.extra, index), f.signed, index)


def conv_with(layer: Conv2d, w: Array, v: Array) -> Array:
    """``layer``'s convolution with kernel ``w`` and no bias, in exact arithmetic
    (float64: magnitudes and radii, whose evaluation error the bounds' margin
    covers in any order of the sums), by the backend's kernel where it has one."""
    direct = current().conv2d(v, w, layer)
    if direct is not None:
        return direct
    conv = Conv2d(w, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    return conv.forward(v, Exact())


def conv_sums(layer: Conv2d, a: Emulated, x: Array) -> tuple[Array, Array, Array]:
    """:func:`dense_sums` of a convolution (its operands rounded by the convolution)."""
    w_hat = operand_weights(a, layer.weight)
    nobias = Conv2d(w_hat, None, layer.stride, layer.padding, layer.dilation, layer.groups)
    s_st = nobias.forward(x, a)  # rounds x to the operand format itself
    z = s_st
    if layer.bias is not None:
        z = a.store(s_st + a.store(layer.bias)[None, :, None, None])
    return w_hat, s_st, z


def conv_local(layer: Conv2d, x: Array, r: Array, ctx: Context) -> Affine:
    """A convolution's :class:`Affine` terms, as :func:`dense_local` (n = C/g kh kw)."""
    a = ctx.arith
    w_hat, s_st, z = conv_sums(layer, a, x)
    mag = np.abs(x) + 2 * r
    wa = np.abs(w_hat)
    dx = _operand_error(mag, a)
    n = int(np.prod(layer.weight.shape[1:]))
    mag_op = mag if dx is None else mag + dx  # magnitudes of the operands as rounded
    w_abs_r = conv_with(layer, wa, r)
    w_abs_mag = conv_with(layer, wa, mag_op)
    db: Array | float = 0.0
    if layer.bias is not None:
        db = (a.store(layer.bias) - layer.bias)[None, :, None, None]
    signed = None
    if a.operand_narrower:  # a chopping conversion: the weights' error is not known
        dw = _weight_error(w_hat, layer.weight, a)
        extra = conv_with(layer, dw, mag) + np.abs(db)
        if dx is not None:  # activations rounded to the narrower format too
            extra = extra + conv_with(layer, wa, dx)
    else:
        conv = lambda m, v: conv_with(layer, m, v)  # noqa: E731
        signed, extra = parameter_rounding(conv, x, r, w_hat, layer.weight, db,
                                           w_abs_mag, w_abs_r, n,
                                           a.operand_format.smallest_normal)  # fmt: skip
    nonzero = (wa != 0).astype(np.float64)
    count = lambda: conv_with(layer, nonzero, (mag > 0).astype(np.float64))  # noqa: E731
    b_abs = None if layer.bias is None else np.abs(a.store(layer.bias))[None, :, None, None]
    local = affine_local(s_st, z, w_abs_mag, w_abs_r, np.zeros_like(z), ctx, n, count, b_abs)
    return Affine(z, local, extra, w_abs_r, signed)


def conv_rule(layer: Conv2d, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
    """Conv2d as dense products over im2col patches (same lemma, n = C/g kh kw)."""
    x = enc.value
    f = conv_local(layer, x, enc.radius(), ctx)
    lin = lambda cols: conv_with(layer, layer.weight, cols)  # noqa: E731
    out = enc.linear(f.z, lin, ctx.matrix_of(layer, x.shape[1:], lin))
    return ctx.add_signed(ctx.add_local(out, f.local, f.extra, index), f.signed, index)


# -- elementwise ---------------------------------------------------------------------
def _derivative(kind: str, v: Array, alpha: float = 1.0) -> Array:
    """f'(v) to float64 accuracy relative to f'(v) itself, limits at +-inf
    (SiLU, ELU, hard-swish, hard-sigmoid, GELU-tanh: :mod:`.activation_ranges`).

    tanh' = sech^2 and sigmoid' = s(v) s(-v), not 1 - tanh^2 and s (1 - s),
    which cancel to 0 in the tails (true value ~1e-16 there); GELU' with
    erfc, not 1 + erf, for the same reason.
    """
    if kind in more.NEW_CURVED:
        return more.derivative(kind, v, alpha)
    with np.errstate(over="ignore", invalid="ignore"):
        if kind == "tanh":
            return 1 / np.square(np.cosh(v))
        if kind == "sigmoid":
            s = ACTIVATIONS["sigmoid"]
            return s(v) * s(-v)
        d = 0.5 * erfc(-v / math.sqrt(2)) + v * np.exp(-v * v / 2) / math.sqrt(2 * math.pi)
        return np.where(np.isinf(v), (v > 0) * 1.0, d)  # GELU' -> 0 at -inf, 1 at +inf


def derivative_range(
    kind: str, lo: Array, hi: Array, alpha: float = 1.0
) -> tuple[Array, Array]:
    """Range of f' over [lo, hi] (elementwise), exact for each activation (an
    outward-widened enclosure for those of :mod:`.activation_ranges`; ``alpha``: ELU's)."""
    if kind in more.NEW_CURVED:
        return more.derivative_range(kind, lo, hi, alpha)
    if kind in ("tanh", "sigmoid"):
        # f' is even and decreasing in |x|: max nearest 0, min at the far end
        near = np.where((lo <= 0) & (hi >= 0), 0.0, np.minimum(np.abs(lo), np.abs(hi)))
        far = np.maximum(np.abs(lo), np.abs(hi))
        return _derivative(kind, far), _derivative(kind, near)
    if kind == "gelu":
        cands = [_derivative(kind, lo), _derivative(kind, hi)]
        for c in (-math.sqrt(2), math.sqrt(2)):  # extrema of GELU'
            inside = (lo <= c) & (c <= hi)
            cands.append(np.where(inside, _derivative(kind, np.full_like(lo, c)), np.nan))
        st = np.stack(cands)
        # fmin/fmax skip the NaN candidates as nanmin/nanmax do, without warning where
        # all are NaN (an infinite range: the bound there is inf anyway)
        return np.fmin.reduce(st, axis=0), np.fmax.reduce(st, axis=0)
    raise FperrInputError(f"no derivative enclosure for {kind!r}")  # pragma: no cover


def piecewise_slopes(
    kinks: Sequence[float], slopes: Sequence[float], lo: Array, hi: Array
) -> tuple[Array, Array]:
    """Range of the secant slopes over [lo, hi] (elementwise) of a continuous
    piecewise linear function: slope ``slopes[i]`` on the open piece
    (kinks[i - 1], kinks[i]), kinks ascending, len(slopes) = len(kinks) + 1.

    A secant slope (f(b) - f(a)) / (b - a) is the length-weighted mean of the
    slopes of the pieces between a and b, so its range is the hull of the
    slopes of the pieces whose interior [lo, hi] meets (lo < kinks[i] and
    hi > kinks[i - 1]).  An interval that is a single point at a kink meets no
    interior: it carries no error (r = 0), and gets the two adjacent pieces'
    slopes; NaN ends (no enclosure) get every slope.
    """
    inf = np.inf
    edges = [-inf, *kinks, inf]
    opened = [(lo < edges[i + 1]) & (hi > edges[i]) for i in range(len(slopes))]
    closed = [(lo <= edges[i + 1]) & (hi >= edges[i]) for i in range(len(slopes))]
    none_open, none_closed = ~np.any(opened, axis=0), ~np.any(closed, axis=0)
    dlo, dhi = np.full(np.shape(lo), inf), np.full(np.shape(lo), -inf)
    for s, o, c in zip(slopes, opened, closed, strict=True):
        touched = o | (none_open & c) | none_closed
        dlo = np.where(touched, np.minimum(dlo, s), dlo)
        dhi = np.where(touched, np.maximum(dhi, s), dhi)
    return dlo, dhi


def relu_slopes(alpha: float, lo: Array, hi: Array) -> tuple[Array, Array]:
    """Range of the secant slopes of leaky ReLU (slope 1 for x > 0, ``alpha``
    below) over [lo, hi], for any real alpha (negative, 0, or above 1); see
    :func:`piecewise_slopes`."""
    return piecewise_slopes((0.0,), (alpha, 1.0), lo, hi)


def activation_pieces(layer: Activation) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """(kinks, slopes) of a piecewise linear activation (see
    :func:`piecewise_slopes`), None for a curved one."""
    if layer.type == "relu":
        return (0.0,), (0.0, 1.0)
    if layer.type == "leaky_relu":
        return (0.0,), (float(layer.negative_slope), 1.0)
    if layer.type == "relu6":  # min(max(x, 0), 6): MobileNetV2's
        return (0.0, 6.0), (0.0, 1.0, 0.0)
    return None


def run_reach(r: Array, spread: Array | None = None) -> Array:
    """How far any run's values (and the exact ones) lie from this run's: r + s,
    with s <= r this run's own error bound (``spread``, from a reference run's
    values), or s = r without one (this run is just some run within r of exact)."""
    return r + (r if spread is None else spread)


def kink_reached(kinks: Sequence[float], z: Array, far: Array) -> npt.NDArray[np.bool_]:
    """Units whose range [z - far, z + far] holds a kink in its interior (or whose
    value is NaN): the only ones whose slopes and remainder depend on ``far``
    (:func:`piecewise_slopes`, :func:`piece_remainder`); elsewhere one piece holds
    the whole range, the slope is its own and the remainder 0 for any smaller
    range too."""
    with np.errstate(invalid="ignore"):
        return np.asarray(~(kink_distance(kinks, z) >= far))


def kink_distance(kinks: Sequence[float], z: Array) -> Array:
    """|z - k| for the nearest kink k (NaN for a NaN z)."""
    return np.asarray(np.min([np.abs(z - k) for k in kinks], axis=0))


def activation_local(
    layer: Activation, z: Array, r: Array, ctx: Context, spread: Array | None = None
) -> tuple[Array, Array, Array, Array]:
    """(y, d, rem, local): the stored output, the slope d that carries the
    incoming error, the remainder box rem >= |f(a') - f(a*) - d (a' - a*)| for any
    run's a' and the exact a* (both in [z - 2r, z + 2r], |a' - a*| <= r), and the
    function's own error.  Mean value form: d the centre and rem / r the
    half-width of f' over [z - 2r, z + 2r]; piecewise linear functions take the
    slope of z's own piece instead where its remainder is smaller
    (:func:`piece_remainder`).  With ``spread`` s <= r bounding this run's own
    error, the range is [z - r - s, z + r + s]."""
    a = ctx.arith
    y = layer.forward(z, a)
    far = run_reach(r, spread)
    lo, hi = z - far, z + far
    s = a.storage
    pieces = activation_pieces(layer)
    if pieces is not None:  # relu, relu6 exact; leaky relu rounds alpha x
        alpha = float(layer.negative_slope) if layer.type == "leaky_relu" else 0.0
        local = np.zeros_like(z)
        if alpha:  # alpha x, evaluated like any function, then one storage rounding
            amag = abs(alpha) * np.maximum(np.abs(lo), np.abs(hi))
            amag = amag * (1 + ctx.func_rel()) + ctx.func_abs()
            local = half_ulp(amag, s) + ctx.func_rel() * amag + ctx.func_abs()
            local = np.where(lo < 0, local, 0.0)  # only the negative part rounds
        return (y, *piecewise_carry(*pieces, z, r, far), local)
    if layer.type in more.NEW_CURVED:
        dlo, dhi = derivative_range(layer.type, lo, hi, float(layer.alpha))
        fmag, fmin = more.magnitudes(layer.type, lo, hi, float(layer.alpha))
        if layer.type == "elu" and layer.alpha != 1.0:
            local = elu_error(float(layer.alpha), fmag, fmin, ctx)
        else:
            local = ctx.func_error(layer.type, fmag, fmin)
        local = np.where(more.exact_zone(layer.type, lo, hi), 0.0, local)
    else:
        dlo, dhi = derivative_range(layer.type, lo, hi)
        f = ACTIVATIONS[layer.type]
        fmag = np.maximum(np.abs(f(lo)), np.abs(f(hi)))
        if layer.type == "gelu":  # GELU's minimum -0.17 at x = -0.7518 inside [lo, hi]
            fmag = np.where((lo <= -0.7518) & (hi >= -0.7518), np.maximum(fmag, 0.17), fmag)
        # |f| is smallest at an end of [lo, hi] (tanh, sigmoid monotone; |GELU|
        # unimodal on each side of 0), or 0 where f's zero at 0 lies inside
        fmin = np.minimum(np.abs(f(lo)), np.abs(f(hi))) * (1 - 1e-12)
        if layer.type != "sigmoid":
            fmin = np.where((lo <= 0) & (hi >= 0), 0.0, fmin)
        local = ctx.func_error(layer.type, fmag, fmin)
    return y, (dlo + dhi) / 2, (dhi - dlo) / 2 * r, local


def piecewise_carry(
    kinks: Sequence[float], slopes: Sequence[float], z: Array, r: Array, far: Array
) -> tuple[Array, Array]:
    """(d, rem) of a piecewise linear function over [z - far, z + far]: the mean
    value form (:func:`piecewise_slopes`), or the own piece's slope
    (:func:`piece_remainder`) where its remainder is smaller.  A range strictly
    inside one piece gets that piece's slope and no remainder from both forms, so
    only the other units (those :func:`kink_reached` marks: few, in most layers)
    go through them."""
    with np.errstate(invalid="ignore"):
        inside = kink_distance(kinks, z) > far  # NaN: not inside
    s = np.asarray(slopes, dtype=np.float64)
    d = s[np.searchsorted(np.asarray(kinks, dtype=np.float64), np.where(inside, z, 0.0))]
    rem = np.zeros(np.shape(z))
    near = ~inside
    if near.any():
        zn, rn, fn = z[near], r[near], far[near]
        dlo, dhi = piecewise_slopes(kinks, slopes, zn - fn, zn + fn)
        dc, rc = (dlo + dhi) / 2, (dhi - dlo) / 2 * rn
        d_own, rem_own = piece_remainder(kinks, slopes, zn, rn, fn)
        own = rem_own < rc  # False where either is NaN: the mean value form stays
        d[near], rem[near] = np.where(own, d_own, dc), np.where(own, rem_own, rc)
    return d, rem


def piece_remainder(
    kinks: Sequence[float], slopes: Sequence[float], z: Array, r: Array,
    far: Array | None = None,
) -> tuple[Array, Array]:
    """(d, rem) of a continuous piecewise linear function (as in
    :func:`piecewise_slopes`) with d the slope of the piece holding z (the left
    one at a kink): f(a') - f(a*) - d (a' - a*) is the integral of f' - d over
    [a*, a'], of length <= r inside [z - far, z + far] (far = 2r by default,
    r + s with a spread, see :func:`activation_local`), so it is at most
    sum over pieces p of |s_p - d| min(r, |[z - far, z + far] meet p|).  On ReLU
    with 0 < z < 2r this is 2r - z, below the mean value form's r / 2 where
    z > 1.5 r: the error goes on unscaled with a box that vanishes as the
    kink leaves the range."""
    edges = [-np.inf, *kinks, np.inf]
    own = np.searchsorted(np.asarray(kinks, dtype=np.float64), z, side="left")
    s = np.asarray(slopes, dtype=np.float64)
    d = s[np.minimum(own, len(slopes) - 1)]  # NaN z sorts last
    reach = run_reach(r) if far is None else far
    lo, hi = z - reach, z + reach
    rem = np.zeros(np.shape(z))
    with np.errstate(invalid="ignore"):  # inf radii: inf - inf at the outer pieces
        for p, s_p in enumerate(slopes):
            meet = np.minimum(hi, edges[p + 1]) - np.maximum(lo, edges[p])
            part = np.abs(s_p - d) * np.minimum(r, np.maximum(meet, 0.0))
            rem = rem + np.where(s_p == d, 0.0, part)
    return d, rem


def elu_error(alpha: float, fmag: Array, fmin: Array, ctx: Context) -> Array:
    """Kernel error of ELU with alpha != 1, whose table (measured at alpha = 1) does
    not apply directly.  ATen computes in the opmath format F (binary32 for 16-bit
    storage; binary64 for binary64) E = expm1(x) (or exp(x) - 1), then a' E with
    a' = alpha rounded to F, then rounds to storage.  With e_E the measured alpha = 1
    error of E in F (its table), |expm1 x| <= fmag/|alpha| = m <= 1 (``fmag``, ``fmin``:
    over the negative inputs, see :func:`.activation_ranges.magnitudes`), u = u_F, eta_F the
    subnormal spacing of F::

        |fl(a' E) - alpha expm1 x| <= |alpha| e_E + 2.0001 u |alpha| (m + e_E) + eta_F,

    plus half an ulp of storage at |f| <= fmag + that when storage is narrower than F.
    With an explicit ``func_ulps`` the generic allowance of :meth:`Context.func_error`."""
    a = ctx.arith
    if a.func_ulps is not None:
        return ctx.func_error("elu", fmag, fmin)
    if alpha == 0:  # 0 * E: exactly 0
        return np.zeros(np.shape(fmag))
    inner = get_format("binary64" if a.storage.p > 24 else "binary32")
    fa = default_allowance().measured("elu", inner)
    if fa is None:  # pragma: no cover - the shipped tables hold both
        raise FperrInputError(f"no measured allowance for elu in {inner.name}")
    m, m_min = fmag / abs(alpha), fmin / abs(alpha)
    e_e = fa.error(m, inner, m_min)
    err = abs(alpha) * e_e + 2.0001 * inner.u * abs(alpha) * (m + e_e) + inner.smallest_subnormal
    if a.storage.p < inner.p:
        err = err + half_ulp(fmag + err, a.storage)
    return np.where(fmag > a.storage.max, np.inf, err)


def activation_rule(layer: Activation, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
    """Mean value form: f(z_hat) - f(z) = f'(xi)(z_hat - z), f'(xi) enclosed over
    [z_hat - 2r, z_hat + 2r]; the spread of f' becomes a deterministic box."""
    r = enc.radius()
    y, dc, rem, local = activation_local(layer, enc.value, r, ctx)
    out = enc.scale_rows(y, dc)
    out = out.add_box(rem, index, random=False)
    return out.add_box(local, index, random=True)


def softmax_rule(layer: Softmax, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
    """Softmax, mean value form: ds = J(xi) dz with J = diag(s) - s s^T.

    Generators go through J at the computed logits, signed.  Over the
    enclosure, log s_i moves by at most rho_i = 2 r_i + 2 max r (logsumexp is
    1-Lipschitz in the max norm), so s_i(xi) is within ds_i = s_i (e^rho_i - 1)
    of s_i, and the spread of J times |dz| <= r is a deterministic box.
    Kernel: d_i = z_i - max z rounded (exp(d_i) then errs relatively by
    eta_i = expm1(|d_i| u)), exp within rho_e |e| + alpha_e (measured, see
    :mod:`.allowance`), the sum S >= 1 with gamma_{k-1}, then a reciprocal and a
    product (or a division): two roundings.  With e_i = (1 + rho_e)(1 + eta_i) - 1
    and sigma = (1 + sum_j s_j e_j + k alpha_e)(1 + gamma_{k-1}) - 1,
    |y_i - s_i| <= s_i ((1 + e_i)(1 + u)^2 / (1 - sigma) - 1) + alpha_e (1 + u)^2 / (1 - sigma).
    """
    enc = enc.materialize()
    y, s, remainder, local = softmax_local(layer, enc.value, enc.radius(), ctx)
    gens = softmax_jacobian(layer, s, enc.gens)
    out = Enclosure(y, gens, enc.groups, enc.random)
    out = out.add_box(remainder, index, random=False)
    return out.add_box(local, index, random=True)


def softmax_jacobian(layer: Softmax, s: Array, g: Array) -> Array:
    """J g for columns g (N, n, q), J = diag(s) - s s^T within each group of
    units along the softmax axis (s: ``(N, *shape)``, softmax at the logits)."""
    if s.ndim == 2:  # a vector: the formula as it always was (bit for bit)
        return s[:, :, None] * g - s[:, :, None] * np.einsum("bk,bkq->bq", s, g)[:, None, :]
    ax = layer.batched_axis(s.ndim)
    sg = softmax_groups(s, ax, s.ndim - 1)  # (N, G, K)
    gg = softmax_groups(g.reshape(*s.shape, -1), ax, s.ndim - 1)  # (N, G, K, q)
    out = sg[..., None] * gg - sg[..., None] * np.einsum("bgk,bgkq->bgq", sg, gg)[:, :, None, :]
    return softmax_ungroup(out, ax, s.shape).reshape(g.shape)


def softmax_groups(v: Array, ax: int, units: int) -> Array:
    """``(N, *shape, *rest) -> (N, G, K, *rest)``: the softmax axis ``ax`` (of the
    batch) last among the ``units`` per-input axes, the others flattened to G."""
    moved = np.moveaxis(v, ax, units)
    k = moved.shape[units]
    return moved.reshape(v.shape[0], -1, k, *v.shape[units + 1 :])


def softmax_ungroup(v: Array, ax: int, shape: tuple[int, ...]) -> Array:
    """The inverse of :func:`softmax_groups` for a batch of ``shape`` ``(N, *units)``."""
    units = len(shape) - 1
    moved = (*np.delete(np.asarray(shape), ax).tolist(), shape[ax])
    return np.moveaxis(v.reshape(*moved, *v.shape[3:]), units, ax)


def softmax_local(
    layer: Softmax, z: Array, r: Array, ctx: Context
) -> tuple[Array, Array, Array, Array]:
    """(y, s, remainder, local) of a softmax (see :func:`softmax_rule`): the
    stored output, softmax at the computed logits (J = diag(s) - s s^T), the
    box for the spread of J and the kernel's own error, each shaped like z.
    Along any axis: every term is a function of the units of one group (the
    axis moved last; for a vector nothing moves)."""
    a = ctx.arith
    y = layer.forward(z, a)
    ax = layer.batched_axis(z.ndim)
    if ax != z.ndim - 1 and a.storage.p < a.accumulate.p:
        # measured (tests/test_softmax_axis.py): torch's CPU float16/bfloat16 softmax over
        # any dim but the last reduces in the tensor's own format, 1.4x past a binary32-
        # accumulator bound; such a softmax is bounded with the storage format accumulating
        ctx = Context(replace(a, accumulate=a.storage), ctx.method, ctx.lam)
    s, remainder, local = _softmax_last(
        np.moveaxis(z, ax, -1), np.moveaxis(r.reshape(z.shape), ax, -1), ctx
    )
    return y, *(np.moveaxis(v, -1, ax) for v in (s, remainder, local))  # type: ignore[return-value]


def _softmax_last(z: Array, r: Array, ctx: Context) -> tuple[Array, Array, Array]:
    """(s, remainder, local) of a softmax along the last axis (:func:`softmax_local`)."""
    a = ctx.arith
    s = softmax(z)  # at the computed logits, before the storage rounding
    k = z.shape[-1]
    rho = 2 * r + 2 * r.max(axis=-1, keepdims=True)
    with np.errstate(over="ignore"):
        ds = np.minimum(s * np.expm1(rho), 1.0)  # softmax values stay in [0, 1]
    remainder = (
        ds * r
        + ds * ((s + ds) * r).sum(axis=-1, keepdims=True)
        + s * (ds * r).sum(axis=-1, keepdims=True)
    )
    u = a.u_acc
    rho_e, alpha_e = ctx.func_relative("exp")
    s_plus = np.minimum(s + ds, 1.0)
    d = np.abs(z - z.max(axis=-1, keepdims=True)) + rho  # |z_i - max z| of any run
    with np.errstate(over="ignore", invalid="ignore"):
        e_rel = (1 + rho_e) * (1 + np.expm1(d * u)) - 1
        sigma = (1 + (s_plus * e_rel).sum(axis=-1, keepdims=True) + k * alpha_e) * (
            1 + gamma(k - 1, u)) - 1  # fmt: skip
        q = np.where(sigma < 1, (1 + u) ** 2 / (1 - sigma), np.inf)
        kern = s_plus * ((1 + e_rel) * q - 1) + alpha_e * q
    kern = np.where(np.isnan(kern), np.inf, kern)
    under = _softmax_underflow(ctx, k, gamma(k + 4, u), alpha_e)
    local = kern + under + half_ulp(np.minimum(s_plus + kern, 1.0) + under, a.storage)
    # the sum of the k exponentials (each <= 1) must not overflow in any order
    local = np.where(ctx.sum_may_overflow(float(k), k, under), np.inf, local)
    return s, remainder, local


def _softmax_underflow(ctx: Context, k: int, rel: float, func_abs: float) -> float:
    """Absolute error of a softmax output from values below the accumulator's
    normal range: each exp(z_i - max) may err by func_abs (and the subtraction
    by eta_add when flushing), their sum S >= 1 (the maximum's term is 1) by k
    of each plus k flushed additions, the quotient by eta; an absolute error
    E in a term or in S moves y_i = e_i / S by <= E / S <= E (y_i <= 1).  The
    relative roundings (gamma_{k+4}) scale all of it by <= (1 + rel) / (1 - rel)."""
    if rel >= 1:
        return math.inf
    e = (k + 1) * (func_abs + ctx.eta_add()) + k * ctx.eta_add() + ctx.eta()
    return e * (1 + rel) / (1 - rel)


# -- pooling, shape, normalisation ------------------------------------------------
def window_index(layer: Pool2d, in_shape: tuple[int, ...]) -> npt.NDArray[np.int64]:
    """(C, H', W', k): the flat input index of every window slot, -1 for padding."""
    idx = np.arange(1, int(np.prod(in_shape)) + 1, dtype=np.float64).reshape((1, *in_shape))
    index_pool = Pool2d("avg", layer.kernel, layer.stride, layer.padding)  # pads with 0
    return index_pool.windows(idx).astype(np.int64)[0] - 1


def avgpool_local(layer: Pool2d, x: Array, r: Array, ctx: Context) -> tuple[Array, Array]:
    """(y, local) of average pooling: the sum's accumulation error (Higham 2002,
    eq. 4.4), the quotient and one storage rounding."""
    a = ctx.arith
    y = layer.forward(x, a)
    k = layer.kernel[0] * layer.kernel[1]
    mag = layer.windows(np.abs(x) + 2 * r).sum(axis=-1) / k
    # sum then divide: k flushed additions (their error / k) and one quotient
    under = (ctx.eta() + ctx.eta_add()) * (1 + gamma(k, a.u_acc))
    local = gamma(k, a.u_acc) * mag + under
    local = np.where(ctx.sum_may_overflow(k * mag, k, under), np.inf, local)
    local = local + half_ulp(np.abs(y) + half_ulp(np.abs(y), a.storage) + 2 * local +
                             4 * layer.windows(r).max(axis=-1), a.storage)  # fmt: skip
    return y, local


def maxpool_local(
    layer: Pool2d, x: Array, r: Array, spread: Array | None = None
) -> tuple[Array, npt.NDArray[np.int64], npt.NDArray[np.bool_], Array]:
    """(y, src, keep, box) of max pooling: the flat input index of each window's
    winner w (N, m) in this run, whether its error passes through, and a box.

    Any run's values a'_i lie within 2 r_i of ours, a_i, and the exact ones
    within r_i, so with the gaps g_i = a_w - a_i, the error of any run's max is
    the winner's error e'_w plus delta = max_i (a'_i - a'_w) - max_i (a*_i -
    a*_w), where 0 <= max_i (a'_i - a'_w) <= max_{i != w} (2 (r_i + r_w) - g_i)_+
    = D and 0 <= max_i (a*_i - a*_w) <= D: |delta| <= D.  A window keeps the
    winner's path with the box D where D is below max_i r_i, else the error is
    the box max_i r_i alone (|max a' - max a*| <= max_i |a'_i - a*_i|).  D is 0
    where the winner wins for every run (g_i > 2 (r_i + r_w) for every rival).

    With ``spread`` s <= r, a bound on this run's own error (|a_i - a*_i| <= s_i),
    any run's values lie within r_i + s_i of ours, and 2 (r_i + r_w) becomes
    r_i + s_i + r_w + s_w.
    """
    wv, wr = layer.windows(x), layer.windows(r)
    pad = ~np.isfinite(wv)  # padding slots (-inf) never win and never carry error
    wr = np.where(pad, 0.0, wr)
    y, arg, d = _window_doubt(layer, wv, pad, run_reach(r, spread))
    widest = wr.max(axis=-1)
    # the path where its box is the smaller one: the winner's error then goes on
    # signed (random roundings in quadrature), where the box alone is worst case
    keep = d < widest
    keep |= d == 0  # a sure winner (or no rival): exact
    N = x.shape[0]
    win_idx = np.maximum(window_index(layer, x.shape[1:]), 0)  # padding slots never win
    flat_w = np.broadcast_to(win_idx, (N, *win_idx.shape))
    src = np.take_along_axis(flat_w, arg[..., None], -1)[..., 0].reshape(N, -1)
    return y, src, keep, np.where(keep, d, widest)


def _window_doubt(
    layer: Pool2d, wv: Array, pad: npt.NDArray[np.bool_], reach: Array
) -> tuple[Array, npt.NDArray[np.intp], Array]:
    """(max, argmax, D) per window (see :func:`maxpool_local`): D = max over rivals
    of (far_i + far_w - g_i)_+, ``reach`` the units' far = r + s."""
    k = layer.kernel[0] * layer.kernel[1]
    far = np.where(pad, 0.0, layer.windows(reach))
    arg = np.argmax(wv, axis=-1)
    y = np.take_along_axis(wv, arg[..., None], -1)[..., 0]  # the forward's max, exactly
    far_w = np.take_along_axis(far, arg[..., None], -1)[..., 0]
    rival = (np.arange(k) != arg[..., None]) & ~pad
    with np.errstate(invalid="ignore"):  # inf radii: inf - inf where a gap is inf
        gain = far + far_w[..., None] - (y[..., None] - wv)
    gain = np.where(np.isnan(gain), np.inf, gain)
    return y, arg, np.where(rival, np.maximum(gain, 0.0), 0.0).max(axis=-1)


def winner_in_doubt(layer: Pool2d, x: Array, reach: Array) -> npt.NDArray[np.bool_]:
    """(N, C, H, W): the inputs of the max-pooling windows whose winner some run
    may not share (D > 0 in :func:`maxpool_local`, or a NaN value): the only ones
    whose ranges change the window's rule.  Where D = 0 the winner's error passes
    on exactly, whatever any smaller range."""
    wv = layer.windows(x)
    pad = ~np.isfinite(wv) & ~np.isnan(wv)  # -inf padding; NaN values stay in doubt
    _, _, d = _window_doubt(layer, wv, pad, reach)
    doubt = ~(d <= 0) | np.isnan(wv).any(axis=-1)  # (N, C, H', W')
    N, n = x.shape[0], int(np.prod(x.shape[1:]))
    idx = window_index(layer, x.shape[1:]).reshape(-1, layer.kernel[0] * layer.kernel[1])
    out = np.zeros((N, n + 1), dtype=bool)  # the last column takes the padding slots
    flat = doubt.reshape(N, -1)
    for slot in idx.T:
        out[:, np.where(slot >= 0, slot, n)] |= flat
    return out[:, :n].reshape(x.shape)


def pool_rule(layer: Pool2d, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
    """Max: the winner's error plus a box where a rival may win, or the box
    max_i r_i alone where that is smaller (:func:`maxpool_local`).  Avg: linear map plus
    the sum's accumulation error (Higham 2002, eq. 4.4) and one storage rounding."""
    x = enc.value
    r = enc.radius()
    if layer.kind == "avg":
        y, local = avgpool_local(layer, x, r, ctx)
        k = layer.kernel[0] * layer.kernel[1]
        lin = lambda cols: layer.windows(cols).sum(axis=-1) / k  # noqa: E731
        out = enc.linear(y, lin, ctx.matrix_of(layer, x.shape[1:], lin))
        return out.add_box(local, index, random=True)
    y, src, keep, box = maxpool_local(layer, x, r)
    overlapping = any(s < k for s, k in zip(layer.stride, layer.kernel, strict=True))
    out = enc.gather_rows(y, src, keep.astype(np.float64), overlapping)
    return out.add_box(box, index, random=False)


def shape_rule(layer: Any, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
    """Reshapes move values without arithmetic: generators keep their rows."""
    return enc.with_value(layer.forward(enc.value, ctx.arith))


def _bn_params(layer: BatchNorm, fmt: Format) -> tuple[Array, Array, Array]:
    """Stored mean, alpha~ = w~ / sqrt(v~ + eps) (float64, from stored w, v) and stored
    bias, with the statistics and parameters rounded to ``fmt``."""
    c = layer.running_mean.shape
    w = np.ones(c) if layer.weight is None else layer.weight
    b = np.zeros(c) if layer.bias is None else layer.bias
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        alpha = fround(w, fmt) / np.sqrt(fround(layer.running_var, fmt) + layer.eps)
    return fround(layer.running_mean, fmt), alpha, fround(b, fmt)


def batchnorm_rule(layer: BatchNorm, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
    """Eval batch norm y = (x - m) s + b, s = w / sqrt(v + eps): errors scale by s.

    A kernel stores m, v, w, b (m~, v~, w~, b~: rounded to storage, or to
    binary32 where a mixed-precision kernel keeps fp32 parameters), computes
    alpha = w~ / sqrt(v~ + eps) (1 + theta), |theta| <= gamma_5(u_acc), then the
    folded form x alpha + (b~ - m~ alpha) (PyTorch's CPU kernel: one FMA each)
    or the two-step form (x - m~) alpha + b~: both are x alpha - m~ alpha + b~
    within gamma_4(u_acc) (|x alpha| + |m~ alpha| + |b~|).  Against the exact
    y: |x||alpha - s| + |m~||alpha - s| + |m~ - m||s| + |b~ - b|; then the
    storage rounding.
    """
    x = enc.value
    y, s, computed, params = batchnorm_local(layer, x, enc.radius(), ctx)
    out = enc.scale_rows(y, np.broadcast_to(s, x.shape))
    return ctx.add_local(out, computed, params, index)


def batchnorm_local(
    layer: BatchNorm, x: Array, r: Array, ctx: Context
) -> tuple[Array, Array, Array, Array]:
    """(y, s, computed, params) of eval batch norm (see :func:`batchnorm_rule`):
    the stored output, the exact scale (broadcast), the evaluation and storage
    errors, and the parameter roundings."""
    a = ctx.arith
    y = layer.forward(x, a)
    bc = lambda v: layer.broadcast(v, x.ndim)  # noqa: E731
    s = bc(layer.scale)
    binary32 = get_format("binary32")
    fmts = [a.storage] + ([binary32] if not a.storage.contains(binary32) else [])
    g_alpha, g = gamma(5, a.u_acc), gamma(4, a.u_acc)
    amag = dalpha = mmag = dm = bmag = db = np.zeros_like(s)
    for f in fmts:  # every way a kernel may hold the parameters
        m_t, alpha_t, b_t = (bc(v) for v in _bn_params(layer, f))
        amag = np.maximum(amag, np.abs(alpha_t) * (1 + g_alpha))
        dalpha = np.maximum(dalpha, np.abs(alpha_t - s) + g_alpha * np.abs(alpha_t))
        mmag = np.maximum(mmag, np.abs(m_t))
        dm = np.maximum(dm, np.abs(m_t - bc(layer.running_mean)))
        b0 = bc(np.zeros_like(layer.running_mean) if layer.bias is None else layer.bias)
        bmag, db = np.maximum(bmag, np.abs(b_t)), np.maximum(db, np.abs(b_t - b0))
    # eps is any positive float: v~ + eps may overflow the accumulator, and alpha
    # is then 0 or NaN, not within gamma_5 of w / sqrt(v + eps)
    v_t = np.max([fround(layer.running_var, f) for f in fmts], axis=0) + layer.eps
    dalpha = np.where(bc(v_t * (1 + a.u_acc) >= xr.overflow_threshold(a.accumulate)),
                      np.inf, dalpha)  # fmt: skip
    mag = np.abs(x) + 2 * r
    terms = amag * mag + mmag * amag + bmag
    # products x alpha and m~ alpha (storage x accumulator) may underflow
    # inexactly, a flushing accumulator may lose the sums
    exact = xr.products_exact(a.storage, a.accumulate, a.accumulate)
    under = (2 * (0.0 if exact else ctx.eta()) + 3 * ctx.eta_add()) * (1 + g)
    evaluation = g * terms + under
    evaluation = np.where(ctx.sum_may_overflow(terms, 3, under), np.inf, evaluation)
    with np.errstate(invalid="ignore"):
        params = dalpha * mag + mmag * dalpha + dm * np.abs(s) + db
    params = np.where(np.isnan(params), np.inf, params)
    drift = 2 * amag * r + 2 * (evaluation + params)
    store = half_ulp(np.abs(y) + half_ulp(np.abs(y), a.storage) + drift, a.storage)
    return y, s, evaluation + store, params


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
    return out.add_box(residual_local(y, out.radius(), a), index, random=True)


def residual_local(y: Array, r: Array, a: Emulated) -> Array:
    """Storage rounding of the sum x + F(x), at magnitudes |y| + 2r (any run)."""
    return half_ulp(np.abs(y) + half_ulp(np.abs(y), a.storage) + 2 * r, a.storage)


def _layernorm_range(
    ctx: Context, xg: Array, rg: Array, z: Array, rho: Array, s_min: Array, u_mag: Array,
    w_hat: Array, b_hat: Array,
) -> tuple[Array, npt.NDArray[np.bool_]]:  # fmt: skip
    """Underflow term and overflow mask of a layer-norm kernel computing the
    mean, the variance (two-pass), u = z / s and w u + b in the accumulator.

    Absolute errors below the normal range (eta per product or quotient,
    eta_add per flushed addition): the mean E_mu = eta + eta_add (the sum's
    flushed additions, divided by n, and the quotient), z = x - mean
    E_z = E_mu + eta_add, the variance (n squares and a quotient, the sum
    divided by n; z's error through the squares) E_v = 2 eta + 2 eta_add +
    2 mean|z| E_z + E_z^2 with the eps addition; s = sqrt(v + eps) then moves
    by <= E_v / s_lo (s_lo = s_min sqrt(1 - gamma) bounds the computed s from
    below before these errors), u by (E_z + |z| E_s / s_c) / s_c + eta, and
    y = w u + b by |w| E_u + eta + eta_add, all times 1 + gamma_{2n+8} for the
    relative roundings they pass through.  Overflow: the mean's sum, the sum
    of squares and the affine step must stay in range in any order.
    """
    a = ctx.arith
    n = xg.shape[-1]
    g = gamma(2 * n + 8, a.u_acc)
    eta, eta_add = ctx.eta(), ctx.eta_add()
    xbar = (np.abs(xg) + 2 * rg).mean(axis=-1, keepdims=True)
    zb = (np.abs(z) + 2 * rho + g * xbar) * (1 + g)  # the computed z, before underflow
    e_z = eta + 2 * eta_add
    e_v = 2 * eta + 2 * eta_add + 2 * zb.mean(axis=-1, keepdims=True) * e_z + e_z**2
    s_lo = s_min * math.sqrt(max(1 - g, 0.0))
    with np.errstate(divide="ignore", invalid="ignore"):
        e_s = e_v / s_lo
        s_c = s_lo - e_s
        e_u = np.where(s_c > 0, (e_z + zb * e_s / s_c) / s_c + eta, np.inf)
    under = (np.abs(w_hat) * e_u + eta + eta_add) * (1 + g)
    u_c = u_mag * (1 + g) + e_u  # |u| as computed
    overflow = (
        ctx.sum_may_overflow(n * xbar, n)
        | ctx.sum_may_overflow(np.square(zb + e_z).sum(axis=-1, keepdims=True), 2 * n)
        | ctx.sum_may_overflow(np.abs(w_hat) * u_c + np.abs(b_hat), 2, under)
    )
    return under, overflow


def _ln_remainder(
    z: Array, c: Array, m2: Array, eps: float, kappa: float
) -> tuple[Array, Array, Array, Array]:
    """Remainder R(D) = f(z_hat + D) - f(z_hat) - J(z_hat) D over the displacements
    D of the scaled enclosure kappa P E, f(z) = z / s(z), s(z) = sqrt(|z|^2/n + eps):
    returns (dg, lo, hi, v_lo) with R(D) = D gam + z_hat t, |gam| <= dg and
    -lo <= t <= hi, and v_lo a lower bound on s(z_hat + D)^2.

    Per D, with s = s(z_hat), v = s^2, v' = v + tau, tau = (2 z_hat^T D + |D|^2) / n,
    and g(v) = v^-1/2 (so -g'(v) = 1 / (2 s^3)), the algebraic identity

        R(D) = D (g(v') - g(v)) + z_hat (g(v') - g(v) - g'(v) tau - |D|^2 / (2 n s^3))

    holds (J D = D / s - z_hat (z_hat^T D) / (n s^3)), and Taylor's theorem with
    the Lagrange remainder (Apostol 1967, Calculus I, Thm 7.6) gives
    g(v') - g(v) - g'(v) tau = (3/8) theta^-5/2 tau^2 for a theta between v and v'.
    The signed generators bound what a box around z_hat could not:
    |z_hat^T D| <= kappa c with c = sum_j |z_hat^T P G_j|, |D_i| <= kappa rho_i
    (rho = sum_j |P G_j|), |D|^2 <= kappa^2 m2, so |tau| <= T = (2 kappa c +
    kappa^2 m2) / n and v' >= v_lo = max(v - 2 kappa c / n, eps) (v' - eps =
    |z_hat + D|^2 / n >= 0).  g is decreasing and g'' decreasing in theta, so

        gam = g(v') - g(v),   |gam| <= dg = max(g(v_lo) - g(v), g(v) - g(v + T)),
        lo = kappa^2 m2 / (2 n s^3),    hi = (3/8) v_lo^-5/2 T^2:

    second order, O(radius^2 / variance), with the variance's lower bound
    moved by 2 kappa c / n only.  The second part has the single direction
    z_hat, so it is one generator (signed through later layers), not a box.
    """
    n = z.shape[-1]
    v = np.square(z).sum(axis=-1, keepdims=True) / n + eps
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        v_lo = np.maximum(v - 2 * kappa * c / n, eps)
        t = (2 * kappa * c + kappa**2 * m2) / n
        gv = 1 / np.sqrt(v)
        dg = np.maximum(1 / np.sqrt(v_lo) - gv, gv - 1 / np.sqrt(v + t))
        lo = kappa**2 * m2 * gv**3 / (2 * n)
        hi = 0.375 * v_lo**-2.5 * np.square(t)
    bad = lambda a: np.where(np.isnan(a), np.inf, a)  # noqa: E731
    return bad(dg), bad(lo), bad(hi), v_lo


def _ln_remainders(
    z: Array, c: Array, m2: Array, rho: Array, eps: float
) -> tuple[Array, Array, Array]:
    """Enclose R(D') - R(D0) (see :func:`_ln_remainder`) for D' = z' - z_hat in
    2 P E (any run) and D0 = z - z_hat in P E (the exact input), as
    {box * e + z_hat t : |e_i| <= 1, |t| <= beta}; returns (box, beta, v_lo),
    v_lo <= s(z')^2 for every run.

    With Delta = D' - D0 = z' - z in P E, gam' and gam0 of D' and D0:
    D' gam' - D0 gam0 = Delta gam' + D0 (gam' - gam0), in (dg2 + dgd) P E
    (E symmetric and convex), so |.|_i <= (dg2 + dgd) rho_i; gam' - gam0 =
    g(v(z')) - g(v(z)) with |v(z') - v(z)| = |2 z^T Delta + |Delta|^2| / n
    <= (2 c + 3 m2) / n (z^T Delta = z_hat^T Delta + D0^T Delta, |D0| |Delta| <= m2)
    and both >= v_lo, so |gam' - gam0| <= dgd = min(dg2 + dg1,
    g(v_lo) - g(v_lo + (2 c + 3 m2) / n)) (g convex and decreasing).  Along
    z_hat, t' - t0 lies in [-lo2 - hi1, hi2 + lo1].
    """
    n = z.shape[-1]
    dg2, lo2, hi2, v_lo = _ln_remainder(z, c, m2, eps, 2.0)
    dg1, lo1, hi1, _ = _ln_remainder(z, c, m2, eps, 1.0)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        dgd = 1 / np.sqrt(v_lo) - 1 / np.sqrt(v_lo + (2 * c + 3 * m2) / n)
        box = (dg2 + np.minimum(dg2 + dg1, dgd)) * rho
    box = np.where(np.isnan(box), np.inf, box)
    return box, np.maximum(lo2 + hi1, hi2 + lo1), v_lo


def _ln_sq_norm_bound(pg: Array) -> Array:
    """m2 >= max |P G e|_2^2 over |e_j| <= 1, per input and group (N, k, 1).

    The smallest of |rho|_2^2 (componentwise box), (sum_j |P G_j|_2)^2
    (triangle inequality) and the scaled spectral bound |P G e|^2 =
    |P G W^1/2 W^-1/2 e|^2 <= lambda_max(P G W G^T P) sum_j e_j^2 / w_j with
    w_j = 1 / |P G_j|_2 (a diagonal scaling, as in the SDP bound on the maximum
    of a quadratic form over the cube, Nesterov 1998; this power of the column
    norms was the best of |P G_j|^-p, p in [0, 2], on trained residual MLPs).
    The float64 Gram matrix errs by <= gamma_q
    |P G| |P G|^T (Higham 2002, eq. 3.13), of 2-norm <= gamma_q trace, and the
    symmetric eigensolver's eigenvalues are exact for a perturbation of 2-norm
    O(n u) ||A||_2 (Golub & Van Loan 2013, sec. 8.3.4; Weyl), so the computed
    lambda_max is widened by max(1e-9, 4 (q + n) u) trace >= both (q: the sources
    live for that input)."""
    rho = np.abs(pg).sum(axis=-1)
    cols = np.sqrt(np.square(pg).sum(axis=2))  # (N, k, q)
    m2 = np.minimum(np.square(rho).sum(axis=-1), np.square(cols.sum(axis=-1)))
    if pg.shape[-1] and pg.shape[2] > 1:
        with np.errstate(divide="ignore"):
            wt = np.where(cols > 0, 1 / np.sqrt(cols), 0.0)  # W^1/2
        gw = pg * wt[:, :, None, :]
        gram = gw @ gw.transpose(0, 1, 3, 2)  # (N, k, n, n)
        with np.errstate(invalid="ignore", over="ignore"):
            lam = np.linalg.eigvalsh(np.where(np.isfinite(gram), gram, 0.0))[..., -1]
            trace = np.square(wt * cols).sum(axis=-1)
            live = (cols != 0).sum(axis=-1)  # per input: bounds never depend on the batch
            margin = np.maximum(1e-9, 4 * (live + pg.shape[2]) * 2.0**-53)
            spec = cols.sum(axis=-1) * (np.maximum(lam, 0.0) + margin * trace)
        m2 = np.where(np.isfinite(gram).all(axis=(-1, -2)), np.minimum(m2, spec), m2)
    return m2[..., None]


def _ln_signed(z: Array, pg: Array, eps: float) -> tuple[Array, Array]:
    """J(z_hat) P G (N, k, n, q) for centred generators ``pg``, and the sums
    c = sum_j |z_hat^T P G_j| (N, k, 1)."""
    n = z.shape[-1]
    s = np.sqrt(np.square(z).sum(axis=-1, keepdims=True) / n + eps)
    dot = np.einsum("bgn,bgnq->bgq", z, pg)  # z^T P G_j
    jg = pg / s[..., None] - z[..., None] * dot[:, :, None, :] / (n * s[..., None] ** 3)
    return jg, np.abs(dot).sum(axis=-1)[..., None]


def centres(layer: LayerNorm | RMSNorm) -> bool:
    """Whether a norm subtracts the mean (P = I - 11^T/n) or not (RMS norm: P = I)."""
    return not isinstance(layer, RMSNorm)


def layernorm_rule(
    layer: LayerNorm | RMSNorm, enc: Enclosure, ctx: Context, index: int
) -> Enclosure:
    """Layer norm y = w u + b, u = f(z) = z / s(z), z = P x (P = I - 11^T/n
    centres), s(z) = sqrt(|z|^2/n + eps); RMS norm is the same map with P = I
    and b = 0 (every step below holds for any linear P: P G are the generators
    of z, z_hat = P x_hat).

    Any run's input x' and the exact x differ from the computed x_hat by P G eps
    (|eps| <= 1, the incoming generators G), so z' - z_hat lies in 2 P E and
    z - z_hat in P E.  With J = J(z_hat) = I/s - z_hat z_hat^T/(n s^3),

        f(z') - f(z) = J P G eps' + R(z' - z_hat) - R(z - z_hat),

    R(D) = f(z_hat + D) - f(z_hat) - J D: the generators go through J signed,
    and R over 2 P E (the 2r inflation that makes the bound hold for every
    run) and over P E is enclosed by :func:`_ln_remainder` (exact identity
    plus a Lagrange remainder; second order, radius^2 / variance) as a
    deterministic box plus one deterministic generator along w z_hat per group.
    The standard deviation of every run stays >= s_min = sqrt(v_lo) with v_lo
    from the signed projections z_hat^T P G_j (not from a 2-norm box around
    x_hat, which reaches the spread of x at sqrt(n) times smaller radii).
    Kernel allowance (stated, for an fp32 kernel): u within gamma_{2n+8}(u_acc)
    (|u| + 1 + mean|x| / s_min) of exact (mean and variance are sums of n
    terms), times (1 + rho_r) and plus alpha_r (|x| + mean|x|) for the
    measured error of the reciprocal square root; the affine part adds
    2 u_acc (|w u| + |b|).
    """
    a = ctx.arith
    enc = enc.materialize()
    x = enc.value
    y = layer.forward(x, a)
    n = int(np.prod(layer.normalized_shape))
    N, shape = x.shape[0], x.shape
    xg = x.reshape(N, -1, n)
    rg = enc.radius().reshape(xg.shape)
    w, _ = layer_norm_affine(layer, n)
    centre = centres(layer)
    z = xg - xg.mean(axis=-1, keepdims=True) if centre else xg
    q = enc.gens.shape[2]
    g = enc.gens.reshape(N, xg.shape[1], n, q)  # explicit: q may be 0 (exact inputs)
    pg = g - g.mean(axis=2, keepdims=True) if centre else g
    jg, c = _ln_signed(z, pg, layer.eps)
    m2 = _ln_sq_norm_bound(pg)
    rho = np.abs(pg).sum(axis=-1)  # |P (x' - x_hat)| <= 2 rho for every run
    box, beta, v_lo = _ln_remainders(z, c, m2, rho, layer.eps)
    remainder = np.abs(w) * box  # a box (fresh copies of G would double q)
    # the part along z_hat: one new generator per group, w z_hat beta
    k = xg.shape[1]
    zdir = np.zeros((N, k, n, k))
    zdir[:, np.arange(k), :, np.arange(k)] = (w * z * beta).transpose(1, 0, 2)
    gens = np.concatenate([jg * w[None, None, :, None], zdir], axis=-1).reshape(N, k * n, q + k)
    # |w (f(z') - f(z))| for any run: the signed part's radius plus the remainder
    prop = np.abs(gens).sum(axis=-1).reshape(xg.shape) + remainder
    local, params = layernorm_kernel(layer, ctx, y, xg, rg, z, rho, v_lo, prop)
    out = Enclosure(y, gens, enc.groups + [index] * k, enc.random + [False] * k)
    out = out.add_box(remainder.reshape(shape), index, random=False)
    return ctx.add_local(out, local.reshape(shape), params.reshape(shape), index)


def layer_norm_affine(layer: LayerNorm | RMSNorm, n: int) -> tuple[Array, Array]:
    """(w, b) as flat vectors of length n (ones and zeros where absent; RMS norm
    has no bias)."""
    w = np.ones(n) if layer.weight is None else layer.weight.reshape(-1)
    b = np.zeros(n) if layer.bias is None else layer.bias.reshape(-1)
    return w, b


def layernorm_kernel(
    layer: LayerNorm | RMSNorm, ctx: Context, y: Array, xg: Array, rg: Array, z: Array,
    rho: Array, v_lo: Array, prop: Array,
) -> tuple[Array, Array]:  # fmt: skip
    """(local, params) of a layer-norm kernel, per group (N, k, n): its evaluation,
    range and storage errors, and the rounding of w and b.  ``xg``, ``rg``: input
    and incoming radius; ``z`` the centred input (x for RMS norm); ``rho`` >=
    |P (x' - x_hat)| / 2; ``v_lo`` <= the variance (mean square) of every run;
    ``prop`` >= |w (f(z') - f(z))|.

    RMS norm (torch's CPU kernel: x and w converted to float32, then
    x * rsqrt(mean(x^2) + eps) * w rounded once to storage): the mean square
    passes through n roundings (a square, n - 1 additions of nonnegative terms:
    any order, Higham 2002, eq. 3.5), the division by n (two roundings if by a
    rounded 1/n), eps's own rounding to the accumulator and its addition:
    v_hat = v (1 + theta_{n+5}); then
    |(1 + theta)^-1/2 - 1| <= gamma for gamma <= 0.6, the measured rsqrt
    (rho_r, alpha_r) and the product x * rsqrt: |u_hat - u| <= ((1 +
    gamma_{n+6})(1 + rho_r) - 1) |u| + alpha_r |x| (1 + u_acc).  The product
    by w and its rounding are the affine term below, as for layer norm."""
    a = ctx.arith
    n = xg.shape[-1]
    w, b = layer_norm_affine(layer, n)
    w_hat, b_hat = a.store(w), a.store(b)
    s_min = np.sqrt(v_lo)  # lower bound on s(z') for every run
    with np.errstate(divide="ignore", invalid="ignore"):
        # |u_i| = |z_i| / s <= |z| / s <= sqrt(n) whatever the variance
        u_mag = np.minimum((np.abs(z) + 2 * rho) / s_min, math.sqrt(n))
    # 1 / sqrt(var + eps): the measured rsqrt, |e| <= rho_r |f| + alpha_r, on top
    rho_r, alpha_r = ctx.func_relative("rsqrt")
    xmean = (np.abs(xg) + 2 * rg).mean(axis=-1, keepdims=True)
    if centres(layer):
        kernel_u = ((1 + gamma(2 * n + 8, a.u_acc)) * (1 + rho_r) - 1) * (
            u_mag + 1 + xmean / s_min
        ) + alpha_r * (np.abs(xg) + 2 * rg + xmean)
    else:
        # n + 6: the mean may multiply by a rounded 1/n (one more rounding)
        g_v = gamma(n + 5, a.u_acc)  # v_hat = v (1 + theta_{n+5}); the inverse root needs <= 0.6
        g_u = gamma(n + 6, a.u_acc) if g_v <= 0.6 else math.inf
        kernel_u = ((1 + g_u) * (1 + rho_r) - 1) * u_mag + alpha_r * (1 + a.u_acc) * (
            np.abs(xg) + 2 * rg
        )
    under, overflow = _layernorm_range(ctx, xg, rg, z, rho, s_min, u_mag, w_hat, b_hat)
    params = np.abs(w_hat - w) * u_mag + np.abs(b_hat - b)  # parameter rounding
    local = (
        np.abs(w_hat) * kernel_u
        + 2 * a.u_acc * (np.abs(w_hat) * u_mag + np.abs(b_hat))
        + under
    )
    local = np.where(overflow, np.inf, local)
    yg = y.reshape(xg.shape)
    local = local + half_ulp(
        np.abs(yg) + half_ulp(np.abs(yg), a.storage) + 2 * (prop + local + params), a.storage
    )
    return local, params
