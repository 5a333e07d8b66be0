"""Standalone fp16 training of the digits MLP on CPU, against fperr's prediction.

Usage (needs fperr installed, ``pip install -e .``, plus torch)::

    python examples/train_fp16_hazards.py [--epochs 40] [--seeds 0 1 2]

Trains the 64-256-256-10 ReLU MLP of ``train_digits.py`` on
``examples/digits.npz`` (stratified 70/30 split, the split size of the H100
reference), batches of 32, 40 epochs:

* Adam (lr 1e-3) in fp32, the reference, seeds 0-2;
* Adam in *pure* fp16: ``model.half()``, fp16 inputs, ``torch.optim.Adam``
  on the fp16 parameters (its states are fp16 too), no master weights, no
  autocast, no loss scaling -- with eps 1e-8 (PyTorch's default) and 1e-4,
  seeds 0-2; and pure bfloat16 with eps 1e-8, seeds 0-2;
* pure fp16 Adam, seed 0, with eps 1e-7, 1e-6, 1e-5 and 1e-3;
* plain SGD, lr 1e-2 and 1e-1, in fp32, pure fp16 and pure bfloat16, seed 0
  (lost updates: ``|lr g| < ulp(w)/2``).

A run "failed" when it went NaN or ended more than 5 points of test accuracy
below the fp32 runs with the same optimizer and lr.
Before each run, :func:`fperr.training.check_training` predicts from the
seed's initial weights and the training data, without training, whether the
run is hazardous; the script compares the verdict with the outcome, and the
outcome with the H100 reference (``../shared/reference/gpu_timing_train.json``
when present; its findings are summarised in docs/hardware.md).  Everything
goes to ``results/fp16_training_cpu.json``.
"""

from __future__ import annotations

import os

# numpy's OpenBLAS spends more time synchronising its threads than computing
# on these small matrices; one thread keeps the checks fast.  torch runs on one
# thread by default too (--threads): on a busy 2-core machine two OpenMP threads
# slowed the fp16 runs down tenfold.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from fperr.datasets import load_inputs  # noqa: E402
from fperr.model import load_model  # noqa: E402
from fperr.training import (  # noqa: E402
    check_training,
    initial_model,
    stratified_split,
    train_pure,
)

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "fp16_training_cpu.json"
REFERENCE = HERE.parent.parent / "shared" / "reference" / "gpu_timing_train.json"
WIDTHS = (64, 256, 256, 10)
LR = 1e-3
BATCH = 32
TEST_FRACTION = 0.3
FORMAT = {"float16": "binary16", "bfloat16": "bfloat16", "float32": "binary32"}
REF_KEYS = {"f32": "adam/float32/eps1e-08", "f16_pure_eps1e-8": "adam/float16/eps1e-08",
            "f16_pure_eps1e-4": "adam/float16/eps0.0001"}  # fmt: skip
FAILED_BY = 0.05
"""A run "failed" if it went NaN or ended this far below the fp32 runs of its optimizer."""


def config_name(optimizer: str, lr: float, dtype: str, eps: float) -> str:
    if optimizer == "sgd":
        return f"sgd-lr{lr:g}/{dtype}"
    return f"adam/{dtype}/eps{eps:g}"


def predict(
    X: np.ndarray, y: np.ndarray, optimizer: str, lr: float, dtype: str, eps: float, seed: int
) -> dict[str, Any]:
    """fperr's verdict from the initial weights of ``seed`` on the training data."""
    start = time.perf_counter()
    report = check_training(
        initial_model(WIDTHS, seed, name=f"mlp-init-seed{seed}"), X, y, optimizer=optimizer,
        lr=lr, eps=eps, fmt=FORMAT[dtype], batch_size=BATCH, seed=seed,
    )  # fmt: skip
    return {
        "verdict": report.verdict,
        "predicts_nan": report.predicts_nan,
        "nan_weights": sum(p.nan_updates for p in report.params),
        "inf_weights": sum(p.inf_updates for p in report.params),
        "max_update_over_lr": max(p.max_update_ratio for p in report.params),
        "lost_first_step": {p.name: p.lost for p in report.params},
        "hazards": report.hazards(),
        "fixes": list(report.fixes),
        "seconds": time.perf_counter() - start,
    }


def reference_summary(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    train = json.loads(path.read_text())["train"]
    out: dict[str, Any] = {}
    for key, value in train.items():
        config, seed = key.split("/")
        loss = value["final_loss"]
        out.setdefault(config, []).append(
            {"seed": int(seed.removeprefix("seed")), "test_acc": value["test_acc"],
             "nan": loss is None or (isinstance(loss, float) and math.isnan(loss))}
        )  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--reference", type=Path, default=REFERENCE)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()

    X, y = load_inputs(HERE / "digits.npz")
    assert y is not None
    train_idx, _ = stratified_split(y, TEST_FRACTION, 0)
    seeds, first = list(args.seeds), [args.seeds[0]]
    plan = [
        ("adam", LR, d, e, seeds)
        for d, e in (("float32", 1e-8), ("float16", 1e-8), ("float16", 1e-4), ("bfloat16", 1e-8))
    ]
    plan += [("adam", LR, "float16", e, first) for e in (1e-7, 1e-6, 1e-5, 1e-3)]
    plan += [("sgd", lr, d, 0.0, first) for lr in (1e-2, 1e-1)
             for d in ("float32", "float16", "bfloat16")]  # fmt: skip

    runs: list[dict[str, Any]] = []
    for optimizer, lr, dtype, eps, run_seeds in plan:
        for run in train_pure(WIDTHS, X, y, dtype=dtype, eps=eps or 1e-8, seeds=run_seeds,
                              epochs=args.epochs, lr=lr, optimizer=optimizer, batch_size=BATCH,
                              test_fraction=TEST_FRACTION):  # fmt: skip
            record = run.to_dict()
            record["config"] = config_name(optimizer, lr, dtype, eps)
            p = predict(X[train_idx], y[train_idx], optimizer, lr, dtype, eps, run.seed)
            record["prediction"] = p
            runs.append(record)
            print(
                f"{record['config']:<22} seed {run.seed}: test acc {run.test_acc:.4f}, "
                f"NaN {'at step ' + str(run.nan_step) if run.nan_step else 'never'}, "
                f"{100 * run.unchanged:.0f}% weights unchanged, {run.steps} steps, "
                f"{run.seconds:.1f} s; fperr predicted {p['verdict']} "
                f"({p['nan_weights']} NaN / {p['inf_weights']} inf weights after step 1, "
                f"max |update| {p['max_update_over_lr']:.3g} x lr, "
                f"lost <= {100 * max(p['lost_first_step'].values()):.0f}%)",
                flush=True,
            )
    for r in runs:
        base = [q["test_acc"] for q in runs
                if q["dtype"] == "float32" and q["optimizer"] == r["optimizer"]
                and q["lr"] == r["lr"]]  # fmt: skip
        bad = bool(r["nan"]) or r["test_acc"] < float(np.mean(base)) - FAILED_BY
        r["outcome"] = "failed" if bad else "trained"
        r["prediction_matches"] = (r["prediction"]["verdict"] == "hazard") == bad

    trained = load_model(HERE / "mlp.yaml")
    on_trained = {}
    for fmt in ("binary16", "bfloat16", "binary32"):
        for eps in (1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3):
            rep = check_training(trained, X[train_idx], y[train_idx], lr=LR, eps=eps, fmt=fmt,
                                 batch_size=BATCH)  # fmt: skip
            on_trained[f"{fmt}/eps{eps:g}"] = {
                "verdict": rep.verdict, "predicts_nan": rep.predicts_nan,
                "hazards": rep.hazards(), "fixes": list(rep.fixes),
            }  # fmt: skip

    summary: dict[str, Any] = {}
    for r in runs:
        s = summary.setdefault(r["config"], {"seeds": [], "test_acc": [], "nan_step": [],
                                             "unchanged": [], "outcome": [], "predicted": [],
                                             "matches": []})  # fmt: skip
        s["seeds"].append(r["seed"])
        s["test_acc"].append(r["test_acc"])
        s["nan_step"].append(r["nan_step"])
        s["unchanged"].append(r["unchanged"])
        s["outcome"].append(r["outcome"])
        s["predicted"].append(r["prediction"]["verdict"])
        s["matches"].append(r["prediction_matches"])
    reference = reference_summary(args.reference)
    if reference is not None:
        for key, name in REF_KEYS.items():
            if key in reference and name in summary:
                summary[name]["h100_reference"] = reference[key]

    result: dict[str, Any] = {
        "about": "pure fp16 vs fp32 Adam training of the digits MLP on CPU; "
        "written by examples/train_fp16_hazards.py",
        "info": {
            "torch": torch.__version__,
            "numpy": np.__version__,
            "python": platform.python_version(),
            "machine": platform.machine(),
            "processor": platform.processor(),
            "torch_threads": torch.get_num_threads(),
            "epochs": args.epochs,
            "lr": LR,
            "batch_size": BATCH,
            "test_fraction": TEST_FRACTION,
            "widths": list(WIDTHS),
            "wall_s": None,
        },
        "summary": summary,
        "runs": runs,
        "check_training_on_trained_mlp": on_trained,
        "h100_reference": reference,
    }
    result["info"]["wall_s"] = time.perf_counter() - t0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out} in {result['info']['wall_s']:.0f} s")
    for name, s in summary.items():
        accs = ", ".join(f"{a:.4f}" for a in s["test_acc"])
        ref = s.get("h100_reference")
        ref_txt = ""
        if ref:
            ref_txt = " | H100: " + ", ".join(
                f"{x['test_acc']:.4f}{' NaN' if x['nan'] else ''}" for x in ref
            )
        print(f"{name:<22} acc {accs}; NaN steps {s['nan_step']}; fperr {s['predicted']}, "
              f"matches {s['matches']}{ref_txt}")  # fmt: skip


if __name__ == "__main__":
    main()
