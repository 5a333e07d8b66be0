"""The seed paper's architectures on MNIST: certified fraction and flips per format.

Reads ``examples/seed/table5.json`` (written by ``examples/seed/certify_seed.py``)
and draws, per architecture and low-precision format (binary16, bfloat16 storage,
binary32 accumulation):

* left: the fraction of inputs certified by fperr (deterministic and
  probabilistic, on the first ``certified_inputs`` images) next to the fraction
  the seed paper's tolerance lemma gives with the *observed* delta (all images;
  not a proof);
* right: observed flips against binary32 (fperr's emulation and torch on the
  CPU at 1,000 images per batch), counted over the model's images (10,000, or
  1,000 where the row says so).

A model whose import was refused has no bars (its label says so).  Nothing is
recomputed here (certifying these models costs minutes): ``small`` is ignored.

    python -m paper_figures.fig_seed [OUT_DIR]
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from . import style

STEM = "fig_seed"
TABLE = Path(__file__).resolve().parents[1] / "examples" / "seed" / "table5.json"
NEEDS = TABLE  # a checkout's file: an installed wheel has no examples/ and skips this figure
LOW = (("fp16", "binary16"), ("bf16", "bfloat16"))


class SeedRow(NamedTuple):
    model: str
    inputs: int
    certified_inputs: int
    certified: dict[str, tuple[float, float]]  # format -> (deterministic, probabilistic)
    lemma: dict[str, float]
    flips: dict[str, tuple[float, float]]  # format -> (emulated, torch) counts over inputs
    refused: str  # why the import was refused ("" when it imported)


def _frac(r: dict[str, Any], key: str) -> float:
    return float(r.get(key, np.nan))


def seed_rows(table: Path = TABLE) -> list[SeedRow]:
    """The rows of ``table5.json`` as plotted (NaN where a column is absent)."""
    out = []
    for r in json.loads(Path(table).read_text()):
        out.append(SeedRow(
            r["model"], int(r["inputs"]), int(r.get("certified_inputs", 0)),
            {f: (_frac(r, f"certified_{f}_det"), _frac(r, f"certified_{f}_prob")) for f, _ in LOW},
            {f: _frac(r, f"lemma_{f}") for f, _ in LOW},
            {f: (_frac(r, f"flips_{f}_emulated"), _frac(r, f"flips_{f}_torch_full"))
             for f, _ in LOW},
            str(r.get("import", "")),
        ))  # fmt: skip
    return out


def _bars(ax: Any, x: Any, values: list[list[float]], labels: list[str], fmt: str,
          first: int = 0) -> None:  # fmt: skip
    c = style.colors()
    w = 0.8 / len(values)
    for i, (vals, label) in enumerate(zip(values, labels, strict=True)):
        bars = ax.bar(x + (i - (len(values) - 1) / 2) * w, np.nan_to_num(vals), w,
                      color=c[(first + i) % len(c)], label=label)  # fmt: skip
        text = ["" if np.isnan(v) else fmt.format(v) for v in vals]  # NaN: no such column
        ax.bar_label(bars, text, padding=1, fontsize=3.5, rotation=90)


def make(out_dir: Path, small: bool = False, table: Path = TABLE) -> list[Path]:
    """Draw the figure from ``table`` into ``out_dir``; return the PDF and PNG paths."""
    rs = seed_rows(table)
    names = [f"{r.model}\n{r.inputs:,} images" + ("\n(import refused)" if r.refused else "")
             for r in rs]  # fmt: skip
    x = np.arange(len(rs))
    with style.context(column="full"):
        fig, (left, right) = style.figure(1, 2, column="full", height=2.7)
        values, labels = [], []
        for f, name in LOW:
            values += [[r.certified[f][0] for r in rs], [r.certified[f][1] for r in rs],
                       [r.lemma[f] for r in rs]]  # fmt: skip
            labels += [f"{name} certified (det.)", f"{name} certified (prob.)",
                       f"{name} lemma, observed delta"]  # fmt: skip
        _bars(left, x, values, labels, "{:.1%}")
        left.set_ylim(0, 1.15)
        left.set_ylabel("fraction of inputs")
        left.yaxis.set_major_formatter(lambda v, _: f"{100 * v:.0f}%")
        cert_n = sorted({r.certified_inputs for r in rs if not r.refused})
        left.set_title(f"certified on the first {'/'.join(map(str, cert_n))} images; "
                       "lemma on all", fontsize=6)  # fmt: skip
        flips = [[r.flips[f][k] for r in rs] for f, _ in LOW for k in (0, 1)]
        flip_labels = [f"{n} {k}" for _, n in LOW for k in ("emulated", "torch CPU")]
        _bars(right, x, flips, flip_labels, "{:.0f}", first=6)  # colours 6-9: one shared legend
        right.set_ylabel("flips vs binary32 (count)")
        top = max([1.0] + [v for vals in flips for v in vals if np.isfinite(v)])
        right.set_ylim(0, 1.3 * top)
        right.set_title("observed flips (all images)", fontsize=6)
        for ax in (left, right):
            ax.set_xticks(x, names, fontsize=5)
            ax.grid(True, which="major", axis="y")
        handles = [h for ax in (left, right) for h in ax.get_legend_handles_labels()[0]]
        fig.legend(handles=handles, fontsize=4.5, ncol=5, loc="outside lower center")
        paths = style.save(fig, out_dir, STEM)
    return paths


if __name__ == "__main__":
    from ._cli import main

    main(make)
