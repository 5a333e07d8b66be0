"""`fperr bound|validate|check-training --model` with YAML, ONNX and torch.export files,
the refusals of other kinds, the --min-certified gate and the progress bar (issue 15)."""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fperr.cli import cli
from fperr.layers import Dense
from fperr.model import Model

torch = pytest.importorskip("torch")


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def _one_line_error(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("fperr: error:"), res.output
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """One trained-looking torch MLP saved as .onnx, .pt2 and a pickle; its inputs."""
    from torch.export import Dim

    d = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    net.eval()
    x = np.random.default_rng(0).normal(size=(40, 5))
    np.save(d / "x.npy", x)
    np.save(d / "y.npy", np.random.default_rng(1).integers(0, 3, size=40))
    xt = torch.tensor(x[:2], dtype=torch.float32)
    ep = torch.export.export(net, (xt,), dynamic_shapes=({0: Dim("batch")},))
    torch.export.save(ep, d / "net.pt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (xt,), d / "net.onnx", dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "batch"}})  # fmt: skip
    torch.save(net, d / "net.pt")
    return d, net, x


def test_onnx_and_pt2_give_the_certificate_of_the_same_model(files):
    d, net, x = files
    from fperr.model import load_model

    # oracle: torch's own float64 forward of the trained module
    ref = net.double()(torch.tensor(x)).detach().numpy()
    net.float()
    reports = {}
    for name in ("net.onnx", "net.pt2"):
        m = load_model(d / name)
        np.testing.assert_allclose(m.forward(x), ref, rtol=1e-12, atol=1e-12)
        res = run("bound", "--model", str(d / name), "--inputs", str(d / "x.npy"), "--json", "-q")
        assert res.exit_code in (0, 1), res.output
        reports[name] = json.loads(res.stdout)
    a, b = (reports[n]["summary"] for n in ("net.onnx", "net.pt2"))
    assert a["inputs"] == b["inputs"] == 40
    assert a["certified"] == b["certified"]
    np.testing.assert_allclose([s["bound"] for s in reports["net.onnx"]["samples"]],
                               [s["bound"] for s in reports["net.pt2"]["samples"]],
                               rtol=1e-9)  # fmt: skip


def test_check_training_and_validate_read_the_same_kinds(files):
    d, _, _ = files
    res = run("check-training", "--model", str(d / "net.onnx"), "--inputs", str(d / "x.npy"),
              "--labels", str(d / "y.npy"), "--max-batches", "1")  # fmt: skip
    assert res.exit_code in (0, 1) and "fperr: error" not in res.output, res.output
    res = run("check-training", "--model", str(d / "net.pt2"))
    _one_line_error(res, "a .pt2 model carries no data", "--inputs")
    res = run("validate", "--model", str(d / "net.onnx"))
    _one_line_error(res, "a .onnx model carries no data", "--inputs")


@pytest.mark.parametrize("name", ["net.pt", "net.pth", "model.ckpt"])
def test_pickles_are_refused_and_never_unpickled(files, name, tmp_path):
    d, _, _ = files
    path = tmp_path / name
    path.write_bytes((d / "net.pt").read_bytes())
    res = run("bound", "--model", str(path), "--inputs", str(d / "x.npy"))
    _one_line_error(res, "unpickling runs arbitrary code", ".pt2", ".onnx")


def test_a_pickle_with_a_payload_is_not_executed(tmp_path):
    import pickle

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps(Payload()))
    res = run("bound", "--model", str(path), "--inputs", "x.npy")
    _one_line_error(res, "pickled")
    assert not marker.exists()


def test_other_kinds_and_binary_yaml_get_one_line(files, tmp_path):
    d, _, _ = files
    onnx_as_yaml = tmp_path / "net.yaml"
    onnx_as_yaml.write_bytes((d / "net.onnx").read_bytes())
    res = run("bound", "--model", str(onnx_as_yaml))
    _one_line_error(res, "binary content, not a YAML spec", ".onnx")
    assert "codec" not in res.output
    res = run("bound", "--model", str(d / "x.npy"))
    _one_line_error(res, "unknown model file kind '.npy'", ".yaml", ".onnx", ".pt2")
    noext = tmp_path / "model"
    noext.write_text("name: x\n")
    _one_line_error(run("bound", "--model", str(noext)), "(no suffix)")
    junk = tmp_path / "junk.pt2"
    junk.write_bytes(b"\x9b" * 300)
    _one_line_error(run("bound", "--model", str(junk), "--inputs", str(d / "x.npy")), "zip")
    zipped = tmp_path / "other.pt2"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("a.txt", "not a program")
    res = run("bound", "--model", str(zipped), "--inputs", str(d / "x.npy"))
    _one_line_error(res, "cannot read a torch.export program")
    junk_onnx = tmp_path / "junk.onnx"
    junk_onnx.write_bytes(b"\x9b" * 300)
    _one_line_error(run("bound", "--model", str(junk_onnx), "--inputs", str(d / "x.npy")),
                    "ONNX")  # fmt: skip
    _one_line_error(run("bound", "--model", str(d / "net.onnx")), "give --inputs")


def test_pt2_with_a_fixed_batch_view_says_how_to_export(tmp_path):
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(6, 2)

        def forward(self, x):
            return self.lin(x.view(2, 6))

    ep = torch.export.export(Net().eval(), (torch.randn(2, 2, 3),))
    torch.export.save(ep, tmp_path / "fixed.pt2")
    np.save(tmp_path / "x.npy", np.ones((2, 2, 3)))
    res = run("bound", "--model", str(tmp_path / "fixed.pt2"), "--inputs",
              str(tmp_path / "x.npy"))  # fmt: skip
    _one_line_error(res, "fixed batch size 2", "dynamic_shapes")


def _ties_yaml(tmp_path) -> str:
    """3 inputs: a near tie binary32 cannot settle, one fp16 cannot, one certified
    (the construction of tests/test_certify_report.py)."""
    rng = np.random.default_rng(3)
    w = np.abs(rng.normal(size=7))
    W = np.array([[*w, 1.0], [*w, 0.0], [*-w, 0.0]])
    model = Model("ties", (8,), (Dense(W, np.array([0.0, 0.0, -5.0])),))
    x = np.hstack([np.tile(rng.uniform(0.1, 1, size=7), (3, 1)), [[1e-12], [1e-4], [10.0]]])
    model.save(tmp_path / "ties.yaml")
    np.save(tmp_path / "ties_x.npy", x)
    return str(tmp_path / "ties.yaml")


def test_min_certified_gates_the_exit_code(tmp_path):
    spec = _ties_yaml(tmp_path)
    x = str(tmp_path / "ties_x.npy")
    res = run("bound", "--model", spec, "--inputs", x, "-q")
    assert res.exit_code == 1  # without a gate: every input must certify
    assert "1 near ties that binary32 itself cannot settle" in res.stdout
    assert "1 because of the low-precision run" in res.stdout
    res = run("bound", "--model", spec, "--inputs", x, "-q", "--min-certified", "0.3")
    assert res.exit_code == 0, res.output
    assert "gate             certified 33.33% >= 30.00% required: pass" in res.stdout
    res = run("bound", "--model", spec, "--inputs", x, "-q", "--min-certified", "0.34")
    assert res.exit_code == 1 and "required: FAIL" in res.stdout
    res = run("bound", "--model", spec, "--inputs", x, "--json", "-q", "--min-certified", "0.3")
    s = json.loads(res.stdout)["summary"]
    assert res.exit_code == 0 and s["gate_passed"] is True and s["min_certified"] == 0.3
    assert s["uncertified_reference_limited"] == [0] and s["uncertified_low_limited"] == [1]
    res = run("bound", "--model", spec, "--inputs", x, "--min-certified", "1.5")
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_probabilistic_cli_states_the_total_per_input_probability(tmp_path):
    spec = _ties_yaml(tmp_path)
    res = run("bound", "--model", spec, "--inputs", str(tmp_path / "ties_x.npy"), "-q",
              "--method", "probabilistic", "--confidence", "0.999")  # fmt: skip
    assert "failure prob.    <= 0.001 per input in total" in res.stdout, res.stdout
    assert "0.002" not in res.stdout


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_bar_only_on_a_terminal_and_not_with_quiet(tmp_path, monkeypatch):
    import fperr.cli as cli_mod

    spec = _ties_yaml(tmp_path)
    x = str(tmp_path / "ties_x.npy")
    res = run("bound", "--model", spec, "--inputs", x)  # CliRunner's stderr is no terminal
    assert res.stderr.strip() == "bounding 3 inputs through ties ..."
    res = run("bound", "--model", spec, "--inputs", x, "--quiet")
    assert res.stderr == ""
    tty = _Tty()
    monkeypatch.setattr(cli_mod.sys, "stderr", tty)
    monkeypatch.setattr(cli_mod, "_PROGRESS_DELAY", 0.0)
    assert cli_mod._progress_bar(6, "bounding", quiet=True) is None
    bar = cli_mod._progress_bar(6, "bounding", quiet=False)
    assert bar is not None
    bar.update(3)
    bar.update(3)
    bar.close()
    assert "bounding:   0%" in tty.getvalue() and "0/6" in tty.getvalue()
    monkeypatch.setattr(cli_mod.sys, "stderr", io.StringIO())
    assert cli_mod._progress_bar(6, "bounding", quiet=False) is None
    # the command feeds the bar every bounded input of both runs, then closes it
    seen: list = []

    class Bar:
        def update(self, n: int) -> None:
            seen.append(n)

        def close(self) -> None:
            seen.append("closed")

    monkeypatch.setattr(cli_mod, "_progress_bar", lambda total, desc, quiet: Bar())
    assert run("bound", "--model", spec, "--inputs", x).exit_code == 1
    assert sum(seen[:-1]) == 6 and seen[-1] == "closed"


def test_infinite_bounds_get_a_hint_on_stderr(tmp_path):
    """An input whose bound is infinite (here: it overflows binary16) gets one line
    naming the ranges as a likely cause and --ranges full as the remedy; not with
    --ranges full itself, nor with --quiet, nor when every bound is finite."""
    x = np.zeros((2, 64))
    x[1, 0] = 1e6  # beyond binary16's largest number: the low run may overflow
    np.save(tmp_path / "x.npy", x)
    mlp = str(Path(__file__).resolve().parents[1] / "examples" / "mlp.yaml")
    args = ["bound", "--model", mlp, "--inputs", str(tmp_path / "x.npy")]
    res = run(*args)
    assert "note: 1 of 2 inputs have an infinite bound" in res.stderr, res.stderr
    assert "--ranges full" in res.stderr and "note:" not in res.stdout
    assert "note:" not in run(*args, "--ranges", "full").stderr
    assert "note:" not in run(*args, "--ranges", "unstable").stderr
    assert run(*args, "--quiet").stderr == ""
    np.save(tmp_path / "x.npy", x[:1])
    assert "note:" not in run(*args).stderr
