"""Remainders of piecewise linear activations (ReLU, ReLU6, leaky ReLU) against brute force.

At a computed pre-activation z with radius r, the exact value a* lies within r
of z and any run's value a' within r of a*.  The rule
(:func:`fperr.bounds.rules.activation_local`) passes the incoming error on with
a slope d and claims |f(a') - f(a*) - d (a' - a*)| <= rem.  The oracle searches
a grid of (a*, a') pairs over those constraints (the remainder is piecewise
linear in a* and a', so its extremes lie where one of them sits at a kink or
at an end of its interval, all on the grid), with values on multiples of 1/16
so that the arithmetic is exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from fperr.arith import Emulated
from fperr.bounds.rules import (
    Context,
    activation_local,
    piece_remainder,
    piecewise_carry,
    piecewise_slopes,
)
from fperr.layers import Activation

FUNCS = {
    "relu": (Activation("relu"), lambda x: np.maximum(x, 0.0)),
    "relu6": (Activation("relu6"), lambda x: np.clip(x, 0.0, 6.0)),
    "leaky_relu": (Activation("leaky_relu", negative_slope=0.25),
                   lambda x: np.where(x > 0, x, 0.25 * x)),  # fmt: skip
}


def _grid(z: float, r: float, s: float | None = None) -> list[tuple[float, float]]:
    """(a*, a') pairs: a* within s (default r) of z, a' within r of a*, on a 1/16 grid."""
    step = 1 / 16
    s = r if s is None else s
    stars = np.arange(z - s, z + s + step / 2, step)
    return [(s, a) for s in stars for a in np.arange(s - r, s + r + step / 2, step)]


def _cases(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    z = rng.integers(-48, 112, n) / 16  # around both kinks of ReLU6
    r = rng.choice([0, 1, 2, 4, 8, 16], n) / 16
    return z, r


@pytest.mark.parametrize("name", sorted(FUNCS))
@pytest.mark.parametrize("spread", [False, True])
def test_remainder_covers_every_pair(name, spread):
    """Without a spread z is any run's value (within r of the exact one); with one
    this run's own error is at most s <= r."""
    layer, f = FUNCS[name]
    rng = np.random.default_rng(len(name))
    z, r = _cases(rng, 120)
    s = np.minimum(r, rng.choice([0, 1, 2, 4], r.shape) / 16) if spread else None
    ctx = Context(Emulated.from_names("binary32", "binary32"))
    _, d, rem, _ = activation_local(layer, z[None, :], r[None, :], ctx,
                                    None if s is None else s[None, :])  # fmt: skip
    d, rem = d[0], rem[0]
    for i in range(z.size):
        si = None if s is None else s[i]
        worst = max(abs(f(a) - f(st) - d[i] * (a - st)) for st, a in _grid(z[i], r[i], si))
        assert worst <= rem[i], (name, z[i], r[i], si, d[i], rem[i], worst)


@pytest.mark.parametrize("name", sorted(FUNCS))
def test_own_piece_never_wider_than_the_mean_value_form(name):
    """The rule keeps the smaller of the two remainders; on ReLU the own piece's
    is 2r - z for 0 < z < 2r, chosen where z > 1.5 r."""
    layer, _ = FUNCS[name]
    rng = np.random.default_rng(3)
    z, r = _cases(rng, 400)
    ctx = Context(Emulated.from_names("binary32", "binary32"))
    _, _, rem, _ = activation_local(layer, z[None, :], r[None, :], ctx)
    from fperr.bounds.rules import activation_pieces, piecewise_slopes

    dlo, dhi = piecewise_slopes(*activation_pieces(layer), z - 2 * r, z + 2 * r)
    assert np.all(rem[0] <= (dhi - dlo) / 2 * r)
    if name == "relu":
        d, own = piece_remainder((0.0,), (0.0, 1.0), z, r)
        inside = (z > 0) & (z < 2 * r)
        np.testing.assert_array_equal(own[inside], np.minimum(r, 2 * r - z)[inside])
        np.testing.assert_array_equal(d, (z > 0).astype(float))
        smaller = inside & (z > 1.5 * r)
        assert smaller.any() and np.all(rem[0][smaller] == (2 * r - z)[smaller])


def test_infinite_and_nan_ranges_fall_back():
    layer, _ = FUNCS["relu"]
    ctx = Context(Emulated.from_names("binary32", "binary32"))
    z = np.array([[1.0, np.nan, -2.0]])
    r = np.array([[np.inf, 0.5, np.inf]])
    _, _, rem, _ = activation_local(layer, z, r, ctx)
    assert np.isinf(rem[0, 0]) and np.isinf(rem[0, 2])
    assert rem[0, 1] == 0.25  # NaN: every slope (the mean value form), not a piece's


@pytest.mark.parametrize("kind", ["relu", "relu6", "leaky_relu"])
def test_units_inside_one_piece_skip_both_forms_with_the_same_result(kind):
    """piecewise_carry computes the two forms only where a kink is in reach; every
    unit gets what the two forms give when computed on all units (edge cases: at a
    kink, at the reach's end, r = 0, infinite and NaN values)."""
    kinks, slopes = {"relu": ((0.0,), (0.0, 1.0)), "relu6": ((0.0, 6.0), (0.0, 1.0, 0.0)),
                     "leaky_relu": ((0.0,), (0.125, 1.0))}[kind]  # fmt: skip
    rng = np.random.default_rng(3)
    z = np.round(rng.uniform(-4, 10, 3000) * 8) / 8
    r = np.round(rng.uniform(0, 2, 3000) * 8) / 8
    r[:300] = 0.0
    z[300:400] = 0.0
    far = 2 * r
    far[400:500] = np.abs(z[400:500])  # the range ends at the kink
    z[500], r[501], far[501], z[502] = np.nan, np.inf, np.inf, np.inf
    d, rem = piecewise_carry(kinks, slopes, z, r, far)
    with np.errstate(invalid="ignore"):
        dlo, dhi = piecewise_slopes(kinks, slopes, z - far, z + far)
        dc, rc = (dlo + dhi) / 2, (dhi - dlo) / 2 * r
        d_own, rem_own = piece_remainder(kinks, slopes, z, r, far)
    own = rem_own < rc
    np.testing.assert_array_equal(d, np.where(own, d_own, dc))
    np.testing.assert_array_equal(rem, np.where(own, rem_own, rc))
