"""A cascade of bounds for certification: cheap first, sharp where undecided.

Most inputs have a margin far above any rounding error, so a cheap sound
bound already certifies them.  Stage 0 is :mod:`.coarse` (both runs in one
forward pass with one number per input and position, about 5 forward passes'
time on the digits models) and stage 1 :mod:`.quick` (the same pass with one
number per unit, about 10) for the inputs stage 0 leaves undecided, where
every layer has their rules; else stage 1 is the backward engine's forward
interval range (no backward pass at all).  An input they leave undecided goes
to stage 2: the backward engine's rows for the reference class and only
those competitors that stage 1 cannot rule out (with ``ranges="unstable"``
and the deterministic method, an input still undecided gets them again with
full ranges); and an input still undecided in a chain model goes to stage 3,
the zonotope engine, whose
ranges are sharper (much so in models with curved layers,
:data:`.engine.CURVED`, and in deep or wide ones, :data:`.backward.WIDE`).  The bound kept
for an output is the smallest of the stages', all being sound; a
certificate from any stage is a certificate.

Under the probabilistic method, stages 0 and 1 are deterministic (the coarse and
quick stages) or sum every local term in absolute value: they hold always, or on
the same events (one per dot product term) as the later stages, so an input's
verdict rests on one output combination event, as without the cascade, and the
failure probability is unchanged; stages 2 and
3 would each bring their own, so a curved model skips stage 2 there.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ..arith import Emulated
from ..model import Model, check_inputs
from .coarse import coarse_bound
from .engine import BoundResult, RunBound, bound, resolve_engine, zonotope_fits
from .quick import quick_bound
from .weight_memo import remembering

Array = npt.NDArray[np.float64]
Certifier = Callable[[Array, Array], npt.NDArray[np.bool_]]

def margin(b: BoundResult) -> Array:
    """Per output: M = max(B, 2 R_ref), what the certificate compares with the gaps."""
    return np.maximum(b.bound, 2 * b.reference.radius)


def rival_rows(y_ref: Array, m: Array) -> npt.NDArray[np.bool_]:
    """(N, K): the reference class k and every j with y_k - y_j <= M_k + M_j (the
    competitors a sharper bound must rule out)."""
    rows = np.arange(y_ref.shape[0])
    k = np.argmax(y_ref, axis=1)
    gap = y_ref[rows, k][:, None] - y_ref - (m[rows, k][:, None] + m)
    need = ~(gap > 0)
    need[rows, k] = True
    return np.asarray(need)


def _merge(cheap: RunBound, sharp: RunBound, idx: npt.NDArray[np.intp]) -> RunBound:
    """``cheap`` with the inputs ``idx`` bounded by min(cheap, sharp) and their
    per-layer breakdown from ``sharp`` (the first stage has none: zeros)."""
    radius = cheap.radius.copy()
    radius[idx] = np.minimum(cheap.radius[idx], sharp.radius)
    per = cheap.per_layer.copy()
    per[idx] = sharp.per_layer
    prob = max(cheap.failure_probability, sharp.failure_probability)
    return RunBound(cheap.output, radius, per, prob)


@remembering()
def cascade_bound(
    model: Model,
    X: npt.ArrayLike,
    low: Emulated | None,
    reference: Emulated | None,
    certified: Certifier,
    *,
    method: str = "deterministic",
    confidence: float = 0.999,
    keep: Mapping[int, Emulated] | None = None,
    progress: Callable[[int], None] | None = None,
    engine: str = "auto",
    explained: int = 32,
    ranges: str = "sharpened",
    backend: str | None = None,
    device: str | None = None,
) -> BoundResult:
    """Bounds for :func:`fperr.certify`: stage 1 for every input, the later stages
    for those ``certified(y_ref, margin)`` rejects (see the module docstring);
    ``explained`` inputs decided early get a per-layer breakdown anyway
    (:func:`_explain`).  ``backend`` and ``device``: where the backward rows of
    every stage live (:func:`fperr.bounds.bound_run`)."""
    X = check_inputs(X, model.input_shape)
    N = X.shape[0]
    K = int(np.prod(model.output_shape))
    opts: dict[str, Any] = {"method": method, "confidence": confidence, "keep": keep,
                            "ranges": ranges, "backend": backend, "device": device}  # fmt: skip
    low = low or Emulated.from_names("binary16", "binary32")
    reference = reference or Emulated.from_names("binary32", "binary32")
    # the cheapest bounds: both runs in one forward pass, one number per input (stage 0)
    # then one per unit for the inputs it leaves open, where every layer has such
    # rules; else the backward engine's interval ranges (no backward pass at all)
    result = None if keep else _first_stages(model, X, low, reference, method, certified)
    if result is None:
        first = {**opts, "ranges": "interval"}
        result = bound(model, X, low, reference, engine="backward",
                       rows=np.zeros((N, K), dtype=bool), **first)  # fmt: skip
    last = resolve_engine(model, engine)
    if engine == "auto" and zonotope_fits(model) and method != "probabilistic":
        last = "zonotope"  # what the backward rows leave open, the sharper ranges may settle
    # the backward rows (interval ranges, cheap) before the zonotope; not under the
    # probabilistic method, where the two would rest on two output combination events
    # (see the module docstring)
    stages = [("backward", ranges)] if last == "backward" or method != "probabilistic" else []
    stages += [] if last == "backward" else [(last, ranges)]
    if ranges == "unstable" and last == "backward" and method != "probabilistic":
        # what the unstable units' rows leave open, every unit's rows may settle (under
        # the probabilistic method a second backward stage would bring its own event)
        stages.append(("backward", "full"))
    # the inputs to explain are among those the first stages decide (the later ones
    # give their inputs a breakdown); chosen now, their rows join the first backward
    # stage's call where they would be pulled back by the same engine (one call fewer)
    decided = certified(result.reference.output, margin(result))
    picks = _explain_picks(result, np.flatnonzero(decided), explained)
    only = _explain_rows(model, result, picks, engine)
    todo = np.arange(N)
    for stage, stage_ranges in stages:
        m = margin(result)
        left = todo[~certified(result.reference.output[todo], m[todo])]
        if progress is not None:
            progress(2 * (todo.size - left.size))  # decided: 2 runs each
        todo = left
        if not todo.size:
            break
        rows = rival_rows(result.reference.output[todo], m[todo]) if stage == "backward" else None
        fold = picks.size > 0 and rows is not None and only is not None and (
            stage_ranges == ranges)
        idx = np.concatenate([todo, picks]) if fold else todo
        if fold:
            rows = np.concatenate([rows, only])
        sharp = bound(model, X[idx], result.low_arith, result.reference_arith, engine=stage,
                      rows=rows, **{**opts, "ranges": stage_ranges})  # fmt: skip
        n = todo.size
        result = replace(
            result,
            low=_merge(result.low, _part(sharp.low, slice(0, n)), todo),
            reference=_merge(result.reference, _part(sharp.reference, slice(0, n)), todo),
        )
        if fold:  # explained: their breakdown, their bounds unchanged
            result = replace(
                result,
                low=_with_breakdown(result.low, _part(sharp.low, slice(n, None)), picks),
                reference=_with_breakdown(result.reference,
                                          _part(sharp.reference, slice(n, None)), picks),
            )
            picks = picks[:0]
    if progress is not None and todo.size:
        progress(2 * todo.size)
    # the breakdown as bound() would give it (the zonotope stage is for verdicts only)
    return _explain(model, X, result, engine, opts, picks, only)


def _part(run: RunBound, sel: slice) -> RunBound:
    """The inputs ``sel`` of a run's bounds."""
    return RunBound(run.output[sel], run.radius[sel], run.per_layer[sel],
                    run.failure_probability)  # fmt: skip


def _first_stages(model: Model, X: Array, low: Emulated, reference: Emulated, method: str,
                  certified: Certifier) -> BoundResult | None:  # fmt: skip
    """:mod:`.coarse` for every input and :mod:`.quick` for those it leaves undecided
    (the smaller bound kept), or the quick stage alone where the coarse one has no
    rule for some layer; None where neither applies."""
    result = coarse_bound(model, X, low, reference, method)
    if result is None:
        return quick_bound(model, X, low, reference, method)
    left = np.flatnonzero(~certified(result.reference.output, margin(result)))
    if left.size:
        finer = quick_bound(model, X[left], low, reference, method)
        if finer is not None:
            result = replace(result, low=_merge(result.low, finer.low, left),
                             reference=_merge(result.reference, finer.reference, left))
    return result


def _explain_picks(result: BoundResult, candidates: npt.NDArray[np.intp],
                   count: int) -> npt.NDArray[np.intp]:  # fmt: skip
    """The ``count`` inputs with the least slack (gap over margin) among
    ``candidates`` (those the first stages decide: no later stage gives them a
    per-layer breakdown), in increasing order: :func:`_explain` gives them the sharp
    engine's breakdown, so that the report's "worst layer" speaks for the inputs
    nearest to losing their certificate."""
    if not candidates.size or count <= 0:
        return candidates[:0]
    y, m = result.reference.output[candidates], margin(result)[candidates]
    k = np.argmax(y, axis=1)
    rows = np.arange(candidates.size)
    slack = (y[rows, k][:, None] - y) / (m[rows, k][:, None] + m)
    slack[rows, k] = np.inf
    return np.sort(candidates[np.argsort(slack.min(axis=1), kind="stable")[:count]])


def _explain_rows(model: Model, result: BoundResult, picks: npt.NDArray[np.intp],
                  engine: str) -> npt.NDArray[np.bool_] | None:  # fmt: skip
    """The rows the breakdown of ``picks`` pulls back with the backward engine: every
    output's for models with few (:data:`EXPLAIN_EVERY_OUTPUT`), else each input's
    :func:`explained_output` alone (the shares describe it, layer_share), not K rows
    (61,504 of them through a convolution took 80 s); None where the engine is the
    zonotope (every output at once)."""
    if resolve_engine(model, engine) != "backward":
        return None
    K = result.bound.shape[1]
    if K <= EXPLAIN_EVERY_OUTPUT:  # stage 0's bounds do not say which output is largest
        return np.ones((picks.size, K), dtype=bool)
    only = np.zeros((picks.size, K), dtype=bool)
    k = explained_output(result.bound[picks], result.reference.output[picks])
    only[np.arange(picks.size), k] = True
    return only


EXPLAIN_EVERY_OUTPUT = 16
"""Up to this many outputs, an explained input gets every output's row (the sharp
bounds then say which output is largest, as without the cascade); beyond, one
row (:func:`explained_output`)."""


def explained_output(bound: Array, y_ref: Array) -> npt.NDArray[np.intp]:
    """Per input, the output whose bound a breakdown describes: the one with the
    largest ``bound``, and where several share it (stage 0's bound is one number per
    input) the reference class, whose bound every certificate of the input uses."""
    k = np.argmax(bound, axis=1)
    ref = np.argmax(y_ref, axis=1)
    rows = np.arange(bound.shape[0])
    return np.asarray(np.where(bound[rows, ref] == bound[rows, k], ref, k))


def _explain(model: Model, X: Array, result: BoundResult, engine: str, opts: dict[str, Any],
             picks: npt.NDArray[np.intp], only: npt.NDArray[np.bool_] | None) -> BoundResult:
    """Give ``picks`` (:func:`_explain_picks`) the breakdown of the sharp engine's
    bound with ``only`` its rows (:func:`_explain_rows`): their shares, the bound
    itself stays the cascade's."""
    if not picks.size:
        return result
    sharp = bound(model, X[picks], result.low_arith, result.reference_arith, engine=engine,
                  rows=only, **opts)  # fmt: skip
    return replace(
        result,
        low=_with_breakdown(result.low, sharp.low, picks),
        reference=_with_breakdown(result.reference, sharp.reference, picks),
    )


def _with_breakdown(run: RunBound, sharp: RunBound, idx: npt.NDArray[np.intp]) -> RunBound:
    """``run`` with the per-layer breakdown of ``sharp`` at inputs ``idx``, its bounds
    unchanged: which inputs are explained depends on the batch, a bound must not."""
    per = run.per_layer.copy()
    per[idx] = sharp.per_layer
    return replace(run, per_layer=per)
