"""`fperr bound --per-layer`: each layer's share of B adds up to B, layers that do no
arithmetic hold only remainder terms (issue 15)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fperr.arith import Emulated
from fperr.bounds import bound_run
from fperr.certify import certify
from fperr.cli import cli
from fperr.layer_shares import MARGIN_ROW
from fperr.model import Model, load_model

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
LOW = Emulated.from_names("binary16", "binary32")
REF = Emulated.from_names("binary32", "binary32")
N = 120


@pytest.fixture(scope="module")
def X():
    with np.load(EXAMPLES / "digits.npz") as z:
        return z["inputs"][:: 1797 // N][:N]


@pytest.fixture(scope="module", params=["mlp", "cnn"])
def case(request, X):
    model = load_model(EXAMPLES / f"{request.param}.yaml")
    return model, certify(model, X, cascade=False)


def test_shares_add_up_to_the_bound_per_input_and_output(case):
    _, res = case
    sh = res.layer_shares()
    B = res.bounds.bound  # the bound the certificate uses
    assert np.isfinite(B).all() and (B > 0).all()
    c = sh.contribution
    assert c.shape == (N, len(res.bounds.layer_names) + 1, B.shape[1])
    assert sh.names[-1] == MARGIN_ROW and sh.names[:-1] == res.bounds.layer_names
    assert (c >= 0).all()
    np.testing.assert_allclose(c.sum(axis=1), B, rtol=1e-9, atol=0)
    # the margin row is the engine's float64 evaluation margin, nothing else hides in it
    margin = c[:, -1, :]
    assert (margin <= 2e-10 * B).all() and (margin >= 0).all()
    s = sh.shares()
    np.testing.assert_allclose(s.sum(axis=1), 1.0, rtol=1e-9)
    rows = sh.summary_rows()
    assert sum(r["mean_share"] for r in rows) == pytest.approx(1.0, rel=1e-9)
    # independent recomputation of one statistic: median of c[n, j, k_n] / B[n, k_n]
    k = np.argmax(B, axis=1)
    j = int(np.argmax([r["median_share"] for r in rows]))
    med = np.median([c[n, j, k[n]] / B[n, k[n]] for n in range(N)])
    assert rows[j]["median_share"] == pytest.approx(med, rel=1e-12)
    assert rows[j]["kind"] == "rounds"


def _prefix(model: Model, i: int, X: np.ndarray, arith: Emulated):
    """The run's values and a radius entering layer i at least as wide as the one the
    engine uses there: the interval range of the first i layers (no backward rows;
    the engine sharpens it only where that helps)."""
    head = Model("head", model.input_shape, model.layers[:i])
    K = int(np.prod(head.output_shape))
    rb = bound_run(head, X, arith, engine="backward", ranges="interval",
                   rows=np.zeros((X.shape[0], K), dtype=bool))  # fmt: skip
    shape = (X.shape[0], *model.shapes()[i])
    return rb.output.reshape(shape), rb.radius.reshape(shape)


def _relu_sure(z: np.ndarray, r: np.ndarray) -> np.ndarray:
    """Per input: every unit's sign is the same over [z - 2r, z + 2r]."""
    straddles = (z + 2 * r > 0) & (z - 2 * r < 0)
    return ~straddles.reshape(len(z), -1).any(axis=1)


def _pool_sure(z: np.ndarray, r: np.ndarray, s: np.ndarray | None = None) -> np.ndarray:
    """Per input: in every 2x2/stride-2 window the winner beats every rival for any run,
    or no value carries an error (every run computes the same window).  Any run lies
    within r + s of this one, s (default r) a bound on this run's own error."""
    N, C, H, W = z.shape

    def win(a: np.ndarray) -> np.ndarray:
        a = a.reshape(N, C, H // 2, 2, W // 2, 2).transpose(0, 1, 2, 4, 3, 5)
        return a.reshape(N, C, H // 2, W // 2, 4)

    v, rr = win(z), win(r)
    far = rr + (rr if s is None else win(s))
    arg = np.argmax(v, axis=-1)[..., None]
    top = np.take_along_axis(v - far, arg, -1)[..., 0]
    rival = np.where(np.arange(4) == arg, -np.inf, v + far).max(axis=-1)
    exact = (rr == 0).all(axis=-1)
    return ((top > rival) | exact).reshape(N, -1).all(axis=1)


def test_layers_without_arithmetic_hold_no_rounding(case, X):
    """flatten/reshape: exactly 0.  relu/maxpool: only a remainder, so exactly 0 on every
    input whose pre-activations are sign-sure (window winners sure) in that run."""
    model, res = case
    checked = 0
    for run, arith in ((res.bounds.low, LOW), (res.bounds.reference, REF)):
        for i, layer in enumerate(model.layers):
            part = run.per_layer[:, i + 1, :]
            if layer.type in ("flatten", "reshape", "dropout"):
                assert (part == 0).all()
            if layer.type not in ("relu", "maxpool2d"):
                continue
            z, r = _prefix(model, i, X, arith)
            sure = _relu_sure(z, r) if layer.type == "relu" else _pool_sure(z, r)
            assert (part[sure] == 0).all(), (layer.type, i)
            checked += int(sure.sum())
    assert checked > 0  # the check saw inputs where it applies


def test_maxpool_remainder_is_reported_not_hidden(X):
    """On the cnn some window winners are unsure in binary16: there the maxpool holds a
    positive share, marked as a remainder in the report (not folded into other layers)."""
    model = load_model(EXAMPLES / "cnn.yaml")
    res = certify(model, X, cascade=False)
    rows = {r["name"]: r for r in res.layer_shares().summary_rows()}
    pools = [i for i, layer in enumerate(model.layers) if layer.type == "maxpool2d"]
    for i in pools:
        share = res.bounds.low.per_layer[:, i + 1, :].max(axis=1)
        assert (share > 0).sum() > 10
        assert rows[f"{i}:maxpool2d"]["kind"] == "remainder"
        assert rows[f"{i}:maxpool2d"]["max_share"] > 0
    # the first pool's input ranges (one convolution in) are the engine's own: there
    # every input with an unsure window holds a share.  certify anchors the low run on
    # the reference's values (fperr.bound), so its own error is within |z - z32| + r32
    i = pools[0]
    z, r = _prefix(model, i, X, LOW)
    z32, r32 = _prefix(model, i, X, REF)
    unsure = ~_pool_sure(z, r, np.minimum(r, np.abs(z - z32) + r32))
    assert unsure.sum() > 10
    assert (res.bounds.low.per_layer[unsure, i + 1, :].max(axis=1) > 0).all()
    assert rows["7:flatten"]["max_share"] == 0 and rows["7:flatten"]["kind"] == "none"


def test_cli_per_layer_text_and_json(tmp_path, X):
    np.save(tmp_path / "x.npy", X)
    args = ["bound", "--model", str(EXAMPLES / "mlp.yaml"), "--inputs", str(tmp_path / "x.npy"),
            "-q"]  # fmt: skip
    res = CliRunner().invoke(cli, [*args, "--per-layer"])
    assert res.exit_code in (0, 1), res.output
    model = load_model(EXAMPLES / "mlp.yaml")
    names = ["input"] + [f"{i}:{layer.type}" for i, layer in enumerate(model.layers)]
    text = res.stdout.split("per layer", 1)[1]
    for n in [*names, MARGIN_ROW]:
        assert f"\n  {n} " in text, n
    assert "remainder" in text and "nonlinearity" in text
    plain = CliRunner().invoke(cli, [*args, "--json"])
    assert "per_layer" not in plain.stdout  # only when asked for
    out = tmp_path / "r.json"
    res = CliRunner().invoke(cli, [*args, "--json", "--per-layer", "--out", str(out)])
    rep = json.loads(res.stdout)
    assert json.loads(out.read_text()) == rep
    layers = rep["per_layer"]["layers"]
    assert [r["name"] for r in layers] == [*names, MARGIN_ROW]
    assert [r["type"] for r in layers][1:3] == ["dense", "relu"]
    api = certify(model, X, cascade=False).layer_shares().summary_rows()
    for a, b in zip(layers, api, strict=True):
        assert a["median_share"] == pytest.approx(b["median_share"], rel=1e-12)
    for s in rep["samples"]:
        p = s["per_layer"]
        assert sum(p["contributions"]) == pytest.approx(p["bound"], rel=1e-9)
        assert p["bound"] <= max(s["bound"])  # B <= the margin M = max(B, 2 R_ref)
        assert p["bound"] == pytest.approx(s["bound"][p["output"]], rel=1e-12) or (
            p["bound"] < s["bound"][p["output"]])  # fmt: skip


def test_a_many_output_model_is_explained_at_its_largest_bound():
    """The cascade explains each picked input at the output with the largest bound
    only (one backward row, not K: the one layer_share reads), and that breakdown is
    the one the full backward engine gives for that output."""
    from fperr.bounds import bound
    from fperr.layers import Activation, Dense

    rng = np.random.default_rng(5)
    K = 40
    model = Model("wide", (12,), (Dense(rng.normal(size=(30, 12)) / 2), Activation("relu"),
                                  Dense(rng.normal(size=(K, 30)) / 3)))  # fmt: skip
    Xw = rng.normal(size=(40, 12))
    res = certify(model, Xw)  # the cascade: 32 of the 40 inputs get a breakdown
    per = res.bounds.per_layer  # (N, L + 1, K)
    k = per.sum(axis=1).argmax(axis=1)  # the output each explained input's row is for
    explained = np.flatnonzero(per.sum(axis=(1, 2)) > 0)
    assert explained.size == 32
    b = res.bounds.bound
    assert np.all(b[explained, k[explained]] == b[explained].max(axis=1))  # a largest bound
    # where several outputs share it (stage 0's one number per input): the reference class
    tied = explained[(b[explained] == b[explained].max(axis=1)[:, None]).sum(axis=1) > 1]
    assert tied.size and np.all(k[tied] == res.reference_class[tied])
    full = bound(model, Xw[explained], LOW, REF, engine="backward")
    for i, n in enumerate(explained):
        others = np.delete(per[n], k[n], axis=1)
        assert not others.any()  # one row pulled back per input
        np.testing.assert_allclose(per[n][:, k[n]], full.per_layer[i][:, k[n]], rtol=1e-12)
    share = res.layer_share()
    assert np.isfinite(share[explained]).all()


def test_a_few_output_model_is_explained_at_its_largest_sharp_bound():
    """With few outputs, each explained input gets every output's row: stage 0's
    bound is one number per input and cannot say which output is largest, the sharp
    rows can, and layer_share reads the output whose sharp bound is largest (the
    same the full engine would explain)."""
    from fperr.bounds import bound
    from fperr.examples import digits
    from fperr.examples import load as load_example

    model = load_example("mlp")
    X = digits()[0][:300]
    res = certify(model, X)
    per = res.bounds.per_layer  # (N, L + 1, K)
    rows = per.sum(axis=1) > 0  # (N, K): the outputs with a breakdown
    explained = np.flatnonzero(rows.all(axis=1))  # every output's row
    assert explained.size == 32  # (a later stage's inputs get their rivals' rows only)
    sums = per[explained].sum(axis=1)  # (n, K): each output's sharp bound
    full = bound(model, X[explained], LOW, REF, engine="backward")
    np.testing.assert_allclose(sums, full.per_layer.sum(axis=1), rtol=1e-12)
    k = np.argmax(full.bound, axis=1)
    share = res.layer_share()[explained]
    want = full.per_layer[np.arange(explained.size), :, k]
    np.testing.assert_allclose(share, want / want.sum(axis=1, keepdims=True), rtol=1e-9)
