"""Error growth of dot products with their length n.

Random dot products x^T y with x_i, y_i uniform in [0, 1] (left panel) or
[-1, 1] (right panel), rounded to binary16, are summed recursively (left to
right) with every product and partial sum rounded to binary16 ("fp16
accumulation") or to binary32 ("fp32 accumulation", exact products),
emulated exactly by
:func:`fperr.accumulation.dot`.  The relative error
|fl(x^T y) - x^T y| / (|x|^T |y|) against the exact value (``math.fsum`` of
the float64 products, which are exact) is compared with

* the deterministic bound gamma_n(u) = n u / (1 - n u) (Higham 2002, eq.
  3.11), infinite once n u >= 1, and
* the probabilistic bound lambda sqrt(n) u of Higham & Mary (2019, Thm 3.1)
  to first order, with lambda = ``fperr.bounds.lambda_for(0.999, n) / (1 - u)``
  (so that 1 - 2n exp(-lambda^2 (1 - u)^2 / 2) = 0.999): it holds for all n
  partial sums with probability at least 0.999 under their model of
  independent, mean-zero rounding errors.

With nonnegative data the partial sums grow like n and the error like
sqrt(n) u (until, with fp16 accumulation, the partial sums outgrow the
terms: stagnation, where the independence model fails); with mean-zero data
the partial sums grow like sqrt(n) only and the error relative to
|x|^T |y| stays near u for every n (Higham & Mary, SIAM J. Sci. Comput. 42,
2020).

    python -m paper_figures.fig_error_growth [OUT_DIR] [--small]
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from fperr import formats
from fperr.bounds import lambda_for
from fperr.formats import get_format

from . import style

STEM = "fig_error_growth"
SEED = 20190101
DATA = {"nonnegative": (0.0, 1.0), "mean zero": (-1.0, 1.0)}
CONFIDENCE = 0.999
ACCUMULATORS = ("binary16", "binary32")
LABELS = {"binary16": "fp16 accumulation", "binary32": "fp32 accumulation"}

Array = npt.NDArray[np.float64]


class Growth(NamedTuple):
    n: npt.NDArray[np.int64]
    worst: dict[str, Array]  # accumulator -> (len(n),) largest relative error
    mean: dict[str, Array]  # accumulator -> (len(n),) mean relative error
    trials: int


def lengths(small: bool) -> npt.NDArray[np.int64]:
    return 2 ** np.arange(4, 13, 2) if small else 2 ** np.arange(4, 15)


def recursive_dot(x: Array, y: Array, accumulate: str) -> Array:
    """Row-wise x^T y summed left to right in ``accumulate`` (products rounded
    to it too); ``x``, ``y`` must be binary16 numbers."""
    try:
        from fperr.accumulation import AccumulationModel, dot
    except ImportError:  # pragma: no cover - numpy's own float16/float32 loops
        dt = np.float16 if accumulate == "binary16" else np.float32
        p = (x.astype(dt) * y.astype(dt)).astype(dt)
        return np.asarray(np.add.accumulate(p, axis=1, dtype=dt)[:, -1], np.float64)
    # storage = accumulate: the result is not rounded once more at the end
    fmt = get_format(accumulate)
    model = AccumulationModel(fmt, fmt, "sequential")
    return np.asarray(dot(x, y, model), np.float64)


def measure(lo: float, hi: float, small: bool = False) -> Growth:
    """Relative errors of ``trials`` dot products per length, data uniform in [lo, hi]."""
    ns = lengths(small)
    trials = 40 if small else 200
    rng = np.random.default_rng(SEED)
    half = get_format("binary16")
    worst: dict[str, list[float]] = {a: [] for a in ACCUMULATORS}
    mean: dict[str, list[float]] = {a: [] for a in ACCUMULATORS}
    from fperr.rounding import round as fround

    for n in ns:
        x = fround(rng.uniform(lo, hi, (trials, int(n))), half)
        y = fround(rng.uniform(lo, hi, (trials, int(n))), half)
        prod = x * y  # exact in float64: 11-bit significands
        exact = np.array([math.fsum(row) for row in prod])
        scale = np.abs(prod).sum(axis=1)
        for acc in ACCUMULATORS:
            rel = np.abs(recursive_dot(x, y, acc) - exact) / scale
            worst[acc].append(float(rel.max()))
            mean[acc].append(float(rel.mean()))
    return Growth(
        ns,
        {a: np.array(v) for a, v in worst.items()},
        {a: np.array(v) for a, v in mean.items()},
        trials,
    )


def gamma(n: Array, u: float) -> Array:
    """gamma_n(u) (:func:`fperr.formats.gamma`) per n; NaN (not drawn) where n u >= 1."""
    g = np.array([formats.gamma(float(k), u) for k in np.ravel(n)]).reshape(np.shape(n))
    return np.where(np.isfinite(g), g, np.nan)


def hm_lambda(n: int, u: float) -> float:
    """lambda with 1 - 2n exp(-lambda^2 (1 - u)^2 / 2) >= CONFIDENCE (Higham & Mary):
    ``fperr.bounds.lambda_for`` solves it without the (1 - u)^2."""
    return lambda_for(CONFIDENCE, n) / (1 - u)


def probabilistic(n: Array, u: float) -> Array:
    """lambda sqrt(n) u, lambda for ``CONFIDENCE`` over n partial sums."""
    lam = np.array([hm_lambda(int(k), u) for k in n])
    return lam * np.sqrt(n) * u


def make(out_dir: Path, small: bool = False) -> list[Path]:
    """Draw the figure into ``out_dir``; return the PDF and PNG paths."""
    growth = {k: measure(lo, hi, small) for k, (lo, hi) in DATA.items()}
    ns = lengths(small)
    fine = 2.0 ** np.linspace(math.log2(ns[0]), math.log2(ns[-1]), 200)
    with style.context(ncols=2):
        c = style.colors()
        fig, axes = style.figure(1, 2, height=2.6, sharey=True)
        for ax, (kind, g) in zip(axes, growth.items(), strict=True):
            for acc, col in zip(ACCUMULATORS, (c[2], c[0]), strict=True):
                u = get_format(acc).u
                lab = LABELS[acc]
                ax.plot(fine, gamma(fine, u), color=col, ls="-", lw=0.9,
                        label=f"{lab}: $\\gamma_n(u)$")  # fmt: skip
                ax.plot(fine, probabilistic(fine, u), color=col, ls="--", lw=0.9,
                        label=f"{lab}: $\\lambda\\sqrt{{n}}\\,u$")  # fmt: skip
                worst = np.where(g.worst[acc] > 0, g.worst[acc], np.nan)
                mean = np.where(g.mean[acc] > 0, g.mean[acc], np.nan)
                ax.plot(g.n, worst, color=col, ls="none", marker="o", ms=2.5,
                        label=f"{lab}: observed max")  # fmt: skip
                ax.plot(g.n, mean, color=col, ls="none", marker="o", ms=2.5, mfc="white",
                        mew=0.6, label=f"{lab}: observed mean")  # fmt: skip
            lo, hi = DATA[kind]
            ax.set_title(f"{kind}: $x_i, y_i \\sim U[{lo:g}, {hi:g}]$")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set_ylim(1e-9, 2.0)
            ax.set_xlabel("dot-product length $n$")
            ax.grid(True, which="major")
        axes[0].set_ylabel("$|\\widehat{s} - s| \\,/\\, |x|^T|y|$")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=2, handlelength=2.0,
                   columnspacing=1.0)  # fmt: skip
        paths = style.save(fig, out_dir, STEM)
    return paths


if __name__ == "__main__":
    from ._cli import main

    main(make)
