"""CIFAR-10 in its "python version" format, read without running pickled code.

The data set's python format (``cifar-10-batches-py/``: ``data_batch_1`` ..
``data_batch_5``, ``test_batch``) is a pickle per batch: a dict with
``b"data"``, a (10000, 3072) uint8 array (the red, green and blue 32x32
planes of each image in turn) and ``b"labels"``, a list of class indices.
Unpickling a file can run arbitrary code, so :class:`_ArraysOnly` admits only
the few numpy names an array needs (its reconstructor, ``ndarray``,
``dtype``) and bytes decoding; anything else in the file is refused.

:func:`load_cifar10` returns ``X`` (N, 3, 32, 32) float64 with pixels divided
by 255 (values in [0, 1]; not exact in binary floating point, unlike the
digits' division by 16) and ``labels`` (N,) int64.
"""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from .errors import FperrInputError

__all__ = ["CIFAR10_CLASSES", "load_cifar10"]

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")  # fmt: skip
SPLITS = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArraysOnly(pickle.Unpickler):
    """An unpickler that builds dicts, lists, bytes and numpy arrays, nothing else."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED:
            raise FperrInputError(
                f"refusing to unpickle {module}.{name}: a CIFAR-10 batch holds only arrays"
            )
        return super().find_class(module, name)


def read_batch(path: Path) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """One batch file: images (N, 3, 32, 32) in [0, 1] and labels (N,)."""
    try:
        with open(path, "rb") as fh:
            d = _ArraysOnly(fh, encoding="bytes").load()
    except FileNotFoundError:
        raise FperrInputError(f"CIFAR-10 batch not found: {path}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as exc:
        raise FperrInputError(f"{path}: not a CIFAR-10 python batch ({exc})") from None
    if not isinstance(d, dict) or b"data" not in d or b"labels" not in d:
        raise FperrInputError(f"{path}: not a CIFAR-10 python batch (no data/labels)")
    data, labels = np.asarray(d[b"data"]), np.asarray(d[b"labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise FperrInputError(f"{path}: data must be uint8 of shape (N, 3072), got "
                              f"{data.dtype} {list(data.shape)}")  # fmt: skip
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
        raise FperrInputError(f"{path}: {labels.shape} labels for {data.shape[0]} images")
    if labels.size and (labels.min() < 0 or labels.max() >= len(CIFAR10_CLASSES)):
        raise FperrInputError(f"{path}: labels outside 0..9")
    X = data.reshape(-1, 3, 32, 32).astype(np.float64) / 255.0
    return X, labels.astype(np.int64)


def load_cifar10(
    folder: str | Path, split: str = "test"
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """The ``split`` ("test": 10,000 images, "train": 50,000) of CIFAR-10 from
    ``folder`` (the extracted ``cifar-10-batches-py``)."""
    if split not in SPLITS:
        raise FperrInputError(f"unknown CIFAR-10 split {split!r}; use train or test")
    root = Path(folder)
    if not root.is_dir():
        raise FperrInputError(f"CIFAR-10 folder not found: {root}")
    parts = [read_batch(root / name) for name in SPLITS[split]]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
