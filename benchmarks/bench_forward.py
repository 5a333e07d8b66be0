"""Emulated binary16 forward pass against the float64 one, measured in the same run.

The digits MLP (64-256-256-10) on all 1,797 digits: ``Model.forward`` with the
default ``Emulated()`` arithmetic (binary16 storage, binary32 accumulation,
"blas" order) against ``Model.forward`` in float64 (``Exact()``) and against a
bare numpy float64 forward pass.  Target: emulated <= 5x the float64
``Model.forward``.  ``--profile`` prints where the emulated pass spends its time.

Run: python benchmarks/bench_forward.py [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import timeit
from pathlib import Path

import numpy as np

from fperr.arith import Emulated, Exact
from fperr.layers import Dense
from fperr.model import load_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TARGET = 5.0


def best(fn, number: int = 5, repeat: int = 7) -> float:
    """Seconds per call: the minimum over ``repeat`` timings of ``number`` calls."""
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", action="store_true", help="profile the emulated pass")
    args = parser.parse_args()

    model = load_model(EXAMPLES / "mlp.yaml")
    x = np.load(EXAMPLES / "digits.npz")["inputs"]
    emulated, exact = Emulated(), Exact()
    dense = [(la.weight.T.copy(), la.bias) for la in model.layers if isinstance(la, Dense)]

    def numpy_forward() -> np.ndarray:
        h = x
        for i, (wt, b) in enumerate(dense):
            h = h @ wt + b
            if i < len(dense) - 1:
                h = np.maximum(h, 0.0)
        return h

    np.testing.assert_allclose(numpy_forward(), model.forward(x, exact), rtol=1e-12, atol=1e-12)
    t_np = best(numpy_forward)
    t_exact = best(lambda: model.forward(x, exact))
    t_emul = best(lambda: model.forward(x, emulated))
    print(f"digits MLP 64-256-256-10, {len(x)} inputs; arithmetic {emulated.name}, order "
          f"{emulated.order!r}")  # fmt: skip
    print(f"  numpy float64 forward           {t_np * 1e3:8.2f} ms")
    print(f"  Model.forward, Exact (float64)  {t_exact * 1e3:8.2f} ms")
    print(f"  Model.forward, Emulated()       {t_emul * 1e3:8.2f} ms")
    ratio = t_emul / t_exact
    ok = "ok" if ratio <= TARGET else "MISSED"
    print(f"  ratio emulated / exact          {ratio:8.2f}x  (target <= {TARGET:g}x) {ok}")
    print(f"  ratio emulated / bare numpy     {t_emul / t_np:8.2f}x")

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(20):
            model.forward(x, emulated)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(12)


if __name__ == "__main__":
    main()
