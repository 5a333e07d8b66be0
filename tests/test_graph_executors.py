"""The torch and mpmath executors on graph models (issue 12).

Oracles: the exact forward (``Model.forward`` with :class:`~fperr.arith.Exact`),
an evaluation of the graph by torch modules written by hand in
``test_graph_model._torch_graph`` (not by fperr's executor; same kernels, so bit
for bit), and the same network written as a chain (an ``nn.Sequential``).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from test_graph_model import _torch_graph, tiny_resnet

from fperr.layers import Activation, Add, Concat, Dense
from fperr.model import Model
from fperr.mpmath_exec import as_float64, mpmath_activations, run_mpmath
from fperr.rounding import round as fround

torch = pytest.importorskip("torch")

from fperr.hardware.torch_exec import run_torch, to_torch  # noqa: E402

FORMATS = {"float16": "binary16", "bfloat16": "bfloat16"}


def _rounded(model: Model, fmt: str) -> Model:
    """The model with every parameter rounded to ``fmt`` (so that torch's own
    float64 -> float16/bfloat16 conversion in the hand evaluation is exact)."""

    def layer(lay):
        if not dataclasses.is_dataclass(lay):
            return lay
        arrays = {k: fround(v, fmt) for k, v in vars(lay).items() if isinstance(v, np.ndarray)}
        return dataclasses.replace(lay, **arrays) if arrays else lay

    return Model(model.name, model.input_shape, tuple(layer(x) for x in model.layers),
                 wiring=model.wiring, names=model.names)  # fmt: skip


def _rel(y: np.ndarray, ref: np.ndarray) -> float:
    return float(np.linalg.norm(y - ref) / np.linalg.norm(ref))


@pytest.mark.parametrize("batch_size", [None, 3])
def test_graph_float64_matches_the_exact_forward(batch_size):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        model = tiny_resnet(rng)
        X = rng.uniform(-1, 1, (11, 2, 6, 6)) * (10.0 if seed == 2 else 1.0)
        run = run_torch(model, X, dtype="float64", batch_size=batch_size)
        ref = model.forward(X)
        assert run.outputs.shape == ref.shape == (11, 3)
        assert _rel(run.outputs, ref) <= 1e-12, seed
        assert np.all(np.abs(run.outputs - ref) <= 1e-12 * np.abs(ref).max()), seed
        assert run.flags["batch_size"] == (batch_size or 11)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_graph_low_precision_is_the_hand_evaluation_bit_for_bit(dtype):
    fmt = FORMATS[dtype]
    for seed in range(3):
        rng = np.random.default_rng(10 + seed)
        model = _rounded(tiny_resnet(rng), fmt)
        X = fround(rng.uniform(-1, 1, (16, 2, 6, 6)) * 2, fmt)
        got = run_torch(model, X, dtype=dtype).outputs
        want = _torch_graph(torch, model, X, getattr(torch, dtype))
        np.testing.assert_array_equal(got, want)
        # and the low-precision run does differ from the exact one (the check can fail)
        assert 0 < np.abs(got - model.forward(X)).max() < 0.5, seed


def test_graph_runs_under_autocast():
    rng = np.random.default_rng(4)
    model = tiny_resnet(rng)
    X = rng.uniform(-1, 1, (8, 2, 6, 6))
    ref = model.forward(X)
    f32 = run_torch(model, X, dtype="float32").outputs
    auto = run_torch(model, X, dtype="float32", autocast="bfloat16", batch_size=5)
    assert auto.flags["autocast"] == "bfloat16"
    assert _rel(f32, ref) < 1e-5
    assert 0 < _rel(auto.outputs, ref) < 0.1  # bfloat16 kernels did run (u = 2^-8)


def test_a_chain_written_as_a_graph_runs_like_the_chain():
    """The same layers as a chain (nn.Sequential) and as a graph: identical outputs."""
    rng = np.random.default_rng(5)
    w0 = fround(rng.normal(size=(16, 8)) / 3, "binary16")
    b0 = fround(rng.normal(size=16), "binary16")
    w1 = fround(rng.normal(size=(4, 16)) / 4, "binary16")
    layers = (Dense(w0, b0), Activation("relu"), Dense(w1))
    chain = Model("c", (8,), layers)
    graph = Model("g", (8,), layers, wiring=((-1,), (0,), (1,)), names=("a", "b", "c"))
    seq = to_torch(chain)
    assert isinstance(seq, torch.nn.Sequential) and len(seq) == 3
    net = to_torch(graph)
    assert not isinstance(net, torch.nn.Sequential) and len(net.nodes) == 3
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    X = rng.normal(size=(30, 8))
    for dtype in ("float64", "float32", "float16", "bfloat16"):
        a, b = (run_torch(m, X, dtype=dtype).outputs for m in (chain, graph))
        np.testing.assert_array_equal(a, b)


def test_a_node_may_read_one_value_twice():
    rng = np.random.default_rng(8)
    layers = (Dense(rng.normal(size=(3, 4))), Add(), Concat(0), Dense(rng.normal(size=(2, 6))))
    model = Model("twice", (4,), layers, wiring=((-1,), (0, 0), (1, 1), (2,)))
    X = rng.normal(size=(5, 4))
    ref = model.forward(X)
    np.testing.assert_allclose(run_torch(model, X, dtype="float64").outputs, ref, rtol=1e-13)
    np.testing.assert_allclose(as_float64(run_mpmath(model, X)), ref, rtol=1e-13)


def _add_concat_model(rng: np.random.Generator) -> Model:
    """input -> dense a, dense b (both read the input) -> a + b -> concat(sum, relu a)
    -> dense: an Add and a Concat of three inputs, one of them the model input."""
    layers = (
        Dense(rng.normal(size=(5, 4)), rng.normal(size=5)),
        Dense(rng.normal(size=(5, 4)) * 1e3),
        Add(),
        Activation("relu"),
        Concat(0),
        Dense(rng.normal(size=(2, 14)) / 3, rng.normal(size=2)),
    )
    wiring = ((-1,), (-1,), (0, 1), (0,), (2, 3, -1), (4,))
    return Model("ac", (4,), layers, wiring=wiring, names=("a", "b", "s", "r", "cat", "o"))


def test_mpmath_runs_a_graph_with_add_and_concat():
    rng = np.random.default_rng(6)
    model = _add_concat_model(rng)
    X = rng.normal(size=(6, 4))
    hs = mpmath_activations(model, X)
    exact = model.activations(X)
    assert len(hs) == len(exact) == len(model.layers) + 1
    for h, e in zip(hs, exact, strict=True):
        assert h.shape == e.shape
        np.testing.assert_allclose(as_float64(h), e, rtol=1e-13, atol=1e-13 * np.abs(e).max())
    # the concat holds its inputs side by side, the input itself last
    np.testing.assert_array_equal(as_float64(hs[5][:, 10:]), X)


def test_mpmath_runs_the_tiny_resnet():
    rng = np.random.default_rng(7)
    model = tiny_resnet(rng)
    X = rng.uniform(-1, 1, (2, 2, 6, 6))
    got = as_float64(run_mpmath(model, X, dps=30))
    ref = model.forward(X)
    np.testing.assert_allclose(got, ref, rtol=1e-13, atol=1e-13 * np.abs(ref).max())
    # and to the torch graph executor in float64
    np.testing.assert_allclose(run_torch(model, X, dtype="float64").outputs, got, rtol=1e-12,
                               atol=1e-12 * np.abs(ref).max())  # fmt: skip
