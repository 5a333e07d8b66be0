"""The bound engine: enclose a run of a model layer by layer, then combine runs.

``bound_run`` carries an :class:`~fperr.bounds.enclosure.Enclosure` through the
model with one rule per layer (:mod:`fperr.bounds.rules`) and returns the
radius per output; ``bound`` combines the low-precision run and the reference
run into B = B_low + B_ref.
"""


from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..arith import Emulated
from ..errors import FperrInputError
from ..formats import Format
from ..layers import Conv2d, Dense, Residual
from ..model import Model, check_inputs
from ..rounding import round as fround
from . import exponent_range as xr
from .enclosure import Enclosure, half_ulp
from .memory import check_memory, estimate_bytes, max_bytes
from .rules import RULES, Context, apply_rule

__all__ = ["RULES", "RunBound", "BoundResult", "bound", "bound_run", "lambda_for",
           "PROBABILISTIC_NOTE"]  # fmt: skip

PROBABILISTIC_NOTE = (
    "probabilistic bounds are a model, not a certificate: they assume independent "
    "zero-mean rounding errors, which round-to-nearest does not make (structured data "
    "can exceed them); rigorous only under stochastic rounding (Connolly, Higham & "
    "Mary 2021); the failure probability is stated under that model"
)

Array = npt.NDArray[np.float64]

# float64 evaluation of the generators themselves is inexact; widen by this
# relative margin (far above q * 2**-53 for any q we build).
_EVAL_MARGIN = 1e-10


@dataclass(frozen=True)
class RunBound:
    """One run enclosed against exact arithmetic."""

    output: Array  # (N, K) computed outputs of the run
    radius: Array  # (N, K) bound on |output - exact|
    per_layer: Array  # (N, L + 1, K): contribution of the input (0) and each layer (1..L)
    failure_probability: float = 0.0


def lambda_for(confidence: float, events: int) -> float:
    """Smallest lambda with events * 2 exp(-lambda^2 / 2) <= 1 - confidence."""
    if not 0 < confidence < 1:
        raise FperrInputError(f"confidence must be in (0, 1), got {confidence}")
    # nudged up so that float rounding never states more than 1 - confidence
    return math.sqrt(2 * math.log(2 * events / (1 - confidence))) * (1 + 1e-12)


def _count_products(layers: Sequence[Any], shape: tuple[int, ...]) -> int:
    """Terms of all dot products (dense, conv2d; residual branches included).

    Higham & Mary (2019, Theorem 3.1): a dot product of length n fails with
    probability at most n times that of one factor product (a union bound
    over its n terms), so each term is one event of the failure budget.
    """
    total = 0
    for layer in layers:
        out = layer.out_shape(shape)
        if isinstance(layer, Dense):
            total += math.prod(out) * int(layer.weight.shape[1])
        elif isinstance(layer, Conv2d):
            total += math.prod(out) * math.prod(layer.weight.shape[1:])
        elif isinstance(layer, Residual):
            total += _count_products(layer.layers, shape)
        shape = out
    return total


def bound_run(
    model: Model,
    X: npt.ArrayLike,
    arith: Emulated,
    *,
    method: str = "deterministic",
    confidence: float = 0.999,
    batch_size: int | None = None,
    keep: Mapping[int, Emulated] | None = None,
    progress: Callable[[int], None] | None = None,
    layer_ariths: Mapping[int, Emulated] | None = None,
) -> RunBound:
    """Enclose one run of ``model`` in ``arith`` against exact arithmetic.

    ``layer_ariths`` is the deprecated name of ``keep`` (removed in 0.3).

    ``progress`` (optional) is called with the number of inputs of each batch
    once that batch is bounded (e.g. ``tqdm.update``).  With ``method=
    "probabilistic"`` the run fails with probability at most ``1 - confidence``
    per input.

    ``keep`` overrides the arithmetic of some layers (by index), e.g.
    to keep them in binary32; values are converted between storage formats
    where consecutive layers differ (exactly when the new format contains the
    old one, else with one more rounding).
    """
    if layer_ariths is not None:
        warnings.warn("bound_run(layer_ariths=...) is deprecated; use keep=...",
                      DeprecationWarning, stacklevel=2)  # fmt: skip
        keep = layer_ariths if keep is None else keep
    if method not in ("deterministic", "probabilistic"):
        raise FperrInputError(f"unknown method {method!r}; use deterministic or probabilistic")
    x = check_inputs(X, model.input_shape)
    # Half the failure budget for the accumulation events inside the network
    # (one per term of every dot product), half for the K outputs' quadrature
    # combination: a union bound over both.
    inner = max(1, _count_products(model.layers, tuple(model.input_shape)))
    outputs = int(np.prod(model.output_shape))
    half = 1 - (1 - confidence) / 2
    lam = lambda_for(half, inner) if method == "probabilistic" else 0.0
    lam_out = lambda_for(half, outputs) if method == "probabilistic" else 0.0
    contexts: dict[Emulated, Context] = {}
    ctxs = []
    for i in range(len(model.layers)):
        a = (keep or {}).get(i, arith)
        ctxs.append(contexts.setdefault(a, Context(a, method, lam)))
    input_ctx = ctxs[0] if ctxs else Context(arith, method, lam)
    widest = max(int(np.prod(s)) for s in model.shapes())
    # Generators grow to ~ (units of all layers) columns; keep a batch near 200 MB.
    total_units = sum(int(np.prod(s)) for s in model.shapes())
    bs = batch_size or max(1, int(5e7 // max(1, widest * total_units)))
    # model.shapes() omits residual branches (wider than the stream): smaller
    # chunks rather than a memory error (bounds do not depend on the batch)
    limit = max_bytes()
    while batch_size is None and bs > 1 and estimate_bytes(model, min(bs, x.shape[0])) > limit:
        bs = max(1, bs // 2)
    check_memory(model, min(bs, x.shape[0]))  # a clear error rather than a MemoryError
    outs, radii, layers = [], [], []
    for i in range(0, x.shape[0], bs):
        o, r, pl = _bound_batch(model, x[i : i + bs], input_ctx, ctxs, method, lam_out)
        outs.append(o)
        radii.append(r)
        layers.append(pl)
        if progress is not None:
            progress(o.shape[0])
    fail = 0.0
    if method == "probabilistic":
        fail = min(
            1.0, 2 * inner * math.exp(-(lam**2) / 2) + 2 * outputs * math.exp(-(lam_out**2) / 2)
        )
    return RunBound(np.concatenate(outs), np.concatenate(radii), np.concatenate(layers), fail)


def _convert(enc: Enclosure, old: Format, new: Format, index: int) -> Enclosure:
    """Values move to another storage format between layers."""
    if new.contains(old):
        return enc  # exact
    y = fround(enc.value, new)
    mag = np.abs(enc.value) + 2 * enc.radius()
    return enc.with_value(y).add_box(half_ulp(mag, new), index, random=True)


def _bound_batch(
    model: Model, x: Array, input_ctx: Context, ctxs: list[Context], method: str, lam: float
) -> tuple[Array, Array, Array]:
    a = input_ctx.arith
    xs = a.store(x)
    enc = Enclosure(xs, np.zeros((x.shape[0], int(np.prod(x.shape[1:])), 0)))
    # input rounding: a function of the data, worst case in every method
    enc = enc.add_box(np.abs(xs - x), 0, random=False)
    storage = a.storage
    # inputs whose run may overflow (an inf or NaN anywhere): infinite bound
    overflow = enc.nonfinite_inputs()
    with np.errstate(invalid="ignore", over="ignore"):
        for i, (layer, ctx) in enumerate(zip(model.layers, ctxs, strict=True), start=1):
            if ctx.arith.storage != storage:
                enc = _convert(enc, storage, ctx.arith.storage, i)
                storage = ctx.arith.storage
            # operands beyond a narrower accumulator's range: infinite bound
            a = ctx.arith
            mag = np.abs(enc.value) + 2 * enc.radius()
            overflow |= xr.beyond_accumulator(layer, mag, a.storage, a.operand_format,
                                              a.accumulate)  # fmt: skip
            enc = apply_rule(layer, enc, ctx, i).prune()
            overflow |= enc.nonfinite_inputs()
        n_groups = len(model.layers) + 1
        if method == "probabilistic":
            enc = enc.materialize()  # every generator on its own
            g = np.abs(enc.gens)  # (N, K, q)
            groups = np.asarray(enc.groups, dtype=np.int64)
            rnd = np.asarray(enc.random, dtype=bool)
            radius, per = _probabilistic(g, rnd, groups, n_groups, lam)
        else:
            # worst case: factored boxes add their radius without being expanded
            g = np.abs(enc.gens)  # (N, K, q): K outputs, small
            radius = g.sum(axis=2)
            per = _per_layer(g, np.asarray(enc.groups, dtype=np.int64), n_groups)
            for b in enc.boxes:
                c = b.contribution().reshape(radius.shape)
                radius = radius + c
                per[:, b.group, :] += c
        radius = radius * (1 + _EVAL_MARGIN)
        bad = np.isnan(radius) | overflow[:, None]
        radius = np.where(bad, np.inf, radius)
    out = enc.value.reshape(x.shape[0], -1)
    return out, radius.reshape(out.shape), per


def _probabilistic(
    g: Array, rnd: npt.NDArray[np.bool_], groups: npt.NDArray[np.int64], n_groups: int, lam: float
) -> tuple[Array, Array]:
    """Combine generators: deterministic ones (and the largest random ones) in
    absolute value, the remaining random ones in quadrature.

    For independent zero-mean terms bounded by c_j, Hoeffding gives
    |sum| <= lam sqrt(sum c_j^2) w.p. >= 1 - 2 exp(-lam^2 / 2); any subset may
    instead be bounded surely by sum c_j.  Per output we take the best split:
    the t largest random terms surely, the rest in quadrature (t = 0 .. q),
    which is never worse than either alone.
    """
    det = np.where(rnd, 0.0, g)
    c = -np.sort(-np.where(rnd, g, 0.0), axis=2)  # random bounds, descending
    sure = np.concatenate([np.zeros(c.shape[:2] + (1,)), np.cumsum(c, axis=2)], axis=2)
    sq = np.square(c)
    tail = np.concatenate([np.cumsum(sq[:, :, ::-1], axis=2)[:, :, ::-1],
                           np.zeros(c.shape[:2] + (1,))], axis=2)  # fmt: skip
    cand = sure + lam * np.sqrt(tail)  # t = 0 .. q
    best = cand.min(axis=2)
    radius = det.sum(axis=2) + best
    # attribute to layers: deterministic parts exactly, the random total in
    # proportion to each layer's share of the random bounds
    per = _per_layer(det, groups, n_groups)
    share = _per_layer(np.where(rnd, g, 0.0), groups, n_groups)
    tot = share.sum(axis=1, keepdims=True)
    per = per + np.where(tot > 0, share / np.where(tot > 0, tot, 1), 0) * best[:, None, :]
    return radius, per


def _per_layer(g: Array, groups: npt.NDArray[np.int64], n_groups: int) -> Array:
    N, K, _ = g.shape
    per = np.zeros((N, n_groups, K))
    for j in range(n_groups):
        cols = groups == j
        if cols.any():
            per[:, j, :] = g[:, :, cols].sum(axis=2)
    return per


@dataclass(frozen=True)
class BoundResult:
    """Componentwise bound on |y_low - y_ref| for a batch of inputs."""

    low: RunBound
    reference: RunBound
    low_arith: Emulated
    reference_arith: Emulated
    method: str
    layer_names: list[str] = field(default_factory=list)

    @property
    def bound(self) -> Array:
        """(N, K): B >= |y_low - y_ref| for every summation order."""
        return self.low.radius + self.reference.radius

    @property
    def per_layer(self) -> Array:
        """(N, L + 1, K): how much of B each layer (0 = input rounding) contributes."""
        return self.low.per_layer + self.reference.per_layer

    @property
    def failure_probability(self) -> float:
        return min(1.0, self.low.failure_probability + self.reference.failure_probability)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "low": self.low_arith.to_dict(),
            "reference": self.reference_arith.to_dict(),
            "bound": self.bound.tolist(),
            "failure_probability": self.failure_probability,
            "layers": self.layer_names,
            **({"note": PROBABILISTIC_NOTE} if self.method == "probabilistic" else {}),
        }


def bound(
    model: Model,
    X: npt.ArrayLike,
    low: Emulated | None = None,
    reference: Emulated | None = None,
    *,
    method: str = "deterministic",
    confidence: float = 0.999,
    keep: Mapping[int, Emulated] | None = None,
    progress: Callable[[int], None] | None = None,
) -> BoundResult:
    """Bound |y_low - y_ref| per input and output; see the module docstring.

    ``keep`` maps layer indices to the arithmetic they run in within the low
    run (mixed precision, e.g. some layers kept in binary32).  With
    ``method="probabilistic"``, ``1 - confidence`` is the total failure
    probability per input: B = R_low + R_ref fails if either radius does, so
    each run gets half the budget (a union bound).  ``progress`` is called
    with the inputs of each bounded batch of either run (2 N calls' worth).
    """
    low = low or Emulated.from_names("binary16", "binary32")
    reference = reference or Emulated.from_names("binary32", "binary32")
    if method == "probabilistic" and not 0 < confidence < 1:
        raise FperrInputError(f"confidence must be in (0, 1), got {confidence}")
    each = 1 - (1 - confidence) / 2  # per run: the two failures add up to 1 - confidence
    lo = bound_run(model, X, low, method=method, confidence=each, keep=keep, progress=progress)
    ref = bound_run(model, X, reference, method=method, confidence=each, progress=progress)
    names = ["input"] + [f"{i}:{layer.type}" for i, layer in enumerate(model.layers)]
    return BoundResult(lo, ref, low, reference, method, names)
