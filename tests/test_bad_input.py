"""Bad input fails fast and clearly (issue 11, "Bad input").

Every case: exit code 2 through the command line, one line on stderr that
names the problem, no traceback, within a second; and the library raises
:class:`fperr.errors.FperrInputError` (or a subclass) for it.  Inputs that
used to hang (an alias bomb, deep nesting, a huge decimal exponent) run in a
subprocess with a timeout so that a regression fails instead of hanging.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fperr.bounds import bound
from fperr.bounds.memory import DEFAULT_MAX_BYTES, check_memory, estimate_bytes, max_bytes
from fperr.cli import cli
from fperr.errors import FperrInputError, SpecError
from fperr.formats import FORMATS
from fperr.layers import (
    Activation,
    BatchNorm,
    Conv2d,
    Dense,
    Dropout,
    Flatten,
    LayerNorm,
    Pool2d,
    Reshape,
    Residual,
)
from fperr.model import MAX_NESTING, Model, check_inputs, load_model
from fperr.round_report import parse_exact, round_report
from fperr.rounding import MODES, round_scalar
from fperr.yaml_io import load_yaml

ROOT = Path(__file__).resolve().parent.parent
DENSE = "input: {shape: [4]}\nlayers:\n  - {type: dense, weight: w, bias: b}\n"
IMAGE = "input: {shape: [1, 8, 8]}\nlayers:\n"


# -- the files of every case ---------------------------------------------------------
def _nested(depth: int) -> str:
    layer = "{type: relu}"
    for _ in range(depth):
        layer = "{type: residual, layers: [" + layer + "]}"
    return "input: {shape: [4]}\nlayers:\n  - " + layer + "\n"


def _alias_bomb() -> str:
    """2.8 KB whose layers expand to 2 * 9**9 relu layers (billion laughs)."""
    text = "input: {shape: [4]}\nlayers:\n"
    text += "  - {type: residual, layers: &a0 [{type: relu}, {type: relu}]}\n"
    for i in range(1, 10):
        items = ",".join([f"{{type: residual, layers: *a{i - 1}}}"] * 9)
        text += f"  - {{type: residual, layers: &a{i} [{items}]}}\n"
    return text


def _damaged_npz(raw: bytes, wanted: type[BaseException], text: str) -> bytes:
    """``raw`` with two bytes flipped where reading member 'w' raises ``wanted``
    with ``text`` in its message."""
    import io
    import zipfile
    import zlib

    for off in range(30, len(raw) - 2):
        b = bytearray(raw)
        b[off] ^= 0xFF
        b[off + 1] ^= 0xA5
        try:
            with zipfile.ZipFile(io.BytesIO(bytes(b))) as z:
                z.read("w.npy")
        except wanted as exc:
            if text in str(exc):
                return bytes(b)
        except (zipfile.BadZipFile, zlib.error, ValueError, KeyError, EOFError):
            pass
    raise AssertionError(f"no corruption raising {wanted.__name__}")  # pragma: no cover


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import zipfile
    import zlib

    d = tmp_path_factory.mktemp("bad")
    rng = np.random.default_rng(11)
    arrays = dict(w=rng.normal(size=(3, 4)), b=np.zeros(3), cw=rng.normal(size=(2, 1, 3, 3)),
                  rm=np.zeros(4), rv=np.ones(4), rvneg=np.array([1.0, -1.0, 1.0, 1.0]),
                  wnan=np.where(np.eye(3, 4) > 0, np.nan, 1.0))  # fmt: skip
    np.savez(d / "good.npz", **arrays)
    np.savez(d / "cplx.npz", w=rng.normal(size=(3, 4)) + 1j, b=np.zeros(3))
    raw = (d / "good.npz").read_bytes()
    np.savez_compressed(d / "comp.npz", w=rng.normal(size=(3, 4)), b=np.zeros(3))
    files = {
        "trunc.npz": raw[: len(raw) // 2],
        "junk.npz": b"PK\x03\x04" + rng.bytes(300),
        "notzip.npz": rng.bytes(300),
        "empty.npz": b"",
        "badcrc.npz": _damaged_npz(raw, zipfile.BadZipFile, "Bad CRC-32"),
        "badzlib.npz": _damaged_npz((d / "comp.npz").read_bytes(), zlib.error, "decompressing"),
    }
    for name, data in files.items():
        (d / name).write_bytes(data)
        (d / f"w_{name[:-4]}.yaml").write_text(f"weights: {name}\n" + DENSE)
    specs = {
        "complex.yaml": "weights: cplx.npz\n" + DENSE,
        "nan_weight.yaml": "weights: good.npz\ninput: {shape: [4]}\nlayers:\n"
                           "  - {type: dense, weight: wnan}\n",
        "negvar.yaml": "weights: good.npz\ninput: {shape: [4]}\nlayers:\n"
                       "  - {type: batchnorm, running_mean: rm, running_var: rvneg}\n",
        "dup_top.yaml": "input: {shape: [4]}\ninput: {shape: [5]}\nlayers: [{type: relu}]\n",
        "dup_layer.yaml": "input: {shape: [4]}\nlayers:\n  - {type: relu, type: tanh}\n",
        "nest40.yaml": _nested(40),
        "nest400.yaml": _nested(400),
        "nest5000.yaml": _nested(5000),
        "bomb.yaml": _alias_bomb(),
        "cycle.yaml": "input: {shape: [4]}\nlayers: &l\n  - {type: residual, layers: *l}\n",
        "bigconv.yaml": "weights: big.npz\ninput: {shape: [3, 64, 64]}\nlayers:\n"
                        "  - {type: conv2d, weight: w}\n  - {type: flatten}\n",
    }  # fmt: skip
    for name, text in specs.items():
        (d / name).write_text(text)
    np.savez(d / "big.npz", w=rng.normal(size=(16, 3, 3, 3)))
    np.save(d / "x4.npy", rng.normal(size=(3, 4)))
    np.save(d / "x8.npy", rng.normal(size=(3, 1, 8, 8)))
    np.save(d / "x64.npy", rng.normal(size=(1, 3, 64, 64)))
    np.save(d / "xc.npy", rng.normal(size=(3, 4)) + 1j)
    (d / "ok.yaml").write_text("weights: good.npz\n" + DENSE)
    return d


def _layer_spec(d: Path, name: str, layer: str, image: bool) -> tuple[Path, Path]:
    path = d / f"{name}.yaml"
    head = "weights: good.npz\n" + (IMAGE if image else "input: {shape: [4]}\nlayers:\n")
    path.write_text(head + f"  - {{{layer}}}\n")
    return path, d / ("x8.npy" if image else "x4.npy")


# -- the command line ------------------------------------------------------------------
@pytest.fixture(scope="module")
def runner(cases: Path) -> CliRunner:
    r = CliRunner()
    r.invoke(cli, ["bound", "--model", str(cases / "ok.yaml"), "--inputs", str(cases / "x4.npy")])
    return r  # lazy imports of the bound command done: timings below are the checks alone


def _fails_cleanly(runner: CliRunner, args: list[str], words: tuple[str, ...]) -> str:
    t0 = time.perf_counter()
    res = runner.invoke(cli, args)
    elapsed = time.perf_counter() - t0
    assert res.exit_code == 2, (args, res.output, res.exception)
    assert "Traceback" not in res.output
    errors = [line for line in res.stderr.splitlines() if line.startswith("fperr: error:")]
    assert len(errors) == 1 and res.stderr.strip().endswith(errors[0]), res.stderr
    for word in words:
        assert word in errors[0], (word, errors[0])
    assert elapsed < 1.0, (args, elapsed)
    return errors[0]


WEIGHT_CASES = [
    ("trunc", ("cannot read weights", "trunc.npz")),
    ("junk", ("cannot read weights", "junk.npz")),
    ("notzip", ("not an .npz",)),
    ("empty", ("not an .npz", "empty.npz")),
    ("badcrc", ("cannot read weights", "CRC")),
    ("badzlib", ("cannot read weights", "decompressing")),
]


@pytest.mark.parametrize("name,words", WEIGHT_CASES, ids=[c[0] for c in WEIGHT_CASES])
def test_damaged_weights(runner: CliRunner, cases: Path, name: str, words: tuple[str, ...]):
    args = ["bound", "--model", str(cases / f"w_{name}.yaml"), "--inputs", str(cases / "x4.npy")]
    _fails_cleanly(runner, args, words)
    with pytest.raises(SpecError):
        load_model(cases / f"w_{name}.yaml")


SPEC_CASES = [
    ("complex", ("complex", "'w'", "layer 0 (dense)")),
    ("nan_weight", ("NaN or inf", "'wnan'")),
    ("negvar", ("running_var", "negative", "layer 0 (batchnorm)")),
    ("dup_top", ("duplicate key 'input'", "line 2")),
    ("dup_layer", ("duplicate key 'type'",)),
    ("nest40", ("nested more than 32",)),
    ("cycle", ("cycle",)),
]


@pytest.mark.parametrize("name,words", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_spec_files(runner: CliRunner, cases: Path, name: str, words: tuple[str, ...]):
    args = ["bound", "--model", str(cases / f"{name}.yaml"), "--inputs", str(cases / "x4.npy")]
    _fails_cleanly(runner, args, words)
    with pytest.raises(SpecError):
        load_model(cases / f"{name}.yaml")


LAYER_CASES = [
    ("pool_k0", "type: maxpool2d, kernel_size: 0", True, "kernel_size"),
    ("pool_kneg", "type: avgpool2d, kernel_size: [2, -2]", True, "kernel_size.1"),
    ("pool_s0", "type: maxpool2d, kernel_size: 2, stride: 0", True, "stride"),
    ("pool_pneg", "type: avgpool2d, kernel_size: 2, padding: -1", True, "padding"),
    ("conv_s0", "type: conv2d, weight: cw, stride: 0", True, "stride"),
    ("conv_s1e12", "type: conv2d, weight: cw, stride: 1e12", True, "stride"),
    ("conv_sf", "type: conv2d, weight: cw, stride: 1.0e+12", True, "stride"),
    ("conv_sint", "type: conv2d, weight: cw, stride: 1000000000000", True, "stride"),
    ("conv_s2.5", "type: conv2d, weight: cw, stride: 2.5", True, "stride"),
    ("conv_pneg", "type: conv2d, weight: cw, padding: -1", True, "padding"),
    ("conv_dneg", "type: conv2d, weight: cw, dilation: -1", True, "dilation"),
    ("conv_d0", "type: conv2d, weight: cw, dilation: [1, 0]", True, "dilation"),
    ("conv_g0", "type: conv2d, weight: cw, groups: 0", True, "groups"),
    ("reshape_neg", "type: reshape, shape: [-2, -2]", False, "reshape.shape"),
    ("reshape_zero", "type: reshape, shape: [0, 4]", False, "reshape.shape"),
    ("lrelu_nan", "type: leaky_relu, negative_slope: .nan", False, "negative_slope"),
    ("lrelu_inf", "type: leaky_relu, negative_slope: -.inf", False, "negative_slope"),
    ("bn_eps_inf", "type: batchnorm, running_mean: rm, running_var: rv, eps: .inf", False, "eps"),
    ("bn_eps_neg", "type: batchnorm, running_mean: rm, running_var: rv, eps: -1e-5", False, "eps"),
    ("bn_eps_nan", "type: batchnorm, running_mean: rm, running_var: rv, eps: .nan", False, "eps"),
    ("ln_eps_inf", "type: layernorm, normalized_shape: [4], eps: .inf", False, "eps"),
    ("ln_shape0", "type: layernorm, normalized_shape: [0]", False, "normalized_shape"),
    ("dropout_nan", "type: dropout, p: .nan", False, ".p"),
    ("dropout_big", "type: dropout, p: 2", False, ".p"),
]


@pytest.mark.parametrize("name,layer,image,word", LAYER_CASES, ids=[c[0] for c in LAYER_CASES])
def test_bad_layer_parameters(
    runner: CliRunner, cases: Path, name: str, layer: str, image: bool, word: str
):
    spec, inputs = _layer_spec(cases, name, layer, image)
    _fails_cleanly(runner, ["bound", "--model", str(spec), "--inputs", str(inputs)],
                   (word, spec.name))  # fmt: skip
    with pytest.raises(SpecError):
        load_model(spec)


def test_negative_input_shape(runner: CliRunner, cases: Path):
    spec = cases / "input_neg.yaml"
    spec.write_text("input: {shape: [-4]}\nlayers: [{type: relu}]\n")
    _fails_cleanly(runner, ["bound", "--model", str(spec), "--inputs", str(cases / "x4.npy")],
                   ("input.shape.0", "greater than or equal to 1"))  # fmt: skip


def test_complex_and_damaged_data(runner: CliRunner, cases: Path):
    model = str(cases / "ok.yaml")
    _fails_cleanly(runner, ["bound", "--model", model, "--inputs", str(cases / "xc.npy")],
                   ("not numeric", "complex"))  # fmt: skip
    for name in ("trunc.npz", "junk.npz", "badcrc.npz", "badzlib.npz", "empty.npz"):
        _fails_cleanly(runner, ["bound", "--model", model, "--inputs", str(cases / name)],
                       (name,))  # fmt: skip


def test_model_too_large_for_the_engine(runner: CliRunner, cases: Path, monkeypatch):
    """The zonotope engine refuses a 3x64x64 convolution it cannot hold (10 GiB) in
    one line; the backward engine (the default for this piecewise-linear model)
    bounds it, and refuses in the same way only under a smaller memory limit."""
    monkeypatch.delenv("FPERR_MAX_BYTES", raising=False)
    args = ["bound", "--model", str(cases / "bigconv.yaml"), "--inputs", str(cases / "x64.npy")]
    zonotope = [*args, "--engine", "zonotope", "--no-cascade"]
    line = _fails_cleanly(runner, zonotope, ("GiB", "FPERR_MAX_BYTES"))
    need = float(line.split("about ")[1].split(" GiB")[0])
    assert need > DEFAULT_MAX_BYTES / 2**30  # the estimate is what it refuses on
    res = runner.invoke(cli, [*args, "--json", "--quiet"])
    assert res.exit_code in (0, 1), res.output
    assert len(json.loads(res.output)["samples"]) == 1
    monkeypatch.setenv("FPERR_MAX_BYTES", "1M")
    _fails_cleanly(runner, args, ("GiB", "FPERR_MAX_BYTES"))


def _run_subprocess(args: list[str], cwd: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    res = subprocess.run([sys.executable, "-m", "fperr.cli", *args], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    return res, time.perf_counter() - t0


HANG_CASES = [("bomb", "more than 100,000 nodes"), ("nest400", "nested deeper than 200"),
              ("nest5000", "nested deeper than 200")]  # fmt: skip


@pytest.mark.parametrize("name,words", HANG_CASES, ids=[c[0] for c in HANG_CASES])
def test_inputs_that_used_to_hang(cases: Path, name: str, words: str):
    if name == "bomb":
        assert len((cases / f"{name}.yaml").read_bytes()) < 3_000
    res, elapsed = _run_subprocess(["bound", "--model", f"{name}.yaml", "--inputs", "x4.npy"],
                                   cases)  # fmt: skip
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    assert res.stderr.strip().count("\n") == 0 and words in res.stderr
    assert elapsed < 20  # the interpreter's start included; the bomb ran out of memory before


# -- fperr round -------------------------------------------------------------------------
def _bits16(x: float) -> str:
    return f"0x{int(np.array(x, dtype=np.float16).view(np.uint16)):04x}"  # numpy's encoding


def test_round_negative_zero_keeps_its_sign(runner: CliRunner):
    for text in ("-0", "-0.0", "-0e5", "-0/7"):
        res = runner.invoke(cli, ["round", text])
        assert res.exit_code == 0, res.output
        assert _bits16(-0.0) == "0x8000" and _bits16(-0.0) in res.output
        assert "binary16:     -0.0" in res.output


@pytest.mark.parametrize("text,expected", [("1e400", np.inf), ("-1e400", -np.inf),
                                           ("1e-400", 0.0), ("-1e-400", -0.0)])  # fmt: skip
def test_round_beyond_float64_range(runner: CliRunner, text: str, expected: float):
    t0 = time.perf_counter()
    res = runner.invoke(cli, ["round", text])
    assert time.perf_counter() - t0 < 1.0
    assert res.exit_code == 0, res.output
    assert f"binary16:     {expected!r}" in res.output
    assert _bits16(expected) in res.output
    assert "outside every format's range" in res.output
    assert ("exceeds 65504" if abs(expected) > 0 else "is below 5.96046e-08") in res.output


def test_round_huge_exponent_returns_at_once(tmp_path: Path):
    for text, bits in (("1e999999999", "0x7c00"), ("-1e-999999999", "0x8000")):
        res, elapsed = _run_subprocess(["round", text], tmp_path)
        assert res.returncode == 0, res.stderr
        assert bits in res.stdout and "outside every format's range" in res.stdout
        assert elapsed < 20  # Fraction("1e999999999") alone ran for minutes


def test_round_bad_values_exit_2(runner: CliRunner):
    for value in ("abc", "1/0", "1e", "1/3e99999999", "0x10"):
        _fails_cleanly(runner, ["round", value], ("not a number",))
    _fails_cleanly(runner, ["round", "1", "--mode", "sideways"], ("rounding mode",))
    _fails_cleanly(runner, ["round", "1", "--format", "fp17"], ("unknown format",))


def test_far_exponents_round_like_the_exact_value():
    """The stand-in for an unexpanded exponent rounds, in every format and mode,
    exactly as the exact value does (oracle: the rational reference on 10**+-20000)."""
    for text in ("1e20000", "-1e20000", "3e-20000", "-7.5e-20000"):
        value, far = parse_exact(text)
        assert far
        exact = Fraction(text.split("e")[0]) * Fraction(10) ** int(text.split("e")[1])
        for fmt in FORMATS.values():
            for mode in (m for m in MODES if m != "stochastic"):
                got = round_scalar(value, fmt, mode)  # type: ignore[arg-type]
                want = round_scalar(exact, fmt, mode)  # type: ignore[arg-type]
                assert got == want or (np.isnan(got) and np.isnan(want)), (text, fmt.name, mode)
                assert np.signbit(got) == np.signbit(want)


def test_round_report_errors_beyond_float64_are_exact():
    lines = round_report("1e400", FORMATS["binary16"], "toward_zero")
    assert "binary16:     65504.0" in lines
    assert "abs error:    1e+400" in lines  # 10**400 - 65504 to 6 digits


# -- the library ---------------------------------------------------------------------------
W = np.ones((4, 4))


@pytest.mark.parametrize(
    "make",
    [
        lambda: Conv2d(np.ones((2, 1, 3, 3)), None, (0, 1)),
        lambda: Conv2d(np.ones((2, 1, 3, 3)), None, (1, 1), (-1, 0)),
        lambda: Conv2d(np.ones((2, 1, 3, 3)), None, (1, 1), (0, 0), (0, 1)),
        lambda: Conv2d(np.ones((2, 1, 0, 3)), None),
        lambda: Conv2d(np.ones((3, 1, 3, 3)), None, groups=2),
        lambda: Conv2d(np.ones((2, 1, 3, 3)), np.ones(3)),
        lambda: Dense(np.ones(4)),
        lambda: Dense(W, np.ones(3)),
        lambda: Pool2d("max", (0, 2), (1, 1)),
        lambda: Pool2d("avg", (2, 2), (2, 0)),
        lambda: Pool2d("avg", (2, 2), (2, 2), (-1, 0)),
        lambda: Pool2d("min", (2, 2), (2, 2)),
        lambda: Reshape((-2, -2)),
        lambda: Reshape((-1, 4)),
        lambda: Activation("leaky_relu", float("nan")),
        lambda: Activation("swish"),
        lambda: Dropout(float("nan")),
        lambda: BatchNorm(np.zeros(4), -np.ones(4)),
        lambda: BatchNorm(np.zeros(4), np.ones(4), eps=float("inf")),
        lambda: BatchNorm(np.zeros(4), np.ones(4), eps=-1e-5),
        lambda: BatchNorm(np.zeros(4), np.ones(3)),
        lambda: LayerNorm((4,), eps=float("nan")),
        lambda: LayerNorm((4,), np.ones(5)),
        lambda: Model("m", (4,), (Dense(W + 1j),)),
        lambda: Model("m", (4,), (Dense(np.where(W > 0, np.inf, 0.0)),)),
        lambda: Model("m", (4,), (BatchNorm(np.full(4, np.nan), np.ones(4)),)),
    ],
)
def test_constructors_refuse_bad_parameters(make):
    with pytest.raises(SpecError):
        make()


def test_residual_nesting_is_capped():
    layer: Residual = Residual((Activation("relu"),))
    for _ in range(MAX_NESTING - 1):
        layer = Residual((layer,))
    Model("ok", (4,), (layer,))  # MAX_NESTING deep: fine
    with pytest.raises(SpecError, match="nested more than"):
        Model("deep", (4,), (Residual((layer,)),))


def test_inputs_must_be_a_real_batch():
    for x in (np.ones((2, 4)) + 1j, 3.0, [["a"] * 4]):
        with pytest.raises(SpecError):
            check_inputs(x, (4,))


def test_a_layer_object_may_be_reused(rng):
    """One object at two places (different input shapes) bounds exactly as two copies."""
    conv = Conv2d(rng.normal(size=(2, 2, 3, 3)), None)
    dense = Dense(rng.normal(size=(6, 6)))
    head = Dense(rng.normal(size=(6, 50)))
    shared = Model("shared", (2, 9, 9),
                   (conv, Activation("relu"), conv, Flatten(), head, dense, dense))  # fmt: skip
    copies = Model("copies", (2, 9, 9), (
        conv, Activation("relu"), Conv2d(conv.weight.copy(), None), Flatten(),
        head, Dense(dense.weight.copy()), Dense(dense.weight.copy())))  # fmt: skip
    X = rng.normal(size=(5, 2, 9, 9))
    np.testing.assert_array_equal(bound(shared, X).bound, bound(copies, X).bound)
    np.testing.assert_array_equal(shared.forward(X), copies.forward(X))


def test_yaml_limits(tmp_path: Path, monkeypatch):
    f = tmp_path / "m.yaml"
    f.write_text("base: &b {type: relu}\nlayers:\n  - <<: *b\n    type: tanh\n")
    assert load_yaml(f)["layers"] == [{"type": "tanh"}]  # merge keys may be overridden
    f.write_text("a: 1\nb: {x: 1, y: 2, x: 3}\n")
    with pytest.raises(SpecError, match="duplicate key 'x'"):
        load_yaml(f)
    f.write_bytes(b"\xb8\x00" + bytes(range(256)))  # not text
    with pytest.raises(SpecError, match="malformed YAML"):
        load_yaml(f)
    f.write_text("n: " + "9" * 5000 + "\n")  # beyond Python's limit on integer strings
    with pytest.raises(SpecError, match="malformed YAML"):
        load_yaml(f)
    monkeypatch.setattr("fperr.yaml_io.MAX_BYTES", 10)
    f.write_text("input: {shape: [4]}\n")
    with pytest.raises(SpecError, match="at most 10"):
        load_yaml(f)


def test_memory_limit_setting(monkeypatch):
    for raw, value in (("8G", 8 * 2**30), ("1e9", 10**9), ("512m", 512 * 2**20)):
        monkeypatch.setenv("FPERR_MAX_BYTES", raw)
        assert max_bytes() == value
    for raw in ("lots", "-1", "0", "nanG"):
        monkeypatch.setenv("FPERR_MAX_BYTES", raw)
        with pytest.raises(FperrInputError, match="FPERR_MAX_BYTES"):
            max_bytes()
    monkeypatch.delenv("FPERR_MAX_BYTES")
    assert max_bytes() == DEFAULT_MAX_BYTES


def test_memory_estimate_refuses_only_large_models(monkeypatch):
    monkeypatch.delenv("FPERR_MAX_BYTES", raising=False)
    big = Model("big", (3, 64, 64), (Conv2d(np.ones((16, 3, 3, 3))), Flatten()))
    with pytest.raises(FperrInputError, match="GiB"):
        check_memory(big, 1)
    monkeypatch.setenv("FPERR_MAX_BYTES", "1T")
    check_memory(big, 1)
    # im2col of the 12288 unit images alone: 12288 * 27 * 62 * 62 floats
    assert estimate_bytes(big, 1) > 8 * 12288 * 27 * 62 * 62
    monkeypatch.delenv("FPERR_MAX_BYTES")
    for name in ("mlp", "cnn", "deep_tanh"):  # the bundled models: far below the limit
        model = load_model(ROOT / "examples" / f"{name}.yaml")
        check_memory(model, 50)
        assert estimate_bytes(model, 1) < 2**26
