"""slice: a contiguous range of one per-input axis (the ViT class token: axis 0, 0..1).

Oracles: numpy indexing, fperr's emulated runs in every order, hand-written
torch CPU float16 / bfloat16 runs (tensor.narrow then a matmul), and the bound
of the unsliced model (a slice moves values: its bound is the sliced bound).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from op_checks import worst_over_orders

from fperr.arith import Emulated
from fperr.bounds import bound_run
from fperr.errors import SpecError
from fperr.layers import Dense, Flatten, Reshape
from fperr.model import Model, load_model
from fperr.operators.slice import Slice


def _weight(layer: Any) -> np.ndarray:
    return np.asarray(layer.weight)


FMTS = ("binary16", "bfloat16")
TORCH = {"binary16": "float16", "bfloat16": "bfloat16"}
CASES = [(0, 0, 1), (1, 1, -1), (-1, -1, 2), (0, -2, 3)]  # (axis, start, stop) on (3, 4, 2)


def _model(case: tuple[int, int, int], seed: int) -> Model:
    w1 = np.random.default_rng(seed).normal(size=(24, 24)) / 3
    sl = Slice(*case)
    m = sl.out_shape((3, 4, 2))
    w2 = np.random.default_rng(seed + 1).normal(size=(2, int(np.prod(m)))) / 3
    return Model("s", (24,), (Dense(w1), Reshape((3, 4, 2)), sl, Flatten(), Dense(w2)))


def _inputs(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 24))
    if kind == "large":
        x *= 1500.0  # sums of 24 terms near binary16's 65504
    if kind == "tiny":
        x *= 1e-5  # products subnormal in binary16
    return x


def _torch(model: Model, x: np.ndarray, dtype: str, case: tuple[int, int, int]) -> np.ndarray:
    torch = pytest.importorskip("torch")
    dt = getattr(torch, dtype)
    h = (torch.from_numpy(x).to(dt) @ torch.from_numpy(_weight(model.layers[0])).to(dt).T)
    h = h.reshape(-1, 3, 4, 2)
    ax, start, stop = case
    n = h.shape[ax + 1] if ax >= 0 else h.shape[ax]
    lo, hi = start % n, stop if stop >= 0 else stop + n
    h = h.narrow(ax + 1 if ax >= 0 else ax, lo, hi - lo).reshape(len(x), -1)
    return (h @ torch.from_numpy(_weight(model.layers[4])).to(dt).T).double().numpy()


@pytest.mark.parametrize("kind", ["random", "large", "tiny"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fmt", FMTS)
def test_sound_for_every_order_and_torch(kind, case, fmt):
    model = _model(case, 1)
    x = _inputs(kind, 20, 2)
    exact = model.forward(x).reshape(len(x), -1)
    rb = bound_run(model, x, Emulated.from_names(fmt, "binary32")).radius
    assert np.all(np.isfinite(rb))
    worst = worst_over_orders(model, x, fmt, exact, rb, f"{kind} {case}")
    err = np.abs(_torch(model, x, TORCH[fmt], case) - exact)
    assert np.all(err <= rb), f"torch {kind} {case} {fmt}"
    assert worst > 0


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("engine", ["zonotope", "backward"])
def test_bound_is_the_sliced_bound(case, engine):
    """Nothing is computed: the slice's bound is the unsliced bound, sliced (numpy)."""
    w = np.random.default_rng(3).normal(size=(24, 24)) / 3
    full = Model("f", (24,), (Dense(w), Reshape((3, 4, 2))))
    cut = Model("c", (24,), (Dense(w), Reshape((3, 4, 2)), Slice(*case)))
    x = _inputs("random", 10, 4)
    a = Emulated.from_names("binary16", "binary32")
    rf = bound_run(full, x, a, engine=engine).radius.reshape(len(x), 3, 4, 2)
    rc = bound_run(cut, x, a, engine=engine).radius
    ax, start, stop = case
    index = [slice(None)] * 4
    index[ax + 1 if ax >= 0 else ax] = slice(start, stop)
    np.testing.assert_allclose(rc, rf[tuple(index)].reshape(len(x), -1), rtol=1e-12, atol=0)
    y = cut.forward(x, a)
    np.testing.assert_array_equal(y, full.forward(x, a)[tuple(index)])


def test_yaml_and_refusals(tmp_path):
    model = _model((1, 1, -1), 5)
    model.save(tmp_path / "m.yaml")
    x = _inputs("random", 3, 6)
    assert np.array_equal(load_model(tmp_path / "m.yaml").forward(x), model.forward(x))
    for case in ((3, 0, 1), (-4, 0, 1), (0, 2, 2), (0, 0, 4), (1, -5, 2), (1, 3, 1)):
        with pytest.raises(SpecError) as exc:
            Model("s", (3, 4), (Slice(*case), Flatten()))
        assert "\n" not in str(exc.value) and "slice" in str(exc.value)
