"""The cascade's stage 0: both runs bounded with one number per input and position.

The quick stage (:mod:`.quick`) carries a bound per unit; it costs two GEMMs of
magnitudes per layer beside the two runs and a few dozen elementwise passes over
every unit, about 10 forward passes' time on the digits models.  But most
inputs of a data set have a margin many times any bound's: on the digits
examples 99% of them keep more than 12 (MLP) and 5.8 (CNN) times the quick
stage's margin.  For them a bound that keeps one number per input decides, and
the runs themselves are most of its cost.

At every position it keeps, as :class:`.quick.Quick` does, the reference run's
computed values ``c`` (the centre) and the low run's ``v``, and per input
two numbers:

- ``eps`` >= rho_low at every unit: how far every low-precision run may lie
  from exact arithmetic (every summation order, as in :mod:`.rules`);
- ``sigma`` >= rho_ref at every unit, the same for the reference runs.

Every run and the exact values then lie within ``eps + 2 sigma`` of ``c``.

A dense or convolution layer maps them by the max norm: the error a unit
receives is at most the largest row sum of |W| (a row: one output's weights,
its window for a convolution) times ``eps``, and the magnitudes its local terms
need, |W_hat| |x| at every unit, are at most the smaller of that row sum times
max |x| and, by the Cauchy-Schwarz inequality, the largest row's Euclidean
norm times ||x||_2 (the whole input's norm bounds each window's).  The local
terms are those of :mod:`.rules` (:func:`.rules.affine_local`, every term of
which grows with each argument, so its value at the per-input largest
arguments bounds every unit's), and the parameter rounding's signed effect
(W_hat - W) c is computed exactly as the quick stage does (one GEMM; a bound
by row norms alone was 4 to 10 times wider on the digits MLP's layers).  So a layer costs the two
runs, that GEMM and a few reductions.

Eval batch norm scales by the largest |s|.  ReLU, ReLU6, max pooling and
shape-only layers are exact in every format and 1-Lipschitz in the max norm:
``eps`` and ``sigma`` pass unchanged.  Any other layer leaves the cascade to
start from the quick stage (:func:`coarse_supported`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..arith import Emulated
from ..formats import gamma
from ..layers import Activation, BatchNorm, Conv2d, Dense, Pool2d
from ..model import Model, check_inputs
from ..operators import Operator
from ..operators.flatten import MovesValues
from . import exponent_range as xr
from .engine import BoundResult, RunBound
from .memory import keep_freed_heap
from .quick import (
    Apply,
    Sums,
    absmax,
    bias_error,
    not_finite,
    reference_own,
    stored_abs,
)
from .rules import (
    Context,
    affine_local,
    batchnorm_local,
    conv_sums,
    conv_with,
    dense_apply,
    dense_sums,
    weight_rounding,
)
from .weight_memo import memo, remembering

Array = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]

BATCH_ELEMENTS = 1 << 18
"""Inputs go through in batches of about this many values per position (fewer
passes than the quick stage's per value, so larger batches: on the digits
models 2^18 was fastest, 2^17 10% slower); the bounds do not depend on it."""

SAFE = 1 + 1e-12
"""Norms and products evaluated in float64 (a few dozen roundings of nonnegative
numbers, each at most 2^-53 relative) are raised by this factor, so that a
computed magnitude never falls below the true one (nor into a lower binade,
where :func:`.enclosure.half_ulp` would halve)."""


@dataclass(frozen=True)
class Coarse:
    """Both runs at one position: values (N, ...) and per-input bounds (N,)."""

    ref: Array  # the reference run's computed values: the centre
    low: Array  # the low run's computed values
    eps: Array  # >= rho_low at every unit
    sigma: Array  # >= rho_ref at every unit
    bad: Mask  # inputs some run of which may overflow or leave the finite numbers

    def reach(self) -> Array:
        """Every run of either arithmetic, and the exact values, lie within this of ``ref``."""
        return self.eps + 2 * self.sigma


def per_input_norm(a: Array) -> Array:
    """(N,) Euclidean norms of each input's values, never below the true ones."""
    flat = a.reshape(a.shape[0], -1)
    return np.sqrt(np.einsum("ij,ij->i", flat, flat)) * SAFE


@dataclass(frozen=True)
class RowNorms:
    """Of a weight array (outputs first): the largest row sum of |W| and the largest
    row's Euclidean norm, a row being one output's weights."""

    row_sum: float
    row_norm: float


def row_norms(w: Array) -> RowNorms:
    """:class:`RowNorms` of ``w``, raised by :data:`SAFE`; once per call and weights."""

    def compute() -> RowNorms:
        flat = np.abs(w.reshape(w.shape[0], -1))
        sums = flat.sum(axis=1).max(initial=0.0) * SAFE
        norms = math.sqrt(float(np.einsum("ij,ij->i", flat, flat).max(initial=0.0))) * SAFE
        return RowNorms(float(sums), norms)

    return memo("row norms", (w,), None, compute)


def magnitude_image(g: RowNorms, top: Array, norm: Array, reach: Array, n: int) -> Array:
    """(N,) >= every unit's |W| (|c| + reach) with ``top`` >= max |c| and ``norm`` >=
    ||c||_2: the max-norm bound or Cauchy-Schwarz over the n terms of a row."""
    by_max = g.row_sum * (top + reach)
    by_norm = g.row_norm * (norm + math.sqrt(n) * reach)
    return np.minimum(by_max, by_norm) * SAFE


def affine_coarse(
    layer: Dense | Conv2d, q: Coarse, lo: Context, rf: Context, sums: Sums, apply: Apply,
    weight: Array, bias: Array | None, n: int,
) -> Coarse:  # fmt: skip
    """A dense or convolution layer (``bias`` broadcastable to the output, n the dot
    products' length): see the module docstring."""
    w_lo, s_lo, z_lo = sums(lo.arith, q.low)
    w_rf, s_rf, z_rf = sums(rf.arith, q.ref)
    N = q.ref.shape[0]
    reach = q.reach()
    top, norm = absmax(q.ref), per_input_norm(q.ref)
    mag_top = (top + reach)[:, None]  # >= |x| of every run and the exact input
    bad = q.bad
    for c in (lo, rf):
        a = c.arith
        bad = bad | xr.beyond_accumulator(layer, mag_top, a.storage, a.operand_format,
                                          a.accumulate)  # fmt: skip
    g_lo, g_rf, g = row_norms(w_lo), row_norms(w_rf), row_norms(weight)
    mag_lo = magnitude_image(g_lo, top, norm, reach, n)
    count = lambda: np.full(N, float(n))  # noqa: E731 - nonzero products <= n
    # the low run: any of its inputs within 2 eps of v (its own sums' drift) and within
    # eps + sigma of c (the parameters' rounding acts on those)
    top_s = absmax(s_lo)
    top_z = top_s if z_lo is s_lo else absmax(z_lo)
    own = affine_local(top_s, top_z, mag_lo, g_lo.row_sum * q.eps * SAFE, _ZERO, lo, n, count,
                       _top(stored_abs(lo.arith, bias)))  # fmt: skip
    own = own + _parameters(apply, q, w_lo, weight, bias_error(lo.arith, bias), mag_lo,
                            g_lo, lo.arith.operand_format.smallest_normal, n)  # fmt: skip
    # the reference runs, as the quick stage bounds them (its maxima per input)
    top_mag_rf = magnitude_image(g_rf, top, norm, reach, n)
    ref_own = reference_own(apply, s_rf, z_rf, w_rf, weight, bias, lambda: np.abs(q.ref)
                            + (reach * SAFE).reshape(N, *([1] * (q.ref.ndim - 1))),
                            q.sigma, top_mag_rf, g_rf.row_sum, rf, n)  # fmt: skip
    eps = (g.row_sum * q.eps + own) * SAFE
    sigma = (g.row_sum * q.sigma + ref_own) * SAFE
    # an inf or NaN among the outputs makes its run's largest |z| (or |s|), and so its
    # bound, inf or NaN: no pass of its own to find it
    return Coarse(z_rf, z_lo, eps, sigma, bad | ~np.isfinite(eps) | ~np.isfinite(sigma))


_ZERO = np.zeros(())


def _top(a: Array | None) -> Array | None:
    return None if a is None else np.asarray(np.max(a, initial=0.0))


def _parameters(apply: Apply, q: Coarse, w_lo: Array, weight: Array, db: Array | float,
                mag_lo: Array, g_lo: RowNorms, tiny: float, n: int) -> Array:  # fmt: skip
    """(N,) >= every unit's |(W_hat - W) x_run + (b_hat - b)| for every low run's
    input x_run, within eps + sigma of ``c``: the signed (W_hat - W) c exactly (one
    GEMM, evaluated in float64 within gamma_{n+2}(2^-53) |dW| |c|) and the rest by
    the rounding's largest ratio rho <= |dW| / |W_hat| (as
    :func:`.rules.parameter_rounding`, by the max norm)."""
    dw, rho, sub = weight_rounding(w_lo, weight, tiny)
    top_db = float(np.max(np.abs(db), initial=0.0))
    if dw is None:  # weights already in the format
        return np.full(q.ref.shape[0], top_db)
    s = absmax(apply(dw, q.ref) + db)
    g64 = gamma(n + 2, 2.0**-53)
    far = q.eps + q.sigma
    out = s + rho * g_lo.row_sum * far + g64 * (rho * mag_lo + top_db)
    if sub is not None:  # entries with |W_hat| below the normal range: their own row sums
        out = out + row_norms(sub).row_sum * (far + g64 * (absmax(q.ref) + q.reach()))
    return np.asarray(out * SAFE)


def scale_coarse(layer: BatchNorm, q: Coarse, lo: Context, rf: Context) -> Coarse:
    """Eval batch norm, y = s x + t per channel (as :func:`.quick.scale_quick`): the
    largest |s| scales both bounds, and each run's local terms add their largest."""
    col = lambda s: np.broadcast_to(s.reshape(s.shape[0], *([1] * (q.ref.ndim - 1))),  # noqa: E731
                                    q.ref.shape)  # fmt: skip
    z_lo, s, local_lo, params_lo = batchnorm_local(layer, q.low, col(q.eps), lo)
    z_rf, _, local_rf, params_rf = batchnorm_local(layer, q.ref, col(q.sigma), rf)
    top_s = float(np.max(np.abs(s), initial=0.0))
    eps = (top_s * q.eps + _flat_max(local_lo + params_lo)) * SAFE
    sigma = (top_s * q.sigma + _flat_max(local_rf + params_rf)) * SAFE
    return Coarse(z_rf, z_lo, eps, sigma, q.bad | not_finite(z_lo, z_rf) | ~np.isfinite(eps))


def _flat_max(a: Array) -> Array:
    return np.asarray(a.reshape(a.shape[0], -1).max(axis=1, initial=0.0))


Rule = Callable[[Coarse, Context, Context], Coarse]


def _dense(layer: Dense) -> Rule:
    def rule(q: Coarse, lo: Context, rf: Context) -> Coarse:
        return affine_coarse(layer, q, lo, rf, lambda a, x: dense_sums(layer, a, x),
                             dense_apply, layer.weight, layer.bias, int(layer.weight.shape[1]))

    return rule


def _conv(layer: Conv2d) -> Rule:
    bias = None if layer.bias is None else layer.bias.reshape(1, -1, 1, 1)

    def rule(q: Coarse, lo: Context, rf: Context) -> Coarse:
        return affine_coarse(layer, q, lo, rf, lambda a, x: conv_sums(layer, a, x),
                             lambda m, v: conv_with(layer, m, v), layer.weight, bias,
                             int(np.prod(layer.weight.shape[1:])))  # fmt: skip

    return rule


def _exact(layer: Operator) -> Rule:
    """ReLU, ReLU6, max pooling, shape-only layers: exact in every format and
    1-Lipschitz in the max norm, so both bounds pass unchanged."""

    def rule(q: Coarse, lo: Context, rf: Context) -> Coarse:
        move = lambda x: layer.forward(x, lo.arith)  # noqa: E731
        return Coarse(move(q.ref), move(q.low), q.eps, q.sigma, q.bad)

    return rule


def coarse_rule(layer: object) -> Rule | None:
    """The rule of one layer, None where this stage has none."""
    if isinstance(layer, Dense):
        return _dense(layer)
    if isinstance(layer, Conv2d):
        return _conv(layer)
    if isinstance(layer, BatchNorm):
        return lambda q, lo, rf: scale_coarse(layer, q, lo, rf)
    if (isinstance(layer, Activation) and layer.type in ("relu", "relu6")) or (
            isinstance(layer, Pool2d) and layer.kind == "max") or isinstance(layer, MovesValues):
        return _exact(layer)
    return None


def coarse_supported(model: Model, low: Emulated, reference: Emulated) -> bool:
    """Whether this stage applies: a chain whose every layer has a rule, operands held
    in storage (TF32's chopped operands are left to the engines)."""
    if model.is_graph or low.operand_narrower or reference.operand_narrower:
        return False
    return all(coarse_rule(layer) is not None for layer in model.layers)


@remembering()
def coarse_bound(model: Model, X: npt.ArrayLike, low: Emulated, reference: Emulated,
                 method: str = "deterministic") -> BoundResult | None:  # fmt: skip
    """Both runs' bounds with one number per input and position (module docstring);
    None where :func:`coarse_supported` says no.  Deterministic: it holds under
    either method.  The low radius is ``eps`` at every output, the reference one
    ``sigma``; their sum bounds |y_low - y_ref| as :func:`.engine.bound`'s does."""
    if not coarse_supported(model, low, reference):
        return None
    keep_freed_heap()
    x = check_inputs(X, model.input_shape)
    N = x.shape[0]
    rules = [r for r in map(coarse_rule, model.layers) if r is not None]  # all (supported)
    lo, rf = Context(low), Context(reference)
    widest = max(int(np.prod(s)) for s in model.shapes())
    bs = max(1, BATCH_ELEMENTS // widest)
    parts = []
    for i in range(0, N, bs):
        xb = x[i : i + bs]
        c, v = rf.arith.store(xb), lo.arith.store(xb)
        e_lo, e_rf = absmax(v - xb), absmax(c - xb)
        q = Coarse(c, v, e_lo, e_rf, not_finite(c, v))
        with np.errstate(invalid="ignore", over="ignore"):  # such inputs are bad: radius inf
            for rule in rules:
                q = rule(q, lo, rf)
        parts.append(q)
    K = int(np.prod(model.output_shape))
    y_rf = np.concatenate([p.ref.reshape(p.ref.shape[0], K) for p in parts])
    y_lo = np.concatenate([p.low.reshape(p.low.shape[0], K) for p in parts])
    bad = np.concatenate([p.bad for p in parts])
    ones = np.ones((1, K))
    eps = np.where(bad, np.inf, np.concatenate([p.eps for p in parts]))[:, None] * ones
    sigma = np.where(bad, np.inf, np.concatenate([p.sigma for p in parts]))[:, None] * ones
    per = np.zeros((N, len(model.layers) + 1, K))
    names = ["input"] + [f"{model.node_name(i)}:{layer.type}"
                         for i, layer in enumerate(model.layers)]  # fmt: skip
    return BoundResult(RunBound(y_lo, eps, per), RunBound(y_rf, sigma, per.copy()),
                       low, reference, method, names)  # fmt: skip
