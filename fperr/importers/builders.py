"""Layer builders and shape helpers shared by both importers."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import SpecError
from ..layers import Activation, Flatten, Layer, Reshape, Shape, Softmax
from .graph import Build, _Unsupported


# -- shape helpers shared by both importers -----------------------------------------------------
def _pair(v: Any) -> tuple[int, int]:
    if isinstance(v, int | np.integer):
        return (int(v), int(v))
    t = tuple(int(x) for x in v)
    if len(t) == 1:
        return (t[0], t[0])
    if len(t) != 2:
        raise _Unsupported(f"size {list(t)}: only 2-D")
    return (t[0], t[1])


def _flatten_layers(shape: Shape, new: Shape) -> list[Layer]:
    if tuple(new) == tuple(shape):
        return []
    if len(new) == 1:
        return [Flatten()]
    return [Reshape(tuple(new))]


def _flatten_dims(shape: Shape, start: int, end: int) -> list[Layer]:
    """Layers for torch.flatten(x, start, end) on a batch of ``shape`` inputs."""
    nd = len(shape) + 1
    s, e = start % nd if start < 0 else start, end % nd if end < 0 else end
    if s == 0:
        raise SpecError("flattening the batch dimension (start_dim=0) is not supported")
    if e < s:
        raise SpecError(f"flatten: end_dim {end} before start_dim {start}")
    new = shape[: s - 1] + (math.prod(shape[s - 1 : e]),) + shape[e:]
    return _flatten_layers(shape, new)


def _resolve(dims: Sequence[int], shape: Shape, what: str) -> Shape:
    """Per-input target shape: ``dims`` with at most one -1, same size as ``shape``."""
    size = math.prod(shape)
    if sum(d == -1 for d in dims) > 1 or any(d < -1 or d == 0 for d in dims):
        raise SpecError(f"{what}: cannot resolve target shape {list(dims)}")
    known = math.prod(d for d in dims if d != -1)
    if -1 in dims:
        if known == 0 or size % known:
            raise SpecError(f"{what}: cannot reshape {list(shape)} to {list(dims)}")
        dims = [size // known if d == -1 else d for d in dims]
    if math.prod(dims) != size:
        raise SpecError(f"{what}: cannot reshape {list(shape)} ({size} values) to {list(dims)}")
    return tuple(int(d) for d in dims)


def _softmax_build(dim: Any, coerce: bool = False) -> Build:
    """Softmax over ``dim`` of the batch (torch's dim, ONNX's axis: 0 is the batch).
    ``coerce``: ONNX before opset 13, a softmax over all dims from ``dim`` on (only
    the last dim alone is offered); ``dim`` None (torch's implicit dim): vectors."""

    def build(shape: Shape) -> list[Layer]:
        ndim = len(shape) + 1
        d = (1 if len(shape) == 1 else None) if dim is None else int(dim)
        if d is not None and -ndim <= d < ndim:
            d %= ndim
        if d is None or not 1 <= d < ndim or (coerce and d != ndim - 1):
            what = "all dims from " if coerce else "dim "
            raise SpecError(f"softmax over {what}{dim} of inputs {list(shape)} (batch dim 0): "
                            "only one dim other than the batch's is supported")  # fmt: skip
        return [Softmax(-1 if d == ndim - 1 else d - 1)]

    return build


def _const(layers: list[Layer]) -> Build:
    return lambda shape: list(layers)


def _gelu(approximate: str) -> tuple[Build, bool]:
    if approximate == "tanh":
        return _const([Activation("gelu_tanh")]), True
    if approximate != "none":
        raise _Unsupported(f"approximate={approximate!r}; only 'none' (erf) and 'tanh'")
    return _const([Activation("gelu")]), True
