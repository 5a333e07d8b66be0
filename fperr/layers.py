"""The model IR's layers: the registered operators, and residual blocks.

Every layer type is an operator class of :mod:`fperr.operators`, one module
per operator, holding its spec, shapes, forward pass (written once against
:mod:`fperr.arith`, so the same code runs exactly in float64 or emulated in
any format), bound rules and executors; this module re-exports the classes
under the names the rest of fperr and users' code import.

Shapes follow PyTorch: dense weight (out, in), conv weight (out, in/groups,
kh, kw), activations (N, C, H, W).  ``out_shape`` infers shapes without data
(per input, batch dimension excluded) and raises
:class:`~fperr.errors.SpecError` on a mismatch.

:class:`Residual` is not an operator but a block: y = x + F(x) with F a
nested chain of layers (the YAML ``residual:`` form).  The engines treat it
as a sub-chain: the backward engine pulls its branch back on its own tape,
the zonotope engine adds the branch's generators to the skip's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from .arith import Arithmetic
from .errors import SpecError
from .operators.activation import (
    ACTIVATION_TYPES,
    ACTIVATIONS,
    GELU_TANH_C,
    GELU_TANH_K,
    Activation,
    elu,
)
from .operators.add import Add
from .operators.base import Array, Shape
from .operators.batchnorm import BatchNorm
from .operators.checks import Pair
from .operators.concat import Concat
from .operators.conv2d import Conv2d, conv_output_size, im2col
from .operators.dense import Dense
from .operators.dropout import Dropout
from .operators.flatten import Flatten
from .operators.layernorm import LayerNorm
from .operators.pool2d import Pool2d
from .operators.reshape import Reshape
from .operators.rmsnorm import RMS_EPS_DEFAULT, RMSNorm
from .operators.softmax import Softmax, softmax

__all__ = [
    "ACTIVATIONS", "ACTIVATION_TYPES", "GELU_TANH_C", "GELU_TANH_K", "RMS_EPS_DEFAULT",
    "Activation", "Add", "Array", "BatchNorm", "Concat", "Conv2d", "Dense", "Dropout", "Flatten",
    "Layer", "LayerNorm", "Pair", "Pool2d", "RMSNorm", "Reshape", "Residual", "Shape", "Softmax",
    "conv_output_size", "elu", "im2col", "is_merge", "parameters", "softmax",
]  # fmt: skip


class Layer(Protocol):
    @property
    def type(self) -> str: ...

    def out_shape(self, shape: Shape) -> Shape: ...

    def forward(self, x: Array, arith: Arithmetic) -> Array: ...


@dataclass(frozen=True, eq=False)
class Residual:
    """y = x + F(x), F a nested list of layers with the same output shape."""

    layers: tuple[Layer, ...]
    type: str = "residual"

    def out_shape(self, shape: Shape) -> Shape:
        s = shape
        for i, layer in enumerate(self.layers):
            try:
                s = layer.out_shape(s)
            except SpecError as exc:
                raise SpecError(f"residual branch layer {i} ({layer.type}): {exc}") from None
        if s != shape:
            raise SpecError(f"residual: branch output {list(s)} differs from input {list(shape)}")
        return shape

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        h = x
        for layer in self.layers:
            h = layer.forward(h, arith)
        return arith.store(x + h)


def parameters(layer: Layer) -> list[Array]:
    """Every parameter array of a layer, those of a residual block's layers included."""
    if isinstance(layer, Residual):
        return [p for sub in layer.layers for p in parameters(sub)]
    return [v for v in vars(layer).values() if isinstance(v, np.ndarray)]


def is_merge(layer: object) -> bool:
    """Whether a layer reads several inputs (``merge``) rather than one (``forward``):
    operators of arity != 1 (add, concat, mul, matmul, ...)."""
    return getattr(layer, "arity", 1) != 1
