"""Per-input deterministic bounds and `fperr bound` on the 1,797 digits,
against the float64 forward pass of the same batch, measured in one run.

Targets (issues 4 and 5): bounds <= 4x the float64 forward pass; report the
wall time of the whole certificate.  Run: python benchmarks/bench_bound.py
"""

from __future__ import annotations

import timeit
from pathlib import Path

import numpy as np

from fperr.arith import Emulated
from fperr.bounds import bound_run
from fperr.certify import certify
from fperr.model import load_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def best(fn, repeat: int = 3) -> float:
    return min(timeit.repeat(fn, number=1, repeat=repeat))


def main() -> None:
    d = np.load(EXAMPLES / "digits.npz")
    X = d["inputs"]
    model = load_model(EXAMPLES / "mlp.yaml")
    t64 = best(lambda: model.forward(X), repeat=10)
    t16 = best(lambda: model.forward(X, Emulated.from_names("binary16", "binary32")))
    tb = best(lambda: bound_run(model, X, Emulated.from_names("binary16", "binary32")))
    tc = best(lambda: certify(model, X, d["labels"]), repeat=1)
    print(f"float64 forward pass, 1797 digits:    {t64 * 1e3:8.1f} ms")
    print(f"emulated binary16 forward (blas):     {t16 * 1e3:8.1f} ms  ratio {t16 / t64:6.1f}x"
          "  (target <= 5x)")  # fmt: skip
    print(f"deterministic bound, low run:         {tb * 1e3:8.1f} ms  ratio {tb / t64:6.1f}x"
          "  (target <= 4x)")  # fmt: skip
    print(f"certify (both runs + certificates):   {tc * 1e3:8.1f} ms  ratio {tc / t64:6.1f}x")


if __name__ == "__main__":
    main()
