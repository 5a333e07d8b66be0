"""Real-hardware validation: bounds vs PyTorch runs, reports, recheck, the GEMM probe."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fperr.errors import FperrInputError
from fperr.layers import Activation, Dense
from fperr.model import Model, load_model

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402
from test_reports import fake_probe  # noqa: E402

from fperr.cli import cli  # noqa: E402
from fperr.hardware import (  # noqa: E402
    CONFIGS,
    ProbeResult,
    ValidationReport,
    arithmetic_for,
    probe,
    recheck,
    summarize,
    validate,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


def small_mlp() -> Model:
    rng = np.random.default_rng(11)

    def r(*shape: int) -> np.ndarray:
        # float32 values, as trained weights are: torch's float64 -> float16
        # conversion goes through float32, which must not double-round here
        return (rng.standard_normal(shape) * 0.4).astype(np.float32).astype(np.float64)

    layers = (Dense(r(24, 12), r(24)), Activation("relu"), Dense(r(24, 24), r(24)),
              Activation("tanh"), Dense(r(6, 24), r(6)))  # fmt: skip
    return Model("small-mlp", (12,), layers)


def small_inputs(n: int = 40) -> np.ndarray:
    return np.random.default_rng(3).integers(0, 17, (n, 12)) / 16.0


@pytest.fixture(scope="module")
def cpu_probe() -> ProbeResult:
    return probe("cpu")


@pytest.fixture(scope="module")
def small_report(cpu_probe: ProbeResult) -> ValidationReport:
    X = small_inputs()
    labels = np.arange(len(X)) % 6
    return validate(small_mlp(), X, labels, device="cpu", probe_result=cpu_probe)


# -- validate on the CPU ------------------------------------------------------------------------
def test_small_mlp_on_cpu_has_no_violation(small_report: ValidationReport) -> None:
    rep = small_report
    assert rep.violations == 0 and rep.certified_flips == 0 and rep.ok
    keys = {(r.config, r.batch_size) for r in rep.results}
    assert keys == {(c, b) for c in CONFIGS for b in (40, 1)}
    for r in rep.results:
        assert r.n_inputs == 40 and r.worst_excess is not None and r.worst_excess <= 0
        assert r.flags["batch_size"] == r.batch_size and r.flags["config"] == r.config
        assert r.double_rounded == 0
        if r.config != "float64" or r.batch_size == 1:
            t = r.tightness
            assert t["min"] is not None and 1 <= t["min"] <= t["p10"] <= t["median"] <= t["p90"]
    f16 = rep.result("float16", 40)
    assert f16.certified is not None and f16.certified > 0
    assert rep.result("float32", 1).flips == 0
    assert rep.result("float32", 40).observed_max > 0  # a real float32 run, not float64


def test_bounds_in_worker_processes_give_the_same_report(
    small_report: ValidationReport, cpu_probe: ProbeResult
) -> None:
    X = small_inputs()
    rep = validate(small_mlp(), X, np.arange(len(X)) % 6, device="cpu",
                   probe_result=cpu_probe, workers=2)  # fmt: skip
    assert rep.results == small_report.results


def test_report_summary_and_reprs(small_report: ValidationReport) -> None:
    text = summarize(small_report)
    assert "small-mlp" in text and "0 bound violations" in text
    for c in CONFIGS:
        assert c in text
    assert "small-mlp" in repr(small_report) and "0 violations" in repr(small_report)
    assert "<table>" in small_report._repr_html_()


def test_report_round_trips_through_json(small_report: ValidationReport, tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    small_report.save(path)
    json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"non-JSON {c}"))
    back = ValidationReport.load(path)
    assert back.results == small_report.results
    assert back.to_dict() == json.loads(path.read_text())
    assert back.arrays.keys() == small_report.arrays.keys()
    for k, a in small_report.arrays.items():
        assert np.array_equal(back.arrays[k], a, equal_nan=True), k
    env = back.environment
    for key in ("device_name", "torch", "cuda", "fperr", "driver"):
        assert key in env
    assert recheck(path, small_mlp()) == []


def test_certificates_match_certify(small_report: ValidationReport) -> None:
    from fperr.arith import Emulated
    from fperr.certify import certify

    r = small_report.result("float16", 1)
    low = Emulated.from_dict(r.arithmetic)
    ref = Emulated.from_dict(small_report.certificate_reference)
    res = certify(small_mlp(), small_inputs(), low=low, reference=ref)
    assert int(res.certified.sum()) == r.certified


def test_doctored_report_is_detected(small_report: ValidationReport, tmp_path: Path) -> None:
    key = "outputs:float16@1"
    y = small_report.arrays[key].copy()
    y[7, 2] += 1000.0
    path = tmp_path / "doctored.json"
    replace(small_report, arrays={**small_report.arrays, key: y}).save(path)
    problems = recheck(path, small_mlp())
    assert any(p.startswith("float16@1: input 7 output 2: observed") for p in problems)
    assert not any(p.startswith("float16@40") for p in problems)
    # the command-line entry point reports it too, with exit code 1
    model_path = tmp_path / "small.yaml"
    small_mlp().save(model_path)
    res = CliRunner().invoke(cli, ["validate", "--model", str(model_path), "--report", str(path)])
    assert res.exit_code == 1 and "input 7 output 2" in res.output


def test_recheck_refuses_another_model(small_report: ValidationReport, tmp_path: Path) -> None:
    path = tmp_path / "r.json"
    small_report.save(path)
    other = load_model(EXAMPLES / "mlp.yaml")
    with pytest.raises(FperrInputError, match="another model"):
        recheck(path, other)


# -- probe --------------------------------------------------------------------------------------
def test_probe_on_cpu_names_an_accumulation_model(cpu_probe: ProbeResult) -> None:
    pr = cpu_probe
    assert "accumulation" in pr.model and "binary16 storage" in pr.model
    # every CPU kernel torch uses accumulates fp16 GEMMs in fp32 (opmath)
    assert pr.accumulate["float16/red=False"] == "binary32"
    assert pr.tf32_operand == "none"  # the TF32 flags do nothing on the CPU
    assert all(pr.covered_by[k] for k in pr.covered_by)
    assert ProbeResult.from_dict(json.loads(json.dumps(pr.to_dict()))).to_dict() == pr.to_dict()
    assert "ProbeResult(" in repr(pr) and "<table>" in pr._repr_html_()


# -- errors -------------------------------------------------------------------------------------
@pytest.mark.skipif(CUDA, reason="checks the error when CUDA is missing")
def test_cuda_requested_without_cuda_is_one_clear_error() -> None:
    res = CliRunner().invoke(cli, ["validate", "--model", str(EXAMPLES / "mlp.yaml"),
                                   "--device", "cuda"])  # fmt: skip
    assert res.exit_code == 2 and "cuda" in res.output
    with pytest.raises(FperrInputError, match="cuda"):
        probe("cuda")


def test_bad_paths_are_input_errors(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["validate", "--model", str(tmp_path / "nope.yaml")])
    assert res.exit_code == 2 and "not found" in res.output
    res = CliRunner().invoke(cli, ["validate", "--model", str(EXAMPLES / "mlp.yaml"),
                                   "--report", str(tmp_path / "nope.json")])  # fmt: skip
    assert res.exit_code == 2 and "not found" in res.output
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    with pytest.raises(FperrInputError, match="not an fperr validation report"):
        ValidationReport.load(bad)


def test_import_does_not_pull_in_torch() -> None:
    code = "import sys, fperr.hardware; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# -- CUDA ---------------------------------------------------------------------------------------
@needs_cuda
def test_probe_on_cuda_names_an_accumulation_model() -> None:
    pr = probe("cuda")
    assert pr.accumulate["float16/red=False"] in ("binary32", "binary16")
    assert "accumulation" in pr.model


@needs_cuda
def test_small_mlp_on_cuda_has_no_violation() -> None:
    rep = validate(small_mlp(), small_inputs(), device="cuda")
    assert rep.violations == 0 and rep.certified_flips == 0, summarize(rep)
    assert rep.environment["device"].startswith("cuda")


def test_validate_rejects_bad_arguments() -> None:
    m = small_mlp()
    with pytest.raises(FperrInputError, match="unknown config"):
        validate(m, small_inputs(4), configs=["float17"], probe_result=fake_probe())
    with pytest.raises(FperrInputError, match="positive"):
        validate(m, small_inputs(4), batch_sizes=(0,), probe_result=fake_probe())


def test_configs_subset_always_keeps_the_references(cpu_probe: ProbeResult) -> None:
    from fperr.hardware.torch_env import flag_state

    before = flag_state(torch)
    rep = validate(small_mlp(), small_inputs(8), device="cpu", batch_sizes=(None,),
                   configs=["bfloat16", "float32_default"], probe_result=cpu_probe)  # fmt: skip
    assert flag_state(torch) == before  # every global flag restored
    assert [r.config for r in rep.results] == ["float64", "float32", "bfloat16", "float32_default"]
    flags = rep.result("float32_default").flags
    assert flags["tf32_matmul"] is False and flags["tf32_cudnn"] is True  # PyTorch's defaults
    # bfloat16 on the CPU: PyTorch accumulates in float32 (opmath) with FMA
    # units that round to nearest, as the probe measures; the bound's
    # arithmetic must say so, and the report must use that arithmetic.
    key = "bfloat16/red=False"
    assert cpu_probe.accumulate[key] == "binary32"
    assert cpu_probe.rounding[key] in ("nearest", "inconclusive")
    arith, why = arithmetic_for("bfloat16", "cpu", cpu_probe)
    assert (arith.storage.name, arith.accumulate.name, arith.operand_format.name) == (
        "bfloat16", "binary32", "bfloat16")  # fmt: skip
    assert arith.acc_rounding == "nearest" and arith.u_acc == 2.0**-24
    used = rep.result("bfloat16").arithmetic  # the report's own serialisation
    for k in ("storage", "accumulate", "acc_rounding", "func_ulps"):
        assert used[k] == arith.to_dict()[k], k
    assert rep.result("bfloat16").reason == why


@pytest.mark.parametrize("act", ["gelu", "sigmoid"])
def test_batchnorm_and_smooth_activation_cases_have_no_violation(
    act: str, cpu_probe: ProbeResult
) -> None:
    """The review's real-kernel cases: torch's fp16 BatchNorm (large running mean:
    it rounds the folded shift, not one scale and shift in binary16) and its
    vectorised GELU / sigmoid tails, far outside a 1-ulp allowance."""
    from fperr.layers import BatchNorm

    rng = np.random.default_rng(7)
    c = 16
    layers = (Dense(rng.standard_normal((c, 12)).astype(np.float32).astype(np.float64),
                    np.full(c, 1000.0)),
              BatchNorm(np.full(c, 1000.0), rng.uniform(0.5, 4.0, c),
                        rng.uniform(0.5, 2.0, c), rng.standard_normal(c)),
              Activation(act), Dense(rng.standard_normal((6, c)), None))  # fmt: skip
    model = Model("bn-" + act, (12,), layers)
    X = rng.standard_normal((48, 12)) * 3
    rep = validate(model, X, device="cpu", batch_sizes=(None, 1), probe_result=cpu_probe,
                   configs=["float16", "bfloat16", "float32"])  # fmt: skip
    assert rep.violations == 0 and rep.certified_flips == 0, summarize(rep)
