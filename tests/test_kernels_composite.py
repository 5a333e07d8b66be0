"""Composite kernels (softmax, layer norm) in torch CPU against fperr's bound.

The rules bound them from the measured primitives (exp, rsqrt: see
fperr/bounds/allowance.py) plus the roundings of the sums.  Inputs: random
logits/activations and adversarial ones (large spreads, where the rounded
argument z_i - max z moves exp(z_i - max z) relatively by |z_i - max z| u --
the old softmax rule was exceeded 9.8x in binary32 by these; a large mean
with a small variance; mixed magnitudes).  Oracle: float64 numpy, written here.
"""

from __future__ import annotations

import numpy as np
import pytest

from fperr.arith import Emulated
from fperr.bounds import bound_run
from fperr.formats import get_format
from fperr.layers import LayerNorm, Softmax
from fperr.model import Model
from fperr.rounding import round as fround

torch = pytest.importorskip("torch")

DTYPES = {"binary16": torch.float16, "bfloat16": torch.bfloat16, "binary32": torch.float32}


def softmax64(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def layernorm64(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    m = x.mean(axis=-1, keepdims=True)
    v = ((x - m) ** 2).mean(axis=-1, keepdims=True)
    return (x - m) / np.sqrt(v + eps) * w + b


def inputs(rng: np.random.Generator, mode: int, n: int, k: int) -> np.ndarray:
    if mode == 0:  # random
        return rng.standard_normal((n, k)) * rng.uniform(0.1, 30)
    if mode == 1:  # large mean, small spread
        return rng.standard_normal((n, k)) * 0.01 + rng.choice([1, -1]) * 10 ** rng.uniform(0, 4)
    if mode == 2:  # wide spread: exp arguments down to -200
        return rng.uniform(-100, 100, (n, k))
    big = rng.random((n, k)) < 0.5  # mixed magnitudes
    return np.where(big, rng.standard_normal((n, k)) * 1e3, rng.standard_normal((n, k)) * 1e-3)


def ratio(model: Model, xs: np.ndarray, y: np.ndarray, exact: np.ndarray, fmt: str) -> float:
    radius = bound_run(model, xs, Emulated.from_names(fmt, "binary32")).radius
    err = np.abs(y - exact)
    bad = ~(err <= radius)
    assert not bad.any(), (fmt, float(err[bad].max()), float(radius[bad].min()))
    finite = (radius > 0) & np.isfinite(radius)
    return float(np.max(np.where(finite, err / np.where(finite, radius, 1.0), 0.0)))


@pytest.mark.parametrize("fmt", list(DTYPES))
def test_softmax_within_bound(fmt: str) -> None:
    rng = np.random.default_rng(21)
    for trial in range(48):
        k = int(rng.choice([2, 5, 10, 37, 100, 1000]))
        xs = fround(inputs(rng, trial % 4, 8, k), get_format(fmt))
        if not np.all(np.isfinite(xs)):
            continue
        y = torch.softmax(torch.tensor(xs).to(DTYPES[fmt]), -1).double().numpy()
        assert ratio(Model("softmax", (k,), (Softmax(),)), xs, y, softmax64(xs), fmt) <= 1


@pytest.mark.parametrize("fmt", list(DTYPES))
def test_layernorm_within_bound(fmt: str) -> None:
    rng = np.random.default_rng(22)
    for trial in range(48):
        k = int(rng.choice([2, 5, 10, 37, 100, 1000]))
        xs = fround(inputs(rng, trial % 4, 8, k), get_format(fmt))
        if not np.all(np.isfinite(xs)):
            continue
        w, b = rng.standard_normal(k) * rng.uniform(0.1, 3), rng.standard_normal(k)
        eps = float(rng.choice([1e-5, 1e-6, 1e-12]))
        ln = torch.nn.LayerNorm(k, eps=eps, dtype=torch.float64)
        with torch.no_grad():
            ln.weight.copy_(torch.from_numpy(w))
            ln.bias.copy_(torch.from_numpy(b))
            y = ln.to(DTYPES[fmt])(torch.tensor(xs).to(DTYPES[fmt])).double().numpy()
        model = Model("layernorm", (k,), (LayerNorm((k,), w, b, eps),))
        assert ratio(model, xs, y, layernorm64(xs, w, b, eps), fmt) <= 1
