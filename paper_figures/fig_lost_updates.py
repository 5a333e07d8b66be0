"""Lost updates: how often ``w - lr * g`` rounds back to ``w``.

For SGD the update of a weight is ``lr * g``; when ``|lr * g| < ulp(w) / 2``
the stored weight does not change at all (``fperr.training.lost_updates``
decides this exactly, ties and binade boundaries included).  The figure shows
the fraction of lost updates against the learning rate for weights of
several magnitudes, in binary16 and bfloat16, with synthetic gradients
``g ~ N(0, (1e-3)**2)`` (a typical per-weight gradient scale of the digits
MLP; see ``fperr check-training`` for the real ones).  Each magnitude ``m``
is a binade: ``|w|`` uniform in ``[m, 2m)``, random signs, rounded to the
format.

    python -m paper_figures.fig_lost_updates [OUT_DIR]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fperr.formats import get_format
from fperr.rounding import round as fround
from fperr.training import lost_updates

from . import style

FORMATS = ("binary16", "bfloat16")
MAGNITUDES = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
LRS = np.logspace(-5, -1, 33)
GRAD_STD = 1e-3
SAMPLES = 20_000
SEED = 20230518
STEM = "fig_lost_updates"


def lost_fraction(
    fmt: str, magnitude: float, lrs: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Fraction of ``SAMPLES`` weights in ``[m, 2m)`` whose SGD update is lost, per lr."""
    f = get_format(fmt)
    w = fround(magnitude * rng.uniform(1.0, 2.0, SAMPLES) * rng.choice([-1.0, 1.0], SAMPLES), f)
    g = rng.normal(0.0, GRAD_STD, SAMPLES)
    return np.array([lost_updates(w, -lr * g, f).mean() for lr in lrs])


def make(out_dir: Path, small: bool = False) -> list[Path]:
    """Draw the figure into ``out_dir``; return the PDF and PNG paths (``small``:
    the same figure, it is cheap)."""
    rng = np.random.default_rng(SEED)
    data = {(fmt, m): lost_fraction(fmt, m, LRS, rng) for fmt in FORMATS for m in MAGNITUDES}
    with style.context(ncols=2):
        fig, axes = style.figure(1, 2, height=2.15, sharey=True)
        colours, markers = style.colors(), ("o", "s", "^", "D", "v")
        for ax, fmt in zip(axes, FORMATS, strict=True):
            for k, m in enumerate(MAGNITUDES):
                ax.plot(LRS, data[fmt, m], color=colours[k % len(colours)],
                        marker=markers[k], markevery=8, markersize=2.5,
                        label=f"$|w|\\in[{m:g}, {2 * m:g})$")  # fmt: skip
            ax.set_xscale("log")
            ax.set_xlim(LRS[0], LRS[-1])
            ax.set_ylim(-0.03, 1.03)
            ax.set_title(fmt)
            ax.set_xlabel("learning rate")
            ax.grid(True, which="major", linewidth=0.3, alpha=0.5)
        axes[0].set_ylabel("lost updates\n$|\\mathrm{lr}\\,g| < \\mathrm{ulp}(w)/2$")
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=3, frameon=False,
                   handlelength=1.5, columnspacing=1.0)  # fmt: skip
        return style.save(fig, out_dir, STEM)


if __name__ == "__main__":
    from ._cli import main

    main(make)
