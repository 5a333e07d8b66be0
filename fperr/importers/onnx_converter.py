"""The ONNX graph converter behind :func:`~fperr.importers.from_onnx`.

One pass over the nodes in graph order, with the batch size B fixed (the
graph input's static batch, else 3 for the analysis only):

* a node whose inputs are all constants is evaluated at import time by
  onnx's reference implementation (Shape of a data value is its static
  shape), so the shape subgraphs exporters write (Shape, Gather, Unsqueeze,
  Concat, Slice, ConstantOfShape, Cast, Range, Equal, Where, Expand, ...) fold
  to integer constants; float constants fold in float64 (a Cast to a float
  type casts to float64), as a float64 evaluation of the graph computes them;
* a data-movement node acts on the index map of its input
  (:mod:`.onnx_layout`), whatever it does to the batch axis;
* a computing node becomes fperr layers on its input per input (the batch
  axis found, the remaining layout written as reshape/slice/permute layers).

Every node that does not convert is counted, and the import is refused in
one line naming the op kinds (:func:`unsupported_message`).
"""

from __future__ import annotations

import functools
import logging
import math
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..errors import SpecError
from ..layers import Activation, Add, Layer, Shape
from ..model import Model
from ..operators import REGISTRY
from .builders import _const
from .graph import _Graph, _Op, _to_graph_model, _to_model, _Unsupported
from .onnx_layout import Lay, batch_axis, canonical, gather_layers, per_input
from .onnx_nodes import _attrs, _constant_value
from .onnx_ops import CONVERTERS, MOVEMENT, Site

if TYPE_CHECKING:  # pragma: no cover
    import onnx

LOG = logging.getLogger("fperr.importers.onnx")
DYNAMIC_BATCH = 3
"""The batch size a graph with a dynamic batch is analysed at (any B > 1 tells
the batch axis apart; 3 is no common feature size)."""


@functools.cache
def converters() -> dict[str, Callable[..., None]]:
    """The converter of each ONNX op type: each registered operator's ``onnx_ops`` to its
    ``from_onnx``, then the op types that are no one operator's
    (:data:`.onnx_ops.CONVERTERS`); each op type declared once
    (tests/test_onnx_patterns.py)."""
    table: dict[str, Callable[..., None]] = {}
    for op in dict.fromkeys(REGISTRY.values()):  # a class standing for several types once
        for t in op.onnx_ops:
            if t in table:  # pragma: no cover - a programming error
                raise ValueError(f"ONNX op type {t!r} declared twice")
            table[t] = op.from_onnx
    for t, convert in CONVERTERS.items():
        if t in table:  # pragma: no cover - a programming error
            raise ValueError(f"ONNX op type {t!r} declared twice")
        table[t] = convert
    return table


def unsupported_message(kinds: Counter[str], reasons: dict[str, str]) -> str:
    """One line: each unsupported op kind with its count and first reason."""
    parts = []
    for kind, n in kinds.most_common():
        why = reasons.get(kind, "")
        why = why if len(why) <= 90 else why[:87] + "..."
        parts.append(f"{kind} x{n}" + (f" ({why})" if why else ""))
    total = sum(kinds.values())
    return (f"unsupported ONNX ops: {', '.join(parts)} ({total} node{'s' * (total != 1)}); "
            "export with another opset or exporter (dynamo=True/False), replace these ops "
            "in the model, or cut the graph before them")  # fmt: skip


class _OnnxConverter:
    def __init__(self, model: onnx.ModelProto) -> None:
        g = model.graph
        self.model, self.graph = model, g
        # Nodes are keyed by id() below: holding every node keeps each one's Python
        # wrapper alive, which protobuf (upb) otherwise rebuilds, and recycles ids of.
        self.nodes = list(g.node)
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.values: dict[str, npt.NDArray[Any]] = {}  # constants (floats as float64)
        for t in g.initializer:
            from onnx import numpy_helper

            self.values[t.name] = _widen(np.asarray(numpy_helper.to_array(t)))
        for n in self.nodes:
            if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
                self.values[n.output[0]] = _widen(_constant_value(n))
        self.literal = set(self.values)  # initializers and Constant nodes, not folded values
        self.dynamic = False
        self.producer = {o: n for n in self.nodes for o in n.output if o}
        self.readers: dict[str, list[onnx.NodeProto]] = {}
        for n in self.nodes:
            for i in n.input:
                if i:
                    self.readers.setdefault(i, []).append(n)
        self.lays: dict[str, Lay] = {}
        self.ops: list[_Op] = []
        self.cache: dict[Hashable, tuple[Hashable, Shape]] = {}
        self.batch = 1
        self.input = self.output = ""
        self.skip: dict[int, str] = {}  # nodes fused into an op of another node
        self.counter = 0

    # -- constants -------------------------------------------------------------------------
    @property
    def consts(self) -> dict[str, npt.NDArray[Any]]:
        return self.values

    def const(self, n: onnx.NodeProto, i: int) -> npt.NDArray[np.float64] | None:
        if len(n.input) <= i or not n.input[i]:
            return None
        if n.input[i] not in self.values:
            raise _Unsupported(f"input {i} is not a constant")
        return np.asarray(self.values[n.input[i]], dtype=np.float64)

    def need(self, n: onnx.NodeProto, i: int) -> npt.NDArray[np.float64]:
        a = self.const(n, i)
        if a is None:
            raise _Unsupported(f"missing input {i}")
        return a

    def scalar(self, value: str) -> float | None:
        a = self.values.get(value)
        return float(np.asarray(a).reshape(-1)[0]) if a is not None and a.size == 1 else None

    def only_reader(self, value: str) -> onnx.NodeProto | None:
        r = self.readers.get(value, [])
        outs = {o.name for o in self.graph.output}
        return r[0] if len(r) == 1 and value not in outs else None

    def data_other(self, n: onnx.NodeProto, x: str) -> str | None:
        """The other input of a binary node ``n`` one of whose inputs is ``x``."""
        if len(n.input) != 2 or x not in n.input:
            return None
        return n.input[1] if n.input[0] == x else n.input[0]

    def label(self, n: onnx.NodeProto) -> str:
        return f"{n.op_type} {(n.name or n.output[0])!r}"

    # -- building ops ------------------------------------------------------------------------
    def key(self, base: str) -> str:
        self.counter += 1
        return f"{base}#{self.counter}"

    def per(self, lay: Lay, label: str) -> tuple[Hashable, Shape, int]:
        """The node holding ``lay`` per input (layout layers added), its per-input
        shape and the batch axis of the full value."""
        a, g = per_input(lay, self.batch)
        cache_key = (lay.node, g.shape, g.tobytes())
        if cache_key not in self.cache:
            layers = gather_layers(lay.per, g)
            if layers:
                out = self.key(f"{label} layout")
                self.ops.append(_Op(f"{label} (layout)", (lay.node,), out, _const(layers)))
                self.cache[cache_key] = (out, tuple(int(d) for d in g.shape))
            else:
                self.cache[cache_key] = (lay.node, tuple(lay.per))
        node, shape = self.cache[cache_key]
        return node, shape, a

    def chain(self, label: str, src: Hashable, shape: Shape, layers: list[Layer],
              elementwise: bool = False) -> tuple[Hashable, Shape]:  # fmt: skip
        """Layers on ``src`` (per-input ``shape``); the new node and its shape."""
        out = shape
        try:
            for layer in layers:
                out = layer.out_shape(out)
        except SpecError as exc:
            raise SpecError(f"{label}: {exc}") from None
        if not layers:
            return src, shape
        key = self.key(label)
        self.ops.append(_Op(label, (src,), key, _const(layers), elementwise=elementwise))
        return key, out

    def merge(self, label: str, srcs: list[Hashable], shapes: list[Shape],
              layer: Layer | None) -> tuple[Hashable, Shape]:  # fmt: skip
        m: Any = Add() if layer is None else layer
        try:
            out = m.merge_shape(shapes)
        except SpecError as exc:
            raise SpecError(f"{label}: {exc}") from None
        key = self.key(label)
        merge = None if layer is None else (lambda s, layer=layer: layer)
        self.ops.append(_Op(label, tuple(srcs), key, None, merge=merge))
        return key, out

    def constant(self, label: str, c: npt.NDArray[np.float64]) -> tuple[Hashable, Shape]:
        """A parameter as a graph node (read for the batch size from the input)."""
        layer: Any = REGISTRY["constant"](np.array(c))  # type: ignore[call-arg]
        key = self.key(f"{label} constant")
        self.ops.append(_Op(f"{label} (constant)", (self.input,), key, _const([layer])))
        return key, tuple(int(d) for d in c.shape)

    def lift(self, c: npt.NDArray[Any], full: Shape, a: int, what: str) -> npt.NDArray[np.float64]:
        """A constant operand broadcast to the full shape ``full``, per input (the
        batch axis ``a`` dropped); refused where it differs between inputs."""
        try:
            cf = np.broadcast_to(np.asarray(c, dtype=np.float64), full)
        except ValueError:
            raise _Unsupported(f"{what} of shape {list(c.shape)} does not broadcast to "
                               f"{list(full)}") from None  # fmt: skip
        first = np.take(cf, 0, axis=a)
        if not np.all(cf == np.expand_dims(first, a)):
            raise _Unsupported(f"{what} differs between inputs of the batch")
        return np.array(first)

    def unary(self, label: str, x: str, layers: list[Layer]) -> Lay:
        """Elementwise layers applied to the node under ``x`` (any layout)."""
        lay = self.lays[x]
        node, per = self.chain(label, lay.node, lay.per, layers, elementwise=True)
        return Lay(node, per, lay.idx)

    def rowwise(self, label: str, x: str, k: int, build: Callable[[Shape], list[Layer]]) -> Lay:
        """Layers acting on the last axis (length ``k``) alone: on the node itself
        when the value's rows are the node's rows, else on the per-input value."""
        lay = self.lays[x]
        idx = lay.idx
        rows = idx[..., :1]
        if lay.per and lay.per[-1] == k and idx.shape[-1] == k and np.all(rows % k == 0) and \
                np.array_equal(idx, rows + np.arange(k)):  # fmt: skip
            node, per = self.chain(label, lay.node, lay.per, build(lay.per))
            m = per[-1] if per else 1
            return Lay(node, per, (rows // k) * m + np.arange(m))
        if batch_axis(lay, self.batch) in (None, idx.ndim - 1):
            return self.rows(label, lay, k, build)
        src, shape, a = self.per(lay, label)
        node, per = self.chain(label, src, shape, build(shape))
        return canonical(node, per, self.batch, a)

    def rows(self, label: str, lay: Lay, k: int, build: Callable[[Shape], list[Layer]]) -> Lay:
        """A row-wise op on a value whose rows merge the batch with other axes
        (``(T N, D)``): each input's rows, in order, as a (rows, k) value."""
        rows = lay.idx.reshape(-1, k)
        b = rows // lay.size
        if not np.all(b == b[:, :1]):
            raise _Unsupported("its rows mix inputs of the batch")
        which = b[:, 0]
        mine = [np.flatnonzero(which == v) for v in range(self.batch)]
        if any(len(r) != len(mine[0]) for r in mine) or not len(mine[0]):
            raise _Unsupported("inputs of the batch have different numbers of rows")
        j = rows % lay.size
        g = j[mine[0]]
        if not all(np.array_equal(j[r], g) for r in mine):
            raise _Unsupported("its input differs in layout between inputs of the batch")
        src, shape, _ = self.per(Lay(lay.node, lay.per, (g + lay.size * np.arange(self.batch
                                 ).reshape(-1, 1, 1)).reshape(-1, *g.shape)), label)  # fmt: skip
        node, per = self.chain(label, src, shape, build(shape))
        m = per[-1]
        t = np.empty(len(rows), dtype=np.int64)
        for r in mine:
            t[r] = np.arange(len(r))
        out = (which * len(g) + t) * m
        return Lay(node, per, (out[:, None] + np.arange(m)).reshape(*lay.idx.shape[:-1], m))

    # -- the pass ----------------------------------------------------------------------------
    def to_model(self, input_shape: Sequence[int] | None, name: str,
                 notes: list[str] | None = None) -> Model:  # fmt: skip
        self.input, shape = self.graph_input(input_shape, name)
        self.lays[self.input] = canonical(self.input, shape, self.batch)
        self.output, needed = self.output_value(name, notes)
        fused = self.patterns()
        kinds: Counter[str] = Counter()
        reasons: dict[str, str] = {}
        poisoned: set[str] = set()
        for n in self.nodes:
            if needed is not None and id(n) not in needed:
                continue
            if id(n) in self.skip:
                if n.output[0] in fused:
                    x, layers, label = fused[n.output[0]]
                    if x in self.lays:
                        self.lays[n.output[0]] = self.unary(label, x, layers)
                    else:
                        poisoned.add(n.output[0])
                continue
            if any(i in poisoned for i in n.input):
                poisoned.update(o for o in n.output if o)
                continue
            try:
                self.visit(n)
            except _Unsupported as exc:
                kind = n.op_type if n.domain in ("", "ai.onnx") else f"{n.domain}.{n.op_type}"
                kinds[kind] += 1
                reasons.setdefault(kind, str(exc))
                poisoned.update(o for o in n.output if o)
        if kinds:
            raise SpecError(unsupported_message(kinds, reasons))
        out = self.output_node()
        folded = self.folded_batchnorms()
        if folded and notes is not None:
            notes.append(folded)
        if folded:
            LOG.warning("%s: %s", name, folded)
        uses: Counter[Hashable] = Counter(v for op in self.ops for v in op.inputs)
        uses[out] += 1
        graph = _Graph(self.ops, self.input, out, uses)
        if any(op.merge is not None or op.name.endswith("(constant)") for op in self.ops):
            return _to_graph_model(graph, shape, name)
        return _to_model(graph, [], shape, name)

    def output_value(self, name: str, notes: list[str] | None) -> tuple[str, set[int] | None]:
        """The value imported as the model's output, and the nodes it needs (None: all).
        A scikit-learn classifier graph (skl2onnx: a label and a ZipMap of probabilities)
        is cut before its final Sigmoid/Softmax: the model outputs the logits."""
        outs = [o.name for o in self.graph.output]
        if len(outs) == 1:
            return outs[0], None
        zipmap = next((n for n in self.nodes if n.op_type == "ZipMap"), None)
        p = zipmap.input[0] if zipmap is not None else ""
        cat = self.producer.get(p)
        if cat is not None and cat.op_type == "Concat" and len(cat.input) == 2:
            p = cat.input[1]  # [1 - p, p] of a two-class classifier: p = sigmoid(logit)
        act = self.producer.get(p)
        if act is None or act.op_type not in ("Sigmoid", "Softmax"):
            raise SpecError(f"{name}: expected one output, the graph has {len(outs)} "
                            f"({', '.join(outs)}); cut the graph to one output")  # fmt: skip
        note = (f"scikit-learn post-processing cut off: the model outputs the logits that "
                f"enter the final {act.op_type} (the probabilities, ArgMax, ZipMap and the "
                "labels are not imported; a two-class classifier has one logit, whose sign "
                "is the class)")  # fmt: skip
        if notes is not None:
            notes.append(note)
        LOG.info("%s: %s", name, note)
        needed: set[int] = set()
        todo = [act.input[0]]
        while todo:
            n = self.producer.get(todo.pop())
            if n is not None and id(n) not in needed:
                needed.add(id(n))
                todo += [i for i in n.input if i]
        return act.input[0], needed

    def output_node(self) -> Hashable:
        out = self.output
        if out not in self.lays:
            raise SpecError(f"the graph output {out!r} does not depend on the input")
        try:
            node, _, a = self.per(self.lays[out], "output")
        except _Unsupported as exc:
            raise SpecError(f"the graph output: {exc}") from None
        if a != 0:
            raise SpecError(f"the graph output has its batch axis at {a}; only 0 is supported")
        return node

    def visit(self, n: onnx.NodeProto) -> None:
        if n.domain not in ("", "ai.onnx"):
            raise _Unsupported(f"domain {n.domain}")
        if n.op_type == "Constant":
            return
        data = [i for i in n.input if i and i not in self.values]
        missing = [i for i in data if i not in self.lays]
        if missing:
            raise _Unsupported(f"reads {missing[0]!r}, which is not computed from the input")
        if not data:
            self.fold(n)
        elif n.op_type == "Shape":
            self.fold_shape(n)
        elif n.op_type in MOVEMENT and self.moves(n, data):
            return
        else:
            conv = converters().get(n.op_type)
            if conv is None:
                raise _Unsupported()
            try:
                conv(self, n, Site(_attrs(n), self.label(n), n.input[0] if n.input else ""))
            except SpecError as exc:
                msg = str(exc)
                raise SpecError(msg if msg.startswith(n.op_type) else
                                f"{self.label(n)}: {msg}") from None  # fmt: skip

    def fold(self, n: onnx.NodeProto) -> None:
        """A node of constants, evaluated by onnx's reference implementation."""
        import onnx
        from onnx.reference import ReferenceEvaluator

        node = onnx.NodeProto()
        node.CopyFrom(n)
        if n.op_type == "Cast":  # floats fold in float64, as a float64 run of the graph
            for a in node.attribute:
                if a.name == "to" and a.i in _FLOAT_TYPES:
                    a.i = onnx.TensorProto.DOUBLE
        feeds = {i: self.values[i] for i in n.input if i}
        try:
            ref = ReferenceEvaluator(node, opsets={"": self.opset or 17})
            outs = ref.run(None, feeds)
        except Exception as exc:  # the reference refusing the node: report, don't crash
            raise _Unsupported(f"cannot fold: {type(exc).__name__}") from None
        for name, v in zip(n.output, outs, strict=False):
            if name:
                self.values[name] = _widen(np.asarray(v))

    def fold_shape(self, n: onnx.NodeProto) -> None:
        a = _attrs(n)
        full = list(self.lays[n.input[0]].idx.shape)
        start, end = int(a.get("start", 0)), a.get("end")
        self.values[n.output[0]] = np.asarray(full[start : None if end is None else int(end)],
                                              dtype=np.int64)  # fmt: skip

    def moves(self, n: onnx.NodeProto, data: list[str]) -> bool:
        """Data movement on the index map; False where the node needs a computation
        (a Concat of different nodes: the concat merge)."""
        from onnx.reference import ReferenceEvaluator

        lays = [self.lays[i] for i in data]
        if len({lay.node for lay in lays}) != 1 or (
            n.op_type == "Concat" and any(i not in self.lays for i in n.input)
        ):
            return False
        if n.op_type != "Concat" and (n.input[0] not in self.lays or len(data) != 1):
            raise _Unsupported("a data value in a shape input")
        feeds = {i: (self.lays[i].idx if i in self.lays else self.values[i])
                 for i in n.input if i}  # fmt: skip
        try:
            outs = ReferenceEvaluator(n, opsets={"": self.opset or 17}).run(None, feeds)
        except Exception as exc:
            raise _Unsupported(f"cannot apply: {type(exc).__name__}: {exc}"[:120]) from None
        for name, v in zip(n.output, outs, strict=False):
            if name:
                self.lays[name] = Lay(lays[0].node, lays[0].per, np.asarray(v, dtype=np.int64))
        if (n.op_type == "Reshape" and self.dynamic and n.input[1] in self.literal
                and batch_axis(self.lays[n.output[0]], self.batch) is None):  # fmt: skip
            target = [int(d) for d in self.values[n.input[1]].reshape(-1)]
            raise _Unsupported(f"reshape to {target} changes the batch size (a constant "
                               "target shape in a graph with a dynamic batch)")  # fmt: skip
        return True

    def check_dropout(self, n: onnx.NodeProto) -> None:
        """The identity in inference; refused where it would drop at random."""
        a = _attrs(n)
        if len(n.output) > 1 and n.output[1] and self.readers.get(n.output[1]):
            raise _Unsupported("mask output used")
        if self.opset < 7 and not a.get("is_test", 0):  # opsets 1-6: training default
            raise _Unsupported("is_test=0 drops at random")
        mode = self.const(n, 2)
        if mode is not None and mode.reshape(-1)[0]:
            raise _Unsupported("training_mode")

    def graph_input(self, input_shape: Sequence[int] | None, name: str) -> tuple[str, Shape]:
        """The one data input (its name, its shape without the batch dim); sets the
        batch size of the analysis."""
        g = self.graph
        inits = {t.name for t in g.initializer}
        inputs = [i for i in g.input if i.name not in inits]
        if len(inputs) != 1:
            raise SpecError(f"{name}: expected one input, the graph has {len(inputs)}")
        inp = inputs[0]
        dims = inp.type.tensor_type.shape.dim
        static = bool(dims) and dims[0].HasField("dim_value") and dims[0].dim_value > 0
        self.batch = int(dims[0].dim_value) if static else DYNAMIC_BATCH
        self.dynamic = not static
        if input_shape is None:
            if len(dims) < 1 or not all(d.HasField("dim_value") for d in dims[1:]):
                raise SpecError(f"{name}: input {inp.name!r} has no static shape; pass input_shape")
            input_shape = [int(d.dim_value) for d in dims[1:]]
        return inp.name, tuple(int(d) for d in input_shape)

    # -- fused patterns ----------------------------------------------------------------------
    def patterns(self) -> dict[str, tuple[str, list[Layer], str]]:
        """GELU (Div/Erf/Add/Mul/Mul) and SiLU (Sigmoid, Mul): the last node's output ->
        (input, layers, label); every node of a pattern goes into ``skip``."""
        fused: dict[str, tuple[str, list[Layer], str]] = {}
        for n in self.nodes:
            if n.domain not in ("", "ai.onnx") or id(n) in self.skip:
                continue
            if n.op_type == "Erf" and (m := self.gelu_pattern(n)) is not None:
                x, parts = m
                for p in parts:
                    self.skip[id(p)] = "gelu"
                fused[parts[-1].output[0]] = (x, [Activation("gelu")], f"GELU {self.label(n)}")
            elif n.op_type == "Sigmoid" and (s := self.silu_pattern(n)) is not None:
                x, mul = s
                if id(mul) in self.skip:
                    continue
                self.skip[id(n)] = self.skip[id(mul)] = "silu"
                fused[mul.output[0]] = (x, [Activation("silu")],
                                        f"SiLU {(mul.name or mul.output[0])!r}")  # fmt: skip
        return fused

    def gelu_pattern(self, erf: onnx.NodeProto) -> tuple[str, list[onnx.NodeProto]] | None:
        """x -> Div(x, sqrt 2) | Mul(x, 1/sqrt 2) -> Erf -> Add 1 -> Mul x -> Mul 0.5, or
        the Muls by 0.5 then by x (either operand order).  The constants may be the
        float32 roundings of sqrt 2 and 1/sqrt 2 (within 1e-6): the layer is the exact
        GELU that the exported module computes, not the graph's float32 constant."""
        pre = self.producer.get(erf.input[0])
        if pre is None or pre.op_type not in ("Div", "Mul"):
            return None
        c = self.scalar(pre.input[1])
        want = math.sqrt(2) if pre.op_type == "Div" else 1 / math.sqrt(2)
        if c is None or abs(c - want) > 1e-6 or pre.input[0] in self.values:
            return None
        x = pre.input[0]
        add = self.only_reader(erf.output[0])
        if add is None or add.op_type != "Add":
            return None
        one = self.data_other(add, erf.output[0])
        if one is None or self.scalar(one) != 1.0:
            return None
        mul = self.only_reader(add.output[0])
        if mul is None or mul.op_type != "Mul":
            return None
        half = self.only_reader(mul.output[0])
        if half is None or half.op_type != "Mul":
            return None
        first, second = self.data_other(mul, add.output[0]), self.data_other(half, mul.output[0])
        if first is None or second is None:
            return None
        # x (1 + erf) then * 0.5 (TorchScript), or 0.5 (1 + erf) then x * (dynamo)
        if not ((first == x and self.scalar(second) == 0.5) or
                (self.scalar(first) == 0.5 and second == x)):  # fmt: skip
            return None
        if len(self.readers.get(pre.output[0], [])) != 1:
            return None
        return x, [pre, erf, add, mul, half]

    def silu_pattern(self, sig: onnx.NodeProto) -> tuple[str, onnx.NodeProto] | None:
        """x -> Sigmoid -> Mul(x, s) or Mul(s, x), the Sigmoid read by that Mul alone:
        torch's TorchScript exporter writes nn.SiLU and F.silu so (torch 2.13, opsets
        13-20)."""
        x = sig.input[0]
        if x in self.values or len(sig.output) != 1:
            return None
        mul = self.only_reader(sig.output[0])
        if mul is None or mul.op_type != "Mul" or mul.domain not in ("", "ai.onnx"):
            return None
        if self.data_other(mul, sig.output[0]) != x:
            return None
        return x, mul

    # -- BatchNorm folded by the exporter ----------------------------------------------------
    def folded_batchnorms(self) -> str:
        """A line for the import report when the exporter folded BatchNorm into the
        convolutions (empty if not seen).  The evidence, by exporter:

        * dynamo (onnxscript's optimizer): the Conv node's metadata names the rewrite
          (``pkg.onnxscript.rewriter.rule_name`` containing ``FuseBatchNormIntoConv``);
        * TorchScript exporter in eval mode with ``do_constant_folding=True`` (its
          default): the folded weights are new initializers named ``onnx::Conv_*``
          where an unfolded convolution keeps its parameter's name (``conv1.weight``).
          A heuristic: a graph that renamed its weights for other reasons is reported
          too, and one whose exporter named folded weights otherwise is not.

        Measured on torch 2.13: BatchNorm stays a node (imported as fperr's batchnorm)
        with ``dynamo=True, optimize=False``, and with ``dynamo=False`` and either
        ``do_constant_folding=False`` or ``training=torch.onnx.TrainingMode.PRESERVE``
        (eval-mode statistics all the same); ``dynamo=True`` with ``training=PRESERVE``
        still folds.
        """
        fused = sum(
            1 for n in self.nodes if n.op_type == "Conv" and any(
                p.key == "pkg.onnxscript.rewriter.rule_name" and "FuseBatchNorm" in p.value
                for p in n.metadata_props)
        )  # fmt: skip
        renamed = sum(1 for n in self.nodes if n.op_type == "Conv" and len(n.input) > 1
                      and n.input[1].startswith("onnx::Conv_"))  # fmt: skip
        if not fused and not renamed:
            return ""
        how = (f"{fused} Conv node(s) carry onnxscript's FuseBatchNormIntoConv rewrite"
               if fused else f"{renamed} Conv weight(s) are exporter-made 'onnx::Conv_*' "
               "initializers (heuristic)")  # fmt: skip
        return (
            f"BatchNorm folded into the convolutions by the exporter ({how}): the model "
            "is the folded network (weights folded in the graph's precision); to keep "
            "BatchNorm as a node export with dynamo=True, optimize=False, or dynamo=False "
            "with do_constant_folding=False or training=torch.onnx.TrainingMode.PRESERVE"
        )


_FLOAT_TYPES = (1, 10, 11, 16)  # FLOAT, FLOAT16, DOUBLE, BFLOAT16


def _widen(v: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """Floats as float64 (constants fold in float64); integers and booleans as they are."""
    return v.astype(np.float64) if v.dtype.kind == "f" else v


__all__ = ["_OnnxConverter", "batch_axis", "converters", "unsupported_message"]
