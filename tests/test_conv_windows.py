"""A convolution's adjoint on rows that are zero outside small windows
(fperr.bounds.conv_windows): the transpose of the layer's own exact forward
convolution, on every geometry, on the numpy and the torch backend."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from fperr.arith import Exact
from fperr.bounds import backend
from fperr.bounds.conv_windows import _rounded, _span, windowed_adjoint
from fperr.bounds.steps import _dense_conv_adjoint, conv2d_adjoint
from fperr.layers import Conv2d

GEOMETRIES = [  # cin, cout, kernel, stride, padding, dilation, groups, image
    (3, 4, (3, 3), (1, 1), (1, 1), (1, 1), 1, (12, 10)),
    (4, 6, (3, 3), (2, 2), (0, 0), (1, 1), 2, (13, 11)),
    (2, 2, (2, 2), (1, 1), (2, 2), (2, 2), 2, (9, 12)),
    (4, 8, (1, 1), (3, 3), (1, 1), (1, 1), 4, (16, 16)),
    (5, 5, (3, 3), (1, 1), (1, 1), (1, 1), 5, (10, 10)),  # depthwise, as in MobileNetV2
    (2, 3, (3, 1), (3, 2), (1, 1), (2, 2), 1, (14, 9)),  # strided and dilated, unequal
    (3, 2, (5, 3), (2, 1), (2, 0), (1, 3), 1, (17, 15)),
]
needs_torch = pytest.mark.skipif(importlib.util.find_spec("torch") is None,
                                 reason="torch is not installed")  # fmt: skip


def _layer(g, rng):
    cin, cout, k, stride, pad, dil, groups, image = g
    w = rng.standard_normal((cout, cin // groups, *k))
    return Conv2d(w, None, stride, pad, dil, groups), (cin, *image)


def _sparse_rows(out_shape, rng, m=40):
    """Rows nonzero in random windows (one pixel up to the whole image), some empty."""
    c, h, w = out_shape
    g = np.zeros((m, c, h, w))
    for i in range(m):
        if i % 9 == 8:
            continue  # an empty row
        hb, wb = rng.integers(1, h + 1), rng.integers(1, w + 1)
        if i % 3:
            hb, wb = min(hb, 3), min(wb, 3)  # mostly small windows
        y, x = rng.integers(0, h - hb + 1), rng.integers(0, w - wb + 1)
        g[i, :, y : y + hb, x : x + wb] = rng.standard_normal((c, hb, wb))
        g[i, rng.integers(0, c)] *= 0  # a channel without error
    return g


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g[2]}s{g[3]}d{g[5]}g{g[6]}")
@pytest.mark.parametrize("name", ["numpy", pytest.param("torch", marks=needs_torch)])
def test_windowed_adjoint_is_the_transpose(geometry, name):
    rng = np.random.default_rng(sum(map(hash, map(str, geometry))) % 2**32)
    layer, in_shape = _layer(geometry, rng)
    out_shape = layer.out_shape(in_shape)
    g = _sparse_rows(out_shape, rng)
    with backend.using(name, "cpu") as b:
        got = windowed_adjoint(layer, b.fresh(g), in_shape, _dense_conv_adjoint)
        assert got is not None  # mostly small windows: the windowed path is taken
        got = b.host(got)
        dense = b.host(_dense_conv_adjoint(layer, b.fresh(g), in_shape))
    # the oracle: <conv(v), g> = <v, adjoint(g)> with the layer's own exact forward
    v = rng.standard_normal((g.shape[0], *in_shape))
    lhs = np.einsum("mk,mk->m", layer.forward(v, Exact()).reshape(g.shape[0], -1),
                    g.reshape(g.shape[0], -1))  # fmt: skip
    rhs = np.einsum("mk,mk->m", v.reshape(g.shape[0], -1), got.reshape(g.shape[0], -1))
    np.testing.assert_allclose(rhs, lhs, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(got, dense, rtol=1e-13, atol=1e-13)
    assert not got[8::9].any()  # empty rows stay empty


def test_wide_rows_take_the_dense_adjoint():
    rng = np.random.default_rng(5)
    layer, in_shape = _layer(GEOMETRIES[0], rng)
    g = rng.standard_normal((6, *layer.out_shape(in_shape)))  # nonzero everywhere
    assert windowed_adjoint(layer, g, in_shape, _dense_conv_adjoint) is None
    np.testing.assert_array_equal(conv2d_adjoint(layer, g, in_shape),
                                  _dense_conv_adjoint(layer, g, in_shape))  # fmt: skip


def test_spans_and_rounding():
    occ = np.array([[0, 1, 1, 0, 1, 0], [0] * 6, [1, 0, 0, 0, 0, 0], [1] * 6], dtype=bool)
    first, extent = _span(occ)
    assert first[[0, 2, 3]].tolist() == [1, 0, 0] and extent.tolist() == [4, 0, 1, 6]
    assert _rounded(np.array([0, 1, 5, 6, 7, 13, 40]), 14).tolist() == [0, 1, 6, 6, 8, 14, 14]
