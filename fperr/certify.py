"""Classification-tolerance certificates (Yun et al. 2023, Lemma; sharpened).

For an input with reference output y (binary32 run) and a componentwise bound
M on how far any low-precision or reference run can be from y, the predicted
class k = argmax y is certain for every run iff

    y_k - y_j > M_k + M_j   for every j != k          (sharper condition)

which the seed paper's condition  Gamma = y_(1) - y_(2) > 2 max_j M_j  implies.
M = max(B, 2 R_ref) with B = R_low + R_ref: every run lies within its radius
of the exact output, and the exact output within R_ref of y.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from .arith import Emulated
from .bounds import PROBABILISTIC_NOTE, BoundResult, bound
from .errors import FperrInputError
from .layers import Softmax
from .model import Model

Array = npt.NDArray[np.float64]


def tolerance(y: Array) -> Array:
    """Gamma = top-1 minus top-2 output, per row; inf with one output (no rival class)."""
    if y.shape[1] < 2:
        return np.full(y.shape[0], np.inf)
    top2 = np.sort(y, axis=1)[:, -2:]
    return top2[:, 1] - top2[:, 0]


def certified_sharp(y: Array, margin: Array) -> npt.NDArray[np.bool_]:
    """y_k - y_j > M_k + M_j for all j != k, k = argmax y (strict: ties may flip)."""
    k = np.argmax(y, axis=1)
    rows = np.arange(y.shape[0])
    gap = y[rows, k][:, None] - y - (margin[rows, k][:, None] + margin)
    gap[rows, k] = np.inf
    return np.asarray((gap > 0).all(axis=1))


def certified_simple(y: Array, margin: Array) -> npt.NDArray[np.bool_]:
    """The seed paper's lemma: Gamma > 2 max_j M_j (one output: always the same class)."""
    if y.shape[1] < 2:
        return np.ones(y.shape[0], dtype=bool)
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

    # -- per input ---------------------------------------------------------------
    @property
    def margin(self) -> Array:
        b = self.bounds
        return np.maximum(b.bound, 2 * b.reference.radius)

    @property
    def reference_class(self) -> npt.NDArray[np.int64]:
        return np.argmax(self.y_ref, axis=1)

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
        return np.asarray(np.argmax(self.y_low, axis=1) != self.reference_class)

    @property
    def reference_limited(self) -> npt.NDArray[np.bool_]:
        """Inputs that binary32 itself cannot settle: y_k - y_j <= 2 (R_ref,k + R_ref,j)
        for some j != k, R_ref the reference run's radius.  Even a low run in the
        reference arithmetic has M = 2 R_ref, so no low precision certifies these."""
        return ~certified_sharp(self.y_ref, 2 * self.bounds.reference.radius)

    @property
    def worst_layer_share(self) -> Array:
        """(L + 1,) median over inputs of each layer's share of max_k B_k."""
        b = self.bounds.bound
        k = np.argmax(b, axis=1)
        per = self.bounds.per_layer[np.arange(b.shape[0]), :, k]  # (N, L + 1)
        tot = per.sum(axis=1, keepdims=True)
        share = np.where(tot > 0, per / np.where(tot > 0, tot, 1), 0)
        return np.asarray(np.median(share, axis=0))

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
            out["accuracy_low"] = float(np.mean(np.argmax(self.y_low, axis=1) == self.labels))
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

    def to_dict(self) -> dict[str, Any]:
        return {"summary": self.summary(), "samples": self.samples()}

    def text(self) -> str:
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
            f"   median observed delta {s['median_observed_delta']:.4g}",
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
) -> CertifyResult:
    """Certify per input that the low-precision run predicts the reference class.

    ``on="softmax"`` certifies on softmax probabilities (the softmax error is
    bounded too); the default certifies on logits.  ``keep`` runs some layers
    of the low-precision run in another arithmetic (see :func:`suggest_fp32`).
    With ``method="probabilistic"``, ``1 - confidence`` is the failure
    probability per input in total (each run gets half).  ``progress`` is
    called with the number of inputs of each bounded batch (2 N in all).
    """
    if on not in ("logits", "softmax"):
        raise FperrInputError(f"outputs to certify must be 'logits' or 'softmax', got {on!r}")
    if on == "softmax" and not isinstance(model.layers[-1], Softmax):
        model = Model(model.name, model.input_shape, (*model.layers, Softmax()), model.data)
    b = bound(model, X, low, reference, method=method, confidence=confidence, keep=keep,
              progress=progress)  # fmt: skip
    lab = None if labels is None else np.asarray(labels, dtype=np.int64)
    if lab is not None and lab.shape[0] != b.low.output.shape[0]:
        raise FperrInputError(f"{lab.shape[0]} labels for {b.low.output.shape[0]} inputs")
    return CertifyResult(model.name, b, b.reference.output, b.low.output, lab, on)


_EXACT_LAYERS = ("relu", "maxpool2d", "flatten", "reshape", "dropout")


@dataclass(frozen=True)
class Suggestion:
    """Layers to keep in binary32 so that (a fraction of) the inputs certify."""

    layers: list[int]
    layer_names: list[str]
    certified_before: float
    certified_after: float
    steps: list[tuple[str, float]]  # (layer added, certified fraction after it)
    result: CertifyResult

    def text(self) -> str:
        if not self.layers:
            return "suggest-fp32: nothing to keep in binary32"
        path = ", ".join(f"+{n}: {100 * f:.2f}%" for n, f in self.steps)
        return (
            f"suggest-fp32: keep {', '.join(self.layer_names)} in binary32 -> certified "
            f"{100 * self.certified_before:.2f}% -> {100 * self.certified_after:.2f}% ({path})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "layer_names": self.layer_names,
            "certified_before": self.certified_before,
            "certified_after": self.certified_after,
            "steps": [list(s) for s in self.steps],
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
    """Greedy: keep in binary32 the layer contributing most to the bounds of
    the uncertified inputs, until a ``target`` fraction is certified.

    Each step re-runs the bound, so the result is itself a certificate of
    the suggested mixed-precision model.  Greedy is not guaranteed minimal.
    """
    low = low or Emulated.from_names("binary16", "binary32")
    # the low run's kernel, with values stored in the reference's format
    fp32 = replace(low, storage=reference.storage if reference else low.accumulate, operand=None)
    keep: dict[int, Emulated] = {}
    def run(keep: dict[int, Emulated] | None = None) -> CertifyResult:
        return certify(model, X, None, low, reference, method=method, confidence=confidence,
                       on=on, keep=keep)  # fmt: skip

    res = run()
    before = float(res.certified.mean())
    steps: list[tuple[str, float]] = []
    while res.certified.mean() < target and len(keep) < len(model.layers):
        unc = ~res.certified
        b = res.bounds.bound[unc]
        k = np.argmax(b, axis=1)
        per = res.bounds.per_layer[unc][np.arange(unc.sum()), :, k]  # (M, L + 1)
        score = np.median(per / np.maximum(per.sum(axis=1, keepdims=True), 1e-300), axis=0)
        score[0] = -1  # the input rounding is not a layer
        for i, layer in enumerate(model.layers):
            # exact layers (their share is a derivative remainder) gain nothing in fp32
            if i in keep or layer.type in _EXACT_LAYERS:
                score[i + 1] = -1
        best = int(np.argmax(score)) - 1
        if best < 0 or score[best + 1] <= 0:
            break
        keep[best] = fp32
        res = run(keep)
        steps.append((res.bounds.layer_names[best + 1], float(res.certified.mean())))
    names = [res.bounds.layer_names[i + 1] for i in sorted(keep)]
    return Suggestion(sorted(keep), names, before, float(res.certified.mean()), steps, res)
