"""Inputs a worker reads by row range: a memory-mapped ``.npy`` or a ``.zarr`` array.

The client opens only the header (shape and dtype); the rows of a chunk are read
on the worker that certifies them, so the client never holds the data set.
Every worker must see the file at the same path (a shared file system).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import FperrInputError

_KINDS = {".npy": "npy", ".zarr": "zarr"}


@dataclass(frozen=True)
class InputSource:
    """Where the inputs lie and what the header says; rows are read lazily."""

    path: str  # absolute
    kind: str  # "npy" or "zarr"
    shape: tuple[int, ...]
    dtype: str
    nbytes: int  # size of the file (npy) or of the array (zarr)

    @property
    def n(self) -> int:
        return self.shape[0]

    def rows(self, start: int, stop: int) -> npt.NDArray[Any]:
        """Rows ``start:stop`` as an in-memory array (only they are read)."""
        return np.array(_open(self.path, self.kind)[start:stop])


def _open(path: str, kind: str) -> Any:
    if kind == "npy":
        return np.load(path, mmap_mode="r", allow_pickle=False)
    import zarr

    return zarr.open_array(path, mode="r")


def open_source(path: str | Path, input_shape: tuple[int, ...]) -> InputSource:
    """Check the header of ``path`` against the model's input shape; read no rows."""
    p = Path(path)
    kind = _KINDS.get(p.suffix.lower())
    if kind is None:
        raise FperrInputError(f"{p}: distributed inputs must be a .npy or .zarr file "
                              "(read in chunks by the workers)")  # fmt: skip
    if not p.exists():
        raise FperrInputError(f"input file not found: {p}")
    try:
        arr = _open(str(p.resolve()), kind)
    except ImportError:
        raise FperrInputError(f"{p}: .zarr inputs need zarr: pip install 'fperr[dask]'") from None
    except (OSError, ValueError) as exc:
        raise FperrInputError(f"{p}: cannot read {p.suffix} file ({exc})") from None
    shape, dtype = tuple(int(s) for s in arr.shape), np.dtype(arr.dtype)
    if dtype.kind not in "biuf":
        raise FperrInputError(f"{p}: inputs must be real numbers, got dtype {dtype}")
    if len(shape) < 2 or math.prod(shape[1:]) != math.prod(input_shape):
        raise FperrInputError(f"{p}: inputs have shape {list(shape)}; the model expects "
                              f"[N, {', '.join(map(str, input_shape))}]")  # fmt: skip
    if shape[0] == 0:
        raise FperrInputError(f"{p}: no inputs (shape {list(shape)})")
    size = p.stat().st_size if kind == "npy" else math.prod(shape) * dtype.itemsize
    return InputSource(str(p.resolve()), kind, shape, dtype.str, int(size))


def chunk_bounds(n: int, chunk_size: int) -> list[tuple[int, int]]:
    """Row ranges ``[start, stop)`` of the chunks, in input order."""
    if chunk_size < 1:
        raise FperrInputError(f"--chunk-size must be a positive integer, got {chunk_size}")
    return [(s, min(s + chunk_size, n)) for s in range(0, n, chunk_size)]


def inputs_hash(src: InputSource, chunk_size: int) -> str:
    """SHA-256 of what identifies the inputs without reading them all: the file's
    name, size, shape and dtype, and the bytes of the first and the last row of
    every chunk (a few rows per chunk; an edit inside a chunk goes unseen)."""
    h = hashlib.sha256()
    h.update(repr((Path(src.path).name, src.nbytes, src.shape, src.dtype)).encode())
    arr = _open(src.path, src.kind)
    for start, stop in chunk_bounds(src.n, chunk_size):
        h.update(np.ascontiguousarray(arr[start]).tobytes())
        h.update(np.ascontiguousarray(arr[stop - 1]).tobytes())
    return h.hexdigest()
