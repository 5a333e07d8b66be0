"""fperr.ops against independent oracles.

* gmpy2 (MPFR) contexts with the format's precision and exponent range and
  ``subnormalize=True``: IEEE 754 semantics in the four directed/nearest
  modes, overflow and signed zeros included.
* Exact rationals: ``fperr.round_scalar`` applied to the exact
  :class:`~fractions.Fraction` result, for ``nearest_away`` (MPFR has no
  ties-away mode) and for formats MPFR cannot describe (``fn`` formats).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from fractions import Fraction
from functools import lru_cache
from typing import Any

import gmpy2
import numpy as np
import pytest

import fperr
from fperr import ops
from fperr.formats import Format

F16, F32, BF16 = (
    fperr.get_format("binary16"),
    fperr.get_format("binary32"),
    fperr.get_format("bf16"),
)
P26 = Format("p26", p=26, emax=127)  # widest supported precision: 2p = 52
GMPY_MODES = {
    "nearest": gmpy2.RoundToNearest,
    "toward_zero": gmpy2.RoundToZero,
    "up": gmpy2.RoundUp,
    "down": gmpy2.RoundDown,
}
GMPY_OPS: dict[str, Callable[..., Any]] = {
    "add": gmpy2.add,
    "sub": gmpy2.sub,
    "mul": gmpy2.mul,
    "div": gmpy2.div,
    "sqrt": gmpy2.sqrt,
    "fma": gmpy2.fma,
}
ARITY = {"add": 2, "sub": 2, "mul": 2, "div": 2, "sqrt": 1, "fma": 3}


# -- oracles ------------------------------------------------------------------
def _context(fmt: Format, mode: str) -> gmpy2.context:
    # MPFR's emin/emax count significands in [1/2, 1): binary16 is
    # precision=11, emax=16, emin=-23 (gmpy2.ieee(16)).
    return gmpy2.context(
        precision=fmt.p,
        emax=fmt.emax + 1,
        emin=3 - fmt.emax - fmt.p,
        subnormalize=True,
        round=GMPY_MODES[mode],
    )


@lru_cache(maxsize=1)
def _f16_table() -> list[object]:
    """mpfr of every binary16 bit pattern (exact, 53-bit)."""
    vals = np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float64)
    return [gmpy2.mpfr(v, 53) for v in vals.tolist()]


def _to_mpfr(x: np.ndarray) -> list[object]:
    # Convert at 53 bits: gmpy2 would otherwise round Python floats to the
    # context precision before operating.
    with np.errstate(over="ignore"):
        is_f16 = np.array_equal(x.astype(np.float16).astype(np.float64), x, equal_nan=True)
    if is_f16:
        table = _f16_table()
        return [table[i] for i in x.astype(np.float16).view(np.uint16).tolist()]
    return [gmpy2.mpfr(v, 53) for v in x.tolist()]


def gmpy_oracle(op: str, fmt: Format, mode: str, args: Sequence[np.ndarray]) -> np.ndarray:
    cols = [_to_mpfr(a) for a in args]
    with gmpy2.context(_context(fmt, mode)):
        out = list(map(GMPY_OPS[op], *cols))
    return np.array([float(v) for v in out])


def fraction_oracle(op: str, fmt: Format, mode: str, args: Sequence[np.ndarray]) -> np.ndarray:
    """Exact rational result rounded by the rational reference (finite inputs)."""
    out = []
    for t in zip(*(a.tolist() for a in args), strict=True):
        fr = [Fraction(v) for v in t]
        if op == "add":
            exact = fr[0] + fr[1]
        elif op == "sub":
            exact = fr[0] - fr[1]
        elif op == "mul":
            exact = fr[0] * fr[1]
        elif op == "div":
            exact = fr[0] / fr[1]
        else:
            exact = fr[0] * fr[1] + fr[2]
        if exact == 0:
            out.append(_exact_zero(op, mode, t))
        else:
            out.append(fperr.round_scalar(exact, fmt, mode))  # type: ignore[arg-type]
    return np.array(out)


def _sum_of_signed(a: float, b: float, mode: str) -> float:
    """IEEE 754-2019 section 6.3: an exact zero sum a + b is -0 only when both
    terms are -0, or in roundTowardNegative ("down"); +0 otherwise (the
    nearest modes, ties-away included)."""
    if a == 0 and b == 0 and math.copysign(1, a) == math.copysign(1, b):
        return a
    return -0.0 if mode == "down" else 0.0


def _exact_zero(op: str, mode: str, t: Sequence[float]) -> float:
    """The signed zero an operation with an exact zero result returns."""
    if op == "add":
        return _sum_of_signed(t[0], t[1], mode)
    if op == "sub":
        return _sum_of_signed(t[0], -t[1], mode)
    if op in ("mul", "div"):  # a zero operand: the sign is the xor of the signs
        return math.copysign(0.0, math.copysign(1, t[0]) * math.copysign(1, t[1]))
    # fma: a*b + c; a zero product carries the xor sign (float64 products of
    # these formats' numbers are exact)
    return _sum_of_signed(t[0] * t[1], t[2], mode)


def assert_same(got: np.ndarray, want: np.ndarray, args: Sequence[np.ndarray]) -> None:
    """Bitwise equality up to NaN payloads (signed zeros must match)."""
    ok = (got == want) & (np.signbit(got) == np.signbit(want))
    ok |= np.isnan(got) & np.isnan(want)
    bad = np.flatnonzero(~ok)
    if bad.size:
        i = bad[0]
        detail = ", ".join(float(a[i]).hex() for a in args)
        raise AssertionError(
            f"{bad.size} mismatches; first: args ({detail}) -> {float(got[i]).hex()}, "
            f"want {float(want[i]).hex()}"
        )


def call(op: str, fmt: Format, mode: str, args: Sequence[np.ndarray]) -> np.ndarray:
    return getattr(ops, op)(*args, fmt, mode)


# -- operand generators ---------------------------------------------------------
RNG_SEED = 20240611


def f16_random(rng: np.random.Generator, n: int) -> np.ndarray:
    """All binary16 bit patterns equally likely: subnormals, inf, NaN included."""
    return rng.integers(0, 2**16, n, dtype=np.uint16).view(np.float16).astype(np.float64)


def f32_random(rng: np.random.Generator, n: int) -> np.ndarray:
    with np.errstate(invalid="ignore"):  # signalling NaN patterns
        return rng.integers(0, 2**32, n, dtype=np.uint32).view(np.float32).astype(np.float64)


def bf16_random(rng: np.random.Generator, n: int) -> np.ndarray:
    bits = rng.integers(0, 2**16, n, dtype=np.uint32) << np.uint32(16)
    with np.errstate(invalid="ignore"):  # signalling NaN patterns
        return bits.view(np.float32).astype(np.float64)


def half_ulp(x: np.ndarray, fmt: Format) -> np.ndarray:
    """Half the spacing of ``fmt`` at each x, where that is a format number
    (else 0): x + half_ulp is a tie."""
    e = np.frexp(np.abs(x))[1] - 1
    h = np.ldexp(1.0, np.maximum(e, fmt.emin) - fmt.p)
    return np.where(h >= fmt.smallest_subnormal, h, 0.0)


def close_to(rng: np.random.Generator, x: np.ndarray, fmt: Format, spread: int) -> np.ndarray:
    """Format numbers within a factor 2**spread of ``x``: cancellation, carries."""
    y = x * np.ldexp(rng.uniform(0.5, 1.0, x.shape), rng.integers(-spread, spread + 1, x.shape))
    y *= rng.choice([-1.0, 1.0], x.shape)
    return fperr.round(y, fmt, "toward_zero")


def exact_products(
    rng: np.random.Generator, fmt: Format, n: int, bits: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (a, b) of format numbers whose product has exactly ``bits``
    significant bits and is odd in its last one: a midpoint of ``fmt`` for
    ``bits = p + 1`` (the default), a format number for ``bits = p``.  Built as
    odd u of k bits times odd v of bits-k bits, scaled anywhere in the range."""
    p, bits = fmt.p, fmt.p + 1 if bits is None else bits
    k = rng.integers(1, bits, 8 * n)
    u = rng.integers(2 ** (k - 1), 2**k) | 1
    v = rng.integers(2 ** (bits - k - 1), 2 ** (bits - k)) | 1
    keep = (u * v) >= 2 ** (bits - 1)
    u, v, k = u[keep], v[keep], k[keep]
    big_e = rng.integers(fmt.emin - 2, fmt.emax, u.shape)  # exponent of the product
    i = (big_e - p) // 2 + rng.integers(-3, 4, u.shape)
    j = big_e - (bits - 1) - i
    a = np.ldexp(u.astype(np.float64), i) * rng.choice([-1.0, 1.0], u.shape)
    b = np.ldexp(v.astype(np.float64), j)
    # u, v have at most p bits; keep operands within the exponent range
    lsb = fmt.emin - p + 1
    ok = (i >= lsb) & (j >= lsb) & (np.abs(a) <= fmt.max) & (b <= fmt.max)
    return a[ok][:n], b[ok][:n]


# -- binary16: large random grids --------------------------------------------------
@pytest.fixture(scope="module")
def f16_operands() -> list[np.ndarray]:
    rng = np.random.default_rng(RNG_SEED)
    n = 200_000
    return [f16_random(rng, n) for _ in range(3)]


@pytest.mark.parametrize("mode", list(GMPY_MODES))
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "fma"])
def test_binary16_random_bit_patterns(op: str, mode: str, f16_operands: list[np.ndarray]) -> None:
    args = f16_operands[: ARITY[op]]
    assert_same(call(op, F16, mode, args), gmpy_oracle(op, F16, mode, args), args)


@pytest.mark.parametrize("mode", list(GMPY_MODES))
def test_binary16_sqrt_exhaustive(mode: str) -> None:
    x = np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float64)
    assert_same(call("sqrt", F16, mode, [x]), gmpy_oracle("sqrt", F16, mode, [x]), [x])


@pytest.mark.parametrize("mode", list(GMPY_MODES))
def test_binary16_adversarial(mode: str) -> None:
    rng = np.random.default_rng(RNG_SEED + 1)
    x = f16_random(rng, 40_000)
    x = x[np.isfinite(x)]
    every = np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float64)
    big = np.linspace(60000.0, 65504.0, 200)
    cases = [
        (every, -every),  # exact zeros: sign depends on the mode
        (x, close_to(rng, x, F16, 3)),  # cancellation
        (x, half_ulp(x, F16) * rng.choice([-1.0, 1.0], x.shape)),  # ties
        (fperr.round(np.repeat(big, 200), F16), fperr.round(np.tile(big, 200) / 8, F16)),
    ]
    for a, b in cases:
        for op in ("add", "sub"):
            assert_same(call(op, F16, mode, [a, b]), gmpy_oracle(op, F16, mode, [a, b]), [a, b])
    a, b = exact_products(rng, F16, 20_000)
    c = f16_random(rng, a.size)
    for op, args in (("mul", [a, b]), ("fma", [a, b, c]), ("fma", [a, b, np.zeros_like(a)])):
        assert_same(call(op, F16, mode, args), gmpy_oracle(op, F16, mode, args), args)


# -- binary32, bfloat16 and the widest supported precision ------------------------------
@pytest.fixture(scope="module")
def f32_operands() -> list[np.ndarray]:
    rng = np.random.default_rng(RNG_SEED + 2)
    n = 25_000
    x = f32_random(rng, n)
    finite = np.where(np.isfinite(x), x, 1.0)
    return [
        np.concatenate([x, finite]),
        np.concatenate([f32_random(rng, n), close_to(rng, finite, F32, 30)]),
        np.concatenate([f32_random(rng, n), close_to(rng, finite, F32, 60)]),
    ]


@pytest.mark.parametrize("mode", list(GMPY_MODES))
@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "sqrt", "fma"])
def test_binary32_random(op: str, mode: str, f32_operands: list[np.ndarray]) -> None:
    args = f32_operands[: ARITY[op]]
    assert_same(call(op, F32, mode, args), gmpy_oracle(op, F32, mode, args), args)


@pytest.mark.parametrize("fmt", [BF16, F32, P26], ids=lambda f: f.name)
@pytest.mark.parametrize("mode", list(GMPY_MODES))
def test_fma_midpoint_plus_tiny(fmt: Format, mode: str) -> None:
    """a*b is exactly a midpoint (a format number for directed modes) and c is
    below float64's resolution of it: fl64(a*b + c) is that point and only the
    residual's sign decides.
    (binary16 cannot do this: a c that small underflows in binary16.)"""
    rng = np.random.default_rng(RNG_SEED + 3)
    # the points where rounding changes: midpoints (nearest), numbers (directed)
    a, b = exact_products(rng, fmt, 4_000, fmt.p + 1 if mode == "nearest" else fmt.p)
    tiny = np.ldexp(np.abs(a * b), -60 - rng.integers(0, 8, a.shape))
    c = fperr.round(tiny * rng.choice([-1.0, 1.0], a.shape), fmt, "toward_zero")
    args = [a, b, c]
    want = gmpy_oracle("fma", fmt, mode, args)
    assert_same(call("fma", fmt, mode, args), want, args)
    # the cases are adversarial: rounding fl64(a*b + c) alone is often wrong
    naive = fperr.round(a * b + c, fmt, mode)  # type: ignore[arg-type]
    assert np.count_nonzero(naive != want) > a.size // 10


@pytest.mark.parametrize("mode", list(GMPY_MODES))
@pytest.mark.parametrize("op", ["add", "mul", "div", "fma"])
def test_bfloat16_random(op: str, mode: str) -> None:
    rng = np.random.default_rng(RNG_SEED + 4)
    args = [bf16_random(rng, 30_000) for _ in range(ARITY[op])]
    assert_same(call(op, BF16, mode, args), gmpy_oracle(op, BF16, mode, args), args)


@pytest.mark.parametrize("mode", list(GMPY_MODES))
def test_p26_sqrt(mode: str) -> None:
    """p = 26: fl64(sqrt(x)) can land on a midpoint (53 < 2p + 2), so the
    TwoProduct residual is needed.  x = m*m - 1 for the odd 27-bit m = 2**27 - 1
    or 2**26 + 1 is a 26-bit number whose root is within 2**-55 (relative) below
    the midpoint m; with squares of random midpoints and random values."""
    rng = np.random.default_rng(RNG_SEED + 5)
    j = np.arange(-60, 60)
    hard = np.concatenate(
        [np.ldexp(2.0**26 - 1, 2 * j - 26), np.ldexp(2.0**25 + 1, 2 * j - 25)]
    )  # (m*m - 1) / 2**52 times 4**j: roots m / 2**26 times 2**j
    m = (rng.integers(2**26, 2**27, 5_000) | 1).astype(np.float64)  # odd: midpoints
    sq = fperr.round(np.ldexp(m * m, -52), P26, "toward_zero")
    x = np.concatenate([hard, sq, np.nextafter(sq, np.inf), rng.uniform(0.0, 4.0, 5_000)])
    x = fperr.round(x, P26)
    want = gmpy_oracle("sqrt", P26, mode, [x])
    assert_same(call("sqrt", P26, mode, [x]), want, [x])
    if mode == "nearest":  # rounding fl64(sqrt(x)) alone is wrong on half the hard cases
        naive = fperr.round(np.sqrt(x), P26)
        assert np.count_nonzero(naive != want) >= j.size


# -- nearest_away and formats MPFR cannot describe: rational oracle -----------------------
def _finite_operands(
    gen: Callable[[np.random.Generator, int], np.ndarray], n: int, arity: int
) -> list[np.ndarray]:
    rng = np.random.default_rng(RNG_SEED + 6)
    args = [gen(rng, 3 * n) for _ in range(arity)]
    ok = np.all([np.isfinite(a) for a in args], axis=0)
    if arity > 1:
        ok &= args[1] != 0
    return [a[ok][:n] for a in args]


def _fmt_values(fmt: Format) -> Callable[[np.random.Generator, int], np.ndarray]:
    def gen(rng: np.random.Generator, n: int) -> np.ndarray:
        x = np.ldexp(rng.uniform(-2.0, 2.0, n), rng.integers(fmt.emin - fmt.p, fmt.emax + 1, n))
        return fperr.round(x, fmt, "toward_zero")

    return gen


@pytest.mark.parametrize("op", ["add", "sub", "mul", "div", "fma"])
@pytest.mark.parametrize(
    ("fmt", "gen"),
    [(F16, f16_random), (BF16, bf16_random), (F32, f32_random)],
    ids=["binary16", "bfloat16", "binary32"],
)
def test_nearest_away_rational(
    op: str, fmt: Format, gen: Callable[[np.random.Generator, int], np.ndarray]
) -> None:
    args = _finite_operands(gen, 2_000, ARITY[op])
    if op in ("mul", "fma"):  # exact ties, where nearest_away differs from nearest
        a, b = exact_products(np.random.default_rng(RNG_SEED), fmt, 1_000)
        extra = [a, b, np.zeros_like(a)][: ARITY[op]]
        args = [np.concatenate([x, y]) for x, y in zip(args, extra, strict=True)]
    if op in ("add", "sub"):  # x +- half an ulp of x: exact ties
        x = args[0]
        args = [np.concatenate([x, x]), np.concatenate([args[1], half_ulp(x, fmt)])]
    want = fraction_oracle(op, fmt, "nearest_away", args)
    assert_same(call(op, fmt, "nearest_away", args), want, args)


@pytest.mark.parametrize("mode", list(fperr.MODES[:-1]))
@pytest.mark.parametrize("name", ["tf32", "float8_e4m3fn", "float8_e5m2"])
def test_small_formats_rational(name: str, mode: str) -> None:
    fmt = fperr.get_format(name)
    for op in ("add", "mul", "div", "fma"):
        args = _finite_operands(_fmt_values(fmt), 1_500, ARITY[op])
        want = fraction_oracle(op, fmt, mode, args)
        assert_same(call(op, fmt, mode, args), want, args)
        if name == "float8_e4m3fn" and mode != "toward_zero":  # overflow is NaN there
            assert np.isnan(want).any(), op


def test_sqrt_nearest_away_never_ties() -> None:
    """sqrt of a p-bit number is never a midpoint (its square would need
    more than p bits), so nearest_away must agree with MPFR's nearest."""
    x = np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float64)
    want = gmpy_oracle("sqrt", F16, "nearest", [x])
    assert_same(call("sqrt", F16, "nearest_away", [x]), want, [x])


# -- stochastic rounding ---------------------------------------------------------------
def test_stochastic_brackets_and_is_unbiased() -> None:
    rng = np.random.default_rng(RNG_SEED + 7)
    x, y = f16_random(rng, 50_000), f16_random(rng, 50_000)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    got = ops.add(x, y, F16, "stochastic", rng=1)
    lo = gmpy_oracle("add", F16, "down", [x, y])
    hi = gmpy_oracle("add", F16, "up", [x, y])
    assert np.all((got == lo) | (got == hi))
    # 1 + 2**-13 is 1/8 of the way from 1 to 1 + 2**-10: P(up) = 1/8.
    n = 40_000
    draws = ops.add(np.ones(n), np.full(n, 2.0**-13), F16, "stochastic", rng=2)
    assert set(np.unique(draws)) == {1.0, 1.0 + 2.0**-10}
    frac_up = np.mean(draws > 1.0)
    assert abs(frac_up - 0.125) < 5 * math.sqrt(0.125 * 0.875 / n)


# -- the residual helper, binary64 and argument checking --------------------------------------
def test_round_with_residual_direct() -> None:
    mid = 1.0 + 2.0**-11  # binary16 midpoint between 1 and 1 + 2**-10
    s = np.array([mid, mid, mid, 1.0, 1.0, 65520.0, 65520.0, 65504.0])
    e = np.array([1e-30, -1e-30, 0.0, 1e-30, -1e-30, -1e-30, 0.0, 1e-30])
    assert np.array_equal(
        ops.round_with_residual(s, e, F16),
        [1.0 + 2.0**-10, 1.0, 1.0, 1.0, 1.0, 65504.0, np.inf, 65504.0],
    )
    assert np.array_equal(
        ops.round_with_residual(s, e, F16, "up"),
        [
            1.0 + 2.0**-10,
            1.0 + 2.0**-10,
            1.0 + 2.0**-10,
            1.0 + 2.0**-10,
            1.0,
            np.inf,
            np.inf,
            np.inf,
        ],
    )
    assert np.array_equal(
        ops.round_with_residual(s, e, F16, "toward_zero"),
        [1.0, 1.0, 1.0, 1.0, 1.0 - 2.0**-11, 65504.0, 65504.0, 65504.0],
    )


def f64_random(rng: np.random.Generator, n: int) -> np.ndarray:
    """All binary64 bit patterns equally likely: subnormals, inf, NaN included."""
    return rng.integers(0, 2**64, n, dtype=np.uint64).view(np.float64)


def test_binary64_nearest_against_mpfr() -> None:
    """binary64 is numpy arithmetic inside fperr; the oracle is MPFR's binary64
    (gmpy2.ieee(64)): random bit patterns, cancellation, over- and underflow."""
    rng = np.random.default_rng(RNG_SEED + 8)
    b64 = fperr.get_format("binary64")
    x = np.concatenate([f64_random(rng, 4_000), rng.standard_normal(2_000), [0.0, -0.0, 1e308]])
    finite = np.where(np.isfinite(x), x, 1.0)
    y = np.concatenate([f64_random(rng, 4_000), close_to(rng, finite[4_000:6_000], b64, 40),
                        [-0.0, -0.0, 1e308]])  # fmt: skip
    with np.errstate(all="ignore"):
        for op in ("add", "sub", "mul", "div"):
            assert_same(call(op, b64, "nearest", [x, y]), gmpy_oracle(op, b64, "nearest", [x, y]),
                        [x, y])  # fmt: skip
        assert_same(call("sqrt", b64, "nearest", [x]), gmpy_oracle("sqrt", b64, "nearest", [x]),
                    [x])  # fmt: skip


@pytest.mark.parametrize(
    ("fmt", "mode"),
    [
        ("binary64", "up"),
        ("binary64", "stochastic"),
        (Format("p27", p=27, emax=127), "nearest"),
        (Format("wide", p=11, emax=600), "nearest"),
        ("binary16", "sideways"),
    ],
)
def test_rejects_unsupported(fmt: Format | str, mode: str) -> None:
    with pytest.raises(ValueError):
        ops.add(np.ones(2), np.ones(2), fmt, mode)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ops.round_with_residual(np.ones(2), np.zeros(2), fmt, mode)  # type: ignore[arg-type]


def test_fma_binary64_rejected() -> None:
    with pytest.raises(ValueError):
        ops.fma(1.0, 1.0, 1.0, "binary64")


def test_inputs_are_rounded_to_the_format_first() -> None:
    x = 1.0 + 2.0**-20  # rounds to 1.0 in binary16
    assert ops.add(x, 0.0, F16)[()] == 1.0
    assert ops.mul(x, 3.0, F16, "up")[()] == 3.0
