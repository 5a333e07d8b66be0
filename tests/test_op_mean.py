"""The ``mean`` operator (torch's x.mean(dim=...)): its forward and its bound.

Oracles, independent of fperr's executors and rules: exact means in
fractions.Fraction; low-precision runs by the test emulator ``fp_emulator``
(MPFR rounding, many summation orders) of two kernels: the sum divided by n,
and the sum times 1/n rounded to the accumulator (torch's reduction); torch
CPU float16/bfloat16 runs of ``tensor.mean`` built here.
"""

from __future__ import annotations

from fractions import Fraction

import fp_emulator as fe
import numpy as np
import pytest
from op_checks import REDUCTION_CASES, check_run, reduction_groups, torch_reduce

from fperr.arith import Emulated
from fperr.bounds import bound_run
from fperr.errors import SpecError
from fperr.model import Model
from fperr.operators.mean import Mean

EMUL = {"binary16": fe.BINARY16, "bfloat16": fe.BFLOAT16, "binary32": fe.BINARY32}
ORDERS4 = ("sequential", "reversed", "pairwise", "descending")
CASES = REDUCTION_CASES


def exact_mean(X, axes) -> np.ndarray:
    terms, out = reduction_groups(X, axes)
    n = terms.shape[1]
    return np.array([sum(map(Fraction, row), Fraction(0)) / n for row in terms],
                    dtype=object).reshape(out)  # fmt: skip


def emulate_mean(X, axes, storage, acc, order, kernel="divide") -> np.ndarray:
    """Inputs stored, summed in ``acc`` in ``order``, divided by n (or multiplied
    by 1/n rounded to ``acc``) in ``acc``, stored (floats: inf or NaN)."""
    s, a = EMUL[storage], EMUL[acc]
    terms, out = reduction_groups(X, axes)
    n = terms.shape[1]
    ys = []
    for row in terms:
        t = fe.sum_in_order([fe.rnd(Fraction(v), s) for v in row], a, order)
        if isinstance(t, float):
            ys.append(t)
            continue
        q = fe.rnd(t / n, a) if kernel == "divide" else fe.mul(t, fe.rnd(Fraction(1, n), a), a)
        ys.append(fe.rnd(q, s) if not isinstance(q, float) else q)
    return np.array(ys, dtype=object).reshape(out)


def _radius(X, axes, keepdims, fmt, acc):
    model = Model("m", X.shape[1:], (Mean(axes, keepdims),))
    return bound_run(model, X, Emulated.from_names(fmt, acc)).radius


# -- forward and shapes -------------------------------------------------------------------
@pytest.mark.parametrize("shape, axes, keepdims", CASES)
@pytest.mark.parametrize("acc", ["binary32", "binary16"])
def test_forward_is_the_emulated_kernel(shape, axes, keepdims, acc):
    X = np.random.default_rng(0).normal(size=(4, *shape)) * 3
    op = Mean(axes, keepdims)
    for order in ("sequential", "pairwise"):
        arith = Emulated.from_names("binary16", acc, order=order)
        got = op.forward(np.float16(X).astype(np.float64), arith)
        want = emulate_mean(X, axes, "binary16", acc, order).astype(np.float64)
        assert np.array_equal(got.reshape(want.shape), want), order


def test_bad_axes_are_refused():
    with pytest.raises(SpecError, match="twice"):
        Model("m", (3, 4), (Mean((1, -1)),))
    with pytest.raises(SpecError, match="out of range"):
        Model("m", (3, 4), (Mean((2,)),))


# -- soundness ----------------------------------------------------------------------------
def _inputs(kind, rng, shape):
    X = rng.normal(size=(6, *shape))
    if kind == "cancel":  # large terms of both signs: the mean is tiny against them
        X = np.where(rng.random(X.shape) < 0.5, -6.0e4, 6.0e4) + rng.normal(size=X.shape)
    elif kind == "overflow":  # near binary16's max: sums overflow a binary16 accumulator
        X = 6.0e4 + rng.random(X.shape) * 5e3
    elif kind == "subnormal":  # below binary16's normal range (2^-14)
        X = X * 2.0**-19
    return X


@pytest.mark.parametrize("kind", ["random", "cancel", "overflow", "subnormal"])
@pytest.mark.parametrize("fmt", ["binary16", "bfloat16"])
@pytest.mark.parametrize("shape, axes, keepdims", CASES)
def test_sound_against_emulated_orders_and_torch(kind, fmt, shape, axes, keepdims):
    X = _inputs(kind, np.random.default_rng(len(kind) + len(shape)), shape)
    exact = exact_mean(X, axes)
    seen = 0
    for acc in ("binary32", fmt):
        rad = _radius(X, axes, keepdims, fmt, acc)
        for order in fe.ORDERS:
            for kernel in ("divide", "scale"):
                err = check_run(emulate_mean(X, axes, fmt, acc, order, kernel), exact, rad)
                seen += int(np.nansum(err > 0))
        if acc == "binary32":  # torch's CPU reductions accumulate in float32
            check_run(torch_reduce(X, axes, keepdims, fmt, "mean").astype(object), exact, rad)
            assert np.isfinite(rad).all()  # a binary32 sum of these never overflows
        elif kind == "overflow" and fmt == "binary16":
            assert np.isinf(rad).all()  # some order's binary16 sum overflows
    assert seen > 0  # the runs do err


# -- tightness ----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, ceiling", [("binary16", 3.0), ("bfloat16", 3.0)])
def test_tightness(fmt, ceiling):
    """Median over 200 random inputs of max bound / max observed error, the observed
    error the worst of 4 summation orders (binary32 accumulation, sum / n)."""
    X = np.random.default_rng(9).normal(size=(200, 8, 5))
    exact = exact_mean(X, (0,))
    rad = _radius(X, (0,), False, fmt, "binary32")
    worst = np.zeros(len(X))
    for order in ORDERS4:
        err = check_run(emulate_mean(X, (0,), fmt, "binary32", order), exact, rad)
        worst = np.maximum(worst, err.reshape(len(X), -1).max(axis=1))
    ratio = np.median(rad.max(axis=1)[worst > 0] / worst[worst > 0])
    print(f"mean {fmt}: median bound/observed {ratio:.3g} over {int((worst > 0).sum())} inputs")
    assert 1 <= ratio <= ceiling
