"""Throughput of ``fperr bound`` on Dask, and the client's memory (issue 16).

* inputs/s with 1 and 2 local worker processes (one thread and one BLAS thread
  each), 100,000 inputs through the digits MLP (the 1,797 digits tiled),
  cluster start-up and a warm-up chunk excluded; target: 2 workers >= 1.7x one;
* peak memory of the client for 1,000,000 inputs streamed from a memory-mapped
  ``.npy`` (tracemalloc peak of the run, and the process's maximum RSS);
  target <= 500 MB.

Run: python benchmarks/dask_throughput.py [--quick]   (--quick: 20,000 and 200,000)
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from fperr.arith import Emulated
from fperr.distributed import cluster_client, open_source, stream_certify
from fperr.distributed.chunks import Options
from fperr.examples import digits, load

OPTS = Options(Emulated.from_names("binary16", "binary32"),
               Emulated.from_names("binary32", "binary32"))  # fmt: skip


def write_inputs(path: Path, n: int) -> None:
    """n digits (tiled) as a .npy written block by block: never n rows in memory."""
    X = np.ascontiguousarray(digits()[0])
    with path.open("wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f8", "fortran_order": False, "shape": (n, X.shape[1])})
        for start in range(0, n, len(X)):
            f.write(X[: min(len(X), n - start)].tobytes())


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def throughput(workers: int, x: Path, chunk: int, tmp: Path) -> tuple[float, float, float]:
    """(inputs/s, CPU seconds of the workers, CPU seconds of the client and scheduler)
    of one timed run; the CPU times tell what 2 idle cores would give when other
    processes share the machine's cores."""
    model = load("mlp")
    with cluster_client(workers=workers) as client:
        warm = tmp / "warm.npy"
        np.save(warm, digits()[0][:200])
        stream_certify(client, model, open_source(warm, model.input_shape),
                       tmp / f"warm{workers}.jsonl", OPTS, chunk_size=100)  # fmt: skip
        src = open_source(x, model.input_shape)
        w0, c0, t = sum(client.run(_cpu).values()), _cpu(), time.perf_counter()
        stream_certify(client, model, src, tmp / f"t{workers}.jsonl", OPTS, chunk_size=chunk)
        wall = time.perf_counter() - t
        return src.n / wall, sum(client.run(_cpu).values()) - w0, _cpu() - c0


def client_memory(x: Path, chunk: int, tmp: Path) -> tuple[float, float, float]:
    """(tracemalloc peak of the run, max RSS of this process, seconds), MB and s."""
    model = load("mlp")
    with cluster_client(workers=2) as client:
        src = open_source(x, model.input_shape)
        tracemalloc.start()
        t = time.perf_counter()
        run = stream_certify(client, model, src, tmp / "m.jsonl", OPTS, chunk_size=chunk)
        secs = time.perf_counter() - t
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert len(run.columns) == src.n
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return peak / 2**20, rss, secs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="20,000 and 200,000 inputs")
    ap.add_argument("--chunk-size", type=int, default=2048)  # >= 25 chunks: balanced
    a = ap.parse_args()
    n_rate, n_mem = (20_000, 200_000) if a.quick else (100_000, 1_000_000)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write_inputs(tmp / "rate.npy", n_rate)
        runs = {w: throughput(w, tmp / "rate.npy", a.chunk_size, tmp) for w in (1, 2)}
        for w, (r, wcpu, ccpu) in runs.items():
            print(f"{w} worker{'s' if w > 1 else ''}: {r:,.0f} inputs/s ({n_rate:,} inputs); "
                  f"CPU s: workers {wcpu:.1f}, client + scheduler {ccpu:.1f}")
        ratio = runs[2][0] / runs[1][0]
        # on 2 idle cores one worker takes its CPU time (the client works on the other
        # core); two share both cores with the client: (workers + client) / 2
        ideal = runs[1][1] / ((runs[2][1] + runs[2][2]) / 2)
        print(f"2 idle cores, from CPU times: about {ideal:.2f}x")
        print(f"load average of the machine now: {os.getloadavg()[0]:.1f} "
              "(other processes share the cores)")
        print(f"speed-up 2 vs 1 workers: {ratio:.2f}x (target >= 1.7x)")
        (tmp / "rate.npy").unlink()
        write_inputs(tmp / "mem.npy", n_mem)
        peak, rss, secs = client_memory(tmp / "mem.npy", a.chunk_size, tmp)
        print(f"client memory, {n_mem:,} inputs memory-mapped: tracemalloc peak {peak:.0f} MB, "
              f"max RSS {rss:.0f} MB (target <= 500 MB); {n_mem / secs:,.0f} inputs/s")
    sys.exit(0 if ratio >= 1.7 and max(peak, rss) <= 500 else 1)


if __name__ == "__main__":
    main()
