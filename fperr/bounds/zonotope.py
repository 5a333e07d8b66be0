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
    """Independent per-unit error sources, kept factored until they must mix.

    The generators of a box are the columns of ``diag(left) @ mat @
    diag(radius)``: ``radius`` (N, n_src) holds one source per unit of the
    layer that made them, ``mat`` (m, n_src) is the shared linear map they
    went through since (``None``: identity), and ``left`` (N, m) the
    per-input diagonal factors applied after it (activation derivatives;
    ``None``: ones).  Storing a layer's fresh rounding errors this way instead
    of as n columns of an (N, m, n) array is what keeps the enclosure cheap:
    their radius is |left| * (|radius| @ |mat|^T), one small GEMM, and the
    per-input product is only formed when a second map mixes them.
    """

    radius: Array
    group: int
    random: bool
    mat: Array | None = None
    left: Array | None = None

    def contribution(self) -> Array:
        """(N, m): the radius these sources add to each unit."""
        r = np.abs(self.radius)
        if self.mat is not None:
            r = r @ np.abs(self.mat).T
        return r if self.left is None else np.abs(self.left) * r

    def dense(self) -> Array:
        """(N, m, n_live) explicit generator columns of the sources that are nonzero."""
        live = np.flatnonzero((self.radius != 0).any(axis=0))
        b = self.radius[:, live]
        if self.mat is None:
            N, n = self.radius.shape
            g = np.zeros((N, n, live.size))
            g[:, live, np.arange(live.size)] = b
        else:
            g = self.mat[None, :, live] * b[:, None, :]
        return g if self.left is None else g * self.left[:, :, None]

    def scaled(self, d: Array) -> Box:
        if self.mat is None:
            return Box(self.radius * d, self.group, self.random)
        left = d if self.left is None else self.left * d
        return Box(self.radius, self.group, self.random, self.mat, left)


@dataclass
class Enclosure:
    """Computed values and signed error generators for a batch.

    ``value``: (N, *shape) computed activations.  ``gens``: (N, n, q)
    generators, n = prod(shape).  ``groups``: for each generator column, the
    index of the layer that introduced it (for the per-layer breakdown).
    ``random``: per column, whether it is a rounding error (independent,
    zero-mean in the probabilistic model) or a deterministic remainder.
    ``boxes``: further generators kept in factored form (see :class:`Box`).
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
            r = r + b.contribution()
        return r.reshape(self.value.shape)

    def _append(self, g: Array, group: int, random: bool) -> Enclosure:
        return Enclosure(
            self.value,
            np.concatenate([self.gens, g], axis=2),
            self.groups + [group] * g.shape[2],
            self.random + [random] * g.shape[2],
            self.boxes,
        )

    def materialize(self) -> Enclosure:
        """Turn every factored box into explicit generator columns."""
        enc = Enclosure(self.value, self.gens, list(self.groups), list(self.random))
        for b in self.boxes:
            enc = enc._append(b.dense(), b.group, b.random)
        return enc

    def linear(
        self,
        new_value: Array,
        apply: Callable[[Array], Array],
        matrix: Callable[[], Array] | None = None,
    ) -> Enclosure:
        """Map the generators through a linear map ``apply`` on (M, *shape) batches.

        ``matrix`` may supply the map's (m, n) matrix (e.g. from a cache).
        """
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
        if matrix is not None:
            mat = matrix()
        else:  # the map's matrix (m, n), from the images of the unit vectors
            mat = apply(np.eye(n).reshape((n, *self.value.shape[1:]))).reshape(n, m).T
        for b in self.boxes:
            if b.mat is None:  # first map: stays factored
                out.boxes.append(Box(b.radius, b.group, b.random, mat))
                continue
            # second map: form the per-input product, then the columns
            live = np.flatnonzero((b.radius != 0).any(axis=0))
            ml = np.broadcast_to(mat, (N, *mat.shape))
            if b.left is not None:
                ml = mat[None] * b.left[:, None, :]
            # one GEMM for the whole batch: (N m', m) @ (m, n_live)
            g = (ml.reshape(-1, mat.shape[1]) @ b.mat[:, live]).reshape(N, m, live.size)
            g *= b.radius[:, None, live]
            out = out._append(g, b.group, b.random)
        return out

    def scale_rows(self, new_value: Array, d: Array) -> Enclosure:
        """Generators times a per-unit factor ``d`` (N, *shape): diagonal maps."""
        dd = d.reshape(d.shape[0], -1)
        boxes = [b.scaled(dd) for b in self.boxes]
        return Enclosure(new_value, self.gens * dd[:, :, None], self.groups, self.random, boxes)

    def gather_rows(self, new_value: Array, src: npt.NDArray[np.int64], keep: Array) -> Enclosure:
        """Output unit o carries the error of input unit src[:, o] times keep[:, o].

        Diagonal boxes stay diagonal if no input unit feeds two outputs;
        everything else is materialized first.
        """
        overlapping = any(len(np.unique(row)) < row.size for row in src)
        enc = self
        if overlapping or any(b.mat is not None for b in self.boxes):
            enc = self.materialize()
        kk = keep.reshape(keep.shape[0], -1)
        gens = np.take_along_axis(enc.gens, src[:, :, None], axis=1) * kk[:, :, None]
        boxes = [
            Box(np.take_along_axis(b.radius, src, axis=1) * kk, b.group, b.random)
            for b in enc.boxes
        ]
        return Enclosure(new_value, gens, enc.groups, enc.random, boxes)

    def reshaped(self, new_value: Array) -> Enclosure:
        return Enclosure(new_value, self.gens, self.groups, self.random, self.boxes)

    def add_box(self, radius: Array, layer: int, random: bool) -> Enclosure:
        """Add one independent generator per unit with the given radius (N, *shape)."""
        r = radius.reshape(radius.shape[0], -1)
        if not np.any(r):
            return self
        boxes = [*self.boxes, Box(r, layer, random)]
        return Enclosure(self.value, self.gens, self.groups, self.random, boxes)

    def prune(self) -> Enclosure:
        """Drop generator columns that are zero for the whole batch (dead ReLUs)."""
        keep = np.flatnonzero(np.abs(self.gens).max(axis=(0, 1), initial=0) > 0)
        if keep.size == self.gens.shape[2]:
            return self
        return Enclosure(
            self.value,
            np.ascontiguousarray(self.gens[:, :, keep]),
            [self.groups[i] for i in keep],
            [self.random[i] for i in keep],
            self.boxes,
        )
