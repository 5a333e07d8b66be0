"""Full ranges (``ranges="full"``): every wide unit at every nonlinearity's input
sharpened by backward rows, with no budget, and under the probabilistic method
the ranges themselves combining the roundings in quadrature.

Oracles: the forward zonotope (deterministic full ranges with every unit
sharpened are its ranges, so on chains its bound), an explicit formula for the
probabilistic functional on a hand-built tape, emulated runs in every order and
torch CPU runs (soundness), and a count of the functionals evaluated against the
failure budget's event count."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import fperr.bounds.backward as B
from fperr import load_model
from fperr.arith import Emulated, Exact
from fperr.bounds import bound_run
from fperr.bounds.backward import Tape, functional_radius
from fperr.bounds.engine import range_functionals
from fperr.bounds.steps import Step
from fperr.examples import digits
from fperr.examples import load as load_example
from fperr.layers import Activation, BatchNorm, Conv2d, Dense, Flatten
from fperr.model import Model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
LOW = Emulated.from_names("binary16", "binary32")
ORDERS = ("blas", "sequential", "pairwise", "blocked")


def deep_bn_cnn(seed: int = 0, depth: int = 6, width: int = 6) -> Model:
    """conv3x3-BN-ReLU x ``depth`` on 1x10x10 inputs: the shape of the seed CNNs,
    small enough for every unit to be sharpened in a test."""
    rng = np.random.default_rng(seed)
    layers: list = []
    c = 1
    for _ in range(depth):
        w = rng.standard_normal((width, c, 3, 3)) * np.sqrt(2.0 / (9 * c))
        layers.append(Conv2d(w, None, padding=(1, 1)))
        layers.append(BatchNorm(rng.uniform(-0.2, 0.2, width), rng.uniform(0.5, 2.0, width),
                                rng.uniform(0.5, 1.5, width), rng.uniform(-0.3, 0.3, width)))
        layers.append(Activation("relu"))
        c = width
    layers += [Flatten(), Dense(rng.standard_normal((10, width * 100)) / np.sqrt(width * 100),
                                rng.standard_normal(10) * 0.1)]  # fmt: skip
    return Model("deep_bn_cnn", (1, 10, 10), tuple(layers))


def observed(model: Model, X: np.ndarray, fmt: str = "binary16") -> np.ndarray:
    exact = model.forward(X, Exact())
    return np.max([np.abs(model.forward(X, Emulated.from_names(fmt, "binary32", order=o))
                          - exact) for o in ORDERS], axis=0)  # fmt: skip


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_full_ranges_with_every_unit_are_the_zonotope(name, monkeypatch):
    """Every unit sharpened (FULL = 0): the zonotope's ranges, hence its bound on
    these chains (an exact oracle); the default FULL sharpens fewer units and is
    never looser than the default ranges where every rule is monotone in the
    range (the MLP).  A max-pool window chooses its enclosure by its radii
    (:func:`fperr.bounds.rules.maxpool_local`), so on the CNN sharper ranges
    tighten the median but single outputs may come out up to 10% looser."""
    model = load_example(name)
    X = digits()[0][:30]
    zono = bound_run(model, X, LOW, engine="zonotope")
    full = bound_run(model, X, LOW, engine="backward", ranges="full")
    default = bound_run(model, X, LOW, engine="backward")
    q = full.radius / default.radius
    if name == "mlp":
        assert np.all(q <= 1 + 1e-12)
    else:
        assert np.median(q) <= 1 and q.max() <= 1.1, (np.median(q), q.max())
    monkeypatch.setattr(B, "FULL", 0.0)
    every = bound_run(model, X, LOW, engine="backward", ranges="full")
    np.testing.assert_allclose(every.radius, zono.radius, rtol=1e-9)


def test_probabilistic_functional_is_det_plus_lambda_root_sum_square():
    """One step with a random and a deterministic box and a signed generator,
    rows pulled back through it: det = |L| b_det + |L s|, random part
    lam sqrt(sum (|L| b_rand)^2), written out here independently."""
    rng = np.random.default_rng(1)
    N, n, R = 3, 7, 4
    b_rand, b_det = rng.uniform(0, 1, (N, n)), rng.uniform(0, 1, (N, n))
    signed = rng.standard_normal((N, 1, n))
    step = Step(np.zeros((N, n)), lambda lam: lam, np.zeros((N, n)), 1,
                [(b_rand, True), (b_det, False)], signed)  # fmt: skip
    tape = Tape()
    tape.add(step, ())
    rows = rng.standard_normal((N, R, n))
    lam = 6.5
    got = functional_radius(tape, 0, None, lam)(rows)
    want = np.zeros((N, R))
    for i in range(N):
        for k in range(R):
            a = np.abs(rows[i, k])
            det = a @ b_det[i] + abs(rows[i, k] @ signed[i, 0])
            want[i, k] = det + lam * np.sqrt(np.sum((a * b_rand[i]) ** 2))
    np.testing.assert_allclose(got, want, rtol=1e-13)
    # lam = 0: every source in absolute value, as the deterministic ranges were
    det_all = functional_radius(tape, 0, None)(rows)
    want0 = np.abs(rows) @ (b_rand + b_det)[:, :, None]
    want0 = want0[..., 0] + np.abs(rows @ signed[:, 0, :, None])[..., 0]
    np.testing.assert_allclose(det_all, want0, rtol=1e-13)


@pytest.mark.parametrize(("fmt", "ceiling"), [("binary16", 50.0), ("bfloat16", 1500.0)])
def test_probabilistic_full_ranges_enclose_every_run_of_a_deep_bn_cnn(fmt, ceiling):
    """Deterministic ranges are a worst case over every rounding that reaches a
    unit; probabilistic full ranges combine them in quadrature and come out about
    half as wide here, and every emulated order and the torch CPU run lie inside."""
    torch = pytest.importorskip("torch")
    from fperr.hardware.torch_exec import run_torch

    model = deep_bn_cnn()
    X = np.random.default_rng(2).uniform(0, 1, (6, 1, 10, 10))
    a = Emulated.from_names(fmt, "binary32")
    det = bound_run(model, X, a, engine="backward", ranges="full")
    prob = bound_run(model, X, a, engine="backward", ranges="full", method="probabilistic")
    obs = observed(model, X, fmt)
    dtype = {"binary16": "float16", "bfloat16": "bfloat16"}[fmt]
    with torch.no_grad():
        got = run_torch(model, X, dtype=dtype).outputs
    obs = np.maximum(obs, np.abs(got - model.forward(X, Exact())))
    assert np.all(np.isfinite(prob.radius)) and np.all(prob.radius >= obs)
    assert np.all(det.radius >= obs)
    ratio = np.median(prob.radius / np.maximum(obs, 1e-300))
    # measured (median): deterministic / probabilistic 1.89 (binary16), 1.68 (bfloat16);
    # probabilistic bound / observed 35.2 and 1,096 (default ranges: 83.5 and 4,730)
    assert np.median(det.radius / prob.radius) > 1.5, np.median(det.radius / prob.radius)
    assert ratio < ceiling, ratio
    assert prob.failure_probability <= 1e-3 * (1 + 1e-9)


def test_range_events_count_every_functional_evaluated(monkeypatch):
    """The failure budget's range events bound the functionals a run evaluates
    (every row of every probabilistic range functional, its outer parts included)."""
    rows_seen = [0]
    inner = B.functional_radius

    def counting(tape, upto, outer, lam=0.0):
        f = inner(tape, upto, outer, lam)

        def radius(rows):
            rows_seen[0] += rows.shape[1] if lam > 0 else 0
            return f(rows)

        return radius

    monkeypatch.setattr(B, "functional_radius", counting)
    monkeypatch.setattr(B, "FULL", 0.0)
    for model, X in [(deep_bn_cnn(depth=3), np.random.default_rng(3).uniform(0, 1, (1, 1, 10, 10))),
                     (load_model(EXAMPLES / "prenorm.yaml"), digits()[0][:1])]:  # fmt: skip
        rows_seen[0] = 0
        bound_run(model, X, LOW, engine="backward", ranges="full", method="probabilistic")
        events = range_functionals(model)
        assert 0 < rows_seen[0] <= events, (rows_seen[0], events)


def test_full_ranges_do_not_depend_on_the_batch():
    model = deep_bn_cnn(depth=3)
    X = np.random.default_rng(5).uniform(0, 1, (5, 1, 10, 10))
    batched = bound_run(model, X, LOW, engine="backward", ranges="full", method="probabilistic")
    for i in (0, 3):
        alone = bound_run(model, X[i : i + 1], LOW, engine="backward", ranges="full",
                          method="probabilistic")  # fmt: skip
        np.testing.assert_allclose(alone.radius[0], batched.radius[i], rtol=1e-12)


@pytest.mark.parametrize("method", ["deterministic", "probabilistic"])
def test_ranges_carried_through_relu_and_max_pooling_are_the_sharpened_ones(method, monkeypatch):
    """ReLU and max pooling map backward bounds to backward bounds (their images
    with deterministic boxes only), so the units they carry are not sharpened
    again: the bound equals the one with rows pulled back at every such input."""
    import fperr.bounds.steps as S

    model = load_example("cnn")
    X = digits()[0][:40]
    # these carries alone: the exact images of linear maps of local errors, and their
    # pointwise carries, have their own tests (test_carry_sharpness.py)
    monkeypatch.setattr(B, "carry_sharpness", lambda step, source: None)
    carried = bound_run(model, X, LOW, engine="backward", ranges="full", method=method)
    pulled = {"rows": 0}
    real_sharpen = B.sharpen_radius

    def counting(tape, t, *args, **kw):
        before = tape.steps[t].sharp
        pulled["rows"] += 0 if before is None else int(before.sum())
        return real_sharpen(tape, t, *args, **kw)

    for name in ("pool_step", "activation_step"):
        real = getattr(S, name)

        def no_carry(*args, _real=real, **kw):
            step = _real(*args, **kw)
            step.carry = None
            return step

        monkeypatch.setattr(S, name, no_carry)
    monkeypatch.setattr(B, "sharpen_radius", counting)
    every = bound_run(model, X, LOW, engine="backward", ranges="full", method=method)
    assert pulled["rows"] == 0  # nothing carried: every wide unit got its rows
    np.testing.assert_allclose(carried.radius, every.radius, rtol=1e-12)
    monkeypatch.undo()
    monkeypatch.setattr(B, "carry_sharpness", lambda step, source: None)
    marked = {"sharp": 0}

    def marking(tape, t, *args, **kw):
        if tape.steps[t].sharp is not None:
            marked["sharp"] += int(tape.steps[t].sharp.sum())
        return real_sharpen(tape, t, *args, **kw)

    monkeypatch.setattr(B, "sharpen_radius", marking)
    bound_run(model, X, LOW, engine="backward", ranges="full", method=method)
    assert marked["sharp"] > 0  # the pools' inputs came carried from the ReLUs
