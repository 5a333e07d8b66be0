"""Probabilistic certificates of the seed models with full ranges, image by image.

fperr's default certificates are 0% on these models (see README.md): the
deterministic worst case over every rounding that reaches a unit grows about
2.5 times per conv-BN-ReLU block faster than the observed error.  With
``ranges="full"`` and ``method="probabilistic"`` every unit's range is a
backward functional whose roundings combine in quadrature (Higham and Mary's
model, Hoeffding), one more event of the failure budget.  This costs about one
forward pass per unit (tens of seconds per image here), so it runs on a few
images: for each, ``fperr.bound`` bounds the binary32 reference run and then the
binary16 run (binary32 accumulation), anchored on the reference's values, with
half the failure budget each (0.999 overall), and the image is certified iff
y_k - y_j > B_k + B_j for every j != k.

Run: python examples/seed/certify_full_ranges.py vgg11_bn 0 1 2 3 [--method deterministic]
    [--device cuda --batch 10]
Appends one JSON line per image to full_ranges.jsonl (``--out``).  ``--device cuda``
runs the backward passes with torch on the GPU (fperr's torch backend), ``--batch``
bounds several images at once (the same bounds; a GPU is better used so).  With
``--method deterministic`` the bound is a proof: every run, worst case.

``--ranges unstable`` gives backward rows only to the units whose range may
change their rule (ReLUs near their kink, max-pooling windows whose winner is in
doubt): about half the time, a looser bound.  ``--ranges unstable,full`` tries
unstable ranges first and full ones where they leave the image undecided; under
the probabilistic method such an image's verdict then rests on two bounds, each
failing with probability at most 0.001 (0.002 for the pair: a union bound).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

import fperr
from fperr.arith import Emulated

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from architectures import MODELS, load_weights  # noqa: E402

CONFIDENCE = 0.999


def _bound(
    model: fperr.Model, x: np.ndarray, method: str, ranges: str, device: str = "cpu"
) -> tuple[np.ndarray, np.ndarray]:
    """(reference outputs, bounds) of a batch of images: both runs (probabilistic:
    half the failure budget each), the binary32 run first, whose values anchor the
    binary16 run's ranges (fperr.bound); the backward passes on ``device`` (cpu:
    numpy, cuda: torch)."""
    b = fperr.bound(model, x, Emulated.from_names("binary16", "binary32"),
                    Emulated.from_names("binary32", "binary32"), method=method,
                    confidence=CONFIDENCE, ranges=ranges, device=device)  # fmt: skip
    return b.reference.output, b.bound


def _certified(y: np.ndarray, B: np.ndarray) -> bool:
    k = int(np.argmax(y))
    return all(y[k] - y[j] > B[k] + B[j] for j in range(y.size) if j != k)


def certify_images(model: fperr.Model, net: torch.nn.Module, X: np.ndarray,
                   method: str = "probabilistic", ranges: str = "full",
                   device: str = "cpu") -> list[dict]:  # fmt: skip
    """One row per image of the batch ``X``; each range mode after the first only
    for the images the last left undecided.  An image's seconds are its share of
    its batch's time (bounds do not depend on the batch)."""
    n = X.shape[0]
    y = B = np.zeros((0, 0))
    used = [[] for _ in range(n)]
    seconds = np.zeros(n)
    todo = np.arange(n)
    for name in ranges.split(","):  # each next one only where the last left it undecided
        t0 = time.perf_counter()
        y_t, B_t = _bound(model, X[todo], method, name, device)
        seconds[todo] += (time.perf_counter() - t0) / todo.size
        if not y.size:  # the first mode: every image
            y, B = y_t.copy(), B_t.copy()
        else:
            y[todo], B[todo] = y_t, B_t
        for i in todo:
            used[i].append(name)
        todo = np.array([i for i in todo if not _certified(y[i], B[i])], dtype=np.intp)
        if not todo.size:
            break
    with torch.no_grad():  # on copies: .half() casts a module in place
        y16 = copy.deepcopy(net).half()(torch.from_numpy(X).half()).double().numpy()
        y32 = copy.deepcopy(net).float()(torch.from_numpy(X).float()).double().numpy()
    rows = []
    for i in range(n):
        top = np.sort(y[i])
        rows.append({
            "method": method,
            "ranges": ",".join(used[i]),
            "certified": bool(_certified(y[i], B[i])),
            "gap": float(top[-1] - top[-2]),
            "max_bound": float(B[i].max()),
            "observed_delta_torch": float(np.abs(y16[i] - y32[i]).max()),
            "flipped_torch": bool(np.argmax(y16[i]) != np.argmax(y32[i])),
            "seconds": float(seconds[i]),
        })  # fmt: skip
        if device != "cpu":
            rows[-1]["device"] = device
        if n > 1:
            rows[-1]["batch"] = n
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=sorted(MODELS))
    ap.add_argument("images", type=int, nargs="+", help="indices into mnist_test_1000.npz")
    ap.add_argument("--method", choices=("probabilistic", "deterministic"),
                    default="probabilistic")  # fmt: skip
    ap.add_argument("--ranges", choices=("full", "unstable", "unstable,full"), default="full")
    ap.add_argument("--device", default="cpu",
                    help="cpu (numpy) or cuda (torch on the GPU) for the backward passes")
    ap.add_argument("--batch", type=int, default=1, help="images bounded at once")
    ap.add_argument("--out", default=str(HERE / "full_ranges.jsonl"),
                    help="JSON lines file to append to")  # fmt: skip
    args = ap.parse_args(argv)
    data = np.load(HERE / "mnist_test_1000.npz")
    net = load_weights(MODELS[args.model](), str(HERE / f"{args.model}.npz")).eval()
    model = fperr.from_torch(net, input_shape=(1, 32, 32))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "a", encoding="utf-8") as out:
        for b0 in range(0, len(args.images), args.batch):
            idx = args.images[b0 : b0 + args.batch]
            X = np.asarray(data["inputs"][idx], dtype=np.float64)
            for i, r in zip(idx, certify_images(model, net, X, args.method, args.ranges,
                                                args.device), strict=True):  # fmt: skip
                row = {"model": args.model, "image": i, **r}
                out.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
