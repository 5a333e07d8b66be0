"""fperr.round against pychop (if installed) on the adversarial test set.

Counts pychop's results that differ from numpy's own float64->float16 cast
(the oracle) and times both.  pychop is not a dependency: install it with
`pip install pychop` to run this.  Run: python benchmarks/bench_pychop.py
"""

from __future__ import annotations

import sys
import timeit
from pathlib import Path

import numpy as np

import fperr

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def main() -> None:
    try:
        import pychop
    except ImportError:
        print("pychop is not installed: pip install pychop")
        return
    from test_rounding import adversarial_float64

    x = adversarial_float64(np.random.default_rng(2305_10947))
    x = x[np.isfinite(x)]
    with np.errstate(over="ignore"):
        oracle = x.astype(np.float16).astype(np.float64)
    pychop.backend("numpy")
    chop = pychop.Chop(exp_bits=5, sig_bits=10, rmode=1, subnormal=True)
    with np.errstate(all="ignore"):
        theirs = np.asarray(chop(x), dtype=np.float64)
    ours = fperr.round(x, "binary16")

    def wrong(y: np.ndarray) -> np.ndarray:
        return ~((y == oracle) & (np.signbit(y) == np.signbit(oracle)))

    bad = wrong(theirs)
    print(f"adversarial values: {x.size:,}")
    print(f"fperr.round wrong: {int(wrong(ours).sum())}")
    print(f"pychop wrong:      {int(bad.sum())}")
    if bad.any():
        a = np.abs(x[bad])
        bands = {
            "|x| >= 65504 (overflow threshold)": a >= 65504,
            "subnormal |x| < 2^-14": a < 2.0**-14,
        }
        for name, sel in bands.items():
            print(f"   of which {name}: {int(sel.sum())}")
        i = np.flatnonzero(bad)[:3]
        for k in i:
            print(f"   e.g. x={x[k]!r}: pychop {theirs[k]!r}, numpy {oracle[k]!r}")
    t_ours = min(timeit.repeat(lambda: fperr.round(x, "binary16"), number=1, repeat=3))
    with np.errstate(all="ignore"):
        t_theirs = min(timeit.repeat(lambda: chop(x), number=1, repeat=3))
    print(f"time: fperr {t_ours * 1e3:.0f} ms, pychop {t_theirs * 1e3:.0f} ms "
          f"(pychop / fperr = {t_theirs / t_ours:.1f}x)")  # fmt: skip


if __name__ == "__main__":
    main()
