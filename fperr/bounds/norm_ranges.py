"""Euclidean ranges: a cheap second forward range that does not compound.

The backward engine's forward ranges are interval images, r_out = |A| r_in +
local: exact for one layer, but they forget the signs of the errors, so
through a dense layer of width n with weights of size ~ 1/sqrt(n) they grow
by the row sums of |W| (about 0.8 sqrt(2 n) for He-initialised weights: 18x
per layer at width 256) while the errors themselves grow by about the
spectral norm.  After four layers they are hundreds of times the backward
bounds, most units of a ReLU layer look unstable, and sharpening them costs
one backward row per unit.

This module carries, per input, one more number E >= ||e||_2, a bound on the
Euclidean norm of the error vector (every run's, and the exact value's,
deviation from the computed values: the set the radius covers), and for a
layer e_out = A e_in + d with |d| <= own:

    |e_out,i| <= ||a_i||_2 E_in + own_i          (Cauchy-Schwarz, per unit)
    ||e_out||_2 <= ||A||_2 E_in + ||own||_2       (the operator norm)

The first caps each unit's radius (the smaller of the two sound radii is
sound), the second gives the next layer's E, which grows by ||A||_2 only: the
Lipschitz bound of the layer, not the row sums.  On He-initialised ReLU MLPs
of width 256 it is the sharper range from the third layer on; on narrow or
sparse layers the interval image stays the smaller and wins.  Where a
layer's rule gives no gains (:class:`Gains` None) E restarts from the
radius, E = ||r||_2, which is always sound.

Gains of a layer are what bounds |(A e)_i| and ||A e||_2 by ||e||_2 for the
error terms its step carries: for a dense layer the rows' norms and the
spectral norm of W (the adjoint's W, the exact weights); for a convolution
the norms of the kernels and the smaller of sqrt(||C||_1 ||C||_inf) (Holder's
inequality on the operator's column and row sums, taken for stride 1: an upper
bound for any stride and padding) and the norm of the circular convolution on
the padded image (:func:`conv_spectral`: per-frequency singular values, within
2% of the true norm for stride 1 in the tests, 5x below Holder's at 16
channels); for an elementwise function its slope bounds
(L_i = |d_i| + rem_i / r_i: the mean value form's slope range), with its own
rounding as ``own``; for max pooling 1 per unit and the square root of the
largest number of windows an input belongs to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import scipy.linalg

from .weight_memo import by_content, memo

Array = npt.NDArray[np.float64]

SPECTRAL_MARGIN = 1e-9
"""Relative margin on a computed largest singular value: LAPACK's is that of a
matrix within a few n eps ||W|| of W (backward stability), far below this for
any width that fits in memory."""


@dataclass(frozen=True)
class Gains:
    """How one step's propagated error is bounded by the incoming Euclidean norm:
    |(A e)_i| <= ``row`` * ||e||_2 and ||A e||_2 <= ``op`` * ||e||_2; ``own`` (N,
    n_out) bounds the step's other terms (its local errors), which add to both."""

    row: Array | float  # (n_out,), (N, n_out) or a scalar
    op: Array | float  # (N,) or a scalar
    own: Array | None  # (N, n_out), None for an exact map


def dense_gains(layer: Any) -> tuple[Array, float]:
    """(row norms, spectral norm bound) of a dense layer's exact weights (once per
    call and across calls for equal weights, :mod:`.weight_memo`)."""
    w = layer.weight
    return memo("dense_gains", (w,), None,
                lambda: by_content("dense_gains", w, None, lambda: _dense_gains(w)))  # fmt: skip


def _dense_gains(weight: Array) -> tuple[Array, float]:
    w = np.asarray(weight, dtype=np.float64)
    rows = np.sqrt(np.einsum("ij,ij->i", w, w))
    spec = float(scipy.linalg.svdvals(w, check_finite=False)[0]) if w.size else 0.0
    return rows * (1 + SPECTRAL_MARGIN), spec * (1 + SPECTRAL_MARGIN)


def conv_gains(layer: Any) -> tuple[Array, float]:
    """(per output channel kernel norm, operator norm bound) of a convolution: every
    output sums the products of one kernel with a window of the input (zeros at the
    border), so |(C e)_i| <= ||k_o||_2 ||e||_2; ||C||_2 <= sqrt(||C||_1 ||C||_inf)
    with ||C||_inf the largest kernel sum of |k| and ||C||_1 the largest total of
    |k| an input channel feeds (each input value meets every tap at most once for
    stride 1, at most once per tap for any stride).  Once per call."""
    return memo("conv_gains", (layer.weight,), int(layer.groups),
                lambda: _conv_gains(layer.weight, int(layer.groups)))  # fmt: skip


def _conv_gains(weight: Array, g: int) -> tuple[Array, float]:
    k = np.abs(np.asarray(weight, dtype=np.float64))  # (out, in/g, kh, kw)
    rows = np.sqrt(np.square(k).sum(axis=(1, 2, 3)))
    c_inf = float(k.sum(axis=(1, 2, 3)).max(initial=0.0))
    per_group = k.reshape(g, k.shape[0] // g, *k.shape[1:])  # input channels per group
    c_one = float(per_group.sum(axis=(1, 3, 4)).max(initial=0.0))
    return rows * (1 + SPECTRAL_MARGIN), math.sqrt(c_inf * c_one) * (1 + SPECTRAL_MARGIN)


SPECTRAL_WORK = 2e9
"""Largest work (frequencies x C_out x C_in x min(C_out, C_in)) for the exact
per-frequency singular values of a convolution; beyond it their Frobenius norms
(cheaper, looser by up to sqrt(min(C_out, C_in)))."""


def conv_spectral(layer: Any, in_shape: tuple[int, ...]) -> float:
    """An upper bound on ||C||_2 of a zero-padded convolution on inputs of
    ``in_shape`` (once per call and shape, and across calls for equal weights,
    :mod:`.weight_memo`).

    The convolution is a restriction of the circular one on the padded image
    (size M = H + 2 p per axis: no output window wraps around), composed with the
    embedding of the input (an isometry); striding restricts further.  A circular
    convolution is diagonalised by the 2-D DFT, so its norm is the largest singular
    value of the (C_out, C_in) kernel transforms over the M_h M_w frequencies
    (Sedghi, Gupta & Long 2019).  Groups enter as zero blocks, dilation as zeros
    between the taps.  The FFT's rounding (at most a few eps log2(M_h M_w) ||k||_1
    per entry) is added as a Frobenius bound, the SVD's by SPECTRAL_MARGIN."""
    extra = (int(layer.groups), tuple(layer.dilation), tuple(layer.padding), tuple(in_shape))
    w = layer.weight
    return memo("conv_spectral", (w,), extra,
                lambda: by_content("conv_spectral", w, extra, lambda: _conv_spectral(w, *extra)))


def _conv_spectral(weight: Array, g: int, dilation: tuple[int, int],
                   padding: tuple[int, int], in_shape: tuple[int, ...]) -> float:  # fmt: skip
    w = np.asarray(weight, dtype=np.float64)  # (out, in/g, kh, kw)
    out, per, kh, kw = w.shape
    (dh, dw), (ph, pw) = dilation, padding
    c_in = per * g
    full = np.zeros((out, c_in, dh * (kh - 1) + 1, dw * (kw - 1) + 1))
    step = out // g
    for j in range(g):  # output channels of group j read its input channels only
        full[j * step:(j + 1) * step, j * per:(j + 1) * per, ::dh, ::dw] = \
            w[j * step:(j + 1) * step]  # fmt: skip
    mh, mw = in_shape[1] + 2 * ph, in_shape[2] + 2 * pw
    f = np.fft.fft2(full, s=(mh, mw)).transpose(2, 3, 0, 1).reshape(-1, out, c_in)
    if f.shape[0] * out * c_in * min(out, c_in) <= SPECTRAL_WORK:
        top = float(np.linalg.svd(f, compute_uv=False)[:, 0].max(initial=0.0))
    else:
        top = float(np.sqrt(np.sum(np.abs(f) ** 2, axis=(1, 2))).max(initial=0.0))
    l1 = float(np.abs(full).sum(axis=(2, 3)).max(initial=0.0))
    fft_error = 8 * 2.0**-53 * math.log2(mh * mw + 1) * l1 * math.sqrt(out * c_in)
    return (top + fft_error) * (1 + SPECTRAL_MARGIN)


def norm(r: Array) -> Array:
    """(N,) Euclidean norm of each input's radius vector (N, n)."""
    with np.errstate(invalid="ignore", over="ignore"):
        return np.sqrt(np.einsum("ij,ij->i", r, r))


def narrow(radius: Array, alternatives: tuple[Gains, ...], e_in: Array) -> tuple[Array, Array]:
    """(radius, E_out): the step's radius (N, n_out) capped per unit by
    ``row E_in + own`` of each of its sound alternatives, and the bound E_out on
    the output's error norm (the smallest of theirs and the capped radius's)."""
    capped = radius
    e_out = np.full(e_in.shape, np.inf)
    with np.errstate(invalid="ignore", over="ignore"):
        for g in alternatives:
            row = np.asarray(g.row, dtype=np.float64)
            own = 0.0 if g.own is None else g.own
            cap = row * e_in[:, None] + own
            # NaN (inf * 0 at a zero row) caps nothing; a NaN radius stays NaN
            capped = np.where(np.isnan(cap) | ~(cap < capped), capped, cap)
            own_norm = 0.0 if g.own is None else norm(g.own)
            e_out = np.fmin(e_out, np.asarray(g.op, dtype=np.float64) * e_in + own_norm)
        e_out = np.fmin(e_out, norm(capped))
    return capped, e_out


def euclid(radius: Array, bound: Array | None) -> Array:
    """(N,) E of a step: its own bound where it has one, and never more than the norm
    of its radius (which sharpening may have narrowed since)."""
    e = norm(radius)
    return e if bound is None else np.fmin(e, bound)
