"""``fperr bound --scheduler/--workers``: the command-line shell of a chunked run."""

from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import click

from ..errors import FperrInputError
from .stream import DEFAULT_CHUNK

#: options of ``fperr bound`` that need the whole result in one process
_ONE_PROCESS = {"suggest": "--suggest-fp32", "per_layer": "--per-layer"}


def wants_cluster(params: Mapping[str, Any]) -> bool:
    """True when any option of the distributed run is given."""
    keys = ("scheduler", "workers", "chunk_size", "stream")
    return bool(params.get("resume")) or any(params.get(k) is not None for k in keys)


def _check(params: Mapping[str, Any]) -> int:
    """Bad combinations, before a cluster is started; the chunk size."""
    bad = [flag for key, flag in _ONE_PROCESS.items() if params.get(key)]
    if bad:
        raise FperrInputError(f"{', '.join(bad)} runs in one process; drop --scheduler/--workers")
    if (params.get("scheduler") is None) == (params.get("workers") is None):
        raise FperrInputError("chunked runs need one of --scheduler ADDRESS or --workers N")
    if params.get("workers") is not None and params["workers"] < 1:
        raise FperrInputError(f"--workers must be a positive integer, got {params['workers']}")
    if params.get("inputs") is None:
        raise FperrInputError("chunked runs read --inputs (a .npy or .zarr file) in chunks; "
                              "give --inputs")  # fmt: skip
    stream = params.get("stream")
    if params.get("resume") and stream is None:
        raise FperrInputError("--resume needs --stream OUT.jsonl")
    if stream is not None and not params.get("resume") and Path(stream).exists():
        raise FperrInputError(f"{stream} exists: continue it with --resume, or remove it")
    chunk = DEFAULT_CHUNK if params.get("chunk_size") is None else int(params["chunk_size"])
    if chunk < 1:
        raise FperrInputError(f"--chunk-size must be a positive integer, got {chunk}")
    return chunk


def _options(params: Mapping[str, Any]) -> Any:
    from ..arith import Emulated
    from .chunks import Options

    rounding = "truncate" if params["truncating_accumulator"] else "nearest"
    lo = Emulated.from_names(params["low"], params["accumulate"], acc_rounding=rounding)
    ref = Emulated.from_names(params["reference"], params["reference_accumulate"],
                              params["reference_operand"], acc_rounding=rounding)  # fmt: skip
    return Options(lo, ref, params["method"], params["confidence"], params["on"],
                   params.get("engine", "auto"), params.get("cascade", True),
                   params.get("ranges", "sharpened"))  # fmt: skip


def bound_on_cluster(params: Mapping[str, Any], status: Callable[[str], None]) -> int:
    """Run ``fperr bound`` chunk by chunk on Dask; print the report; the exit code."""
    from .. import __version__
    from ..cli import _gate, _progress_bar, _strict_json, _write
    from ..datasets import load_labels
    from ..model import load_model
    from .cluster import cluster_client
    from .source import open_source
    from .stream import stream_certify

    chunk = _check(params)
    model = load_model(params["model_path"])
    src = open_source(params["inputs"], tuple(model.input_shape))
    labels = None if params.get("labels") is None else load_labels(params["labels"])
    opts = _options(params)
    where = params["scheduler"] or f"a local cluster of {params['workers']} workers"
    with tempfile.TemporaryDirectory() as tmp, cluster_client(
            params["scheduler"], params["workers"]) as client:  # fmt: skip
        out = params["stream"] or str(Path(tmp) / "stream.jsonl")
        status(f"bounding {src.n} inputs through {model.name} on {where}, "
               f"chunks of {chunk} ...")  # fmt: skip
        bar = _progress_bar(src.n, "bounding chunks", params["quiet"])
        try:
            run = stream_certify(client, model, src, out, opts, chunk_size=chunk, labels=labels,
                                 resume=params["resume"],
                                 progress=None if bar is None else bar.update)  # fmt: skip
        finally:
            if bar is not None:
                bar.close()
    s = dict(run.summary, fperr_version=__version__)
    if params["stream"] is None:
        del s["stream"]
    cert = run.columns.certified
    code, gate = _gate(s["certified_fraction"], params["min_certified"], bool(cert.all()))
    if params["min_certified"] is not None:
        s.update(min_certified=params["min_certified"], gate_passed=code == 0)
    text = _strict_json({"summary": s})
    if params["out"]:
        _write(params["out"], text)
    from .summary import summary_text

    click.echo(text if params["as_json"] else summary_text(s, opts) + (f"\n{gate}" if gate
                                                                       else ""))  # fmt: skip
    return code


def main(params: Mapping[str, Any], status: Callable[[str], None]) -> None:
    """Entry point from :func:`fperr.cli.bound_cmd`: exits with the run's code."""
    sys.exit(bound_on_cluster(params, status))
