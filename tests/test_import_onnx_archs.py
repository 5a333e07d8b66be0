"""ONNX import of today's architectures from both torch exporters (issue 12).

ResNet-20 (projection shortcuts), VGG-11-BN, MobileNetV2-tiny (depthwise,
ReLU6, inverted residuals), ViT-tiny (patch embedding, class token,
positional embedding, 6 pre-norm blocks) from ``examples/seed`` with their
trained weights, and ``nn.TransformerEncoderLayer`` models (pre- and
post-norm, 4 heads, mean pooling or a class token), each exported by the
TorchScript exporter (``dynamo=False``, opset 17) and by ``torch.export``
(``dynamo=True``, opset 18, needs onnxscript).

The oracle is onnx's reference evaluator on a float64 copy of the exported
graph (float initializers, Constant tensors, Casts to float and the declared
input and output types widened to float64; Erf evaluated with math.erf, the
stock one being float32), not fperr's code.  Exported from a float64 module
the graph's own constants are float64, and the import must match it to 1e-12
(normwise relative).  Exported from the float32 module (what users export),
the import is compared with the float64 torch module: the exporters fold
BatchNorm into the convolutions in float32, and the graph carries float32
constants (GELU's sqrt 2: the import computes the exact GELU), so the
distance is about 1e-8 (asserted < 1e-5, printed).
"""

from __future__ import annotations

import copy
import io
import math
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
nn = torch.nn

import fperr  # noqa: E402
from fperr.importers import from_onnx  # noqa: E402

SEED = Path(__file__).resolve().parents[1] / "examples" / "seed"
sys.path.insert(0, str(SEED))
T, F, D, H, K = 5, 6, 16, 4, 3


class ClassTokenEncoder(nn.Module):
    """Embedding, a learned class token (torch.cat), one encoder layer, head on the token."""

    def __init__(self, norm_first: bool) -> None:
        super().__init__()
        self.embed = nn.Linear(F, D)
        self.cls = nn.Parameter(torch.randn(1, 1, D) * 0.5)
        layer = nn.TransformerEncoderLayer(D, H, 32, dropout=0.0, batch_first=True,
                                           norm_first=norm_first)  # fmt: skip
        self.body = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(D, K)

    def forward(self, x: Any) -> Any:
        h = self.embed(x)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1)
        return self.head(self.body(h)[:, 0])


def _encoder(norm_first: bool, pooling: str) -> Any:
    from test_import_attention import Encoder

    torch.manual_seed(0)
    module = Encoder(norm_first) if pooling == "mean" else ClassTokenEncoder(norm_first)
    return module.eval()


def _seed(name: str) -> Any:
    import architectures

    return architectures.load_weights(architectures.MODELS[name](), str(SEED / f"{name}.npz"))


MODELS: dict[str, tuple[Any, tuple[int, ...]]] = {
    "resnet20": (lambda: _seed("resnet20"), (1, 32, 32)),
    "vgg11_bn": (lambda: _seed("vgg11_bn"), (1, 32, 32)),
    "mobilenetv2_tiny": (lambda: _seed("mobilenetv2_tiny"), (1, 32, 32)),
    "vit_tiny": (lambda: _seed("vit_tiny"), (1, 32, 32)),
    "encoder_post_mean": (lambda: _encoder(False, "mean"), (T, F)),
    "encoder_pre_mean": (lambda: _encoder(True, "mean"), (T, F)),
    "encoder_post_cls": (lambda: _encoder(False, "cls"), (T, F)),
    "encoder_pre_cls": (lambda: _encoder(True, "cls"), (T, F)),
}
EXPORTERS = ["torchscript", "dynamo"]


def _export(module: Any, x: Any, exporter: str) -> Any:
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    f = io.BytesIO()
    fast = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # deprecations, the exporter's own notes
            if exporter == "dynamo":
                program = torch.onnx.export(module, (x,), dynamo=True, opset_version=18,
                                            verbose=False)  # fmt: skip
                return program.model_proto
            torch.onnx.export(module, (x,), f, dynamo=False, opset_version=17)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
    return onnx.load_from_string(f.getvalue())


def _float64_graph(proto: Any) -> Any:
    """A copy computing in float64: every float tensor and Cast widened."""
    from onnx import AttributeProto, TensorProto, numpy_helper

    m = copy.deepcopy(proto)
    g = m.graph
    floats = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)

    def widen(t: Any) -> None:
        if t.data_type in floats:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float64), t.name))

    for t in g.initializer:
        widen(t)
    for n in g.node:
        for a in n.attribute:
            if a.type == AttributeProto.TENSOR:
                widen(a.t)
            if n.op_type == "Cast" and a.name == "to" and a.i in floats:
                a.i = TensorProto.DOUBLE
    for v in (*g.input, *g.output, *g.value_info):
        if v.type.tensor_type.elem_type in floats:
            v.type.tensor_type.elem_type = TensorProto.DOUBLE
    return m


def _reference(proto: Any, x: np.ndarray) -> np.ndarray:
    from onnx.reference import ReferenceEvaluator
    from onnx.reference.op_run import OpRun

    verf = np.vectorize(math.erf, otypes=[np.float64])

    class Erf(OpRun):
        op_domain = ""

        def _run(self, v: np.ndarray) -> tuple[np.ndarray]:
            return (verf(v).astype(v.dtype),)

    m = _float64_graph(proto)
    out = ReferenceEvaluator(m, new_ops=[Erf]).run(None, {m.graph.input[0].name: x})
    return np.asarray(out[0])


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _inputs(shape: tuple[int, ...], n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, (n, *shape)) if len(shape) == 3 else rng.normal(size=(n, *shape))


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(MODELS))
def test_float64_export_matches_graph_to_1e12(name: str, exporter: str) -> None:
    make, shape = MODELS[name]
    module = make().double()
    x = _inputs(shape, 2, 0)
    proto = _export(module, torch.from_numpy(x), exporter)
    notes: list[str] = []
    model = from_onnx(proto, notes=notes)
    got = model.forward(x, fperr.Exact())
    rel = _rel(got, _reference(proto, x))
    with torch.no_grad():
        to_torch = _rel(got, module(torch.from_numpy(x)).numpy())
    print(f"{name} {exporter} float64 export: graph {rel:.2e}, torch {to_torch:.2e}")
    assert rel <= 1e-12
    assert to_torch <= 1e-10
    if "resnet" in name or "vgg" in name or "mobilenet" in name:  # BatchNorm folded: said so
        assert notes and "BatchNorm folded" in notes[0]
    else:
        assert not notes


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(MODELS))
def test_float32_export_distance_to_torch(name: str, exporter: str) -> None:
    make, shape = MODELS[name]
    module = make()
    proto = _export(module, torch.zeros(2, *shape), exporter)
    model = from_onnx(proto)
    x = _inputs(shape, 3, 1)  # another batch size than the export's (the graph's is 2)
    got = model.forward(x, fperr.Exact())
    with torch.no_grad():
        to_torch = _rel(got, copy.deepcopy(module).double()(torch.from_numpy(x)).numpy())
    rel = _rel(got[:2], _reference(proto, x[:2]))
    print(f"{name} {exporter} float32 export: torch {to_torch:.2e}, graph {rel:.2e}")
    assert to_torch < 1e-5
    # the graph's float32 sqrt 2 in GELU (the import computes the exact GELU): ~2e-9
    assert rel <= (1e-8 if "vit" in name else 1e-12)


def test_batchnorm_kept_as_a_node_is_imported_as_batchnorm() -> None:
    module = _seed("vgg11_bn")
    x = torch.zeros(2, 1, 32, 32)
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (x,), f, dynamo=False, do_constant_folding=False)
    notes: list[str] = []
    model = from_onnx(onnx.load_from_string(f.getvalue()), notes=notes)
    assert [la.type for la in model.layers].count("batchnorm") == 8 and not notes
