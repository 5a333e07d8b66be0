"""Graph models: layers with named inputs (issue 12's graph IR, first operators).

Checked against independent oracles: the same network written as a chain
(bit-identical values and bounds), a residual block written with an add node
(the same bound), and runs of the graph by torch on the CPU in float16 and
float32 and by fperr's emulator in four summation orders, every one of which
must lie within the bound; bad wiring fails in one line.
"""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from fperr.arith import Emulated, Exact
from fperr.bounds import bound, bound_run
from fperr.certify import certify
from fperr.cli import cli
from fperr.errors import SpecError
from fperr.layers import Activation, Add, BatchNorm, Concat, Conv2d, Dense, Flatten, Residual
from fperr.model import Model, load_model

LOW = Emulated.from_names("binary16", "binary32")
_EXACT = Exact()
ORDERS = ("blas", "sequential", "pairwise", "blocked")


def tiny_resnet(rng: np.random.Generator, c: int = 4) -> Model:
    """stem conv -> relu -> [conv s2 -> bn -> relu] + proj(s2) -> concat(sum, proj) -> dense."""
    layers = (
        Conv2d(rng.normal(size=(c, 2, 3, 3)) / 3, rng.normal(size=c) * 0.1, padding=(1, 1)),
        Activation("relu"),
        Conv2d(rng.normal(size=(c, c, 3, 3)) / 4, None, (2, 2), (1, 1)),
        BatchNorm(rng.normal(size=c) * 0.1, rng.uniform(0.5, 2, c), rng.uniform(0.5, 1.5, c),
                  rng.normal(size=c) * 0.1),  # fmt: skip
        Activation("relu"),
        Conv2d(rng.normal(size=(c, c, 1, 1)) / 2, None, (2, 2)),
        Add(),
        Concat(0),
        Flatten(),
        Dense(rng.normal(size=(3, 2 * c * 9)) / 6, rng.normal(size=3) * 0.1),
    )
    wiring = ((-1,), (0,), (1,), (2,), (3,), (1,), (4, 5), (6, 5), (7,), (8,))
    names = ("stem", "a1", "c1", "b1", "r1", "proj", "sum", "cat", "flat", "out")
    return Model("tiny-resnet", (2, 6, 6), layers, wiring=wiring, names=names)


def _observed(model: Model, X: np.ndarray) -> np.ndarray:
    exact = model.forward(X)
    runs = [model.forward(X, Emulated.from_names("binary16", order=o)) for o in ORDERS]
    return np.max([np.abs(r - exact) for r in runs], axis=0)


def test_graph_forward_matches_a_hand_evaluation():
    rng = np.random.default_rng(0)
    model = tiny_resnet(rng)
    X = rng.uniform(0, 1, (5, 2, 6, 6))
    L = model.layers
    h0 = np.maximum(L[0].forward(X, _EXACT), 0)
    r1 = np.maximum(L[3].forward(L[2].forward(h0, _EXACT), _EXACT), 0)
    proj = L[5].forward(h0, _EXACT)
    cat = np.concatenate([r1 + proj, proj], axis=1)
    want = cat.reshape(5, -1) @ L[9].weight.T + L[9].bias
    np.testing.assert_allclose(model.forward(X), want, rtol=1e-13)


@pytest.mark.parametrize("method", ["deterministic", "probabilistic"])
def test_graph_bounds_hold_for_every_order_and_torch(method):
    torch = pytest.importorskip("torch")
    for seed in range(4):
        rng = np.random.default_rng(seed)
        model = tiny_resnet(rng)
        X = rng.uniform(-1, 1, (40, 2, 6, 6)) * (10.0 if seed == 3 else 1.0)
        run = bound_run(model, X, LOW, method=method)
        if method == "deterministic":
            assert np.all(run.radius >= _observed(model, X))
        y16, y32 = (_torch_graph(torch, model, X, dt) for dt in (torch.float16, torch.float32))
        both = bound(model, X, method=method)
        assert np.all(np.abs(y16 - y32) <= both.bound), seed
        assert np.all(both.bound < 1)  # and finite, small: the bound says something


def _torch_graph(torch, model: Model, X: np.ndarray, dtype) -> np.ndarray:
    """The graph evaluated by torch modules built from the parameters (not by fperr)."""
    nn = torch.nn
    mods = []
    for layer in model.layers:
        if isinstance(layer, Conv2d):
            m = nn.Conv2d(layer.weight.shape[1], layer.weight.shape[0], layer.kernel,
                          layer.stride, layer.padding, bias=layer.bias is not None)  # fmt: skip
            m.weight.data = torch.from_numpy(layer.weight)
            if layer.bias is not None:
                m.bias.data = torch.from_numpy(layer.bias)
        elif isinstance(layer, BatchNorm):
            m = nn.BatchNorm2d(layer.running_mean.size, eps=layer.eps)
            m.running_mean.data = torch.from_numpy(layer.running_mean)
            m.running_var.data = torch.from_numpy(layer.running_var)
            m.weight.data = torch.from_numpy(layer.weight)
            m.bias.data = torch.from_numpy(layer.bias)
        elif isinstance(layer, Dense):
            m = nn.Linear(layer.weight.shape[1], layer.weight.shape[0])
            m.weight.data = torch.from_numpy(layer.weight)
            m.bias.data = torch.from_numpy(layer.bias)
        elif isinstance(layer, Activation):
            m = nn.ReLU()
        elif isinstance(layer, Flatten):
            m = nn.Flatten()
        else:
            m = None
        mods.append(None if m is None else m.to(torch.float64).to(dtype).eval())
    x = torch.from_numpy(X).to(dtype)
    vals = []
    with torch.no_grad():
        for i, (layer, m) in enumerate(zip(model.layers, mods, strict=True)):
            ins = [x if j < 0 else vals[j] for j in model.inputs_of(i)]
            if isinstance(layer, Add):
                vals.append(ins[0] + ins[1])
            elif isinstance(layer, Concat):
                vals.append(torch.cat(ins, dim=layer.axis + 1))
            else:
                vals.append(m(ins[0]))
    return vals[-1].to(torch.float64).numpy()


def test_a_chain_written_as_a_graph_has_the_same_bounds():
    rng = np.random.default_rng(1)
    layers = (Dense(rng.normal(size=(16, 8)) / 3, rng.normal(size=16)), Activation("relu"),
              Dense(rng.normal(size=(4, 16)) / 4))  # fmt: skip
    chain = Model("c", (8,), layers)
    graph = Model("g", (8,), layers, wiring=((-1,), (0,), (1,)), names=("a", "b", "c"))
    X = rng.normal(size=(20, 8)) * 3
    for method in ("deterministic", "probabilistic"):
        a, b = (bound(m, X, method=method, engine="backward") for m in (chain, graph))
        np.testing.assert_array_equal(a.bound, b.bound)
        np.testing.assert_array_equal(a.low.output, b.low.output)
    assert b.layer_names == ["input", "a:dense", "b:relu", "c:dense"]


def test_a_residual_block_written_with_an_add_node():
    rng = np.random.default_rng(2)
    d0, d1 = Dense(rng.normal(size=(12, 6)) / 2), Dense(rng.normal(size=(12, 12)) / 4)
    d2, out = Dense(rng.normal(size=(12, 12)) / 4), Dense(rng.normal(size=(3, 12)) / 3)
    relu = Activation("relu")
    nested = Model("r", (6,), (d0, Residual((d1, relu, d2)), out))
    flat = Model("g", (6,), (d0, d1, relu, d2, Add(), out),
                 wiring=((-1,), (0,), (1,), (2,), (0, 3), (4,)))  # fmt: skip
    X = rng.normal(size=(25, 6))
    np.testing.assert_array_equal(nested.forward(X, LOW), flat.forward(X, LOW))
    a = bound_run(nested, X, LOW, engine="backward").radius
    b = bound_run(flat, X, LOW, engine="backward").radius
    np.testing.assert_allclose(a, b, rtol=1e-12)


def _write(tmp_path, layers: list[dict], arrays: dict) -> str:
    np.savez(tmp_path / "w.npz", **arrays)
    spec = {"weights": "w.npz", "input": {"shape": [4]}, "layers": layers}
    (tmp_path / "m.yaml").write_text(yaml.safe_dump(spec))
    return str(tmp_path / "m.yaml")


W = {"a": np.eye(4), "b": np.ones((4, 4)) / 4, "o": np.ones((2, 4))}


def test_yaml_graph_round_trip(tmp_path):
    path = _write(tmp_path, [
        {"type": "dense", "weight": "a", "name": "left"},
        {"type": "dense", "weight": "b", "name": "right", "inputs": ["input"]},
        {"type": "add", "inputs": ["left", "right"]},
        {"type": "dense", "weight": "o"},
    ], W)  # fmt: skip
    model = load_model(path)
    assert model.wiring == ((-1,), (-1,), (0, 1), (2,))
    X = np.arange(8.0).reshape(2, 4)
    np.testing.assert_allclose(model.forward(X), (X + X @ W["b"].T) @ W["o"].T)
    model.save(tmp_path / "again" / "m.yaml")
    again = load_model(tmp_path / "again" / "m.yaml")
    assert again.wiring == model.wiring and again.names == model.names
    np.testing.assert_array_equal(again.forward(X, LOW), model.forward(X, LOW))
    res = certify(model, X)
    assert res.bounds.layer_names[3] == "2:add"


@pytest.mark.parametrize(
    ("layers", "words"),
    [
        ([{"type": "dense", "weight": "a", "inputs": ["nowhere"]}], "names no earlier"),
        ([{"type": "dense", "weight": "a", "name": "x"},
          {"type": "dense", "weight": "o", "name": "x", "inputs": ["x"]}], "used twice"),
        ([{"type": "dense", "weight": "a"}, {"type": "add"}], "name them"),
        ([{"type": "dense", "weight": "a", "name": "p"},
          {"type": "add", "inputs": ["p"]}], "reads 1 inputs"),
        ([{"type": "dense", "weight": "a", "name": "p"},
          {"type": "dense", "weight": "b", "name": "q", "inputs": ["input"]},
          {"type": "dense", "weight": "o", "inputs": ["q"]}], "read by no later layer"),
        ([{"type": "dense", "weight": "a", "name": "p"},
          {"type": "dense", "weight": "o", "name": "q", "inputs": ["p"]},
          {"type": "add", "inputs": ["p", "q"]}], "one shape"),
    ],
    ids=["unknown", "duplicate", "merge-in-chain", "arity", "dangling", "shapes"],
)
def test_bad_wiring_fails_in_one_line(tmp_path, layers, words):
    path = _write(tmp_path, layers, W)
    with pytest.raises(SpecError, match=words):
        load_model(path)
    res = CliRunner().invoke(cli, ["bound", "--model", path, "--inputs", "sklearn:digits"])
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_graph_models_are_refused_where_only_chains_are_supported():
    rng = np.random.default_rng(3)
    model = tiny_resnet(rng)
    X = rng.uniform(0, 1, (2, 2, 6, 6))
    with pytest.raises(ValueError, match="zonotope engine takes chains"):
        bound(model, X, engine="zonotope")
    from fperr.bounds.apriori import apriori_bound

    with pytest.raises(SpecError, match="is a graph"):
        apriori_bound(model, X.min(axis=0), X.max(axis=0))
    assert certify(model, X, on="softmax").bounds.layer_names[-1] == "10:softmax"



def _resnet_module(torch, cat: bool):
    """A CIFAR-style residual network: identity and projection shortcuts, BatchNorm,
    global average pooling (AdaptiveAvgPool2d or x.mean), optionally a torch.cat."""
    nn = torch.nn

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.b1 = nn.BatchNorm2d(cout)
            self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.b2 = nn.BatchNorm2d(cout)
            same = stride == 1 and cin == cout
            self.short = nn.Sequential() if same else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            out = self.b2(self.c2(torch.relu(self.b1(self.c1(x)))))
            return torch.relu(out + self.short(x))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, 1, 1, bias=False), nn.BatchNorm2d(4),
                                      nn.ReLU())  # fmt: skip
            self.l1, self.l2 = Block(4, 4, 1), Block(4, 8, 2)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16 if cat else 8, 10)

        def forward(self, x):
            h = self.l2(self.l1(self.stem(x)))
            if cat:
                h = torch.cat([h, torch.relu(h)], dim=1)
                return self.fc(h.mean((2, 3)))
            return self.fc(torch.flatten(self.pool(h), 1))

    torch.manual_seed(0)
    net = Net().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(0.5, 1.5)
    return net


@pytest.mark.parametrize("cat", [False, True], ids=["adaptive-pool", "cat-and-mean"])
def test_resnet_with_projection_shortcuts_imports_from_torch(cat):
    torch = pytest.importorskip("torch")
    from fperr.importers import from_torch

    net = _resnet_module(torch, cat)
    model = from_torch(net, input_shape=(1, 8, 8))
    assert model.is_graph and sum(layer.type == "add" for layer in model.layers) == 2
    X = np.random.default_rng(0).uniform(0, 1, (30, 1, 8, 8))
    with torch.no_grad():
        ref = net.double()(torch.from_numpy(X)).numpy()
    assert np.linalg.norm(model.forward(X) - ref) <= 1e-12 * np.linalg.norm(ref)
    # the bound holds for torch's own float16 and float32 CPU runs of the module
    with torch.no_grad():
        y16, y32 = (net.to(dt)(torch.from_numpy(X).to(dt)).double().numpy()
                    for dt in (torch.float16, torch.float32))  # fmt: skip
    b = bound(model, X)
    assert np.all(np.abs(y16 - y32) <= b.bound)
    assert np.all(np.isfinite(b.bound))


def _mixed_forward(model: Model, X: np.ndarray, arith: dict[int, Emulated], default: Emulated):
    """A graph run where layer i computes in arith.get(i, default), its inputs first
    rounded to that layer's storage (the conversion a mixed-precision kernel does)."""
    a0 = arith.get(0, default)
    vals: dict[int, np.ndarray] = {-1: a0.store(X)}
    for i, layer in enumerate(model.layers):
        a = arith.get(i, default)
        ins = [a.store(vals[j]) for j in model.inputs_of(i)]
        merge = layer.type in ("add", "concat")
        vals[i] = layer.merge(ins, a) if merge else layer.forward(ins[0], a)
    return vals[len(model.layers) - 1]


def test_graph_mixed_precision_keep():
    """Layers kept in binary32 inside a binary16 graph run: the bound holds for the
    mixed run (each order), and keeping every layer gives the binary32 run's bound."""
    rng = np.random.default_rng(5)
    model = tiny_resnet(rng)
    X = rng.uniform(-1, 1, (30, 2, 6, 6)) * 3
    f32 = Emulated.from_names("binary32", "binary32")
    every = {i: f32 for i in range(len(model.layers))}
    np.testing.assert_array_equal(bound_run(model, X, LOW, keep=every).radius,
                                  bound_run(model, X, f32).radius)  # fmt: skip
    keep = {2: f32, 5: f32, 6: f32}  # the branch conv, the projection and the add
    run = bound_run(model, X, LOW, keep=keep)
    exact = model.forward(X)
    for order in ORDERS:
        lo = Emulated.from_names("binary16", order=order)
        k32 = Emulated.from_names("binary32", order=order)
        y = _mixed_forward(model, X, dict.fromkeys(keep, k32), lo)
        assert np.all(np.abs(y - exact) <= run.radius), order
    assert np.all(run.radius <= bound_run(model, X, LOW).radius * (1 + 1e-12))


def test_cli_bounds_a_graph_model(tmp_path):
    """fperr bound on a graph YAML: certificates, the per-layer report under node names."""
    rng = np.random.default_rng(8)
    model = tiny_resnet(rng)
    model.save(tmp_path / "g.yaml")
    X = rng.uniform(0, 1, (6, 2, 6, 6))
    np.save(tmp_path / "x.npy", X)
    args = ["bound", "--model", str(tmp_path / "g.yaml"), "--inputs", str(tmp_path / "x.npy"),
            "--json", "--quiet", "--per-layer"]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code in (0, 1), res.output
    report = yaml.safe_load(res.output)  # JSON is YAML
    assert report["summary"]["inputs"] == 6
    kinds = {row["name"]: row["kind"] for row in report["per_layer"]["layers"]}
    assert kinds["sum:add"] == "rounds" and kinds["cat:concat"] == "none"
    assert kinds["proj:conv2d"] == "rounds"
    direct = certify(model, X, cascade=False)
    got = np.array([s["bound"] for s in report["samples"]])
    np.testing.assert_allclose(got, direct.margin, rtol=1e-12)
