"""A bound depends on its own input only (issue 11, item 1).

Every input's bound and certificate must be the same alone and in any batch,
whatever the other rows hold: overflowing rows (inf in binary16 storage),
rows whose first layer computes inf - inf = NaN, zero rows, subnormal rows.

The emulated run itself must then not depend on the batch either.  The
default (``"blas"``) order computes binary32-accumulated products as a float64
GEMM rounded once to binary32 (a float32 GEMM picks its kernel, and so its
order, by batch size); the emulated orders of :mod:`fperr.accumulation` are
bitwise batch-invariant by construction; both premises are checked below.  The
comparisons run in both.  For the ``"blas"`` order the bound of a row must also
not change when the *other* rows of the same batch are replaced by zeros.  The
tolerance 1e-12 relative absorbs float64 rounding of the generator algebra,
whose GEMMs may block differently with the batch size.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fperr.arith import Emulated
from fperr.certify import CertifyResult, certify
from fperr.layers import (
    Activation,
    BatchNorm,
    Conv2d,
    Dense,
    Flatten,
    LayerNorm,
    Pool2d,
    Reshape,
    Residual,
    Softmax,
)
from fperr.model import Model, load_model

REL = 1e-12
SEQ_LOW = Emulated.from_names("binary16", "binary32", order="sequential")
SEQ_REF = Emulated.from_names("binary32", "binary32", order="sequential")
ACTS = ["relu", "tanh", "sigmoid", "gelu", "leaky_relu"]


def same_bound(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal to REL relative, inf exactly where the other is inf."""
    fa, fb = np.isfinite(a), np.isfinite(b)
    if not np.array_equal(fa, fb):
        return False
    return bool(np.all(np.abs(a[fa] - b[fa]) <= REL * np.abs(a[fa])))


def _certify(model: Model, X: np.ndarray, method: str = "deterministic", **kw) -> CertifyResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # inf/NaN rows by design
        return certify(model, X, method=method, **kw)


# -- the reported case -------------------------------------------------------------
def gelu_model() -> Model:
    """Inputs near 1000 (binary16 spacing 0.5) whose differences are small:
    the input rounding dominates the bound."""
    w1 = np.array([[1.0, -1, 0], [0, 1, -1], [1, 0, -1]])
    w2 = np.array([[1.0, 0, 0], [0, 1, 0]])
    return Model("gelu", (3,), (Dense(w1, None), Activation("gelu"), Dense(w2, None)))


def test_overflowing_row_does_not_shrink_another_inputs_bound():
    """Regression: [1e6, 0, 0] overflows binary16; inf * 0 = NaN rows were
    dropped for the whole batch, and with them this input's rounding errors
    (B 0.142 alone, 0.010 batched: certified, and the class flips)."""
    model = gelu_model()
    x = np.array([[1000.963, 1000.087, 999.012]])
    alone = _certify(model, x)
    batched = _certify(model, np.vstack([x, [[1e6, 0, 0]]]))
    assert alone.flipped[0] and not alone.certified[0]
    assert same_bound(alone.margin[0], batched.margin[0])
    assert alone.margin[0].max() > 0.1
    assert not batched.certified[0]
    assert int((batched.certified & batched.flipped).sum()) == 0
    assert np.all(np.isinf(batched.margin[1])) and not batched.certified[1]


def test_nan_anywhere_gives_that_input_an_infinite_bound():
    """A NaN (inf - inf in the first layer) in one input's run: its bound is
    infinite even where a later saturating layer makes its value finite."""
    model = Model("sat", (2,), (Dense(np.array([[1.0, 1.0], [1.0, 0.0]]), None),
                                Activation("tanh"), Dense(np.eye(2), None)))  # fmt: skip
    X = np.array([[7e4, -7e4], [0.5, 0.25]])
    res = _certify(model, X)
    assert np.all(np.isinf(res.margin[0])) and not res.certified[0]
    assert np.all(np.isfinite(res.margin[1]))


def test_emulated_orders_are_batch_invariant():
    """The premise of the alone-vs-batch comparisons below, by a float32 oracle:
    the sequential order is numpy float32 accumulation from 0, row by row."""
    rng = np.random.default_rng(5)
    W = rng.standard_normal((37, 23))
    X = rng.standard_normal((29, 37))
    a = SEQ_REF
    full = a.matmul(a.store(X), a.store(W))
    for i in range(X.shape[0]):
        acc = np.float32(0)
        for j in range(23):
            acc = np.float32(0)
            for k in range(37):
                acc = np.float32(acc + np.float32(X[i, k]) * np.float32(W[k, j]))
            assert full[i, j] == float(acc)
        assert np.array_equal(a.matmul(a.store(X[i : i + 1]), a.store(W))[0], full[i])


def test_default_order_is_batch_invariant():
    """The default order's premise: a row computes the same bits alone and in a
    batch (a float32 GEMM does not: BLAS picks gemv or gemm by batch size)."""
    rng = np.random.default_rng(0)
    a = Emulated.from_names("binary32", "binary32")
    W = a.store(rng.standard_normal((300, 200)))
    X = a.store(rng.standard_normal((257, 300)))
    full = a.matmul(X, W)
    for i in range(0, X.shape[0], 3):
        assert np.array_equal(a.matmul(X[i : i + 1], W)[0], full[i]), i


# -- random models and batches ------------------------------------------------------
def random_model(rng: np.random.Generator) -> Model:
    """A small model of random depth over most layer types, input (18,)."""
    act = Activation(str(rng.choice(ACTS)), float(rng.choice([0.01, -0.5, 2.0])))
    if rng.random() < 0.5:  # image path
        ch, g = 2 * int(rng.integers(1, 4)), int(rng.choice([1, 2]))
        conv = Conv2d(rng.standard_normal((ch, 2 // g, 3, 3)) * 0.5, rng.standard_normal(ch),
                      padding=(1, 1), groups=g)  # fmt: skip
        bn = BatchNorm(rng.standard_normal(ch), rng.uniform(0.1, 2, ch),
                       rng.standard_normal(ch), rng.standard_normal(ch))  # fmt: skip
        res = Residual((Conv2d(rng.standard_normal((ch, ch, 3, 3)) * 0.3, None, padding=(1, 1)),
                        Activation("relu")))  # fmt: skip
        pool = Pool2d(str(rng.choice(["max", "avg"])), (2, 2), (1, 1))
        layers: list = [
            Reshape((2, 3, 3)),
            conv,
            act,
            bn,
            res,
            pool,
            Flatten(),
            Dense(rng.standard_normal((4, ch * 4)), rng.standard_normal(4)),
        ]
    else:
        h = int(rng.integers(2, 9))
        layers = [Dense(rng.standard_normal((h, 18)) / 3, rng.standard_normal(h)), act,
                  Residual((Dense(rng.standard_normal((h, h)) / 2, None), Activation("tanh"))),
                  BatchNorm(rng.standard_normal(h), rng.uniform(0.1, 2, h)),
                  LayerNorm((h,), rng.standard_normal(h), rng.standard_normal(h)),
                  Dense(rng.standard_normal((4, h)), None)]  # fmt: skip
    if rng.random() < 0.3:
        layers.append(Softmax())
    return Model("random", (18,), tuple(layers))


def special_rows(rng: np.random.Generator, n_in: int, k: int) -> np.ndarray:
    """k rows of the kinds that broke batching: overflow, NaN-producing, zero, tiny."""
    rows = []
    for _ in range(k):
        kind = rng.integers(5)
        r = np.zeros(n_in)
        if kind == 0:  # overflows binary16 storage: [1e6, 0, 0, ...] at a random unit
            r[rng.integers(n_in)] = 1e6
        elif kind == 1:  # +inf and -inf after storage: inf - inf in the first layer
            i, j = rng.choice(n_in, 2, replace=False)
            r[i], r[j] = 7e4, -7e4
        elif kind == 2:  # overflows binary32 too (the reference run)
            r[rng.integers(n_in)] = 1e39
        elif kind == 3:  # subnormal in binary16
            r = rng.standard_normal(n_in) * 1e-6
        rows.append(r)  # kind 4: zeros
    return np.asarray(rows)


def random_batch(rng: np.random.Generator, n_in: int) -> np.ndarray:
    normal = rng.standard_normal((int(rng.integers(1, 5)), n_in)) * rng.choice([0.1, 1, 30])
    X = np.vstack([normal, special_rows(rng, n_in, int(rng.integers(1, 4)))])
    return X[rng.permutation(X.shape[0])]


def assert_batch_independent(model: Model, X: np.ndarray, method: str = "deterministic") -> None:
    """Each row alone (batch-invariant run) gives the bound and verdict it gets batched."""
    for kw in ({}, {"low": SEQ_LOW, "reference": SEQ_REF}):
        batched = _certify(model, X, method, **kw)
        for i in range(X.shape[0]):
            alone = _certify(model, X[i : i + 1], method, **kw)
            assert same_bound(alone.margin[0], batched.margin[i]), (i, X[i], kw)
            assert alone.certified[0] == batched.certified[i], (i, kw)
            assert np.array_equal(alone.y_low[0], batched.y_low[i], equal_nan=True)
        assert int((batched.certified & batched.flipped).sum()) == 0


def assert_blas_rows_independent(model: Model, X: np.ndarray) -> None:
    """Default ("blas") order: the other rows' data cannot move a row's bound."""
    batched = _certify(model, X)
    for i in range(X.shape[0]):
        Z = np.zeros_like(X)
        Z[i] = X[i]
        other = _certify(model, Z)
        assert same_bound(other.margin[i], batched.margin[i]), (i, X[i])
        assert other.certified[i] == batched.certified[i], i


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1), method=st.sampled_from(["deterministic", "probabilistic"]))
def test_random_models_bound_each_input_as_if_alone(seed, method):
    rng = np.random.default_rng(seed)
    model = random_model(rng)
    assert_batch_independent(model, random_batch(rng, 18), method)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**32 - 1))
def test_random_models_blas_rows_do_not_interact(seed):
    rng = np.random.default_rng(seed)
    model = random_model(rng)
    assert_blas_rows_independent(model, random_batch(rng, 18))


@pytest.fixture(scope="module")
def digits() -> np.ndarray:
    return np.load("examples/digits.npz")["inputs"]


@pytest.mark.parametrize("name", ["mlp", "cnn"])
@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow,
          HealthCheck.function_scoped_fixture])  # fmt: skip
@given(seed=st.integers(0, 2**32 - 1))
def test_bundled_models_bound_each_input_as_if_alone(name, seed, digits):
    rng = np.random.default_rng(seed)
    model = load_model(f"examples/{name}.yaml")
    clean = digits[rng.choice(digits.shape[0], int(rng.integers(1, 4)), replace=False)]
    X = np.vstack([clean, special_rows(rng, 64, int(rng.integers(1, 3)))])
    X = X[rng.permutation(X.shape[0])]
    assert_batch_independent(model, X)
    assert_blas_rows_independent(model, X)


def test_deep_tanh_with_an_overflowing_row(digits):
    """The wide bundled model: one bad row used to shrink others' bounds."""
    model = load_model("examples/deep_tanh.yaml")
    bad = np.zeros(64)
    bad[0] = 1e6
    assert_blas_rows_independent(model, np.vstack([digits[:2], bad]))
