"""embedding: a lookup y[..., :] = fl(E)[t] of a parameter table E (vocab, dim) by ids.

The model's input is token ids (``nn.Embedding``), which travel through the
IR as float64 values like any input (and are rounded to storage with it: ids
up to 2^p are exact, 2048 in binary16, 256 in bfloat16, 2^24 in binary32).
The lookup is defined for every real input, so that it is a total function of
what reaches it: the id of a value v is t(v) = clip(floor(v), 0, vocab - 1)
(the identity on the ids 0..vocab-1).

Error: the exact output E[t(x_ex)], any run's fl(E)[t(x_run)], the computed
fl(E)[t(x^)].  Where no value within 2r of x^ changes the id (always, for
ids that are exact in storage: r = 0), the error is E[t] - fl(E)[t], the
table's storage rounding, known exactly: one signed deterministic generator
(as :mod:`.constant`; Higham 2002, section 2.1).  Where it may change, the
error lies within the spread of the candidate rows, max over a, b of
|E[a] - fl(E)[b]| for a, b between t(x^ - 2r) and t(x^ + 2r): a
deterministic box.  Nothing flows linearly from the input (the lookup is
piecewise constant): the adjoint is zero.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from ..errors import SpecError
from .base import Array, Operator, OperatorSpec, Put, Shape, Weights, register

if TYPE_CHECKING:
    from ..arith import Arithmetic
    from ..bounds.enclosure import Enclosure
    from ..bounds.rules import Context
    from ..bounds.steps import Step
    from ..model import Model

SCAN = 64
"""Candidate ids scanned row by row; wider ranges take the whole table's spread."""


class EmbeddingSpec(OperatorSpec):
    type: Literal["embedding"]
    weight: str = Field(description="key of the table (vocab, dim)")


def token_ids(x: Array, vocab: int) -> np.ndarray:
    """t(v) = clip(floor(v), 0, vocab - 1) as int64 (the ids themselves for ids)."""
    with np.errstate(invalid="ignore"):
        return np.clip(np.floor(x), 0, vocab - 1).astype(np.int64)


def spread(e: Array, fe: Array, lo: np.ndarray, hi: np.ndarray) -> Array:
    """``(*lo.shape, dim)``: max over ids a, b in [lo, hi] of |e[a] - fe[b]| per column
    (the whole table's where a range is wider than :data:`SCAN`)."""
    shape = (*lo.shape, e.shape[1])
    e_max, e_min = np.full(shape, -np.inf), np.full(shape, np.inf)
    f_max, f_min = e_max.copy(), e_min.copy()
    width = hi - lo
    near = width < SCAN
    for k in range(int(width[near].max(initial=-1)) + 1):
        idx = np.minimum(lo + k, hi)  # repeats the last id past the range: harmless
        sel = near[..., None]
        e_max = np.where(sel, np.maximum(e_max, e[idx]), e_max)
        e_min = np.where(sel, np.minimum(e_min, e[idx]), e_min)
        f_max = np.where(sel, np.maximum(f_max, fe[idx]), f_max)
        f_min = np.where(sel, np.minimum(f_min, fe[idx]), f_min)
    far = ~near[..., None]
    e_max, e_min = np.where(far, e.max(axis=0), e_max), np.where(far, e.min(axis=0), e_min)
    f_max, f_min = np.where(far, fe.max(axis=0), f_max), np.where(far, fe.min(axis=0), f_min)
    with np.errstate(invalid="ignore"):
        return np.maximum(e_max - f_min, f_max - e_min)  # inf where fl(E) overflowed


@register
class Embedding(Operator):
    type = "embedding"
    Spec = EmbeddingSpec
    torch_module_classes = (("Embedding", True),)

    def __init__(self, weight: Array) -> None:
        w = np.asarray(weight, dtype=np.float64)
        if w.ndim != 2 or w.size == 0:
            raise SpecError(f"embedding: weight must be a nonempty table (vocab, dim), "
                            f"got shape {list(w.shape)}")  # fmt: skip
        if not np.all(np.isfinite(w)):
            raise SpecError("embedding: weight holds a non-finite value")
        self.weight = w

    @property
    def vocab(self) -> int:
        return int(self.weight.shape[0])

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        """Ids (5 tokens; random inputs give ids 0..2) -> a table of 7 x 4 -> a head."""
        from ..layers import Dense, Flatten
        from ..model import Model

        layers = (cls(rng.normal(size=(7, 4))), Flatten(), Dense(rng.normal(size=(3, 20)) / 4))
        return Model("embedding", (5,), layers)

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        return cls(weights.need(spec.weight, where, ndim=2))

    @classmethod
    @functools.cache  # one operator per module, however often the graph calls it
    def from_torch_module(cls, mod: Any) -> Any:
        """nn.Embedding: the embedding operator (token ids as the model's input values);
        padding_idx and max_norm (which rewrites the table while running) are refused."""
        from ..importers.builders import _const
        from ..importers.from_torch import _need
        from ..importers.graph import _Unsupported

        if mod.padding_idx is not None or mod.max_norm is not None:
            raise _Unsupported("padding_idx or max_norm")
        table = _need(mod.weight, "weight")
        return _const([cls(table)]), None, False

    def spec_fields(self, put: Put) -> dict[str, Any]:
        return {"weight": put("weight", self.weight)}

    def out_shape(self, shape: Shape) -> Shape:
        return (*shape, int(self.weight.shape[1]))

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        return np.asarray(arith.store(self.weight))[token_ids(x, self.vocab)]

    def _terms(self, x: Array, r: Array, arith: Arithmetic) -> tuple[Array, Array, Array]:
        """(y, signed, box): the computed output, the table's rounding where no run's
        id may differ (0 elsewhere) and the candidate rows' spread where it may."""
        fe = np.asarray(arith.store(self.weight))
        t = token_ids(x, self.vocab)
        lo, hi = token_ids(x - 2 * r, self.vocab), token_ids(x + 2 * r, self.vocab)
        fixed = (lo == hi)[..., None]
        with np.errstate(invalid="ignore"):
            rounding = (self.weight - fe)[t]  # exact in float64 (Sterbenz), inf on overflow
        signed = np.where(fixed, rounding, 0.0)
        box = np.where(fixed, 0.0, spread(self.weight, fe, lo, hi)) if not fixed.all() else None
        return fe[t], signed, np.zeros_like(signed) if box is None else box

    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int) -> Step:
        from ..bounds.backend import current, portable
        from ..bounds.steps import Step, _flat, _signed

        x = xs[0]
        y, signed, box = self._terms(x, rs[0].reshape(x.shape), ctx.arith)
        N, n_in = x.shape[0], int(np.prod(x.shape[1:]))

        @portable
        def adjoint(lam: Array) -> Array:  # piecewise constant: no linear part
            return current().zeros((lam.shape[0], lam.shape[1], n_in))

        boxes = [(_flat(box), False)] if box.any() else []
        return Step(y, adjoint, np.zeros((N, y[0].size)), group, boxes, _signed(signed, y))

    def rule(self, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
        from ..bounds.enclosure import Enclosure

        x = enc.value
        y, signed, box = self._terms(x, enc.radius().reshape(x.shape), ctx.arith)
        out = ctx.add_signed(Enclosure(y), signed, index)
        return out.add_box(box, index, random=False) if box.any() else out

    def work(self, in_shapes: list[Shape], out_shape: Shape) -> float:
        return 0.0  # no arithmetic: stored rows are copied

    def torch_forward(self, xs: list[Any], params: dict[str, Any]) -> Any:
        import torch

        ids = torch.clamp(torch.floor(xs[0]), 0, self.vocab - 1).long()
        return torch.nn.functional.embedding(ids, params["weight"])

    def mpmath_forward(self, xs: list[Any]) -> Any:
        import mpmath

        e = np.vectorize(mpmath.mpf, otypes=[object])(self.weight)
        ids = np.vectorize(lambda v: min(max(int(mpmath.floor(v)), 0), self.vocab - 1),
                           otypes=[np.int64])(xs[0])  # fmt: skip
        return e[ids]

    def __repr__(self) -> str:
        return f"Embedding(vocab={self.vocab}, dim={self.weight.shape[1]})"
