"""Unstable ranges (``ranges="unstable"``): full ranges, except that at piecewise
linear activations and max pooling only the units whose range may change the
rule get a backward row (a unit whose range reaches a kink, the inputs of a
window whose winner is in doubt), with a margin (:data:`UNSTABLE_MARGIN`).

Oracles: exact function values on dyadic grids (a unit is stable exactly when
the function is affine over its range), every vertex of a window's box (its
winner is sure exactly when it is a maximum at every vertex), emulated runs in
every order and torch CPU runs (soundness), and full ranges themselves (with an
infinite margin every unit is selected and the bounds are full ranges' to the
last bit).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from test_anchors import LOW, REF, _observed, deep_cnn

import fperr.bounds.backward as B
from fperr.bounds import bound, bound_run
from fperr.bounds.rules import kink_reached, winner_in_doubt
from fperr.examples import digits
from fperr.examples import load as load_example
from fperr.layers import Activation, BatchNorm, Conv2d, Dense, Flatten, Pool2d, Residual
from fperr.model import Model

KINKS = {"relu": (0.0,), "leaky_relu": (0.0,), "relu6": (0.0, 6.0)}
FUNCTIONS = {"relu": lambda v: np.maximum(v, 0.0), "relu6": lambda v: np.clip(v, 0.0, 6.0),
             "leaky_relu": lambda v: np.where(v > 0, v, 0.125 * v)}  # fmt: skip


@pytest.mark.parametrize("kind", sorted(KINKS))
def test_a_unit_is_stable_exactly_where_the_function_is_affine_over_its_range(kind):
    """On a 1/8 grid every value below is exact: f is affine over [z - far, z + far]
    (checked at the ends, the centre and every kink inside) exactly where
    ``kink_reached`` leaves the unit out."""
    rng = np.random.default_rng(0)
    z = np.round(rng.uniform(-3, 9, 4000) * 8) / 8
    far = np.round(rng.uniform(0, 3, 4000) * 8) / 8
    z[:40], far[:40] = 0.0, 0.0  # at a kink with no reach: one point, stable
    f = FUNCTIONS[kind]
    flagged = kink_reached(KINKS[kind], z, far)
    for zi, ri, fl in zip(z, far, flagged, strict=True):
        pts = [zi - ri, zi, zi + ri] + [k for k in KINKS[kind] if zi - ri < k < zi + ri]
        pts = np.array(sorted(pts))
        vals = f(pts)
        slopes = {(vals[i + 1] - vals[i]) / (pts[i + 1] - pts[i])
                  for i in range(len(pts) - 1) if pts[i + 1] > pts[i]}  # fmt: skip
        assert (len(slopes) > 1) == fl, (zi, ri)
    assert kink_reached((0.0,), np.array([np.nan]), np.array([1.0]))[0]  # NaN: never stable


def _sure_windows(x: np.ndarray, reach: np.ndarray, layer: Pool2d) -> np.ndarray:
    """(N, C, H, W): inputs of a window some vertex of whose box the forward's
    winner does not maximise (python loops over windows and vertices)."""
    N, C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
    ho, wo = (H + 2 * ph - kh) // sh + 1, (W + 2 * pw - kw) // sw + 1
    doubt = np.zeros(x.shape, dtype=bool)
    for n, c, i, j in itertools.product(range(N), range(C), range(ho), range(wo)):
        rows = range(i * sh - ph, i * sh - ph + kh)
        cols = range(j * sw - pw, j * sw - pw + kw)
        cells = [(a, b) for a in rows for b in cols if 0 <= a < H and 0 <= b < W]
        vals = np.array([x[n, c, a, b] for a, b in cells])
        far = np.array([reach[n, c, a, b] for a, b in cells])
        w = int(np.argmax(vals))
        vertices = itertools.product(*zip(vals - far, vals + far, strict=True))
        lost = any(max(v) > v[w] for v in vertices)
        if lost:
            for a, b in cells:
                doubt[n, c, a, b] = True
    return doubt


@pytest.mark.parametrize(("kernel", "stride", "padding"), [(2, 2, 0), (3, 2, 1), (2, 1, 0)])
def test_a_window_is_in_doubt_exactly_where_a_vertex_of_its_box_beats_the_winner(
    kernel, stride, padding
):
    rng = np.random.default_rng(kernel + 10 * stride + padding)
    x = np.round(rng.uniform(-1, 1, (3, 2, 6, 6)) * 4) / 4  # ties on a 1/4 grid
    x[0, 0] = 0.0  # a constant channel: every window tied
    reach = np.round(rng.uniform(0, 0.25, x.shape) * 16) / 16
    reach[1] = 0.0  # no reach: every winner sure, ties included
    layer = Pool2d("max", (kernel, kernel), (stride, stride), (padding, padding))
    got = winner_in_doubt(layer, x, reach)
    np.testing.assert_array_equal(got, _sure_windows(x, reach, layer))
    assert got.any() and not got.all() and not got[1].any()


@pytest.mark.parametrize(("seed", "act", "method"), [
    (0, "relu", "deterministic"), (1, "relu6", "probabilistic"),
    (2, "leaky_relu", "deterministic"), (3, "tanh", "probabilistic"),
    (4, "relu", "probabilistic"),
])  # fmt: skip
def test_unstable_ranges_enclose_every_emulated_order(seed, act, method):
    model = deep_cnn(seed, act)
    rng = np.random.default_rng(200 + seed)
    X = np.vstack(
        [
            rng.uniform(0, 1, (6, 1, 12, 12)),
            np.zeros((1, 1, 12, 12)),
            np.round(rng.uniform(0, 4, (2, 1, 12, 12))) / 4,
        ]
    )  # ties: constant regions
    b = bound(model, X, LOW, REF, method=method, ranges="unstable", engine="backward")
    assert np.all(np.isfinite(b.bound)) and np.all(b.bound >= _observed(model, X))


def residual_cnn(seed: int) -> Model:
    """conv-BN-ReLU, then two residual blocks (conv-BN-ReLU-conv-BN, + x, ReLU) and a
    max pool: the shape of ResNet-20, whose branches sharpen through their own tapes."""
    rng = np.random.default_rng(seed)
    c = 4

    def conv_bn(cin: int) -> list:
        kernel = rng.standard_normal((c, cin, 3, 3)) / np.sqrt(9 * cin)
        return [Conv2d(kernel, None, padding=(1, 1)),
                BatchNorm(rng.standard_normal(c) * 0.1, rng.uniform(0.2, 1, c),
                          rng.uniform(0.5, 2, c), rng.standard_normal(c) * 0.1)]  # fmt: skip

    layers: list = [*conv_bn(1), Activation("relu")]
    for _ in range(2):
        branch = (*conv_bn(c), Activation("relu"), *conv_bn(c))
        layers += [Residual(branch), Activation("relu")]
    layers += [Pool2d("max", (2, 2), (2, 2)), Flatten(),
               Dense(rng.standard_normal((3, c * 25)) / np.sqrt(c * 25), None)]  # fmt: skip
    return Model("residual-cnn", (1, 10, 10), tuple(layers))


@pytest.mark.parametrize("method", ["deterministic", "probabilistic"])
def test_unstable_ranges_through_residual_branches(method):
    model = residual_cnn(5)
    rng = np.random.default_rng(6)
    X = np.vstack([rng.uniform(0, 1, (5, 1, 10, 10)), np.zeros((1, 1, 10, 10))])
    lean = bound(model, X, LOW, REF, method=method, ranges="unstable", engine="backward")
    full = bound(model, X, LOW, REF, method=method, ranges="full", engine="backward")
    assert np.all(np.isfinite(lean.bound)) and np.all(lean.bound >= _observed(model, X))
    assert np.all(lean.bound >= full.bound * (1 - 1e-9))


def test_unstable_ranges_hold_against_torch_cpu():
    pytest.importorskip("torch")
    from soundness.torch_reference import torch_run  # noqa: PLC0415

    for seed in (7, 8):
        model = deep_cnn(seed)
        X = np.random.default_rng(seed).uniform(0, 1, (8, 1, 12, 12))
        for method in ("deterministic", "probabilistic"):
            b = bound(model, X, LOW, REF, ranges="unstable", engine="backward", method=method)
            y16 = torch_run(model.layers, model.input_shape, X, "binary16")
            y32 = torch_run(model.layers, model.input_shape, X, "binary32")
            assert np.all(np.abs(y16 - y32) <= b.bound)


def _rows_pulled(monkeypatch) -> dict[str, int]:
    """Count the units sharpened (rows pulled back) by every sharpen_radius call."""
    seen = {"rows": 0}
    real = B.sharpen_radius

    def counting(tape, t, *args, **kw):
        before = tape.steps[t].sharp
        real(tape, t, *args, **kw)
        after = tape.steps[t].sharp
        seen["rows"] += 0 if after is None else int(after.sum() - (0 if before is None
                                                                  else before.sum()))  # fmt: skip

    monkeypatch.setattr(B, "sharpen_radius", counting)
    return seen


@pytest.mark.parametrize("method", ["deterministic", "probabilistic"])
def test_with_an_infinite_margin_unstable_ranges_are_full_ranges(method, monkeypatch):
    """Every unit selected: the same rows, the same bounds to the last bit; with the
    margin, fewer rows and a bound that stays within a small factor of full's."""
    model = load_example("cnn")
    X = digits()[0][:60]
    seen = _rows_pulled(monkeypatch)
    full = bound_run(model, X, LOW, engine="backward", ranges="full", method=method)
    full_rows = seen["rows"]
    seen["rows"] = 0
    lean = bound_run(model, X, LOW, engine="backward", ranges="unstable", method=method)
    lean_rows = seen["rows"]
    seen["rows"] = 0
    monkeypatch.setattr(B, "UNSTABLE_MARGIN", np.inf)
    every = bound_run(model, X, LOW, engine="backward", ranges="unstable", method=method)
    np.testing.assert_array_equal(every.radius, full.radius)
    assert seen["rows"] == full_rows
    assert lean_rows < full_rows / 2, (lean_rows, full_rows)
    q = lean.radius / full.radius
    assert np.all(q >= 1 - 1e-9) and np.median(q) <= 1.5, (q.min(), np.median(q))


@pytest.mark.parametrize("method", ["deterministic", "probabilistic"])
def test_the_cascade_tries_full_ranges_where_unstable_ones_leave_an_input_open(method, monkeypatch):
    """certify(ranges="unstable") under the deterministic method bounds the inputs
    its unstable stage leaves undecided once more with full ranges, and keeps the
    smaller bound; not under the probabilistic method (a second event)."""
    import fperr.bounds.cascade as C

    calls = []
    real = C.bound

    def spying(model, X, *args, **kw):
        calls.append((kw.get("ranges"), len(X)))
        return real(model, X, *args, **kw)

    monkeypatch.setattr(C, "bound", spying)
    model = deep_cnn(9)
    X = np.random.default_rng(9).uniform(0, 1, (6, 1, 12, 12))
    never = lambda y, m: np.zeros(len(y), dtype=bool)  # noqa: E731  every input stays open
    kw = {"method": method, "engine": "backward"}
    esc = C.cascade_bound(model, X, LOW, REF, never, ranges="unstable", explained=0, **kw)
    stages = [r for r, _ in calls]
    # stage 1 is the quick pass (conv, batch norm, ReLU, pooling), not a bound() call
    if method == "probabilistic":
        assert stages == ["unstable"], stages
        return
    assert stages == ["unstable", "full"] and calls[-1][1] == len(X), calls
    # the reference class has a row in every stage: its bound is the smallest of them
    monkeypatch.setattr(C, "bound", real)
    lean = bound(model, X, LOW, REF, ranges="unstable", engine="backward").bound
    full = bound(model, X, LOW, REF, ranges="full", engine="backward").bound
    k = np.argmax(esc.reference.output, axis=1)[:, None]
    got = np.take_along_axis(esc.bound, k, 1)
    want = np.minimum(np.take_along_axis(lean, k, 1), np.take_along_axis(full, k, 1))
    np.testing.assert_allclose(got, np.minimum(got, want), rtol=1e-12)
    assert np.all(esc.bound >= _observed(model, X))
