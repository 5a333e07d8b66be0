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
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import FperrInputError
from ..formats import Format
from ..layers import Residual
from ..operators import Operator
from . import exponent_range as xr
from .backend import apply_adjoint, current, on
from .enclosure import Enclosure
from .memory import max_bytes
from .norm_ranges import euclid, narrow
from .rules import Context, apply_rule, convert_rule, run_reach
from .steps import Mask, Step, convert_step, identity, residual_local_step

Array = npt.NDArray[np.float64]
Sink = Callable[[int, bool, Array, Array | None], None]
Anchor = tuple[Array, Array]  # (values, radii), each (N, units), of another run

WIDE = 0.05
"""An interval range at a layer's input wider than this fraction of the input's
largest value marks the input: interval arithmetic forgets the signs of the
errors, so on deep or wide layers its ranges can outgrow the sharp (zonotope)
ones many times over, and wide ranges loosen the local terms they inflate
(|x| + 2r) and the slopes of units they make unstable.  ``engine="auto"``
bounds such inputs of a chain with the zonotope instead (see
:func:`fperr.bounds.engine.bound_run`)."""


SHARPEN = 0.02
"""Ranges wider than this fraction of a unit's value, at the input of a curved
layer (tanh, sigmoid, GELU, softmax, layer norm: remainders of order r^2), are
sharpened by backward rows (:func:`sharpen_radius`).  Smaller is sharper and
costlier: on the deep tanh example 0.1 leaves the bound up to 3.1x the
zonotope's, 0.02 within 3%, 0.01 within 1%."""

SHARPEN_BUDGET = 1024.0
"""Sharpening may cost each input at most this many forward passes (counted as
multiply-adds of the layers passed so far; one row pulled back from a layer
costs about a forward pass up to it).  An input over budget keeps interval
ranges at the remaining layers: a sound, wider bound, in bounded time.  The
decision rests on the input's own rows, so bounds do not depend on the batch."""

SHARPEN_KINK = 0.5
"""The same for piecewise-linear layers (ReLU, leaky ReLU, ReLU6, max pooling):
there the range matters where it may reach the kink (a unit changing side, a
window's winner in doubt), so only units whose radius exceeds half their value
are sharpened (on the digits CNN: 0.1 s for 150 inputs instead of 0.4 s at
2%, the same median bound)."""


FULL = 2.0**-10
"""Full ranges (``ranges="full"``) sharpen, at the input of every layer that has
a sharpening threshold, each unit whose interval radius exceeds this fraction of
its value, with no budget: every unit whose range could matter (a binary16
rounding is 2^-11 of the value), not the units of a binary32 run whose ranges
stay near 2^-24 (sharpening those would double the cost and change nothing)."""


@dataclass
class Tape:
    """Steps in the order they were computed, and what each reads: ``sources[i]``
    lists the steps whose outputs step i reads (empty for step 0, the tape's
    input: the model input's rounding, or a residual branch's entry)."""

    steps: list[Step] = field(default_factory=list)
    sources: list[tuple[int, ...]] = field(default_factory=list)
    positions: list[int] = field(default_factory=list)  # graph position -> step (0: entry)
    wide: npt.NDArray[np.bool_] | None = None  # inputs whose interval range grew wide
    # per step, the step that contributes its boxes, and those boxes (:func:`absorbed`)
    _folds: tuple[list[int | None], dict[int, list[tuple[int, bool, Array]]]] | None = None

    def add(self, step: Step, sources: tuple[int, ...]) -> int:
        self.steps.append(step)
        self.sources.append(sources)
        return len(self.steps) - 1


def absorber(tape: Tape, i: int) -> int | None:
    """The step that contributes step ``i``'s boxes for it, if any: its only reader
    on the tape as it stands (a pull-back never reaches steps added later) when that
    reader scales rows by a d of its own (:attr:`Step.scale`: elementwise functions,
    batch norm), since |lam d| box = |lam| (|d| box): one |lam| for both steps."""
    return _folds(tape)[0][i]


def absorbed(tape: Tape, j: int) -> list[tuple[int, bool, Array]]:
    """(group, random, |d| box) of the boxes step ``j`` contributes for its source
    (and, through it, for the source's own absorbed ones), once per tape length."""
    by, cache = _folds(tape)
    if j not in cache:
        out: list[tuple[int, bool, Array]] = []
        if j > 0 and by[tape.sources[j][0]] == j:
            i = tape.sources[j][0]
            ad = np.abs(np.asarray(tape.steps[j].scale))
            out = [(g, random, ad * box)
                   for g, random, box in _boxes(tape.steps[i]) + absorbed(tape, i)]
        cache[j] = out
    return cache[j]


def _folds(tape: Tape) -> tuple[list[int | None], dict[int, list[tuple[int, bool, Array]]]]:
    """(absorber of each step, cache of :func:`absorbed`) for the tape's current length
    (a step added later may read an earlier one: both are redone then)."""
    n = len(tape.steps)
    if tape._folds is None or len(tape._folds[0]) != n:
        readers: list[list[int]] = [[] for _ in range(n)]
        for j, srcs in enumerate(tape.sources):
            for i in srcs:
                readers[i].append(j)
        by: list[int | None] = [None] * n
        for i in range(1, n):  # a tape's entry may be an enclosing tape's step: left alone
            if len(readers[i]) == 1:
                j = readers[i][0]
                st = tape.steps[j]
                if st.scale is not None and st.branch is None and tape.sources[j] == (i,):
                    by[i] = j
        tape._folds = (by, {})
    return tape._folds


def _boxes(step: Step) -> list[tuple[int, bool, Array]]:
    """(group, random, box) of a step's own nonzero boxes."""
    return [(step.group, random, box) for box, random in step.live_boxes()]


def _contribute(step: Step, lam: Array, sink: Sink,
                boxes: list[tuple[int, bool, Array]]) -> None:  # fmt: skip
    """Pass to ``sink`` the contributions of ``boxes`` ((group, random, box): the
    step's own and those it absorbed, :func:`absorbed`; nonzero ones only) and of
    ``step``'s signed generators, for rows ``lam`` at the step's output."""
    if boxes:  # zero boxes add nothing; layers that move values (flatten) have none
        alam = abs(lam)
        for group, random, box in boxes:
            sink(group, random, alam, on(box))
    if step.signed is not None:
        N, R = lam.shape[:2]
        k = step.signed.shape[1]
        # (N, k, R, m) @ (N, k, m, 1): one batched GEMV per block, not a product array
        blocks = lam.reshape(N, R, k, -1).swapaxes(1, 2)
        proj = (blocks @ on(step.signed)[:, :, :, None])[..., 0].swapaxes(1, 2)
        sink(step.group, False, abs(proj), None)


def summed(alam: Array, box: Array | None) -> Array:
    """(N, R): sum over sources of |Lambda| box (one batched GEMV), or of ``alam``
    itself when it already holds the contributions (``box`` None)."""
    if box is None:
        return alam.sum(axis=-1)
    return (alam @ box[:, :, None])[..., 0]


def each(alam: Array, box: Array | None) -> Array:
    """(N, R, n): the contribution of every source on its own."""
    return alam if box is None else alam * box[:, None, :]


def pull_back(tape: Tape, lam: Array, sink: Sink, upto: int | None = None,
              entry: bool = True) -> Array:  # fmt: skip
    """Pull rows ``lam`` (N, R, n) at the output of step ``upto`` (default: the
    last) back through the tape, passing each source's contribution to ``sink(group,
    random, |Lambda|, box)`` (the contributions are |Lambda| box, see :func:`each`;
    ``box`` None: |Lambda S| (N, R, k) of signed generators); returns the rows at
    the output of step 0 (summed over every path).  ``entry`` False: the caller
    needs no rows at step 0, so where step 0 contributes nothing (inputs exact in
    the storage format: data held in binary32 or in a few bits) the adjoints that
    lead only to it are skipped (the first layer's GEMM) and zeros returned."""
    last = len(tape.steps) - 1 if upto is None else upto
    lams: dict[int, Array] = {last: lam}
    skip_entry = not entry and _silent(tape.steps[0])
    for i in range(last, -1, -1):
        lam_i = lams.pop(i, None)
        if lam_i is None:  # no path from ``upto`` passes through step i
            continue
        step = tape.steps[i]
        # its boxes and those it took for its source, unless its reader (pulled back
        # here: not the first step) took them all
        taken = i != last and absorber(tape, i) is not None
        _contribute(step, lam_i, sink, [] if taken else _boxes(step) + absorbed(tape, i))
        if i == 0:
            return lam_i
        if skip_entry and step.branch is None and all(src == 0 for src in tape.sources[i]):
            continue  # a residual step's pull-back collects its branch's errors: never skipped
        if step.branch is not None:  # x + F(x): the identity plus the branch
            pulled = [lam_i + pull_back(step.branch, lam_i, sink)]
        else:
            out = apply_adjoint(step.adjoint, lam_i)
            pulled = out if step.arity > 1 else [out]
        for src, part in zip(tape.sources[i], pulled, strict=True):
            lams[src] = lams[src] + part if src in lams else part
    return current().zeros((*lam.shape[:2], int(np.prod(tape.steps[0].value.shape[1:]))))


def _silent(step: Step) -> bool:
    """Whether a step adds no error of its own (every box zero, no signed part)."""
    return step.signed is None and not any(np.any(b) for b, _ in step.boxes)


class Collector:
    """Contributions per (input, row): summed per layer group, and, for the
    probabilistic combination, each random source kept on its own."""

    def __init__(self, N: int, R: int, n_groups: int, keep_random: bool) -> None:
        self.det = current().zeros((N, n_groups, R))  # on the rows' backend
        self.keep_random = keep_random
        self.random_cols: list[Array] = []
        self.random_groups: list[Array] = []

    def __call__(self, group: int, random: bool, alam: Array, box: Array | None) -> None:
        if random and self.keep_random:
            c = each(alam, box)
            self.random_cols.append(c)
            self.random_groups.append(np.full(c.shape[-1], group, dtype=np.int64))
        else:
            self.det[:, group, :] += summed(alam, box)


def functional_radius(
    tape: Tape, upto: int, outer: Callable[[Array], Array] | None, lam: float = 0.0
) -> Callable[[Array], Array]:
    """rows (N, R, n) at the output of step ``upto`` -> (N, R): the radius of each
    functional of the error there (every source in absolute value); ``outer``
    continues from the tape's input (a residual branch's enclosing tape).

    With ``lam`` > 0 (the probabilistic method's full ranges) the random sources
    (computed roundings) combine in quadrature instead: det + lam sqrt(sum c_j^2)
    holds with probability >= 1 - 2 exp(-lam^2 / 2) for independent zero-mean
    roundings (Hoeffding; Higham & Mary 2019), one event per row (and one more
    per enclosing tape, whose part ``outer`` bounds on its own)."""

    def radius(rows: Array) -> Array:
        b = current()
        lam_rows = b.fresh(rows)
        total = b.zeros(rows.shape[:2])
        squares = b.zeros(rows.shape[:2])

        def add(group: int, random: bool, alam: Array, box: Array | None) -> None:
            nonlocal total, squares
            if random and lam > 0:
                squares = squares + summed(alam * alam, None if box is None else box * box)
            else:
                total = total + summed(alam, box)

        at_input = pull_back(tape, lam_rows, add, upto, entry=outer is not None)
        if lam > 0:
            total = total + lam * b.sqrt(squares)
        if outer is not None:
            total = total + outer(at_input)
        # numpy rows in (a layer's range), numpy radii out; backend rows (an
        # enclosing tape's pull-back continuing here) stay on the backend
        return b.host(total) if isinstance(rows, np.ndarray) else total

    return radius


UNSTABLE_MARGIN = 2.0
"""Unstable ranges (``ranges="unstable"``) sharpen the units whose range would
change their layer's rule if its reach were this many times the run's (2r,
:func:`.rules.run_reach` without an anchor): the unstable units, and those close
to a kink or a rival.  Those have the largest interval radius for their value,
and a loose radius left at a stable unit widens the next layers' local terms
(|x| + 2r) and interval ranges.  On VGG-11-BN's first test image (binary16,
probabilistic) margin 1 takes 11.1 s for a bound of 0.43, 2 takes 13.0 s for
0.285, 4 takes 14.1 s for 0.238; full ranges 24.7 s for 0.201."""


@dataclass
class Budget:
    """Work done so far: ``forward``, multiply-adds of one input's forward pass
    through the layers passed (residual branches included); ``spent`` (N,), each
    input's sharpening rows, weighted by the forward work up to their layer."""

    forward: float = 0.0
    spent: Array | None = None
    denied: npt.NDArray[np.bool_] | None = None

    def allow(self, need: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
        """``need`` (N, n) restricted to inputs whose sharpening stays within
        :data:`SHARPEN_BUDGET` forward passes; charges them.  An input once
        denied is denied from then on: its later ranges grow from interval ones
        at this layer, and sharpening a few of them would rarely pay."""
        if self.spent is None or self.denied is None:
            self.spent = np.zeros(need.shape[0])
            self.denied = np.zeros(need.shape[0], dtype=bool)
        cost = need.sum(axis=1) * max(self.forward, 1.0)
        self.denied |= self.spent + cost > SHARPEN_BUDGET * max(self.forward, 1.0)
        self.spent = self.spent + np.where(self.denied, 0.0, cost)
        return need & ~self.denied[:, None]


def layer_work(layer: Any, y: Array, in_shapes: list[tuple[int, ...]] | None = None) -> float:
    """Multiply-adds of one input through ``layer`` (its outputs, for elementwise ones)."""
    if isinstance(layer, Operator):
        return layer.work(in_shapes or [], tuple(y.shape[1:]))
    return float(np.prod(y.shape[1:]))


class Ranges:
    """Where the layers' incoming radii come from: the steps' own interval
    images (``enc`` None), sharpened (``sharpen``) by backward rows at the
    inputs of nonlinear layers where wide (:func:`sharpen_threshold`,
    :func:`sharpen_radius`), or a reference zonotope carried
    alongside (the reference engine's radii: as costly as that engine)."""

    def __init__(self, enc: Enclosure | None, sharpen: bool = False,
                 budget: Budget | None = None, full: bool = False,
                 lam: float = 0.0, anchors: Sequence[Anchor] | None = None,
                 unstable: bool = False) -> None:  # fmt: skip
        self.enc = enc
        self.sharpen = sharpen or full
        self.budget = budget or Budget()
        self.full = full  # every unit wider than FULL sharpened, no budget
        # with full: only the units whose range may change their layer's rule, where
        # the layer says which (Operator.unstable); the others keep interval ranges
        self.unstable = unstable
        self.lam = lam  # > 0: sharpened radii combine random sources in quadrature
        # per graph position (0 the entry, j + 1 layer j's output): another run's values
        # and radii, |c - x*| <= rho, which bound this run's own error (:func:`spread`)
        self.anchors = anchors

    def spread(self, position: int, x: Array, r: Array) -> Array | None:
        """A bound s <= r on this run's own error at a graph position: |x - c| + rho
        (the exact value lies within rho of the anchor's c), None without anchors."""
        if self.anchors is None:
            return None
        c, rho = self.anchors[position]
        with np.errstate(invalid="ignore", over="ignore"):
            own = np.abs(x.reshape(c.shape) - c) + rho
        return np.fmin(r, own.reshape(r.shape))  # fmin: a NaN anchor leaves r

    def select(self, layer: Any, step: Step) -> Mask | None:
        """With ``unstable``: (N, n) the units of ``step`` (an input of ``layer``)
        whose range, widened by :data:`UNSTABLE_MARGIN`, may change the layer's
        rule (:meth:`.Operator.unstable`); None: all."""
        if not self.unstable or not isinstance(layer, Operator):
            return None
        x = step.value
        r = step.radius().reshape(x.shape)
        mask = layer.unstable(x, UNSTABLE_MARGIN * run_reach(r))
        return None if mask is None else mask.reshape(x.shape[0], -1)

    def threshold(self, layer: Any) -> float | None:
        """The sharpening threshold at ``layer``'s inputs (None: not sharpened)."""
        theta = sharpen_threshold(layer) if self.sharpen else None
        return FULL if theta is not None and self.full else theta

    def functional(self, tape: Tape, t: int,
                   outer: Callable[[Array], Array] | None) -> Callable[[Array], Array]:  # fmt: skip
        """:func:`functional_radius` in this run's combination of sources."""
        return functional_radius(tape, t, outer, self.lam)

    def radius(self, r_interval: Array) -> Array:
        return r_interval if self.enc is None else self.enc.radius()

    def convert(self, old: Any, new: Any, group: int) -> None:
        if self.enc is not None:
            self.enc = convert_rule(self.enc, old, new, group)

    def advance(self, layer: Any, ctx: Context, group: int, value: Array) -> None:
        if self.enc is not None:
            self.enc = apply_rule(layer, self.enc, ctx, group).prune()
            if not np.array_equal(self.enc.value, value, equal_nan=True):  # pragma: no cover
                raise AssertionError("reference zonotope and steps disagree on values")


@dataclass
class Graph:
    """What the forward pass needs of a model (or a residual branch): its layers,
    which earlier layers (-1: the entry) each one reads, their contexts and the
    group (layer index) their error sources count for."""

    layers: Sequence[Any]
    inputs: Sequence[tuple[int, ...]]
    ctxs: Sequence[Context]
    groups: Sequence[int]


def forward_steps(
    graph: Graph,
    tape: Tape,
    ranges: Ranges,
    storage: Format,
    outer: Callable[[Array], Array] | None = None,
) -> tuple[Array, Array, npt.NDArray[np.bool_]]:
    """Append the steps of ``graph`` to ``tape``, whose step 0 is the graph's entry
    (computed values, radius, held in ``storage``); ``outer`` pulls functionals
    back beyond the entry (for a residual branch).  Values move between storage
    formats where a layer's arithmetic differs from its input's (``keep``).
    Returns (output value, output radius, inputs whose run may overflow); marks
    in ``tape.wide`` the inputs whose interval range grew wide somewhere
    (:data:`WIDE`)."""
    entry = tape.steps[0]
    N = entry.value.shape[0]
    bad = np.zeros(N, dtype=bool)
    if tape.wide is None:
        tape.wide = np.zeros(N, dtype=bool)
    where = [0]  # tape index of each layer's output, the entry first
    stored = {0: storage}  # storage format of each tape index
    converted: dict[tuple[int, str], int] = {}
    for layer, ins, ctx, group in zip(graph.layers, graph.inputs, graph.ctxs, graph.groups,
                                      strict=True):  # fmt: skip
        a = ctx.arith
        srcs = []
        for j in ins:  # each input in this layer's storage format
            t = where[j + 1]
            if stored[t] != a.storage:
                key = (t, a.storage.name)
                if key not in converted:
                    src = tape.steps[t]
                    r_src = ranges.radius(src.radius().reshape(src.value.shape))
                    conv = convert_step(src.value, r_src, stored[t], a.storage, group)
                    ranges.convert(stored[t], a.storage, group)
                    converted[key] = tape.add(conv, (t,))
                    stored[converted[key]] = a.storage
                t = converted[key]
            srcs.append(t)
        theta = ranges.threshold(layer)
        if theta is not None:
            for t in srcs:  # a step read twice is sharpened for its first reader
                select = None if tape.steps[t].sharpened else ranges.select(layer, tape.steps[t])
                sharpen_radius(tape, t, outer, theta, None if ranges.full else ranges.budget,
                               ranges.lam, select)  # fmt: skip
        xs = [tape.steps[t].value for t in srcs]
        rs = [ranges.radius(tape.steps[t].radius().reshape(tape.steps[t].value.shape))
              for t in srcs]  # fmt: skip
        for x, r in zip(xs, rs, strict=True):
            mag = np.abs(x) + 2 * r
            bad |= xr.beyond_accumulator(layer, mag, a.storage, a.operand_format, a.accumulate)
            scale = np.abs(x.reshape(N, -1)).max(axis=1, initial=0.0)
            with np.errstate(invalid="ignore"):
                tape.wide |= ~(r.reshape(N, -1).max(axis=1, initial=0.0) <= WIDE * scale)
        spreads = None
        if getattr(layer, "uses_spread", False) and ranges.anchors is not None:
            spreads = [ranges.spread(j + 1, x, r) for j, x, r in zip(ins, xs, rs, strict=True)]
        step = _step(layer, xs, rs, ctx, group, tape, srcs, ranges, outer, bad, spreads)
        if len(srcs) == 1 and ranges.lam == 0 and ranges.enc is None:
            carry_sharpness(step, tape.steps[srcs[0]])
        if step.gains and len(srcs) == 1 and ranges.enc is None:
            src = tape.steps[srcs[0]]
            e_in = euclid(rs[0].reshape(N, -1), src.enorm)
            capped, step.enorm = narrow(step.radius(), step.gains, e_in)
            step.set_radius(capped)
        t_out = tape.add(step, tuple(srcs))
        source = tape.steps[srcs[0]] if len(srcs) == 1 else None
        if step.carry is not None and source is not None and source.sharp is not None:
            # its image of backward bounds is theirs: no row pulled back can tighten it
            step.sharp = step.carry(source.sharp)
        if not isinstance(layer, Residual):  # a branch counts its own layers
            ranges.budget.forward += layer_work(layer, step.value, [x.shape[1:] for x in xs])
        where.append(t_out)
        stored[t_out] = a.storage
        ranges.advance(layer, ctx, group, step.value)
        r_out = step.radius()
        with np.errstate(invalid="ignore"):
            bad |= ~np.isfinite(step.value.reshape(N, -1)).all(axis=1)
            bad |= ~np.isfinite(r_out).all(axis=1)
    tape.positions = where
    out = tape.steps[where[-1]]
    return out.value, out.radius().reshape(out.value.shape), bad


def carry_sharpness(step: Step, source: Step) -> None:
    """Mark the units of ``step`` (reading ``source`` alone) whose radius a backward
    row cannot tighten, where ranges sum every source in absolute value (rows
    with ``lam`` > 0 combine random ones in quadrature, which any row can
    tighten): through a pointwise step (:attr:`Step.pointwise`) a row meets the
    input unit's sources scaled by |d| and the step's own boxes, as the interval
    image does; and a linear map of a ``local`` input (whose every error source
    reaches one unit through pointwise steps only, as the input's own rounding
    does) gives sum_j |a_ij| r_j per unit plus its own boxes, the row's bound:
    its image is then taken with the exact weights (:attr:`Step.exact_image`, one
    GEMM).  A step stays local through pointwise steps, and a linear map of an
    exact input is local; a signed generator (parameter roundings, one vector
    across the units) is not, since rows may cancel it.  Locality is decided per
    input (an input's rounding, a signed vector, may be zero for one input and not
    another), so no input's bound depends on its batch.  Called on a new step,
    before anything reads its radius."""
    if step.pointwise is not None:
        step.local = None if source.local is None else source.local & _unsigned(step)
        if source.sharp is not None:
            carried = step.pointwise(source.sharp)
            step.sharp = carried if step.sharp is None else step.sharp | carried
    elif step.exact_image is not None and source.local is not None and source.local.any():
        loc = source.local[:, None]
        r = source.radius()
        exact = step.exact_image() if np.any(r[source.local]) else np.zeros_like(step.image)
        step.set_image(np.where(loc, exact, step.image))
        mask = np.broadcast_to(loc, step.image.shape)
        step.sharp = mask.copy() if step.sharp is None else step.sharp | mask
        step.local = source.local & ~np.any(r, axis=1) & _unsigned(step)


def _unsigned(step: Step) -> npt.NDArray[np.bool_]:
    """(N,) inputs whose signed generators at ``step`` are zero (or that has none)."""
    N = step.value.shape[0]
    if step.signed is None:
        return np.ones(N, dtype=bool)
    return ~np.any(step.signed.reshape(N, -1), axis=1)


def sharpen_threshold(layer: Any) -> float | None:
    """The fraction of a unit's value beyond which the range at ``layer``'s input
    is sharpened, for layers whose local error depends on that range beyond
    second order (a nonlinearity's slopes and remainders, max pooling's winners,
    a norm's variance bound); None for the others."""
    return layer.sharpen_threshold() if isinstance(layer, Operator) else None


def sharpen_radius(tape: Tape, t: int, outer: Callable[[Array], Array] | None,
                   theta: float, budget: Budget | None = None,
                   lam: float = 0.0, select: Mask | None = None) -> None:  # fmt: skip
    """Replace the interval radius of step ``t``'s outputs wider than ``theta``
    times their value by each unit's backward bound (one row per unit, pulled
    back through every earlier step: the bound :func:`functional_radius` gives
    any functional), keeping the smaller of the two; both are sound, so their
    minimum is.  This is how CROWN obtains its intermediate bounds (Zhang et al.
    2018), spent only on the units whose interval range is wide: with every
    unit of every nonlinearity's input sharpened (``theta`` = 0) the ranges are
    the zonotope's and so are the bounds.  Each input's units are chosen from its
    own values, so a bound never depends on the batch.  ``lam`` > 0: the
    probabilistic combination of :func:`functional_radius`.  ``select`` (N, n):
    only these units (:meth:`Ranges.select`)."""
    step = tape.steps[t]
    if step.sharpened:
        return
    step.sharpened = True
    r = step.radius()
    N = r.shape[0]
    with np.errstate(invalid="ignore"):
        need = (r > theta * np.abs(step.value.reshape(N, -1))) & np.isfinite(r) & (r > 0)
    if step.sharp is not None:  # already their backward bound: rows would give the same
        need &= ~step.sharp
    if select is not None:
        need &= select
    if budget is not None:
        need = budget.allow(need)
    step.sharp = need if step.sharp is None else step.sharp | need
    if not need.any():
        return
    radius = functional_radius(tape, t, outer, lam)
    rank = np.cumsum(need, axis=1) - 1
    chunk = _rows_per_chunk(tape, t, N)
    out = r.copy()
    for c0 in range(0, int(need.sum(axis=1).max()), chunk):
        sub = need & (rank >= c0) & (rank < c0 + chunk)
        out = scatter_rows(current().host(radius(row_selector(sub))), sub, out)
    step.set_radius(np.minimum(r, out))


def _rows_per_chunk(tape: Tape, t: int, N: int) -> int:
    """Rows pulled back at once: (N, R, n) at the widest earlier step within 1/8 of
    the memory budget (the pull-back holds a few such arrays)."""
    width = max(int(np.prod(st.value.shape[1:])) for st in tape.steps[: t + 1])
    return max(1, int(max_bytes() // 8 // (32 * N * width)))


def _step(
    layer: Any, xs: list[Array], rs: list[Array], ctx: Context, group: int, tape: Tape,
    srcs: list[int], ranges: Ranges, outer: Callable[[Array], Array] | None,
    bad: npt.NDArray[np.bool_], spreads: list[Array | None] | None = None,
) -> Step:  # fmt: skip
    """The step of one layer, given its inputs' values and radii (and, for layers
    that take them, bounds on this run's own error: :meth:`Ranges.spread`)."""
    if isinstance(layer, Operator):
        if spreads is not None and all(s is not None for s in spreads):
            return layer.step(xs, rs, ctx, group, spread=spreads)  # type: ignore[call-arg]
        if layer.needs_functional:
            functional = ranges.functional(tape, srcs[0], outer)
            return layer.step(xs, rs, ctx, group, functional=functional)  # type: ignore[call-arg]
        return layer.step(xs, rs, ctx, group)
    x, r = xs[0], rs[0]
    if isinstance(layer, Residual):
        sub = Tape()
        entry_step = Step(x, identity, r.reshape(r.shape[0], -1).copy(), group)
        entry_step.enorm = tape.steps[srcs[0]].enorm  # the branch reads the stream's E
        sub.add(entry_step, ())
        n = len(layer.layers)
        chain = Graph(layer.layers, [(i - 1,) for i in range(n)], [ctx] * n, [group] * n)
        sub_ranges = Ranges(None if ranges.enc is None else ranges.enc.materialize(),
                            ranges.sharpen, ranges.budget, ranges.full, ranges.lam,
                            unstable=ranges.unstable)  # fmt: skip
        entry = ranges.functional(tape, srcs[0], outer)
        sub.wide = tape.wide
        xb, rb, sub_bad = forward_steps(chain, sub, sub_ranges, ctx.arith.storage, entry)
        bad |= sub_bad
        step = residual_local_step(ctx.arith.store(x + xb), r + rb, ctx, group)
        step.branch = sub
        return step
    raise FperrInputError(f"no bound rule for layer type {layer.type!r}")


def input_step(x: Array, ctx: Context) -> Step:
    """The input's rounding to storage: a deterministic box (a function of the data)."""
    xs = ctx.arith.store(x)
    box = np.abs(xs - x).reshape(x.shape[0], -1)
    step = Step(xs, identity, np.zeros_like(box), 0, [(box, False)])
    step.sharp = np.ones(box.shape, dtype=bool)  # a box is its own backward bound
    step.local = np.ones(box.shape[0], dtype=bool)
    return step


def row_selector(mask: npt.NDArray[np.bool_]) -> Array:
    """(N, R, K) unit rows for the outputs selected in ``mask`` (N, K), R = the
    most any input selects (rows beyond an input's count are zero); built on the
    current backend (no host array of rows to copy over)."""
    N, K = mask.shape
    R = max(1, int(mask.sum(axis=1).max(initial=0)))
    b = current()
    lam = b.zeros((N, R, K))
    n_idx, k_idx = np.nonzero(mask)
    slot = np.cumsum(mask, axis=1)[n_idx, k_idx] - 1
    lam[b.fresh(n_idx), b.fresh(slot), b.fresh(k_idx)] = 1.0
    return lam


def scatter_rows(values: Array, mask: npt.NDArray[np.bool_], fill: Array) -> Array:
    """Inverse of :func:`row_selector`: (N, R, ...) per-row values into (N, K, ...)
    at the selected outputs, ``fill`` (N, K, ...) elsewhere."""
    out = fill.copy()
    n_idx, k_idx = np.nonzero(mask)
    slot = np.cumsum(mask, axis=1)[n_idx, k_idx] - 1
    out[n_idx, k_idx] = values[n_idx, slot]
    return out
