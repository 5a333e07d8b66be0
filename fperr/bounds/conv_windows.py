"""A convolution's adjoint on rows that are zero outside a small window.

A backward row starts at one unit (a range's functional) and spreads by one
kernel per convolution it is pulled back through: at the first convolutions
it meets it is zero outside a window of a few pixels, yet a dense adjoint
(GEMM and col2im, or torch's input gradient) spends the same work on every
pixel of the image.  On the seed VGG-11-BN's first test image with unstable
ranges, the rows' nonzero boxes cover on average 40-60% of the image at the
8x8 and 16x16 layers, and a row's first convolution sees one unit.

:func:`windowed_adjoint` finds each row's box of nonzero pixels, rounds its
height and width up to a few sizes (so that rows group into a few batches),
and pulls each group back through the same convolution without padding on
its windows alone; the result lands in the window's receptive field.  It is
the same linear map (the zeros outside the window contribute nothing), so
the rows agree with the dense adjoint's up to the order of the float64 sums.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from .backend import current

Array = npt.NDArray[np.float64]
DenseAdjoint = Callable[[Any, Any, tuple[int, ...]], Any]

CROP_BELOW = 0.6
"""A group of rows is pulled back on its windows when their area is below this
fraction of the image; above, the windows' gathering and scattering would cost
more than the pixels they spare (and the dense adjoint keeps its bits)."""

_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)
"""Window extents rows are rounded up to (then to the image's own size)."""


@dataclass(frozen=True)
class Geometry:
    """What a convolution's adjoint reads of its layer (a window's has no padding)."""

    weight: Array
    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int]
    groups: int


def _span(occupied: npt.NDArray[np.bool_]) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.intp]]:
    """(first index, extent) of the occupied entries of each row of (M, L); extent 0
    for an empty row."""
    any_ = occupied.any(axis=1)
    first = occupied.argmax(axis=1)
    last = occupied.shape[1] - 1 - occupied[:, ::-1].argmax(axis=1)
    return first, np.where(any_, last - first + 1, 0)


def _rounded(extent: npt.NDArray[np.intp], size: int) -> npt.NDArray[np.intp]:
    """Extents rounded up to :data:`_SIZES`, at most ``size`` (0 stays 0)."""
    ladder = np.array([s for s in _SIZES if s < size] + [size])
    return np.where(extent > 0, ladder[np.searchsorted(ladder, np.minimum(extent, size))], 0)


def windowed_adjoint(layer: Any, g: Any, in_shape: tuple[int, ...],
                     dense: DenseAdjoint) -> Any | None:  # fmt: skip
    """The adjoint of ``layer``'s convolution on rows ``g`` (M, C_out, H', W'), pulled
    back window by window; None where the windows would spare too little (the
    caller's ``dense`` adjoint then takes every row)."""
    M, _, ho, wo = g.shape
    if M == 0 or ho * wo < 4:
        return None
    b = current()
    occ_h, occ_w = b.occupancy(g)
    y0, hb = _span(occ_h)
    x0, wb = _span(occ_w)
    HB, WB = _rounded(hb, ho), _rounded(wb, wo)
    area = HB * WB
    if not ((area > 0) & (area < CROP_BELOW * ho * wo)).any():
        return None  # no row in a small window
    c, h, w = in_shape
    (kh, kw), (sh, sw) = layer.kernel, layer.stride
    (ph, pw), (dh, dw) = layer.padding, layer.dilation
    xp = b.zeros((M, c, h + 2 * ph, w + 2 * pw))
    bare = Geometry(layer.weight, layer.kernel, layer.stride, (0, 0), layer.dilation,
                    layer.groups)  # fmt: skip
    sizes = np.stack([HB, WB], axis=1)
    for hs, ws in np.unique(sizes[area > 0], axis=0):
        idx = np.flatnonzero((HB == hs) & (WB == ws))
        if hs * ws >= CROP_BELOW * ho * wo:  # wide rows: the dense adjoint, in place
            xp[b.fresh(idx), :, ph : ph + h, pw : pw + w] = dense(layer, g[b.fresh(idx)], in_shape)
            continue
        ys = np.minimum(y0[idx], ho - hs)[:, None] + np.arange(hs)  # the window, inside
        xs = np.minimum(x0[idx], wo - ws)[:, None] + np.arange(ws)
        rows = b.fresh(idx)[:, None, None]
        window = b.permute(g[rows, :, b.fresh(ys)[:, :, None], b.fresh(xs)[:, None, :]],
                           (0, 3, 1, 2))  # (m, hs, ws, C_out) -> (m, C_out, hs, ws)
        hin, win = (hs - 1) * sh + (kh - 1) * dh + 1, (ws - 1) * sw + (kw - 1) * dw + 1
        part = dense(bare, b.contiguous(window), (c, int(hin), int(win)))
        # the window's receptive field in the padded input (inside it: the window is)
        yi = ys[:, :1] * sh + np.arange(hin)
        xi = xs[:, :1] * sw + np.arange(win)
        xp[rows, :, b.fresh(yi)[:, :, None], b.fresh(xi)[:, None, :]] = b.permute(part,
                                                                                 (0, 2, 3, 1))
    return xp[:, :, ph : ph + h, pw : pw + w]
