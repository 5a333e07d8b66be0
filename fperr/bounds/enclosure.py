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
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ..formats import Format

Array = npt.NDArray[np.float64]


def half_ulp(mag: Array, fmt: Format) -> Array:
    """Largest rounding error to nearest in ``fmt`` at magnitudes <= ``mag``.

    ``2**(e - p)`` with ``e = floor(log2 mag)`` clamped to ``emin`` (subnormal
    spacing below; up to ``smallest_normal`` in a format that flushes
    subnormals to zero); monotone in ``|mag|``, so a bound on the magnitude gives a
    bound on the error.  ``inf`` where ``|mag|`` exceeds the largest finite
    value (the run may overflow) or is NaN.  The sign of ``mag`` is ignored:
    a signed quantity (a negative slope times a magnitude) must not select
    the subnormal spacing.
    """
    m = np.abs(np.asarray(mag, dtype=np.float64))
    if fmt.emin - fmt.p >= -1022:  # every spacing a normal float64: from the exponent bits
        out = _spacing_from_bits(m, fmt)
    else:
        with np.errstate(invalid="ignore"):
            # frexp: m = f 2^e, f in [0.5, 1), exactly, so floor(log2 m) = e - 1 (inf and
            # NaN give e = 0 and are replaced below)
            _, e = np.frexp(np.maximum(m, fmt.smallest_normal))
            out = np.ldexp(1.0, np.maximum(e - 1, fmt.emin) - fmt.p)
    if not fmt.subnormals:  # flush to zero: a value below smallest_normal may be lost
        out = np.maximum(out, np.minimum(m, fmt.smallest_normal))
    out = np.asarray(out)  # 0-d in, 0-d array out
    if np.max(m, initial=0.0) <= fmt.max:  # all finite and in range (NaN: max is NaN)
        return out
    beyond = np.asarray(m <= fmt.max)
    np.logical_not(beyond, out=beyond)  # NaN compares false: inf
    np.copyto(out, np.inf, where=beyond)
    return out


def zero_error(fmt: Format) -> float:
    """The largest rounding error to nearest in ``fmt`` at magnitudes up to the
    smallest normal: half the subnormal spacing, or the smallest normal itself
    where the format flushes subnormals to zero; half_ulp(m) <= u m + this."""
    return float(half_ulp(np.zeros(()), fmt)) if fmt.subnormals else fmt.smallest_normal


_SHIFT = np.uint64(52)
_EXPONENT = np.uint64(0x7FF) << _SHIFT


def _spacing_from_bits(m: Array, fmt: Format) -> Array:
    """2^(max(floor(log2 m), emin) - p) for m >= 0 as float64 bit arithmetic (three times
    faster than frexp/ldexp, the bound engines' most frequent call): the biased exponent
    field E of a normal float64 m is floor(log2 m) + 1023, and m is first raised to
    ``smallest_normal`` = 2^emin (>= 2^-1022, so normal), so E >= emin + 1023; the
    result keeps E's field (the mantissa masked off: 2^floor(log2 m)) less p in it,
    E - p >= 1 where ``fmt.emin - fmt.p >= -1022``.  inf and NaN give a finite value
    here, replaced by the caller."""
    e = np.maximum(m, fmt.smallest_normal, out=np.empty_like(m)).view(np.uint64)
    np.bitwise_and(e, _EXPONENT, out=e)  # m >= 0: no sign bit
    np.subtract(e, np.uint64(fmt.p) << _SHIFT, out=e)
    return e.view(np.float64)


def _live(radius: Array) -> npt.NDArray[np.intp]:
    """Sources (columns of an (N, n_src) radius) nonzero or NaN for any input.

    A union over the batch: a source kept for one input is a zero row for
    the others, so no input's bound depends on which others share its batch.
    """
    return np.flatnonzero((radius != 0).any(axis=0))


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

    def rows(self) -> Array:
        """(N, n_live, m): one generator row per nonzero source (source-major)."""
        live = _live(self.radius)
        b = self.radius[:, live]
        if self.mat is None:
            N, n = self.radius.shape
            g = np.zeros((N, live.size, n))
            g[:, np.arange(live.size), live] = b
        else:
            g = self.mat[:, live].T[None] * b[:, :, None]
        return g if self.left is None else g * self.left[:, None, :]

    def scaled(self, d: Array) -> Box:
        if self.mat is None:
            return Box(self.radius * d, self.group, self.random)
        left = d if self.left is None else self.left * d
        return Box(self.radius, self.group, self.random, self.mat, left)


class Enclosure:
    """Computed values and signed error generators for a batch.

    ``value``: ``(N, *shape)`` computed activations.  The generators are kept
    source-major in blocks ``parts`` of shape (N, q_i, n), n = prod(shape):
    a linear map is then one GEMM per block with no transposes, and new
    sources are appended without copying the old ones.  ``gens`` is the
    (N, n, q) view of all of them.  ``groups``: for each source, the index of
    the layer that introduced it (for the per-layer breakdown).  ``random``:
    per source, whether it is a rounding error (independent, zero-mean in the
    probabilistic model) or a deterministic remainder.  ``boxes``: further
    sources kept in factored form (see :class:`Box`).
    """

    def __init__(
        self,
        value: Array,
        gens: Array | None = None,
        groups: list[int] | None = None,
        random: list[bool] | None = None,
        boxes: list[Box] | None = None,
        *,
        parts: list[Array] | None = None,
    ) -> None:
        self.value = value
        if parts is None:
            parts = []
            if gens is not None and gens.shape[2]:
                parts = [np.ascontiguousarray(gens.transpose(0, 2, 1))]
        self.parts = parts
        self.groups = list(groups or [])
        self.random = list(random or [])
        self.boxes = list(boxes or [])

    def _like(self, value: Array, parts: list[Array], boxes: list[Box]) -> Enclosure:
        return Enclosure(value, None, self.groups, self.random, boxes, parts=parts)

    @property
    def n(self) -> int:
        return int(np.prod(self.value.shape[1:]))

    @property
    def gens(self) -> Array:
        """(N, n, q) generator matrix of the explicit sources."""
        N = self.value.shape[0]
        if not self.parts:
            return np.zeros((N, self.n, 0))
        return np.concatenate(self.parts, axis=1).transpose(0, 2, 1)

    def radius(self) -> Array:
        """Componentwise bound on |computed - exact|, shaped like ``value``."""
        r = np.zeros((self.value.shape[0], self.n))
        for p in self.parts:
            r += np.abs(p).sum(axis=1)
        for b in self.boxes:
            r = r + b.contribution()
        return r.reshape(self.value.shape)

    def with_value(self, value: Array) -> Enclosure:
        """The same generators attached to new values of the same size."""
        return self._like(value, self.parts, self.boxes)

    def materialize(self) -> Enclosure:
        """Turn every factored box into explicit generator rows."""
        parts, groups, random = list(self.parts), list(self.groups), list(self.random)
        for b in self.boxes:
            rows = b.rows()
            if rows.shape[1]:
                parts.append(rows)
                groups += [b.group] * rows.shape[1]
                random += [b.random] * rows.shape[1]
        return Enclosure(self.value, None, groups, random, [], parts=parts)

    def linear(
        self,
        new_value: Array,
        apply: Callable[[Array], Array],
        matrix: Callable[[], Array] | None = None,
    ) -> Enclosure:
        """Map the generators through a linear map ``apply`` on ``(M, *shape)`` batches.

        ``matrix`` may supply the map's (m, n) matrix (e.g. from a cache).
        """
        N = self.value.shape[0]
        m = int(np.prod(new_value.shape[1:]))
        parts = [
            apply(p.reshape((N * p.shape[1], *self.value.shape[1:]))).reshape(N, p.shape[1], m)
            for p in self.parts
        ]
        out = Enclosure(new_value, None, self.groups, self.random, parts=parts)
        if not self.boxes:
            return out
        n = self.n
        if matrix is not None:
            mat = matrix()
        else:  # the map's matrix (m, n), from the images of the unit vectors
            mat = apply(np.eye(n).reshape((n, *self.value.shape[1:]))).reshape(n, m).T
        for b in self.boxes:
            if b.mat is None:  # first map: stays factored
                out.boxes.append(Box(b.radius, b.group, b.random, mat))
                continue
            # second map: per input, (sources x units) @ (units x new units), one GEMM
            live = _live(b.radius)
            k = b.mat.shape[0]
            if m < live.size:  # few new units (an output layer): scale the small side
                ml = np.broadcast_to(mat, (N, m, k))
                if b.left is not None:
                    ml = ml * b.left[:, None, :]
                g = (ml.reshape(-1, k) @ b.mat[:, live]).reshape(N, m, live.size)
                g = np.ascontiguousarray(g.transpose(0, 2, 1))
            else:
                h = np.broadcast_to(b.mat[:, live].T, (N, live.size, k))
                if b.left is not None:
                    h = h * b.left[:, None, :]
                g = (h.reshape(-1, k) @ mat.T).reshape(N, live.size, m)
            g *= b.radius[:, live, None]
            out.parts.append(g)
            out.groups = out.groups + [b.group] * live.size
            out.random = out.random + [b.random] * live.size
        return out

    def scale_rows(self, new_value: Array, d: Array) -> Enclosure:
        """Generators times a per-unit factor ``d`` ``(N, *shape)``: diagonal maps."""
        dd = d.reshape(d.shape[0], -1)
        parts = [p * dd[:, None, :] for p in self.parts]
        return self._like(new_value, parts, [b.scaled(dd) for b in self.boxes])

    def gather_rows(
        self, new_value: Array, src: npt.NDArray[np.int64], keep: Array, overlapping: bool
    ) -> Enclosure:
        """Output unit o carries the error of input unit src[:, o] times keep[:, o].

        Diagonal boxes stay diagonal if no input unit can feed two outputs
        (``overlapping`` False); everything else is materialized first.
        """
        enc = self
        if overlapping or any(b.mat is not None for b in self.boxes):
            enc = self.materialize()
        kk = keep.reshape(keep.shape[0], -1)
        parts = [np.take_along_axis(p, src[:, None, :], axis=2) * kk[:, None, :] for p in enc.parts]
        boxes = [
            Box(np.take_along_axis(b.radius, src, axis=1) * kk, b.group, b.random)
            for b in enc.boxes
        ]
        return enc._like(new_value, parts, boxes)

    def add_box(self, radius: Array, layer: int, random: bool) -> Enclosure:
        """Add one independent generator per unit with the given radius ``(N, *shape)``."""
        r = radius.reshape(radius.shape[0], -1)
        if not np.any(r):
            return self
        return self._like(self.value, self.parts, [*self.boxes, Box(r, layer, random)])

    def prune(self) -> Enclosure:
        """Drop generator rows that are exactly zero for every input (dead ReLUs).

        A row is kept if any input has a nonzero *or non-finite* entry in it:
        ``max |g| > 0`` over the batch is NaN (hence false) as soon as one input
        holds a NaN there (inf * 0 after an overflow), and dropping the row
        would then drop it for every other input too.  Keeping a row that is
        zero for some inputs changes nothing for them, so each input's bound
        depends on that input alone.
        """
        parts, groups, random, start = [], [], [], 0
        for p in self.parts:
            q = p.shape[1]
            keep = np.flatnonzero((p != 0).any(axis=(0, 2)))  # NaN != 0: kept
            if keep.size:
                parts.append(p if keep.size == q else np.ascontiguousarray(p[:, keep]))
                groups += [self.groups[start + i] for i in keep]
                random += [self.random[start + i] for i in keep]
            start += q
        return Enclosure(self.value, None, groups, random, self.boxes, parts=parts)

    def nonfinite_inputs(self) -> npt.NDArray[np.bool_]:
        """(N,): inputs whose values or generators hold an inf or NaN anywhere.

        Such an input's run may have overflowed (or the enclosure lost
        meaning), so its bound is infinite whatever later layers do with it.
        """
        N = self.value.shape[0]
        bad = np.zeros(N, dtype=bool)
        bad |= ~np.isfinite(self.value.reshape(N, -1)).all(axis=1)
        for p in self.parts:
            bad |= ~np.isfinite(p).all(axis=(1, 2))
        for b in self.boxes:
            bad |= ~np.isfinite(b.radius).all(axis=1)
            if b.left is not None:
                bad |= ~np.isfinite(b.left).all(axis=1)
        return bad
