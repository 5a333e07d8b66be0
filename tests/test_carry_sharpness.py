"""Units whose radius a backward row cannot tighten get none
(:func:`fperr.bounds.backward.carry_sharpness`): with deterministic ranges, a
pointwise step passes its input's exact units on, and a linear map of errors
that each reach one unit (an exact input's first convolution, its rounding
through batch norm, ReLU and max pooling) is its own backward bound.

Oracles: the same bounds with the rule switched off (every such unit then gets
its row, which must give the same radius up to the image's weight margin),
emulated runs in every order (soundness), and the rows actually requested."""

from __future__ import annotations

import numpy as np
import pytest
from test_anchors import LOW, REF, _observed

import fperr.bounds.backward as B
from fperr.bounds import bound, bound_run
from fperr.layers import Activation, BatchNorm, Conv2d, Dense, Flatten, Pool2d
from fperr.model import Model

F32 = np.float32


def _float32_model(seed):
    """conv-BN-ReLU-pool x 2 and a dense head, the convolutions' parameters binary32
    values: the binary32 run rounds none, so no signed generator breaks locality."""
    rng = np.random.default_rng(seed)
    f32 = lambda a: a.astype(F32).astype(np.float64)  # noqa: E731
    layers, c = [], 1
    for w in (6, 8):
        layers += [Conv2d(f32(rng.standard_normal((w, c, 3, 3)) / np.sqrt(9 * c)),
                          f32(rng.standard_normal(w) * 0.1), padding=(1, 1)),
                   BatchNorm(rng.standard_normal(w) * 0.1, rng.uniform(0.2, 1, w),
                             rng.uniform(0.5, 2, w), rng.standard_normal(w) * 0.1),
                   Activation("relu"), Pool2d("max", (2, 2), (2, 2))]  # fmt: skip
        c = w
    layers += [Flatten(), Dense(f32(rng.standard_normal((5, 8 * 3 * 3)) / 8))]
    return Model("cnn32", (1, 12, 12), tuple(layers))


def _inputs(n, seed=1):
    """Inputs exact in binary16 (k/8, |k| < 64): the input carries no rounding."""
    return np.random.default_rng(seed).integers(-63, 64, (n, 1, 12, 12)) / 8.0


def _run(model, X, monkeypatch, rule, arith=REF, **kw):
    """(bound, rows requested per tape step, tapes) with the rule on or off."""
    rows, tapes = {}, []
    if not rule:
        monkeypatch.setattr(B, "carry_sharpness", lambda step, source: None)
    select, forward = B.row_selector, B.forward_steps

    def counting(mask):
        rows[len(rows)] = int(mask.sum())
        return select(mask)

    def keeping(graph, tape, *a, **k):
        tapes.append(tape)
        return forward(graph, tape, *a, **k)

    monkeypatch.setattr(B, "row_selector", counting)
    monkeypatch.setattr(B, "forward_steps", keeping)
    monkeypatch.setattr("fperr.bounds.engine.forward_steps", keeping)
    b = bound_run(model, X, arith, engine="backward", **kw)
    monkeypatch.undo()
    return b.radius, sum(rows.values()), tapes


@pytest.mark.parametrize(("arith", "ranges", "fewer"), [
    (REF, "full", True), (LOW, "full", True), (LOW, "unstable", False), (REF, "sharpened", False),
], ids=["binary32-full", "binary16-full", "binary16-unstable", "binary32-sharpened"])  # fmt: skip
def test_skipped_rows_change_no_bound_beyond_the_weight_margin(arith, ranges, fewer, monkeypatch):
    model, X = _float32_model(3), _inputs(6)
    on, rows_on, _ = _run(model, X, monkeypatch, True, arith=arith, ranges=ranges)
    off, rows_off, _ = _run(model, X, monkeypatch, False, arith=arith, ranges=ranges)
    assert rows_on <= rows_off and (rows_on < rows_off or not fewer)
    # never looser: a spared row would have given the exact image the unit keeps, and
    # units no row reached keep it too (not the image bounded from the rounded weights,
    # a relative 2u wider), which also narrows the Euclidean ranges after them
    assert np.all(on <= off * (1 + 1e-12))
    assert np.all(on >= off * (1 - 1e-3))  # by at most about 2u of the weights' format


def test_exact_input_through_a_block_is_local(monkeypatch):
    """The first block's units are exact in the backward sense; the second
    convolution reads them through pointwise steps: exact too, not local."""
    model, X = _float32_model(3), _inputs(6)
    _, _, tapes = _run(model, X, monkeypatch, True, ranges="full")
    steps = tapes[0].steps
    assert steps[0].local.all() and steps[1].sharp.all()  # conv of exact input
    assert all(st.local.all() for st in steps[1:5])  # conv, batch norm, ReLU, max pooling
    assert all(st.sharp.all() for st in steps[1:8])  # and the second conv, BN, ReLU
    assert not steps[5].local.any()


def test_signed_parameter_roundings_are_not_local(monkeypatch):
    """binary16 rounds the binary32 weights: each layer's weight rounding is one
    signed vector across units, which a later row may cancel: not local."""
    model, X = _float32_model(4), _inputs(3)
    _, _, tapes = _run(model, X, monkeypatch, True, arith=LOW, ranges="full")
    steps = tapes[0].steps
    assert steps[1].signed is not None and steps[1].sharp.all() and not steps[1].local.any()
    assert steps[5].sharp is None or not steps[5].sharp.all()  # the second convolution


def test_probabilistic_ranges_keep_every_row(monkeypatch):
    """Rows that sum random roundings in quadrature can beat any interval image."""
    model, X = _float32_model(5), _inputs(4)
    on, rows_on, _ = _run(model, X, monkeypatch, True, ranges="full", method="probabilistic")
    off, rows_off, _ = _run(model, X, monkeypatch, False, ranges="full", method="probabilistic")
    assert rows_on == rows_off
    np.testing.assert_array_equal(on, off)


@pytest.mark.parametrize("ranges", ["full", "unstable"])
def test_bounds_with_the_rule_hold_in_every_order(ranges):
    model, X = _float32_model(6), _inputs(8, seed=2)
    b = bound(model, X, LOW, REF, engine="backward", ranges=ranges)
    assert np.all(_observed(model, X) <= b.bound)


@pytest.mark.parametrize("ranges", ["sharpened", "unstable", "full"])
def test_locality_is_per_input_so_bounds_do_not_depend_on_the_batch(ranges, monkeypatch):
    """Exact inputs next to inexact ones (whose rounding to binary32 makes the first
    convolution's output not local, so the second's units get rows): each input's
    bound, alone and in the batch."""
    model = _float32_model(7)
    X = np.concatenate([_inputs(2, seed=3), np.random.default_rng(4).normal(size=(2, 1, 12, 12))])
    whole, _, tapes = _run(model, X, monkeypatch, True, ranges=ranges)
    assert tapes[0].steps[1].local.tolist() == [True, True, False, False]
    for i in range(4):
        alone, _, _ = _run(model, X[i : i + 1], monkeypatch, True, ranges=ranges)
        np.testing.assert_allclose(alone[0], whole[i], rtol=1e-12)
