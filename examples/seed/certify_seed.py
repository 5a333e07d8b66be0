"""The seed paper's Table 5 with fperr's certificates, for the models of this folder.

For each trained model: import it from torch (``fperr.from_torch``: projection
shortcuts and residual additions become a graph model), check the import
against torch in float64, then on the first N MNIST test images measure

* accuracy in binary32 / binary16 / bfloat16, emulated by fperr (storage in the
  format, binary32 accumulation) and run by torch on the CPU;
* observed flips: inputs whose binary16 class differs from the binary32 one;
* the lemma with the observed delta: Gamma > 2 max_k |y16 - y32| (what the seed
  paper's argument gives with a measured delta: not a proof);
* certified: fperr's deterministic and probabilistic certificates (proofs);
* median bound / observed and the time to certify.

Run: python examples/seed/certify_seed.py [--n 200] [--models resnet20 vgg11_bn ...]
Writes examples/seed/table5.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

import fperr
from fperr.arith import Emulated
from fperr.certify import predicted_class, tolerance

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from architectures import MODELS, load_weights  # noqa: E402

FORMATS = {"fp32": "binary32", "fp16": "binary16", "bf16": "bfloat16"}
TORCH = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def torch_outputs(net: torch.nn.Module, X: np.ndarray, fmt: str) -> np.ndarray:
    dt = TORCH[fmt]
    with torch.no_grad():
        return net.to(dt)(torch.from_numpy(X).to(dt)).double().numpy()


def row(name: str, X: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    net = load_weights(MODELS[name](), str(HERE / f"{name}.npz")).eval()
    out: dict[str, Any] = {"model": name, "inputs": len(X)}
    out["parameters"] = sum(p.numel() for p in net.parameters())
    try:
        model = fperr.from_torch(net, input_shape=tuple(X.shape[1:]))
    except fperr.SpecError as exc:
        out["import"] = str(exc)[:200]
        return out
    with torch.no_grad():
        ref64 = net.double()(torch.from_numpy(X)).numpy()
    err = np.linalg.norm(model.forward(X) - ref64) / np.linalg.norm(ref64)
    out["import_rel_error"] = float(err)
    outs = {f: model.forward(X, Emulated.from_names(FORMATS[f], "binary32")) for f in FORMATS}
    for f, yf in outs.items():
        out[f"acc_{f}_emulated"] = float(np.mean(predicted_class(yf) == y))
        out[f"acc_{f}_torch"] = float(np.mean(predicted_class(torch_outputs(net, X, f)) == y))
    y32, y16 = outs["fp32"], outs["fp16"]
    out["flips_fp16"] = int(np.sum(predicted_class(y16) != predicted_class(y32)))
    delta = np.abs(y16 - y32).max(axis=1)
    out["lemma_observed_delta"] = float(np.mean(tolerance(y32) > 2 * delta))
    for method in ("deterministic", "probabilistic"):
        t = time.perf_counter()
        res = fperr.certify(model, X, y, method=method)
        out[f"certified_{method}"] = float(res.certified.mean())
        out[f"seconds_{method}"] = time.perf_counter() - t
        if method == "deterministic":
            b = res.margin.max(axis=1)
            obs = np.maximum(res.observed_delta, np.finfo(float).tiny)
            out["median_bound_over_observed"] = float(np.median(b / obs))
            out["certified_and_flipped"] = int((res.certified & res.flipped).sum())
    return out


def markdown(rows: list[dict[str, Any]]) -> str:
    head = ("| model | params | acc fp32 / fp16 / bf16 (emulated) | acc fp16 / bf16 (torch CPU) "
            "| flips fp16 | lemma, observed delta | certified det / prob | median B / observed "
            "| seconds (det) |")  # fmt: skip
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        if "import" in r:
            lines.append(f"| {r['model']} | {r['parameters']:,} | import refused: {r['import']} "
                         "| | | | | | |")  # fmt: skip
            continue
        lines.append(
            f"| {r['model']} | {r['parameters']:,} | {r['acc_fp32_emulated']:.3f} / "
            f"{r['acc_fp16_emulated']:.3f} / {r['acc_bf16_emulated']:.3f} | "
            f"{r['acc_fp16_torch']:.3f} / {r['acc_bf16_torch']:.3f} | {r['flips_fp16']} | "
            f"{r['lemma_observed_delta']:.1%} | {r['certified_deterministic']:.1%} / "
            f"{r['certified_probabilistic']:.1%} | {r['median_bound_over_observed']:.3g} | "
            f"{r['seconds_deterministic']:.0f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200, help="test images (of the 1,000 stored)")
    trained = [m for m in MODELS if (HERE / f"{m}.npz").exists()]
    ap.add_argument("--models", nargs="*", default=trained)
    args = ap.parse_args(argv)
    d = np.load(HERE / "mnist_test_1000.npz")
    X = np.asarray(d["inputs"], dtype=np.float64)[: args.n]
    y = np.asarray(d["labels"])[: args.n]
    rows = []
    for name in args.models:
        rows.append(row(name, X, y))
        print(json.dumps(rows[-1]), flush=True)
    (HERE / "table5.json").write_text(json.dumps(rows, indent=1) + "\n")
    print(markdown(rows))


if __name__ == "__main__":
    main()
