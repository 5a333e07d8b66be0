"""In-place writes in ``torch.fx`` graphs: refuse those the chain import would misread.

An fx graph names values, not storage.  After ``out = torch.relu_(h)`` the
storage of ``h`` holds relu(h), so a later read of ``h`` (or of a view of it,
``h.view(...)`` made before the write) sees relu(h), while the graph still
calls it ``h``: ``out + h`` is relu(h) + relu(h) in torch and h + relu(h) in
a value-level import.  A write is harmless when nothing reads the old value
afterwards, as in ``nn.Sequential(..., nn.ReLU(inplace=True), ...)``.

A later read of the written value itself is redirected to the write (it reads
what the write holds).  Storage classes are the unions of values joined by ops
whose result may share its input's storage (views, identities, the in-place
ops themselves); every other value of the written class made before the
write is stale, and a node after the write that reads a stale value is
refused, naming the write and the read.  Over-approximating the views only
refuses more.
"""

from __future__ import annotations

import inspect
import operator
from collections.abc import Callable
from typing import Any

from ..errors import SpecError

# results that may share storage with their first argument (torch returns a view or `self`)
_VIEW_METHODS = frozenset({
    "view", "view_as", "reshape", "reshape_as", "flatten", "unflatten", "contiguous", "detach",
    "squeeze", "unsqueeze", "expand", "expand_as", "transpose", "permute", "t", "narrow",
    "select", "unfold", "as_strided", "__getitem__", "to", "type", "type_as", "float",
    "double", "requires_grad_", "movedim", "swapaxes", "chunk", "split", "unbind",
})  # fmt: skip
_VIEW_FUNCTIONS = frozenset({
    "flatten", "reshape", "squeeze", "unsqueeze", "transpose", "permute", "t", "narrow",
    "select", "detach", "getitem", "getattr", "movedim", "swapaxes", "chunk", "split",
    "unbind", "as_strided", "unflatten",
    # dropout in eval mode returns its input; in training mode the import refuses it
    "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
})  # fmt: skip
_VIEW_MODULES = frozenset({
    "Identity", "Flatten", "Unflatten", "Dropout", "Dropout1d", "Dropout2d", "Dropout3d",
    "AlphaDropout", "FeatureAlphaDropout",
})  # fmt: skip
_INPLACE_OPERATORS = frozenset({
    operator.iadd, operator.isub, operator.imul, operator.itruediv, operator.ifloordiv,
    operator.imod, operator.ipow, operator.imatmul, operator.iand, operator.ior, operator.ixor,
    operator.ilshift, operator.irshift,
})  # fmt: skip


def _fn_name(target: Any) -> str:
    return str(getattr(target, "__name__", ""))


def _bound_arg(node: Any, key: str) -> Any:
    """Argument ``key`` of a call_function node, positional or keyword (None if absent)."""
    if key in node.kwargs:
        return node.kwargs[key]
    try:
        sig = inspect.signature(node.target)
    except (TypeError, ValueError):  # builtins without a signature
        return None
    try:
        return sig.bind_partial(*node.args, **node.kwargs).arguments.get(key)
    except TypeError:
        return None


def _is_dropout(name: str) -> bool:
    return "dropout" in name.lower()


def written(gm: Any, node: Any) -> Any | None:
    """The fx value node ``node`` writes in place, or None."""
    if not node.args or not hasattr(node.args[0], "op"):
        return None
    x = node.args[0]
    if node.op == "call_method":
        t = str(node.target)
        return x if t.endswith("_") and not t.startswith("__") and t != "requires_grad_" else None
    if node.op == "call_function":
        name = _fn_name(node.target)
        if node.target in _INPLACE_OPERATORS:
            return x
        if _is_dropout(name):  # the import refuses training-mode dropout; eval does not write
            return None
        if name.endswith("_") and not name.startswith("_"):
            return x  # torch.relu_, F.relu_, F.leaky_relu_, ...
        return x if _bound_arg(node, "inplace") is True else None
    if node.op == "call_module":
        mod = gm.get_submodule(str(node.target))
        if _is_dropout(type(mod).__name__):
            return None
        return x if getattr(mod, "inplace", False) is True else None
    return None


def _view_source(gm: Any, node: Any) -> Any | None:
    """The value whose storage ``node``'s result may share, or None."""
    if not node.args or not hasattr(node.args[0], "op"):
        return None
    x = node.args[0]
    if node.op == "call_method" and str(node.target) in _VIEW_METHODS:
        return x
    if node.op == "call_function" and _fn_name(node.target) in _VIEW_FUNCTIONS:
        return x
    if node.op == "call_module":
        if type(gm.get_submodule(str(node.target))).__name__ in _VIEW_MODULES:
            return x
    return None


class _Classes:
    """Union-find over fx nodes: the storage classes."""

    def __init__(self) -> None:
        self.parent: dict[Any, Any] = {}

    def find(self, a: Any) -> Any:
        self.parent.setdefault(a, a)
        while self.parent[a] is not a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: Any, b: Any) -> None:
        self.parent[self.find(a)] = self.find(b)


def resolve_writes(
    gm: Any,
    nodes: list[Any],
    label: Callable[[Any], str],
    shape_query: Callable[[Any], bool],
) -> dict[tuple[Any, Any], Any]:
    """Reads of overwritten values, redirected: ``{(reader, value): value read}``.

    A read, after ``w = relu_(h)``, of ``h`` itself (or of an earlier write's
    result that ``w`` overwrote) reads what ``w`` holds: it is redirected to
    ``w``, exactly.  A read of any other value sharing the storage (a view of
    ``h`` made before ``w``, the base of a view that ``w`` wrote) is refused
    with a SpecError naming the write and the read.

    ``nodes``: the fx nodes in program order; ``label``: how to name a node;
    ``shape_query``: nodes that read only a shape (``x.size(0)``), not values.
    """
    writes, latest, classes, sub = _track_writes(gm, nodes)
    _refuse_stale_reads(nodes, writes, latest, classes, label, shape_query)
    return sub


def _track_writes(
    gm: Any, nodes: list[Any]
) -> tuple[list[tuple[Any, Any]], dict[Any, Any], _Classes, dict[tuple[Any, Any], Any]]:
    """One pass in program order: the in-place writes ``(w, value it overwrote)``,
    ``latest`` (value -> the write that overwrote it), the storage classes (views and
    writes share their source's) and the redirected reads."""
    classes = _Classes()
    latest: dict[Any, Any] = {}
    sub: dict[tuple[Any, Any], Any] = {}
    writes: list[tuple[Any, Any]] = []

    def current(a: Any) -> Any:
        while a in latest:
            a = latest[a]
        return a

    for u in nodes:
        for a in u.all_input_nodes:
            if current(a) is not a:
                sub[(u, a)] = current(a)
        if u.op not in ("call_method", "call_function", "call_module"):
            continue
        src = _view_source(gm, u)
        if src is not None:
            classes.union(u, src)
        target = written(gm, u)
        if target is not None:
            target = current(target)
            classes.union(u, target)
            latest[target] = u
            writes.append((u, target))
    return writes, latest, classes, sub


def _refuse_stale_reads(
    nodes: list[Any],
    writes: list[tuple[Any, Any]],
    latest: dict[Any, Any],
    classes: _Classes,
    label: Callable[[Any], str],
    shape_query: Callable[[Any], bool],
) -> None:
    """A SpecError for the first read, after a write ``w``, of a value that shares
    ``w``'s storage but is not on ``w``'s chain of writes (so not redirected to it)."""
    pos = {n: i for i, n in enumerate(nodes)}

    def path(a: Any) -> list[Any]:
        out = [a]
        while out[-1] in latest:
            out.append(latest[out[-1]])
        return out

    for w, target in writes:
        root = classes.find(target)
        stale = {a for a in nodes if pos[a] < pos[w] and classes.find(a) is root
                 and w not in path(a)}  # fmt: skip
        for u in nodes[pos[w] + 1 :]:
            if shape_query(u):
                continue
            for a in u.all_input_nodes:
                if a in stale:
                    raise SpecError(
                        f"{label(w)} writes in place to the storage of {_describe(a, label)}, "
                        f"which {_describe(u, label)} reads afterwards (torch then computes "
                        "with the overwritten value); use the out-of-place form"
                    )


def _describe(n: Any, label: Callable[[Any], str]) -> str:
    if n.op == "placeholder":
        return "the model input"
    if n.op == "output":
        return "the model output"
    if n.op == "get_attr":
        return f"the parameter {str(n.target)!r}"
    return label(n)
