"""The converter-independent chain graph both importers build, lowered to a Model."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import numpy.typing as npt

from ..errors import SpecError
from ..layers import Add, Layer, Residual, Shape
from ..model import Model

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
    merge: Callable[[list[Shape]], Layer] | None = None  # several inputs: a graph's merge


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
            if op.merge is not None:
                raise SpecError(f"{op.name}: a merge of several values needs a graph model")
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


LISTED = 8
"""Unsupported ops named one by one up to this many; beyond, counted by kind."""


def unsupported_summary(unsupported: list[str]) -> str:
    """One line for the unsupported ops (entries "kind 'node'" with an optional
    reason): each named when few, else counted by kind, most frequent first, so
    that a model with hundreds of them still gets a short message."""
    n = len(unsupported)
    if n <= LISTED:
        return f"unsupported: {', '.join(unsupported)} ({n} op{'s' * (n != 1)})"
    kinds = Counter(entry.split(" '", 1)[0] for entry in unsupported)
    counted = ", ".join(f"{k} ({c})" for k, c in kinds.most_common())
    return (f"unsupported: {n} ops of {len(kinds)} kind{'s' * (len(kinds) != 1)}: {counted}; "
            f"first: {unsupported[0]}")  # fmt: skip


def _to_model(
    graph: _Graph, unsupported: list[str], input_shape: Sequence[int] | None, name: str
) -> Model:
    if unsupported:
        raise SpecError(unsupported_summary(unsupported))
    try:
        items = graph.chain()
    except SpecError:  # not a chain with residual blocks: a graph model
        return _to_graph_model(graph, input_shape, name)
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


def _to_graph_model(graph: _Graph, input_shape: Sequence[int] | None, name: str) -> Model:
    """The ops as a graph model: each op's layers read the layers that produce its
    inputs (an add of two computed values becomes an :class:`~fperr.layers.Add`)."""
    if input_shape is None:
        hint = _first_hint(list(graph.ops))
        if not isinstance(hint, tuple):
            raise SpecError("cannot infer the input shape of the graph; pass input_shape")
        input_shape = hint
    shapes: dict[Hashable, Shape] = {graph.input: tuple(int(d) for d in input_shape)}
    node: dict[Hashable, int] = {graph.input: -1}
    layers: list[Layer] = []
    wiring: list[tuple[int, ...]] = []
    names: list[str] = []
    for op in graph.ops:
        srcs = [v for v in op.inputs if v in node]
        if len(srcs) != len(op.inputs):  # pragma: no cover - ops come in topological order
            raise SpecError(f"{op.name}: reads a value computed after it")
        if op.build is None:
            ins = [shapes[v] for v in srcs]
            try:
                merge = Add() if op.merge is None else op.merge(ins)
                out = merge.merge_shape(ins)  # type: ignore[attr-defined]
            except SpecError as exc:
                raise SpecError(f"{op.name}: {exc}") from None
            new: list[Layer] = [merge]
        else:
            shape = shapes[srcs[0]]
            try:
                new = op.build(shape)
                out = shape
                for layer in new:
                    out = layer.out_shape(out)
            except SpecError as exc:
                raise SpecError(f"{op.name}: {exc}") from None
        for k, layer in enumerate(new):
            wiring.append(tuple(node[v] for v in srcs) if k == 0 else (len(layers) - 1,))
            names.append(op.name if len(new) == 1 else f"{op.name}.{k}")
            layers.append(layer)
        if new:
            node[op.output] = len(layers) - 1
        else:  # an op that builds no layer (identity): its output is its input's
            node[op.output] = node[srcs[0]]
        shapes[op.output] = out
    if node.get(graph.output) != len(layers) - 1:
        raise SpecError("the graph's output is not its last operation")
    return Model(name, tuple(int(d) for d in input_shape), tuple(layers), wiring=tuple(wiring),
                 names=_unique(names))  # fmt: skip


def _unique(names: list[str]) -> tuple[str, ...]:
    """Layer names made distinct (an op seen twice gets a suffix)."""
    seen: Counter[str] = Counter()
    out = []
    for n in names:
        seen[n] += 1
        out.append(n if seen[n] == 1 else f"{n}#{seen[n]}")
    return tuple(out)
