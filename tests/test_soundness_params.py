"""Every layer over the whole legal range of its parameters (issue 11, item 2).

The schema (:mod:`fperr.spec`) allows leaky ReLU slopes of any sign and size,
BatchNorm and LayerNorm weights of any sign, any eps > 0, zero running
variances, every stride / padding / dilation / group count.  For each layer
type, hypothesis draws its parameters over that range, the layer sits between
two dense layers (so that it receives and passes on nonzero errors), and the
bound of :func:`fperr.bounds.bound_run` is checked against

* the exact result, from an oracle written here on mpmath at 50 digits
  (its own error ~1e-50 relative: the only slack used is 1e-40 relative);
* the emulated runs of fperr in several arithmetics and summation orders,
  and, for dense + activation, a run written here in numpy float16/float32
  with adversarial summation orders and exact rational (Fraction) checks.

A-priori radii must be >= 0 and cover every emulated run in their box.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction

import mpmath
import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from fperr.arith import Emulated
from fperr.bounds import bound_run
from fperr.bounds.apriori import apriori_bound
from fperr.layers import (
    Activation,
    BatchNorm,
    Conv2d,
    Dense,
    Dropout,
    Flatten,
    LayerNorm,
    Pool2d,
    Reshape,
    Residual,
    Softmax,
)
from fperr.model import Model

DPS = 50
SLACK = mpmath.mpf("1e-40")
ARITHS = [
    ("binary16", "binary32"),
    ("bfloat16", "binary32"),
    ("binary16", "binary16"),
    ("binary32", "binary32"),
]
ORDERS = ["blas", "sequential", "pairwise", "blocked"]
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


# -- the exact oracle: mpmath, each layer from its definition ---------------------
def _mp(a: np.ndarray) -> np.ndarray:
    return np.vectorize(lambda v: mpmath.mpf(float(v)), otypes=[object])(a)


def _elementwise(f, a: np.ndarray) -> np.ndarray:
    return np.vectorize(f, otypes=[object])(a)


def _conv(layer: Conv2d, x: np.ndarray) -> np.ndarray:
    w = _mp(layer.weight)
    co, cg, kh, kw = w.shape
    _, h, wd = x.shape
    (sh, sw), (ph, pw), (dh, dw) = layer.stride, layer.padding, layer.dilation
    ho = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    og = co // layer.groups
    out = np.empty((co, ho, wo), dtype=object)
    for o in range(co):
        g = o // og
        for i in range(ho):
            for j in range(wo):
                acc = mpmath.mpf(0) if layer.bias is None else mpmath.mpf(layer.bias[o])
                for c in range(cg):
                    for a in range(kh):
                        for b in range(kw):
                            yi, xj = i * sh + a * dh - ph, j * sw + b * dw - pw
                            if 0 <= yi < h and 0 <= xj < wd:
                                acc += w[o, c, a, b] * x[g * cg + c, yi, xj]
                out[o, i, j] = acc
    return out


def _pool(layer: Pool2d, x: np.ndarray) -> np.ndarray:
    c, h, wd = x.shape
    (kh, kw), (sh, sw), (ph, pw) = layer.kernel, layer.stride, layer.padding
    ho, wo = (h + 2 * ph - kh) // sh + 1, (wd + 2 * pw - kw) // sw + 1
    out = np.empty((c, ho, wo), dtype=object)
    for ch in range(c):
        for i in range(ho):
            for j in range(wo):
                vals = []
                for a in range(kh):
                    for b in range(kw):
                        yi, xj = i * sh + a - ph, j * sw + b - pw
                        inside = 0 <= yi < h and 0 <= xj < wd
                        if inside:
                            vals.append(x[ch, yi, xj])
                        elif layer.kind == "avg":  # zero padding counts in the mean
                            vals.append(mpmath.mpf(0))
                out[ch, i, j] = max(vals) if layer.kind == "max" else mpmath.fsum(vals) / (kh * kw)
    return out


def _norm(x: np.ndarray, axes: int, w, b, eps: float, mean=None, var=None) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * w + b; mean/var over the last ``axes`` dims if None."""
    if mean is None:
        flat = x.reshape(x.shape[: x.ndim - axes] + (-1,))
        mean = np.empty(flat.shape[:-1] + (1,), dtype=object)
        var = np.empty_like(mean)
        for idx in np.ndindex(flat.shape[:-1]):
            v = list(flat[idx])
            m = mpmath.fsum(v) / len(v)
            mean[idx + (0,)] = m
            var[idx + (0,)] = mpmath.fsum((t - m) ** 2 for t in v) / len(v)
        mean = mean.reshape(mean.shape[:-1] + (1,) * axes)
        var = var.reshape(mean.shape)
    y = (x - mean) / _elementwise(lambda v: mpmath.sqrt(v + mpmath.mpf(eps)), var)
    return y * w + b


def exact_layer(layer, x: np.ndarray) -> np.ndarray:
    """One input (no batch axis), object array of mpf."""
    t = layer.type
    if t == "dense":
        y = _mp(layer.weight).dot(x)
        return y if layer.bias is None else y + _mp(layer.bias)
    if t == "conv2d":
        return _conv(layer, x)
    if t in ("maxpool2d", "avgpool2d"):
        return _pool(layer, x)
    if t in ("flatten", "dropout"):
        return x.reshape(-1) if t == "flatten" else x
    if t == "reshape":
        return x.reshape(layer.shape)
    if t == "relu":
        return _elementwise(lambda v: v if v > 0 else mpmath.mpf(0), x)
    if t == "leaky_relu":
        a = mpmath.mpf(layer.negative_slope)
        return _elementwise(lambda v: v if v > 0 else a * v, x)
    if t == "tanh":
        return _elementwise(mpmath.tanh, x)
    if t == "sigmoid":
        return _elementwise(lambda v: 1 / (1 + mpmath.exp(-v)), x)
    if t == "gelu":
        return _elementwise(lambda v: v * (1 + mpmath.erf(v / mpmath.sqrt(2))) / 2, x)
    if t == "softmax":
        e = _elementwise(mpmath.exp, x - max(x))
        return e / mpmath.fsum(e)
    if t == "batchnorm":
        shape = (-1,) + (1,) * (x.ndim - 1)
        c = x.shape[0]
        w = _mp(np.ones(c) if layer.weight is None else layer.weight).reshape(shape)
        b = _mp(np.zeros(c) if layer.bias is None else layer.bias).reshape(shape)
        return _norm(x, 0, w, b, layer.eps, _mp(layer.running_mean).reshape(shape),
                     _mp(layer.running_var).reshape(shape))  # fmt: skip
    if t == "layernorm":
        k = len(layer.normalized_shape)
        w = _mp(np.ones(layer.normalized_shape) if layer.weight is None else layer.weight)
        b = _mp(np.zeros(layer.normalized_shape) if layer.bias is None else layer.bias)
        return _norm(x, k, w, b, layer.eps)
    if t == "residual":
        h = x
        for sub in layer.layers:
            h = exact_layer(sub, h)
        return x + h
    raise AssertionError(f"no oracle for {t}")


def exact_forward(model: Model, X: np.ndarray) -> np.ndarray:
    with mpmath.workdps(DPS):
        outs = []
        for x in X:
            h = _mp(x).reshape(model.input_shape)
            for layer in model.layers:
                h = exact_layer(layer, h)
            outs.append(h.reshape(-1))
        return np.asarray(outs, dtype=object)


def assert_covers(observed: np.ndarray, exact: np.ndarray, radius: np.ndarray, what: str) -> None:
    """|observed - exact| <= radius, compared in mpmath (no float rounding)."""
    assert np.all(radius >= 0), what
    with mpmath.workdps(DPS):
        for idx in np.ndindex(observed.shape):
            r, o, e = radius[idx], observed[idx], exact[idx]
            if math.isinf(r):
                continue
            assert math.isfinite(o), (what, idx, o, r)
            err = abs(mpmath.mpf(float(o)) - e)
            assert err <= mpmath.mpf(float(r)) + SLACK * (1 + abs(e)), (what, idx, err, r)


# -- models: one layer between two dense layers -----------------------------------
finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
slopes = st.one_of(
    st.sampled_from(
        [
            -1e30,
            -1e3,
            -2.0,
            -1.0,
            -0.5,
            -1e-8,
            0.0,
            5e-324,
            1e-30,
            1e-8,
            0.01,
            1.0,
            2.0,
            7.5,
            1e3,
            1e30,
        ]
    ),
    st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False),
)
eps_values = st.one_of(
    st.sampled_from([1e-300, 1e-12, 1e-5, 1.0, 1e3]),
    st.floats(1e-300, 1e6, allow_nan=False, exclude_min=False),
)
ACTS = ["relu", "tanh", "sigmoid", "gelu"]


def _vec(rng: np.random.Generator, n: int, scale: float) -> np.ndarray:
    return rng.standard_normal(n) * scale


@st.composite
def layer_case(draw, kind: str):
    """(input width, layers before the flatten, layer under test) for one layer type."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    image = (2, 4, 4)  # C, H, W for image layers
    if kind == "leaky_relu":
        return (8,), Activation("leaky_relu", draw(slopes))
    if kind in ACTS or kind == "softmax":
        return (8,), Softmax() if kind == "softmax" else Activation(kind)
    if kind == "dense":
        scale = draw(st.sampled_from([1e-6, 1e-2, 1.0, 30.0]))
        bias = _vec(rng, 5, scale) if draw(st.booleans()) else None
        return (8,), Dense(rng.standard_normal((5, 8)) * scale, bias)
    if kind == "batchnorm":
        c = 2
        weight = None if draw(st.booleans()) else np.array([draw(finite), draw(finite)])
        bias = None if draw(st.booleans()) else _vec(rng, c, draw(st.sampled_from([0.1, 10.0])))
        var = np.array([draw(st.sampled_from([0.0, 1e-8, 0.5, 4.0, 1e4])) for _ in range(c)])
        bn = BatchNorm(_vec(rng, c, 1.0), var, weight, bias, draw(eps_values))
        return image, bn
    if kind == "layernorm":
        n, two_d = draw(st.sampled_from([1, 2, 5])), draw(st.booleans())
        norm = (3, n) if two_d else (n,)
        w = None if draw(st.booleans()) else rng.standard_normal(norm) * draw(
            st.sampled_from([-3.0, -1.0, 1.0, 100.0]))  # fmt: skip
        b = None if draw(st.booleans()) else rng.standard_normal(norm)
        return (2, *norm) if two_d else (4, n), LayerNorm(norm, w, b, draw(eps_values))
    if kind == "conv2d":
        k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        g, co = draw(st.sampled_from([1, 2])), 2 * draw(st.integers(1, 2))
        bias = _vec(rng, co, 1.0) if draw(st.booleans()) else None
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
        dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
        fits = zip(padding, dilation, k, strict=True)
        assume(all(4 + 2 * p - d * (kk - 1) >= 1 for p, d, kk in fits))
        weight = rng.standard_normal((co, 2 // g, *k))
        return image, Conv2d(weight, bias, stride, padding, dilation, g)
    if kind in ("maxpool2d", "avgpool2d"):
        k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
        stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) if draw(st.booleans()) else k
        pad = (draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2)))
        return image, Pool2d(kind[:3], k, stride, pad)
    if kind == "dropout":
        return (8,), Dropout(draw(st.floats(0, 1)))
    if kind == "reshape":
        return (8,), Reshape((2, 4))
    if kind == "residual":
        branch = (Dense(rng.standard_normal((8, 8)) / 3, _vec(rng, 8, 0.1)),
                  Activation("leaky_relu", draw(slopes)))  # fmt: skip
        return (8,), Residual(branch)
    raise AssertionError(kind)


def sandwich(rng: np.random.Generator, shape: tuple[int, ...], layer) -> Model:
    """Dense -> (reshape) -> layer -> flatten -> dense: errors in and out of the layer."""
    n = int(np.prod(shape))
    pre = Dense(rng.standard_normal((n, 6)), rng.standard_normal(n) * 0.1)
    layers = [pre] + ([Reshape(shape)] if len(shape) > 1 else []) + [layer]
    m = Model("probe", (6,), tuple(layers))
    out = int(np.prod(m.output_shape))
    layers += [Flatten(), Dense(rng.standard_normal((3, out)) / math.sqrt(out), None)]
    return Model("probe", (6,), tuple(layers))


LAYER_KINDS = ["dense", "conv2d", "maxpool2d", "avgpool2d", "dropout", "reshape", "relu",
               "leaky_relu", "tanh", "sigmoid", "gelu", "softmax", "batchnorm", "layernorm",
               "residual"]  # fmt: skip


def check_layer(kind: str, data) -> None:
    """The bound covers every emulated order, with the layer alone on exact inputs
    (its local error is all there is: nothing else can mask a missing term) or
    sandwiched between dense layers (errors in and out)."""
    shape, layer = data.draw(layer_case(kind))
    seed = data.draw(st.integers(0, 2**32 - 1))
    storage, acc = data.draw(st.sampled_from(ARITHS))
    scale = data.draw(st.sampled_from([1e-3, 1.0, 50.0, 3000.0]))
    rng = np.random.default_rng(seed)
    low = Emulated.from_names(storage, acc)
    if data.draw(st.booleans(), label="alone"):
        model = Model("alone", shape, (layer, Flatten()))
        X = low.store(rng.standard_normal((3, *shape)) * scale)  # exact in storage
    else:
        model = sandwich(rng, shape, layer)
        X = rng.standard_normal((3, 6)) * scale
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # overflow gives inf bounds
        rb = bound_run(model, X, low)
        exact = exact_forward(model, X)
        for order in ORDERS:
            run = Emulated.from_names(storage, acc, order=order, block=4)
            assert_covers(model.forward(X, run), exact, rb.radius, f"{kind} {order}")


@SETTINGS
@given(kind=st.sampled_from(LAYER_KINDS), data=st.data())
def test_every_layer_over_its_legal_parameters(kind, data):
    check_layer(kind, data)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_leaky_relu_any_slope(data):
    """The reported hole: a negative slope made the local error the subnormal spacing."""
    check_layer("leaky_relu", data)


def test_negative_slope_regression():
    """alpha = -3 on a pre-activation near -1000: the rounding of alpha x = 3001.5
    to binary16 (spacing 2) is 0.5, not the subnormal spacing 2^-25."""
    model = Model("neg", (1,), (Activation("leaky_relu", -3.0),))
    x = np.array([[-1000.3]])
    rb = bound_run(model, x, Emulated.from_names("binary16", "binary32"))
    # fp16(-1000.3) = -1000.5 (error 0.2, times 3); -3 * -1000.5 = 3001.5 -> 3002
    y = model.forward(x, Emulated.from_names("binary16", "binary32"))
    assert y[0, 0] == 3002.0
    err = abs(Fraction(y[0, 0]) - Fraction(-3) * Fraction(-1000.3))  # 1.1
    assert err <= Fraction(rb.radius[0, 0])
    ap = apriori_bound(model, -1000.3, -1000.3, Emulated.from_names("binary16", "binary32"))
    assert ap.radius[0] >= err and min(ap.layer_radius) >= 0


def test_batchnorm_eps_overflowing_the_accumulator_regression():
    """eps = 65520 (any positive float is legal): var + eps overflows a binary16
    accumulator, alpha = w / sqrt(inf) = 0 and the run outputs -m * 0 = 0."""
    bn = BatchNorm(np.array([0.125, -0.25]), np.zeros(2), None, None, 65520.0)
    model = Model("bn", (2, 1, 1), (bn, Flatten()))
    X = np.array([[[[1.5]], [[-2.0]]]])
    low = Emulated.from_names("binary16", "binary16")
    y = model.forward(X, low)
    assert np.all(y == 0.0)
    assert_covers(y, exact_forward(model, X), bound_run(model, X, low).radius, "bn eps")


# -- numpy float16 run of dense + activation + dense, exact rational oracle ---------
def _f16_dot(x: np.ndarray, w: np.ndarray, order: str) -> np.float16:
    """fp16 operands, fp32 products and partial sums in the given order, fp16 result."""
    terms = [np.float32(np.float32(a) * np.float32(b)) for a, b in zip(x, w, strict=True)]
    if order == "sorted":  # smallest magnitude first
        terms.sort(key=abs)
    elif order == "reversed":
        terms = terms[::-1]
    elif order == "alternating":  # positive and negative terms interleaved
        pos = sorted((t for t in terms if t >= 0), key=abs, reverse=True)
        neg = sorted((t for t in terms if t < 0), key=abs, reverse=True)
        terms = [t for pair in zip(pos, neg, strict=False) for t in pair]
        terms += pos[len(neg) :] + neg[len(pos) :]
    acc = np.float32(0)
    for t in terms:
        acc = np.float32(acc + t)
    return np.float16(acc)


def _f16_act(kind: str, alpha: float, z: np.float16) -> np.float16:
    if kind == "leaky_relu":  # PyTorch's CPU kernel: float opmath, alpha as float
        return z if z > 0 else np.float16(np.float32(alpha) * np.float32(z))
    if kind == "relu":
        return max(z, np.float16(0))

    def sigmoid(v: float) -> float:  # no overflow in exp
        return 1 / (1 + math.exp(-v)) if v >= 0 else math.exp(v) / (1 + math.exp(v))

    f = {"tanh": math.tanh, "sigmoid": sigmoid,
         "gelu": lambda v: v * (1 + math.erf(v / math.sqrt(2))) / 2}[kind]  # fmt: skip
    return np.float16(np.float32(f(float(z))))  # correctly rounded fp32 kernel, then fp16


def f16_run(model: Model, x: np.ndarray, order: str) -> np.ndarray:
    d1, act, d2 = model.layers
    h = x.astype(np.float16)
    w1, b1 = d1.weight.astype(np.float16), d1.bias.astype(np.float16)
    z = np.array([np.float16(_f16_dot(h, w1[i], order) + b1[i]) for i in range(w1.shape[0])])
    a = np.array([_f16_act(act.type, act.negative_slope, v) for v in z], dtype=np.float16)
    w2 = d2.weight.astype(np.float16)
    return np.array([_f16_dot(a, w2[i], order) for i in range(w2.shape[0])], dtype=np.float64)


def _fraction_exact(model: Model, x: np.ndarray) -> list[Fraction]:
    d1, act, d2 = model.layers
    alpha = Fraction(act.negative_slope) if act.type == "leaky_relu" else Fraction(0)
    h = [Fraction(v) for v in x]
    z = [sum((Fraction(w) * v for w, v in zip(row, h, strict=True)), Fraction(b))
         for row, b in zip(d1.weight, d1.bias, strict=True)]  # fmt: skip
    a = [v if v > 0 else alpha * v for v in z]
    return [sum((Fraction(w) * v for w, v in zip(row, a, strict=True)), Fraction(0))
            for row in d2.weight]  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["leaky_relu", "leaky_relu", "relu", "tanh", "sigmoid", "gelu"]),
    alpha=slopes,
    scale=st.sampled_from([0.01, 1.0, 100.0, 3000.0]),
)
def test_numpy_float16_dense_activation_runs_are_covered(seed, kind, alpha, scale):
    rng = np.random.default_rng(seed)
    model = Model("f16", (7,), (
        Dense(rng.standard_normal((6, 7)), rng.standard_normal(6)),
        Activation(kind, alpha),
        Dense(rng.standard_normal((3, 6)), None),
    ))  # fmt: skip
    X = rng.standard_normal((2, 7)) * scale
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        rb = bound_run(model, X, Emulated.from_names("binary16", "binary32"))
        runs = {o: np.array([f16_run(model, x, o) for x in X]) for o in
                ("sequential", "reversed", "sorted", "alternating")}  # fmt: skip
    if kind in ("leaky_relu", "relu"):  # rational: compare exactly
        for i, x in enumerate(X):
            exact = _fraction_exact(model, x)
            for o, y in runs.items():
                for k in range(3):
                    if math.isinf(rb.radius[i, k]):
                        continue
                    assert math.isfinite(y[i, k]), (o, i, k)
                    assert abs(Fraction(y[i, k]) - exact[k]) <= Fraction(rb.radius[i, k]), (o, i, k)
    else:
        exact = exact_forward(model, X)
        for o, y in runs.items():
            assert_covers(y, exact, rb.radius, o)


# -- a-priori bounds ------------------------------------------------------------------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 2**32 - 1),
    kind=st.sampled_from(["leaky_relu", "leaky_relu", "relu", "tanh", "sigmoid", "gelu"]),
    alpha=slopes,
    pool=st.sampled_from([None, "max", "avg"]),
    arith=st.sampled_from(ARITHS),
)
def test_apriori_radii_nonnegative_and_cover_runs_in_the_box(seed, kind, alpha, pool, arith):
    rng = np.random.default_rng(seed)
    layers = [Dense(rng.standard_normal((8, 5)), rng.standard_normal(8)), Activation(kind, alpha)]
    if pool:
        layers += [Reshape((2, 2, 2)), Pool2d(pool, (2, 2), (1, 1)), Flatten()]
        n = 2
    else:
        n = 8
    layers += [Dense(rng.standard_normal((3, n)), None), Activation(kind, alpha)]
    model = Model("box", (5,), tuple(layers))
    lo = rng.uniform(-2, 0, 5)
    hi = lo + rng.uniform(0, 2, 5)
    low = Emulated.from_names(*arith)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ap = apriori_bound(model, lo, hi, low)
    assert np.all(ap.radius >= 0) and all(r >= 0 for r in ap.layer_radius)
    assume(np.all(np.isfinite(ap.radius)))
    X = np.vstack([lo, hi, rng.uniform(lo, hi, (3, 5))])
    exact = exact_forward(model, X)
    for order in ("blas", "sequential"):
        y = model.forward(X, Emulated.from_names(*arith, order=order))
        assert_covers(y, exact, np.broadcast_to(ap.radius, y.shape), f"apriori {order}")
        with mpmath.workdps(DPS):
            for i in range(X.shape[0]):
                for k in range(3):
                    v = float(exact[i, k])
                    assert ap.lo[k] - 1e-9 * (1 + abs(v)) <= v <= ap.hi[k] + 1e-9 * (1 + abs(v))
