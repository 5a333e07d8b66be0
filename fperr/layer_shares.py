"""Each layer's share of the bound B = R_low + R_ref: where the error a certificate
must cover is made.

Attribution follows the engine's grouping of error terms
(:mod:`fperr.bounds.engine`): every term belongs to the layer that creates it,
and keeps that owner while later layers carry it forward (the signed linear
maps of the enclosure never move a term to another layer).

* A rounding -- the storage of the input ("input"), the products and sums of a
  dense or conv2d layer, a function evaluation, a normalisation, a conversion
  between storage formats of mixed precision -- belongs to the layer that rounds.
* A remainder term -- the slack of a nonlinearity applied to an input that is
  already uncertain: the spread of the ReLU/tanh slopes over
  [z - 2r, z + 2r] (mean value form), a max-pool window whose winner the
  radius cannot settle, the second-order terms of softmax and layernorm --
  belongs to the layer whose nonlinearity makes it.  So a layer that does no
  arithmetic (relu, maxpool2d) can hold a share: all of it remainder, the price
  of errors made upstream; it is zero on an input whose pre-activations are all
  sign-sure (whose pool windows all have a sure winner).  flatten, reshape and
  dropout move values and always hold zero.
* Terms made inside a residual block belong to the residual layer.

Each run's radius is the float64 sum of its terms widened by a relative margin
(``_EVAL_MARGIN`` = 1e-10 in the engine) against the float64 evaluation of that
sum; the widening is reported as its own row, "evaluation margin", so that the
rows add up to B exactly as reported.  With ``method="probabilistic"`` the
combined random part of each run is split in proportion to each layer's share of
the random terms (the engine's attribution).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # pragma: no cover
    from .bounds import BoundResult

__all__ = ["MARGIN_ROW", "LayerShares", "layer_kind"]

Array = npt.NDArray[np.float64]

MARGIN_ROW = "evaluation margin"

# what a layer's share can consist of (see the module docstring)
_KINDS = {
    "rounds": ("input", "dense", "conv2d", "avgpool2d", "batchnorm", "add"),
    "remainder": ("relu", "relu6", "maxpool2d"),
    "none": ("flatten", "reshape", "dropout", "concat"),
}


def layer_kind(layer_type: str) -> str:
    """``rounds``, ``remainder`` (no arithmetic, a nonlinearity), ``none`` (moves
    values) or ``rounds + remainder`` (a nonlinear layer that also rounds)."""
    for kind, types in _KINDS.items():
        if layer_type in types:
            return kind
    return "rounds + remainder"


@dataclass(frozen=True)
class LayerShares:
    """Per input, output and layer, the part of B each layer contributes.

    ``contribution`` is (N, L + 2, K): row 0 the input rounding, rows 1..L the
    layers, row L + 1 the evaluation margin; it sums over rows to ``bound`` (N, K).
    """

    names: list[str]  # "input", "0:dense", ..., MARGIN_ROW
    contribution: Array
    bound: Array

    @classmethod
    def from_bounds(cls, b: BoundResult) -> LayerShares:
        per = np.asarray(b.per_layer, dtype=np.float64)
        B = np.asarray(b.bound, dtype=np.float64)
        with np.errstate(invalid="ignore"):
            # B = inf where the run may overflow: the margin row then holds the inf
            margin = np.where(np.isfinite(B), B - per.sum(axis=1), B)
        names = [*b.layer_names, MARGIN_ROW]
        return cls(names, np.concatenate([per, margin[:, None, :]], axis=1), B)

    @property
    def types(self) -> list[str]:
        return ["input", *(n.partition(":")[2] for n in self.names[1:-1]), "margin"]

    @property
    def kinds(self) -> list[str]:
        return [layer_kind(t) for t in self.types[:-1]] + ["float64 evaluation"]

    @property
    def output(self) -> npt.NDArray[np.int64]:
        """Per input, the output k with the largest B_k (the one the shares describe)."""
        return np.argmax(self.bound, axis=1)

    def at_max_output(self) -> tuple[Array, Array]:
        """(N, L + 2) contributions to max_k B_k, and (N,) max_k B_k."""
        rows, k = np.arange(self.bound.shape[0]), self.output
        return self.contribution[rows, :, k], self.bound[rows, k]

    def shares(self) -> Array:
        """(N, L + 2) fractions of max_k B_k, each row adding up to 1; NaN rows for
        inputs whose bound is infinite (the run may overflow) or zero."""
        c, B = self.at_max_output()
        ok = np.isfinite(B) & (B > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(ok[:, None], c / np.where(ok, B, 1.0)[:, None], np.nan)

    def summary_rows(self) -> list[dict[str, Any]]:
        """Per row: name, type, kind and the median, mean and max share over inputs."""
        s = self.shares()
        valid = ~np.isnan(s[:, 0])
        v = s[valid]
        stat = (lambda f: f(v, axis=0)) if v.size else (lambda f: np.full(s.shape[1], np.nan))
        med, mean, top = stat(np.median), stat(np.mean), stat(np.max)
        return [
            {"name": n, "type": t, "kind": k, "median_share": float(med[j]),
             "mean_share": float(mean[j]), "max_share": float(top[j])}
            for j, (n, t, k) in enumerate(zip(self.names, self.types, self.kinds, strict=True))
        ]  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        valid = int((~np.isnan(self.shares()[:, 0])).sum())
        return {
            "of": "max_k B_k per input, B = R_low + R_ref",
            "inputs_counted": valid,
            "inputs_without_share": int(self.bound.shape[0] - valid),
            "layers": self.summary_rows(),
        }

    def sample_lists(self) -> list[dict[str, Any]]:
        """Per input: the output described, max_k B_k and each row's contribution to it."""
        c, B = self.at_max_output()
        k = self.output
        return [{"output": int(k[i]), "bound": float(B[i]), "contributions": c[i].tolist()}
                for i in range(len(k))]  # fmt: skip

    def text_lines(self) -> list[str]:
        d = self.to_dict()
        width = max(len(n) for n in self.names) + 2
        lines = [f"per layer        share of max_k B_k per input: median (mean, max) over "
                 f"{d['inputs_counted']} inputs"]  # fmt: skip
        if d["inputs_without_share"]:
            lines[0] += f"; {d['inputs_without_share']} with an infinite or zero bound left out"
        for r in d["layers"]:
            lines.append(f"  {r['name']:<{width}}{r['kind']:<20}{_pct(r['median_share'])}"
                         f" ({_pct(r['mean_share'])}, {_pct(r['max_share'])})")  # fmt: skip
        lines.append("  (a rounding counts for the layer that rounds, a remainder term for the"
                     " layer whose nonlinearity makes it;")  # fmt: skip
        lines.append("   each input's shares add up to 100%, their medians need not)")
        return lines


def _pct(v: float) -> str:
    return "    n/a" if not np.isfinite(v) else f"{100 * v:6.2f}%"
