"""embedding: y = fl(E)[t] for token ids t (fperr/operators/embedding.py).

Oracles, independent of fperr's executors and rules: the exact rows E[t]
(float64 values, compared in fractions.Fraction); numpy's float16 cast and the
test emulator's MPFR rounding (bfloat16) for the stored table; torch CPU
``nn.Embedding`` in float16 / bfloat16 with int64 ids (what users run).  Inputs:
random ids, ids beyond the storage format's exact integers (rounded on the
way in), non-integer values near the ids' boundaries, tables near binary16's
overflow and in its subnormal range.
"""

from __future__ import annotations

from fractions import Fraction

import fp_emulator as fe
import numpy as np
import pytest
from op_checks import ORDERS, check_run

from fperr.arith import Emulated
from fperr.bounds import bound_run
from fperr.bounds.rules import Context
from fperr.errors import SpecError
from fperr.layers import Dense, Flatten
from fperr.model import Model, load_model
from fperr.operators.embedding import SCAN, Embedding, token_ids

TORCH = {"binary16": "float16", "bfloat16": "bfloat16"}


def stored(e: np.ndarray, fmt: str) -> np.ndarray:
    """The table rounded to ``fmt`` by an oracle that is not fperr's rounding."""
    if fmt == "binary16":
        with np.errstate(over="ignore"):
            return e.astype(np.float16).astype(np.float64)
    return np.vectorize(lambda v: float(fe.rnd(Fraction(v), fe.BFLOAT16)))(e)


def torch_lookup(e: np.ndarray, ids: np.ndarray, fmt: str) -> np.ndarray:
    torch = pytest.importorskip("torch")
    emb = torch.nn.Embedding.from_pretrained(torch.tensor(e)).to(getattr(torch, TORCH[fmt]))
    with torch.no_grad():
        return emb(torch.tensor(ids, dtype=torch.int64)).double().numpy()


def lookup_model(e: np.ndarray, t: int = 6) -> Model:
    return Model("lookup", (t,), (Embedding(e),))


def _radius(model: Model, x: np.ndarray, fmt: str, **kw) -> np.ndarray:
    return bound_run(model, x, Emulated.from_names(fmt), **kw).radius


# -- forward and the step ---------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["binary16", "bfloat16"])
def test_lookup_is_torchs_and_bound_is_the_table_rounding(fmt):
    """Exact ids: the emulated lookup is torch's bit for bit, and the bound is exactly
    |E[t] - fl(E)[t]| (one signed generator: bound/observed = 1)."""
    rng = np.random.default_rng(0)
    e = rng.normal(size=(40, 8)) * np.exp2(rng.integers(-8, 8, (40, 1)))
    ids = rng.integers(0, 40, (10, 6))
    model = lookup_model(e)
    got = model.forward(ids, Emulated.from_names(fmt)).reshape(10, 6, 8)
    assert np.array_equal(got, torch_lookup(e, ids, fmt))
    assert np.array_equal(got, stored(e, fmt)[ids])
    r = _radius(model, ids, fmt).reshape(10, 6, 8)
    d = np.abs(e[ids] - stored(e, fmt)[ids])
    assert np.all(d <= r) and np.all(r <= d * (1 + 1e-9)) and r.max() > 0  # the engine
    # rounds its float64 radius up by a relative 1e-10


def test_token_ids_and_shapes():
    assert token_ids(np.array([-3.5, -0.0, 0.0, 2.0, 2.999, 7.0, 1e9]), 5).tolist() == [
        0, 0, 0, 2, 2, 4, 4]  # fmt: skip
    op = Embedding(np.ones((5, 3)))
    assert op.out_shape((4,)) == (4, 3) and op.out_shape((2, 4)) == (2, 4, 3)
    for bad in (np.ones(5), np.ones((0, 3)), np.array([[1.0, np.inf]])):
        with pytest.raises(SpecError, match="embedding: weight") as exc:
            Embedding(bad)
        assert "\n" not in str(exc.value)


def test_yaml_round_trip(tmp_path):
    model = Embedding.example(np.random.default_rng(0))
    model.save(tmp_path / "m.yaml")
    again = load_model(tmp_path / "m.yaml")
    assert "type: embedding" in (tmp_path / "m.yaml").read_text()
    assert np.array_equal(again.layers[0].weight, model.layers[0].weight)


def test_runs_within_the_step_when_ids_may_change():
    """Computed values x^ with radius r: any exact value and run within 2r of x^ looks
    up rows whose difference lies within the step's box (the signed part where no id
    can change); both the scanned and the whole-table (wider than SCAN) ranges."""
    rng = np.random.default_rng(1)
    e = rng.normal(size=(SCAN + 40, 3))
    x = np.array([[3.0, 5.99, 7.2, 30.0, 10.0]])
    r = np.array([[0.0, 0.01, 0.3, 2.0 * SCAN, 0.1]])
    ctx = Context(Emulated.from_names("binary16"))
    step = Embedding(e).step([x], [r], ctx, 0)
    bound = step.radius().reshape(5, 3)
    fe16 = stored(e, "binary16")
    worst = 0.0
    for _ in range(400):
        v_ex = x + r * rng.uniform(-1, 1, x.shape)
        v_run = v_ex + r * rng.uniform(-1, 1, x.shape)
        d = np.abs(e[token_ids(v_ex, len(e))] - fe16[token_ids(v_run, len(e))])[0]
        assert np.all(d <= bound)
        worst = max(worst, float((d / bound).max()))
    assert worst > 0.5
    assert bound[0].max() == np.abs(e[3] - fe16[3]).max()  # r = 0: the rounding alone


# -- soundness ------------------------------------------------------------------------------------
def _head(rng: np.random.Generator, e: np.ndarray, t: int = 6) -> Model:
    d = e.shape[1]
    return Model("head", (t,), (Embedding(e), Flatten(), Dense(rng.normal(size=(3, t * d)) / 4)))


def _exact(model: Model, ids: np.ndarray) -> np.ndarray:
    """Rows, then the dense head, in rationals."""
    e, w = model.layers[0].weight, model.layers[2].weight
    rows = e[ids].reshape(len(ids), -1)
    return np.array([[sum((Fraction(w[j, k]) * Fraction(rows[i, k]) for k in range(rows.shape[1])),
                          Fraction(0)) for j in range(w.shape[0])] for i in range(len(ids))],
                    dtype=object)  # fmt: skip


@pytest.mark.parametrize("fmt", ["binary16", "bfloat16"])
@pytest.mark.parametrize("kind", ["random", "big_ids", "near_overflow", "subnormal"])
def test_sound_in_every_order_and_against_torch(fmt, kind):
    """Every fperr order with binary32 and same-format accumulators, and torch CPU runs
    (nn.Embedding with int64 ids, then F.linear), within the bound of the rational
    result.  big_ids: ids beyond 2^p (2048; 256) are rounded with the input, and a
    run may look up a neighbouring row: the bound covers that run too."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(len(kind))
    vocab = 3000 if kind == "big_ids" else 50
    e = rng.normal(size=(vocab, 4))
    if kind == "near_overflow":
        e = e / np.abs(e).max() * 6.0e4
    elif kind == "subnormal":
        e = e * (2.0**-20 if fmt == "binary16" else 2.0**-130)
    model = _head(rng, e)
    ids = rng.integers(vocab - 300 if kind == "big_ids" else 0, vocab, (6, 6))
    exact = _exact(model, ids)
    seen = 0
    for acc in ("binary32", fmt):
        r = _radius(model, ids, fmt) if acc == "binary32" else bound_run(
            model, ids, Emulated.from_names(fmt, acc)).radius  # fmt: skip
        for order in ORDERS:
            y = model.forward(ids, Emulated.from_names(fmt, acc, order=order))
            seen += int(np.nansum(check_run(y.astype(object), exact, r) > 0))
        if acc == "binary32":
            dt = getattr(torch, TORCH[fmt])
            rows = torch.tensor(torch_lookup(e, ids, fmt)).to(dt).reshape(6, -1)
            w = torch.tensor(model.layers[2].weight).to(dt)
            y = torch.nn.functional.linear(rows, w).double().numpy()
            check_run(y.astype(object), exact, r)
            if kind != "near_overflow":
                assert np.isfinite(r).all()
    assert seen > 0
    if kind == "big_ids":  # some ids are not binary16/bfloat16 values: the run looks elsewhere
        assert np.any(Emulated.from_names(fmt).store(ids.astype(float)) != ids)


def test_table_beyond_storage_is_inf():
    """A row beyond binary16's range stores as inf: an input reading it has an infinite
    bound (the engine makes a whole input's bound inf once a value is), one that does
    not read it a finite one."""
    e = np.array([[1.0, 7.0e4], [2.0, 3.0]])
    r = _radius(lookup_model(e, 2), np.array([[0, 1], [1, 1]]), "binary16")
    assert np.isinf(r[0]).all() and np.isfinite(r[1]).all()


def test_torch_executor_is_a_run():
    """fperr's torch executor (inputs converted to float16, the ids floored) runs the
    same lookup as nn.Embedding with int64 ids, for ids that float16 holds."""
    pytest.importorskip("torch")
    from fperr.hardware.torch_exec import run_torch

    rng = np.random.default_rng(4)
    e = rng.normal(size=(100, 5))
    ids = rng.integers(0, 100, (7, 6))
    got = run_torch(lookup_model(e), ids, dtype="float16").outputs.reshape(7, 6, 5)
    assert np.array_equal(got, torch_lookup(e, ids, "binary16"))


# -- tightness ------------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["binary16", "bfloat16"])
def test_tightness(fmt):
    """Median over 200 random id inputs of max bound / max observed error (worst of
    the four orders, binary32 accumulation): the lookup alone (exactly 1: the
    rounding is known; the engine's 1e-10 round-up) and with a dense head."""
    rng = np.random.default_rng(9)
    e = rng.normal(size=(64, 8))
    ids = rng.integers(0, 64, (200, 6))
    ratios = []
    for model in (lookup_model(e), _head(rng, e)):
        exact = model.forward(ids).reshape(200, -1)  # float64: its 2^-53 is far below 2^-11
        obs = np.max([np.abs(model.forward(ids, Emulated.from_names(fmt, order=o))
                             .reshape(200, -1) - exact) for o in ORDERS], axis=0)  # fmt: skip
        rb = _radius(model, ids, fmt)
        assert np.all(obs <= rb)
        ratios.append(float(np.median(rb.max(axis=1) / obs.max(axis=1))))
    print(
        f"embedding {fmt}: median bound/observed lookup {ratios[0]:.3g}, "
        f"with a dense head {ratios[1]:.3g} (200 inputs)"
    )
    assert ratios[0] <= 1 + 1e-9 and 1 <= ratios[1] <= CEILING[fmt]


CEILING = {"binary16": 2.5, "bfloat16": 2.5}  # measured 1.92 and 1.96 (numpy 2.4, this seed)


# -- torch import ---------------------------------------------------------------------------------
def _tokens(**kw):
    torch = pytest.importorskip("torch")
    from torch import nn

    class Tokens(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(50, 8, **kw)
            self.pos = nn.Parameter(torch.randn(1, 5, 8))
            self.head = nn.Linear(8, 3)

        def forward(self, ids):
            return self.head((self.emb(ids) + self.pos).mean(1))

    torch.manual_seed(0)
    return Tokens()


def test_torch_import():
    """nn.Embedding imports (from_torch checks it against the float64 module on int64
    ids); a float16 run of the module on int64 ids lies within the bound."""
    torch = pytest.importorskip("torch")
    from fperr.importers import from_torch

    module = _tokens()
    model = from_torch(module, (5,))
    assert model.layers[0].type == "embedding"
    ids = np.random.default_rng(0).integers(0, 50, (8, 5))
    with torch.no_grad():
        run = module.to(torch.float16)(torch.tensor(ids)).double().numpy()
    r = _radius(model, ids, "binary16")
    err = np.abs(run - model.forward(ids))
    assert np.all(err <= r) and err.max() > 0


@pytest.mark.parametrize("kw", [{"padding_idx": 0}, {"max_norm": 1.0}])
def test_torch_import_refuses_options(kw):
    pytest.importorskip("torch")
    from fperr.importers import from_torch

    with pytest.raises(SpecError, match="padding_idx or max_norm") as exc:
        from_torch(_tokens(**kw), (5,))
    assert "\n" not in str(exc.value)
