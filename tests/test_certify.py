"""Certificates: the lemma itself, the data-set result, and `fperr bound`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fperr.accumulation import ORDERS
from fperr.arith import Emulated
from fperr.certify import certified_sharp, certified_simple, certify, tolerance
from fperr.cli import cli
from fperr.layers import Dense
from fperr.model import Model, load_model

finite = st.floats(-1e3, 1e3, allow_nan=False)


@given(y=arrays(np.float64, (1, 6), elements=finite), d=arrays(np.float64, (1, 6), elements=finite))
def test_lemma_gamma_greater_than_two_delta_keeps_the_class(y, d):
    """If Gamma > 2 ||delta||_inf then argmax(y + delta) == argmax(y)."""
    delta = np.abs(d).max()
    if tolerance(y)[0] > 2 * delta:
        assert np.argmax(y + d) == np.argmax(y)
    # the certificate with margin |d| is never wrong either
    if certified_sharp(y, np.abs(d) + 1e-300)[0]:
        assert np.argmax(y + d) == np.argmax(y)


def test_equality_is_not_enough_a_tie_can_flip():
    y = np.array([[1.0, 0.0, -1.0]])
    margin = np.full((1, 3), 0.5)  # Gamma = 1 = 2 * 0.5: not strictly greater
    assert not certified_simple(y, margin)[0] and not certified_sharp(y, margin)[0]
    # ... because a perturbation within the margin reaches a tie between the
    # top two classes, where the predicted class is no longer determined:
    d = np.array([[-0.5, 0.5, 0.0]])
    assert np.all(np.abs(d) <= margin)
    assert set(np.flatnonzero((y + d)[0] == (y + d)[0].max())) == {0, 1}
    # one ulp less margin and both conditions certify (the inequality is strict)
    smaller = np.nextafter(margin, 0)
    assert certified_simple(y, smaller)[0] and certified_sharp(y, smaller)[0]


def test_sharper_condition_certifies_more():
    y = np.array([[3.0, 0.0, -5.0]])
    margin = np.array([[0.1, 2.0, 0.1]])
    assert certified_sharp(y, margin)[0]  # 3 - 0 > 0.1 + 2 and 3 + 5 > 0.2
    assert not certified_simple(y, margin)[0]  # Gamma = 3 < 2 * 2


@pytest.fixture(scope="module")
def mlp_result():
    d = np.load("examples/digits.npz")
    return certify(load_model("examples/mlp.yaml"), d["inputs"], d["labels"])


def test_digits_mlp_certificates(mlp_result):
    r = mlp_result
    s = r.summary()
    assert s["inputs"] == 1797
    assert s["certified_flips"] == 0
    agree = ~r.flipped
    assert r.certified[agree].mean() >= 0.99  # issue target
    # The certificates hold for every summation order fperr emulates: each run
    # stays within B = R_low + R_ref of the reference outputs, and no
    # certified input leaves its reference class.
    X = np.load("examples/digits.npz")["inputs"]
    model = load_model("examples/mlp.yaml")
    runs = {}
    for order in ORDERS:
        y = model.forward(X, Emulated.from_names("binary16", "binary32", order=order))
        assert np.all(np.abs(y - r.y_ref) <= r.bounds.bound), order
        assert np.all(np.argmax(y[r.certified], axis=1) == r.reference_class[r.certified]), order
        runs[order] = y
    # the orders are different runs (else the loop would check one run four times)
    assert set(ORDERS) >= {"sequential", "pairwise", "blocked", "blas"}
    assert len({y.tobytes() for y in runs.values()}) >= 3
    assert "certified" in repr(r) and "<table>" in r._repr_html_()
    d = r.to_dict()
    assert set(d["samples"][0]) == {"index", "reference_class", "tolerance", "bound",
                                    "certified", "observed_delta", "flipped"}  # fmt: skip


def test_boundary_blends_and_lemma_with_observed_delta():
    """Blends of two digits of different classes sit near decision boundaries."""
    d = np.load("examples/digits.npz")
    X, y = d["inputs"], d["labels"]
    rng = np.random.default_rng(0)
    i = rng.integers(0, len(X), 300)
    j = rng.integers(0, len(X), 300)
    keep = y[i] != y[j]
    t = rng.uniform(0.3, 0.7, keep.sum())[:, None]
    blends = t * X[i[keep]] + (1 - t) * X[j[keep]]
    r = certify(load_model("examples/mlp.yaml"), blends)
    by_observed = tolerance(r.y_ref) > 2 * r.observed_delta
    assert r.summary()["certified_flips"] == 0
    assert r.certified.sum() >= 0.9 * by_observed.sum()


def run(*args):
    return CliRunner().invoke(cli, list(args))


def test_cli_bound_json_and_exit_codes(tmp_path):
    res = run("bound", "--model", "examples/mlp.yaml", "--json")
    assert res.exit_code == 1  # one digit is not certified
    report = json.loads(res.stdout)
    s = report["summary"]
    assert s["inputs"] == 1797 and s["fperr_version"]
    assert len(report["samples"]) == 1797
    # a subset of easy inputs is fully certified: exit 0
    X = np.load("examples/digits.npz")["inputs"][:50]
    np.save(tmp_path / "x.npy", X)
    res = run("bound", "--model", "examples/mlp.yaml", "--inputs", str(tmp_path / "x.npy"),
              "--out", str(tmp_path / "r.json"))  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "certified        50 (100.00%)" in res.stdout
    assert json.loads((tmp_path / "r.json").read_text())["summary"]["certified"] == 50


@pytest.mark.parametrize(
    "setup, args, message",
    [
        (None, ["--model", "missing.yaml"], "model file not found"),
        ("malformed", ["--model", "{tmp}/bad.yaml"], "malformed YAML"),
        (None, ["--model", "examples/mlp.yaml", "--low", "fp17"], "unknown format"),
        ("shape", ["--model", "examples/mlp.yaml", "--inputs", "{tmp}/x.npy"], "expects [N, 64]"),
        ("nan", ["--model", "examples/mlp.yaml", "--inputs", "{tmp}/x.npy"], "NaN"),
        ("nokey", ["--model", "{tmp}/m.yaml"], "not found in"),
        ("extra", ["--model", "{tmp}/m.yaml"], "Extra inputs are not permitted"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, setup, args, message):
    if setup == "malformed":
        (tmp_path / "bad.yaml").write_text("name: [unclosed\nlayers: {")
    elif setup == "shape":
        np.save(tmp_path / "x.npy", np.zeros((3, 10)))
    elif setup == "nan":
        x = np.zeros((3, 64))
        x[1, 5] = np.nan
        np.save(tmp_path / "x.npy", x)
    elif setup in ("nokey", "extra"):
        with open("examples/mlp.yaml") as f:
            text = f.read().replace("mlp.npz", "w.npz")
        with np.load("examples/mlp.npz") as z:
            np.savez(tmp_path / "w.npz", **dict(z))
        text = text.replace("0.weight", "zz.weight") if setup == "nokey" else text.replace(
            "{type: relu}", "{type: relu, slope: 2}", 1)  # fmt: skip
        (tmp_path / "m.yaml").write_text(text.replace("digits.npz", "x.npz"))
    res = run("bound", *[a.format(tmp=tmp_path) for a in args])
    assert res.exit_code == 2, res.output
    assert message in res.output
    assert "Traceback" not in res.output
    err_lines = [line for line in res.output.splitlines() if line.startswith("fperr: error")]
    assert len(err_lines) == 1


def test_mixed_precision_bounds_are_sound_and_tighter():
    from fperr.bounds import bound_run
    from fperr.model import check_inputs

    model = load_model("examples/mlp.yaml")
    X = np.load("examples/digits.npz")["inputs"][:200]
    low, f32 = Emulated.from_names("binary16"), Emulated.from_names("binary32")
    exact = model.forward(X)
    all16 = bound_run(model, X, low)
    for keep in ({0: f32}, {2: f32, 4: f32}):
        rb = bound_run(model, X, low, keep=keep)
        h = check_inputs(X, model.input_shape)  # independent mixed-precision run
        for i, layer in enumerate(model.layers):
            a = keep.get(i, low)
            h = layer.forward(a.store(h), a)
        assert np.all(np.abs(h - exact) <= rb.radius)
        assert np.median(rb.radius) < np.median(all16.radius)


def test_suggest_fp32_certifies_the_boundary_inputs():
    from fperr.certify import suggest_fp32

    d = np.load("examples/digits.npz")
    X, y = d["inputs"], d["labels"]
    rng = np.random.default_rng(5)
    i, j = rng.integers(0, len(X), 400), rng.integers(0, len(X), 400)
    keep = y[i] != y[j]
    blends = 0.5 * X[i[keep]] + 0.5 * X[j[keep]]
    model = load_model("examples/mlp.yaml")
    s = suggest_fp32(model, blends, target=1.0)
    assert s.certified_before < 1.0
    assert s.certified_after >= s.certified_before
    assert s.layers and all(model.layers[k].type == "dense" for k in s.layers)
    assert s.result.summary()["certified_flips"] == 0
    assert "keep" in s.text() and s.to_dict()["layers"] == s.layers


def test_single_logit_classifier_uses_the_sign():
    """One output (a two-class classifier's logit): class 1 iff y > 0, certified iff
    |y| > M, tolerance |y| (it was: always certified, tolerance inf)."""
    from fperr.certify import predicted_class

    y = np.array([[2.0], [-0.5], [0.01], [0.0]])
    m = np.array([[0.1], [0.1], [0.1], [0.1]])
    assert predicted_class(y).tolist() == [1, 0, 1, 0]
    assert certified_sharp(y, m).tolist() == [True, True, False, False]
    assert certified_simple(y, m).tolist() == [True, True, False, False]
    assert tolerance(y).tolist() == [2.0, 0.5, 0.01, 0.0]
    model = Model("logit", (2,), (Dense(np.array([[1.0, -1.0]]), np.array([0.0])),))
    X = np.array([[3.0, 1.0], [1.0, 3.0], [1.0, 1.0 + 2.0**-12]])
    res = certify(model, X, labels=[1, 0, 1])
    assert res.reference_class.tolist() == [1, 0, 0]
    assert res.certified.tolist() == [True, True, False]  # the last is within rounding of 0
    assert res.summary()["accuracy_reference"] == pytest.approx(2 / 3)
