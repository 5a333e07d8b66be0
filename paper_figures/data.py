"""Data behind the figures: example models, digits inputs, bounds and certificates.

Everything is cached per process, so that figures (and the LaTeX table)
built together share their runs: the binary16 run of the MLP behind the
tolerance figure is the one in the formats figure and in the table.  All
inputs are the first ``n`` rows of ``examples/digits.npz``; nothing is
random.

The data come from :mod:`fperr.examples`, so the figures build from an
installed wheel too.  :func:`register` adds one's own model and inputs
(``fperr figures --model M --inputs X``): the figures that take a model then
draw it under its key, with its own inputs instead of the digits.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from fperr import examples
from fperr.arith import Emulated, Exact
from fperr.bounds import RunBound, bound, bound_run
from fperr.certify import CertifyResult
from fperr.model import Model, load_model

Array = npt.NDArray[np.float64]

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = examples.data_dir()
VALIDATION_RESULTS = ROOT / "validation" / "results"  # a checkout only; else a stand-in

#: example model stems and the names the figures print
MODELS: dict[str, str] = {"mlp": "MLP", "cnn": "CNN", "deep_tanh": "deep tanh MLP"}
LOW = ("binary16", "binary32")  # storage, accumulation of the low-precision run
REFERENCE = ("binary32", "binary32")


def inputs_for(name: str, small: bool) -> int:
    """How many digits inputs a model is evaluated on.

    All 1797 for the MLP and the CNN; the deep tanh MLP's enclosures carry
    ~4600 generators per output, which costs seconds per handful of inputs,
    so it gets 16 (and is left out of small builds: 0).  A registered model
    gets all its inputs, at most 200 in a small build.
    """
    if name in _USER:
        return min(size(name), 200) if small else size(name)
    if name == "deep_tanh":
        return 0 if small else 16
    return 200 if small else 1797


def models_for(small: bool) -> list[str]:
    """The example models a build draws (registered models never: they are asked for)."""
    return [m for m in MODELS if m not in _USER and inputs_for(m, small) > 0]


class Digits(NamedTuple):
    inputs: Array
    labels: npt.NDArray[np.int64] | None  # None: a registered model without labels


#: registered models (:func:`register`): key -> (model, its inputs and labels)
_USER: dict[str, tuple[Model, Digits]] = {}


def register(key: str, m: Model, inputs: npt.ArrayLike, labels: npt.ArrayLike | None) -> str:
    """Make one's own model and inputs available to the figures as ``key``."""
    X = np.asarray(inputs, np.float64)
    y = None if labels is None else np.asarray(labels, np.int64)
    _USER[key] = (m, Digits(X, y))
    MODELS[key] = m.name
    clear()
    return key


@cache
def model(name: str) -> Model:
    if name in _USER:
        return _USER[name][0]
    return load_model(examples.path(name))


@cache
def digits() -> Digits:
    X, y = examples.digits()
    return Digits(X, y)


def dataset(name: str) -> Digits:
    """The inputs a model is evaluated on: its registered ones, else the digits."""
    return _USER[name][1] if name in _USER else digits()


def size(name: str) -> int:
    """How many inputs :func:`dataset` has for ``name``."""
    return int(dataset(name).inputs.shape[0])


def labels(name: str, n: int) -> npt.NDArray[np.int64] | None:
    y = dataset(name).labels
    return None if y is None else y[:n]


@cache
def arith(storage: str, accumulate: str, order: str = "blas") -> Emulated:
    return Emulated.from_names(storage, accumulate, order=order)


def prefix(name: str, depth: int) -> Model:
    """The first ``depth`` layers of a model, as a model."""
    m = model(name)
    if depth == len(m.layers):
        return m
    return Model(f"{m.name}[:{depth}]", m.input_shape, m.layers[:depth])


def run(
    name: str,
    n: int,
    storage: str,
    accumulate: str,
    order: str = "blas",
    depth: int | None = None,
    method: str = "deterministic",
) -> RunBound:
    """``bound_run`` of (a prefix of) a model on the first ``n`` digits."""
    depth = len(model(name).layers) if depth is None else depth
    return _run(name, n, storage, accumulate, order, depth, method)


@cache
def _run(
    name: str, n: int, storage: str, accumulate: str, order: str, depth: int, method: str
) -> RunBound:
    X = dataset(name).inputs[:n]
    return bound_run(prefix(name, depth), X, arith(storage, accumulate, order), method=method)


def certificate(
    name: str, n: int, storage: str = LOW[0], accumulate: str = LOW[1]
) -> CertifyResult:
    """See :func:`_certificate`."""
    return _certificate(name, n, storage, accumulate)


@cache
def _certificate(name: str, n: int, storage: str, accumulate: str) -> CertifyResult:
    """What ``fperr.certify.certify(model, X, labels, low, reference)`` returns
    without its cascade: ``fperr.bound`` on both runs (the low one anchored on the
    reference's values)."""
    m = model(name)
    X = dataset(name).inputs[:n]
    b = bound(m, X, arith(storage, accumulate), arith(*REFERENCE))
    return CertifyResult(
        model_name=m.name, bounds=b, y_ref=b.reference.output, y_low=b.low.output,
        labels=labels(name, n),
    )  # fmt: skip


@cache
def activations(name: str, n: int, storage: str | None, accumulate: str | None) -> list[Array]:
    """Per-layer activations of a run (``storage=None``: exact float64)."""
    a = Exact() if storage is None else arith(storage, accumulate or storage)
    return model(name).activations(dataset(name).inputs[:n], a)


def clear() -> None:
    """Forget every cached run (the tests use it to time cold builds)."""
    for f in (model, digits, arith, _run, _certificate, activations):
        f.cache_clear()
