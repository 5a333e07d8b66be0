"""Evaluation inputs: scikit-learn's bundled data sets and array files.

:func:`load_inputs` turns a *spec* into ``(X, labels)``: ``X`` is a float64
array with one input per row (first axis), ``labels`` an int64 vector of class
indices or ``None``.  A spec is either

* ``sklearn:NAME`` with NAME one of :data:`SKLEARN_DATASETS`, read from the
  copies bundled with scikit-learn (nothing is downloaded), or
* ``cifar10:DIR`` or ``cifar10:DIR@train``: CIFAR-10's python batches in
  DIR (the test split by default), read by :mod:`fperr.cifar10`, or
* a path to a ``.npy`` file (inputs only), a ``.npz`` file (inputs under the
  key ``inputs`` or ``X``, optional labels under ``labels`` or ``y``) or a
  ``.csv`` file (numeric, comma separated, one input per row, inputs only; an
  optional first line of column names is skipped).  Relative paths are
  resolved against ``base_dir``.

Preprocessing of the scikit-learn data sets, applied here so that training
scripts and evaluation see identical inputs:

* ``digits``: the raw pixel values 0..16 divided by 16, so every pixel lies
  in [0, 1].  Dividing by a power of two is exact: the inputs are precisely
  ``k / 16`` for integers ``k``.  ``examples/digits.npz`` holds this array.
* ``iris``, ``wine``, ``breast_cancer``: each feature standardized with the
  mean and the (population, ``ddof=0``) standard deviation of the whole data
  set, ``(x - mean) / std``.

Every problem with the data raises :class:`DataError` with a one-line message.
scikit-learn is imported only for ``sklearn:`` specs.
"""

from __future__ import annotations

import csv
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import FperrInputError

__all__ = [
    "DIGITS_SCALE",
    "DataError",
    "SKLEARN_DATASETS",
    "load_inputs",
    "load_labels",
]

SKLEARN_PREFIX = "sklearn:"
CIFAR10_PREFIX = "cifar10:"
SKLEARN_DATASETS: tuple[str, ...] = ("digits", "iris", "wine", "breast_cancer")
DIGITS_SCALE = 16.0
"""Digits pixels are divided by this (their maximum value) to land in [0, 1]."""

INPUT_KEYS = ("inputs", "X")
LABEL_KEYS = ("labels", "y")
EXTENSIONS = (".npy", ".npz", ".csv")
LABEL_EXTENSIONS = (".npy", ".csv")
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK"


class DataError(FperrInputError):
    """Evaluation data that cannot be loaded or used; the message says why.

    A :class:`ValueError` (through :class:`~fperr.errors.FperrInputError`).
    """


# -- public API ----------------------------------------------------------------


def load_inputs(
    spec: str | Path, base_dir: Path | None = None
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64] | None]:
    """Load evaluation inputs (and labels, where the source has them).

    Parameters
    ----------
    spec:
        ``"sklearn:NAME"`` or a path to a ``.npy``, ``.npz`` or ``.csv`` file;
        see the module docstring.
    base_dir:
        Directory that relative paths are resolved against (default: the
        current directory).

    Returns
    -------
    X, labels:
        ``X`` is float64 with shape ``(n, ...)``, ``n >= 1``, all finite.
        ``labels`` is an int64 vector of length ``n`` with values ``>= 0``,
        or ``None``.
    """
    if isinstance(spec, str) and spec.startswith(SKLEARN_PREFIX):
        return _load_sklearn(spec[len(SKLEARN_PREFIX) :])
    if isinstance(spec, str) and spec.startswith(CIFAR10_PREFIX):
        from .cifar10 import load_cifar10

        folder, _, split = spec[len(CIFAR10_PREFIX) :].partition("@")
        return load_cifar10(_resolve(folder, base_dir), split or "test")
    path = _resolve(str(spec), base_dir)
    _check_file(path, EXTENSIONS)
    suffix = path.suffix.lower()
    labels: npt.NDArray[np.int64] | None = None
    if suffix == ".npy":
        raw: np.ndarray[Any, Any] = _read_npy(path)
    elif suffix == ".csv":
        raw = _read_csv(path)
    else:
        raw, raw_labels = _read_npz(path)
        if raw_labels is not None:
            labels = _as_labels(raw_labels, path)
    X = _as_inputs(raw, path)
    if labels is not None and len(labels) != len(X):
        raise DataError(f"{path}: {len(labels)} labels for {len(X)} inputs")
    return X, labels


def load_labels(path: str | Path, base_dir: Path | None = None) -> npt.NDArray[np.int64]:
    """Load class labels from a ``.npy`` or ``.csv`` file.

    The file holds one integer class index (``>= 0``) per input: a vector, or
    a single column.  A csv may start with a line naming its column.
    """
    resolved = _resolve(str(path), base_dir)
    _check_file(resolved, LABEL_EXTENSIONS)
    if resolved.suffix.lower() == ".npy":
        raw: np.ndarray[Any, Any] = _read_npy(resolved)
    else:
        raw = _read_csv(resolved)
    return _as_labels(raw, resolved)


# -- scikit-learn data sets ----------------------------------------------------


def _load_sklearn(
    name: str,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    if name not in SKLEARN_DATASETS:
        raise DataError(
            f"unknown scikit-learn data set {name!r}; valid: {', '.join(SKLEARN_DATASETS)}"
        )
    try:
        from sklearn import datasets as skd
    except ImportError:
        raise DataError(
            f"'sklearn:{name}' needs scikit-learn, which is not installed "
            "(pip install scikit-learn)"
        ) from None
    loaders: dict[str, Callable[..., Any]] = {
        "digits": skd.load_digits,
        "iris": skd.load_iris,
        "wine": skd.load_wine,
        "breast_cancer": skd.load_breast_cancer,
    }
    bunch = loaders[name]()
    data = np.asarray(bunch.data, dtype=np.float64)
    X = data / DIGITS_SCALE if name == "digits" else _standardize(data)
    labels = np.asarray(bunch.target, dtype=np.int64)
    return X, labels


def _standardize(data: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    """``(x - mean) / std`` per column; a constant column becomes all zeros."""
    mean: npt.NDArray[np.float64] = data.mean(axis=0)
    std: npt.NDArray[np.float64] = data.std(axis=0)
    std[std == 0.0] = 1.0
    standardized: npt.NDArray[np.float64] = (data - mean) / std
    return standardized


# -- files -----------------------------------------------------------------------


def _resolve(spec: str, base_dir: Path | None) -> Path:
    path = Path(spec).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = Path(base_dir) / path
    return path


def _check_file(path: Path, extensions: tuple[str, ...]) -> None:
    if path.suffix.lower() not in extensions:
        raise DataError(
            f"{path}: unknown extension {path.suffix or '(none)'!r}; "
            f"expected one of {', '.join(extensions)}"
        )
    if not path.is_file():
        raise DataError(f"{path}: no such file")


def _read_npy(path: Path) -> np.ndarray[Any, Any]:
    def check(loaded: Any) -> np.ndarray[Any, Any]:
        if not isinstance(loaded, np.ndarray):  # unreachable after the magic check
            raise DataError(f"{path}: not a .npy file")
        return loaded

    return _np_load(path, NPY_MAGIC, check)


def _read_npz(
    path: Path,
) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any] | None]:
    def arrays(archive: Any) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any] | None]:
        if not isinstance(archive, np.lib.npyio.NpzFile):  # unreachable after the magic check
            raise DataError(f"{path}: not a .npz file")
        keys = list(archive.files)
        input_key = _pick_key(path, keys, INPUT_KEYS)
        if input_key is None:
            raise _missing_key(path, keys, INPUT_KEYS)
        label_key = _pick_key(path, keys, LABEL_KEYS)
        inputs = np.asarray(archive[input_key])
        labels = None if label_key is None else np.asarray(archive[label_key])
        return inputs, labels

    return _np_load(path, ZIP_MAGIC, arrays)


# What a damaged or foreign file raises inside numpy and zipfile while it is read.
_READ_ERRORS = (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def _np_load(path: Path, magic: bytes, read: Callable[[Any], Any]) -> Any:
    """``read(np.load(...))`` without pickle, for a file starting with ``magic``.

    Checking the magic first keeps ``np.load`` from taking other files for
    pickles (and suggesting to unpickle them).  The file handle is ours, so it
    is closed however the archive is damaged, and ``read`` runs while it is
    open (an ``.npz`` reads its members lazily).
    """
    try:
        handle = path.open("rb")
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc})") from None
    with handle:
        head = handle.read(len(magic))
        if head != magic:
            raise DataError(f"{path}: not a {path.suffix} file (wrong leading bytes {head!r})")
        handle.seek(0)
        try:
            return read(np.load(handle, allow_pickle=False))
        except DataError:
            raise
        except _READ_ERRORS as exc:
            why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise DataError(f"{path}: cannot read {path.suffix} file ({why})") from None


def _pick_key(path: Path, keys: list[str], candidates: tuple[str, ...]) -> str | None:
    """The one key of ``candidates`` present in ``keys``, or None."""
    found = [key for key in candidates if key in keys]
    if len(found) > 1:
        raise DataError(f"{path}: ambiguous, has both {found[0]!r} and {found[1]!r}")
    return found[0] if found else None


def _missing_key(path: Path, keys: list[str], candidates: tuple[str, ...]) -> DataError:
    return DataError(
        f"{path}: no array named {' or '.join(map(repr, candidates))}; "
        f"it has {', '.join(map(repr, keys)) or 'no arrays'}"
    )


def _read_csv(path: Path) -> npt.NDArray[np.float64]:
    """Numbers separated by commas, one row per line; blank lines skipped.

    The first line is taken as a header of column names, and skipped, when
    none of its fields is a number.
    """
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = [
                (lineno, row)
                for lineno, row in enumerate(csv.reader(handle), start=1)
                if any(field.strip() for field in row)
            ]
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read .csv file ({exc})") from None
    if rows and not any(_is_number(field) for field in rows[0][1]):
        rows = rows[1:]
    if not rows:
        raise DataError(f"{path}: no data rows")
    width = len(rows[0][1])
    values: list[list[float]] = []
    for lineno, row in rows:
        if len(row) != width:
            raise DataError(f"{path}: line {lineno} has {len(row)} fields, expected {width}")
        try:
            values.append([float(field) for field in row])
        except ValueError:
            bad = next(field for field in row if not _is_number(field))
            raise DataError(f"{path}: non-numeric value {bad.strip()!r} on line {lineno}") from None
    return np.array(values, dtype=np.float64)


def _is_number(field: str) -> bool:
    try:
        float(field)
    except ValueError:
        return False
    return True


# -- validation ------------------------------------------------------------------


def _check_numeric(raw: np.ndarray[Any, Any], path: Path, what: str) -> None:
    if raw.dtype.kind not in "biuf":
        raise DataError(f"{path}: {what} are not numeric (dtype {raw.dtype})")


def _as_inputs(raw: np.ndarray[Any, Any], path: Path) -> npt.NDArray[np.float64]:
    _check_numeric(raw, path, "inputs")
    if raw.ndim < 2:
        raise DataError(
            f"{path}: inputs have shape {raw.shape}; expected one input per "
            "row, shape (n, ...) (reshape a single input to (1, ...))"
        )
    if raw.size == 0:
        raise DataError(f"{path}: inputs are empty (shape {raw.shape})")
    X = raw.astype(np.float64)
    bad = ~np.isfinite(X)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"{path}: inputs contain {int(bad.sum())} NaN or inf values; the first at index {first}"
        )
    return X


def _as_labels(raw: np.ndarray[Any, Any], path: Path) -> npt.NDArray[np.int64]:
    _check_numeric(raw, path, "labels")
    if raw.ndim == 2 and raw.shape[1] == 1:
        raw = raw[:, 0]
    if raw.ndim != 1:
        raise DataError(f"{path}: labels have shape {raw.shape}; expected a vector (n,)")
    if raw.size == 0:
        raise DataError(f"{path}: labels are empty")
    if raw.dtype.kind == "f":
        # NaN fails both tests; 2**53 keeps the cast to int64 exact and quiet.
        bad = ~(np.abs(raw) < 2.0**53) | (raw != np.round(raw))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{path}: labels must be integers; {int(bad.sum())} are not, "
                f"the first at index {first} ({raw[first]})"
            )
    labels = raw.astype(np.int64)
    if (labels < 0).any():
        first = int(np.flatnonzero(labels < 0)[0])
        raise DataError(
            f"{path}: labels must be class indices >= 0; index {first} is {labels[first]}"
        )
    return labels


def model_data(
    model: Any,
    inputs: str | Path | None = None,
    labels: str | Path | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64] | None]:
    """Inputs and labels for a loaded model: ``inputs``/``labels`` if given,
    else the spec's ``data`` section, resolved against the spec's folder."""
    if inputs is not None:
        X, y = load_inputs(inputs)
    else:
        data = getattr(model, "data", None)
        if data is None:
            raise DataError("no inputs given and the model spec has no data section")
        source = getattr(model, "source", None)
        base = Path(source).parent if source is not None else None
        X, y = load_inputs(data.inputs, base)
        if data.labels is not None:
            y = load_labels(data.labels, base)
    if labels is not None:
        y = load_labels(labels)
    return X, y
