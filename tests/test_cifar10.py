"""CIFAR-10's python batches, on small files written here in that format."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from fperr.cifar10 import load_cifar10
from fperr.datasets import load_inputs
from fperr.errors import FperrInputError


def write_batch(path: Path, images: np.ndarray, labels: list[int], py2_names: bool = False) -> None:
    """A batch as the data set ships it: row n holds image n's red, green and blue
    32x32 planes in turn, each row-major (the format's documented layout)."""
    rows = np.stack([np.concatenate([img[c].ravel() for c in range(3)]) for img in images])
    d = {b"batch_label": b"generated", b"labels": labels, b"data": rows.astype(np.uint8),
         b"filenames": [b"x.png"] * len(labels)}  # fmt: skip
    raw = pickle.dumps(d, protocol=2)
    if py2_names:  # the module name numpy wrote before 2.0 (the real files' pickles)
        raw = raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(raw)


@pytest.fixture()
def folder(tmp_path: Path) -> tuple[Path, dict[str, tuple[np.ndarray, list[int]]]]:
    rng = np.random.default_rng(10)
    made = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        images = rng.integers(0, 256, (3, 3, 32, 32))
        labels = [int(v) for v in rng.integers(0, 10, 3)]
        write_batch(tmp_path / name, images, labels, py2_names=k % 2 == 0)
        made[name] = (images, labels)
    return tmp_path, made


def test_test_and_train_splits(folder) -> None:
    root, made = folder
    X, y = load_cifar10(root)
    images, labels = made["test_batch"]
    assert X.shape == (3, 3, 32, 32) and X.dtype == np.float64
    assert np.array_equal(X * 255.0, images.astype(np.float64))  # k/255, channel-major
    assert y.tolist() == labels and y.dtype == np.int64
    Xt, yt = load_cifar10(root, "train")
    assert Xt.shape == (15, 3, 32, 32)
    assert yt.tolist() == sum((made[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    X2, y2 = load_inputs(f"cifar10:{root}@train")
    assert np.array_equal(X2, Xt) and np.array_equal(y2, yt)


def test_a_pickle_with_code_is_refused_unrun(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (tmp_path / "test_batch").write_bytes(pickle.dumps({b"data": Payload()}, protocol=2))
    with pytest.raises(FperrInputError, match="refusing to unpickle"):
        load_cifar10(tmp_path)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"junk", pickle.dumps([1, 2]),
                                     pickle.dumps({b"data": np.zeros((2, 5), np.uint8),
                                                   b"labels": [0, 1]})])  # fmt: skip
def test_bad_batches_are_one_line_errors(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "test_batch").write_bytes(content)
    with pytest.raises(FperrInputError, match="not a CIFAR-10 python batch|uint8 of shape"):
        load_cifar10(tmp_path)


def test_missing_folder_batch_and_bad_split(tmp_path: Path) -> None:
    with pytest.raises(FperrInputError, match="folder not found"):
        load_cifar10(tmp_path / "nope")
    with pytest.raises(FperrInputError, match="batch not found"):
        load_cifar10(tmp_path)
    with pytest.raises(FperrInputError, match="unknown CIFAR-10 split"):
        load_cifar10(tmp_path, "valid")
