"""check-training beyond dense models: conv, pooling, norms, residual blocks, running stats."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fperr.datasets import load_inputs
from fperr.errors import FperrInputError
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
from fperr.model import Model, load_model
from fperr.training import backward, check_training

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CNN = EXAMPLES / "cnn.yaml"
FAST = {"max_batches": 3}


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_inputs(EXAMPLES / "digits.npz")
    assert y is not None
    return X, y


# -- the oracle: torch autograd in float64, layer by layer from torch.nn.functional ---------
def _torch_layer(layer: Any, h: Any, params: dict[str, Any], prefix: str) -> Any:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    def p(name: str) -> Any:
        arr = getattr(layer, name)
        if arr is None:
            return None
        t = params[f"{prefix}{name}"] = torch.tensor(arr, requires_grad=True)
        return t

    if isinstance(layer, Dense):
        return F.linear(h, p("weight"), p("bias"))
    if isinstance(layer, Conv2d):
        return F.conv2d(h, p("weight"), p("bias"), layer.stride, layer.padding, layer.dilation,
                        layer.groups)  # fmt: skip
    if isinstance(layer, Pool2d):
        if layer.kind == "max":
            return F.max_pool2d(h, layer.kernel, layer.stride, layer.padding)
        return F.avg_pool2d(h, layer.kernel, layer.stride, layer.padding, count_include_pad=True)
    if isinstance(layer, BatchNorm):
        return F.batch_norm(h, torch.tensor(layer.running_mean), torch.tensor(layer.running_var),
                            p("weight"), p("bias"), training=True, eps=layer.eps)  # fmt: skip
    if isinstance(layer, LayerNorm):
        return F.layer_norm(h, layer.normalized_shape, p("weight"), p("bias"), layer.eps)
    if isinstance(layer, Residual):
        r = h
        for j, sub in enumerate(layer.layers):
            r = _torch_layer(sub, r, params, f"{prefix}{j}.")
        return h + r
    if isinstance(layer, Flatten):
        return h.reshape(h.shape[0], -1)
    if isinstance(layer, Reshape):
        return h.reshape(h.shape[0], *layer.shape)
    if isinstance(layer, Dropout):
        return h
    if isinstance(layer, Softmax):
        return torch.softmax(h, dim=-1)
    fn = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid,
          "gelu": F.gelu, "leaky_relu": lambda v: F.leaky_relu(v, layer.negative_slope)}
    return fn[layer.type](h)  # fmt: skip


def _torch_grads(model: Model, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    torch = pytest.importorskip("torch")
    h = torch.from_numpy(X.reshape(len(X), *model.input_shape))
    params: dict[str, Any] = {}
    layers = list(model.layers)
    if isinstance(layers[-1], Softmax):
        layers = layers[:-1]
    for i, layer in enumerate(layers):
        h = _torch_layer(layer, h, params, f"{i}.")
    torch.nn.functional.cross_entropy(h, torch.from_numpy(y)).backward()
    return {k: v.grad.numpy() for k, v in params.items()}


def _assert_grads_match(model: Model, X: np.ndarray, y: np.ndarray, scale: float = 1.0) -> None:
    ours = backward(model, X, y, loss_scale=scale)
    ref = _torch_grads(model, X, y)
    assert set(ours.grads) == set(ref)
    for k, g in ref.items():
        err = np.max(np.abs(ours.grads[k] / scale - g))
        assert err <= 1e-10 * max(1.0, float(np.max(np.abs(g)))), (k, err)


def _every_layer_model(rng: np.random.Generator) -> Model:
    c = 4
    layers = (
        Reshape((2, 7, 7)),
        Conv2d(rng.normal(0, 0.4, (c, 2, 3, 3)), rng.normal(0, 0.1, c), (1, 1), (1, 1)),
        BatchNorm(rng.normal(0, 0.1, c), rng.uniform(0.5, 2, c), rng.uniform(0.5, 1.5, c),
                  rng.normal(0, 0.1, c)),  # fmt: skip
        Activation("leaky_relu", 0.1),
        Conv2d(rng.normal(0, 0.4, (c, 2, 2, 2)), None, (1, 1), (0, 0), (2, 2), groups=2),
        Pool2d("max", (2, 2), (2, 2), (1, 1)),
        Activation("tanh"),
        Pool2d("avg", (3, 3), (1, 1), (1, 1)),
        Residual((
            Conv2d(rng.normal(0, 0.3, (c, c, 3, 3)), rng.normal(0, 0.1, c), (1, 1), (1, 1)),
            BatchNorm(np.zeros(c), np.ones(c)),
            Activation("sigmoid"),
        )),  # fmt: skip
        Flatten(),
        Dropout(0.3),
        Dense(rng.normal(0, 0.3, (12, 4 * 3 * 3)), rng.normal(0, 0.1, 12)),
        Residual((
            LayerNorm((12,), rng.uniform(0.5, 1.5, 12), rng.normal(0, 0.1, 12)),
            Dense(rng.normal(0, 0.3, (12, 12)), rng.normal(0, 0.1, 12)),
            Activation("gelu"),
        )),  # fmt: skip
        LayerNorm((12,)),
        Activation("relu"),
        Dense(rng.normal(0, 0.3, (5, 12)), rng.normal(0, 0.1, 5)),
        Softmax(),
    )
    return Model("every-layer", (98,), layers)


def test_backward_of_every_layer_type_matches_torch_autograd(rng):
    model = _every_layer_model(rng)
    X = rng.normal(0, 1, (9, 98))
    y = rng.integers(0, 5, 9)
    _assert_grads_match(model, X, y, scale=4.0)


def test_backward_of_the_example_cnn_matches_torch_autograd(digits):
    cnn = load_model(CNN)
    _assert_grads_match(cnn, digits[0][:64], digits[1][:64])


def test_backward_against_central_differences(rng):
    """A second oracle without torch: float64 central differences of the loss."""
    model = _every_layer_model(rng)
    X = rng.normal(0, 1, (5, 98))
    y = rng.integers(0, 5, 5)
    bw = backward(model, X, y)
    h = 1e-6
    for name, w in bw.params.items():
        idx = tuple(int(rng.integers(0, s)) for s in w.shape)
        old = w[idx]
        w[idx] = old + h  # the layer holds this very array: perturb in place
        up = backward(model, X, y).loss
        w[idx] = old - h
        down = backward(model, X, y).loss
        w[idx] = old
        fd = (up - down) / (2 * h)
        assert abs(fd - bw.grads[name][idx]) <= 1e-6 * max(1.0, abs(fd)), name


# -- check-training on conv models ----------------------------------------------------------
def _cnn_with_batchnorm(eps: float, dead: bool) -> Model:
    """examples/cnn.yaml with a batch norm after the first conv (running stats of the data);
    with ``dead`` the conv's channel 0 is all zero (batch variance exactly 0)."""
    cnn = load_model(CNN)
    conv = cnn.layers[1]
    assert isinstance(conv, Conv2d) and conv.bias is not None
    w, b = conv.weight.copy(), conv.bias.copy()
    if dead:
        w[0], b[0] = 0.0, 0.0
    # no conv bias: batch norm removes it, its exact gradient is 0 and the float64 one noise
    conv = Conv2d(w, None, conv.stride, conv.padding, conv.dilation, conv.groups)
    c = w.shape[0]
    bn = BatchNorm(np.zeros(c), np.zeros(c) if dead else np.ones(c), np.ones(c), np.zeros(c),
                   eps=eps)  # fmt: skip
    layers = (cnn.layers[0], conv, bn, *cnn.layers[2:])
    return Model("cnn-bn", cnn.input_shape, layers)


def test_example_cnn_predictions_and_emulated_run(digits):
    bad = check_training(load_model(CNN), *digits, eps=1e-8, emulate_steps=3, **FAST)
    assert bad.predicts_nan and bad.verdict == "hazard"
    assert [c.status for c in bad.confirmations] == ["confirmed"]
    assert "step 1" in bad.confirmations[0].observed
    good = check_training(load_model(CNN), *digits, eps=1e-4, emulate_steps=5, **FAST)
    assert good.verdict == "ok", good.hazards()
    assert [c.status for c in good.confirmations] == ["confirmed"]
    assert "finite for 5 steps" in good.confirmations[0].observed
    names = [p.name for p in good.params]
    assert names == ["1.bias", "1.weight", "4.bias", "4.weight", "8.bias", "8.weight"]


def test_sgd_lost_updates_are_confirmed_on_the_cnn(digits):
    report = check_training(load_model(CNN), *digits, optimizer="sgd", lr=1e-5, emulate_steps=4,
                            **FAST)  # fmt: skip
    lost = [c for c in report.confirmations if "lost" in c.prediction]
    assert lost and all(c.status == "confirmed" for c in lost)
    assert report.verdict == "hazard"


def test_batchnorm_eps_subnormal_is_a_note(digits):
    report = check_training(_cnn_with_batchnorm(1e-5, dead=False), *digits, eps=1e-4, **FAST)
    (n,) = report.norms
    assert n.name == "2" and n.eps_rounded == 168 * 2.0**-24  # 1e-5 rounds to 168 quanta
    assert n.scale_error < 0.01
    assert report.verdict == "ok", report.hazards()
    assert any("eps=1e-05 is subnormal in binary16" in f.message for f in report.findings)
    assert "2.weight" in {p.name for p in report.params}


def test_batchnorm_zero_variance_with_vanishing_eps_is_a_confirmed_hazard(digits):
    report = check_training(_cnn_with_batchnorm(1e-8, dead=True), *digits, eps=1e-4,
                            emulate_steps=3, **FAST)  # fmt: skip
    (n,) = report.norms
    assert n.eps_rounded == 0.0 and n.scale_error == np.inf  # var + eps == 0 in binary16
    assert any("batchnorm 2" in h for h in report.hazards())
    conf = [c for c in report.confirmations if "batchnorm" in c.prediction]
    assert conf and conf[0].status == "confirmed"
    # the same model in binary32: eps is a normal number, no hazard from the batch norm
    ok = check_training(_cnn_with_batchnorm(1e-8, dead=True), *digits, eps=1e-8,
                        fmt="binary32", **FAST)  # fmt: skip
    assert not any("batchnorm" in h for h in ok.hazards())


def test_scale_error_against_fractions():
    """scale_error's held-in-format variance + eps checked with exact rationals and numpy casts."""
    from fractions import Fraction

    from fperr.formats import get_format
    from fperr.training.running_stats import scale_error

    f = get_format("binary16")
    rv = np.array([0.0, 1e-9, 3e-6, 1e-4, 0.5])
    stored = rv.astype(np.float16).astype(np.float64)
    err = scale_error(rv, stored, 1e-5, f)
    eps16 = float(np.float16(1e-5))
    for v, s, e in zip(rv, stored, err, strict=True):
        held = float(np.float16(Fraction(s) + Fraction(eps16)))  # one rounding of the exact sum
        ref = abs(1 / np.sqrt(held) - 1 / np.sqrt(v + 1e-5)) * np.sqrt(v + 1e-5)
        assert e == pytest.approx(ref, rel=1e-12, abs=1e-15)


def test_cli_check_training_on_the_example_cnn():
    from click.testing import CliRunner

    from fperr.cli import cli

    res = CliRunner().invoke(cli, ["check-training", "--model", str(CNN), "--max-batches", "2",
                                   "--emulate-steps", "2"])  # fmt: skip
    assert res.exit_code == 1, res.output
    assert "emulated run" in res.output and "[confirmed] NaN/inf" in res.output
    assert "Traceback" not in res.output


def test_graph_models_are_refused_in_one_line():
    from fperr.training.layer_grads import refuse_unsupported

    class Odd:
        type = "odd"

    with pytest.raises(FperrInputError, match="layer 3.1 is odd"):
        refuse_unsupported(Residual((Dense(np.ones((2, 2))), Odd())), "3")  # type: ignore[arg-type]
