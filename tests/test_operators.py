"""Every registered operator (fperr.operators), held to one contract.

For each operator's example model: its spec round-trips through YAML (bit for
bit, exact and emulated); every behaviour is implemented or refused with one
clear line; its step's adjoint is the transpose of its Jacobian (checked by
central differences of the exact float64 forward: an independent oracle); the
mpmath and torch executors agree with the exact forward; and the bound holds
against fperr's emulated runs in every summation order and against torch CPU
runs in float16 and bfloat16.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from op_checks import ORDERS

from fperr.arith import Emulated, Exact
from fperr.bounds import bound_run
from fperr.bounds.rules import Context
from fperr.model import load_model
from fperr.operators import REGISTRY, Operator, OperatorUnsupported

OPS = sorted(REGISTRY)


def _example(name: str, seed: int = 0):
    model = REGISTRY[name].example_for(name, np.random.default_rng(seed))
    ops = [(i, layer) for i, layer in enumerate(model.layers) if layer.type == name]
    assert ops, f"{name}'s example does not use it"
    return model, ops


def _inputs(model, n: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, *model.input_shape))


def _layer_inputs(model, x: np.ndarray, i: int, arith) -> list[np.ndarray]:
    hs = model.activations(x, arith)
    return [hs[j + 1] for j in model.inputs_of(i)]


@pytest.mark.parametrize("name", OPS)
def test_spec_round_trips_bit_for_bit(name, tmp_path):
    model, _ = _example(name)
    model.save(tmp_path / "m.yaml")
    again = load_model(tmp_path / "m.yaml")
    x = _inputs(model, 3)
    for arith in (Exact(), Emulated()):
        assert np.array_equal(model.forward(x, arith), again.forward(x, arith))
    assert [layer.type for layer in again.layers] == [layer.type for layer in model.layers]


@pytest.mark.parametrize("name", OPS)
def test_every_behaviour_is_implemented_or_refused(name):
    cls = REGISTRY[name]
    assert issubclass(cls, Operator) and cls.Spec.model_fields["type"].annotation is not None
    model, ops = _example(name)
    x = _inputs(model, 2)
    for i, op in ops:
        xs = _layer_inputs(model, x, i, Exact())
        for call in (lambda op=op, xs=xs: op.mpmath_forward([np.asarray(v, dtype=object)
                                                             for v in xs]),
                     lambda op=op, i=i: op.rule(None, None, i)):  # fmt: skip
            try:
                call()
            except OperatorUnsupported as exc:
                assert "\n" not in str(exc) and name in str(exc)
            except Exception:  # implemented: exercised with real arguments below
                pass
        assert isinstance(op.work([v.shape[1:] for v in xs], model.shapes()[i + 1]), float)


@pytest.mark.parametrize("name", OPS)
def test_adjoint_is_the_transposed_jacobian(name):
    model, ops = _example(name)
    rng = np.random.default_rng(7)
    x = _inputs(model, 3)
    ctx = Context(Emulated())
    for i, op in ops:
        xs = _layer_inputs(model, x, i, ctx.arith)
        rs = [np.zeros_like(v) for v in xs]
        if op.needs_functional:  # radius 0: every functional of the input has radius 0
            step = op.step(xs, rs, ctx, i, functional=lambda rows: np.zeros(rows.shape[:2]))
        else:
            step = op.step(xs, rs, ctx, i)
        lam = rng.normal(size=(3, 2, step.value[0].size))
        pulled = step.adjoint(lam)
        pulled = pulled if step.arity > 1 else [pulled]
        assert len(pulled) == len(xs)
        vs = [rng.normal(size=v.shape) for v in xs]
        h = 2.0**-12
        plus = op.merge([v + h * d for v, d in zip(xs, vs, strict=True)], Exact())
        minus = op.merge([v - h * d for v, d in zip(xs, vs, strict=True)], Exact())
        jv = ((plus - minus) / (2 * h)).reshape(3, 1, -1)
        lhs = (lam * jv).sum(axis=2)
        rhs = sum((p * d.reshape(3, 1, -1)).sum(axis=2) for p, d in zip(pulled, vs, strict=True))
        np.testing.assert_allclose(rhs, lhs, rtol=1e-6, atol=1e-9 * np.abs(lhs).max())


@pytest.mark.parametrize("name", OPS)
def test_mpmath_executor_agrees_with_the_exact_forward(name):
    mpmath = pytest.importorskip("mpmath")
    model, ops = _example(name)
    x = _inputs(model, 2)
    for i, op in ops:
        xs = _layer_inputs(model, x, i, Exact())
        want = op.merge(xs, Exact())
        with mpmath.workdps(40):
            try:
                got = op.mpmath_forward([np.vectorize(mpmath.mpf, otypes=[object])(v) for v in xs])
            except OperatorUnsupported:
                continue
            got = np.vectorize(float)(got)
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-300)


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("fmt", ["binary16", "bfloat16"])
def test_bound_holds_for_every_order(name, fmt):
    model, _ = _example(name)
    x = _inputs(model, 20)
    exact = model.forward(x)
    rb = bound_run(model, x, Emulated.from_names(fmt, "binary32"))
    assert np.all(np.isfinite(rb.radius))
    worst = 0.0
    for order in ORDERS:
        for acc in ("binary32", fmt):
            y = model.forward(x, Emulated.from_names(fmt, acc, order=order)).reshape(len(x), -1)
            if acc == fmt:  # a narrower accumulator: its own, larger bound
                r = bound_run(model, x, Emulated.from_names(fmt, acc, order=order)).radius
            else:
                r = rb.radius
            err = np.abs(y - exact.reshape(len(x), -1))
            assert np.all(err <= r), f"{name} {fmt} {order} acc {acc}: {err.max()} > bound"
            worst = max(worst, float((err / r).max()))
    assert worst > 0  # the runs do err: a bound of inf or an error of 0 proves nothing


@pytest.mark.parametrize("name", OPS)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_bound_holds_for_torch_cpu(name, dtype):
    pytest.importorskip("torch")
    from fperr.hardware.torch_exec import run_torch

    model, _ = _example(name)
    x = _inputs(model, 20, seed=3)
    fmt = {"float16": "binary16", "bfloat16": "bfloat16"}[dtype]
    try:
        run = run_torch(model, x, dtype=dtype)
    except OperatorUnsupported as exc:  # an operator without a torch executor (not a graph)
        pytest.skip(str(exc))
    rb = bound_run(model, x, Emulated.from_names(fmt, "binary32"))
    err = np.abs(run.outputs.reshape(len(x), -1) - model.forward(x).reshape(len(x), -1))
    assert np.all(err <= rb.radius), f"{name} torch {dtype}: {(err / rb.radius).max()}"
    assert math.isfinite(float(rb.radius.max()))
