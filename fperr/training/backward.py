"""The numpy backward pass of a model (float64 gradients of the training loss)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..errors import FperrInputError
from ..layers import Layer, Residual, Softmax, parameters
from .constants import Array
from .layer_grads import Cache, backward_node, batchnorm_batches, forward_node, refuse_unsupported

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model

Wiring = tuple[tuple[int, ...], ...]
"""Per node, the indices of the nodes it reads (-1: the model input), as ``Model.inputs_of``."""


# -- the numpy backward pass ----------------------------------------------------------------
def _training_layers(model: Model) -> list[Layer]:
    """The model's layers without a final softmax; refuses what the backward pass lacks."""
    layers = list(model.layers)
    if layers and isinstance(layers[-1], Softmax):
        if model.inputs_of(len(layers) - 1) != (len(layers) - 2,):
            raise FperrInputError("check-training drops a final softmax only where it reads the "
                                  "layer before it (the logits)")  # fmt: skip
        layers = layers[:-1]
    for i, layer in enumerate(layers):
        refuse_unsupported(layer, str(i))
    if not any(parameters(layer) for layer in layers):
        raise FperrInputError("check-training needs a model with at least one trainable layer")
    return layers


@dataclass(frozen=True, eq=False)
class Backward:
    """Forward and backward pass of one batch, float64.

    ``loss``: mean softmax cross-entropy (unscaled).  ``grads``: parameter
    name (``"{layer}.weight"``/``"{layer}.bias"``, the keys of the example
    models' state dicts) -> ``loss_scale * dloss/dparam``.  ``outputs[i]``:
    output of layer ``i`` (``outputs[-1]`` the logits); ``output_grads[i]``:
    ``loss_scale * dloss/doutputs[i]``.  ``batchnorm``: batch-norm layer
    (``"{layer}"``, ``"{block}.{layer}"`` inside residual blocks) -> the batch
    mean and biased variance per channel and the element count per channel.
    ``input_grad``: ``loss_scale * dloss/dinputs``.  Graph models key their
    nodes by index as chains do (``"{node}.weight"``, a constant's
    ``"{node}.weight"`` its value).
    """

    loss: float
    grads: dict[str, Array]
    params: dict[str, Array]
    inputs: Array
    outputs: list[Array]
    output_grads: list[Array]
    batchnorm: dict[str, tuple[Array, Array, int]] = field(default_factory=dict)
    input_grad: Array | None = None


def training_wiring(model: Model, layers: list[Layer]) -> Wiring | None:
    """The wiring of the training layers of a graph model; None for a chain."""
    return tuple(model.inputs_of(i) for i in range(len(layers))) if model.is_graph else None


def _classes(model: Model, layers: list[Layer]) -> int:
    """The number of logits of the training layers' output; refuses any other output."""
    out_shape = model.shapes()[len(layers)]
    if len(out_shape) != 1:
        raise FperrInputError(f"the model's output has shape {list(out_shape)}; expected logits")
    return out_shape[0]


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
    """Gradients of the mean softmax cross-entropy of a model, in float64 (training mode)."""
    from ..model import check_inputs

    layers = _training_layers(model)
    h = check_inputs(X, model.input_shape)
    y = _check_labels(labels, h.shape[0], _classes(model, layers))
    return backward_layers(layers, h, y, loss_scale, training_wiring(model, layers))


def backward_layers(
    layers: list[Layer], h: Array, y: npt.NDArray[np.int64], loss_scale: float = 1.0,
    wiring: Wiring | None = None,
) -> Backward:  # fmt: skip
    """:func:`backward` on checked layers, inputs ``h`` and labels ``y``.

    ``wiring``: a graph's (:func:`training_wiring`), None for a chain.  Reverse
    mode over the DAG: each node's forward is cached in topological order, then
    the nodes are visited backwards; ``dL/d(value)`` of a value several nodes
    read is the sum of their contributions (the multivariable chain rule).
    """
    n = h.shape[0]
    wires = wiring if wiring is not None else tuple((i - 1,) for i in range(len(layers)))
    caches: list[Cache] = []
    for layer, ins in zip(layers, wires, strict=True):
        caches.append(forward_node(layer, [h if j < 0 else caches[j].y for j in ins]))
    outputs: list[Array] = [c.y for c in caches]
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
    bn: dict[str, tuple[Array, Array, int]] = {}
    pending: dict[int, Array] = {len(layers) - 1: d}  # dL/d(value of node j), summed so far
    for i in range(len(layers) - 1, -1, -1):
        d = pending.pop(i, None)
        d = np.zeros_like(caches[i].y) if d is None else d  # read by no later node
        output_grads[i] = d
        dxs, g = backward_node(layers[i], caches[i], d)
        for j, dx in zip(wires[i], dxs, strict=True):  # not in place: dx may alias d
            pending[j] = dx if j not in pending else pending[j] + dx
        for k, v in g.items():
            grads[f"{i}.{k}"] = v
            params[f"{i}.{k}"] = _param(layers[i], k)
        bn.update(batchnorm_batches(layers[i], caches[i], str(i)))
        caches[i].extra.clear()  # the node's patches and the like: freed as soon as used

    def forward_order(item: tuple[str, Array]) -> tuple[int, str]:
        return int(item[0].split(".")[0]), item[0]

    return Backward(
        loss,
        dict(sorted(grads.items(), key=forward_order)),
        dict(sorted(params.items(), key=forward_order)),
        h,
        outputs,
        output_grads,
        dict(sorted(bn.items())),
        pending.get(-1, np.zeros_like(h)),
    )


def _param(layer: Layer, key: str) -> Array:
    """The parameter ``key`` ("weight", or "{j}.weight" inside a residual block) of a layer."""
    head, _, rest = key.partition(".")
    if rest:
        assert isinstance(layer, Residual)
        return _param(layer.layers[int(head)], rest)
    value = getattr(layer, head)
    assert isinstance(value, np.ndarray)
    return value
