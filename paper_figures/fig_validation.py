"""Bound over observed error on recorded runs: how tight, and never below 1.

The figure reads every ``*.json`` under ``validation/results/`` (written by
``fperr validate --suite``, one folder per device).  Validation reports (format
``fperr-validation/1``, :class:`fperr.hardware.ValidationReport`) hold, per
PyTorch configuration and batch size, the distribution of the per-input
tightness max_k bound / max_k observed error against float64; each model on
each device is one panel and each configuration (at the largest batch size)
one box: whiskers min to max, box 10th to 90th percentile, line the median.
A ratio below 1 would be a violated bound.

Reports from GPUs are preferred; without any, recorded CPU reports are shown
(the title says so); without those either, a CPU emulation stands in (the
title says so too): the digits MLP in emulated binary16 with binary32
or binary16 accumulation in three summation orders, each input's max_k bound radius
(:func:`fperr.bounds.bound_run`, against exact arithmetic) over its max_k
observed error against float64.  JSON files in other layouts contribute only
records that state their ratios (``ratio``/``ratios``) or a bound next to an
observed error (``bound``/``radius`` and ``observed``/``observed_delta``);
anything else (the GEMM probes, for one) is skipped.  A missing or empty
folder is not an error.

    python -m paper_figures.fig_validation [OUT_DIR] [--small]
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from fperr.arith import Exact

from . import data, style

STEM = "fig_validation"
MODEL = "mlp"
ORDERS = ("sequential", "pairwise", "blas")
ACCUMULATORS = ("binary32", "binary16")
REPORT_FORMAT = "fperr-validation/"
MAX_PANELS = 6
RATIO_KEYS = ("ratio", "ratios")
BOUND_KEYS = ("bound", "radius")
OBSERVED_KEYS = ("observed", "observed_delta")

Array = npt.NDArray[np.float64]


class Box(NamedTuple):
    """One run's distribution of bound / observed (per input)."""

    label: str
    min: float
    p10: float
    median: float
    p90: float
    max: float
    violations: int = 0

    @classmethod
    def of(cls, label: str, ratios: Array) -> Box:
        r = ratios[np.isfinite(ratios) & (ratios > 0)]
        lo, p10, med, p90, hi = (float(v) for v in np.percentile(r, [0, 10, 50, 90, 100]))
        return cls(label, lo, p10, med, p90, hi, int((r < 1).sum()))


class Panel(NamedTuple):
    title: str
    boxes: list[Box]


class Runs(NamedTuple):
    """What the figure draws, and where it comes from."""

    source: str  # "gpu", "cpu" (recorded CPU reports) or "emulated"
    title: str
    panels: list[Panel]
    files: list[Path]


# -- validation reports ----------------------------------------------------------------------
def _device(env: dict[str, Any]) -> tuple[str, bool]:
    """A device label and whether it is a GPU."""
    dev = str(env.get("device", "?"))
    name = env.get("device_name") or dev
    return (str(name), True) if dev.startswith("cuda") else (f"CPU ({name})", False)


def report_panel(d: dict[str, Any]) -> Panel | None:
    """The configurations of one validation report at its largest batch size."""
    results = [r for r in d.get("results", []) if isinstance(r, dict)]
    if not results:
        return None
    bs = max(int(r.get("batch_size", 0)) for r in results)
    boxes = []
    for r in results:
        t = r.get("tightness") or {}
        keys = ("min", "p10", "median", "p90", "max")
        if r.get("batch_size") != bs or any(not isinstance(t.get(k), int | float) for k in keys):
            continue  # float64 against itself: no error, no ratio
        lo, p10, med, p90, hi = (float(t[k]) for k in keys)
        boxes.append(Box(str(r.get("config", "?")), lo, p10, med, p90, hi,
                         int(r.get("violations", 0))))  # fmt: skip
    if not boxes:
        return None
    device, _ = _device(d.get("environment", {}))
    return Panel(f"{d.get('model', '?')} on {device}, batch {bs}", boxes)


# -- other JSON: explicit ratios or bound/observed pairs ----------------------------------
def _numbers(v: Any) -> Array | None:
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, int | float):
        return np.array([float(v)])
    if isinstance(v, list) and v:
        try:
            a = np.asarray(v, dtype=np.float64)
        except (TypeError, ValueError):
            return None
        return a.reshape(len(a), -1).max(axis=1) if a.ndim > 1 else a
    return None


def _first(d: dict[str, Any], keys: tuple[str, ...]) -> Array | None:
    for k in keys:
        if (a := _numbers(d.get(k))) is not None:
            return a
    return None


def _record(d: dict[str, Any]) -> Array | None:
    r = _first(d, RATIO_KEYS)
    if r is not None:
        return r
    b, o = _first(d, BOUND_KEYS), _first(d, OBSERVED_KEYS)
    if b is None or o is None:
        return None
    if b.size != o.size:
        if o.size != 1:
            return None
        b = np.array([b.max()])  # per-class bounds of one input against its delta
    with np.errstate(divide="ignore", invalid="ignore"):
        return b / o


def extract(obj: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[str, Array]]:
    """(key path, ratios) for every recognised record of a JSON document; a list
    of records (e.g. per-input ``samples``) is one run."""
    if isinstance(obj, dict):
        r = _record(obj)
        if r is not None:
            yield "/".join(path), r
            return
        for k, v in obj.items():
            yield from extract(v, (*path, str(k)))
    elif isinstance(obj, list) and obj and all(isinstance(x, dict) for x in obj):
        parts = [r for x in obj if (r := _record(x)) is not None]
        if parts:
            yield "/".join(path), np.concatenate(parts)


# -- collecting ------------------------------------------------------------------------------
def load_reports(results_dir: Path | None = None) -> dict[str, tuple[list[Panel], list[Path]]]:
    """Panels and files per kind ("gpu", "cpu") from ``results_dir`` (default
    ``validation/results``); empty if it does not exist."""
    root = Path(results_dir) if results_dir is not None else data.VALIDATION_RESULTS
    out: dict[str, tuple[list[Panel], list[Path]]] = {"gpu": ([], []), "cpu": ([], [])}
    if not root.is_dir():
        return out
    for path in sorted(root.rglob("*.json")):
        try:
            d = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            continue
        if not isinstance(d, dict):
            continue
        if str(d.get("format", "")).startswith(REPORT_FORMAT):
            panel = report_panel(d)
            gpu = _device(d.get("environment", {}))[1]
        else:
            boxes = [Box.of(k or path.stem, r) for k, r in extract(d)
                     if np.any(np.isfinite(r) & (r > 0))]  # fmt: skip
            panel = Panel(f"{path.parent.name}/{path.name}", boxes) if boxes else None
            gpu = path.parent.name.lower() != "cpu"
        if panel is not None:
            panels, files = out["gpu" if gpu else "cpu"]
            panels.append(panel)
            files.append(path)
    return out


def cpu_stand_in(small: bool = False) -> list[Panel]:
    """Per-input max_k bound / max_k observed of emulated binary16 runs, one
    panel per accumulator format, one box per summation order."""
    n = 200 if small else 500
    exact = data.model(MODEL).forward(data.digits().inputs[:n], Exact())
    panels = []
    for acc in ACCUMULATORS:
        boxes = []
        for order in ORDERS:
            r = data.run(MODEL, n, "binary16", acc, order=order)
            obs = np.abs(r.output - exact).max(axis=1)
            ok = obs > 0
            boxes.append(Box.of(order, r.radius.max(axis=1)[ok] / obs[ok]))
        panels.append(Panel(f"digits MLP, {n} inputs, binary16,\naccumulation {acc}", boxes))
    return panels


def collect(small: bool = False, results_dir: Path | None = None) -> Runs:
    """GPU reports if any, else recorded CPU reports, else the emulated stand-in."""
    found = load_reports(results_dir)
    kinds = (("gpu", "recorded GPU runs"), ("cpu", "no GPU reports yet: recorded CPU runs"))
    for kind, what in kinds:
        panels, files = found[kind]
        if panels:
            return Runs(kind, what, panels[:MAX_PANELS], files)
    return Runs(
        "emulated",
        "no GPU reports in validation/results: CPU emulation stand-in\n"
        "(emulated summation orders as runs)",
        cpu_stand_in(small),
        [],
    )


def make(out_dir: Path, small: bool = False, results_dir: Path | None = None) -> list[Path]:
    """Draw the figure into ``out_dir``; return the PDF and PNG paths."""
    runs = collect(small, results_dir)
    k = len(runs.panels)
    ncols = min(k, 3)
    nrows = math.ceil(k / ncols)
    column = "half" if k <= 2 else "full"
    with style.context(column=column, nrows=nrows, ncols=ncols):
        c = style.colors()
        fig, axes = style.figure(nrows, ncols, height=2.3 * nrows, sharey=True, squeeze=False)
        flat = list(axes.ravel())
        lo = min(min(b.min for b in p.boxes) for p in runs.panels)
        hi = max(max(b.max for b in p.boxes) for p in runs.panels)
        for ax, panel in zip(flat, runs.panels, strict=False):
            draw_panel(ax, panel, c)
        for ax in flat[k:]:
            ax.set_visible(False)
        for ax in flat[:k]:
            ax.set_yscale("log")
            ax.set_ylim(min(0.5, lo / 2), hi * 3)
        for row in axes:
            row[0].set_ylabel("bound / observed error")
        fig.suptitle(runs.title, fontsize=7)
        paths = style.save(fig, out_dir, STEM)
    return paths


def draw_panel(ax: Any, panel: Panel, c: list[str] | None = None) -> None:
    """Boxes of one panel on ``ax`` (any matplotlib axes, e.g. in a notebook)."""
    c = c or style.colors()
    stats = [
        {"label": b.label, "whislo": b.min, "q1": b.p10, "med": b.median, "q3": b.p90,
         "whishi": b.max, "fliers": []}
        for b in panel.boxes
    ]  # fmt: skip
    ax.bxp(stats, widths=0.55, patch_artist=True,
           boxprops={"facecolor": c[0], "alpha": 0.6, "linewidth": 0.5},
           medianprops={"color": "k", "linewidth": 0.9},
           whiskerprops={"linewidth": 0.6}, capprops={"linewidth": 0.6})  # fmt: skip
    for i, b in enumerate(panel.boxes, start=1):
        ax.annotate(f"{b.min:.3g}", (i, b.min), xytext=(0, -2), textcoords="offset points",
                    ha="center", va="top", fontsize=4.5,
                    color=c[2] if b.min < 1 else "k")  # fmt: skip
    ax.axhline(1.0, color=c[2], lw=0.7, ls="--")
    rot = 0 if len(panel.boxes) <= 3 else 60
    ax.set_xticks(range(1, len(panel.boxes) + 1), [b.label for b in panel.boxes], rotation=rot,
                  ha="center" if rot == 0 else "right", rotation_mode="anchor")  # fmt: skip
    ax.set_title(panel.title, fontsize=6)
    ax.grid(True, which="major", axis="y")


if __name__ == "__main__":
    from ._cli import main

    main(make)
