"""The bound engine: enclose a run of a model layer by layer, then combine runs.

``bound_run`` bounds one run against exact arithmetic, per output: the
zonotope engine carries an :class:`~fperr.bounds.enclosure.Enclosure` through
the model with one rule per layer (:mod:`fperr.bounds.rules`); the backward
engine (:mod:`fperr.bounds.backward`) computes the same local errors with
interval ranges and pulls the output rows back.  ``bound`` combines the
low-precision run and the reference run into B = B_low + B_ref.
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
from ..layers import Residual
from ..model import Model, check_inputs
from ..operators import REGISTRY, Operator
from . import exponent_range as xr
from .backend import current, using
from .backward import (
    Anchor,
    Collector,
    Graph,
    Ranges,
    Tape,
    forward_steps,
    input_step,
    pull_back,
    row_selector,
    scatter_rows,
)
from .enclosure import Enclosure
from .memory import (
    backward_batch_size,
    check_memory,
    estimate_bytes,
    keep_freed_heap,
    max_bytes,
)
from .rules import Context, apply_rule, convert_rule
from .weight_memo import remembering

__all__ = ["RunBound", "BoundResult", "bound", "bound_run", "lambda_for",
           "PROBABILISTIC_NOTE"]  # fmt: skip

PROBABILISTIC_NOTE = (
    "probabilistic bounds are a model, not a certificate: they assume independent "
    "zero-mean rounding errors, which round-to-nearest does not make (structured data "
    "can exceed them); rigorous only under stochastic rounding (Connolly, Higham & "
    "Mary 2021); the failure probability is stated under that model"
)

Array = npt.NDArray[np.float64]

ENGINES = ("auto", "backward", "zonotope")
RANGES = ("sharpened", "interval", "zonotope", "full", "unstable")
PER_UNIT = ("full", "unstable")
"""Ranges with a backward row per unit and no budget (probabilistic ranges too)."""

CURVED = ("tanh", "sigmoid", "gelu", "gelu_tanh", "silu", "elu", "hardswish", "hardsigmoid",
          "softmax", "layernorm", "rmsnorm")
"""Layers whose remainder terms grow with the incoming radius squared: there the
backward engine's interval ranges (exact for one layer, but 17-60x wider than the
zonotope's after four tanh layers of width 512, infinite through two pre-norm
residual blocks) cost more tightness than the engine saves."""


def layer_types(layers: Sequence[Any]) -> set[str]:
    """Every layer type in ``layers``, residual branches included."""
    out: set[str] = set()
    for layer in layers:
        out.add(layer.type)
        if isinstance(layer, Residual):
            out |= layer_types(layer.layers)
    return out


def zonotope_fits(model: Model) -> bool:
    """Whether the zonotope engine can bound one input within the memory budget (it
    carries a generator per unit of every earlier layer: not for large images)."""
    return not model.is_graph and estimate_bytes(model, 1) <= max_bytes()


def resolve_engine(model: Model, engine: str) -> str:
    """``"auto"``: the backward engine for piecewise-linear models (ReLU, pooling,
    batch norm: its bounds equal the zonotope's there), the zonotope for models
    with curved layers (:data:`CURVED`) where it fits in memory
    (:func:`zonotope_fits`)."""
    if engine not in ENGINES:
        raise FperrInputError(f"unknown engine {engine!r}; use {', '.join(ENGINES)}")
    if model.is_graph:  # the zonotope aligns generators along a chain only
        if engine == "zonotope":
            raise FperrInputError(f"model {model.name!r} is a graph (named inputs): the zonotope "
                                  "engine takes chains only; use engine='backward'")  # fmt: skip
        return "backward"
    no_rule = sorted({t for t in layer_types(model.layers)
                      if t in REGISTRY and not REGISTRY[t].has_rule()})  # fmt: skip
    if no_rule:
        if engine == "zonotope":
            raise FperrInputError(f"the zonotope engine has no rule for {', '.join(no_rule)}; "
                                  "use engine='backward'")  # fmt: skip
        return "backward"
    if engine != "auto":
        return engine
    if layer_types(model.layers) & set(CURVED) and zonotope_fits(model):
        return "zonotope"
    return "backward"

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
        if isinstance(layer, Residual):
            total += _count_products(layer.layers, shape)
        elif isinstance(layer, Operator):
            # a chain's operators read one input; graph models go through _model_products
            out = layer.merge_shape([shape])
            total += layer.products([shape], out)
            shape = out
    return total


def _model_products(model: Model) -> int:
    """:func:`_count_products` over every layer of a model, chain or graph (each
    layer at its own input's shape; merges compute no products)."""
    shapes = model.shapes()
    total = 0
    for i, layer in enumerate(model.layers):
        ins = [shapes[j + 1] for j in model.inputs_of(i)]
        if isinstance(layer, Operator):
            total += layer.products(ins, shapes[i + 1])
        else:
            total += _count_products([layer], ins[0])
    return total


def _input_units(layers: Sequence[Any], shapes: Sequence[tuple[int, ...]], depth: int) -> int:
    """Units at the inputs of ``layers`` (chain, input shapes ``shapes``), each counted
    once per tape a functional of it may cross (``depth`` + 1: a residual branch's
    rows continue in each enclosing tape, bounded there on their own)."""
    total = 0
    for layer, shape in zip(layers, shapes, strict=True):
        total += math.prod(shape) * (depth + 1)
        if isinstance(layer, Residual):
            inner = [shape]
            for sub in layer.layers[:-1]:
                inner.append(sub.out_shape(inner[-1]))
            total += _input_units(layer.layers, inner, depth + 1)
    return total


def range_functionals(model: Model) -> int:
    """An upper bound on the range functionals one input's run evaluates with full
    ranges: every unit at every layer's input sharpened (one functional each) and,
    at a layer norm, one functional per normalised group (fewer than its units),
    hence twice the units (:func:`_input_units`).  Each is one event of the
    probabilistic method's failure budget (the ranges' share)."""
    shapes = model.shapes()
    total = 0
    for i, layer in enumerate(model.layers):
        ins = [shapes[j + 1] for j in model.inputs_of(i)]
        total += sum(math.prod(s) for s in ins[1:])  # a merge's other inputs
        total += _input_units([layer], ins[:1], 0)
    return max(1, 2 * total)


@remembering()
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
    engine: str = "auto",
    ranges: str = "sharpened",
    rows: npt.NDArray[np.bool_] | None = None,
    anchors: Sequence[Anchor] | None = None,
    record: list[Anchor] | None = None,
    backend: str | None = None,
    device: str | None = None,
) -> RunBound:
    """Enclose one run of ``model`` in ``arith`` against exact arithmetic.

    ``engine``: ``"backward"`` (:mod:`.backward`: interval ranges forward, one
    backward pass per output row, cost ~ K forward passes), ``"zonotope"``
    (the reference engine: every error source carried forward as a signed
    generator; sharper ranges, cost growing with width and depth) or
    ``"auto"`` (default, :func:`resolve_engine`; the backward engine's inputs whose
    interval ranges grow wide, :data:`.backward.WIDE`, are bounded again by the
    zonotope when the model is a chain).
    The backward engine's ranges: ``"sharpened"`` (default: interval ranges,
    replaced by backward bounds at the inputs of nonlinear layers where wide,
    :func:`.backward.sharpen_threshold`), ``"interval"`` (never
    sharpened: the cheapest), ``"zonotope"`` (the zonotope's radii, for
    comparisons: it then bounds the same terms) or ``"full"`` (every unit at
    every nonlinear layer's input sharpened where wider than
    :data:`.backward.FULL` of its value, with no budget: CROWN's intermediate
    bounds everywhere, costing about one forward pass per unit;
    under ``method="probabilistic"`` these ranges combine the roundings in
    quadrature too, each unit's range one more event of the failure budget,
    which is then split in three: products, ranges, outputs), or ``"unstable"``
    (as full, but at piecewise linear layers and max pooling only the units whose
    range may change the rule, :meth:`.Operator.unstable`: CROWN's intermediate
    bounds for unstable neurons; the stable units keep interval ranges, which
    widen the later layers' local terms: on VGG-11-BN's first 100 test images
    about half the time of full ranges, the bound 1.5x looser at the median).
    ``rows`` (N, K) selects the
    outputs the backward pass sharpens; the others keep the forward interval
    range (a cheaper, looser bound) and no per-layer breakdown.

    ``anchors`` (backward engine): another run's values and radii at every graph
    position (0 the input, j + 1 layer j's output), each (N, units), as
    ``record`` collects them: the exact values lie within a radius of that run's,
    which bounds this run's own error (:meth:`.backward.Ranges.spread`) and
    narrows the ranges of ReLUs and max pooling (:func:`bound` passes the
    reference run's to the low one).

    ``backend`` and ``device`` (backward engine): where the backward rows live,
    ``"numpy"`` or ``"torch"`` on ``"cpu"`` or ``"cuda"`` (a CUDA device implies
    torch; :mod:`.backend`; None: ``FPERR_BACKEND`` / ``FPERR_DEVICE``, else numpy).
    The forward pass stays in numpy; bounds agree between backends to about 1e-13
    relative.

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
    keep_freed_heap()
    if layer_ariths is not None:
        warnings.warn("bound_run(layer_ariths=...) is deprecated; use keep=...",
                      DeprecationWarning, stacklevel=2)  # fmt: skip
        keep = layer_ariths if keep is None else keep
    if method not in ("deterministic", "probabilistic"):
        raise FperrInputError(f"unknown method {method!r}; use deterministic or probabilistic")
    auto = engine == "auto"
    engine = resolve_engine(model, engine)
    if rows is not None and engine != "backward":
        raise FperrInputError("rows (outputs to sharpen) need engine='backward'")
    if ranges not in RANGES:
        raise FperrInputError(f"unknown ranges {ranges!r}; use {', '.join(RANGES)}")
    if ranges == "zonotope" and model.is_graph:
        raise FperrInputError("ranges='zonotope' needs a chain model (the zonotope engine's)")
    x = check_inputs(X, model.input_shape)
    if rows is not None and (rows.shape != (x.shape[0], int(np.prod(model.output_shape)))):
        raise FperrInputError(f"rows has shape {rows.shape}, expected (inputs, outputs)")
    # Half the failure budget for the accumulation events inside the network
    # (one per term of every dot product), half for the K outputs' quadrature
    # combination: a union bound over both.
    inner = max(1, _model_products(model))
    outputs = int(np.prod(model.output_shape))
    prob_ranges = method == "probabilistic" and ranges in PER_UNIT
    # with probabilistic ranges a third budget share: one event per range functional
    range_events = range_functionals(model) if prob_ranges else 0
    share = 1 - (1 - confidence) / (3 if prob_ranges else 2)
    lam = lambda_for(share, inner) if method == "probabilistic" else 0.0
    lam_out = lambda_for(share, outputs) if method == "probabilistic" else 0.0
    lam_range = lambda_for(share, range_events) if prob_ranges else 0.0
    contexts: dict[Emulated, Context] = {}
    ctxs = []
    for i in range(len(model.layers)):
        a = (keep or {}).get(i, arith)
        ctxs.append(contexts.setdefault(a, Context(a, method, lam)))
    input_ctx = ctxs[0] if ctxs else Context(arith, method, lam)
    if engine == "backward" and ranges != "zonotope":
        bs = batch_size or backward_batch_size(model)  # refuses one input over the budget
    else:
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
    outs, radii, layers, wides = [], [], [], []
    recorded: list[list[Anchor]] = []
    with using(backend, device):
        for i in range(0, x.shape[0], bs):
            if engine == "backward":
                sel = None if rows is None else rows[i : i + bs]
                part = None if anchors is None else [(c[i : i + bs], rho[i : i + bs])
                                                     for c, rho in anchors]  # fmt: skip
                got: list[Anchor] | None = None if record is None else []
                o, r, pl, wide = _bound_batch_backward(model, x[i : i + bs], input_ctx, ctxs,
                                                       method, lam_out, sel, ranges,
                                                       lam_range, part, got)  # fmt: skip
                wides.append(wide)
                if record is not None and got is not None:
                    recorded.append(got)
            else:
                o, r, pl = _bound_batch(model, x[i : i + bs], input_ctx, ctxs, method, lam_out)
            outs.append(o)
            radii.append(r)
            layers.append(pl)
            if progress is not None:
                progress(o.shape[0])
    radius, per = np.concatenate(radii), np.concatenate(layers)
    if auto and engine == "backward" and rows is None and ranges not in PER_UNIT and zonotope_fits(
        model
    ):  # full ranges are about the zonotope's already (deterministic; equal with FULL = 0)
        redo = np.flatnonzero(np.concatenate(wides))
        if redo.size:  # ranges grew wide: the zonotope's sharper ranges for these inputs
            z = bound_run(model, x[redo], arith, method=method, confidence=confidence,
                          batch_size=batch_size, keep=keep, engine="zonotope")  # fmt: skip
            radius[redo], per[redo] = z.radius, z.per_layer
    if record is not None and recorded:
        record.extend((np.concatenate([b[p][0] for b in recorded]),
                       np.concatenate([b[p][1] for b in recorded]))
                      for p in range(len(recorded[0])))  # fmt: skip
    fail = 0.0
    if method == "probabilistic":
        events = [(inner, lam), (outputs, lam_out)] + ([(range_events, lam_range)]
                                                       if prob_ranges else [])  # fmt: skip
        fail = min(1.0, sum(2 * n * math.exp(-(la**2) / 2) for n, la in events))
    return RunBound(np.concatenate(outs), radius, per, fail)


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
                enc = convert_rule(enc, storage, ctx.arith.storage, i)
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


def _bound_batch_backward(
    model: Model, x: Array, input_ctx: Context, ctxs: list[Context], method: str, lam: float,
    rows: npt.NDArray[np.bool_] | None, ranges: str, lam_range: float = 0.0,
    anchors: Sequence[Anchor] | None = None, record: list[Anchor] | None = None,
) -> tuple[Array, Array, Array, npt.NDArray[np.bool_]]:  # fmt: skip
    """One batch through :mod:`.backward`: (outputs, radius, per-layer breakdown,
    inputs whose ranges grew wide or whose run may overflow); ``record`` receives
    the values and final radii at every graph position (see :func:`bound_run`)."""
    N = x.shape[0]
    first = input_step(x, input_ctx)
    ref = None
    if ranges == "zonotope":
        ref = Enclosure(first.value, np.zeros((N, int(np.prod(x.shape[1:])), 0)))
        ref = ref.add_box(first.boxes[0][0], 0, random=False)
    L = len(model.layers)
    tape = Tape()
    tape.add(first, ())
    graph = Graph(model.layers, [model.inputs_of(i) for i in range(L)], ctxs, range(1, L + 1))
    with np.errstate(invalid="ignore", over="ignore"):
        sharp = Ranges(ref, sharpen=ranges == "sharpened", full=ranges in PER_UNIT,
                       lam=lam_range, anchors=anchors, unstable=ranges == "unstable")  # fmt: skip
        y, r, bad = forward_steps(graph, tape, sharp, input_ctx.arith.storage)
        if record is not None:  # every radius final: the sharpening is done (the tape
            # is dropped after this batch and never writes to its arrays: no copies)
            for t in tape.positions:
                st = tape.steps[t]
                record.append((st.value.reshape(N, -1), st.radius()))
        wide = tape.wide if tape.wide is not None else np.zeros(N, dtype=bool)
        bad |= ~np.isfinite(first.value.reshape(N, -1)).all(axis=1)
        K = int(np.prod(y.shape[1:]))
        mask = np.ones((N, K), dtype=bool) if rows is None else rows
        radius = r.reshape(N, K).copy()  # outputs without a row keep the interval range
        per = np.zeros((N, K, L + 1))
        chunk = _rows_per_pass(model, N, method)
        for k0 in range(0, K, chunk):  # rows are independent: a few at a time
            sub = np.zeros_like(mask)
            sub[:, k0 : k0 + chunk] = mask[:, k0 : k0 + chunk]
            if sub.any():  # no rows: the forward interval range alone (a cascade's first stage)
                rad, per_rows = _pull_rows(tape, sub, L + 1, method, lam)
                radius = scatter_rows(rad, sub, radius)
                per = scatter_rows(per_rows.transpose(0, 2, 1), sub, per)
        radius = radius * (1 + _EVAL_MARGIN)
        bad_out = np.isnan(radius) | bad[:, None]
        radius = np.where(bad_out, np.inf, radius)
    return y.reshape(N, K), radius, per.transpose(0, 2, 1), wide


def _rows_per_pass(model: Model, N: int, method: str) -> int:
    """Output rows pulled back at once: (N, R, n) rows at the widest layer, and under
    the probabilistic method every random source's contribution kept, within 1/8 of
    the memory budget."""
    sizes = [int(np.prod(s)) for s in model.shapes()]
    width = max(sizes) + (2 * sum(sizes) if method == "probabilistic" else 0)
    return max(1, int(max_bytes() // 8 // (32 * N * width)))


def _pull_rows(
    tape: Tape, mask: npt.NDArray[np.bool_], n_groups: int, method: str, lam: float
) -> tuple[Array, Array]:
    """Radius (N, R) and per-layer breakdown (N, G, R) of the rows selected by ``mask``."""
    b = current()
    lam_rows = row_selector(mask)
    coll = Collector(mask.shape[0], lam_rows.shape[1], n_groups,
                     keep_random=method == "probabilistic")  # fmt: skip
    pull_back(tape, lam_rows, coll, entry=False)
    det = b.host(coll.det)
    if method != "probabilistic":
        return det.sum(axis=1), det
    g = np.concatenate([det.transpose(0, 2, 1), *map(b.host, coll.random_cols)], axis=2)
    rnd = np.concatenate([np.zeros(n_groups, dtype=bool),
                          np.ones(g.shape[2] - n_groups, dtype=bool)])  # fmt: skip
    groups = np.concatenate([np.arange(n_groups), *coll.random_groups]).astype(np.int64)
    return _probabilistic(g, rnd, groups, n_groups, lam)


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


def _anchored(model: Model, X: npt.ArrayLike, engine: str, ranges: str) -> bool:
    """Whether :func:`bound` anchors the low run on the reference's values: the
    backward engine, and the values and radii at every position within a quarter
    of the memory budget (they are kept for every input)."""
    if ranges == "zonotope" or resolve_engine(model, engine) != "backward":
        return False
    n = int(np.asarray(X).shape[0]) if np.ndim(X) else 1
    units = sum(int(np.prod(s)) for s in model.shapes())
    return 16 * n * units <= max_bytes() // 4


@remembering()
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
    engine: str = "auto",
    rows: npt.NDArray[np.bool_] | None = None,
    ranges: str = "sharpened",
    backend: str | None = None,
    device: str | None = None,
) -> BoundResult:
    """Bound |y_low - y_ref| per input and output; see the module docstring.

    ``engine``, ``rows``, ``ranges``, ``backend`` and ``device``: see
    :func:`bound_run`.

    ``keep`` maps layer indices to the arithmetic they run in within the low
    run (mixed precision, e.g. some layers kept in binary32).  With
    ``method="probabilistic"``, ``1 - confidence`` is the total failure
    probability per input: B = R_low + R_ref fails if either radius does, so
    each run gets half the budget (a union bound).  ``progress`` is called
    with the inputs of each bounded batch of either run (2 N calls' worth).

    The reference run is bounded first; with the backward engine its values and
    radii anchor the low run (``anchors`` of :func:`bound_run`): the exact values
    lie within the reference's small radius of its values, so the low run knows
    its own error to about that, and any of its runs lies within r + s of it
    instead of 2r (s the own error), which halves the ranges at ReLUs and max
    pooling and what grows from them in deep networks.
    """
    keep_freed_heap()
    low = low or Emulated.from_names("binary16", "binary32")
    reference = reference or Emulated.from_names("binary32", "binary32")
    if method == "probabilistic" and not 0 < confidence < 1:
        raise FperrInputError(f"confidence must be in (0, 1), got {confidence}")
    each = 1 - (1 - confidence) / 2  # per run: the two failures add up to 1 - confidence
    opts: dict[str, Any] = {"method": method, "confidence": each, "progress": progress,
                            "engine": engine, "rows": rows, "ranges": ranges,
                            "backend": backend, "device": device}  # fmt: skip
    record: list[Anchor] | None = None
    if _anchored(model, X, engine, ranges):
        record = []
    ref = bound_run(model, X, reference, record=record, **opts)
    lo = bound_run(model, X, low, keep=keep, anchors=record or None, **opts)
    names = ["input"] + [f"{model.node_name(i)}:{layer.type}"
                         for i, layer in enumerate(model.layers)]  # fmt: skip
    return BoundResult(lo, ref, low, reference, method, names)
