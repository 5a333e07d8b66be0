"""The seed models on real hardware: flips and the observed delta in every torch format.

The device half of the seed paper's Table 5 (``certify_seed.py`` is the CPU half,
with fperr's emulation and certificates).  For each trained model of this folder,
on ``--device`` (``cuda`` in ``validation/run_gpu.sh``):

* a float64 reference run (also on the device; its distance to a CPU float64 run
  is recorded: the device's float64 kernels are not fperr's subject);
* low-precision runs of the whole model: float32 with TF32 off (the binary32
  reference of the lemma), float32 with TF32 on, float16 and bfloat16 (parameters
  and inputs cast), and autocast to float16 and to bfloat16 (float32 parameters,
  the kernels' own casts), each over all images at ``FULL_BATCH`` images per call
  and over the first ``--n-batch1`` images one at a time (another kernel path);
* per low run: accuracy, flips against the float32 run (TF32 off), the largest
  max_k |y_low - y_float64| (delta), and the lemma with the observed delta:
  the fraction of images whose float32 top-1 minus top-2 gap exceeds 2 delta_img
  (delta_img: the image's own largest error over every run of the format).

Writes ``<out>/<device label>/seed.json`` and prints one line per model and run.
No fperr bounds are run here: they run on the CPU (``certify_seed.py``).

    python examples/seed/seed_gpu.py --device cuda --out out/results
    python examples/seed/seed_gpu.py --device cpu --n 16 --n-batch1 4 --models resnet20
"""

from __future__ import annotations

import argparse
import contextlib
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

from fperr.certify import tolerance
from fperr.hardware.suite import device_label

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from architectures import MODELS, load_weights  # noqa: E402
from seed_data import load_test_images  # noqa: E402

Array = npt.NDArray[np.float64]
FULL_BATCH = 1000

# run name -> (parameter and input dtype, TF32 on, autocast dtype or None)
RUNS: dict[str, tuple[torch.dtype, bool, torch.dtype | None]] = {
    "fp32": (torch.float32, False, None),
    "tf32": (torch.float32, True, None),
    "fp16": (torch.float16, False, None),
    "bf16": (torch.bfloat16, False, None),
    "autocast_fp16": (torch.float32, False, torch.float16),
    "autocast_bf16": (torch.float32, False, torch.bfloat16),
}
FORMAT_OF = {"tf32": "tf32", "fp16": "fp16", "bf16": "bf16", "autocast_fp16": "fp16",
             "autocast_bf16": "bf16"}  # fmt: skip
"""Each low run's format family: the lemma's delta per image is the largest over a family."""


@contextlib.contextmanager
def tf32(on: bool) -> Iterator[None]:
    """TF32 for matmuls and cuDNN convolutions, restored on exit."""
    old = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def logits(net: torch.nn.Module, X: Array, run: str, batch: int, device: str) -> Array:
    """The run's logits (as float64) over X, ``batch`` images per call."""
    dtype, tf, auto = RUNS[run]
    n2 = copy.deepcopy(net).to(device=device, dtype=dtype)  # a copy: no in-place casts
    outs = []
    with torch.no_grad(), tf32(tf):
        for s in range(0, len(X), batch):
            x = torch.from_numpy(X[s : s + batch]).to(device=device, dtype=dtype)
            ctx = (torch.autocast(torch.device(device).type, dtype=auto) if auto is not None
                   else contextlib.nullcontext())  # fmt: skip
            with ctx:
                outs.append(n2(x).double().cpu().numpy())
    return np.concatenate(outs)


def float64_logits(net: torch.nn.Module, X: Array, device: str) -> Array:
    n2 = copy.deepcopy(net).to(device=device, dtype=torch.float64)
    with torch.no_grad():
        return np.concatenate([n2(torch.from_numpy(X[s : s + FULL_BATCH]).to(device)).cpu()
                               .numpy() for s in range(0, len(X), FULL_BATCH)])  # fmt: skip


def model_row(name: str, X: Array, labels: npt.NDArray[np.int64], n_batch1: int,
              device: str) -> dict[str, Any]:  # fmt: skip
    net = load_weights(MODELS[name](), str(HERE / f"{name}.npz")).eval()
    row: dict[str, Any] = {"model": name, "images": len(X), "batch1_images": n_batch1}
    t = time.perf_counter()
    ref = float64_logits(net, X, device)
    row["seconds_float64"] = time.perf_counter() - t
    cpu = float64_logits(net, X[:64], "cpu")
    row["float64_device_vs_cpu"] = float(np.abs(ref[:64] - cpu).max() / np.abs(cpu).max())
    outs: dict[str, dict[int, Array]] = {}
    for run in RUNS:
        outs[run] = {}
        for batch, Xs in ((FULL_BATCH, X), (1, X[:n_batch1])):
            t = time.perf_counter()
            try:
                outs[run][batch] = logits(net, Xs, run, batch, device)
            except RuntimeError as exc:  # a dtype or autocast the device lacks
                row[f"{run}_b{batch}_error"] = str(exc).splitlines()[0][:200]
                continue
            row[f"seconds_{run}_b{batch}"] = time.perf_counter() - t
    base = outs["fp32"].get(FULL_BATCH)
    assert base is not None, "the float32 run failed"
    gamma = tolerance(base)  # the lemma's Gamma: top-1 minus top-2
    row["acc_float64"] = float(np.mean(ref.argmax(axis=1) == labels))
    delta: dict[str, Array] = {}
    for run, per_batch in outs.items():
        for batch, y in per_batch.items():
            key = f"{run}_b{batch}"
            n = len(y)
            err = np.abs(y - ref[:n]).max(axis=1)
            row[f"acc_{key}"] = float(np.mean(y.argmax(axis=1) == labels[:n]))
            row[f"flips_{key}"] = int(np.sum(y.argmax(axis=1) != base[:n].argmax(axis=1)))
            row[f"max_delta_{key}"] = float(err.max())
            if run in FORMAT_OF:
                d = delta.setdefault(FORMAT_OF[run], np.zeros(len(X)))
                d[:n] = np.maximum(d[:n], err)
    d32 = np.abs(base - ref).max(axis=1)  # the reference's own error enters the lemma too
    for fmt, d in delta.items():
        row[f"lemma_{fmt}"] = float(np.mean(gamma > 2 * (d + d32)))
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--out", default="out/results", help="results folder (a device folder inside)")
    ap.add_argument("--n", type=int, default=None, help="images (default: all there are)")
    ap.add_argument("--n-batch1", type=int, default=200, help="images also run one at a time")
    trained = [m for m in MODELS if (HERE / f"{m}.npz").is_file()]
    ap.add_argument("--models", nargs="*", default=trained, choices=trained)
    args = ap.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("seed_gpu: no CUDA device", file=sys.stderr)
        return 2
    X, labels, source = load_test_images(args.n, quiet=True)
    label = device_label(args.device)
    out = Path(args.out) / label
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.models:
        row = model_row(name, X, labels, min(args.n_batch1, len(X)), args.device)
        rows.append(row)
        flips = ", ".join(f"{r} {row.get(f'flips_{r}_b{FULL_BATCH}', '-')}" for r in RUNS)
        lem = ", ".join(f"{f} {row[f'lemma_{f}']:.4f}" for f in ("tf32", "fp16", "bf16")
                        if f"lemma_{f}" in row)  # fmt: skip
        print(f"{name}: flips vs fp32 ({FULL_BATCH}-image batches): {flips}; lemma: {lem}",
              flush=True)  # fmt: skip
    doc = {"device": args.device, "device_label": label, "torch": torch.__version__,
           "cuda": torch.version.cuda, "images": source, "rows": rows}  # fmt: skip
    (out / "seed.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(f"seed_gpu: {out / 'seed.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
