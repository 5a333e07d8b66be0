"""From first-step statistics to findings and fixes; the recommended Adam eps."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from ..formats import Format, get_format
from .constants import HEADROOM, NORM_SCALE_LIMIT, UPDATE_NOTE
from .report import Constant, Finding, LayerStats, ParamStats, _fmt_float, _pct
from .running_stats import NormStats

GRAD_NOISE = 2.0**-40
"""A parameter tensor whose every gradient is at most this fraction of the model's
largest gradient holds float64 rounding noise around an exact zero (attention key
biases: softmax(z + c) = softmax(z)), not gradients that underflow: no hazard."""


def recommended_eps(fmt: Format | str) -> float:
    """Smallest power of ten at or above the format's smallest normal number.

    An Adam eps below it is subnormal (imprecise) or zero in the format;
    binary16 gives 1e-4 (smallest normal 6.1e-5), the value that trains
    standalone fp16 Adam in the reference measurements.
    """
    fmt = get_format(fmt)
    return float(10.0 ** math.ceil(math.log10(fmt.smallest_normal)))


def _loss_scale_suggestion(
    f: Format, S: float, hist: npt.NDArray[np.int64], gmax: float
) -> float | None:
    """A power-of-two loss scale lifting 99% of nonzero gradients out of the subnormals."""
    total = int(hist.sum())
    if total == 0 or gmax == 0:
        return None
    k1 = int(np.searchsorted(np.cumsum(hist), 0.01 * total)) - 1100  # 1% quantile binade
    low = 2.0 ** (k1 - 1)  # that binade's lower end (scaled gradient)
    need = math.ceil(math.log2(f.smallest_normal / low))
    room = math.floor(math.log2(f.max / (HEADROOM * gmax)))
    k = min(need, room)
    if k < 1:
        return None
    return S * 2.0**k


@dataclass(frozen=True)
class Step:
    """The optimizer step being assessed: format, optimizer and its constants."""

    fmt: Format
    optimizer: str
    lr: float
    eps: float
    eps_rounded: float
    loss_scale: float
    constants: tuple[Constant, ...]

    def constant(self, name: str) -> Constant:
        return next(c for c in self.constants if c.name == name)

    @property
    def eps_fix(self) -> str:
        f = self.fmt
        return (
            f"eps={self.eps:g} rounds to {_fmt_float(self.eps_rounded)} in {f.name}: use eps >= "
            f"{recommended_eps(f):g} (or keep the optimizer states in fp32)"
        )


@dataclass(frozen=True)
class Limits:
    """When a finding is a hazard rather than a note (fractions, and x lr for updates)."""

    stagnation: float
    underflow: float
    update: float


@dataclass
class _Findings:
    findings: list[Finding] = field(default_factory=list)
    fixes: list[str] = field(default_factory=list)

    def hazard(self, msg: str, fix: str | None = None) -> None:
        self.findings.append(Finding("hazard", msg))
        if fix is not None and fix not in self.fixes:
            self.fixes.append(fix)

    def note(self, msg: str) -> None:
        self.findings.append(Finding("note", msg))


def assess(
    step: Step,
    params: tuple[ParamStats, ...],
    layers: tuple[LayerStats, ...],
    input_max: float,
    hist: npt.NDArray[np.int64],
    limits: Limits,
    norms: tuple[NormStats, ...] = (),
) -> tuple[list[Finding], list[str]]:
    """Findings (hazards and notes) and suggested fixes from first-step statistics."""
    out = _Findings()
    _optimizer_constants(out, step)
    _first_step(out, step, params, limits)
    _gradients(out, step, params, limits)
    _activations(out, step, layers, input_max, limits)
    _loss_scaling(out, step, params, layers, hist, limits)
    for n in norms:
        _batchnorm(out, step.fmt, n, limits)
    return out.findings, out.fixes


def _batchnorm(out: _Findings, f: Format, n: NormStats, limits: Limits) -> None:
    """Running statistics and eps of one batch norm held in the format (see running_stats)."""
    where = f"batchnorm {n.name}"
    if n.scale_error > NORM_SCALE_LIMIT:
        out.hazard(
            f"{where}: with the running variance, eps={n.eps:g} and their sum held in {f.name}, "
            f"the inference scale 1/sqrt(var+eps) is off by {_fmt_float(n.scale_error, 2)} "
            f"(relative; {n.var_zero} of {n.channels} running variances flush to 0, eps is "
            f"{_fmt_float(n.eps_rounded, 4)})",
            f"keep batchnorm {n.name}'s running statistics in fp32, or use eps >= "
            f"{recommended_eps(f):g}",
        )
    elif n.eps_rounded < f.smallest_normal or n.var_zero or n.var_subnormal:
        sub = "0" if n.eps_rounded == 0 else ("subnormal" if n.eps_rounded < f.smallest_normal
                                              else "normal")  # fmt: skip
        out.note(
            f"{where}: eps={n.eps:g} is {sub} in {f.name} ({_fmt_float(n.eps_rounded, 5)}); "
            f"{n.var_zero} of {n.channels} running variances flush to 0 and {n.var_subnormal} "
            f"are subnormal; the inference scale stays within {_fmt_float(n.scale_error, 2)} "
            "(eps dominates the lost variance)"
        )
    if n.lost > limits.stagnation:
        out.hazard(
            f"{where}: {_pct(n.lost)} of the running-statistics updates are lost in {f.name}",
            f"keep batchnorm {n.name}'s running statistics in fp32",
        )


def _optimizer_constants(out: _Findings, step: Step) -> None:
    f, eps, eps_f = step.fmt, step.eps, step.eps_rounded
    if step.optimizer == "adam":
        if eps > 0 and eps_f == 0:
            out.hazard(
                f"eps={eps:g} rounds to 0 in {f.name} (below half its smallest subnormal, "
                f"{f.smallest_subnormal / 2:.3g}): sqrt(v_hat)+eps is 0 wherever v is 0, and "
                "the Adam update m/(sqrt(v_hat)+eps) is 0/0 = NaN (g = 0) or x/0 = inf",
                step.eps_fix,
            )
        elif 0 < eps_f < f.smallest_normal:
            out.note(
                f"eps={eps:g} is subnormal in {f.name}: it is {eps_f:.4g} there "
                f"({100 * (eps_f - eps) / eps:+.2g}% off the eps asked for), and tiny: weights "
                "whose v underflows take steps lr/eps * g"
            )
        b2c, omb = step.constant("beta2"), step.constant("1-round(beta2)")
        if abs(omb.rel_change) > 1e-3:
            extra = " -- v would never change" if omb.rounded == 0 else ""
            out.note(
                f"constants held in {f.name} would differ: beta2 {b2c.value:g} -> "
                f"{b2c.rounded:.6g}, so 1-beta2 = {omb.rounded:.4g} instead of "
                f"{omb.value:.4g}{extra}; PyTorch applies Python-scalar constants in fp32, "
                "so this matters only for implementations that store them in the format"
            )
    if step.constant("lr").rounded == 0:
        out.note(f"lr={step.lr:g} rounds to 0 in {f.name} (PyTorch applies it in fp32)")


def _first_step(
    out: _Findings, step: Step, params: tuple[ParamStats, ...], limits: Limits
) -> None:
    f, opt, lr = step.fmt, step.optimizer, step.lr
    nan_n = sum(p.nan_updates for p in params)
    inf_n = sum(p.inf_updates for p in params)
    if nan_n or inf_n:
        total = sum(p.size for p in params)
        worst = max(params, key=lambda p: p.nan_updates + p.inf_updates)
        why = []
        if nan_n:
            why.append(f"NaN into {nan_n}" + (" (0/0: m = v = 0)" if opt == "adam" else ""))
        if inf_n:
            why.append(f"inf into {inf_n}" + (" (m/0 or overflow)" if opt == "adam" else ""))
        out.hazard(
            f"the first step writes {' and '.join(why)} of {total} weights "
            f"(most in {worst.name}: {worst.nan_updates} NaN, {worst.inf_updates} inf)",
            step.eps_fix if opt == "adam" and step.eps_rounded < f.smallest_normal else None,
        )
    if opt != "adam":
        return
    vu = [p for p in params if p.v_underflow > 1e-3]
    if vu:
        omb2 = step.constant("1-beta2").value
        gv = math.sqrt(f.smallest_subnormal / 2 / omb2) if omb2 > 0 else math.inf
        out.note(
            f"(1-beta2) g^2 underflows to 0 for 0 < |g| < ~{gv:.3g}: "
            + ", ".join(f"{p.name} {_pct(p.v_underflow)}" for p in vu)
            + " of the nonzero gradients"
        )
    big = max(params, key=lambda p: p.max_update_ratio)
    ed = [p for p in params if p.eps_dominated > 1e-3]
    if big.max_update_ratio > limits.update:
        out.hazard(
            f"first-step updates reach {big.max_update_ratio:.3g} x lr in {big.name} "
            f"(|update| {big.max_update_ratio * lr:.3g}): where sqrt(v_hat) < eps, Adam "
            f"steps lr/eps * g with eps={step.eps_rounded:.3g}",
            f"eps={step.eps:g} is too small for {f.name}: use eps >= {recommended_eps(f):g} "
            "(or keep the optimizer states in fp32)",
        )
    elif big.max_update_ratio > UPDATE_NOTE and ed:
        out.note(
            "eps dominates sqrt(v_hat) for "
            + ", ".join(f"{p.name} {_pct(p.eps_dominated)}" for p in ed)
            + " of the weights: they take SGD-like steps lr/eps * g, up to "
            f"{big.max_update_ratio:.3g} x lr"
        )


def noise_tensors(params: tuple[ParamStats, ...]) -> set[str]:
    """Names of the parameter tensors whose gradients are float64 noise (:data:`GRAD_NOISE`)."""
    top = max((p.grad_absmax for p in params if math.isfinite(p.grad_absmax)), default=0.0)
    return {p.name for p in params if 0 < p.grad_absmax <= GRAD_NOISE * top}


def _gradients(
    out: _Findings, step: Step, params: tuple[ParamStats, ...], limits: Limits
) -> None:
    f = step.fmt
    noisy = noise_tensors(params)
    if noisy:
        out.note(
            "gradients zero to float64 precision (|g| <= 2^-40 of the largest gradient: an "
            "exact zero computed with rounding, e.g. attention key biases, which softmax's "
            "shift invariance cancels): " + ", ".join(p.name for p in params if p.name in noisy)
        )
    for p in params:
        if p.name in noisy:
            continue
        if p.grad_underflow_mass > limits.underflow:
            out.hazard(
                f"gradients of {p.name} that underflow to 0 in {f.name} "
                f"(|g| < {f.smallest_subnormal / 2:.3g}) carry {_pct(p.grad_underflow_mass)} "
                f"of its L1 norm ({_pct(p.grad_underflow)} of the nonzero entries)"
            )
        if p.grad_overflow:
            out.hazard(
                f"{p.grad_overflow} gradient entries of {p.name} overflow {f.name} "
                f"(|g| up to {p.grad_absmax:.3g} > max {f.max:g})",
                "reduce the loss scale" if step.loss_scale > 1 else f"keep layer {p.layer} in fp32",
            )
        elif p.sq_grad_max > f.max:
            out.note(
                f"g^2 of {p.name} reaches {p.sq_grad_max:.3g} > max {f.max:g}: fine where "
                "g*g is computed in fp32 (PyTorch's addcmul), an overflow where it is stored"
            )
        if p.lost > limits.stagnation:
            out.hazard(
                f"{_pct(p.lost)} of the first-step updates of {p.name} are lost "
                "(|update| < ulp(w)/2: w + update rounds back to w)",
                f"keep layer {p.layer} in fp32 (master weights), or use stochastic rounding "
                "or Kahan-compensated updates",
            )
    small = [p for p in params if p.grad_underflow > 0 or p.grad_subnormal > 0]
    if small:
        mass = max(p.grad_underflow_mass for p in small)
        out.note(
            f"gradient entries flushed to 0 / subnormal in {f.name}: "
            + ", ".join(
                f"{p.name} {_pct(p.grad_underflow)}/{_pct(p.grad_subnormal)}" for p in small
            )
            + f"; the flushed ones carry at most {mass:.2g} of a tensor's L1 norm, the "
            f"rounded gradients are off by {max(p.grad_error for p in params):.2g} (L1, relative)"
        )
    lost = [p for p in params if 0.01 < p.lost <= limits.stagnation]
    if lost:
        out.note(
            "first-step updates lost (|u| < ulp(w)/2): "
            + ", ".join(f"{p.name} {_pct(p.lost)}" for p in lost)
        )


def _activations(
    out: _Findings, step: Step, layers: tuple[LayerStats, ...], input_max: float, limits: Limits
) -> None:
    f = step.fmt
    for s in layers:
        if s.out_absmax > f.max:
            out.hazard(
                f"layer {s.index} ({s.type}) outputs reach {s.out_absmax:.3g} > max {f.max:g}",
                f"keep layer {s.index} in fp32",
            )
        elif s.out_absmax > f.max / HEADROOM:
            out.note(
                f"layer {s.index} ({s.type}) outputs reach {s.out_absmax:.3g}, near max {f.max:g}"
            )
        if s.out_grad_absmax > f.max:
            out.hazard(
                f"the gradient of layer {s.index} ({s.type}) outputs reaches "
                f"{s.out_grad_absmax:.3g} > max {f.max:g}",
                "reduce the loss scale" if step.loss_scale > 1 else f"keep layer {s.index} in fp32",
            )
        if s.out_grad_underflow_mass > limits.underflow:
            out.hazard(
                f"output gradients of layer {s.index} ({s.type}) that underflow to 0 in "
                f"{f.name} carry {_pct(s.out_grad_underflow_mass)} of their L1 norm"
            )
    if input_max > f.max:
        out.hazard(f"inputs reach {input_max:.3g} > max {f.max:g}", "rescale the inputs")


def _loss_scaling(
    out: _Findings,
    step: Step,
    params: tuple[ParamStats, ...],
    layers: tuple[LayerStats, ...],
    hist: npt.NDArray[np.int64],
    limits: Limits,
) -> None:
    underflowing = any(p.grad_underflow_mass > limits.underflow for p in params) or any(
        s.out_grad_underflow_mass > limits.underflow for s in layers
    )
    if not underflowing:
        return
    gmax = max([p.grad_absmax for p in params] + [s.out_grad_absmax for s in layers])
    scale = _loss_scale_suggestion(step.fmt, step.loss_scale, hist, gmax)
    if scale is not None:
        out.fixes.append(f"use loss scaling x{scale:g}")
    else:
        out.fixes.append("keep the gradients in fp32 (no loss scale fits in the headroom)")
