"""The cascade's stage 1 (:mod:`fperr.bounds.quick`): both runs bounded in one
forward pass; its soundness tests run on stage 0 (:mod:`fperr.bounds.coarse`) too.

Oracles: emulated runs of both arithmetics in every summation order (and a
float64 forward pass for the exact values: its own error is about 2^-40 of the
smallest radius here), torch CPU runs in float16 and float32, and the backward
engine's interval stage it replaces (tightness: the ratio of the two).
"""

from __future__ import annotations

import numpy as np
import pytest
from test_anchors import LOW, ORDERS, REF, _observed, deep_cnn

import fperr.bounds.coarse as coarse
import fperr.bounds.quick as quick
from fperr import certify
from fperr.arith import Emulated, Exact
from fperr.bounds import bound
from fperr.bounds.coarse import coarse_bound
from fperr.bounds.quick import quick_bound
from fperr.examples import digits
from fperr.examples import load as load_example
from fperr.layers import (
    Activation,
    BatchNorm,
    Conv2d,
    Dense,
    Flatten,
    Pool2d,
    Residual,
)
from fperr.model import Model


def conv_net(seed: int, act: str = "relu", scale: float = 1.0) -> Model:
    """Convolutions with padding, stride and groups, max pooling with and without
    padding, a dense head: every quick rule."""
    rng = np.random.default_rng(seed)

    def he(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape) * scale / np.sqrt(np.prod(shape[1:]))

    layers = (
        Conv2d(he(6, 1, 3, 3), rng.standard_normal(6) * 0.1, padding=(1, 1)),
        Activation(act),
        Pool2d("max", (3, 3), (2, 2), (1, 1)),  # overlapping windows, -inf padding
        Conv2d(he(8, 3, 3, 3), None, stride=(1, 1), padding=(1, 1), groups=2),
        Activation(act),
        Pool2d("max", (2, 2), (2, 2)),
        Flatten(),
        Dense(he(16, 8 * 3 * 3), rng.standard_normal(16) * 0.1),
        Activation(act),
        Dense(he(5, 16), rng.standard_normal(5) * 0.1),
    )
    return Model(f"quick-{act}", (1, 12, 12), layers)


def mlp(seed: int, act: str = "relu", width: int = 40) -> Model:
    rng = np.random.default_rng(seed)
    layers = (
        Dense(rng.standard_normal((width, 20)) / np.sqrt(20), rng.standard_normal(width) * 0.1),
        Activation(act),
        Dense(rng.standard_normal((width, width)) / np.sqrt(width), None),
        Activation(act),
        Dense(rng.standard_normal((4, width)) / np.sqrt(width), rng.standard_normal(4)),
    )
    return Model(f"quick-mlp-{act}", (20,), layers)


def inputs(model: Model, seed: int, n: int = 12) -> np.ndarray:
    rng = np.random.default_rng(seed)
    X = rng.uniform(0, 1, (n, *model.input_shape))
    X[0] = 0.0  # every unit at a kink
    X[1] = np.round(X[1] * 4) / 4  # ties in the pooling windows
    return X


CASES = [(conv_net, 0, "relu"), (conv_net, 1, "relu6"), (mlp, 2, "relu"), (mlp, 3, "relu6"),
         (deep_cnn, 8, "relu"), (deep_cnn, 9, "relu6")]  # the last with batch norm


# the cascade's stages 0 and 1 (fperr.bounds.coarse, .quick) hold to the same oracles
STAGES = pytest.mark.parametrize("stage", [quick_bound, coarse_bound], ids=["quick", "coarse"])


@STAGES
@pytest.mark.parametrize(("make", "seed", "act"), CASES)
def test_quick_bounds_enclose_every_order_of_both_runs(make, seed, act, stage):
    model = make(seed, act)
    X = inputs(model, seed)
    b = stage(model, X, LOW, REF)
    assert b is not None and np.all(np.isfinite(b.bound))
    np.testing.assert_array_equal(b.low.output, model.forward(X, LOW))
    np.testing.assert_array_equal(b.reference.output, model.forward(X, REF))
    assert np.all(_observed(model, X) <= b.bound)
    exact = model.forward(X, Exact())
    for order in ORDERS:
        lo = model.forward(X, Emulated.from_names("binary16", "binary32", order=order))
        rf = model.forward(X, Emulated.from_names("binary32", "binary32", order=order))
        assert np.all(np.abs(lo - exact) <= b.low.radius)
        assert np.all(np.abs(rf - exact) <= b.reference.radius)


@pytest.mark.parametrize(("storage", "accumulate"), [
    ("bfloat16", "binary32"), ("binary16", "binary16"), ("float8_e4m3fn", "binary32"),
])  # fmt: skip
@STAGES
def test_quick_bounds_hold_in_other_formats(storage, accumulate, stage):
    model = conv_net(4)
    X = inputs(model, 4)
    low = Emulated.from_names(storage, accumulate)
    b = stage(model, X, low, REF)
    assert b is not None
    for order in ORDERS:
        lo = model.forward(X, Emulated.from_names(storage, accumulate, order=order))
        for ref_order in ("blas", "sequential"):
            rf = model.forward(X, Emulated.from_names("binary32", "binary32", order=ref_order))
            assert np.all(np.abs(lo - rf) <= b.bound)


@STAGES
def test_quick_bounds_hold_against_torch_cpu(stage):
    pytest.importorskip("torch")
    from soundness.torch_reference import torch_run  # noqa: PLC0415

    for make, seed, act in CASES:
        model = make(seed, act)
        X = inputs(model, 10 + seed, 16)
        b = stage(model, X, LOW, REF)
        y16 = torch_run(model.layers, model.input_shape, X, "binary16")
        y32 = torch_run(model.layers, model.input_shape, X, "binary32")
        assert np.all(np.abs(y16 - y32) <= b.bound)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_on_the_digits_models_quick_is_close_to_the_interval_stage(name):
    """What the cascade gives up for a first stage about 3x faster: at most a
    quarter at the median against the backward engine's interval ranges (measured
    1.08 on the MLP, 1.15 on the CNN), and no certificate."""
    model, X = load_example(name), digits()[0][:300]
    q = quick_bound(model, X, LOW, REF)
    K = q.bound.shape[1]
    b = bound(model, X, LOW, REF, engine="backward", ranges="interval",
              rows=np.zeros((len(X), K), dtype=bool))  # fmt: skip
    ratio = q.bound / b.bound
    assert np.median(ratio) <= 1.25, np.median(ratio)
    assert np.all(q.bound >= _observed(model, X))
    won = [certify(model, X, engine="backward", cascade=c).certified.sum() for c in (True, False)]
    assert won[0] == won[1]


def test_layers_without_a_quick_rule_leave_the_first_stage_to_the_engine():
    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 6)) / 3
    base = [Dense(w, None), Activation("relu"), Dense(w, None)]
    others = [
        Activation("tanh"), Activation("leaky_relu"),  # curved; rounded (alpha x)
        Residual([Dense(w, None)]),
    ]  # fmt: skip
    X = rng.uniform(0, 1, (4, 6))
    assert quick_bound(Model("plain", (6,), tuple(base)), X, LOW, REF) is not None
    norm = BatchNorm(np.zeros(6), np.ones(6), np.ones(6), np.zeros(6))
    assert quick_bound(Model("bn", (6,), (*base, norm)), X, LOW, REF) is not None
    for layer in others:
        model = Model("other", (6,), (*base[:2], layer, base[2]))
        assert quick_bound(model, X, LOW, REF) is None, layer.type
    pooled = Model("avg", (1, 4, 4), (Pool2d("avg", (2, 2), (2, 2)), Flatten()))
    assert quick_bound(pooled, rng.uniform(0, 1, (2, 1, 4, 4)), LOW, REF) is None
    tf32 = Emulated.from_names("binary32", "binary32", "tf32")  # chopped operands
    assert quick_bound(Model("plain", (6,), tuple(base)), X, tf32, REF) is None


@STAGES
def test_runs_that_may_overflow_get_infinite_bounds_and_others_keep_theirs(stage):
    model = mlp(6)
    X = inputs(model, 6, 6)
    X[2] *= 1e5  # binary16 overflows (its largest value is 65504)
    b = stage(model, X, LOW, REF)
    assert np.all(np.isinf(b.bound[2]))
    rest = np.delete(np.arange(6), 2)
    assert np.all(np.isfinite(b.bound[rest]))
    # equal up to the float64 GEMMs' rounding, as test_bounds_do_not_depend_on_the_batch:
    # BLAS may sum a row's products in another order when the batch has another
    # number of rows (OpenBLAS on AMD EPYC does: its tail rows take another kernel),
    # which the engine's evaluation margin covers; bit equality held only on some CPUs
    np.testing.assert_allclose(b.bound[rest], stage(model, X[rest], LOW, REF).bound,
                               rtol=1e-12)  # fmt: skip


@STAGES
def test_bounds_do_not_depend_on_the_batch(monkeypatch, stage):
    model = conv_net(7)
    X = inputs(model, 7, 20)
    whole = stage(model, X, LOW, REF).bound
    module = quick if stage is quick_bound else coarse
    monkeypatch.setattr(module, "BATCH_ELEMENTS", 1)  # one input at a time
    alone = stage(model, X, LOW, REF).bound
    np.testing.assert_allclose(alone, whole, rtol=1e-12)
