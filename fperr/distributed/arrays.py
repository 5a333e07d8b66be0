"""``fperr.certify`` of a dask array: one certify per block of rows, then joined.

Bounds do not depend on the batch an input is bounded in, so the joined result
equals, bit for bit, :func:`fperr.certify` of the whole array in one process.
The blocks run on the scheduler dask would use for the array (a
``distributed.Client`` when one is active); the model goes into the graph once.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt

from ..arith import Emulated
from ..bounds import RunBound
from ..certify import CertifyResult, certify
from ..errors import FperrInputError
from ..model import Model


def is_dask_array(X: Any) -> bool:
    """True for a ``dask.array.Array`` (checked without importing dask)."""
    return type(X).__module__.startswith("dask.array") and hasattr(X, "to_delayed")


def _cat_run(runs: Sequence[RunBound]) -> RunBound:
    cat = np.concatenate
    return replace(runs[0], output=cat([r.output for r in runs]),
                   radius=cat([r.radius for r in runs]),
                   per_layer=cat([r.per_layer for r in runs]))  # fmt: skip


def concat_results(parts: Sequence[CertifyResult], labels: npt.ArrayLike | None = None
                   ) -> CertifyResult:  # fmt: skip
    """The results of consecutive blocks of inputs as one result, in order."""
    first = parts[0]
    b = replace(first.bounds, low=_cat_run([p.bounds.low for p in parts]),
                reference=_cat_run([p.bounds.reference for p in parts]))  # fmt: skip
    lab = None if labels is None else np.asarray(labels, dtype=np.int64)
    if lab is not None and lab.shape[0] != b.low.output.shape[0]:
        raise FperrInputError(f"{lab.shape[0]} labels for {b.low.output.shape[0]} inputs")
    return replace(first, bounds=b, y_ref=b.reference.output, y_low=b.low.output, labels=lab)


def certify_dask(
    model: Model,
    X: Any,
    labels: npt.ArrayLike | None = None,
    low: Emulated | None = None,
    reference: Emulated | None = None,
    *,
    method: str = "deterministic",
    confidence: float = 0.999,
    on: str = "logits",
    keep: Mapping[int, Emulated] | None = None,
    progress: Callable[[int], None] | None = None,
    engine: str = "auto",
    cascade: bool = True,
    ranges: str = "sharpened",
) -> CertifyResult:
    """:func:`fperr.certify` of a dask array ``X`` (N, ...), block by block of rows.

    ``progress`` is called with 2 n for each block of n inputs once all are done.
    """
    import dask

    if X.ndim < 2 or X.shape[0] == 0:
        return certify(model, np.asarray(X), labels, low, reference, method=method,
                       confidence=confidence, on=on, keep=keep, engine=engine,
                       cascade=cascade, ranges=ranges)  # fmt: skip
    X = X.rechunk({i: -1 for i in range(1, X.ndim)})  # blocks of whole rows
    m = dask.delayed(model, name=f"fperr-model-{uuid.uuid4().hex}")
    task = dask.delayed(certify, pure=False)
    parts = dask.compute(*[
        task(m, block, None, low, reference, method=method, confidence=confidence, on=on,
             keep=keep, engine=engine, cascade=cascade, ranges=ranges)
        for block in X.to_delayed().ravel()
    ])  # fmt: skip
    if progress is not None:
        for p in parts:
            progress(2 * p.y_ref.shape[0])
    return concat_results(parts, labels)
