"""check-training on graph models: the reverse-mode pass over the DAG and its VJPs.

Oracles: central differences of the float64 forward (``Model.forward``, the
inference path of :mod:`fperr.operators`, not the training code) with the
cross-entropy computed here by scipy's logsumexp; and torch autograd in
float64 on the seed ResNet-20 and ViT (``from_torch`` imports match torch to
1e-12, so torch's gradients of the same loss are independent of fperr).
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logsumexp

from fperr.errors import FperrInputError
from fperr.layers import BatchNorm, Dense, parameters
from fperr.model import Model
from fperr.operators import REGISTRY
from fperr.training.backward import backward
from fperr.training.check import check_training

SEED = Path(__file__).resolve().parents[1] / "examples" / "seed"
# every operator the graph pass added a VJP for (softmax: its example is along axis 0)
NEW_OPS = ("add", "concat", "linear", "matmul", "permute", "slice", "scale", "constant", "mean",
           "sum", "mul", "softmax")  # fmt: skip


def _loss(model: Model, x: np.ndarray, y: np.ndarray) -> float:
    """Mean cross-entropy of the logits (before a final softmax, which the loss includes)."""
    hs = model.activations(x)
    z = hs[-2] if model.layers[-1].type == "softmax" else hs[-1]
    return float(np.mean(logsumexp(z, axis=1) - z[np.arange(len(y)), y]))


def _central(f: object, a: np.ndarray, h: float = 1e-5) -> np.ndarray:
    """dL/da by central differences, perturbing ``a`` in place entry by entry."""
    g = np.empty_like(a)
    for idx in np.ndindex(a.shape):
        old = a[idx]
        a[idx] = old + h
        up = f()  # type: ignore[operator]
        a[idx] = old - h
        down = f()  # type: ignore[operator]
        a[idx] = old
        g[idx] = (up - down) / (2 * h)
    return g


def _close(g: np.ndarray, ref: np.ndarray, rtol: float) -> float:
    """max |g - ref| relative to max |ref|; asserts it is below ``rtol``."""
    scale = float(np.abs(ref).max())
    assert scale > 0
    rel = float(np.abs(g - ref).max()) / scale
    assert rel < rtol, rel
    return rel


@pytest.mark.parametrize("op", NEW_OPS)
def test_vjps_match_central_differences(op: str) -> None:
    rng = np.random.default_rng(7)
    model = REGISTRY[op].example(rng)
    assert any(layer.type == op for layer in model.layers)
    x = rng.normal(size=(3, *model.input_shape))
    classes = model.output_shape[0]
    y = rng.integers(0, classes, size=3)
    bw = backward(model, x, y)
    assert bw.loss == pytest.approx(_loss(model, x, y), rel=1e-13)
    n_params = 0
    for i, layer in enumerate(model.layers):
        for attr, a in vars(layer).items():
            if not isinstance(a, np.ndarray):
                continue
            fd = _central(lambda: _loss(model, x, y), a)  # noqa: B023 - called at once
            _close(bw.grads[f"{i}.{attr}"], fd, 1e-6)
            n_params += 1
    assert n_params == len(bw.grads) and n_params > 0
    assert bw.input_grad is not None
    _close(bw.input_grad, _central(lambda: _loss(model, x, y), x), 1e-6)


def test_a_softmax_vjp_along_a_middle_axis_and_a_shared_value() -> None:
    """softmax along axis 1 of (2, 3, 2) and one value read by three nodes (the sums)."""
    from fperr.layers import Add, Flatten, Reshape, Softmax
    from fperr.operators.mul import Mul

    rng = np.random.default_rng(3)
    layers = (Dense(rng.normal(size=(12, 5))), Reshape((2, 3, 2)), Softmax(1), Mul(), Add(),
              Flatten(), Dense(rng.normal(size=(4, 12))))  # fmt: skip
    wiring = ((-1,), (0,), (1,), (2, 1), (3, 1), (4,), (5,))
    model = Model("shared", (5,), layers, wiring=wiring, names=tuple("abcdefg"))
    x, y = rng.normal(size=(3, 5)), np.array([0, 3, 1])
    bw = backward(model, x, y)
    for i in (0, 6):
        fd = _central(lambda: _loss(model, x, y), model.layers[i].weight)  # noqa: B023
        _close(bw.grads[f"{i}.weight"], fd, 1e-6)
    assert bw.input_grad is not None
    _close(bw.input_grad, _central(lambda: _loss(model, x, y), x), 1e-6)


# -- the seed models against torch autograd (float64) -------------------------------------
def _seed(name: str) -> tuple[object, Model]:
    pytest.importorskip("torch")
    sys.path.insert(0, str(SEED))
    try:
        from architectures import MODELS, load_weights
    finally:
        sys.path.remove(str(SEED))
    import fperr

    net = load_weights(MODELS[name](), str(SEED / f"{name}.npz")).eval()
    return net, fperr.from_torch(net, input_shape=(1, 32, 32))


def _images(n: int) -> tuple[np.ndarray, np.ndarray]:
    data = np.load(SEED / "mnist_test_1000.npz")
    return data["inputs"][:n].astype(np.float64), data["labels"][:n].astype(np.int64)


def _match(model: Model, torch_names: list[str], bw_params: dict[str, np.ndarray],
           values: dict[str, np.ndarray]) -> dict[str, str]:  # fmt: skip
    """torch parameter name -> fperr key: by the node's module path ("Kind 'path'"),
    then by value (a ViT's class token and positional embedding are constant nodes)."""
    paths = {}
    for i in range(len(model.layers)):
        hit = re.fullmatch(r".*'([^']+)'", model.node_name(i))
        if hit:
            paths[hit.group(1)] = i
    out: dict[str, str] = {}
    for name in torch_names:
        prefix, _, attr = name.rpartition(".")
        if prefix in paths and f"{paths[prefix]}.{attr}" in bw_params:
            out[name] = f"{paths[prefix]}.{attr}"
    for name in torch_names:
        if name not in out:
            v = values[name].ravel()
            hits = [k for k, p in bw_params.items() if k not in out.values()
                    and p.size == v.size and np.array_equal(p.ravel(), v)]  # fmt: skip
            assert len(hits) == 1, (name, hits)
            out[name] = hits[0]
    return out


@pytest.mark.parametrize("name", ["resnet20", "vit_tiny"])
def test_seed_gradients_match_torch_autograd(name: str) -> None:
    import torch

    net, model = _seed(name)
    x, y = _images(4)
    bw = backward(model, x, y)
    net = net.double().train()  # batch norm: batch statistics, as the training pass
    xt = torch.tensor(x, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(net(xt), torch.tensor(y))
    loss.backward()
    assert bw.loss == pytest.approx(loss.item(), rel=1e-12)
    named = dict(net.named_parameters())
    values = {k: p.detach().numpy() for k, p in named.items()}
    keys = _match(model, list(named), bw.params, values)
    assert sorted(keys.values()) == sorted(bw.grads)  # every parameter, each once
    gmax = max(float(np.abs(p.grad.numpy()).max()) for p in named.values())
    worst = 0.0
    for tname, key in keys.items():
        ref = named[tname].grad.numpy().reshape(bw.grads[key].shape)
        if np.abs(ref).max() < 1e-12 * gmax:
            # attention's key bias: softmax ignores a per-query shift, so its exact
            # gradient is 0 and both sides hold rounding noise only
            assert np.abs(bw.grads[key]).max() < 1e-12 * gmax, tname
            continue
        worst = max(worst, _close(bw.grads[key], ref, 1e-8))
    assert bw.input_grad is not None
    assert xt.grad is not None
    _close(bw.input_grad, xt.grad.numpy(), 1e-8)
    print(f"{name}: {len(keys)} tensors, max relative difference {worst:.2g}")


# -- check_training on the seed graphs ----------------------------------------------------
def _param_keys(model: Model) -> set[str]:
    keys = set()
    for i, layer in enumerate(model.layers):
        for attr, a in vars(layer).items():
            stat = isinstance(layer, BatchNorm) and attr.startswith("running")
            if isinstance(a, np.ndarray) and not stat:
                keys.add(f"{i}.{attr}")
    return keys


@pytest.mark.parametrize("name", ["resnet20", "vit_tiny"])
def test_check_training_runs_on_the_seed_graphs(name: str) -> None:
    _, model = _seed(name)
    x, y = _images(6)
    t0 = time.perf_counter()
    report = check_training(model, x, y, batch_size=6, max_batches=1, emulate_steps=1)
    elapsed = time.perf_counter() - t0
    names = {p.name for p in report.params}
    assert names == _param_keys(model)
    assert len(report.layers) == len(model.layers)
    assert report.confirmations  # the one-step emulation ran and was compared
    assert {c.status for c in report.confirmations} <= {"confirmed", "refuted", "not predicted"}
    if name == "resnet20":
        assert {n.name for n in report.norms} == {
            str(i) for i, layer in enumerate(model.layers) if isinstance(layer, BatchNorm)
        }
    assert elapsed < 30


def test_emulation_rebuilds_graph_nodes_with_their_new_parameters() -> None:
    from fperr.operators.constant import Constant
    from fperr.operators.linear import Linear
    from fperr.training.emulate import _with_params

    lin = Linear(np.ones((2, 3)), np.zeros(2))
    new = _with_params(lin, {"4.weight": np.full((2, 3), 2.0), "4.bias": np.ones(2)}, "4")
    assert isinstance(new, Linear)
    np.testing.assert_array_equal(new.forward(np.ones((1, 3)), _exact()), [[7.0, 7.0]])
    c = _with_params(Constant(np.zeros((1, 2))), {"0.weight": np.ones((1, 2))}, "0")
    assert isinstance(c, Constant)
    np.testing.assert_array_equal(c.weight, np.ones((1, 2)))


def _exact() -> object:
    from fperr.arith import Exact

    return Exact()


def test_unsupported_graph_nodes_are_refused_in_one_line() -> None:
    from fperr.layers import Add, RMSNorm

    rng = np.random.default_rng(0)
    layers = (Dense(rng.normal(size=(3, 3))), RMSNorm((3,)), Add(), Dense(rng.normal(size=(2, 3))))
    model = Model("rms", (3,), layers, wiring=((-1,), (0,), (0, 1), (2,)), names=tuple("abcd"))
    with pytest.raises(FperrInputError, match=r"^check-training supports .*; layer 1 is rmsnorm$"):
        backward(model, rng.normal(size=(2, 3)), np.array([0, 1]))
    assert parameters(layers[0])


def test_cli_check_training_on_the_seed_vit(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fperr.cli import cli

    _, model = _seed("vit_tiny")
    x, y = _images(4)
    model.save(tmp_path / "vit.yaml")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    res = CliRunner().invoke(cli, ["check-training", "--model", str(tmp_path / "vit.yaml"),
                                   "--inputs", str(tmp_path / "x.npy"), "--labels",
                                   str(tmp_path / "y.npy"), "--max-batches", "1",
                                   "--emulate-steps", "1"])  # fmt: skip
    assert res.exit_code == 1, res.output  # eps rounds to 0 in binary16: a hazard
    assert "[confirmed] NaN/inf weights after the first step" in res.output
    assert "Traceback" not in res.output and "is a graph" not in res.output


def test_attention_key_biases_are_zero_gradients_not_underflow() -> None:
    """softmax(q.(k + b)) does not depend on the key bias b: its exact gradient is 0,
    and the float64 backward leaves rounding noise there.  check_training says so
    in a note and raises no underflow hazard for those tensors, while the other
    parameters keep theirs (every key bias is listed, no other tensor is)."""
    from fperr.operators.linear import Linear

    _, model = _seed("vit_tiny")
    x, y = _images(6)
    report = check_training(model, x, y, batch_size=6, max_batches=1, emulate_steps=0)
    tops = {p.name: p.grad_absmax for p in report.params}
    top = max(tops.values())
    quiet = {n for n, g in tops.items() if 0 < g <= 2.0**-40 * top}
    assert quiet, "the ViT's key biases should be float64 noise"
    # the noise tensors are biases of linear layers (the key projections), nothing else
    assert all(n.endswith(".bias") and isinstance(model.layers[int(n.split(".")[0])], Linear)
               for n in quiet)  # fmt: skip
    text = [f.message for f in report.findings]
    (note,) = [t for t in text if t.startswith("gradients zero to float64 precision")]
    assert all(n in note for n in quiet)
    assert not any("underflow" in t and n in t for t in text for n in quiet
                   if not t.startswith("gradients zero"))  # fmt: skip


def test_no_underflow_confirmation_for_an_exact_zero_gradient() -> None:
    """The emulated run does not 'confirm' an underflow that was never predicted: the
    key biases' float64 noise is neither a hazard nor a confirmation."""
    _, model = _seed("vit_tiny")
    x, y = _images(6)
    report = check_training(model, x, y, batch_size=6, max_batches=1, emulate_steps=1)
    from fperr.training.assess import noise_tensors

    noisy = noise_tensors(report.params)
    assert noisy
    assert not any(c.prediction.split(":")[0] in noisy for c in report.confirmations)
