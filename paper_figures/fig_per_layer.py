"""How the error bound and the observed error grow through the layers.

For each example model and each depth i, the model cut after layer i
(``Model(name, input_shape, layers[:i])``) is enclosed by
:func:`fperr.bounds.bound_run` for binary16 storage with binary32
accumulation: the radius max_k R_k bounds |h_i - exact h_i| for every unit of
that layer's output.  Against it, the observed max_k |h_i - exact h_i| of
the emulated run (``Model.activations``) against float64 with the same
weights.  Lines: medians over inputs; band: the observed range (min to max).
Layers whose output is exact (the input reshape of the CNN: digits pixels are
k/16, exact in binary16) have no point on the log axis.

    python -m paper_figures.fig_per_layer [OUT_DIR] [--small]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from . import data, style

STEM = "fig_per_layer"

Array = npt.NDArray[np.float64]


class PerLayer(NamedTuple):
    names: list[str]  # layer types, in order
    bound: Array  # (N, L): max_k radius after each layer
    observed: Array  # (N, L): max_k |low - exact| after each layer


def inputs_for(name: str, small: bool) -> int:
    """Inputs per model: the bound is recomputed for each of the L prefixes."""
    if name == "deep_tanh":
        return data.inputs_for(name, small)  # shares the certificate's runs
    return min(50 if small else 300, data.size(name))


def per_layer(name: str, n: int) -> PerLayer:
    m = data.model(name)
    low = data.activations(name, n, *data.LOW)
    exact = data.activations(name, n, None, None)
    L = len(m.layers)
    bound = np.empty((n, L))
    observed = np.empty((n, L))
    for i in range(1, L + 1):
        r = data.run(name, n, *data.LOW, depth=i)
        bound[:, i - 1] = r.radius.max(axis=1)
        diff = np.abs(low[i] - exact[i]).reshape(n, -1)
        observed[:, i - 1] = diff.max(axis=1)
    return PerLayer([layer.type for layer in m.layers], bound, observed)


def _positive(v: Array) -> Array:
    return np.where(v > 0, v, np.nan)


def make(out_dir: Path, small: bool = False, models: Sequence[str] | None = None) -> list[Path]:
    """Draw the figure of ``models`` (:mod:`~paper_figures.data` keys; default: the
    examples) into ``out_dir``; return the PDF and PNG paths."""
    names = data.models_for(small) if models is None else list(models)
    results = {m: per_layer(m, inputs_for(m, small)) for m in names}
    with style.context(column="full", ncols=len(names)):
        c = style.colors()
        fig, axes = style.figure(1, len(names), height=2.1, sharey=True)
        for ax, (name, pl) in zip(np.atleast_1d(axes), results.items(), strict=True):
            x = np.arange(1, len(pl.names) + 1)
            with np.errstate(all="ignore"):
                b_med = _positive(np.median(pl.bound, axis=0))
                o_med = _positive(np.median(pl.observed, axis=0))
                o_lo = _positive(pl.observed.min(axis=0))
                o_hi = _positive(pl.observed.max(axis=0))
            ax.plot(x, b_med, color=c[0], marker="s", ms=2.5, label="bound (median)")
            ax.plot(x, o_med, color=c[1], marker="o", ms=2.5, ls="--",
                    label="observed (median)")  # fmt: skip
            ax.fill_between(x, np.nan_to_num(o_lo, nan=np.nanmin(o_med)), o_hi, color=c[1],
                            alpha=0.25, lw=0, label="observed (min to max)")  # fmt: skip
            ax.set_yscale("log")
            ax.set_xticks(x, pl.names, rotation=90)
            ax.set_xlim(0.5, len(x) + 0.5)
            ax.set_title(f"{data.MODELS[name]} ({pl.bound.shape[0]} inputs)")
            ax.grid(True, which="major", axis="y")
        first = np.atleast_1d(axes)[0]
        first.set_ylabel("$\\mathrm{max}_k |h_k - \\mathrm{exact}\\ h_k|$ after the layer")
        handles, labels = first.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncol=3)
        paths = style.save(fig, out_dir, STEM)
    return paths


if __name__ == "__main__":
    from ._cli import main

    main(make)
