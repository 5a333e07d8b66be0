"""Classification tolerance against output error, per input.

For each digits input, the tolerance Gamma = y_(1) - y_(2) of the binary32
reference logits is drawn twice: against the observed delta
max_k |y16_k - y32_k| (emulated binary16 storage with binary32 accumulation,
against binary32), and against the certified bound max_k M_k (the margin of
:class:`fperr.certify.CertifyResult`).  Above the line Gamma = 2 delta a
perturbation of size delta cannot change the class (the seed paper's
condition); the certificate uses the sharper per-class test y_k - y_j > M_k +
M_j, so bound points slightly below the line can be certified too.  Inputs with
delta = 0 or Gamma = 0 cannot be drawn on log axes and are counted in the
panel title instead, with the certified inputs and the observed flips.

    python -m paper_figures.fig_tolerance [OUT_DIR] [--small]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from fperr.certify import CertifyResult

from . import data, style

STEM = "fig_tolerance"
MODELS = ("mlp", "cnn")


def _decades(v: np.ndarray) -> tuple[float, float]:
    """The whole decades around the positive finite values ``v``."""
    v = v[np.isfinite(v) & (v > 0)]
    return 10.0 ** np.floor(np.log10(v.min())), 10.0 ** np.ceil(np.log10(v.max()))


def _panel(r: CertifyResult) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """Tolerance, certified, flipped per input and the line's factor (Gamma = factor delta).

    One output (a single logit, its sign the class): the tolerance is |y|, the
    distance to the decision threshold 0, an input is certified when |y| > M
    and flipped when the low-precision sign differs; the line is Gamma = delta.
    """
    if r.y_ref.shape[1] == 1:
        y, low, m = r.y_ref[:, 0], r.y_low[:, 0], r.margin[:, 0]
        return np.abs(y), np.abs(y) > m, np.sign(low) != np.sign(y), 1.0
    return r.tolerance, r.certified, r.flipped, 2.0


def _limits(results: Iterable[CertifyResult]) -> tuple[tuple[float, float], ...]:
    """Shared axis limits: x over observed deltas and bounds, y over tolerances."""
    rs = list(results)
    xs = np.concatenate([np.r_[r.observed_delta, r.margin.max(axis=1)] for r in rs])
    ys = np.concatenate([_panel(r)[0] for r in rs])
    return _decades(xs), _decades(ys)


def make(out_dir: Path, small: bool = False, models: Sequence[str] = MODELS) -> list[Path]:
    """Draw the figure of ``models`` (:mod:`~paper_figures.data` keys) into
    ``out_dir``; return the PDF and PNG paths."""
    results = {m: data.certificate(m, data.inputs_for(m, small)) for m in models}
    (x_lo, x_hi), (y_lo, y_hi) = _limits(results.values())
    with style.context(ncols=len(results)):
        c = style.colors()
        fig, axes = style.figure(1, len(results), height=2.2, sharey=True)
        axes = np.atleast_1d(axes)
        for ax, (name, res) in zip(axes, results.items(), strict=True):
            tol, cert, flips, factor = _panel(res)
            delta = res.observed_delta
            bnd = res.margin.max(axis=1)
            ok_t = tol > 0
            ok_d = ok_t & (delta > 0)
            ok_b = ok_t & np.isfinite(bnd) & (bnd > 0)
            ax.scatter(delta[ok_d], tol[ok_d], s=2, marker="o", lw=0, color=c[3], alpha=0.6,
                       label="observed $\\delta$", rasterized=True)  # fmt: skip
            sel = ok_b & cert
            ax.scatter(bnd[sel], tol[sel], s=2, marker="o", lw=0, color=c[0], alpha=0.7,
                       label="bound, certified", rasterized=True)  # fmt: skip
            sel = ok_b & ~cert
            ax.scatter(bnd[sel], tol[sel], s=10, marker="x", lw=0.7, color=c[2],
                       label="bound, not certified")  # fmt: skip
            ax.scatter(delta[flips & ok_d], tol[flips & ok_d], s=12, marker="D",
                       facecolor="none", edgecolor="k", lw=0.6, label="observed flip")  # fmt: skip
            grid = np.array([min(x_lo, y_lo / 2), max(x_hi, y_hi)])
            line = "$\\Gamma = 2\\delta$" if factor == 2 else "$\\Gamma = \\delta$ (one logit)"
            ax.plot(grid, factor * grid, color="k", lw=0.6, ls="--", label=line)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlim(x_lo, x_hi)
            ax.set_ylim(y_lo, y_hi)
            n = res.y_ref.shape[0]
            hidden = int((~ok_d).sum())
            note = f", {hidden} at 0 not drawn" if hidden else ""
            ax.set_title(
                f"{data.MODELS[name]}: {int(cert.sum())}/{n} certified,\n"
                f"{int(flips.sum())} flipped{note}"
            )
            ax.set_xlabel("observed $\\delta$ or bound $\\mathrm{max}_k M_k$")
            ax.grid(True, which="major")
        single = all(r.y_ref.shape[1] == 1 for r in results.values())
        axes[0].set_ylabel("tolerance $\\Gamma = |y|$ (one logit)" if single
                           else "tolerance $\\Gamma = y_{(1)} - y_{(2)}$")  # fmt: skip
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=3, markerscale=2,
                   handletextpad=0.3, columnspacing=1.0)  # fmt: skip
        paths = style.save(fig, out_dir, STEM)
    return paths


if __name__ == "__main__":
    from ._cli import main

    main(make)
