"""fperr.round against numpy's own cast, measured in the same run.

Targets (issue 2): binary16 <= 1.5x `x.astype(float16).astype(float64)`;
generic formats (bfloat16, tf32, float8_e4m3fn) <= 4x; stochastic <= 8x.
Run: python benchmarks/bench_rounding.py
"""

from __future__ import annotations

import timeit

import numpy as np

import fperr


def best(fn, repeat: int = 5) -> float:
    return min(timeit.repeat(fn, number=1, repeat=repeat))


def main() -> None:
    x = np.random.default_rng(0).standard_normal(10_000_000)
    base = best(lambda: x.astype(np.float16).astype(np.float64))
    print(f"numpy cast float64->float16->float64, 10M values: {base * 1e3:.1f} ms")
    cases = [
        ("binary16 nearest", lambda: fperr.round(x, "binary16"), 1.5),
        ("bfloat16 nearest", lambda: fperr.round(x, "bfloat16"), 4.0),
        ("tf32 nearest", lambda: fperr.round(x, "tf32"), 4.0),
        ("float8_e4m3fn nearest", lambda: fperr.round(x, "float8_e4m3fn"), 4.0),
        ("binary16 toward_zero", lambda: fperr.round(x, "binary16", "toward_zero"), 4.0),
        ("binary16 stochastic", lambda: fperr.round(x, "binary16", "stochastic", rng=0), 8.0),
    ]
    for name, fn, target in cases:
        t = best(fn)
        ok = "ok" if t / base <= target else "MISSED"
        print(f"{name:<24} {t * 1e3:8.1f} ms  ratio {t / base:5.2f}x  (target <= {target}x) {ok}")


if __name__ == "__main__":
    main()
