"""`fperr convert MODEL --out DIR`: any model file as a self-contained YAML spec + weights
(+ data), computing the same outputs and bounds; bad input gets one line (issue 15)."""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fperr.arith import Emulated
from fperr.bounds import bound
from fperr.cli import cli
from fperr.model import load_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LOW = Emulated.from_names("binary16", "binary32")


def run(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_line_error(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("fperr: error:"), res.output
    for n in needles:
        assert n in lines[0], lines[0]


def _same_model(a, b, X: np.ndarray) -> None:
    """Bit-identical outputs (exact float64 and emulated binary16) and bounds."""
    np.testing.assert_array_equal(a.forward(X), b.forward(X))
    np.testing.assert_array_equal(a.forward(X, LOW), b.forward(X, LOW))
    ba, bb = bound(a, X), bound(b, X)
    np.testing.assert_array_equal(ba.bound, bb.bound)
    np.testing.assert_array_equal(ba.per_layer, bb.per_layer)


@pytest.fixture(scope="module")
def digits():
    with np.load(EXAMPLES / "digits.npz") as z:  # numpy's own reader: the oracle
        return z["inputs"], z["labels"]


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_yaml_round_trip_keeps_outputs_bounds_and_data(name, digits, tmp_path):
    src = tmp_path / "src"  # a copy: the source folder must not matter afterwards
    src.mkdir()
    for f in (f"{name}.yaml", f"{name}.npz", "digits.npz"):
        shutil.copy(EXAMPLES / f, src / f)
    res = run("convert", src / f"{name}.yaml", "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    shutil.rmtree(src)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [f"{name}.yaml", f"{name}.npz", f"{name}_data.npz"])  # fmt: skip
    X, y = digits
    with np.load(out / f"{name}_data.npz") as z:
        np.testing.assert_array_equal(z["inputs"], X)
        np.testing.assert_array_equal(z["labels"], y)
    converted = load_model(out / f"{name}.yaml")
    _same_model(load_model(EXAMPLES / f"{name}.yaml"), converted, X[:60])
    # the data section is relative: `bound` runs from another folder without --inputs
    a = run("bound", "--model", EXAMPLES / f"{name}.yaml", "--json", "-q", "--inputs",
            EXAMPLES / "digits.npz")  # fmt: skip
    b = run("bound", "--model", out / f"{name}.yaml", "--json", "-q")
    assert a.exit_code == b.exit_code and b.exit_code in (0, 1), b.output
    ra, rb = json.loads(a.stdout), json.loads(b.stdout)
    assert ra["samples"] == rb["samples"]
    assert ra["summary"]["accuracy_low"] == rb["summary"]["accuracy_low"]


def test_safetensors_weights(digits, tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    res = run("convert", EXAMPLES / "cnn.yaml", "--out", tmp_path, "--weights", "safetensors")
    assert res.exit_code == 0, res.output
    assert not (tmp_path / "cnn.npz").exists()
    arrays = st.load_file(str(tmp_path / "cnn.safetensors"))
    with np.load(EXAMPLES / "cnn.npz") as z:
        assert set(arrays) == set(z.files)
        for k in z.files:  # float64, every bit of the original (float32) weights
            assert arrays[k].dtype == np.float64
            np.testing.assert_array_equal(arrays[k], z[k].astype(np.float64))
    assert "weights: cnn.safetensors" in (tmp_path / "cnn.yaml").read_text()
    _same_model(load_model(EXAMPLES / "cnn.yaml"), load_model(tmp_path / "cnn.yaml"),
                digits[0][:40])  # fmt: skip


def test_onnx_to_yaml_with_inputs_and_labels(digits, tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx")
    from fperr.hardware.torch_exec import to_torch

    original = load_model(EXAMPLES / "mlp.yaml")
    net = to_torch(original)  # float64 torch module of the example's weights
    X, y = digits
    x0 = torch.tensor(X[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (x0,), tmp_path / "net.onnx", dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    np.save(tmp_path / "x.npy", X[:50])
    np.save(tmp_path / "y.npy", y[:50])
    res = run("convert", tmp_path / "net.onnx", "--out", tmp_path / "out", "--inputs",
              tmp_path / "x.npy", "--labels", tmp_path / "y.npy")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "50 inputs" in res.stdout
    converted = load_model(tmp_path / "out" / "net.yaml")
    # oracle: torch's own float64 forward of the exported module
    ref = net(torch.tensor(X[:50])).numpy()
    np.testing.assert_allclose(converted.forward(X[:50]), ref, rtol=1e-12, atol=1e-12)
    _same_model(load_model(tmp_path / "net.onnx"), converted, X[:50])
    with np.load(tmp_path / "out" / "net_data.npz") as z:
        np.testing.assert_array_equal(z["labels"], y[:50])
    res = run("bound", "--model", tmp_path / "out" / "net.yaml", "--json", "-q")
    assert res.exit_code in (0, 1), res.output
    s = json.loads(res.stdout)["summary"]
    assert s["inputs"] == 50 and "accuracy_low" in s


def test_a_model_without_data_converts_without_a_data_section(tmp_path):
    from fperr.layers import Dense
    from fperr.model import Model

    w = np.random.default_rng(0).normal(size=(3, 5))
    Model("plain", (5,), (Dense(w, None),)).save(tmp_path / "plain.yaml")
    res = run("convert", tmp_path / "plain.yaml", "--out", tmp_path / "out")
    assert res.exit_code == 0, res.output
    assert ", data " not in res.stdout
    assert "data:" not in (tmp_path / "out" / "plain.yaml").read_text()
    x = np.random.default_rng(1).normal(size=(4, 5))
    np.testing.assert_array_equal(load_model(tmp_path / "out" / "plain.yaml").forward(x),
                                  x @ w.T)  # fmt: skip
    np.save(tmp_path / "y.npy", np.zeros(4, dtype=np.int64))
    res = run("convert", tmp_path / "plain.yaml", "--out", tmp_path / "o2", "--labels",
              tmp_path / "y.npy")  # fmt: skip
    _one_line_error(res, "--labels needs --inputs")


def test_bad_input_gets_one_line_and_exit_2(tmp_path):
    mlp = EXAMPLES / "mlp.yaml"
    pickle_file = tmp_path / "net.pt"
    pickle_file.write_bytes(b"\x80\x04K\x01.")  # pickle.dumps(1): never unpickled
    _one_line_error(run("convert", pickle_file, "--out", tmp_path / "o"), "pickled", ".pt2")
    _one_line_error(run("convert", EXAMPLES / "mlp.npz", "--out", tmp_path / "o"),
                    "unknown model file kind '.npz'")  # fmt: skip
    _one_line_error(run("convert", tmp_path / "missing.onnx", "--out", tmp_path / "o"),
                    "not found")  # fmt: skip
    _one_line_error(run("convert", mlp, "--out", tmp_path / "o", "--weights", "pt"),
                    "unknown weights format 'pt'")  # fmt: skip
    _one_line_error(run("convert", mlp, "--out", tmp_path / "o", "--inputs", "sklearn:iris"),
                    "[150, 4]", "[N, 64]")  # fmt: skip
    np.save(tmp_path / "y.npy", np.zeros(3, dtype=np.int64))
    _one_line_error(run("convert", mlp, "--out", tmp_path / "o", "--labels", tmp_path / "y.npy"),
                    "3 labels for 1797 inputs")  # fmt: skip
    assert not (tmp_path / "o").exists()  # nothing half-written
    afile = tmp_path / "file"
    afile.write_text("x")
    _one_line_error(run("convert", mlp, "--out", afile), "not a folder")
    _one_line_error(run("convert", mlp, "--out", EXAMPLES), "would overwrite")
    assert (EXAMPLES / "mlp.yaml").read_text().startswith("# Produced by examples/train_digits")
