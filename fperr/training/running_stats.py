"""Batch norm's running statistics and eps when they are held in the training format.

In training mode batch norm updates ``running = (1 - momentum) running +
momentum * batch`` (PyTorch: opmath, then stored in the tensor's format; the
variance is the unbiased batch variance).  Held in binary16, a running
variance below 2**-25 ~ 3e-8 flushes to 0 and one below 6.1e-5 is subnormal
(fewer significant bits); the usual ``eps=1e-5`` is itself subnormal there
(it is 168 * 2**-24 = 1.0014e-5).  Inference then scales by
``1/sqrt(var + eps)``: :func:`replay_running_stats` measures how far that
scale moves when the variance, eps and their sum are held in the format (the
worst case; PyTorch adds a Python-float eps in fp32), and how many running
updates are lost (the stored value does not change though the exact update
would).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..formats import Format
from ..layers import BatchNorm, Layer, Residual
from ..rounding import round as fround
from .constants import Array
from .lost import lost_updates

MOMENTUM = 0.1
"""PyTorch's default batch-norm momentum."""


@dataclass(frozen=True)
class NormStats:
    """One batch-norm layer's running statistics after a replayed update, pooled over batches.

    ``var_zero`` / ``var_subnormal``: channels whose stored running variance
    is 0 (though the exact one is not) / subnormal in at least one batch;
    ``scale_error``: the largest relative error of the inference scale
    ``1/sqrt(var + eps)`` with ``var``, ``eps`` and their sum held in the
    format (inf: the sum is 0); ``lost``: fraction of the running-mean and
    running-variance updates that leave the stored value unchanged.
    """

    name: str
    channels: int
    eps: float
    eps_rounded: float
    var_min: float
    var_zero: int
    var_subnormal: int
    scale_error: float
    lost: float

    def to_dict(self) -> dict[str, Any]:
        from .report import _json_float

        return {k: _json_float(v) if isinstance(v, float) else v for k, v in vars(self).items()}


def batchnorms(layers: list[Layer], prefix: str = "") -> dict[str, BatchNorm]:
    """Every batch norm of a chain of layers, keyed as ``Backward.batchnorm`` keys them."""
    out: dict[str, BatchNorm] = {}
    for i, layer in enumerate(layers):
        if isinstance(layer, BatchNorm):
            out[f"{prefix}{i}"] = layer
        elif isinstance(layer, Residual):
            out.update(batchnorms(list(layer.layers), f"{prefix}{i}."))
    return out


def update(rm: Array, rv: Array, batch: tuple[Array, Array, int], momentum: float
           ) -> tuple[Array, Array]:  # fmt: skip
    """The exact running update from ``batch`` (mean, biased variance, count per channel)."""
    mu, var, m = batch
    unbiased = var * m / max(m - 1, 1)
    return (1 - momentum) * rm + momentum * mu, (1 - momentum) * rv + momentum * unbiased


def scale_error(rv_exact: Array, rv_stored: Array, eps: float, f: Format) -> Array:
    """Relative error of 1/sqrt(var + eps) with var, eps and the sum held in ``f``."""
    eps_f = float(fround(np.array([eps]), f)[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        held = fround(rv_stored + eps_f, f)
        exact = 1.0 / np.sqrt(rv_exact + eps)
        err = np.abs(1.0 / np.sqrt(held) - exact) / exact
    return np.where(held == 0, np.inf, err)


def _count(mask: Array | None) -> int:
    return 0 if mask is None else int(np.count_nonzero(mask))


@dataclass
class NormAcc:
    """Running sums over batches for one batch-norm layer."""

    layer: BatchNorm
    var_min: float = np.inf
    var_zero: Array | None = None
    var_sub: Array | None = None
    scale_err: float = 0.0
    lost: int = 0
    updates: int = 0

    def add(self, batch: tuple[Array, Array, int], f: Format, momentum: float = MOMENTUM) -> None:
        rm_f, rv_f = fround(self.layer.running_mean, f), fround(self.layer.running_var, f)
        new_m, new_v = update(rm_f, rv_f, batch, momentum)
        stored_v = fround(new_v, f)
        zero = (stored_v == 0) & (new_v != 0)
        sub = (stored_v != 0) & (np.abs(stored_v) < f.smallest_normal)
        self.var_zero = zero if self.var_zero is None else self.var_zero | zero
        self.var_sub = sub if self.var_sub is None else self.var_sub | sub
        self.var_min = min(self.var_min, float(new_v.min()))
        err = scale_error(new_v, stored_v, self.layer.eps, f)
        self.scale_err = max(self.scale_err, float(err.max()))
        for old, new in ((rm_f, new_m), (rv_f, new_v)):
            moved = new != old
            self.updates += int(np.count_nonzero(moved))
            self.lost += int(np.count_nonzero(moved & lost_updates(old, new - old, f)))

    def stats(self, name: str, f: Format) -> NormStats:
        eps = self.layer.eps
        return NormStats(
            name, int(self.layer.running_var.size), eps, float(fround(np.array([eps]), f)[0]),
            self.var_min, _count(self.var_zero), _count(self.var_sub), self.scale_err,
            self.lost / max(self.updates, 1),
        )  # fmt: skip
