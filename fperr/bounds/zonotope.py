"""Error enclosures carried through a network: value + signed generators.

For one run of a model in some arithmetic, the difference between what the
run computes and exact arithmetic, at every layer, is enclosed as

    h_computed - h_exact  in  { A eps : |eps_j| <= 1 }      (componentwise)

with one generator column per local error source (a rounding at one unit of
one layer, or a nonlinear remainder).  Linear maps act on A exactly and
*signed*, so errors that cancel through later weights are not counted as if
they all aligned -- the loss of forward |W| interval propagation -- while the
enclosure stays rigorous: this is affine arithmetic / running-error analysis
(Higham 2002, sec. 3.3) with interval derivative enclosures for the
nonlinear layers (mean value form), as in ADAPT-style sensitivity analysis.

Every local bound is evaluated at magnitudes inflated by twice the incoming
radius, so the enclosure holds for *any* run whose local errors obey the
same model -- in particular every summation order a kernel may choose --
not only the emulated one (induction on layers: both the exact and the other
run stay within the radius of the computed values).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ..formats import Format

Array = npt.NDArray[np.float64]


def half_ulp(mag: Array, fmt: Format) -> Array:
    """Largest rounding error to nearest in ``fmt`` at magnitudes <= ``mag``.

    ``2**(e - p)`` with ``e = floor(log2 mag)`` clamped to ``emin`` (subnormal
    spacing below); monotone in ``mag``, so a bound on the magnitude gives a
    bound on the error.  ``inf`` where ``mag`` exceeds the largest finite
    value (the run may overflow).
    """
    m = np.asarray(mag, dtype=np.float64)
    e = np.floor(np.log2(np.maximum(m, fmt.smallest_normal)))
    out = np.ldexp(1.0, (np.maximum(e, fmt.emin) - fmt.p).astype(np.int64))
    return np.where(m > fmt.max, np.inf, out)


@dataclass(frozen=True)
class Box:
    """Independent per-unit generators kept diagonal until a map mixes units.

    Storing them as one (N, n) radius array instead of n columns of an
    (N, n, n) matrix is what keeps the enclosure cheap: a layer's fresh
    rounding errors only become dense columns when the next linear map
    spreads them.
    """

    radius: Array  # (N, n)
    group: int
    random: bool


@dataclass
class Enclosure:
    """Computed values and signed error generators for a batch.

    ``value``: (N, *shape) computed activations.  ``gens``: (N, n, q)
    generators, n = prod(shape).  ``groups``: for each generator column, the
    index of the layer that introduced it (for the per-layer breakdown).
    ``random``: per column, whether it is a rounding error (independent,
    zero-mean in the probabilistic model) or a deterministic remainder.
    ``boxes``: further generators that are still diagonal (see :class:`Box`).
    """

    value: Array
    gens: Array
    groups: list[int] = field(default_factory=list)
    random: list[bool] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(np.prod(self.value.shape[1:]))

    def radius(self) -> Array:
        """Componentwise bound on |computed - exact|, shaped like ``value``."""
        r = np.abs(self.gens).sum(axis=2)
        for b in self.boxes:
            r = r + np.abs(b.radius)
        return r.reshape(self.value.shape)

    def _with(self, value: Array, gens: Array, boxes: list[Box]) -> Enclosure:
        return Enclosure(value, gens, self.groups, self.random, boxes)

    def materialize(self) -> Enclosure:
        """Turn the diagonal boxes into explicit generator columns."""
        enc = Enclosure(self.value, self.gens, list(self.groups), list(self.random))
        for b in self.boxes:
            live = np.flatnonzero((b.radius != 0).any(axis=0))  # skip exact-zero sources
            if live.size == 0:
                continue
            N, n = b.radius.shape
            new = np.zeros((N, n, live.size))
            new[:, live, np.arange(live.size)] = b.radius[:, live]
            enc = Enclosure(
                enc.value,
                np.concatenate([enc.gens, new], axis=2),
                enc.groups + [b.group] * live.size,
                enc.random + [b.random] * live.size,
            )
        return enc

    def linear(self, new_value: Array, apply: Callable[[Array], Array]) -> Enclosure:
        """Map the generators through a linear map ``apply`` on (M, *shape) batches."""
        N, n, q = self.gens.shape
        m = int(np.prod(new_value.shape[1:]))
        if q:
            cols = self.gens.transpose(0, 2, 1).reshape((N * q, *self.value.shape[1:]))
            gens = np.ascontiguousarray(apply(cols).reshape(N, q, m).transpose(0, 2, 1))
        else:
            gens = np.zeros((N, m, 0))
        out = Enclosure(new_value, gens, list(self.groups), list(self.random))
        if not self.boxes:
            return out
        # The map's matrix (m, n), from the images of the unit vectors.
        basis = np.eye(n).reshape((n, *self.value.shape[1:]))
        mat = apply(basis).reshape(n, m).T
        for b in self.boxes:
            live = np.flatnonzero((b.radius != 0).any(axis=0))
            if live.size == 0:
                continue
            new = mat[None, :, live] * b.radius[:, None, live]
            out = Enclosure(
                new_value,
                np.concatenate([out.gens, new], axis=2),
                out.groups + [b.group] * live.size,
                out.random + [b.random] * live.size,
            )
        return out

    def scale_rows(self, new_value: Array, d: Array) -> Enclosure:
        """Generators times a per-unit factor ``d`` (N, *shape): diagonal maps."""
        dd = d.reshape(d.shape[0], -1)
        boxes = [Box(b.radius * dd, b.group, b.random) for b in self.boxes]
        return self._with(new_value, self.gens * dd[:, :, None], boxes)

    def gather_rows(self, new_value: Array, src: npt.NDArray[np.int64], keep: Array) -> Enclosure:
        """Output unit o carries the error of input unit src[:, o] times keep[:, o].

        Boxes stay diagonal only if no input unit feeds two outputs.
        """
        enc = self
        overlapping = any(
            len(np.unique(row)) < row.size for row in src
        )  # e.g. max pooling with stride < kernel
        if overlapping:
            enc = self.materialize()
        kk = keep.reshape(keep.shape[0], -1)
        gens = np.take_along_axis(enc.gens, src[:, :, None], axis=1) * kk[:, :, None]
        boxes = [
            Box(np.take_along_axis(b.radius, src, axis=1) * kk, b.group, b.random)
            for b in enc.boxes
        ]
        return Enclosure(new_value, gens, enc.groups, enc.random, boxes)

    def reshaped(self, new_value: Array) -> Enclosure:
        return self._with(new_value, self.gens, self.boxes)

    def add_box(self, radius: Array, layer: int, random: bool) -> Enclosure:
        """Add one independent generator per unit with the given radius (N, *shape)."""
        r = radius.reshape(radius.shape[0], -1)
        if not np.any(r):
            return self
        return self._with(self.value, self.gens, [*self.boxes, Box(r, layer, random)])

    def prune(self) -> Enclosure:
        """Drop generator columns that are zero for the whole batch (dead ReLUs)."""
        keep = np.flatnonzero(np.abs(self.gens).max(axis=(0, 1)) > 0)
        if keep.size == self.gens.shape[2]:
            return self
        return Enclosure(
            self.value,
            np.ascontiguousarray(self.gens[:, :, keep]),
            [self.groups[i] for i in keep],
            [self.random[i] for i in keep],
            self.boxes,
        )
