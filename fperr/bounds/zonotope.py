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


@dataclass
class Enclosure:
    """Computed values and signed error generators for a batch.

    ``value``: (N, *shape) computed activations.  ``gens``: (N, n, q)
    generators, n = prod(shape).  ``groups``: for each generator column, the
    index of the layer that introduced it (for the per-layer breakdown).
    ``random``: per column, whether it is a rounding error (independent,
    zero-mean in the probabilistic model) or a deterministic remainder.
    """

    value: Array
    gens: Array
    groups: list[int] = field(default_factory=list)
    random: list[bool] = field(default_factory=list)

    @property
    def n(self) -> int:
        return int(np.prod(self.value.shape[1:]))

    def radius(self) -> Array:
        """Componentwise bound on |computed - exact|, shaped like ``value``."""
        return np.abs(self.gens).sum(axis=2).reshape(self.value.shape)

    def linear(self, new_value: Array, apply: object) -> Enclosure:
        """Map the generators through a linear map ``apply`` on (M, *shape) batches."""
        N, n, q = self.gens.shape
        if q == 0:
            empty = np.zeros((N, int(np.prod(new_value.shape[1:])), 0))
            return Enclosure(new_value, empty, self.groups, self.random)
        cols = self.gens.transpose(0, 2, 1).reshape((N * q, *self.value.shape[1:]))
        mapped = apply(cols)  # type: ignore[operator]
        m = int(np.prod(mapped.shape[1:]))
        gens = mapped.reshape(N, q, m).transpose(0, 2, 1)
        return Enclosure(new_value, np.ascontiguousarray(gens), self.groups, self.random)

    def scale_rows(self, new_value: Array, d: Array) -> Enclosure:
        """Generators times a per-unit factor ``d`` (N, *shape): diagonal maps."""
        gens = self.gens * d.reshape(d.shape[0], -1, 1)
        return Enclosure(new_value, gens, self.groups, self.random)

    def add_box(self, radius: Array, layer: int, random: bool) -> Enclosure:
        """Append one generator per unit with the given radius (N, *shape)."""
        r = radius.reshape(radius.shape[0], -1)
        live = np.flatnonzero((r != 0).any(axis=0))  # skip sources that are exactly zero
        if live.size == 0:
            return self
        N, n = r.shape
        new = np.zeros((N, n, live.size))
        new[:, live, np.arange(live.size)] = r[:, live]
        return Enclosure(
            self.value,
            np.concatenate([self.gens, new], axis=2),
            self.groups + [layer] * live.size,
            self.random + [random] * live.size,
        )

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
        )
