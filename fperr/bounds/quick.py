"""The cascade's stage 1: one forward pass that bounds both runs at once, per unit.

The backward engine bounds the low-precision run and the reference run one
after the other, each around its own computed values, with two GEMMs of
|W_hat| per layer and run (the magnitudes and the image of the radius) and a
few dozen elementwise passes.  Most inputs of a data set have a margin far
above either radius; for them a cheaper bound decides, and this module
carries both runs through one pass (after :mod:`.coarse`, stage 0, which keeps
one number per input where this module keeps one per unit, for the inputs that
one leaves undecided).

At every position it keeps the reference run's computed values ``c`` (the
centre), the low run's computed values ``v`` (its outputs are reported, and
its own stored sums give the exponents of its storage roundings), and two
bounds:

- ``total`` (per unit) T >= rho_low + rho_ref, where rho_low bounds the
  distance of every low-precision run from exact arithmetic and rho_ref that
  of every reference run (every summation order, as in :mod:`.rules`);
- ``sigma`` (one number per input) >= every unit's rho_ref: the reference
  run's error is about 2^-13 of the low run's (binary32 against binary16), so
  its spread over the units hardly matters.

Every low run then lies within rho_low + rho_ref <= T of ``c``, every
reference run within 2 rho_ref <= T + sigma, and so does the exact value: the
magnitudes |c| + T + sigma hold for the inputs of both runs, and one GEMM
with the low run's |W_hat| gives the accumulation terms of both (the
reference's weights differ from the low run's by their rounding, a factor
(1 + u_ref) / (1 - u_low) and the subnormal spacings), a second one the image
|W| T.  The local terms are those of :mod:`.rules` (accumulation, storage
roundings, parameter rounding: :func:`.rules.affine_local`,
:func:`.rules.parameter_rounding`), worst case: the bound is deterministic
and holds under either method.

Eval batch norm scales T by |s| and adds both runs' local terms
(:func:`.rules.batchnorm_local`).  A layer whose function is exact in every
arithmetic passes T on by its
Lipschitz bound over the range c +- (T + sigma): ReLU and ReLU6 keep T, or
give 0 where every run's input lies on a flat piece; max pooling gives the
window's largest T plus sigma (the two runs' largest errors may sit at
different units: max(a + b) <= max a + max b); shape-only layers move T with
the values.  Operators without such a rule (:meth:`.Operator.has_quick`)
leave the cascade to start from the backward engine's interval ranges.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..arith import Emulated
from ..formats import Format, gamma
from ..layers import BatchNorm
from ..model import Model, check_inputs
from ..operators import Operator
from . import exponent_range as xr
from .enclosure import zero_error
from .engine import BoundResult, RunBound
from .memory import keep_freed_heap, max_bytes
from .rules import Context, affine_local, batchnorm_local, parameter_rounding, weight_rounding
from .steps import exact_weight_image
from .weight_memo import memo, remembering

Array = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]
Sums = Callable[[Emulated, Array], tuple[Array, Array, Array]]
"""``sums(arith, x)`` -> (rounded weights, stored sum, stored output) of one run."""
Apply = Callable[[Array, Array], Array]
"""``apply(M, v)``: the layer's linear map with weights M and no bias, exact."""

BATCH_ELEMENTS = 1 << 17
"""Inputs go through in batches of about this many values per position: the
elementwise passes then run in the processor's cache (about 30% faster on
the digits MLP than the whole set at once); the bounds do not depend on it."""


@dataclass(frozen=True)
class Quick:
    """Both runs at one position: arrays (N, ...) of the position's shape, ``sigma`` and
    ``bad`` (N,)."""

    ref: Array  # the reference run's computed values: the centre
    low: Array  # the low run's computed values
    total: Array  # T >= rho_low + rho_ref
    sigma: Array  # >= rho_ref at every unit
    bad: Mask  # inputs some run of which may overflow or leave the finite numbers

    def moved(self, f: Callable[[Array], Array]) -> Quick:
        """Values and T moved by an exact map that only moves units (reshapes)."""
        return Quick(f(self.ref), f(self.low), f(self.total), self.sigma, self.bad)

    def reach(self) -> Array:
        """T + sigma: every run of either arithmetic, and the exact values, lie within
        it of ``ref``."""
        return self.total + columns(self.sigma, self.total)


def columns(s: Array, like: Array) -> Array:
    """(N,) per-input numbers as (N, 1, ..., 1), broadcasting against ``like``."""
    return s.reshape(s.shape[0], *([1] * (like.ndim - 1)))


def per_input_max(a: Array) -> Array:
    return np.asarray(a.reshape(a.shape[0], -1).max(axis=1, initial=0.0))


def absmax(a: Array) -> Array:
    """(N,) max |a| per input, from the largest and the smallest value (two reads, no
    array of |a| written); NaN where any value is NaN."""
    flat = a.reshape(a.shape[0], -1)
    return np.asarray(np.maximum(flat.max(axis=1, initial=0.0), -flat.min(axis=1, initial=0.0)))


def per_input_sum(a: Array) -> Array:
    return np.asarray(a.reshape(a.shape[0], -1).sum(axis=1))


def not_finite(*arrays: Array) -> Mask:
    """(N,): inputs with an inf or NaN in any of ``arrays`` (a row's sum is finite
    only if all its entries are; one that overflows float64 counts too)."""
    with np.errstate(over="ignore", invalid="ignore"):
        return np.asarray(np.logical_or.reduce([~np.isfinite(per_input_sum(a)) for a in arrays]))


def other_weights_image(img: Array, v_sum: Array, low: Format, ref: Format) -> Array:
    """A bound on |W_ref| v from ``img`` = |W_low| v (v >= 0), the weights W
    rounded to nearest in ``low`` and ``ref``: |W| <= (|W_low| + e_low) / (1 -
    u_low) and |W_ref| <= (1 + u_ref) |W| + e_ref, e the error at zero
    (:func:`zero_error`); ``v_sum`` >= every unit's sum of the v it reads."""
    scale = (1 + ref.u) / (1 - low.u)
    return scale * (img + zero_error(low) * v_sum) + zero_error(ref) * v_sum


def affine_quick(
    layer: Operator, q: Quick, lo: Context, rf: Context, sums: Sums, apply: Apply,
    weight: Array, bias: Array | None, n: int,
) -> Quick:  # fmt: skip
    """A dense or convolution layer (``bias`` broadcastable to the output, n the
    dot products' length): see the module docstring."""
    w_lo, s_lo, z_lo = sums(lo.arith, q.low)
    w_rf, s_rf, z_rf = sums(rf.arith, q.ref)
    ones = np.ones((1, *q.ref.shape[1:]))
    mag = np.abs(q.ref) + q.reach()  # every run's input, and the exact one
    bad = q.bad | xr.beyond_accumulator(layer, mag, lo.arith.storage, lo.arith.operand_format,
                                        lo.arith.accumulate)  # fmt: skip
    bad |= xr.beyond_accumulator(layer, mag, rf.arith.storage, rf.arith.operand_format,
                                 rf.arith.accumulate)  # fmt: skip
    # what the weights alone give, once per call (:mod:`.weight_memo`): a batch of a
    # few inputs (the cascade's later calls) otherwise spends its time on them
    wa = memo("abs", (w_lo,), None, lambda: np.abs(w_lo))
    mag_lo = apply(wa, mag)  # >= |W_lo| |x| for every run of either arithmetic
    t_lo = apply(wa, q.total)  # |W_lo| T >= |W_lo| rho_low
    fl, fr = lo.arith.operand_format, rf.arith.operand_format
    top_mag_rf = other_weights_image(per_input_max(mag_lo), per_input_sum(mag), fl, fr)
    shape = q.ref.shape[1:]
    t_rf1 = memo("ones image", (w_rf, layer), shape,  # sigma t_rf1 >= |W_ref| rho_ref
                 lambda: apply(np.abs(w_rf), ones))  # fmt: skip
    count = lambda: np.full(z_lo.shape, float(n))  # noqa: E731 - nonzero products <= n
    # the low run: its inputs within T of c (parameter_rounding's 2r), of v within 2T
    s, box = parameter_rounding(apply, q.ref, q.total / 2, w_lo, weight,
                                bias_error(lo.arith, bias), mag_lo, t_lo / 2, n,
                                fl.smallest_normal)  # fmt: skip
    own = affine_local(s_lo, z_lo, mag_lo, t_lo, _ZERO, lo, n, count, stored_abs(lo.arith, bias))
    own += np.abs(s) + box
    ref_own = reference_own(apply, s_rf, z_rf, w_rf, weight, bias, lambda: mag, q.sigma,
                            top_mag_rf, float(np.max(t_rf1)), rf, n)  # fmt: skip
    # |W| T from |W_lo| T, and |W| rho_ref <= sigma |W| 1
    image = exact_weight_image(t_lo, columns(per_input_sum(q.total), t_lo), lo.arith)
    w_row = memo("largest row", (weight, layer), shape, lambda: float(np.max(
        apply(np.abs(weight), ones), initial=0.0)) * (1 + gamma(n, 2.0**-53)))
    total = image + own + columns(ref_own, own)
    new_sigma = q.sigma * w_row + ref_own
    return Quick(z_rf, z_lo, total, new_sigma, bad | not_finite(z_lo, z_rf, total))


_ZERO = np.zeros(())


def reference_own(apply: Apply, s_rf: Array, z_rf: Array, w_rf: Array, weight: Array,
                  bias: Array | None, mag: Callable[[], Array], sigma: Array, top_mag: Array,
                  row_sum: float, rf: Context, n: int) -> Array:  # fmt: skip
    """(N,) >= every unit's local error of every reference run (inputs within 2
    ``sigma`` of ``c``, magnitudes within ``mag()``, asked only where the reference
    format holds some weight below its normal range): every term of affine_local
    grows with each argument, so its value at the per-input largest ones bounds
    every unit's.  ``top_mag`` >= every unit's |W_ref| ``mag``, ``row_sum`` >= every
    row sum of |W_ref|."""
    N = s_rf.shape[0]
    top_s = absmax(s_rf)
    top_z = top_s if z_rf is s_rf else absmax(z_rf)  # no bias: one rounding
    b_rf = None if bias is None else np.max(np.abs(rf.arith.store(bias)))
    out = affine_local(top_s, top_z, top_mag, sigma * row_sum, _ZERO, rf, n,
                       lambda: np.full(N, float(n)), b_rf)  # fmt: skip
    db_rf = bias_error(rf.arith, bias)
    same = memo("equal", (w_rf, weight), None, lambda: bool(np.array_equal(w_rf, weight)))
    if not (same and not np.any(db_rf)):  # weights not in the format
        out = out + _reference_parameters(apply, w_rf, weight, db_rf, mag, sigma, top_mag,
                                          row_sum, rf.arith.operand_format)  # fmt: skip
    return np.asarray(out)


def _reference_parameters(apply: Apply, w_rf: Array, weight: Array, db: Array | float,
                          mag: Callable[[], Array], sigma: Array, top_mag: Array, row_sum: float,
                          f: Format) -> Array:  # fmt: skip
    """(N,) >= every unit's |(W_ref - W) x_run + (b_ref - b)| for every reference run's
    input x_run: within 2 sigma of ``c``, so |x_run| <= ``mag`` + sigma, and with no
    GEMM: |W_ref - W| <= rho |W_ref| on the weights normal in the reference format
    (the rho of :func:`.rules.parameter_rounding`), so the term is at most rho
    (``top_mag`` + sigma ``row_sum``), ``top_mag`` >= every unit's |W_ref| ``mag`` and
    ``row_sum`` >= every row sum of |W_ref|.  Only weights below the normal range
    (rare) need a product of their own.  Worst case where the exact GEMM kept the
    signs, but about 2^-24 relative, against gamma_n(2^-24) |W| |x| of the
    accumulation beside it: a GEMM per layer for its cancellations bought nothing."""
    _, rho, sub = weight_rounding(w_rf, weight, f.smallest_normal)
    out = rho * (top_mag + sigma * row_sum) + float(np.max(np.abs(db), initial=0.0))
    if sub is not None:  # |dW| |x_run| over those entries: one map
        m = mag()
        out = out + per_input_max(apply(sub, m + columns(sigma, m)))
    return np.asarray(out)


def stored_abs(a: Emulated, bias: Array | None) -> Array | None:
    return None if bias is None else np.abs(a.store(bias))


def bias_error(a: Emulated, bias: Array | None) -> Array | float:
    return 0.0 if bias is None else a.store(bias) - bias


def scale_quick(layer: BatchNorm, q: Quick, lo: Context, rf: Context) -> Quick:
    """Eval batch norm, y = s x + t per channel: T passes as |s| T, plus each run's
    local terms (:func:`.rules.batchnorm_local`: any low run within 2T of its values,
    any reference run within 2 sigma of ``c``), the reference's per input at most."""
    z_lo, s, local_lo, params_lo = batchnorm_local(layer, q.low, q.total, lo)
    sigma = np.broadcast_to(columns(q.sigma, q.ref), q.ref.shape)
    z_rf, _, local_rf, params_rf = batchnorm_local(layer, q.ref, sigma, rf)
    ref_own = per_input_max(local_rf + params_rf)
    total = np.abs(s) * q.total + local_lo + params_lo + columns(ref_own, q.total)
    new_sigma = q.sigma * float(np.max(np.abs(s), initial=0.0)) + ref_own
    return Quick(z_rf, z_lo, total, new_sigma, q.bad | not_finite(z_lo, z_rf, total))


def clamp_quick(q: Quick, kinks: Sequence[float], slopes: Sequence[float],
                f: Callable[[Array], Array]) -> Quick:  # fmt: skip
    """An activation with slopes 0 and 1 only, exact in every format (ReLU, ReLU6;
    ``kinks`` and ``slopes`` as :func:`.rules.piecewise_slopes` takes them): its
    Lipschitz constant 1 keeps T; where every run's and the exact input lie on one
    flat piece the outputs agree exactly, and T is 0 there."""
    far = q.reach()
    lo, hi = q.ref - far, q.ref + far
    edges = [-np.inf, *kinks, np.inf]
    flat = np.zeros(q.ref.shape, dtype=bool)
    with np.errstate(invalid="ignore"):  # NaN: not flat, T kept (and the input is bad)
        for i, s in enumerate(slopes):
            if s == 0:
                flat |= (lo >= edges[i]) & (hi <= edges[i + 1])
    return Quick(f(q.ref), f(q.low), np.where(flat, 0.0, q.total), q.sigma, q.bad)


def max_quick(q: Quick, pool: Callable[[Array], Array]) -> Quick:
    """Max pooling (exact): |max a - max b| <= max |a - b| in each window, so
    rho_low' <= the window's max of T and rho_ref' <= sigma."""
    pooled = pool(q.total)
    return Quick(pool(q.ref), pool(q.low), pooled + columns(q.sigma, pooled), q.sigma, q.bad)


def quick_contexts(
    model: Model, low: Emulated, reference: Emulated
) -> tuple[Context, Context] | None:
    """Worst-case contexts of both runs where every layer has a quick rule and
    the model is a chain; None otherwise (the cascade then starts from the
    backward engine).  Operands narrower than storage (TF32) are left to the
    engines, whose rules for chopped operands this pass does not repeat."""
    if model.is_graph or low.operand_narrower or reference.operand_narrower:
        return None
    if not all(isinstance(layer, Operator) and layer.has_quick() for layer in model.layers):
        return None
    return Context(low), Context(reference)


@remembering()
def quick_bound(model: Model, X: npt.ArrayLike, low: Emulated, reference: Emulated,
                method: str = "deterministic") -> BoundResult | None:  # fmt: skip
    """Both runs' bounds in one forward pass (see the module docstring); None
    where the model has a layer without a quick rule (:func:`quick_contexts`).
    The reference radius is sigma at every output; the low one T (>= rho_low);
    their sum bounds |y_low - y_ref| as :func:`.engine.bound`'s does."""
    ctxs = quick_contexts(model, low, reference)
    if ctxs is None:
        return None
    keep_freed_heap()
    x = check_inputs(X, model.input_shape)
    N = x.shape[0]
    widest = max(int(np.prod(s)) for s in model.shapes())
    bs = int(np.clip(BATCH_ELEMENTS // widest, 1, max(1, max_bytes() // (64 * widest))))
    ops = [layer for layer in model.layers if isinstance(layer, Operator)]  # every one is
    parts = [_quick_batch(ops, x[i : i + bs], *ctxs) for i in range(0, N, bs)]
    q = Quick(*(np.concatenate([getattr(p, f) for p in parts])
                for f in ("ref", "low", "total", "sigma", "bad")))  # fmt: skip
    K = int(np.prod(model.output_shape))
    inf = np.inf
    total = np.where(q.bad[:, None], inf, q.total.reshape(N, K))
    sigma = np.where(q.bad, inf, q.sigma)[:, None] * np.ones((1, K))
    per = np.zeros((N, len(model.layers) + 1, K))
    names = ["input"] + [f"{model.node_name(i)}:{layer.type}"
                         for i, layer in enumerate(model.layers)]  # fmt: skip
    return BoundResult(RunBound(q.low.reshape(N, K), total, per),
                       RunBound(q.ref.reshape(N, K), sigma, per.copy()),
                       low, reference, method, names)  # fmt: skip


def _quick_batch(ops: list[Operator], x: Array, lo: Context, rf: Context) -> Quick:
    c, v = rf.arith.store(x), lo.arith.store(x)
    e_ref = np.abs(c - x)
    q = Quick(c, v, np.abs(v - x) + e_ref, per_input_max(e_ref), not_finite(c, v))
    with np.errstate(invalid="ignore", over="ignore"):  # such inputs are bad: radius inf
        for op in ops:
            q = op.quick(q, lo, rf)
    return q
