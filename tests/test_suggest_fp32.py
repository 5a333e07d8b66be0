"""`--suggest-fp32` tries every layer that rounds and says why a target is out of reach
(issue 15)."""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fperr.cli import cli
from fperr.layers import Dense
from fperr.model import Model, load_model

# the module (fperr.certify, the attribute, is the function of the same name)
C = importlib.import_module("fperr.certify")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def _ties() -> tuple[Model, np.ndarray]:
    """Outputs 0 and 1 share a row except for the last input, which adds to output 0
    only: y_0 - y_1 = x_last exactly.  Gaps 1e-12 (a tie), 1e-4, 10."""
    rng = np.random.default_rng(3)
    w = np.abs(rng.normal(size=7))
    W = np.array([[*w, 1.0], [*w, 0.0], [*-w, 0.0]])
    model = Model("ties", (8,), (Dense(W, np.array([0.0, 0.0, -5.0])),))
    x = np.hstack([np.tile(rng.uniform(0.1, 1, size=7), (3, 1)), [[1e-12], [1e-4], [10.0]]])
    return model, x


def test_near_ties_binary32_cannot_settle_are_named_as_the_reason():
    model, x = _ties()
    # independent: binary32 cannot even store y_0 to within the gap 1e-12
    y0 = float(x[0] @ model.layers[0].weight[0])
    assert np.spacing(np.float32(y0)) / 2 > 1e-12
    s = C.suggest_fp32(model, x, target=1.0)
    assert s.certified_after == pytest.approx(2 / 3)
    assert s.result.certified.tolist() == [False, True, True]
    assert "cannot be reached" in s.text()
    assert "near ties the binary32 reference cannot settle" in s.text()
    assert "at most 66.67% can be certified" in s.text()
    d = s.to_dict()
    assert d["target_reached"] is False and "near ties" in d["reason"]
    reached = C.suggest_fp32(model, x, target=0.6)
    assert reached.reason == "" and "cannot be reached" not in reached.text()
    assert reached.to_dict()["target_reached"] is True


def test_cli_explains_an_unreachable_target(tmp_path):
    model, x = _ties()
    model.save(tmp_path / "ties.yaml")
    np.save(tmp_path / "x.npy", x)
    args = ["bound", "--model", str(tmp_path / "ties.yaml"), "--inputs", str(tmp_path / "x.npy"),
            "-q", "--suggest-fp32"]  # fmt: skip
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 1, res.output
    assert "suggest-fp32: the target 100.00% cannot be reached" in res.stdout
    assert "near ties the binary32 reference cannot settle" in res.stdout
    rep = json.loads(CliRunner().invoke(cli, [*args, "--json"]).stdout)
    assert rep["suggest_fp32"]["target_reached"] is False


def test_every_layer_that_rounds_is_tried(monkeypatch):
    """The first step tries each layer that rounds (and layer 0, which sets the input's
    storage) on its own, not only the layer with the largest share."""
    model = load_model(EXAMPLES / "cnn.yaml")
    with np.load(EXAMPLES / "digits.npz") as z:
        X = z["inputs"]
    tried: list[tuple[int, ...]] = []
    real = C.certify

    def spy(*args, keep=None, **kw):
        tried.append(tuple(sorted(keep or {})))
        return real(*args, keep=keep, **kw)

    monkeypatch.setattr(C, "certify", spy)
    # the inputs the full data set leaves uncertified, plus some certified ones
    base = real(model, X)
    rows = np.r_[np.flatnonzero(~base.certified), np.arange(20)]
    assert (~base.certified).sum() >= 2
    s = C.suggest_fp32(model, X[rows], target=1.0)
    rounding = {i for i, layer in enumerate(model.layers) if layer.type in ("conv2d", "dense")}
    singles = {t[0] for t in tried if len(t) == 1}
    assert singles == rounding | {0}  # 0: reshape, kept only for the input storage
    assert s.certified_after > s.certified_before
    assert s.reason == "" or "cannot be reached" in s.text()
