"""How a :class:`~fperr.certify.CertifyResult` looks in a notebook: an HTML summary and a
matplotlib figure.  matplotlib is imported only when a figure is drawn."""

from __future__ import annotations

import html
import io
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

    from .certify import CertifyResult

__all__ = ["html_report", "plot"]

_CERTIFIED, _LOW, _TIE = "#3f90da", "#e76300", "#b2182b"


def _g(v: float) -> str:
    return f"{v:.4g}"


def _summary_rows(r: CertifyResult, s: dict[str, Any]) -> list[tuple[str, str]]:
    from .certify import describe_arithmetic

    n = s["inputs"]
    rows = [
        ("model", s["model"]),
        ("low", describe_arithmetic(r.bounds.low_arith)),
        ("reference", describe_arithmetic(r.bounds.reference_arith)),
        ("method", f"{s['method']}, on {s['on']}"),
        ("certified", f"{s['certified']} of {n} ({100 * s['certified_fraction']:.2f}%)"),
        ("by Γ > 2 max B alone", str(s["certified_simple"])),
    ]
    if "accuracy_reference" in s:
        rows.append(("accuracy", f"reference {100 * s['accuracy_reference']:.2f}%, "
                                 f"low {100 * s['accuracy_low']:.2f}%"))  # fmt: skip
    rows += [
        ("observed flips", f"{s['observed_flips']} (certified and flipped: "
                           f"{s['certified_flips']})"),  # fmt: skip
        ("median tolerance Γ", _g(s["median_tolerance"])),
        ("median bound", _g(s["median_bound"])),
        ("median observed delta", _g(s["median_observed_delta"])),
        ("worst layer", f"{s['worst_layer']} ({100 * s['worst_layer_share']:.0f}% of the bound)"),
    ]
    if s["method"] == "probabilistic":
        rows.append(("failure probability", f"≤ {s['failure_probability']:.2g} per input in "
                     "total (each run half); a model, not a certificate"))  # fmt: skip
    return rows


def _uncertified_table(r: CertifyResult, s: dict[str, Any], first: int) -> str:
    ref, low = s["uncertified_reference_limited"], s["uncertified_low_limited"]
    if not ref and not low:
        return "<p>every input is certified</p>"
    idx = sorted(ref + low)
    tol, bnd, k = r.tolerance, 2 * r.margin.max(axis=1), r.reference_class
    tie = set(ref)
    body = "".join(
        f"<tr><td>{i}</td><td>{k[i]}</td><td>{_g(tol[i])}</td><td>{_g(bnd[i])}</td>"
        f"<td>{'near tie: binary32 cannot settle it' if i in tie else 'low precision'}</td></tr>"
        for i in idx[:first]
    )
    more = f"<p>... and {len(idx) - first} more (see .summary())</p>" if len(idx) > first else ""
    return (
        f"<p>uncertified: {len(idx)} &mdash; {len(ref)} near ties that binary32 itself cannot "
        f"settle (y<sub>k</sub> &minus; y<sub>j</sub> &le; 2 B<sub>ref</sub>), {len(low)} because"
        " of the low-precision run</p>"
        "<table><tr><th>input</th><th>class</th><th>tolerance Γ</th><th>2 max B</th>"
        f"<th>cause</th></tr>{body}</table>{more}"
    )


def html_report(r: CertifyResult, first: int = 20) -> str:
    """The summary as a table, then the first ``first`` uncertified inputs with their cause."""
    s = r.summary()
    rows = "".join(
        f"<tr><th style='text-align:left'>{html.escape(k)}</th><td style='text-align:left'>"
        f"{html.escape(v)}</td></tr>"
        for k, v in _summary_rows(r, s)
    )
    return (
        f"<div><table><caption>fperr certificate</caption>{rows}</table>"
        f"{_uncertified_table(r, s, first)}"
        "<p><code>result.plot()</code> draws tolerance against bound and the per-layer shares"
        "</p></div>"
    )


def plot(r: CertifyResult, first: int = 30) -> Figure:
    """Left: tolerance Γ against 2 max_j B_j per input (log-log), certified or not and why;
    right: each layer's median share of the bound.  A Figure, not drawn on any pyplot
    state (save it with ``fig.savefig``; a notebook shows it, once, as the cell's value)."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        from .errors import FperrInputError

        raise FperrInputError("result.plot() needs matplotlib (pip install matplotlib)") from None
    class CertificateFigure(Figure):
        """A Figure that shows itself in a notebook without pyplot's inline backend."""

        def _repr_png_(self) -> bytes:
            buf = io.BytesIO()
            self.savefig(buf, format="png", dpi=90)
            return buf.getvalue()

    fig = CertificateFigure(figsize=(11, 4.2), layout="constrained")
    ax_s, ax_l = fig.subplots(1, 2, width_ratios=(1, 1.3))
    _scatter(ax_s, r)
    _layers(ax_l, r, first)
    return fig


def _scatter(ax: Any, r: CertifyResult) -> None:
    tol, bnd = r.tolerance, 2 * r.margin.max(axis=1)
    shown = (tol > 0) & (bnd > 0) & np.isfinite(bnd)
    cert, tie = r.certified, r.reference_limited & ~r.certified
    groups = (
        (cert, _CERTIFIED, "o", "certified"),
        (~cert & ~tie, _LOW, "o", "not certified: low-precision run"),
        (tie, _TIE, "x", "not certified: near tie binary32 cannot settle"),
    )
    for mask, color, marker, label in groups:
        m = mask & shown
        ax.scatter(bnd[m], tol[m], s=8, c=color, marker=marker, label=f"{label} ({int(m.sum())})")
    if shown.any():
        lo = float(min(bnd[shown].min(), tol[shown].min()))
        hi = float(max(bnd[shown].max(), tol[shown].max()))
        ax.plot([lo, hi], [lo, hi], color="0.5", ls="--", lw=1, label="Γ = 2 max B")
        ax.set_xscale("log")
        ax.set_yscale("log")
    ax.set_xlabel("bound 2 max_j B_j")
    ax.set_ylabel("tolerance Γ = y(1) − y(2)")
    hidden = int((~shown).sum())
    extra = f" ({hidden} with Γ = 0 or B = inf not shown)" if hidden else ""
    ax.set_title(f"{r.model_name}: {int(cert.sum())} of {cert.size} certified{extra}",
                 fontsize=10)  # fmt: skip
    ax.legend(fontsize=8, loc="best")


def _layers(ax: Any, r: CertifyResult, first: int) -> None:
    share, exact = r.worst_layer_share, r.exact_layer
    names = r.bounds.layer_names
    idx = np.arange(len(names))
    if len(idx) > first:  # the largest shares, in model order
        idx = np.sort(np.argsort(-share, kind="stable")[:first])
    rounds = idx[~exact[idx]]
    remainder = idx[exact[idx]]
    pos = {int(j): p for p, j in enumerate(idx)}
    ax.bar([pos[int(j)] for j in rounds], 100 * share[rounds], color=_CERTIFIED,
           label="rounds (storage, products, sums)")  # fmt: skip
    if remainder.size:
        ax.bar([pos[int(j)] for j in remainder], 100 * share[remainder], color="0.75",
               hatch="//", label="no arithmetic: remainder of upstream errors")  # fmt: skip
    ax.set_xticks(range(len(idx)), [names[j] for j in idx], rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("median share of max_k B_k (%)")
    name, worst = r.worst_layer()
    ax.set_title(f"per-layer share of the bound (worst: {name}, {100 * worst:.0f}%)",
                 fontsize=10)  # fmt: skip
    ax.legend(fontsize=8)
