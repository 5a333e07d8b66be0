"""Data-parallel certification on Dask (issue 16).

The oracle is :func:`fperr.certify` in this process: with the same chunking the
distributed run must equal it bit for bit (bounds, outputs, verdicts, summary);
against one unchunked call, bounds agree to 1e-12 relative (float64 GEMMs may
block differently with the batch size; tests/test_soundness_batch.py) and every
verdict is identical.  One LocalCluster of 2 worker processes serves the module.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("distributed")

from click.testing import CliRunner  # noqa: E402
from distributed import Client, LocalCluster  # noqa: E402

import fperr  # noqa: E402
from fperr.arith import Emulated  # noqa: E402
from fperr.cli import cli  # noqa: E402
from fperr.distributed import cluster as cluster_mod  # noqa: E402
from fperr.distributed import concat_results, open_source, stream_certify  # noqa: E402
from fperr.distributed.chunks import Columns, Options, columns_of  # noqa: E402
from fperr.distributed.cluster import BLAS_ENV  # noqa: E402
from fperr.errors import FperrInputError  # noqa: E402
from fperr.examples import digits, load, path  # noqa: E402

N, CHUNK = 300, 40  # 8 chunks, the last one short


@pytest.fixture(scope="module")
def client():
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0", env=BLAS_ENV) as cluster:  # fmt: skip
        with Client(cluster) as c:
            yield c


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    X, y = digits()
    d = tmp_path_factory.mktemp("dist")
    np.save(d / "x.npy", X[:N])
    np.save(d / "y.npy", y[:N])
    return d, X[:N], y[:N]


@pytest.fixture(scope="module")
def model():
    return load("mlp")


OPTS = Options(Emulated.from_names("binary16", "binary32"),
               Emulated.from_names("binary32", "binary32"))  # fmt: skip


def _one_process(model, X, opts=OPTS, chunk=CHUNK):
    """The oracle: certify in this process, chunk by chunk, joined, with one BLAS
    thread as the workers have (GEMM results may depend on the thread count)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):
        return concat_results([opts.run(model, X[s : s + chunk])
                               for s in range(0, len(X), chunk)])  # fmt: skip


def _read_stream(p: Path) -> tuple[dict, list[dict]]:
    lines = [json.loads(x) for x in p.read_text().splitlines()]
    return lines[0], lines[1:]


def _assert_same_columns(a: Columns, b: Columns) -> None:
    for name in Columns.__dataclass_fields__:
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name


def _run(client, model, d, out, opts=OPTS, **kw):
    src = open_source(d / "x.npy", model.input_shape)
    return stream_certify(client, model, src, out, opts, chunk_size=CHUNK, **kw)


def test_stream_equals_one_process(client, model, data, tmp_path):
    d, X, y = data
    run = _run(client, model, d, tmp_path / "s.jsonl", labels=y)
    ref = _one_process(model, X)
    _assert_same_columns(run.columns, columns_of(ref))
    head, chunks = _read_stream(tmp_path / "s.jsonl")
    assert head["inputs"] == N and [c["chunk"] for c in chunks] == list(range(8))
    samples = [s for c in chunks for s in c["samples"]]
    assert [s["index"] for s in samples] == list(range(N))
    bounds = np.array([[float(v) for v in s["bound"]] for s in samples])
    assert np.array_equal(bounds, ref.margin)  # bit for bit through JSON
    assert np.array_equal([s["certified"] for s in samples], ref.certified)
    expect = concat_results([ref], y).summary()
    assert {k: run.summary[k] for k in expect} == expect
    # against one unchunked call: 1e-12 relative, identical verdicts
    whole = fperr.certify(model, X, y, OPTS.low, OPTS.reference)
    assert np.allclose(bounds, whole.margin, rtol=1e-12, atol=0)
    assert np.array_equal(run.columns.certified, whole.certified)
    assert run.summary["uncertified"] == whole.summary()["uncertified"]


def test_certify_accepts_dask_array(client, model, data):
    da = pytest.importorskip("dask.array")
    _, X, y = data
    seen: list[int] = []
    res = fperr.certify(model, da.from_array(X, chunks=(CHUNK, 16)), y, OPTS.low,
                        OPTS.reference, progress=seen.append)  # fmt: skip
    ref = _one_process(model, X)
    for f in ("y_ref", "y_low", "margin", "certified"):
        assert np.array_equal(getattr(res, f), getattr(ref, f)), f
    assert np.array_equal(res.bounds.per_layer, ref.bounds.per_layer)
    assert np.array_equal(res.labels, y) and sum(seen) == 2 * N


def test_killed_worker_same_results(client, model, data, tmp_path):
    d, X, _ = data
    pids = client.run(os.getpid)
    victim = max(pids.values())
    after: list[int] = []  # chunks completed after the kill, in completion order

    def kill_one(chunk: int) -> None:
        if not after and not getattr(kill_one, "done", False):
            os.kill(victim, signal.SIGKILL)  # after the first of 30 chunks
            kill_one.done = True  # type: ignore[attr-defined]
        else:
            after.append(chunk)

    src = open_source(d / "x.npy", model.input_shape)
    run = stream_certify(client, model, src, tmp_path / "k.jsonl", OPTS, chunk_size=10,
                         on_chunk=kill_one)  # fmt: skip
    assert run.computed == 30 and len(after) == 29
    _assert_same_columns(run.columns, columns_of(_one_process(model, X, chunk=10)))
    worker = {c["chunk"]: c["worker"] for c in _read_stream(tmp_path / "k.jsonl")[1]}
    late = {worker[i] for i in after[5:]}  # (results in flight at the kill aside)
    assert not any(w.endswith(f":{victim}") for w in late), late
    client.wait_for_workers(2, timeout=30)
    assert victim not in client.run(os.getpid).values()


def test_resume_computes_only_missing_chunks(client, model, data, tmp_path):
    d, _, y = data
    full = _run(client, model, d, tmp_path / "full.jsonl", labels=y)
    lines = (tmp_path / "full.jsonl").read_text().splitlines(keepends=True)
    part = tmp_path / "part.jsonl"  # interrupted: 3 chunks done, the 4th cut mid-line
    part.write_text("".join(lines[:4]) + lines[4][:100])
    run = _run(client, model, d, part, labels=y, resume=True)
    assert (run.reused, run.computed) == (3, 5)
    _assert_same_columns(run.columns, full.columns)
    assert {k: v for k, v in run.summary.items() if k != "stream"} == {
        k: v for k, v in full.summary.items() if k != "stream"}

    def strip(p: Path) -> list[dict]:
        return [{k: v for k, v in r.items() if k != "worker"} for r in _read_stream(p)[1]]

    assert strip(part) == strip(tmp_path / "full.jsonl")


def test_resume_refuses_a_mismatch(client, model, data, tmp_path):
    d, X, _ = data
    _run(client, model, d, tmp_path / "r.jsonl")
    before = (tmp_path / "r.jsonl").read_bytes()
    prob = Options(OPTS.low, OPTS.reference, method="probabilistic")
    with pytest.raises(FperrInputError, match="other options"):
        _run(client, model, d, tmp_path / "r.jsonl", opts=prob, resume=True)
    w = model.layers[0].weight
    w[0, 0] = np.nextafter(w[0, 0], np.inf)  # one ulp in one weight
    try:
        with pytest.raises(FperrInputError, match="other model"):
            _run(client, model, d, tmp_path / "r.jsonl", resume=True)
    finally:
        w[0, 0] = np.nextafter(w[0, 0], -np.inf)
    X2 = X.copy()
    X2[CHUNK - 1, 5] += 1  # the last row of the first chunk
    other = tmp_path / "other"
    other.mkdir()
    np.save(other / "x.npy", X2)
    with pytest.raises(FperrInputError, match="other inputs"):
        _run(client, model, other, tmp_path / "r.jsonl", resume=True)
    assert (tmp_path / "r.jsonl").read_bytes() == before  # a refused resume writes nothing
    with pytest.raises(FperrInputError, match="exists"):
        _run(client, model, d, tmp_path / "r.jsonl")


def test_zarr_inputs(client, model, data, tmp_path):
    zarr = pytest.importorskip("zarr")
    d, X, _ = data
    z = zarr.open_array(tmp_path / "x.zarr", mode="w", shape=X.shape, chunks=(64, 64),
                        dtype="f8")  # fmt: skip
    z[:] = X
    src = open_source(tmp_path / "x.zarr", model.input_shape)
    run = stream_certify(client, model, src, tmp_path / "z.jsonl", OPTS, chunk_size=CHUNK)
    _assert_same_columns(run.columns, columns_of(_one_process(model, X)))


# -- the command line ------------------------------------------------------------------
def _bound(args: list[str]):
    return CliRunner().invoke(cli, ["bound", "--model", str(path("mlp")), "-q", *args])


def test_cli_scheduler_and_resume(client, model, data, tmp_path):
    d, X, y = data
    out = tmp_path / "c.jsonl"
    base = ["--inputs", str(d / "x.npy"), "--labels", str(d / "y.npy"), "--chunk-size",
            str(CHUNK), "--stream", str(out)]  # fmt: skip
    res = _bound([*base, "--scheduler", client.scheduler.address, "--json"])
    assert res.exit_code in (0, 1), res.output
    s = json.loads(res.stdout)["summary"]
    expect = concat_results([_one_process(model, X)], y).summary()
    assert {k: s[k] for k in expect} == expect and s["stream"] == str(out)
    assert res.exit_code == (0 if s["certified"] == N else 1)
    # a resume with another --low is refused in one line, exit 2
    res = _bound([*base, "--scheduler", client.scheduler.address, "--resume", "--low",
                  "bfloat16"])  # fmt: skip
    assert res.exit_code == 2 and res.stderr.count("\n") == 1
    assert "other options" in res.stderr
    # a complete stream resumes without computing anything, here on a local cluster
    res = _bound([*base, "--workers", "1", "--resume", "--json"])
    assert res.exit_code in (0, 1) and json.loads(res.stdout)["summary"]["certified"] == s[
        "certified"]


@pytest.mark.parametrize("args, words", [
    (["--workers", "2", "--chunk-size", "0"], ("--chunk-size", "positive")),
    (["--workers", "0"], ("--workers", "positive")),
    (["--chunk-size", "10"], ("--scheduler", "--workers")),
    (["--workers", "1", "--scheduler", "tcp://127.0.0.1:9"], ("one of",)),
    (["--workers", "1", "--resume"], ("--resume", "--stream")),
    (["--workers", "1", "--suggest-fp32"], ("--suggest-fp32", "one process")),
    (["--scheduler", "tcp://127.0.0.1:9"], ("cannot reach", "127.0.0.1:9")),
    (["--scheduler", "nonsense"], ("cannot reach", "nonsense")),
])  # fmt: skip
def test_cli_bad_input_one_line(data, monkeypatch, args, words):
    d, _, _ = data
    monkeypatch.setattr(cluster_mod, "CONNECT_TIMEOUT", 0.5)
    res = _bound(["--inputs", str(d / "x.npy"), *args])
    assert res.exit_code == 2, (res.output, res.exception)
    assert res.stderr.startswith("fperr: error:") and res.stderr.count("\n") == 1, res.stderr
    for w in words:
        assert w in res.stderr, (w, res.stderr)


def test_cli_inputs_must_be_chunkable(data, tmp_path):
    res = _bound(["--workers", "1", "--inputs", str(path("mlp").parent / "digits.npz")])
    assert res.exit_code == 2 and ".npy or .zarr" in res.stderr
    (tmp_path / "s.jsonl").write_text("{}\n")
    res = _bound(["--workers", "1", "--inputs", str(data[0] / "x.npy"), "--stream",
                  str(tmp_path / "s.jsonl")])  # fmt: skip
    assert res.exit_code == 2 and "--resume" in res.stderr
