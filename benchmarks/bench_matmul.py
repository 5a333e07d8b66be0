"""Time fperr's emulated matmul against numpy's float16 and float32 matmul.

    python benchmarks/bench_matmul.py [--size 512] [--repeat 3]

All timings come from one run on the same inputs, each the minimum over
single calls repeated round-robin, so the ratios compare like with like.
fperr's timings include rounding the float64 inputs to binary16 and the
result back.
Targets: "sequential" (bit-identical to numpy's float16 matmul) at least 20x
faster than numpy's float16 matmul; "blas" at most 2x numpy's float32 matmul.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable

import numpy as np

from fperr import accumulation


def best_of(fns: dict[str, Callable[[], object]], repeat: int) -> dict[str, float]:
    """Seconds per call of each function: the fastest of ``repeat`` single
    calls, taken round-robin so that all see the same load (the minimum is the
    least noisy estimate on a shared machine)."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeat + 1):  # the first round warms up
        for name, fn in fns.items():
            times[name].append(timeit.timeit(fn, number=1))
    return {name: min(t[1:]) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512, help="m = k = n (default 512)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of the slowest (default 3)")
    args = parser.parse_args()
    n, rep = args.size, args.repeat

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n)), rng.standard_normal((n, n))
    a16, b16 = a.astype(np.float16), b.astype(np.float16)
    a32, b32 = a.astype(np.float32), b.astype(np.float32)
    seq, blas = accumulation.NUMPY_FP16, accumulation.CUBLAS_FP32ACC

    # the emulation must reproduce numpy's float16 matmul bit for bit
    same = np.array_equal(accumulation.matmul(a, b, seq), (a16 @ b16).astype(np.float64))

    t16 = best_of({"f16": lambda: a16 @ b16}, rep)["f16"]
    fast = {
        "f32": lambda: a32 @ b32,
        "seq": lambda: accumulation.matmul(a, b, seq),
        "blas": lambda: accumulation.matmul(a, b, blas),
    }
    t = best_of(fast, 15 * rep)
    t32, tseq, tblas = t["f32"], t["seq"], t["blas"]

    print(f"matmul {n}x{n} @ {n}x{n}, float64 inputs in [N(0,1)]")
    print(f"  numpy float16 matmul         {t16 * 1e3:9.2f} ms")
    print(f"  numpy float32 matmul         {t32 * 1e3:9.2f} ms")
    print(f"  fperr sequential (fp16/fp32) {tseq * 1e3:9.2f} ms   bit-identical to numpy: {same}")
    print(f"  fperr blas (fp16/fp32)       {tblas * 1e3:9.2f} ms")
    print(f"sequential speed-up vs numpy float16: {t16 / tseq:.1f}x (target >= 20x)")
    print(f"blas time vs numpy float32: {tblas / t32:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
