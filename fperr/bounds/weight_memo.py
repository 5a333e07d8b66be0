"""What a bound computes from the weights alone, computed once per call.

A bound goes through the data in batches, and the cascade runs several
stages; each batch used to round every weight matrix to the run's operand
format again and to scan it for the largest relative rounding error
(:func:`.rules.parameter_rounding`): elementwise passes over the weights, per
batch and layer, that cost a fifth of the cascade's first stage on the
digits MLP.  Within one call the weights do not change, so
:func:`remembering` (entered by :func:`fperr.bounds.bound`,
:func:`fperr.bounds.bound_run` and the quick stage) keeps the results for the
call's duration, keyed by the arrays' identities and held by strong
references (an identity cannot be reused while its array is held).  Outside
it nothing is kept.  A context variable, so concurrent calls in threads keep
their own.

Operator norms (an SVD per dense layer, per-frequency SVDs per convolution)
cost far more than reading the weights, and small calls (one image at a time)
would pay them again each call: :func:`by_content` keeps those across calls,
keyed by a hash of the weights' bytes, so a weight changed in place is never
served a stale norm.
"""

from __future__ import annotations

import contextvars
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar, cast

import numpy as np

_MEMO: contextvars.ContextVar[dict[Any, tuple[Any, Any]] | None] = contextvars.ContextVar(
    "fperr_weight_memo", default=None
)
T = TypeVar("T")


@contextmanager
def remembering() -> Iterator[None]:
    """Keep weight-derived results until the outermost such block ends."""
    if _MEMO.get() is not None:  # nested: the outer call's memo serves
        yield
        return
    token = _MEMO.set({})
    try:
        yield
    finally:
        _MEMO.reset(token)


def memo(kind: str, arrays: tuple[Any, ...], extra: Any, compute: Callable[[], T]) -> T:
    """``compute()``, or its earlier result for the same ``arrays`` (by identity)
    and ``extra`` (hashable) within a :func:`remembering` block."""
    table = _MEMO.get()
    if table is None:
        return compute()
    key = (kind, tuple(id(a) for a in arrays), extra)
    hit = table.get(key)
    if hit is None:
        value = _read_only(compute())  # shared by every batch: nobody may write to it
        hit = (arrays, value)  # the arrays kept alive: their ids stay theirs
        table[key] = hit
    return hit[1]


def _read_only(value: T) -> T:
    """``value`` (an array or a tuple of them and numbers) with its arrays read-only."""
    for v in value if isinstance(value, tuple) else (value,):
        if hasattr(v, "setflags"):
            v.setflags(write=False)
    return value


# -- across calls, by content --------------------------------------------------------
CONTENT_ENTRIES = 1024
"""Results kept across calls by :func:`by_content` (least recently used dropped)."""

_CONTENT: OrderedDict[tuple[Any, ...], Any] = OrderedDict()
_CONTENT_LOCK = threading.Lock()


def digest(a: Any) -> tuple[Any, ...]:
    """What identifies an array's content: shape, dtype and a 128-bit hash of its
    bytes (hashing costs about a millisecond per megabyte, the results it guards
    a dense SVD or a convolution's per-frequency SVDs)."""
    arr = np.ascontiguousarray(a)
    return (arr.shape, arr.dtype.str, hashlib.blake2b(arr.data, digest_size=16).digest())


def by_content(kind: str, array: Any, extra: Any, compute: Callable[[], T]) -> T:
    """``compute()``, or its result for an array of equal content (and equal
    ``extra``) from any earlier call: for results that cost far more than reading
    the array (operator norms).  Keyed by content, not identity, so a weight changed
    in place between calls is computed anew; returned arrays are read-only."""
    key = (kind, digest(array), extra)
    with _CONTENT_LOCK:
        if key in _CONTENT:
            _CONTENT.move_to_end(key)
            return cast(T, _CONTENT[key])
    value = _read_only(compute())  # shared by later calls
    with _CONTENT_LOCK:
        _CONTENT[key] = value
        while len(_CONTENT) > CONTENT_ENTRIES:
            _CONTENT.popitem(last=False)
    return value
