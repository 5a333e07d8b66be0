"""The max-pooling rule (:func:`fperr.bounds.rules.maxpool_local`) against brute force.

For a window of computed values a (this run) with radii r, any exact values a*
lie within r of a and any other run's values a' within r of a*.  The rule
claims, per window, |(max a' - max a*) - keep (a'_w - a*_w)| <= box, w the
winner of a.  The oracle enumerates every vertex of those boxes (the claim is
about differences of maxima of the coordinates, piecewise linear, so the
extremes over a box lie at vertices of the pieces; random interior points are
added), with values on a grid of 1/8 so that every difference is exact in float64.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from fperr.arith import Exact
from fperr.bounds.rules import maxpool_local
from fperr.layers import Pool2d


def _windows(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """n windows of 4 (one 2x2 pool on a 2x2 image each): near ties and wide gaps."""
    base = rng.integers(-8, 9, (n, 1)) / 2
    spread = rng.choice([0.0, 0.125, 0.5, 2.0], (n, 1))
    a = base + np.round(rng.uniform(-1, 1, (n, 4)) * spread * 8) / 8
    r = rng.choice([0.0, 0.125, 0.25, 0.5, 1.0], (n, 4))
    return a, r


def _claims(a: np.ndarray, r: np.ndarray, s: np.ndarray | None = None):
    layer = Pool2d("max", (2, 2), (2, 2))
    x = a.reshape(-1, 1, 2, 2)
    spread = None if s is None else s.reshape(x.shape)
    y, src, keep, box = maxpool_local(layer, x, r.reshape(x.shape), spread)
    return y.reshape(-1), src.reshape(-1), keep.reshape(-1), box.reshape(-1)


def _worst(a: np.ndarray, r: np.ndarray, w: int, keep: bool, rng: np.random.Generator,
           s: np.ndarray | None = None) -> float:  # fmt: skip
    """max over vertex (and random) choices of |max a' - max a* - keep (a'_w - a*_w)|,
    a* within s (default r) of a, a' within r of a*."""
    s = r if s is None else s
    worst = 0.0
    signs = list(itertools.product((-1, 0, 1), repeat=4))
    for s_star in signs:
        star = a + np.array(s_star) * s
        for s_run in signs:
            run = star + np.array(s_run) * r
            d = run.max() - star.max() - (run[w] - star[w] if keep else 0.0)
            worst = max(worst, abs(d))
    for _ in range(50):
        star = a + rng.uniform(-1, 1, 4) * s
        run = star + rng.uniform(-1, 1, 4) * r
        worst = max(worst, abs(run.max() - star.max() - (run[w] - star[w] if keep else 0.0)))
    return worst


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("spread", [False, True])
def test_maxpool_box_covers_every_run(seed, spread):
    """Without a spread this run is any run (within r of the exact values); with
    one its own error is at most s <= r."""
    rng = np.random.default_rng(seed)
    a, r = _windows(rng, 60)
    s = np.minimum(r, rng.choice([0, 1, 2, 4], r.shape) / 16) if spread else None
    y, src, keep, box = _claims(a, r, s)
    assert np.array_equal(y, a.max(axis=1))
    assert np.array_equal(src, np.argmax(a, axis=1))
    for i in range(a.shape[0]):
        si = None if s is None else s[i]
        assert _worst(a[i], r[i], int(src[i]), bool(keep[i]), rng, si) <= box[i], (a[i], r[i])


def test_a_spread_narrows_the_box():
    rng = np.random.default_rng(11)
    a, r = _windows(rng, 400)
    _, _, keep, box = _claims(a, r)
    _, _, keep_s, box_s = _claims(a, r, r / 4)
    assert np.all(box_s <= box) and np.all(keep_s >= keep)
    assert np.sum(box_s) < np.sum(box)


def test_maxpool_rule_is_exact_for_a_sure_winner_and_never_wider_than_the_old_box():
    rng = np.random.default_rng(7)
    a, r = _windows(rng, 400)
    _, src, keep, box = _claims(a, r)
    rows = np.arange(a.shape[0])
    gaps = a[rows, src][:, None] - a
    rw = r[rows, src][:, None]
    sure = np.all((gaps > 2 * (r + rw)) | (np.arange(4) == src[:, None]), axis=1)
    assert np.all(keep[sure]) and np.all(box[sure] == 0)
    assert np.all(box <= r.max(axis=1))  # the old rule's box, with no path, is the fallback
    # the path through the winner is kept where a rival may win but the box shrinks
    partial = keep & ~sure
    assert partial.any() and np.all(box[partial] < r.max(axis=1)[partial])


def test_maxpool_with_padding_and_infinite_radius():
    """Padding slots (-inf) never win or widen the box; an infinite radius falls back."""
    layer = Pool2d("max", (2, 2), (2, 2), padding=(1, 1))
    x = np.array([[[[1.0, 0.0], [0.0, 3.0]]]])
    r = np.array([[[[0.25, 0.0], [0.0, 0.25]]]])
    y, src, keep, box = maxpool_local(layer, x, r)
    assert np.array_equal(y.reshape(-1), [1.0, 0.0, 0.0, 3.0])
    assert np.all(keep) and np.all(box == 0)
    # a lone value with an infinite radius: its path carries the radius, no box
    r_inf = np.array([[[[np.inf, 0.0], [0.0, 0.25]]]])
    _, _, keep, box = maxpool_local(layer, x, r_inf)
    assert keep.reshape(-1)[0] and box.reshape(-1)[0] == 0
    # a rival with an infinite radius: no path, an infinite box
    whole = Pool2d("max", (2, 2), (2, 2))
    y, _, keep, box = maxpool_local(whole, x, r_inf)
    assert y.reshape(-1)[0] == 3.0 and not keep.reshape(-1)[0] and np.isinf(box.reshape(-1)[0])


@pytest.mark.parametrize(("kernel", "stride", "padding"), [
    ((2, 2), (2, 2), (0, 0)), ((3, 3), (2, 2), (1, 1)), ((2, 3), (1, 2), (1, 0)),
    ((3, 3), (1, 1), (1, 1)), ((1, 1), (2, 2), (0, 0)),
])  # fmt: skip
def test_max_pooling_forward_is_each_windows_maximum(kernel, stride, padding):
    """Oracle: a python loop over every window's cells (padding never wins; a NaN in
    a window makes its maximum NaN; inf stays inf)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 2, 7, 6))
    x[0, 0, 2, 2], x[1, 1, :3, :3] = np.nan, np.inf
    pool = Pool2d("max", kernel, stride, padding)
    got = pool.forward(x, Exact())
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    want = np.empty(got.shape)
    for n, c, i, j in np.ndindex(*got.shape):
        cells = [x[n, c, a, b] for a in range(i * sh - ph, i * sh - ph + kh)
                 for b in range(j * sw - pw, j * sw - pw + kw) if 0 <= a < 7 and 0 <= b < 6]
        want[n, c, i, j] = np.nan if np.isnan(cells).any() else max(cells)
    np.testing.assert_array_equal(got, want)
