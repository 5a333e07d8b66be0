"""A short emulated training run that confirms or refutes check_training's predictions.

Every stored tensor -- parameters, Adam's ``m`` and ``v``, batch norm's
running statistics -- is held in the format and each update rounds once per
PyTorch tensor operation (single-tensor Adam: ``m.lerp_``, ``v.mul_`` then
``addcmul_``, ``sqrt``, ``/ sqrt(bc2)``, ``+ eps``, ``addcdiv_``).  The
gradients are the float64 gradients at the stored weights, rounded once
(times the loss scale, then unscaled), as in :func:`check_training`; the
forward/backward arithmetic itself is not emulated.  Numpy only: it runs for
every model the check supports, without torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ..formats import Format
from ..layers import BatchNorm, Layer, Residual
from ..operators.constant import Constant
from ..operators.linear import Linear
from ..rounding import round as fround
from .backward import Wiring, backward_layers
from .constants import Array
from .lost import lost_updates
from .running_stats import MOMENTUM, batchnorms, scale_error, update


@dataclass(frozen=True)
class Confirmation:
    """One prediction and what the emulated run observed."""

    prediction: str
    observed: str
    status: str  # "confirmed", "refuted", or "not predicted" (seen in the run only)

    def to_dict(self) -> dict[str, str]:
        return {"prediction": self.prediction, "observed": self.observed, "status": self.status}


@dataclass
class RunStats:
    """What the emulated run measured, pooled over its steps."""

    steps: int = 0
    nan_step: int | None = None
    updates: dict[str, int] | None = None
    lost: dict[str, int] | None = None
    grad_l1: dict[str, float] | None = None
    underflow_l1: dict[str, float] | None = None
    max_update: float = 0.0
    norm_scale_error: dict[str, float] | None = None
    losses: list[float] | None = None


def _with_params(layer: Layer, p: dict[str, Array], key: str) -> Layer:
    """``layer`` with its parameters (and running statistics) taken from ``p``."""
    if isinstance(layer, Residual):
        subs = tuple(_with_params(s, p, f"{key}.{j}") for j, s in enumerate(layer.layers))
        return replace(layer, layers=subs)
    names = ("weight", "bias", "running_mean", "running_var")
    new = {n: p[f"{key}.{n}"] for n in names if f"{key}.{n}" in p}
    if not new:
        return layer
    if isinstance(layer, Linear):  # plain classes (not dataclasses): built anew
        return Linear(new.get("weight", layer.weight), new.get("bias", layer.bias))
    if isinstance(layer, Constant):
        return Constant(new["weight"])
    return replace(layer, **new)  # type: ignore[type-var]


def _adam(w: Array, g: Array, st: dict[str, Any], t: int, f: Format, lr: float, eps: float,
          b1: float, b2: float) -> Array:  # fmt: skip
    """The update u (w <- round(w - u)) of PyTorch's single-tensor Adam, states in ``f``."""
    st["m"] = fround(st["m"] + (1 - b1) * (g - st["m"]), f)
    st["v"] = fround(fround(b2 * st["v"], f) + (1 - b2) * g * g, f)
    den = fround(fround(np.sqrt(st["v"]), f) / math.sqrt(1 - b2**t), f)
    den = fround(den + eps, f)
    return (lr / (1 - b1**t)) * (st["m"] / den)


def emulated_run(
    layers: list[Layer], X: Array, y: npt.NDArray[np.int64], batches: list[npt.NDArray[np.int64]],
    f: Format, optimizer: str, lr: float, eps: float, betas: tuple[float, float],
    loss_scale: float, steps: int, wiring: Wiring | None = None,
) -> RunStats:  # fmt: skip
    """``steps`` optimizer steps on ``batches`` (cycled) with every state held in ``f``.

    ``wiring``: a graph model's (:func:`~fperr.training.backward.training_wiring`);
    the rebuilt layers keep it, so only the parameters change between steps."""
    b1, b2 = betas
    params: dict[str, Array] = {}
    shadow: dict[str, Array] = {}  # float64 running variances, for the scale error
    for key, bn in batchnorms(layers).items():
        params[f"{key}.running_mean"] = fround(bn.running_mean, f)
        params[f"{key}.running_var"] = fround(bn.running_var, f)
        shadow[key] = bn.running_var.copy()
    r = RunStats(updates={}, lost={}, grad_l1={}, underflow_l1={}, norm_scale_error={},
                 losses=[])  # fmt: skip
    state: dict[str, dict[str, Any]] = {}
    with np.errstate(all="ignore"):
        for t in range(1, steps + 1):
            idx = batches[(t - 1) % len(batches)]
            cur = [_with_params(layer, params, str(i)) for i, layer in enumerate(layers)]
            bw = backward_layers(cur, X[idx], y[idx], loss_scale, wiring)
            assert r.losses is not None
            r.losses.append(bw.loss)
            for name, gs in bw.grads.items():
                params[name] = _step(r, state, name, fround(bw.params[name], f), gs, t, f,
                                     optimizer, lr, eps, b1, b2, loss_scale)  # fmt: skip
            _running(r, params, shadow, bw.batchnorm, dict(batchnorms(cur)), f)
            r.steps = t
            if not all(bool(np.isfinite(v).all()) for v in params.values()):
                r.nan_step = t
                break
    return r


def _step(r: RunStats, state: dict[str, dict[str, Any]], name: str, w: Array, gs: Array, t: int,
          f: Format, optimizer: str, lr: float, eps: float, b1: float, b2: float,
          S: float) -> Array:  # fmt: skip
    """One parameter tensor's step; accumulates underflow and lost-update counts."""
    assert r.updates is not None and r.lost is not None
    assert r.grad_l1 is not None and r.underflow_l1 is not None
    g_scaled = fround(gs, f)
    flushed = (gs != 0) & (g_scaled == 0)
    r.grad_l1[name] = r.grad_l1.get(name, 0.0) + float(np.abs(gs).sum())
    r.underflow_l1[name] = r.underflow_l1.get(name, 0.0) + float(np.abs(gs[flushed]).sum())
    g = g_scaled if S == 1.0 else fround(g_scaled / S, f)
    if optimizer == "sgd":
        u = lr * g
    else:
        st = state.setdefault(name, {"m": np.zeros_like(w), "v": np.zeros_like(w)})
        u = _adam(w, g, st, t, f, lr, eps, b1, b2)
    fin = np.isfinite(u) & (u != 0)
    r.updates[name] = r.updates.get(name, 0) + int(np.count_nonzero(fin))
    r.lost[name] = r.lost.get(name, 0) + int(np.count_nonzero(fin & lost_updates(w, -u, f)))
    if fin.any():
        r.max_update = max(r.max_update, float(np.abs(u[fin]).max()))
    return fround(w - u, f)


def _running(r: RunStats, params: dict[str, Array], shadow: dict[str, Array],
             batch: dict[str, tuple[Array, Array, int]], bns: dict[str, BatchNorm],
             f: Format) -> None:  # fmt: skip
    """Batch norm's running statistics, stored in ``f``, and their float64 shadow."""
    assert r.norm_scale_error is not None
    for key, stats in batch.items():
        rm, rv = params[f"{key}.running_mean"], params[f"{key}.running_var"]
        new_m, new_v = update(rm, rv, stats, MOMENTUM)
        params[f"{key}.running_mean"], params[f"{key}.running_var"] = fround(new_m, f), fround(
            new_v, f)  # fmt: skip
        shadow[key] = update(shadow[key], shadow[key], stats, MOMENTUM)[1]
        err = float(scale_error(shadow[key], params[f"{key}.running_var"], bns[key].eps, f).max())
        r.norm_scale_error[key] = max(r.norm_scale_error.get(key, 0.0), err)


def confirm(report: Any, r: RunStats, limits: Any) -> tuple[Confirmation, ...]:
    """Match each hazard of ``report`` (a TrainingReport) with what run ``r`` observed."""
    from .assess import noise_tensors
    from .constants import NORM_SCALE_LIMIT
    from .report import _pct

    out: list[Confirmation] = []

    def add(pred: str, observed: str, seen: bool, predicted: bool = True) -> None:
        status = ("confirmed" if seen else "refuted") if predicted else "not predicted"
        out.append(Confirmation(pred, observed, status))

    nan_seen = r.nan_step is not None
    obs = f"NaN/inf weights after step {r.nan_step}" if nan_seen else f"finite for {r.steps} steps"
    if report.predicts_nan:
        add("NaN/inf weights after the first step", obs, r.nan_step == 1)
    else:
        add("finite weights", obs, not nan_seen, predicted=not nan_seen)
    assert r.lost is not None and r.updates is not None
    assert r.grad_l1 is not None and r.underflow_l1 is not None
    noisy = noise_tensors(report.params)  # no underflow predicted for an exact zero
    for p in report.params:
        if p.lost > limits.stagnation:
            lost = r.lost.get(p.name, 0) / max(r.updates.get(p.name, 0), 1)
            add(f"{p.name}: {_pct(p.lost)} of updates lost", f"{_pct(lost)} lost",
                lost > limits.stagnation)  # fmt: skip
        if p.grad_underflow_mass > limits.underflow and p.name not in noisy:
            l1 = r.grad_l1.get(p.name, 0.0)
            mass = r.underflow_l1.get(p.name, 0.0) / l1 if l1 else 0.0
            add(f"{p.name}: underflowing gradients carry {_pct(p.grad_underflow_mass)}",
                f"{_pct(mass)}", mass > limits.underflow)  # fmt: skip
    big = max((p.max_update_ratio for p in report.params), default=0.0)
    if report.optimizer == "adam" and big > limits.update:
        ratio = r.max_update / report.lr
        add(f"updates up to {big:.3g} x lr", f"up to {ratio:.3g} x lr", ratio > limits.update)
    assert r.norm_scale_error is not None
    for n in report.norms:
        seen_err = r.norm_scale_error.get(n.name, 0.0)
        if n.scale_error > NORM_SCALE_LIMIT:
            add(f"batchnorm {n.name}: scale off by {n.scale_error:.2g}", f"{seen_err:.2g}",
                seen_err > NORM_SCALE_LIMIT)  # fmt: skip
        elif seen_err > NORM_SCALE_LIMIT:
            add(f"batchnorm {n.name}: scale within {n.scale_error:.2g}", f"{seen_err:.2g}",
                True, predicted=False)  # fmt: skip
    return tuple(out)
