"""from_torch: PyTorch modules (``torch.fx`` graphs) to the fperr IR; torch is imported lazily."""

from __future__ import annotations

import inspect
import operator
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import SpecError
from ..layers import Activation, BatchNorm, Conv2d, Dense, Dropout, Layer, LayerNorm, Pool2d, Shape
from ..model import Model
from .builders import _const, _flatten_dims, _flatten_layers, _gelu, _pair, _resolve, _softmax_build
from .graph import Array, Build, _entry, _Graph, _Op, _to_model, _Unsupported
from .torch_alias import resolve_writes
from .torch_fidelity import check_against_torch

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


def _torch_module(mod: torch.nn.Module) -> tuple[Build, Shape | None, bool]:
    """(build, hint, elementwise) for a leaf module; raises _Unsupported."""
    from torch import nn

    if isinstance(mod, nn.Linear):
        w = _need(mod.weight, "weight")
        return _const([Dense(w, _np(mod.bias))]), (int(w.shape[1]),), False
    if type(mod) is nn.Conv2d:
        if mod.padding_mode != "zeros":
            raise _Unsupported(f"padding_mode={mod.padding_mode!r}")
        k = _pair(mod.kernel_size)
        d = _pair(mod.dilation)
        if mod.padding == "valid":
            pad = (0, 0)
        elif mod.padding == "same":
            tot = [d[i] * (k[i] - 1) for i in (0, 1)]
            if any(t % 2 for t in tot):
                raise _Unsupported("padding='same' with asymmetric padding")
            pad = (tot[0] // 2, tot[1] // 2)
        else:
            pad = _pair(mod.padding)
        layer = Conv2d(_need(mod.weight, "weight"), _np(mod.bias), _pair(mod.stride), pad, d,
                       int(mod.groups))  # fmt: skip
        return _const([layer]), None, False
    if isinstance(mod, nn.MaxPool2d):
        if mod.ceil_mode or mod.return_indices or _pair(mod.dilation) != (1, 1):
            raise _Unsupported("ceil_mode, return_indices or dilation")
        k = _pair(mod.kernel_size)
        st = _pair(mod.stride) if mod.stride else k
        return _const([Pool2d("max", k, st, _pair(mod.padding))]), None, False
    if isinstance(mod, nn.AvgPool2d):
        pad = _pair(mod.padding)
        if mod.ceil_mode or mod.divisor_override or (not mod.count_include_pad and any(pad)):
            raise _Unsupported("ceil_mode, divisor_override or count_include_pad=False")
        k = _pair(mod.kernel_size)
        st = _pair(mod.stride) if mod.stride else k
        return _const([Pool2d("avg", k, st, pad)]), None, False
    if isinstance(mod, nn.Flatten):
        s, e = int(mod.start_dim), int(mod.end_dim)
        return (lambda shape: _flatten_dims(shape, s, e)), None, False
    if isinstance(mod, nn.Unflatten):
        dim, sizes = int(mod.dim), tuple(int(x) for x in mod.unflattened_size)

        def unflatten(shape: Shape) -> list[Layer]:
            nd = len(shape) + 1
            dd = dim % nd if dim < 0 else dim
            if dd == 0 or dd >= nd:
                raise SpecError(f"unflatten of dim {dim} of inputs {list(shape)}")
            new = _resolve(sizes, (shape[dd - 1],), "unflatten")
            return _flatten_layers(shape, shape[: dd - 1] + new + shape[dd:])

        return unflatten, None, False
    if type(mod) in (nn.ReLU, nn.Tanh, nn.Sigmoid):
        kind = {nn.ReLU: "relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid"}[type(mod)]
        return _const([Activation(kind)]), None, True
    if isinstance(mod, nn.LeakyReLU):
        return _const([Activation("leaky_relu", float(mod.negative_slope))]), None, True
    if isinstance(mod, nn.GELU):
        b, _ = _gelu(mod.approximate)
        return b, None, True
    if isinstance(mod, nn.Softmax):
        return _softmax_build(mod.dim), None, False
    if type(mod) in (nn.BatchNorm1d, nn.BatchNorm2d):
        if mod.running_mean is None or mod.running_var is None:
            raise _Unsupported("track_running_stats=False: batch statistics also in eval mode")
        m: Any = mod
        bn = BatchNorm(_need(m.running_mean, "running_mean"), _need(m.running_var, "running_var"),
                       _np(m.weight), _np(m.bias), float(m.eps))  # fmt: skip
        ranks = (1, 2) if isinstance(mod, nn.BatchNorm1d) else (3,)

        def batchnorm(shape: Shape) -> list[Layer]:
            if len(shape) not in ranks:
                raise SpecError(f"{type(mod).__name__} on inputs {list(shape)}")
            return [bn]

        return batchnorm, None, False
    if isinstance(mod, nn.LayerNorm):
        ns = tuple(int(d) for d in mod.normalized_shape)
        ln = LayerNorm(ns, _np(mod.weight), _np(getattr(mod, "bias", None)), float(mod.eps))
        return _const([ln]), ns, False
    if type(mod) in (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout):
        p: Any = mod.p  # identities in eval mode, whatever mod.training says
        return _const([Dropout(float(p))]), None, True
    if isinstance(mod, nn.Identity):
        return _const([]), None, True
    raise _Unsupported()


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
    return False


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
    if any(not isinstance(d, int) for d in rest):
        raise _Unsupported(f"{node.target}: non-constant dimensions")
    if first == -1 and -1 in rest:
        raise _Unsupported(f"{node.target} {list(dims)}: batch size ambiguous")

    def build(shape: Shape) -> list[Layer]:
        return _flatten_layers(shape, _resolve(rest, shape, str(node.target)))

    return build, tuple(aux)


# in-place forms too: torch_alias redirects later reads of the written value to the write
# and refuses reads of other views of the overwritten storage
_ACTIVATION_METHODS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "tanh_": "tanh",
                       "sigmoid": "sigmoid", "sigmoid_": "sigmoid"}  # fmt: skip


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


def _torch_call(node: Any, label: str, params: Callable[[Any], Array | None]) -> _Op | None:
    """The op of a call_function/call_method node; None for shape queries."""
    import torch
    import torch.nn.functional as F
    from torch.fx import Node

    t = node.target
    x = node.args[0] if node.args else None
    one = (x,)
    if isinstance(node.kwargs.get("out"), Node):
        raise _Unsupported("out= argument")
    if node.op == "call_method":
        if t in _ACTIVATION_METHODS:
            return _Op(label, one, node, _const([Activation(_ACTIVATION_METHODS[t])]),
                       elementwise=True)  # fmt: skip
        if t in ("contiguous", "clone", "detach"):
            return _Op(label, one, node, _const([]), elementwise=True)
        if t == "softmax":
            return _Op(label, one, node, _softmax_build(_arg(node, 1, "dim")))
        if t == "flatten":
            s, e = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
            return _Op(label, one, node, lambda shape: _flatten_dims(shape, s, e))
        if t in ("view", "reshape"):
            dims = node.args[1:]
            if len(dims) == 1 and isinstance(dims[0], Sequence):
                dims = dims[0]
            build, aux = _torch_reshape(node, dims or node.kwargs.get("size"))
            return _Op(label, one, node, build, aux=aux)
        if t in ("add", "add_") and isinstance(_arg(node, 1, "other"), Node):
            if _arg(node, 2, "alpha", 1) != 1:
                raise _Unsupported("add with alpha")
            return _Op(label, (x, node.args[1]), node)
        if _is_aux(node):
            return None
        raise _Unsupported()

    if t in (F.relu, torch.relu, torch.relu_, F.relu_):
        return _Op(label, one, node, _const([Activation("relu")]), elementwise=True)
    if t in (torch.tanh, F.tanh, torch.tanh_):
        return _Op(label, one, node, _const([Activation("tanh")]), elementwise=True)
    if t in (torch.sigmoid, F.sigmoid, torch.sigmoid_):
        return _Op(label, one, node, _const([Activation("sigmoid")]), elementwise=True)
    if t is F.gelu:
        build, _ = _gelu(_arg(node, 1, "approximate", "none"))
        return _Op(label, one, node, build, elementwise=True)
    if t in (F.leaky_relu, F.leaky_relu_):
        slope = float(_arg(node, 1, "negative_slope", 0.01))
        return _Op(label, one, node, _const([Activation("leaky_relu", slope)]), elementwise=True)
    if t in (F.softmax, torch.softmax):
        if _arg(node, 3 if t is F.softmax else 2, "dtype") is not None:
            raise _Unsupported("with dtype")
        return _Op(label, one, node, _softmax_build(_arg(node, 1, "dim")))
    if t is torch.flatten:
        s, e = _arg(node, 1, "start_dim", 0), _arg(node, 2, "end_dim", -1)
        return _Op(label, one, node, lambda shape: _flatten_dims(shape, s, e))
    if t is torch.reshape:
        build, aux = _torch_reshape(node, _arg(node, 1, "shape"))
        return _Op(label, one, node, build, aux=aux)
    if t in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout,
             F.feature_alpha_dropout, torch.dropout):  # fmt: skip
        return _Op(label, one, node, _dropout(node), elementwise=True)
    if t is F.batch_norm:
        return _Op(label, one, node, _batch_norm(node, params))
    if t in (F.max_pool2d, F.avg_pool2d):
        kind = "max" if t is F.max_pool2d else "avg"
        k = _pair(_arg(node, 1, "kernel_size"))
        st = _arg(node, 2, "stride")
        st = _pair(st) if st else k
        pad = _pair(_arg(node, 3, "padding", 0))
        if kind == "max":
            dil = _pair(_arg(node, 4, "dilation", 1))
            bad = (
                dil != (1, 1)
                or _arg(node, 5, "ceil_mode", False)
                or _arg(node, 6, "return_indices", False)
            )
        else:
            bad = (_arg(node, 4, "ceil_mode", False) or _arg(node, 6, "divisor_override")
                   or (not _arg(node, 5, "count_include_pad", True) and any(pad)))  # fmt: skip
        if bad:
            raise _Unsupported("options")
        return _Op(label, one, node, _const([Pool2d(kind, k, st, pad)]))
    if t is F.linear:
        w = params(_arg(node, 1, "weight"))
        if w is None:
            raise _Unsupported("weight is not a parameter")
        b = params(_arg(node, 2, "bias"))
        return _Op(label, one, node, _const([Dense(w, b)]), hint=(int(w.shape[1]),))
    if t is F.conv2d:
        w = params(_arg(node, 1, "weight"))
        pad = _arg(node, 4, "padding", 0)
        if w is None or isinstance(pad, str):
            raise _Unsupported("weight is not a parameter, or string padding")
        conv = Conv2d(w, params(_arg(node, 2, "bias")), _pair(_arg(node, 3, "stride", 1)),
                      _pair(pad), _pair(_arg(node, 5, "dilation", 1)),
                      int(_arg(node, 6, "groups", 1)))  # fmt: skip
        return _Op(label, one, node, _const([conv]))
    if t in (operator.add, operator.iadd, torch.add):
        other = _arg(node, 1, "other")
        if not (isinstance(x, Node) and isinstance(other, Node)):
            raise _Unsupported("add of a constant")
        if _arg(node, 2, "alpha", 1) != 1:
            raise _Unsupported("add with alpha")
        if params(x) is not None or params(other) is not None:
            raise _Unsupported("add of a parameter")
        return _Op(label, (x, other), node)
    if _is_aux(node):
        return None
    raise _Unsupported()


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
    try:
        return fx.symbolic_trace(module)
    finally:
        for m, mode in modes:
            m.training = mode


def from_torch(
    module: torch.nn.Module,
    input_shape: Sequence[int] | None = None,
    name: str | None = None,
    check: bool = True,
) -> Model:
    """Convert a PyTorch module to a :class:`~fperr.model.Model`.

    ``module``: an ``nn.Sequential`` or any module ``torch.fx`` can trace
    whose graph is a chain (residual blocks ``x + f(x)`` allowed) of Linear,
    Conv2d, MaxPool2d, AvgPool2d, Flatten, Unflatten, view/reshape, ReLU,
    LeakyReLU, Tanh, Sigmoid, GELU (erf form), Softmax over the last dim of
    vectors, BatchNorm1d/2d (running statistics), LayerNorm, Dropout,
    Identity, or their functional forms.  ``input_shape`` (one input, no
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
        import torch.fx as fx
    except ImportError:
        raise SpecError("from_torch needs PyTorch (pip install torch)") from None
    if not isinstance(module, torch.nn.Module):
        raise SpecError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")
    name = name or type(module).__name__
    try:
        gm = _trace_eval(module)
    except Exception as exc:  # tracing failures have many types
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SpecError(f"cannot trace {name} with torch.fx: {first}") from None

    nodes = list(gm.graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise SpecError(f"{name}: expected one input, the traced graph has {len(placeholders)}")
    out = next(n for n in nodes if n.op == "output")
    if not isinstance(out.args[0], fx.Node):
        raise SpecError(f"{name}: expected one output tensor")

    def params(a: Any) -> Array | None:
        if isinstance(a, fx.Node) and a.op == "get_attr":
            obj: Any = gm
            for part in str(a.target).split("."):
                obj = getattr(obj, part)
            return _np(obj) if isinstance(obj, torch.Tensor) else None
        return None

    ops: list[_Op] = []
    unsupported: list[str] = []
    for n in nodes:
        if n.op not in ("call_module", "call_function", "call_method"):
            continue
        label = _fx_label(gm, n)
        try:
            if n.op == "call_module":
                build, hint, ew = _torch_module(gm.get_submodule(str(n.target)))
                ops.append(_Op(label, (n.args[0],), n, build, hint, ew))
            else:
                op = _torch_call(n, label, params)
                if op is not None:
                    ops.append(op)
        except _Unsupported as exc:
            unsupported.append(_entry(label, exc))

    # reads of values that an in-place op overwrote read the write's result
    sub = {} if unsupported else resolve_writes(gm, nodes, lambda n: _fx_label(gm, n), _is_aux)
    for op in ops:
        op.inputs = tuple(sub.get((op.output, v), v) for v in op.inputs)
        op.aux = tuple((k, sub.get((k, v), v)) for k, v in op.aux)
    graph = _Graph(ops, placeholders[0], sub.get((out, out.args[0]), out.args[0]),
                   _uses(nodes, sub))  # fmt: skip
    for op in ops if not unsupported else []:  # data inputs: the input or converted ops
        for v in op.inputs:
            if v not in graph.pos:
                raise SpecError(f"{op.name}: reads {v}, which is not computed from the input")
    model = _to_model(graph, unsupported, input_shape, name)
    if check:
        check_against_torch(module, model, name)
    return model
