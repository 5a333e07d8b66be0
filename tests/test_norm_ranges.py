"""Euclidean ranges (fperr.bounds.norm_ranges): the gains bound the operators they
stand for (oracles: numpy's row norms, power iteration, the convolution's matrix
built from unit vectors), and the ranges they cap stay sound on wide models
where they bind, and narrow them there."""

from __future__ import annotations

import numpy as np
import pytest

import fperr.bounds.backward as B
import fperr.bounds.norm_ranges as nr
from fperr.arith import Emulated, Exact
from fperr.bounds import bound_run
from fperr.bounds.norm_ranges import Gains, conv_gains, conv_spectral, dense_gains, narrow
from fperr.layers import Activation, Conv2d, Dense, Flatten, Pool2d
from fperr.model import Model

LOW = Emulated.from_names("binary16", "binary32")
ORDERS = ("blas", "sequential", "pairwise", "blocked")


def _power_lower(A: np.ndarray, rng: np.random.Generator, steps: int = 200) -> float:
    """A lower bound on ||A||_2: ||A v|| / ||v|| for the power iteration's v."""
    v = rng.standard_normal(A.shape[1])
    for _ in range(steps):
        v = A.T @ (A @ v)
        v /= np.linalg.norm(v)
    return float(np.linalg.norm(A @ v))


@pytest.mark.parametrize("shape", [(1, 7), (7, 1), (16, 16), (40, 25), (25, 40)])
def test_dense_gains_bound_rows_and_operator(shape):
    rng = np.random.default_rng(sum(shape))
    w = rng.standard_normal(shape)
    rows, op = dense_gains(Dense(w))
    exact_rows = np.linalg.norm(w, axis=1)
    assert np.all(rows >= exact_rows) and np.allclose(rows, exact_rows, rtol=1e-8)
    lower = _power_lower(w, rng)
    assert lower <= op <= lower * (1 + 1e-6)
    for _ in range(20):
        v = rng.standard_normal(shape[1])
        assert np.linalg.norm(w @ v) <= op * np.linalg.norm(v)
        assert np.all(np.abs(w @ v) <= rows * np.linalg.norm(v))


def test_dense_gains_exact_cases():
    assert dense_gains(Dense(np.diag([3.0, -1.0])))[1] == pytest.approx(3.0, rel=1e-8)
    assert dense_gains(Dense(np.ones((2, 2))))[1] == pytest.approx(2.0, rel=1e-8)
    assert dense_gains(Dense(np.zeros((3, 2))))[1] == 0.0


def _conv_matrix(layer: Conv2d, in_shape: tuple[int, ...]) -> np.ndarray:
    n = int(np.prod(in_shape))
    basis = np.eye(n).reshape(n, *in_shape)
    return layer.forward(basis, Exact()).reshape(n, -1).T  # (outputs, inputs)


@pytest.mark.parametrize("cin,cout,k,stride,pad,dil,groups",
                         [(1, 3, 3, 1, 1, 1, 1), (2, 4, 3, 2, 0, 1, 2), (3, 3, 2, 1, 1, 2, 3),
                          (2, 2, 3, 3, 2, 1, 1), (4, 2, 1, 1, 0, 1, 1)])  # fmt: skip
def test_conv_gains_bound_the_convolution_matrix(cin, cout, k, stride, pad, dil, groups):
    rng = np.random.default_rng(cin * 7 + k)
    w = rng.standard_normal((cout, cin // groups, k, k))
    layer = Conv2d(w, None, (stride, stride), (pad, pad), (dil, dil), groups)
    in_shape = (cin, 7, 7)
    C = _conv_matrix(layer, in_shape)
    rows, op = conv_gains(layer)
    per_unit = np.repeat(rows, C.shape[0] // cout)
    assert np.all(np.linalg.norm(C, axis=1) <= per_unit * (1 + 1e-12))
    assert _power_lower(C, rng) <= op
    # the circular convolution's norm (per-frequency SVDs): above the exact norm of
    # the matrix, never above Holder's bound, and close to the norm for stride 1
    true = np.linalg.norm(C, 2)
    spectral = conv_spectral(layer, in_shape)
    assert true <= spectral <= op * (1 + 1e-9)
    if stride == 1:
        assert spectral <= 1.25 * true, (spectral, true)


@pytest.mark.parametrize("groups", [1, 4])
def test_conv_spectral_frobenius_fallback_bounds_the_norm(groups, monkeypatch):
    """Past SPECTRAL_WORK the per-frequency Frobenius norms: still above the norm."""
    rng = np.random.default_rng(groups)
    layer = Conv2d(rng.standard_normal((8, 8 // groups, 3, 3)), None, padding=(1, 1),
                   groups=groups)  # fmt: skip
    C = _conv_matrix(layer, (8, 6, 6))
    exact = conv_spectral(layer, (8, 6, 6))
    monkeypatch.setattr(nr, "SPECTRAL_WORK", 0.0)  # outside a call nothing is kept
    frob = conv_spectral(layer, (8, 6, 6))
    assert np.linalg.norm(C, 2) <= exact <= frob


def test_narrow_takes_the_smallest_sound_cap():
    radius = np.array([[1.0, 0.1, np.nan, 5.0]])
    g = Gains(np.array([0.5, 0.5, 0.5, 0.0]), 2.0, np.full((1, 4), 0.01))
    capped, e = narrow(radius, (g,), np.array([1.0]))
    assert capped[0, 0] == pytest.approx(0.51) and capped[0, 1] == 0.1
    assert np.isnan(capped[0, 2]) and capped[0, 3] == 0.01
    # E: the smaller of op E_in + ||own|| and the norm of the capped radius (NaN: the former)
    assert e[0] == pytest.approx(2.0 + 0.02)
    # an infinite E (a run that may overflow) caps nothing, not even a zero row (0 inf)
    capped, e = narrow(np.ones((1, 2)), (Gains(0.0, 0.0, None),), np.array([np.inf]))
    assert np.all(capped == 1.0) and e[0] == pytest.approx(np.sqrt(2))
    capped, e = narrow(np.ones((1, 2)), (Gains(1.0, 1.0, None),), np.array([np.inf]))
    assert np.all(capped == 1.0) and e[0] == pytest.approx(np.sqrt(2))


def _he_mlp(width: int, depth: int, seed: int = 5) -> Model:
    rng = np.random.default_rng(seed)
    dims = [32] + [width] * (depth - 1) + [10]
    layers = []
    for i in range(depth):
        w = (rng.standard_normal((dims[i + 1], dims[i])) * np.sqrt(2.0 / dims[i]))
        layers.append(Dense(w.astype(np.float32) * 1.0, np.zeros(dims[i + 1])))
        if i < depth - 1:
            layers.append(Activation("relu"))
    return Model("he", (32,), tuple(layers))


def _rank_one_cnn(seed: int = 6) -> Model:
    """Layers whose rows are all alike (rank one) and a max pool with overlapping
    windows: Cauchy-Schwarz is tight for errors along the rows."""
    rng = np.random.default_rng(seed)
    k = np.abs(rng.standard_normal((1, 1, 3, 3)))
    k = np.repeat(k, 8, axis=0)
    head = np.outer(np.ones(4), np.abs(rng.standard_normal(8 * 5 * 5))) / 20
    return Model("rank1", (1, 12, 12), (
        Conv2d(k, None, padding=(1, 1)), Activation("relu"), Pool2d("max", (3, 3), (2, 2)),
        Conv2d(rng.standard_normal((8, 8, 3, 3)) / 6, None, padding=(1, 1)),
        Activation("tanh"), Flatten(), Dense(head)))  # fmt: skip


def _observed(model: Model, X: np.ndarray) -> np.ndarray:
    exact = model.forward(X, Exact())
    return np.max([np.abs(model.forward(X, Emulated.from_names("binary16", "binary32", order=o))
                          - exact) for o in ORDERS], axis=0)  # fmt: skip


def _without_narrowing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(B, "narrow", lambda radius, gains, e_in: (radius, np.full(e_in.shape,
                                                                                 np.inf)))


@pytest.mark.parametrize("ranges", ["interval", "sharpened"])
def test_euclidean_ranges_sound_and_narrower_on_a_wide_mlp(ranges, monkeypatch):
    model = _he_mlp(256, 4)
    X = np.random.default_rng(7).uniform(-1, 1, (24, 32))
    got = bound_run(model, X, LOW, engine="backward", ranges=ranges).radius
    assert np.all(got >= _observed(model, X))
    _without_narrowing(monkeypatch)
    before = bound_run(model, X, LOW, engine="backward", ranges=ranges).radius
    q = got / before
    assert q.max() <= 1 + 1e-12, q.max()  # every rule is monotone in the ranges (no pooling)
    if ranges == "interval":  # the caps bind: interval images grow ~18x per layer here
        assert np.median(q) < 0.6, np.median(q)


@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_euclidean_ranges_sound_on_rank_one_layers(scale):
    model = _rank_one_cnn()
    X = np.random.default_rng(8).uniform(0, scale, (16, 1, 12, 12))
    for ranges in ("interval", "sharpened"):
        got = bound_run(model, X, LOW, engine="backward", ranges=ranges).radius
        assert np.all(got >= _observed(model, X))
