"""Tests for fperr.datasets and the data shipped in examples/."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from fperr.datasets import (
    DIGITS_SCALE,
    SKLEARN_DATASETS,
    DataError,
    load_inputs,
    load_labels,
)
from fperr.errors import FperrInputError

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DIGITS_NPZ = EXAMPLES / "digits.npz"


def data_error(spec: str | Path, base_dir: Path | None = None) -> str:
    """The message of the DataError that loading ``spec`` raises; one line."""
    with pytest.raises(DataError) as info:
        load_inputs(spec, base_dir)
    message = str(info.value)
    assert "\n" not in message
    return message


# -- the shipped digits -----------------------------------------------------------


def test_shipped_digits_shape_and_range() -> None:
    X, labels = load_inputs(str(DIGITS_NPZ))
    assert X.shape == (1797, 64)
    assert X.dtype == np.float64
    assert X.min() == 0.0
    assert X.max() == 1.0
    np.testing.assert_array_equal(X * DIGITS_SCALE, np.round(X * DIGITS_SCALE))
    assert labels is not None
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(np.unique(labels), np.arange(10))


def test_shipped_digits_equal_sklearn_digits_over_16() -> None:
    skd = pytest.importorskip("sklearn.datasets")
    digits = skd.load_digits()
    with np.load(DIGITS_NPZ, allow_pickle=False) as archive:
        assert sorted(archive.files) == ["inputs", "labels"]
        assert archive["inputs"].dtype == np.float64
        assert archive["labels"].dtype == np.int64
        np.testing.assert_array_equal(archive["inputs"], digits.data / 16.0)
        np.testing.assert_array_equal(archive["labels"], digits.target)
    X, labels = load_inputs("sklearn:digits")
    np.testing.assert_array_equal(X, digits.data / 16.0)
    assert labels is not None
    np.testing.assert_array_equal(labels, digits.target)


def test_example_specs_name_shipped_arrays() -> None:
    specs = sorted(EXAMPLES.glob("*.yaml"))
    assert {spec.stem for spec in specs} >= {"mlp", "cnn", "deep_tanh"}
    for spec_path in specs:
        spec = yaml.safe_load(spec_path.read_text())
        with np.load(EXAMPLES / spec["weights"], allow_pickle=False) as archive:
            for layer in spec["layers"]:
                for role in ("weight", "bias"):
                    if role in layer:
                        assert layer[role] in archive.files, (spec_path.name, layer)
                        assert archive[layer[role]].dtype == np.float64
        X, labels = load_inputs(spec["data"]["inputs"], spec_path.parent)
        assert X.shape == (1797, *spec["input"]["shape"])
        assert labels is not None


# -- scikit-learn data sets ---------------------------------------------------------


@pytest.mark.parametrize("name", SKLEARN_DATASETS)
def test_sklearn_datasets(name: str) -> None:
    pytest.importorskip("sklearn")
    X, labels = load_inputs(f"sklearn:{name}")
    assert X.dtype == np.float64
    assert X.ndim == 2
    assert labels is not None
    assert labels.dtype == np.int64
    assert labels.shape == (len(X),)
    if name == "digits":
        assert 0.0 <= X.min() and X.max() <= 1.0
    else:
        np.testing.assert_allclose(X.mean(axis=0), 0.0, atol=1e-12)
        np.testing.assert_allclose(X.std(axis=0), 1.0, rtol=1e-12)


def test_unknown_sklearn_dataset_lists_valid_ones() -> None:
    message = data_error("sklearn:mnist")
    assert "'mnist'" in message
    for name in SKLEARN_DATASETS:
        assert name in message


def test_missing_sklearn_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sklearn", None)
    assert "scikit-learn" in data_error("sklearn:iris")


def test_datasets_module_does_not_import_torch() -> None:
    code = "import sys, fperr.datasets; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- file round trips ---------------------------------------------------------------


def test_npy_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.standard_normal((5, 1, 2, 3))
    np.save(tmp_path / "x.npy", data)
    X, labels = load_inputs(str(tmp_path / "x.npy"))
    np.testing.assert_array_equal(X, data)
    assert labels is None


def test_integer_npy_becomes_float64(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.arange(6, dtype=np.int32).reshape(2, 3))
    X, _ = load_inputs("x.npy", tmp_path)
    assert X.dtype == np.float64
    np.testing.assert_array_equal(X, [[0, 1, 2], [3, 4, 5]])


@pytest.mark.parametrize(("input_key", "label_key"), [("inputs", "labels"), ("X", "y")])
def test_npz_round_trip(
    tmp_path: Path, rng: np.random.Generator, input_key: str, label_key: str
) -> None:
    data = rng.standard_normal((4, 3)).astype(np.float32)
    targets = np.array([0, 2, 1, 2], dtype=np.int32)
    arrays: dict[str, Any] = {input_key: data, label_key: targets}
    np.savez(tmp_path / "d.npz", **arrays)
    X, labels = load_inputs("d.npz", base_dir=tmp_path)
    assert X.dtype == np.float64
    np.testing.assert_array_equal(X, data.astype(np.float64))
    assert labels is not None
    assert labels.dtype == np.int64
    np.testing.assert_array_equal(labels, targets)


def test_npz_without_labels(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", X=np.ones((2, 2)))
    assert load_inputs(str(tmp_path / "d.npz"))[1] is None


def test_csv_round_trip(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.standard_normal((6, 4))
    np.savetxt(tmp_path / "x.csv", data, delimiter=",", fmt="%.17g")
    X, labels = load_inputs("x.csv", tmp_path)
    np.testing.assert_array_equal(X, data)
    assert labels is None


def test_csv_header_and_blank_lines_are_skipped(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("a, b\n1, 2\n\n3.5, -4e-3\n")
    X, _ = load_inputs(str(tmp_path / "x.csv"))
    np.testing.assert_array_equal(X, [[1.0, 2.0], [3.5, -4e-3]])


def test_single_column_csv_is_one_feature_per_input(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("1\n2\n3\n")
    X, _ = load_inputs(str(tmp_path / "x.csv"))
    assert X.shape == (3, 1)


def test_relative_path_resolved_against_base_dir(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    np.save(tmp_path / "sub" / "x.npy", np.zeros((1, 2)))
    assert load_inputs("sub/x.npy", tmp_path)[0].shape == (1, 2)
    absolute = str(tmp_path / "sub" / "x.npy")
    assert load_inputs(absolute, tmp_path / "elsewhere")[0].shape == (1, 2)


def test_load_labels_npy_and_csv(tmp_path: Path) -> None:
    np.save(tmp_path / "y.npy", np.array([3, 1, 4], dtype=np.uint8))
    (tmp_path / "y.csv").write_text("label\n3\n1\n4\n")
    np.save(tmp_path / "col.npy", np.array([[3.0], [1.0], [4.0]]))
    for name in ("y.npy", "y.csv", "col.npy"):
        labels = load_labels(name, tmp_path)
        assert labels.dtype == np.int64
        np.testing.assert_array_equal(labels, [3, 1, 4])
    np.testing.assert_array_equal(load_labels(tmp_path / "y.npy"), [3, 1, 4])


# -- bad input: DataError with a clear one-line message --------------------------------


def test_data_error_is_a_value_error() -> None:
    assert issubclass(DataError, FperrInputError)
    assert issubclass(DataError, ValueError)


def test_missing_file(tmp_path: Path) -> None:
    message = data_error("nope.npy", tmp_path)
    assert "no such file" in message
    assert str(tmp_path / "nope.npy") in message


def test_unknown_extension(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("1,2\n")
    message = data_error(tmp_path / "x.txt")
    assert "'.txt'" in message
    assert ".npy, .npz, .csv" in message


def test_non_numeric_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.array([["a", "b"]]))
    assert "not numeric" in data_error(tmp_path / "x.npy")


def test_object_npy_is_not_unpickled(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.array([[1, None]], dtype=object), allow_pickle=True)
    assert "cannot read .npy file" in data_error(tmp_path / "x.npy")


def test_corrupt_npy(tmp_path: Path) -> None:
    (tmp_path / "x.npy").write_bytes(b"\x93NUMPY garbage")
    assert "cannot read .npy file" in data_error(tmp_path / "x.npy")


def test_text_file_named_npy_is_not_taken_for_a_pickle(tmp_path: Path) -> None:
    (tmp_path / "x.npy").write_text("1,2\n")
    message = data_error(tmp_path / "x.npy")
    assert "not a .npy file" in message
    assert "pickle" not in message


def test_non_numeric_csv(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("1,2\n3,four\n")
    message = data_error(tmp_path / "x.csv")
    assert "non-numeric value 'four' on line 2" in message


def test_ragged_csv(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("1,2\n3\n")
    assert "line 2 has 1 fields, expected 2" in data_error(tmp_path / "x.csv")


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_inputs(tmp_path: Path, bad: float) -> None:
    data = np.zeros((5, 3))
    data[1, 2] = bad
    data[3, 0] = bad
    data[4, 1] = bad
    np.save(tmp_path / "x.npy", data)
    message = data_error(tmp_path / "x.npy")
    assert "3 NaN or inf values" in message
    assert "index (1, 2)" in message


def test_nan_in_csv(tmp_path: Path) -> None:
    (tmp_path / "x.csv").write_text("1,2\n3,nan\n")
    assert "1 NaN or inf values; the first at index (1, 1)" in data_error(tmp_path / "x.csv")


@pytest.mark.parametrize(
    ("name", "content"), [("x.csv", ""), ("x.csv", "a,b\n"), ("x.csv", "\n\n")]
)
def test_empty_csv(tmp_path: Path, name: str, content: str) -> None:
    (tmp_path / name).write_text(content)
    assert "no data rows" in data_error(tmp_path / name)


def test_empty_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((0, 64)))
    assert "empty" in data_error(tmp_path / "x.npy")


def test_one_dimensional_inputs(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros(64))
    message = data_error(tmp_path / "x.npy")
    assert "shape (64,)" in message
    assert "one input per row" in message


def test_npz_without_inputs(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", data=np.ones((2, 2)))
    message = data_error(tmp_path / "d.npz")
    assert "'inputs' or 'X'" in message
    assert "'data'" in message


def test_npz_with_ambiguous_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", inputs=np.ones((2, 2)), X=np.ones((2, 2)))
    assert "ambiguous" in data_error(tmp_path / "d.npz")


def test_npy_named_npz(tmp_path: Path) -> None:
    with (tmp_path / "d.npz").open("wb") as handle:
        np.save(handle, np.ones((2, 2)))
    assert "not a .npz file" in data_error(tmp_path / "d.npz")


def test_label_count_mismatch(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", inputs=np.ones((3, 2)), labels=np.array([0, 1]))
    assert "2 labels for 3 inputs" in data_error(tmp_path / "d.npz")


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.array([0.0, 1.5]), "labels must be integers; 1 are not, the first at index 1 (1.5)"),
        (np.array([0.0, np.nan]), "the first at index 1 (nan)"),
        (np.array([1e30, 0.0]), "the first at index 0"),
        (np.array([0, -1]), "class indices >= 0; index 1 is -1"),
        (np.array(["a", "b"]), "labels are not numeric"),
        (np.zeros((2, 2), dtype=np.int64), "expected a vector"),
        (np.zeros(0, dtype=np.int64), "labels are empty"),
    ],
)
def test_bad_labels(tmp_path: Path, values: np.ndarray, expected: str) -> None:
    np.save(tmp_path / "y.npy", values)
    with pytest.raises(DataError) as info:
        load_labels(tmp_path / "y.npy")
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_load_labels_rejects_npz(tmp_path: Path) -> None:
    np.savez(tmp_path / "y.npz", labels=np.zeros(2))
    with pytest.raises(DataError, match=r"expected one of \.npy, \.csv"):
        load_labels(tmp_path / "y.npz")
