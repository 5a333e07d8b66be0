"""The cascade's stage 0 (:mod:`fperr.bounds.coarse`): both runs bounded with one
number per input and position.

Its soundness against emulated runs in every summation order, other formats and
torch CPU runs is tested with stage 1's, in test_quick_bound.py.  Here: exact
rationals for the row norms and a direct float64 product (with its own error far
below the margin) for the Cauchy-Schwarz magnitudes; the quick stage for how much
looser this one is; overflow, batches, and the cascade's use of it.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
from test_anchors import LOW, REF, _observed
from test_quick_bound import conv_net

import fperr.bounds.cascade as cascade
from fperr import certify
from fperr.arith import Emulated
from fperr.bounds.coarse import coarse_bound, magnitude_image, per_input_norm, row_norms
from fperr.bounds.quick import quick_bound
from fperr.bounds.rules import conv_with
from fperr.certify import certified_sharp
from fperr.examples import digits
from fperr.examples import load as load_example
from fperr.layers import Activation, BatchNorm, Dense, Pool2d, Residual
from fperr.model import Model


def test_row_norms_are_never_below_the_exact_ones():
    rng = np.random.default_rng(3)
    for shape in ((7, 5), (4, 3, 3, 3)):
        w = rng.standard_normal(shape) * np.exp(rng.uniform(-8, 8, shape))
        g = row_norms(w)
        rows = [[Fraction(float(v)) for v in row] for row in w.reshape(shape[0], -1)]
        assert Fraction(g.row_sum) >= max(sum(abs(v) for v in r) for r in rows)
        assert Fraction(g.row_norm) ** 2 >= max(sum(v * v for v in r) for r in rows)
    x = rng.standard_normal((6, 9)) * np.exp(rng.uniform(-8, 8, (6, 9)))
    exact = [sum(Fraction(float(v)) ** 2 for v in row) for row in x]
    assert all(Fraction(float(n)) ** 2 >= e for n, e in zip(per_input_norm(x), exact, strict=True))


def test_magnitudes_bound_every_units_image():
    """|W| (|c| + reach) <= the max-norm or Cauchy-Schwarz bound, unit by unit, for dense
    rows and for convolution windows (whose norm the whole input's bounds), on sparse
    and on spread inputs."""
    rng = np.random.default_rng(4)
    conv = conv_net(5).layers[0]
    for layer_w, apply, shape in (
        (rng.standard_normal((30, 50)), lambda w, v: v @ w.T, (50,)),
        (conv.weight, lambda w, v: conv_with(conv, w, v), (1, 12, 12)),
    ):  # fmt: skip
        n = int(np.prod(layer_w.shape[1:]))
        for sparse in (False, True):
            c = rng.standard_normal((8, *shape))
            if sparse:
                c *= rng.uniform(0, 1, c.shape) < 0.1
            reach = rng.uniform(0, 0.1, 8) * (rng.uniform(0, 1, 8) < 0.7)
            cols = reach.reshape(8, *([1] * len(shape)))
            direct = apply(np.abs(layer_w), np.abs(c) + cols).reshape(8, -1).max(axis=1)
            top = np.abs(c).reshape(8, -1).max(axis=1)
            bound = magnitude_image(row_norms(layer_w), top, per_input_norm(c), reach, n)
            assert np.all(direct * (1 + 1e-13) <= bound)


def test_coarse_is_looser_than_quick_but_decides_most_digits_inputs():
    """What stage 0 gives up: one number per input, on the digits models 3 to 12 times the
    quick stage's bound (median about 6), yet it leaves at most 3% of the inputs to the
    quick stage (measured 7 of 1,797 on the MLP, 38 on the CNN)."""
    X = digits()[0]
    for name in ("mlp", "cnn"):
        model = load_example(name)
        c, q = coarse_bound(model, X, LOW, REF), quick_bound(model, X, LOW, REF)
        ratio = c.bound / q.bound
        assert 2 <= np.median(ratio) <= 10, np.median(ratio)
        assert np.all(c.bound[:200] >= _observed(model, X[:200]))
        y, m = c.reference.output, cascade.margin(c)
        rows = np.arange(len(y))
        k = np.argmax(y, axis=1)
        gap = y[rows, k][:, None] - y - (m[rows, k][:, None] + m)
        gap[rows, k] = np.inf
        assert np.mean(~(gap > 0).all(axis=1)) <= 0.03


def test_layers_without_a_coarse_rule_leave_stage_0_out():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 6)) / 3
    base = [Dense(w, None), Activation("relu"), Dense(w, None)]
    X = rng.uniform(0, 1, (4, 6))
    assert coarse_bound(Model("plain", (6,), tuple(base)), X, LOW, REF) is not None
    norm = BatchNorm(np.zeros(6), np.ones(6), np.ones(6), np.zeros(6))
    assert coarse_bound(Model("bn", (6,), (*base, norm)), X, LOW, REF) is not None
    for layer in (Activation("tanh"), Activation("leaky_relu"), Residual([Dense(w, None)])):
        model = Model("other", (6,), (*base[:2], layer, base[2]))
        assert coarse_bound(model, X, LOW, REF) is None, layer.type
    pooled = Model("avg", (1, 4, 4), (Pool2d("avg", (2, 2), (2, 2)),))
    assert coarse_bound(pooled, rng.uniform(0, 1, (2, 1, 4, 4)), LOW, REF) is None
    tf32 = Emulated.from_names("binary32", "binary32", "tf32")  # chopped operands
    assert coarse_bound(Model("plain", (6,), tuple(base)), X, tf32, REF) is None


def test_the_cascade_starts_from_stage_0_and_hands_the_rest_to_the_quick_stage(monkeypatch):
    model = load_example("mlp")
    X, labels = (a[:200] for a in digits())
    calls: dict[str, list[int]] = {"coarse": [], "quick": []}
    real_coarse, real_quick = cascade.coarse_bound, cascade.quick_bound

    def counting(name, real):
        def f(model, X, *args, **kw):
            calls[name].append(len(X))
            return real(model, X, *args, **kw)
        return f

    monkeypatch.setattr(cascade, "coarse_bound", counting("coarse", real_coarse))
    monkeypatch.setattr(cascade, "quick_bound", counting("quick", real_quick))
    res = certify(model, X, labels)
    assert calls["coarse"] == [200]
    np.testing.assert_array_equal(res.y_low, model.forward(X, LOW))
    first = real_coarse(model, X, LOW, REF)
    assert np.all(res.bounds.bound <= first.bound)  # later stages only tighten
    y, m = first.reference.output, cascade.margin(first)
    left = np.flatnonzero(~certified_sharp(y, m))
    assert calls["quick"] == ([left.size] if left.size else [])
    if left.size:  # those inputs at least as tight as the quick stage makes them
        q = real_quick(model, X[left], LOW, REF)
        assert np.all(res.bounds.bound[left] <= q.bound * (1 + 1e-12))
    assert res.certified.sum() == certify(model, X, labels, cascade=False).certified.sum()
    kept = certify(model, X[:20], keep={4: REF})  # mixed precision: the engine's first stage
    assert calls["coarse"] == [200] and kept.certified.shape == (20,)
