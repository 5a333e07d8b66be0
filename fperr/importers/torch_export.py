"""from_torch(..., tracer="export"): ``torch.export``'s aten graph to the fperr IR.

``torch.export.export`` traces the module in eval mode on an example batch of
``BATCH`` inputs of ``input_shape`` (zeros; the trace is shape-only) and emits
aten ops with every value's shape (``node.meta["val"]``).  Each value must keep
the batch axis first with ``BATCH`` entries, so every op reads per input and a
view or reshape is the reshape of one input to the output's shape without its
first axis (row-major: a reshape whose result keeps BATCH first never mixes
inputs).  The ops map onto the converters of the fx front end:

- ``aten.conv2d``, ``aten.linear``, ``aten.batch_norm`` /
  ``aten._native_batch_norm_legit_no_training`` (running statistics; item 0),
  ``aten.layer_norm``, ``aten.rms_norm``, the activations, ``aten.softmax``,
  pools, ``aten.mean.dim``, ``aten.add.Tensor`` (two values, or a value and a
  parameter: a constant node), ``aten.cat`` (a class token ``p.expand(N, ...)``),
  ``aten.select`` / ``aten.slice`` on per-input axes, ``aten.view`` /
  ``reshape`` / ``flatten`` / ``unflatten`` / ``(un)squeeze``,
  ``aten.transpose`` / ``permute`` (the ``permute`` operator), ``aten.matmul`` /
  ``bmm`` (the bilinear ``matmul``), ``aten.mul`` / ``div`` by a constant (the
  ``scale`` operator; division by powers of two only), identities
  (``contiguous``, ``clone``, eval-mode ``dropout``);
- ``aten.scaled_dot_product_attention`` without mask, dropout or causality, in
  its math form (:mod:`.torch_layout` says where it scales and why);
- ``nn.MultiheadAttention``: its batch-first forward transposes the batch axis
  away (``(T, N, D)``, heads merged into the batch: ``(N H, T, dh)``), which no
  per-input op can express, so the nodes that ``nn_module_stack`` assigns to one
  call of the module are imported together, as the fx front end imports the
  module (:func:`.torch_attention.mha_ops`), after checking that they read one
  value (q = k = v) and the module's own parameters, write one value, and are
  among the ops its mask-free eval forward emits.

Anything else is refused in one line that counts the unsupported op kinds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from typing import Any

from ..errors import SpecError
from ..layers import Shape
from ..model import Model
from ..operators import REGISTRY
from .builders import _const, _flatten_layers
from .graph import Array, Build, _Graph, _Op, _to_model, _Unsupported
from .torch_attention import _Builder, mha_ops
from .torch_layout import (
    power_of_two,
    sdpa_factor,
    sdpa_ops,
    sdpa_options,
)

BATCH = 3  # the example batch: odd, so that it rarely equals a per-input size


class _Ctx:
    """What converters read: parameters by placeholder, per-input shapes, class tokens."""

    def __init__(self, params: dict[Any, Array]) -> None:
        self.params = params
        self.expanded: dict[Any, Array] = {}  # p.expand(N, ...) of a parameter p (1, ...)

    def param(self, a: Any) -> Array | None:
        return self.params.get(a)

    def const(self, a: Any) -> Array | None:
        """A parameter read directly or through ``expand`` to the batch."""
        p = self.params.get(a)
        return self.expanded.get(a) if p is None else p

    def shape(self, n: Any) -> Shape:
        """Per-input shape of an fx value; _Unsupported if its first axis is not the batch."""
        val = getattr(n, "meta", {}).get("val")
        if val is None or not hasattr(val, "shape"):
            raise _Unsupported("a value without a tensor shape")
        full = tuple(int(d) for d in val.shape)
        if not full or full[0] != BATCH:
            raise _Unsupported(f"result of shape {list(full)} does not keep the batch axis first")
        return full[1:]


_Conv = Callable[[Any, str, _Ctx], list[_Op]]


def _a(n: Any, i: int, key: str, default: Any = None) -> Any:
    if len(n.args) > i:
        return n.args[i]
    return n.kwargs.get(key, default)


def _computed(n: Any, ctx: _Ctx) -> Any:
    x = n.args[0]
    if ctx.const(x) is not None or not hasattr(x, "op"):
        raise _Unsupported("its input is a parameter or a constant")
    return x


def _unary(n: Any, label: str, ctx: _Ctx, build: Build, ew: bool = False) -> list[_Op]:
    return [_Op(label, (_computed(n, ctx),), n, build, elementwise=ew)]


def _need(ctx: _Ctx, a: Any, what: str) -> Array:
    p = ctx.param(a)
    if p is None:
        raise _Unsupported(f"{what} is not a parameter")
    return p


def _opt(ctx: _Ctx, a: Any, what: str) -> Array | None:
    return None if a is None else _need(ctx, a, what)


# -- converters of ops that are no one operator's (the rest: the operators' from_aten) -------
def _getitem(n: Any, label: str, ctx: _Ctx) -> list[_Op]:
    """Item 0 of a tuple-valued op (the batch norm's output)."""
    src, i = n.args
    if i != 0 or "batch_norm" not in str(getattr(src, "target", "")):
        raise _Unsupported(f"item {i} of {getattr(src, 'name', src)}")
    return [_Op(label, (src,), n, _const([]), elementwise=True)]


def _reshape(n: Any, label: str, ctx: _Ctx) -> list[_Op]:
    """view, reshape, unflatten, (un)squeeze: the per-input reshape to the result's shape."""
    new = ctx.shape(n)
    return _unary(n, label, ctx, lambda shape: _flatten_layers(shape, new))


def _identity(n: Any, label: str, ctx: _Ctx) -> list[_Op]:
    return _unary(n, label, ctx, _const([]), True)


def _dropout(n: Any, label: str, ctx: _Ctx) -> list[_Op]:
    if _a(n, 2, "train") and _a(n, 1, "p") != 0:
        raise _Unsupported("train=True (random also in eval mode)")
    return _identity(n, label, ctx)


def _expand(n: Any, label: str, ctx: _Ctx) -> list[_Op]:
    """``p.expand(N, ...)`` of a parameter p with a leading 1: a class token, read by
    cat or add as a constant; expanding a computed value is refused."""
    p = ctx.param(n.args[0])
    if p is None or p.ndim < 1 or p.shape[0] != 1:
        raise _Unsupported("expand of a computed value (broadcast)")
    full = ctx.shape(n)
    if p.shape[1:] != full:
        raise _Unsupported(f"expand of a parameter {list(p.shape)} to per-input {list(full)}")
    ctx.expanded[n] = p
    return []


def _add(n: Any, label: str, ctx: _Ctx) -> list[_Op]:
    from .from_torch import _constant

    x, y = n.args[0], n.args[1]
    if _a(n, 2, "alpha", 1) != 1:
        raise _Unsupported("add with alpha")
    if not (hasattr(x, "op") and hasattr(y, "op")):
        raise _Unsupported("add of a number")
    px, py = ctx.const(x), ctx.const(y)
    if px is not None and py is not None:
        raise _Unsupported("add of two parameters")
    if px is None and py is None:
        return [_Op(label, (x, y), n)]
    value, p = (y, px) if px is not None else (x, py)
    const = _constant(n, label, value, p, 0)
    return [const, _Op(label, (value, const.output), n)]


def _select(n: Any, label: str, ctx: _Ctx) -> list[_Op]:
    """x.select(dim, i) = x[:, ..., i] on a per-input axis."""
    from .from_torch import _index_layers

    nd = len(ctx.shape(n.args[0])) + 1
    dim = int(n.args[1])
    d = dim % nd if -nd <= dim < nd else 0
    if d == 0:
        raise _Unsupported("select on the batch axis")
    index = (slice(None),) * d + (int(n.args[2]),)
    return _unary(n, label, ctx, lambda shape: _index_layers(index, shape))


def _slice(n: Any, label: str, ctx: _Ctx) -> list[_Op]:
    from .from_torch import _index_layers

    nd = len(ctx.shape(n.args[0])) + 1
    dim = int(_a(n, 1, "dim", 0))
    d = dim % nd if -nd <= dim < nd else 0
    if d == 0 or _a(n, 4, "step", 1) != 1:
        raise _Unsupported("slice of the batch axis or with a step")
    index = (slice(None),) * d + (slice(_a(n, 2, "start"), _a(n, 3, "end")),)
    return _unary(n, label, ctx, lambda shape: _index_layers(index, shape))


def _scalar(n: Any, divide: bool) -> float:
    c = n.args[1]
    if hasattr(c, "op") or not isinstance(c, int | float) or isinstance(c, bool):
        raise _Unsupported("by a tensor")
    if divide and not power_of_two(c):
        raise _Unsupported(f"division by {c!r}: only by a power of two")
    return 1.0 / float(c) if divide else float(c)


def _mul(n: Any, label: str, ctx: _Ctx) -> list[_Op]:
    """x * c (the scale operator); x * y of two computed values (the mul operator)."""
    x, y = n.args[0], n.args[1]
    if hasattr(y, "op") and ctx.const(y) is None and ctx.const(x) is None and "mul" in REGISTRY:
        return [_Op(label, (x, y), n, merge=lambda shapes: REGISTRY["mul"]())]
    return _unary(n, label, ctx, _const([REGISTRY["scale"](_scalar(n, False))]))  # type: ignore[call-arg]


def _sdpa(n: Any, label: str, ctx: _Ctx) -> list[_Op]:
    q, k, v = n.args[:3]
    sdpa_options(_a(n, 3, "attn_mask"), _a(n, 4, "dropout_p", 0.0), _a(n, 5, "is_causal", False),
                 _a(n, 7, "enable_gqa", False))  # fmt: skip
    for t in (q, k, v):
        if ctx.const(t) is not None:
            raise _Unsupported("q, k or v is a parameter")
    factor = sdpa_factor(_a(n, 6, "scale"), ctx.shape(q)[-1])
    return sdpa_ops(label, q, k, v, n, factor)


def _converters() -> dict[str, _Conv]:
    """aten overload packets (``str(op.overloadpacket)``) -> converter: each registered
    operator's ``aten_ops`` to its ``from_aten``, then the ops that are no one operator's
    (add, mul: by their operands; select, slice, getitem, expand, reshapes: index and
    reshape machinery; identities and eval-mode dropout: no layer; SDPA: its
    decomposition); each op declared once (tests/test_import_patterns.py)."""
    table: dict[str, _Conv] = {}
    stay: dict[str, _Conv] = {
        "getitem": _getitem,
        "aten.dropout": _dropout,
        "aten.expand": _expand,
        "aten.add": _add,
        "aten.select": _select,
        "aten.slice": _slice,
        "aten.mul": _mul,
        "aten.scaled_dot_product_attention": _sdpa,
        **{f"aten.{name}": _reshape for name in ("view", "reshape", "_unsafe_view", "unflatten",
                                                 "squeeze", "unsqueeze")},
        **{f"aten.{name}": _identity for name in ("contiguous", "clone", "alias", "detach")},
    }  # fmt: skip
    declared = [(name, op.from_aten) for op in dict.fromkeys(REGISTRY.values())
                for name in op.aten_ops]  # fmt: skip
    for name, convert in [*declared, *stay.items()]:
        if name in table:  # pragma: no cover - a programming error
            raise ValueError(f"aten op {name!r} declared twice")
        table[name] = convert
    return table


def _kind(n: Any) -> str:
    packet = getattr(n.target, "overloadpacket", None)
    return str(packet) if packet is not None else getattr(n.target, "__name__", str(n.target))


# -- nn.MultiheadAttention: one call's nodes imported as the module ---------------------------
_MHA_KINDS = frozenset({
    "aten.transpose", "aten.linear", "aten.unflatten", "aten.unsqueeze", "aten.squeeze",
    "aten.contiguous", "aten.clone", "aten.select", "aten.view", "aten.reshape",
    "aten._unsafe_view", "aten.permute", "aten.scaled_dot_product_attention", "aten.mul",
    "aten.bmm", "aten.softmax", "aten._softmax", "aten.dropout", "aten.mean", "aten.div",
    "aten.expand",
})  # fmt: skip


def _mha_groups(module: Any, nodes: list[Any]) -> dict[Any, tuple[str, str]]:
    """node -> (call key, module path) of the outermost nn.MultiheadAttention call it is in."""
    from torch import nn

    out: dict[Any, tuple[str, str]] = {}
    for n in nodes:
        for key, (path, _) in (n.meta.get("nn_module_stack") or {}).items():
            try:
                mod = module.get_submodule(str(path))
            except AttributeError:
                continue
            if isinstance(mod, nn.MultiheadAttention):
                out[n] = (str(key), str(path))
                break
    return out


def _mha_ops(
    module: Any, path: str, members: list[Any], users: dict[Any, list[Any]], ctx: _Ctx,
    targets: dict[Any, str],
) -> list[_Op]:  # fmt: skip
    """The ops of one call of the attention module at ``path`` (its nodes ``members``)."""
    inside = set(members)
    kinds = Counter(_kind(m) for m in members)
    bad = sorted(k for k in kinds if k not in _MHA_KINDS)
    if bad:
        raise _Unsupported(f"ops {', '.join(bad)} (masks or options not imported)")
    reads = {a for m in members for a in m.all_input_nodes if a not in inside}
    own = {a for a in reads if targets.get(a, "").startswith(f"{path}.")}
    values = [a for a in reads - own if ctx.param(a) is None]
    if len(values) != 1 or len(reads - own) != 1:
        raise _Unsupported("reads a mask or q, k, v that differ (only self-attention)")
    outs = [m for m in members if any(u not in inside for u in users[m])]
    if len(outs) != 1:
        raise _Unsupported("the attention weights are read (only the output is imported)")
    sdpa = [m for m in members if _kind(m) == "aten.scaled_dot_product_attention"]
    for m in sdpa:
        sdpa_options(_a(m, 3, "attn_mask"), _a(m, 4, "dropout_p", 0.0), _a(m, 5, "is_causal"),
                     _a(m, 7, "enable_gqa"))  # fmt: skip
    for m in members:
        if _kind(m) == "aten.dropout" and _a(m, 2, "train") and _a(m, 1, "p") != 0:
            raise _Unsupported("dropout in training mode")
    b = _Builder(f"MultiheadAttention {path!r}")
    mha_ops(b, module.get_submodule(path), values[0], outs[0], need_weights=not sdpa)
    return b.ops


# -- the whole graph ----------------------------------------------------------------------------
def _export(module: Any, shape: Shape, name: str) -> Any:
    import torch

    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        return torch.export.export(module, (torch.zeros(BATCH, *shape),))
    except Exception as exc:  # export failures have many types
        text = str(exc).strip()
        first = text.splitlines()[0] if text else type(exc).__name__
        raise SpecError(f"cannot export {name} with torch.export: {first}") from None
    finally:
        for m, mode in modes:
            m.training = mode


def _parameters(ep: Any) -> tuple[dict[Any, Array], dict[Any, str]]:
    """Placeholder node -> float64 value and -> state name, for parameters, buffers
    and lifted constants."""
    from .from_torch import _np

    sig = ep.graph_signature
    names = {**sig.inputs_to_parameters, **sig.inputs_to_buffers,
             **getattr(sig, "inputs_to_lifted_tensor_constants", {})}  # fmt: skip
    tensors = {**ep.state_dict, **getattr(ep, "constants", {})}
    values: dict[Any, Array] = {}
    targets: dict[Any, str] = {}
    for n in ep.graph.nodes:
        if n.op == "placeholder" and n.name in names:
            t = tensors.get(names[n.name])
            if t is not None and hasattr(t, "detach"):
                a = _np(t)
                assert a is not None
                values[n] = a
                targets[n] = str(names[n.name])
    return values, targets


def refusal(bad: list[tuple[str, str]]) -> str:
    """One line: 'unsupported: 3 ops of 2 kinds: aten.foo (2: why), aten.bar (1); ...'."""
    counts = Counter(kind for kind, _ in bad)
    why: dict[str, str] = {}
    for kind, reason in bad:
        why.setdefault(kind, reason)
    parts = [f"{k} ({c}{': ' + why[k] if why[k] else ''})" for k, c in counts.most_common(8)]
    more = f", {len(counts) - 8} more kinds" if len(counts) > 8 else ""
    n, k = len(bad), len(counts)
    return (f"unsupported: {n} op{'s' * (n != 1)} of {k} kind{'s' * (k != 1)}: "
            f"{', '.join(parts)}{more}; the other ops convert (try tracer='fx')")  # fmt: skip


def export_model(module: Any, input_shape: Sequence[int] | None, name: str) -> Model:
    """The fperr model of ``module``'s ``torch.export`` graph (see the module docstring)."""
    if input_shape is None:
        raise SpecError("tracer='export' needs input_shape (torch.export traces an example input)")
    shape = tuple(int(d) for d in input_shape)
    ep = _export(module, shape, name)
    nodes = list(ep.graph.nodes)
    params, targets = _parameters(ep)
    inputs = [n for n in nodes if n.op == "placeholder" and n not in params]
    out_node = next(n for n in nodes if n.op == "output")
    outs = out_node.args[0]
    if len(inputs) != 1 or not isinstance(outs, list | tuple) or len(outs) != 1:
        raise SpecError(f"{name}: expected one tensor input and one tensor output")
    ops, bad = _convert(module, nodes, _Ctx(params), targets)
    if bad:
        raise SpecError(f"{name}: {refusal(bad)}")
    uses: Counter[Hashable] = Counter(v for op in ops for v in op.inputs)
    uses[outs[0]] += 1
    graph = _Graph(ops, inputs[0], outs[0], uses)
    for op in ops:
        for v in op.inputs:
            if v not in graph.pos:
                raise SpecError(f"{op.name}: reads {v}, which is not computed from the input")
    return _to_model(graph, [], shape, name)


def _convert(
    module: Any, nodes: list[Any], ctx: _Ctx, targets: dict[Any, str]
) -> tuple[list[_Op], list[tuple[str, str]]]:
    """The ops of the call nodes in order, and (kind, why) for each that does not convert."""
    table = _converters()
    groups = _mha_groups(module, nodes)
    users = {n: list(n.users) for n in nodes}
    done: set[str] = set()
    ops: list[_Op] = []
    bad: list[tuple[str, str]] = []
    for n in nodes:
        if n.op != "call_function":
            continue
        if n in groups:
            key, path = groups[n]
            if key not in done:
                done.add(key)
                members = [m for m in nodes if groups.get(m, ("",))[0] == key]
                try:
                    ops.extend(_mha_ops(module, path, members, users, ctx, targets))
                except _Unsupported as exc:
                    bad.append(("nn.MultiheadAttention", str(exc)))
            continue
        kind = _kind(n)
        convert = table.get(kind)
        try:
            if convert is None:
                raise _Unsupported("")
            new = convert(n, f"{kind} {n.name!r}", ctx)
            if new and hasattr(n.meta.get("val"), "shape"):
                ctx.shape(n)  # every value keeps the batch axis first
            ops.extend(new)
        except _Unsupported as exc:
            bad.append((kind, str(exc)))
        except SpecError as exc:  # a layer refusing its arguments
            bad.append((kind, str(exc)))
    return ops, bad
