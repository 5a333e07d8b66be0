"""The paper figures build (small set), are byte-stable, and read validation reports."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("tueplots")

from paper_figures import (  # noqa: E402
    build,
    data,
    fig_error_growth,
    fig_formats,
    fig_tolerance,
    fig_validation,
)
from paper_figures import tex as tex_snippets  # noqa: E402

FIGURES = [m for m in build.available() if m.startswith("fig_")]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path]]:
    out = tmp_path_factory.mktemp("figures")
    return out, build.build_all(out, small=True)


def test_every_figure_writes_pdf_and_png(built: tuple[Path, list[Path]]) -> None:
    out, paths = built
    assert set(FIGURES) >= {"fig_tolerance", "fig_error_growth", "fig_per_layer",
                            "fig_formats", "fig_number_line", "fig_validation"}  # fmt: skip
    for name in FIGURES:
        pdf, png = out / f"{name}.pdf", out / f"{name}.png"
        assert pdf in paths and png in paths, name
        assert pdf.stat().st_size > 1000 and pdf.read_bytes().startswith(b"%PDF"), name
        assert png.stat().st_size > 1000 and png.read_bytes().startswith(b"\x89PNG"), name
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths)


def test_pdfs_are_vector_without_timestamps(built: tuple[Path, list[Path]]) -> None:
    out, _ = built
    for name in FIGURES:
        raw = (out / f"{name}.pdf").read_bytes()
        assert b"/CreationDate" not in raw, name
    pdf = (out / "fig_number_line.pdf").read_bytes()  # lines only: no embedded bitmap
    assert b"/Subtype /Image" not in pdf


def test_tex_snippets(built: tuple[Path, list[Path]]) -> None:
    out, paths = built
    bounds = (out / "bounds.tex").read_text()
    assert "\\gamma_{n}" in bounds and "\\lambda \\sqrt{n}" in bounds
    assert bounds.count("\\newcommand") >= 4
    assert bounds.count("{") == bounds.count("}")
    table = (out / "results_table.tex").read_text()
    assert "\\begin{tabular}" in table and "\\bottomrule" in table
    for model in ("MLP", "CNN"):
        assert f"\n{model} & 200 & " in table
    constants = (out / "constants.tex").read_text()
    assert "\\gamma_{64}(u)" in constants and "binary16" in constants
    assert out / "results_table.tex" in paths


def test_results_table_matches_certify() -> None:
    """The table's numbers are those of fperr.certify.certify on the same inputs."""
    from fperr.certify import certify

    n = 40
    X, y = data.digits()
    got = data.certificate("mlp", n).summary()
    # the figures bound every input sharply: certify without its cascade
    want = certify(data.model("mlp"), X[:n], y[:n], cascade=False).summary()
    for key in ("certified", "observed_flips", "median_tolerance", "median_bound"):
        assert got[key] == want[key], key
    rows = tex_snippets.results_rows(small=True)
    assert [r["model"] for r in rows] == ["MLP", "CNN"]


@pytest.mark.parametrize("module", [fig_error_growth, fig_tolerance])
def test_byte_stable(module: Any, tmp_path: Path) -> None:
    make = module.make
    first = make(tmp_path / "a", small=True)
    data.clear()  # recompute the runs too
    second = make(tmp_path / "b", small=True)
    for p, q in zip(first, second, strict=True):
        assert p.read_bytes() == q.read_bytes(), p.name


def test_error_growth_observations_within_deterministic_bound() -> None:
    g = fig_error_growth.measure(0.0, 1.0, small=True)
    for acc in fig_error_growth.ACCUMULATORS:
        u = data.arith("binary16", acc).accumulate.u
        bound = fig_error_growth.gamma(g.n.astype(float), u)
        finite = np.isfinite(bound)
        assert np.all(g.worst[acc][finite] <= bound[finite])
        assert np.all(g.mean[acc] <= g.worst[acc])


# -- validation reports ---------------------------------------------------------------------
def _report(device: str, name: str) -> dict[str, object]:
    tight = {"median": 20.0, "p10": 12.0, "p90": 35.0, "min": 8.0, "max": 90.0, "n_zero": 0}
    results = [
        {"config": c, "batch_size": bs, "violations": 0,
         "tightness": tight if c != "float64" else dict.fromkeys(tight)}
        for c in ("float64", "float32", "float16") for bs in (1, 64)
    ]  # fmt: skip
    return {"format": "fperr-validation/1", "model": "digits-mlp",
            "environment": {"device": device, "device_name": name}, "results": results}  # fmt: skip


def test_validation_without_reports_uses_cpu_stand_in(tmp_path: Path) -> None:
    runs = fig_validation.collect(small=True, results_dir=tmp_path / "missing")
    assert runs.source == "emulated" and "stand-in" in runs.title
    assert all(b.min >= 1 for p in runs.panels for b in p.boxes)  # the bound holds
    (tmp_path / "empty").mkdir()
    assert fig_validation.collect(True, tmp_path / "empty").source == "emulated"


def test_validation_reads_reports(tmp_path: Path) -> None:
    root = tmp_path / "results"
    (root / "cpu").mkdir(parents=True)
    (root / "cpu" / "mlp.json").write_text(json.dumps(_report("cpu", "x86_64")))
    (root / "cpu" / "junk.json").write_text("{not json")
    (root / "cpu" / "probe.json").write_text(json.dumps({"tests": {"K=64": {"got": [1.0]}}}))
    runs = fig_validation.collect(small=True, results_dir=root)
    assert runs.source == "cpu" and "no GPU" in runs.title
    assert [b.label for b in runs.panels[0].boxes] == ["float32", "float16"]  # batch 64 only

    gpu = root / "NVIDIA_H100"
    gpu.mkdir()
    (gpu / "mlp.json").write_text(json.dumps(_report("cuda", "NVIDIA H100 80GB HBM3")))
    samples = [{"bound": [0.1, 0.2], "observed_delta": 0.01}, {"bound": [0.3], "observed_delta": 0}]
    (gpu / "other.json").write_text(json.dumps({"samples": samples}))
    runs = fig_validation.collect(small=True, results_dir=root)
    assert runs.source == "gpu" and len(runs.panels) == 2
    assert "NVIDIA H100 80GB HBM3" in runs.panels[0].title
    assert runs.panels[1].boxes[0].median == pytest.approx(20.0)  # 0.2 / 0.01; 0.3 / 0 dropped
    paths = fig_validation.make(tmp_path / "out", small=True, results_dir=root)
    assert all(p.stat().st_size > 1000 for p in paths)


# -- one's own model: fperr figures --model M --inputs X -------------------------------------
def test_figures_for_own_model(tmp_path: Path) -> None:
    """The figures that take a model draw a registered one on its own inputs,
    and the certificate behind them is fperr.certify.certify's on those inputs."""
    from fperr import examples
    from fperr.certify import certify

    model = examples.load("mlp")
    X, y = examples.digits()
    X, y = X[500:530], y[500:530]  # not the first rows: the user's inputs are used
    paths = build.build_for_model(model, X, y, tmp_path, small=True)
    names = sorted(p.name for p in paths)
    assert names == sorted(f"{m}.{e}" for m, _ in build.MODEL_FIGURES for e in ("pdf", "png"))
    assert all(p.stat().st_size > 1000 for p in paths)
    got = data.certificate("model", 30).summary()
    want = certify(model, X, y, cascade=False).summary()  # the figures bound every input sharply
    for key in ("inputs", "certified", "observed_flips", "median_bound", "accuracy_low"):
        assert got[key] == want[key], key
    assert "model" not in data.models_for(small=True)  # the paper's build is unchanged
    # without labels: the figures still build, with no accuracy
    build.build_for_model(model, X, None, tmp_path / "nolabels", small=True)
    assert np.isnan(fig_formats.rows(small=True, model="model")[0].accuracy)


def test_figures_for_own_model_bad_input(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from fperr import examples
    from fperr.cli import cli
    from fperr.errors import FperrInputError

    model = examples.load("mlp")
    with pytest.raises(FperrInputError, match=r"shape \[4, 5\].*\[N, 64\]"):
        build.build_for_model(model, np.zeros((4, 5)), None, tmp_path)
    with pytest.raises(FperrInputError, match="3 labels for 4 inputs"):
        build.build_for_model(model, np.zeros((4, 64)), np.zeros(3), tmp_path)
    np.savez(tmp_path / "bad.npz", inputs=np.zeros((4, 5)))
    r = CliRunner().invoke(cli, ["figures", "--model", str(examples.path("mlp")),
                                 "--inputs", str(tmp_path / "bad.npz"),
                                 "--out", str(tmp_path / "o")])  # fmt: skip
    assert r.exit_code == 2
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fperr: error: inputs have shape [4, 5]")
    r = CliRunner().invoke(cli, ["figures", "--inputs", "x.npz"])
    assert r.exit_code == 2 and "need --model" in r.output


def test_figures_for_a_single_logit_model(tmp_path: Path) -> None:
    """One output (its sign the class): every model figure builds from the CLI, and the
    tolerance panel uses |y| against the bound of that logit, certified iff |y| > M."""
    from click.testing import CliRunner

    from fperr.cli import cli
    from fperr.layers import Activation, Dense
    from fperr.model import Model

    rng = np.random.default_rng(1)
    model = Model("one-logit", (6,), (Dense(rng.normal(0, 0.5, (8, 6)), rng.normal(0, 0.1, 8)),
                                      Activation("relu"),
                                      Dense(rng.normal(0, 0.5, (1, 8)), rng.normal(0, 0.1, 1))))
    model.save(tmp_path / "one.yaml")
    X = rng.normal(0, 1, (40, 6))
    np.save(tmp_path / "x.npy", X)
    r = CliRunner().invoke(cli, ["figures", "--model", str(tmp_path / "one.yaml"), "--inputs",
                                 str(tmp_path / "x.npy"), "--out", str(tmp_path / "o"),
                                 "--small"])  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    files = sorted(p.name for p in (tmp_path / "o").iterdir())
    assert files == sorted(f"{m}.{e}" for m, _ in build.MODEL_FIGURES for e in ("pdf", "png"))
    # the panel's numbers, against numpy on the certificate's own outputs and margins
    res = data.certificate("model", 40)
    tol, cert, flips, factor = fig_tolerance._panel(res)
    y = res.y_ref[:, 0]
    np.testing.assert_array_equal(tol, np.abs(y))
    np.testing.assert_array_equal(cert, np.abs(y) > res.margin[:, 0])
    assert factor == 1.0 and not flips.any() and cert.sum() > 0
