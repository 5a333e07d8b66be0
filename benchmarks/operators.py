"""Per-operator tightness: median bound / observed on each registered operator's example.

For every operator in fperr.operators.REGISTRY, its example model (the one the
conformance tests use) is bounded in binary16 with a binary32 accumulator on
random inputs; observed is the largest error over four summation orders of
fperr's emulation.  Where the example is a chain and the operator has a
forward-zonotope rule, the zonotope engine's bound is reported too (ratio
backward / zonotope).

    python benchmarks/operators.py [--inputs 200]
"""

from __future__ import annotations

import argparse
import warnings

import numpy as np

from fperr.arith import Emulated
from fperr.bounds import bound_run
from fperr.operators import REGISTRY

ORDERS = ("sequential", "pairwise", "blocked", "blas")


def tightness(name: str, n: int) -> tuple[float, float | None]:
    model = REGISTRY[name].example_for(name, np.random.default_rng(0))
    x = np.random.default_rng(1).normal(size=(n, *model.input_shape))
    exact = model.forward(x).reshape(n, -1)
    arith = Emulated.from_names("binary16", "binary32")
    bound = bound_run(model, x, arith, engine="backward").radius
    obs = np.zeros_like(bound)
    for order in ORDERS:
        y = model.forward(x, Emulated.from_names("binary16", "binary32", order=order))
        obs = np.maximum(obs, np.abs(y.reshape(n, -1) - exact))
    ok = obs > 0
    ratio = float(np.median(bound[ok] / obs[ok]))
    zono = None
    if not model.is_graph and REGISTRY[name].has_rule():
        z = bound_run(model, x, arith, engine="zonotope").radius
        zono = float(np.median(bound / z))
    return ratio, zono


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--inputs", type=int, default=200)
    args = p.parse_args()
    warnings.simplefilter("ignore", RuntimeWarning)
    print(f"{'operator':<12} {'median bound/observed':>22} {'backward/zonotope':>18}")
    for name in sorted(REGISTRY):
        ratio, zono = tightness(name, args.inputs)
        z = "-" if zono is None else f"{zono:.3f}"
        print(f"{name:<12} {ratio:>22.2f} {z:>18}")


if __name__ == "__main__":
    main()
