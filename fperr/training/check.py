"""check_training: replay the first optimizer step of standalone low-precision training."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..errors import FperrInputError
from ..formats import Format, get_format
from ..rounding import round as fround
from .assess import Limits, Step, assess
from .backward import _check_labels, _classes, _training_layers, backward, training_wiring
from .constants import OPTIMIZERS, STAGNATION_LIMIT, UNDERFLOW_LIMIT, UPDATE_LIMIT, Array
from .emulate import confirm, emulated_run
from .lost import lost_updates
from .report import Constant, LayerStats, ParamStats, TrainingReport
from .running_stats import NormAcc, NormStats, batchnorms

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model


# -- the check ----------------------------------------------------------------------
def _round1(x: float, fmt: Format) -> float:
    return float(fround(np.array([x]), fmt)[0])


def _exponent_hist(x: Array) -> npt.NDArray[np.int64]:
    """Counts of nonzero finite |x| per binade [2**(k-1), 2**k), index k + 1100."""
    a = np.abs(x[np.isfinite(x) & (x != 0)])
    _, ex = np.frexp(a)
    return np.bincount(ex.astype(np.int64) + 1100, minlength=2200)


@dataclass
class _Acc:
    """Running sums for one parameter tensor."""

    w: Array
    entries: int = 0
    nonzero: int = 0
    zero: int = 0
    underflow: int = 0
    subnormal: int = 0
    overflow: int = 0
    g_nonzero_fmt: int = 0
    v_underflow: int = 0
    eps_dominated: int = 0
    updates: int = 0
    lost: int = 0
    grad_absmax: float = 0.0
    grad_l1: float = 0.0
    underflow_l1: float = 0.0
    error_l1: float = 0.0
    sq_grad_max: float = 0.0
    max_update: float = 0.0
    nan_mask: npt.NDArray[np.bool_] | None = None
    inf_mask: npt.NDArray[np.bool_] | None = None


def _validate(
    optimizer: str, lr: float, eps: float, betas: tuple[float, float], loss_scale: float,
    batch_size: int,
) -> str:  # fmt: skip
    opt = optimizer.lower()
    if opt not in OPTIMIZERS:
        raise FperrInputError(
            f"unknown optimizer {optimizer!r}; supported: {', '.join(OPTIMIZERS)}"
        )
    if not (math.isfinite(lr) and lr > 0):
        raise FperrInputError(f"lr must be a positive number, got {lr!r}")
    if not (math.isfinite(eps) and eps >= 0):
        raise FperrInputError(f"eps must be >= 0, got {eps!r}")
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise FperrInputError(f"betas must be two numbers in [0, 1), got {betas!r}")
    if not (math.isfinite(loss_scale) and loss_scale > 0):
        raise FperrInputError(f"loss_scale must be a positive number, got {loss_scale!r}")
    if batch_size < 1:
        raise FperrInputError(f"batch_size must be >= 1, got {batch_size}")
    return opt


def check_training(
    model: Model | str | Path,
    X: npt.ArrayLike,
    labels: npt.ArrayLike | None,
    optimizer: str = "adam",
    lr: float = 1e-3,
    eps: float = 1e-8,
    betas: tuple[float, float] = (0.9, 0.999),
    fmt: Format | str = "binary16",
    loss_scale: float = 1.0,
    batch_size: int = 32,
    *,
    max_batches: int | None = None,
    seed: int = 0,
    stagnation_limit: float = STAGNATION_LIMIT,
    underflow_limit: float = UNDERFLOW_LIMIT,
    update_limit: float = UPDATE_LIMIT,
    emulate_steps: int = 0,
) -> TrainingReport:
    """Predict the hazards of training ``model`` with parameters and optimizer states in ``fmt``.

    ``X``/``labels``: training inputs and class labels.  They are shuffled
    with ``seed`` and cut into batches of ``batch_size``; each of the first
    ``max_batches`` (default all) is replayed as the first optimizer step
    (see the module docstring).  ``loss_scale`` multiplies the loss: the
    backward pass sees ``S g`` (underflow, overflow), the optimizer the
    unscaled ``round(round(S g) / S)``.  The ``*_limit`` arguments set when a
    finding is a hazard rather than a note.  ``emulate_steps > 0`` then runs
    that many optimizer steps with every state held in ``fmt``
    (:func:`~fperr.training.emulate.emulated_run`) and records in
    ``confirmations`` whether each predicted hazard shows up.
    """
    from ..model import Model as _Model
    from ..model import check_inputs, load_model

    f = get_format(fmt)
    opt = _validate(optimizer, lr, eps, betas, loss_scale, batch_size)
    m = model if isinstance(model, _Model) else load_model(model)
    classes = _classes(m, _training_layers(m))
    Xa = np.asarray(X, dtype=np.float64)
    if Xa.ndim < 1 or Xa.shape[0] == 0:
        raise FperrInputError("check-training needs at least one input")
    y = _check_labels(labels, Xa.shape[0], classes)
    order = np.random.default_rng(seed).permutation(Xa.shape[0])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if max_batches is not None:
        batches = batches[: max(1, max_batches)]

    step = _step(f, opt, lr, eps, betas, loss_scale)
    stats = _first_steps(m, Xa, y, batches, step, betas)
    limits = Limits(stagnation_limit, underflow_limit, update_limit)
    input_max = float(np.abs(Xa).max(initial=0.0))
    findings, fixes = assess(step, stats.params, stats.layers, input_max, stats.hist, limits,
                             stats.norms)  # fmt: skip
    report = TrainingReport(
        model=m.name,
        fmt=f.name,
        optimizer=opt,
        lr=lr,
        eps=eps,
        betas=(float(betas[0]), float(betas[1])),
        loss_scale=loss_scale,
        batch_size=batch_size,
        n_batches=len(batches),
        n_inputs=int(sum(len(b) for b in batches)),
        loss=stats.loss,
        constants=step.constants,
        params=stats.params,
        layers=stats.layers,
        findings=tuple(findings),
        fixes=tuple(fixes),
        norms=stats.norms,
    )
    if emulate_steps < 1:
        return report
    layers = _training_layers(m)
    run = emulated_run(layers, check_inputs(Xa, m.input_shape), y, batches, f, opt, lr, eps,
                       (float(betas[0]), float(betas[1])), loss_scale, emulate_steps,
                       training_wiring(m, layers))  # fmt: skip
    return replace(report, confirmations=confirm(report, run, limits))


def _step(
    f: Format, opt: str, lr: float, eps: float, betas: tuple[float, float], loss_scale: float
) -> Step:
    """The optimizer's constants as given and as rounded to the training format."""
    b1, b2 = betas
    eps_f = _round1(eps, f)
    constants = [Constant("lr", lr, _round1(lr, f))]
    if opt == "adam":
        constants += [
            Constant("eps", eps, eps_f),
            Constant("beta1", b1, _round1(b1, f)),
            Constant("beta2", b2, _round1(b2, f)),
            Constant("1-beta2", 1 - b2, _round1(1 - b2, f)),
            Constant("1-round(beta2)", 1 - b2, _round1(1 - _round1(b2, f), f)),
        ]
    return Step(f, opt, lr, eps, eps_f, loss_scale, tuple(constants))


@dataclass
class _LayerAcc:
    """Running maxima and sums over batches for one layer's outputs and their gradients."""

    out_absmax: float = 0.0
    grad_absmax: float = 0.0
    underflow: int = 0
    nonzero: int = 0
    underflow_l1: float = 0.0
    l1: float = 0.0

    def add(self, out: Array, dout: Array, f: Format) -> None:
        self.out_absmax = max(self.out_absmax, float(np.abs(out).max(initial=0.0)))
        self.grad_absmax = max(self.grad_absmax, float(np.abs(dout).max(initial=0.0)))
        nz = dout != 0
        uf = nz & (fround(dout, f) == 0)
        self.underflow += int(np.count_nonzero(uf))
        self.nonzero += int(np.count_nonzero(nz))
        self.underflow_l1 += float(np.abs(dout[uf]).sum())
        self.l1 += float(np.abs(dout).sum())

    def stats(self, index: int, layer_type: str) -> LayerStats:
        return LayerStats(index, layer_type, self.out_absmax, self.grad_absmax,
                          self.underflow / max(self.nonzero, 1),
                          self.underflow_l1 / self.l1 if self.l1 else 0.0)  # fmt: skip


@dataclass(frozen=True)
class _Statistics:
    params: tuple[ParamStats, ...]
    layers: tuple[LayerStats, ...]
    hist: npt.NDArray[np.int64]
    loss: float
    norms: tuple[NormStats, ...] = ()


def _first_steps(
    m: Model,
    X: Array,
    y: npt.NDArray[np.int64],
    batches: list[npt.NDArray[np.int64]],
    step: Step,
    betas: tuple[float, float],
) -> _Statistics:
    """Replay the first optimizer step on every batch; collect the statistics."""
    f, lr = step.fmt, step.lr
    b1, b2 = betas
    step_size = lr / (1 - b1)  # torch: lr / bias_correction1, a Python float
    bc2_sqrt = math.sqrt(1 - b2)
    accs: dict[str, _Acc] = {}
    layer_acc: dict[int, _LayerAcc] = {}
    hist = np.zeros(2200, dtype=np.int64)
    losses = []
    layers = _training_layers(m)
    norm_acc = {name: NormAcc(bn) for name, bn in batchnorms(layers).items()}
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        for idx in batches:
            bw = backward(m, X[idx], y[idx], step.loss_scale)
            losses.append(bw.loss)
            for i, (out, dout) in enumerate(zip(bw.outputs, bw.output_grads, strict=True)):
                layer_acc.setdefault(i, _LayerAcc()).add(out, dout, f)
                hist += _exponent_hist(dout)
            for name, gs in bw.grads.items():
                if name not in accs:
                    accs[name] = _Acc(fround(bw.params[name], f))
                _replay(accs[name], gs, f, step.optimizer, step.loss_scale, lr, b1, b2,
                        step.eps, step_size, bc2_sqrt)  # fmt: skip
                hist += _exponent_hist(gs)
            for name, batch in bw.batchnorm.items():
                norm_acc[name].add(batch, f)
    params = tuple(_param_stats(name, a, lr) for name, a in accs.items())
    layer_stats = tuple(la.stats(i, layers[i].type) for i, la in sorted(layer_acc.items()))
    norms = tuple(a.stats(name, f) for name, a in norm_acc.items())
    return _Statistics(params, layer_stats, hist, float(np.mean(losses)), norms)


def _param_stats(name: str, a: _Acc, lr: float) -> ParamStats:
    nan = int(np.count_nonzero(a.nan_mask)) if a.nan_mask is not None else 0
    inf = 0
    if a.inf_mask is not None and a.nan_mask is not None:
        inf = int(np.count_nonzero(a.inf_mask & ~a.nan_mask))
    return ParamStats(
        name=name,
        layer=int(name.split(".")[0]),
        shape=tuple(a.w.shape),
        w_absmax=float(np.abs(a.w).max(initial=0.0)),
        grad_absmax=a.grad_absmax,
        sq_grad_max=a.sq_grad_max,
        grad_zero=a.zero / max(a.entries, 1),
        grad_underflow=a.underflow / max(a.nonzero, 1),
        grad_subnormal=a.subnormal / max(a.nonzero, 1),
        grad_underflow_mass=a.underflow_l1 / a.grad_l1 if a.grad_l1 else 0.0,
        grad_error=a.error_l1 / a.grad_l1 if a.grad_l1 else 0.0,
        grad_overflow=a.overflow,
        v_underflow=a.v_underflow / max(a.g_nonzero_fmt, 1),
        eps_dominated=a.eps_dominated / max(a.entries, 1),
        nan_updates=nan,
        inf_updates=inf,
        lost=a.lost / max(a.updates, 1),
        max_update_ratio=a.max_update / lr,
    )


def _replay(
    a: _Acc, gs: Array, f: Format, opt: str, S: float, lr: float, b1: float, b2: float,
    eps: float, step_size: float, bc2_sqrt: float,
) -> None:  # fmt: skip
    """Accumulate one batch's first-step statistics for one parameter tensor."""
    w = a.w
    g_scaled = fround(gs, f)
    nz = gs != 0
    a.entries += gs.size
    a.nonzero += int(np.count_nonzero(nz))
    a.zero += int(gs.size - np.count_nonzero(nz))
    a.underflow += int(np.count_nonzero(nz & (g_scaled == 0)))
    sub = (g_scaled != 0) & (np.abs(g_scaled) < f.smallest_normal)
    a.subnormal += int(np.count_nonzero(sub))
    a.overflow += int(np.count_nonzero(~np.isfinite(g_scaled)))
    a.grad_absmax = max(a.grad_absmax, float(np.abs(gs).max(initial=0.0)))
    a.grad_l1 += float(np.abs(gs).sum())
    a.underflow_l1 += float(np.abs(gs[nz & (g_scaled == 0)]).sum())
    a.error_l1 += float(np.abs(g_scaled - gs).sum())
    g = g_scaled if S == 1.0 else fround(g_scaled / S, f)
    a.sq_grad_max = max(a.sq_grad_max, float(np.max(g * g, initial=0.0)))
    if opt == "sgd":
        u = lr * g
    else:
        m = fround((1 - b1) * g, f)
        v = fround((1 - b2) * g * g, f)
        a.g_nonzero_fmt += int(np.count_nonzero(g != 0))
        a.v_underflow += int(np.count_nonzero((g != 0) & (v == 0)))
        vhat_sqrt = fround(fround(np.sqrt(v), f) / bc2_sqrt, f)
        a.eps_dominated += int(np.count_nonzero(vhat_sqrt < eps))
        den = fround(vhat_sqrt + eps, f)
        u = step_size * (m / den)
    new = fround(w - u, f)
    nan = np.isnan(new)
    inf = np.isinf(new)
    a.nan_mask = nan if a.nan_mask is None else (a.nan_mask | nan)
    a.inf_mask = inf if a.inf_mask is None else (a.inf_mask | inf)
    fin = np.isfinite(u) & (u != 0)
    a.updates += int(np.count_nonzero(fin))
    a.lost += int(np.count_nonzero(fin & lost_updates(w, -u, f)))
    if fin.any():
        a.max_update = max(a.max_update, float(np.abs(u[fin]).max()))
