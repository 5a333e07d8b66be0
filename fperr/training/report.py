"""What :func:`~fperr.training.check_training` reports: constants, statistics, findings."""

from __future__ import annotations

import html
import math
from dataclasses import dataclass, field
from typing import Any


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
    norms: tuple[Any, ...] = ()  # running_stats.NormStats, one per batch norm
    confirmations: tuple[Any, ...] = ()  # emulate.Confirmation, when a run was emulated
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
            "norms": [n.to_dict() for n in self.norms],
            "emulated_run": [c.to_dict() for c in self.confirmations],
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
        for n in self.norms:
            lines.append(
                f"batchnorm {n.name}: eps {n.eps:g} -> {_fmt_float(n.eps_rounded, 5)}, running var "
                f"min {_fmt_float(n.var_min)}, {n.var_zero}/{n.channels} flushed to 0, "
                f"{n.var_subnormal} subnormal, scale error {_fmt_float(n.scale_error, 2)}, "
                f"updates lost {_pct(n.lost)}"
            )
        if self.findings:
            lines.append("findings:")
            lines += [f"  [{f.severity}] {f.message}" for f in self.findings]
        if self.fixes:
            lines.append("fixes:")
            lines += [f"  - {fix}" for fix in self.fixes]
        if self.confirmations:
            lines.append("emulated run (every stored tensor rounded to the format):")
            lines += [f"  [{c.status}] {c.prediction}: {c.observed}" for c in self.confirmations]
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
