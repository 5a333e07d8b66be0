"""scikit-learn multi-layer perceptrons into the fperr IR.

``from_sklearn(clf)`` converts a fitted ``MLPClassifier`` or ``MLPRegressor``:
its ``coefs_`` (in, out) and ``intercepts_`` become dense layers (weights
transposed to fperr's (out, in)), ``activation`` the hidden activations
(``relu``, ``tanh``, ``logistic`` as sigmoid, ``identity`` as none).  The
model's output is the last layer's pre-activation, the quantity a certificate
is about: the logits of a multi-class classifier (its softmax is monotone),
and for a two-class classifier its single logit, whose sign is the class
(``fperr.certify`` certifies |y| > M).  scikit-learn is not imported here: any
object with those attributes converts.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import SpecError
from ..layers import Activation, Dense, Layer
from ..model import Model

_ACTIVATIONS = {"relu": "relu", "tanh": "tanh", "logistic": "sigmoid", "identity": None}


def from_sklearn(estimator: Any, name: str | None = None) -> Model:
    """A fitted scikit-learn MLP as a :class:`~fperr.model.Model` (see the module
    docstring); anything else raises :class:`~fperr.errors.SpecError` in one line."""
    kind = type(estimator).__name__
    coefs = getattr(estimator, "coefs_", None)
    intercepts = getattr(estimator, "intercepts_", None)
    if coefs is None or intercepts is None:
        raise SpecError(f"{kind}: not a fitted scikit-learn MLP (no coefs_/intercepts_); "
                        "fit it first, or export other models to ONNX")  # fmt: skip
    act = getattr(estimator, "activation", "relu")
    if act not in _ACTIVATIONS:
        raise SpecError(f"{kind}: activation {act!r} is not supported "
                        f"(have: {', '.join(_ACTIVATIONS)})")  # fmt: skip
    if len(coefs) != len(intercepts) or not coefs:
        raise SpecError(f"{kind}: {len(coefs)} weight matrices for {len(intercepts)} biases")
    layers: list[Layer] = []
    for i, (w, b) in enumerate(zip(coefs, intercepts, strict=True)):
        w64, b64 = np.asarray(w, dtype=np.float64), np.asarray(b, dtype=np.float64)
        if w64.ndim != 2 or b64.shape != (w64.shape[1],):
            raise SpecError(f"{kind}: layer {i} has weights {list(w64.shape)} and bias "
                            f"{list(b64.shape)}")  # fmt: skip
        if i and w64.shape[0] != coefs[i - 1].shape[1]:
            raise SpecError(f"{kind}: layer {i} takes {w64.shape[0]} inputs, the layer "
                            f"before gives {coefs[i - 1].shape[1]}")  # fmt: skip
        layers.append(Dense(w64.T.copy(), b64.copy()))
        hidden = _ACTIVATIONS[act]
        if i < len(coefs) - 1 and hidden is not None:
            layers.append(Activation(hidden))
    n_in = int(np.asarray(coefs[0]).shape[0])
    return Model(name or kind, (n_in,), tuple(layers))
