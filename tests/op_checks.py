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
