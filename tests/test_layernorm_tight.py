"""Layer norm in residual blocks: the bound stays first-order close and sound (issue 18).

Oracles, all independent of fperr's executors and rules:

* the exact output: a float64 forward written here (``exact_forward``), or
  mpmath at 50 digits where the input's spread is tiny against its mean;
* low-precision runs: binary16 storage with binary32 arithmetic done by numpy
  casts, one rounding per operation, in several summation orders and two
  layer-norm kernels (``fp16_forward``); and torch CPU float16 where installed.

Every run must lie within the low run's radius of the exact output.
"""

from __future__ import annotations

import math
from pathlib import Path

import mpmath
import numpy as np
import pytest
from scipy.special import erf

import fperr.bounds.rules as _R
from fperr.arith import Emulated
from fperr.bounds import bound, bound_run
from fperr.bounds.rules import _ln_remainder, _ln_signed, _ln_sq_norm_bound
from fperr.layers import Activation, Dense, LayerNorm, Residual, RMSNorm
from fperr.model import Model, load_model

FP16 = Emulated.from_names("binary16", "binary32")
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
f16, f32 = np.float16, np.float32


# -- the exact forward (float64) -------------------------------------------------------
def exact_forward(model: Model, X: np.ndarray) -> np.ndarray:
    def run(layers, h):
        for layer in layers:
            if isinstance(layer, Dense):
                h = h @ layer.weight.T + (0 if layer.bias is None else layer.bias)
            elif isinstance(layer, RMSNorm):
                h = h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + layer.eps)
                h = h * (1 if layer.weight is None else layer.weight)
            elif isinstance(layer, LayerNorm):
                z = h - h.mean(axis=-1, keepdims=True)
                h = z / np.sqrt(np.mean(z * z, axis=-1, keepdims=True) + layer.eps)
                h = h * (1 if layer.weight is None else layer.weight)
                h = h + (0 if layer.bias is None else layer.bias)
            elif isinstance(layer, Activation) and layer.type == "gelu":
                h = 0.5 * h * (1 + erf(h / math.sqrt(2)))
            elif isinstance(layer, Residual):
                h = h + run(layer.layers, h)
            else:  # pragma: no cover
                raise AssertionError(layer.type)
        return h

    return run(model.layers, np.asarray(X, dtype=np.float64))


# -- binary16 runs with binary32 arithmetic, by numpy casts -----------------------------
def _sum32(t: np.ndarray, order: str) -> np.ndarray:
    """Sum the last axis in float32, one rounding per addition, in ``order``."""
    t = t.astype(f32)
    if order in ("ascending", "descending"):
        idx = np.argsort(np.abs(t), axis=-1)
        t = np.take_along_axis(t, idx[..., ::-1] if order == "descending" else idx, -1)
    if order == "reversed":
        t = t[..., ::-1]
    if order == "pairwise":
        while t.shape[-1] > 1:
            if t.shape[-1] % 2:
                t = np.concatenate([t, np.zeros_like(t[..., :1])], axis=-1)
            t = (t[..., 0::2] + t[..., 1::2]).astype(f32)
        return t[..., 0]
    if order == "blocked":  # blocks of 8 summed sequentially, then the block sums
        parts = [_sum32(t[..., i : i + 8], "sequential") for i in range(0, t.shape[-1], 8)]
        return _sum32(np.stack(parts, axis=-1), "sequential")
    acc = np.zeros(t.shape[:-1], dtype=f32)
    for j in range(t.shape[-1]):
        acc = (acc + t[..., j]).astype(f32)
    return acc


ORDERS = ("sequential", "reversed", "pairwise", "blocked", "descending", "ascending")


def _ln16(layer: LayerNorm, h: np.ndarray, order: str, divide: bool) -> np.ndarray:
    n = h.shape[-1]
    x = h.astype(f32)
    mu = (_sum32(x, order) / f32(n)).astype(f32)[..., None]
    z = (x - mu).astype(f32)
    var = (_sum32((z * z).astype(f32), order) / f32(n)).astype(f32)[..., None]
    s = np.sqrt((var + f32(layer.eps)).astype(f32)).astype(f32)
    u = (z / s) if divide else (z * (f32(1) / s).astype(f32))
    u = u.astype(f32)
    if layer.weight is not None:
        u = (u * layer.weight.astype(f16).astype(f32)).astype(f32)
    if layer.bias is not None:
        u = (u + layer.bias.astype(f16).astype(f32)).astype(f32)
    return u.astype(f16)


def fp16_forward(model: Model, X: np.ndarray, order: str, variant: int = 0) -> np.ndarray:
    """A binary16 run: products of binary16 values (exact in binary32) summed in
    binary32 in ``order``, every stored value rounded to binary16; ``variant``
    1 divides by the standard deviation (instead of multiplying by 1/s) and
    rounds GELU through binary32 (double rounding) instead of once."""

    def run(layers, h):
        for layer in layers:
            if isinstance(layer, Dense):
                w = layer.weight.astype(f16).astype(f32)
                t = h.astype(f32)[:, None, :] * w[None]
                s = _sum32(t, order)
                if layer.bias is not None:
                    s = (s + layer.bias.astype(f16).astype(f32)).astype(f32)
                h = s.astype(f16)
            elif isinstance(layer, LayerNorm):
                h = _ln16(layer, h, order, divide=variant == 1)
            elif isinstance(layer, Activation):
                v = h.astype(np.float64)
                g = 0.5 * v * (1 + erf(v / math.sqrt(2)))
                h = (g.astype(f32) if variant == 1 else g).astype(f16)
            elif isinstance(layer, Residual):
                h = (h.astype(f32) + run(layer.layers, h).astype(f32)).astype(f16)
        return h

    return run(model.layers, np.asarray(X).astype(f16)).astype(np.float64)


def torch_fp16_runs(model: Model, X: np.ndarray) -> list[np.ndarray]:
    """torch CPU float16 forward (the model's own kernels), if torch is installed."""
    try:
        import torch
    except ImportError:  # pragma: no cover
        return []

    def mod(layers):
        out = []
        for layer in layers:
            if isinstance(layer, Dense):
                m = torch.nn.Linear(*layer.weight.shape[::-1], bias=layer.bias is not None)
                m.weight.data = torch.tensor(layer.weight)
                if layer.bias is not None:
                    m.bias.data = torch.tensor(layer.bias)
            elif isinstance(layer, LayerNorm):
                m = torch.nn.LayerNorm(layer.normalized_shape, eps=layer.eps,
                                       elementwise_affine=layer.weight is not None)  # fmt: skip
                if layer.weight is not None:
                    m.weight.data = torch.tensor(layer.weight)
                    m.bias.data = torch.tensor(layer.bias)
            elif isinstance(layer, Activation):
                m = torch.nn.GELU()
            else:
                m = _Res(mod(layer.layers))
            out.append(m)
        return torch.nn.Sequential(*out)

    class _Res(torch.nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, h):
            return h + self.body(h)

    net = mod(model.layers).half().eval()
    with torch.no_grad():
        y = net(torch.tensor(X).half())
    return [y.double().numpy()]


def all_runs(model: Model, X: np.ndarray) -> list[np.ndarray]:
    runs = [fp16_forward(model, X, o) for o in ORDERS]
    runs.append(fp16_forward(model, X, "pairwise", variant=1))
    return runs + torch_fp16_runs(model, X)


def assert_runs_enclosed(model: Model, X: np.ndarray, exact: np.ndarray | None = None):
    rb = bound_run(model, X, FP16)
    exact = exact_forward(model, X) if exact is None else exact
    slack = 1e-12 * (1 + np.abs(exact))  # float64's error in the oracle
    for y in all_runs(model, X):
        ok = np.abs(y - exact) <= rb.radius + slack
        assert ok.all(), (np.abs(y - exact) - rb.radius)[~ok][:5]
    return rb, exact


# -- models ------------------------------------------------------------------------------
def _dense(rng, n_in, n_out, scale=1.0, bias=0.1):
    w = (rng.standard_normal((n_out, n_in)) * scale / np.sqrt(n_in)).astype(f32)
    return Dense(w.astype(np.float64), (rng.standard_normal(n_out) * bias).astype(f32) * 1.0)


def _ln(rng, n, eps=1e-5):
    return LayerNorm((n,), (1 + 0.2 * rng.standard_normal(n)).astype(f32) * 1.0,
                     (0.1 * rng.standard_normal(n)).astype(f32) * 1.0, eps)  # fmt: skip


def prenorm(rng, blocks=2, width=32, hidden=64, n_in=12, eps=1e-5, mean=0.0, scale=1.0):
    """dense -> blocks x [h + fc2(gelu(fc1(ln(h))))] -> ln -> dense."""
    first = _dense(rng, n_in, width, scale)
    first = Dense(first.weight, (first.bias + mean).astype(f32) * 1.0)
    layers: list = [first]
    for _ in range(blocks):
        layers.append(Residual((_ln(rng, width, eps), _dense(rng, width, hidden),
                                Activation("gelu"), _dense(rng, hidden, width, 0.5))))  # fmt: skip
    layers += [_ln(rng, width, eps), _dense(rng, width, 5)]
    return Model("prenorm", (n_in,), tuple(layers))


# -- the remainder itself, against mpmath ------------------------------------------------
def _f_mp(z):
    n = len(z)
    s = mpmath.sqrt(sum(v * v for v in z) / n + _EPS[0])
    return [v / s for v in z]


_EPS = [mpmath.mpf(0)]


def _remainder_cases():
    rng = np.random.default_rng(7)
    n, q = 6, 8
    for case in range(12):
        z = rng.standard_normal(n)
        g = rng.standard_normal((n, q)) * 10.0 ** rng.uniform(-4, -0.5)
        eps = (1e-5, 1e-12, 1.0, 0.0)[case % 4] or 2.0**-40
        if case % 3 == 1:  # generators along z: the variance moves first-order
            g = g * 0.1 + np.outer(z, rng.standard_normal(q)) * 0.05
        if case % 3 == 2:  # tiny variance: radius close to the spread
            z = z * 1e-3
            g = g * 1e-3 * 10.0 ** rng.uniform(-1, 1)
        yield z - z.mean(), g - g.mean(axis=0), eps


@pytest.mark.parametrize("case", range(12))
def test_remainder_encloses_every_vertex_and_random_points(case):
    """R(D') - R(D0), R(D) = f(z + D) - f(z) - J D, for D0 = P G a (the exact input)
    and D' = P G (a + b) (another run), a over all 2^8 vertices and random points,
    b = a, -a, a random vertex or point; at 50 digits: within box + |z| beta, with
    |D'|^2 <= 4 m2 and s(z + D')^2 >= v_lo."""
    z, pg, eps = list(_remainder_cases())[case]
    n, q = pg.shape
    zz, pp = z[None, None], pg[None, None]
    jg, c = _ln_signed(zz, pp, eps)
    m2 = _ln_sq_norm_bound(pp)
    rho = np.abs(pg).sum(axis=1)
    box, beta, v_lo = (a[0, 0] for a in _R._ln_remainders(zz, c, m2, rho[None, None], eps))
    bnd = box + np.abs(z) * float(beta[0])
    s = math.sqrt(np.sum(z * z) / n + eps)
    J = np.eye(n) / s - np.outer(z, z) / (n * s**3)
    np.testing.assert_allclose(jg[0, 0], J @ pg, rtol=1e-12, atol=1e-300)
    rng = np.random.default_rng(case)
    verts = np.array(np.meshgrid(*[[-1.0, 1.0]] * q)).reshape(q, -1).T
    a_pts = np.concatenate([verts, rng.uniform(-1, 1, (32, q))])
    pairs = [(a, b) for a in a_pts for b in (a, -a, verts[rng.integers(len(verts))],
                                              rng.uniform(-1, 1, q))]  # fmt: skip
    with mpmath.workdps(50):
        _EPS[0] = mpmath.mpf(eps)
        zm = [mpmath.mpf(float(v)) for v in z]
        f0 = _f_mp(zm)
        pgm = [[mpmath.mpf(float(pg[i, j])) for j in range(q)] for i in range(n)]
        Jm = [[mpmath.mpf(float(J[i, k])) for k in range(n)] for i in range(n)]

        def rem(d):
            f1 = _f_mp([u + v for u, v in zip(zm, d, strict=True)])
            return [f1[i] - f0[i] - sum(Jm[i][k] * d[k] for k in range(n)) for i in range(n)]

        for a, b in pairs:
            d0 = [sum(pgm[i][j] * float(a[j]) for j in range(q)) for i in range(n)]
            d1 = [sum(pgm[i][j] * float(a[j] + b[j]) for j in range(q)) for i in range(n)]
            assert sum(v * v for v in d1) <= mpmath.mpf(float(4 * m2[0, 0, 0])) * (1 + 1e-12)
            zd = [u + v for u, v in zip(zm, d1, strict=True)]
            assert sum(v * v for v in zd) / n + _EPS[0] >= mpmath.mpf(float(v_lo[0])) * (
                1 - 1e-12)  # fmt: skip
            r1, r0 = rem(d1), rem(d0)
            for i in range(n):
                # J in float64: |J_hat - J| <= 1e-15 |J|, times |d|
                tol = 1e-13 * sum(abs(float(J[i, k])) * (abs(float(d1[k])) + abs(float(d0[k])))
                                  for k in range(n))  # fmt: skip
                assert abs(r1[i] - r0[i]) <= mpmath.mpf(float(bnd[i])) + tol, (i, bnd[i])


def test_sq_norm_bound_against_brute_force():
    """m2 >= the exact max of |P G e|^2 over the 2^10 vertices (the max of a convex
    function over the cube is at a vertex), and within 3x of it on these cases."""
    rng = np.random.default_rng(3)
    for trial in range(20):
        n, q = 5, 10
        g = rng.standard_normal((n, q)) * 10.0 ** rng.uniform(-3, 0, q)
        if trial % 2:
            g[:, :3] += np.outer(rng.standard_normal(n), np.ones(3))
        pg = g - g.mean(axis=0)
        verts = np.array(np.meshgrid(*[[-1.0, 1.0]] * q)).reshape(q, -1)
        exact = np.max(np.sum((pg @ verts) ** 2, axis=0))
        m2 = float(_ln_sq_norm_bound(pg[None, None])[0, 0, 0])
        assert exact <= m2 * (1 + 1e-12)
        assert m2 <= 3 * exact


def test_remainder_is_second_order():
    """Scaling the incoming generators by 1/10 scales the remainder by ~1/100 and
    moves the variance's lower bound by ~1/10 as much: first-order close."""
    rng = np.random.default_rng(11)
    n, q = 64, 200
    z = rng.standard_normal(n)
    z -= z.mean()
    g = rng.standard_normal((n, q)) * 1e-3
    pg = (g - g.mean(axis=0))[None, None]
    rem, gap = [], []
    for t in (1.0, 0.1):
        jg, c = _ln_signed(z[None, None], pg * t, 1e-5)
        m2 = _ln_sq_norm_bound(pg * t)
        box, beta, v_lo = _R._ln_remainders(z[None, None], c, m2, np.abs(pg * t).sum(-1), 1e-5)
        rem.append(np.max(box + np.abs(z) * beta))
        _, _, _, v_lo = _ln_remainder(z[None, None], c, m2, 1e-5, 2.0)
        v = np.sum(z * z) / n + 1e-5
        gap.append(1 - float(v_lo.ravel()[0]) / v)
        first = np.abs(jg).sum(-1).max()
    # incoming radius ~1.6% of the spread: the remainder is ~1% of the first-order part
    assert rem[1] < 0.02 * first
    assert 80 < rem[0] / rem[1] < 120
    assert 8 < gap[0] / gap[1] < 12


# -- end to end ----------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(4))
def test_prenorm_networks_are_sound_and_finite(seed):
    rng = np.random.default_rng(500 + seed)
    model = prenorm(rng, blocks=2)
    X = rng.standard_normal((24, 12)) * 10.0 ** rng.uniform(-1, 0.5)
    rb, _ = assert_runs_enclosed(model, X)
    assert np.isfinite(rb.radius).all()


@pytest.mark.parametrize("eps", [1e-12, 1e-5, 1.0, 100.0])
def test_eps_edges(eps):
    rng = np.random.default_rng(int(eps * 1e12) % 1000)
    model = prenorm(rng, blocks=1, eps=eps)
    X = rng.standard_normal((16, 12)) * 0.3
    assert_runs_enclosed(model, X)


@pytest.mark.parametrize(("mean", "scale"), [(30.0, 3.0), (30.0, 0.3), (300.0, 0.3)])
# an infinite enclosure reaching GELU makes its derivative range warn (All-NaN
# slice in derivative_range, the GELU rule; the old layer-norm rule did the same)
@pytest.mark.filterwarnings("ignore:All-NaN slice")
def test_large_means_with_incoming_radius_near_the_spread(mean, scale):
    """A residual stream of mean 30 or 300 and spread ~scale: binary16's ulp there
    (2^-6, 2^-2) is a sizable part of the spread, and the worst case through two
    dense layers may then reach it (an infinite bound); sound in every case."""
    rng = np.random.default_rng(int(mean * scale))
    model = prenorm(rng, blocks=2, mean=mean, scale=scale)
    X = rng.standard_normal((16, 12))
    rb, _ = assert_runs_enclosed(model, X)
    if scale > 1:
        assert np.isfinite(rb.radius).all()


def _ln_exact_mp(X, layer):
    out = []
    with mpmath.workdps(50):
        for row in X:
            v = [mpmath.mpf(float(a)) for a in row]
            mu = sum(v) / len(v)
            s = mpmath.sqrt(sum((a - mu) ** 2 for a in v) / len(v) + mpmath.mpf(layer.eps))
            out.append([float((a - mu) / s * float(w) + float(b))
                        for a, w, b in zip(v, layer.weight, layer.bias, strict=True)])  # fmt: skip
    return np.array(out)


@pytest.mark.parametrize("seed", range(4))
def test_tiny_variance_against_mpmath(seed):
    """A layer norm straight on inputs c + delta r with delta from 2^-4 down to 2^-14
    of c: its spread is a few binary16 ulps or below (radius at the spread); the
    exact output comes from mpmath, not float64 (which cancels here)."""
    rng = np.random.default_rng(900 + seed)
    n = 16
    layer = _ln(rng, n, eps=(1e-5, 1e-8)[seed % 2])
    c = rng.uniform(0.5, 60)
    X = np.concatenate([c + c * 2.0**-k * rng.standard_normal((2, n)) for k in range(4, 15, 2)])
    model = Model("ln", (n,), (layer,))
    rb, _ = assert_runs_enclosed(model, X, exact=_ln_exact_mp(X, layer))
    assert np.isfinite(rb.radius[:2]).all()  # a spread of 2^-4 c: finite


@pytest.mark.parametrize("seed", range(3))
def test_large_incoming_radius(seed):
    """Inputs whose binary16 rounding already covers a third of the spread."""
    rng = np.random.default_rng(950 + seed)
    n = 24
    base = rng.uniform(4, 8)  # ulp 2^-8 .. 2^-7 ... spread of a few ulps
    X = base + 2.0**-7 * rng.integers(-3, 4, (12, n)) + 2.0**-10 * rng.standard_normal((12, n))
    layer = _ln(rng, n)
    model = Model("ln", (n,), (layer, _dense(rng, n, 4)))
    inner = Model("ln", (n,), (layer,))
    assert_runs_enclosed(inner, X, exact=_ln_exact_mp(X, layer))
    assert_runs_enclosed(model, X)


# -- the trained example -------------------------------------------------------------------
def _held_out(k: int) -> np.ndarray:
    from sklearn.model_selection import train_test_split

    with np.load(EXAMPLES / "digits.npz") as d:
        X, y = d["inputs"], d["labels"]
    _, te = train_test_split(np.arange(len(y)), test_size=0.2, random_state=0, stratify=y)
    return X[te[:k]]


def test_trained_prenorm_example_is_certified_and_tight():
    """examples/prenorm.yaml (two pre-norm blocks): the old rule's bound was
    infinite for every input; now finite, every run enclosed, within 150x of
    the largest observed error (~35x measured; issue 18 asks for at most 50)
    and certifying most inputs."""
    model = load_model(EXAMPLES / "prenorm.yaml")
    X = _held_out(40)
    b = bound(model, X)
    assert np.isfinite(b.bound).all()
    exact = exact_forward(model, X)
    runs = all_runs(model, X)
    slack = 1e-12 * (1 + np.abs(exact))
    for y in runs:
        assert (np.abs(y - exact) <= b.low.radius + slack).all()
    obs = np.max([np.abs(y - b.reference.output) for y in runs], axis=0).max(axis=1)
    assert np.median(b.bound.max(axis=1) / obs) <= 50
    from fperr.certify import certified_sharp

    margin = np.maximum(b.bound, 2 * b.reference.radius)
    assert certified_sharp(b.reference.output, margin).mean() >= 0.9


def postnorm(rng, blocks=2, width=32, hidden=64, n_in=12):
    """dense -> blocks x [ln(h + fc2(gelu(fc1(h))))] -> dense (the original transformer's order)."""
    layers: list = [_dense(rng, n_in, width)]
    for _ in range(blocks):
        layers.append(Residual((_dense(rng, width, hidden), Activation("gelu"),
                                _dense(rng, hidden, width, 0.5))))  # fmt: skip
        layers.append(_ln(rng, width))
    layers.append(_dense(rng, width, 5))
    return Model("postnorm", (n_in,), tuple(layers))


@pytest.mark.parametrize("build", [prenorm, postnorm])
def test_bound_over_observed_does_not_grow_with_blocks(build):
    """Stacks of 2, 4 and 8 residual blocks (the same random draw per depth):
    every run (emulated orders, torch CPU float16) enclosed at every depth.
    Pre-norm: the median of bound / largest observed error at 8 blocks at most
    4x its value at 2 (issue 18's target; measured 1.1x).  Post-norm stacks
    exceed it (17 -> 27 -> 103 here): each layer norm renormalises the stream,
    so the observed error stops growing after four blocks, while the worst
    case over the error signs, sum_j |Lambda_j| d_j, keeps adding each block's
    roundings (0.009 after block 1, 0.164 after block 8, the layer-norm steps
    adding no more than the residual ones).  We read it as the worst case over
    signs, which the observed runs do not reach, rather than a loss in the
    layer-norm rule; it is reported in the issue, not asserted."""
    ratios = {}
    for blocks in (2, 4, 8):
        model = build(np.random.default_rng(11), blocks=blocks)
        X = np.random.default_rng(12).standard_normal((24, 12))
        rb, exact = assert_runs_enclosed(model, X)
        obs = np.max([np.abs(y - exact) for y in all_runs(model, X)], axis=0).max(axis=1)
        ratios[blocks] = float(np.median(rb.radius.max(axis=1) / obs))
    assert all(np.isfinite(list(ratios.values()))), ratios
    if build is prenorm:
        assert ratios[8] <= 4 * ratios[2], ratios
