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
model's forward and backward passes on its data in float64 (numpy only; dense
models: dense, relu/tanh/sigmoid, flatten/reshape/dropout, an optional final
softmax, softmax cross-entropy loss), rounds the gradients to the format and
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

import html
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from .arith import Exact
from .errors import FperrInputError
from .formats import Format, get_format
from .layers import Activation, Dense, Dropout, Flatten, Layer, Reshape, Softmax
from .rounding import round as fround

if TYPE_CHECKING:  # pragma: no cover
    from .model import Model

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
    "check_training_cli",
    "initial_model",
    "lost_updates",
    "recommended_eps",
    "stratified_split",
    "train_pure",
]

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
    from .model import check_inputs

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


# -- lost updates -------------------------------------------------------------------
def lost_updates(w: npt.ArrayLike, u: npt.ArrayLike, fmt: Format | str) -> npt.NDArray[np.bool_]:
    """Where ``w + u`` rounds (to nearest, ties to even) back to ``w``.

    ``w`` must hold numbers of ``fmt`` (round them first); ``u`` is any
    float64.  Decided from the spacing of the format around ``w``, without
    forming ``w + u``: the update is lost iff ``|u|`` is below half the gap to
    the neighbour in its direction, or equal to it and ``w`` has an even
    significand.  The gap below a power of two ``2**e`` (``e > emin``) is half
    the gap above it.  ``u == 0`` counts as lost; non-finite ``w`` or ``u``
    never does.  At ``w == 0`` the format itself decides (flush-to-zero
    formats flush more than half a subnormal step).
    """
    fmt = get_format(fmt)
    wa = np.asarray(w, dtype=np.float64)
    ua = np.asarray(u, dtype=np.float64)
    wa, ua = np.broadcast_arrays(wa, ua)
    a = np.abs(wa)
    finite = np.isfinite(wa) & np.isfinite(ua)
    safe = np.where(finite & (a > 0), a, 1.0)
    _, ex = np.frexp(safe)
    e_raw = ex.astype(np.int64) - 1  # floor(log2 |w|)
    e = np.maximum(e_raw, fmt.emin)
    q_up = np.ldexp(1.0, e - fmt.p + 1)  # spacing above |w|
    power_of_two = (safe == np.ldexp(1.0, e_raw)) & (e_raw > fmt.emin)
    q_down = np.where(power_of_two, q_up / 2, q_up)
    away = np.sign(ua) == np.sign(wa)
    half = np.where(away, q_up, q_down) / 2
    even = np.fmod(safe / q_up, 2.0) == 0.0
    au = np.abs(ua)
    lost = (au < half) | ((au == half) & even)
    zero_w = finite & (a == 0)
    if zero_w.any():
        lost = np.where(zero_w, fround(np.where(zero_w, ua, 0.0), fmt) == 0.0, lost)
    result: npt.NDArray[np.bool_] = finite & lost
    return result


# -- report -------------------------------------------------------------------------
def _fmt_float(x: float, digits: int = 3) -> str:
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"


def _pct(x: float) -> str:
    if x == 0:
        return "0"
    if x < 0.001:
        return "<0.1%"
    return f"{100 * x:.1f}%"


def _json_float(x: float) -> float | str:
    return x if math.isfinite(x) else ("nan" if math.isnan(x) else ("inf" if x > 0 else "-inf"))


@dataclass(frozen=True)
class Constant:
    """An optimizer constant and its value rounded to the format."""

    name: str
    value: float
    rounded: float

    @property
    def rel_change(self) -> float:
        return math.inf if self.value == 0 and self.rounded != 0 else (
            0.0 if self.value == 0 else (self.rounded - self.value) / self.value
        )  # fmt: skip

    def describe(self) -> str:
        if self.rounded == self.value:
            return f"{self.name} {self.value:g} (exact)"
        if self.rounded == 0:
            return f"{self.name} {self.value:g} -> 0 (rounds to zero)"
        return f"{self.name} {self.value:g} -> {self.rounded:.6g} ({100 * self.rel_change:+.2g}%)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "value": self.value,
            "rounded": self.rounded,
            "rel_change": _json_float(self.rel_change),
        }


@dataclass(frozen=True)
class ParamStats:
    """Per parameter tensor, pooled over the analysed batches.

    Fractions: ``grad_zero`` of all gradient entries (exact zeros: constant
    inputs, dead units); ``grad_underflow`` / ``grad_subnormal`` of the
    nonzero ones (``|S g|`` rounds to 0 / to a subnormal); ``v_underflow`` of
    the entries whose rounded gradient is nonzero (``(1-b2) g**2`` rounds to
    0); ``eps_dominated`` of all entries (``sqrt(v_hat) < eps``, Adam takes an
    SGD step ``lr/eps * g`` there); ``lost`` of the nonzero finite updates
    (``round(w - u) == w``).  ``grad_underflow_mass``: the share of the
    gradient's L1 norm carried by the entries that underflow;
    ``grad_error``: L1 relative error of the rounded gradient.
    ``nan_updates``: weights that become NaN after the first step in at least
    one batch; ``inf_updates``: the others that become inf.
    ``max_update_ratio``: largest finite ``|update| / lr``.
    """

    name: str
    layer: int
    shape: tuple[int, ...]
    w_absmax: float
    grad_absmax: float
    sq_grad_max: float
    grad_zero: float
    grad_underflow: float
    grad_subnormal: float
    grad_underflow_mass: float
    grad_error: float
    grad_overflow: int
    v_underflow: float
    eps_dominated: float
    nan_updates: int
    inf_updates: int
    lost: float
    max_update_ratio: float

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in vars(self).items():
            out[key] = _json_float(value) if isinstance(value, float) else value
        out["shape"] = list(self.shape)
        return out


@dataclass(frozen=True)
class LayerStats:
    """Largest |output| and |loss_scale * doutput| of one layer; output-gradient underflow.

    ``out_grad_underflow``: fraction of the nonzero output gradients that
    round to 0; ``out_grad_underflow_mass``: their share of the L1 norm.
    """

    index: int
    type: str
    out_absmax: float
    out_grad_absmax: float
    out_grad_underflow: float
    out_grad_underflow_mass: float

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_float(v) if isinstance(v, float) else v for k, v in vars(self).items()}


@dataclass(frozen=True)
class Finding:
    severity: str  # "hazard" or "note"
    message: str

    def to_dict(self) -> dict[str, str]:
        return {"severity": self.severity, "message": self.message}


@dataclass(frozen=True)
class TrainingReport:
    """What :func:`check_training` found; ``verdict`` is ``"ok"`` or ``"hazard"``."""

    model: str
    fmt: str
    optimizer: str
    lr: float
    eps: float
    betas: tuple[float, float]
    loss_scale: float
    batch_size: int
    n_batches: int
    n_inputs: int
    loss: float
    constants: tuple[Constant, ...]
    params: tuple[ParamStats, ...]
    layers: tuple[LayerStats, ...]
    findings: tuple[Finding, ...]
    fixes: tuple[str, ...]
    verdict: str = field(init=False)

    def __post_init__(self) -> None:
        hazard = any(f.severity == "hazard" for f in self.findings)
        object.__setattr__(self, "verdict", "hazard" if hazard else "ok")

    @property
    def ok(self) -> bool:
        return self.verdict == "ok"

    @property
    def predicts_nan(self) -> bool:
        """Whether the first step writes NaN or inf into some weight."""
        return any(p.nan_updates or p.inf_updates for p in self.params)

    def constant(self, name: str) -> Constant:
        return next(c for c in self.constants if c.name == name)

    def hazards(self) -> list[str]:
        return [f.message for f in self.findings if f.severity == "hazard"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "format": self.fmt,
            "optimizer": self.optimizer,
            "lr": self.lr,
            "eps": self.eps,
            "betas": list(self.betas),
            "loss_scale": self.loss_scale,
            "batch_size": self.batch_size,
            "n_batches": self.n_batches,
            "n_inputs": self.n_inputs,
            "loss": _json_float(self.loss),
            "verdict": self.verdict,
            "predicts_nan": self.predicts_nan,
            "constants": [c.to_dict() for c in self.constants],
            "params": [p.to_dict() for p in self.params],
            "layers": [layer.to_dict() for layer in self.layers],
            "findings": [f.to_dict() for f in self.findings],
            "fixes": list(self.fixes),
        }

    # -- text ---------------------------------------------------------------
    def _header(self) -> str:
        opt = f"{self.optimizer} lr={self.lr:g}"
        if self.optimizer == "adam":
            opt += f" eps={self.eps:g} betas=({self.betas[0]:g}, {self.betas[1]:g})"
        return (
            f"check-training {self.model}: {opt} in {self.fmt}, loss scale {self.loss_scale:g}, "
            f"first step replayed on {self.n_batches} batch(es) of {self.batch_size} "
            f"({self.n_inputs} inputs)"
        )

    _COLUMNS = (
        ("param", 10), ("|w|max", 9), ("|g|max", 9), ("g=0", 7), ("g->0", 7), ("g sub", 7),
        ("v->0", 7), ("NaN", 7), ("inf", 7), ("lost", 7), ("|u|/lr", 10),
    )  # fmt: skip

    def _param_cells(self, p: ParamStats) -> list[str]:
        adam = self.optimizer == "adam"
        return [
            p.name, _fmt_float(p.w_absmax), _fmt_float(p.grad_absmax), _pct(p.grad_zero),
            _pct(p.grad_underflow), _pct(p.grad_subnormal),
            _pct(p.v_underflow) if adam else "-", str(p.nan_updates), str(p.inf_updates),
            _pct(p.lost), _fmt_float(p.max_update_ratio),
        ]  # fmt: skip

    def __repr__(self) -> str:
        lines = [self._header(), f"verdict: {self.verdict.upper()}"]
        lines.append(f"constants in {self.fmt}: " + "; ".join(c.describe() for c in self.constants))
        lines.append("".join(f"{n:>{w}}" if i else f"{n:<{w}}" for i, (n, w) in
                             enumerate(self._COLUMNS)))  # fmt: skip
        for p in self.params:
            cells = self._param_cells(p)
            lines.append("".join(f"{c:>{w}}" if i else f"{c:<{w}}" for i, (c, (_, w)) in
                                 enumerate(zip(cells, self._COLUMNS, strict=True))))  # fmt: skip
        lines.append(
            f"{'layer':<14}{'|out|max':>10}{'|dout|max':>11}{'dout->0':>9}{'its L1 share':>14}"
        )
        for s in self.layers:
            lines.append(
                f"{f'{s.index} {s.type}':<14}{_fmt_float(s.out_absmax):>10}"
                f"{_fmt_float(s.out_grad_absmax):>11}{_pct(s.out_grad_underflow):>9}"
                f"{_fmt_float(s.out_grad_underflow_mass, 2):>14}"
            )
        if self.findings:
            lines.append("findings:")
            lines += [f"  [{f.severity}] {f.message}" for f in self.findings]
        if self.fixes:
            lines.append("fixes:")
            lines += [f"  - {fix}" for fix in self.fixes]
        return "\n".join(lines)

    __str__ = __repr__

    def _repr_html_(self) -> str:
        e = html.escape
        colour = "#2a7" if self.ok else "#c33"
        out = [
            f"<div><p>{e(self._header())}</p>",
            f"<p>verdict: <b style='color:{colour}'>{e(self.verdict.upper())}</b></p>",
            "<p>constants in " + e(self.fmt) + ": "
            + "; ".join(e(c.describe()) for c in self.constants) + "</p>",
            "<table><thead><tr>" + "".join(f"<th>{e(n)}</th>" for n, _ in self._COLUMNS)
            + "</tr></thead><tbody>",
        ]  # fmt: skip
        for p in self.params:
            out.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in self._param_cells(p)) + "</tr>")
        out.append("</tbody></table>")
        if self.findings:
            out.append("<ul>")
            for f in self.findings:
                tag = "b" if f.severity == "hazard" else "span"
                out.append(f"<li><{tag}>{e(f.severity)}</{tag}>: {e(f.message)}</li>")
            out.append("</ul>")
        if self.fixes:
            out.append("<p>fixes:</p><ul>" + "".join(f"<li>{e(x)}</li>" for x in self.fixes))
            out.append("</ul>")
        out.append("</div>")
        return "".join(out)


# -- the check ----------------------------------------------------------------------
def recommended_eps(fmt: Format | str) -> float:
    """Smallest power of ten at or above the format's smallest normal number.

    An Adam eps below it is subnormal (imprecise) or zero in the format;
    binary16 gives 1e-4 (smallest normal 6.1e-5), the value that trains
    standalone fp16 Adam in the reference measurements.
    """
    fmt = get_format(fmt)
    return float(10.0 ** math.ceil(math.log10(fmt.smallest_normal)))


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
) -> TrainingReport:
    """Predict the hazards of training ``model`` with parameters and optimizer states in ``fmt``.

    ``X``/``labels``: training inputs and class labels.  They are shuffled
    with ``seed`` and cut into batches of ``batch_size``; each of the first
    ``max_batches`` (default all) is replayed as the first optimizer step
    (see the module docstring).  ``loss_scale`` multiplies the loss: the
    backward pass sees ``S g`` (underflow, overflow), the optimizer the
    unscaled ``round(round(S g) / S)``.  The ``*_limit`` arguments set when a
    finding is a hazard rather than a note.
    """
    from .model import Model as _Model
    from .model import load_model

    f = get_format(fmt)
    opt = _validate(optimizer, lr, eps, betas, loss_scale, batch_size)
    m = model if isinstance(model, _Model) else load_model(model)
    _training_layers(m)
    Xa = np.asarray(X, dtype=np.float64)
    if Xa.ndim < 1 or Xa.shape[0] == 0:
        raise FperrInputError("check-training needs at least one input")
    y = _check_labels(labels, Xa.shape[0], m.output_shape[0] if m.output_shape else 0)
    order = np.random.default_rng(seed).permutation(Xa.shape[0])
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    if max_batches is not None:
        batches = batches[: max(1, max_batches)]

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
    step_size = lr / (1 - b1)  # torch: lr / bias_correction1, a Python float
    bc2_sqrt = math.sqrt(1 - b2)

    accs: dict[str, _Acc] = {}
    layer_acc: dict[int, list[float]] = {}  # |out|max, |dout|max, #uf, #nz, uf L1, L1
    hist = np.zeros(2200, dtype=np.int64)
    losses = []
    layers = _training_layers(m)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        for idx in batches:
            bw = backward(m, Xa[idx], y[idx], loss_scale)
            losses.append(bw.loss)
            for i, (out, dout) in enumerate(zip(bw.outputs, bw.output_grads, strict=True)):
                la = layer_acc.setdefault(i, [0.0] * 6)
                la[0] = max(la[0], float(np.abs(out).max(initial=0.0)))
                la[1] = max(la[1], float(np.abs(dout).max(initial=0.0)))
                nz = dout != 0
                uf = nz & (fround(dout, f) == 0)
                la[2] += int(np.count_nonzero(uf))
                la[3] += int(np.count_nonzero(nz))
                la[4] += float(np.abs(dout[uf]).sum())
                la[5] += float(np.abs(dout).sum())
                hist += _exponent_hist(dout)
            for name, gs in bw.grads.items():
                if name not in accs:
                    accs[name] = _Acc(fround(bw.params[name], f))
                _replay(accs[name], gs, f, opt, loss_scale, lr, b1, b2, eps, step_size, bc2_sqrt)
                hist += _exponent_hist(gs)

    params = tuple(
        ParamStats(
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
            nan_updates=int(np.count_nonzero(a.nan_mask)) if a.nan_mask is not None else 0,
            inf_updates=int(np.count_nonzero(a.inf_mask & ~a.nan_mask))
            if a.inf_mask is not None and a.nan_mask is not None
            else 0,
            lost=a.lost / max(a.updates, 1),
            max_update_ratio=a.max_update / lr,
        )
        for name, a in accs.items()
    )
    layer_stats = tuple(
        LayerStats(i, layers[i].type, la[0], la[1], la[2] / max(la[3], 1),
                   la[4] / la[5] if la[5] else 0.0)
        for i, la in sorted(layer_acc.items())
    )  # fmt: skip
    input_max = float(np.abs(Xa).max(initial=0.0))
    findings, fixes = _assess(
        f, opt, lr, eps, eps_f, loss_scale, constants, params, layer_stats, input_max, hist,
        stagnation_limit, underflow_limit, update_limit,
    )  # fmt: skip
    return TrainingReport(
        model=m.name,
        fmt=f.name,
        optimizer=opt,
        lr=lr,
        eps=eps,
        betas=(b1, b2),
        loss_scale=loss_scale,
        batch_size=batch_size,
        n_batches=len(batches),
        n_inputs=int(sum(len(b) for b in batches)),
        loss=float(np.mean(losses)),
        constants=tuple(constants),
        params=params,
        layers=layer_stats,
        findings=tuple(findings),
        fixes=tuple(fixes),
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


def _assess(
    f: Format, opt: str, lr: float, eps: float, eps_f: float, S: float,
    constants: list[Constant], params: tuple[ParamStats, ...], layers: tuple[LayerStats, ...],
    input_max: float, hist: npt.NDArray[np.int64], stagnation_limit: float,
    underflow_limit: float, update_limit: float,
) -> tuple[list[Finding], list[str]]:  # fmt: skip
    findings: list[Finding] = []
    fixes: list[str] = []

    def hazard(msg: str, fix: str | None = None) -> None:
        findings.append(Finding("hazard", msg))
        if fix is not None and fix not in fixes:
            fixes.append(fix)

    def note(msg: str) -> None:
        findings.append(Finding("note", msg))

    def const(name: str) -> Constant:
        return next(c for c in constants if c.name == name)

    rec = recommended_eps(f)
    eps_fix = (
        f"eps={eps:g} rounds to {_fmt_float(eps_f)} in {f.name}: use eps >= {rec:g} "
        "(or keep the optimizer states in fp32)"
    )
    nan_n = sum(p.nan_updates for p in params)
    inf_n = sum(p.inf_updates for p in params)
    total = sum(p.size for p in params)

    # -- optimizer constants
    if opt == "adam":
        if eps > 0 and eps_f == 0:
            hazard(
                f"eps={eps:g} rounds to 0 in {f.name} (below half its smallest subnormal, "
                f"{f.smallest_subnormal / 2:.3g}): sqrt(v_hat)+eps is 0 wherever v is 0, and "
                "the Adam update m/(sqrt(v_hat)+eps) is 0/0 = NaN (g = 0) or x/0 = inf",
                eps_fix,
            )
        elif 0 < eps_f < f.smallest_normal:
            note(
                f"eps={eps:g} is subnormal in {f.name}: it is {eps_f:.4g} there "
                f"({100 * (eps_f - eps) / eps:+.2g}% off the eps asked for), and tiny: weights "
                "whose v underflows take steps lr/eps * g"
            )
        b2c, omb = const("beta2"), const("1-round(beta2)")
        if abs(omb.rel_change) > 1e-3:
            extra = " -- v would never change" if omb.rounded == 0 else ""
            note(
                f"constants held in {f.name} would differ: beta2 {b2c.value:g} -> "
                f"{b2c.rounded:.6g}, so 1-beta2 = {omb.rounded:.4g} instead of "
                f"{omb.value:.4g}{extra}; PyTorch applies Python-scalar constants in fp32, "
                "so this matters only for implementations that store them in the format"
            )
    if const("lr").rounded == 0:
        note(f"lr={lr:g} rounds to 0 in {f.name} (PyTorch applies it in fp32)")

    # -- the first step
    if nan_n or inf_n:
        worst = max(params, key=lambda p: p.nan_updates + p.inf_updates)
        why = []
        if nan_n:
            why.append(f"NaN into {nan_n}" + (" (0/0: m = v = 0)" if opt == "adam" else ""))
        if inf_n:
            why.append(f"inf into {inf_n}" + (" (m/0 or overflow)" if opt == "adam" else ""))
        hazard(
            f"the first step writes {' and '.join(why)} of {total} weights "
            f"(most in {worst.name}: {worst.nan_updates} NaN, {worst.inf_updates} inf)",
            eps_fix if opt == "adam" and eps_f < f.smallest_normal else None,
        )
    if opt == "adam":
        vu = [p for p in params if p.v_underflow > 1e-3]
        if vu:
            omb2 = const("1-beta2").value
            gv = math.sqrt(f.smallest_subnormal / 2 / omb2) if omb2 > 0 else math.inf
            note(
                f"(1-beta2) g^2 underflows to 0 for 0 < |g| < ~{gv:.3g}: "
                + ", ".join(f"{p.name} {_pct(p.v_underflow)}" for p in vu)
                + " of the nonzero gradients"
            )
        big = max(params, key=lambda p: p.max_update_ratio)
        ed = [p for p in params if p.eps_dominated > 1e-3]
        if big.max_update_ratio > update_limit:
            hazard(
                f"first-step updates reach {big.max_update_ratio:.3g} x lr in {big.name} "
                f"(|update| {big.max_update_ratio * lr:.3g}): where sqrt(v_hat) < eps, Adam "
                f"steps lr/eps * g with eps={eps_f:.3g}",
                f"eps={eps:g} is too small for {f.name}: use eps >= {rec:g} "
                "(or keep the optimizer states in fp32)",
            )
        elif big.max_update_ratio > UPDATE_NOTE and ed:
            note(
                "eps dominates sqrt(v_hat) for "
                + ", ".join(f"{p.name} {_pct(p.eps_dominated)}" for p in ed)
                + " of the weights: they take SGD-like steps lr/eps * g, up to "
                f"{big.max_update_ratio:.3g} x lr"
            )

    # -- gradients
    for p in params:
        if p.grad_underflow_mass > underflow_limit:
            hazard(
                f"gradients of {p.name} that underflow to 0 in {f.name} "
                f"(|g| < {f.smallest_subnormal / 2:.3g}) carry {_pct(p.grad_underflow_mass)} "
                f"of its L1 norm ({_pct(p.grad_underflow)} of the nonzero entries)"
            )
        if p.grad_overflow:
            hazard(
                f"{p.grad_overflow} gradient entries of {p.name} overflow {f.name} "
                f"(|g| up to {p.grad_absmax:.3g} > max {f.max:g})",
                "reduce the loss scale" if S > 1 else f"keep layer {p.layer} in fp32",
            )
        elif p.sq_grad_max > f.max:
            note(
                f"g^2 of {p.name} reaches {p.sq_grad_max:.3g} > max {f.max:g}: fine where "
                "g*g is computed in fp32 (PyTorch's addcmul), an overflow where it is stored"
            )
        if p.lost > stagnation_limit:
            hazard(
                f"{_pct(p.lost)} of the first-step updates of {p.name} are lost "
                "(|update| < ulp(w)/2: w + update rounds back to w)",
                f"keep layer {p.layer} in fp32 (master weights), or use stochastic rounding "
                "or Kahan-compensated updates",
            )
    small = [p for p in params if p.grad_underflow > 0 or p.grad_subnormal > 0]
    if small:
        mass = max(p.grad_underflow_mass for p in small)
        note(
            f"gradient entries flushed to 0 / subnormal in {f.name}: "
            + ", ".join(
                f"{p.name} {_pct(p.grad_underflow)}/{_pct(p.grad_subnormal)}" for p in small
            )
            + f"; the flushed ones carry at most {mass:.2g} of a tensor's L1 norm, the "
            f"rounded gradients are off by {max(p.grad_error for p in params):.2g} (L1, relative)"
        )
    lost = [p for p in params if 0.01 < p.lost <= stagnation_limit]
    if lost:
        note(
            "first-step updates lost (|u| < ulp(w)/2): "
            + ", ".join(f"{p.name} {_pct(p.lost)}" for p in lost)
        )

    # -- activations and their gradients
    for s in layers:
        if s.out_absmax > f.max:
            hazard(
                f"layer {s.index} ({s.type}) outputs reach {s.out_absmax:.3g} > max {f.max:g}",
                f"keep layer {s.index} in fp32",
            )
        elif s.out_absmax > f.max / HEADROOM:
            note(f"layer {s.index} ({s.type}) outputs reach {s.out_absmax:.3g}, near max {f.max:g}")
        if s.out_grad_absmax > f.max:
            hazard(
                f"the gradient of layer {s.index} ({s.type}) outputs reaches "
                f"{s.out_grad_absmax:.3g} > max {f.max:g}",
                "reduce the loss scale" if S > 1 else f"keep layer {s.index} in fp32",
            )
        if s.out_grad_underflow_mass > underflow_limit:
            hazard(
                f"output gradients of layer {s.index} ({s.type}) that underflow to 0 in "
                f"{f.name} carry {_pct(s.out_grad_underflow_mass)} of their L1 norm"
            )
    if input_max > f.max:
        hazard(f"inputs reach {input_max:.3g} > max {f.max:g}", "rescale the inputs")

    underflowing = any(p.grad_underflow_mass > underflow_limit for p in params) or any(
        s.out_grad_underflow_mass > underflow_limit for s in layers
    )
    if underflowing:
        gmax = max([p.grad_absmax for p in params] + [s.out_grad_absmax for s in layers])
        scale = _loss_scale_suggestion(f, S, hist, gmax)
        if scale is not None:
            fixes.append(f"use loss scaling x{scale:g}")
        else:
            fixes.append("keep the gradients in fp32 (no loss scale fits in the headroom)")
    return findings, fixes


# -- CLI --------------------------------------------------------------------------
def check_training_cli(
    model_path: str | Path,
    optimizer: str = "adam",
    lr: float = 1e-3,
    eps: float = 1e-8,
    fmt: str = "binary16",
    inputs: str | Path | None = None,
    *,
    labels: str | Path | None = None,
    betas: tuple[float, float] = (0.9, 0.999),
    loss_scale: float = 1.0,
    batch_size: int = 32,
    max_batches: int | None = None,
) -> tuple[str, int]:
    """Text report and exit code (0 ok, 1 hazard) for ``fperr check-training``.

    ``inputs`` defaults to the model spec's ``data.inputs`` (resolved against
    the YAML file's folder); labels come from the inputs' ``.npz``, from
    ``labels`` or from the spec's ``data.labels``.  Bad input raises
    :class:`~fperr.errors.FperrInputError` (exit 2 in the CLI).
    """
    from .datasets import model_data
    from .model import load_model

    model = load_model(model_path)
    X, y = model_data(model, inputs, labels)
    if y is None:
        raise FperrInputError("check-training needs class labels (an .npz with 'labels')")
    report = check_training(
        model, X, y, optimizer=optimizer, lr=lr, eps=eps, betas=betas, fmt=fmt,
        loss_scale=loss_scale, batch_size=batch_size, max_batches=max_batches,
    )  # fmt: skip
    return str(report), 0 if report.ok else 1


# -- the real experiment (torch) ------------------------------------------------------
@dataclass(frozen=True)
class TrainRun:
    """One training run of :func:`train_pure`.

    ``nan_step``: the first optimizer step (1-based) after which some
    parameter is NaN or inf; ``loss_nan_step``: the first step whose loss is
    not finite; ``None`` if never.  Accuracies are of the final model
    (argmax; a NaN model predicts class 0 everywhere).  ``unchanged``: the
    fraction of parameter entries still bit-equal to their initial values at
    the end (lost updates, and weights that never get a gradient).
    """

    dtype: str
    eps: float
    seed: int
    lr: float
    epochs: int
    steps: int
    test_acc: float
    train_acc: float
    final_loss: float
    nan_step: int | None
    loss_nan_step: int | None
    seconds: float
    stopped_early: bool
    optimizer: str = "adam"
    unchanged: float = math.nan

    @property
    def nan(self) -> bool:
        return self.nan_step is not None or self.loss_nan_step is not None

    def to_dict(self) -> dict[str, Any]:
        d = {k: _json_float(v) if isinstance(v, float) else v for k, v in vars(self).items()}
        d["nan"] = self.nan
        return d


def _widths_and_acts(model_or_spec: Any) -> list[tuple[str, int, int]]:
    """[("dense", in, out) | ("relu"/"tanh"/"sigmoid", 0, 0) ...] of a dense architecture."""
    from .model import Model as _Model
    from .model import load_model

    if isinstance(model_or_spec, str | Path):
        model_or_spec = load_model(model_or_spec)
    if isinstance(model_or_spec, _Model):
        arch: list[tuple[str, int, int]] = []
        for layer in _training_layers(model_or_spec):
            if isinstance(layer, Dense):
                if layer.bias is None:
                    raise FperrInputError("train_pure rebuilds dense layers with biases only")
                arch.append(("dense", int(layer.weight.shape[1]), int(layer.weight.shape[0])))
            elif isinstance(layer, Activation):
                arch.append((layer.type, 0, 0))
        return arch
    widths = [int(w) for w in model_or_spec]
    if len(widths) < 2 or min(widths) < 1:
        raise FperrInputError(f"layer widths must be >= 2 positive ints, got {widths}")
    arch = []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        if k:
            arch.append(("relu", 0, 0))
        arch.append(("dense", a, b))
    return arch


def _build_torch(arch: list[tuple[str, int, int]], seed: int) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    mods: list[nn.Module] = [
        nn.Linear(a, b) if kind == "dense" else acts[kind]() for kind, a, b in arch
    ]
    return nn.Sequential(*mods)


def initial_model(model_or_spec: Any, seed: int, name: str = "init") -> Model:
    """The fperr model :func:`train_pure` starts from with ``seed`` (torch's default init).

    ``model_or_spec``: an fperr dense model or its YAML path (its architecture;
    the weights are re-initialised), or layer widths of a ReLU MLP, e.g.
    ``(64, 256, 256, 10)``.  Needs torch.
    """
    from .model import Model as _Model

    arch = _widths_and_acts(model_or_spec)
    net = _build_torch(arch, seed)
    layers: list[Layer] = []
    for (kind, _, _), mod in zip(arch, net, strict=True):
        if kind == "dense":
            w = mod.weight.detach().double().numpy().copy()
            b = mod.bias.detach().double().numpy().copy()
            layers.append(Dense(w, b))
        else:
            layers.append(Activation(kind))
    return _Model(name, (arch[0][1],), tuple(layers))


def stratified_split(
    labels: npt.ArrayLike, test_fraction: float = 0.3, seed: int = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Train and test indices, each class split ``test_fraction`` (rounded) to test."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train: list[npt.NDArray[np.int64]] = []
    test: list[npt.NDArray[np.int64]] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(test_fraction * len(idx)))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def train_pure(
    model_or_spec: Any,
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    dtype: str = "float16",
    eps: float = 1e-8,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 40,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    optimizer: str = "adam",
    batch_size: int = 32,
    test_fraction: float = 0.3,
    split_seed: int = 0,
    stop_on_nan: bool = True,
    device: str = "cpu",
) -> list[TrainRun]:
    """Train a dense classifier with everything in ``dtype``: the standalone experiment.

    ``dtype`` ``"float16"``/``"bfloat16"``: ``model.to(dtype)``, inputs in
    ``dtype``, ``torch.optim.Adam`` (or plain ``SGD`` with ``optimizer="sgd"``;
    ``eps`` and ``betas`` then unused) on the low-precision parameters (its
    states share their dtype), no master weights, no autocast, no loss
    scaling.  ``"float32"`` is the reference.  The data are split with
    :func:`stratified_split`; each seed sets the initialisation (see
    :func:`initial_model`) and the batch order.  With ``stop_on_nan`` a run
    whose parameters turn NaN/inf stops one step later (nothing recovers
    from NaN weights; that step records the loss going NaN).
    """
    import torch
    import torch.nn.functional as F

    dt = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}.get(dtype)
    if dt is None:
        raise FperrInputError(f"dtype must be float16, bfloat16 or float32, got {dtype!r}")
    if optimizer not in OPTIMIZERS:
        raise FperrInputError(
            f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}"
        )
    arch = _widths_and_acts(model_or_spec)
    Xa = np.asarray(X, dtype=np.float64)
    ya = np.asarray(y, dtype=np.int64)
    tr, te = stratified_split(ya, test_fraction, split_seed)
    Xt = torch.from_numpy(Xa.reshape(len(Xa), -1)).to(device=device, dtype=dt)
    yt = torch.from_numpy(ya).to(device)
    tr_t, te_t = torch.from_numpy(tr).to(device), torch.from_numpy(te).to(device)
    runs: list[TrainRun] = []
    for seed in seeds:
        net = _build_torch(arch, seed).to(device=device, dtype=dt)
        params = list(net.parameters())
        initial = [p.detach().clone() for p in params]
        opt: torch.optim.Optimizer = (
            torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)
            if optimizer == "adam"
            else torch.optim.SGD(params, lr=lr)
        )
        gen = torch.Generator().manual_seed(seed)
        step = 0
        nan_step: int | None = None
        loss_nan_step: int | None = None
        loss = torch.tensor(math.nan)
        stopped = False
        start = time.perf_counter()
        net.train()
        for _ in range(epochs):
            perm = tr_t[torch.randperm(len(tr_t), generator=gen).to(device)]
            for batch in torch.split(perm, batch_size):
                step += 1
                opt.zero_grad(set_to_none=True)
                loss = F.cross_entropy(net(Xt[batch]), yt[batch])
                if loss_nan_step is None and not bool(torch.isfinite(loss)):
                    loss_nan_step = step
                loss.backward()
                opt.step()
                if nan_step is None:
                    with torch.no_grad():
                        finite = all(bool(torch.isfinite(p).all()) for p in params)
                    if not finite:
                        nan_step = step
                # One more step after the parameters broke records the loss going NaN.
                if (
                    stop_on_nan
                    and nan_step is not None
                    and (loss_nan_step is not None or step > nan_step)
                ):
                    stopped = True
                    break
            if stopped:
                break
        seconds = time.perf_counter() - start
        same = sum(int((p.detach() == p0).sum()) for p, p0 in zip(params, initial, strict=True))
        total = sum(p.numel() for p in params)
        net.eval()
        with torch.no_grad():
            pred = net(Xt).argmax(dim=1)
            test_acc = float((pred[te_t] == yt[te_t]).double().mean())
            train_acc = float((pred[tr_t] == yt[tr_t]).double().mean())
        runs.append(
            TrainRun(dtype, eps, int(seed), lr, epochs, step, test_acc, train_acc,
                     float(loss.detach().float()), nan_step, loss_nan_step, seconds, stopped,
                     optimizer, same / total)
        )  # fmt: skip
    return runs
