"""What a certificate tells its reader (issue 15): the cause of each uncertified input,
the per-input failure probability of the probabilistic method, the notebook view
(HTML, ``result.plot()``) and the per-layer attribution."""

from __future__ import annotations

import math
import subprocess
import sys
from dataclasses import replace
from fractions import Fraction

import numpy as np
import pytest

from fperr import Emulated, bound_run, certify, load_model
from fperr.layers import Dense
from fperr.model import Model

MLP = "examples/mlp.yaml"
GAPS = (1e-12, 1e-4, 10.0)  # exact y_0 - y_1 of the three inputs below


def _tie_model() -> tuple[Model, np.ndarray]:
    """Dense layer whose outputs 0 and 1 share a row except for the last input, which
    adds to output 0 only: y_0 - y_1 = x_last exactly (in exact arithmetic)."""
    rng = np.random.default_rng(3)
    w = np.abs(rng.normal(size=7))  # w.x > 0 > -w.x - 5: class 2 is never a contender
    W = np.array([[*w, 1.0], [*w, 0.0], [*-w, 0.0]])
    b = np.array([0.0, 0.0, -5.0])
    x = np.hstack([np.tile(rng.uniform(0.1, 1, size=7), (3, 1)), np.array(GAPS)[:, None]])
    return Model("ties", (8,), (Dense(W, b),)), x


def _exact_and_float(W: np.ndarray, b: np.ndarray, x: np.ndarray, dt: type) -> tuple:
    """Exact outputs (Fractions of the float64 data) and a numpy run storing in ``dt``
    and accumulating in float32 (one order; a sound bound covers every order)."""
    def dot(row: np.ndarray, xr: np.ndarray, bi: float) -> Fraction:
        return sum((Fraction(w) * Fraction(v) for w, v in zip(row, xr, strict=True)), Fraction(bi))

    exact = [[dot(row, xr, bi) for row, bi in zip(W, b, strict=True)] for xr in x]
    xs, Ws, bs = x.astype(dt).astype(np.float32), W.astype(dt).astype(np.float32), b.astype(dt)
    run = (xs @ Ws.T + bs.astype(np.float32)).astype(dt)
    return exact, run


def test_uncertified_inputs_are_split_by_cause():
    model, x = _tie_model()
    res = certify(model, x)
    s = res.summary()
    cert = res.certified
    assert cert.tolist() == [False, False, True]
    # oracle for "binary32 cannot settle input 0": a numpy binary32 run (float32 casts)
    # is off from the exact outputs (Fractions) by at least the gap, so any sound
    # R_ref has R_ref,0 + R_ref,1 >= gap, and the gap <= 2 (R_ref,0 + R_ref,1)
    W, b = model.layers[0].weight, model.layers[0].bias
    exact, y32 = _exact_and_float(W, b, x, np.float32)
    err = [abs(Fraction(float(y32[0, j])) - exact[0][j]) for j in (0, 1)]
    assert err[0] + err[1] >= Fraction(GAPS[0])
    assert res.bounds.reference.radius[0, :2].sum() >= float(err[0] + err[1])
    # the definition, re-implemented row by row from R_ref (y_k - y_j <= 2 (R_k + R_j))
    r_ref, y = res.bounds.reference.radius, res.y_ref
    by_hand = []
    for i in range(3):
        k = int(np.argmax(y[i]))
        by_hand.append(any(y[i, k] - y[i, j] <= 2 * (r_ref[i, k] + r_ref[i, j])
                           for j in range(3) if j != k))  # fmt: skip
    assert res.reference_limited.tolist() == by_hand == [True, False, False]
    assert s["uncertified_reference_limited"] == [0]
    assert s["uncertified_low_limited"] == [1]
    text = res.text()
    assert "uncertified      2: 1 near ties that binary32 itself cannot settle" in text
    assert "1 because of the low-precision run" in text


def test_low_limited_input_is_uncertified_by_the_fp16_run_itself():
    """Oracle for input 1 (gap 1e-4): a numpy fp16-storage run loses the gap, so any
    sound B_low makes the certificate fail; binary32's error is far below the gap."""
    model, x = _tie_model()
    W, b = model.layers[0].weight, model.layers[0].bias
    exact, y16 = _exact_and_float(W, b, x, np.float16)
    e = [Fraction(float(y16[1, j])) - exact[1][j] for j in (0, 1)]
    assert abs(e[0]) + abs(e[1]) >= Fraction(GAPS[1])  # the fp16 run cannot resolve it
    res = certify(model, x)
    assert not res.certified[1] and not res.reference_limited[1]


def test_probabilistic_failure_probability_is_the_total_asked_for():
    model = load_model(MLP)
    X = np.random.default_rng(0).uniform(0, 16, size=(20, 64))
    res = certify(model, X, method="probabilistic", confidence=0.999)
    b = res.bounds
    # each run: half the budget, itself split in half between the inner events
    # (one per product term) and the K outputs; recomputed here from Hoeffding
    terms = sum(int(np.prod(layer.weight.shape)) for layer in model.layers
                if isinstance(layer, Dense))  # fmt: skip
    each = 0.001 / 2
    lam = math.sqrt(2 * math.log(2 * terms / (each / 2)))
    lam_out = math.sqrt(2 * math.log(2 * 10 / (each / 2)))
    run = 2 * terms * math.exp(-(lam**2) / 2) + 2 * 10 * math.exp(-(lam_out**2) / 2)
    assert run == pytest.approx(each, rel=1e-9)
    for r in (b.low, b.reference):
        assert r.failure_probability == pytest.approx(run, rel=1e-9)
        assert r.failure_probability <= each
    assert b.failure_probability <= 0.001
    assert b.failure_probability == pytest.approx(0.001, rel=1e-9)
    assert res.summary()["failure_probability"] == b.failure_probability
    assert "<= 0.001 per input in total" in res.text()
    assert "get half each" in res.text()


def test_bound_run_reports_progress_per_batch():
    model = load_model(MLP)
    X = np.random.default_rng(1).uniform(0, 16, size=(23, 64))
    calls: list[int] = []
    a = Emulated.from_names("binary16", "binary32")
    plain = bound_run(model, X, a, batch_size=7)
    hooked = bound_run(model, X, a, batch_size=7, progress=calls.append)
    assert calls == [7, 7, 7, 2]
    np.testing.assert_array_equal(plain.radius, hooked.radius)
    seen: list[int] = []
    certify(model, X, progress=seen.append)
    assert sum(seen) == 2 * 23  # the low run, then the reference run


def _near_ties(model, X, count=4):
    """Inputs on the segment between two inputs of different classes, bisected to
    within 2^-20 of where the predicted class changes: their tolerance is tiny
    (positive, so that they show on the plot's log axes)."""
    cls = model.forward(X).argmax(axis=1)
    out = []
    for i in range(len(X)):
        j = int(np.flatnonzero(cls != cls[i])[0])
        lo, hi = 0.0, 1.0
        for _ in range(20):
            mid = (lo + hi) / 2
            x = (1 - mid) * X[i] + mid * X[j]
            lo, hi = (mid, hi) if model.forward(x[None]).argmax() == cls[i] else (lo, mid)
        out.append((1 - lo) * X[i] + lo * X[j])
        if len(out) == count:
            return np.array(out)
    raise AssertionError("too few classes among the inputs")


def _with_relu_dominating(res):
    """The same result, with the (exact) relu layer given the largest share of B."""
    b = res.bounds
    relu = b.layer_names.index("1:relu")
    per = b.low.per_layer.copy()
    per[:, relu, :] = 10 * per.sum(axis=1)
    return replace(res, bounds=replace(b, low=replace(b.low, per_layer=per)))


def test_worst_layer_is_never_a_layer_without_arithmetic():
    model = load_model(MLP)
    X = np.random.default_rng(2).uniform(0, 16, size=(15, 64))
    res = _with_relu_dominating(certify(model, X))
    share = res.worst_layer_share
    assert res.bounds.layer_names[int(np.argmax(share))] == "1:relu"  # the trap is set
    s = res.summary()
    assert s["worst_layer"] != "1:relu" and ":relu" not in s["worst_layer"]
    assert s["worst_layer"].endswith(":dense") or s["worst_layer"] == "input"
    assert s["exact_layers_share"] > 0.5
    assert "do no arithmetic" in res.text()
    assert res.exact_layer.tolist() == [n.endswith(("relu",)) for n in res.bounds.layer_names]


def test_html_repr_has_accuracy_counts_and_the_uncertified_inputs():
    model, x = _tie_model()
    res = certify(model, x, labels=[0, 1, 0])
    h = res._repr_html_()
    assert "accuracy" in h and "1 of 3 (33.33%)" in h
    assert "near tie" in h and "low precision" in h
    for v in (res.summary()["median_tolerance"], res.summary()["median_bound"]):
        assert repr(float(v)) not in h or len(repr(float(v))) <= 6  # formatted, not raw
    assert f"{res.summary()['median_bound']:.4g}" in h
    rows = h.split("<th>cause</th></tr>")[1]
    assert rows.count("<tr>") == 2  # the two uncertified inputs, by index
    assert "<td>0</td>" in rows and "<td>1</td>" in rows
    many = certify(*_many_uncertified())._repr_html_()
    assert "more (see .summary())" in many


def _many_uncertified() -> tuple[Model, np.ndarray]:
    model, x = _tie_model()
    return model, np.repeat(x[:1], 30, axis=0)


def test_plot_returns_a_figure_with_labels_legends_and_layer_panel():
    pytest.importorskip("matplotlib")
    from matplotlib.figure import Figure

    model = load_model(MLP)
    X = np.random.default_rng(4).uniform(0, 16, size=(40, 64))
    X[:4] = _near_ties(model, X[4:])  # a few inputs no bound can certify
    res = _with_relu_dominating(certify(model, X))
    fig = res.plot()
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    scatter, layers = fig.axes
    assert "bound" in scatter.get_xlabel() and "tolerance" in scatter.get_ylabel()
    assert scatter.get_xscale() == "log" and scatter.get_yscale() == "log"
    legend = scatter.get_legend()
    assert legend is not None
    texts = [t.get_text() for t in legend.get_texts()]
    n_cert = int(res.certified.sum())
    assert f"certified ({n_cert})" in texts and "Γ = 2 max B" in texts
    assert 0 < n_cert < 40  # both kinds of points are drawn
    assert sum(len(c.get_offsets()) for c in scatter.collections) == 40
    assert layers.get_xlabel() == "layer" and "share" in layers.get_ylabel()
    assert [t.get_text() for t in layers.get_xticklabels()] == res.bounds.layer_names
    labels = [t.get_text() for t in layers.get_legend().get_texts()]
    assert any("no arithmetic" in t for t in labels)
    assert "1:relu" not in layers.get_title()  # the worst layer named is one that rounds
    # a notebook shows it without pyplot's inline backend (one PNG, the cell's value)
    assert fig._repr_png_().startswith(b"\x89PNG")


def test_readme_walk_from_a_torch_model():
    torch = pytest.importorskip("torch")
    pytest.importorskip("matplotlib")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.ReLU(),
                              torch.nn.Linear(12, 4)).eval()  # fmt: skip
    import fperr

    X = np.random.default_rng(5).normal(size=(25, 6))
    result = fperr.certify(fperr.from_torch(net), X, np.zeros(25, dtype=np.int64))
    assert "accuracy" in result._repr_html_()
    assert [a.get_xlabel() for a in result.plot().axes] == ["bound 2 max_j B_j", "layer"]
    assert [layer.type for layer in fperr.from_torch(net).layers] == ["dense", "relu", "dense"]


def test_notebook_view_imports_no_matplotlib_until_plot():
    code = (
        "import sys, numpy as np, fperr\n"
        "m = fperr.load_model('examples/mlp.yaml')\n"
        "r = fperr.certify(m, np.ones((3, 64)))\n"
        "r._repr_html_(); r.text()\n"
        "bad = [k for k in ('torch', 'onnx', 'matplotlib') if k in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
