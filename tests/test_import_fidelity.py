"""Import fidelity: an imported model computes what the PyTorch module computes in eval
mode, or the import refuses with one line naming the op (issue 11, item 7).

The oracle is torch itself: the module in float64 and eval mode.  Every case either
matches it to ~1e-12 (normwise relative) on several inputs or raises SpecError; the
in-place and train-mode cases say which, and the static rules are also tested with
the run-time check off (``check=False``), so that each layer of defence can fail alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from fperr.errors import FperrInputError, SpecError
from fperr.importers import from_onnx, from_torch
from fperr.layers import Residual
from fperr.model import Model

TOL = 1e-12
D = 6


@pytest.fixture
def torch() -> Any:
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    return torch


def _inputs(torch: Any, shape: tuple[int, ...]) -> list[Any]:
    g = torch.Generator().manual_seed(5)
    x = torch.randn((7, *shape), generator=g, dtype=torch.float64)
    return [x, 10 * x, x.abs(), -x.abs()]


def _want(torch: Any, module: Any, x: Any) -> np.ndarray:
    with torch.no_grad():
        return np.asarray(module(x.clone()).numpy())  # a clone: an in-place op may write it


def _agree(torch: Any, module: Any, model: Model, tol: float = TOL) -> float:
    """Largest normwise relative difference to torch float64 over the test inputs."""
    worst = 0.0
    for x in _inputs(torch, model.input_shape):
        want = _want(torch, module, x)
        got = model.forward(x.numpy())
        scale = max(float(np.abs(want).max()), 1e-300)
        worst = max(worst, float(np.abs(got - want).max()) / scale)
    return worst


# -- the cases: name -> (build module, input shape, expectation) -------------------------------
# expectation: "match", or ("refuse", regex) for a rule that names the op without the
# run-time check, or ("runtime", regex) for what only the run-time check can see.
Case = tuple[Callable[[Any], Any], tuple[int, ...], Any]


def _net(torch: Any, body: Callable[..., Any], **mods: Any) -> Any:
    nn = torch.nn
    Module: Any = nn.Module

    class Net(Module):
        def __init__(self) -> None:
            super().__init__()
            self.f, self.g = nn.Linear(D, D), nn.Linear(D, D)
            for k, m in mods.items():
                setattr(self, k, m)

        def forward(self, x: Any) -> Any:
            return body(self, x, torch)

    return Net()


def _inplace_cases() -> dict[str, Case]:
    def relu_alias(s: Any, x: Any, t: Any) -> Any:  # the issue's pattern
        h = s.f(x)
        out = t.relu_(h)
        return out + h

    def method_alias(s: Any, x: Any, t: Any) -> Any:
        h = s.f(x)
        out = h.relu_()
        return s.g(out + h)

    def f_relu_kw(s: Any, x: Any, t: Any) -> Any:
        h = s.f(x)
        return t.nn.functional.relu(h, inplace=True) + h

    def f_relu_pos(s: Any, x: Any, t: Any) -> Any:
        h = s.f(x)
        return h + t.nn.functional.relu(h, True)

    def module_alias(s: Any, x: Any, t: Any) -> Any:
        h = s.f(x)
        return s.act(h) + h

    def leaky_fn(s: Any, x: Any, t: Any) -> Any:
        h = s.f(x)
        return t.nn.functional.leaky_relu_(h, 0.2) + h

    def leaky_kw(s: Any, x: Any, t: Any) -> Any:
        h = s.f(x)
        return t.nn.functional.leaky_relu(h, 0.3, inplace=True) + h

    def tanh_sigmoid(s: Any, x: Any, t: Any) -> Any:
        h = s.f(x)
        t.tanh_(h)
        y = s.g(h) + h
        y.sigmoid_()
        return y

    def two_writes(s: Any, x: Any, t: Any) -> Any:
        h = s.f(x)
        t.relu_(h)
        h.tanh_()
        return h + s.g(h)

    def write_then_view(s: Any, x: Any, t: Any) -> Any:
        h = s.f(x)
        t.relu_(h)
        return s.g(h.view(h.size(0), -1))

    def add_method(s: Any, x: Any, t: Any) -> Any:
        out = s.f(x)
        out.add_(x)
        return s.g(out)

    def resnet_style(s: Any, x: Any, t: Any) -> Any:
        out = s.act(s.f(x))
        out = s.g(out)
        out += x  # traced as out + x; in torch it writes out, which nothing else reads
        return s.act(out)

    def write_to_input(s: Any, x: Any, t: Any) -> Any:
        y = t.nn.functional.relu(x, inplace=True)
        return s.f(y + x)

    def view_before_write(s: Any, x: Any, t: Any) -> Any:
        h = s.f(x)
        v = h.view(h.size(0), -1)
        t.relu_(h)
        return s.g(v)

    def write_to_view_base_read(s: Any, x: Any, t: Any) -> Any:
        h = s.f(x)
        v = h.view(h.size(0), -1)
        v.relu_()
        return s.g(h)

    def write_view_read_base_residual(s: Any, x: Any, t: Any) -> Any:
        h = s.f(x)
        v = h.view(h.size(0), -1)
        return h + v.relu_()

    def out_argument(s: Any, x: Any, t: Any) -> Any:
        h = s.f(x)
        return t.tanh(s.g(x), out=h)

    def iadd_on_view(s: Any, x: Any, t: Any) -> Any:  # torch.fx records y += z as y + z
        h = s.f(x)
        v = h.view(h.size(0), -1)
        v += t.relu(v)
        return h + v

    def relu(inplace: bool) -> Callable[[Any], Any]:
        return lambda t: t.nn.ReLU(inplace=inplace)

    def plain(body: Callable[..., Any], **mods: Callable[[Any], Any]) -> Callable[[Any], Any]:
        return lambda t: _net(t, body, **{k: m(t) for k, m in mods.items()})

    writes = r"writes in place to the storage of .*reads afterwards.*out-of-place form"
    return {
        "relu_ alias (issue)": (plain(relu_alias), (D,), "match"),
        ".relu_() alias": (plain(method_alias), (D,), "match"),
        "F.relu(inplace=True) alias": (plain(f_relu_kw), (D,), "match"),
        "F.relu(x, True) alias": (plain(f_relu_pos), (D,), "match"),
        "nn.ReLU(inplace=True) alias": (plain(module_alias, act=relu(True)), (D,), "match"),
        "nn.LeakyReLU(inplace=True) alias": (
            plain(module_alias, act=lambda t: t.nn.LeakyReLU(0.1, inplace=True)),
            (D,),
            "match",
        ),
        "F.leaky_relu_ alias": (plain(leaky_fn), (D,), "match"),
        "F.leaky_relu(inplace=True) alias": (plain(leaky_kw), (D,), "match"),
        "tanh_ and sigmoid_": (plain(tanh_sigmoid), (D,), "match"),
        "two writes": (plain(two_writes), (D,), "match"),
        "write then view": (plain(write_then_view), (D,), "match"),
        ".add_ residual": (plain(add_method), (D,), "match"),
        "resnet style": (plain(resnet_style, act=relu(True)), (D,), "match"),
        "write to the input": (plain(write_to_input), (D,), "match"),
        "view before write": (
            plain(view_before_write),
            (D,),
            ("refuse", "relu_ 'relu_' " + writes),
        ),
        "write to a view, base read": (
            plain(write_to_view_base_read),
            (D,),
            ("refuse", r"\.relu_\(\) 'relu_' writes in place to the storage of Linear 'f'"),
        ),
        "write to a view in a residual": (
            plain(write_view_read_base_residual),
            (D,),
            ("refuse", writes),
        ),
        "out= argument": (plain(out_argument), (D,), ("refuse", r"tanh 'tanh' \(out= argument\)")),
        "y += z on a view": (
            plain(iadd_on_view),
            (D,),
            ("runtime", "differs from what the module computes in eval mode"),
        ),
        "sequential in-place": (
            lambda t: t.nn.Sequential(
                t.nn.Linear(D, 8),
                t.nn.ReLU(inplace=True),
                t.nn.Linear(8, 8),
                t.nn.LeakyReLU(0.1, inplace=True),
                t.nn.Dropout(0.2, inplace=True),
                t.nn.Linear(8, 3),
            ),
            (D,),
            "match",
        ),
    }


def _train_mode_cases() -> dict[str, Case]:
    def drop(**kw: Any) -> Callable[..., Any]:
        return lambda s, x, t: s.g(t.nn.functional.dropout(s.f(x), **kw))

    def drop_self(s: Any, x: Any, t: Any) -> Any:
        return s.g(t.nn.functional.dropout(s.f(x), 0.4, training=s.training))

    def variant(name: str, *args: Any) -> Callable[..., Any]:
        return lambda s, x, t: s.g(getattr(t.nn.functional, name)(s.f(x), *args))

    def torch_dropout(s: Any, x: Any, t: Any) -> Any:
        return s.g(t.dropout(s.f(x), 0.3, True))

    def bn(training: Any) -> Callable[..., Any]:
        def body(s: Any, x: Any, t: Any) -> Any:
            tr = s.training if training == "self" else training
            h = t.nn.functional.batch_norm(s.f(x), s.rm, s.rv, s.w, s.b, tr, 0.1, 1e-3)
            return s.g(h)

        return body

    def with_bn(body: Callable[..., Any]) -> Callable[[Any], Any]:
        def build(t: Any) -> Any:
            net = _net(t, body)
            g = t.Generator().manual_seed(3)
            net.register_buffer("rm", t.randn(D, generator=g))
            net.register_buffer("rv", t.rand(D, generator=g) + 0.5)
            net.w = t.nn.Parameter(t.randn(D, generator=g))
            net.b = t.nn.Parameter(t.randn(D, generator=g))
            return net

        return build

    def train(build: Callable[[Any], Any]) -> Callable[[Any], Any]:
        return lambda t: build(t).train()

    def plain(body: Callable[..., Any]) -> Callable[[Any], Any]:
        return lambda t: _net(t, body)

    random = r"training=True with p=.* drops at random in eval mode too"
    return {
        "F.dropout default training": (
            plain(drop(p=0.3)),
            (D,),
            ("refuse", r"dropout 'dropout' \(" + random),
        ),
        "F.dropout training=True": (plain(drop(p=0.5, training=True)), (D,), ("refuse", random)),
        "F.dropout training=True p=0": (plain(drop(p=0.0, training=True)), (D,), "match"),
        "F.dropout training=False": (plain(drop(p=0.5, training=False)), (D,), "match"),
        "F.dropout(training=self.training), module in train mode": (
            train(plain(drop_self)),
            (D,),
            "match",
        ),
        "F.dropout1d": (plain(variant("dropout1d", 0.2)), (D,), ("refuse", random)),
        "F.alpha_dropout training": (
            plain(variant("alpha_dropout", 0.2, True)),
            (D,),
            ("refuse", random),
        ),
        "F.alpha_dropout default": (plain(variant("alpha_dropout", 0.2)), (D,), "match"),
        "torch.dropout train": (plain(torch_dropout), (D,), ("refuse", random)),
        "F.batch_norm training=True": (
            with_bn(bn(True)),
            (D,),
            ("refuse", r"batch_norm 'batch_norm' \(training=True normalises by batch"),
        ),
        "F.batch_norm training=False": (with_bn(bn(False)), (D,), "match"),
        "F.batch_norm(training=self.training), train mode": (
            train(with_bn(bn("self"))),
            (D,),
            "match",
        ),
        "nn.BatchNorm1d and nn.Dropout, train mode": (
            lambda t: t.nn.Sequential(
                t.nn.Linear(D, 5), t.nn.BatchNorm1d(5), t.nn.Dropout(0.5), t.nn.Linear(5, 3)
            ).train(),
            (D,),
            "match",
        ),
        "nn.BatchNorm1d(track_running_stats=False)": (
            lambda t: t.nn.Sequential(
                t.nn.Linear(D, 5), t.nn.BatchNorm1d(5, track_running_stats=False)
            ),
            (D,),
            ("refuse", r"BatchNorm1d '1' \(track_running_stats=False: batch statistics"),
        ),
    }


def _existing_cases() -> dict[str, Case]:
    """The models of test_importers, swept here against torch float64 too."""
    from test_importers import _randomize_bn, _sequentials

    def seq(kind: str) -> Callable[[Any], Any]:
        return lambda t: _randomize_bn(t, _sequentials(t)[kind][0])

    cases: dict[str, Case] = {}
    for kind in ("mlp", "cnn", "batchnorm", "layernorm_gelu", "residual"):
        cases[f"test_importers {kind}"] = (seq(kind), (64,), "match")
    return cases


def _hook_case() -> dict[str, Case]:
    def build(t: Any) -> Any:
        net = t.nn.Sequential(t.nn.Linear(D, D), t.nn.Tanh(), t.nn.Linear(D, 3))
        net[1].register_forward_hook(lambda m, i, o: 2 * o)  # fx does not run hooks
        return net

    return {"forward hook": (build, (D,), ("runtime", "differs from what the module computes"))}


CASES: dict[str, Case] = {
    **_inplace_cases(),
    **_train_mode_cases(),
    **_existing_cases(),
    **_hook_case(),
}


def _prepare(torch: Any, build: Callable[[Any], Any]) -> tuple[Any, dict[Any, bool]]:
    module = build(torch).double()
    return module, {m: m.training for m in module.modules()}


@pytest.mark.parametrize("name", list(CASES))
def test_import_matches_torch_float64_or_refuses(torch: Any, name: str) -> None:
    build, shape, expect = CASES[name]
    module, modes = _prepare(torch, build)
    kw = {"input_shape": shape}
    if expect == "match":
        model = from_torch(module, **kw)
        assert {m: m.training for m in module.modules()} == modes  # train/eval restored
        reference = module.eval()  # what the module computes in eval mode
        assert _agree(torch, reference, model) <= TOL, name
        # without the run-time check too: the static rules alone import it right
        module2, _ = _prepare(torch, build)
        assert _agree(torch, module2.eval(), from_torch(module2, check=False, **kw)) <= TOL
        return
    kind, pattern = expect
    with pytest.raises(SpecError, match=pattern) as info:
        from_torch(module, **kw)
    assert "\n" not in str(info.value) and isinstance(info.value, FperrInputError)
    module2, _ = _prepare(torch, build)
    if kind == "refuse":  # the static rule refuses without the run-time check
        with pytest.raises(SpecError, match=pattern):
            from_torch(module2, check=False, **kw)
    else:  # only the run-time check sees it: without it the import is wrong
        model = from_torch(module2, check=False, **kw)
        assert _agree(torch, module2.eval(), model) > 1e-3


def test_issue_pattern_is_relu_plus_relu_not_h_plus_relu(torch: Any) -> None:
    build, _, _ = CASES["relu_ alias (issue)"]
    module = build(torch).double().eval()
    model = from_torch(module, input_shape=(D,))
    types = [la.type for la in model.layers]
    assert types == ["dense", "relu", "residual"]  # relu(h) + relu(h)
    res = model.layers[2]
    assert isinstance(res, Residual) and res.layers == ()
    x = np.random.default_rng(0).standard_normal((5, D))
    with torch.no_grad():
        h = module.f(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(model.forward(x), 2 * np.maximum(h, 0), rtol=TOL, atol=TOL)
    assert np.abs(model.forward(x) - (h + np.maximum(h, 0))).max() > 0.1


def test_import_leaves_the_module_untouched(torch: Any) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(D, 4), torch.nn.Dropout(0.5), torch.nn.Linear(4, 2))
    net.train()
    before = [p.detach().clone() for p in net.parameters()]
    from_torch(net)
    assert net.training and all(m.training for m in net.modules())
    assert all(p.dtype == torch.float32 for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_runtime_check_reports_the_difference(torch: Any) -> None:
    build, shape, _ = CASES["y += z on a view"]
    with pytest.raises(SpecError) as info:
        from_torch(build(torch), input_shape=shape)
    msg = str(info.value)
    assert re.search(r"max \|difference\| [0-9.e+-]+, relative [0-9.e+-]+", msg), msg
    assert "y += z" in msg


def test_runtime_check_refuses_a_module_that_fails_to_run(torch: Any) -> None:
    nn = torch.nn
    Module: Any = nn.Module

    class Picky(Module):
        def __init__(self) -> None:
            super().__init__()
            self.f = nn.Linear(D, 2)

        def forward(self, x: Any) -> Any:
            return self.f(x)

    net = Picky()
    net.register_forward_pre_hook(lambda m, i: (_ for _ in ()).throw(RuntimeError("no\nrun")))
    with pytest.raises(SpecError, match=r"running the module in float64 .*failed \(no\)") as info:
        from_torch(net)
    assert "\n" not in str(info.value)
    assert from_torch(net, check=False).output_shape == (2,)


# -- ONNX: the same models through the exporter, and the training-mode forms of the graph ------
@pytest.fixture
def onnx() -> Any:
    return pytest.importorskip("onnx")


@pytest.mark.parametrize("name", [n for n, c in CASES.items() if c[2] == "match"])
def test_onnx_export_matches_torch_float64_or_refuses(torch: Any, onnx: Any, name: str) -> None:
    import io
    import warnings

    build, shape, _ = CASES[name]
    module = build(torch).double().eval()
    f = io.BytesIO()
    x = torch.zeros((1, *shape), dtype=torch.float64)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated
            torch.onnx.export(module, (x,), f, dynamo=False)
    except Exception as exc:  # an exporter limitation, not an import
        pytest.skip(f"torch.onnx.export: {type(exc).__name__}")
    try:
        model = from_onnx(f.getvalue())
    except SpecError:
        return  # refusing is allowed
    # ONNX float attributes are float32 (eps, leaky slopes, relative error <= 2^-24):
    # agreement to ~1e-8 then, so a loose 1e-6 here; a misread op is off by O(1)
    assert _agree(torch, module, model) <= 1e-6, name


def _onnx_graph(onnx: Any, op: Any, opset: int) -> Any:
    h = onnx.helper
    dbl = onnx.TensorProto.DOUBLE
    graph = h.make_graph(
        [op],
        "g",
        [h.make_tensor_value_info("x", dbl, ["N", 3])],
        [h.make_tensor_value_info("y", dbl, None)],
        [
            onnx.numpy_helper.from_array(np.array([0.5, 1.0, 2.0]), name)
            for name in ("s", "b", "m", "v")
        ],
    )
    return h.make_model(graph, opset_imports=[h.make_opsetid("", opset)])


@pytest.mark.parametrize(
    ("op", "opset", "message"),
    [
        ({"op_type": "Dropout", "inputs": ["x"], "outputs": ["y"]}, 6, "is_test=0"),
        (
            {"op_type": "BatchNormalization", "inputs": ["x", "s", "b", "m", "v"],
             "outputs": ["y", "rm", "rv", "sm", "sv"]},
            9,
            "training mode",
        ),
        (
            {"op_type": "BatchNormalization", "inputs": ["x", "s", "b", "m", "v"],
             "outputs": ["y"], "spatial": 0},
            8,
            "spatial=0",
        ),
        (
            {"op_type": "BatchNormalization", "inputs": ["x", "s", "b", "m", "v"],
             "outputs": ["y"], "is_test": 0},
            6,
            "training mode",
        ),
    ],
)  # fmt: skip
def test_onnx_training_mode_forms_are_refused(
    onnx: Any, op: dict[str, Any], opset: int, message: str
) -> None:
    node = onnx.helper.make_node(**op)
    with pytest.raises(SpecError, match=message) as info:
        from_onnx(_onnx_graph(onnx, node, opset))
    assert "\n" not in str(info.value)


def test_onnx_inference_forms_still_import(onnx: Any) -> None:
    drop = onnx.helper.make_node("Dropout", ["x"], ["y"], is_test=1)
    assert [la.type for la in from_onnx(_onnx_graph(onnx, drop, 6)).layers] == ["dropout"]
    bn = onnx.helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"])
    model = from_onnx(_onnx_graph(onnx, bn, 9))
    x = np.array([[1.0, -2.0, 3.0], [0.0, 0.25, -1.0]])
    c = np.array([0.5, 1.0, 2.0])  # scale, bias, mean and variance alike
    np.testing.assert_allclose(model.forward(x), c * (x - c) / np.sqrt(c + 1e-5) + c, rtol=TOL)


def test_onnx_identity_of_an_initializer_is_a_constant(torch: Any, onnx: Any) -> None:
    """A fresh BatchNorm's weight equals its running_var (ones): the exporter keeps one
    initializer and reads the other through an Identity node."""
    import io
    import warnings

    module = torch.nn.Sequential(torch.nn.Linear(D, 5), torch.nn.BatchNorm1d(5)).double().eval()
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter is deprecated
        torch.onnx.export(module, (torch.zeros((1, D), dtype=torch.float64),), f, dynamo=False)
    proto = onnx.load_from_string(f.getvalue())
    assert "Identity" in [n.op_type for n in proto.graph.node]
    model = from_onnx(proto)
    assert [la.type for la in model.layers] == ["dense", "batchnorm"]
    assert _agree(torch, module, model) <= 1e-6  # eps 1e-5 is a float32 attribute
