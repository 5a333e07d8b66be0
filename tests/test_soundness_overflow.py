"""Issue 11, item 4: overflow in another summation order.  A bound is finite
only if no partial sum of any order can overflow the accumulator: where
(1 + gamma_n) sum |w_hat| |x_hat| (magnitudes inflated by the incoming radius)
reaches the format's max plus half an ulp of it, the bound is inf.  Checked
against the emulator written for the tests (``fp_emulator``) in many orders.
"""

from __future__ import annotations

from fractions import Fraction

import fp_emulator as fe
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_soundness_underflow import EMUL, _arith, check_dense, emulate_dense

from fperr.arith import Emulated
from fperr.bounds import bound_run
from fperr.bounds import exponent_range as xr
from fperr.certify import certify
from fperr.formats import get_format
from fperr.layers import BatchNorm, Dense, LayerNorm, Pool2d
from fperr.model import Model

ISSUE_ROW = [3e4, 3e4, -4e4, -4e4, 2e4, 0.0]


def test_the_issue_example_overflows_pairwise_and_has_an_infinite_bound():
    W = np.array([ISSUE_ROW])
    X = np.ones((1, 6))
    seq = emulate_dense(W, None, X, "binary16", "binary16", "sequential", False)[0][0]
    pair = emulate_dense(W, None, X, "binary16", "binary16", "pairwise", False)[0][0]
    assert seq == 0 and pair == -np.inf  # finite in one order, -inf in another
    for order in ("sequential", "pairwise", "blas"):
        rb = bound_run(Model("o", (6,), (Dense(W, None),)), X,
                       Emulated.from_names("binary16", "binary16", order=order))  # fmt: skip
        assert np.isinf(rb.radius).all(), order
    check_dense(W, None, X, "binary16", "binary16")  # every order: inf or within the radius


def test_the_issue_example_is_not_certified():
    """Output 0 is -row (exact 0, +inf pairwise), output 1 exactly 1000: the
    reference predicts class 1, a pairwise binary16 kernel class 0."""
    W = np.array([[-v for v in ISSUE_ROW], [1000.0, 0, 0, 0, 0, 0]])
    X = np.ones((1, 6))
    pair = emulate_dense(W, None, X, "binary16", "binary16", "pairwise", False)[0]
    assert pair[0] == np.inf and pair[1] == 1000  # the class flips
    res = certify(Model("o", (6,), (Dense(W, None),)), X,
                  low=Emulated.from_names("binary16", "binary16"))  # fmt: skip
    assert res.reference_class[0] == 1
    assert not res.certified[0]


def test_bfloat16_terms_near_2_to_the_127_in_binary32():
    W = np.array([[0.75, 0.75, -1.0, -1.0, 0.5, 0.0]]) * 2.0**127
    X = np.ones((1, 6))
    pair = emulate_dense(W, None, X, "bfloat16", "binary32", "pairwise", False)[0][0]
    seq = emulate_dense(W, None, X, "bfloat16", "binary32", "sequential", False)[0][0]
    assert seq == 0 and pair == -np.inf
    rb = bound_run(Model("o", (6,), (Dense(W, None),)), X, Emulated.from_names("bfloat16"))
    assert np.isinf(rb.radius).all()


@pytest.mark.parametrize("name", ["binary16", "binary32", "bfloat16", "float8_e4m3fn"])
def test_overflow_threshold_is_where_rounding_leaves_the_range(name):
    """max + half an ulp rounds beyond max (to inf, or NaN without inf); just
    below it rounds to max (MPFR / Fraction rounding of the emulator)."""
    f = get_format(name)
    t = Fraction(xr.overflow_threshold(f))
    if f.has_inf:
        ef = fe.Fmt(f.p, f.emax)
        assert fe.rnd(t, ef) == np.inf
        assert fe.rnd(t - Fraction(1, 2**200), ef) == Fraction(f.max)
    assert t == Fraction(f.max) + Fraction(2) ** (f.emax - f.p)


# -- property: near-overflow dense models ---------------------------------------------
# (storage, accumulate): sum |w| scaled to 0.7 to 2.8 times the largest finite number
BIG = [
    ("binary16", "binary16"),
    ("bfloat16", "binary32"),
    ("binary32", "binary32"),
    ("binary16_ftz", "binary16_ftz"),
]
COUNTS = {"finite": 0, "infinite": 0, "overflowed": 0}


@settings(max_examples=60, deadline=None)
@given(
    cfg=st.sampled_from(BIG),
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(1, 16),
    m=st.integers(1, 3),
    positive=st.sampled_from([0.5, 0.8, 1.0]),
)
def test_near_overflow_dense_models_in_every_order(cfg, seed, n, m, positive):
    storage, acc = cfg
    rng = np.random.default_rng(seed)
    sign = np.where(rng.random((m, n)) < positive, 1.0, -1.0)
    W = np.round(rng.uniform(0.5, 1, (m, n)) * 256) / 256 * 2.0 ** rng.integers(-3, 1, (m, n))
    X = np.round(rng.uniform(0.25, 1.0, (2, n)) * 256) / 256
    top = float(EMUL[acc].max) * 2.0 ** rng.uniform(-0.5, 1.5)
    W = sign * W * 2.0 ** np.floor(np.log2(top / (np.abs(W) @ np.ones(n)).max()))
    worst = check_dense(W, None, X, storage, acc)
    rb = bound_run(Model("t", (n,), (Dense(W, None),)), X, _arith(storage, acc))
    COUNTS["finite" if np.isfinite(rb.radius).all() else "infinite"] += 1
    COUNTS["overflowed"] += bool(np.isnan(worst))  # some order overflowed


# -- the other summations: avg pool, batch norm, layer norm ----------------------------
def test_avgpool_window_sum_overflows_in_binary16():
    """Four values 3e4: the mean is 3e4, but any order's sum passes 65504."""
    X = np.full((1, 1, 2, 2), 3e4)
    v = [fe.rnd(Fraction(3e4), fe.BINARY16)] * 4
    assert all(fe.sum_in_order(v, fe.BINARY16, o) == np.inf for o in fe.ORDERS)
    rb = bound_run(Model("a", (1, 2, 2), (Pool2d("avg", (2, 2), (2, 2)),)), X,
                   Emulated.from_names("binary16", "binary16"))  # fmt: skip
    assert np.isinf(rb.radius).all()
    ok = bound_run(Model("a", (1, 2, 2), (Pool2d("avg", (2, 2), (2, 2)),)), X / 4,
                   Emulated.from_names("binary16", "binary16"))  # fmt: skip
    assert np.isfinite(ok.radius).all()  # 4 x 7500 stays in range


def test_batchnorm_product_overflows_before_the_shift_brings_it_back():
    """x s + t = 300 * 300 - 60000 = 30000: fl(x s) = inf without a fused multiply-add."""
    eps = 2.0**-20
    bn = BatchNorm(np.array([200.0]), np.array([0.25 - eps]), np.array([150.0]), np.array([0.0]),
                   eps)  # fmt: skip
    assert bn.scale[0] == 300 and bn.shift[0] == -60000
    f = fe.BINARY16
    assert fe.add(fe.mul(Fraction(300), Fraction(300), f), Fraction(-60000), f) == np.inf
    rb = bound_run(Model("bn", (1,), (bn,)), np.array([[300.0]]),
                   Emulated.from_names("binary16", "binary16"))  # fmt: skip
    assert np.isinf(rb.radius).all()


def test_layernorm_sum_of_squares_overflows_in_binary16():
    """x = +-300: the mean is 0 and u = +-1, but each square is 90000 > 65504."""
    X = np.array([[300.0, -300.0, 300.0, -300.0]])
    f = fe.BINARY16
    assert fe.mul(Fraction(300), Fraction(300), f) == np.inf
    rb = bound_run(Model("ln", (4,), (LayerNorm((4,)),)), X,
                   Emulated.from_names("binary16", "binary16"))  # fmt: skip
    assert np.isinf(rb.radius).all()
    fine = bound_run(Model("ln", (4,), (LayerNorm((4,)),)), X / 4,
                     Emulated.from_names("binary16", "binary16"))  # fmt: skip
    assert np.isfinite(fine.radius).all()  # 75^2 * 4 = 22500 stays in range


def test_operands_beyond_a_narrower_accumulator_give_an_infinite_bound():
    """bfloat16 values in a binary16 accumulator: a kernel converts its operands
    into the accumulator, where 1e18 overflows and inf * 0 is NaN, even though
    every product is 0 (found by the property suite with a zero input).  The
    emulator oracle: numpy float16 conversion of the operands."""
    w = np.array([[2e18, 1.0], [1.0, 1.0]])
    model = Model("wide", (2,), (Dense(w, None),))
    x = np.zeros((1, 2))
    with np.errstate(over="ignore", invalid="ignore"):  # what such a kernel computes
        converted = w.astype(np.float16) @ x.T.astype(np.float16)
    assert not np.isfinite(converted).all()
    a = Emulated.from_names("bfloat16", "binary16")
    assert np.isinf(bound_run(model, x, a).radius).all()
    # activations too: a bfloat16 input of 1e6 cannot enter a binary16 accumulator
    small = Model("small", (2,), (Dense(np.ones((2, 2)), None),))
    rb = bound_run(small, np.array([[1e6, 0.0], [1.0, 0.0]]), a)
    assert np.isinf(rb.radius[0]).all() and np.isfinite(rb.radius[1]).all()
    # where the accumulator's range holds storage's, nothing changes
    wide_acc = Emulated.from_names("bfloat16", "binary32")
    assert np.isfinite(bound_run(model, x, wide_acc).radius).all()


def test_apriori_box_beyond_a_narrower_accumulator_is_infinite():
    """The a-priori engine applies the same rule as the per-input one."""
    from fperr.bounds.apriori import apriori_bound

    a = Emulated.from_names("bfloat16", "binary16")
    wide = Model("wide", (2,), (Dense(np.array([[2e18, 1.0], [1.0, 1.0]]), None),))
    assert np.isinf(apriori_bound(wide, 0.0, 1.0, a).radius).all()
    ones = Model("ones", (2,), (Dense(np.ones((2, 2)), None),))
    assert np.isinf(apriori_bound(ones, 0.0, 1e6, a).radius).all()  # 1e6 > 65520
    assert np.isfinite(apriori_bound(ones, 0.0, 1.0, a).radius).all()
