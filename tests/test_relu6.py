"""ReLU6, y = min(max(x, 0), 6) (MobileNetV2's), against independent oracles.

- The forward: numpy's clip, on random data with exact 0 and 6, values beyond,
  infinities and NaN; mpmath's executor and the training forward agree.
- The slope range over [lo, hi] (rules.piecewise_slopes): the hull of the
  secant slopes, brute force in exact rational arithmetic (fractions.Fraction)
  from points sampled in the interval, on every interval of a grid.
- Soundness: bounds of random MLPs and CNNs whose pre-activations crowd 0 and
  6 hold against fperr's four emulated summation orders and against PyTorch's
  CPU float16 and float32 runs, for both engines; the a-priori bound too.
- Imports (torch module and functional forms, ONNX Clip) match float64 runs of
  the source; YAML round trip; training gradients match torch autograd.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from fperr.accumulation import ORDERS
from fperr.arith import Emulated, Exact
from fperr.bounds import bound, bound_run
from fperr.bounds.apriori import apriori_bound
from fperr.bounds.engine import CURVED, resolve_engine
from fperr.bounds.rules import piecewise_slopes, relu_slopes
from fperr.errors import FperrInputError
from fperr.layers import Activation, Conv2d, Dense, Flatten, Pool2d, Reshape
from fperr.model import Model, load_model

LOW = Emulated.from_names("binary16", "binary32")
REF = Emulated.from_names("binary32", "binary32")
ENGINES = ("backward", "zonotope")


def _clip6(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0.0, 6.0)


# -- forward ------------------------------------------------------------------------------
def _edge_data(rng: np.random.Generator) -> np.ndarray:
    x = rng.uniform(-10, 16, 400)
    x[:40] = 0.0
    x[40:80] = 6.0
    x[80:90] = -0.0
    x[90:100] = np.nextafter(6.0, [7.0] * 10)
    x[100:110] = np.nextafter(0.0, [-1.0] * 10)
    x[110:120] = [np.inf, -np.inf, 1e300, -1e300, 5.999, 6.001, 1e-320, -1e-320, 3.0, 7.0]
    return x.reshape(40, 10)


def test_forward_is_clip_in_every_arithmetic() -> None:
    x = _edge_data(np.random.default_rng(0))
    layer = Activation("relu6")
    want = _clip6(x)
    np.testing.assert_array_equal(layer.forward(x, Exact()), want)
    with np.errstate(over="ignore"):  # 1e300 -> inf, as binary16 stores it
        x16 = x.astype(np.float16).astype(np.float64)  # values the emulation stores
    np.testing.assert_array_equal(layer.forward(x16, LOW), _clip6(x16))
    nan = np.array([[np.nan, 1.0]])
    assert np.isnan(layer.forward(nan, Exact())[0, 0])  # NaN propagates, as torch's
    model = Model("r6", (10,), (layer,))
    ok = np.isfinite(x).all(axis=1)  # models refuse inf inputs
    np.testing.assert_array_equal(model.forward(x[ok]), want[ok])


def test_mpmath_executor_and_training_forward() -> None:
    from fperr.mpmath_exec import as_float64, run_mpmath
    from fperr.training.layer_grads import _fwd_act

    x = _edge_data(np.random.default_rng(1))
    x = np.where(np.isfinite(x), x, 0.0)
    model = Model("r6", (10,), (Activation("relu6"),))
    np.testing.assert_array_equal(as_float64(run_mpmath(model, x[:8], dps=30)), _clip6(x[:8]))
    np.testing.assert_array_equal(_fwd_act(Activation("relu6"), x).y, _clip6(x))


def test_training_gradient_matches_torch_autograd() -> None:
    torch = pytest.importorskip("torch")
    from fperr.training.layer_grads import _bwd_act, _fwd_act

    x = _edge_data(np.random.default_rng(2))
    x = np.where(np.isfinite(x), x, 0.0)
    dy = np.random.default_rng(3).standard_normal(x.shape)
    t = torch.tensor(x, requires_grad=True)
    torch.nn.functional.relu6(t).backward(torch.tensor(dy))
    layer = Activation("relu6")
    got, _ = _bwd_act(layer, _fwd_act(layer, x), dy)
    np.testing.assert_array_equal(got, t.grad.numpy())  # 0 at the kinks 0 and 6, as torch


# -- slope range ---------------------------------------------------------------------------------
GRID = [
    -3,
    -1,
    Fraction(-1, 4),
    0,
    Fraction(1, 8),
    1,
    3,
    Fraction(23, 4),
    6,
    Fraction(25, 4),
    7,
    10,
]
PIECEWISE = {  # name -> (kinks, slopes, exact f)
    "relu6": ((0, 6), (0, 1, 0), lambda v: min(max(v, Fraction(0)), Fraction(6))),
    "relu": ((0,), (0, 1), lambda v: max(v, Fraction(0))),
    "leaky-0.5": ((0,), (Fraction(-1, 2), 1), lambda v: v if v > 0 else -v / 2),
    "leaky2": ((0,), (2, 1), lambda v: v if v > 0 else 2 * v),
    "three": ((-1, 0, 6), (3, Fraction(1, 2), -2, 1), None),  # generic, not continuous-checked
}


def _pl(kinks: tuple, slopes: tuple):
    """The continuous piecewise linear f with f(kinks[0]) = 0, exactly."""
    edges = [Fraction(k) for k in kinks]

    def f(v: Fraction) -> Fraction:
        y = slopes[0] * (min(v, edges[0]) - edges[0])
        for i, s in enumerate(slopes[1:]):
            top = v if i + 1 == len(edges) else min(v, edges[i + 1])
            y += s * max(top - edges[i], Fraction(0))
        return y

    return f


def _oracle(f, lo: Fraction, hi: Fraction, kinks: tuple) -> set[Fraction]:
    """Every secant slope between points sampled in [lo, hi] (41 evenly spaced,
    and the kinks inside), in exact arithmetic."""
    pts = {lo + (hi - lo) * Fraction(k, 40) for k in range(41)}
    pts |= {Fraction(k) for k in kinks if lo <= k <= hi}
    pts_l = sorted(pts)
    return {(f(b) - f(a)) / (b - a) for a, b in itertools.combinations(pts_l, 2)}


@pytest.mark.parametrize("name", list(PIECEWISE))
def test_slope_range_is_the_hull_of_the_secant_slopes(name: str) -> None:
    kinks, slopes, f = PIECEWISE[name]
    f = f or _pl(kinks, slopes)
    pairs = [(lo, hi) for lo in GRID for hi in GRID if lo <= hi]
    lo = np.array([float(a) for a, _ in pairs])
    hi = np.array([float(b) for _, b in pairs])
    dlo, dhi = piecewise_slopes(tuple(map(float, kinks)), tuple(map(float, slopes)), lo, hi)
    if len(kinks) == 1:  # the leaky ReLU wrapper is the same function
        a = float(slopes[0])
        np.testing.assert_array_equal(np.stack(relu_slopes(a, lo, hi)), np.stack([dlo, dhi]))
    tried = 0
    for i, (a, b) in enumerate(pairs):
        if a == b:  # a point: no secant; one slope inside a piece, both neighbours at a kink
            at = [j for j, k in enumerate(kinks) if k == a]
            want = (
                [slopes[at[0]], slopes[at[0] + 1]]
                if at
                else [slopes[sum(1 for k in kinks if k < a)]]
            )
            assert (dlo[i], dhi[i]) == (float(min(want)), float(max(want))), (a, b)
            continue
        s = _oracle(f, Fraction(a), Fraction(b), kinks)
        assert (dlo[i], dhi[i]) == (float(min(s)), float(max(s))), (name, a, b)
        tried += 1
    assert tried == len(GRID) * (len(GRID) - 1) // 2


def test_slope_range_unbounded_and_nan_intervals() -> None:
    lo = np.array([-np.inf, -np.inf, 6.5, -np.inf, np.nan])
    hi = np.array([np.inf, -1.0, np.inf, 3.0, 1.0])
    dlo, dhi = piecewise_slopes((0.0, 6.0), (0.0, 1.0, 0.0), lo, hi)
    np.testing.assert_array_equal(dlo, [0, 0, 0, 0, 0])
    np.testing.assert_array_equal(dhi, [1, 0, 0, 1, 1])  # NaN: no enclosure, every slope


def test_one_kink_slope_range_on_unbounded_nan_and_point_intervals() -> None:
    """One kink (ReLU, leaky ReLU, any slope) on the ends the grid above lacks."""
    lo = np.array([-np.inf, -np.inf, 0.5, -np.inf, np.nan, 0.0, -1.0, 2.0])
    hi = np.array([np.inf, -1.0, np.inf, 0.0, 1.0, 0.0, 0.0, np.nan])
    for alpha in (0.0, 0.25, -0.5, 3.0):
        dlo, dhi = relu_slopes(alpha, lo, hi)
        a, b = min(alpha, 1.0), max(alpha, 1.0)
        # both pieces / the left / the right / the left (0 is its closed end) / NaN: every
        # slope / the point 0: both neighbours / the left / NaN: every slope
        np.testing.assert_array_equal(dlo, [a, alpha, 1, alpha, a, a, alpha, a])
        np.testing.assert_array_equal(dhi, [b, alpha, 1, alpha, b, b, alpha, b])


def test_auto_engine_stays_backward() -> None:
    assert "relu6" not in CURVED
    model = Model("m", (4,), (Dense(np.eye(4), None), Activation("relu6")))
    assert resolve_engine(model, "auto") == "backward"


# -- soundness on random models ----------------------------------------------------------------
def _f32(a: np.ndarray) -> np.ndarray:
    # float32 values, as trained weights are (torch's float64 -> float16 goes through float32)
    return a.astype(np.float32).astype(np.float64)


def _kink_bias(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(row scale, bias): half the units hug a kink (bias 0 or 6, small weights),
    so that their pre-activations straddle 0 and 6 within rounding distance."""
    hug = np.arange(n) % 2 == 0
    scale = np.where(hug, 0.02, 1.5)
    b = np.where(hug, rng.choice([0.0, 6.0], n), rng.standard_normal(n))
    return scale, b


def _dense(rng: np.random.Generator, n_in: int, n_out: int, hug: bool = True) -> Dense:
    scale, b = _kink_bias(rng, n_out) if hug else (np.ones(n_out), rng.standard_normal(n_out))
    w = rng.standard_normal((n_out, n_in)) / math.sqrt(n_in) * scale[:, None]
    return Dense(_f32(w), _f32(b))


def random_mlp(seed: int) -> Model:
    rng = np.random.default_rng(seed)
    n, layers = 12, [Activation("relu6")]
    for _ in range(1 + seed % 3):
        w = 8 + 8 * (seed % 4)
        layers += [_dense(rng, n, w), Activation("relu6")]
        n = w
    layers.append(_dense(rng, n, 5, hug=False))
    return Model("mlp6", (12,), tuple(layers))


def random_cnn(seed: int) -> Model:
    rng = np.random.default_rng(100 + seed)
    scale, b = _kink_bias(rng, 4)
    c1 = Conv2d(_f32(rng.standard_normal((4, 2, 3, 3)) * 0.4 * scale[:, None, None, None]),
                _f32(b), padding=(1, 1))  # fmt: skip
    scale, b = _kink_bias(rng, 6)
    c2 = Conv2d(_f32(rng.standard_normal((6, 4, 3, 3)) * 0.2 * scale[:, None, None, None]),
                _f32(b))  # fmt: skip
    layers = (Reshape((2, 6, 6)), c1, Activation("relu6"), Pool2d("max", (2, 2), (1, 1)), c2,
              Activation("relu6"), Pool2d("avg", (2, 2), (1, 1)), Flatten(),
              _dense(rng, 6 * 2 * 2, 5, hug=False))  # fmt: skip
    return Model("cnn6", (72,), layers)


def inputs(seed: int, n: int, k: int) -> np.ndarray:
    """Spread over [-8, 14], a third within 0.01 of 0 or 6 (the input rounding alone
    may cross the kink there)."""
    rng = np.random.default_rng(1000 + seed)
    x = rng.uniform(-8, 14, (n, k))
    near = rng.random((n, k)) < 1 / 3
    x = np.where(near, rng.choice([0.0, 6.0], (n, k)) + rng.uniform(-0.01, 0.01, (n, k)), x)
    return _f32(x)


def _crossings(model: Model, X: np.ndarray) -> int:
    """Pre-activations of a relu6 whose binary16 run and exact value lie on
    different pieces (the kink code path is exercised)."""
    low, exact = model.activations(X, LOW), model.activations(X)
    n = 0
    for i, layer in enumerate(model.layers):
        if layer.type == "relu6":
            z16, z = low[i], exact[i]  # activations[i] is the input of layer i
            n += int(np.sum(np.digitize(z16, [0.0, 6.0]) != np.digitize(z, [0.0, 6.0])))
    return n


def _torch_run(model: Model, X: np.ndarray, dtype) -> np.ndarray:
    """The model rebuilt by hand in torch (not fperr's torch executor), on the CPU."""
    import torch
    from torch import nn

    mods = []
    for layer in model.layers:
        if isinstance(layer, Dense):
            m = nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
            m.weight.data = torch.tensor(layer.weight)
            m.bias.data = torch.tensor(layer.bias)
        elif isinstance(layer, Conv2d):
            o, i, kh, kw = layer.weight.shape
            m = nn.Conv2d(i, o, (kh, kw), padding=layer.padding)
            m.weight.data = torch.tensor(layer.weight)
            m.bias.data = torch.tensor(layer.bias)
        elif isinstance(layer, Pool2d):
            cls = nn.MaxPool2d if layer.kind == "max" else nn.AvgPool2d
            m = cls(layer.kernel, layer.stride)
        elif isinstance(layer, Reshape):
            m = nn.Unflatten(1, layer.shape)
        elif isinstance(layer, Flatten):
            m = nn.Flatten()
        else:
            assert layer.type == "relu6"
            m = nn.ReLU6()
        mods.append(m)
    net = nn.Sequential(*mods).to(dtype).eval()
    with torch.no_grad():
        return net(torch.tensor(X).to(dtype)).double().numpy()


RATIOS: dict[str, list[float]] = {}


def _check(model: Model, X: np.ndarray, engine: str, torch_too: bool) -> None:
    b = bound(model, X, engine=engine).bound
    assert np.all(np.isfinite(b))
    exact = model.forward(X)
    rb = bound_run(model, X, LOW, engine=engine)
    observed = []
    for order in ORDERS:
        y16 = model.forward(X, Emulated(LOW.storage, LOW.accumulate, order=order, block=4))
        y32 = model.forward(X, Emulated(REF.storage, REF.accumulate, order=order, block=4))
        assert np.all(np.abs(y16 - y32) <= b), order
        assert np.all(np.abs(y16 - exact) <= rb.radius * (1 + 1e-12)), order
        observed.append(np.abs(y16 - y32))
    if torch_too:
        import torch

        t16, t32 = _torch_run(model, X, torch.float16), _torch_run(model, X, torch.float32)
        np.testing.assert_allclose(t32, exact, rtol=1e-4, atol=1e-4)  # the rebuild is right
        assert np.all(np.abs(t16 - t32) <= b)
        observed.append(np.abs(t16 - t32))
    obs = np.max(observed, axis=0)
    ok = obs > 0
    RATIOS.setdefault(f"{model.name}/{engine}", []).append(float(np.median(b[ok] / obs[ok])))


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("seed", range(6))
def test_random_mlps_are_sound(seed: int, engine: str) -> None:
    has_torch = pytest.importorskip("torch") is not None
    model, X = random_mlp(seed), inputs(seed, 60, 12)
    assert _crossings(model, X) > 0
    _check(model, X, engine, has_torch)


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("seed", range(3))
def test_random_cnns_are_sound(seed: int, engine: str) -> None:
    has_torch = pytest.importorskip("torch") is not None
    model = random_cnn(seed)
    X = inputs(seed, 16, 72) / 2
    assert _crossings(model, X) > 0
    _check(model, X, engine, has_torch)


def cancelling_model() -> Model:
    """y = relu6(z) - 8 relu6(z / 8 + 9 / 4) + 18 = relu6(z) - z near the kinks:
    the linear part of the error cancels, what is left is the kink's."""
    w1 = np.array([[1.0, -1.0, 1.0], [0.125, -0.125, 0.125]])
    layers = (Dense(w1, np.array([0.0, 2.25])), Activation("relu6"),
              Dense(np.array([[1.0, -8.0]]), np.array([18.0])))  # fmt: skip
    return Model("kink", (3,), layers)


@pytest.mark.parametrize("engine", ENGINES)
def test_pre_activation_across_a_kink(engine: str) -> None:
    """Rows whose binary16 pre-activation lies one side of a kink and the exact
    one the other (by cancellation: 1000.24 -> 1000, 994.26 -> 994.5): there a
    single slope (the computed value's piece) would bound 0.006 where the
    error is 0.48; the slope range over [z - 2r, z + 2r] covers it."""
    X = np.array(
        [
            [1000.24, 994.26, 0.496],  # computed 5.996 < 6 < 6.476 exact
            [999.76, 1000.24, 0.004],
        ]
    )  # computed 0.004 > 0 > -0.476 exact
    model = cancelling_model()
    z16, z = model.activations(X, LOW)[1][:, 0], model.activations(X)[1][:, 0]
    assert z16[0] < 6 < z[0] and z[1] < 0 < z16[1]
    exact = model.forward(X)
    rb = bound_run(model, X, LOW, engine=engine)
    for order in ORDERS:
        y = model.forward(X, Emulated(LOW.storage, LOW.accumulate, order=order, block=4))
        err = np.abs(y - exact)
        assert np.all(err > 0.4) and np.all(err <= rb.radius), order


def test_apriori_bound_holds_on_samples() -> None:
    model = random_mlp(1)
    lo, hi = -8.0, 14.0
    ap = apriori_bound(model, lo, hi, LOW)
    assert np.all(np.isfinite(ap.radius))
    X = np.vstack([inputs(7, 200, 12), np.full((1, 12), lo), np.full((1, 12), hi)])
    exact = model.forward(X)
    assert np.all((exact >= ap.lo - 1e-9) & (exact <= ap.hi + 1e-9))
    for order in ORDERS:
        y = model.forward(X, Emulated(LOW.storage, LOW.accumulate, order=order, block=4))
        assert np.all(np.abs(y - exact) <= ap.radius), order


# -- import, YAML, validate, check-training -----------------------------------------------------
def test_import_from_torch_module_and_functional_forms() -> None:
    torch = pytest.importorskip("torch")
    from torch import nn
    from torch.nn import functional as F

    from fperr.importers import from_torch

    torch.manual_seed(0)

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.ModuleList(nn.Linear(8, 8) for _ in range(5))

        def forward(self, x):
            x = F.relu6(self.fc[0](x))
            x = F.hardtanh(self.fc[1](x), 0.0, 6.0)
            x = torch.clamp(self.fc[2](x), 0, 6)
            x = self.fc[3](x).clamp(min=0, max=6)
            return torch.clip(self.fc[4](x), 0.0, 6.0)

    seq = nn.Sequential(nn.Linear(8, 16), nn.ReLU6(), nn.Linear(16, 8), nn.Hardtanh(0.0, 6.0),
                        nn.Linear(8, 4), nn.ReLU6(inplace=True))  # fmt: skip
    X = np.random.default_rng(4).uniform(-8, 14, (50, 8))
    for net, n_relu6 in ((seq, 3), (Functional(), 5)):
        for p in net.parameters():
            p.data *= 4  # pre-activations spread over both kinks
        model = from_torch(net.double().eval(), (8,))
        assert sum(la.type == "relu6" for la in model.layers) == n_relu6
        with torch.no_grad():
            want = net(torch.tensor(X)).numpy()
        np.testing.assert_allclose(model.forward(X), want, rtol=1e-12, atol=1e-12)
        assert ((want == 0).any() and (want == 6).any()) or n_relu6 == 5


@pytest.mark.parametrize("call", ["hardtanh", "clamp5", "clamp_min"])
def test_import_refuses_other_clamps(call: str) -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    from fperr.importers import from_torch

    body = {"hardtanh": lambda x: torch.nn.functional.hardtanh(x),
            "clamp5": lambda x: torch.clamp(x, 0, 5),
            "clamp_min": lambda x: x.clamp(min=0)}[call]  # fmt: skip

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)

        def forward(self, x):
            return body(self.fc(x))

    with pytest.raises(FperrInputError, match=r"only \[0, 6\]"):
        from_torch(Net().double(), (3,))


@pytest.mark.parametrize("opset", [6, 13])
def test_import_from_onnx_clip(opset: int) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import helper as h
    from onnx import numpy_helper

    from fperr.importers import from_onnx

    rng = np.random.default_rng(opset)
    w1, b1, w2 = (
        rng.standard_normal((6, 5)) * 4,
        rng.standard_normal(5),
        rng.standard_normal((5, 3)),
    )
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"))]
    if opset >= 11:
        inits += [numpy_helper.from_array(np.array(v), n) for v, n in ((0.0, "lo"), (6.0, "hi"))]
        clip = h.make_node("Clip", ["z", "lo", "hi"], ["a"])
    else:
        clip = h.make_node("Clip", ["z"], ["a"], min=0.0, max=6.0)
    nodes = [h.make_node("Gemm", ["x", "w1", "b1"], ["z"]), clip,
             h.make_node("MatMul", ["a", "w2"], ["y"])]  # fmt: skip
    dbl = onnx.TensorProto.DOUBLE
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", dbl, ["N", 6])],
                         [h.make_tensor_value_info("y", dbl, None)], inits)  # fmt: skip
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])
    model = from_onnx(proto)
    assert [la.type for la in model.layers] == ["dense", "relu6", "dense"]
    X = rng.uniform(-3, 3, (40, 6))
    want = _clip6(X @ w1 + b1) @ w2  # numpy, not the importer
    np.testing.assert_allclose(model.forward(X), want, rtol=1e-12, atol=1e-12)


def test_import_from_onnx_refuses_other_clips() -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import helper as h
    from onnx import numpy_helper

    from fperr.importers import from_onnx

    inits = [numpy_helper.from_array(np.array(v), n) for v, n in ((0.0, "lo"), (5.0, "hi"))]
    inits.append(numpy_helper.from_array(np.eye(3), "w"))
    nodes = [
        h.make_node("MatMul", ["x", "w"], ["z"]),
        h.make_node("Clip", ["z", "lo", "hi"], ["y"]),
    ]
    dbl = onnx.TensorProto.DOUBLE
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", dbl, ["N", 3])],
                         [h.make_tensor_value_info("y", dbl, None)], inits)  # fmt: skip
    with pytest.raises(FperrInputError, match=r"only \[0, 6\]"):
        from_onnx(h.make_model(graph, opset_imports=[h.make_opsetid("", 13)]))


def test_yaml_round_trip(tmp_path: Path) -> None:
    model = random_mlp(2)
    model.save(tmp_path / "m.yaml")
    assert "type: relu6" in (tmp_path / "m.yaml").read_text()
    back = load_model(tmp_path / "m.yaml")
    assert [la.type for la in back.layers] == [la.type for la in model.layers]
    X = inputs(2, 20, 12)
    np.testing.assert_array_equal(back.forward(X, LOW), model.forward(X, LOW))
    (tmp_path / "bad.yaml").write_text(
        "input: {shape: [3]}\nlayers:\n  - {type: relu6, negative_slope: 0.1}\n"
    )
    with pytest.raises(FperrInputError):
        load_model(tmp_path / "bad.yaml")


def test_validate_on_cpu_has_no_violation() -> None:
    pytest.importorskip("torch")
    from fperr.hardware import probe, validate

    model, X = random_mlp(3), inputs(3, 30, 12)
    rep = validate(model, X, None, device="cpu", batch_sizes=(None,),
                   configs=["float16", "float32"], probe_result=probe("cpu"))  # fmt: skip
    assert rep.violations == 0 and rep.ok
    assert {r.config for r in rep.results} >= {"float16", "float32"}


def test_check_training_runs() -> None:
    from fperr.training import check_training

    model = random_mlp(0)
    X = inputs(0, 64, 12)
    labels = np.arange(64) % 5
    rep = check_training(model, X, labels, batch_size=32, max_batches=1)
    assert rep is not None


def test_zz_report_ratios() -> None:
    """Not a check: prints the median bound / observed of the models above (-s)."""
    for key, r in sorted(RATIOS.items()):
        print(f"{key}: median bound/observed {np.median(r):.3g} over {len(r)} models")
