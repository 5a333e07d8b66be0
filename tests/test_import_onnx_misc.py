"""ONNX import (issue 12): scikit-learn graphs, the one-line refusal, dynamic
batches through exported attention, and the layout decomposition."""

from __future__ import annotations

import io
import math
import warnings
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")

import fperr  # noqa: E402
from fperr.errors import SpecError  # noqa: E402
from fperr.importers import from_onnx  # noqa: E402
from fperr.importers.onnx_layout import gather_layers  # noqa: E402


@pytest.mark.parametrize("classes", [2, 3])
def test_skl2onnx_mlp_classifier_imports_the_network(classes: int) -> None:
    pytest.importorskip("skl2onnx")
    from skl2onnx import to_onnx
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 4))
    y = (X[:, 0] > 0).astype(int) + (classes == 3) * (X[:, 1] > 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence
        clf = MLPClassifier((8,), max_iter=200, random_state=0).fit(X, y)
    notes: list[str] = []
    model = from_onnx(to_onnx(clf, X[:1].astype(np.float32)), notes=notes)
    assert [la.type for la in model.layers] == ["dense", "relu", "dense"]
    assert len(notes) == 1 and "post-processing cut off" in notes[0]
    # oracle: the logits in numpy from the estimator's coefficients, stored in float32
    # by skl2onnx
    w = [c.astype(np.float32).astype(np.float64) for c in clf.coefs_]
    b = [c.astype(np.float32).astype(np.float64) for c in clf.intercepts_]
    want = np.maximum(X @ w[0] + b[0], 0) @ w[1] + b[1]
    got = model.forward(X, fperr.Exact())
    assert got.shape == (80, 1 if classes == 2 else 3)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _many_unsupported() -> Any:
    from onnx import TensorProto
    from onnx import helper as h

    nodes, outs = [], []
    for i in range(50):
        nodes.append(h.make_node("Sin" if i < 30 else "Cos", ["x"], [f"s{i}"]))
        outs.append(f"s{i}")
    nodes.append(h.make_node("Sum", outs, ["y"]))
    dbl = TensorProto.DOUBLE
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", dbl, ["N", 4])],
                         [h.make_tensor_value_info("y", dbl, None)])  # fmt: skip
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 17)])


def test_unsupported_graph_is_one_short_line() -> None:
    with pytest.raises(SpecError) as info:
        from_onnx(_many_unsupported())
    msg = str(info.value)
    assert msg.startswith("unsupported ONNX ops: Sin x30, Cos x20 (50 nodes); ")
    assert "\n" not in msg and len(msg) < 300


def test_dynamic_batch_attention_from_the_torchscript_exporter() -> None:
    """Shape arithmetic of a dynamic batch folds at the analysis batch (3); the
    import is then right for every batch size."""
    torch = pytest.importorskip("torch")
    nn = torch.nn
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, batch_first=True)
    module = nn.Sequential(nn.Linear(6, 16), layer).eval()
    f = io.BytesIO()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(module, (torch.zeros(2, 5, 6),), f, dynamo=False,
                              input_names=["x"], dynamic_axes={"x": {0: "N"}})  # fmt: skip
    finally:
        torch.backends.mha.set_fastpath_enabled(True)
    model = from_onnx(f.getvalue())
    for n in (1, 2, 7):
        x = np.random.default_rng(n).normal(size=(n, 5, 6))
        with torch.no_grad():
            want = module.double()(torch.from_numpy(x)).numpy()
        got = model.forward(x, fperr.Exact())
        assert np.linalg.norm(got - want) <= 1e-8 * np.linalg.norm(want)  # float32 eps


@pytest.mark.parametrize("pick", [
    lambda a: a[0], lambda a: a.T, lambda a: a[:, 3:7],
    lambda a: a.reshape(6, 2, 4).transpose(1, 0, 2),
    lambda a: a.reshape(6, 2, 4).transpose(1, 2, 0),
    lambda a: a[:, ::2], lambda a: a[2:4, 1:8], lambda a: a.reshape(-1), lambda a: a[1:2, 5:6],
])  # fmt: skip
def test_gather_layers_are_the_strided_view(pick: Any) -> None:
    per = (6, 8)
    g = np.ascontiguousarray(pick(np.arange(math.prod(per)).reshape(per)))
    x = np.random.default_rng(0).normal(size=(3, *per))
    y = x
    for layer in gather_layers(per, g):
        y = layer.forward(y, fperr.Exact())
    want = np.stack([xi.reshape(-1)[g] for xi in x])  # numpy fancy indexing, not the layers
    np.testing.assert_array_equal(y, want)


@pytest.mark.parametrize("pick", [lambda a: a[::-1], lambda a: a[:, [0, 0]],
                                  lambda a: a[:, [1, 0, 2]]])  # fmt: skip
def test_gather_layers_refuse_other_gathers(pick: Any) -> None:
    from fperr.importers.graph import _Unsupported

    g = np.ascontiguousarray(pick(np.arange(48).reshape(6, 8)))
    with pytest.raises(_Unsupported, match="not a strided view"):
        gather_layers((6, 8), g)
