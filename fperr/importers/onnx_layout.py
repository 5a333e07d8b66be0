"""Where the batch axis of an ONNX value lies: index maps over a computed node.

Exported graphs move data around freely: the TorchScript and dynamo exporters
write ``nn.MultiheadAttention`` with the batch axis second, merged with the
heads (``(T, N H, d)``) or with the tokens (``(T N, D)`` before the output
projection).  fperr's layers compute per input, with the batch axis first.

A data value of the graph is held as a :class:`Lay`: a computed fperr node Y
of shape ``(B, *per)`` and an integer array ``idx`` of the value's full ONNX
shape with ``value = Y.reshape(-1)[idx]``.  Data-movement nodes (Transpose,
Reshape, Gather with constant indices, Slice, Split, ...) act on ``idx`` alone,
run by onnx's reference implementation of the node on the index array itself,
so their semantics are ONNX's by construction.  A computing node needs its
input per input: :func:`batch_axis` finds the axis of the full value that
carries the batch (index // size(per) equal to the position along it and
constant along every other axis), and :func:`gather_layers` writes the
per-input selection left over as reshape / slice / permute layers, checked by
running them on the indices.  Anything else (a batch mixed into another axis
where a computation needs it) is refused.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from ..layers import Layer, Shape
from ..operators import REGISTRY
from .builders import _flatten_layers
from .graph import _Unsupported

Index = npt.NDArray[np.int64]


@dataclass(frozen=True, eq=False)
class Lay:
    """value = Y.reshape(-1)[idx] for the node ``node`` (shape (B, *per))."""

    node: Hashable
    per: Shape
    idx: Index

    @property
    def size(self) -> int:
        return math.prod(self.per)


def canonical(node: Hashable, per: Shape, batch: int, axis: int = 0) -> Lay:
    """The node's own value, with its batch axis moved to ``axis``."""
    idx = np.arange(batch * math.prod(per), dtype=np.int64).reshape(batch, *per)
    return Lay(node, tuple(per), np.moveaxis(idx, 0, axis))


def batch_axis(lay: Lay, batch: int) -> int | None:
    """The axis of the full value that carries the batch (the first such axis when
    the batch is 1), or None when the batch is mixed into other axes."""
    b = lay.idx // lay.size
    for a in range(lay.idx.ndim):
        if lay.idx.shape[a] != batch:
            continue
        shape = [1] * lay.idx.ndim
        shape[a] = batch
        if np.array_equal(b, np.broadcast_to(np.arange(batch).reshape(shape), b.shape)):
            return a
    return None


def per_input(lay: Lay, batch: int) -> tuple[int, Index]:
    """The batch axis and the flat indices (into one input's ``per``) that every
    input's value gathers; refuses values that mix inputs."""
    a = batch_axis(lay, batch)
    if a is None:
        raise _Unsupported("its input mixes the batch axis with other axes")
    j = np.moveaxis(lay.idx % lay.size, a, 0)
    if not np.all(j == j[:1]):
        raise _Unsupported("its input differs in layout between inputs of the batch")
    return a, np.ascontiguousarray(j[0])


def _sub_axes(g: Index) -> list[tuple[int, int, int]] | None:
    """(axis of g, size, stride) for each sub-axis of the affine map ``g``, from
    outer to inner within each axis; None unless g is affine after splitting axes."""
    subs: list[tuple[int, int, int]] = []
    for q, n in enumerate(g.shape):
        if n == 1:
            continue
        at = [0] * g.ndim
        at[q] = slice(None)  # type: ignore[call-overload]
        d = g[tuple(at)] - g[tuple(at)][0]
        found: list[tuple[int, int]] = []
        span, step = n, 1
        while span > 1:
            s = int(d[step])
            k = 1
            while k < span and d[k * step] == k * s:
                k += 1
            if span % k:
                return None
            found.append((k, s))
            span, step = span // k, step * k
        subs += [(q, k, s) for k, s in reversed(found)]
    return subs


def gather_layers(per: Shape, g: Index) -> list[Layer]:
    """Layers taking one input of shape ``per`` to ``g``'s shape, output unit o being
    input unit g[o] (flat): reshape, slices, permute, reshape; refused otherwise."""
    m = math.prod(per)
    q_shape = tuple(int(d) for d in g.shape)
    if g.size == m and np.array_equal(g.reshape(-1), np.arange(m)):
        return _flatten_layers(per, q_shape)
    subs = _sub_axes(g)
    if subs is None:
        raise _Unsupported("a gather of its input that is not a strided view")
    layers = _strided_layers(per, g, subs)
    if layers is None or not _check(layers, per, g):
        raise _Unsupported("a gather of its input that is not a strided view")
    return layers


def _strided_layers(per: Shape, g: Index, subs: list[tuple[int, int, int]]) -> list[Layer] | None:
    m, offset = math.prod(per), int(g.reshape(-1)[0])
    by_stride = sorted(range(len(subs)), key=lambda i: -subs[i][2])
    strides = [subs[i][2] for i in by_stride]
    if any(s <= 0 for s in strides) or len(set(strides)) != len(strides):
        return None
    dims: list[int] = []
    cuts: list[tuple[int, int]] = []
    rest, off = m, offset
    for i in by_stride:
        n, s = subs[i][1], subs[i][2]
        if rest % s:
            return None
        start, off = off // s, off % s
        if start + n > rest // s:
            return None
        dims.append(rest // s)
        cuts.append((start, n))
        rest = s
    if rest > 1:  # the unit-stride axis that no sub-axis spans: one element of it
        dims.append(rest)
        cuts.append((off, 1))
        off = 0
    if off:
        return None
    layers: list[Layer] = list(_flatten_layers(per, tuple(dims)))
    slice_op: Any = REGISTRY["slice"]
    for axis, (start, n) in enumerate(cuts):
        if (start, n) != (0, dims[axis]):
            layers.append(slice_op(axis, start, start + n))
    order = [by_stride.index(i) for i in range(len(subs))] + list(range(len(subs), len(dims)))
    if order != sorted(order):
        layers.append(REGISTRY["permute"](tuple(order)))  # type: ignore[call-arg]
    now = tuple(cuts[k][1] for k in order)
    layers += _flatten_layers(now, tuple(int(d) for d in g.shape))
    return layers


def _check(layers: list[Layer], per: Shape, g: Index) -> bool:
    """Run the layers on the indices themselves (exact in float64)."""
    from ..arith import Exact

    x = np.arange(math.prod(per), dtype=np.float64).reshape(1, *per)
    try:
        for layer in layers:
            x = layer.forward(x, Exact())
    except Exception:  # a layer refusing these shapes: not this gather
        return False
    return x.shape[1:] == g.shape and np.array_equal(x[0], g.astype(np.float64))
