"""Tightness of the bounds: bound / observed error, per layer and end to end.

Observed errors are the worst over several summation orders (blas,
sequential, pairwise, blocked) of the emulated binary16 run against exact
arithmetic.  Reported: median over inputs of (max bound / max observed), for
the deterministic and probabilistic methods; per layer, the same ratio for
each prefix of the network (the enclosure after that layer).
Targets (issue 4): deterministic <= 30 end to end, probabilistic <= 5, per
layer <= 3.  Run: python benchmarks/tightness.py [N_INPUTS]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from fperr.arith import Emulated
from fperr.bounds import bound_run
from fperr.model import Model, load_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ORDERS = ("blas", "sequential", "pairwise", "blocked")


def observed(model: Model, X: np.ndarray) -> np.ndarray:
    exact = model.forward(X)
    errs = [np.abs(model.forward(X, Emulated.from_names("binary16", order=o)) - exact)
            for o in ORDERS]  # fmt: skip
    return np.max(errs, axis=0)


def ratio(radius: np.ndarray, obs: np.ndarray) -> float:
    return float(np.median(radius.max(axis=1) / obs.max(axis=1)))


def main(n: int = 300) -> None:
    X = np.load(EXAMPLES / "digits.npz")["inputs"][:n]
    low = Emulated.from_names("binary16", "binary32")
    for name in ("mlp", "cnn", "deep_tanh"):
        model = load_model(EXAMPLES / f"{name}.yaml")
        obs = observed(model, X)
        det = bound_run(model, X, low)
        prob = bound_run(model, X, low, method="probabilistic")
        print(f"{name}: end to end, median bound/observed over {n} inputs: "
              f"deterministic {ratio(det.radius, obs):.1f} (target <= 30), "
              f"probabilistic {ratio(prob.radius, obs):.1f} (target <= 5)")  # fmt: skip
        per = []
        for i in range(1, len(model.layers) + 1):
            sub = Model(name, model.input_shape, model.layers[:i])
            r = bound_run(sub, X, low).radius.reshape(n, -1)
            o = observed(sub, X).reshape(n, -1)
            keep = o.max(axis=1) > 0
            if not keep.any():  # an exact layer (reshape of exact inputs): nothing to compare
                continue
            per.append(f"{model.layers[i - 1].type} {ratio(r[keep], o[keep]):.1f}")
        print("   per layer (enclosure after each layer): " + ", ".join(per))


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
