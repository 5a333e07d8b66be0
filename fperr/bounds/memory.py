"""Memory the bound engine needs, estimated before it allocates.

Two allocations dominate :func:`fperr.bounds.bound_run` (see
:mod:`fperr.bounds.enclosure`):

* the explicit generators of a chunk of ``batch`` inputs: up to one source
  per unit of every earlier layer, for each unit of the layer that maps them,
  ``batch * sources * units`` floats at the largest layer, three times over
  (a layer's input generators, their image and one temporary);
* the (m, n) matrix of a convolution or average pooling whose input carries
  factored error boxes, formed from the images of the n unit vectors: the
  identity batch (n^2), its im2col patches or pooling windows, and the image
  and matrix (n m each, with a transposed copy).

:func:`estimate_bytes` adds the largest matrix term to the generator term.
It is an estimate of the peak, not a bound: it exists so that a model too
large for the engine fails at once with one line naming the size, instead of
dying in a MemoryError minutes later.  The limit is ``FPERR_MAX_BYTES``
(bytes; a suffix K, M, G or T means powers of 1024), default 4 GiB.
"""

from __future__ import annotations

import ctypes
import math
import os
import sys
from collections.abc import Iterator

from ..errors import FperrInputError
from ..layers import Layer, Residual, Shape
from ..model import Model
from ..operators import Operator

__all__ = ["DEFAULT_MAX_BYTES", "check_memory", "estimate_bytes", "keep_freed_heap", "max_bytes"]

DEFAULT_MAX_BYTES = 4 * 2**30
_FLOAT = 8  # bytes per float64
_SUFFIX = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _walk(layers: tuple[Layer, ...], shape: Shape) -> Iterator[tuple[Layer, Shape, Shape]]:
    """(layer, input shape, output shape) of every layer, residual branches included."""
    for layer in layers:
        out = layer.out_shape(shape)
        if isinstance(layer, Residual):
            yield from _walk(tuple(layer.layers), shape)
        yield layer, shape, out
        shape = out


def _matrix_bytes(layer: Layer, s_in: Shape, s_out: Shape) -> int:
    """Floats allocated to form a layer's matrix (a conv or average pooling's; 0 for most)."""
    if isinstance(layer, Operator):
        return _FLOAT * layer.zonotope_matrix_floats(s_in, s_out)
    return 0


def estimate_bytes(model: Model, batch: int) -> int:
    """Estimated peak memory of bounding ``batch`` inputs at once (see the module docstring)."""
    steps = list(_walk(tuple(model.layers), tuple(model.input_shape)))
    sources, generators, matrix = math.prod(model.input_shape), 0, 0
    for layer, s_in, s_out in steps:
        units = math.prod(s_out)
        if not getattr(layer, "moves_units", False):  # flatten, reshape: no copy
            generators = max(generators, sources * units)
        matrix = max(matrix, _matrix_bytes(layer, s_in, s_out))
        sources += units
    # a layer holds its input generators, their image and a temporary of the same size
    return 3 * _FLOAT * max(1, batch) * generators + matrix


def max_bytes() -> int:
    """The limit: ``FPERR_MAX_BYTES`` if set, else :data:`DEFAULT_MAX_BYTES`."""
    raw = os.environ.get("FPERR_MAX_BYTES", "").strip()
    if not raw:
        return DEFAULT_MAX_BYTES
    scale = _SUFFIX.get(raw[-1].upper(), 1)
    try:
        value = float(raw[:-1] if scale > 1 else raw) * scale
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise FperrInputError(f"FPERR_MAX_BYTES must be a number of bytes such as 8e9 or 8G, "
                              f"got {raw!r}")  # fmt: skip
    return int(value)


HEAP_TOP_PAD = 64 * 2**20
"""Bytes of freed memory the C allocator keeps for the next allocation (glibc's
``M_TOP_PAD``); ``FPERR_MALLOC_TOP_PAD`` overrides it, 0 leaves the allocator as
it is."""
_heap_kept = False


def keep_freed_heap() -> None:
    """Let glibc keep freed memory for reuse, once per process (Linux only).

    The engines make many numpy temporaries of a few hundred kB to a few MB.
    With glibc's defaults each is returned to the system when freed (mmap'ed,
    or trimmed off the heap) and page-faulted in again when the next one is
    made: on the digits MLP that was 40% of the quick bound's time (138 ms
    against 81 ms with the pad).  Padding the heap by :data:`HEAP_TOP_PAD` keeps
    up to that much mapped between allocations; memory use grows by at most
    the pad, values and bounds do not change."""
    global _heap_kept
    if _heap_kept or not sys.platform.startswith("linux"):
        return
    _heap_kept = True
    raw = os.environ.get("FPERR_MALLOC_TOP_PAD", "").strip()
    try:
        pad = int(float(raw)) if raw else HEAP_TOP_PAD
    except ValueError:
        raise FperrInputError(f"FPERR_MALLOC_TOP_PAD must be a number of bytes, "
                              f"got {raw!r}") from None
    if pad <= 0:
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-2, pad)  # M_TOP_PAD (malloc.h); 0 returned on failure: nothing to do
    except (OSError, AttributeError):  # not glibc (musl): its allocator has no such knob
        pass


def _gib(n: float) -> str:
    return f"{n / 2**30:.3g} GiB"


def check_memory(model: Model, batch: int) -> None:
    """Refuse, before allocating, a run estimated to need more than :func:`max_bytes`."""
    need, limit = estimate_bytes(model, batch), max_bytes()
    if need > limit:
        raise FperrInputError(
            f"model {model.name!r}: bounding {batch} input(s) at once needs about {_gib(need)} "
            f"of memory, over the limit of {_gib(limit)} (FPERR_MAX_BYTES); the engine does "
            "not yet scale to layers this large"
        )


def backward_bytes(model: Model) -> int:
    """Estimated bytes per input of the backward engine: its steps keep a few
    arrays per unit of every layer, with room for temporaries (its rows are
    pulled back a few at a time within the budget)."""
    units = sum(math.prod(s) for s in model.shapes()) * 2  # residual branches: as wide
    return 8 * 8 * units


def backward_batch_size(model: Model) -> int:
    """Inputs per batch of the backward engine: about 1/8 of :func:`max_bytes` per
    batch; one clear error, before allocating, if one input needs more than all."""
    per_input, limit = backward_bytes(model), max_bytes()
    if per_input > limit:
        raise FperrInputError(
            f"model {model.name!r}: bounding one input needs about {_gib(per_input)} of "
            f"memory, over the limit of {_gib(limit)} (FPERR_MAX_BYTES)"
        )
    return max(1, min(4096, limit // 8 // per_input))
