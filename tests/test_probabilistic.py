"""The probabilistic method with structured data (issue 11, item 6).

Roundings of the data (inputs, weights, biases) are deterministic functions
of it: for structured data they all have one sign, and combining them in
quadrature as if independent gave bounds 4x below the observed error and a
certified input whose class flips.  They are now bounded in the worst case;
only the roundings of computed values stay in the probabilistic model, which
the output states is a model (rigorous only under stochastic rounding).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from fperr.arith import Emulated
from fperr.bounds import PROBABILISTIC_NOTE, bound, bound_run
from fperr.certify import certify
from fperr.layers import Dense
from fperr.model import Model

N = 1024


def structured(kind: str) -> tuple[Model, np.ndarray]:
    """Output 0 = sum of 512 differences 1.0004 - 1 = 0.2048 exactly, whose
    binary16 run computes 0 (1.0004 rounds to 1.0 every time); output 1 = 0.1.
    ``kind``: the 1.0004 are weights (inputs all 1) or inputs (weights +-1)."""
    half = N // 2
    if kind == "weights":
        w0, x = np.r_[np.full(half, 1.0004), -np.ones(half)], np.ones((1, N))
    else:
        w0, x = np.r_[np.ones(half), -np.ones(half)], np.r_[np.full(half, 1.0004), np.ones(half)]
    weight = np.vstack([w0, np.zeros(N)])
    return Model(kind, (N,), (Dense(weight, np.array([0.0, 0.1])),)), x.reshape(1, N)


@pytest.mark.parametrize("kind", ["weights", "inputs"])
def test_structured_data_is_not_certified_and_stays_within_the_bound(kind):
    model, x = structured(kind)
    low = Emulated.from_names("binary16", "binary32")
    exact = float(np.sum(model.layers[0].weight[0] * x[0]))  # float64; the oracle below
    assert abs(exact - 0.2048) < 1e-12
    rb = bound_run(model, x, low, method="probabilistic")
    assert rb.output[0, 0] == 0.0  # every 1.0004 rounded to 1.0: all errors aligned
    assert abs(rb.output[0, 0] - exact) <= rb.radius[0, 0]
    res = certify(model, x, method="probabilistic")
    assert res.flipped[0]  # binary16 predicts class 1, binary32 class 0
    assert not res.certified[0]
    assert int((res.certified & res.flipped).sum()) == 0


def test_data_roundings_are_worst_case_accumulation_stays_probabilistic():
    """Probabilistic <= deterministic, and equal where only data roundings matter
    (a dense layer whose sums are exact: here the input-rounding part)."""
    rng = np.random.default_rng(0)
    model = Model("d", (64,), (Dense(rng.standard_normal((4, 64)), None),))
    X = rng.standard_normal((5, 64))
    low = Emulated.from_names("binary16", "binary32")
    det = bound_run(model, X, low)
    prob = bound_run(model, X, low, method="probabilistic")
    assert np.all(prob.radius <= det.radius * (1 + 1e-12))
    # contribution of the input rounding (group 0): identical in both methods
    np.testing.assert_allclose(prob.per_layer[:, 0], det.per_layer[:, 0], rtol=1e-9)


def test_outputs_say_the_probabilistic_method_is_a_model():
    model, x = structured("weights")
    res = certify(model, x, method="probabilistic")
    text = res.text()
    assert "model, not a certificate" in text and "stochastic rounding" in text
    assert "Connolly, Higham & Mary 2021" in text
    d = json.loads(json.dumps(res.to_dict()))
    assert d["summary"]["method_note"] == PROBABILISTIC_NOTE
    assert "stochastic rounding" in bound(model, x, method="probabilistic").to_dict()["note"]
    det = certify(model, x)
    assert "method_note" not in det.to_dict()["summary"] and "NOTE" not in det.text()
