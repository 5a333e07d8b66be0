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
"""

from __future__ import annotations

import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

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
        value = compute()
        for v in value if isinstance(value, tuple) else (value,):
            if hasattr(v, "setflags"):  # shared by every batch: nobody may write to it
                v.setflags(write=False)
        hit = (arrays, value)  # the arrays kept alive: their ids stay theirs
        table[key] = hit
    return hit[1]
