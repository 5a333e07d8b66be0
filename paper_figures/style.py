"""One look for every paper figure, and byte-stable output.

* Size: tueplots' ICML 2024 bundle (one column 3.25 in, two columns 6.75 in),
  without LaTeX (``text.usetex`` off, so a build needs no TeX installation);
  serif text with STIX/DejaVu as fallbacks for the Times-like fonts tueplots
  names.
* Colours: matplotlib's colour-blind-safe "petroff10" style (Petroff 2021,
  arXiv:2107.02270), or the same ten colours hard-coded for matplotlib
  versions without it.
* Output: vector PDF (TrueType fonts, no Type 3) and a 300 dpi PNG, with
  time stamps and software versions left out of the metadata, so the same
  build gives the same bytes.  ``SOURCE_DATE_EPOCH`` is set (if unset) for
  the font subsetter's time stamps.

Figures are drawn on :class:`matplotlib.figure.Figure` objects directly, not
through pyplot, so they work under any backend (a notebook's inline backend
too) and are never left open.  Importing this module selects the Agg backend
unless pyplot has already been imported (then the running backend stays).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("SOURCE_DATE_EPOCH", "1704067200")  # 2024-01-01, any fixed date

import matplotlib  # noqa: E402 - SOURCE_DATE_EPOCH first

if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

from matplotlib import style as mstyle  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

# Subsetting fonts whose 'head' table holds a Unix rather than a Mac time stamp
# (STIX, shipped with matplotlib) logs a harmless warning per font and save.
logging.getLogger("fontTools.ttLib.tables._h_e_a_d").setLevel(logging.ERROR)

__all__ = [
    "COLUMN",
    "FULL",
    "PETROFF10",
    "DPI",
    "colors",
    "context",
    "figure",
    "rc_params",
    "save",
]

#: Petroff's ten colour-blind-safe colours, in matplotlib's "petroff10" order.
PETROFF10: tuple[str, ...] = (
    "#3f90da", "#ffa90e", "#bd1f01", "#94a4a2", "#832db6",
    "#a96b59", "#e76300", "#b9ac70", "#717581", "#92dadd",
)  # fmt: skip
COLUMN = 3.25  # in, ICML one column
FULL = 6.75  # in, ICML two columns
DPI = 300
SERIF_FALLBACK = ["STIXGeneral", "DejaVu Serif"]

PDF_METADATA: dict[str, Any] = {"CreationDate": None, "Producer": None, "Creator": None}
PNG_METADATA: dict[str, Any] = {"Software": None}

_FIXED: dict[str, Any] = {
    "svg.hashsalt": "fperr-paper-figures",
    "svg.fonttype": "none",
    "pdf.fonttype": 42,  # TrueType: no Type 3 fonts in the PDF
    "ps.fonttype": 42,
    "pdf.compression": 6,
    "savefig.dpi": DPI,
    "figure.dpi": 100,
    "savefig.bbox": "standard",
    "axes.linewidth": 0.5,
    "lines.linewidth": 1.0,
    "lines.markersize": 3.0,
    "xtick.major.width": 0.5,
    "ytick.major.width": 0.5,
    "xtick.minor.width": 0.4,
    "ytick.minor.width": 0.4,
    "grid.linewidth": 0.3,
    "grid.alpha": 0.5,
    "legend.frameon": False,
    "legend.handlelength": 1.6,
    "axes.grid": False,
    "axes.titlesize": 7,
    "axes.labelsize": 7,
    "font.size": 7,
    "legend.fontsize": 6,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "image.cmap": "viridis",
}


def colors() -> list[str]:
    """The colour cycle (Petroff 10)."""
    return list(PETROFF10)


def _palette_style() -> str | dict[str, Any]:
    if "petroff10" in mstyle.library:
        return "petroff10"
    from cycler import cycler

    return {"axes.prop_cycle": cycler(color=list(PETROFF10)), "patch.facecolor": PETROFF10[0]}


def rc_params(column: str = "half", nrows: int = 1, ncols: int = 1) -> dict[str, Any]:
    """tueplots' ICML 2024 bundle for ``column`` ("half" or "full"), without
    LaTeX, plus the fixed settings above."""
    from tueplots import bundles

    rc = dict(bundles.icml2024(column=column, nrows=nrows, ncols=ncols, usetex=False))
    serif = [f for f in rc.get("font.serif", []) if f not in SERIF_FALLBACK]
    rc["font.serif"] = serif + SERIF_FALLBACK
    rc.update(_FIXED)
    return rc


@contextmanager
def context(column: str = "half", nrows: int = 1, ncols: int = 1) -> Iterator[dict[str, Any]]:
    """matplotlib's defaults (whatever the user's matplotlibrc says), the
    Petroff palette and :func:`rc_params`, for the duration of the block."""
    rc = rc_params(column, nrows, ncols)
    with mstyle.context(["default", _palette_style(), rc]):
        yield rc


def figure(
    nrows: int = 1,
    ncols: int = 1,
    *,
    column: str = "half",
    height: float | None = None,
    **subplots: Any,
) -> tuple[Figure, Any]:
    """A constrained-layout figure of the column's width and its axes.

    Call inside :func:`context`.  ``height`` (inches) overrides the bundle's
    golden-ratio height.
    """
    w, h = matplotlib.rcParams["figure.figsize"]
    fig = Figure(figsize=(w, height or h), layout="constrained")
    axes = fig.subplots(nrows, ncols, **subplots)
    return fig, axes


def save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    """Write ``stem.pdf`` and ``stem.png`` into ``out_dir``; return both paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    pdf, png = out_dir / f"{stem}.pdf", out_dir / f"{stem}.png"
    fig.savefig(pdf, format="pdf", metadata=PDF_METADATA)
    fig.savefig(png, format="png", dpi=DPI, metadata=PNG_METADATA)
    return [pdf, png]
