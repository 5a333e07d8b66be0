"""The chunked run and its JSON-lines stream: written as chunks complete,
put in input order at the end, resumable.

The stream's first line is a header naming three SHA-256 hashes:

* ``model``: the model's name, input shape, and every layer's type, parameters
  and weight bytes (dtype, shape, contents);
* ``inputs``: see :func:`~.source.inputs_hash` (file name, size, shape, dtype,
  and the first and last row of each chunk);
* ``options``: the low and reference arithmetic, method, confidence, outputs
  certified, chunk size and fperr version.

Every further line is one chunk (:func:`~.chunks.chunk_line`).  ``resume``
refuses a stream whose hashes differ, keeps its complete chunk lines (a line cut
short by the interruption is dropped) and computes only the other chunks.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..errors import FperrInputError
from ..model import Model
from .chunks import ChunkOut, Columns, Options, certify_chunk, columns_from_line
from .source import InputSource, chunk_bounds, inputs_hash
from .summary import summarize

FORMAT = 1
DEFAULT_CHUNK = 4096


def _feed(h: Any, obj: Any) -> None:
    """Hash a layer tree: arrays by dtype, shape and bytes, layers by their fields."""
    if isinstance(obj, np.ndarray):
        h.update(repr((obj.dtype.str, obj.shape)).encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, list | tuple):
        h.update(f"seq{len(obj)}".encode())
        for o in obj:
            _feed(h, o)
    elif hasattr(obj, "__dict__"):
        h.update(type(obj).__name__.encode())
        for k in sorted(vars(obj)):
            h.update(k.encode())
            _feed(h, vars(obj)[k])
    else:
        h.update(repr(obj).encode())


def model_hash(model: Model) -> str:
    """SHA-256 of the model's name, input shape and layers (spec and weight bytes)."""
    h = hashlib.sha256(repr((model.name, tuple(model.input_shape))).encode())
    _feed(h, model.layers)
    h.update(repr((model.wiring, model.names)).encode())
    return h.hexdigest()


def options_hash(opts: Options, chunk_size: int) -> str:
    from .. import __version__

    spec = {**opts.to_dict(), "chunk_size": chunk_size, "fperr_version": __version__}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()


def header(model: Model, src: InputSource, opts: Options, chunk_size: int) -> dict[str, Any]:
    hashes = {"model": model_hash(model), "inputs": inputs_hash(src, chunk_size),
              "options": options_hash(opts, chunk_size)}  # fmt: skip
    return {"fperr_stream": FORMAT, "model_name": model.name, "inputs": src.n,
            "chunk_size": chunk_size, "options": opts.to_dict(), "hash": hashes}  # fmt: skip


def _start(path: Path, head: dict[str, Any]) -> None:
    if path.exists():
        raise FperrInputError(f"{path} exists: continue it with --resume, or remove it")
    try:
        path.write_text(json.dumps(head) + "\n")
    except OSError as exc:
        raise FperrInputError(f"cannot write {path}: {exc.strerror or exc}") from None


def _lines(path: Path) -> Iterable[tuple[int, bytes]]:
    """(offset, line) of each complete line (one ending in a newline)."""
    pos = 0
    with path.open("rb") as f:
        for line in f:
            if not line.endswith(b"\n"):
                return
            yield pos, line
            pos += len(line)


def _resume(path: Path, head: dict[str, Any]) -> dict[int, dict[str, Any]]:
    """The chunk records already in ``path``; the file is cut after the last one."""
    if not path.is_file():
        raise FperrInputError(f"--resume: {path} does not exist (start without --resume)")
    records: dict[int, dict[str, Any]] = {}
    end = 0
    for pos, line in _lines(path):
        try:
            rec = json.loads(line)
        except ValueError:
            break  # cut short mid-write: this chunk and any after it are recomputed
        if pos == 0:
            _check_header(path, rec, head)
        elif isinstance(rec, dict) and "chunk" in rec:
            records[int(rec["chunk"])] = rec
        end = pos + len(line)
    if end == 0:
        raise FperrInputError(f"--resume: {path} has no header line; it is not an fperr stream")
    with path.open("r+b") as f:
        f.truncate(end)
    return records


def _check_header(path: Path, old: Any, new: dict[str, Any]) -> None:
    if not isinstance(old, dict) or old.get("fperr_stream") != FORMAT:
        raise FperrInputError(f"--resume: {path} is not an fperr stream (format {FORMAT})")
    for what in ("model", "inputs", "options"):
        a, b = old.get("hash", {}).get(what), new["hash"][what]
        if a != b:
            raise FperrInputError(f"--resume: {path} was written for other {what} (hash "
                                  f"{str(a)[:12]}, now {b[:12]}); remove it or drop --resume")


def _reorder(path: Path) -> None:
    """Rewrite the stream with its chunk lines in input order (atomically)."""
    where: list[tuple[int, int, int]] = []  # (chunk, offset, length)
    for pos, line in _lines(path):
        if pos:
            where.append((int(json.loads(line)["chunk"]), pos, len(line)))
    tmp = path.with_name(path.name + ".tmp")
    with path.open("rb") as src, tmp.open("wb") as dst:
        dst.write(src.readline())
        for _, pos, n in sorted(where):
            src.seek(pos)
            dst.write(src.read(n))
    os.replace(tmp, path)


class _Store:
    """Per-input columns of the whole run, filled chunk by chunk in any order."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.cols: dict[str, npt.NDArray[Any]] = {}

    def put(self, start: int, c: Columns) -> None:
        for f in fields(Columns):
            a = getattr(c, f.name)
            if f.name not in self.cols:
                self.cols[f.name] = np.empty((self.n, *a.shape[1:]), dtype=a.dtype)
            self.cols[f.name][start : start + len(c)] = a

    def columns(self) -> Columns:
        return Columns(**self.cols)


@dataclass(frozen=True)
class StreamRun:
    """A finished chunked run: its summary and per-input columns (input order)."""

    summary: dict[str, Any]
    columns: Columns
    computed: int  # chunks certified in this run
    reused: int  # chunks read back from the stream (--resume)
    path: Path


def stream_certify(
    client: Any,
    model: Model,
    src: InputSource,
    out: str | Path,
    opts: Options,
    *,
    chunk_size: int = DEFAULT_CHUNK,
    labels: npt.NDArray[np.int64] | None = None,
    resume: bool = False,
    progress: Callable[[int], None] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> StreamRun:
    """Certify the inputs of ``src`` chunk by chunk on ``client``'s workers.

    Chunk lines are appended to ``out`` as they complete (``on_chunk`` is then
    called with the chunk's index) and put in input order at the end.
    """
    plan = chunk_bounds(src.n, chunk_size)
    if labels is not None and labels.shape[0] != src.n:
        raise FperrInputError(f"{labels.shape[0]} labels for {src.n} inputs")
    path, head = Path(out), header(model, src, opts, chunk_size)
    records = _resume(path, head) if resume else {}
    if not resume:
        _start(path, head)
    store = _Store(src.n)
    meta: tuple[list[str], float] = ([], 0.0)
    for i, rec in records.items():
        store.put(plan[i][0], columns_from_line(rec))
        meta = (rec["layers"], rec["failure_probability"])
        if progress is not None:
            progress(plan[i][1] - plan[i][0])
    todo = [i for i in range(len(plan)) if i not in records]
    for out_i in _compute(client, model, src, opts, plan, todo, path):
        store.put(plan[out_i[0]][0], out_i[1].columns)
        meta = (out_i[1].layers, out_i[1].failure_probability)
        if progress is not None:
            progress(plan[out_i[0]][1] - plan[out_i[0]][0])
        if on_chunk is not None:
            on_chunk(out_i[0])
    _reorder(path)
    cols = store.columns()
    s = summarize(cols, model.name, opts, meta[0], meta[1], labels)
    s.update(chunks=len(plan), chunk_size=chunk_size, stream=str(path))
    return StreamRun(s, cols, len(todo), len(records), path)


def _compute(client: Any, model: Model, src: InputSource, opts: Options,
             plan: list[tuple[int, int]], todo: list[int], path: Path
             ) -> Iterable[tuple[int, ChunkOut]]:  # fmt: skip
    """Submit the chunks ``todo``; yield (index, output) as each completes, its line
    already on disk.  The model is scattered to every worker once."""
    if not todo:
        return
    from distributed import as_completed

    model_f = client.scatter(model, broadcast=True, hash=False)
    futures = {client.submit(certify_chunk, model_f, src, i, *plan[i], opts, pure=False): i
               for i in todo}  # fmt: skip
    done = as_completed(list(futures))
    try:
        with path.open("a") as f:
            for fut in done:
                out: ChunkOut = fut.result()
                f.write(out.line + "\n")
                f.flush()
                yield futures.pop(fut), out
                fut.release()
    finally:
        client.cancel(list(futures))
