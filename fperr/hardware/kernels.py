"""Measure the error of PyTorch's elementwise kernels (``fperr kernels``).

Every finite binary16 and bfloat16 input, and a dense binary32 sample, is
run through each kernel (tanh, sigmoid, GELU in its erf and tanh forms, exp,
SiLU, rsqrt, erf, log, ELU at alpha = 1, hard-swish, hard-sigmoid) at several
tensor sizes -- 1 and 7 (the scalar loop), 11 and 69 and 95 (vector body plus
scalar tail), 1031, 40037 and the whole
array (above ATen's 32,768-element grain: parallel chunks, each with its own
tail) -- with each value rolled to several positions, so that every value
meets every code path.  The oracle is float64 (numpy/scipy, written to avoid
cancellation: GELU through erfc, its tanh form through expit); its own error
is measured against mpmath on a sample and reported.

For each (function, format) the result holds, per path, the largest error in
ulps of the output format (ulps of the exact value's binade, where |f| is at
least the smallest normal) and the largest absolute error, with the worst
inputs; and a *ladder*: for thresholds T = 2^k, the largest ulps error where
|f| >= T and the largest absolute error where |f| < T.  Each rung is a valid
bound |y - f| <= ulps ulp(|f|) + abs for every input, so the allowance
(:mod:`fperr.bounds.allowance`) keeps the Pareto front of the rungs.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from scipy.special import erf, erfc, expit

from .torch_env import require_torch, resolve_device

Array = npt.NDArray[np.float64]

# (p, emin, max) of the output formats measured
FORMATS: dict[str, tuple[int, int, float]] = {
    "binary16": (11, -14, 65504.0),
    "bfloat16": (8, -126, float(np.finfo(np.float32).max) * (1 - 2.0**-8) / (1 - 2.0**-24)),
    "binary32": (24, -126, float(np.finfo(np.float32).max)),
    "binary64": (53, -1022, float(np.finfo(np.float64).max)),
}
TORCH_DTYPES = {"binary16": "float16", "bfloat16": "bfloat16", "binary32": "float32",
                "binary64": "float64"}  # fmt: skip
SIZES = (1, 7, 11, 69, 95, 1031, 40037, 0)  # 0: the whole array in one call
SMALL = 1031  # sizes up to this run on a subsample of the binary32 values


def _gelu_tanh(x: Array) -> Array:
    t = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
    return x * expit(2 * t)  # 0.5 (1 + tanh t) = expit(2t), no cancellation


def _hardsigmoid(x: Array) -> Array:
    return np.minimum(np.maximum(x + 3, 0.0), 6.0) / 6


def _pos(f: Callable[[Array], Array]) -> Callable[[Array], Array]:
    def g(x: Array) -> Array:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(x > 0, f(np.where(x > 0, x, 1.0)), np.nan)

    return g


# The exact functions in float64 (oracle) and the kernels' names in torch.
ORACLES: dict[str, Callable[[Array], Array]] = {
    "tanh": np.tanh,
    "sigmoid": expit,
    "gelu": lambda x: 0.5 * x * erfc(-x / math.sqrt(2)),
    "gelu_tanh": _gelu_tanh,
    "exp": np.exp,
    "silu": lambda x: x * expit(x),
    "rsqrt": _pos(lambda x: 1 / np.sqrt(x)),
    "erf": erf,
    "log": _pos(np.log),
    "elu": lambda x: np.where(x > 0, x, np.expm1(np.minimum(x, 0.0))),  # alpha = 1
    "hardswish": lambda x: x * _hardsigmoid(x),
    "hardsigmoid": _hardsigmoid,
}


def _torch_fn(torch: Any, name: str) -> Callable[[Any], Any]:
    F = torch.nn.functional
    return {
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "gelu": F.gelu,
        "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
        "exp": torch.exp,
        "silu": F.silu,
        "rsqrt": torch.rsqrt,
        "erf": torch.erf,
        "log": torch.log,
        "elu": F.elu,
        "hardswish": F.hardswish,
        "hardsigmoid": F.hardsigmoid,
    }[name]


# -- inputs ---------------------------------------------------------------------------------------
def all_values(fmt: str) -> Array:
    """Every finite value of a 16-bit format, as float64."""
    bits = np.arange(1 << 16, dtype=np.uint32)
    if fmt == "binary16":
        v = bits.astype(np.uint16).view(np.float16).astype(np.float64)
    else:  # bfloat16: the top half of a binary32
        f = (bits << 16).view(np.float32)
        return f[np.isfinite(f)].astype(np.float64)
    return v[np.isfinite(v)]


def sample(n: int, fmt: str = "binary32", seed: int = 0) -> Array:
    """binary32 (or binary64) values: log-uniform magnitudes over the whole range, a
    dense uniform sample of [-20, 20], and the edges (0, subnormals, max, binade ends)."""
    rng = np.random.default_rng(seed)
    p, emin, fmax = FORMATS[fmt]
    mag = np.exp2(rng.uniform(emin - p + 1, math.log2(fmax), n // 2))
    dense = rng.uniform(-20, 20, n - n // 2)
    edges = [0.0, 2.0 ** (emin - p + 1), 2.0**emin, fmax, 1.0, 88.72, 88.73, 103.9, 104.0,
             709.78, 709.79, 745.2]  # fmt: skip
    edges += [float(2.0**k * (2 - 2.0 ** (1 - p))) for k in range(-30, 10)]
    v = np.concatenate([mag * rng.choice([-1.0, 1.0], n // 2), dense, edges, -np.array(edges)])
    if fmt == "binary32":
        with np.errstate(over="ignore"):
            v = v.astype(np.float32).astype(np.float64)
    return np.unique(v[np.isfinite(v)])


# -- errors ---------------------------------------------------------------------------------------
def ulp_of(mag: Array, fmt: str) -> Array:
    """Spacing of ``fmt`` in the binade of ``mag`` (the subnormal spacing below)."""
    p, emin, _ = FORMATS[fmt]
    _, e = np.frexp(np.maximum(mag, 2.0**emin))  # mag = m 2^e, m in [0.5, 1)
    return np.ldexp(1.0, (e - 1 - (p - 1)).astype(np.int64))


def _run_sizes(torch: Any, fn: Callable[[Any], Any], xt: Any, size: int, rolls: int) -> Array:
    """Outputs (rolls, n) of ``fn`` with the values rolled ``rolls`` times and cut
    into contiguous tensors of ``size`` (0: one tensor), in the original order."""
    n = xt.shape[0]
    size = n if size == 0 else size
    outs = []
    for r in range(rolls):
        shift = (r * max(size // rolls, 1) + r) % n
        rolled = torch.roll(xt, shift)
        m = -(-n // size)
        padded = rolled.repeat(-(-m * size // n))[: m * size]  # filled up with repeats
        rows = padded.reshape(m, size)
        y = torch.cat([fn(rows[i]) for i in range(m)])[:n]
        outs.append(torch.roll(y, -shift).double().cpu().numpy())
    return np.stack(outs)


@dataclass
class PathResult:
    size: int
    rolls: int
    values: int
    max_ulps: float
    worst_ulps_input: float
    max_abs: float
    worst_abs_input: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _errors(y: Array, exact: Array) -> Array:
    with np.errstate(invalid="ignore"):
        err = np.abs(y - exact)
    return np.where(np.isnan(err) & ~np.isnan(exact), np.inf, err)  # NaN for a finite f


def _path_result(size: int, rolls: int, x: Array, err: Array, exact: Array, fmt: str) -> PathResult:
    p, emin, _ = FORMATS[fmt]
    normal = np.abs(exact) >= 2.0**emin
    ulps = np.where(normal, err / ulp_of(np.abs(exact), fmt), 0.0)
    iu, ia = int(np.argmax(ulps)), int(np.argmax(err))
    return PathResult(size, rolls, len(x), float(ulps[iu]), float(x[iu]), float(err[ia]),
                      float(x[ia]))  # fmt: skip


def ladder(exact: Array, err: Array, fmt: str) -> list[tuple[float, float, float]]:
    """Pareto front of (T, ulps where |f| >= T, abs where |f| < T), T = 2^k: a
    smaller T, fewer ulps or a smaller abs each make a rung useful."""
    p, emin, fmax = FORMATS[fmt]
    mag = np.abs(exact)
    order = np.argsort(mag)
    mag, err = mag[order], err[order]
    ulps = err / ulp_of(mag, fmt)
    suffix = np.maximum.accumulate(ulps[::-1])[::-1]
    prefix = np.concatenate([[0.0], np.maximum.accumulate(err)])
    rungs = []
    for k in range(emin - p, math.frexp(fmax)[1]):
        t = math.ldexp(1.0, k)
        i = int(np.searchsorted(mag, t))  # first index with |f| >= 2^k
        u = float(suffix[i]) if i < len(mag) else 0.0
        rungs.append((t, u, float(prefix[i])))
    # drop rungs another beats in T, ulps and abs at once (rungs come in increasing T)
    front: list[tuple[float, float, float]] = []
    for r in rungs:
        if not any(o[1] <= r[1] and o[2] <= r[2] for o in front):
            front.append(r)
    return front


def measure_function(torch: Any, dev: Any, name: str, fmt: str, x: Array,
                     x_small: Array) -> dict[str, Any]:  # fmt: skip
    """Every path's result and the ladder of one (function, format)."""
    fn = _torch_fn(torch, name)
    dtype = getattr(torch, TORCH_DTYPES[fmt])
    _, _, fmax = FORMATS[fmt]
    oracle = mp_oracle(name) if fmt == "binary64" else ORACLES[name]
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        exact_of = dict(zip(x.tolist(), oracle(x).tolist(), strict=True))
        if x_small is not x:
            exact_of.update(zip(x_small.tolist(), oracle(x_small).tolist(), strict=True))
    worst: dict[float, float] = {}
    paths = []
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        for size in SIZES:
            xs = x_small if 0 < size <= SMALL else x
            exact = np.array([exact_of[v] for v in xs.tolist()])
            keep = np.isfinite(exact) & (np.abs(exact) <= fmax)  # overflow: the bound is inf
            xs, exact = xs[keep], exact[keep]
            xt = torch.tensor(xs, dtype=torch.float64).to(dtype).to(dev)
            rolls = 1 if size == 1 else 3
            err = _errors(_run_sizes(torch, fn, xt, size, rolls), exact).max(axis=0)
            paths.append(_path_result(size, rolls, xs, err, exact, fmt).to_dict())
            for v, e in zip(xs.tolist(), err.tolist(), strict=True):
                if e > worst.get(v, -1.0):
                    worst[v] = e
    ev = np.fromiter(worst.values(), dtype=np.float64, count=len(worst))
    ex = np.array([exact_of[v] for v in worst])
    # Non-finite outputs for a finite f (GELU's x (1 + erf) overflows above max/2):
    # the allowance is infinite from the smallest such |f| up.
    bad = ~np.isfinite(ev)
    overflow_at = float(np.abs(ex[bad]).min()) if bad.any() else None
    if overflow_at is not None:
        keep = np.abs(ex) < overflow_at
        ex, ev = ex[keep], ev[keep]
    return {"paths": paths, "inputs": len(worst), "nonfinite": int(bad.sum()),
            "overflow_at": overflow_at, "ladder": ladder(ex, ev, fmt)}


# -- the oracle's own accuracy --------------------------------------------------------------------
def _mp_functions() -> dict[str, Callable[[Any], Any]]:
    import mpmath as mp

    return {
        "tanh": mp.tanh,
        "sigmoid": lambda t: 1 / (1 + mp.exp(-t)),
        "gelu": lambda t: t * mp.erfc(-t / mp.sqrt(2)) / 2,
        "gelu_tanh": lambda t: t / (1 + mp.exp(-2 * mp.sqrt(2 / mp.pi) * (t + mp.mpf("0.044715")
                                                                           * t**3))),
        "exp": mp.exp,
        "silu": lambda t: t / (1 + mp.exp(-t)),
        "rsqrt": lambda t: 1 / mp.sqrt(t),
        "erf": mp.erf,
        "log": mp.log,
        "elu": lambda t: t if t > 0 else mp.expm1(t),
        "hardswish": lambda t: t * min(max(t + 3, 0), 6) / 6,
        "hardsigmoid": lambda t: min(max(t + 3, 0), 6) / 6,
    }  # fmt: skip


def mp_oracle(name: str, dps: int = 40) -> Callable[[Array], Array]:
    """The exact function in mpmath at ``dps`` digits, rounded to float64 (for binary64)."""
    import mpmath as mp

    f = _mp_functions()[name]

    def g(x: Array) -> Array:
        with mp.workdps(dps):
            return np.array([float(f(mp.mpf(v))) if not (name in ("rsqrt", "log") and v <= 0)
                             else math.nan for v in x.tolist()])  # fmt: skip

    return g


def oracle_accuracy(n: int = 400, seed: int = 1) -> dict[str, float]:
    """Largest relative error of each float64 oracle against mpmath (50 digits)."""
    import mpmath as mp

    mp.mp.dps = 50
    exact_mp = _mp_functions()
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.uniform(-20, 20, n), np.exp2(rng.uniform(-30, 7, n))])
    x = x.astype(np.float32).astype(np.float64)
    out = {}
    for name, f in exact_mp.items():
        xs = np.abs(x) if name in ("rsqrt", "log") else x
        xs = xs[xs != 0]
        got = ORACLES[name](xs)
        rel = 0.0
        for v, g in zip(xs.tolist(), got.tolist(), strict=True):
            e = f(mp.mpf(v))
            if e != 0:
                rel = max(rel, float(abs((mp.mpf(g) - e) / e)))
        out[name] = rel
    return out


def _domain(name: str, x: Array) -> Array:
    """rsqrt and log: the positive values (their magnitudes)."""
    if name not in ("rsqrt", "log"):
        return x
    a = np.abs(x)
    return np.unique(a[a > 0])


HALF_FLAGS = ("avx512_fp16", "avx512_bf16", "amx_bf16", "amx_fp16", "f16c", "avx512f", "avx2")
"""CPU features that change torch's half-precision kernels: torch's cpu_capability
says AVX512 on processors with and without native binary16 vector arithmetic,
whose GELU differs by up to 5.8 ulps (validation/results/cpu-avx512fp16)."""


def cpu_flags() -> list[str]:
    """Which of :data:`HALF_FLAGS` the processor has (Linux; empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    have = set(line.split(":", 1)[-1].split())
    return [f for f in HALF_FLAGS if f in have]


def environment(torch: Any, dev: Any) -> dict[str, Any]:
    env = {
        "torch": str(torch.__version__),
        "device": str(dev),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_flags": cpu_flags(),
    }
    if dev.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(dev)
        env["cuda"] = torch.version.cuda
    return env


def measure(device: str = "cpu", fp32_values: int = 1_000_000, fp32_small: int = 40_000,
            fp64_values: int = 2_000, seed: int = 0,
            functions: tuple[str, ...] = tuple(ORACLES), formats: tuple[str, ...] = tuple(FORMATS),
            log: Callable[[str], None] | None = None) -> dict[str, Any]:  # fmt: skip
    """The table: environment, oracle accuracy and per (function, format) results."""
    torch = require_torch("measuring kernels")
    dev = resolve_device(torch, device)
    say = log or (lambda _m: None)
    table: dict[str, Any] = {"environment": environment(torch, dev), "sizes": list(SIZES),
                             "fp32_values": fp32_values, "fp32_small": fp32_small,
                             "fp64_values": fp64_values, "seed": seed,
                             "oracle_rel_error": oracle_accuracy(),
                             "exhaustive": [f for f in formats if f in ("binary16", "bfloat16")],
                             "functions": {}}  # fmt: skip
    for fmt in formats:
        if fmt == "binary32":
            x = sample(fp32_values, seed=seed)
            x_small = np.random.default_rng(seed + 2).choice(x, min(fp32_small, len(x)),
                                                             replace=False)  # fmt: skip
        elif fmt == "binary64":  # the mpmath oracle is slow: a small sample
            x = x_small = sample(fp64_values, fmt, seed=seed)
        else:
            x = x_small = all_values(fmt)
        for name in functions:
            res = measure_function(torch, dev, name, fmt, _domain(name, x), _domain(name, x_small))
            table["functions"].setdefault(name, {})[fmt] = res
            top = max(res["paths"], key=lambda r: r["max_ulps"])
            worst_abs = max(r["max_abs"] for r in res["paths"])
            say(f"{name:10s} {fmt:9s} max {top['max_ulps']:.4g} ulps (n={top['size']}, "
                f"x={top['worst_ulps_input']:.6g}), abs {worst_abs:.3g}")
    return table


def write_table(table: dict[str, Any], out: Any) -> Any:
    """Write the table as JSON (no NaN; infinities as null) to ``out`` (a Path)."""
    import json

    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
        if isinstance(v, dict):
            return {k: clean(w) for k, w in v.items()}
        if isinstance(v, list | tuple):
            return [clean(w) for w in v]
        return v

    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(clean(table), indent=1, allow_nan=False) + "\n")
    return out
