"""Error allowance of elementwise kernels, from measured tables (no torch needed).

``fperr kernels`` measures, per (function, output format), a ladder of rungs
(T, ulps, abs) such that every measured output obeys

    |y - f(x)| <= ulps * ulp(|f(x)|)  where |f(x)| >= T,
    |y - f(x)| <= abs                 where |f(x)| < T,

``ulp`` being the spacing of the output format in the binade of the exact
value (the subnormal spacing below its normal range).  Each rung bounds the
error by ulps ulp(fmag) + abs for |f| <= fmag, and by ulps ulp(fmag) alone
where |f| >= fmin >= T is known; the allowance takes the smallest over the rungs.  The committed
tables (``validation/results/<platform>/kernels.json``) are merged into
``fperr/data/kernel_allowance.json`` -- pairs that hold on every platform,
inflated by the float64 oracle's own error -- which the bound rules read.

Formats without a table use the table of the format the kernel computes in
(the accumulator, e.g. binary32 for an fp8 output) followed by one rounding
to the output format.
"""

from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import FperrInputError
from ..formats import Format, get_format
from .enclosure import half_ulp

Array = npt.NDArray[np.float64]

DATA = "kernel_allowance.json"

# binary32 and binary64 are measured on samples, whose maxima fall short of the
# true maxima: two independent binary32 samples (1M and 2M values) differed by up
# to 16% (log's ulps) and 4% (GELU's tail).  Their rungs are inflated by this
# factor; the exhaustive binary16 and bfloat16 tables need none.
SAMPLED_MARGIN = 1.5
EXHAUSTIVE = ("binary16", "bfloat16")


def ulp(mag: Array, fmt: Format) -> Array:
    """Spacing of ``fmt`` in the binade of ``mag`` (subnormal spacing below); monotone."""
    m = np.maximum(np.asarray(mag, dtype=np.float64), fmt.smallest_normal)
    _, e = np.frexp(m)  # m = f 2^e with f in [0.5, 1): binade 2^(e-1)
    return np.ldexp(1.0, (e - fmt.p).astype(np.int64))


@dataclass(frozen=True)
class FunctionAllowance:
    """Rungs (T, ulps, abs) of one (function, format); infinite from ``overflow_at`` up."""

    rungs: tuple[tuple[float, float, float], ...]
    overflow_at: float | None = None

    def error(self, fmag: Array, fmt: Format, fmin: Array | float = 0.0) -> Array:
        """Largest error of a kernel output whose exact value f has
        ``fmin`` <= |f| <= ``fmag``."""
        m = np.asarray(fmag, dtype=np.float64)
        sp = ulp(m, fmt)
        out = np.full(m.shape, np.inf)
        with np.errstate(over="ignore"):  # huge ulps times huge spacings: inf, not used
            for t, ulps, abs_ in self.rungs:
                out = np.minimum(out, ulps * sp + np.where(fmin >= t, 0.0, abs_))
        if self.overflow_at is not None:
            out = np.where(m >= self.overflow_at, np.inf, out)
        return np.where(m > fmt.max, np.inf, out)

    def relative(self, fmt: Format) -> tuple[float, float]:
        """(rho, alpha) with |y - f| <= rho |f| + alpha below ``overflow_at``, from the
        pair smallest at |f| = 1: ulp(|f|) <= 2u |f| + the subnormal spacing."""
        _, ulps, abs_ = min(self.rungs, key=lambda r: r[1] * 2 * fmt.u + r[2])
        return ulps * 2 * fmt.u, abs_ + ulps * fmt.smallest_subnormal


@dataclass(frozen=True)
class KernelAllowance:
    """Per (function, format) allowances; ``error`` composes for unmeasured formats."""

    table: dict[tuple[str, str], FunctionAllowance]
    source: tuple[str, ...] = ()

    def measured(self, name: str, fmt: Format) -> FunctionAllowance | None:
        return self.table.get((name, fmt.name))

    def error(self, name: str, fmag: Array, out: Format, inner: Format,
              fmin: Array | float = 0.0) -> Array:  # fmt: skip
        """Bound on |y - f(x)| for y in ``out`` and ``fmin`` <= |f(x)| <= ``fmag``.
        Where ``out`` has no table the kernel computes in ``inner`` (binary32 if that
        has none either: PyTorch's opmath) and rounds once more to ``out``."""
        fa = self.measured(name, out)
        if fa is not None:
            return fa.error(fmag, out, fmin)
        fmt_in = inner if self.measured(name, inner) is not None else get_format("binary32")
        fi = self.measured(name, fmt_in)
        if fi is None or fmt_in.p < out.p:
            raise FperrInputError(f"no measured allowance for {name} in {out.name}: "
                                  "run fperr kernels and rebuild fperr/data")  # fmt: skip
        e_in = fi.error(fmag, fmt_in, fmin)
        return e_in + half_ulp(np.asarray(fmag) + e_in, out)

    def relative(self, name: str, fmt: Format) -> tuple[float, float]:
        """(rho, alpha) of ``name`` computed in ``fmt`` (binary32 if unmeasured)."""
        fa = self.measured(name, fmt)
        if fa is None:
            fmt = get_format("binary32")
            fa = self.measured(name, fmt)
        if fa is None:
            raise FperrInputError(f"no measured allowance for {name}: run fperr kernels")
        return fa.relative(fmt)


# -- building the package data from the measured tables -------------------------------------------
def _oracle_margin(table: dict[str, Any], name: str, fmt: str) -> float:
    """Relative error of the oracle behind a measurement (float64 or mpmath)."""
    if fmt == "binary64":  # mpmath (40 digits) rounded to float64
        return 2.0**-53 * 1.001
    measured = float(table.get("oracle_rel_error", {}).get(name, 1e-13))
    return 10 * max(measured, 1e-15) + 2.0**-53


def _pareto(rungs: list[tuple[float, float, float]]) -> list[tuple[float, float, float]]:
    """Drop rungs that another beats in T, ulps and abs at once (keeping one of equals)."""
    front: list[tuple[float, float, float]] = []
    for r in sorted(set(rungs)):
        if not any(all(o[k] <= r[k] for k in range(3)) for o in front):
            front = [o for o in front if not all(r[k] <= o[k] for k in range(3))] + [r]
    return sorted(front)


def _round_up(v: float, digits: int = 3) -> float:
    if v <= 0 or not math.isfinite(v):
        return v
    q = 10.0 ** (math.floor(math.log10(v)) - digits + 1)
    r = float(f"{math.ceil(v / q) * q:.{digits}g}")
    while r < v:  # the decimal may parse below v
        r = math.nextafter(r, math.inf)
    return r


def _combine(
    choice: tuple[tuple[float, float, float], ...], fmt: Format
) -> tuple[float, float, float]:
    """One rung valid on every platform from one rung of each: T = the largest T_i;
    below it platform i errs <= max(abs_i, ulps_i ulp(T)) (ulp is monotone)."""
    t = max(c[0] for c in choice)
    ulps = max(c[1] for c in choice)
    abs_ = max(max(c[2], c[1] * float(ulp(np.array(t), fmt))) if c[0] < t else c[2]
               for c in choice)  # fmt: skip
    return t, ulps, abs_


def merge_tables(tables: list[dict[str, Any]]) -> dict[str, Any]:
    """Rungs valid on every platform, sampled formats inflated by SAMPLED_MARGIN,
    the oracle's error added (ulps: rho/u, as rho |f| < (rho/u) ulp(|f|); abs:
    rho T), rounded up to 3 digits."""
    out: dict[str, Any] = {"functions": {}, "platforms": [t["environment"] for t in tables]}
    keys = {(n, f) for t in tables for n, d in t["functions"].items() for f in d}
    for name, fmt in sorted(keys):
        p = get_format(fmt)
        per = [(t, t["functions"][name][fmt]) for t in tables
               if fmt in t["functions"].get(name, {})]  # fmt: skip
        ladders = []
        for t, res in per:
            rho = _oracle_margin(t, name, fmt)
            c = 1.0 if fmt in t.get("exhaustive", EXHAUSTIVE) else SAMPLED_MARGIN
            ladders.append([(float(T), c * float(u) + rho / p.u, c * float(a) + rho * float(T))
                            for T, u, a in res["ladder"]])  # fmt: skip
        rungs = [_combine(c, p) for c in itertools.product(*ladders)]
        overflow = [float(r["overflow_at"]) / (1.0 if fmt in t.get("exhaustive", EXHAUSTIVE) else
                                               SAMPLED_MARGIN)
                    for t, r in per if r.get("overflow_at") is not None]  # fmt: skip
        out["functions"].setdefault(name, {})[fmt] = {
            "rungs": [[T, _round_up(u), _round_up(a)] for T, u, a in _pareto(rungs)],
            "overflow_at": min(overflow) if overflow else None,
        }
    return out


def build(paths: list[Path], dest: Path) -> dict[str, Any]:
    tables = [json.loads(Path(p).read_text()) for p in paths]
    data = merge_tables(tables)
    data["source"] = [str(p) for p in paths]
    dest.write_text(json.dumps(data, indent=1) + "\n")
    return data


@cache
def default_allowance() -> KernelAllowance:
    """The allowance shipped with fperr (package data)."""
    text = resources.files("fperr.data").joinpath(DATA).read_text()
    data = json.loads(text)
    table = {
        (name, fmt): FunctionAllowance(tuple((float(t), float(u), float(a))
                                             for t, u, a in e["rungs"]), e.get("overflow_at"))
        for name, per in data["functions"].items()
        for fmt, e in per.items()
    }  # fmt: skip
    return KernelAllowance(table, tuple(data.get("source", ())))


if __name__ == "__main__":  # pragma: no cover
    import sys

    here = Path(__file__).resolve().parents[1] / "data" / DATA
    build([Path(p) for p in sys.argv[1:]], here)
    print(f"wrote {here}")
