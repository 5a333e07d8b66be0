"""Supported optimizers and activations; the thresholds of the training checks."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

OPTIMIZERS = ("adam", "sgd")
ACTIVATIONS = ("relu", "tanh", "sigmoid")
STAGNATION_LIMIT = 0.9
"""A parameter tensor losing more than this fraction of its first-step updates is a hazard.

Heuristic: the first-step fraction overstates the long-run one (bigger
gradients of later batches still move some weights).  In the digits-MLP SGD
runs of ``examples/train_fp16_hazards.py``, 60-75% lost first steps left the
accuracy of fp32, 98% cost 15 points."""
UNDERFLOW_LIMIT = 0.01
"""More than this fraction of nonzero gradients flushing to 0 is a hazard."""
UPDATE_NOTE = 10.0
"""First-step updates above this many times lr are reported (eps dominates)."""
UPDATE_LIMIT = 1000.0
"""First-step updates above this many times lr are a hazard (Adam has become SGD with lr/eps)."""
HEADROOM = 8.0
"""Loss-scale suggestions keep the largest gradient this factor below the format's max."""
NORM_SCALE_LIMIT = 0.01
"""A batch norm whose inference scale 1/sqrt(var+eps) moves by more than this (relative)
when its running variance and eps are held in the format is a hazard."""
