"""fperr.accumulation against independent oracles.

* numpy: its float16 matmul/dot accumulate in float32 in k order and round
  once; ``np.cumsum`` is a sequential accumulation by definition.
* exact rationals: reference loops that apply ``fperr.round_scalar`` to the
  exact :class:`~fractions.Fraction` result of every product and addition,
  in the order the model prescribes, and the exact sums for Higham's bound.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

import fperr
from fperr import accumulation as acc
from fperr.accumulation import AccumulationModel
from fperr.formats import Format

B16, B32, B64 = (fperr.get_format(n) for n in ("binary16", "binary32", "binary64"))
BF16, TF32, E4M3 = (fperr.get_format(n) for n in ("bfloat16", "tf32", "float8_e4m3fn"))
P8 = Format("p8e15", p=8, emax=15)  # a narrow accumulator: large, visible errors


def f16_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """numpy's float16 matmul (float32 accumulation in k order, one rounding)."""
    with np.errstate(all="ignore"):
        return (a.astype(np.float16) @ b.astype(np.float16)).astype(np.float64)


def same(got: np.ndarray, want: np.ndarray) -> bool:
    return bool(np.array_equal(got, want, equal_nan=True))


# -- models, presets ------------------------------------------------------------------
def test_presets() -> None:
    want = {
        "numpy_fp16": (B16, B32, "sequential"),
        "cublas_fp32acc": (B16, B32, "blas"),
        "fp16acc": (B16, B16, "sequential"),
        "fp32": (B32, B32, "blas"),
        "bf16": (BF16, B32, "blas"),
        "tf32": (TF32, B32, "blas"),
    }
    assert acc.accumulation_names() == sorted(want)
    for name, (s, a, o) in want.items():
        m = acc.get_accumulation(name.upper())
        assert (m.storage, m.accumulate, m.order) == (s, a, o)
        assert m.to_dict() == {"storage": s.name, "accumulate": a.name, "order": o, "block": 32}
        assert acc.get_accumulation(m) is m
    assert repr(acc.NUMPY_FP16) == (
        "AccumulationModel(storage=binary16, accumulate=binary32, order='sequential')"
    )
    assert "block=8" in repr(AccumulationModel(order="blocked", block=8))
    with pytest.raises(ValueError, match="valid names"):
        acc.get_accumulation("fp17")


def test_model_validation() -> None:
    m = AccumulationModel("fp16", "fp32", "pairwise")  # type: ignore[arg-type]
    assert (m.storage, m.accumulate) == (B16, B32)
    assert AccumulationModel() == acc.CUBLAS_FP32ACC
    assert AccumulationModel(P8, P8).to_dict()["storage"] == {
        "name": "p8e15",
        "p": 8,
        "emax": 15,
        "subnormals": True,
        "inf_nan": "ieee",
    }
    assert acc.FP16ACC.products_exact is False and acc.BF16.products_exact is False
    assert acc.NUMPY_FP16.products_exact and not AccumulationModel(E4M3, B16).products_exact
    for bad in (
        dict(order="random"),
        dict(block=0),
        dict(accumulate=Format("p30", 30, 127)),
        dict(storage=B64, accumulate=B32),
    ):
        with pytest.raises(ValueError):
            AccumulationModel(**bad)


# -- bit-identity with numpy ---------------------------------------------------------------
def _matrices(
    rng: np.random.Generator, kind: str, m: int, k: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    if kind == "normal":
        return rng.standard_normal((m, k)), rng.standard_normal((k, n))
    if kind == "wide":  # subnormals, overflow to inf, cancellation
        a = rng.standard_normal((m, k)) * np.exp(rng.uniform(-14, 11, (m, k)))
        return a, rng.standard_normal((k, n)) * np.exp(rng.uniform(-9, 9, (k, n)))
    # "big-then-small": a huge product followed by many small ones
    a = np.ones((m, k))
    a[:, 0] = 2048.0
    a[::2, 0] = 65504.0
    b = rng.choice([1.0, 0.5, -0.25, 3.0], (k, n))
    b[0] = 60000.0
    return a, b


@pytest.mark.parametrize("kind", ["normal", "wide", "big-then-small"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (7, 33, 5), (64, 300, 48), (96, 257, 80)])
def test_sequential_matmul_is_numpy_float16(kind: str, shape: tuple[int, int, int]) -> None:
    rng = np.random.default_rng(sum(shape))
    a, b = _matrices(rng, kind, *shape)
    assert same(acc.matmul(a, b, acc.NUMPY_FP16), f16_matmul(a, b))


def test_sequential_matmul_batched_and_numpy_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    a = rng.standard_normal((2, 3, 40, 260)) * 30  # m n k > 2**22: threaded tiles
    b = rng.standard_normal((260, 70))
    want = f16_matmul(a, b)
    assert same(acc.matmul(a, b, acc.NUMPY_FP16), want)
    a[0, 0, 0, 5] = np.inf  # non-finite input: the numpy rank-1 loop
    assert same(acc.matmul(a, b, acc.NUMPY_FP16), f16_matmul(a, b))
    monkeypatch.setattr(acc, "_sger", None)  # no BLAS rank-1 update at all
    assert same(acc.matmul(a[1], b, acc.NUMPY_FP16), f16_matmul(a[1], b))


def test_sequential_dot_and_sum_are_numpy() -> None:
    rng = np.random.default_rng(4)
    x, y = rng.standard_normal((5, 500)) * 100, rng.standard_normal(500)
    x16, y16 = x.astype(np.float16), y.astype(np.float16)
    want = np.array([np.dot(r, y16) for r in x16], dtype=np.float64)  # float32 accumulation
    assert same(acc.dot(x, y, acc.NUMPY_FP16), want)
    want_sum = np.cumsum(x16.astype(np.float32), axis=0)[-1].astype(np.float16)
    assert same(acc.sum(x, acc.NUMPY_FP16, axis=0), want_sum.astype(np.float64))


def test_binary16_rounding_is_numpy_cast() -> None:
    """Inputs and results are rounded to binary16 as numpy's casts do: every
    binary16 number, every midpoint, and their float64 neighbours; results
    that are float32 sums landing on or next to a midpoint."""
    v = np.abs(np.arange(2**16, dtype=np.uint16).view(np.float16).astype(np.float64))
    v = np.unique(v[np.isfinite(v)])
    base = np.concatenate([v, (v[:-1] + v[1:]) / 2, [65520.0, 1e5, np.inf, np.nan]])
    x = np.concatenate([base, np.nextafter(base, np.inf), np.nextafter(base, -np.inf)])
    x = np.concatenate([x, -x])
    with np.errstate(all="ignore"):
        want = x.astype(np.float16).astype(np.float64)
    for model in (acc.NUMPY_FP16, AccumulationModel(B16, B64), acc.FP16ACC):
        assert same(acc.sum(x[:, None], model), want)
    v = v[(v >= 2.0**-13) & (v < 65504.0)]
    half_ulp = np.ldexp(1.0, np.frexp(v)[1] - 12)
    for t in (0.0, 2.0**-24, -(2.0**-24), 0.25, -0.25):
        terms = np.stack([v, half_ulp, np.full_like(v, t)], axis=-1)
        with np.errstate(all="ignore"):
            f32 = np.cumsum(terms.astype(np.float16).astype(np.float32), axis=-1)[:, -1]
            want = f32.astype(np.float16).astype(np.float64)
        assert same(acc.sum(terms, acc.NUMPY_FP16), want)


@pytest.mark.parametrize("scale", [1.0, 100.0, 1e-5])
def test_fp16_accumulation_is_numpy_cumsum(scale: float) -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((3, 2000)) * scale
    x[0, :] = 1.0
    x[0, 0] = 2048.0  # 2048 + 1 rounds back to 2048 in binary16
    want = np.cumsum(x.astype(np.float16), axis=-1)[:, -1].astype(np.float64)
    assert same(acc.sum(x, acc.FP16ACC), want)
    assert acc.sum(x, acc.FP16ACC)[0] == 2048.0
    assert same(acc.sum(x.T, acc.FP16ACC, axis=0), want)
    y = rng.standard_normal(2000)
    with np.errstate(all="ignore"):
        prods = x.astype(np.float16) * y.astype(np.float16)  # rounded once to binary16
        want_dot = np.cumsum(prods, axis=-1)[:, -1].astype(np.float64)
    assert same(acc.dot(x, y, acc.FP16ACC), want_dot)


def _products(a: np.ndarray, b: np.ndarray, dtype: type) -> np.ndarray:
    """a[i,k] * b[k,j] of the binary16-rounded operands, as (m, k, n) in dtype."""
    a16, b16 = a.astype(np.float16).astype(dtype), b.astype(np.float16).astype(dtype)
    with np.errstate(all="ignore"):
        return a16[:, :, None] * b16[None, :, :]


@pytest.mark.parametrize("kind", ["normal", "big-then-small"])
def test_blocked_and_pairwise_large(kind: str) -> None:
    """The fast kernels (BLAS rank-1 updates, threads) against float32 numpy
    arithmetic: cumsum is sequential by definition; for k a power of two the
    pairwise tree is recursive halving."""
    rng = np.random.default_rng(10)
    a, b = _matrices(rng, kind, 70, 128, 80)
    p = _products(a, b, np.float32)  # exact: binary16 products fit in binary32
    with np.errstate(all="ignore"):
        blocks = np.cumsum(p.reshape(70, 8, 16, 80), axis=2)[:, :, -1]
        want = np.cumsum(blocks, axis=1)[:, -1].astype(np.float16).astype(np.float64)
    assert same(acc.matmul(a, b, AccumulationModel(B16, B32, "blocked", block=16)), want)

    def halve(t: np.ndarray) -> np.ndarray:
        h = t.shape[1] // 2
        return t[:, 0] if t.shape[1] == 1 else halve(t[:, :h]) + halve(t[:, h:])

    with np.errstate(all="ignore"):
        want = halve(p).astype(np.float16).astype(np.float64)
    assert same(acc.matmul(a, b, AccumulationModel(B16, B32, "pairwise")), want)


def test_fp16_accumulation_matmul_is_numpy_float16_cumsum() -> None:
    """Large enough for the threaded tile loop of the generic arithmetic."""
    rng = np.random.default_rng(11)
    a, b = rng.standard_normal((64, 256)) * 4, rng.standard_normal((256, 256))
    p = _products(a, b, np.float16)  # each product rounded once to binary16
    with np.errstate(all="ignore"):
        want = np.cumsum(p, axis=1)[:, -1].astype(np.float64)
    assert same(acc.matmul(a, b, acc.FP16ACC), want)


# -- every order against a rational reference loop ---------------------------------------
def _r(v: Fraction | float, fmt: Format) -> Fraction:
    return Fraction(fperr.round_scalar(Fraction(v), fmt))


def _ref_sum(terms: list[Fraction], model: AccumulationModel, order: str) -> Fraction:
    """The model's summation, one exactly rounded step at a time."""
    fmt = model.accumulate
    if order == "pairwise":
        if not terms:
            return Fraction(0)
        while len(terms) > 1:
            nxt = [_r(terms[i] + terms[i + 1], fmt) for i in range(0, len(terms) - 1, 2)]
            terms = nxt + terms[len(terms) - len(terms) % 2 :]
        return terms[0]
    if order == "blocked":
        parts = [terms[i : i + model.block] for i in range(0, len(terms), model.block)]
        return _ref_sum([_ref_sum(p, model, "sequential") for p in parts], model, "sequential")
    s = Fraction(0)
    for t in terms:
        s = _r(s + t, fmt)
    return s


def _ref_dot(x: np.ndarray, y: np.ndarray, model: AccumulationModel, order: str) -> float:
    st, ac = model.storage, model.accumulate
    terms = [_r(_r(a, st) * _r(b, st), ac) for a, b in zip(x.tolist(), y.tolist(), strict=True)]
    return fperr.round_scalar(_ref_sum(terms, model, order), st)


MODELS = [
    AccumulationModel(B16, B32),
    AccumulationModel(B16, B16),
    AccumulationModel(B16, P8),
    AccumulationModel(BF16, B32),
    AccumulationModel(TF32, BF16),
    AccumulationModel(E4M3, B16),
    AccumulationModel(B32, B32),
    AccumulationModel(B16, B64),
    AccumulationModel(P8, TF32),
]


@pytest.mark.parametrize("order", ["sequential", "pairwise", "blocked"])
@pytest.mark.parametrize("model", MODELS, ids=repr)
def test_orders_match_rational_reference(model: AccumulationModel, order: str) -> None:
    rng = np.random.default_rng(6)
    m = AccumulationModel(model.storage, model.accumulate, order, block=5)  # type: ignore[arg-type]
    k = 23
    scale = min(model.storage.max, model.accumulate.max) ** 0.5 / (4 * k)  # no overflow
    a = rng.standard_normal((3, k)) * np.exp(rng.uniform(-3, 0, (3, k))) * scale
    b = rng.standard_normal((k, 4)) * scale
    want = np.array([[_ref_dot(a[i], b[:, j], m, order) for j in range(4)] for i in range(3)])
    assert np.array_equal(acc.matmul(a, b, m), want)
    assert np.array_equal(acc.dot(a, b[:, 0], m), want[:, 0])
    for n in (0, 1, 2, 3, 7, 16):  # odd levels, short and empty sums
        x = a[0, :n]
        ones = np.ones(n)
        ref_sum = fperr.round_scalar(
            _ref_sum([_r(_r(v, m.storage), m.accumulate) for v in x], m, order), m.storage
        )
        assert acc.sum(x, m) == ref_sum
        assert acc.dot(x, ones, m) == ref_sum
        assert acc.matmul(x[None, :], ones[:, None], m)[0, 0] == ref_sum


def test_blas_falls_back_to_sequential_when_products_are_inexact() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((3, 40)), rng.standard_normal((40, 2))
    tiny_bf16 = AccumulationModel(BF16, B32, "blas")
    a_tiny = a * 2.0**-70  # bf16 products below binary32's normal range: not exact
    for model, x in ((acc.FP32, a), (tiny_bf16, a_tiny)):
        want = np.array(
            [[_ref_dot(x[i], b[:, j], model, "sequential") for j in range(2)] for i in range(3)]
        )
        assert np.array_equal(acc.matmul(x, b, model), want)


# -- Higham's bound against exact sums -----------------------------------------------------
@pytest.mark.parametrize("order", ["sequential", "pairwise", "blocked", "blas"])
@pytest.mark.parametrize("name", ["numpy_fp16", "fp16acc", "bf16", "p8"])
def test_error_bound(name: str, order: str) -> None:
    """|fl(sum) - sum| <= gamma_{n-1}(u_acc) sum|x_i|, plus the final rounding
    to storage (Higham 2002, eq. 4.4); gamma_n for dot (products rounded too)."""
    base = AccumulationModel(B16, P8) if name == "p8" else acc.get_accumulation(name)
    model = AccumulationModel(base.storage, base.accumulate, order, block=16)  # type: ignore[arg-type]
    rng = np.random.default_rng(8)
    u_acc, u_st = model.accumulate.u, model.storage.u
    checked = inexact = 0
    for n in (2, 10, 100, 700):
        for trial in range(3):
            x = fperr.round(rng.standard_normal(n) * np.exp(rng.uniform(-2, 2, n)), model.storage)
            if trial == 2:
                x = fperr.round(x - np.mean(x), model.storage)  # cancellation
            y = fperr.round(rng.uniform(-2, 2, n), model.storage)
            exact_sum = sum((Fraction(v) for v in x.tolist()), Fraction(0))
            abs_sum = sum((Fraction(abs(v)) for v in x.tolist()), Fraction(0))
            got = float(acc.sum(x, model))
            if math.isinf(model.accumulate.gamma(n)):
                continue  # n u >= 1: no bound
            g = Fraction(model.accumulate.gamma(n - 1))
            bound = g * abs_sum * (1 + Fraction(u_st)) + Fraction(u_st) * abs(exact_sum)
            assert abs(Fraction(got) - exact_sum) <= bound
            checked += 1
            inexact += Fraction(got) != exact_sum
            prods = [Fraction(p) * Fraction(q) for p, q in zip(x.tolist(), y.tolist(), strict=True)]
            exact_dot = sum(prods, Fraction(0))
            g = Fraction(model.accumulate.gamma(n))
            bound = g * sum(map(abs, prods), Fraction(0)) * (1 + Fraction(u_st))
            bound += Fraction(u_st) * abs(exact_dot)
            assert abs(Fraction(float(acc.dot(x, y, model))) - exact_dot) <= bound
    # Every length with n u_acc < 1 was checked (3 trials each), and rounding
    # errors did occur, so the bound was tested, not met by exact sums.
    assert checked == 3 * sum(n * u_acc < 1 for n in (2, 10, 100, 700))
    assert inexact >= 3


# -- shapes and small cases ----------------------------------------------------------------
def test_shapes_and_edge_cases() -> None:
    rng = np.random.default_rng(9)
    a = rng.standard_normal((2, 3, 4, 5))
    b = rng.standard_normal((5, 6))
    for order in acc.ORDERS:
        m = AccumulationModel(B16, B32, order)  # type: ignore[arg-type]
        assert acc.matmul(a, b, m).shape == (2, 3, 4, 6)
        assert acc.matmul(np.zeros((3, 0)), np.zeros((0, 2)), m).tolist() == [[0.0] * 2] * 3
        assert acc.sum(np.zeros((4, 0)), m).tolist() == [0.0] * 4
        assert acc.dot(a, b[:, 0], m).shape == (2, 3, 4)
        assert acc.sum(a, m, axis=1).shape == (2, 4, 5)
    assert acc.matmul(a, b, "fp32").dtype == np.float64
    with pytest.raises(ValueError):
        acc.matmul(a, b.T)
    with pytest.raises(ValueError):
        acc.matmul(a[0, 0, 0], b)
    with pytest.raises(ValueError):
        acc.matmul(a, b[None])


def test_storage_rounding_and_overflow() -> None:
    big = np.full(4, 40000.0)
    assert acc.sum(big, acc.NUMPY_FP16)[()] == np.inf  # 160000 overflows binary16
    assert acc.sum(big, acc.FP32)[()] == 160000.0
    assert acc.sum([1.0 + 2.0**-20, 0.0], acc.NUMPY_FP16)[()] == 1.0  # input rounded first
    assert acc.sum([1.0, 2.0**-30], acc.FP16ACC)[()] == 1.0
