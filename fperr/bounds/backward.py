"""The backward engine: cheap forward ranges, then one backward pass per output row.

A forward pass computes the run and, per layer, a :class:`~.steps.Step`:
the layer's local error boxes (the same functions of the values and the
incoming radius as the zonotope rules use) and an interval image of the
incoming radius, which gives the next layer's radius (interval arithmetic,
Moore 1966; exact for one layer, looser across several).  The output error
of the run is then

    e_L = sum_l Lambda_l (d_l + S_l t_l) + Lambda_0 d_0,   Lambda_l = A_{L} ... A_{l+1},

and one backward pass of the rows Lambda (N, R, n_l), started at the
identity on the R requested outputs, collects |Lambda_l| d_l per layer: the
same sum the forward zonotope builds column by column (Higham 2002, sec.
3.3; affine arithmetic), at the cost of R forward passes instead of one per
error source.  This is CROWN's backward bound propagation (Zhang et al.
2018; auto_LiRPA, Xu et al. 2020) with error boxes in place of input
perturbations and interval ranges for the remainder terms.  With the
zonotope's radii as ranges (``ranges="zonotope"``) the two engines bound
the same terms, so on a linear chain their bounds agree to rounding.

Layer norm needs signed information about its incoming error (the
variance's lower bound): the functional z_hat^T P is pulled back through
every earlier layer, one extra row per normalised group.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ..formats import Format
from ..layers import LayerNorm, Residual
from ..rounding import round as fround
from . import exponent_range as xr
from .enclosure import Enclosure, half_ulp
from .rules import Context, apply_rule
from .steps import Step, convert_step, layernorm_step, residual_local_step, simple_step

Array = npt.NDArray[np.float64]
Sink = Callable[[int, bool, Array], None]


def pull_back(steps: Sequence[Step], lam: Array, sink: Sink) -> Array:
    """Pull rows ``lam`` (N, R, n_out) back through ``steps`` (last first),
    passing each source's contribution |Lambda| box (N, R, n) or |Lambda S|
    (N, R, k) to ``sink(group, random, contribution)``; returns the rows at
    the input of the first step."""
    for step in reversed(steps):
        alam = np.abs(lam)
        for box, random in step.boxes:
            sink(step.group, random, alam * box[:, None, :])
        if step.signed is not None:
            N, R = lam.shape[:2]
            k = step.signed.shape[1]
            proj = (lam.reshape(N, R, k, -1) * step.signed[:, None]).sum(axis=-1)
            sink(step.group, False, np.abs(proj))
        if step.branch is not None:  # x + F(x): the identity plus the branch
            lam = lam + pull_back(step.branch, lam, sink)
        else:
            lam = step.adjoint(lam)
    return lam


class Collector:
    """Contributions per (input, row): summed per layer group, and, for the
    probabilistic combination, each random source kept on its own."""

    def __init__(self, N: int, R: int, n_groups: int, keep_random: bool) -> None:
        self.det = np.zeros((N, n_groups, R))
        self.keep_random = keep_random
        self.random_cols: list[Array] = []
        self.random_groups: list[Array] = []

    def __call__(self, group: int, random: bool, c: Array) -> None:
        if random and self.keep_random:
            self.random_cols.append(c)
            self.random_groups.append(np.full(c.shape[-1], group, dtype=np.int64))
        else:
            self.det[:, group, :] += c.sum(axis=-1)


def functional_radius(steps: Sequence[Step]) -> Callable[[Array], Array]:
    """rows (N, R, n) at the output of ``steps`` -> (N, R): the radius of each
    functional of the error there (every source, in absolute value)."""

    def radius(rows: Array) -> Array:
        total = np.zeros(rows.shape[:2])

        def add(group: int, random: bool, c: Array) -> None:
            nonlocal total
            total = total + c.sum(axis=-1)

        pull_back(steps, rows, add)
        return total

    return radius


class Ranges:
    """Where the layers' incoming radii come from: the steps' own interval
    images (``None``), or a reference zonotope carried alongside (the
    reference engine's radii: sharper, and as costly as that engine)."""

    def __init__(self, enc: Enclosure | None) -> None:
        self.enc = enc

    def radius(self, r_interval: Array) -> Array:
        return r_interval if self.enc is None else self.enc.radius()

    def convert(self, old: Any, new: Any, group: int) -> None:
        if self.enc is not None and not new.contains(old):
            mag = np.abs(self.enc.value) + 2 * self.enc.radius()
            enc = self.enc.with_value(fround(self.enc.value, new))
            self.enc = enc.add_box(half_ulp(mag, new), group, random=True)

    def advance(self, layer: Any, ctx: Context, group: int, value: Array) -> None:
        if self.enc is not None:
            self.enc = apply_rule(layer, self.enc, ctx, group).prune()
            if not np.array_equal(self.enc.value, value, equal_nan=True):  # pragma: no cover
                raise AssertionError("reference zonotope and steps disagree on values")


def forward_steps(
    layers: Sequence[Any],
    ctxs: Sequence[Context],
    groups: Sequence[int],
    x: Array,
    r: Array,
    prefix: list[Step],
    ranges: Ranges,
    storage: Format,
) -> tuple[list[Step], Array, Array, npt.NDArray[np.bool_]]:
    """Steps of ``layers`` from computed input ``x`` with radius ``r`` held in
    ``storage``; ``prefix``: the steps that lead to ``x`` (for functionals
    pulled back to the input).  Values move between storage formats where
    consecutive layers' arithmetic differs (``keep``).  Returns (steps, value,
    radius, inputs whose run may overflow)."""
    steps: list[Step] = []
    bad = np.zeros(x.shape[0], dtype=bool)
    for layer, ctx, group in zip(layers, ctxs, groups, strict=True):
        a = ctx.arith
        r = ranges.radius(r)
        if a.storage != storage:
            steps.append(convert_step(x, r, storage, a.storage, group))
            ranges.convert(storage, a.storage, group)
            storage = a.storage
            x, r = steps[-1].value, ranges.radius(steps[-1].radius().reshape(x.shape))
        mag = np.abs(x) + 2 * r
        bad |= xr.beyond_accumulator(layer, mag, a.storage, a.operand_format, a.accumulate)
        if isinstance(layer, Residual):
            sub_ranges = Ranges(None if ranges.enc is None else ranges.enc.materialize())
            branch, xb, rb, sub_bad = forward_steps(
                layer.layers, [ctx] * len(layer.layers), [group] * len(layer.layers), x, r,
                prefix + steps, sub_ranges, storage,
            )  # fmt: skip
            bad |= sub_bad
            y = a.store(x + xb)
            step = residual_local_step(y, r + rb, ctx, group)
            step.branch = branch
        elif isinstance(layer, LayerNorm):
            func = functional_radius(prefix + steps)
            step = layernorm_step(layer, x, r, ctx, group, func)
        else:
            step = simple_step(layer, x, r, ctx, group)
        steps.append(step)
        ranges.advance(layer, ctx, group, step.value)
        x = step.value
        r = step.radius().reshape(x.shape)
        with np.errstate(invalid="ignore"):
            N = int(x.shape[0])
            bad |= ~np.isfinite(x.reshape(N, -1)).all(axis=1)
            bad |= ~np.isfinite(r.reshape(N, -1)).all(axis=1)
    return steps, x, r, bad


def input_step(x: Array, ctx: Context) -> Step:
    """The input's rounding to storage: a deterministic box (a function of the data)."""
    xs = ctx.arith.store(x)
    box = np.abs(xs - x).reshape(x.shape[0], -1)
    return Step(xs, lambda lam: lam, np.zeros_like(box), 0, [(box, False)])


def row_selector(mask: npt.NDArray[np.bool_]) -> Array:
    """(N, R, K) unit rows for the outputs selected in ``mask`` (N, K), R = the
    most any input selects (rows beyond an input's count are zero)."""
    N, K = mask.shape
    R = max(1, int(mask.sum(axis=1).max(initial=0)))
    lam = np.zeros((N, R, K))
    n_idx, k_idx = np.nonzero(mask)
    slot = np.cumsum(mask, axis=1)[n_idx, k_idx] - 1
    lam[n_idx, slot, k_idx] = 1.0
    return lam


def scatter_rows(values: Array, mask: npt.NDArray[np.bool_], fill: Array) -> Array:
    """Inverse of :func:`row_selector`: (N, R, ...) per-row values into (N, K, ...)
    at the selected outputs, ``fill`` (N, K, ...) elsewhere."""
    out = fill.copy()
    n_idx, k_idx = np.nonzero(mask)
    slot = np.cumsum(mask, axis=1)[n_idx, k_idx] - 1
    out[n_idx, k_idx] = values[n_idx, slot]
    return out
