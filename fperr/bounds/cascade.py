"""A cascade of bounds for certification: cheap first, sharp where undecided.

Most inputs have a margin far above any rounding error, so a cheap sound
bound already certifies them.  Stage 1 is :mod:`.quick` (both runs in one
forward pass, about 8 forward passes' time on the digits models) where every
layer has a quick rule, else the backward engine's forward interval range (no
backward pass at all); an input it leaves undecided goes
to stage 2: the backward engine's rows for the reference class and only
those competitors that stage 1 cannot rule out (with ``ranges="unstable"``
and the deterministic method, an input still undecided gets them again with
full ranges); and an input still undecided in a chain model goes to stage 3,
the zonotope engine, whose
ranges are sharper (much so in models with curved layers,
:data:`.engine.CURVED`, and in deep or wide ones, :data:`.backward.WIDE`).  The bound kept
for an output is the smallest of the stages', all being sound; a
certificate from any stage is a certificate.

Under the probabilistic method, stage 1 is deterministic (the quick stage) or
sums every local term in absolute value: it holds always, or on the same
events (one per dot product term) as the later stages, so an input's verdict
rests on one output combination event, as without the cascade, and the
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
    # the cheapest bound: both runs in one forward pass where every layer has a quick
    # rule, else the backward engine's interval ranges (no backward pass at all)
    result = None if keep else quick_bound(model, X, low, reference, method)
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
        sharp = bound(model, X[todo], result.low_arith, result.reference_arith, engine=stage,
                      rows=rows, **{**opts, "ranges": stage_ranges})  # fmt: skip
        result = replace(
            result,
            low=_merge(result.low, sharp.low, todo),
            reference=_merge(result.reference, sharp.reference, todo),
        )
    if progress is not None and todo.size:
        progress(2 * todo.size)
    # the breakdown as bound() would give it (the zonotope stage is for verdicts only)
    return _explain(model, X, result, engine, opts, explained)


def _explain(
    model: Model, X: Array, result: BoundResult, engine: str, opts: dict[str, Any], count: int
) -> BoundResult:
    """Give the ``count`` inputs with the least slack (gap over margin) among those
    without a per-layer breakdown one: the breakdown of the sharp engine's bound
    (their shares, the bound itself stays the cascade's), so that the report's
    "worst layer" speaks for the inputs nearest to losing their certificate."""
    per = result.low.per_layer.sum(axis=(1, 2)) + result.reference.per_layer.sum(axis=(1, 2))
    bare = np.flatnonzero(per == 0)
    if not bare.size or count <= 0:
        return result
    y, m = result.reference.output[bare], margin(result)[bare]
    k = np.argmax(y, axis=1)
    rows = np.arange(bare.size)
    slack = (y[rows, k][:, None] - y) / (m[rows, k][:, None] + m)
    slack[rows, k] = np.inf
    pick = np.sort(bare[np.argsort(slack.min(axis=1), kind="stable")[:count]])
    only: npt.NDArray[np.bool_] | None = None
    K = result.bound.shape[1]
    if resolve_engine(model, engine) == "backward":
        # the shares describe each input's output with the largest bound (layer_share):
        # its row alone, not K rows (61,504 of them through a convolution took 80 s)
        only = np.zeros((pick.size, K), dtype=bool)
        only[np.arange(pick.size), np.argmax(result.bound[pick], axis=1)] = True
    sharp = bound(model, X[pick], result.low_arith, result.reference_arith, engine=engine,
                  rows=only, **opts)  # fmt: skip
    return replace(
        result,
        low=_with_breakdown(result.low, sharp.low, pick),
        reference=_with_breakdown(result.reference, sharp.reference, pick),
    )


def _with_breakdown(run: RunBound, sharp: RunBound, idx: npt.NDArray[np.intp]) -> RunBound:
    """``run`` with the per-layer breakdown of ``sharp`` at inputs ``idx``, its bounds
    unchanged: which inputs are explained depends on the batch, a bound must not."""
    per = run.per_layer.copy()
    per[idx] = sharp.per_layer
    return replace(run, per_layer=per)
