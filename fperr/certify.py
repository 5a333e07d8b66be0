"""Classification-tolerance certificates (Yun et al. 2023, Lemma; sharpened).

For an input with reference output y (binary32 run) and a componentwise bound
M on how far any low-precision or reference run can be from y, the predicted
class k = argmax y is certain for every run iff

    y_k - y_j > M_k + M_j   for every j != k          (sharper condition)

which the seed paper's condition  Gamma = y_(1) - y_(2) > 2 max_j M_j  implies.
M = max(B, 2 R_ref) with B = R_low + R_ref: every run lies within its radius
of the exact output, and the exact output within R_ref of y.

A model with one output (a two-class classifier's logit, as scikit-learn's
MLPClassifier has) predicts class 1 where y > 0 and class 0 elsewhere; its
class is certain iff |y| > M, and its tolerance is |y|.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from .arith import Emulated
from .bounds import PROBABILISTIC_NOTE, BoundResult, bound
from .bounds.backend import resolve as resolve_backend
from .bounds.cascade import cascade_bound, explained_output, margin
from .errors import FperrInputError
from .layer_shares import LayerShares
from .layers import Softmax
from .model import Model

Array = npt.NDArray[np.float64]


def predicted_class(y: Array) -> npt.NDArray[np.int64]:
    """argmax y per row; with one output, 1 where y > 0 and 0 elsewhere."""
    if y.shape[1] == 1:
        return np.asarray(y[:, 0] > 0, dtype=np.int64)
    return np.asarray(np.argmax(y, axis=1), dtype=np.int64)


def tolerance(y: Array) -> Array:
    """Gamma = top-1 minus top-2 output, per row; |y| with one output (the distance
    to the decision boundary y = 0)."""
    if y.shape[1] < 2:
        return np.abs(y[:, 0])
    top2 = np.sort(y, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def certified_sharp(y: Array, margin: Array) -> npt.NDArray[np.bool_]:
    """y_k - y_j > M_k + M_j for all j != k, k = argmax y (strict: ties may flip);
    |y| > M with one output (its sign is the class)."""
    if y.shape[1] == 1:
        return np.asarray(np.abs(y[:, 0]) > margin[:, 0])
    k = np.argmax(y, axis=1)
    rows = np.arange(y.shape[0])
    gap = y[rows, k][:, None] - y - (margin[rows, k][:, None] + margin)
    gap[rows, k] = np.inf
    return np.asarray((gap > 0).all(axis=1))


def median_share(share: Array) -> Array:
    """Median over the rows of (N, L + 1) shares that are not NaN; zeros if none."""
    has = ~np.isnan(share).any(axis=1)
    return np.asarray(np.median(share[has], axis=0)) if has.any() else np.zeros(share.shape[1])


def certified_simple(y: Array, margin: Array) -> npt.NDArray[np.bool_]:
    """The seed paper's lemma: Gamma > 2 max_j M_j (one output: |y| > M)."""
    if y.shape[1] < 2:
        return certified_sharp(y, margin)
    return np.asarray(tolerance(y) > 2 * margin.max(axis=1))


def describe_arithmetic(a: Emulated) -> str:
    """Every format of a run, so that no report hides which arithmetic was bounded."""
    rounding = "truncates" if a.acc_rounding == "truncate" else "rounds to nearest"
    return (
        f"storage {a.storage.name}, accumulate {a.accumulate.name}, operand "
        f"{a.operand_format.name}, accumulator {rounding}"
    )


@dataclass(frozen=True)
class CertifyResult:
    """Per-input certificates over a data set, with what emulation observed."""

    model_name: str
    bounds: BoundResult
    y_ref: Array
    y_low: Array
    labels: npt.NDArray[np.int64] | None = None
    on: str = "logits"
    extra: dict[str, Any] = field(default_factory=dict)
    cascaded: bool = False  # bounds from the certification cascade (not every input explained)

    # -- per input ---------------------------------------------------------------
    @property
    def margin(self) -> Array:
        return margin(self.bounds)

    @property
    def reference_class(self) -> npt.NDArray[np.int64]:
        return predicted_class(self.y_ref)

    @property
    def tolerance(self) -> Array:
        return tolerance(self.y_ref)

    @property
    def certified(self) -> npt.NDArray[np.bool_]:
        return certified_sharp(self.y_ref, self.margin)

    @property
    def certified_simple(self) -> npt.NDArray[np.bool_]:
        return certified_simple(self.y_ref, self.margin)

    @property
    def observed_delta(self) -> Array:
        return np.abs(self.y_low - self.y_ref).max(axis=1)

    @property
    def flipped(self) -> npt.NDArray[np.bool_]:
        return np.asarray(predicted_class(self.y_low) != self.reference_class)

    @property
    def reference_limited(self) -> npt.NDArray[np.bool_]:
        """Inputs that binary32 itself cannot settle: y_k - y_j <= 2 (R_ref,k + R_ref,j)
        for some j != k, R_ref the reference run's radius.  Even a low run in the
        reference arithmetic has M = 2 R_ref, so no low precision certifies these."""
        return ~certified_sharp(self.y_ref, 2 * self.bounds.reference.radius)

    def layer_share(self) -> Array:
        """(N, L + 1): each layer's share of max_k B_k per input; NaN rows for inputs
        without a breakdown (the certification cascade gives one only to inputs
        bounded by a sharp stage, see :mod:`fperr.bounds.cascade`)."""
        # the output with the largest bound among those with a breakdown (its sum: the
        # sharp bound, where the cascade kept an earlier stage's; the reference class
        # on ties)
        full = self.bounds.per_layer.sum(axis=1)
        k = explained_output(np.where(full > 0, full, -np.inf), self.y_ref)
        per = self.bounds.per_layer[np.arange(full.shape[0]), :, k]  # (N, L + 1)
        tot = per.sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore"):
            return np.asarray(np.where(tot > 0, per / np.where(tot > 0, tot, 1), np.nan))

    @property
    def worst_layer_share(self) -> Array:
        """(L + 1,) median over the inputs with a breakdown of each layer's share of
        max_k B_k (zeros when none has one)."""
        return median_share(self.layer_share())

    @property
    def exact_layer(self) -> npt.NDArray[np.bool_]:
        """(L + 1,) True for layers that do no arithmetic (relu, maxpool, reshape, ...):
        their share of B is a remainder term of the enclosure (the slack of a
        nonlinearity applied to errors made upstream), not a rounding they make."""
        names = self.bounds.layer_names
        return np.array([n.partition(":")[2] in _EXACT_LAYERS for n in names], dtype=bool)

    def worst_layer(self) -> tuple[str, float]:
        """The layer that rounds with the largest median share of the bound (the
        input rounding counts; layers that do no arithmetic do not)."""
        share = np.where(self.exact_layer, -np.inf, self.worst_layer_share)
        if not np.isfinite(share).any():
            share = self.worst_layer_share
        worst = int(np.argmax(share))
        return self.bounds.layer_names[worst], float(self.worst_layer_share[worst])

    # -- summary -----------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        n = int(self.y_ref.shape[0])
        cert, simple, flips = self.certified, self.certified_simple, self.flipped
        worst, worst_share = self.worst_layer()
        ref_lim = ~cert & self.reference_limited
        out: dict[str, Any] = {
            "model": self.model_name,
            "low": self.bounds.low_arith.name,
            "reference": self.bounds.reference_arith.name,
            "low_arithmetic": self.bounds.low_arith.to_dict(),
            "reference_arithmetic": self.bounds.reference_arith.to_dict(),
            "method": self.bounds.method,
            "on": self.on,
            "inputs": n,
            "certified": int(cert.sum()),
            "certified_fraction": float(cert.mean()) if n else 0.0,
            "certified_simple": int(simple.sum()),
            "only_sharp_condition": int((cert & ~simple).sum()),
            "observed_flips": int(flips.sum()),
            "certified_flips": int((cert & flips).sum()),
            "median_tolerance": float(np.median(self.tolerance)),
            "median_bound": float(np.median(self.margin.max(axis=1))),
            "median_observed_delta": float(np.median(self.observed_delta)),
            "worst_layer": worst,
            "worst_layer_share": worst_share,
            "exact_layers_share": float(self.worst_layer_share[self.exact_layer].sum()),
            "uncertified": np.flatnonzero(~cert).tolist(),
            "uncertified_reference_limited": np.flatnonzero(ref_lim).tolist(),
            "uncertified_low_limited": np.flatnonzero(~cert & ~ref_lim).tolist(),
            "failure_probability": self.bounds.failure_probability,
        }
        if self.bounds.method == "probabilistic":
            out["method_note"] = PROBABILISTIC_NOTE
        if self.labels is not None:
            out["accuracy_reference"] = float(np.mean(self.reference_class == self.labels))
            out["accuracy_low"] = float(np.mean(predicted_class(self.y_low) == self.labels))
        out.update(self.extra)
        return out

    def samples(self) -> list[dict[str, Any]]:
        cert, flips, tol, delta = self.certified, self.flipped, self.tolerance, self.observed_delta
        k, m = self.reference_class, self.margin
        return [
            {
                "index": i,
                "reference_class": int(k[i]),
                "tolerance": float(tol[i]),
                "bound": m[i].tolist(),
                "certified": bool(cert[i]),
                "observed_delta": float(delta[i]),
                "flipped": bool(flips[i]),
            }
            for i in range(len(k))
        ]

    def layer_shares(self) -> LayerShares:
        """Each layer's part of B per input and output; see :mod:`fperr.layer_shares`.
        Needs a breakdown of every input: a result of ``certify(..., cascade=False)``."""
        if self.cascaded:
            raise FperrInputError("per-layer shares need every input's breakdown: "
                                  "certify(..., cascade=False) (fperr bound --per-layer)")
        return LayerShares.from_bounds(self.bounds)

    def to_dict(self, per_layer: bool = False) -> dict[str, Any]:
        """Summary and samples; ``per_layer`` adds each layer's share of the bound
        (``"per_layer"``) and, per sample, each layer's part of max_k B_k."""
        out: dict[str, Any] = {"summary": self.summary(), "samples": self.samples()}
        if per_layer:
            shares = self.layer_shares()
            out["per_layer"] = shares.to_dict()
            for sample, parts in zip(out["samples"], shares.sample_lists(), strict=True):
                sample["per_layer"] = parts
        return out

    def text(self, per_layer: bool = False) -> str:
        s = self.summary()
        unc = s["uncertified"]
        lines = [
            f"model            {s['model']}",
            f"low              {describe_arithmetic(self.bounds.low_arith)}",
            f"reference        {describe_arithmetic(self.bounds.reference_arith)}",
            f"method           {s['method']}, on {s['on']}",
            f"inputs           {s['inputs']}",
            f"certified        {s['certified']} ({100 * s['certified_fraction']:.2f}%)"
            f"; by Gamma > 2 max B alone: {s['certified_simple']}",
            f"observed flips   {s['observed_flips']}"
            f" (certified and flipped: {s['certified_flips']})",
            f"median tolerance {s['median_tolerance']:.4g}   median bound {s['median_bound']:.4g}"
            f"   median observed delta {s['median_observed_delta']:.4g}"
            + ("\n                 (the cascade's: an input decided early keeps its cheap"
               " bound; --no-cascade bounds every input sharply)" if self.cascaded else ""),
            f"worst layer      {s['worst_layer']}"
            f" ({100 * s['worst_layer_share']:.0f}% of the bound)" + _exact_note(s),
        ]
        if "accuracy_reference" in s:
            lines.append(
                f"accuracy         reference {s['accuracy_reference']:.4f},"
                f" low {s['accuracy_low']:.4f}"
            )
        if s["method"] == "probabilistic":
            lines.append(f"failure prob.    <= {s['failure_probability']:.2g} per input in total"
                         " (1 - confidence; the low and the reference run get half each),"
                         " under the model of independent rounding errors")  # fmt: skip
            lines.append("NOTE             a model, not a certificate: rigorous only under"
                         " stochastic rounding (Connolly, Higham & Mary 2021)")  # fmt: skip
        if unc:
            lines += _uncertified_lines(s)
        if per_layer:
            lines += self.layer_shares().text_lines()
        return "\n".join(lines)

    def __repr__(self) -> str:
        s = self.summary()
        return (
            f"CertifyResult({s['model']!r}: {s['certified']}/{s['inputs']} certified, "
            f"{s['observed_flips']} observed flips, method={s['method']})"
        )

    def _repr_html_(self) -> str:
        """Notebook view: accuracy, counts, formatted numbers, the uncertified inputs."""
        from .certify_view import html_report

        return html_report(self)

    def plot(self, first: int = 30) -> Any:
        """A matplotlib Figure: tolerance vs bound per input, and each layer's share of
        the bound (at most ``first`` layers shown).  Imports matplotlib on call."""
        from .certify_view import plot

        return plot(self, first)


def _shown(indices: list[int], first: int = 20) -> str:
    return ", ".join(map(str, indices[:first])) + (" ..." if len(indices) > first else "")


def _exact_note(s: Mapping[str, Any]) -> str:
    share = s["exact_layers_share"]
    if share < 0.05:
        return ""
    return (f"; {100 * share:.0f}% sits in layers that do no arithmetic (the remainder of"
            " nonlinearities applied to upstream errors)")  # fmt: skip


def _uncertified_lines(s: Mapping[str, Any]) -> list[str]:
    """Uncertified inputs, split by cause: binary32's own error bound already reaches the
    margin (a near tie no low precision can certify) or the low-precision run."""
    ref, low = s["uncertified_reference_limited"], s["uncertified_low_limited"]
    lines = [f"uncertified      {len(ref) + len(low)}: {len(ref)} near ties that binary32 itself"
             f" cannot settle (y_k - y_j <= 2 B_ref), {len(low)} because of the low-precision"
             " run"]  # fmt: skip
    if ref:
        lines.append(f"  near ties      {_shown(ref)}")
    if low:
        lines.append(f"  low precision  {_shown(low)}")
    return lines


def certify(
    model: Model,
    X: npt.ArrayLike,
    labels: npt.ArrayLike | None = None,
    low: Emulated | None = None,
    reference: Emulated | None = None,
    *,
    method: str = "deterministic",
    confidence: float = 0.999,
    on: str = "logits",
    keep: Mapping[int, Emulated] | None = None,
    progress: Callable[[int], None] | None = None,
    engine: str = "auto",
    cascade: bool = True,
    ranges: str = "sharpened",
    backend: str | None = None,
    device: str | None = None,
) -> CertifyResult:
    """Certify per input that the low-precision run predicts the reference class.

    ``cascade`` (default) bounds every input cheaply first and spends the
    sharp ``engine`` (see :func:`fperr.bounds.bound_run`) only on inputs the
    cheap bound leaves undecided (:mod:`fperr.bounds.cascade`); their bounds
    are then the smaller of the two, and inputs decided by the cheap bound
    have no per-layer breakdown (``cascade=False`` gives every input one).
    ``ranges``: the backward engine's ranges (see :func:`fperr.bounds.bound_run`;
    ``"interval"`` is cheapest, ``"sharpened"`` the default, ``"unstable"`` and
    ``"full"`` the sharp ones deep CNNs need; with ``"unstable"``, the cascade and
    the deterministic method, inputs left undecided get full ranges too).

    ``on="softmax"`` certifies on softmax probabilities (the softmax error is
    bounded too); the default certifies on logits.  ``keep`` runs some layers
    of the low-precision run in another arithmetic (see :func:`suggest_fp32`).
    With ``method="probabilistic"``, ``1 - confidence`` is the failure
    probability per input in total (each run gets half).  ``progress`` is
    called with the number of inputs of each bounded batch (2 N in all).
    ``backend`` and ``device``: where the backward rows live (``"numpy"``, or
    ``"torch"`` on ``"cpu"`` or ``"cuda"``; see :func:`fperr.bounds.bound_run`).
    A dask array ``X`` is certified block by block (:mod:`fperr.distributed`).
    """
    if type(X).__module__.startswith("dask.array"):  # dask: one certify per block of rows
        if resolve_backend(backend, device)[0] != "numpy":
            raise FperrInputError("dask arrays are certified on the numpy backend")
        from .distributed.arrays import certify_dask

        return certify_dask(model, X, labels, low, reference, method=method,
                            confidence=confidence, on=on, keep=keep, progress=progress,
                            engine=engine, cascade=cascade, ranges=ranges)  # fmt: skip
    if on not in ("logits", "softmax"):
        raise FperrInputError(f"outputs to certify must be 'logits' or 'softmax', got {on!r}")
    if on == "softmax" and not isinstance(model.layers[-1], Softmax):
        model = model.appended(Softmax())
    if cascade:
        b = cascade_bound(model, X, low, reference, certified_sharp, method=method,
                          confidence=confidence, keep=keep, progress=progress, engine=engine,
                          ranges=ranges, backend=backend, device=device)  # fmt: skip
    else:
        b = bound(model, X, low, reference, method=method, confidence=confidence, keep=keep,
                  progress=progress, engine=engine, ranges=ranges, backend=backend,
                  device=device)  # fmt: skip
    lab = None if labels is None else np.asarray(labels, dtype=np.int64)
    if lab is not None and lab.shape[0] != b.low.output.shape[0]:
        raise FperrInputError(f"{lab.shape[0]} labels for {b.low.output.shape[0]} inputs")
    return CertifyResult(model.name, b, b.reference.output, b.low.output, lab, on,
                         cascaded=cascade)  # fmt: skip


_EXACT_LAYERS = ("relu", "relu6", "maxpool2d", "flatten", "reshape", "dropout", "concat")


@dataclass(frozen=True)
class Suggestion:
    """Layers to keep in binary32 so that (a fraction of) the inputs certify."""

    layers: list[int]
    layer_names: list[str]
    certified_before: float
    certified_after: float
    steps: list[tuple[str, float]]  # (layer added, certified fraction after it)
    result: CertifyResult
    target: float = 1.0
    reason: str = ""  # why the target is out of reach ("" when it is reached)

    def text(self) -> str:
        if not self.layers:
            line = "suggest-fp32: nothing to keep in binary32"
        else:
            path = ", ".join(f"+{n}: {100 * f:.2f}%" for n, f in self.steps)
            line = (f"suggest-fp32: keep {', '.join(self.layer_names)} in binary32 -> certified "
                    f"{100 * self.certified_before:.2f}% -> {100 * self.certified_after:.2f}%"
                    f" ({path})")  # fmt: skip
        if self.reason:
            line += (f"\nsuggest-fp32: the target {100 * self.target:.2f}% cannot be reached:"
                     f" {self.reason}")  # fmt: skip
        return line

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "layer_names": self.layer_names,
            "certified_before": self.certified_before,
            "certified_after": self.certified_after,
            "steps": [list(s) for s in self.steps],
            "target": self.target,
            "target_reached": not self.reason,
            "reason": self.reason,
        }


def suggest_fp32(
    model: Model,
    X: npt.ArrayLike,
    target: float = 1.0,
    *,
    low: Emulated | None = None,
    reference: Emulated | None = None,
    method: str = "deterministic",
    confidence: float = 0.999,
    on: str = "logits",
) -> Suggestion:
    """Greedy search over every layer that rounds: at each step, keep in binary32 the
    one layer that certifies most of the inputs still uncertified (ties: the one that
    lowers their bounds most), until a ``target`` fraction is certified.

    Every candidate is tried (on the uncertified inputs only: an input's bound does
    not depend on the others), so layers whose errors reach the bound only through a
    remainder downstream (a relu, a maxpool) are found too.  Layers that do no
    arithmetic are not candidates, except layer 0, which also sets the storage of the
    input.  The result is a certificate of the suggested mixed-precision model;
    greedy is not guaranteed minimal.  When the target is out of reach the
    Suggestion's ``reason`` says why (near ties binary32 itself cannot settle, or
    no further layer helps).
    """
    low = low or Emulated.from_names("binary16", "binary32")
    # the low run's kernel, with values stored in the reference's format
    fp32 = replace(low, storage=reference.storage if reference else low.accumulate, operand=None)
    x = np.asarray(X, dtype=np.float64)

    def run(keep: Mapping[int, Emulated], rows: npt.NDArray[np.intp] | None = None
            ) -> CertifyResult:  # fmt: skip
        return certify(model, x if rows is None else x[rows], None, low, reference,
                       method=method, confidence=confidence, on=on,
                       keep=dict(keep) or None)  # fmt: skip

    res = run({})
    before = float(res.certified.mean())
    candidates = [i for i, layer in enumerate(model.layers)
                  if i == 0 or layer.type not in _EXACT_LAYERS]  # fmt: skip
    keep: dict[int, Emulated] = {}
    steps: list[tuple[str, float]] = []
    while res.certified.mean() < target:
        open_ = np.flatnonzero(~res.certified & ~res.reference_limited)
        tried = [c for c in candidates if c not in keep]
        best = _best_layer(run, keep, fp32, tried, open_, res.margin[open_]) if open_.size else None
        if best is None:
            break
        keep[best] = fp32
        res = run(keep)
        steps.append((_kept_name(res, model, best), float(res.certified.mean())))
    reason = "" if res.certified.mean() >= target else _out_of_reach(res, keep, candidates)
    layers = sorted(keep)
    return Suggestion(layers, [_kept_name(res, model, i) for i in layers], before,
                      float(res.certified.mean()), steps, res, target, reason)  # fmt: skip


def _kept_name(res: CertifyResult, model: Model, i: int) -> str:
    name = res.bounds.layer_names[i + 1]
    return name if model.layers[i].type not in _EXACT_LAYERS else f"{name} (input storage)"


def _best_layer(
    run: Callable[..., CertifyResult],
    keep: Mapping[int, Emulated],
    fp32: Emulated,
    tried: list[int],
    rows: npt.NDArray[np.intp],
    margin: Array,
) -> int | None:
    """The candidate that, kept in binary32, certifies most of ``rows`` (ties: the
    smallest median ratio of new to old max_k M_k); None if none helps at all."""
    old = margin.max(axis=1)
    best, best_key = None, (0, -1.0 + 1e-3)  # must certify one more, or lower bounds
    for c in tried:
        r = run({**keep, c: fp32}, rows)
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = np.where(np.isfinite(old), r.margin.max(axis=1) / old, 1.0)
        key = (int(r.certified.sum()), -float(np.median(np.nan_to_num(ratio, nan=1.0))))
        if key > best_key:
            best, best_key = c, key
    return best


def _out_of_reach(res: CertifyResult, keep: Mapping[int, Emulated], candidates: list[int]) -> str:
    """Why the uncertified inputs stay so, in words."""
    unc = ~res.certified
    # an infinite reference radius (a run that may overflow, an unbounded layer) is no tie
    inf_ref = unc & ~np.isfinite(res.bounds.reference.radius).all(axis=1)
    ties = int((unc & res.reference_limited & ~inf_ref).sum())
    rest = int(unc.sum()) - ties - int(inf_ref.sum())
    parts = []
    if inf_ref.any():
        parts.append(f"{int(inf_ref.sum())} have an infinite binary32 reference bound (the "
                     "reference run may overflow); no layer kept in binary32 changes it")
    if ties:
        most = 1 - float(res.reference_limited.mean())
        parts.append(f"{ties} of the remaining uncertified inputs are near ties the binary32 "
                     "reference cannot settle (y_k - y_j <= 2 B_ref: no layer kept in binary32 "
                     f"certifies them; at most {100 * most:.2f}% can be certified)")  # fmt: skip
    if rest and all(c in keep for c in candidates):
        parts.append(f"{rest} stay uncertified with every layer that rounds kept in binary32")
    elif rest:
        parts.append(f"no further layer kept in binary32 certifies any of the other {rest} "
                     "or lowers their bounds")  # fmt: skip
    return "; ".join(parts)
