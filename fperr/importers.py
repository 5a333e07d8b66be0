"""Import PyTorch modules and ONNX graphs into the fperr IR.

* :func:`from_torch` converts an ``nn.Sequential`` (nested ones included) or
  any module that ``torch.fx`` can trace whose graph is a chain of supported
  operations, optionally with residual blocks ``y = x + f(x)``;
* :func:`from_onnx` converts an ONNX graph (a path, bytes or a
  ``ModelProto``) of the same shape.

Both collect every unsupported operation first and raise one
:class:`~fperr.errors.SpecError` listing them all (``unsupported: ... (3
ops)``); structural problems (a graph that is not a chain, an ``add`` that is
not ``x + f(x)``) and shape problems raise a one-line ``SpecError`` naming the
node.  Weights are copied into float64 numpy arrays.  BatchNorm always uses the
running statistics (eval-mode semantics) and Dropout is the identity.

torch and onnx are imported inside the functions: ``import fperr`` needs
neither.
"""

from __future__ import annotations

import math
import operator
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

import numpy as np
import numpy.typing as npt

from .errors import SpecError
from .layers import (
    Activation,
    BatchNorm,
    Conv2d,
    Dense,
    Dropout,
    Flatten,
    Layer,
    LayerNorm,
    Pair,
    Pool2d,
    Reshape,
    Residual,
    Shape,
    Softmax,
)
from .model import Model

if TYPE_CHECKING:  # pragma: no cover
    import onnx
    import torch

__all__ = ["from_onnx", "from_torch"]

Array = npt.NDArray[np.float64]
Build = Callable[[Shape], list[Layer]]


class _Unsupported(Exception):
    """An operation the IR cannot express (the message: why, or empty); collected by the
    caller, which adds the op's name, and reported together."""


def _entry(label: str, exc: _Unsupported) -> str:
    return f"{label} ({exc})" if str(exc) else label


# -- a converter-independent chain graph ------------------------------------------------------
@dataclass(eq=False)
class _Op:
    """One operation of the imported graph.

    ``inputs`` are the data values it reads (one for a layer, two for the add
    of a residual block: ``build`` is then None); ``aux`` lists (key, value)
    pairs of extra reads of a value that the op absorbed (``x.size(0)`` in a
    ``view``, the second use of ``x`` in a decomposed GELU); each distinct key
    counts once.
    """

    name: str
    inputs: tuple[Hashable, ...]
    output: Hashable
    build: Build | None = None
    hint: Shape | None = None  # the per-input shape this op implies as first op
    elementwise: bool = False  # keeps any shape; skipped when inferring the input shape
    aux: tuple[tuple[Hashable, Hashable], ...] = ()


# A chain: ops and residual branches (nested lists), in execution order.
_Item = Union[_Op, "list[_Item]"]


@dataclass
class _Graph:
    ops: list[_Op]
    input: Hashable
    output: Hashable
    uses: Counter[Hashable]  # reads of each value, the graph output included
    producer: dict[Hashable, _Op] = field(init=False)
    pos: dict[Hashable, int] = field(init=False)

    def __post_init__(self) -> None:
        self.producer = {op.output: op for op in self.ops}
        self.pos = {op.output: i for i, op in enumerate(self.ops)}
        self.pos[self.input] = -1

    def chain(self) -> list[_Item]:
        """The ops from input to output as a chain with residual branches."""
        consumed: Counter[Hashable] = Counter({self.output: 1})
        aux: dict[Hashable, Hashable] = {}
        visited: list[Hashable] = [self.input]
        items = self._walk(self.output, self.input, consumed, aux, visited, None)
        consumed.update(aux.values())
        for v in visited:
            if self.uses[v] != consumed[v]:
                raise SpecError(
                    f"{self.describe(v)} is read {self.uses[v]} times; only chains and residual "
                    "blocks y = x + f(x) are supported"
                )
        return items

    def describe(self, v: Hashable) -> str:
        op = self.producer.get(v)
        return "the model input" if op is None else f"the output of {op.name}"

    def _walk(
        self,
        end: Hashable,
        start: Hashable,
        consumed: Counter[Hashable],
        aux: dict[Hashable, Hashable],
        visited: list[Hashable],
        add: _Op | None,
    ) -> list[_Item]:
        items: list[_Item] = []
        v = end
        while v != start:
            op = self.producer.get(v)
            if op is None or self.pos[v] < self.pos[start]:
                if add is None:  # pragma: no cover - the graph input is the only source
                    raise SpecError(f"{self.describe(end)} does not depend on the input")
                raise SpecError(
                    f"{add.name}: adds two values that are not x and f(x); only residual "
                    "blocks y = x + f(x) are supported"
                )
            visited.append(v)
            aux.update(op.aux)
            if op.build is None:  # residual add
                a, b = op.inputs
                s, t = (a, b) if self.pos[a] <= self.pos[b] else (b, a)
                consumed[a] += 1
                consumed[b] += 1
                items.append(self._walk(t, s, consumed, aux, visited, op))
                v = s
            else:
                (u,) = op.inputs
                consumed[u] += 1
                items.append(op)
                v = u
        items.reverse()
        return items


def _first_hint(items: list[_Item]) -> Shape | bool:
    """The input shape implied by the first shape-bearing op; True if all are elementwise,
    False if the first shape-bearing op implies none."""
    for it in items:
        if isinstance(it, list):
            h = _first_hint(it)
            if h is not True:
                return h
        elif it.hint is not None:
            return it.hint
        elif not it.elementwise:
            return False
    return True  # only elementwise ops so far


def _lower(items: list[_Item], shape: Shape) -> tuple[list[Layer], Shape]:
    """IR layers of a chain, built with the per-input shape known at each op."""
    layers: list[Layer] = []
    for it in items:
        if isinstance(it, list):
            branch, _ = _lower(it, shape)
            res = Residual(tuple(branch))
            res.out_shape(shape)
            layers.append(res)
            continue
        assert it.build is not None
        try:
            for layer in it.build(shape):
                shape = layer.out_shape(shape)
                layers.append(layer)
        except SpecError as exc:
            raise SpecError(f"{it.name}: {exc}") from None
    return layers, shape


def _to_model(
    graph: _Graph, unsupported: list[str], input_shape: Sequence[int] | None, name: str
) -> Model:
    if unsupported:
        n = len(unsupported)
        raise SpecError(f"unsupported: {', '.join(unsupported)} ({n} op{'s' * (n != 1)})")
    items = graph.chain()
    if input_shape is None:
        hint = _first_hint(items)
        if not isinstance(hint, tuple):
            first = _first_op(items)
            what = f"from {first.name}" if first is not None else "from an elementwise-only model"
            raise SpecError(f"cannot infer the input shape {what}; pass input_shape")
        shape: Shape = hint
    else:
        shape = tuple(int(d) for d in input_shape)
    layers, _ = _lower(items, shape)
    return Model(name, shape, tuple(layers))


def _first_op(items: list[_Item]) -> _Op | None:
    for it in items:
        if isinstance(it, list):
            op = _first_op(it)
            if op is not None:
                return op
        elif not it.elementwise:
            return it
    return None


# -- shape helpers shared by both importers -----------------------------------------------------
def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int | np.integer):
        return (int(v), int(v))
    t = tuple(int(x) for x in v)
    if len(t) == 1:
        return (t[0], t[0])
    if len(t) != 2:
        raise _Unsupported(f"size {list(t)}: only 2-D")
    return (t[0], t[1])


def _flatten_layers(shape: Shape, new: Shape) -> list[Layer]:
    if tuple(new) == tuple(shape):
        return []
    if len(new) == 1:
        return [Flatten()]
    return [Reshape(tuple(new))]


def _flatten_dims(shape: Shape, start: int, end: int) -> list[Layer]:
    """Layers for torch.flatten(x, start, end) on a batch of ``shape`` inputs."""
    nd = len(shape) + 1
    s, e = start % nd if start < 0 else start, end % nd if end < 0 else end
    if s == 0:
        raise SpecError("flattening the batch dimension (start_dim=0) is not supported")
    if e < s:
        raise SpecError(f"flatten: end_dim {end} before start_dim {start}")
    new = shape[: s - 1] + (math.prod(shape[s - 1 : e]),) + shape[e:]
    return _flatten_layers(shape, new)


def _resolve(dims: Sequence[int], shape: Shape, what: str) -> Shape:
    """Per-input target shape: ``dims`` with at most one -1, same size as ``shape``."""
    size = math.prod(shape)
    if sum(d == -1 for d in dims) > 1 or any(d < -1 or d == 0 for d in dims):
        raise SpecError(f"{what}: cannot resolve target shape {list(dims)}")
    known = math.prod(d for d in dims if d != -1)
    if -1 in dims:
        if known == 0 or size % known:
            raise SpecError(f"{what}: cannot reshape {list(shape)} to {list(dims)}")
        dims = [size // known if d == -1 else d for d in dims]
    if math.prod(dims) != size:
        raise SpecError(f"{what}: cannot reshape {list(shape)} ({size} values) to {list(dims)}")
    return tuple(int(d) for d in dims)


def _softmax_build(dim: Any) -> Build:
    def build(shape: Shape) -> list[Layer]:
        if len(shape) != 1 or dim not in (None, 1, -1):
            raise SpecError(
                f"softmax over dim {dim} of inputs {list(shape)}: only the last dim of "
                "vector inputs is supported"
            )
        return [Softmax()]

    return build


def _const(layers: list[Layer]) -> Build:
    return lambda shape: list(layers)


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


def _gelu(approximate: str) -> tuple[Build, bool]:
    if approximate != "none":
        raise _Unsupported(f"approximate={approximate!r}; only the erf form")
    return _const([Activation("gelu")]), True


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
            raise _Unsupported("track_running_stats=False")
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
        p: Any = mod.p
        return _const([Dropout(float(p))]), None, True  # identities at inference
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


_ACTIVATION_METHODS = {"relu": "relu", "relu_": "relu", "tanh": "tanh", "sigmoid": "sigmoid"}


def _torch_call(node: Any, label: str, params: Callable[[Any], Array | None]) -> _Op | None:
    """The op of a call_function/call_method node; None for shape queries."""
    import torch
    import torch.nn.functional as F
    from torch.fx import Node

    t = node.target
    x = node.args[0] if node.args else None
    one = (x,)
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
        if t == "add" and isinstance(_arg(node, 1, "other"), Node):
            if _arg(node, 2, "alpha", 1) != 1:
                raise _Unsupported("add with alpha")
            return _Op(label, (x, node.args[1]), node)
        if _is_aux(node):
            return None
        raise _Unsupported()

    if t in (F.relu, torch.relu, torch.relu_, F.relu_):
        return _Op(label, one, node, _const([Activation("relu")]), elementwise=True)
    if t in (torch.tanh, F.tanh):
        return _Op(label, one, node, _const([Activation("tanh")]), elementwise=True)
    if t in (torch.sigmoid, F.sigmoid):
        return _Op(label, one, node, _const([Activation("sigmoid")]), elementwise=True)
    if t is F.gelu:
        build, _ = _gelu(_arg(node, 1, "approximate", "none"))
        return _Op(label, one, node, build, elementwise=True)
    if t is F.leaky_relu:
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
    if t in (F.dropout, torch.dropout):
        return _Op(label, one, node, _const([Dropout(float(_arg(node, 1, "p", 0.5)))]),
                   elementwise=True)  # fmt: skip
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


def from_torch(
    module: torch.nn.Module, input_shape: Sequence[int] | None = None, name: str | None = None
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
        gm = module if isinstance(module, fx.GraphModule) else fx.symbolic_trace(module)
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

    uses: Counter[Hashable] = Counter()
    for n in nodes:
        if n.op != "get_attr":
            fx.node.map_arg((n.args, n.kwargs), lambda a: uses.update([a]) or a)
    for n in nodes:
        if n.op == "get_attr":
            uses.pop(n, None)
    graph = _Graph(ops, placeholders[0], out.args[0], uses)
    for op in ops if not unsupported else []:  # data inputs: the input or converted ops
        for v in op.inputs:
            if v not in graph.pos:
                raise SpecError(f"{op.name}: reads {v}, which is not computed from the input")
    return _to_model(graph, unsupported, input_shape, name)


# =============================================================================================
# ONNX
# =============================================================================================
def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _constant_value(node: onnx.NodeProto) -> npt.NDArray[Any]:
    """The value of a Constant node, in its own dtype."""
    from onnx import numpy_helper

    for a in node.attribute:
        if a.name == "value":
            return np.asarray(numpy_helper.to_array(a.t))
        if a.name in ("value_float", "value_floats"):
            return np.asarray(a.f if a.name == "value_float" else list(a.floats), np.float64)
        if a.name in ("value_int", "value_ints"):
            return np.asarray(a.i if a.name == "value_int" else list(a.ints), np.int64)
    raise SpecError(f"Constant node {node.name!r} has no numeric value")


_ARITH: dict[str, Callable[[int, int], int]] = {
    "Add": operator.add,
    "Sub": operator.sub,
    "Mul": operator.mul,
    "Div": lambda a, b: int(a / b),  # ONNX integer division truncates
    "Mod": operator.mod,  # fmod=0: the sign of the divisor, like Python
}
_SHAPE_OPS = frozenset({"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Slice", "Cast",
                        "Identity", "Reshape", *_ARITH})  # fmt: skip


def _same_pads(shape: Shape, k: Pair, stride: Pair, dil: Pair) -> Pair:
    """Pads of auto_pad SAME_* (output size ceil(in / stride)) if they are symmetric."""
    if len(shape) != 3:
        raise SpecError(f"expects input [C, H, W], got {list(shape)}")
    pads = []
    for d in (0, 1):
        n = shape[d + 1]
        total = max((-(-n // stride[d]) - 1) * stride[d] + dil[d] * (k[d] - 1) + 1 - n, 0)
        if total % 2:
            raise SpecError(f"auto_pad SAME needs asymmetric padding on inputs {list(shape)}")
        pads.append(total // 2)
    return (pads[0], pads[1])


def _is_pow2(a: float) -> bool:
    return a != 0 and math.isfinite(a) and math.frexp(abs(a))[0] == 0.5


class _OnnxConverter:
    def __init__(self, model: onnx.ModelProto) -> None:
        from onnx import numpy_helper

        g = model.graph
        self.graph = g
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.consts: dict[str, Array] = {}  # every constant, as float64
        self.ints: dict[str, npt.NDArray[np.int64]] = {}  # integer constants, exactly
        values = [(t.name, np.asarray(numpy_helper.to_array(t))) for t in g.initializer]
        values += [(n.output[0], _constant_value(n)) for n in g.node
                   if n.op_type == "Constant" and n.domain in ("", "ai.onnx")]  # fmt: skip
        for name, v in values:
            self.consts[name] = v.astype(np.float64)
            if v.dtype.kind in "iub":
                self.ints[name] = v.astype(np.int64)
        self.producer = {o: n for n in g.node for o in n.output if o}
        # Shape arithmetic (x.size(0) and friends) folded to constants, with "N" for the
        # batch size; `shape_reads` records the Shape nodes (and the values they read)
        # each folded value depends on, `folded_nodes` the nodes folded away.
        self.symbolic: dict[str, npt.NDArray[np.object_]] = {}
        self.shape_reads: dict[str, frozenset[tuple[Hashable, str]]] = {}
        self.folded_nodes: set[int] = set()
        self.fold(model)
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for n in g.node:
            if id(n) in self.folded_nodes:
                continue
            for i in n.input:
                if i and i not in self.consts and i not in self.symbolic:
                    self.readers.setdefault(i, []).append(n)
        self.batch: int | None = None

    # -- folding of shape computations ----------------------------------------------------------
    def fold(self, model: onnx.ModelProto) -> None:
        import onnx

        try:
            inferred = onnx.shape_inference.infer_shapes(model).graph
        except Exception:  # shape inference is best effort
            inferred = model.graph
        static: dict[str, list[int | None]] = {}
        for vi in (*inferred.value_info, *inferred.input, *inferred.output):
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
                static[vi.name] = [
                    int(d.dim_value) if d.HasField("dim_value") else None
                    for d in vi.type.tensor_type.shape.dim
                ]
        for n in self.graph.node:
            if n.domain not in ("", "ai.onnx") or n.op_type not in _SHAPE_OPS:
                continue
            try:
                value, reads = self.fold_node(n, static)
            except (_Unsupported, ValueError, IndexError, TypeError):
                continue
            self.folded_nodes.add(id(n))
            if any(isinstance(v, str) for v in value.reshape(-1)):
                self.symbolic[n.output[0]] = value
                self.shape_reads[n.output[0]] = reads
            else:
                self.ints[n.output[0]] = value.astype(np.int64)
                self.consts[n.output[0]] = self.ints[n.output[0]].astype(np.float64)

    def sym(self, name: str) -> npt.NDArray[np.object_]:
        if name in self.symbolic:
            return self.symbolic[name]
        if name in self.ints:
            return np.asarray(self.ints[name], dtype=object)
        raise _Unsupported("not a constant")

    def fold_node(
        self, n: onnx.NodeProto, static: dict[str, list[int | None]]
    ) -> tuple[npt.NDArray[np.object_], frozenset[tuple[Hashable, str]]]:
        t, a = n.op_type, _attrs(n)
        if t == "Shape":
            dims = static.get(n.input[0])
            start, end = int(a.get("start", 0)), a.get("end")
            if dims is None or n.input[0] in self.consts:
                raise _Unsupported("unknown shape")
            full: list[int | str | None] = ["N", *dims[1:]]
            full = full[start : None if end is None else int(end)]
            if any(d is None for d in full):
                raise _Unsupported("unknown shape")
            return np.asarray(full, dtype=object), frozenset({(id(n), n.input[0])})
        args = [self.sym(i) if i else None for i in n.input]
        reads = frozenset().union(*(self.shape_reads.get(i, frozenset()) for i in n.input))
        x = args[0]
        assert x is not None
        if t in ("Cast", "Identity"):
            return x, reads
        if t == "Gather":
            idx = args[1]
            if int(a.get("axis", 0)) != 0 or idx is None:
                raise _Unsupported("gather axis")
            return np.asarray(x[idx.astype(np.int64)], dtype=object), reads
        if t in ("Unsqueeze", "Squeeze"):
            axes_arg = args[1] if len(args) > 1 else None
            axes = a.get("axes") if axes_arg is None else [int(v) for v in axes_arg.reshape(-1)]
            if t == "Unsqueeze":
                for ax in sorted(int(v) for v in axes or []):
                    x = np.expand_dims(x, ax)
                return np.asarray(x, dtype=object), reads
            return np.asarray(np.squeeze(x, None if not axes else tuple(axes)), dtype=object), reads
        if t == "Concat":
            parts = [np.atleast_1d(v) for v in args if v is not None]
            return np.concatenate(parts, axis=int(a.get("axis", 0))), reads
        if t in _ARITH:
            y = args[1]
            if y is None or any(isinstance(v, str) for v in (*x.reshape(-1), *y.reshape(-1))):
                raise _Unsupported("arithmetic on the batch size")
            if t == "Mod" and int(a.get("fmod", 0)):
                raise _Unsupported("fmod")
            return np.asarray(np.frompyfunc(_ARITH[t], 2, 1)(x, y), dtype=object), reads
        if t == "Reshape":
            y = args[1]
            assert y is not None
            new = [int(d) for d in y.reshape(-1)]
            if not int(a.get("allowzero", 0)):
                new = [int(x.shape[i]) if d == 0 else d for i, d in enumerate(new)]
            return np.reshape(x, tuple(new)), reads
        if t == "Slice":
            if x.ndim != 1:
                raise _Unsupported("slice rank")
            starts, ends = args[1], args[2]
            steps = args[4] if len(args) > 4 and args[4] is not None else None
            assert starts is not None and ends is not None
            sl = slice(
                int(starts[0]), int(min(ends[0], 2**62)), None if steps is None else int(steps[0])
            )
            return np.asarray(x[sl], dtype=object), reads
        raise _Unsupported()

    def label(self, n: onnx.NodeProto) -> str:
        return f"{n.op_type} {(n.name or n.output[0])!r}"

    def const(self, n: onnx.NodeProto, i: int) -> Array | None:
        if len(n.input) <= i or not n.input[i]:
            return None
        if n.input[i] not in self.consts:
            raise _Unsupported(f"input {i} is not a constant")
        return self.consts[n.input[i]]

    def need(self, n: onnx.NodeProto, i: int) -> Array:
        a = self.const(n, i)
        if a is None:
            raise _Unsupported(f"missing input {i}")
        return a

    def only_reader(self, value: str) -> onnx.NodeProto | None:
        r = self.readers.get(value, [])
        outs = {o.name for o in self.graph.output}
        return r[0] if len(r) == 1 and value not in outs else None

    def scalar(self, value: str) -> float | None:
        a = self.consts.get(value)
        return float(a.reshape(-1)[0]) if a is not None and a.size == 1 else None

    def data_other(self, n: onnx.NodeProto, x: str) -> str | None:
        """The other input of a binary node ``n`` one of whose inputs is ``x``."""
        if len(n.input) != 2 or x not in n.input:
            return None
        return n.input[1] if n.input[0] == x else n.input[0]

    # -- pattern: GELU decomposed by the TorchScript exporter -------------------------------------
    def gelu_pattern(self, erf: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
        """x -> Div(x, sqrt 2) | Mul(x, 1/sqrt 2) -> Erf -> Add 1 -> Mul x -> Mul 0.5."""
        pre = self.producer.get(erf.input[0])
        if pre is None or pre.op_type not in ("Div", "Mul"):
            return None
        c = self.scalar(pre.input[1])
        want = math.sqrt(2) if pre.op_type == "Div" else 1 / math.sqrt(2)
        if c is None or abs(c - want) > 1e-6 or pre.input[0] in self.consts:
            return None
        x = pre.input[0]
        add = self.only_reader(erf.output[0])
        if add is None or add.op_type != "Add":
            return None
        one = self.data_other(add, erf.output[0])
        if one is None or self.scalar(one) != 1.0:
            return None
        mul = self.only_reader(add.output[0])
        if mul is None or mul.op_type != "Mul" or self.data_other(mul, add.output[0]) != x:
            return None
        half = self.only_reader(mul.output[0])
        if half is None or half.op_type != "Mul":
            return None
        h = self.data_other(half, mul.output[0])
        if h is None or self.scalar(h) != 0.5:
            return None
        if len(self.readers.get(pre.output[0], [])) != 1:
            return None
        return x, [pre, erf, add, mul, half]

    # -- one node -----------------------------------------------------------------------------
    def convert(self, n: onnx.NodeProto, fused: dict[int, str]) -> _Op:
        t, a, label = n.op_type, _attrs(n), self.label(n)
        x = n.input[0] if n.input else ""
        one, out = (x,), n.output[0]
        if n.domain not in ("", "ai.onnx"):
            raise _Unsupported(f"domain {n.domain}")
        if x in self.consts:
            raise _Unsupported("on a constant")
        if t in ("Relu", "Tanh", "Sigmoid"):
            return _Op(label, one, out, _const([Activation(t.lower())]), elementwise=True)
        if t == "LeakyRelu":
            layer = Activation("leaky_relu", float(a.get("alpha", 0.01)))
            return _Op(label, one, out, _const([layer]), elementwise=True)
        if t == "Gelu":
            approx = a.get("approximate", b"none")
            approx = approx.decode() if isinstance(approx, bytes) else str(approx)
            build, _ = _gelu(approx)
            return _Op(label, one, out, build, elementwise=True)
        if t in ("Identity", "Dropout"):
            if t == "Dropout":
                if len(n.output) > 1 and n.output[1] and self.readers.get(n.output[1]):
                    raise _Unsupported("mask output used")
                mode = self.const(n, 2)
                if mode is not None and mode.reshape(-1)[0]:
                    raise _Unsupported("training_mode")
                ratio = self.const(n, 1)
                p = float(ratio.reshape(-1)[0]) if ratio is not None else float(a.get("ratio", 0.5))
                return _Op(label, one, out, _const([Dropout(p)]), elementwise=True)
            return _Op(label, one, out, _const([]), elementwise=True)
        if t == "Softmax":
            axis = int(a.get("axis", -1 if self.opset >= 13 else 1))
            return _Op(label, one, out, _softmax_build(axis))
        if t == "Gemm":
            if a.get("transA", 0):
                raise _Unsupported("transA=1")
            b = self.need(n, 1)
            w = b if a.get("transB", 0) else b.T
            alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
            if alpha != 1.0:
                if not _is_pow2(alpha):
                    raise _Unsupported(
                        f"alpha={alpha:g}: only 1 or a power of two, which folds "
                        "exactly into the weights)"
                    )
                w = w * alpha
            c = self.const(n, 2)
            bias = None if c is None else self.bias(beta * c, w.shape[0])
            return _Op(label, one, out, _const([Dense(np.array(w), bias)]),
                       hint=(int(w.shape[1]),))  # fmt: skip
        if t == "MatMul":
            b = self.need(n, 1)
            if b.ndim != 2:
                raise _Unsupported(f"{b.ndim}-D weight")
            w = np.array(b.T)
            bias = None
            add = self.only_reader(out)
            other = self.data_other(add, out) if add is not None and add.op_type == "Add" else None
            if add is not None and other is not None and other in self.consts:
                bias = self.bias(self.consts[other], w.shape[0])
                fused[id(add)] = label
                out = add.output[0]
                label = f"{label} + Add {(add.name or add.output[0])!r}"
            return _Op(label, one, out, _const([Dense(w, bias)]), hint=(int(w.shape[1]),))
        if t == "Add":
            if len(n.input) == 2 and all(i not in self.consts for i in n.input):
                return _Op(label, (n.input[0], n.input[1]), out)
            raise _Unsupported("add of a constant")
        if t == "Conv":
            w = self.need(n, 1)
            if w.ndim != 4:
                raise _Unsupported(f"{w.ndim - 2}-D convolution")
            bias, group = self.const(n, 2), int(a.get("group", 1))
            stride, dil = _pair(a.get("strides", 1)), _pair(a.get("dilations", 1))
            k = (int(w.shape[2]), int(w.shape[3]))
            pads = self.pads(a)

            def conv(shape: Shape) -> list[Layer]:
                p = _same_pads(shape, k, stride, dil) if pads is None else pads
                return [Conv2d(w, bias, stride, p, dil, group)]

            return _Op(label, one, out, conv)
        if t in ("MaxPool", "AveragePool"):
            if a.get("ceil_mode", 0) or _pair(a.get("dilations", 1)) != (1, 1):
                raise _Unsupported("ceil_mode or dilations")
            if len(n.output) > 1 and n.output[1] and self.readers.get(n.output[1]):
                raise _Unsupported("indices output")
            if "kernel_shape" not in a:
                raise _Unsupported("no kernel_shape")
            kind = "max" if t == "MaxPool" else "avg"
            k, stride = _pair(a["kernel_shape"]), _pair(a.get("strides", 1))
            pads = self.pads(a)
            exclude = kind == "avg" and not a.get("count_include_pad", 0)
            if exclude and pads is not None and any(pads):
                raise _Unsupported("count_include_pad=0 with padding")

            def pool(shape: Shape) -> list[Layer]:
                p = _same_pads(shape, k, stride, (1, 1)) if pads is None else pads
                if exclude and any(p):
                    raise SpecError("count_include_pad=0 with padding is not supported")
                return [Pool2d(kind, k, stride, p)]

            return _Op(label, one, out, pool)
        if t == "Flatten":
            axis = int(a.get("axis", 1))

            def flatten(shape: Shape) -> list[Layer]:
                if axis not in (1, -len(shape)):
                    raise SpecError(f"flatten axis {axis} (only 1)")
                return _flatten_layers(shape, (math.prod(shape),))

            return _Op(label, one, out, flatten)
        if t == "Reshape":
            if len(n.input) < 2 or n.input[1] not in self.symbolic:
                self.need(n, 1)
                if n.input[1] not in self.ints:
                    raise _Unsupported("target shape is not an integer tensor")
                target = [int(d) for d in self.ints[n.input[1]].reshape(-1)]
                aux: tuple[tuple[Hashable, Hashable], ...] = ()
            else:
                sym = list(self.symbolic[n.input[1]].reshape(-1))
                if any(isinstance(d, str) for d in sym[1:]) or sym[0] != "N":
                    raise _Unsupported("target shape uses the batch size other than as dim 0")
                target = [-2] + [int(d) for d in sym[1:]]
                aux = tuple(self.shape_reads[n.input[1]])
            allowzero = int(a.get("allowzero", 0))
            return _Op(label, one, out, self.reshape(target, allowzero), aux=aux)
        if t == "BatchNormalization":
            if a.get("training_mode", 0):
                raise _Unsupported("training_mode")
            bn = BatchNorm(self.need(n, 3), self.need(n, 4), self.need(n, 1), self.need(n, 2),
                           float(a.get("epsilon", 1e-5)))  # fmt: skip
            return _Op(label, one, out, _const([bn]))
        if t == "LayerNormalization":
            axis = int(a.get("axis", -1))
            scale, bias = self.need(n, 1), self.const(n, 2)
            eps = float(a.get("epsilon", 1e-5))
            if any(o and self.readers.get(o) for o in n.output[1:]):
                raise _Unsupported("mean/inv_std_dev outputs used")

            def layernorm(shape: Shape) -> list[Layer]:
                nd = len(shape) + 1
                ax = axis + nd if axis < 0 else axis
                if not 1 <= ax < nd:
                    raise SpecError(f"layer norm over axis {axis} of inputs {list(shape)}")
                ns = shape[ax - 1 :]
                w = np.broadcast_to(scale, ns).copy()
                b = None if bias is None else np.broadcast_to(bias, ns).copy()
                return [LayerNorm(ns, w, b, eps)]

            return _Op(label, one, out, layernorm)
        raise _Unsupported()

    def bias(self, c: Array, n_out: int) -> Array:
        if c.size == 1:
            return np.full(n_out, float(c.reshape(-1)[0]))
        if c.size != n_out or (c.ndim == 2 and c.shape[0] != 1) or c.ndim > 2:
            raise _Unsupported(f"bias of shape {list(c.shape)}")
        return np.array(c.reshape(-1))

    def pads(self, a: dict[str, Any]) -> tuple[int, int] | None:
        """Symmetric (top/bottom, left/right) pads; None for auto_pad SAME_*."""
        auto = a.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else str(auto)
        if auto == "VALID":
            return (0, 0)
        if auto in ("SAME_UPPER", "SAME_LOWER"):
            return None
        if auto != "NOTSET":
            raise _Unsupported(f"auto_pad={auto}")
        p = [int(v) for v in a.get("pads", [0, 0, 0, 0])]
        if len(p) != 4 or p[0] != p[2] or p[1] != p[3]:
            raise _Unsupported(f"asymmetric pads {p}")
        return (p[0], p[1])

    def reshape(self, target: list[int], allowzero: int) -> Build:
        batch = self.batch

        shown = str(["N" if d == -2 else d for d in target]).replace("'", "")

        def build(shape: Shape) -> list[Layer]:
            full = (None, *shape)
            dims = list(target)
            if not allowzero:
                for i, d in enumerate(dims):
                    if d == 0:
                        if i >= len(full):
                            raise SpecError(f"reshape to {shown}: no input dim {i} to copy")
                        dims[i] = -2 if i == 0 else int(full[i])  # type: ignore[arg-type]
            first, rest = dims[0], dims[1:]
            if first == -1 and -1 in rest:
                raise SpecError(f"reshape to {shown}: batch size ambiguous")
            if first not in (-1, -2) and first != batch:
                raise SpecError(f"reshape to {shown} changes the batch size")
            return _flatten_layers(shape, _resolve(rest, shape, f"reshape to {shown}"))

        return build

    def to_model(self, input_shape: Sequence[int] | None, name: str) -> Model:
        g = self.graph
        inits = {t.name for t in g.initializer}
        inputs = [i for i in g.input if i.name not in inits]
        if len(inputs) != 1 or len(g.output) != 1:
            raise SpecError(
                f"{name}: expected one input and one output, the graph has "
                f"{len(inputs)} and {len(g.output)}"
            )
        inp = inputs[0]
        dims = inp.type.tensor_type.shape.dim
        if dims and dims[0].HasField("dim_value"):
            self.batch = int(dims[0].dim_value)
        if input_shape is None:
            if len(dims) < 1 or not all(d.HasField("dim_value") for d in dims[1:]):
                raise SpecError(f"{name}: input {inp.name!r} has no static shape; pass input_shape")
            input_shape = [int(d.dim_value) for d in dims[1:]]

        ops: list[_Op] = []
        unsupported: list[str] = []
        skip: dict[int, str] = {}
        for n in g.node:
            if n.op_type == "Erf" and id(n) not in skip:
                m = self.gelu_pattern(n)
                if m is not None:
                    x, parts = m
                    for p in parts:
                        skip[id(p)] = "gelu"
                    ops.append(_Op(f"GELU {(n.name or n.output[0])!r}", (x,), parts[-1].output[0],
                                   _const([Activation("gelu")]), elementwise=True,
                                   aux=((parts[3].name or id(parts[3]), x),)))  # fmt: skip
        gelu_ops = {op.output: op for op in ops}
        ops = []
        for n in g.node:
            if id(n) in self.folded_nodes or (
                n.op_type == "Constant" and n.domain in ("", "ai.onnx")
            ):
                continue
            if id(n) in skip:
                if n.op_type == "Mul" and n.output[0] in gelu_ops:
                    ops.append(gelu_ops[n.output[0]])
                continue
            try:
                ops.append(self.convert(n, skip))
            except _Unsupported as exc:
                unsupported.append(_entry(self.label(n), exc))

        uses: Counter[Hashable] = Counter()
        for n in g.node:
            if id(n) in self.folded_nodes:
                uses.update(n.input[:1] if n.op_type == "Shape" else [])
            elif not (n.op_type == "Constant" and n.domain in ("", "ai.onnx")):
                uses.update(i for i in n.input if i and i not in self.consts)
        uses.update(o.name for o in g.output)
        graph = _Graph(ops, inp.name, g.output[0].name, uses)
        if not unsupported:
            for op in ops:
                for v in op.inputs:
                    if v not in graph.pos:
                        raise SpecError(f"{op.name}: reads {v!r}, not computed from the input")
        return _to_model(graph, unsupported, input_shape, name)


def from_onnx(
    path_or_model: str | Path | bytes | onnx.ModelProto,
    input_shape: Sequence[int] | None = None,
    name: str | None = None,
) -> Model:
    """Convert an ONNX model (a file, its bytes or a ``ModelProto``) to a Model.

    Supported: Gemm (``transB``; ``alpha`` 1 or a power of two, any ``beta``),
    MatMul (+ Add of a constant, fused into a dense layer), Add of two values
    forming a residual block ``x + f(x)``, Conv, Relu, LeakyRelu, Tanh,
    Sigmoid, Gelu and the Div/Erf/Add/Mul/Mul GELU the TorchScript exporter
    writes, Softmax (last axis of vectors), MaxPool, AveragePool, Flatten
    (axis 1), Reshape to a constant shape, BatchNormalization,
    LayerNormalization, Dropout and Identity.  Weights come from
    initializers and Constant nodes.  The input shape comes from the graph
    input (static dims after the batch dim) unless ``input_shape`` is given.
    """
    try:
        import onnx
    except ImportError:
        raise SpecError("from_onnx needs the onnx package (pip install onnx)") from None
    if isinstance(path_or_model, onnx.ModelProto):
        model = path_or_model
        default = model.graph.name or "onnx"
    elif isinstance(path_or_model, bytes):
        try:
            model = onnx.load_from_string(path_or_model)
        except Exception as exc:  # protobuf decode errors
            raise SpecError(f"cannot parse ONNX bytes: {exc}") from None
        default = model.graph.name or "onnx"
    else:
        path = Path(path_or_model)
        if not path.is_file():
            raise SpecError(f"ONNX file not found: {path}")
        try:
            model = onnx.load(str(path))
        except Exception as exc:  # protobuf decode errors
            raise SpecError(f"cannot read ONNX file {path}: {exc}") from None
        default = path.stem
    return _OnnxConverter(model).to_model(input_shape, name or default)
