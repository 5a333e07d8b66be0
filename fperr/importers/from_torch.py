"""from_torch: PyTorch modules (``torch.fx`` graphs) to the fperr IR; torch is imported lazily."""

from __future__ import annotations

import copy
import functools
import importlib
import inspect
import operator
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SpecError
from ..layers import (
    RMS_EPS_DEFAULT,
    Activation,
    BatchNorm,
    Dense,
    Dropout,
    Flatten,
    Layer,
    Pool2d,
    Reshape,
    Shape,
)
from ..model import Model
from ..operators import REGISTRY
from .builders import _const, _flatten_layers, _resolve
from .graph import Array, Build, _entry, _Graph, _Op, _to_model, _Unsupported
from .torch_alias import resolve_writes
from .torch_attention import attention_leaves, attention_ops
from .torch_fidelity import check_against_torch
from .torch_layout import (
    annotate_static,
    sdpa_factor,
    sdpa_ops,
    sdpa_options,
    static_int,
    transpose_build,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch


# =============================================================================================
# PyTorch
# =============================================================================================
def _np(t: torch.Tensor | None) -> Array | None:
    if t is None:
        return None
    import torch

    return np.array(t.detach().to(device="cpu", dtype=torch.float64).numpy(), dtype=np.float64)


def _need(t: torch.Tensor | None, what: str) -> Array:
    a = _np(t)
    if a is None:
        raise _Unsupported(f"no {what}")
    return a


# -- leaf modules: each operator's from_torch_module (fperr.operators), nn.Identity here -------
_ModuleOp = tuple[Build, Shape | None, bool]  # (build, hint, elementwise)


def _torch_module(mod: torch.nn.Module) -> _ModuleOp:
    """(build, hint, elementwise) for a leaf module; raises _Unsupported."""
    for cls, exact, convert in _module_converters():
        if (type(mod) is cls) if exact else isinstance(mod, cls):
            return convert(mod)
    raise _Unsupported()


def _linear_build(w: Array, b: Array | None) -> Build:
    """nn.Linear: a dense layer on vectors, the linear operator on the last axis of
    anything else (tokens x features)."""

    def build(shape: Shape) -> list[Layer]:
        if len(shape) == 1:
            return [Dense(w, b)]
        return [REGISTRY["linear"](w, b)]  # type: ignore[call-arg]

    return build


def _adaptive_avg(size: Any) -> Build:
    """Adaptive average pooling to ``size`` as a plain average pool: windows of
    H / h' by W / w' (the sizes must divide; None keeps a dimension)."""

    def build(shape: Shape) -> list[Layer]:
        if len(shape) != 3:
            raise SpecError(f"adaptive average pooling expects [C, H, W], got {list(shape)}")
        out = (size, size) if isinstance(size, int) else tuple(size)
        hw = shape[1:]
        o = tuple(hw[d] if out[d] is None else int(out[d]) for d in (0, 1))
        if any(o[d] < 1 or hw[d] % o[d] for d in (0, 1)):
            raise SpecError(f"adaptive average pooling from {list(hw)} to {list(o)}: "
                            "only sizes that divide the input are supported")  # fmt: skip
        k = (hw[0] // o[0], hw[1] // o[1])
        return [Pool2d("avg", k, k)]

    return build


def _unflatten(dim: int, sizes: tuple[int, ...]) -> Build:
    """nn.Unflatten(dim, sizes) and x.unflatten(dim, sizes): axis ``dim`` (batch axis 0)
    split into ``sizes`` (one may be -1)."""

    def build(shape: Shape) -> list[Layer]:
        nd = len(shape) + 1
        dd = dim % nd if dim < 0 else dim
        if dd == 0 or dd >= nd:
            raise SpecError(f"unflatten of dim {dim} of inputs {list(shape)}")
        new = _resolve(sizes, (shape[dd - 1],), "unflatten")
        return _flatten_layers(shape, shape[: dd - 1] + new + shape[dd:])

    return build


def _elu_layer(alpha: Any) -> Activation:
    if not isinstance(alpha, int | float) or isinstance(alpha, bool):
        raise _Unsupported(f"elu with alpha {alpha!r}: only a constant number")
    return Activation("elu", alpha=float(alpha))


def _rms_eps(eps: Any) -> float:
    """torch's ``eps=None`` pinned to finfo(float32).eps (:data:`~fperr.layers.RMS_EPS_DEFAULT`):
    what torch uses in float32, and in float16 and bfloat16 on the CPU (its kernel
    computes in float32; checked bit for bit on torch 2.13), whatever the docs'
    finfo(input dtype).eps says; a float64 torch run would use 2^-52."""
    return RMS_EPS_DEFAULT if eps is None else float(eps)


def _mod_identity(mod: Any) -> _ModuleOp:
    return _const([]), None, True


def _module_converters() -> tuple[tuple[type, bool, Callable[[Any], _ModuleOp]], ...]:
    """(class, exact, converter) in the order tried: each registered operator's
    ``torch_module_classes`` with its ``from_torch_module`` (``exact`` matches the class
    only, not its subclasses, which may compute something else), then nn.Identity, the one
    leaf pattern with no operator.  Only ReLU6 and Hardtanh are related, both exact, so no
    class matches two entries and the order does not choose (tests/test_import_patterns.py)."""
    from torch import nn

    ops = dict.fromkeys(REGISTRY.values())  # a class standing for several types once
    return (
        *((getattr(nn, name), exact, op.from_torch_module)
          for op in ops for name, exact in op.torch_module_classes),
        (nn.Identity, False, _mod_identity),
    )  # fmt: skip


def _arg(node: Any, i: int, key: str, default: Any = None) -> Any:
    if len(node.args) > i:
        return node.args[i]
    return node.kwargs.get(key, default)


def _fx_label(gm: Any, n: Any) -> str:
    if n.op == "call_module":
        return f"{type(gm.get_submodule(str(n.target))).__name__} {str(n.target)!r}"
    if n.op == "call_method":
        return f".{n.target}() {n.name!r}"
    return f"{getattr(n.target, '__name__', str(n.target))} {n.name!r}"


def _batch_root(n: Any) -> tuple[Any, Any] | None:
    """(aux node, chain value) if fx node ``n`` is ``x.size(0)`` or ``x.shape[0]``."""
    if n.op == "call_method" and n.target == "size" and _arg(n, 1, "dim") == 0:
        return n, n.args[0]
    if n.op == "call_function" and n.target is operator.getitem and n.args[1] == 0:
        g = n.args[0]
        if not hasattr(g, "op"):
            return None
        if g.op == "call_method" and g.target == "size" and _arg(g, 1, "dim") is None:
            return g, g.args[0]
        if g.op == "call_function" and g.target is getattr and g.args[1] == "shape":
            return g, g.args[0]
    return None


def _is_aux(n: Any) -> bool:
    """Shape queries (x.size(), x.shape, an item of those), checked where they are used."""
    if n.op == "call_method" and n.target == "size":
        return True
    if n.op == "call_function" and n.target is getattr and n.args[1] == "shape":
        return True
    if n.op == "call_function" and n.target is operator.getitem:
        src = n.args[0]
        return hasattr(src, "op") and src.op != "get_attr" and _is_aux(src)
    if n.op == "call_function" and n.target in _SHAPE_ARITH:  # t * 8, c // heads
        ok = all(_is_aux(a) if hasattr(a, "op") else isinstance(a, int) for a in n.args)
        return ok and any(hasattr(a, "op") for a in n.args)
    return False


_SHAPE_ARITH = frozenset({operator.mul, operator.floordiv, operator.add, operator.sub})


def _shape_root(n: Any) -> list[tuple[Any, Any]]:
    """[(shape query, value it reads)] for ``x.shape[i]`` / ``x.size(i)``: absorbed reads."""
    if n.op == "call_function" and n.target in _SHAPE_ARITH:
        return [r for a in n.args if hasattr(a, "op") for r in _shape_root(a)]
    src = n.args[0] if n.op == "call_function" and n.target is operator.getitem else n
    if hasattr(src, "op") and src.args and hasattr(src.args[0], "op"):
        return [(src, src.args[0])]
    return []


def _torch_reshape(node: Any, dims: Any) -> tuple[Build, tuple[tuple[Any, Any], ...]]:
    """view/reshape target ``dims`` whose first entry is the batch size."""
    from torch.fx import Node

    if isinstance(dims, Node) or not isinstance(dims, Sequence) or not dims:
        raise _Unsupported(f"{node.target}: target shape is not a constant")
    aux: list[tuple[Any, Any]] = []
    first, rest = dims[0], list(dims[1:])
    if isinstance(first, Node):
        root = _batch_root(first)
        if root is None:
            raise _Unsupported(f"{node.target}: batch size {first.name} unknown")
        aux.append(root)
    elif first != -1:
        raise _Unsupported(f"{node.target} to a fixed batch size {first}")
    for i, d in enumerate(rest):  # x.shape[i] (i >= 1): the size input_shape gives
        if isinstance(d, Node) and _is_aux(d):
            rest[i] = static_int(d, str(node.target))
            aux.extend(_shape_root(d))
    if any(not isinstance(d, int) for d in rest):
        raise _Unsupported(f"{node.target}: non-constant dimensions")
    if first == -1 and -1 in rest:
        raise _Unsupported(f"{node.target} {list(dims)}: batch size ambiguous")

    def build(shape: Shape) -> list[Layer]:
        return _flatten_layers(shape, _resolve(rest, shape, str(node.target)))

    return build, tuple(aux)


def _call_args(node: Any) -> dict[str, Any]:
    """The arguments of a call_function node by name, defaults included ({} if the
    target has no Python signature)."""
    try:
        bound = inspect.signature(node.target).bind(*node.args, **node.kwargs)
    except (TypeError, ValueError):
        return {}
    bound.apply_defaults()
    return dict(bound.arguments)


def _dropout(node: Any) -> Build:
    """F.dropout and its variants: the identity unless they drop at random, which
    ``training=True`` (F.dropout's default) makes them do in eval mode too."""
    import torch

    if node.target is torch.dropout:  # torch.dropout(input, p, train), no defaults
        p, training = _arg(node, 1, "p"), _arg(node, 2, "train")
    else:
        args = _call_args(node)
        p, training = args.get("p", 0.5), args.get("training")
    if not isinstance(p, int | float) or not isinstance(training, bool):
        raise _Unsupported("p or training is not a constant")
    if training and p != 0:
        raise _Unsupported(
            f"training=True with p={p:g} drops at random in eval mode too; "
            "pass training=self.training"
        )
    return _const([Dropout(float(p))])


def _batch_norm(node: Any, params: Callable[[Any], Array | None]) -> Build:
    """F.batch_norm with running statistics held by the module (eval mode)."""
    a = _call_args(node)
    if a.get("training") is not False:
        raise _Unsupported("training=True normalises by batch statistics")
    mean, var = params(a.get("running_mean")), params(a.get("running_var"))
    w, b = params(a.get("weight")), params(a.get("bias"))
    if (
        mean is None
        or var is None
        or (w is None) != (a.get("weight") is None)
        or ((b is None) != (a.get("bias") is None))
    ):
        raise _Unsupported("statistics or affine parameters are not module tensors")
    eps = a.get("eps", 1e-5)
    if not isinstance(eps, int | float):
        raise _Unsupported("eps is not a constant")
    return _const([BatchNorm(mean, var, w, b, float(eps))])


# -- call_function and call_method nodes: tables keyed by target (operators' from_fx) ---------
_Params = Callable[[Any], Array | None]  # the module tensor an fx node reads, or None
_CallOp = Callable[[Any, str, _Params], "_Op | list[_Op]"]  # (node, label, params) -> op(s)


def _torch_call(node: Any, label: str, params: _Params) -> _Op | list[_Op] | None:
    """The op of a call_function/call_method node; None for shape queries."""
    from torch.fx import Node

    if isinstance(node.kwargs.get("out"), Node):
        raise _Unsupported("out= argument")
    if node.op == "call_function" and node.target in _SHAPE_ARITH and _is_aux(node):
        return None  # arithmetic of sizes: evaluated where it is used
    table = _METHODS if node.op == "call_method" else _function_converters()
    try:
        convert = table.get(node.target)
    except TypeError:  # an unhashable target is in no table
        convert = None
    if convert is not None:
        return convert(node, label, params)
    if _is_aux(node) or _expanded_parameter(node, params) is not None:
        return None
    raise _Unsupported()


def _unary(node: Any, label: str, build: Build, **kw: Any) -> _Op:
    """The op of a node computing ``build`` of its first argument."""
    return _Op(label, (node.args[0] if node.args else None,), node, build, **kw)


def _call_identity(node: Any, label: str, params: _Params) -> _Op:
    return _unary(node, label, _const([]), elementwise=True)


def _relu6_layer(lo: Any, hi: Any) -> Activation:
    """Clamping to [0, 6] (hardtanh, clamp, clip) is ReLU6; other ranges are refused."""
    ok = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (lo, hi))
    if not ok or (lo, hi) != (0, 6):
        raise _Unsupported(f"clamp to [{lo}, {hi}]: only [0, 6] (ReLU6)")
    return Activation("relu6")


def _method_reshape(node: Any, label: str, params: _Params) -> _Op:
    """x.view(*dims), x.view(dims), x.reshape(...) and the ``size=`` keyword."""
    dims = node.args[1:]
    if len(dims) == 1 and isinstance(dims[0], Sequence):
        dims = dims[0]
    build, aux = _torch_reshape(node, dims or node.kwargs.get("size"))
    return _unary(node, label, build, aux=aux)


def _call_reshape(node: Any, label: str, params: _Params) -> _Op:
    build, aux = _torch_reshape(node, _arg(node, 1, "shape"))
    return _unary(node, label, build, aux=aux)


def _method_add(node: Any, label: str, params: _Params) -> _Op:
    """x.add(y) and x.add_(y) of two values: a residual add."""
    from torch.fx import Node

    if not isinstance(_arg(node, 1, "other"), Node):
        raise _Unsupported()  # x.add(constant): not a shape query either
    if _arg(node, 2, "alpha", 1) != 1:
        raise _Unsupported("add with alpha")
    return _Op(label, (node.args[0], node.args[1]), node)


def _call_add(node: Any, label: str, params: _Params) -> _Op | list[_Op]:
    """x + y, x += y and torch.add(x, y) of two computed values (a residual add), or
    of a computed value and a parameter (a positional embedding: a constant node)."""
    from torch.fx import Node

    x = node.args[0] if node.args else None
    other = _arg(node, 1, "other")
    if not (isinstance(x, Node) and isinstance(other, Node)):
        raise _Unsupported("add of a constant")
    if _arg(node, 2, "alpha", 1) != 1:
        raise _Unsupported("add with alpha")
    if params(x) is not None and params(other) is not None:
        raise _Unsupported("add of two parameters")
    if params(x) is not None or params(other) is not None:
        value, p = (other, x) if params(x) is not None else (x, other)
        const = _constant(node, label, value, params(p), 0)
        return [const, _Op(label, (value, const.output), node)]
    return _Op(label, (x, other), node)


def _constant(node: Any, label: str, value: Any, p: Array | None, i: int) -> _Op:
    """A parameter read as a graph value: a constant node (it reads ``value`` for the
    batch size only).  A leading axis of 1 is the batch axis broadcast."""
    assert p is not None

    def build(shape: Shape) -> list[Layer]:
        per = p.reshape(p.shape[1:]) if p.ndim > 1 and p.shape[0] == 1 else p
        return [REGISTRY["constant"](np.array(per))]  # type: ignore[call-arg]

    return _Op(f"{label}.param{i}", (value,), (node, f"param{i}"), build)


def _expanded_parameter(v: Any, params: _Params) -> Array | None:
    """The parameter behind ``p.expand(x.shape[0], ...)`` (a class token), else None."""
    if getattr(v, "op", None) == "call_method" and v.target == "expand":
        p = params(v.args[0])
        if p is not None and p.ndim >= 1 and p.shape[0] == 1:
            return p
    return None


def _spatial_mean(dims: Any, keepdim: bool) -> Build:
    """x.mean over the two spatial axes of (N, C, H, W): a global average pool (and a
    flatten without keepdim); over other axes (tokens): the mean operator."""

    def build(shape: Shape) -> list[Layer]:
        nd = len(shape) + 1
        d = sorted(int(v) % nd for v in ((dims,) if isinstance(dims, int) else dims))
        if 0 in d:
            raise SpecError(f"mean over dims {dims}: the batch axis cannot be averaged")
        if len(shape) != 3 or d != [2, 3]:  # tokens, features: the mean operator
            return [REGISTRY["mean"](tuple(a - 1 for a in d), keepdim)]  # type: ignore[call-arg]
        pool: list[Layer] = [Pool2d("avg", (shape[1], shape[2]), (shape[1], shape[2]))]
        return pool if keepdim else [*pool, Flatten()]

    return build


def cat_ops(node: Any, label: str, values: Sequence[Any], consts: dict[int, Array],
            merge: Callable[[list[Shape]], Layer]) -> list[_Op]:  # fmt: skip
    """A concat of ``values`` (both front ends): the entries ``consts`` (position ->
    a parameter broadcast over the batch, e.g. a class token) become constant
    nodes fed by the first computed value, the rest are read as they are."""
    computed = [v for i, v in enumerate(values) if i not in consts]
    if not computed:
        raise _Unsupported("cat of parameters only")
    ops = [_constant(node, label, computed[0], p, i) for i, p in consts.items()]
    made = {i: op.output for i, op in zip(consts, ops, strict=True)}
    inputs = tuple(made.get(i, v) for i, v in enumerate(values))
    return [*ops, _Op(label, inputs, node, merge=merge)]


def _index_layers(index: tuple[Any, ...], shape: Shape) -> list[Layer]:
    """x[:, ...] with integers and unit-step slices on the per-input axes: one slice
    per restricted axis, then a reshape dropping the axes an integer selects."""
    dots = [k for k, it in enumerate(index) if it is Ellipsis]
    if len(dots) == 1:  # x[..., a:b]: as many ':' as the other items leave
        k = dots[0]
        index = index[:k] + (slice(None),) * (len(shape) + 2 - len(index)) + index[k + 1 :]
    if len(index) - 1 > len(shape) or index[0] != slice(None):
        raise SpecError(f"indexing {index} of {list(shape)}: the batch axis must be ':'")
    layers: list[Layer] = []
    out, drop = list(shape), []
    for ax, it in enumerate(index[1:]):
        if isinstance(it, int):
            start = it % shape[ax] if -shape[ax] <= it < shape[ax] else shape[ax]
            layers.append(REGISTRY["slice"](ax, start, start + 1))  # type: ignore[call-arg]
            out[ax] = 1
            drop.append(ax)
        elif isinstance(it, slice) and it.step in (None, 1):
            lo, hi, _ = it.indices(shape[ax])
            if (lo, hi) != (0, shape[ax]):
                layers.append(REGISTRY["slice"](ax, lo, hi))  # type: ignore[call-arg]
                out[ax] = hi - lo
        else:
            raise SpecError(f"indexing with {it!r}: only integers and ':' ranges")
    if drop:
        kept = tuple(n for a, n in enumerate(out) if a not in drop)
        layers.append(Reshape(kept) if kept else Reshape((1,)))
    return layers


def _call_getitem(node: Any, label: str, params: _Params) -> _Op | list[_Op]:
    """x[:, 0] (a class token), x[:, 1:]: slices of a computed value; None for the
    items of shape queries."""
    if _is_aux(node):
        return []  # an item of a shape query: checked where it is used
    if _is_split(node.args[0]):
        return _split_piece(node, label)
    index = node.args[1]
    if not isinstance(index, tuple) or params(node.args[0]) is not None:
        raise _Unsupported("indexing other than x[:, ...]")
    return _unary(node, label, lambda shape: _index_layers(index, shape))


# -- split and chunk: no operator of their own, one slice per piece read ----------------------
def _is_split(n: Any) -> bool:
    """Whether fx node ``n`` is x.split / x.chunk / torch.split / torch.chunk."""
    import torch

    if getattr(n, "op", None) == "call_method":
        return n.target in ("split", "chunk")
    return getattr(n, "op", None) == "call_function" and n.target in (torch.split, torch.chunk)


def _split_args(n: Any) -> tuple[Any, Any, Any, bool]:
    """(value, split size / sections / chunks, dim, is chunk) of a split node."""
    import torch

    chunk = n.target in ("chunk", torch.chunk)
    value = n.args[0] if n.args else n.kwargs.get("tensor", n.kwargs.get("input"))
    keys = ("chunks",) if chunk else ("split_size_or_sections", "split_size")
    size = n.args[1] if len(n.args) > 1 else next(
        (n.kwargs[k] for k in keys if k in n.kwargs), None)  # fmt: skip
    return value, size, _arg(n, 2, "dim", 0), chunk


def _call_split(node: Any, label: str, params: _Params) -> list[_Op]:
    """x.split(s, dim), x.chunk(k, dim) and their torch functions: checked here, and
    each piece read (``pieces[i]``) becomes a slice of x (:func:`_split_piece`)."""
    from torch.fx import Node

    value, size, dim, chunk = _split_args(node)
    sections = isinstance(size, list | tuple) and not chunk
    if not isinstance(value, Node) or params(value) is not None:
        raise _Unsupported("split of a parameter")
    if isinstance(size, bool) or not (isinstance(size, int) or sections) or (
            sections and not all(isinstance(v, int) and v >= 0 for v in size)):  # fmt: skip
        raise _Unsupported("sizes are not constants")
    if not isinstance(dim, int) or dim == 0 or (isinstance(size, int) and size < 1):
        raise _Unsupported(f"dim {dim!r} or size {size!r}: constants, not the batch axis")
    return []  # no layer: the pieces read are built where they are indexed


def split_bounds(n: int, size: int | Sequence[int], chunk: bool) -> list[tuple[int, int]]:
    """[(start, stop)] of the pieces torch.split (``size``: an int or the sections) or
    torch.chunk (``size`` pieces of ceil(n / size), fewer if they cover n) cut from
    an axis of length n."""
    if isinstance(size, int):
        step = -(-n // size) if chunk else size
        sizes = [step] * (n // step) + ([n % step] if n % step else [])
    else:
        sizes = [int(v) for v in size]
        if sum(sizes) != n:
            raise SpecError(f"split sections {sizes} do not add up to the axis length {n}")
    stops = np.cumsum(sizes).tolist()
    return [(int(b - a), int(b)) for a, b in zip(sizes, stops, strict=True)]


def _split_piece(node: Any, label: str) -> _Op | list[_Op]:
    """``pieces[i]`` of a split node: a slice of the split's input along its axis
    (nothing when the piece is the whole axis; no op when nothing reads it)."""
    if not node.users:
        return []  # an unpacked piece nobody reads
    i = node.args[1]
    if not isinstance(i, int):
        raise _Unsupported("a range of pieces")
    value, size, dim, chunk = _split_args(node.args[0])

    def build(shape: Shape) -> list[Layer]:
        nd = len(shape) + 1
        if not -nd <= dim < nd or dim % nd == 0:
            raise SpecError(f"split along dim {dim}: out of range or the batch axis")
        ax = dim % nd - 1
        bounds = split_bounds(shape[ax], size, chunk)
        if not -len(bounds) <= i < len(bounds):
            raise SpecError(f"piece {i} of {len(bounds)}")
        lo, hi = bounds[i]
        if (lo, hi) == (0, shape[ax]):
            return []
        return [REGISTRY["slice"](ax, lo, hi)]  # type: ignore[call-arg]

    return _Op(label, (value,), node, build)


# -- .mT and SDPA (torch_layout); transpose, permute, @, / 2^k are the operators' from_fx ------
def _call_getattr(node: Any, label: str, params: _Params) -> _Op | list[_Op]:
    """``x.mT`` (the last two axes swapped); ``x.shape`` is a shape query."""
    if _is_aux(node):
        return []
    if node.args[1] == "mT" and params(node.args[0]) is None:
        return _unary(node, label, transpose_build(-2, -1))
    raise _Unsupported(f"attribute {node.args[1]!r}")


def _call_sdpa(node: Any, label: str, params: _Params) -> list[_Op]:
    """F.scaled_dot_product_attention(q, k, v) without mask, dropout or causality."""
    q, k, v = (_arg(node, i, key) for i, key in enumerate(("query", "key", "value")))
    sdpa_options(_arg(node, 3, "attn_mask"), _arg(node, 4, "dropout_p", 0.0),
                 _arg(node, 5, "is_causal", False), node.kwargs.get("enable_gqa"))  # fmt: skip
    scale = _arg(node, 6, "scale")
    qshape = getattr(q, "meta", {}).get("fperr_shape")
    if scale is None and not qshape:
        raise _Unsupported("head size unknown (pass input_shape)")
    return sdpa_ops(label, q, k, v, node, sdpa_factor(scale, int(qshape[-1]) if qshape else 1))


def _declare(table: dict[Any, _CallOp], key: Any, convert: _CallOp, what: str) -> None:
    if key in table:  # pragma: no cover - a programming error
        raise ValueError(f"{what} declared twice")
    table[key] = convert


def _fx_target(dotted: str) -> Any:
    """The torch object a dotted name of an operator's ``fx_functions`` names
    (``"torch.nn.functional.relu"``, ``"operator.matmul"``)."""
    module, _, attr = dotted.rpartition(".")
    return getattr(importlib.import_module(module), attr)


def _method_converters() -> dict[Any, _CallOp]:
    """call_method names: each registered operator's ``fx_methods`` to its ``from_fx``,
    then the methods that are no one operator's (identities, reshapes, add, split); each
    name declared once (tests/test_import_patterns.py).  In-place forms too: torch_alias
    redirects later reads of the written value to the write and refuses reads of other
    views of the overwritten storage."""
    table: dict[Any, _CallOp] = {}
    for op in dict.fromkeys(REGISTRY.values()):  # a class standing for several types once
        for name in op.fx_methods:
            _declare(table, name, op.from_fx, f"tensor method {name!r}")
    stay: dict[str, _CallOp] = {
        **dict.fromkeys(("contiguous", "clone", "detach"), _call_identity),
        "view": _method_reshape,
        "reshape": _method_reshape,
        "add": _method_add,  # two values; x.add(constant) is refused
        "add_": _method_add,
        "split": _call_split,
        "chunk": _call_split,
    }
    for name, convert in stay.items():
        _declare(table, name, convert, f"tensor method {name!r}")
    return table


_METHODS: dict[Any, _CallOp] = _method_converters()


@functools.cache
def _function_converters() -> dict[Any, _CallOp]:
    """call_function targets (torch imported lazily): each registered operator's
    ``fx_functions`` to its ``from_fx``, then the targets that are no one operator's
    (add: a residual add or a constant node and an add; reshape, split and indexing:
    slices and reshapes; ``x.mT`` and shape queries; SDPA: its decomposition); each
    target declared once (tests/test_import_patterns.py)."""
    import torch
    import torch.nn.functional as F

    table: dict[Any, _CallOp] = {}
    for op in dict.fromkeys(REGISTRY.values()):  # a class standing for several types once
        for name in op.fx_functions:
            _declare(table, _fx_target(name), op.from_fx, f"call_function target {name!r}")
    stay: list[tuple[tuple[Any, ...], _CallOp]] = [
        ((operator.add, operator.iadd, torch.add), _call_add),
        ((torch.reshape,), _call_reshape),
        ((torch.split, torch.chunk), _call_split),
        ((operator.getitem,), _call_getitem),
        ((getattr,), _call_getattr),
        ((F.scaled_dot_product_attention,), _call_sdpa),
    ]
    for targets, convert in stay:
        for target in targets:
            _declare(table, target, convert, f"call_function target {target!r}")
    return table


def _arg_nodes(n: Any) -> list[Any]:
    """The value nodes ``n`` reads, once per occurrence (``x + x`` reads x twice)."""
    import torch.fx as fx

    reads: list[Any] = []

    def read(a: Any) -> Any:
        reads.append(a)
        return a

    fx.node.map_arg((n.args, n.kwargs), read)
    return reads


def _uses(nodes: list[Any], sub: dict[tuple[Any, Any], Any]) -> Counter[Hashable]:
    """Reads of each value (the graph output's included; parameters excluded)."""
    uses: Counter[Hashable] = Counter()
    for n in nodes:
        if n.op != "get_attr":
            uses.update(sub.get((n, a), a) for a in _arg_nodes(n))
    for n in nodes:
        if n.op == "get_attr":
            uses.pop(n, None)
    return uses


def _trace_eval(module: torch.nn.Module) -> Any:
    """``torch.fx.symbolic_trace`` of the module in eval mode (``self.training`` is read
    while tracing), its own modes restored afterwards."""
    import torch.fx as fx

    if isinstance(module, fx.GraphModule):
        return module
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    leaves = attention_leaves()

    class Tracer(fx.Tracer):  # attention modules stay whole: see torch_attention
        def is_leaf_module(self, m: Any, qualname: str) -> bool:
            return isinstance(m, leaves) or super().is_leaf_module(m, qualname)

    try:
        root = module
        return fx.GraphModule(root, Tracer().trace(root), type(root).__name__)
    finally:
        for m, mode in modes:
            m.training = mode


def from_torch(
    module: torch.nn.Module,
    input_shape: Sequence[int] | None = None,
    name: str | None = None,
    check: bool = True,
    tracer: str = "fx",
) -> Model:
    """Convert a PyTorch module to a :class:`~fperr.model.Model`.

    ``tracer``: ``"fx"`` (the default, ``torch.fx`` symbolic tracing, attention
    modules kept whole) or ``"export"`` (``torch.export``'s aten graph, which needs
    ``input_shape``; see :mod:`fperr.importers.torch_export`).

    ``module``: an ``nn.Sequential`` or any module ``torch.fx`` can trace
    whose graph is a chain (residual blocks ``x + f(x)`` allowed) of Linear,
    Conv2d, MaxPool2d, AvgPool2d, Flatten, Unflatten, view/reshape, ReLU,
    ReLU6 (also hardtanh / clamp to [0, 6]), LeakyReLU, Tanh, Sigmoid, GELU
    (erf form), Softmax over the last dim of
    vectors, BatchNorm1d/2d (running statistics), LayerNorm, RMSNorm (``eps=None``
    pinned to torch.finfo(torch.float32).eps, what float32 and CPU float16/bfloat16
    runs use; a float64 torch run would use 2^-52), Dropout,
    Identity, or their functional forms; transpose / permute / ``.mT`` of
    per-input axes, reshapes whose sizes come from ``x.shape`` (with
    ``input_shape`` given), ``a @ b`` of two values, ``x / 2^k`` and
    ``F.scaled_dot_product_attention`` without mask (see
    :mod:`~fperr.importers.torch_layout`).  ``input_shape`` (one input, no
    batch dimension) is inferred from a first Linear or LayerNorm; a model
    starting with a convolution needs it.

    The import is what the module computes in eval mode: it is traced with
    ``self.training`` False, Dropout is the identity, BatchNorm uses its
    running statistics; ops that stay random or batch-dependent in eval mode
    (``F.dropout(x, training=True)``, ``F.batch_norm(..., training=True)``)
    are refused.  After an in-place op (``relu_``, ``inplace=True``, ``add_``)
    a read of the value it wrote reads the result, as in torch; a read of
    another view of the overwritten storage is refused.  With ``check``
    (the default) the imported model and a float64 copy of the module in eval
    mode are run on random inputs and must agree to float64 rounding, which
    catches what the trace does not show (``y += z`` on a value read again,
    forward hooks); ``check=False`` skips this run.
    """
    try:
        import torch
    except ImportError:
        raise SpecError("from_torch needs PyTorch (pip install torch)") from None
    if not isinstance(module, torch.nn.Module):
        raise SpecError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")
    name = name or type(module).__name__
    if tracer not in ("fx", "export"):
        raise SpecError(f"tracer must be 'fx' or 'export', got {tracer!r}")
    if tracer == "export":
        from .torch_export import export_model

        model = export_model(module, input_shape, name)
        if check:
            check_against_torch(_pin_rms_eps(module), model, name)
        return model
    gm = _traced(module, name)
    if input_shape is not None:  # sizes read from x.shape[i], i >= 1, become constants
        annotate_static(gm, input_shape)
    nodes = list(gm.graph.nodes)
    inp, out = _graph_io(nodes, name)
    ops, unsupported = _convert_nodes(gm, nodes)
    # reads of values that an in-place op overwrote read the write's result
    sub = {} if unsupported else resolve_writes(gm, nodes, lambda n: _fx_label(gm, n), _is_aux)
    for op in ops:
        op.inputs = tuple(sub.get((op.output, v), v) for v in op.inputs)
        op.aux = tuple((k, sub.get((k, v), v)) for k, v in op.aux)
    graph = _Graph(ops, inp, sub.get((out, out.args[0]), out.args[0]), _uses(nodes, sub))
    for op in ops if not unsupported else []:  # data inputs: the input or converted ops
        for v in op.inputs:
            if v not in graph.pos:
                raise SpecError(f"{op.name}: reads {v}, which is not computed from the input")
    model = _to_model(graph, unsupported, input_shape, name)
    if check:
        check_against_torch(_pin_rms_eps(module), model, name)
    return model


def _pin_rms_eps(module: torch.nn.Module) -> torch.nn.Module:
    """The module, or a copy with each ``nn.RMSNorm(eps=None)`` given the pinned eps
    (:func:`_rms_eps`): the float64 check would otherwise run them with 2^-52."""
    from torch import nn

    if not any(isinstance(m, nn.RMSNorm) and m.eps is None for m in module.modules()):
        return module
    module = copy.deepcopy(module)
    for m in module.modules():
        if isinstance(m, nn.RMSNorm) and m.eps is None:
            m.eps = RMS_EPS_DEFAULT
    return module


def _traced(module: torch.nn.Module, name: str) -> Any:
    """The fx graph module of ``module`` in eval mode; a SpecError if tracing fails."""
    try:
        return _trace_eval(module)
    except Exception as exc:  # tracing failures have many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"cannot trace {name} with torch.fx: {first}") from None


def _graph_io(nodes: list[Any], name: str) -> tuple[Any, Any]:
    """The one placeholder and the output node, which must return one tensor."""
    import torch.fx as fx

    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise SpecError(f"{name}: expected one input, the traced graph has {len(placeholders)}")
    out = next(n for n in nodes if n.op == "output")
    if not isinstance(out.args[0], fx.Node):
        raise SpecError(f"{name}: expected one output tensor")
    return placeholders[0], out


def _param_reader(gm: Any) -> _Params:
    """The float64 value of the module tensor a get_attr node reads, else None."""
    import torch
    import torch.fx as fx

    def params(a: Any) -> Array | None:
        if isinstance(a, fx.Node) and a.op == "get_attr":
            obj: Any = gm
            for part in str(a.target).split("."):
                obj = getattr(obj, part)
            return _np(obj) if isinstance(obj, torch.Tensor) else None
        return None

    return params


def _attention_output(gm: Any, n: Any) -> bool:
    """Whether ``n`` is ``mha(x, x, x)[0]`` (the attention output; [1], the weights,
    is refused: fperr bounds one output)."""
    src = n.args[0] if n.op == "call_function" and n.target is operator.getitem else None
    if src is None or getattr(src, "op", None) != "call_module":
        return False
    from torch import nn

    # the encoder (layer) returns a tensor: an item of it is indexing (x[:, 0])
    if not isinstance(gm.get_submodule(str(src.target)), nn.MultiheadAttention):
        return False
    if n.args[1] != 0:
        raise _Unsupported("only the attention output ([0]) can be read")
    return True


def _convert_nodes(gm: Any, nodes: list[Any]) -> tuple[list[_Op], list[str]]:
    """The ops of the call nodes in order, and an entry for each that does not convert."""
    params = _param_reader(gm)
    ops: list[_Op] = []
    unsupported: list[str] = []
    for n in nodes:
        if n.op not in ("call_module", "call_function", "call_method"):
            continue
        label = _fx_label(gm, n)
        try:
            if n.op == "call_module":
                mod = gm.get_submodule(str(n.target))
                if isinstance(mod, attention_leaves()):
                    ops.extend(attention_ops(mod, n, label))
                    continue
                build, hint, ew = _torch_module(mod)
                ops.append(_Op(label, (n.args[0],), n, build, hint, ew))
            elif _attention_output(gm, n):
                ops.append(_Op(label, (n.args[0],), n, _const([]), elementwise=True))
            else:
                op = _torch_call(n, label, params)
                if isinstance(op, list):
                    ops.extend(op)
                elif op is not None:
                    ops.append(op)
        except _Unsupported as exc:
            unsupported.append(_entry(label, exc))
    return ops, unsupported
