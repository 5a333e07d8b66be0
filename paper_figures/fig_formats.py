"""Certified fraction and observed agreement across low-precision formats.

The digits MLP is run with activations and weights stored in binary16,
bfloat16, TF32, float8 e4m3fn or float8 e5m2, accumulating in binary32, and
in binary16 accumulating in binary16; each against the binary32 reference.
Bars: the fraction of inputs certified (:func:`fperr.certify.certify`,
deterministic bounds) and the fraction whose emulated low-precision class
equals the reference class (observed agreement).  A certificate is a proof
for every summation order; agreement is one order (a float32 BLAS, or
sequential for binary16 accumulation), so agreement >= certified always.

    python -m paper_figures.fig_formats [OUT_DIR] [--small]
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from . import data, style

STEM = "fig_formats"
MODEL = "mlp"
#: (storage, accumulation, label)
ARITHMETICS: tuple[tuple[str, str, str], ...] = (
    ("binary16", "binary32", "binary16"),
    ("bfloat16", "binary32", "bfloat16"),
    ("tf32", "binary32", "TF32"),
    ("float8_e4m3fn", "binary32", "fp8 e4m3"),
    ("float8_e5m2", "binary32", "fp8 e5m2"),
    ("binary16", "binary16", "binary16\n(acc. binary16)"),
)


class FormatRow(NamedTuple):
    label: str
    storage: str
    accumulate: str
    inputs: int
    certified: float
    agreement: float
    median_bound: float
    accuracy: float


def rows(small: bool, model: str = MODEL) -> list[FormatRow]:
    n = data.inputs_for(model, small)
    y = data.labels(model, n)
    out = []
    for storage, acc, label in ARITHMETICS:
        r = data.certificate(model, n, storage, acc)
        accuracy = np.nan if y is None else float(np.mean(np.argmax(r.y_low, axis=1) == y))
        out.append(FormatRow(
            label, storage, acc, n, float(r.certified.mean()), float(1 - r.flipped.mean()),
            float(np.median(r.margin.max(axis=1))), accuracy,
        ))  # fmt: skip
    return out


def make(out_dir: Path, small: bool = False, model: str = MODEL) -> list[Path]:
    """Draw the figure of ``model`` (a :mod:`~paper_figures.data` key) into
    ``out_dir``; return the PDF and PNG paths."""
    rs = rows(small, model)
    with style.context():
        c = style.colors()
        fig, ax = style.figure(height=2.1)
        x = np.arange(len(rs))
        w = 0.38
        cert = [r.certified for r in rs]
        agree = [r.agreement for r in rs]
        b1 = ax.bar(x - w / 2, cert, w, color=c[0], label="certified")
        b2 = ax.bar(x + w / 2, agree, w, color=c[1], label="observed agreement")
        for bars in (b1, b2):
            ax.bar_label(bars, [f"{100 * v:.3g}" for v in bars.datavalues], padding=1,
                         fontsize=4.5)  # fmt: skip
        ax.set_xticks(x, [r.label for r in rs])
        ax.set_ylim(0, 1.12)
        ax.set_yticks([0, 0.25, 0.5, 0.75, 1.0])
        ax.set_ylabel("fraction of inputs (%)")
        ax.yaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}")
        name = "digits MLP" if model == MODEL else data.MODELS[model]
        ax.set_title(f"{name}, {rs[0].inputs} inputs, against binary32")
        ax.set_xlabel("storage format (accumulation binary32 unless noted)")
        ax.grid(True, which="major", axis="y")
        fig.legend(loc="outside lower center", ncol=2)
        paths = style.save(fig, out_dir, STEM)
    return paths


if __name__ == "__main__":
    from ._cli import main

    main(make)
