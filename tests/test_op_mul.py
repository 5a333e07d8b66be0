"""mul of two activations (fperr/operators/mul.py), both carrying error.

Oracles, independent of fperr's executors and rules: exact results in
fractions.Fraction (inputs and weights taken exactly); runs of the test
emulator ``fp_emulator`` (MPFR rounding; seven summation orders, plain and
fused, binary32 and same-format accumulators) of the dense layers feeding the
product and of the product itself (rounded in the accumulator, then to
storage); torch CPU float16 / bfloat16 runs written here by hand (F.linear,
``*``); and fperr's own emulator in its four orders.  Inputs: random, operands
from cancelling sums, products near binary16's overflow, products in the
subnormal ranges of binary16 and binary32 (bfloat16's).
"""

from __future__ import annotations

from fractions import Fraction

import fp_emulator as fe
import numpy as np
import pytest
from op_checks import ORDERS

from fperr.arith import Emulated
from fperr.bounds import bound_run
from fperr.bounds.rules import Context
from fperr.errors import SpecError
from fperr.layers import Dense
from fperr.model import Model, load_model
from fperr.operators.mul import Mul
from fperr.operators.slice import Slice
from fperr.rounding import round as fround

FMTS = ("binary16", "bfloat16")
TORCH = {"binary16": "float16", "bfloat16": "bfloat16"}


# -- models -------------------------------------------------------------------------------
def gate(rng: np.random.Generator, d: int = 6, m: int = 5) -> Model:
    """a = W x + b, g = V x + c (both round), a * g: a gated unit."""

    def lin() -> Dense:
        return Dense(rng.normal(size=(m, d)) / 2, rng.normal(size=m) * 0.1)

    return Model("gate", (d,), (lin(), lin(), Mul()), wiring=((-1,), (-1,), (0, 1)),
                 names=("a", "g", "ag"))  # fmt: skip


def operands(rng: np.random.Generator, n: int) -> Model:
    """Input [a (n), b (n)] -> A = diag(da) a, B = diag(db) b (dense layers whose
    weights and products round: both operands carry error) -> A * B.  The input
    a = A_t / da gives operands A ~ A_t: adversarial operands chosen directly."""
    da, db = rng.uniform(0.9, 1.1, n), rng.uniform(0.9, 1.1, n)
    wa = np.hstack([np.diag(da), np.zeros((n, n))])
    wb = np.hstack([np.zeros((n, n)), np.diag(db)])
    return Model("operands", (2 * n,), (Dense(wa), Dense(wb), Mul()),
                 wiring=((-1,), (-1,), (0, 1)), names=("a", "b", "ab"))  # fmt: skip


def operand_input(model: Model, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = a.shape[1]
    da, db = np.diag(model.layers[0].weight[:, :n]), np.diag(model.layers[1].weight[:, n:])
    return np.hstack([a / da, b / db])


def differences(rng: np.random.Generator, n: int) -> Model:
    """Input [u, v, s, t] (4n) -> A = u - v, B = s - t (each a dense layer of weights
    +-(1 + small)): with u ~ v the operands cancel, their relative errors are large."""
    d = [rng.uniform(1, 1 + 2**-6, n) for _ in range(4)]
    z = np.zeros((n, n))
    wa = np.hstack([np.diag(d[0]), -np.diag(d[1]), z, z])
    wb = np.hstack([z, z, np.diag(d[2]), -np.diag(d[3])])
    return Model("differences", (4 * n,), (Dense(wa), Dense(wb), Mul()),
                 wiring=((-1,), (-1,), (0, 1)), names=("a", "b", "ab"))  # fmt: skip


def bare(n: int) -> Model:
    """Input (2, n) -> its rows a, b (slices: exact) -> a * b: the product alone."""
    return Model("bare", (2, n), (Slice(0, 0, 1), Slice(0, 1, 2), Mul()),
                 wiring=((-1,), (-1,), (0, 1)), names=("a", "b", "ab"))  # fmt: skip


# -- the exact oracle and the independent runs ---------------------------------------------
def _frac(a: np.ndarray) -> np.ndarray:
    return np.vectorize(Fraction, otypes=[object])(a)


def exact_forward(model: Model, x: np.ndarray) -> np.ndarray:
    """The model (Dense, Slice, Mul only) in rational arithmetic, (N, n_out) objects."""
    hs = [_frac(x)]
    for i, layer in enumerate(model.layers):
        ins = [hs[j + 1] for j in model.inputs_of(i)]
        if isinstance(layer, Dense):
            y = ins[0] @ _frac(layer.weight).T
            hs.append(y if layer.bias is None else y + _frac(layer.bias))
        elif isinstance(layer, Slice):
            hs.append(ins[0][:, layer.start : layer.stop])
        else:
            assert isinstance(layer, Mul)
            hs.append(ins[0] * ins[1])
    return hs[-1].reshape(len(x), -1)


def fe_forward(model: Model, x: np.ndarray, fmt: str, acc: str, order: str,
               fused: bool) -> np.ndarray:  # fmt: skip
    """The model in ``fp_emulator``: stored inputs and weights, dot products in ``acc``
    in ``order`` (fused or not), the bias added in ``acc``, one storage rounding;
    the product rounded in ``acc`` then stored.  (N, n_out) Fractions / floats."""
    s, a = fe.FMTS[fmt], fe.FMTS[acc]
    st = np.vectorize(lambda v: fe.rnd(Fraction(v), s), otypes=[object])
    hs = [st(x)]
    for i, layer in enumerate(model.layers):
        ins = [hs[j + 1] for j in model.inputs_of(i)]
        if isinstance(layer, Dense):
            w = st(layer.weight)
            b = None if layer.bias is None else st(layer.bias)
            out = np.empty((len(x), w.shape[0]), dtype=object)
            for k, j in np.ndindex(*out.shape):
                t = fe.dot(list(ins[0][k]), list(w[j]), a, order, fused)
                out[k, j] = fe.rnd(t if b is None else fe.add(t, b[j], a), s)
            hs.append(out)
        elif isinstance(layer, Slice):
            hs.append(ins[0][:, layer.start : layer.stop])
        else:
            u, v = ins
            hs.append(np.vectorize(lambda p, q: fe.rnd(fe.mul(p, q, a), s),
                                   otypes=[object])(u, v))  # fmt: skip
    return hs[-1].reshape(len(x), -1)


def torch_forward(model: Model, x: np.ndarray, fmt: str) -> np.ndarray:
    """The model written by hand in torch on the CPU (F.linear, slicing, ``*``)."""
    torch = pytest.importorskip("torch")
    dt = getattr(torch, TORCH[fmt])
    t = lambda v: torch.tensor(v, dtype=torch.float64).to(dt)  # noqa: E731
    hs = [t(x)]
    for i, layer in enumerate(model.layers):
        ins = [hs[j + 1] for j in model.inputs_of(i)]
        if isinstance(layer, Dense):
            b = None if layer.bias is None else t(layer.bias)
            hs.append(torch.nn.functional.linear(ins[0], t(layer.weight), b))
        elif isinstance(layer, Slice):
            hs.append(ins[0][:, layer.start : layer.stop])
        else:
            hs.append(ins[0] * ins[1])
    return hs[-1].to(torch.float64).numpy().reshape(len(x), -1)


def frac_err(y: np.ndarray, exact: np.ndarray) -> np.ndarray:
    """|y - exact| rounded up to float64 (inf where y is not finite)."""
    out = np.empty(exact.shape)
    for idx in np.ndindex(*exact.shape):
        v = y[idx]
        if isinstance(v, float) and not np.isfinite(v):
            out[idx] = np.inf
            continue
        e = abs(Fraction(v) - exact[idx])
        f = float(e)
        out[idx] = f if Fraction(f) >= e else np.nextafter(f, np.inf)
    return out


def check_sound(model: Model, x: np.ndarray, fmt: str, fe_orders=fe.ORDERS) -> float:
    """fperr's emulator (4 orders), fp_emulator (given orders, plain and fused) with
    binary32 and same-format accumulators, and torch CPU: every run within the
    bound of the rational result (inf only where the bound is inf); worst
    error / bound over the finite ones."""
    exact = exact_forward(model, x)
    bounds = {acc: bound_run(model, x, Emulated.from_names(fmt, acc)).radius
              for acc in ("binary32", fmt)}  # fmt: skip
    runs = [(model.forward(x, Emulated.from_names(fmt, acc, order=o)).reshape(len(x), -1), acc)
            for o in ORDERS for acc in ("binary32", fmt)]  # fmt: skip
    runs += [(fe_forward(model, x, fmt, acc, o, fused), acc) for o in fe_orders
             for acc in ("binary32", fmt) for fused in (False, True)]  # fmt: skip
    runs.append((torch_forward(model, x, fmt), "binary32"))  # float32 opmath
    worst = 0.0
    for y, acc in runs:
        r = bounds[acc]
        err = frac_err(y, exact)
        assert np.all(err <= r), f"{fmt} acc {acc}: {np.max(err / r)}"
        fin = np.isfinite(r) & (err > 0)
        worst = max(worst, float(np.max(err[fin] / r[fin], initial=0.0)))
    return worst


# -- forward -------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FMTS)
def test_emulation_is_torch_bit_for_bit(fmt):
    """torch multiplies in float32 opmath and rounds to the dtype; Mul.merge with a
    binary32 accumulator does the same on storage values over the whole exponent
    range (subnormal results, overflow to inf included)."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    lo, hi = (-14, 9) if fmt == "binary16" else (-75, 70)
    x = fround(rng.normal(size=(1, 40000)) * np.exp2(rng.uniform(lo, hi, (1, 40000))), fmt)
    y = fround(rng.normal(size=(1, 40000)) * np.exp2(rng.uniform(lo, hi, (1, 40000))), fmt)
    dt = getattr(torch, TORCH[fmt])
    want = (torch.tensor(x).to(dt) * torch.tensor(y).to(dt)).double().numpy()
    got = Mul().merge([x, y], Emulated.from_names(fmt, "binary32"))
    assert np.array_equal(got, want, equal_nan=True), np.flatnonzero(got != want)[:5]
    assert np.isinf(got).any() and (np.abs(got[got != 0]) < 2.0**-14).any()


def test_shapes_are_checked(tmp_path):
    op = Mul()
    assert op.merge_shape([(2, 3), (2, 3)]) == (2, 3)
    for bad in ([(2, 3), (3, 2)], [(2, 3), (1, 3)], [(6,), (2, 3)]):
        with pytest.raises(SpecError, match="mul: needs two inputs of one shape") as exc:
            op.merge_shape(bad)
        assert "\n" not in str(exc.value)
    with pytest.raises(SpecError, match="mul: reads 2 inputs"):
        op.merge_shape([(2, 3)])
    model = gate(np.random.default_rng(0))
    model.save(tmp_path / "m.yaml")
    text = (tmp_path / "m.yaml").read_text()
    assert "type: mul" in text
    assert load_model(tmp_path / "m.yaml").layers[2].type == "mul"


# -- the step --------------------------------------------------------------------------------
def test_bilinear_remainder_is_attained():
    """x_ex y_ex - x_run y_run - (y^ e_x + x^ e_y) reaches 3 rx ry at a corner (exact
    values r from the computed ones, a run r from the exact ones), so a box of
    rx ry alone would not do; the step's first box is 3 rx ry, deterministic."""
    x, y = np.array([[1.5]]), np.array([[2.0]])
    rx, ry = np.array([[0.25]]), np.array([[0.125]])
    x1, y1 = Fraction(1, 4), Fraction(-1, 8)  # exact = computed + (x1, y1)
    ex, ey = Fraction(-1, 4), Fraction(1, 8)  # run = exact - (ex, ey)
    xx, yx = Fraction(1.5) + x1, Fraction(2) + y1
    rem = abs(xx * yx - (xx - ex) * (yx - ey) - (ex * Fraction(2) + Fraction(1.5) * ey))
    assert rem == 3 * Fraction(0.25) * Fraction(0.125)
    step = Mul().step([x, y], [rx, ry], Context(Emulated()), 0)
    assert step.boxes[0][0][0, 0] == float(rem) and step.boxes[0][1] is False


def test_random_pairs_of_runs_stay_in_the_step():
    """Sampled exact operands (within r of the computed ones) and runs (within r of
    the exact ones): |x_ex y_ex - x_run y_run| <= image + remainder, in rationals, up
    to the float64 evaluation of the bound (to nearest: 2^-50 relative; a corner
    attains the bound, and the step's rounding box, >= 2^-25 relative, covers it)."""
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(1, 8)), rng.normal(size=(1, 8))
    rx, ry = rng.uniform(0, 0.3, x.shape), rng.uniform(0, 0.3, y.shape)
    step = Mul().step([x, y], [rx, ry], Context(Emulated.from_names("binary32")), 0)
    bound = (step.image + step.boxes[0][0])[0]
    worst = Fraction(0)
    for _ in range(300):
        x1, y1, ex, ey = (r[0] * rng.choice([-1.0, 1.0], 8) for r in (rx, ry, rx, ry))
        for k in range(8):
            xx, yx = Fraction(x[0, k]) + Fraction(x1[k]), Fraction(y[0, k]) + Fraction(y1[k])
            d = abs(xx * yx - (xx - Fraction(ex[k])) * (yx - Fraction(ey[k])))
            assert d <= Fraction(bound[k]) * (1 + Fraction(1, 2**50))
            worst = max(worst, d / Fraction(bound[k]))
    assert worst > Fraction(9, 10)  # corners come close to the bound


def test_adjoint_pulls_back_to_both_operands():
    x, y = np.array([[1.0, -2.0, 3.0]]), np.array([[0.5, 4.0, -1.0]])
    step = Mul().step([x, y], [np.zeros_like(x)] * 2, Context(Emulated()), 0)
    lam = np.arange(6.0).reshape(1, 2, 3)
    gx, gy = step.adjoint(lam)
    assert step.arity == 2
    assert np.array_equal(gx, lam * y[:, None]) and np.array_equal(gy, lam * x[:, None])


def test_exact_products_have_one_rounding():
    """binary16 values times binary16 values in a binary32 accumulator are exact
    (22 <= 24 bits): with exact operands the local box is one storage rounding,
    at most half an ulp of binary16 at the product; in a binary16 accumulator
    the product is rounded once (no second, storage, rounding counted)."""
    rng = np.random.default_rng(3)
    x = fround(rng.normal(size=(4, 50)), "binary16")
    y = fround(rng.normal(size=(4, 50)), "binary16")
    z0 = [np.zeros_like(x)] * 2
    for acc in ("binary32", "binary16"):
        step = Mul().step([x, y], z0, Context(Emulated.from_names("binary16", acc)), 0)
        p = np.abs(x * y).reshape(4, -1)
        box = step.boxes[1][0]
        assert np.all(box <= 2.0 ** (np.floor(np.log2(p)) + 1 - 11)), acc  # <= one ulp(p)
        assert np.all(box >= 2.0 ** (np.floor(np.log2(p)) - 11)), acc  # >= half an ulp


# -- soundness -------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", FMTS)
def test_random_gate(fmt):
    rng = np.random.default_rng(1)
    model = gate(rng)
    assert (
        0
        < check_sound(
            model, rng.normal(size=(5, 6)), fmt, ("sequential", "pairwise", "same_sign_first")
        )
        <= 1
    )


@pytest.mark.parametrize("fmt", FMTS)
def test_both_operands_carry_error(fmt):
    """Nonzero radii reach the product from both sides, so the bilinear terms count."""
    rng = np.random.default_rng(2)
    model = operands(rng, 6)
    x = operand_input(model, rng.normal(size=(5, 6)) * 3, rng.normal(size=(5, 6)) * 3)
    ctx = Context(Emulated.from_names(fmt))
    hs = model.activations(x, ctx.arith)
    ra = frac_err(hs[1], exact_forward(Model("a", model.input_shape, model.layers[:1]), x))
    rb = frac_err(hs[2], exact_forward(
        Model("b", model.input_shape, model.layers[1:2]), x))  # fmt: skip
    assert ra.min() > 0 and rb.min() > 0
    step = Mul().step([hs[1], hs[2]], [ra, rb], ctx, 0)
    assert np.all(step.image > 0) and np.all(step.boxes[0][0] > 0)
    assert check_sound(model, x, fmt) > 0


@pytest.mark.parametrize("fmt", FMTS)
def test_cancelling_operands(fmt):
    """Operands u - v with u ~ v ~ 100: each operand is a few units of its error,
    the product's error is as large as the product."""
    rng = np.random.default_rng(4)
    n = 4
    model = differences(rng, n)
    u = rng.uniform(90, 110, (5, n))
    s = rng.uniform(90, 110, (5, n))
    x = np.hstack([u, u * (1 + rng.normal(size=u.shape) * 2e-3),
                   s, s * (1 + rng.normal(size=s.shape) * 2e-3)])  # fmt: skip
    assert check_sound(model, x, fmt) > 0


def test_near_overflow_and_overflow():
    """Products near binary16's largest value 65504: finite and sound while no run
    can overflow; inf (and some run inf) beyond."""
    rng = np.random.default_rng(6)
    model = operands(rng, 4)
    a = rng.uniform(200, 240, (6, 4)) * rng.choice([-1, 1], (6, 4))
    b = rng.uniform(200, 240, (6, 4))
    x = operand_input(model, a, b)
    rb = bound_run(model, x, Emulated.from_names("binary16")).radius
    assert np.isfinite(rb).all() and check_sound(model, x, "binary16") > 0
    big = operand_input(model, np.full((2, 4), 256.0), np.full((2, 4), 256.0))
    assert np.isinf(bound_run(model, big, Emulated.from_names("binary16")).radius).all()
    assert np.isinf(model.forward(big, Emulated.from_names("binary16"))).all()
    check_sound(model, big, "binary16", ("sequential",))


@pytest.mark.parametrize("fmt, scale", [("binary16", 2.0**-9), ("bfloat16", 2.0**-65)])
def test_subnormal_products(fmt, scale):
    """Operands ~ scale: products below the storage's normal range (binary16's 2^-14;
    for bfloat16 below binary32's 2^-126, so the float32 product itself rounds)."""
    rng = np.random.default_rng(7)
    model = operands(rng, 6)
    x = operand_input(model, rng.uniform(-1, 1, (5, 6)) * scale, rng.uniform(-1, 1, (5, 6)) * scale)
    assert check_sound(model, x, fmt) > 0


@pytest.mark.parametrize("fmt", FMTS)
def test_bare_products_with_zeros_and_signs(fmt):
    """Stored inputs multiplied directly (no error on the operands): zeros give a
    zero bound, and the bound is at most one storage ulp of the product."""
    rng = np.random.default_rng(8)
    x = fround(rng.normal(size=(6, 2, 16)), fmt)
    x[0, 0, :4] = 0.0
    model = bare(16)
    assert check_sound(model, x, fmt) > 0
    r = bound_run(model, x, Emulated.from_names(fmt)).radius
    assert np.all(r[0, :4] == 0)


# -- tightness -------------------------------------------------------------------------------
def _ratio(model: Model, x: np.ndarray, fmt: str) -> float:
    """Median over inputs of max bound / max observed error, the observed error the
    worst of the four orders (binary32 accumulation); exact: the float64 forward
    (its error ~ 2^-50 relative is far below the ~ 2^-11 observed)."""
    exact = model.forward(x).reshape(len(x), -1)
    obs = np.max([np.abs(model.forward(x, Emulated.from_names(fmt, order=o)).reshape(len(x), -1)
                         - exact) for o in ORDERS], axis=0)  # fmt: skip
    rb = bound_run(model, x, Emulated.from_names(fmt)).radius
    assert np.all(obs <= rb)
    keep = obs.max(axis=1) > 0
    return float(np.median(rb.max(axis=1)[keep] / obs.max(axis=1)[keep]))


@pytest.mark.parametrize("fmt", FMTS)
def test_tightness(fmt):
    """200 random inputs: the gate (two dense maps and their product) and the bare
    product of stored values (one rounding), binary32 accumulation."""
    rng = np.random.default_rng(9)
    g = _ratio(gate(rng, 16, 12), rng.normal(size=(200, 16)), fmt)
    b = _ratio(bare(16), fround(rng.normal(size=(200, 2, 16)), fmt), fmt)
    print(f"mul {fmt}: median bound/observed gate {g:.3g}, bare product {b:.3g} (200 inputs)")
    assert 1 <= g <= CEILING[fmt][0] and 1 <= b <= CEILING[fmt][1]


CEILING = {"binary16": (5.0, 2.0), "bfloat16": (5.0, 2.0)}  # measured 4.21, 1.46; 4.36, 1.54


# -- torch import ----------------------------------------------------------------------------
def _gated(kind: str):
    torch = pytest.importorskip("torch")
    from torch import nn

    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.out = nn.Linear(6, 5), nn.Linear(6, 5), nn.Linear(5, 3)
            self.p = nn.Parameter(torch.ones(5))

        def forward(self, x):
            a, b = nn.functional.silu(self.a(x)), self.b(x)
            if kind == "op":
                h = a * b
            elif kind == "fn":
                h = torch.mul(a, b)
            elif kind == "method":
                h = a.mul(b)
            elif kind == "square":
                h = a * a + b
            elif kind == "const":
                h = a * 2.0
            else:
                h = a * self.p
            return self.out(h)

    torch.manual_seed(0)
    return Gated()


@pytest.mark.parametrize("kind", ["op", "fn", "method", "square"])
def test_torch_import(kind):
    """x * y, torch.mul, .mul and a square import as the mul operator (from_torch's
    own check: the model agrees with the float64 module); the bound holds for a
    float16 torch CPU run of the module itself."""
    torch = pytest.importorskip("torch")
    from fperr.importers import from_torch

    module = _gated(kind)
    model = from_torch(module, (6,))
    assert [layer.type for layer in model.layers].count("mul") == 1
    x = fround(np.random.default_rng(0).normal(size=(8, 6)), "binary16")
    with torch.no_grad():
        run = module.to(torch.float16)(torch.tensor(x, dtype=torch.float16)).double().numpy()
    exact = model.forward(x)
    r = bound_run(model, x, Emulated.from_names("binary16")).radius
    err = np.abs(run - exact)
    assert np.all(err <= r) and err.max() > 0


@pytest.mark.parametrize("kind, why", [("const", "^unsupported: mul 'mul' \\(1 op\\)$"),
                                       ("param", "mul by a parameter")])  # fmt: skip
def test_torch_import_refuses_constants(kind, why):
    pytest.importorskip("torch")
    from fperr.importers import from_torch

    with pytest.raises(SpecError, match=why) as exc:
        from_torch(_gated(kind), (6,))
    assert "\n" not in str(exc.value)
