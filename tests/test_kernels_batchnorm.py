"""Eval-mode BatchNorm as PyTorch's CPU kernel computes it, against fperr's bound.

PyTorch stores the running statistics and affine parameters in the model's
dtype, computes alpha = w / sqrt(var + eps) and beta = b - mean alpha in fp32
and y = x alpha + beta with one FMA (checked bit for bit below).  With a
large running mean the rounding of mean and beta dominates: fperr's old rule
(one stored scale and shift) was exceeded 6.7x (fp16), 40x (bf16) and 2.4x
(fp32) by these runs.  The oracle is float64 numpy; the candidate orders are
written here, not taken from fperr.
"""

from __future__ import annotations

import numpy as np
import pytest

from fperr.arith import Emulated
from fperr.bounds import bound_run
from fperr.formats import get_format
from fperr.layers import BatchNorm
from fperr.model import Model
from fperr.rounding import round as fround

torch = pytest.importorskip("torch")

DTYPES = {"binary16": torch.float16, "bfloat16": torch.bfloat16, "binary32": torch.float32}


def torch_bn(layer: BatchNorm, x: np.ndarray, dtype, channels_last: bool = False) -> np.ndarray:
    c = layer.running_mean.shape[0]
    cls = torch.nn.BatchNorm1d if x.ndim < 4 else torch.nn.BatchNorm2d
    bn = cls(c, eps=layer.eps, dtype=torch.float64).eval()
    with torch.no_grad():
        bn.running_mean.copy_(torch.from_numpy(layer.running_mean))
        bn.running_var.copy_(torch.from_numpy(layer.running_var))
        bn.weight.copy_(torch.from_numpy(layer.weight))
        bn.bias.copy_(torch.from_numpy(layer.bias))
        xt = torch.from_numpy(x).to(dtype)
        if channels_last:
            xt = xt.contiguous(memory_format=torch.channels_last)
        return bn.to(dtype)(xt).double().numpy()


def check(layer: BatchNorm, x: np.ndarray, fmt: str, channels_last: bool = False) -> float:
    """Largest |y_torch - y_exact| / bound; asserts it is <= 1."""
    xs = fround(x, get_format(fmt))
    model = Model("bn", x.shape[1:], (layer,))
    rb = bound_run(model, xs, Emulated.from_names(fmt, "binary32"))
    exact = model.forward(xs)
    y = torch_bn(layer, xs, DTYPES[fmt], channels_last)
    radius = rb.radius.reshape(exact.shape)
    err = np.abs(y - exact)
    bad = ~(err <= radius)  # NaN or inf outputs need an infinite bound
    assert not bad.any(), (fmt, float(err[bad].max()), float(radius[bad].min()))
    finite = (radius > 0) & np.isfinite(radius)
    return float(np.max(np.where(finite, err / np.where(finite, radius, 1.0), 0.0)))


def random_layer(rng: np.random.Generator, c: int, adversarial: bool) -> tuple[BatchNorm, float]:
    if adversarial:  # large means, tiny or huge variances, cancelling biases
        mean = rng.choice([1.0, -1.0], c) * 10 ** rng.uniform(0, 4.5, c)
        var = 10 ** rng.uniform(-9, 3, c)
        w = rng.standard_normal(c) * 10 ** rng.uniform(-2, 2, c)
        b = rng.standard_normal(c) * 10 ** rng.uniform(-2, 3, c)
    else:
        mean, var = rng.standard_normal(c), rng.uniform(0.2, 3, c)
        w, b = rng.uniform(0.5, 2, c), rng.standard_normal(c) * 0.3
    layer = BatchNorm(mean, var, w, b, eps=float(rng.choice([1e-5, 1e-3, 1e-8])))
    return layer, float(np.sqrt(var.max()))


def test_torch_cpu_folds_with_one_fma() -> None:
    """The model of the kernel in BatchNorm.forward, checked bit for bit (fp16, fp32)."""
    rng = np.random.default_rng(3)
    c = 5
    m = 1000 + rng.standard_normal(c) * 10
    layer = BatchNorm(m, rng.uniform(1e-3, 1e-2, c), rng.uniform(0.5, 2, c), rng.standard_normal(c))
    x = m[None, :, None, None] + rng.standard_normal((3, c, 8, 8)) * 0.1
    f32 = np.float32
    for fmt, np_dt in (("binary16", np.float16), ("binary32", np.float32)):
        xs, mt, vt, wt, bt = (a.astype(np_dt).astype(f32) for a in (x, m, layer.running_var,
                                                                     layer.weight, layer.bias))
        alpha = wt * (f32(1) / np.sqrt(vt + f32(layer.eps)))
        sh = (1, c, 1, 1)
        got = torch_bn(layer, x, DTYPES[fmt])
        # beta = b - m alpha fused (fp32 kernel) or rounded twice (fp16 kernel)
        fused = (bt.astype(np.float64) - mt.astype(np.float64) * alpha).astype(f32)
        for beta in (fused, bt - mt * alpha):
            y = (xs.astype(np.float64) * alpha.reshape(sh) + beta.reshape(sh)).astype(f32)
            if np.array_equal(y.astype(np_dt).astype(np.float64), got):
                break
        else:
            raise AssertionError(f"{fmt}: torch's BatchNorm is not x alpha + beta with one FMA")


def test_issue_case_large_mean() -> None:
    """The reported case: mean 1000, small variance, fp16 (|y16 - y32| = 5 > B = 4.003)."""
    rng = np.random.default_rng(0)
    c = 4
    mean = np.full(c, 1000.0) + rng.uniform(-0.5, 0.5, c)
    layer = BatchNorm(mean, np.full(c, 1e-3), np.ones(c), np.zeros(c))
    x = mean[None, :] + rng.standard_normal((64, c)) * 0.05
    for fmt in DTYPES:
        assert check(layer, x, fmt) <= 1


@pytest.mark.parametrize("adversarial", [False, True])
def test_random_batchnorm_within_bound(adversarial: bool) -> None:
    rng = np.random.default_rng(11 + adversarial)
    worst = dict.fromkeys(DTYPES, 0.0)
    for trial in range(40):
        c = int(rng.integers(1, 6))
        layer, sd = random_layer(rng, c, adversarial)
        shape = [(int(rng.integers(1, 40)), c), (2, c, 3, 5), (1, c, 7, 9)][trial % 3]
        sh = (1, c) + (1,) * (len(shape) - 2)
        x = layer.running_mean.reshape(sh) + rng.standard_normal(shape) * 3 * sd
        for fmt in DTYPES:
            if not np.all(np.isfinite(fround(x, get_format(fmt)))):
                continue
            worst[fmt] = max(worst[fmt], check(layer, x, fmt, channels_last=len(shape) == 4
                                               and trial % 2 == 0))  # fmt: skip
    assert all(v <= 1 for v in worst.values()), worst
