"""A high-precision reference executor on mpmath numbers.

:func:`run_mpmath` runs an IR model on a small batch with every operation in
``dps`` significant decimal digits (mpmath's ``workdps``; the global mpmath
precision is left alone).  Each operator's ``mpmath_forward`` (in its own
module of :mod:`fperr.operators`) is written independently of its numpy
forward pass (direct loops, no im2col, batch norm and layer norm from their
definitions) so that this executor can serve as the reference in
soundness tests of the error bounds: with ``dps=50`` its own error is far
below anything a float64, let alone a binary16, computation can show.

Inputs and weights are float64 values, taken exactly.  Results are numpy
object arrays of ``mpmath.mpf`` (``as_float64`` converts).  Cost is about a
microsecond per multiply-add of pure Python per input: keep batches and
models small (the digits MLP takes ~0.1 s per input).  Graph models run node by
node in their order, each node reading the outputs its wiring names.
"""

from __future__ import annotations

import mpmath
import numpy as np
import numpy.typing as npt

from .errors import FperrInputError
from .layers import (
    Layer,
    Residual,
    is_merge,
)
from .model import Model, check_inputs
from .operators import Operator

__all__ = ["as_float64", "mpmath_activations", "run_mpmath", "to_mp"]

Obj = npt.NDArray[np.object_]


def to_mp(a: npt.ArrayLike) -> Obj:
    """float64 values as an object array of exactly equal ``mpf``."""
    x = np.asarray(a, dtype=np.float64)
    out = np.empty(x.shape, dtype=object)
    flat = out.reshape(-1)
    for i, v in enumerate(x.reshape(-1)):
        flat[i] = mpmath.mpf(float(v))
    return out


def as_float64(a: Obj) -> npt.NDArray[np.float64]:
    """Round an object array of mpf to float64 (nearest)."""
    return np.asarray(a, dtype=object).astype(np.float64)


def _forward(layer: Layer, x: Obj) -> Obj:
    if isinstance(layer, Residual):
        h = x
        for sub in layer.layers:
            h = _forward(sub, h)
        return x + h  # elementwise mpf additions
    return _node(layer, [x])


def _node(layer: Layer, xs: list[Obj]) -> Obj:
    """One operator's output from its inputs (each operator's own mpmath forward)."""
    if isinstance(layer, Operator):
        return layer.mpmath_forward(xs)
    raise FperrInputError(f"run_mpmath: unsupported layer type {layer.type!r}")


def run_mpmath(model: Model, X: npt.ArrayLike, dps: int = 50) -> Obj:
    """Outputs of ``model`` on the batch ``X``, computed with ``dps`` decimal digits.

    Returns an object array of ``mpmath.mpf`` of shape ``(N, *output_shape)``.
    ``X`` is checked like :meth:`Model.forward` (shape, finiteness) and taken
    exactly.
    """
    return mpmath_activations(model, X, dps)[-1]


def mpmath_activations(model: Model, X: npt.ArrayLike, dps: int = 50) -> list[Obj]:
    """The input and every layer's output, like :meth:`Model.activations`."""
    x = check_inputs(X, model.input_shape)
    with mpmath.workdps(dps):
        hs = [to_mp(x)]
        for i, layer in enumerate(model.layers):
            ins = [hs[j + 1] for j in model.inputs_of(i)]  # a chain: the layer before
            hs.append(_node(layer, ins) if is_merge(layer) else _forward(layer, ins[0]))
    return hs
