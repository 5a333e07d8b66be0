"""What one layer does to a run's error, for the backward engine.

For one layer with computed input ``x`` and incoming radius ``r`` (every run
and the exact input lie within ``r`` of ``x``), a :class:`Step` writes the
difference between the computed and the exact output as

    e_out = A e_in + d + S t,     |d| <= sum of the boxes,  |t_j| <= 1,

with ``A`` the layer's linearisation (signed: W for a dense layer, diag f'
at the centre of the slope range for an activation, J P for a layer norm),
the boxes its local errors (rounding, parameter rounding, the spread of the
derivative over the enclosure: one independent source per unit) and ``S``
a few signed deterministic generators (layer norm's direction z_hat).  The
local errors are the same functions of (x, r) as in the forward zonotope
rules (:mod:`.rules`), so with the zonotope's radii the two engines bound
the same terms; ``image`` >= |A| r is the cheap forward range (interval
arithmetic, exact for one layer) that feeds the next layer's ``r``.

``adjoint`` maps rows (N, R, n_out) to (N, R, n_in): R linear functionals of
the output pulled back to the input (Lambda -> Lambda A), as in the backward
bound propagation of CROWN (Zhang et al. 2018) and auto_LiRPA (Xu et al.
2020), here applied to error terms rather than to input perturbations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from ..layers import (
    Activation,
    BatchNorm,
    Conv2d,
    Dense,
    LayerNorm,
    Pool2d,
    RMSNorm,
    Softmax,
)
from ..rounding import round as fround
from .backend import current, on, portable
from .conv_windows import windowed_adjoint
from .enclosure import half_ulp, zero_error
from .norm_ranges import Gains, conv_gains, conv_spectral, dense_gains
from .rules import (
    Context,
    _ln_remainders,
    activation_local,
    avgpool_local,
    batchnorm_local,
    centres,
    conv_local,
    conv_with,
    dense_local,
    layer_norm_affine,
    layernorm_kernel,
    maxpool_local,
    residual_local,
    softmax_local,
    window_index,
)

Array = npt.NDArray[np.float64]
Mask = npt.NDArray[np.bool_]
Adjoint = Callable[[Array], Any]  # rows -> rows (one input) or a list of rows (merges)


@portable
def identity(lam: Array) -> Array:
    """The adjoint of a step that keeps every unit's error where it is."""
    return lam


@portable
def twice(lam: Array) -> list[Array]:
    """The adjoint of a sum of two inputs: the same rows for each."""
    return [lam, lam]


def same_units(mask: Mask) -> Mask:
    """A mask of units through a step that keeps every unit where it is."""
    return mask


def scaled_by(d: Array) -> Adjoint:
    """The adjoint of e_out = d e_in, d (N, n) per unit: rows times d."""
    return portable(lambda lam: lam * on(d)[:, None, :])


@dataclass
class Step:
    """One layer's error map; arrays are flat per input: (N, n_out)."""

    value: Array  # (N, *out) computed output
    adjoint: Adjoint  # (N, R, n_out) -> (N, R, n_in)
    image: Array  # (N, n_out) >= |A e_in|
    group: int  # layer index for the per-layer breakdown
    boxes: list[tuple[Array, bool]] = field(default_factory=list)  # (radius, random)
    signed: Array | None = None  # (N, k, n_out / k): one deterministic generator per block
    branch: Any = None  # residual: the branch's Tape, pulled back separately
    arity: int = 1  # inputs read; the adjoint of a merge returns one array of rows per input
    # maps whose image is exact and whose boxes are deterministic (ReLU, max pooling,
    # reshapes): the input's mask of units no backward row can tighten -> the output's
    carry: Callable[[Mask], Mask] | None = None
    # steps each unit of which carries one input unit's error (scaled) and its own
    # boxes, each input unit reaching one output unit (elementwise maps, batch norm,
    # reshapes, max pooling without overlap): how a mask of units maps through; with
    # deterministic ranges a unit whose radius is its backward bound stays so
    # (:func:`.backward.carry_sharpness`)
    pointwise: Callable[[Mask], Mask] | None = None
    # a linear map of its one input (dense, convolution): its image |A| r with the
    # exact weights (the step's own image bounds it from the rounded weights, which
    # saves a GEMM), for the units :func:`.backward.carry_sharpness` spares rows
    exact_image: Callable[[], Array] | None = None
    # (N, n) the d of an adjoint lam -> lam d (elementwise functions, batch norm): a
    # row meets its input's boxes as |lam| |d| box (:func:`.backward.absorbed`)
    scale: Array | None = None
    # bounds of the propagated error by the incoming error's Euclidean norm
    # (:mod:`.norm_ranges`); empty: the output's E restarts from its radius
    gains: tuple[Gains, ...] = ()
    enorm: Array | None = field(default=None, init=False)  # (N,) E >= ||e_out||_2
    sharpened: bool = field(default=False, init=False)  # radius sharpened by backward rows
    # (N, n_out): units whose radius is already their backward bound (None: unknown)
    sharp: Mask | None = field(default=None, init=False)
    # (N,) inputs every source of error of which reaches each unit through pointwise
    # steps only, and only that unit: a linear map of them is its own backward bound
    # (None: no input; per input, so that no bound depends on the batch)
    local: npt.NDArray[np.bool_] | None = field(default=None, init=False)
    _radius: Array | None = field(default=None, init=False, repr=False)
    _live: list[tuple[Array, bool]] | None = field(default=None, init=False, repr=False)

    def live_boxes(self) -> list[tuple[Array, bool]]:
        """The boxes that hold a nonzero radius somewhere (computed once): a ReLU's
        rounding box is zero, and so is its remainder where no unit is unstable, and
        a backward row would otherwise meet them in an absolute value and a GEMV
        per row and step (a fifth of that work on the seed VGG-11-BN)."""
        if self._live is None:
            self._live = [(b, random) for b, random in self.boxes if np.any(b)]
        return self._live

    def radius(self) -> Array:
        """(N, n_out) radius of the output error: image + boxes + signed (computed
        once: every consumer of the step reads it; callers do not write to it)."""
        if self._radius is None:
            r = self.image.copy()
            for b, _ in self.boxes:
                r += b
            if self.signed is not None:
                r += np.abs(self.signed).reshape(r.shape)
            self._radius = r
        return self._radius

    def set_image(self, image: Array) -> None:
        """Another sound image of the incoming radius (before any radius was read)."""
        self.image = image
        self._radius = None

    def set_radius(self, r: Array) -> None:
        """A sharper sound radius for the output (the backward bound of each unit)."""
        self._radius = r


def _flat(a: Array) -> Array:
    return a.reshape(a.shape[0], -1)


def _rows(apply: Callable[[Array], Array], lam: Array, in_shape: tuple[int, ...]) -> Array:
    """Apply a map on (M, *out) batches to rows (N, R, n_out), giving (N, R, n_in).

    Only the rows that are not all zero go through ``apply``: inputs that need
    fewer rows than others carry zero rows (:func:`.backward.row_selector`),
    and a zero row stays zero through every linear map."""
    N, R = lam.shape[:2]
    n_in = int(np.prod(in_shape))
    flat = lam.reshape(N * R, -1)
    b = current()
    live = b.live(flat)
    n_live = int(live.shape[0])
    if 2 * n_live > N * R:
        return apply(flat).reshape(N, R, n_in)
    out = b.zeros((N * R, n_in))
    if n_live:
        out[live] = apply(flat[live]).reshape(n_live, n_in)
    return out.reshape(N, R, n_in)


def _local_boxes(ctx: Context, computed: Array, data: Array) -> list[tuple[Array, bool]]:
    """As :meth:`Context.add_local`: one random box in the worst case, a random
    (computed) and a deterministic (data) box in the probabilistic model."""
    if ctx.method != "probabilistic":
        return [(_flat(computed + data), True)]
    return [(_flat(computed), True), (_flat(data), False)]


def _signed(s: Array | None, z: Array) -> Array | None:
    """A layer's known error vector as one signed generator (N, 1, n_out)."""
    if s is None or not np.any(s):
        return None
    return np.broadcast_to(s, z.shape).reshape(z.shape[0], 1, -1).copy()


# -- linear layers ---------------------------------------------------------------------
def exact_weight_image(w_abs_r: Array, r_sum: Array, a: Any) -> Array:
    """An upper bound on |W| r from |W_hat| r, W_hat = W rounded to the operand
    format (nearest, or chopped: within 2 half-ulps): |W| <= (|W_hat| + 2 h0) /
    (1 - 2u), h0 the rounding error at 0 (:func:`.enclosure.zero_error`); it saves a
    GEMM, and it only feeds the interval range."""
    f = a.operand_format
    return (w_abs_r + 2 * zero_error(f) * r_sum) / (1 - 2 * f.u)


def dense_step(layer: Dense, x: Array, r: Array, ctx: Context, group: int) -> Step:
    z, local, extra, w_abs_r, signed = dense_local(layer, x, r, ctx)
    w = layer.weight
    image = exact_weight_image(w_abs_r, _flat(r).sum(axis=1, keepdims=True), ctx.arith)

    @portable
    def adjoint(lam: Array) -> Array:
        N, R, m = lam.shape
        return (lam.reshape(N * R, m) @ on(w)).reshape(N, R, w.shape[1])

    step = Step(z, adjoint, image, group, _local_boxes(ctx, local, extra), _signed(signed, z),
                exact_image=lambda: current().gemm(_flat(r), np.abs(w).T))
    return _with_gains(step, *dense_gains(layer))


def _with_gains(step: Step, row: Array, op: float) -> Step:
    """A linear step's gains: its weights' row and operator norms, with its local
    errors (boxes and signed generators) as its own terms."""
    step.gains = (Gains(row, op, _own(step)),)
    return step


def _own(step: Step) -> Array | None:
    """The sum of a step's local terms (its boxes and signed generators): what it
    adds to the propagated error."""
    terms = [b for b, _ in step.boxes]
    if step.signed is not None:
        terms.append(np.abs(step.signed).reshape(step.image.shape))
    if not terms:
        return None
    total = terms[0].copy()
    for t in terms[1:]:
        total += t
    return total


def conv2d_adjoint(layer: Conv2d, g: Array, in_shape: tuple[int, ...]) -> Array:
    """Adjoint of ``layer``'s convolution (no bias, exact weights): (M, C_out, H', W')
    -> (M, C, H, W), the transpose of im2col followed by the GEMM (col2im).

    The GEMM is W_g^T G (every group and row at once), whose (C, kh kw, M, H' W')
    result reshapes to the patches without a copy; col2im is one strided add per
    kernel offset.  Rows that are zero outside small windows (most rows at the first
    convolutions they meet) are pulled back on their windows
    (:func:`.conv_windows.windowed_adjoint`)."""
    windowed = windowed_adjoint(layer, g, in_shape, _dense_conv_adjoint)
    return _dense_conv_adjoint(layer, g, in_shape) if windowed is None else windowed


def _dense_conv_adjoint(layer: Any, g: Array, in_shape: tuple[int, ...]) -> Array:
    """:func:`conv2d_adjoint` on every pixel: the backend's kernel, or the GEMM and col2im."""
    direct = current().conv2d_input(g, layer, in_shape)
    if direct is not None:
        return direct
    M = g.shape[0]
    c, h, w_ = in_shape
    (kh, kw), (sh, sw) = layer.kernel, layer.stride
    (ph, pw), (dh, dw) = layer.padding, layer.dilation
    ho, wo = g.shape[2:]
    groups = layer.groups
    og = layer.weight.shape[0] // groups
    weight = on(layer.weight)  # converted once: its identity is the layer's array
    b = current()
    # one GEMM for all rows, (G, cg kh kw, og) @ (G, og, M L): the rows moved into the
    # columns (a copy), where a GEMM per row would be small (1.2-1.8x slower at 8x8
    # and 4x4 images, 64-128 channels)
    L = ho * wo
    gt = b.permute(g.reshape(M, groups, og, L), (1, 2, 0, 3)).reshape(groups, og, M * L)
    d = (weight.reshape(groups, og, -1).swapaxes(1, 2) @ gt).reshape(c, kh, kw, M, ho, wo)
    xp = b.zeros((c, M, h + 2 * ph, w_ + 2 * pw))
    for i in range(kh):
        for j in range(kw):
            hi, wj = i * dh, j * dw
            xp[:, :, hi : hi + sh * ho : sh, wj : wj + sw * wo : sw] += d[:, i, j]
    return b.permute(xp[:, :, ph : ph + h, pw : pw + w_], (1, 0, 2, 3))


def conv2d_step(layer: Conv2d, x: Array, r: Array, ctx: Context, group: int) -> Step:
    z, local, extra, w_abs_r, signed = conv_local(layer, x, r, ctx)
    # every output sums at most C/g kh kw inputs: their radii sum to <= the whole input's
    r_sum = _flat(r).sum(axis=1, keepdims=True)
    image = _flat(exact_weight_image(w_abs_r, r_sum[:, :, None, None], ctx.arith))
    in_shape = tuple(x.shape[1:])
    out_shape = tuple(z.shape[1:])

    @portable
    def adjoint(lam: Array) -> Array:
        return _rows(lambda v: conv2d_adjoint(layer, v.reshape(-1, *out_shape), in_shape),
                     lam, in_shape)  # fmt: skip

    step = Step(z, adjoint, image, group, _local_boxes(ctx, local, extra), _signed(signed, z),
                exact_image=lambda: _flat(conv_with(layer, np.abs(layer.weight), r)))
    rows, op = conv_gains(layer)
    op = min(op, conv_spectral(layer, in_shape))
    per_channel = np.repeat(rows, int(np.prod(out_shape[1:])))  # (C, H', W') flattened
    return _with_gains(step, per_channel, op)


def _pool_matrix(layer: Pool2d, in_shape: tuple[int, ...]) -> sp.csr_matrix:
    """(m, n) sparse matrix of average pooling (padding slots count, as zeros)."""
    idx = window_index(layer, in_shape)  # (C, H', W', k), -1 for padding
    k = idx.shape[-1]
    m = int(np.prod(idx.shape[:-1]))
    rows = np.repeat(np.arange(m), k)
    cols = idx.reshape(-1)
    keep = cols >= 0
    n = int(np.prod(in_shape))
    data = np.full(int(keep.sum()), 1.0 / k)
    return sp.csr_matrix((data, (rows[keep], cols[keep])), shape=(m, n))


def pool_step(layer: Pool2d, x: Array, r: Array, ctx: Context, group: int,
              spread: Array | None = None) -> Step:  # fmt: skip
    in_shape = tuple(x.shape[1:])
    n = int(np.prod(in_shape))
    if layer.kind == "avg":
        y, local = avgpool_local(layer, x, r, ctx)
        mat = _pool_matrix(layer, in_shape)
        image = np.asarray((mat @ _flat(r).T).T)

        @portable
        def adjoint_avg(lam: Array) -> Array:
            N, R, m = lam.shape
            return current().sparse_rows(mat, lam.reshape(N * R, m)).reshape(N, R, n)

        return Step(y, adjoint_avg, image, group, [(_flat(local), True)])
    y, src, kept, box = maxpool_local(layer, x, r, spread)
    keep = _flat(kept.astype(np.float64))
    image = np.take_along_axis(_flat(r), src, axis=1) * keep

    @portable
    def adjoint_max(lam: Array) -> Array:
        N, R, m = lam.shape
        b = current()
        base = (b.arange(N * R) * n).reshape(N, R, 1)
        idx = base + on(src)[:, None, :]
        out = b.scatter_add(idx.reshape(-1), (lam * on(keep)[:, None, :]).reshape(-1), N * R * n)
        return out.reshape(N, R, n)

    def carry(sharp: Mask) -> Mask:  # a window's box alone is its own backward bound
        return np.take_along_axis(sharp, src, axis=1) | (keep == 0)

    # |max a' - max a*| <= max |a' - a*| over the window (exact in every format), and an
    # input value belongs to at most ceil(k / s) windows along each axis
    (kh, kw), (sh, sw) = layer.kernel, layer.stride
    windows = math.ceil(kh / sh) * math.ceil(kw / sw)
    return Step(y, adjoint_max, image, group, [(_flat(box), False)], carry=carry,
                pointwise=carry if windows == 1 else None,
                gains=(Gains(1.0, math.sqrt(windows), None),))


def shape_step(layer: Any, x: Array, r: Array, ctx: Context, group: int) -> Step:
    """Flatten, reshape, dropout (inference): values move, errors keep their units."""
    return Step(layer.forward(x, ctx.arith), identity, _flat(r), group, carry=same_units,
                pointwise=same_units, gains=(Gains(1.0, 1.0, None),))


# -- elementwise and normalisation -----------------------------------------------------
def activation_step(layer: Activation, x: Array, r: Array, ctx: Context, group: int,
                    spread: Array | None = None) -> Step:  # fmt: skip
    y, dc, rem, local = activation_local(layer, x, r, ctx, spread)
    d = _flat(dc)
    boxes = [(_flat(rem), False), (_flat(local), True)]
    exact = not np.any(local)  # ReLU, ReLU6: no rounding of their own, only the remainder
    step = Step(y, scaled_by(d), np.abs(d) * _flat(r), group, boxes,
                carry=same_units if exact else None, pointwise=same_units, scale=d)
    _elementwise_gains(step, d)
    lipschitz = _activation_lipschitz(layer)
    if lipschitz is not None:  # |f(a') - f(a*)| <= L |a' - a*|, plus f's own rounding
        flat = (d == 0) & (boxes[0][0] == 0)  # a flat piece: no slope, no remainder
        step.gains += (Gains(np.where(flat, 0.0, lipschitz), lipschitz, boxes[1][0]),)
    return step


def _elementwise_gains(step: Step, d: Array) -> Step:
    """Gains of a step e_out = d e_in + (its boxes): |d| per unit and max |d|, with
    the boxes as its own terms."""
    ad = np.abs(d)
    with np.errstate(invalid="ignore"):
        op = ad.max(axis=1, initial=0.0)
    step.gains = (Gains(ad, op, _own(step)),)
    return step


LIPSCHITZ = {"relu": 1.0, "relu6": 1.0, "tanh": 1.0, "sigmoid": 0.25}
"""Lipschitz constants of exact activation functions (the others: their slope ranges)."""


def _activation_lipschitz(layer: Activation) -> float | None:
    if layer.type == "leaky_relu":
        return max(1.0, abs(float(layer.negative_slope)))
    return LIPSCHITZ.get(layer.type)


def batchnorm_step(layer: BatchNorm, x: Array, r: Array, ctx: Context, group: int) -> Step:
    y, s, computed, params = batchnorm_local(layer, x, r, ctx)
    d = _flat(np.broadcast_to(s, x.shape))
    boxes = _local_boxes(ctx, computed, params)
    step = Step(y, scaled_by(d), np.abs(d) * _flat(r), group, boxes, pointwise=same_units,
                scale=d)
    return _elementwise_gains(step, d)


def softmax_step(layer: Softmax, x: Array, r: Array, ctx: Context, group: int) -> Step:
    y, s, remainder, local = softmax_local(layer, x, r, ctx)
    if x.ndim != 2:  # along any axis: J = diag(s) - s s^T per group, J symmetric
        ax = layer.batched_axis(x.ndim)
        sm, rm = np.moveaxis(s, ax, -1), np.moveaxis(r.reshape(x.shape), ax, -1)
        image = np.moveaxis(sm * (rm * (1 - 2 * sm) + (sm * rm).sum(axis=-1, keepdims=True)),
                            -1, ax)  # fmt: skip
        axis = ax + 1  # of rows (N, R, *shape)

        @portable
        def adjoint_nd(lam: Array) -> Array:  # Lambda J, J = diag(s) - s s^T per group
            sb = on(s)[:, None]
            ls = lam.reshape(sb.shape[0], lam.shape[1], *s.shape[1:]) * sb
            return (ls - ls.sum(axis=axis, keepdims=True) * sb).reshape(lam.shape)

        return Step(y, adjoint_nd, _flat(image), group,
                    [(_flat(remainder), False), (_flat(local), True)])  # fmt: skip

    @portable
    def adjoint(lam: Array) -> Array:  # Lambda J, J = diag(s) - s s^T
        sb = on(s)[:, None, :]
        ls = lam * sb
        return ls - ls.sum(axis=-1, keepdims=True) * sb

    # |J| r: s_i (1 - s_i) r_i + s_i sum_{j != i} s_j r_j
    image = s * (r * (1 - 2 * s) + (s * r).sum(axis=-1, keepdims=True))
    boxes = [(remainder, False), (local, True)]
    return Step(y, adjoint, image, group, boxes)


FunctionalRadius = Callable[[Array], Array]
"""rows (N, R, n) at the current layer's input -> (N, R): radius of each functional."""


def layernorm_step(
    layer: LayerNorm | RMSNorm, x: Array, r: Array, ctx: Context, group: int,
    functional: FunctionalRadius,
) -> Step:  # fmt: skip
    """Layer norm as :func:`.rules.layernorm_rule`, with the signed projections
    c = sum_j |z_hat^T P G_j| of the incoming error computed exactly as the
    radius of the functional z_hat^T P pulled back through every earlier layer
    (``functional``), and the per-unit radius of P e from the interval range:
    |P| r = (1 - 2/n) r + sum(r)/n (m2 <= |rho|^2, the box bound).  RMS norm:
    P = I (z = x, rho = r, no centring in the adjoint)."""
    a = ctx.arith
    y = layer.forward(x, a)
    n = int(np.prod(layer.normalized_shape))
    N = x.shape[0]
    xg = x.reshape(N, -1, n)
    k = xg.shape[1]
    rg = r.reshape(xg.shape)
    w, _ = layer_norm_affine(layer, n)
    centre = centres(layer)
    z = xg - xg.mean(axis=-1, keepdims=True) if centre else xg
    pz = z - z.mean(axis=-1, keepdims=True) if centre else z  # P z_hat: functional z_hat^T P
    rows = np.zeros((N, k, k, n))
    rows[:, np.arange(k), np.arange(k)] = pz
    c = functional(rows.reshape(N, k, k * n))[..., None]  # (N, k, 1)
    rho = rg * (1 - 2 / n) + rg.sum(axis=-1, keepdims=True) / n if centre else rg
    m2 = np.square(rho).sum(axis=-1, keepdims=True)
    box, beta, v_lo = _ln_remainders(z, c, m2, rho, layer.eps)
    remainder = np.abs(w) * box
    s = np.sqrt(np.square(z).sum(axis=-1, keepdims=True) / n + layer.eps)  # (N, k, 1)
    # |J P e| <= |J| |P| r with |J| <= I / s + |z| |z|^T / (n s^3)
    jr = rho / s + np.abs(z) * (np.abs(z) * rho).sum(axis=-1, keepdims=True) / (n * s**3)
    image = np.abs(w) * jr
    signed = w * z * beta  # (N, k, n): the remainder's part along z_hat, one per group
    prop = image + np.abs(signed) + remainder
    local, params = layernorm_kernel(layer, ctx, y, xg, rg, z, rho, v_lo, prop)

    @portable
    def adjoint(lam: Array) -> Array:  # P J (w Lambda) per group (J, P symmetric)
        R = lam.shape[1]
        t = lam.reshape(N, R, k, n) * on(w)
        sb = on(s)[:, None]  # (N, 1, k, 1)
        zb = on(z)[:, None]
        t1 = t / sb - zb * (zb * t).sum(axis=-1, keepdims=True) / (n * sb**3)
        t1 = t1 - t1.mean(axis=-1, keepdims=True) if centre else t1
        return t1.reshape(N, R, k * n)

    boxes = [(_flat(remainder), False), *_local_boxes(ctx, local, params)]
    return Step(y, adjoint, _flat(image), group, boxes, signed=signed)


def residual_local_step(y: Array, r_out: Array, ctx: Context, group: int) -> Step:
    """The storage rounding of x + F(x) (its branch is pulled back separately)."""
    local = residual_local(y, r_out.reshape(y.shape), ctx.arith)
    return Step(y, identity, _flat(r_out), group, [(_flat(local), True)])


def add_step(xs: list[Array], rs: list[Array], ctx: Context, group: int) -> Step:
    """y = a + b of two activations (both carry error): the errors add, then one
    storage rounding at magnitudes |y| + 2 (r_a + r_b), as a residual sum."""
    y = ctx.arith.store(xs[0] + xs[1])
    r = rs[0] + rs[1]
    local = residual_local(y, r, ctx.arith)
    step = Step(y, twice, _flat(r), group, [(_flat(local), True)])
    step.arity = 2
    return step


def concat_step(xs: list[Array], rs: list[Array], axis: int, group: int) -> Step:
    """Inputs joined along ``axis`` (per input): exact; rows split back."""
    y = np.concatenate(xs, axis=axis + 1)
    out_shape = tuple(y.shape[1:])
    cuts = np.cumsum([x.shape[axis + 1] for x in xs])[:-1]

    @portable
    def adjoint(lam: Array) -> list[Array]:
        N, R = lam.shape[:2]
        rows = lam.reshape(N, R, *out_shape)
        lead = (slice(None),) * (axis + 2)
        edges = [0, *cuts.tolist(), out_shape[axis]]
        return [rows[(*lead, slice(a, b))].reshape(N, R, -1)  # a copy where not contiguous
                for a, b in zip(edges[:-1], edges[1:], strict=True)]  # fmt: skip

    step = Step(y, adjoint, _flat(np.concatenate(rs, axis=axis + 1)), group)
    step.arity = len(xs)
    return step


def convert_step(x: Array, r: Array, old: Any, new: Any, group: int) -> Step:
    """Values move to another storage format between layers (kept in binary32)."""
    if new.contains(old):
        return Step(x, identity, _flat(r), group, pointwise=same_units)
    y = fround(x, new)
    box = half_ulp(np.abs(x) + 2 * r, new)
    return Step(y, identity, _flat(r), group, [(_flat(box), True)], pointwise=same_units)
