"""fperr.training: optimizer hazards of standalone low-precision training."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fperr.datasets import load_inputs
from fperr.errors import FperrInputError
from fperr.formats import get_format
from fperr.layers import Activation, Dense, Flatten
from fperr.model import Model, load_model
from fperr.rounding import round as fround
from fperr.training import (
    backward,
    check_training,
    lost_updates,
    recommended_eps,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
MLP = EXAMPLES / "mlp.yaml"
FAST = {"max_batches": 4}


@pytest.fixture(scope="module")
def mlp() -> Model:
    return load_model(MLP)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    X, y = load_inputs(EXAMPLES / "digits.npz")
    assert y is not None
    return X, y


# -- eps ------------------------------------------------------------------------------
def test_eps_1e8_is_a_hazard_in_binary16(mlp, digits):
    report = check_training(mlp, *digits, eps=1e-8, fmt="binary16", **FAST)
    assert report.verdict == "hazard"
    assert report.predicts_nan
    assert report.constant("eps").rounded == 0.0
    assert any("rounds to 0" in h for h in report.hazards())
    # digits pixels 0, 32 and 39 are always 0: their first-layer weights get g = 0 -> 0/0
    first = next(p for p in report.params if p.name == "0.weight")
    assert first.nan_updates >= 3 * 256
    assert any("use eps >= 0.0001" in fix for fix in report.fixes)


@pytest.mark.parametrize("fmt", ["binary32", "bfloat16"])
def test_eps_1e8_is_fine_where_the_range_is_fp32s(mlp, digits, fmt):
    report = check_training(mlp, *digits, eps=1e-8, fmt=fmt, **FAST)
    assert report.verdict == "ok", report.hazards()
    assert not report.predicts_nan
    assert report.constant("eps").rounded == pytest.approx(1e-8, rel=2 ** -get_format(fmt).p)


def test_eps_1e4_passes_in_binary16(mlp, digits):
    report = check_training(mlp, *digits, eps=1e-4, fmt="binary16", **FAST)
    assert report.verdict == "ok", report.hazards()
    assert report.fixes == ()
    assert not report.predicts_nan


def test_subnormal_eps_reports_its_change_and_huge_steps(mlp, digits):
    report = check_training(mlp, *digits, eps=1e-7, fmt="binary16", **FAST)
    eps = report.constant("eps")
    assert eps.rounded == 2 * 2.0**-24  # 1e-7 is two subnormal quanta
    assert eps.rel_change == pytest.approx(0.192, abs=1e-3)
    assert any("subnormal" in f.message for f in report.findings)
    assert report.verdict == "hazard"  # lr/eps * g steps reach ~1e4 x lr
    assert max(p.max_update_ratio for p in report.params) > 1e3


def test_constants_rounding(mlp, digits):
    report = check_training(mlp, *digits, fmt="bfloat16", **FAST)
    assert report.constant("beta2").rounded == 1.0  # 0.999 is within half an ulp of 1
    assert report.constant("1-round(beta2)").rounded == 0.0
    assert report.verdict == "ok"  # torch applies the constants in fp32: a note only
    half = check_training(mlp, *digits, fmt="binary16", **FAST)
    assert half.constant("1-beta2").rounded == float(np.float16(0.001))
    assert half.constant("1-round(beta2)").rounded == 1 - float(np.float16(0.999))
    assert recommended_eps("binary16") == 1e-4


# -- lost updates ---------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["binary16", "bfloat16", "float8_e4m3fn"])
def test_lost_updates_against_brute_force(fmt, rng):
    f = get_format(fmt)
    # weights: random over the whole range, plus subnormals, powers of two, zero, max
    exps = rng.integers(f.emin - f.p, f.emax, 4000)
    w = fround(rng.uniform(1, 2, exps.size) * np.ldexp(1.0, exps), f)
    special = [0.0, f.smallest_subnormal, f.smallest_normal, 1.0, 2.0, f.max, 0.5, 3 * 2.0**-20]
    w = np.concatenate([w, fround(np.array(special), f)])
    w = w * rng.choice([-1.0, 1.0], w.size)
    w = w[np.isfinite(w)]
    # updates: k quarter-spacings (ties and binade edges), and random sizes
    q = np.ldexp(1.0, np.maximum(np.frexp(np.abs(w))[1] - 1, f.emin) - f.p + 1)
    u_grid = np.concatenate([w * 0 + k * q / 4 for k in range(-5, 6)])
    w_grid = np.tile(w, 11)
    u_rand = q * rng.standard_normal(w.size) * np.exp(rng.uniform(-3, 3, w.size))
    W = np.concatenate([w_grid, w])
    U = np.concatenate([u_grid, u_rand])
    exact = (W + U) - W == U  # the float64 sum is exact: the oracle rounds it once
    W, U = W[exact], U[exact]
    oracle = np.array([fround(np.array([a + b]), f)[0] == a for a, b in zip(W, U, strict=True)])
    np.testing.assert_array_equal(lost_updates(W, U, f), oracle)


def _lost_by_definition(w: np.ndarray, g: np.ndarray, optimizer: str, lr: float,
                        eps: float) -> float:  # fmt: skip
    """The first step's lost-update fraction from its definition, in exact
    arithmetic: each binary16 rounding is one correct rounding of the exact
    value (MPFR's binary16, gmpy2.ieee(16)), everything else is rational; an
    update u != 0 is lost iff RN16(w - u) == w.

    sgd: u = lr g.  adam (PyTorch's single-tensor Adam, first step, states in
    binary16, constants as Python floats): m = RN16((1 - b1) g),
    v = RN16((1 - b2) g^2), den = RN16(RN16(RN16(sqrt v) / sqrt(1 - b2)) + eps),
    u = lr / (1 - b1) * m / den.
    """
    gmpy2 = pytest.importorskip("gmpy2")
    mpq, mpfr = gmpy2.mpq, gmpy2.mpfr
    b1, b2 = 0.9, 0.999
    c1, c2, bc2, e = mpq(1 - b1), mpq(1 - b2), mpq(math.sqrt(1 - b2)), mpq(eps)
    step = mpq(lr / (1 - b1)) if optimizer == "adam" else mpq(lr)
    lost = updates = 0
    with gmpy2.context(gmpy2.ieee(16)):
        for wi, gi in zip(w.ravel().tolist(), g.ravel().tolist(), strict=True):
            if optimizer == "sgd":
                u = step * mpq(gi)
            else:
                m = mpfr(c1 * mpq(gi))
                den = mpfr(mpq(mpfr(mpq(gmpy2.sqrt(mpfr(c2 * mpq(gi) ** 2))) / bc2)) + e)
                u = step * mpq(m) / mpq(den)
            if u != 0:
                updates += 1
                lost += mpfr(mpq(wi) - u) == wi
    return lost / max(updates, 1)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_stagnation_fraction_against_brute_force(mlp, digits, optimizer):
    X, y = digits
    X, y = X[:400], y[:400]
    lr, eps = 1e-3, 1e-4
    report = check_training(mlp, X, y, optimizer=optimizer, lr=lr, eps=eps, batch_size=400)
    order = np.random.default_rng(0).permutation(len(X))
    bw = backward(mlp, X[order], y[order])
    for p in report.params:
        w = bw.params[p.name].astype(np.float16).astype(np.float64)  # numpy's cast: one rounding
        g = bw.grads[p.name].astype(np.float16).astype(np.float64)
        assert p.lost == _lost_by_definition(w, g, optimizer, lr, eps), p.name
    if optimizer == "sgd":
        assert all(p.lost > 0.5 for p in report.params)  # lr * g is far below ulp(w)/2
        assert report.verdict == ("hazard" if max(p.lost for p in report.params) > 0.9 else "ok")
    else:  # Adam's steps are ~lr: most updates land, some do not
        assert all(p.lost < 0.1 for p in report.params)
        assert any(p.lost > 0.01 for p in report.params)


# -- the backward pass ----------------------------------------------------------------
def _torch_grads(model: Model, X: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    torch = pytest.importorskip("torch")
    h = torch.from_numpy(X.reshape(len(X), -1))
    params: dict[str, Any] = {}
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Dense):
            W = params[f"{i}.weight"] = torch.tensor(layer.weight, requires_grad=True)
            b = params[f"{i}.bias"] = torch.tensor(layer.bias, requires_grad=True)
            h = h @ W.T + b
        elif isinstance(layer, Activation):
            h = {"relu": torch.relu, "tanh": torch.tanh, "sigmoid": torch.sigmoid}[layer.type](h)
    loss = torch.nn.functional.cross_entropy(h, torch.from_numpy(y))
    loss.backward()
    return {k: v.grad.numpy() for k, v in params.items()}


def test_backward_matches_torch_autograd_relu(mlp, digits):
    X, y = digits[0][:100], digits[1][:100]
    ours = backward(mlp, X, y)
    ref = _torch_grads(mlp, X, y)
    assert set(ours.grads) == set(ref)
    for k in ref:
        assert np.max(np.abs(ours.grads[k] - ref[k])) <= 1e-10, k


def test_backward_matches_torch_autograd_tanh_sigmoid(rng):
    layers = (
        Flatten(),
        Dense(rng.normal(0, 0.5, (12, 6)), rng.normal(0, 0.1, 12)),
        Activation("tanh"),
        Dense(rng.normal(0, 0.5, (9, 12)), rng.normal(0, 0.1, 9)),
        Activation("sigmoid"),
        Dense(rng.normal(0, 0.5, (4, 9)), rng.normal(0, 0.1, 4)),
    )
    model = Model("tiny", (2, 3), layers)
    X = rng.normal(0, 1, (17, 2, 3))
    y = rng.integers(0, 4, 17)
    ours = backward(model, X, y, loss_scale=8.0)
    ref = _torch_grads(model, X, y)
    for k in ref:
        assert np.max(np.abs(ours.grads[k] / 8.0 - ref[k])) <= 1e-10, k


def test_models_without_logits_are_refused(mlp, digits):
    # conv models are supported since issue 15 (tests/test_training_conv.py); a model
    # whose output is not a logit vector is refused in one line
    head = Model("no-logits", mlp.input_shape, (*mlp.layers, Flatten()))
    check_training(head, *digits, **FAST)  # flatten of a vector: still logits
    from fperr.layers import Reshape

    img = Model("image-out", mlp.input_shape, (*mlp.layers, Reshape((2, 5))))
    with pytest.raises(FperrInputError, match="expected logits"):
        check_training(img, *digits, **FAST)


def test_bad_arguments(mlp, digits):
    for kwargs in ({"optimizer": "lion"}, {"lr": -1.0}, {"eps": -1e-8}, {"betas": (0.9, 1.0)},
                   {"loss_scale": 0.0}):  # fmt: skip
        with pytest.raises(FperrInputError):
            check_training(mlp, *digits, **kwargs, **FAST)
    with pytest.raises(FperrInputError, match="labels"):
        check_training(mlp, digits[0], None)
    with pytest.raises(FperrInputError, match="labels must lie"):
        check_training(mlp, digits[0][:4], np.array([0, 1, 2, 10]))


# -- gradient underflow and loss scaling ----------------------------------------------
def test_underflowing_gradients_get_a_loss_scale(mlp, digits):
    layers = list(mlp.layers)
    last = layers[-1]
    assert isinstance(last, Dense)
    layers[-1] = Dense(last.weight * 1e-5, last.bias)
    tiny = Model("tiny-head", mlp.input_shape, tuple(layers))
    report = check_training(tiny, *digits, eps=1e-4, **FAST)
    assert report.verdict == "hazard"
    assert any("underflow" in h for h in report.hazards())
    fix = next(x for x in report.fixes if x.startswith("use loss scaling x"))
    scale = float(fix.removeprefix("use loss scaling x"))
    assert math.log2(scale).is_integer() and scale > 1
    scaled = check_training(tiny, *digits, eps=1e-4, loss_scale=scale, **FAST)
    assert not any("underflow" in h for h in scaled.hazards()), scaled.hazards()


# -- report and CLI -------------------------------------------------------------------
def test_report_renders(mlp, digits):
    report = check_training(mlp, *digits, **FAST)
    text = repr(report)
    assert "verdict: HAZARD" in text and "0.weight" in text and str(report) == text
    assert "<table>" in report._repr_html_()
    d = report.to_dict()
    json.dumps(d, allow_nan=False)
    assert d["verdict"] == "hazard" and d["format"] == "binary16"
    assert len(d["params"]) == 6 and len(d["layers"]) == 5


def test_check_training_cli_exit_codes():
    from click.testing import CliRunner

    from fperr.cli import cli

    def run(*args: str) -> tuple[str, int]:
        res = CliRunner().invoke(cli, ["check-training", *args, "--max-batches", "2"])
        return res.output, res.exit_code

    text, code = run("--model", str(MLP), "--eps", "1e-8")
    assert code == 1 and "HAZARD" in text and "eps >= 0.0001" in text
    text, code = run("--model", str(MLP), "--eps", "1e-4")
    assert code == 0 and "verdict: OK" in text
    text, code = run("--model", str(MLP), "--format", "bf16", "--inputs",
                     str(EXAMPLES / "digits.npz"))  # fmt: skip
    assert code == 0
    text, code = run("--model", str(EXAMPLES / "missing.yaml"))
    assert code == 2 and "not found" in text and "Traceback" not in text


def test_import_fperr_stays_light():
    code = (
        "import sys, fperr, fperr.training; "
        "bad = [m for m in ('torch', 'matplotlib') if m in sys.modules]; "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# -- the real thing, tiny -------------------------------------------------------------
def test_train_pure_nan_at_step_one_with_eps_1e8(digits):
    pytest.importorskip("torch")
    from fperr.training import train_pure

    X, y = digits[0][:300], digits[1][:300]
    bad = train_pure((64, 32, 10), X, y, "float16", eps=1e-8, seeds=[0], epochs=1)[0]
    assert bad.nan and bad.nan_step == 1 and bad.stopped_early
    good = train_pure((64, 32, 10), X, y, "float16", eps=1e-4, seeds=[0], epochs=2)[0]
    assert not good.nan and math.isfinite(good.final_loss)


# -- the figure -----------------------------------------------------------------------
def test_lost_updates_figure_builds(tmp_path):
    pytest.importorskip("matplotlib")
    from paper_figures import fig_lost_updates

    paths = fig_lost_updates.make(tmp_path)
    assert sorted(p.suffix for p in paths) == [".pdf", ".png"]
    for p in paths:
        assert p.is_file() and p.stat().st_size > 1000
    pdf = next(p for p in paths if p.suffix == ".pdf")
    png = next(p for p in paths if p.suffix == ".png")
    assert pdf.read_bytes().startswith(b"%PDF") and b"CreationDate" not in pdf.read_bytes()
    assert png.read_bytes().startswith(b"\x89PNG")
    again = fig_lost_updates.make(tmp_path / "again")
    assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
