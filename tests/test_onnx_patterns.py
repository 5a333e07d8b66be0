"""The ONNX importer's converter table comes from the operators' import patterns
(each operator's ``onnx_ops`` and ``from_onnx``) plus the converters of op types that
are no one operator's (:data:`fperr.importers.onnx_ops.CONVERTERS`): every op type of
the hand-written table that these patterns replaced still converts, by the operator
that produced its layers before, and no op type is declared twice."""

from __future__ import annotations

import pytest

from fperr.importers import onnx_ops
from fperr.importers.onnx_converter import converters
from fperr.operators import REGISTRY, OperatorUnsupported

# The table before the patterns moved into the operators: (ONNX op type, a registered type
# of the operator whose from_onnx now converts it; or the name of its converter that stays
# in onnx_ops, for op types that make several operators or none).
OLD_TABLE: list[tuple[str, str]] = [
    ("Cast", "cast"),
    ("CastLike", "cast_like"),
    *((t, "relu") for t in ("Relu", "Tanh", "Sigmoid", "LeakyRelu", "Elu", "HardSwish",
                            "HardSigmoid", "Clip", "Gelu")),
    ("Dropout", "dropout"),
    ("Add", "binary"),
    ("Sub", "binary"),
    ("Mul", "binary"),
    ("Div", "binary"),
    ("Gemm", "dense"),
    ("MatMul", "dense"),  # x W is dense/linear; x y (two activations) hands on to matmul_two
    ("Softmax", "softmax"),
    ("LayerNormalization", "layernorm"),
    ("RMSNormalization", "rmsnorm"),
    ("ReduceMean", "mean"),
    ("Concat", "concat"),
    ("Conv", "conv2d"),
    ("MaxPool", "maxpool2d"),
    ("AveragePool", "avgpool2d"),
    ("GlobalAveragePool", "mean"),  # a mean over H and W, as before
    ("BatchNormalization", "batchnorm"),
]  # fmt: skip
STAYED = {"cast", "cast_like", "binary"}


def _operators() -> list[type]:
    return list(dict.fromkeys(REGISTRY.values()))


def test_old_table_converts_as_before() -> None:
    """Each old op type maps to the declaring operator's from_onnx, or to its old function."""
    table = converters()
    for op_type, who in OLD_TABLE:
        if who in STAYED:
            assert table[op_type] is getattr(onnx_ops, who), op_type
            assert op_type in onnx_ops.CONVERTERS
        else:
            cls = REGISTRY[who]
            assert op_type in cls.onnx_ops, op_type
            assert table[op_type] == cls.from_onnx, op_type
            assert op_type not in onnx_ops.CONVERTERS, op_type


def test_table_is_the_old_one() -> None:
    """No op type lost or gained; no converter body left behind in onnx_ops."""
    assert sorted(converters()) == sorted(t for t, _ in OLD_TABLE)
    assert len(OLD_TABLE) == len({t for t, _ in OLD_TABLE}) == 28
    moved = ("activation", "dropout", "gemm", "matmul", "softmax", "norm", "reduce_mean",
             "concat", "conv", "pool", "batch_norm")  # fmt: skip
    assert not [f for f in moved if hasattr(onnx_ops, f)]


def test_no_op_type_declared_twice() -> None:
    declared = [t for op in _operators() for t in op.onnx_ops]
    declared += list(onnx_ops.CONVERTERS)
    assert len(declared) == len(set(declared))
    # each class declares only its own (a subclass inherits none it would double)
    for op in _operators():
        owners = [c for c in _operators() if c is not op and set(c.onnx_ops) & set(op.onnx_ops)]
        assert not owners, op.__name__


def test_operator_without_onnx_ops_refuses() -> None:
    add = REGISTRY["add"]
    assert add.onnx_ops == ()
    with pytest.raises(OperatorUnsupported, match="imports no ONNX op"):
        add.from_onnx(None, None, None)  # type: ignore[arg-type]


onnx = pytest.importorskip("onnx")


def _one_node_model(node: object, shape: list[int], out: list[int], inits: list[object]) -> object:
    from onnx import TensorProto, helper

    g = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, out)], initializer=inits,
    )  # fmt: skip
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def test_moved_converters_import_and_compute() -> None:
    """One-node graphs through the table: the layer types come out as before, and the
    imported model's output equals numpy's (an independent float64 oracle)."""
    import numpy as np
    from onnx import helper, numpy_helper

    from fperr.importers import from_onnx

    rng = np.random.default_rng(0)
    w = rng.normal(size=(4, 3))
    x = rng.normal(size=(2, 4))
    cases = [
        (helper.make_node("MatMul", ["x", "w"], ["y"]), [2, 4], [2, 3],
         [numpy_helper.from_array(w.astype(np.float32), "w")], "dense",
         x @ w.astype(np.float32).astype(np.float64)),
        (helper.make_node("Relu", ["x"], ["y"]), [2, 4], [2, 4], [], "relu", np.maximum(x, 0)),
        (helper.make_node("Softmax", ["x"], ["y"], axis=-1), [2, 4], [2, 4], [], "softmax",
         np.exp(x) / np.exp(x).sum(-1, keepdims=True)),
    ]  # fmt: skip
    for node, shape, out, inits, kind, want in cases:
        model = from_onnx(_one_node_model(node, shape, out, inits))
        assert [layer.type for layer in model.layers] == [kind]
        got = model.forward(x)
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
