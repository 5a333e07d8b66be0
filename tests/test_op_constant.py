"""constant: a parameter tensor as a graph node (ViT class token, positional embedding).

Oracles: float64 (exact P), numpy casts for the storage rounding fl(P) - P,
fperr's emulated runs in every order, and hand-written torch CPU float16 /
bfloat16 runs (the parameter cast to the dtype, added, flattened, a matmul).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from op_checks import ORDERS, worst_over_orders

from fperr.arith import Emulated
from fperr.bounds import bound_run
from fperr.errors import SpecError
from fperr.layers import Add, Concat, Dense, Flatten, Reshape
from fperr.model import Model, load_model
from fperr.operators.constant import Constant
from fperr.operators.slice import Slice


def _weight(layer: Any) -> np.ndarray:
    return np.asarray(layer.weight)


FMTS = ("binary16", "bfloat16")
TORCH = {"binary16": "float16", "bfloat16": "bfloat16"}


def _params(kind: str, rng: np.random.Generator) -> np.ndarray:
    p = rng.normal(size=(3, 4))
    if kind == "large":  # near binary16's overflow threshold 65504
        p = np.sign(p) * rng.uniform(3e4, 6.5e4, size=p.shape)
    if kind == "tiny":  # subnormal in binary16
        p = p * 1e-6
    if kind == "cancel":  # the parameter cancels the input: x + P near 0
        p = np.full((3, 4), 1.0 + 2.0**-13)
    return p


def _model(p: np.ndarray, seed: int) -> Model:
    w = np.random.default_rng(seed).normal(size=(3, 12)) / 4
    layers = (Constant(p), Add(), Flatten(), Dense(w))
    return Model("c", (3, 4), layers, wiring=((-1,), (-1, 0), (1,), (2,)))


def _torch(model: Model, x: np.ndarray, dtype: str) -> np.ndarray:
    torch = pytest.importorskip("torch")
    dt = getattr(torch, dtype)
    p = torch.from_numpy(_weight(model.layers[0])).to(dt)
    w = torch.from_numpy(_weight(model.layers[3])).to(dt)
    h = (torch.from_numpy(x).to(dt) + p).reshape(len(x), -1)
    return (h @ w.T).double().numpy()


@pytest.mark.parametrize("kind", ["random", "large", "tiny", "cancel"])
@pytest.mark.parametrize("fmt", FMTS)
def test_sound_for_every_order_and_torch(kind, fmt):
    rng = np.random.default_rng(1)
    model = _model(_params(kind, rng), 2)
    x = rng.normal(size=(30, 3, 4))
    if kind == "cancel":
        x[:] = -1.0
        x[::2] += 2.0**-11
    exact = model.forward(x).reshape(len(x), -1)
    rb = bound_run(model, x, Emulated.from_names(fmt, "binary32")).radius
    assert np.all(np.isfinite(rb))
    worst = worst_over_orders(model, x, fmt, exact, rb, kind)
    err = np.abs(_torch(model, x, TORCH[fmt]) - exact)
    assert np.all(err <= rb), f"torch {kind} {fmt}"
    assert worst > 0


@pytest.mark.parametrize("fmt", FMTS)
def test_the_constant_node_bound_is_its_rounding_exactly(fmt):
    """Alone, the node's bound is |fl(P) - P| (one signed generator, nothing else):
    the tightest sound bound.  Oracle: numpy's float16 cast, or the bfloat16 bits."""
    p = _params("random", np.random.default_rng(3))
    model = Model("c", (2,), (Constant(p),))  # a chain: both engines
    x = np.zeros((4, 2))
    if fmt == "binary16":
        fl = p.astype(np.float16).astype(np.float64)
    else:  # round to nearest even on the top 16 bits of the float32
        b = p.astype(np.float32).view(np.uint32).astype(np.uint64)
        b = (b + 0x7FFF + ((b >> 16) & 1)) >> 16 << 16
        fl = b.astype(np.uint32).view(np.float32).astype(np.float64)
    for engine in ("backward", "zonotope"):
        r = bound_run(model, x, Emulated.from_names(fmt, "binary32"), engine=engine).radius
        want = np.broadcast_to(np.abs(fl - p).reshape(1, -1), r.shape)
        assert np.all(r >= want) and np.all(r <= want * (1 + 1e-9))  # the engine's outward slack
    y = model.forward(x, Emulated.from_names(fmt, "binary32"))
    np.testing.assert_array_equal(y, np.broadcast_to(fl, y.shape))


@pytest.mark.parametrize("fmt", FMTS)
def test_vit_tokens_class_token_and_positions(fmt):
    """ViT front: concat(class token, patches) + positions, then the class token
    (slice 0..1, reshape), then a head: sound against emulated and torch runs."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    cls_tok, pos = rng.normal(size=(1, 3)), rng.normal(size=(5, 3))
    w = rng.normal(size=(2, 3))
    layers = (Constant(cls_tok), Concat(0), Constant(pos), Add(), Slice(0, 0, 1),
              Reshape((3,)), Dense(w))  # fmt: skip
    wiring = ((-1,), (0, -1), (-1,), (1, 2), (3,), (4,), (5,))
    model = Model("vit", (4, 3), layers, wiring=wiring)
    x = rng.normal(size=(20, 4, 3))
    exact = model.forward(x).reshape(len(x), -1)
    rb = bound_run(model, x, Emulated.from_names(fmt, "binary32")).radius
    for order in ORDERS:
        y = model.forward(x, Emulated.from_names(fmt, "binary32", order=order))
        assert np.all(np.abs(y.reshape(len(x), -1) - exact) <= rb)
    dt = getattr(torch, TORCH[fmt])
    t = torch.cat([torch.from_numpy(cls_tok).to(dt).expand(len(x), 1, 3),
                   torch.from_numpy(x).to(dt)], dim=1) + torch.from_numpy(pos).to(dt)
    got = (t[:, 0, :] @ torch.from_numpy(w).to(dt).T).double().numpy()
    err = np.abs(got - exact)
    assert np.all(err <= rb) and err.max() > 0


def test_yaml_and_refusals(tmp_path):
    model = _model(_params("random", np.random.default_rng(5)), 6)
    model.save(tmp_path / "m.yaml")
    x = np.random.default_rng(7).normal(size=(3, 3, 4))
    assert np.array_equal(load_model(tmp_path / "m.yaml").forward(x), model.forward(x))
    for bad in (np.zeros(()), np.zeros((0, 3)), np.array([1.0, np.inf])):
        with pytest.raises(SpecError) as exc:
            Constant(bad)
        assert "\n" not in str(exc.value) and "constant" in str(exc.value)
