"""Data-parallel certification on a Dask cluster.

Certificates are independent per input (and bit-identical whether an input is
bounded alone or in a batch), so a data set splits into chunks of rows that
workers certify on their own:

* :func:`stream_certify` -- the ``fperr bound --scheduler/--workers`` path: the
  workers read their rows from a memory-mapped ``.npy`` (or a ``.zarr`` array),
  the client sends only offsets, the model goes once to every worker, and each
  chunk's certificates are appended to a JSON-lines file as it completes (the
  file is put in input order at the end; ``resume=True`` continues it).
* :func:`certify_dask` -- what :func:`fperr.certify` does with a dask array: one
  :func:`fperr.certify` per block, on whatever scheduler dask uses.

Dask is an optional dependency (``pip install 'fperr[dask]'``); importing this
package does not import it.
"""

from __future__ import annotations

from .arrays import certify_dask, concat_results, is_dask_array
from .cluster import cluster_client
from .source import InputSource, open_source
from .stream import StreamRun, stream_certify

__all__ = ["InputSource", "StreamRun", "certify_dask", "cluster_client", "concat_results",
           "is_dask_array", "open_source", "stream_certify"]  # fmt: skip
