"""The ONNX graph converter behind :func:`~fperr.importers.from_onnx`."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..errors import SpecError
from ..layers import (
    Activation,
    BatchNorm,
    Conv2d,
    Dense,
    Dropout,
    Layer,
    LayerNorm,
    Pool2d,
    RMSNorm,
    Shape,
)
from ..model import Model
from .builders import _const, _flatten_layers, _gelu, _pair, _resolve, _softmax_build
from .graph import Array, Build, _entry, _Graph, _Op, _to_model, _Unsupported
from .onnx_nodes import _ARITH, _SHAPE_OPS, _attrs, _constant_value, _is_pow2, _same_pads

if TYPE_CHECKING:  # pragma: no cover
    import onnx



def _normalized_shape(axis: int, shape: Shape, what: str) -> Shape:
    """The trailing dimensions a norm over ``axis`` (ONNX's, counting the batch)
    normalises, for inputs of ``shape`` (without the batch)."""
    nd = len(shape) + 1
    ax = axis + nd if axis < 0 else axis
    if not 1 <= ax < nd:
        raise SpecError(f"{what} over axis {axis} of inputs {list(shape)}")
    return tuple(shape[ax - 1 :])

class _OnnxConverter:
    def __init__(self, model: onnx.ModelProto) -> None:
        from onnx import numpy_helper

        g = model.graph
        self.graph = g
        # Nodes are keyed by id() below: holding every node keeps each one's Python
        # wrapper alive, which protobuf (upb) otherwise rebuilds, and recycles ids of.
        self.nodes = list(g.node)
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
        self.folded_nodes: set[int] = set()
        for n in g.node:  # Identity of a constant: initializers the exporter deduplicated
            if (
                n.op_type == "Identity"
                and n.domain in ("", "ai.onnx")
                and n.input[0] in self.consts
            ):
                self.consts[n.output[0]] = self.consts[n.input[0]]
                if n.input[0] in self.ints:
                    self.ints[n.output[0]] = self.ints[n.input[0]]
                self.folded_nodes.add(id(n))
        self.producer = {o: n for n in g.node for o in n.output if o}
        # Shape arithmetic (x.size(0) and friends) folded to constants, with "N" for the
        # batch size; `shape_reads` records the Shape nodes (and the values they read)
        # each folded value depends on, `folded_nodes` the nodes folded away.
        self.symbolic: dict[str, npt.NDArray[np.object_]] = {}
        self.shape_reads: dict[str, frozenset[tuple[Hashable, str]]] = {}
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
        """The value of shape-arithmetic node ``n`` ("N" for the batch size) and the
        Shape reads it depends on; raises _Unsupported where it does not fold."""
        a = _attrs(n)
        if n.op_type == "Shape":
            return self.fold_shape(n, a, static)
        args = [self.sym(i) if i else None for i in n.input]
        reads = frozenset().union(*(self.shape_reads.get(i, frozenset()) for i in n.input))
        assert args[0] is not None
        folder = _FOLDERS.get(n.op_type)
        if folder is None:
            raise _Unsupported()
        return folder(args, a, n.op_type), reads

    def fold_shape(
        self, n: onnx.NodeProto, a: dict[str, Any], static: dict[str, list[int | None]]
    ) -> tuple[npt.NDArray[np.object_], frozenset[tuple[Hashable, str]]]:
        """Shape: the statically inferred dims, the batch dim as "N"."""
        dims = static.get(n.input[0])
        start, end = int(a.get("start", 0)), a.get("end")
        if dims is None or n.input[0] in self.consts:
            raise _Unsupported("unknown shape")
        full: list[int | str | None] = ["N", *dims[1:]]
        full = full[start : None if end is None else int(end)]
        if any(d is None for d in full):
            raise _Unsupported("unknown shape")
        return np.asarray(full, dtype=object), frozenset({(id(n), n.input[0])})

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

    # -- pattern: SiLU as both torch exporters emit it -------------------------------------------
    def silu_pattern(self, sig: onnx.NodeProto) -> tuple[str, onnx.NodeProto] | None:
        """x -> Sigmoid -> Mul(x, s) or Mul(s, x), the Sigmoid read by that Mul alone: torch's
        TorchScript exporter writes nn.SiLU and F.silu so (measured on torch 2.13, opsets
        13-20). Returns x and the Mul; any other Mul is left to :meth:`convert`."""
        x = sig.input[0]
        if x in self.consts or len(sig.output) != 1:
            return None
        mul = self.only_reader(sig.output[0])
        if mul is None or mul.op_type != "Mul" or mul.domain not in ("", "ai.onnx"):
            return None
        if self.data_other(mul, sig.output[0]) != x:
            return None
        return x, mul

    def silu_ops(self, skip: dict[int, str]) -> dict[str, _Op]:
        """The SiLUs x * sigmoid(x), keyed by their output; their nodes go into ``skip``."""
        ops: list[_Op] = []
        for n in self.graph.node:
            if n.op_type != "Sigmoid" or n.domain not in ("", "ai.onnx") or id(n) in skip:
                continue
            m = self.silu_pattern(n)
            if m is None or id(m[1]) in skip:
                continue
            x, mul = m
            skip[id(n)] = skip[id(mul)] = "silu"
            # the Mul's read of x is the op's input, the Sigmoid's an absorbed extra read
            ops.append(_Op(f"SiLU {(mul.name or mul.output[0])!r}", (x,), mul.output[0],
                           _const([Activation("silu")]), elementwise=True,
                           aux=((n.name or id(n), x),)))  # fmt: skip
        return {str(op.output): op for op in ops}

    # -- one node: the table _CONVERTERS (below the class) maps op type to method -------------
    def convert(self, n: onnx.NodeProto, fused: dict[int, str]) -> _Op:
        """The op of node ``n``; raises _Unsupported (collected by :meth:`to_model`, which
        reports every unsupported node of the graph at once)."""
        a, label = _attrs(n), self.label(n)
        x = n.input[0] if n.input else ""
        if n.domain not in ("", "ai.onnx"):
            raise _Unsupported(f"domain {n.domain}")
        if x in self.consts:
            raise _Unsupported("on a constant")
        converter = _CONVERTERS.get(n.op_type)
        if converter is None:
            raise _Unsupported()
        return converter(self, n, _Site(a, label, (x,), n.output[0], fused))

    def op_activation(self, n: onnx.NodeProto, s: _Site) -> _Op:
        return _Op(s.label, s.one, s.out, _const([Activation(n.op_type.lower())]), elementwise=True)

    def op_leaky_relu(self, n: onnx.NodeProto, s: _Site) -> _Op:
        layer = Activation("leaky_relu", float(s.attrs.get("alpha", 0.01)))
        return _Op(s.label, s.one, s.out, _const([layer]), elementwise=True)

    def op_elu(self, n: onnx.NodeProto, s: _Site) -> _Op:
        layer = Activation("elu", alpha=float(s.attrs.get("alpha", 1.0)))
        return _Op(s.label, s.one, s.out, _const([layer]), elementwise=True)

    def op_hard(self, n: onnx.NodeProto, s: _Site) -> _Op:
        """HardSwish (alpha 1/6 and beta 1/2 by definition), and HardSigmoid
        max(0, min(1, alpha x + beta)) when its attributes are torch's: alpha = 1/6
        (as a float32 attribute: 0.16666667, taken as 1/6 exactly, as torch computes
        relu6(x + 3)/6; the graph's float32 alpha differs by 3e-8 relative) and beta = 1/2."""
        if n.op_type == "HardSigmoid":
            alpha, beta = float(s.attrs.get("alpha", 0.2)), float(s.attrs.get("beta", 0.5))
            if np.float32(alpha) != np.float32(1 / 6) or beta != 0.5:
                raise _Unsupported(f"HardSigmoid with alpha {alpha}, beta {beta}: only "
                                   "alpha = 1/6, beta = 1/2 (torch's)")  # fmt: skip
        kind = "hardswish" if n.op_type == "HardSwish" else "hardsigmoid"
        return _Op(s.label, s.one, s.out, _const([Activation(kind)]), elementwise=True)

    def op_clip(self, n: onnx.NodeProto, s: _Site) -> _Op:
        """Clip to [0, 6] is ReLU6 (the bounds are inputs from opset 11, attributes
        before); other ranges, or a missing bound, are refused."""
        if self.opset >= 11:
            ends = [self.const(n, i) for i in (1, 2)]
            lo, hi = (None if e is None or e.size != 1 else float(e.reshape(-1)[0]) for e in ends)
        else:
            lo, hi = s.attrs.get("min"), s.attrs.get("max")
        if lo != 0.0 or hi != 6.0:
            raise _Unsupported(f"Clip to [{lo}, {hi}]: only [0, 6] (ReLU6)")
        return _Op(s.label, s.one, s.out, _const([Activation("relu6")]), elementwise=True)

    def op_gelu(self, n: onnx.NodeProto, s: _Site) -> _Op:
        approx = s.attrs.get("approximate", b"none")
        approx = approx.decode() if isinstance(approx, bytes) else str(approx)
        build, _ = _gelu(approx)
        return _Op(s.label, s.one, s.out, build, elementwise=True)

    def op_identity(self, n: onnx.NodeProto, s: _Site) -> _Op:
        return _Op(s.label, s.one, s.out, _const([]), elementwise=True)

    def op_dropout(self, n: onnx.NodeProto, s: _Site) -> _Op:
        """The identity in inference; refused where it would drop at random."""
        a = s.attrs
        if len(n.output) > 1 and n.output[1] and self.readers.get(n.output[1]):
            raise _Unsupported("mask output used")
        if self.opset < 7 and not a.get("is_test", 0):  # opsets 1-6: training default
            raise _Unsupported("is_test=0 drops at random")
        mode = self.const(n, 2)
        if mode is not None and mode.reshape(-1)[0]:
            raise _Unsupported("training_mode")
        ratio = self.const(n, 1)
        p = float(ratio.reshape(-1)[0]) if ratio is not None else float(a.get("ratio", 0.5))
        return _Op(s.label, s.one, s.out, _const([Dropout(p)]), elementwise=True)

    def op_softmax(self, n: onnx.NodeProto, s: _Site) -> _Op:
        axis = int(s.attrs.get("axis", -1 if self.opset >= 13 else 1))
        return _Op(s.label, s.one, s.out, _softmax_build(axis, coerce=self.opset < 13))

    def op_gemm(self, n: onnx.NodeProto, s: _Site) -> _Op:
        """alpha * x B' + beta * C: alpha folds into the weights only if it is a power of
        two (scaling by 2^k is exact barring over/underflow)."""
        a = s.attrs
        if a.get("transA", 0):
            raise _Unsupported("transA=1")
        b = self.need(n, 1)
        w = b if a.get("transB", 0) else b.T
        alpha, beta = float(a.get("alpha", 1.0)), float(a.get("beta", 1.0))
        if alpha != 1.0:
            if not _is_pow2(alpha):
                raise _Unsupported(
                    f"alpha={alpha:g}: only 1 or a power of two, which folds "
                    "exactly into the weights"
                )
            w = w * alpha
        c = self.const(n, 2)
        bias = None if c is None else self.bias(beta * c, w.shape[0])
        return _Op(s.label, s.one, s.out, _const([Dense(np.array(w), bias)]),
                   hint=(int(w.shape[1]),))  # fmt: skip

    def op_matmul(self, n: onnx.NodeProto, s: _Site) -> _Op:
        """x W, with an Add of a constant that only reads it fused in as the bias."""
        b = self.need(n, 1)
        if b.ndim != 2:
            raise _Unsupported(f"{b.ndim}-D weight")
        w = np.array(b.T)
        bias = None
        label, out = s.label, s.out
        add = self.only_reader(out)
        other = self.data_other(add, out) if add is not None and add.op_type == "Add" else None
        if add is not None and other is not None and other in self.consts:
            bias = self.bias(self.consts[other], w.shape[0])
            s.fused[id(add)] = label
            out = add.output[0]
            label = f"{label} + Add {(add.name or add.output[0])!r}"
        return _Op(label, s.one, out, _const([Dense(w, bias)]), hint=(int(w.shape[1]),))

    def op_add(self, n: onnx.NodeProto, s: _Site) -> _Op:
        if len(n.input) == 2 and all(i not in self.consts for i in n.input):
            return _Op(s.label, (n.input[0], n.input[1]), s.out)
        raise _Unsupported("add of a constant")

    def op_conv(self, n: onnx.NodeProto, s: _Site) -> _Op:
        a = s.attrs
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

        return _Op(s.label, s.one, s.out, conv)

    def op_pool(self, n: onnx.NodeProto, s: _Site) -> _Op:
        """MaxPool and AveragePool."""
        a = s.attrs
        if a.get("ceil_mode", 0) or _pair(a.get("dilations", 1)) != (1, 1):
            raise _Unsupported("ceil_mode or dilations")
        if len(n.output) > 1 and n.output[1] and self.readers.get(n.output[1]):
            raise _Unsupported("indices output")
        if "kernel_shape" not in a:
            raise _Unsupported("no kernel_shape")
        kind = "max" if n.op_type == "MaxPool" else "avg"
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

        return _Op(s.label, s.one, s.out, pool)

    def op_flatten(self, n: onnx.NodeProto, s: _Site) -> _Op:
        axis = int(s.attrs.get("axis", 1))

        def flatten(shape: Shape) -> list[Layer]:
            if axis not in (1, -len(shape)):
                raise SpecError(f"flatten axis {axis} (only 1)")
            return _flatten_layers(shape, (math.prod(shape),))

        return _Op(s.label, s.one, s.out, flatten)

    def op_reshape(self, n: onnx.NodeProto, s: _Site) -> _Op:
        """Reshape to a constant shape, or to [N, ...] with N read from x.size(0)."""
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
        allowzero = int(s.attrs.get("allowzero", 0))
        return _Op(s.label, s.one, s.out, self.reshape(target, allowzero), aux=aux)

    def op_batch_norm(self, n: onnx.NodeProto, s: _Site) -> _Op:
        a = s.attrs
        # training mode normalises by batch statistics: training_mode=1 (opset 14+),
        # the running-statistics outputs (opsets 7-13) or is_test=0 (opsets 1-6)
        if (
            a.get("training_mode", 0)
            or any(n.output[1:])
            or (self.opset < 7 and not a.get("is_test", 0))
        ):
            raise _Unsupported("training mode")
        if not a.get("spatial", 1):
            raise _Unsupported("spatial=0 (per-activation statistics)")
        bn = BatchNorm(self.need(n, 3), self.need(n, 4), self.need(n, 1), self.need(n, 2),
                       float(a.get("epsilon", 1e-5)))  # fmt: skip
        return _Op(s.label, s.one, s.out, _const([bn]))

    def op_layer_norm(self, n: onnx.NodeProto, s: _Site) -> _Op:
        axis = int(s.attrs.get("axis", -1))
        scale, bias = self.need(n, 1), self.const(n, 2)
        eps = float(s.attrs.get("epsilon", 1e-5))
        if any(o and self.readers.get(o) for o in n.output[1:]):
            raise _Unsupported("mean/inv_std_dev outputs used")

        def layernorm(shape: Shape) -> list[Layer]:
            ns = _normalized_shape(axis, shape, "layer norm")
            w = np.broadcast_to(scale, ns).copy()
            b = None if bias is None else np.broadcast_to(bias, ns).copy()
            return [LayerNorm(ns, w, b, eps)]

        return _Op(s.label, s.one, s.out, layernorm)

    def op_rms_norm(self, n: onnx.NodeProto, s: _Site) -> _Op:
        """RMSNormalization (opset 23): X / sqrt(mean(X^2) + epsilon) * scale over the
        axes from ``axis`` on; ``stash_type`` (the precision of the statistics) is a
        kernel's choice, allowed for by the bound rule as for layer norm."""
        axis = int(s.attrs.get("axis", -1))
        scale = self.need(n, 1)
        eps = float(s.attrs.get("epsilon", 1e-5))

        def rmsnorm(shape: Shape) -> list[Layer]:
            ns = _normalized_shape(axis, shape, "RMS norm")
            return [RMSNorm(ns, np.broadcast_to(scale, ns).copy(), eps)]

        return _Op(s.label, s.one, s.out, rmsnorm)

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
        inp, input_shape = self.graph_input(input_shape, name)
        skip: dict[int, str] = {}
        fused_ops = {**self.gelu_ops(skip), **self.silu_ops(skip)}
        ops, unsupported = self.convert_all(skip, fused_ops)
        graph = _Graph(ops, inp, self.graph.output[0].name, self.uses())
        if not unsupported:
            for op in ops:
                for v in op.inputs:
                    if v not in graph.pos:
                        raise SpecError(f"{op.name}: reads {v!r}, not computed from the input")
        return _to_model(graph, unsupported, input_shape, name)

    def graph_input(
        self, input_shape: Sequence[int] | None, name: str
    ) -> tuple[str, Sequence[int]]:
        """The one data input (its name, its shape without the batch dim); sets the
        exported batch size, if static."""
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
        return inp.name, input_shape

    def gelu_ops(self, skip: dict[int, str]) -> dict[str, _Op]:
        """The decomposed GELUs, keyed by their output; their nodes go into ``skip``."""
        ops: list[_Op] = []
        for n in self.graph.node:
            if n.op_type == "Erf" and id(n) not in skip:
                m = self.gelu_pattern(n)
                if m is not None:
                    x, parts = m
                    for p in parts:
                        skip[id(p)] = "gelu"
                    ops.append(_Op(f"GELU {(n.name or n.output[0])!r}", (x,), parts[-1].output[0],
                                   _const([Activation("gelu")]), elementwise=True,
                                   aux=((parts[3].name or id(parts[3]), x),)))  # fmt: skip
        return {str(op.output): op for op in ops}

    def convert_all(
        self, skip: dict[int, str], fused_ops: dict[str, _Op]
    ) -> tuple[list[_Op], list[str]]:
        """The ops in graph order, and an entry for every node that does not convert;
        a fused pattern (GELU, SiLU) stands at the place of its last node."""
        ops: list[_Op] = []
        unsupported: list[str] = []
        for n in self.graph.node:
            if id(n) in self.folded_nodes or (
                n.op_type == "Constant" and n.domain in ("", "ai.onnx")
            ):
                continue
            if id(n) in skip:
                if n.output[0] in fused_ops:
                    ops.append(fused_ops[n.output[0]])
                continue
            try:
                ops.append(self.convert(n, skip))
            except _Unsupported as exc:
                unsupported.append(_entry(self.label(n), exc))
        return ops, unsupported

    def uses(self) -> Counter[Hashable]:
        """Reads of each value: a folded Shape reads its input once, constants not at all."""
        g = self.graph
        uses: Counter[Hashable] = Counter()
        for n in g.node:
            if id(n) in self.folded_nodes:
                uses.update(n.input[:1] if n.op_type == "Shape" else [])
            elif not (n.op_type == "Constant" and n.domain in ("", "ai.onnx")):
                uses.update(i for i in n.input if i and i not in self.consts)
        uses.update(o.name for o in g.output)
        return uses


@dataclass(frozen=True)
class _Site:
    """What an op converter reads besides the node: its attributes, its name in
    messages, its data input and output, and ``fused`` (Add nodes fused into an
    earlier MatMul, which that MatMul's converter records)."""

    attrs: dict[str, Any]
    label: str
    one: tuple[str]
    out: str
    fused: dict[int, str]


# The registry keyed by op type (as in the ONNX reference implementation): a type not in
# it is unsupported, and to_model lists every such node of the graph in one error.
_CONVERTERS: dict[str, Callable[[_OnnxConverter, onnx.NodeProto, _Site], _Op]] = {
    "Relu": _OnnxConverter.op_activation,
    "Tanh": _OnnxConverter.op_activation,
    "Sigmoid": _OnnxConverter.op_activation,
    "LeakyRelu": _OnnxConverter.op_leaky_relu,
    "Clip": _OnnxConverter.op_clip,
    "Gelu": _OnnxConverter.op_gelu,
    "Elu": _OnnxConverter.op_elu,
    "HardSwish": _OnnxConverter.op_hard,
    "HardSigmoid": _OnnxConverter.op_hard,
    "Identity": _OnnxConverter.op_identity,
    "Dropout": _OnnxConverter.op_dropout,
    "Softmax": _OnnxConverter.op_softmax,
    "Gemm": _OnnxConverter.op_gemm,
    "MatMul": _OnnxConverter.op_matmul,
    "Add": _OnnxConverter.op_add,
    "Conv": _OnnxConverter.op_conv,
    "MaxPool": _OnnxConverter.op_pool,
    "AveragePool": _OnnxConverter.op_pool,
    "Flatten": _OnnxConverter.op_flatten,
    "Reshape": _OnnxConverter.op_reshape,
    "BatchNormalization": _OnnxConverter.op_batch_norm,
    "LayerNormalization": _OnnxConverter.op_layer_norm,
    "RMSNormalization": _OnnxConverter.op_rms_norm,
}


# -- folding of shape arithmetic: one function per op type, on object arrays ("N" the batch) --
_Sym = npt.NDArray[np.object_]


def _fold_same(args: list[_Sym | None], a: dict[str, Any], t: str) -> _Sym:
    """Cast and Identity."""
    assert args[0] is not None
    return args[0]


def _fold_gather(args: list[_Sym | None], a: dict[str, Any], t: str) -> _Sym:
    x, idx = args[0], args[1]
    assert x is not None
    if int(a.get("axis", 0)) != 0 or idx is None:
        raise _Unsupported("gather axis")
    return np.asarray(x[idx.astype(np.int64)], dtype=object)


def _fold_squeeze(args: list[_Sym | None], a: dict[str, Any], t: str) -> _Sym:
    """Unsqueeze and Squeeze; axes an attribute (opset < 13) or the second input."""
    x = args[0]
    assert x is not None
    axes_arg = args[1] if len(args) > 1 else None
    axes = a.get("axes") if axes_arg is None else [int(v) for v in axes_arg.reshape(-1)]
    if t == "Unsqueeze":
        for ax in sorted(int(v) for v in axes or []):
            x = np.expand_dims(x, ax)
        return np.asarray(x, dtype=object)
    return np.asarray(np.squeeze(x, None if not axes else tuple(axes)), dtype=object)


def _fold_concat(args: list[_Sym | None], a: dict[str, Any], t: str) -> _Sym:
    parts = [np.atleast_1d(v) for v in args if v is not None]
    return np.concatenate(parts, axis=int(a.get("axis", 0)))


def _fold_arith(args: list[_Sym | None], a: dict[str, Any], t: str) -> _Sym:
    """Integer Add/Sub/Mul/Div/Mod of constants; not of the batch size."""
    x, y = args[0], args[1]
    assert x is not None
    if y is None or any(isinstance(v, str) for v in (*x.reshape(-1), *y.reshape(-1))):
        raise _Unsupported("arithmetic on the batch size")
    if t == "Mod" and int(a.get("fmod", 0)):
        raise _Unsupported("fmod")
    return np.asarray(np.frompyfunc(_ARITH[t], 2, 1)(x, y), dtype=object)


def _fold_reshape(args: list[_Sym | None], a: dict[str, Any], t: str) -> _Sym:
    x, y = args[0], args[1]
    assert x is not None and y is not None
    new = [int(d) for d in y.reshape(-1)]
    if not int(a.get("allowzero", 0)):
        new = [int(x.shape[i]) if d == 0 else d for i, d in enumerate(new)]
    return np.reshape(x, tuple(new))


def _fold_slice(args: list[_Sym | None], a: dict[str, Any], t: str) -> _Sym:
    x = args[0]
    assert x is not None
    if x.ndim != 1:
        raise _Unsupported("slice rank")
    starts, ends = args[1], args[2]
    steps = args[4] if len(args) > 4 and args[4] is not None else None
    assert starts is not None and ends is not None
    sl = slice(int(starts[0]), int(min(ends[0], 2**62)), None if steps is None else int(steps[0]))
    return np.asarray(x[sl], dtype=object)


_FOLDERS: dict[str, Callable[[list[_Sym | None], dict[str, Any], str], _Sym]] = {
    "Cast": _fold_same,
    "Identity": _fold_same,
    "Gather": _fold_gather,
    "Unsqueeze": _fold_squeeze,
    "Squeeze": _fold_squeeze,
    "Concat": _fold_concat,
    "Reshape": _fold_reshape,
    "Slice": _fold_slice,
    **{t: _fold_arith for t in _ARITH},
}
