"""The backward engine on torch (issue 13): the same bounds as on numpy.

The rows of the backward passes may live in torch (CPU here, CUDA where a GPU
is present); the forward pass stays in numpy.  Both compute in float64 and
differ only in the order of the GEMMs' sums, so every bound must agree to
1e-12 relative with numpy's (the issue's criterion), over the layer types of
the generated soundness models (dense, conv, pooling, BatchNorm, layer norm,
activations, residual branches), imported attention (matmul, softmax,
permute, linear, scale) and every range mode and method.  Adjoints written
for numpy only run on a host copy of the rows: the same bounds.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from soundness.generators import cases

from fperr.bounds import bound
from fperr.bounds.backend import Backend, current, make, using
from fperr.certify import certify
from fperr.errors import FperrInputError
from fperr.model import load_model

torch = pytest.importorskip("torch")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
REL = 1e-12


def agree(a: np.ndarray, b: np.ndarray) -> None:
    """Equal where infinite, within REL relative elsewhere."""
    fa, fb = np.isfinite(a), np.isfinite(b)
    assert np.array_equal(fa, fb)
    assert np.all(np.abs(a[fa] - b[fa]) <= REL * np.abs(a[fa]))


def both(model, X, **kw) -> tuple[np.ndarray, np.ndarray]:
    a = bound(model, X, **kw).bound
    b = bound(model, X, backend="torch", **kw).bound
    return a, b


@pytest.mark.parametrize("name, n", [("mlp", 30), ("cnn", 12), ("deep_tanh", 6)])
@pytest.mark.parametrize("ranges", ["sharpened", "unstable", "full"])
@pytest.mark.parametrize("method", ["deterministic", "probabilistic"])
def test_examples_agree(name, n, ranges, method):
    model = load_model(EXAMPLES / f"{name}.yaml")
    X = np.load(EXAMPLES / "digits.npz")["inputs"][:n]
    a, b = both(model, X, engine="backward", ranges=ranges, method=method)
    assert np.all(np.isfinite(a)) and np.all(a > 0)  # a case that bounds something
    agree(a, b)


def test_prenorm_residual_layer_norm_agrees():
    model = load_model(EXAMPLES / "prenorm.yaml")
    X = np.random.default_rng(3).normal(size=(8, *model.input_shape))
    for method in ("deterministic", "probabilistic"):
        a, b = both(model, X, method=method)
        assert np.all(np.isfinite(a))
        agree(a, b)


@pytest.mark.parametrize("norm_first", [False, True])
def test_imported_attention_agrees(norm_first):
    nn = torch.nn
    from fperr.importers import from_torch

    torch.manual_seed(0)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(6, 16)
            layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.0, activation="gelu",
                                               batch_first=True, norm_first=norm_first)  # fmt: skip
            self.body = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.body(self.embed(x)).mean(dim=1))

    model = from_torch(Encoder().eval(), input_shape=(5, 6))
    X = np.random.default_rng(1).normal(size=(6, 5, 6))
    types = {type(op).__name__ for op in model.layers}
    assert {"MatMul", "Softmax", "Permute"} <= types, types
    for ranges in ("sharpened", "full"):
        a, b = both(model, X, ranges=ranges)
        assert np.all(np.isfinite(a))
        agree(a, b)


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])  # fmt: skip
@given(cases(), st.sampled_from(["deterministic", "probabilistic"]))
def test_generated_models_agree(case, method):
    """Random models of every layer type (avg pooling's adjoint is numpy-only: it
    runs on a host copy), in the case's arithmetic and ranges."""
    o = case.options
    kw = {"method": method, "ranges": o.ranges, "engine": "backward"}
    low, ref = o.low_arith(), o.reference_arith()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # fperr's warnings on odd models: not the point here
        a = bound(case.model, case.X, low, ref, **kw).bound
        b = bound(case.model, case.X, low, ref, backend="torch", **kw).bound
    agree(a, b)


def test_certify_on_torch_gives_the_same_certificates():
    model = load_model(EXAMPLES / "cnn.yaml")
    d = np.load(EXAMPLES / "digits.npz")
    X, y = d["inputs"][:60], d["labels"][:60]
    a = certify(model, X, y)
    b = certify(model, X, y, backend="torch")
    assert a.certified.sum() > 40 and np.array_equal(a.certified, b.certified)
    agree(a.bounds.bound, b.bounds.bound)


def test_numpy_is_the_default_and_blocks_nest(monkeypatch):
    monkeypatch.delenv("FPERR_BACKEND", raising=False)
    monkeypatch.delenv("FPERR_DEVICE", raising=False)
    assert current().name == "numpy"
    with using("torch") as outer:
        assert current() is outer and outer.name == "torch"
        with using("numpy") as inner:  # one call's stages share the outer backend
            assert inner is outer
    assert current().name == "numpy"
    assert isinstance(make(), Backend) and make().native


def test_bad_backend_or_device_is_an_input_error():
    X = np.zeros((1, 64))
    model = load_model(EXAMPLES / "mlp.yaml")
    with pytest.raises(FperrInputError, match="unknown backend"):
        bound(model, X, backend="jax")
    with pytest.raises(FperrInputError, match="device"):
        bound(model, X, backend="torch", device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(FperrInputError, match="cuda"):
            bound(model, X, device="cuda")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_agrees_with_numpy():  # pragma: no cover - runs where a GPU is present
    model = load_model(EXAMPLES / "cnn.yaml")
    X = np.load(EXAMPLES / "digits.npz")["inputs"][:50]
    for ranges in ("sharpened", "full"):
        a = bound(model, X, ranges=ranges).bound
        b = bound(model, X, ranges=ranges, device="cuda").bound
        agree(a, b)


def test_rows_live_on_torch(monkeypatch):
    """The torch backend really carries the rows: every portable adjoint of the CNN
    (conv, ReLU, max pooling, flatten, dense) receives torch tensors."""
    from fperr.bounds import backend

    seen: list[str] = []
    real = backend.apply_adjoint

    def spy(adjoint, rows):
        seen.append(type(rows).__module__.split(".")[0])
        assert getattr(adjoint, "portable", False)  # no host copies on this model
        return real(adjoint, rows)

    monkeypatch.setattr("fperr.bounds.backward.apply_adjoint", spy)
    model = load_model(EXAMPLES / "cnn.yaml")
    bound(model, np.load(EXAMPLES / "digits.npz")["inputs"][:5], backend="torch", ranges="full")
    assert seen and set(seen) == {"torch"}


def test_backend_benchmark_runs_and_agrees(tmp_path):
    """benchmarks/backend_speed.py, which validation/run_gpu.sh runs on a GPU: on the
    CPU it times numpy and torch and finds their bounds within 1e-12."""
    import sys

    bench = EXAMPLES.parent / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        import backend_speed
    finally:
        sys.path.remove(str(bench))
    out = tmp_path / "speed.json"
    assert backend_speed.main(["--n", "20", "--seed-images", "0", "--json", str(out)]) == 0
    import json

    doc = json.loads(out.read_text())
    assert {r["backend"] for r in doc["rows"]} == {"numpy", "torch"}
    assert len(doc["rows"]) == 6 and all(r["seconds"] > 0 for r in doc["rows"])
    assert 0.0 <= doc["worst_rel_diff"] <= 1e-12


OPERATORS = sorted(__import__("fperr.operators", fromlist=["REGISTRY"]).REGISTRY)


@pytest.mark.parametrize("name", OPERATORS)
def test_every_operator_runs_on_torch_without_host_copies(name, monkeypatch):
    """Each registered operator's example model: the same bounds on torch, and every
    adjoint met is portable (the rows never go back to numpy mid-pass)."""
    from fperr.bounds import backend
    from fperr.operators import REGISTRY

    model = REGISTRY[name].example_for(name, np.random.default_rng(0))
    if name == "embedding":  # token ids: integers below the vocabulary
        vocab = next(op.weight.shape[0] for op in model.layers if op.type == "embedding")
        X = np.random.default_rng(1).integers(0, vocab, size=(4, *model.input_shape))
    else:
        X = np.random.default_rng(1).normal(size=(4, *model.input_shape))
    real = backend.apply_adjoint
    hosted: list[str] = []

    def spy(adjoint, rows):
        if not getattr(adjoint, "portable", False):
            hosted.append(getattr(adjoint, "__qualname__", repr(adjoint)))
        return real(adjoint, rows)

    monkeypatch.setattr("fperr.bounds.backward.apply_adjoint", spy)
    for ranges in ("sharpened", "full"):
        a, b = both(model, X, engine="backward", ranges=ranges)
        agree(a, b)
    assert not hosted, hosted


def test_float32_weights_are_promoted_as_numpy_would():
    """A dense layer holding float32 weights: numpy promotes them against float64
    rows, and so must torch (whose GEMMs refuse mixed precisions)."""
    from fperr.layers import Activation, Dense
    from fperr.model import Model

    rng = np.random.default_rng(5)
    w1 = rng.standard_normal((16, 8)).astype(np.float32)
    w2 = rng.standard_normal((3, 16)).astype(np.float32)
    model = Model("f32", (8,), (Dense(w1, np.zeros(16, np.float32)), Activation("tanh"),
                                Dense(w2, np.zeros(3, np.float32))))  # fmt: skip
    X = rng.standard_normal((5, 8))
    a, b = both(model, X, engine="backward", ranges="full")
    assert np.all(np.isfinite(a))
    agree(a, b)


def test_converted_arrays_leave_with_their_arrays_and_the_call():
    """Device copies are kept while their host arrays live (one batch's boxes), and
    none outlive the call (a model's weights outlive every bound)."""
    import gc

    b = make("torch")
    w = np.ones((3, 3))
    box = np.ones((2, 3))
    assert b.on(w) is b.on(w)  # converted once
    b.on(box)
    assert len(b._kept) == 2
    del box
    gc.collect()
    assert len(b._kept) == 1  # the box's entry left with it
    b.close()
    assert not b._kept and not b._finalizers
    del w
    gc.collect()  # no finalizer left to run on a closed backend
    assert b.on(3.0).item() == 3.0 and not b._kept  # scalars are not remembered


def test_a_device_out_of_memory_is_one_clear_error():
    with pytest.raises(FperrInputError, match="ran out of memory on cpu.*--memory"):
        with using("torch"):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    with pytest.raises(ValueError, match="other"):  # any other error passes unchanged
        with using("torch"):
            raise ValueError("other")
    assert current().name == "numpy"


def test_the_environment_chooses_the_default_backend(monkeypatch):
    """FPERR_BACKEND / FPERR_DEVICE set the default (as FPERR_MAX_BYTES the budget),
    so a whole test suite or script can run on torch; arguments override them."""
    monkeypatch.setenv("FPERR_BACKEND", "torch")
    assert make().name == "torch" and make("numpy").name == "numpy"
    monkeypatch.setenv("FPERR_BACKEND", "numpy")
    monkeypatch.setenv("FPERR_DEVICE", "tpu")
    with pytest.raises(FperrInputError, match="device"):
        make()


def test_cli_runs_on_torch_and_says_where(tmp_path):
    """fperr bound --backend torch: the same verdicts as numpy, the report naming the
    backend; --device cuda without CUDA is one line and exit 2."""
    import json

    from click.testing import CliRunner

    from fperr.cli import cli

    X = np.load(EXAMPLES / "digits.npz")["inputs"][:40]
    np.save(tmp_path / "x.npy", X)
    args = ["bound", "--model", str(EXAMPLES / "cnn.yaml"), "--inputs", str(tmp_path / "x.npy"),
            "--json", "-q"]  # fmt: skip
    reports = {}
    for be in ("numpy", "torch"):
        res = CliRunner().invoke(cli, [*args, "--backend", be])
        assert res.exit_code in (0, 1), res.output
        reports[be] = json.loads(res.stdout)
        assert reports[be]["summary"]["bound_backend"] == f"{be}:cpu"
    verdicts = [[s["certified"] for s in reports[be]["samples"]] for be in ("numpy", "torch")]
    assert verdicts[0] == verdicts[1] and sum(verdicts[0]) >= 35
    if not torch.cuda.is_available():
        res = CliRunner().invoke(cli, [*args, "--device", "cuda"])
        assert res.exit_code == 2 and "cuda" in res.output and "Traceback" not in res.output


def test_an_adjoint_not_marked_portable_runs_on_a_host_copy():
    """An operator's adjoint written for numpy only (not marked portable) still runs
    on the torch backend: its rows go to numpy and its result comes back."""
    from fperr.bounds.backend import apply_adjoint

    d = np.array([[2.0, -1.0, 0.5]])
    seen: list[type] = []

    def numpy_only(lam):
        seen.append(type(lam))
        return np.multiply(lam, d[:, None, :])  # a numpy function: refuses no tensor here

    rows = np.arange(6.0).reshape(1, 2, 3)
    with using("torch") as b:
        out = apply_adjoint(numpy_only, b.fresh(rows))
        assert isinstance(out, torch.Tensor)
        pair = apply_adjoint(lambda lam: [lam, 2 * lam], b.fresh(rows))
    assert seen == [np.ndarray]
    assert np.array_equal(out.numpy(), rows * d[:, None, :])
    assert all(isinstance(p, torch.Tensor) for p in pair)
    assert np.array_equal(pair[1].numpy(), 2 * rows)
