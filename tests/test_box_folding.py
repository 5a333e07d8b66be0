"""A step that scales rows by its own d (an elementwise function, batch norm)
contributes its source's boxes for it, |lam d| box = |lam| (|d| box), when it is the
source's only reader (:func:`fperr.bounds.backward.absorbed`): one absolute value of
the rows for both.  Oracle: the same pull-backs with no step absorbing any other's
boxes, on chains, residual blocks, graphs whose steps have several readers, every
range mode and both methods: the same bounds and per-layer breakdowns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_anchors import LOW
from test_carry_sharpness import _float32_model, _run

import fperr.bounds.backward as B
from fperr.bounds import bound_run
from fperr.examples import digits
from fperr.examples import load as load_example
from fperr.layers import Activation, BatchNorm, Conv2d, Dense, Flatten, Residual
from fperr.model import Model, load_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _residual_bn(seed=0):
    """conv-BN-ReLU inside a residual branch and outside: the branch's entry, whose
    reader is inside and outside, is never absorbed."""
    rng = np.random.default_rng(seed)
    conv = lambda: Conv2d(rng.standard_normal((4, 4, 3, 3)) / 6, None, padding=(1, 1))  # noqa: E731
    bn = lambda: BatchNorm(rng.standard_normal(4) * 0.1, rng.uniform(0.3, 1, 4),  # noqa: E731
                           rng.uniform(0.5, 2, 4), rng.standard_normal(4) * 0.1)  # fmt: skip
    layers = (Conv2d(rng.standard_normal((4, 1, 3, 3)) / 3, None, padding=(1, 1)), bn(),
              Activation("relu"), Residual((conv(), bn(), Activation("relu"), conv(), bn())),
              Activation("relu"), Flatten(), Dense(rng.standard_normal((3, 4 * 6 * 6)) / 12))
    return Model("res", (1, 6, 6), layers)


def _cases():
    rng = np.random.default_rng(5)
    prenorm = load_model(EXAMPLES / "prenorm.yaml")
    return {
        "bn-chain": (_float32_model(3), rng.normal(size=(4, 1, 12, 12))),
        "residual": (_residual_bn(), rng.normal(size=(4, 1, 6, 6))),
        "digits-cnn": (load_example("cnn"), digits()[0][:6]),
        "prenorm": (prenorm, rng.normal(size=(4, *prenorm.input_shape))),
    }


CASES = _cases()


def _unfolded(tape):
    by, _ = FOLDS(tape)
    return [None] * len(by), {}


FOLDS = B._folds


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize(("method", "ranges"), [
    ("deterministic", "sharpened"), ("deterministic", "unstable"), ("deterministic", "full"),
    ("probabilistic", "sharpened"), ("probabilistic", "full"),
])  # fmt: skip
def test_absorbed_boxes_give_the_same_bounds(name, method, ranges, monkeypatch):
    model, X = CASES[name]
    folded = bound_run(model, X, LOW, engine="backward", method=method, ranges=ranges)
    monkeypatch.setattr(B, "_folds", _unfolded)
    plain = bound_run(model, X, LOW, engine="backward", method=method, ranges=ranges)
    assert np.all(np.isfinite(folded.radius))
    np.testing.assert_allclose(folded.radius, plain.radius, rtol=1e-12)
    np.testing.assert_allclose(folded.per_layer, plain.per_layer, rtol=1e-9, atol=1e-300)


def test_only_a_single_scaling_reader_absorbs(monkeypatch):
    model, X = CASES["residual"]
    _, _, tapes = _run(model, X, monkeypatch, True, arith=LOW)
    tape = tapes[0]
    by = [B.absorber(tape, i) for i in range(len(tape.steps))]
    assert by[0] is None  # the entry
    assert by[1] == 2 and by[2] == 3  # conv -> BN -> ReLU
    assert by[3] is None  # read by the residual step (and inside its branch): not scaling
