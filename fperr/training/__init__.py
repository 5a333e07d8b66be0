"""Standalone low-precision training: predict the optimizer's hazards before they bite.

"Standalone" (or "pure") 16-bit training keeps the parameters, the gradients
*and* the optimizer states in the 16-bit format: no fp32 master weights, no
autocast, no loss scaling (Yun et al., "Standalone 16-bit Training",
arXiv:2305.10947).  Some optimizer settings that are harmless in fp32 break
it.  The classic one is Adam's ``eps=1e-8``, which rounds to 0 in binary16
(smallest subnormal 2**-24 ~ 5.96e-8): wherever the second moment
``v = (1 - beta2) g**2`` is 0 the update ``m / (sqrt(v) + eps)`` is 0/0 = NaN
(``g == 0``: a constant-zero input pixel, a dead ReLU unit) or x/0 = inf
(``g != 0`` but ``(1 - beta2) g**2`` underflowed).

:func:`check_training` predicts such hazards *without training*: it runs the
model's forward and backward passes on its data in float64 (numpy only, training
mode; chains and graphs of dense, linear, conv2d, max/avg pooling, batch/layer
norm, residual blocks, add, concat, mul, matmul, permute, slice, scale,
constant, mean, sum, shape, dropout, softmax and activation layers, an
optional final softmax, softmax cross-entropy loss; see :mod:`.layer_grads`),
rounds the gradients to the format and
replays the first optimizer step the way PyTorch's single-tensor Adam/SGD
does it on 16-bit tensors:

* every tensor operation rounds its result once to the format (PyTorch's CPU
  kernels compute reduced-precision elementwise ops in fp32 "opmath" and
  round once);
* Python-scalar constants (lr, betas, eps, bias corrections) enter those ops
  at fp32 precision, *not* rounded to the format.  eps still vanishes: it is
  added to ``sqrt(v_hat)`` and the sum is rounded to the format.  The report
  also lists how the constants round in the format, which matters for
  implementations that hold them there.

Adam's first step is ``m = round((1-b1) g)``, ``v = round((1-b2) g*g)``,
``den = round(round(round(sqrt(v)) / sqrt(1-b2)) + eps)``,
``w <- round(w - lr/(1-b1) * m/den)``; SGD's is ``w <- round(w - lr g)``.
Each mini-batch of the data is treated as a possible first step, and the
statistics are pooled over the batches.  The first step is where 0/0 strikes;
later Adam steps have ``|m_hat / sqrt(v_hat)| <= 1``-ish updates, so the
first step also gives the largest updates, and the lost-update fractions are
a lower bound for later steps with smaller updates.

What is *not* modelled: the rounding errors of the 16-bit forward/backward
pass itself (the gradients are float64 values rounded once to the format),
and the dynamics of later steps.

:func:`train_pure` runs the real experiment in PyTorch (CPU or whatever
device is given) for comparison; torch is imported only there.
"""

from __future__ import annotations

from .assess import recommended_eps
from .backward import Backward, backward
from .check import check_training
from .constants import ACTIVATIONS as ACTIVATIONS
from .constants import HEADROOM as HEADROOM
from .constants import OPTIMIZERS as OPTIMIZERS
from .constants import STAGNATION_LIMIT as STAGNATION_LIMIT
from .constants import UNDERFLOW_LIMIT as UNDERFLOW_LIMIT
from .constants import UPDATE_LIMIT as UPDATE_LIMIT
from .constants import UPDATE_NOTE as UPDATE_NOTE
from .constants import Array as Array
from .experiment import TrainRun, initial_model, stratified_split, train_pure
from .lost import lost_updates
from .report import Constant, Finding, LayerStats, ParamStats, TrainingReport

__all__ = [
    "Backward",
    "Constant",
    "Finding",
    "LayerStats",
    "ParamStats",
    "TrainRun",
    "TrainingReport",
    "backward",
    "check_training",
    "initial_model",
    "lost_updates",
    "recommended_eps",
    "stratified_split",
    "train_pure",
]
