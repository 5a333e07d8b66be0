"""SiLU, ELU, hard-swish, hard-sigmoid and GELU's tanh form, against independent oracles.

- The forward: mpmath at 50 digits on a grid with the kinks (0, +-3) and the tails.
- The enclosure of f' over [lo, hi] (rules.derivative_range): contains the analytic
  derivative in mpmath (itself checked against mpmath.diff) at points sampled densely
  inside random intervals, many straddling the kinks and the critical points of f',
  and (piecewise ones) the secant slopes in exact rational arithmetic.
- Soundness: random dense models in binary16 and bfloat16, both methods, both
  engines; every emulated run (each summation order) and torch's CPU float16 /
  bfloat16 runs of the same model lie within the bound.
- Imports from torch (modules and functionals) match torch float64 to 1e-12; ONNX
  Elu / HardSwish / HardSigmoid; YAML round trip.
"""

from __future__ import annotations

import math
import warnings
from fractions import Fraction
from pathlib import Path
from typing import Any

import mpmath as mp
import numpy as np
import pytest

from fperr.accumulation import ORDERS
from fperr.arith import Emulated, Exact
from fperr.bounds import bound_run
from fperr.bounds.rules import derivative_range
from fperr.errors import FperrInputError
from fperr.layers import Activation, Dense
from fperr.model import Model, load_model

KINDS = ("silu", "elu", "hardswish", "hardsigmoid", "gelu_tanh")
LAYERS = {"silu": Activation("silu"), "elu": Activation("elu"),
          "elu_a": Activation("elu", alpha=0.4), "elu_neg": Activation("elu", alpha=-1.3),
          "hardswish": Activation("hardswish"), "hardsigmoid": Activation("hardsigmoid"),
          "gelu_tanh": Activation("gelu_tanh")}  # fmt: skip
C, K = mp.mpf(2) / mp.pi, mp.mpf("0.044715")


# -- the oracle: mpmath, written from the definitions -----------------------------------------
def mp_f(layer: Activation, x: mp.mpf) -> mp.mpf:
    t, a = layer.type, mp.mpf(layer.alpha)
    if t == "silu":
        return x / (1 + mp.exp(-x))
    if t == "elu":
        return x if x > 0 else a * mp.expm1(x)
    if t == "hardsigmoid":
        return min(max(x + 3, mp.mpf(0)), mp.mpf(6)) / 6
    if t == "hardswish":
        return x * min(max(x + 3, mp.mpf(0)), mp.mpf(6)) / 6
    assert t == "gelu_tanh"
    return x / (1 + mp.exp(-2 * mp.sqrt(C) * (x + K * x**3)))  # (1 + tanh u)/2 = 1/(1 + e^-2u)


def mp_df(layer: Activation, x: mp.mpf) -> mp.mpf:
    """The analytic derivative (off the kinks)."""
    t, a = layer.type, mp.mpf(layer.alpha)
    if t == "silu":
        s = 1 / (1 + mp.exp(-x))
        return s + x * s * (1 - s)
    if t == "elu":
        return mp.mpf(1) if x > 0 else a * mp.exp(x)
    if t == "hardsigmoid":
        return mp.mpf(1) / 6 if -3 < x < 3 else mp.mpf(0)
    if t == "hardswish":
        return mp.mpf(0) if x < -3 else (mp.mpf(1) if x > 3 else (2 * x + 3) / 6)
    u = mp.sqrt(C) * (x + K * x**3)
    return 1 / (1 + mp.exp(-2 * u)) + x * mp.sech(u) ** 2 * mp.sqrt(C) * (1 + 3 * K * x**2) / 2


GRID = np.array([-1e5, -1000.0, -745.5, -200.0, -40.0, -17.3, -6.0, -3.0 - 2**-40, -3.0,
                 -3.0 + 2**-40, -2.9, -1.5, -1.2784645, -0.7524614, -0.5, -1e-3, -1e-12,
                 -1e-300, 0.0, 1e-300, 1e-12, 1e-3, 0.5, 1.4185, 2.3993, 2.9, 3.0 - 2**-40,
                 3.0, 3.0 + 2**-40, 6.0, 17.3, 40.0, 200.0, 1000.0, 1e5])  # fmt: skip


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_forward_matches_mpmath(name: str) -> None:
    layer = LAYERS[name]
    got = layer.forward(GRID[None, :], Exact())[0]
    with mp.workdps(50):
        want = [mp_f(layer, mp.mpf(float(v))) for v in GRID]
        for x, g, w in zip(GRID, got, want, strict=True):
            assert abs(mp.mpf(float(g)) - w) <= 1e-14 * abs(w) + mp.mpf(1e-320), (name, x, g, w)


def test_analytic_derivatives_match_mpmath_diff() -> None:
    """The test's own oracle for f' against numerical differentiation in mpmath."""
    with mp.workdps(40):
        for name, layer in LAYERS.items():
            for x in (-5.3, -2.1, -1.0, -0.3, 0.4, 1.1, 2.7, 4.2):
                d = mp.diff(lambda v, la=layer: mp_f(la, v), mp.mpf(x))
                assert abs(d - mp_df(layer, mp.mpf(x))) < mp.mpf(10) ** -25, (name, x)


# -- derivative enclosures ------------------------------------------------------------------------
SPECIAL = (0.0, -3.0, 3.0, -2.3993572805, 2.3993572805, -1.4185040088, 1.4185040088, -1.5)


def _intervals(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Random intervals, half around a kink or a critical point of f'."""
    c = np.where(rng.random(n) < 0.5, rng.choice(SPECIAL, n), rng.uniform(-12, 12, n))
    w = 10.0 ** rng.uniform(-9, 1, n)
    off = rng.uniform(-1, 1, n) * w
    return c + off - w, c + off + w


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_derivative_range_encloses_mpmath(name: str) -> None:
    layer = LAYERS[name]
    rng = np.random.default_rng(len(name))
    lo, hi = _intervals(rng, 150)
    lo, hi = (
        np.concatenate([lo, [-3.0, 3.0, 0.0, -np.inf, 5.0]]),
        np.concatenate([hi, [-3.0, 3.0, 0.0, 1.0, np.inf]]),
    )
    dlo, dhi = derivative_range(layer.type, lo, hi, float(layer.alpha))
    assert np.all(np.isfinite(dlo)) and np.all(np.isfinite(dhi)) and np.all(dlo <= dhi)
    checked = 0
    with mp.workdps(30):
        for a, b, dl, dh in zip(lo, hi, dlo, dhi, strict=True):
            pts = (
                [a, b]
                if np.isfinite(a) and np.isfinite(b)
                else [float(np.clip(a, -60, 60)), float(np.clip(b, -60, 60))]
            )
            pts = (
                pts
                + list(rng.uniform(pts[0], pts[1], 30))
                + [s for s in SPECIAL if pts[0] <= s <= pts[1]]
            )
            for x in pts:
                if (
                    layer.type in ("hardswish", "hardsigmoid")
                    and abs(x) == 3.0
                    or (layer.type == "elu" and x == 0.0)
                ):
                    sides = [mp_df(layer, mp.mpf(x) - mp.mpf(10) ** -25),
                             mp_df(layer, mp.mpf(x) + mp.mpf(10) ** -25)]  # fmt: skip
                    # a one-sided derivative counts only if that side is in [a, b]
                    sides = [s for s, ok in zip(sides, (x > a, x < b), strict=True) if ok] or sides
                else:
                    sides = [mp_df(layer, mp.mpf(x))]
                for d in sides:
                    assert dl <= d <= dh, (name, a, b, x, float(d), dl, dh)
                    checked += 1
    assert checked > 4000


def _frac_f(kind: str, x: float) -> Fraction:
    """Hard-sigmoid / hard-swish in exact rational arithmetic."""
    h = min(max(Fraction(x) + 3, Fraction(0)), Fraction(6)) / 6
    return Fraction(x) * h if kind == "hardswish" else h


@pytest.mark.parametrize("name", ["hardswish", "hardsigmoid", "elu_a", "elu_neg"])
def test_secant_slopes_across_kinks_are_enclosed(name: str) -> None:
    """Mean value form for a piecewise function: every secant slope (exact rationals,
    mpmath for ELU's exponential) lies in the enclosure."""
    layer = LAYERS[name]
    rng = np.random.default_rng(7)
    kinks = (0.0,) if layer.type == "elu" else (-3.0, 3.0)
    for _ in range(200):
        k = float(rng.choice(kinks))
        w = 10.0 ** rng.uniform(-6, 0.7)
        a, b = k - w * rng.uniform(0, 1), k + w * rng.uniform(0, 1)
        dl, dh = (float(v[0]) for v in derivative_range(layer.type, np.array([a]), np.array([b]),
                                                        float(layer.alpha)))  # fmt: skip
        xs = sorted(rng.uniform(a, b, 6))
        for x0, x1 in zip(xs, xs[1:], strict=False):
            if layer.type == "elu":
                with mp.workdps(40):
                    s = (mp_f(layer, mp.mpf(x1)) - mp_f(layer, mp.mpf(x0))) / (x1 - x0)
            else:
                s = (_frac_f(layer.type, x1) - _frac_f(layer.type, x0)) / (
                    Fraction(x1) - Fraction(x0)
                )
            assert dl <= s <= dh, (name, a, b, x0, x1)


# -- soundness ----------------------------------------------------------------------------------
def _f32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32).astype(np.float64)


def random_model(layer: Activation, seed: int) -> Model:
    """2 or 3 dense layers, pre-activations spread over [-8, 8] with a third near the
    kinks and critical points."""
    rng = np.random.default_rng(seed)
    n, layers = 10, []
    for i in range(2 + seed % 2):
        m = 12 if i < 1 + seed % 2 else 4
        w = rng.standard_normal((m, n)) * 2.5 / math.sqrt(n)
        b = np.where(rng.random(m) < 0.4, rng.choice(SPECIAL, m), rng.standard_normal(m))
        layers.append(Dense(_f32(w), _f32(b)))
        if i < 1 + seed % 2:
            layers.append(layer)
        n = m
    return Model(f"{layer.type}{seed}", (10,), tuple(layers))


def _torch_run(model: Model, X: np.ndarray, dtype: str) -> np.ndarray:
    """The model rebuilt by hand in torch on the CPU (not fperr's torch executor)."""
    import torch
    from torch import nn

    mods: list = []
    for layer in model.layers:
        if isinstance(layer, Dense):
            m = nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
            m.weight.data, m.bias.data = torch.tensor(layer.weight), torch.tensor(layer.bias)
            mods.append(m)
        else:
            mods.append({"silu": nn.SiLU(), "elu": nn.ELU(layer.alpha),
                         "hardswish": nn.Hardswish(), "hardsigmoid": nn.Hardsigmoid(),
                         "gelu_tanh": nn.GELU(approximate="tanh")}[layer.type])  # fmt: skip
    dt = getattr(torch, dtype)
    net = nn.Sequential(*mods).to(dt).eval()
    with torch.no_grad():
        return net(torch.tensor(X).to(dt)).double().numpy()


RATIOS: dict[str, list[float]] = {}


@pytest.mark.parametrize("engine", ["zonotope", "backward"])
@pytest.mark.parametrize("storage", ["binary16", "bfloat16"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_random_models_are_sound(name: str, storage: str, engine: str) -> None:
    torch = None
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is optional
        pass
    layer = LAYERS[name]
    arith = Emulated.from_names(storage, "binary32")
    for seed in range(3):
        model = random_model(layer, seed)
        X = _f32(np.random.default_rng(50 + seed).uniform(-3, 3, (40, 10)))
        exact = model.forward(X)
        runs = [model.forward(X, Emulated(arith.storage, arith.accumulate, order=o, block=4))
                for o in ORDERS]  # fmt: skip
        if torch is not None:
            run = _torch_run(model, X, "float16" if storage == "binary16" else "bfloat16")
            runs.append(run)
            np.testing.assert_allclose(_torch_run(model, X, "float64"), exact, rtol=1e-12,
                                       atol=1e-12)  # the rebuild is the model  # fmt: skip
        err = np.max([np.abs(r - exact) for r in runs], axis=0)
        for method in ("deterministic", "probabilistic"):
            rad = bound_run(model, X, arith, method=method, engine=engine).radius
            assert np.all(np.isfinite(rad)), (name, seed, method)
            assert np.all(err <= rad), (name, seed, method, float(np.max(err - rad)))
            ok = err > 0
            RATIOS.setdefault(f"{name}/{storage}/{engine}/{method}", []).extend(
                (rad[ok] / err[ok]).tolist()
            )


def test_elu_alpha_not_one_allowance_exceeds_the_alpha_one_table() -> None:
    """ELU at alpha != 1 has no table of its own: its allowance is composed from the
    alpha = 1 binary32 table; at alpha = 1 it reduces to no less than that table."""
    from fperr.bounds.rules import Context, elu_error

    for storage in ("binary16", "bfloat16", "binary32"):
        ctx = Context(Emulated.from_names(storage, "binary32"))
        m = np.array([1e-6, 0.01, 0.3, 0.999])
        composed = elu_error(1.0, m, m * 0, ctx)
        table = ctx.func_error("elu", m, m * 0)
        assert np.all(composed >= table * (1 - 1e-12)) and np.all(np.isfinite(composed))
        assert np.all(elu_error(0.0, m, m * 0, ctx) == 0)


# -- imports, YAML ----------------------------------------------------------------------------
def test_import_from_torch_modules_and_functionals() -> None:
    torch = pytest.importorskip("torch")
    from torch import nn
    from torch.nn import functional as F

    from fperr.importers import from_torch

    torch.manual_seed(0)
    acts = [nn.SiLU(), nn.ELU(0.7), nn.Hardswish(), nn.Hardsigmoid(), nn.GELU(approximate="tanh")]
    seq = nn.Sequential(*[m for a in acts for m in (nn.Linear(6, 6), a)], nn.Linear(6, 2))

    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.ModuleList(nn.Linear(6, 6) for _ in range(5))

        def forward(self, x):
            x = F.silu(self.fc[0](x))
            x = F.elu(self.fc[1](x), alpha=1.9)
            x = F.hardswish(self.fc[2](x))
            x = F.hardsigmoid(self.fc[3](x))
            return F.gelu(self.fc[4](x), approximate="tanh")

    X = np.random.default_rng(0).uniform(-6, 6, (50, 6))
    for net, types in (
        (seq, ["silu", "elu", "hardswish", "hardsigmoid", "gelu_tanh"]),
        (Functional(), ["silu", "elu", "hardswish", "hardsigmoid", "gelu_tanh"]),
    ):
        net = net.double().eval()
        model = from_torch(net, (6,))
        assert [la.type for la in model.layers if isinstance(la, Activation)] == types
        with torch.no_grad():
            want = net(torch.tensor(X)).numpy()
        got = model.forward(X)
        assert np.linalg.norm(got - want) <= 1e-12 * np.linalg.norm(want)
    alphas = [la.alpha for la in from_torch(Functional().double(), (6,)).layers
              if isinstance(la, Activation) and la.type == "elu"]  # fmt: skip
    assert alphas == [1.9]


def test_onnx_elu_hardswish_hardsigmoid() -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import helper as h
    from onnx import numpy_helper

    from fperr.importers import from_onnx

    rng = np.random.default_rng(3)
    w1, w2 = rng.standard_normal((4, 4)) * 3, rng.standard_normal((4, 2))
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    nodes = [h.make_node("MatMul", ["x", "w1"], ["z"]),
             h.make_node("Elu", ["z"], ["a"], alpha=0.5),
             h.make_node("HardSwish", ["a"], ["b"]),
             h.make_node("HardSigmoid", ["b"], ["c"], alpha=1 / 6, beta=0.5),
             h.make_node("MatMul", ["c", "w2"], ["y"])]  # fmt: skip
    dbl = onnx.TensorProto.DOUBLE
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", dbl, ["N", 4])],
                         [h.make_tensor_value_info("y", dbl, None)], inits)  # fmt: skip
    proto = h.make_model(graph, opset_imports=[h.make_opsetid("", 14)])
    model = from_onnx(proto)
    assert [la.type for la in model.layers] == ["dense", "elu", "hardswish", "hardsigmoid",
                                                "dense"]  # fmt: skip
    X = rng.uniform(-3, 3, (30, 4))
    z = X @ w1
    a = np.where(z > 0, z, 0.5 * np.expm1(np.minimum(z, 0)))  # numpy, not the importer
    b = a * np.clip(a + 3, 0, 6) / 6
    want = (np.clip(b + 3, 0, 6) / 6) @ w2
    np.testing.assert_allclose(model.forward(X), want, rtol=1e-12, atol=1e-12)
    nodes[3] = h.make_node("HardSigmoid", ["b"], ["c"])  # ONNX's default alpha 0.2
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", dbl, ["N", 4])],
                         [h.make_tensor_value_info("y", dbl, None)], inits)  # fmt: skip
    with pytest.raises(FperrInputError, match="HardSigmoid"):
        from_onnx(h.make_model(graph, opset_imports=[h.make_opsetid("", 14)]))


def test_onnx_silu_from_the_torchscript_exporter(tmp_path: Path) -> None:
    """nn.SiLU and F.silu export (dynamo=False, torch 2.13, every opset tried) as
    Sigmoid(x) then Mul(x, s); each pair imports as one silu activation."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from torch import nn
    from torch.nn import functional as F

    from fperr.importers import from_onnx

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.act, self.b = nn.Linear(5, 7), nn.SiLU(), nn.Linear(7, 3)

        def forward(self, x):
            return self.b(F.silu(self.act(self.a(x))))

    torch.manual_seed(1)
    seq = nn.Sequential(nn.Linear(5, 7), nn.SiLU(), nn.Linear(7, 3))
    X = np.random.default_rng(5).uniform(-8, 8, (40, 5))
    for net, n_silu in ((seq, 1), (Net(), 2)):
        net = net.double().eval()
        for opset in (13, 18):
            path = tmp_path / f"m{opset}.onnx"
            with warnings.catch_warnings():  # the TorchScript exporter is deprecated
                warnings.simplefilter("ignore", DeprecationWarning)
                torch.onnx.export(net, (torch.zeros(2, 5, dtype=torch.float64),), str(path),
                                  dynamo=False, opset_version=opset, input_names=["x"],
                                  output_names=["y"], dynamic_axes={"x": {0: "N"}})  # fmt: skip
            model = from_onnx(path)
            assert [la.type for la in model.layers].count("silu") == n_silu
            assert "sigmoid" not in [la.type for la in model.layers]
            with torch.no_grad():
                want = net(torch.tensor(X)).numpy()
            got = model.forward(X)
            assert np.linalg.norm(got - want) <= 1e-12 * np.linalg.norm(want)


def _silu_graph(body: list[tuple[str, list[str], str]]) -> tuple[Any, np.ndarray, np.ndarray]:
    """x -> MatMul w1 -> z -> ``body`` (ending in value m) -> MatMul w2 -> y, in float64."""
    from onnx import TensorProto, numpy_helper
    from onnx import helper as h

    rng = np.random.default_rng(4)
    w1, w2 = rng.standard_normal((4, 4)), rng.standard_normal((4, 2))
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")]
    nodes = [h.make_node("MatMul", ["x", "w1"], ["z"])]
    nodes += [h.make_node(t, i, [o]) for t, i, o in body]
    nodes.append(h.make_node("MatMul", ["m", "w2"], ["y"]))
    dbl = TensorProto.DOUBLE
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", dbl, ["N", 4])],
                         [h.make_tensor_value_info("y", dbl, None)], inits)  # fmt: skip
    return h.make_model(graph, opset_imports=[h.make_opsetid("", 18)]), w1, w2


def test_onnx_silu_either_operand_order() -> None:
    pytest.importorskip("onnx")
    from fperr.importers import from_onnx

    for mul_inputs in (["z", "s"], ["s", "z"]):
        proto, w1, w2 = _silu_graph([("Sigmoid", ["z"], "s"), ("Mul", mul_inputs, "m")])
        model = from_onnx(proto)
        assert [la.type for la in model.layers] == ["dense", "silu", "dense"]
        X = np.random.default_rng(6).uniform(-6, 6, (30, 4))
        z = X @ w1
        want = (z / (1 + np.exp(-z))) @ w2  # numpy, not the importer
        np.testing.assert_allclose(model.forward(X), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("body", [
    [("Sigmoid", ["z"], "s"), ("Mul", ["x", "s"], "m")],  # a gate x * sigmoid(z), not SiLU
    [("Sigmoid", ["z"], "s"), ("Mul", ["z", "s"], "t"), ("Add", ["t", "s"], "m")],  # s read twice
    [("Tanh", ["z"], "s"), ("Mul", ["z", "s"], "m")],
])  # fmt: skip
def test_onnx_other_muls_are_not_silu(body: list[tuple[str, list[str], str]]) -> None:
    """Other Muls are products of two activations (issue 12's mul operator), not SiLU."""
    pytest.importorskip("onnx")
    from fperr.importers import from_onnx

    proto, w1, w2 = _silu_graph(body)
    model = from_onnx(proto)
    types = [la.type for la in model.layers]
    assert "mul" in types and "silu" not in types
    X = np.random.default_rng(6).uniform(-6, 6, (30, 4))
    v = {"x": X, "z": X @ w1}  # numpy, not the importer
    for t, i, o in body:
        a, b = v[i[0]], v[i[-1]]
        v[o] = (1 / (1 + np.exp(-a)) if t == "Sigmoid" else np.tanh(a) if t == "Tanh"
                else a * b if t == "Mul" else a + b)  # fmt: skip
    np.testing.assert_allclose(model.forward(X), v["m"] @ w2, rtol=1e-12, atol=1e-12)


def test_yaml_round_trip(tmp_path: Path) -> None:
    layers = (
        Dense(np.eye(3), np.zeros(3)),
        Activation("elu", alpha=0.25),
        Activation("silu"),
        Activation("hardswish"),
        Activation("hardsigmoid"),
        Activation("gelu_tanh"),
    )
    model = Model("m", (3,), layers)
    model.save(tmp_path / "m.yaml")
    text = (tmp_path / "m.yaml").read_text()
    assert "alpha: 0.25" in text and "type: gelu_tanh" in text
    back = load_model(tmp_path / "m.yaml")
    assert [(la.type, getattr(la, "alpha", None)) for la in back.layers] == [
        (la.type, getattr(la, "alpha", None)) for la in layers
    ]
    X = np.random.default_rng(0).uniform(-5, 5, (10, 3))
    lo = Emulated.from_names("binary16", "binary32")
    np.testing.assert_array_equal(back.forward(X, lo), model.forward(X, lo))
    for bad in ("{type: elu, alpha: .nan}", "{type: silu, alpha: 0.5}", "{type: swish}"):
        (tmp_path / "bad.yaml").write_text(f"input: {{shape: [3]}}\nlayers:\n  - {bad}\n")
        with pytest.raises(FperrInputError):
            load_model(tmp_path / "bad.yaml")


def test_apriori_refuses_clearly() -> None:
    from fperr.bounds.apriori import apriori_bound

    model = Model("m", (3,), (Dense(np.eye(3), np.zeros(3)), Activation("silu")))
    with pytest.raises(FperrInputError, match="silu"):
        apriori_bound(
            model, np.zeros(3) - 1, np.zeros(3) + 1, Emulated.from_names("binary16", "binary32")
        )


def test_zz_report_ratios() -> None:
    """Not a check: prints the median bound / observed of the runs above (-s)."""
    for key, r in sorted(RATIOS.items()):
        print(f"{key}: median bound/observed {np.median(r):.3g} over {len(r)} outputs")
