"""`fperr formats` and `fperr round` through Click's runner."""

import numpy as np
from click.testing import CliRunner

from fperr.cli import cli


def run(*args: str):
    return CliRunner().invoke(cli, list(args))


def test_formats_table_lists_every_format():
    res = run("formats")
    assert res.exit_code == 0
    for name in ("binary16", "binary32", "bfloat16", "tf32", "float8_e4m3fn", "float8_e5m2"):
        assert name in res.output
    assert "65504" in res.output


def test_round_shows_value_bits_and_errors():
    res = run("round", "0.1", "--format", "binary16")
    assert res.exit_code == 0, res.output
    assert repr(float(np.float16(0.1))) in res.output
    assert "0x2e66" in res.output  # numpy's own bits for float16(0.1)
    assert f"0x{np.float16(0.1).view(np.uint16):04x}" in res.output
    assert "error (ulps): 0.4" in res.output


def test_round_bits_for_other_formats():
    res = run("round", "-2", "--format", "bfloat16")
    assert "0xc000" in res.output  # sign 1, exponent 128, fraction 0
    res = run("round", "448", "--format", "float8_e4m3fn")
    assert "0x7e" in res.output


def test_bad_arguments_exit_2_with_one_line():
    for args in (
        ["round", "abc"],
        ["round", "1", "--format", "fp17"],
        ["round", "1", "--mode", "x"],
    ):
        res = run(*args)
        assert res.exit_code == 2, (args, res.output)
        assert "Traceback" not in res.output
        assert res.output.strip().count("\n") == 0
        assert res.output.startswith("fperr: error:")


def test_schema_is_json_schema_of_the_spec():
    import json

    res = run("schema")
    assert res.exit_code == 0
    schema = json.loads(res.output)
    assert "layers" in schema["properties"] and "input" in schema["required"]


def test_check_training_exit_codes():
    res = run("check-training", "--model", "examples/mlp.yaml", "--eps", "1e-8")
    assert res.exit_code == 1 and "rounds to 0" in res.output
    res = run("check-training", "--model", "examples/mlp.yaml", "--eps", "1e-4")
    assert res.exit_code == 0, res.output
    # convolutional models are supported since issue 15 (they were refused with exit 2)
    res = run("check-training", "--model", "examples/cnn.yaml")
    assert res.exit_code == 1 and "rounds to 0" in res.output


def test_validate_rechecks_a_committed_report_and_rejects_bad_use():
    res = run("validate", "--model", "examples/mlp.yaml", "--report",
              "validation/results/cpu/mlp.json")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "0 bound violations" in res.output
    res = run("validate", "--report", "validation/results/cpu/mlp.json")
    assert res.exit_code == 2 and "--model is required" in res.output
    res = run("validate", "--model", "examples/mlp.yaml", "--report", "missing.json")
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_bound_reference_keeps_its_own_accumulator(tmp_path):
    """--accumulate is the low run's accumulator only; the reference's is
    --reference-accumulate (binary32 by default), printed and in the JSON."""
    import json

    from fperr import Emulated, certify, load_model

    X = np.load("examples/digits.npz")["inputs"][:12]
    np.save(tmp_path / "x.npy", X)
    args = ["bound", "--model", "examples/mlp.yaml", "--inputs", str(tmp_path / "x.npy"),
            "--accumulate", "binary16"]  # fmt: skip
    res = run(*args)
    assert res.exit_code in (0, 1), res.output
    lines = res.stdout.splitlines()
    assert ("low              storage binary16, accumulate binary16, operand binary16, "
            "accumulator rounds to nearest") in lines  # fmt: skip
    assert ("reference        storage binary32, accumulate binary32, operand binary32, "
            "accumulator rounds to nearest") in lines  # fmt: skip

    report = json.loads(run(*args, "--json").stdout)
    s = report["summary"]
    assert s["low_arithmetic"]["accumulate"] == "binary16"
    assert s["low_arithmetic"]["storage"] == "binary16"
    assert s["reference_arithmetic"]["accumulate"] == "binary32"
    assert s["reference_arithmetic"]["storage"] == "binary32"
    assert s["reference_arithmetic"]["operand_format"] == "binary32"
    assert s["reference_arithmetic"]["acc_rounding"] == "nearest"
    # the bounds are those of a binary32-accumulating reference, not only its label
    model = load_model("examples/mlp.yaml")
    want = certify(model, X, None, Emulated.from_names("binary16", "binary16"),
                   Emulated.from_names("binary32", "binary32"))  # fmt: skip
    got = np.array([smp["bound"] for smp in report["samples"]])
    np.testing.assert_array_equal(got, want.margin)
    wrong = certify(model, X, None, Emulated.from_names("binary16", "binary16"),
                    Emulated.from_names("binary32", "binary16"))  # fmt: skip
    assert not np.array_equal(got, wrong.margin)

    # the reference accumulator is its own option, and a truncating one is printed as such
    res = run(*args, "--reference-accumulate", "binary64", "--truncating-accumulator", "--json")
    s = json.loads(res.stdout)["summary"]
    assert s["reference_arithmetic"]["accumulate"] == "binary64"
    assert s["low_arithmetic"]["accumulate"] == "binary16"
    assert s["reference_arithmetic"]["acc_rounding"] == "truncate"
    res = run(*args, "--truncating-accumulator")
    assert "accumulate binary32, operand binary32, accumulator truncates" in res.stdout


def test_bound_json_is_strict_with_infinite_bounds(tmp_path):
    """An input whose binary16 run overflows has an infinite bound; --json must
    still be standard JSON (null, not the Infinity token strict parsers reject)."""
    import json

    import numpy as np

    from fperr.layers import Dense
    from fperr.model import Model

    model = Model("wide", (2,), (Dense(np.array([[1.0, -2.0], [1e4, 1e4]]), np.zeros(2)),))
    path = tmp_path / "m" / "wide.yaml"
    model.save(path)  # the folder is created
    np.save(tmp_path / "x.npy", np.array([[0.25, 3.0], [4.0, 4.0]]))  # 8e4 > 65504
    res = CliRunner().invoke(cli, ["bound", "--model", str(path), "--inputs",
                                   str(tmp_path / "x.npy"), "--json", "-q"])  # fmt: skip
    assert res.exit_code == 1

    def reject(token: str) -> None:
        raise AssertionError(f"non-standard JSON token {token}")

    d = json.loads(res.stdout, parse_constant=reject)
    s = d["summary"]
    assert s["certified"] < s["inputs"] == 2
    overflowed = d["samples"][1]
    assert overflowed["bound"] == [None, None] and not overflowed["certified"]
    assert all(x is not None for x in d["samples"][0]["bound"])


def test_bound_ranges_option(tmp_path):
    """--ranges interval gives the bounds of certify(ranges="interval"), never
    tighter than the default sharpened ranges; a bad value exits 2."""
    import json

    from fperr import certify, load_model

    X = np.load("examples/digits.npz")["inputs"][:20]
    np.save(tmp_path / "x.npy", X)
    args = ["bound", "--model", "examples/cnn.yaml", "--inputs", str(tmp_path / "x.npy"),
            "--json", "--no-cascade"]  # fmt: skip
    sharp = json.loads(run(*args).stdout)
    plain = json.loads(run(*args, "--ranges", "interval").stdout)
    model = load_model("examples/cnn.yaml")
    want = certify(model, X, ranges="interval", cascade=False)
    got = np.array([smp["bound"] for smp in plain["samples"]])
    np.testing.assert_allclose(got, want.margin, rtol=1e-12)
    sharp_b = np.array([smp["bound"] for smp in sharp["samples"]])
    assert np.median(sharp_b) <= np.median(got)
    bad = run(*args, "--ranges", "zonotope")
    assert bad.exit_code == 2
    lean = json.loads(run(*args, "--ranges", "unstable").stdout)
    want = certify(model, X, ranges="unstable", cascade=False)
    got = np.array([smp["bound"] for smp in lean["samples"]])
    np.testing.assert_allclose(got, want.margin, rtol=1e-12)


def test_bound_memory_budget(tmp_path, monkeypatch):
    """--memory sizes the engine's batches: the same verdicts at 64M as at the
    default; a budget one input cannot fit, or a malformed one, is bad input
    (exit 2, one line)."""
    import json

    # --memory writes FPERR_MAX_BYTES: monkeypatch removes it again afterwards
    monkeypatch.setenv("FPERR_MAX_BYTES", "4G")
    X = np.load("examples/digits.npz")["inputs"][:40]
    np.save(tmp_path / "x.npy", X)
    args = ["bound", "--model", "examples/mlp.yaml", "--inputs", str(tmp_path / "x.npy"),
            "--json", "-q"]  # fmt: skip
    default = json.loads(run(*args).stdout)
    small = run(*args, "--memory", "64M")
    assert small.exit_code in (0, 1), small.output
    assert json.loads(small.stdout)["summary"] == default["summary"]
    monkeypatch.setenv("FPERR_MAX_BYTES", "4G")
    tiny = run(*args, "--memory", "1K")
    assert tiny.exit_code == 2 and "over the limit of" in tiny.output, tiny.output
    assert len(tiny.output.strip().splitlines()) == 1
    monkeypatch.setenv("FPERR_MAX_BYTES", "4G")
    bad = run(*args, "--memory", "lots")
    assert bad.exit_code == 2 and "FPERR_MAX_BYTES must be a number" in bad.output, bad.output
