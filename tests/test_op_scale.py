"""scale: y = fl(c x) (fperr/operators/scale.py), attention's 1/sqrt(d).

Oracles: torch CPU's ``half_tensor * python_float`` (the emulation must match it
bit for bit), exact results in fractions.Fraction, fperr's emulator in four
summation orders with binary32 and same-format accumulators.  Inputs: random,
near the top of binary16's range, in its subnormal range, and powers of two.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from fperr.arith import Emulated
from fperr.bounds import bound_run
from fperr.bounds.rules import Context
from fperr.errors import FperrInputError, SpecError
from fperr.layers import Dense
from fperr.model import Model, load_model
from fperr.operators.scale import Scale, significant_bits
from fperr.rounding import round as fround

ORDERS = ("sequential", "pairwise", "blocked", "blas")
FMTS = ("binary16", "bfloat16")
TORCH = {"binary16": "float16", "bfloat16": "bfloat16"}
FACTORS = (1 / math.sqrt(6), 0.1, 3.7, 1e-3, 1 / 3, 0.125)


def _torch(x: np.ndarray, c: float, fmt: str) -> np.ndarray:
    torch = pytest.importorskip("torch")
    dt = getattr(torch, TORCH[fmt])
    return (torch.tensor(x, dtype=torch.float64).to(dt) * c).to(torch.float64).numpy()


@pytest.mark.parametrize("fmt", FMTS)
def test_emulation_is_torch_bit_for_bit(fmt):
    """torch rounds c to float32 (opmath), the product to float32, then to the dtype:
    Scale.forward with a binary32 accumulator does the same on every value tried,
    subnormal inputs and products included."""
    rng = np.random.default_rng(0)
    x = fround(rng.normal(size=50000) * np.exp2(rng.uniform(-30, 15, 50000)), fmt)
    for c in FACTORS:
        want = _torch(x, c, fmt)
        got = Scale(c).forward(x[None], Emulated.from_names(fmt, "binary32"))[0]
        assert np.array_equal(got, want), (c, np.flatnonzero(got != want)[:5])


def test_significant_bits():
    """Against Fraction: c = m 2^e with m odd has m.bit_length() significant bits."""
    assert [significant_bits(v) for v in (0.0, 1.0, 0.5, -0.125, 3.0, 0.75)] == [0, 1, 1, 1, 2, 2]
    rng = np.random.default_rng(9)
    vals = [
        *(rng.normal(size=300) * np.exp2(rng.integers(-60, 60, 300))),
        *(float(np.float32(v)) for v in rng.normal(size=100)),
        0.1,
        2.0**-1074,
        1e308,
    ]
    for v in vals:
        m = abs(Fraction(v).numerator)  # times 2^e, e >= 0, for integers: strip it
        assert significant_bits(v) == (m // (m & -m)).bit_length(), v


@pytest.mark.parametrize("c", [0.5, 0.125, 2.0, -0.25])
def test_power_of_two_is_exact(c):
    """Binary16 values times a power of two that stay in the normal range: the
    step's radius is exactly |c| r (no local error at all), and 0 for r = 0."""
    rng = np.random.default_rng(1)
    lo, hi = (-10, 10) if abs(c) <= 1 else (-12, 13)
    x = fround(rng.choice([-1, 1], (4, 50)) * np.exp2(rng.uniform(lo, hi, (4, 50))), "binary16")
    ctx = Context(Emulated.from_names("binary16"))
    step = Scale(c).step([x], [np.zeros_like(x)], ctx, 0)
    assert np.all(step.radius() == 0) and step.signed is None
    assert np.array_equal(step.value, x * c)
    r = np.abs(x) * 2.0**-6
    step = Scale(c).step([x], [r], ctx, 0)
    assert np.array_equal(step.radius(), abs(c) * r)


def test_power_of_two_into_the_subnormal_range():
    """Halving binary16 subnormals and near-subnormals: the bound is at most half
    the subnormal spacing 2^-25, covers every observed error, and torch agrees."""
    x = fround(np.arange(1, 4000, 7)[None] * 2.0**-24, "binary16")
    ctx = Context(Emulated.from_names("binary16"))
    step = Scale(0.5).step([x], [np.zeros_like(x)], ctx, 0)
    err = np.abs(_torch(x, 0.5, "binary16") - x * 0.5)
    assert np.all(err <= step.radius()) and err.max() == 2.0**-25
    assert step.radius().max() == 2.0**-25


def _frac_err(y: np.ndarray, exact: list[list[Fraction]]) -> np.ndarray:
    out = np.empty(y.shape)
    for i, j in np.ndindex(*y.shape):
        if not np.isfinite(y[i, j]):
            out[i, j] = np.inf
            continue
        e = abs(Fraction(y[i, j]) - exact[i][j])
        f = float(e)
        out[i, j] = f if Fraction(f) >= e else np.nextafter(f, np.inf)
    return out


def dense_scale(rng: np.random.Generator, c: float, d: int = 6) -> Model:
    return Model("ds", (d,), (Dense(rng.normal(size=(d, d)) / 2, rng.normal(size=d) * 0.1),
                              Scale(c)))  # fmt: skip


def _exact(model: Model, x: np.ndarray) -> list[list[Fraction]]:
    w, b, c = model.layers[0].weight, model.layers[0].bias, Fraction(model.layers[1].factor)
    return [[c * (sum(Fraction(w[j, t]) * Fraction(xi[t]) for t in range(len(xi)))
                  + Fraction(b[j])) for j in range(w.shape[0])] for xi in x]  # fmt: skip


def check_sound(model: Model, x: np.ndarray, fmt: str) -> float:
    """Emulated orders (binary32 and same-format accumulators) and torch CPU (F.linear
    then * c, by hand) within the bound of the rational result; worst error / bound."""
    torch = pytest.importorskip("torch")
    exact = _exact(model, x)
    runs = [(model.forward(x, Emulated.from_names(fmt, acc, order=o)), acc)
            for o in ORDERS for acc in ("binary32", fmt)]  # fmt: skip
    dt = getattr(torch, TORCH[fmt])
    t = lambda a: torch.tensor(a, dtype=torch.float64).to(dt)  # noqa: E731
    dense = model.layers[0]
    y = torch.nn.functional.linear(t(x), t(dense.weight), t(dense.bias)) * model.layers[1].factor
    runs.append((y.to(torch.float64).numpy(), "binary32"))
    worst = 0.0
    for yr, acc in runs:
        r = bound_run(model, x, Emulated.from_names(fmt, acc)).radius
        err = _frac_err(yr, exact)
        assert np.all(err <= r), f"{fmt} acc {acc}: {np.max(err / r)}"
        with np.errstate(invalid="ignore", divide="ignore"):
            worst = max(worst, float(np.nanmax(np.where(err > 0, err / r, 0.0))))
    return worst


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("c", [1 / math.sqrt(6), 0.125, 3.7])
def test_random_inputs(fmt, c):
    rng = np.random.default_rng(2)
    assert 0 < check_sound(dense_scale(rng, c), rng.normal(size=(10, 6)), fmt) <= 1


@pytest.mark.parametrize("fmt", FMTS)
def test_tiny_inputs(fmt):
    """Outputs deep in the subnormal range of the storage format (and below the
    normal range of a same-format accumulator)."""
    rng = np.random.default_rng(3)
    tiny = 2.0**-16 if fmt == "binary16" else 2.0**-128
    assert check_sound(dense_scale(rng, 0.3), rng.normal(size=(10, 6)) * tiny, fmt) > 0


def test_near_overflow():
    """Products just below binary16's largest value: finite and sound; just above
    (some run may overflow): inf."""
    rng = np.random.default_rng(4)
    model = dense_scale(rng, 1.9)
    x = rng.normal(size=(10, 6))
    z = model.layers[0].forward(x, Emulated())
    x = x * (30000 / np.abs(z).max())
    rb = bound_run(model, x, Emulated.from_names("binary16")).radius
    assert np.isfinite(rb).all() and check_sound(model, x, "binary16") > 0
    y = model.forward(x * 1.2, Emulated.from_names("binary16"))
    over = bound_run(model, x * 1.2, Emulated.from_names("binary16")).radius
    assert np.isinf(y).any() and np.all(np.isinf(over[np.isinf(y)]))


def test_scale_rounding_is_a_signed_generator():
    """With a bfloat16 accumulator c = 1/3 is held as 0x3EAB (8 bits): the scale's
    own rounding (c_acc - c) x is known, one signed generator; the radius is still
    >= the observed error, and <= twice it for exact inputs (no other rounding
    dominates... except the storage ones, both within a factor of a few)."""
    x = fround(np.linspace(1, 2, 64)[None], "bfloat16")
    arith = Emulated.from_names("bfloat16", "bfloat16")
    step = Scale(1 / 3).step([x], [np.zeros_like(x)], Context(arith), 0)
    c_acc = float(fround(1 / 3, "bfloat16"))
    assert step.signed is not None
    np.testing.assert_array_equal(step.signed[0, 0], (c_acc - 1 / 3) * x[0])
    exact = [[Fraction(1, 3) * Fraction(v) for v in x[0]]]
    err = _frac_err(Scale(1 / 3).forward(x, arith), exact)
    assert np.all(err <= step.radius())


@pytest.mark.parametrize("fmt", FMTS)
def test_zonotope_rule_agrees_with_the_backward_step(fmt):
    """A chain dense -> scale -> dense: the zonotope engine (Scale.rule) and the
    backward engine (Scale.step) both bound every order, within 1% of each other."""
    rng = np.random.default_rng(5)
    model = Model(
        "dsd",
        (6,),
        (
            Dense(rng.normal(size=(6, 6)) / 2, rng.normal(size=6) * 0.1),
            Scale(1 / math.sqrt(6)),
            Dense(rng.normal(size=(3, 6)) / 2),
        ),
    )
    x = rng.normal(size=(20, 6))
    arith = Emulated.from_names(fmt)
    z = bound_run(model, x, arith, engine="zonotope").radius
    b = bound_run(model, x, arith, engine="backward").radius
    exact = model.forward(x)
    for o in ORDERS:
        err = np.abs(model.forward(x, Emulated.from_names(fmt, order=o)) - exact)
        assert np.all(err <= z) and np.all(err <= b)
    assert np.all(np.abs(z / b - 1) < 0.01), np.abs(z / b - 1).max()


def test_factor_must_be_finite(tmp_path):
    for bad in (math.inf, -math.inf, math.nan):
        with pytest.raises(SpecError, match="scale: factor must be finite"):
            Scale(bad)
    rng = np.random.default_rng(6)
    dense_scale(rng, 0.5).save(tmp_path / "m.yaml")
    text = (tmp_path / "m.yaml").read_text()
    assert "factor: 0.5" in text
    (tmp_path / "m.yaml").write_text(text.replace("factor: 0.5", "factor: .inf"))
    with pytest.raises(FperrInputError, match="scale.factor: Input should be a finite") as exc:
        load_model(tmp_path / "m.yaml")
    assert "\n" not in str(exc.value)


def test_tightness():
    """Median over 200 random inputs of (largest bound) / (largest error, worst of
    the four orders), dense -> scale(1/sqrt(6)), binary16, binary32 accumulation."""
    rng = np.random.default_rng(7)
    model = dense_scale(rng, 1 / math.sqrt(6))
    x = rng.normal(size=(200, 6))
    exact = model.forward(x)
    obs = np.max([np.abs(model.forward(x, Emulated.from_names("binary16", order=o)) - exact)
                  for o in ORDERS], axis=0)  # fmt: skip
    rb = bound_run(model, x, Emulated.from_names("binary16")).radius
    assert np.all(obs <= rb)
    ratio = np.median(rb.max(axis=1) / obs.max(axis=1))
    print(f"scale: median bound/observed {ratio:.3g} over 200 inputs")
    assert ratio <= CEILING


CEILING = 3.5  # measured 2.72 (numpy 2.4, this seed)
