"""Checks the operator tests share: a run against an exact oracle, and a model's bound
against fperr's emulated runs in every summation order."""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from fperr.arith import Emulated
from fperr.bounds import bound_run

ORDERS = ("sequential", "pairwise", "blocked", "blas")


def check_run(got, exact, radius) -> np.ndarray:
    """|got - exact| <= radius everywhere, in exact rationals (radius inf where the run is
    inf/NaN); returns the observed errors as floats shaped like ``radius`` (NaN where the
    run overflowed)."""
    err = np.full(radius.shape, np.nan)
    for k, (y, e, r) in enumerate(zip(got.reshape(-1), exact.reshape(-1), radius.reshape(-1),
                                      strict=True)):  # fmt: skip
        if isinstance(y, float) and not np.isfinite(y):
            assert r == np.inf, (k, y, r)
            continue
        d = abs(Fraction(y) - e)
        assert d <= Fraction(r) if np.isfinite(r) else True, (k, float(d), r)
        err.reshape(-1)[k] = float(d)
    return err


def worst_over_orders(model, x: np.ndarray, fmt: str, exact: np.ndarray, rb: np.ndarray,
                      label: str) -> float:  # fmt: skip
    """Assert every emulated run (each order, binary32 and ``fmt`` accumulators) lies
    within its bound (``rb`` for binary32, the same-format bound otherwise); return the
    largest error / bound over the finite bounds (a same-format sum may overflow: inf)."""
    worst = 0.0
    for order in ORDERS:
        for acc in ("binary32", fmt):
            a = Emulated.from_names(fmt, acc, order=order)
            r = rb if acc == "binary32" else bound_run(model, x, a).radius
            err = np.abs(model.forward(x, a).reshape(len(x), -1) - exact)
            assert np.all(err <= r), f"{label} {fmt} {order} {acc}: {(err / r).max()}"
            fin = np.isfinite(r)
            worst = max(worst, float((err[fin] / np.maximum(r[fin], 1e-300)).max(initial=0.0)))
    return worst


# -- reductions over axes (sum, mean) ------------------------------------------------------
TORCH_DTYPES = {"binary16": "float16", "bfloat16": "bfloat16"}
REDUCTION_CASES = [((8, 5), (0,), False), ((3, 4, 5), (-2, -1), True), ((3, 4, 5), (0, 2), False)]


def reduction_groups(X, axes) -> tuple[np.ndarray, tuple[int, ...]]:
    """X (N, *shape) -> (terms (M, n), output shape without the reduced axes)."""
    ax = tuple(a % (X.ndim - 1) + 1 for a in axes)
    keep = [i for i in range(X.ndim) if i not in ax]
    moved = np.transpose(X, (*keep, *ax))
    out = tuple(X.shape[i] for i in keep)
    return moved.reshape(int(np.prod(out)), -1), out


def torch_reduce(X, axes, keepdims, fmt, how: str) -> np.ndarray:
    """torch CPU's ``how`` ("sum", "mean") over per-input ``axes`` in ``fmt``, as float64
    without the kept axes."""
    import pytest

    torch = pytest.importorskip("torch")
    t = torch.tensor(X, dtype=torch.float64).to(getattr(torch, TORCH_DTYPES[fmt]))
    dims = tuple(a % (X.ndim - 1) + 1 for a in axes)
    y = getattr(t, how)(dim=dims, keepdim=keepdims).double().numpy()
    return np.squeeze(y, axis=dims) if keepdims else y


# -- torch modules -----------------------------------------------------------------------------
def torch_run_unfused(module, x: np.ndarray, dtype) -> np.ndarray:
    """A copy of ``module`` run by torch on the CPU in ``dtype``, eval-mode attention's
    fused fast path off (as fperr's validation runs are), as float64."""
    import copy

    import torch

    m = copy.deepcopy(module).to(dtype).eval()
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad():
            return m(torch.from_numpy(x).to(dtype)).double().numpy()
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
