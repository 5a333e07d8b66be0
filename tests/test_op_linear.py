"""The ``linear`` operator (torch.nn.Linear on the last axis): its bound.

Oracles, independent of fperr's executors and rules: exact results in
fractions.Fraction; low-precision runs by the test emulator ``fp_emulator``
(MPFR rounding, many summation orders, with and without fused multiply-adds);
torch CPU float16/bfloat16 runs of ``torch.nn.functional.linear`` built here.
The reshape to (N T, in) is checked exactly: on a rank-1 input the bound is
the dense layer's, and on (T, D) it is at most that of the same map written as
Flatten -> Dense(kron(I_T, W)) (block diagonal: the same dot products, whose
dense bound counts T D terms per row where each has D).
"""

from __future__ import annotations

from fractions import Fraction

import fp_emulator as fe
import numpy as np
import pytest
from op_checks import check_run

from fperr.arith import Emulated
from fperr.bounds import bound_run
from fperr.layers import Activation, Dense, Flatten
from fperr.model import Model
from fperr.operators.linear import Linear

EMUL = {"binary16": fe.BINARY16, "bfloat16": fe.BFLOAT16, "binary32": fe.BINARY32}
ORDERS4 = ("sequential", "reversed", "pairwise", "descending")
TORCH = {"binary16": "float16", "bfloat16": "bfloat16"}


def _params(rng, d_in=6, d_out=5):
    return rng.normal(size=(d_out, d_in)) / 3, rng.normal(size=d_out) / 4


def exact_linear(W, b, X) -> np.ndarray:
    """x W^T + b per token in exact rationals: (N, ..., in) -> object (N, ..., out)."""
    Wf = [[Fraction(v) for v in row] for row in W]
    rows = X.reshape(-1, X.shape[-1])
    out = [[sum((w * Fraction(v) for w, v in zip(wr, row, strict=True)), Fraction(0))
            + (0 if b is None else Fraction(b[i])) for i, wr in enumerate(Wf)]
           for row in rows]  # fmt: skip
    return np.array(out, dtype=object).reshape(*X.shape[:-1], W.shape[0])


def emulate_linear(W, b, X, storage, acc, order, fused=False) -> np.ndarray:
    """A kernel's run: operands stored, dot products in ``acc`` in ``order``, the sum
    stored, the bias added and stored (float: inf or NaN)."""
    s, a = EMUL[storage], EMUL[acc]
    ws = [[fe.rnd(Fraction(v), s) for v in row] for row in W]
    bs = None if b is None else [fe.rnd(Fraction(v), s) for v in b]
    out = []
    for row in X.reshape(-1, X.shape[-1]):
        x = [fe.rnd(Fraction(v), s) for v in row]
        ys = [fe.rnd(fe.dot(x, w, a, order, fused), s) for w in ws]
        out.append(ys if bs is None else [fe.add(y, bs[i], s) for i, y in enumerate(ys)])
    return np.array(out, dtype=object).reshape(*X.shape[:-1], W.shape[0])


def torch_linear(W, b, X, fmt) -> np.ndarray:
    torch = pytest.importorskip("torch")
    dt = getattr(torch, TORCH[fmt])
    t = lambda a: torch.tensor(a, dtype=torch.float64).to(dt)  # noqa: E731 - one rounding
    y = torch.nn.functional.linear(t(X), t(W), None if b is None else t(b))
    return y.double().numpy()


def _model(W, b, shape):
    return Model("lin", shape, (Linear(W, b),))


# -- the reshape is exact: the dense layer's bound -----------------------------------------
@pytest.mark.parametrize("fmt", ["binary16", "bfloat16"])
@pytest.mark.parametrize("engine", ["zonotope", "backward"])
@pytest.mark.parametrize("method", ["deterministic", "probabilistic"])
def test_rank1_bound_equals_dense(fmt, engine, method):
    rng = np.random.default_rng(0)
    W, b = _params(rng)
    head = rng.normal(size=(3, 5))
    X = rng.normal(size=(16, 6))
    arith = Emulated.from_names(fmt, "binary32")
    tail = (Activation("tanh"), Dense(head))
    a = bound_run(Model("a", (6,), (Linear(W, b), *tail)), X, arith, engine=engine, method=method)
    d = bound_run(Model("d", (6,), (Dense(W, b), *tail)), X, arith, engine=engine, method=method)
    assert np.array_equal(a.output, d.output)
    np.testing.assert_allclose(a.radius, d.radius, rtol=1e-12, atol=0)


@pytest.mark.parametrize("fmt", ["binary16", "bfloat16"])
@pytest.mark.parametrize("engine", ["zonotope", "backward"])
def test_tokens_bound_at_most_block_diagonal_dense(fmt, engine):
    rng = np.random.default_rng(1)
    T, D = 4, 6
    W, b = _params(rng, D)
    head = rng.normal(size=(3, T * 5))
    X = rng.normal(size=(12, T, D))
    arith = Emulated.from_names(fmt, "binary32")
    lin = Model("a", (T, D), (Linear(W, b), Flatten(), Activation("tanh"), Dense(head)))
    big = Dense(np.kron(np.eye(T), W), np.tile(b, T))
    blk = Model("k", (T, D), (Flatten(), big, Activation("tanh"), Dense(head)))
    a, k = bound_run(lin, X, arith, engine=engine), bound_run(blk, X, arith, engine=engine)
    assert np.array_equal(a.output, k.output)  # the same dot products, zeros exact
    assert np.all(a.radius <= k.radius * (1 + 1e-12))
    assert np.all(a.radius >= 0.5 * k.radius)  # not vacuous: the same terms, fewer gammas


# -- soundness ----------------------------------------------------------------------------
def _adversarial(kind: str, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    W, b = _params(rng, 6, 4)
    X = rng.normal(size=(3, 2, 6))
    if kind == "cancel":  # x w terms of both signs, large, cancelling to ~0
        W = np.array([[1, -1, 1, -1, 1, -1], [3, 3, -3, -3, 1, -1.0]] * 2)
        X = 1000 + rng.normal(size=(3, 2, 6)) * 1e-2
    elif kind == "overflow":  # products near binary16's max: some sums may overflow
        W = np.abs(W) + 0.5
        X = 3.0e4 + rng.random(size=(3, 2, 6)) * 1e4
        X[0] *= 1e-2  # one input whose sums stay in range
    elif kind == "subnormal":  # products and sums below binary16's normal range
        X = X * 2.0**-20
        W = W * 2.0**-4
        b = b * 2.0**-24
    return W, b, X


@pytest.mark.parametrize("kind", ["random", "cancel", "overflow", "subnormal"])
@pytest.mark.parametrize("fmt", ["binary16", "bfloat16"])
def test_sound_against_emulated_orders_and_torch(kind, fmt):
    rng = np.random.default_rng({"random": 2, "cancel": 3, "overflow": 4, "subnormal": 5}[kind])
    W, b, X = _adversarial(kind, rng)
    model = _model(W, b, X.shape[1:])
    exact = exact_linear(W, b, X)
    seen = 0
    for acc in ("binary32", fmt):
        rad = bound_run(model, X, Emulated.from_names(fmt, acc)).radius.reshape(exact.shape)
        for order in fe.ORDERS:
            for fused in (False, True):
                err = check_run(emulate_linear(W, b, X, fmt, acc, order, fused), exact, rad)
                seen += int(np.nansum(err > 0))
        if acc == "binary32":  # torch's CPU kernels accumulate in float32
            check_run(torch_linear(W, b, X, fmt).astype(object), exact, rad)
    assert seen > 0  # the runs do err
    if kind == "overflow" and fmt == "binary16":
        rad = bound_run(model, X, Emulated.from_names(fmt, "binary32")).radius
        assert np.isinf(rad[1:]).all() and np.isfinite(rad[0]).all()


# -- tightness ----------------------------------------------------------------------------
@pytest.mark.parametrize("fmt, ceiling", [("binary16", 3.0), ("bfloat16", 3.0)])
def test_tightness(fmt, ceiling):
    """Median over 200 random inputs of max bound / max observed error, the observed
    error the worst of 4 summation orders (binary32 accumulation)."""
    rng = np.random.default_rng(6)
    W, b = _params(rng, 6, 5)
    X = rng.normal(size=(200, 4, 6))
    exact = exact_linear(W, b, X)
    rad = bound_run(_model(W, b, (4, 6)), X, Emulated.from_names(fmt, "binary32")).radius
    worst = np.zeros(len(X))
    for order in ORDERS4:
        err = check_run(emulate_linear(W, b, X, fmt, "binary32", order), exact,
                        rad.reshape(exact.shape))  # fmt: skip
        worst = np.maximum(worst, err.reshape(len(X), -1).max(axis=1))
    ratio = np.median(rad.max(axis=1)[worst > 0] / worst[worst > 0])
    print(f"linear {fmt}: median bound/observed {ratio:.3g} over {int((worst > 0).sum())} inputs")
    assert 1 <= ratio <= ceiling
