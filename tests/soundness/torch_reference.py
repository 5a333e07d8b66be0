"""torch CPU modules built from fperr layer parameters, for the soundness
suite (not through fperr's own torch executor).

Each IR layer becomes the torch module a user would write: ``nn.Linear``,
``nn.Conv2d``, ``nn.MaxPool2d`` / ``nn.AvgPool2d`` (padding counted in the
average, as fperr's IR divides by the window size), ``nn.LeakyReLU``,
``nn.GELU`` (erf form), ``nn.BatchNorm1d/2d`` in eval mode, ``nn.LayerNorm``,
``nn.Softmax``, and small modules for reshape and residual blocks.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

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

DTYPES = {"binary16": torch.float16, "bfloat16": torch.bfloat16, "binary32": torch.float32}


class _Reshape(nn.Module):
    def __init__(self, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape((x.shape[0], *self.shape))


class _Residual(nn.Module):
    def __init__(self, branch: nn.Module) -> None:
        super().__init__()
        self.branch = branch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.branch(x)


def _param(v: npt.NDArray[np.float64]) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(np.array(v, dtype=np.float64)), requires_grad=False)


def _linear(layer: Dense) -> nn.Module:
    out, n = layer.weight.shape
    m = nn.Linear(n, out, bias=layer.bias is not None, dtype=torch.float64)
    m.weight = _param(layer.weight)
    if layer.bias is not None:
        m.bias = _param(layer.bias)
    return m


def _conv(layer: Conv2d) -> nn.Module:
    co, cg, kh, kw = layer.weight.shape
    m = nn.Conv2d(
        cg * layer.groups,
        co,
        (kh, kw),
        layer.stride,
        layer.padding,
        layer.dilation,
        layer.groups,
        bias=layer.bias is not None,
        dtype=torch.float64,
    )
    m.weight = _param(layer.weight)
    if layer.bias is not None:
        m.bias = _param(layer.bias)
    return m


def _batchnorm(layer: BatchNorm, ndim: int) -> nn.Module:
    c = layer.running_mean.shape[0]
    affine = layer.weight is not None or layer.bias is not None
    cls = nn.BatchNorm2d if ndim == 3 else nn.BatchNorm1d
    m = cls(c, eps=layer.eps, affine=affine, dtype=torch.float64)
    m.running_mean = torch.from_numpy(np.array(layer.running_mean, dtype=np.float64))
    m.running_var = torch.from_numpy(np.array(layer.running_var, dtype=np.float64))
    if affine:
        m.weight = _param(np.ones(c) if layer.weight is None else layer.weight)
        m.bias = _param(np.zeros(c) if layer.bias is None else layer.bias)
    return m


def _layernorm(layer: LayerNorm) -> nn.Module:
    shape = tuple(layer.normalized_shape)
    m = nn.LayerNorm(shape, eps=layer.eps, dtype=torch.float64)
    m.weight = _param(np.ones(shape) if layer.weight is None else layer.weight)
    m.bias = _param(np.zeros(shape) if layer.bias is None else layer.bias)
    return m


def _activation(layer: Activation) -> nn.Module:
    if layer.type == "leaky_relu":
        return nn.LeakyReLU(layer.negative_slope)
    kinds = {"relu": nn.ReLU, "relu6": nn.ReLU6, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid,
             "gelu": nn.GELU}  # fmt: skip
    return kinds[layer.type]()


def module(layer: Any, shape: tuple[int, ...]) -> nn.Module:
    """One IR layer as a torch module (float64 parameters; cast with .to(dtype))."""
    if isinstance(layer, Dense):
        return _linear(layer)
    if isinstance(layer, Conv2d):
        return _conv(layer)
    if isinstance(layer, Pool2d):
        if layer.kind == "max":
            return nn.MaxPool2d(layer.kernel, layer.stride, layer.padding)
        return nn.AvgPool2d(layer.kernel, layer.stride, layer.padding, count_include_pad=True)
    if isinstance(layer, Flatten):
        return nn.Flatten()
    if isinstance(layer, Reshape):
        return _Reshape(tuple(layer.shape))
    if isinstance(layer, Dropout):
        return nn.Dropout(layer.p)
    if isinstance(layer, Activation):
        return _activation(layer)
    if isinstance(layer, Softmax):
        return nn.Softmax(dim=-1)
    if isinstance(layer, BatchNorm):
        return _batchnorm(layer, len(shape))
    if isinstance(layer, LayerNorm):
        return _layernorm(layer)
    if isinstance(layer, Residual):
        return _Residual(sequential(layer.layers, shape))
    raise TypeError(f"no torch module for {type(layer).__name__}")


def sequential(layers: Sequence[Any], shape: tuple[int, ...]) -> nn.Sequential:
    mods = []
    for layer in layers:
        mods.append(module(layer, shape))
        shape = layer.out_shape(shape)
    return nn.Sequential(*mods).eval()


def torch_run(
    layers: Sequence[Any], input_shape: tuple[int, ...], X: npt.ArrayLike, fmt: str
) -> npt.NDArray[np.float64]:
    """Outputs (N, K) of the model run by torch on the CPU in one format."""
    dtype = DTYPES[fmt]
    net = sequential(layers, input_shape).to(dtype)
    x = torch.from_numpy(np.asarray(X, dtype=np.float64)).to(dtype)
    with torch.no_grad():
        y = net(x)
    return y.to(torch.float64).reshape(y.shape[0], -1).numpy()


def batch_and_alone(
    layers: Sequence[Any], input_shape: tuple[int, ...], X: npt.ArrayLike, fmt: str
) -> list[npt.NDArray[np.float64]]:
    """:func:`torch_run` on the whole batch and on one input at a time (the kernel,
    and with it the summation order, may depend on the batch size)."""
    X = np.asarray(X, dtype=np.float64)
    alone = [torch_run(layers, input_shape, X[i : i + 1], fmt) for i in range(X.shape[0])]
    return [torch_run(layers, input_shape, X, fmt), np.concatenate(alone)]
