"""Probe a device and validate the example models on it (the real-hardware runs).

    python validation/run.py --device cpu  --results validation/results
    python validation/run.py --device cuda --results "$OUT/results"

writes ``<results>/<label>/{probe.json, <model>.json, summary.txt}``: five files
(a device run brings back at most eight), the label ``cpu`` or the GPU's name
(``NVIDIA_H100_80GB_HBM3``).  The MLP and the CNN run on all 1,797 digits, the
deep tanh MLP on the first ``--deep-inputs`` (its bound costs ~0.15 s per input
and arithmetic on one core).  Exit 0 when no bound or certificate is violated,
1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fperr.datasets import load_inputs  # noqa: E402
from fperr.model import load_model  # noqa: E402
from fperr.validate import ProbeResult, probe, summarize, validate  # noqa: E402

MODELS = ("mlp", "cnn", "deep_tanh")


def label(device: str) -> str:
    if not device.startswith("cuda"):
        return "cpu"
    import torch

    return re.sub(r"[^A-Za-z0-9.-]+", "_", torch.cuda.get_device_name(torch.device(device)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--results", default=str(ROOT / "validation" / "results"))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--inputs", type=int, default=None, help="first N inputs of every model")
    ap.add_argument("--deep-inputs", type=int, default=300, help="first N inputs of deep_tanh")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()

    def log(msg: str) -> None:
        print(f"[{time.monotonic() - t0:7.1f}s] {msg}", file=sys.stderr, flush=True)

    t0 = time.monotonic()
    out = Path(args.results) / label(args.device)
    out.mkdir(parents=True, exist_ok=True)
    pr: ProbeResult = probe(args.device)
    (out / "probe.json").write_text(json.dumps(pr.to_dict(), indent=1) + "\n")
    log(pr.text())
    texts = [pr.text()]
    X, y = load_inputs(ROOT / "examples" / "digits.npz")
    failed = []
    for name in args.models.split(","):
        model = load_model(ROOT / "examples" / f"{name}.yaml")
        n = args.deep_inputs if name == "deep_tanh" else len(X)
        n = min(n, args.inputs or n)
        log(f"validating {name} on {n} inputs ({args.device})")
        labels = None if y is None else y[:n]
        rep = validate(model, X[:n], labels, device=args.device, probe_result=pr, log=log,
                       workers=args.workers)  # fmt: skip
        rep.save(out / f"{name}.json")
        text = summarize(rep)
        texts.append(text)
        (out / "summary.txt").write_text("\n\n".join(texts) + "\n")
        print(text, flush=True)
        size = (out / f"{name}.json").stat().st_size
        log(f"{name}: {rep.violations} violations, {rep.certified_flips} certified flips, "
            f"report {size / 1e6:.2f} MB")  # fmt: skip
        if not rep.ok:
            failed.append(name)
    log(f"done; {'FAILED: ' + ', '.join(failed) if failed else 'no violation'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
