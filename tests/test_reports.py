"""Validation reports without torch: the committed real-hardware reports still
hold under the current bounds, configs map to arithmetics, arrays round-trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fperr.hardware.configs import arithmetic_for
from fperr.hardware.probe import ProbeResult
from fperr.hardware.reports import ValidationReport, _decode, _encode
from fperr.hardware.validate import _fingerprint, recheck
from fperr.model import Model, load_model

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
RESULTS = ROOT / "validation" / "results"
# Inputs rechecked per committed report: the ones closest to their bound (plus
# every input some run flipped); the deep tanh MLP's bound costs ~0.15 s each.
RECHECK_LIMIT = {"digits-mlp": 200, "digits-cnn": 100, "digits-deep-tanh": 4}


# -- committed real-hardware reports: the regression guard --------------------------------------
def committed_reports() -> list[Path]:
    return sorted(p for p in RESULTS.glob("**/*.json") if p.name not in ("probe.json",
                                                                         "kernels.json"))


def test_cpu_reports_are_committed() -> None:
    names = {p.stem for p in (RESULTS / "cpu").glob("*.json")}
    assert {"mlp", "cnn", "deep_tanh"} <= names


@pytest.fixture(scope="module")
def example_models() -> dict[str, Model]:
    models = [load_model(p) for p in sorted(EXAMPLES.glob("*.yaml"))]
    return {_fingerprint(m): m for m in models}


@pytest.mark.parametrize("path", committed_reports(), ids=lambda p: str(p.relative_to(RESULTS)))
def test_committed_report_holds_under_current_bounds(
    path: Path, example_models: dict[str, Model]
) -> None:
    assert path.stat().st_size < 2_000_000
    rep = ValidationReport.load(path)
    assert rep.ok, f"{path} was committed with violations"
    model = example_models.get(rep.model_fingerprint)
    assert model is not None, f"{path}: no example model with its fingerprint"
    assert recheck(rep, model, limit=RECHECK_LIMIT.get(rep.model_name, 8)) == []


# -- configs -> arithmetics ---------------------------------------------------------------------
def fake_probe(**kw: object) -> ProbeResult:
    base: dict[str, object] = dict(
        device="cuda:0", device_name="fake", torch="x", cuda="13.0",
        accumulate={f"{d}/red={r}": "binary32" for d in ("float16", "bfloat16")
                    for r in (False, True)},
        rounding={"float32": "nearest", "tf32": "inconclusive",
                  **{f"{d}/red={r}": "inconclusive" for d in ("float16", "bfloat16")
                     for r in (False, True)}},
        tf32_operand="nearest", covered_by={},
    )  # fmt: skip
    base.update(kw)
    return ProbeResult(**base)  # type: ignore[arg-type]


def test_arithmetic_mapping() -> None:
    pr = fake_probe()
    a, why = arithmetic_for("float16", "cuda", pr)
    names = (a.storage.name, a.accumulate.name, a.acc_rounding)
    assert names == ("binary16", "binary32", "truncate")
    assert a.func_ulps is None and why  # the measured kernel allowance, as fperr bound
    a, _ = arithmetic_for("float16", "cpu", pr)
    assert a.acc_rounding == "nearest"
    a, _ = arithmetic_for("float32", "cuda", pr)
    assert (a.storage.name, a.acc_rounding) == ("binary32", "nearest")
    # reduced-precision reduction: 16-bit accumulation unless the probe saw fp32
    acc = dict(pr.accumulate, **{"float16/red=True": "unknown"})
    a, _ = arithmetic_for("float16_red", "cuda", fake_probe(accumulate=acc))
    assert a.accumulate.name == "binary16"
    a, _ = arithmetic_for("float16_red", "cuda", pr)
    assert a.accumulate.name == "binary32"
    rnd = dict(pr.rounding, **{"float16/red=False": "nearest"})
    a, _ = arithmetic_for("float16", "cuda", fake_probe(rounding=rnd))
    assert a.acc_rounding == "nearest"
    a, _ = arithmetic_for("bfloat16", "cuda", pr)
    assert a.storage.name == "bfloat16"
    a, _ = arithmetic_for("autocast_float16", "cuda", pr)
    assert a.storage.name == "binary16"
    # TF32 rounds (or chops) both operands of float32 values to TF32
    a, _ = arithmetic_for("tf32", "cuda", pr)
    names = (a.storage.name, a.operand_format.name, a.accumulate.name, a.acc_rounding)
    assert names == ("binary32", "tf32", "binary32", "truncate")
    # PyTorch's defaults run convolutions on TF32 (cuDNN), dense layers in fp32
    cnn = load_model(EXAMPLES / "cnn.yaml")
    assert arithmetic_for("float32_default", "cuda", pr, cnn)[0].operand_format.name == "tf32"
    mlp = load_model(EXAMPLES / "mlp.yaml")
    assert arithmetic_for("float32_default", "cuda", pr, mlp)[0].storage.name == "binary32"
    assert arithmetic_for("float32_default", "cpu", pr, cnn)[0].storage.name == "binary32"


def test_arrays_are_stored_losslessly_and_narrowly() -> None:
    rng = np.random.default_rng(0)
    f16 = rng.standard_normal(50).astype(np.float16).astype(np.float64)
    wide = (rng.standard_normal(50) * 2.0**20).astype(np.float32)  # beyond float16's range
    bf16 = (wide.view(np.uint32) & 0xFFFF0000).view(np.float32)
    cases = {
        "float16": np.append(f16, [np.inf, -0.0, np.nan]),
        "bfloat16": bf16.astype(np.float64),
        "float32": rng.standard_normal((3, 4)).astype(np.float32).astype(np.float64),
        "float64": rng.standard_normal(7),
        "int8": np.arange(5),
    }
    for kind, a in cases.items():
        enc = _encode(a)
        assert enc["dtype"] == kind
        assert np.array_equal(_decode(enc), a, equal_nan=True)
