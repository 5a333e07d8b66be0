"""The summary of a chunked run, from its per-input :class:`~.chunks.Columns`.

The same keys and values as :meth:`fperr.certify.CertifyResult.summary` of the
whole data set in one process (the tests compare the two), computed from
per-input values only, so the client never holds the (N, L + 1, K) arrays.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ..bounds import PROBABILISTIC_NOTE
from ..certify import _EXACT_LAYERS, describe_arithmetic, median_share
from .chunks import Columns, Options


def worst_layer(share: npt.NDArray[np.float64], layers: Sequence[str]) -> tuple[str, float, float]:
    """(layer, its median share, share of the layers that do no arithmetic), as
    :meth:`CertifyResult.worst_layer` picks it: rounding layers first."""
    exact = np.array([n.partition(":")[2] in _EXACT_LAYERS for n in layers], dtype=bool)
    pick = np.where(exact, -np.inf, share)
    if not np.isfinite(pick).any():
        pick = share
    i = int(np.argmax(pick))
    return layers[i], float(share[i]), float(share[exact].sum())


def summarize(c: Columns, model_name: str, opts: Options, layers: Sequence[str],
              failure_probability: float, labels: npt.NDArray[np.int64] | None = None
              ) -> dict[str, Any]:  # fmt: skip
    n = len(c)
    cert = c.certified
    worst, share, exact_share = worst_layer(median_share(c.layer_share), layers)
    ref_lim = ~cert & c.reference_limited
    out: dict[str, Any] = {
        "model": model_name, "low": opts.low.name, "reference": opts.reference.name,
        "low_arithmetic": opts.low.to_dict(), "reference_arithmetic": opts.reference.to_dict(),
        "method": opts.method, "on": opts.on, "inputs": n,
        "certified": int(cert.sum()), "certified_fraction": float(cert.mean()) if n else 0.0,
        "certified_simple": int(c.certified_simple.sum()),
        "only_sharp_condition": int((cert & ~c.certified_simple).sum()),
        "observed_flips": int(c.flipped.sum()),
        "certified_flips": int((cert & c.flipped).sum()),
        "median_tolerance": float(np.median(c.tolerance)),
        "median_bound": float(np.median(c.bound_max)),
        "median_observed_delta": float(np.median(c.observed_delta)),
        "worst_layer": worst, "worst_layer_share": share, "exact_layers_share": exact_share,
        "uncertified": np.flatnonzero(~cert).tolist(),
        "uncertified_reference_limited": np.flatnonzero(ref_lim).tolist(),
        "uncertified_low_limited": np.flatnonzero(~cert & ~ref_lim).tolist(),
        "failure_probability": failure_probability,
    }  # fmt: skip
    if opts.method == "probabilistic":
        out["method_note"] = PROBABILISTIC_NOTE
    if labels is not None:
        out["accuracy_reference"] = float(np.mean(c.reference_class == labels))
        out["accuracy_low"] = float(np.mean(c.low_class == labels))
    return out


def summary_text(s: dict[str, Any], opts: Options) -> str:
    """A short text report of a chunked run (the samples are in the stream)."""
    unc = s["uncertified"]
    rows = [
        ("model", s["model"]),
        ("low", describe_arithmetic(opts.low)),
        ("reference", describe_arithmetic(opts.reference)),
        ("method", f"{s['method']}, on {s['on']}"),
        ("inputs", f"{s['inputs']} in {s.get('chunks', '?')} chunks"),
        ("certified", f"{s['certified']} ({100 * s['certified_fraction']:.2f}%)"),
        ("observed flips", f"{s['observed_flips']} (certified and flipped: "
                           f"{s['certified_flips']})"),
        ("median bound", f"{s['median_bound']:.4g} (tolerance {s['median_tolerance']:.4g})"),
        ("worst layer", f"{s['worst_layer']} ({100 * s['worst_layer_share']:.0f}%)"),
    ]  # fmt: skip
    if "accuracy_reference" in s:
        rows.append(("accuracy", f"reference {s['accuracy_reference']:.4f}, "
                                 f"low {s['accuracy_low']:.4f}"))  # fmt: skip
    if unc:
        rows.append(("uncertified", ", ".join(map(str, unc[:20])) + (" ..." if len(unc) > 20
                                                                     else "")))  # fmt: skip
    if "stream" in s:
        rows.append(("samples in", s["stream"]))
    return "\n".join(f"{k:<17}{v}" for k, v in rows)
