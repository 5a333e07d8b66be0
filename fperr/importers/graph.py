"""The converter-independent chain graph both importers build, lowered to a Model."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Union

import numpy as np
import numpy.typing as npt

from ..errors import SpecError
from ..layers import Layer, Residual, Shape
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
