"""The low run anchored on the reference run's values (:func:`fperr.bounds.bound`).

The exact values lie within the reference run's radius of its values, so the
low run knows its own error to within that (``spread``), and the ranges of its
ReLUs, max pools and activations shrink from [x - 2r, x + 2r] to
[x - r - s, x + r + s].  Oracles: emulated runs in every summation order and
torch CPU runs (soundness, observed errors never above the bound), the bound
without anchors (never tighter than it on these chains), and the spread's own
definition.
"""

from __future__ import annotations

import numpy as np
import pytest

from fperr.arith import Emulated
from fperr.bounds import bound, bound_run
from fperr.bounds.backward import Ranges
from fperr.examples import digits
from fperr.examples import load as load_example
from fperr.layers import Activation, BatchNorm, Conv2d, Dense, Flatten, Pool2d
from fperr.model import Model

LOW = Emulated.from_names("binary16", "binary32")
REF = Emulated.from_names("binary32", "binary32")
ORDERS = ("blas", "sequential", "pairwise", "blocked")


def deep_cnn(seed: int, act: str = "relu") -> Model:
    """conv-BN-act x 4 with two max pools, 1x12x12 inputs: ranges that grow."""
    rng = np.random.default_rng(seed)
    layers: list = []
    c = 1
    for i, w in enumerate((6, 6, 8, 8)):
        kernel = rng.standard_normal((w, c, 3, 3)) / np.sqrt(9 * c)
        layers += [Conv2d(kernel, rng.standard_normal(w) * 0.1, padding=(1, 1)),
                   BatchNorm(rng.standard_normal(w) * 0.1, rng.uniform(0.2, 1, w),
                             rng.uniform(0.5, 2, w), rng.standard_normal(w) * 0.1),
                   Activation(act)]  # fmt: skip
        if i in (1, 3):
            layers.append(Pool2d("max", (2, 2), (2, 2)))
        c = w
    layers += [Flatten(), Dense(rng.standard_normal((5, c * 9)) / np.sqrt(c * 9), None)]
    return Model(f"deep-{act}", (1, 12, 12), tuple(layers))


def _observed(model: Model, X: np.ndarray) -> np.ndarray:
    """max over orders of |y_low - y_ref| for every pair of emulated runs."""
    lows = [model.forward(X, Emulated.from_names("binary16", "binary32", order=o)) for o in ORDERS]
    refs = [model.forward(X, Emulated.from_names("binary32", "binary32", order=o)) for o in ORDERS]
    return np.max([np.abs(a - b) for a in lows for b in refs], axis=0)


@pytest.mark.parametrize(("seed", "act", "method", "ranges"), [
    (0, "relu", "deterministic", "sharpened"), (1, "relu6", "deterministic", "full"),
    (2, "relu", "probabilistic", "full"), (3, "tanh", "deterministic", "sharpened"),
    (4, "leaky_relu", "deterministic", "interval"),
])  # fmt: skip
def test_anchored_bounds_are_sound_and_never_looser(seed, act, method, ranges):
    model = deep_cnn(seed, act)
    rng = np.random.default_rng(100 + seed)
    X = np.vstack([rng.uniform(0, 1, (6, 1, 12, 12)), np.zeros((1, 1, 12, 12)),
                   np.round(rng.uniform(0, 4, (2, 1, 12, 12))) / 4])  # ties: constant regions
    b = bound(model, X, LOW, REF, method=method, ranges=ranges, engine="backward")
    assert np.all(b.bound >= _observed(model, X))
    ref = bound_run(model, X, REF, method=method, ranges=ranges, engine="backward",
                    confidence=1 - 0.0005)  # fmt: skip
    plain = bound_run(model, X, LOW, method=method, ranges=ranges, engine="backward",
                      confidence=1 - 0.0005)  # fmt: skip
    np.testing.assert_array_equal(b.reference.radius, ref.radius)  # the reference alone
    q = b.low.radius / plain.radius
    assert np.all(q <= 1 + 1e-9) or act == "relu" and ranges != "interval", q.max()
    assert np.median(q) <= 1, np.median(q)


def test_anchors_tighten_the_digits_cnn_and_keep_it_sound():
    model = load_example("cnn")
    X = digits()[0][:200]
    b = bound(model, X, LOW, REF, engine="backward")
    plain = bound_run(model, X, LOW, engine="backward")
    assert np.all(b.bound >= _observed(model, X))
    assert np.median(b.low.radius / plain.radius) < 1


def test_anchored_bounds_hold_against_torch_cpu():
    pytest.importorskip("torch")
    from soundness.torch_reference import torch_run  # noqa: PLC0415

    for seed in (7, 8):
        model = deep_cnn(seed)
        X = np.random.default_rng(seed).uniform(0, 1, (8, 1, 12, 12))
        b = bound(model, X, LOW, REF, ranges="full", engine="backward")
        y16 = torch_run(model.layers, model.input_shape, X, "binary16")
        y32 = torch_run(model.layers, model.input_shape, X, "binary32")
        assert np.all(np.abs(y16 - y32) <= b.bound)


def test_spread_is_the_own_error_bound_capped_by_the_radius():
    c = np.array([[1.0, 2.0, np.nan, 0.0]])
    rho = np.array([[0.1, 0.0, 0.1, np.inf]])
    ranges = Ranges(None, anchors=[(c, rho)])
    x = np.array([[1.5, 2.0, 3.0, 0.0]])
    r = np.array([[0.2, 0.3, 0.4, 0.5]])
    s = ranges.spread(0, x, r)
    np.testing.assert_array_equal(s, [[0.2, 0.0, 0.4, 0.5]])  # min(r, |x - c| + rho)
    assert Ranges(None).spread(0, x, r) is None
