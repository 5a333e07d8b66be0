"""A-priori (input-box) bounds and the symbolic formulas they evaluate."""

from __future__ import annotations

import numpy as np
import pytest
import sympy as sp

from fperr.arith import Emulated
from fperr.bounds import symbolic
from fperr.bounds.apriori import apriori_bound
from fperr.layers import Activation, Conv2d, Dense, Flatten, Pool2d, Reshape
from fperr.model import Model, load_model


def _net(rng, act):
    return Model("n", (16,), (
        Reshape((1, 4, 4)), Conv2d(rng.standard_normal((3, 1, 3, 3)) * 0.5, rng.standard_normal(3)),
        Activation(act), Pool2d("max", (2, 2), (1, 1)), Flatten(),
        Dense(rng.standard_normal((8, 3)) * 0.5, rng.standard_normal(8) * 0.1), Activation(act),
        Dense(rng.standard_normal((4, 8)), None),
    ))  # fmt: skip


@pytest.mark.parametrize("act", ["relu", "tanh", "sigmoid", "gelu", "leaky_relu"])
@pytest.mark.parametrize("seed", range(3))
def test_apriori_bound_holds_for_every_input_in_the_box(act, seed):
    rng = np.random.default_rng(seed)
    model = _net(rng, act)
    for storage, acc in (("binary16", "binary32"), ("bfloat16", "binary32")):
        low = Emulated.from_names(storage, acc)
        ab = apriori_bound(model, -1.0, 2.0, low)
        X = rng.uniform(-1, 2, (400, 16))
        X[:4] = np.array([-1.0, 2.0, 0.0, 1.0])[:, None]  # corners and inside
        exact = model.forward(X)
        assert np.all(exact >= ab.lo - 1e-12) and np.all(exact <= ab.hi + 1e-12)
        for order in ("blas", "sequential", "pairwise"):
            y = model.forward(X, Emulated(low.storage, low.accumulate, order=order))
            assert np.all(np.abs(y - exact) <= ab.radius + 1e-12 * (1 + np.abs(exact)))


def test_apriori_on_the_digits_mlp_covers_every_digit():
    model = load_model("examples/mlp.yaml")
    ab = apriori_bound(model, 0.0, 1.0)
    X = np.load("examples/digits.npz")["inputs"]
    err = np.abs(model.forward(X, Emulated.from_names("binary16")) - model.forward(X))
    assert np.all(err <= ab.radius)
    assert len(ab.layer_radius) == len(model.layers)


def test_symbolic_dense_formula_matches_the_engine_exactly():
    """The engine's float evaluation of the dense formula agrees with sympy's
    exact rational evaluation of the same expression."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((3, 5)).astype(np.float32).astype(np.float64)
    model = Model("d", (5,), (Dense(w, None),))
    low = Emulated.from_names("binary16", "binary32")
    ab = apriori_bound(model, 0.25, 0.75, low)
    w_hat = low.to_operand(w)
    m = 0.75 + low.storage.u * 0.75  # |x| bound plus the input rounding radius
    r_in = low.storage.u * 0.75
    z0 = np.abs(w @ np.full(5, 0.5)) + np.abs(w) @ np.full(5, 0.25)
    expr = symbolic.dense_radius()
    for i in range(3):
        s_m = float(np.abs(w_hat[i]).sum() * m)
        s_r = float(np.abs(w[i]).sum() * r_in)
        d_w = float(np.abs(w_hat[i] - w[i]).sum() * m)
        acc = low.accumulate.gamma(5)
        zb = max((z0[i] + s_r + acc * s_m + d_w) / (1 - 2 * low.storage.u), 2.0**-14)
        vals = {"S_R": s_r, "S_m": s_m, "Z": zb, "D_W": d_w, "D_b": 0, "n": 5,
                "u_a": sp.Rational(1, 2**24), "u_s": sp.Rational(1, 2**11)}  # fmt: skip
        exact = expr.subs({sym: sp.nsimplify(vals[sym.name]) for sym in expr.free_symbols})
        assert float(exact) == pytest.approx(ab.radius[i], rel=1e-12)


def test_latex_export_and_errors():
    assert r"\lambda" in symbolic.latex("dense_probabilistic")
    assert r"\sqrt{n}" in symbolic.latex("dot_product_probabilistic")
    assert "u_{s}" in symbolic.latex("dense")
    with pytest.raises(ValueError, match="unknown formula"):
        symbolic.latex("nope")
    with pytest.raises(ValueError, match="needs"):
        symbolic.evaluate("dense", S_R=1.0)
