"""Derived constants of formats against numpy.finfo and ml_dtypes.finfo."""

import math
from fractions import Fraction

import ml_dtypes
import numpy as np
import pytest

import fperr
from fperr.formats import FORMATS, Format

NUMPY_TWINS = {"binary16": np.float16, "binary32": np.float32, "binary64": np.float64}
ML_DTYPES_TWINS = {
    "bfloat16": ml_dtypes.bfloat16,
    "float8_e4m3fn": ml_dtypes.float8_e4m3fn,
    "float8_e5m2": ml_dtypes.float8_e5m2,
    "binary16": np.float16,
    "binary32": np.float32,
}


@pytest.mark.parametrize("name", sorted(NUMPY_TWINS))
def test_constants_match_numpy_finfo(name):
    fmt, fi = FORMATS[name], np.finfo(NUMPY_TWINS[name])
    assert fmt.eps == float(fi.eps)
    assert fmt.max == float(fi.max)
    assert fmt.smallest_normal == float(fi.smallest_normal)
    assert fmt.smallest_subnormal == float(fi.smallest_subnormal)
    assert fmt.p == fi.nmant + 1
    assert fmt.emin == fi.minexp
    assert fmt.emax == fi.maxexp - 1


@pytest.mark.parametrize("name", sorted(ML_DTYPES_TWINS))
def test_constants_match_ml_dtypes_finfo(name):
    fmt, fi = FORMATS[name], ml_dtypes.finfo(ML_DTYPES_TWINS[name])
    assert fmt.eps == float(fi.eps)
    assert fmt.max == float(fi.max)
    assert fmt.smallest_normal == float(fi.smallest_normal)
    assert fmt.smallest_subnormal == float(fi.smallest_subnormal)
    assert fmt.p == fi.nmant + 1


@pytest.mark.parametrize("fmt", list(FORMATS.values()), ids=str)
def test_identities(fmt: Format):
    assert fmt.eps == 2 * fmt.u == 2.0 ** (1 - fmt.p)
    assert fmt.emin == (1 - fmt.emax if fmt.has_inf else 2 - fmt.emax)
    assert fmt.gamma(1) == fmt.u / (1 - fmt.u)
    assert fmt.gamma(2**fmt.p) == math.inf  # n u >= 1
    # max is the largest value: IEEE overflow threshold is max + ulp/2.
    half_ulp = Fraction(fmt.ulp(fmt.emax)) / 2
    below = Fraction(fmt.max) + half_ulp - half_ulp / 1024
    assert fperr.round_scalar(below, fmt) == fmt.max
    above = fperr.round_scalar(Fraction(fmt.max) + half_ulp + half_ulp / 1024, fmt)
    assert above == math.inf if fmt.has_inf else math.isnan(above)


def test_tf32_constants():
    tf32 = fperr.get_format("tf32")
    assert tf32.p == 11 and tf32.emax == 127
    assert tf32.max == (2 - 2.0**-10) * 2.0**127
    assert tf32.smallest_subnormal == 2.0 ** (-126 - 10)


@pytest.mark.parametrize(
    "alias, name",
    [
        ("fp16", "binary16"),
        ("half", "binary16"),
        ("float16", "binary16"),
        ("FP32", "binary32"),
        ("single", "binary32"),
        ("float32", "binary32"),
        ("fp64", "binary64"),
        ("bf16", "bfloat16"),
        ("tf32", "tf32"),
        ("float8_e4m3fn", "float8_e4m3fn"),
        ("float8_e5m2", "float8_e5m2"),
    ],
)
def test_aliases(alias, name):
    assert fperr.get_format(alias) is FORMATS[name]


def test_unknown_name_lists_valid_ones():
    with pytest.raises(ValueError, match="binary16.*bfloat16|bfloat16.*binary16"):
        fperr.get_format("fp17")


def test_custom_format_and_validation():
    f = Format("e6m9", p=10, emax=31)
    assert f.max == (2 - 2.0**-9) * 2.0**31
    assert f.smallest_subnormal == 2.0 ** (-30 - 9)
    with pytest.raises(ValueError):
        Format("bad", p=1, emax=15)
    with pytest.raises(ValueError):
        Format("bad", p=11, emax=0)


def test_format_is_frozen():
    with pytest.raises(AttributeError):
        FORMATS["binary16"].p = 12  # type: ignore[misc]


@pytest.mark.parametrize("wide", sorted(FORMATS))
@pytest.mark.parametrize("narrow", ["binary16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "tf32"])
def test_contains_agrees_with_rounding_every_value(wide, narrow):
    """Format.contains(narrow) iff rounding each finite value of narrow to wide is exact."""
    src = FORMATS[narrow]
    e = np.arange(src.emin - src.p + 1, src.emax + 1)
    m = np.arange(2 ** (src.p - 1), 2**src.p)
    vals = np.ldexp(m[None, :].astype(np.float64), e[:, None] - src.p + 1).ravel()
    vals = fperr.round(vals, src)  # the values of narrow (normals and subnormals)
    vals = vals[np.isfinite(vals)]
    exact = bool(np.all(fperr.round(vals, wide) == vals))
    assert FORMATS[wide].contains(src) == exact
