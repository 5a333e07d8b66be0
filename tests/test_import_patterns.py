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
