"""The backward engine (fperr.bounds.backward, .steps) against independent oracles.

- Each step's adjoint is the transpose of the layer's linear map: the dot
  product test <A v, w> = <v, A^T w> with A v computed by the layer's own
  exact forward (dense, conv, pooling) or by central differences (layer
  norm, softmax), never by the adjoint code.
- With the zonotope's radii as ranges, the backward engine bounds the same
  terms as the zonotope engine (issue 13: the exact oracle on linear chains).
- With its own interval ranges it stays sound and, on piecewise-linear
  models, as tight as the zonotope.
- The certification cascade certifies the same inputs as the full engine.
"""

from __future__ import annotations

import numpy as np
import pytest

import fperr.bounds.backward as B
from fperr.arith import Emulated, Exact
from fperr.bounds import bound, bound_run
from fperr.bounds.backward import row_selector, scatter_rows
from fperr.bounds.rules import Context
from fperr.bounds.steps import conv2d_adjoint, layernorm_step, softmax_step
from fperr.certify import certify
from fperr.examples import digits
from fperr.examples import load as _load
from fperr.layers import (
    Activation,
    BatchNorm,
    Conv2d,
    Dense,
    Flatten,
    LayerNorm,
    Pool2d,
    Reshape,
    Residual,
    Softmax,
)
from fperr.model import Model

LOW = Emulated.from_names("binary16", "binary32")
ORDERS = ("blas", "sequential", "pairwise", "blocked")


def _dot_test(step_adjoint, forward, in_shape, out_shape, rng, n=3, r=2):
    """<forward(v), lam> == <v, adjoint(lam)> for random v (n, *in), lam (n, r, out)."""
    v = rng.standard_normal((n, *in_shape))
    lam = rng.standard_normal((n, r, int(np.prod(out_shape))))
    av = forward(v).reshape(n, -1)
    back = step_adjoint(lam)
    lhs = np.einsum("nm,nrm->nr", av, lam)
    rhs = np.einsum("nk,nrk->nr", v.reshape(n, -1), back)
    np.testing.assert_allclose(lhs, rhs, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize(
    ("cin", "cout", "k", "stride", "pad", "dil", "groups"),
    [(3, 4, 3, 1, 1, 1, 1), (4, 6, 3, 2, 0, 1, 2), (2, 2, 2, 1, 2, 2, 2), (4, 8, 1, 3, 1, 1, 4),
     (5, 5, 3, 1, 1, 1, 5)],  # the last depthwise, as in MobileNetV2
)
def test_conv_adjoint_is_the_transpose(cin, cout, k, stride, pad, dil, groups):
    rng = np.random.default_rng(cin * 7 + k)
    layer = Conv2d(rng.standard_normal((cout, cin // groups, k, k)), None, (stride, stride),
                   (pad, pad), (dil, dil), groups)  # fmt: skip
    in_shape = (cin, 7, 6)
    out_shape = layer.out_shape(in_shape)

    def adjoint(lam):
        N, R = lam.shape[:2]
        return conv2d_adjoint(layer, lam.reshape(N * R, *out_shape), in_shape).reshape(N, R, -1)

    _dot_test(adjoint, lambda v: layer.forward(v, Exact()), in_shape, out_shape, rng)


def _step(layer, x, rng):
    ctx = Context(LOW)
    r = np.abs(rng.standard_normal(x.shape)) * 1e-3
    return layer.step([x], [r], ctx, 1)


@pytest.mark.parametrize(
    "layer",
    [
        Dense(np.arange(12.0).reshape(3, 4) - 5, np.ones(3)),
        Pool2d("avg", (3, 3), (2, 2), (1, 1)),
        Pool2d("avg", (2, 2), (1, 1)),
        BatchNorm(np.array([0.5, -1.0]), np.array([2.0, 0.25]), np.array([1.5, -0.5])),
        Flatten(),
        Reshape((2, 10)),
    ],
    ids=["dense", "avgpool_pad", "avgpool_overlap", "batchnorm", "flatten", "reshape"],
)
def test_linear_step_adjoints(layer):
    rng = np.random.default_rng(3)
    in_shape = (4,) if layer.type == "dense" else (2, 5, 4) if layer.type != "reshape" else (20,)
    x = rng.standard_normal((3, *in_shape))
    step = _step(layer, x, rng)
    out_shape = layer.out_shape(in_shape)

    def linear(v):  # the layer's linear part, by its own exact forward
        if layer.type == "dense":
            return v @ layer.weight.T
        if layer.type == "batchnorm":
            return v * layer.scale[None, :, None, None]
        return layer.forward(v, Exact())

    _dot_test(step.adjoint, linear, in_shape, out_shape, rng)


def test_maxpool_adjoint_routes_sure_winners():
    rng = np.random.default_rng(5)
    layer = Pool2d("max", (2, 2), (1, 1))  # overlapping windows: a unit may win twice
    x = rng.standard_normal((2, 1, 4, 4))
    step = _step(layer, x, rng)
    win = layer.windows(x)
    sure = (np.sort(win, axis=-1)[..., -1] - np.sort(win, axis=-1)[..., -2]) > 1e-2
    # oracle: the gather matrix of each input, built from argmax by hand
    lam = rng.standard_normal((2, 3, 9))
    back = step.adjoint(lam)
    for n in range(2):
        a = np.zeros((9, 16))
        for o in range(9):
            i, j = divmod(o, 3)
            if sure[n, 0, i, j]:
                di, dj = divmod(int(np.argmax(win[n, 0, i, j])), 2)
                a[o, (i + di) * 4 + (j + dj)] = 1.0
        np.testing.assert_allclose(back[n], lam[n] @ a, atol=0)


def test_softmax_and_layernorm_adjoints_match_central_differences():
    rng = np.random.default_rng(11)
    ctx = Context(LOW)
    h = 1e-6
    # softmax: J = diag(s) - s s^T at the computed input
    z = rng.standard_normal((2, 5))
    step = softmax_step(Softmax(), z, np.full_like(z, 1e-4), ctx, 1)

    def softmax(v):
        e = np.exp(v - v.max(axis=-1, keepdims=True))
        return e / e.sum(axis=-1, keepdims=True)

    # layer norm over the last axis of (3, 6) groups, with an affine part
    ln = LayerNorm((6,), rng.standard_normal(6), rng.standard_normal(6), eps=1e-5)
    x = rng.standard_normal((2, 3, 6))
    no_error = lambda rows: np.zeros(rows.shape[:2])  # noqa: E731
    ln_step = layernorm_step(ln, x, np.full_like(x, 1e-5), ctx, 1, no_error)

    def layer_norm(v):
        mu = v.mean(axis=-1, keepdims=True)
        s = np.sqrt(((v - mu) ** 2).mean(axis=-1, keepdims=True) + 1e-5)
        return (v - mu) / s * ln.weight + ln.bias

    for step_, f, inp in ((step, softmax, z), (ln_step, layer_norm, x)):
        n = int(np.prod(inp.shape[1:]))
        lam = rng.standard_normal((2, 2, n))
        back = step_.adjoint(lam)
        for i in range(2):
            jac = np.empty((n, n))
            for k in range(n):
                e = np.zeros(n)
                e[k] = h
                plus = f(inp[i : i + 1] + e.reshape(inp.shape[1:]))
                minus = f(inp[i : i + 1] - e.reshape(inp.shape[1:]))
                jac[:, k] = ((plus - minus) / (2 * h)).reshape(-1)
            np.testing.assert_allclose(back[i], lam[i] @ jac, rtol=1e-6, atol=1e-7)


def _random_pl_model(rng: np.random.Generator, kind: str) -> Model:
    """A piecewise-linear chain (every layer type whose rule has no second-order term)."""
    if kind == "mlp":
        w = [rng.standard_normal((24, 12)) / 3, rng.standard_normal((24, 24)) / 5,
             rng.standard_normal((5, 24)) / 5]  # fmt: skip
        layers = [Dense(w[0], rng.standard_normal(24) * 0.1), Activation("relu"),
                  Dense(w[1]), Activation("leaky_relu", 0.1), Dense(w[2], np.zeros(5))]  # fmt: skip
        return Model("mlp", (12,), tuple(layers))
    c1 = Conv2d(rng.standard_normal((4, 2, 3, 3)) / 3, rng.standard_normal(4) * 0.1, padding=(1, 1))
    bn = BatchNorm(rng.standard_normal(4) * 0.1, rng.uniform(0.5, 2, 4), rng.uniform(0.5, 1.5, 4),
                   rng.standard_normal(4) * 0.1)  # fmt: skip
    layers = [Reshape((2, 6, 6)), c1, bn, Activation("relu"), Pool2d("avg", (2, 2), (2, 2)),
              Conv2d(rng.standard_normal((6, 4, 2, 2)) / 3), Pool2d("max", (2, 2), (1, 1)),
              Flatten(), Dense(rng.standard_normal((4, 6)) / 2)]  # fmt: skip
    return Model("cnn", (72,), tuple(layers))


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
@pytest.mark.parametrize("method", ["deterministic", "probabilistic"])
def test_backward_with_zonotope_ranges_equals_the_zonotope(kind, method):
    """Issue 13's exact oracle: the same local terms, pulled back instead of carried."""
    for seed in range(4):
        rng = np.random.default_rng(seed)
        model = _random_pl_model(rng, kind)
        X = rng.uniform(-1, 1, (7, *model.input_shape))
        for arith in (LOW, Emulated.from_names("bfloat16", "binary16")):
            zono = bound_run(model, X, arith, method=method, engine="zonotope")
            back = bound_run(model, X, arith, method=method, engine="backward", ranges="zonotope")
            np.testing.assert_allclose(back.radius, zono.radius, rtol=1e-12)
            np.testing.assert_allclose(back.per_layer, zono.per_layer, rtol=1e-9, atol=1e-300)
            np.testing.assert_array_equal(back.output, zono.output)


def load_example(name: str) -> tuple[Model, np.ndarray, np.ndarray]:
    X, y = digits()
    return _load(name), X, y


def _observed(model: Model, X: np.ndarray) -> np.ndarray:
    exact = model.forward(X)
    return np.max([np.abs(model.forward(X, Emulated.from_names("binary16", order=o)) - exact)
                   for o in ORDERS], axis=0)  # fmt: skip


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_backward_ranges_sound_and_as_tight_on_examples(name):
    """Default (sharpened) ranges: the median bound equals the zonotope's to 1%;
    single outputs may be up to 20% looser, where units left unsharpened (their
    interval range under SHARPEN of their value) feed second-order terms.

    Without max pooling the backward bound is never below the zonotope's (its
    ranges are wider, and every rule is monotone in the range).  A max-pool
    window chooses, by its radii, between passing the winner's error on with a
    box and a box alone (:func:`fperr.bounds.rules.maxpool_local`), so on the
    CNN either engine may come out ahead on single outputs (the backward one by
    up to 9% here)."""
    model, X, _ = load_example(name)
    X = X[:150]
    obs = _observed(model, X)
    back = bound_run(model, X, LOW, engine="backward")
    zono = bound_run(model, X, LOW, engine="zonotope")
    assert np.all(back.radius >= obs)
    ratio = back.radius / zono.radius
    lowest = 1 - 1e-9 if name == "mlp" else 0.85
    assert ratio.min() >= lowest and np.median(ratio) <= 1.01 and ratio.max() <= 1.2, (
        ratio.min(), np.median(ratio), ratio.max())


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_every_unit_sharpened_gives_the_zonotope_bound(name, monkeypatch):
    """With every unit at every nonlinearity's input sharpened (SHARPEN = 0) the
    backward engine's ranges there are the zonotope's, and on these chains (no
    layer between two linear ones that reads its range) so are the bounds."""
    model, X, _ = load_example(name)
    X = X[:40]
    monkeypatch.setattr(B, "SHARPEN", 0.0)
    monkeypatch.setattr(B, "SHARPEN_KINK", 0.0)
    monkeypatch.setattr(B, "SHARPEN_BUDGET", np.inf)
    back = bound_run(model, X, LOW, engine="backward")
    zono = bound_run(model, X, LOW, engine="zonotope")
    np.testing.assert_allclose(back.radius, zono.radius, rtol=1e-9)


def test_rows_sharpen_only_the_selected_outputs():
    model, X, _ = load_example("mlp")
    X = X[:20]
    full = bound_run(model, X, LOW, engine="backward")
    none = bound_run(model, X, LOW, engine="backward", rows=np.zeros((20, 10), dtype=bool))
    rng = np.random.default_rng(0)
    mask = rng.random((20, 10)) < 0.3
    some = bound_run(model, X, LOW, engine="backward", rows=mask)
    # the same sums, in a GEMV whose blocking may follow the row count: 1e-13
    np.testing.assert_allclose(some.radius[mask], full.radius[mask], rtol=1e-13)
    np.testing.assert_array_equal(some.radius[~mask], none.radius[~mask])
    assert np.all(none.radius >= full.radius)  # the interval range is the looser bound
    assert not none.per_layer.any()


def test_row_selector_round_trip():
    mask = np.array([[True, False, True], [False, False, False], [False, True, False]])
    lam = row_selector(mask)
    assert lam.shape == (3, 2, 3)
    values = np.einsum("nrk,nk->nr", lam, np.arange(9.0).reshape(3, 3))
    back = scatter_rows(values, mask, np.full((3, 3), -1.0))
    np.testing.assert_array_equal(back, np.where(mask, np.arange(9.0).reshape(3, 3), -1.0))


def test_backward_bounds_do_not_depend_on_the_batch():
    model, X, _ = load_example("cnn")
    X = X[:12]
    batched = bound_run(model, X, LOW, engine="backward")
    for i in (0, 5, 11):
        alone = bound_run(model, X[i : i + 1], LOW, engine="backward")
        np.testing.assert_allclose(alone.radius[0], batched.radius[i], rtol=1e-12)


@pytest.mark.parametrize("name", ["mlp", "cnn", "deep_tanh"])
def test_cascade_certifies_what_the_full_engine_certifies(name):
    model, X, y = load_example(name)
    n = 1797 if name != "deep_tanh" else 60
    X, y = X[:n], y[:n]
    seen: list[int] = []
    fast = certify(model, X, y, progress=seen.append)
    full = certify(model, X, y, cascade=False)
    # every input the full engine certifies, the cascade certifies (its last stage,
    # the zonotope, may settle a few more of a chain model)
    assert np.all(fast.certified >= full.certified)
    assert sum(seen) == 2 * n
    assert int((fast.certified & fast.flipped).sum()) == 0


def test_engine_choice_is_checked():
    model, X, _ = load_example("mlp")
    with pytest.raises(ValueError, match="unknown engine"):
        bound(model, X[:2], engine="fast")
    with pytest.raises(ValueError, match="need engine='backward'"):
        bound_run(model, X[:2], LOW, engine="zonotope", rows=np.ones((2, 10), dtype=bool))


def test_one_layer_interval_range_is_exact_with_inexact_inputs():
    """The input's rounding enters the interval range (a regression: it once did not,
    and the cheap stage of the cascade came out below the observed error)."""
    rng = np.random.default_rng(0)
    model = Model("m", (30,), (Dense(rng.standard_normal((2, 30))),))
    X = rng.standard_normal((4, 30)) * 30  # not representable in binary16
    zono = bound_run(model, X, LOW, engine="zonotope").radius
    back = bound_run(model, X, LOW, engine="backward").radius
    np.testing.assert_allclose(back, zono, rtol=1e-12)
    # the interval range alone: a linear map of the input's rounding, whose image is
    # its backward bound (carry_sharpness: |W| r with the exact weights, not from
    # |W_hat| r within (1 + 2u) / (1 - 2u), which test_exact_weight_image_* checks)
    cheap = bound_run(model, X, LOW, engine="backward", rows=np.zeros((4, 2), dtype=bool))
    np.testing.assert_allclose(cheap.radius, zono, rtol=1e-12)
    obs = np.abs(model.forward(X, LOW) - model.forward(X))
    assert np.all(zono >= obs) and np.any(zono > 0)


@pytest.mark.parametrize("method", ["deterministic", "probabilistic"])
def test_rows_pulled_back_in_chunks_give_the_same_bounds(monkeypatch, method):
    model, X, _ = load_example("cnn")
    X = X[:6]
    whole = bound_run(model, X, LOW, method=method, engine="backward")
    monkeypatch.setenv("FPERR_MAX_BYTES", "512K")  # one input per batch, 4 rows per pass
    chunked = bound_run(model, X, LOW, method=method, engine="backward")
    np.testing.assert_allclose(chunked.radius, whole.radius, rtol=1e-12)
    np.testing.assert_allclose(chunked.per_layer, whole.per_layer, rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("operand", [None, "tf32"])
@pytest.mark.parametrize("low", ["binary16", "bfloat16"])
def test_exact_weight_image_bounds_the_exact_weights_image(low, operand):
    """|W| r <= exact_weight_image(|W_hat| r): checked with exact rationals on weights
    spread over the normal and subnormal range of the operand format."""
    from fractions import Fraction

    from fperr.bounds.steps import exact_weight_image

    a = Emulated.from_names(low, "binary32", operand)
    rng = np.random.default_rng(7)
    w = rng.standard_normal((6, 9)) * 2.0 ** rng.integers(-30, 8, (6, 9))
    r = np.abs(rng.standard_normal((3, 9))) * 2.0 ** rng.integers(-20, 4, (3, 9))
    w_hat = a.to_operand(w)
    got = exact_weight_image(r @ np.abs(w_hat).T, r.sum(axis=1, keepdims=True), a)
    for n in range(3):
        for i in range(6):
            exact = sum(abs(Fraction(w[i, j])) * Fraction(r[n, j]) for j in range(9))
            assert Fraction(got[n, i]) >= exact, (n, i)


def _deep_relu(depth=6, width=48, seed=3):
    rng = np.random.default_rng(seed)
    dims = [16] + [width] * (depth - 1) + [5]
    layers = []
    for i in range(depth):
        w = rng.standard_normal((dims[i + 1], dims[i])) * np.sqrt(2.0 / dims[i])
        layers.append(Dense(w.astype(np.float32) * 1.0, 0.01 * np.ones(dims[i + 1])))
        if i < depth - 1:
            layers.append(Activation("relu"))
    return Model("deep", (16,), tuple(layers))


@pytest.mark.parametrize("budget", [0.0, 3.0, np.inf])
def test_sharpening_budget_keeps_bounds_sound_and_batch_independent(budget, monkeypatch):
    """Whatever the budget (none, a little, unlimited) every run is enclosed, and an
    input's bound is the same alone and in a batch (the budget is charged per input);
    sharpening never loosens the median bound."""
    monkeypatch.setattr(B, "SHARPEN_BUDGET", budget)
    model = _deep_relu()
    X = np.random.default_rng(4).uniform(-1, 1, (30, 16))
    rb = bound_run(model, X, LOW, engine="backward")
    assert np.all(rb.radius >= _observed(model, X))
    for i in (0, 7):
        alone = bound_run(model, X[i : i + 1], LOW, engine="backward")
        np.testing.assert_allclose(alone.radius[0], rb.radius[i], rtol=1e-12)  # BLAS last bits
    plain = bound_run(model, X, LOW, engine="backward", ranges="interval")
    assert np.median(rb.radius) <= np.median(plain.radius)


@pytest.mark.parametrize("name", ["mlp", "cnn"])
def test_rows_stop_at_the_first_layer_when_inputs_are_exact(name, monkeypatch):
    """Digits inputs (integers 0-16) are exact in binary16 and binary32: the input
    rounding box is zero, so the output rows need not pass the first layer; the
    bounds are the same to the last bit as with the pull-back to the input."""
    model, X, _ = load_example(name)
    X = X[:40]
    calls = []
    real = B.pull_back

    def spy(tape, lam, sink, upto=None, entry=True):
        calls.append(B._silent(tape.steps[0]) and not entry)
        return real(tape, lam, sink, upto, entry)

    monkeypatch.setattr(B, "pull_back", spy)
    import fperr.bounds.engine as E

    monkeypatch.setattr(E, "pull_back", spy)
    fast = bound_run(model, X, LOW, engine="backward")
    assert any(calls)
    monkeypatch.setattr(B, "_silent", lambda step: False)
    full = bound_run(model, X, LOW, engine="backward")
    np.testing.assert_array_equal(fast.radius, full.radius)
    np.testing.assert_array_equal(fast.per_layer, full.per_layer)


def test_a_first_residual_block_is_pulled_back_with_exact_inputs(monkeypatch):
    """Regression: with inputs exact in storage the rows stop at the first layer,
    but a residual block there still collects its branch's errors on the way (its
    pull-back is not just a map to the input): skipping it dropped them, and a
    bfloat16 run of x + leaky_relu(W x + b) erred 2.6 times its bound."""
    rng = np.random.default_rng(0)
    block = Residual((Dense(rng.standard_normal((8, 8)) / 3, rng.standard_normal(8) * 0.1),
                      Activation("relu")))  # fmt: skip
    model = Model("res", (8,), (block, Dense(rng.standard_normal((3, 8)) / 3)))
    low = Emulated.from_names("bfloat16", "binary32")
    X = low.store(rng.standard_normal((20, 8)))  # exact in storage: step 0 is silent
    got = bound_run(model, X, low, engine="backward").radius
    exact = model.forward(X)
    for order in ORDERS:
        run = model.forward(X, Emulated.from_names("bfloat16", "binary32", order=order))
        assert np.all(np.abs(run - exact) <= got)
    monkeypatch.setattr(B, "_silent", lambda step: False)
    np.testing.assert_array_equal(got, bound_run(model, X, low, engine="backward").radius)
