"""The numpy backward pass of a dense model (float64 gradients of the training loss)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..arith import Exact
from ..errors import FperrInputError
from ..layers import Activation, Dense, Dropout, Flatten, Layer, Reshape, Softmax
from .constants import ACTIVATIONS, Array

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model


# -- the numpy backward pass of a dense model ------------------------------------------
def _training_layers(model: Model) -> list[Layer]:
    """The model's layers without a final softmax; refuses what the backward pass lacks."""
    layers = list(model.layers)
    if layers and isinstance(layers[-1], Softmax):
        layers = layers[:-1]
    for i, layer in enumerate(layers):
        if isinstance(layer, Dense | Flatten | Reshape | Dropout):
            continue
        if isinstance(layer, Activation) and layer.type in ACTIVATIONS:
            continue
        raise FperrInputError(
            "check-training supports dense models (dense, relu/tanh/sigmoid, flatten, reshape, "
            f"dropout, a final softmax); layer {i} is {layer.type}"
        )
    if not any(isinstance(layer, Dense) for layer in layers):
        raise FperrInputError("check-training needs a model with at least one dense layer")
    return layers


def _activation(kind: str, z: Array) -> Array:
    if kind == "relu":
        return np.maximum(z, 0.0)
    if kind == "tanh":
        return np.tanh(z)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-z))


@dataclass(frozen=True, eq=False)
class Backward:
    """Forward and backward pass of one batch, float64.

    ``loss``: mean softmax cross-entropy (unscaled).  ``grads``: parameter
    name (``"{layer}.weight"``/``"{layer}.bias"``, the keys of the example
    models' state dicts) -> ``loss_scale * dloss/dparam``.  ``outputs[i]``:
    output of layer ``i`` (``outputs[-1]`` the logits); ``output_grads[i]``:
    ``loss_scale * dloss/doutputs[i]``.
    """

    loss: float
    grads: dict[str, Array]
    params: dict[str, Array]
    inputs: Array
    outputs: list[Array]
    output_grads: list[Array]


def _check_labels(labels: npt.ArrayLike | None, n: int, classes: int) -> npt.NDArray[np.int64]:
    if labels is None:
        raise FperrInputError("check-training needs class labels for the loss (none given)")
    y = np.asarray(labels)
    if y.ndim != 1 or len(y) != n:
        raise FperrInputError(f"labels have shape {list(y.shape)}; expected [{n}]")
    if y.dtype.kind not in "iu" and not (y.dtype.kind == "f" and np.all(y == np.round(y))):
        raise FperrInputError("labels must be integer class indices")
    yi = y.astype(np.int64)
    if n and (yi.min() < 0 or yi.max() >= classes):
        raise FperrInputError(
            f"labels must lie in [0, {classes - 1}] (the model has {classes} outputs); "
            f"got {yi.min()}..{yi.max()}"
        )
    return yi


def backward(
    model: Model, X: npt.ArrayLike, labels: npt.ArrayLike, loss_scale: float = 1.0
) -> Backward:
    """Gradients of the mean softmax cross-entropy of a dense model, in float64."""
    from ..model import check_inputs

    layers = _training_layers(model)
    h = check_inputs(X, model.input_shape)
    out_shape = model.shapes()[len(layers)]
    if len(out_shape) != 1:
        raise FperrInputError(f"the model's output has shape {list(out_shape)}; expected logits")
    y = _check_labels(labels, h.shape[0], out_shape[0])
    n = h.shape[0]
    outputs: list[Array] = []
    x = h
    for layer in layers:
        if isinstance(layer, Dense):
            x = x @ layer.weight.T
            if layer.bias is not None:
                x = x + layer.bias
        elif isinstance(layer, Activation):
            x = _activation(layer.type, x)
        elif isinstance(layer, Flatten | Reshape):
            x = layer.forward(x, Exact())
        outputs.append(x)
    logits = outputs[-1]
    shifted = logits - logits.max(axis=1, keepdims=True)
    logsum = np.log(np.exp(shifted).sum(axis=1))
    loss = float(np.mean(logsum - shifted[np.arange(n), y]))
    d = np.exp(shifted - logsum[:, None])
    d[np.arange(n), y] -= 1.0
    d *= loss_scale / n

    grads: dict[str, Array] = {}
    params: dict[str, Array] = {}
    output_grads: list[Array] = [d] * len(layers)
    for i in range(len(layers) - 1, -1, -1):
        layer = layers[i]
        inp = h if i == 0 else outputs[i - 1]
        output_grads[i] = d
        if isinstance(layer, Dense):
            grads[f"{i}.weight"] = d.T @ inp
            params[f"{i}.weight"] = layer.weight
            if layer.bias is not None:
                grads[f"{i}.bias"] = d.sum(axis=0)
                params[f"{i}.bias"] = layer.bias
            d = d @ layer.weight
        elif isinstance(layer, Activation):
            out = outputs[i]
            if layer.type == "relu":
                d = d * (inp > 0)
            elif layer.type == "tanh":
                d = d * (1.0 - out * out)
            else:
                d = d * (out * (1.0 - out))
        else:
            d = d.reshape(inp.shape)

    def forward_order(item: tuple[str, Array]) -> tuple[int, str]:
        return int(item[0].split(".")[0]), item[0]

    return Backward(
        loss,
        dict(sorted(grads.items(), key=forward_order)),
        dict(sorted(params.items(), key=forward_order)),
        h,
        outputs,
        output_grads,
    )
