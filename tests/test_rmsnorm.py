"""RMS norm, y = x / sqrt(mean(x^2) + eps) * w, end to end (issues 12 and 18).

Oracles, all independent of fperr's executors and rules: mpmath at 50 digits
and a float64 forward written here for the exact output; binary16 / bfloat16
runs done by numpy casts (bfloat16 by rounding float32 bits to nearest even),
one rounding per float32 operation, in several summation orders; and torch
CPU float16 / bfloat16 runs of the equivalent torch module.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from scipy.special import erf
from test_layernorm_tight import _sum32, exact_forward

import fperr.bounds.rules as _R
from fperr.arith import Emulated
from fperr.bounds import bound_run
from fperr.bounds.rules import _ln_signed, _ln_sq_norm_bound
from fperr.layers import RMS_EPS_DEFAULT, Activation, Dense, LayerNorm, Residual, RMSNorm
from fperr.model import Model, load_model

torch = pytest.importorskip("torch")

f16, f32 = np.float16, np.float32
ARITH = {"binary16": Emulated.from_names("binary16", "binary32"),
         "bfloat16": Emulated.from_names("bfloat16", "binary32")}  # fmt: skip
TORCH_DTYPE = {"binary16": torch.float16, "bfloat16": torch.bfloat16}


# -- oracles ------------------------------------------------------------------------------
def rms_mp(X, eps, w=None):
    out = []
    with mpmath.workdps(50):
        for row in X:
            v = [mpmath.mpf(float(a)) for a in row]
            s = mpmath.sqrt(mpmath.fsum(a * a for a in v) / len(v) + mpmath.mpf(eps))
            out.append([float(a / s * (1 if w is None else mpmath.mpf(float(w[i]))))
                        for i, a in enumerate(v)])  # fmt: skip
    return np.array(out)


def to_bf16(a) -> np.ndarray:
    """Round to bfloat16 (nearest, ties to even) through float32's bits (finite values)."""
    b = np.asarray(a, dtype=f32).view(np.uint32).astype(np.uint64)
    b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
    return b.astype(np.uint32).view(f32).astype(np.float64)


def store(fmt: str, a) -> np.ndarray:
    return np.asarray(a).astype(f16).astype(np.float64) if fmt == "binary16" else to_bf16(a)


# float32 sums in a chosen order, one rounding per addition (shared with the layer-norm tests)
ORDERS = ("sequential", "reversed", "pairwise", "descending", "ascending")


def low_forward(model: Model, X: np.ndarray, fmt: str, order: str, divide: bool = False):
    """A run in ``fmt`` storage with float32 arithmetic; ``divide``: x / sqrt(v) in
    place of x * (1 / sqrt(v)), and the GELU double-rounded through float32."""

    def run(layers, h):
        for layer in layers:
            if isinstance(layer, Dense):
                w = store(fmt, layer.weight).astype(f32)
                s = _sum32(h.astype(f32)[:, None, :] * w[None], order)
                s = (s + store(fmt, layer.bias).astype(f32)).astype(f32)
                h = store(fmt, s)
            elif isinstance(layer, RMSNorm | LayerNorm):
                x = h.astype(f32)
                n = x.shape[-1]
                if isinstance(layer, LayerNorm):
                    x = (x - (_sum32(x, order) / f32(n)).astype(f32)[..., None]).astype(f32)
                v = (_sum32((x * x).astype(f32), order) / f32(n)).astype(f32)[..., None]
                s = np.sqrt((v + f32(layer.eps)).astype(f32)).astype(f32)
                u = (x / s if divide else x * (f32(1) / s).astype(f32)).astype(f32)
                if layer.weight is not None:
                    u = (u * store(fmt, layer.weight).astype(f32)).astype(f32)
                if getattr(layer, "bias", None) is not None:
                    u = (u + store(fmt, layer.bias).astype(f32)).astype(f32)
                h = store(fmt, u)
            elif isinstance(layer, Activation):
                g = 0.5 * h * (1 + erf(h / math.sqrt(2)))
                h = store(fmt, g.astype(f32) if divide else g)
            elif isinstance(layer, Residual):
                h = store(fmt, (h.astype(f32) + run(layer.layers, h).astype(f32)).astype(f32))
        return h

    return run(model.layers, store(fmt, X))


def torch_module(model: Model):
    nn = torch.nn

    class Res(nn.Module):
        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, h):
            return h + self.body(h)

    def mod(layers):
        out = []
        for layer in layers:
            if isinstance(layer, Dense):
                m = nn.Linear(*layer.weight.shape[::-1])
                m.weight.data, m.bias.data = torch.tensor(layer.weight), torch.tensor(layer.bias)
            elif isinstance(layer, RMSNorm):
                m = nn.RMSNorm(layer.normalized_shape, eps=layer.eps)
                m.weight.data = torch.tensor(layer.weight)
            elif isinstance(layer, LayerNorm):
                m = nn.LayerNorm(layer.normalized_shape, eps=layer.eps)
                m.weight.data, m.bias.data = torch.tensor(layer.weight), torch.tensor(layer.bias)
            elif isinstance(layer, Activation):
                m = nn.GELU()
            else:
                m = Res(mod(layer.layers))
            out.append(m)
        return nn.Sequential(*out)

    return mod(model.layers).eval()


def torch_run(model: Model, X: np.ndarray, fmt: str) -> np.ndarray:
    net = torch_module(model).to(TORCH_DTYPE[fmt])
    with torch.no_grad():
        return net(torch.tensor(X).to(TORCH_DTYPE[fmt])).double().numpy()


def all_runs(model, X, fmt):
    runs = [low_forward(model, X, fmt, o) for o in ORDERS]
    runs.append(low_forward(model, X, fmt, "pairwise", divide=True))
    return [*runs, torch_run(model, X, fmt)]


# -- models -------------------------------------------------------------------------------
def _dense(rng, n_in, n_out, scale=1.0):
    w = (rng.standard_normal((n_out, n_in)) * scale / np.sqrt(n_in)).astype(f32) * 1.0
    return Dense(w, (rng.standard_normal(n_out) * 0.1).astype(f32) * 1.0)


def _norm(rng, n, eps, kind):
    w = (1 + 0.2 * rng.standard_normal(n)).astype(f32) * 1.0
    if kind == "rms":
        return RMSNorm((n,), w, eps)
    return LayerNorm((n,), w, (0.1 * rng.standard_normal(n)).astype(f32) * 1.0, eps)


def prenorm(seed, blocks=2, width=24, hidden=48, n_in=10, eps=1e-5, kind="rms"):
    """dense -> blocks x [h + fc2(gelu(fc1(norm(h))))] -> norm -> dense; the same
    weights for kind "rms" and "ln" (the norm's draws do not shift the others)."""
    rng, nrng = np.random.default_rng(seed), np.random.default_rng(seed + 10_000)
    layers: list = [_dense(rng, n_in, width)]
    for _ in range(blocks):
        layers.append(Residual((_norm(nrng, width, eps, kind), _dense(rng, width, hidden),
                                Activation("gelu"), _dense(rng, hidden, width, 0.5))))  # fmt: skip
    layers += [_norm(nrng, width, eps, kind), _dense(rng, width, 5)]
    return Model("prenorm", (n_in,), tuple(layers))


# -- forward against mpmath -----------------------------------------------------------------
@pytest.mark.parametrize("scale", [1e-4, 1e-2, 1.0, 1e3])
@pytest.mark.parametrize("eps", [RMS_EPS_DEFAULT, 1e-12, 1e-5, 1.0])
def test_forward_against_mpmath(scale, eps):
    rng = np.random.default_rng(int(scale * 1e4) % 997 + int(eps * 1e6) % 13)
    n = 12
    w = 1 + 0.3 * rng.standard_normal(n)
    X = rng.standard_normal((6, n)) * scale
    for weight in (w, None):
        model = Model("r", (n,), (RMSNorm((n,), weight, eps),))
        want = rms_mp(X, eps, weight)
        np.testing.assert_allclose(model.forward(X), want, rtol=1e-13, atol=0)
        from fperr.mpmath_exec import run_mpmath

        got = np.array(run_mpmath(model, X, dps=50), dtype=np.float64)
        np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)


# -- the remainder, uncentred (P = I), against mpmath ------------------------------------------
def _cases():
    rng = np.random.default_rng(17)
    n, q = 5, 7
    for case in range(8):
        z = rng.standard_normal(n) + (3.0 if case % 2 else 0.0)  # not centred
        g = rng.standard_normal((n, q)) * 10.0 ** rng.uniform(-4, -0.7)
        eps = (1e-5, 1e-12, 1.0, RMS_EPS_DEFAULT)[case % 4]
        if case % 3 == 1:  # generators along z: the mean square moves first-order
            g = g * 0.1 + np.outer(z, rng.standard_normal(q)) * 0.05
        if case % 3 == 2:  # tiny mean square: radius close to |z|
            z, g = z * 1e-3, g * 1e-3 * 10.0 ** rng.uniform(-1, 1)
        yield z, g, eps


@pytest.mark.parametrize("case", range(8))
def test_remainder_encloses_vertices_and_random_points(case):
    """For D0 = G a (the exact input) and D' = G (a + b) (another run): f(z + D') -
    f(z + D0) - J G b, at 50 digits, within box + |z| beta, f(z) = z / s(z)."""
    z, g, eps = list(_cases())[case]
    n, q = g.shape
    zz, gg = z[None, None], g[None, None]
    jg, c = _ln_signed(zz, gg, eps)
    m2 = _ln_sq_norm_bound(gg)
    box, beta, v_lo = (a[0, 0] for a in _R._ln_remainders(zz, c, m2, np.abs(gg).sum(-1), eps))
    bnd = box + np.abs(z) * float(beta[0])
    s = math.sqrt(np.sum(z * z) / n + eps)
    J = np.eye(n) / s - np.outer(z, z) / (n * s**3)
    # J G cancels along z: compare to float64's error, relative to |J| |G|
    assert (np.abs(jg[0, 0] - J @ g) <= 1e-12 * (np.abs(J) @ np.abs(g))).all()
    rng = np.random.default_rng(case)
    verts = np.array(np.meshgrid(*[[-1.0, 1.0]] * q)).reshape(q, -1).T
    a_pts = np.concatenate([verts[::2], rng.uniform(-1, 1, (24, q))])
    with mpmath.workdps(50):
        e = mpmath.mpf(eps)
        zm = [mpmath.mpf(float(v)) for v in z]

        def f(x):
            sx = mpmath.sqrt(mpmath.fsum(v * v for v in x) / n + e)
            return [v / sx for v in x]

        gm = [[mpmath.mpf(float(g[i, j])) for j in range(q)] for i in range(n)]
        for a in a_pts:
            for b in (a, -a, verts[rng.integers(len(verts))], rng.uniform(-1, 1, q)):
                d0 = [mpmath.fsum(gm[i][j] * float(a[j]) for j in range(q)) for i in range(n)]
                db = [mpmath.fsum(gm[i][j] * float(b[j]) for j in range(q)) for i in range(n)]
                x1 = [zm[i] + d0[i] + db[i] for i in range(n)]
                assert mpmath.fsum(v * v for v in x1) / n + e >= float(v_lo[0]) * (1 - 1e-12)
                f1, f0 = f(x1), f([zm[i] + d0[i] for i in range(n)])
                for i in range(n):
                    lin = mpmath.fsum(float(J[i, k]) * db[k] for k in range(n))
                    tol = 1e-13 * sum(abs(float(J[i, k]) * float(db[k])) for k in range(n))
                    assert abs(f1[i] - f0[i] - lin) <= float(bnd[i]) + tol, (case, i)


# -- end to end: every run enclosed -------------------------------------------------------------
def _check_enclosed(model, X, fmt, engine, method):
    rb = bound_run(model, X, ARITH[fmt], engine=engine, method=method)
    exact = exact_forward(model, X)
    slack = 1e-12 * (1 + np.abs(exact))
    for y in all_runs(model, X, fmt):
        ok = np.abs(y - exact) <= rb.radius + slack
        assert ok.all(), (np.abs(y - exact) - rb.radius)[~ok][:5]
    return rb, exact


@pytest.mark.parametrize("method", ["deterministic", "probabilistic"])
@pytest.mark.parametrize("engine", ["zonotope", "backward"])
@pytest.mark.parametrize("fmt", ["binary16", "bfloat16"])
def test_prenorm_rmsnorm_runs_enclosed(fmt, engine, method):
    for seed in range(2):
        model = prenorm(300 + seed)
        rng = np.random.default_rng(seed)
        X = rng.standard_normal((16, 10)) * 10.0 ** rng.uniform(-1, 0.5)
        rb, _ = _check_enclosed(model, X, fmt, engine, method)
        assert np.isfinite(rb.radius).all()


@pytest.mark.parametrize("eps", [1e-12, RMS_EPS_DEFAULT, 1.0, 100.0])
def test_eps_edges_and_tiny_inputs(eps):
    model = prenorm(77, blocks=1, eps=eps)
    rng = np.random.default_rng(5)
    for scale in (1e-3, 0.3, 30.0):
        _check_enclosed(model, rng.standard_normal((12, 10)) * scale, "binary16", "auto",
                        "deterministic")  # fmt: skip


def test_single_rmsnorm_against_mpmath_with_large_and_tiny_mean_square():
    rng = np.random.default_rng(9)
    n = 16
    layer = RMSNorm((n,), 1 + 0.2 * rng.standard_normal(n), 1e-6)
    model = Model("r", (n,), (layer,))
    X = np.concatenate([rng.standard_normal((3, n)) * s for s in (1e-4, 1e-2, 1.0, 1e3)])
    X = store("binary16", X)
    exact = rms_mp(X, layer.eps, layer.weight)
    for fmt in ("binary16", "bfloat16"):
        Xs = store(fmt, X)
        ex = rms_mp(Xs, layer.eps, layer.weight) if fmt == "bfloat16" else exact
        for engine in ("zonotope", "backward"):
            rb = bound_run(model, X, ARITH[fmt], engine=engine)
            for y in all_runs(model, X, fmt):
                ref = ex if fmt == "binary16" else exact
                assert (np.abs(y - ref) <= rb.radius + 1e-15).all()


# -- torch's eps and kernel ---------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_torch_eps_none_is_float32_eps_in_low_dtypes(dtype):
    """The pinned eps is what torch 2.13 CPU uses for eps=None in float16 / bfloat16
    (not finfo(dtype).eps as its docs say): bit for bit, at mean squares where the
    difference would show."""
    n = 32
    x = (torch.randn(400, n, generator=torch.Generator().manual_seed(1)) * 1e-2).to(dtype)
    a, b = torch.nn.RMSNorm(n).to(dtype), torch.nn.RMSNorm(n, eps=RMS_EPS_DEFAULT).to(dtype)
    c = torch.nn.RMSNorm(n, eps=torch.finfo(dtype).eps).to(dtype)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))
        if dtype != torch.float32:
            assert not torch.equal(a(x), c(x))


# -- import and YAML ----------------------------------------------------------------------------
@pytest.mark.parametrize("eps", [None, 1e-6])
@pytest.mark.parametrize("affine", [True, False])
def test_import_from_torch(eps, affine, tmp_path):
    from fperr.importers import from_torch

    nn = torch.nn
    g = torch.Generator().manual_seed(3)
    norm = nn.RMSNorm(8, eps=eps, elementwise_affine=affine)
    if affine:
        norm.weight.data = 1 + 0.3 * torch.randn(8, generator=g)
    net = nn.Sequential(nn.Linear(5, 8), norm, nn.GELU(), nn.Linear(8, 3)).eval()
    model = from_torch(net, (5,))
    rms = model.layers[1]
    assert isinstance(rms, RMSNorm)
    assert rms.eps == (RMS_EPS_DEFAULT if eps is None else 1e-6)
    assert (rms.weight is None) == (not affine)
    pinned = nn.RMSNorm(8, eps=rms.eps, elementwise_affine=affine)
    if affine:
        pinned.weight.data = norm.weight.data.clone()
    twin = nn.Sequential(net[0], pinned, net[2], net[3]).double().eval()
    X = np.random.default_rng(0).standard_normal((20, 5))
    with torch.no_grad():
        want = twin(torch.tensor(X)).numpy()
    got = model.forward(X)
    assert np.linalg.norm(got - want) <= 1e-12 * np.linalg.norm(want)
    model.save(tmp_path / "m.yaml")
    back = load_model(tmp_path / "m.yaml")
    assert back.layers[1].type == "rmsnorm" and back.layers[1].eps == rms.eps
    np.testing.assert_array_equal(back.forward(X), got)


def test_import_functional_rms_norm():
    from fperr.errors import SpecError
    from fperr.importers import from_torch

    nn, F = torch.nn, torch.nn.functional

    class Net(nn.Module):
        def __init__(self, eps):
            super().__init__()
            self.fc, self.w, self.eps = nn.Linear(4, 6), nn.Parameter(torch.rand(6) + 0.5), eps

        def forward(self, x):
            return F.rms_norm(self.fc(x), (6,), self.w, self.eps)

    model = from_torch(Net(1e-5), (4,))
    assert isinstance(model.layers[1], RMSNorm) and model.layers[1].eps == 1e-5
    with pytest.raises(SpecError, match="eps=None"):
        from_torch(Net(None), (4,))


@pytest.mark.parametrize("eps", [None, 1e-6])
@pytest.mark.parametrize("affine", [True, False])
def test_import_torch_export_program(eps, affine, tmp_path):
    """torch.export (torch 2.13) keeps nn.RMSNorm as one aten.rms_norm call, eps left
    out of the call when None: the .pt2 import pins it as from_torch pins the module's."""
    from torch.export import Dim

    from fperr.model_files import load_model_file

    nn = torch.nn
    g = torch.Generator().manual_seed(7)
    norm = nn.RMSNorm(8, eps=eps, elementwise_affine=affine)
    if affine:
        norm.weight.data = 1 + 0.3 * torch.randn(8, generator=g)
    net = nn.Sequential(nn.Linear(5, 8), norm, nn.Linear(8, 3)).double().eval()
    xt = torch.zeros(2, 5, dtype=torch.float64)
    ep = torch.export.export(net, (xt,), dynamic_shapes=({0: Dim("batch")},))
    rms_calls = [n for n in ep.graph.nodes if n.target is torch.ops.aten.rms_norm.default]
    assert len(rms_calls) == 1
    torch.export.save(ep, str(tmp_path / "m.pt2"))
    model = load_model_file(tmp_path / "m.pt2")
    assert [la.type for la in model.layers] == ["dense", "rmsnorm", "dense"]
    rms = model.layers[1]
    assert rms.eps == (RMS_EPS_DEFAULT if eps is None else 1e-6)
    assert (rms.weight is None) == (not affine)
    pinned = nn.RMSNorm(8, eps=rms.eps, elementwise_affine=affine).double()
    if affine:
        pinned.weight.data = norm.weight.data.clone()
    twin = nn.Sequential(net[0], pinned, net[2]).eval()
    X = np.random.default_rng(2).standard_normal((20, 5))
    with torch.no_grad():
        want = twin(torch.tensor(X)).numpy()
        unpinned = net(torch.tensor(X)).numpy()
    got = model.forward(X)
    assert np.linalg.norm(got - want) <= 1e-12 * np.linalg.norm(want)
    if eps is None:  # float64 torch would use 2^-52: the pin shows, far above 1e-12
        assert np.linalg.norm(got - unpinned) > 1e-9 * np.linalg.norm(want)


def test_import_onnx_rms_normalization():
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    from fperr.importers import from_onnx

    if onnx.defs.onnx_opset_version() < 23:  # pragma: no cover
        pytest.skip("onnx without RMSNormalization (opset 23)")
    rng = np.random.default_rng(2)
    scale = (1 + 0.2 * rng.standard_normal(6)).astype(np.float32)
    node = helper.make_node("RMSNormalization", ["x", "s"], ["y"], axis=-1, epsilon=1e-4)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                              [1, 6])], [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                              [1, 6])], [numpy_helper.from_array(scale, "s")])  # fmt: skip
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 23)])
    model = from_onnx(m)
    X = rng.standard_normal((4, 6))
    eps32 = float(np.float32(1e-4))  # ONNX float attributes are float32
    assert model.layers[0].eps == eps32
    np.testing.assert_allclose(model.forward(X), rms_mp(X, eps32, scale.astype(np.float64)),
                               rtol=1e-13)  # fmt: skip


# -- tightness report ---------------------------------------------------------------------------
def test_report_bound_over_observed_rms_vs_layernorm():
    """Median bound / observed (worst run per output) for the same network with RMS
    norm and with layer norm; printed (run with -s), and bounded loosely."""
    rows = []
    for kind in ("rms", "ln"):
        for engine in ("zonotope", "backward"):
            ratios = []
            for seed in range(3):
                model = prenorm(600 + seed, kind=kind)
                X = np.random.default_rng(seed).standard_normal((24, 10))
                rb, exact = _check_enclosed(model, X, "binary16", engine, "deterministic")
                obs = np.max([np.abs(y - exact) for y in all_runs(model, X, "binary16")], 0)
                ok = obs > 0
                ratios.append(rb.radius[ok] / obs[ok])
            med = float(np.median(np.concatenate(ratios)))
            rows.append((kind, engine, med))
            print(f"{kind:4s} {engine:9s} median bound/observed {med:.1f}")
    for kind, _, med in rows:
        assert 1 <= med < 200, (kind, med)


# -- the rule itself, where storage rounding cannot hide a missing term -------------------------
def test_rule_keeps_common_mode_errors():
    """An incoming error along (1, ..., 1) moves RMSNorm's output (layer norm's
    centring would remove it): points z + G t of a zonotope whose generators are
    mostly common-mode map, at 50 digits, into the rule's output enclosure
    (binary64 arithmetic, so that no storage rounding covers a dropped term)."""
    from fperr.bounds.enclosure import Enclosure
    from fperr.bounds.rules import Context, apply_rule

    rng = np.random.default_rng(5)
    n, q = 6, 4
    z = rng.standard_normal(n) + 0.5
    g = 1e-4 * (np.ones((n, q)) + 0.1 * rng.standard_normal((n, q)))  # common mode
    layer = RMSNorm((n,), None, 1e-6)
    enc = Enclosure(z[None], g[None])
    ctx = Context(Emulated.from_names("binary64", "binary64"), "deterministic")
    out = apply_rule(layer, enc, ctx, 1)
    lo, hi = out.value[0] - out.radius()[0], out.value[0] + out.radius()[0]
    with mpmath.workdps(50):
        for t in [np.ones(q), -np.ones(q), *rng.uniform(-1, 1, (20, q))]:
            x = [mpmath.mpf(float(v)) for v in z + g @ t]
            s = mpmath.sqrt(mpmath.fsum(v * v for v in x) / n + mpmath.mpf(1e-6))
            y = np.array([float(v / s) for v in x])
            assert (lo <= y).all() and (y <= hi).all(), (y - lo, hi - y)
    # and the common-mode shift is first order: well above the rule's own slack
    assert out.radius()[0].max() > 1e-5


def test_binary32_torch_runs_within_the_kernel_term():
    """torch float32 RMSNorm of width 2,048, and a float32 run summing the squares
    sequentially, against the exact value: their errors (the sum of squares and
    rsqrt in float32) exceed the output's rounding, and the bound for binary32
    storage and accumulation must still enclose them."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(6)
    n = 2048
    X = rng.standard_normal((64, n)) * np.exp(rng.uniform(-3, 3, (64, 1)))
    X = X.astype(np.float32).astype(np.float64)
    layer = RMSNorm((n,), None, 1e-6)
    model = Model("rms", (n,), (layer,))
    rb = bound_run(model, X, Emulated.from_names("binary32", "binary32"))
    with torch.no_grad():
        m = torch.nn.RMSNorm(n, eps=1e-6, elementwise_affine=False)
        y32 = m(torch.tensor(X, dtype=torch.float32)).double().numpy()
    # a float32 run summing the squares one by one: the accumulation order whose
    # error grows like n u, far beyond the output's own rounding
    f32 = np.float32
    acc = np.zeros(X.shape[0], dtype=f32)
    sq = (X.astype(f32) * X.astype(f32)).astype(f32)
    for j in range(n):
        acc = (acc + sq[:, j]).astype(f32)
    r = (f32(1) / np.sqrt((acc / f32(n) + f32(1e-6)).astype(f32))).astype(f32)
    yseq = (X.astype(f32) * r[:, None]).astype(f32).astype(np.float64)
    exact = X / np.sqrt(np.mean(X * X, axis=1, keepdims=True) + 1e-6)
    for y in (y32, yseq):
        err = np.abs(y - exact)
        assert (err <= rb.radius + 1e-15 * np.abs(exact)).all()
    # the sequential run errs by several ulps of the output: a bound without the
    # kernel's accumulation term (storage rounding only) would not hold
    assert (np.abs(yseq - exact) > 4 * np.abs(exact) * 2.0**-24).any()
