"""The torch importer's leaf-module table comes from the operators' import patterns
(each operator's ``torch_module_classes`` and ``from_torch_module``): every class an
operator declares goes to that operator, and every torch.nn class goes where the
hand-written table that these patterns replaced sent it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from fperr.operators import REGISTRY, OperatorUnsupported

torch = pytest.importorskip("torch")
nn = torch.nn

from fperr.importers.from_torch import _mod_identity, _module_converters  # noqa: E402

# The table before the patterns moved into the operators, in its order: (torch.nn class,
# exact, a registered type of the operator that converts it; None: nn.Identity, no operator).
_ACTIVATIONS = ("ReLU", "ReLU6", "Tanh", "Sigmoid", "SiLU", "Hardswish", "Hardsigmoid")
_DROPOUTS = ("Dropout", "Dropout1d", "Dropout2d", "AlphaDropout")
OLD_TABLE: list[tuple[str, bool, str | None]] = [
    ("Linear", False, "dense"),
    ("Conv2d", True, "conv2d"),
    ("MaxPool2d", False, "maxpool2d"),
    ("AvgPool2d", False, "avgpool2d"),
    ("AdaptiveAvgPool2d", False, "avgpool2d"),
    ("Flatten", False, "flatten"),
    ("Unflatten", False, "flatten"),
    *((name, True, "relu") for name in _ACTIVATIONS),
    ("ELU", True, "elu"),
    ("Hardtanh", True, "relu6"),
    ("LeakyReLU", False, "leaky_relu"),
    ("GELU", False, "gelu"),
    ("Softmax", False, "softmax"),
    ("BatchNorm1d", True, "batchnorm"),
    ("BatchNorm2d", True, "batchnorm"),
    ("LayerNorm", False, "layernorm"),
    ("RMSNorm", False, "rmsnorm"),
    *((name, True, "dropout") for name in _DROPOUTS),
    ("Identity", False, None),
    ("Embedding", True, "embedding"),
]

Entry = tuple[type, bool, Callable[[Any], Any]]


def _old_entries() -> list[Entry]:
    return [(getattr(nn, name), exact, _mod_identity if op is None else
             REGISTRY[op].from_torch_module) for name, exact, op in OLD_TABLE]  # fmt: skip


def _chosen(table: Sequence[Entry], kind: type) -> Callable[[Any], Any] | None:
    """The converter a module of class ``kind`` gets: the first entry that matches
    (the rule of from_torch._torch_module)."""
    for cls, exact, convert in table:
        if (kind is cls) if exact else issubclass(kind, cls):
            return convert
    return None


def _operators() -> list[type]:
    return list(dict.fromkeys(REGISTRY.values()))


def test_declared_classes_go_to_their_operator() -> None:
    table = _module_converters()
    declared = [name for op in _operators() for name, _ in op.torch_module_classes]
    assert len(declared) == len(set(declared)), "a torch.nn class declared twice"
    for op in _operators():
        for name, _ in op.torch_module_classes:
            assert _chosen(table, getattr(nn, name)) == op.from_torch_module, name
    assert _chosen(table, nn.Identity) == _mod_identity


def test_old_table_entries_kept() -> None:
    """Every entry of the old table, exact flag included, is in the new one."""
    new = set(_module_converters())
    missing = [e for e in _old_entries() if e not in new]
    assert not missing


def _torch_nn_classes() -> list[type]:
    """Every nn.Module class in torch.nn, and a user subclass of each class the old
    table names (isinstance entries take it, exact ones do not)."""
    classes = [c for c in vars(nn).values() if isinstance(c, type) and issubclass(c, nn.Module)]
    subs = [type(f"My{name}", (getattr(nn, name),), {}) for name, _, _ in OLD_TABLE]
    return classes + subs


def test_every_class_converts_as_before() -> None:
    old, new = _old_entries(), _module_converters()
    kinds = _torch_nn_classes()
    assert len(kinds) > 100  # torch.nn's classes were found
    changed = [k.__name__ for k in kinds
               if _chosen(old, k) is not None and _chosen(new, k) != _chosen(old, k)]  # fmt: skip
    assert not changed
    taken = sum(_chosen(old, k) is not None for k in kinds)
    assert taken >= len(OLD_TABLE)  # the check compared real choices


def test_hardtanh_and_relu6_each_their_own() -> None:
    """ReLU6 subclasses Hardtanh: ReLU6 is relu6 by name; Hardtanh only to [0, 6]."""
    from fperr.importers.graph import _Unsupported

    act = REGISTRY["relu"]
    for mod in (nn.ReLU6(), nn.Hardtanh(0.0, 6.0)):
        build, hint, elementwise = act.from_torch_module(mod)
        (layer,) = build((3,))
        assert (layer.type, hint, elementwise) == ("relu6", None, True)
    with pytest.raises(_Unsupported):
        act.from_torch_module(nn.Hardtanh())


def test_operator_without_patterns_refuses() -> None:
    assert REGISTRY["add"].torch_module_classes == ()
    with pytest.raises(OperatorUnsupported, match="imports no torch.nn module"):
        REGISTRY["add"].from_torch_module(nn.Identity())


# -- torch.fx calls and torch.export aten ops ---------------------------------------------------
# The fx and aten tables before the patterns moved into the operators: (key, a registered type
# of the operator whose from_fx / from_aten now converts it; or the name of the importer's
# converter that stays, for keys that make several operators or none).  Function targets as
# dotted names (F.relu_ is torch.relu_, one object).
_F = "torch.nn.functional."
OLD_FX_FUNCTIONS: list[tuple[str, str]] = [
    *((name, "relu") for name in (
        f"{_F}relu", "torch.relu", "torch.relu_", f"{_F}relu6", f"{_F}hardtanh", f"{_F}hardtanh_",
        "torch.clamp", "torch.clip", "torch.clamp_", "torch.clip_", "torch.tanh", f"{_F}tanh",
        "torch.tanh_", "torch.sigmoid", f"{_F}sigmoid", "torch.sigmoid_", f"{_F}gelu",
        f"{_F}silu", f"{_F}hardswish", f"{_F}hardsigmoid", f"{_F}elu", f"{_F}elu_",
        f"{_F}leaky_relu", f"{_F}leaky_relu_")),
    (f"{_F}softmax", "softmax"),
    ("torch.softmax", "softmax"),
    ("torch.flatten", "flatten"),
    ("torch.unflatten", "reshape"),
    *((name, "dropout") for name in (
        f"{_F}dropout", f"{_F}dropout1d", f"{_F}dropout2d", f"{_F}dropout3d",
        f"{_F}alpha_dropout", f"{_F}feature_alpha_dropout", "torch.dropout")),
    (f"{_F}batch_norm", "batchnorm"),
    (f"{_F}rms_norm", "rmsnorm"),
    ("torch.rms_norm", "rmsnorm"),
    (f"{_F}max_pool2d", "maxpool2d"),
    (f"{_F}avg_pool2d", "maxpool2d"),
    (f"{_F}adaptive_avg_pool2d", "maxpool2d"),
    (f"{_F}linear", "dense"),
    (f"{_F}conv2d", "conv2d"),
    ("operator.mul", "mul"),
    ("operator.imul", "mul"),
    ("torch.mul", "mul"),
    ("torch.mean", "mean"),
    ("torch.sum", "sum"),
    ("torch.cat", "concat"),
    ("torch.concat", "concat"),
    ("torch.transpose", "permute"),
    ("torch.swapaxes", "permute"),
    ("torch.permute", "permute"),
    ("operator.matmul", "matmul"),
    ("torch.matmul", "matmul"),
    ("torch.bmm", "matmul"),
    ("operator.truediv", "scale"),
    ("torch.div", "scale"),
    ("operator.add", "_call_add"),
    ("operator.iadd", "_call_add"),
    ("torch.add", "_call_add"),
    ("torch.reshape", "_call_reshape"),
    ("torch.split", "_call_split"),
    ("torch.chunk", "_call_split"),
    ("operator.getitem", "_call_getitem"),
    ("builtins.getattr", "_call_getattr"),
    (f"{_F}scaled_dot_product_attention", "_call_sdpa"),
]  # fmt: skip
OLD_FX_METHODS: list[tuple[str, str]] = [
    *((name, "relu") for name in ("relu", "relu_", "tanh", "tanh_", "sigmoid", "sigmoid_",
                                  "clamp", "clamp_", "clip", "clip_")),
    ("softmax", "softmax"),
    ("flatten", "flatten"),
    ("unflatten", "reshape"),
    ("mul", "mul"),
    ("mul_", "mul"),
    ("mean", "mean"),
    ("sum", "sum"),
    ("transpose", "permute"),
    ("swapaxes", "permute"),
    ("permute", "permute"),
    ("matmul", "matmul"),
    ("div", "scale"),
    ("contiguous", "_call_identity"),
    ("clone", "_call_identity"),
    ("detach", "_call_identity"),
    ("view", "_method_reshape"),
    ("reshape", "_method_reshape"),
    ("add", "_method_add"),
    ("add_", "_method_add"),
    ("split", "_call_split"),
    ("chunk", "_call_split"),
]  # fmt: skip
OLD_ATEN: list[tuple[str, str]] = [
    ("aten.conv2d", "conv2d"),
    ("aten.linear", "dense"),
    ("aten.batch_norm", "batchnorm"),
    ("aten._native_batch_norm_legit_no_training", "batchnorm"),
    *((f"aten.{k}", "relu") for k in ("hardtanh", "relu6", "gelu", "elu", "leaky_relu", "relu",
                                      "sigmoid", "tanh", "silu", "hardswish", "hardsigmoid")),
    ("aten.softmax", "softmax"),
    ("aten._softmax", "softmax"),
    ("aten.layer_norm", "layernorm"),
    ("aten.rms_norm", "rmsnorm"),
    ("aten.max_pool2d", "maxpool2d"),
    ("aten.avg_pool2d", "maxpool2d"),
    ("aten.adaptive_avg_pool2d", "maxpool2d"),
    ("aten.flatten", "flatten"),
    ("aten.transpose", "permute"),
    ("aten.swapaxes", "permute"),
    ("aten.permute", "permute"),
    ("aten.mT", "permute"),
    ("aten.cat", "concat"),
    ("aten.mean", "mean"),
    ("aten.matmul", "matmul"),
    ("aten.bmm", "matmul"),
    ("aten.div", "scale"),
    ("getitem", "_getitem"),
    ("aten.dropout", "_dropout"),  # eval mode: no layer (fx's dropouts build the operator)
    ("aten.expand", "_expand"),
    ("aten.add", "_add"),
    ("aten.select", "_select"),
    ("aten.slice", "_slice"),
    ("aten.mul", "_mul"),
    ("aten.scaled_dot_product_attention", "_sdpa"),
    *((f"aten.{k}", "_reshape") for k in ("view", "reshape", "_unsafe_view", "unflatten",
                                          "squeeze", "unsqueeze")),
    *((f"aten.{k}", "_identity") for k in ("contiguous", "clone", "alias", "detach")),
]  # fmt: skip


def _resolve(dotted: str) -> Any:
    import builtins
    import importlib

    module, _, attr = dotted.rpartition(".")
    return getattr(builtins if module == "builtins" else importlib.import_module(module), attr)


def _module(name: str) -> Any:
    """An importer module (``fperr.importers.from_torch`` is also a function's name)."""
    import importlib

    return importlib.import_module(f"fperr.importers.{name}")


def _check_table(table: dict[Any, Any], old: list[tuple[str, str]], key: Callable[[str], Any],
                 declared: Callable[[type], tuple[str, ...]], method: str, home: Any) -> None:
    """Each old key maps to the declaring operator's classmethod, or to its old function."""
    assert len(old) == len({key(k) for k, _ in old})  # the old table's keys, each once
    assert set(table) == {key(k) for k, _ in old}  # no key lost, none added
    for k, who in old:
        if who.startswith("_"):
            assert table[key(k)] is getattr(home, who), k
        else:
            cls = REGISTRY[who]
            assert key(k) in {key(d) for d in declared(cls)}, k
            assert table[key(k)] == getattr(cls, method), k


def test_fx_functions_convert_as_before() -> None:
    from_torch = _module("from_torch")

    _check_table(from_torch._function_converters(), OLD_FX_FUNCTIONS, _resolve,
                 lambda c: c.fx_functions, "from_fx", from_torch)  # fmt: skip
    assert len(OLD_FX_FUNCTIONS) == 67


def test_fx_methods_convert_as_before() -> None:
    from_torch = _module("from_torch")

    _check_table(from_torch._METHODS, OLD_FX_METHODS, str, lambda c: c.fx_methods, "from_fx",
                 from_torch)  # fmt: skip
    assert from_torch._method_converters() == from_torch._METHODS
    assert len(OLD_FX_METHODS) == 31


def test_aten_ops_convert_as_before() -> None:
    torch_export = _module("torch_export")

    _check_table(torch_export._converters(), OLD_ATEN, str, lambda c: c.aten_ops, "from_aten",
                 torch_export)  # fmt: skip
    assert len(OLD_ATEN) == 50


def test_fx_and_aten_keys_declared_once() -> None:
    """No key is declared by two operators, nor by one and the importer's own entries."""
    fns = [id(_resolve(n)) for op in _operators() for n in op.fx_functions]
    methods = [n for op in _operators() for n in op.fx_methods]
    aten = [n for op in _operators() for n in op.aten_ops]
    for declared in (fns, methods, aten):
        assert declared and len(declared) == len(set(declared))
    stay_fn = {id(_resolve(k)) for k, who in OLD_FX_FUNCTIONS if who.startswith("_")}
    assert not stay_fn & set(fns)
    assert not {k for k, who in OLD_FX_METHODS if who.startswith("_")} & set(methods)
    assert not {k for k, who in OLD_ATEN if who.startswith("_")} & set(aten)


def test_key_declared_twice_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """The table builders raise on a key declared twice (a programming error)."""
    from_torch = _module("from_torch")
    torch_export = _module("torch_export")

    softmax = REGISTRY["softmax"]
    monkeypatch.setattr(softmax, "fx_functions", (*softmax.fx_functions, "torch.relu"))
    with pytest.raises(ValueError, match="'torch.relu' declared twice"):
        from_torch._function_converters.__wrapped__()
    monkeypatch.setattr(softmax, "fx_methods", ("softmax", "view"))
    with pytest.raises(ValueError, match="'view' declared twice"):
        from_torch._method_converters()
    monkeypatch.setattr(softmax, "aten_ops", ("aten.softmax", "aten.relu"))
    with pytest.raises(ValueError, match="'aten.relu' declared twice"):
        torch_export._converters()


def test_operator_without_fx_or_aten_patterns_refuses() -> None:
    add = REGISTRY["add"]
    assert (add.fx_functions, add.fx_methods, add.aten_ops) == ((), (), ())
    with pytest.raises(OperatorUnsupported, match="imports no torch.fx call"):
        add.from_fx(None, "x", lambda a: None)
    with pytest.raises(OperatorUnsupported, match="imports no aten op"):
        add.from_aten(None, "x", None)
