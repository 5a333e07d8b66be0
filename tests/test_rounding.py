"""fperr.round against independent oracles.

* numpy's own float64 -> float16/float32 casts (all binary16 bit patterns,
  more than 10 million adversarial float64 values);
* the exact-rational reference ``round_scalar`` for every format and mode;
* ml_dtypes casts from float32 inputs (bfloat16, fp8), where they round once.

The public fast path for binary16/binary32 *is* numpy's cast, so the generic
kernel ``_round_generic`` is tested against numpy separately: both paths are
checked against an oracle that is not themselves.
"""

from __future__ import annotations

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

import fperr
from fperr.formats import FORMATS, Format
from fperr.rounding import MODES, _round_generic

binary16, binary32 = FORMATS["binary16"], FORMATS["binary32"]
NUMPY_TWINS = {"binary16": np.float16, "binary32": np.float32}


def _all_binary16() -> np.ndarray:
    return np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float64)


def _finite_float32(rng: np.random.Generator, n: int) -> np.ndarray:
    """Uniformly random float32 bit patterns, NaN and inf patterns dropped."""
    u = rng.integers(0, 2**32, size=n, dtype=np.uint64).astype(np.uint32)
    u = u[(u >> 23) & 0xFF != 0xFF]
    return u.view(np.float32)


def _with_midpoints_and_neighbours(v: np.ndarray) -> np.ndarray:
    """Values, exact midpoints between consecutive values, and float64 neighbours."""
    v = np.unique(v[np.isfinite(v)])
    mids = (v[:-1] + v[1:]) / 2  # exact in float64 for formats with p < 53
    pts = np.concatenate([v, mids])
    return np.concatenate([pts, np.nextafter(pts, np.inf), np.nextafter(pts, -np.inf), -pts])


def adversarial_float64(rng: np.random.Generator) -> np.ndarray:
    """More than 10 million float64 values where rounding is hard."""
    f32 = _finite_float32(rng, 700_000).astype(np.float64)
    f32_edges = np.array(
        [
            np.finfo(np.float32).max,
            np.finfo(np.float32).tiny,
            np.finfo(np.float32).smallest_subnormal,
        ]
    )
    pieces = [
        _with_midpoints_and_neighbours(_all_binary16()),
        _with_midpoints_and_neighbours(np.concatenate([f32, f32_edges])),
        rng.uniform(0, 2.0**-14, 1_000_000),  # binary16 subnormal range
        rng.uniform(65504, 65536, 500_000),  # binary16 overflow threshold
        np.ldexp(rng.uniform(0.5, 1, 500_000), -24),  # around 2**-25
        np.array([2.0**-25, 2.0**-24, 3 * 2.0**-26, 65520.0, 65519.99999999999, 65504.0]),
        np.ldexp(rng.uniform(1, 2, 500_000), rng.integers(-1074, 1024, 500_000)),  # any size
        rng.uniform(0, 2.0**-149, 300_000),  # binary32 subnormals
        rng.standard_normal(1_000_000),
        np.array([0.0, -0.0, np.inf, -np.inf, 5e-324, 1.7976931348623157e308]),
    ]
    x = np.concatenate(pieces)
    signs = rng.choice([-1.0, 1.0], size=x.size)
    return np.concatenate([x, x * signs])


@pytest.fixture(scope="module")
def adversarial() -> np.ndarray:
    return adversarial_float64(np.random.default_rng(2305_10947))


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bitwise equality of float64 arrays (distinguishes -0.0, treats NaN == NaN)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    both_nan = np.isnan(a) & np.isnan(b)
    return bool(np.all((a.view(np.int64) == b.view(np.int64)) | both_nan))


def test_adversarial_set_is_large(adversarial):
    assert adversarial.size >= 10_000_000


def _integer_nearest_even(x: np.ndarray, fmt: Format) -> np.ndarray:
    """Round-to-nearest-even of float64 values to an IEEE format, in integers.

    An oracle independent of numpy's casts and of fperr's kernel: each x is
    M * 2**E with an integer 53-bit significand M (from its bits); the format's
    quantum at |x| is 2**Q, Q = max(floor(log2|x|), emin) - p + 1; the result is
    the integer n = M / 2**(Q - E) rounded half to even (shift, remainder,
    half), times 2**Q, or inf beyond fmt.max.  NaN stays NaN.
    """
    bits = np.ascontiguousarray(x, np.float64).view(np.uint64)
    neg = (bits >> np.uint64(63)).astype(bool)
    biased = ((bits >> np.uint64(52)) & np.uint64(0x7FF)).astype(np.int64)
    frac = bits & np.uint64((1 << 52) - 1)
    normal = biased > 0
    M = np.where(normal, frac | np.uint64(1 << 52), frac)  # x = M * 2**E
    E = np.where(normal, biased, 1) - 1075
    lead = np.frexp(M.astype(np.float64))[1] - 1  # floor(log2 M); M < 2**53 converts exactly
    Q = np.maximum(lead + E, fmt.emin) - fmt.p + 1
    shift = np.clip(Q - E, 0, 60).astype(np.uint64)  # >= 55: everything is below half
    n = M >> shift
    rem = M - (n << shift)
    half = np.where(shift > 0, np.uint64(1) << (shift - np.uint64(1)), np.uint64(0))
    up = (shift > 0) & ((rem > half) | ((rem == half) & (n & np.uint64(1) == 1)))
    n = n + up.astype(np.uint64)
    # n <= 2**p fits in float64; Q - E < 0 leaves n = M exact times 2**E.
    with np.errstate(over="ignore"):  # beyond float64 is beyond fmt.max too
        y = np.ldexp(n.astype(np.float64), np.where(Q > E, Q, E))
    y = np.where(y > fmt.max, np.inf, y)
    y = np.where(biased == 0x7FF, np.abs(x), y)  # inf stays inf, NaN stays NaN
    return np.where(neg, -y, y)


@pytest.mark.parametrize("name", sorted(NUMPY_TWINS))
def test_public_round_matches_integer_rounding(adversarial, name):
    """The public path (numpy's cast for these formats) against rounding done
    in integers on the float64 bits."""
    assert _same(fperr.round(adversarial, name), _integer_nearest_even(adversarial, FORMATS[name]))


@pytest.mark.parametrize("name, bits", [("binary16", 16), ("binary32", 32)])
def test_public_round_matches_mpfr(adversarial, name, bits):
    """And against MPFR's IEEE contexts (gmpy2.ieee) on a sample of the set."""
    gmpy2 = pytest.importorskip("gmpy2")
    x = np.random.default_rng(5).choice(adversarial, 200_000)
    with gmpy2.context(gmpy2.ieee(bits)):
        want = np.array([float(gmpy2.mpfr(v)) for v in x.tolist()])
    assert _same(fperr.round(x, name), want)


@pytest.mark.parametrize("name", sorted(NUMPY_TWINS))
def test_generic_kernel_matches_numpy_cast(adversarial, name):
    with np.errstate(over="ignore"):
        oracle = adversarial.astype(NUMPY_TWINS[name]).astype(np.float64)
    got = _round_generic(adversarial, FORMATS[name], "nearest", False, None)
    bad = ~((got == oracle) | (np.isnan(got) & np.isnan(oracle)))
    assert not bad.any(), f"{bad.sum()} mismatches, first at {adversarial[bad][:5]}"
    assert _same(got, oracle)


def test_all_binary16_patterns_are_fixed_points():
    v = _all_binary16()
    for mode in ("nearest", "nearest_away", "toward_zero", "up", "down"):
        assert _same(_round_generic(v, binary16, mode, False, None), v)
        assert _same(fperr.round(v, binary16, mode), v)


def _reference(x: np.ndarray, fmt: Format, mode: str, saturate: bool = False) -> np.ndarray:
    return np.array([fperr.round_scalar(float(v), fmt, mode, saturate=saturate) for v in x])


def _sample_for(fmt: Format, rng: np.random.Generator, n: int) -> np.ndarray:
    """Hard cases for any format: values, midpoints, neighbours, extremes."""
    top = fmt.emax + 2 if fmt.emax < 1023 else fmt.emax  # stay inside float64
    e = rng.integers(fmt.emin - fmt.p - 2, top, n)
    m = rng.integers(2 ** (fmt.p - 1), 2**fmt.p, n)  # p-bit significands
    vals = np.ldexp(m.astype(np.float64), e - fmt.p + 1)
    mids = vals + np.ldexp(1.0, e - fmt.p)  # midpoints to the next value
    pts = np.concatenate([vals, mids])
    edge = [fmt.max, fmt.smallest_normal, fmt.smallest_subnormal, fmt.smallest_subnormal / 2]
    edge += [0.0, math.inf, math.nan]
    if fmt.emax < 1023:
        edge += [fmt.max + fmt.ulp(fmt.emax) / 2, 2.0 ** (fmt.emax + 1)]
    pts = np.concatenate([pts, np.nextafter(pts, np.inf), np.nextafter(pts, -np.inf), edge])
    return np.concatenate([pts, -pts, rng.standard_normal(n) * 10.0 ** rng.integers(-6, 6, n)])


@pytest.mark.parametrize("name", sorted(FORMATS))
@pytest.mark.parametrize("mode", [m for m in MODES if m != "stochastic"])
def test_vectorised_matches_rational_reference(name, mode, rng):
    fmt = FORMATS[name]
    x = _sample_for(fmt, rng, 800)
    assert _same(fperr.round(x, fmt, mode), _reference(x, fmt, mode))
    if fmt.p < 53:
        assert _same(_round_generic(x, fmt, mode, False, None), _reference(x, fmt, mode))


@pytest.mark.parametrize("name", ["binary16", "bfloat16", "float8_e4m3fn", "float8_e5m2"])
@pytest.mark.parametrize("mode", ["nearest", "toward_zero", "up"])
def test_saturation_matches_reference(name, mode, rng):
    fmt = FORMATS[name]
    x = _sample_for(fmt, rng, 200)
    assert _same(fperr.round(x, fmt, mode, saturate=True), _reference(x, fmt, mode, True))
    assert np.all(np.abs(fperr.round(x[~np.isnan(x)], fmt, mode, saturate=True)) <= fmt.max)


def test_custom_format_without_subnormals(rng):
    fmt = Format("e5m10_ftz", p=11, emax=15, subnormals=False)
    x = _sample_for(fmt, rng, 500)
    y = fperr.round(x, fmt)
    assert _same(y, _reference(x, fmt, "nearest"))
    tiny = np.abs(y[np.isfinite(y)])
    assert not np.any((tiny > 0) & (tiny < fmt.smallest_normal))


@pytest.mark.parametrize(
    "name, dtype",
    [
        ("bfloat16", ml_dtypes.bfloat16),
        ("float8_e4m3fn", ml_dtypes.float8_e4m3fn),
        ("float8_e5m2", ml_dtypes.float8_e5m2),
    ],
)
def test_matches_ml_dtypes_from_float32(name, dtype, rng):
    # ml_dtypes rounds float64 inputs twice (via float32), so feed it float32.
    x32 = _finite_float32(rng, 2_000_000)
    with np.errstate(over="ignore"):
        oracle = x32.astype(dtype).astype(np.float64)
    assert _same(fperr.round(x32.astype(np.float64), name), oracle)


def test_fp8_every_value_midpoint_and_neighbour_exhaustively():
    for name, dtype in (
        ("float8_e4m3fn", ml_dtypes.float8_e4m3fn),
        ("float8_e5m2", ml_dtypes.float8_e5m2),
    ):
        fmt = FORMATS[name]
        v = np.arange(256, dtype=np.uint8).view(dtype).astype(np.float64)
        x = _with_midpoints_and_neighbours(v)
        for mode in ("nearest", "toward_zero", "up", "down", "nearest_away"):
            assert _same(fperr.round(x, fmt, mode), _reference(x, fmt, mode))


class TestEdgeValues:
    """The classic table (numpy test_half.py style), stated as facts."""

    @pytest.mark.parametrize(
        "x, expected",
        [
            (65504.0, 65504.0),
            (65519.99, 65504.0),
            (65520.0, math.inf),  # the tie at max + ulp/2 overflows
            (2.0**-24, 2.0**-24),  # smallest subnormal
            (2.0**-25, 0.0),  # tie between 0 and 2**-24: even is 0
            (3 * 2.0**-26, 2.0**-24),
            (2.0**-14, 2.0**-14),  # smallest normal
            (1 + 2.0**-11, 1.0),  # tie: even
            (1 + 3 * 2.0**-11, 1 + 2.0**-9),  # tie: even is up
            (0.1, 0.0999755859375),
        ],
    )
    def test_binary16_nearest(self, x, expected):
        for fn in (
            fperr.round,
            lambda v, f: _round_generic(np.asarray(v), binary16, "nearest", False, None),
        ):
            assert float(fn(np.array([x]), binary16)[0]) == expected
            assert float(fn(np.array([-x]), binary16)[0]) == -expected

    def test_signed_zero_and_nan(self):
        for mode in MODES:
            y = fperr.round(np.array([-0.0, 0.0, np.nan, -1e-30]), "bfloat16", mode, rng=0)
            assert math.copysign(1, y[0]) == -1 and math.copysign(1, y[1]) == 1
            assert math.isnan(y[2])

    @pytest.mark.parametrize(
        "mode, pos, neg",
        [
            ("nearest", math.inf, -math.inf),
            ("nearest_away", math.inf, -math.inf),
            ("toward_zero", 65504.0, -65504.0),
            ("up", math.inf, -65504.0),
            ("down", 65504.0, -math.inf),
        ],
    )
    def test_overflow_by_mode(self, mode, pos, neg):
        y = fperr.round(np.array([1e6, -1e6]), binary16, mode)
        assert y[0] == pos and y[1] == neg
        # infinities are exact: every mode keeps them
        y = fperr.round(np.array([np.inf, -np.inf]), binary16, mode)
        assert y[0] == math.inf and y[1] == -math.inf

    def test_fn_format_overflows_to_nan_or_saturates(self):
        fmt = FORMATS["float8_e4m3fn"]
        y = fperr.round(np.array([464.0, 465.0, np.inf]), fmt)
        assert y[0] == 448.0 and math.isnan(y[1]) and math.isnan(y[2])
        y = fperr.round(np.array([465.0, -np.inf]), fmt, saturate=True)
        assert list(y) == [448.0, -448.0]


class TestStochastic:
    def test_only_two_neighbours_and_unbiased(self):
        rng = np.random.default_rng(7)
        x = np.full(200_000, 1 + 2.0**-12 + 2.0**-14)  # 5/8 of an ulp above 1 in... a quarter+
        y = fperr.round(x, binary16, "stochastic", rng=rng)
        lo, hi = 1.0, 1 + 2.0**-10
        assert set(np.unique(y)) <= {lo, hi}
        p_up = (x[0] - lo) / (hi - lo)
        # binomial standard error: sqrt(p(1-p)/n) ~ 0.001; 5 sigma
        assert abs(np.mean(y == hi) - p_up) < 5 * math.sqrt(p_up * (1 - p_up) / x.size)
        assert abs(np.mean(y) - x[0]) < 5 * (hi - lo) * math.sqrt(p_up * (1 - p_up) / x.size)

    def test_matches_reference_given_the_same_draws(self, rng):
        fmt = FORMATS["bfloat16"]
        x = _sample_for(fmt, rng, 300)
        x = x[np.isfinite(x)]
        draws = np.random.default_rng(11).random(x.shape)
        got = fperr.round(x, fmt, "stochastic", rng=np.random.default_rng(11))
        ref = np.array(
            [
                fperr.round_scalar(float(v), fmt, "stochastic", random=float(r))
                for v, r in zip(x, draws, strict=True)
            ]
        )
        assert _same(got, ref)

    def test_representable_values_never_move(self):
        v = _all_binary16()
        v = v[np.isfinite(v)]
        assert _same(fperr.round(v, binary16, "stochastic", rng=1), v)


def test_reference_rounds_exact_rationals():
    # 1/3 is not a float64: the reference rounds the exact rational once.
    assert fperr.round_scalar(Fraction(1, 3), binary16) == float(np.float16(1 / 3))
    # A value that double rounding (via float64) would get wrong:
    x = Fraction(1) + Fraction(1, 2**11) + Fraction(1, 2**60)  # just above a binary16 tie
    assert fperr.round_scalar(x, binary16) == 1 + 2.0**-10
    assert fperr.round_scalar(float(x), binary16) == 1.0  # float64 lost the 2**-60


def test_bad_arguments():
    with pytest.raises(ValueError, match="rounding mode"):
        fperr.round([1.0], "binary16", "sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown format"):
        fperr.round([1.0], "binary17")
    with pytest.raises(ValueError, match="wider than binary64"):
        fperr.round([1.0], Format("quad", p=113, emax=16383))


def test_zero_dimensional_inputs_stay_zero_dimensional():
    for fmt in ("binary16", "bfloat16", "float8_e4m3fn"):
        y = fperr.round(0.1, fmt)
        assert y.shape == () and float(y) == fperr.round_scalar(0.1, fmt)
