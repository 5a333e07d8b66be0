"""One chunk on a worker: certify its rows, reduce them to what the report needs.

The worker returns the chunk's JSON line (written to the stream as is) and its
:class:`Columns`, the per-input values the run's summary is computed from.  A
resumed run rebuilds the same columns from the lines (floats are written with
``repr``, which reads back to the same bits).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from ..arith import Emulated
from ..certify import CertifyResult, certify, predicted_class
from ..model import Model
from .source import InputSource

Array = npt.NDArray[np.float64]


@dataclass(frozen=True)
class Options:
    """Everything besides the model and the inputs that a certificate depends on."""

    low: Emulated
    reference: Emulated
    method: str = "deterministic"
    confidence: float = 0.999
    on: str = "logits"
    engine: str = "auto"
    cascade: bool = True
    ranges: str = "sharpened"

    def to_dict(self) -> dict[str, Any]:
        return {"low": self.low.to_dict(), "reference": self.reference.to_dict(),
                "method": self.method, "confidence": self.confidence, "on": self.on,
                "engine": self.engine, "cascade": self.cascade,
                "ranges": self.ranges}  # fmt: skip

    def run(self, model: Model, x: npt.ArrayLike) -> CertifyResult:
        return certify(model, x, None, self.low, self.reference, method=self.method,
                       confidence=self.confidence, on=self.on, engine=self.engine,
                       cascade=self.cascade, ranges=self.ranges)  # fmt: skip


@dataclass(frozen=True)
class Columns:
    """Per-input values of a run (or a chunk), in input order."""

    reference_class: npt.NDArray[np.int64]
    low_class: npt.NDArray[np.int64]
    tolerance: Array
    bound_max: Array  # max_k M_k, M = max(B, 2 R_ref) the margin
    observed_delta: Array
    certified: npt.NDArray[np.bool_]
    certified_simple: npt.NDArray[np.bool_]
    flipped: npt.NDArray[np.bool_]
    reference_limited: npt.NDArray[np.bool_]
    layer_share: Array  # (N, L + 1): each layer's share of max_k B_k

    def __len__(self) -> int:
        return int(self.tolerance.shape[0])


def layer_share(res: CertifyResult) -> Array:
    """(N, L + 1) per input: the share of each layer in B_k, k = argmax B (NaN rows
    for inputs without a breakdown), as :meth:`CertifyResult.layer_share`."""
    return res.layer_share()


def columns_of(res: CertifyResult) -> Columns:
    return Columns(
        reference_class=res.reference_class, low_class=predicted_class(res.y_low),
        tolerance=res.tolerance, bound_max=res.margin.max(axis=1),
        observed_delta=res.observed_delta, certified=res.certified,
        certified_simple=res.certified_simple, flipped=res.flipped,
        reference_limited=res.reference_limited, layer_share=layer_share(res),
    )  # fmt: skip


def _num(a: npt.NDArray[Any]) -> Any:
    """A list for JSON; inf and nan as the strings ``"inf"``, ``"-inf"``, ``"nan"``
    (strict JSON has no such numbers, and ``float()`` reads the strings back)."""
    out = a.tolist()
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        flat = np.asarray(a, dtype=object).ravel()
        bad = ~np.isfinite(a.ravel())
        flat[bad] = [str(float(v)) for v in a.ravel()[bad]]
        out = flat.reshape(a.shape).tolist()
    return out


def chunk_line(index: int, start: int, res: CertifyResult, cols: Columns) -> str:
    """The JSON line of a chunk: its samples (keys as in ``CertifyResult.samples``,
    ``index`` global) plus what a resumed run needs to rebuild :class:`Columns`."""
    per = {f.name: _num(getattr(cols, f.name)) for f in fields(Columns)}
    bounds = _num(res.margin)
    samples = [
        {"index": start + i, "bound": bounds[i], **{k: v[i] for k, v in per.items()}}
        for i in range(len(cols))
    ]
    rec = {
        "chunk": index, "start": start, "stop": start + len(cols),
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "layers": res.bounds.layer_names,
        "failure_probability": res.bounds.failure_probability,
        "samples": samples,
    }  # fmt: skip
    return json.dumps(rec, allow_nan=False)


_DTYPES = {"reference_class": np.int64, "low_class": np.int64, "certified": np.bool_,
           "certified_simple": np.bool_, "flipped": np.bool_, "reference_limited": np.bool_}


def columns_from_line(rec: Mapping[str, Any]) -> Columns:
    """Inverse of the per-input part of :func:`chunk_line` (``float("inf")`` reads
    the strings of non-finite values)."""
    s = rec["samples"]

    def col(name: str) -> npt.NDArray[Any]:
        raw = np.array([r[name] for r in s], dtype=object)
        return raw.astype(_DTYPES.get(name, np.float64))

    return Columns(**{f.name: col(f.name) for f in fields(Columns)})


class ChunkOut(NamedTuple):
    """What a worker sends back for one chunk (small: no per-layer arrays)."""

    line: str
    columns: Columns
    layers: list[str]
    failure_probability: float


def certify_chunk(
    model: Model, src: InputSource, index: int, start: int, stop: int, opts: Options
) -> ChunkOut:
    """The task a worker runs: read rows ``start:stop``, certify, reduce."""
    res = opts.run(model, src.rows(start, stop))
    cols = columns_of(res)
    line = chunk_line(index, start, res, cols)
    return ChunkOut(line, cols, res.bounds.layer_names, res.bounds.failure_probability)
