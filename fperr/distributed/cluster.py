"""A Dask client: to a running scheduler, or to a local cluster started for the run."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import FperrInputError

#: one BLAS thread per worker process: the workers are the parallelism
BLAS_ENV = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
CONNECT_TIMEOUT = 10.0  # seconds


def _distributed() -> Any:
    try:
        import distributed
    except ImportError:
        raise FperrInputError("running on Dask needs dask[distributed]: "
                              "pip install 'fperr[dask]'") from None  # fmt: skip
    return distributed


def _probe(address: str) -> None:
    """Open and close one connection to the scheduler: a wrong or dead address is
    bad input (one line), and no half-made Client is left to complain at exit."""
    import asyncio

    from distributed.comm import connect

    async def knock() -> None:
        comm = await connect(address, timeout=CONNECT_TIMEOUT)
        await comm.close()

    try:
        asyncio.run(knock())
    except (OSError, TimeoutError, ValueError, TypeError) as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FperrInputError(f"cannot reach the Dask scheduler at {address}: {why}") from None


@contextmanager
def cluster_client(scheduler: str | None = None, workers: int | None = None) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler`` (an address such as
    ``tcp://host:8786``), or for a local cluster of ``workers`` processes with
    one thread and one BLAS thread each; closed on exit."""
    if (scheduler is None) == (workers is None):
        raise FperrInputError("give one of --scheduler ADDRESS or --workers N")
    d = _distributed()
    if scheduler is not None:
        _probe(scheduler)
        with d.Client(scheduler, timeout=CONNECT_TIMEOUT) as client:
            yield client
        return
    if workers is None or workers < 1:
        raise FperrInputError(f"--workers must be a positive integer, got {workers}")
    import dask

    with dask.config.set({_SPAWN_ENV: _spawn_env()}), d.LocalCluster(
            n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0",
            env=BLAS_ENV) as cluster, d.Client(cluster) as client:  # fmt: skip
        yield client


_SPAWN_ENV = "distributed.nanny.pre-spawn-environ"


def _spawn_env() -> dict[str, Any]:
    """Dask's environment for new workers, less its MALLOC_TRIM_THRESHOLD_: a fixed
    trim threshold turns off glibc's adaptive mmap threshold, so every large numpy
    temporary of the bound engine is a fresh mmap whose pages fault in again
    (certify ran 1.6x slower so on 4,096 digits)."""
    import dask

    env = dict(dask.config.get(_SPAWN_ENV, default={}) or {})
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env
