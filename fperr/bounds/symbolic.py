"""The bound formulas as sympy expressions, shared with the a-priori engine.

The a-priori engine (:mod:`fperr.bounds.apriori`) evaluates exactly these
expressions (through :func:`sympy.lambdify`), so the formulas a paper prints
with :func:`latex` are the code's formulas, not a transcription of them.

Symbols: ``u_s`` storage unit roundoff, ``u_a`` accumulator unit roundoff,
``n`` dot-product length, ``lambda`` the probabilistic confidence parameter,
``S_R = (|W| r)_i`` the incoming error pushed through |W|, ``S_m = (|W| m)_i``
with m a magnitude bound of the inputs, ``Z`` a magnitude bound of the output,
``D_W = (|W_hat - W| m)_i`` and ``D_b = |b_hat - b|_i`` the parameter
rounding, ``L`` a Lipschitz bound of an activation and ``F`` a magnitude bound
of its output; ``c`` a bound on the number of nonzero products of a dot
product and ``eta`` the absolute error per product below the accumulator's
normal range (0 where no product can underflow inexactly; plus
``smallest_normal`` per addition where the accumulator flushes to zero).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import Any

import sympy as sp

from ..errors import FperrInputError

u_s, u_a, n, lam = sp.symbols("u_s u_a n lambda", positive=True)
S_R, S_m, Z, D_W, D_b, L, F, r = sp.symbols("S_R S_m Z D_W D_b L F r", nonnegative=True)
c, eta = sp.symbols("c eta", nonnegative=True)


def gamma(k: sp.Expr, u: sp.Expr) -> sp.Expr:
    """Higham's gamma_k = k u / (1 - k u) (Higham 2002, eq. 3.8)."""
    return k * u / (1 - k * u)


def dot_product_error(probabilistic: bool = False) -> sp.Expr:
    """|fl(w.x) - w.x| <= gamma_n(u_a) |w|.|x| + c eta (1 + gamma_n(u_a))
    (Higham 2002, Lemma 3.1, eq. 3.11, with the underflow model of sec. 2.2:
    each of the c nonzero products may also err by an absolute eta, 0 where
    products are exact in the accumulator; see :mod:`fperr.bounds.exponent_range`);
    probabilistic: lambda sqrt(n) u_a |w|.|x| (Higham & Mary 2019, Thm 2.4)
    for the relative part."""
    coeff = lam * sp.sqrt(n) * u_a if probabilistic else gamma(n, u_a)
    return coeff * S_m + c * eta * (1 + gamma(n, u_a))


def dense_radius(probabilistic: bool = False) -> sp.Expr:
    """A-priori radius of one output of y = fl(fl(W x) + b): propagated error,
    accumulation error, two storage roundings (u_s per rounding of a value of
    magnitude <= Z) and parameter rounding."""
    return S_R + dot_product_error(probabilistic) + 2 * u_s * Z + D_W + D_b


def activation_radius() -> sp.Expr:
    """A-priori radius of y = fl(f(z)): Lipschitz propagation, one storage
    rounding of a value of magnitude <= F, and the function's own error
    (1 ulp of the accumulator, 2 u_a F)."""
    return L * r + u_s * F + 2 * u_a * F


FORMULAS: dict[str, Callable[[], sp.Expr]] = {
    "dot_product": dot_product_error,
    "dot_product_probabilistic": lambda: dot_product_error(True),
    "dense": dense_radius,
    "dense_probabilistic": lambda: dense_radius(True),
    "activation": activation_radius,
}


def latex(name: str) -> str:
    """LaTeX of a named formula, e.g. ``latex("dense")``."""
    try:
        return sp.latex(FORMULAS[name]())
    except KeyError:
        raise FperrInputError(f"unknown formula {name!r}; have {', '.join(FORMULAS)}") from None


@cache
def numeric(name: str) -> Callable[..., Any]:
    """The formula as a numpy function of its symbols (sorted by name)."""
    expr = FORMULAS[name]()
    args = sorted(expr.free_symbols, key=lambda s: s.name)
    fn = sp.lambdify(args, expr, "numpy")
    fn.arg_names = [a.name for a in args]
    return fn


def evaluate(name: str, **values: Any) -> Any:
    """Evaluate a named formula with keyword values for its symbols."""
    fn = numeric(name)
    missing = [a for a in fn.arg_names if a not in values]  # type: ignore[attr-defined]
    if missing:
        raise FperrInputError(f"formula {name!r} needs {', '.join(missing)}")
    return fn(*(values[a] for a in fn.arg_names))  # type: ignore[attr-defined]
