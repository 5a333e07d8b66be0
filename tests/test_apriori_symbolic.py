"""A-priori (input-box) bounds and the symbolic formulas they evaluate."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest

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


def _fp16_grid(lo: float, hi: float) -> np.ndarray:
    """Every binary16 number in [lo, hi] (0 <= lo), from numpy's float16."""
    v = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    return v[(v >= lo) & (v <= hi)]


def _brute_force_worst(w: np.ndarray, b: float, lo: float, hi: float) -> float:
    """sup |computed - exact| of y = w.x + b over x in [lo, hi]^n, every order.

    Independent of fperr: numpy's float16/float32 casts do the arithmetic the
    way the dense layer is specified (inputs and parameters rounded to
    binary16, products exact in binary32, the n - 1 additions in binary32 in
    each order, the sum stored to binary16, then the bias added and stored).
    The computed output depends only on the rounded inputs v; the x rounding
    to v fill a cell [mid below, mid above] cut by the box, on which the exact
    output is linear: its extremes are centre +- |w|.halfwidth.
    """
    v = _fp16_grid(lo, hi)
    f16 = v.astype(np.float16)
    below = np.nextafter(f16, np.float16(-np.inf)).astype(np.float64)
    above = np.nextafter(f16, np.float16(np.inf)).astype(np.float64)
    a, z = np.maximum(lo, (v + below) / 2), np.minimum(hi, (v + above) / 2)
    idx = np.array(list(itertools.product(range(v.size), repeat=w.size)))
    centre, half = (a[idx] + z[idx]) / 2, (z[idx] - a[idx]) / 2
    y_lo = centre @ w + b - half @ np.abs(w)
    y_hi = centre @ w + b + half @ np.abs(w)
    prods = (v[idx] * w.astype(np.float16).astype(np.float64)).astype(np.float32)  # exact
    b16 = float(np.float16(b))
    worst = 0.0
    for order in itertools.permutations(range(w.size)):
        s = prods[:, order[0]]
        for j in order[1:]:
            s = s + prods[:, j]  # float32 + float32: one binary32 rounding
        t = s.astype(np.float16).astype(np.float64)
        y = (t + b16).astype(np.float16).astype(np.float64)  # t + b16 is exact in float64
        worst = max(worst, float(np.max(np.maximum(np.abs(y - y_lo), np.abs(y - y_hi)))))
    return worst


def _dense_case(case: str) -> tuple[np.ndarray, float, float, float]:
    lo, hi = 1.0, 1.0 + 32 * 2.0**-10  # 33 binary16 numbers per input
    if case.startswith("random"):
        rng = np.random.default_rng(int(case[-1]))
        w = rng.standard_normal(3).astype(np.float32).astype(np.float64)
        return w, float(rng.standard_normal()), lo, hi
    if case == "bias_cancels":  # b = -w.c: the output is small, w.x before the bias is not
        w = np.array([0.9577587246894836, -0.19980213046073914, 0.02425956539809704])
        return w, -float(w @ np.full(3, (lo + hi) / 2)), lo, hi
    # one point: 1 + 2**-11 is a binary16 tie (rounds to 1), then the bias cancels the 1
    return np.array([1.0, 2.0**-11]), -1.0, 1.0, 1.0


@pytest.mark.parametrize("case", ["random0", "random1", "random2", "bias_cancels", "point_tie"])
def test_apriori_dense_against_brute_force_worst_case(case):
    """The a-priori radius of one dense layer against the true worst error
    over the box, found by enumerating every binary16 input in it: never
    below it (sound), and within a factor 3 of it (the engine adds the
    worst cases of each rounding as if their signs aligned)."""
    w, b, lo, hi = _dense_case(case)
    model = Model("d", (w.size,), (Dense(w[None, :], np.array([b])),))
    radius = float(apriori_bound(model, lo, hi, Emulated.from_names("binary16", "binary32"))
                   .radius[0])  # fmt: skip
    worst = _brute_force_worst(w, b, lo, hi)
    assert worst > 0
    assert worst <= radius * (1 + 1e-12), f"unsound: worst {worst:.6g} > radius {radius:.6g}"
    assert radius <= 3 * worst


def test_symbolic_dense_formula_is_the_documented_one():
    """symbolic.evaluate('dense') (sympy, lambdified to floats) against the
    formula as its docstring states it, transcribed here in exact rationals:
    S_R + gamma_n(u_a) S_m + c eta (1 + gamma_n(u_a)) + 2 u_s Z + D_W + D_b."""
    rng = np.random.default_rng(1)
    for _ in range(50):
        v = {k: Fraction(float(rng.uniform(0, 10))) for k in ("S_R", "S_m", "Z", "D_W", "D_b")}
        v["eta"] = Fraction(float(rng.uniform(0, 1e-30)))
        n, c = int(rng.integers(1, 5000)), int(rng.integers(0, 5000))
        u_a, u_s = Fraction(1, 2**24), Fraction(1, 2 ** int(rng.integers(3, 12)))
        g = n * u_a / (1 - n * u_a)
        want = (v["S_R"] + g * v["S_m"] + c * v["eta"] * (1 + g) + 2 * u_s * v["Z"]
                + v["D_W"] + v["D_b"])  # fmt: skip
        got = symbolic.evaluate("dense", n=n, c=c, u_a=float(u_a), u_s=float(u_s),
                                **{k: float(x) for k, x in v.items()})  # fmt: skip
        assert abs(Fraction(float(got)) - want) <= Fraction(1, 10**12) * want


def test_latex_export_and_errors():
    assert r"\lambda" in symbolic.latex("dense_probabilistic")
    assert r"\sqrt{n}" in symbolic.latex("dot_product_probabilistic")
    assert "u_{s}" in symbolic.latex("dense")
    with pytest.raises(ValueError, match="unknown formula"):
        symbolic.latex("nope")
    with pytest.raises(ValueError, match="needs"):
        symbolic.evaluate("dense", S_R=1.0)
