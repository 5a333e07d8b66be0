"""The number lines of binary16, bfloat16 and binary32.

Top: the spacing of the format's numbers (one ulp) against their magnitude,
from the smallest subnormal to the largest finite number ``max`` (beyond it,
round to nearest overflows to infinity: the cross).  In the subnormal range
(dashed) the spacing stays at the smallest subnormal.  Bottom: the largest
relative error of rounding to nearest, half an ulp over the magnitude: at
most the unit roundoff u = 2^-p in the normal range (the saw-tooth between
u/2 and u, one tooth per binade: drawn as a band), growing to 1/2 at the smallest subnormal
in the subnormal range.  All constants come from :class:`fperr.Format`.

    python -m paper_figures.fig_number_line [OUT_DIR] [--small]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from fperr.formats import Format, get_format

from . import style

STEM = "fig_number_line"
FORMATS = ("binary16", "bfloat16", "binary32")

Array = npt.NDArray[np.float64]


class Line(NamedTuple):
    edges: Array  # binade boundaries, from the smallest subnormal to max
    spacing: Array  # spacing in each interval (len(edges) - 1)
    subnormal: int  # number of leading intervals in the subnormal range (0 or 1)


def number_line(fmt: Format) -> Line:
    """Intervals of constant spacing: the subnormal range, then each binade."""
    binades = np.arange(fmt.emin, fmt.emax + 1)
    edges = np.ldexp(1.0, np.append(binades, fmt.emax + 1).astype(int))
    edges[-1] = fmt.max  # the top binade ends at max ("fn" formats end lower)
    spacing = np.array([fmt.ulp(int(e)) for e in binades])
    if fmt.subnormals:
        edges = np.concatenate([[fmt.smallest_subnormal], edges])
        spacing = np.concatenate([[fmt.smallest_subnormal], spacing])
    return Line(edges, spacing, int(fmt.subnormals))


def relative_error(line: Line) -> tuple[Array, Array]:
    """Polyline of max |fl(x) - x| / |x| = spacing / (2 |x|) over each interval."""
    a, b = line.edges[:-1], line.edges[1:]
    x = np.column_stack([a, b]).ravel()
    y = np.column_stack([line.spacing / (2 * a), line.spacing / (2 * b)]).ravel()
    return x, y


def make(out_dir: Path, small: bool = False) -> list[Path]:
    """Draw the figure into ``out_dir``; return the PDF and PNG paths."""
    fmts = [get_format(f) for f in FORMATS]
    with style.context():
        c = style.colors()
        fig, (top, bottom) = style.figure(2, 1, height=3.0, sharex=True)
        for fmt, col in zip(fmts, (c[2], c[0], c[1]), strict=True):
            line = number_line(fmt)
            k = line.subnormal
            label = f"{fmt.name} ($p={fmt.p}$, $e_{{\\max}}={fmt.emax}$)"
            if k:
                top.stairs(line.spacing[:k], line.edges[: k + 1], color=col, ls="--", lw=0.9,
                           baseline=None)  # fmt: skip
            top.stairs(line.spacing[k:], line.edges[k:], color=col, lw=0.9, label=label,
                       baseline=None)  # fmt: skip
            top.plot([fmt.max], [line.spacing[-1]], marker="x", ms=4, mew=0.8, color=col)
            top.plot([fmt.smallest_normal], [line.spacing[k]], marker="|", ms=5, mew=0.8,
                     color=col)  # fmt: skip
            # subnormal range: one line; normal range: the saw-teeth fill [u/2, u]
            x, y = relative_error(line)
            bottom.plot(x[: 2 * k + 2], y[: 2 * k + 2], color=col, lw=0.7)
            bottom.fill_between([fmt.smallest_normal, fmt.max], fmt.u / 2, fmt.u, color=col,
                                alpha=0.35, lw=0)  # fmt: skip
            bottom.axhline(fmt.u, color=col, lw=0.7, ls=(0, (1, 1)))
            bottom.plot([fmt.max], [y[-1]], marker="x", ms=4, mew=0.8, color=col)
        top.set_yscale("log")
        top.yaxis.set_major_locator(_decade_locator(20))
        top.set_ylabel("spacing (ulp)")
        top.grid(True, which="major")
        top.legend(loc="upper left")
        top.set_title("dashed: subnormal range; |: smallest normal; ×: max")
        bottom.set_xscale("log")
        bottom.set_yscale("log")
        bottom.set_ylim(1e-8, 1.0)
        bottom.set_xlabel("magnitude $|x|$")
        bottom.set_ylabel("max. relative error\n$\\frac{1}{2}\\mathrm{ulp}(x) / |x|$ (dotted: $u$)")
        bottom.grid(True, which="major")
        lo = min(f.smallest_subnormal for f in fmts)
        hi = max(f.max for f in fmts)
        bottom.set_xlim(lo / 10, hi * 10)
        bottom.xaxis.set_major_locator(_decade_locator(10))
        paths = style.save(fig, out_dir, STEM)
    return paths


def _decade_locator(every: int) -> Any:
    from matplotlib.ticker import LogLocator

    return LogLocator(base=10.0**every)


if __name__ == "__main__":
    from ._cli import main

    main(make)
