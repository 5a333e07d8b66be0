"""Issue 11, item 3: underflow.  Higham's gamma_n model has no underflow term;
products (and quotients, function values) below the accumulator's normal
range err by an absolute eta (Higham 2002, sec. 2.2), and a flushing format
loses whole sums.  Every check compares fperr's radius with the emulator
written for these tests (``fp_emulator``: MPFR / Fraction rounding, many
summation orders, with and without fused multiply-adds) and exact rationals.
"""

from __future__ import annotations

from fractions import Fraction

import fp_emulator as fe
import gmpy2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fperr.arith import Emulated
from fperr.bounds import bound, bound_run
from fperr.bounds import exponent_range as xr
from fperr.bounds.rules import Context
from fperr.certify import certify
from fperr.formats import Format, get_format
from fperr.layers import BatchNorm, Dense, LayerNorm, Pool2d, Softmax
from fperr.model import Model, load_model

B16_FTZ = Format("binary16_ftz", p=11, emax=15, subnormals=False)
EMUL = {"binary16": fe.BINARY16, "binary32": fe.BINARY32, "bfloat16": fe.BFLOAT16,
        "binary16_ftz": fe.BINARY16_FTZ}  # fmt: skip


def _fmt(name: str) -> Format:
    return B16_FTZ if name == "binary16_ftz" else get_format(name)


def _arith(storage: str, acc: str) -> Emulated:
    return Emulated(_fmt(storage), _fmt(acc))


def emulate_dense(W, b, X, storage: str, acc: str, order: str, fused: bool):
    """Dense layer as a kernel computes it: operands rounded to storage, the
    dot product in ``acc`` in ``order``, stored, bias added and stored."""
    s, a = EMUL[storage], EMUL[acc]
    ws = [[fe.rnd(Fraction(v), s) for v in row] for row in W]
    bs = None if b is None else [fe.rnd(Fraction(v), s) for v in b]
    out = []
    for row in X:
        x = [fe.rnd(Fraction(v), s) for v in row]
        ys = []
        for i, w in enumerate(ws):
            y = fe.rnd(fe.dot(x, w, a, order, fused), s)
            ys.append(y if bs is None else fe.add(y, bs[i], s))
        out.append(ys)
    return out


def exact_dense(W, b, X):
    return [[sum((Fraction(w) * Fraction(v) for w, v in zip(wr, row, strict=True)), Fraction(0))
             + (0 if b is None else Fraction(b[i])) for i, wr in enumerate(W)]
            for row in X]  # fmt: skip


def check_dense(W, b, X, storage: str, acc: str) -> float:
    """Every order's |y - exact| <= radius (inf radius where a run overflows);
    returns the largest observed / radius over finite radii (NaN if some
    order overflowed)."""
    model = Model("t", (W.shape[1],), (Dense(W, b),))
    rb = bound_run(model, X, _arith(storage, acc))
    exact = exact_dense(W, b, X)
    worst = 0.0
    for order in fe.ORDERS:
        for fused in (False, True):
            got = emulate_dense(W, b, X, storage, acc, order, fused)
            for k, row in enumerate(got):
                for i, y in enumerate(row):
                    r = rb.radius[k, i]
                    if isinstance(y, float):  # inf or NaN in this order
                        assert r == np.inf, (order, fused, k, i)
                        worst = np.nan
                        continue
                    err = abs(y - exact[k][i])
                    if np.isfinite(r):
                        assert err <= Fraction(r), (order, fused, k, i, float(err), r)
                        worst = max(worst, float(err) / r if r > 0 else 0.0)  # NaN stays
    return worst


# -- regressions: the cases, which the old bounds failed ---------------------
def test_fp16_accumulation_products_rounding_to_zero():
    """16 products of 0.375 subnormal spacings each round to 0 in binary16:
    the sum errs by 6 spacings; the old bound allowed half of one."""
    n = 16
    W = np.full((1, n), 0.75 * 2.0**-13)
    X = np.full((1, n), 2.0**-12)
    ratio = check_dense(W, None, X, "binary16", "binary16")
    assert 0.5 < ratio <= 1  # tight: the errors all align


def test_apriori_bound_has_the_underflow_term():
    """The same products over an input box [2^-12, 2^-11]: the a-priori radius
    must cover every input of the box, in every order."""
    from fperr.bounds.apriori import apriori_bound

    n = 16
    W = np.full((1, n), 0.75 * 2.0**-13)
    model = Model("t", (n,), (Dense(W, None),))
    ab = apriori_bound(model, 2.0**-12, 2.0**-11, Emulated.from_names("binary16", "binary16"))
    for x in (2.0**-12, 1.5 * 2.0**-12, 2.0**-11):
        X = np.full((1, n), x)
        exact = exact_dense(W, None, X)[0][0]
        for order in fe.ORDERS:
            y = emulate_dense(W, None, X, "binary16", "binary16", order, False)[0][0]
            assert abs(y - exact) <= Fraction(ab.radius[0]), (x, order)


def test_binary32_reference_products_underflow():
    """The binary32 reference run: products near 2^-150 (the old radius was 4x too small)."""
    rng = np.random.default_rng(3)
    W = rng.uniform(0.5, 1, (3, 16)) * 2.0**-75
    X = rng.uniform(0.5, 1, (2, 16)) * 2.0**-75
    W, X = (v.astype(np.float32).astype(np.float64) for v in (W, X))
    assert check_dense(W, None, X, "binary32", "binary32") <= 1


def test_fp16_accumulation_certified_input_does_not_flip():
    """Reference (binary32) class 0 by 2 subnormal spacings; the binary16-
    accumulating run loses all of output 0 and predicts class 1.  It must not
    be certified."""
    n = 16
    W = np.zeros((2, n))
    W[0] = 0.75 * 2.0**-13  # 16 products of 0.375 * 2^-24: exact 6 * 2^-24, fp16: 0
    W[1, 0] = 2.0**-10  # exact 4 * 2^-24 in every arithmetic
    X = np.full((1, n), 2.0**-12)
    model = Model("flip", (n,), (Dense(W, None),))
    low = Emulated.from_names("binary16", "binary16")
    got = emulate_dense(W, None, X, "binary16", "binary16", "sequential", False)[0]
    assert got[0] < got[1]  # the low run flips the class...
    res = certify(model, X, low=low)
    assert res.reference_class[0] == 0
    assert not res.certified[0]  # ...so the input must not be certified


def test_flushing_accumulator_loses_products_and_sums():
    """No subnormals: four products 2^-15 are flushed to 0 (the sum 2^-13 is
    lost whole); 2^-13 - (2^-13 - 2^-23) = 2^-23 is flushed too."""
    W = np.vstack([np.full((1, 4), 2.0**-8), [[2.0**-13, -(2.0**-13 - 2.0**-23), 0, 0]]])
    X = np.vstack([np.full((1, 4), 2.0**-7), np.ones((1, 4))])
    assert check_dense(W, None, X, "binary16_ftz", "binary16_ftz") <= 1


# -- the default arithmetic does not move --------------------------------------------
def _no_range_terms(monkeypatch):
    monkeypatch.setattr(Context, "dot_underflow", lambda self, n, count: 0.0)
    monkeypatch.setattr(Context, "func_abs", lambda self: 0.0)
    monkeypatch.setattr(Context, "eta", lambda self: 0.0)
    monkeypatch.setattr(Context, "eta_add", lambda self: 0.0)
    monkeypatch.setattr(Context, "sum_may_overflow",
                        lambda self, t, n, absolute=0.0: np.zeros(np.shape(t), bool))  # fmt: skip


def test_default_bounds_on_the_example_mlp_do_not_move(monkeypatch):
    """binary16 products are exact in binary32 (exponent_range.products_exact):
    the low run's bound is bit-for-bit the one without the new terms, and so
    is the combined bound (the binary32 reference's terms, n 2^-150, vanish
    in float64 next to radii of 1e-7 and more)."""
    from pathlib import Path

    model = load_model(Path(__file__).parents[1] / "examples" / "mlp.yaml")
    X = np.load(Path(__file__).parents[1] / "examples" / "digits.npz")["inputs"][:64]
    new = bound(model, X)
    with monkeypatch.context() as m:
        _no_range_terms(m)
        old = bound(model, X)
    assert np.array_equal(new.low.radius, old.low.radius)
    assert np.array_equal(new.bound, old.bound)
    assert xr.products_exact(*(get_format("binary16"),) * 2, get_format("binary32"))


@pytest.mark.parametrize(
    "x, w, acc, exact",
    [
        ("binary16", "binary16", "binary32", True),  # 2^-24 2^-24 >= 2^-149
        ("binary16", "binary16", "binary16", False),
        ("bfloat16", "bfloat16", "binary32", False),  # 2^-133 2^-133 < 2^-149
        ("binary32", "binary32", "binary32", False),
        ("tf32", "tf32", "binary32", False),
        ("float8_e4m3fn", "float8_e4m3fn", "binary16", True),  # 2^-9 2^-9 >= 2^-24
        ("float8_e5m2", "float8_e5m2", "binary16", False),  # 2^-16 2^-16 < 2^-24
        ("float8_e5m2", "float8_e5m2", "binary32", True),
    ],
)
def test_products_exact_against_the_smallest_products(x, w, acc, exact):
    """The claim checked by brute force on the smallest positive values and on
    every product of the two formats' smallest binades (MPFR rounding)."""
    fx, fw, fa = get_format(x), get_format(w), get_format(acc)
    assert xr.products_exact(fx, fw, fa) == exact
    ea = fe.Fmt(fa.p, fa.emax)
    qx, qw = Fraction(2) ** (fx.emin - fx.p + 1), Fraction(2) ** (fw.emin - fw.p + 1)
    inexact = any(
        fe.rnd(i * qx * j * qw, ea) != i * qx * j * qw
        for i in range(1, 2 ** min(fx.p, 6))
        for j in range(1, 2 ** min(fw.p, 6))
    )
    assert inexact == (not exact)


# -- property: tiny dense models in every arithmetic ---------------------------------
def _tiny_values(rng, shape, lo: int, hi: int, zeros: float) -> np.ndarray:
    """Signed values 2^e times 12-bit significands (products exact in float64)."""
    v = np.round(rng.uniform(0.5, 1, shape) * 4096) / 4096 * 2.0 ** rng.integers(lo, hi + 1, shape)
    v *= rng.choice([-1.0, 1.0], shape)
    return np.where(rng.random(shape) < zeros, 0.0, v)


# (storage, accumulate, exponent range of the operands: products near the bottom)
TINY = [
    ("binary16", "binary16", -14, -7),
    ("binary32", "binary32", -80, -70),
    ("bfloat16", "binary32", -80, -70),
    ("binary16", "binary32", -24, -10),
    ("binary16_ftz", "binary16_ftz", -10, -5),
]
RATIOS: list[float] = []


@settings(max_examples=60, deadline=None)
@given(
    cfg=st.sampled_from(TINY),
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 16),
    m=st.integers(1, 3),
    zeros=st.sampled_from([0.0, 0.3]),
    bias=st.booleans(),
)
def test_tiny_dense_models_are_sound_in_every_order(cfg, seed, n, m, zeros, bias):
    storage, acc, lo, hi = cfg
    rng = np.random.default_rng(seed)
    W = _tiny_values(rng, (m, n), lo, hi, zeros)
    X = _tiny_values(rng, (2, n), lo, hi, zeros)
    b = _tiny_values(rng, (m,), 2 * lo, 2 * hi, zeros) if bias else None
    RATIOS.append(check_dense(W, b, X, storage, acc))


# -- elementwise products and quotients: batch norm, avg pool, softmax, layer norm ----
def _assert_within(y, exact, radius):
    if isinstance(y, float):
        assert radius == np.inf
    elif np.isfinite(radius):
        assert abs(y - exact) <= Fraction(radius), (float(y), float(exact), radius)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("fused", [False, True])
def test_batchnorm_products_below_the_normal_range(seed, fused):
    """y = x s + t in a binary16 accumulator with x s subnormal; var + eps = 1/4
    so that s = 2 w and the exact value is rational."""
    rng = np.random.default_rng(seed)
    C = 4
    eps = 2.0**-20
    w = _tiny_values(rng, (C,), -10, -6, 0.0)
    mean = _tiny_values(rng, (C,), -12, -8, 0.3)
    beta = _tiny_values(rng, (C,), -20, -14, 0.3)
    bn = BatchNorm(mean, np.full(C, 0.25 - eps), w, beta, eps)
    X = _tiny_values(rng, (3, C), -12, -6, 0.2)
    a = Emulated.from_names("binary16", "binary16")
    rb = bound_run(Model("bn", (C,), (bn,)), X, a)
    s16 = fe.BINARY16
    for k in range(X.shape[0]):
        for c in range(C):
            sc, sh = 2 * Fraction(w[c]), Fraction(beta[c]) - Fraction(mean[c]) * 2 * Fraction(w[c])
            x, s_hat, t_hat = (fe.rnd(Fraction(v), s16) for v in (X[k, c], sc, sh))
            y = fe.fma(x, s_hat, t_hat, s16) if fused else fe.add(fe.mul(x, s_hat, s16), t_hat, s16)
            _assert_within(y, Fraction(X[k, c]) * sc + sh, rb.radius[k, c])


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("order", fe.ORDERS)
def test_avgpool_quotients_below_the_normal_range(seed, order):
    rng = np.random.default_rng(seed)
    X = _tiny_values(rng, (2, 1, 3, 3), -24, -14, 0.2)
    pool = Pool2d("avg", (3, 3), (1, 1))
    rb = bound_run(Model("avg", (1, 3, 3), (pool,)), X, Emulated.from_names("binary16", "binary16"))
    for k in range(2):
        v = [fe.rnd(Fraction(t), fe.BINARY16) for t in X[k].ravel()]
        s = fe.sum_in_order(v, fe.BINARY16, order)
        y = fe.rnd(s / 9, fe.BINARY16)  # the quotient, rounded once
        _assert_within(y, sum(map(Fraction, X[k].ravel()), Fraction(0)) / 9,
                       rb.radius.reshape(2, -1)[k, 0])  # fmt: skip


def _func(fn, v: Fraction, f: fe.Fmt) -> Fraction:
    """fn(v) correctly rounded to f (MPFR)."""
    with gmpy2.context(precision=f.p, emin=f.emin - f.p + 2, emax=f.emax + 1,
                       subnormalize=True):  # fmt: skip
        r = fn(gmpy2.mpq(v.numerator, v.denominator))
    return Fraction(*r.as_integer_ratio())


def _hi(fn, *args):
    with gmpy2.context(precision=300):
        return fn(*args)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("order", ["sequential", "pairwise", "ascending"])
def test_softmax_values_below_the_normal_range(seed, order):
    """Logits 10 to 16 below the maximum: exp(d) is subnormal in binary16."""
    rng = np.random.default_rng(seed)
    k = 6
    Z = np.round(rng.uniform(-16, 0, (2, k)) * 64) / 64
    Z[:, 0] = 0.0
    rb = bound_run(Model("sm", (k,), (Softmax(),)), Z, Emulated.from_names("binary16", "binary16"))
    f = fe.BINARY16
    for row, rad in zip(Z, rb.radius, strict=True):
        z = [fe.rnd(Fraction(v), f) for v in row]
        mx = max(z)
        e = [_func(gmpy2.exp, fe.add(v, -mx, f), f) for v in z]
        s = fe.sum_in_order(e, f, order)
        exact_e = [_hi(gmpy2.exp, gmpy2.mpfr(float(v - max(row)))) for v in row]
        tot = _hi(lambda xs: sum(xs, gmpy2.mpfr(0)), exact_e)
        for i in range(k):
            y = fe.rnd(e[i] / s, f)  # the quotient, rounded once
            ex = Fraction(*_hi(lambda a, b: a / b, exact_e[i], tot).as_integer_ratio())
            _assert_within(y, ex, rad[i])


def _layernorm_kernel(x, w, b, eps, f: fe.Fmt, order: str):
    """Two-pass layer norm, every operation rounded to f."""
    n = len(x)
    mu = fe.rnd(fe.sum_in_order(x, f, order) / n, f)
    z = [fe.add(v, -mu, f) for v in x]
    var = fe.rnd(fe.sum_in_order([fe.mul(v, v, f) for v in z], f, order) / n, f)
    s = _func(gmpy2.sqrt, fe.add(var, fe.rnd(Fraction(eps), f), f), f)
    return [
        fe.add(fe.mul(wi, fe.rnd(zi / s, f), f), bi, f) for zi, wi, bi in zip(z, w, b, strict=True)
    ]


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("order", ["sequential", "pairwise", "descending"])
def test_layernorm_with_a_variance_below_the_normal_range(seed, order):
    """Nearly constant inputs: the squares of x - mean are subnormal in binary16."""
    rng = np.random.default_rng(seed)
    n = 8
    X = 0.5 + _tiny_values(rng, (2, n), -10, -8, 0.2)
    w = rng.uniform(0.5, 2, n)
    b = _tiny_values(rng, (n,), -12, -4, 0.3)
    eps = 2.0**-20
    ln = LayerNorm((n,), w, b, eps)
    rb = bound_run(Model("ln", (n,), (ln,)), X, Emulated.from_names("binary16", "binary16"))
    f = fe.BINARY16
    for row, rad in zip(X, rb.radius, strict=True):
        xs = [fe.rnd(Fraction(v), f) for v in row]
        ws = [fe.rnd(Fraction(v), f) for v in w]
        bs = [fe.rnd(Fraction(v), f) for v in b]
        got = [fe.rnd(v, f) for v in _layernorm_kernel(xs, ws, bs, eps, f, order)]
        xm = [gmpy2.mpfr(float(v)) for v in row]
        with gmpy2.context(precision=300):
            mu = sum(xm, gmpy2.mpfr(0)) / n
            sd = gmpy2.sqrt(sum(((v - mu) ** 2 for v in xm), gmpy2.mpfr(0)) / n + eps)
            ex = [Fraction(*((v - mu) / sd * wi + bi).as_integer_ratio())
                  for v, wi, bi in zip(xm, w, b, strict=True)]  # fmt: skip
        for i in range(n):
            _assert_within(got[i], ex[i], rad[i])
