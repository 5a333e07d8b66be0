"""The soundness suite's torch runs in a child process: a kernel that ends its process
is reported as :class:`KernelCrash`, and the suite goes on (docs/hardware.md)."""

from __future__ import annotations

import signal

import numpy as np
import pytest

from fperr.layers import Conv2d, Flatten
from fperr.model import Model

pytest.importorskip("torch")

from soundness.checks import Report, check_torch  # noqa: E402
from soundness.generators import Case, Options  # noqa: E402
from soundness.torch_reference import batch_and_alone, torch_run  # noqa: E402
from soundness.torch_worker import KernelCrash, TorchWorker, abort_for_test  # noqa: E402


@pytest.fixture
def worker():
    w = TorchWorker()
    yield w
    w.close()


def test_worker_returns_what_the_call_returns(worker) -> None:
    rng = np.random.default_rng(0)
    conv = Conv2d(rng.normal(size=(2, 2, 3, 3)), rng.normal(size=2), padding=(1, 1))
    layers, X = [conv, Flatten()], rng.normal(size=(3, 2, 4, 4))
    whole, alone = worker.call(batch_and_alone, layers, (2, 4, 4), X, "binary32")
    # the same kernels as in this process (same torch build, same thread count)
    np.testing.assert_array_equal(whole, torch_run(layers, (2, 4, 4), X, "binary32"))
    np.testing.assert_array_equal(alone[1:2], torch_run(layers, (2, 4, 4), X[1:2], "binary32"))
    assert whole.shape == alone.shape == (3, 32)


def test_an_error_in_the_call_is_raised_here(worker) -> None:
    with pytest.raises(KeyError):
        worker.call(batch_and_alone, [], (2,), np.zeros((1, 2)), "binary8")


@pytest.mark.parametrize("sig", [signal.SIGSEGV, signal.SIGABRT])
def test_a_crash_is_reported_and_the_next_call_runs(worker, sig) -> None:
    with pytest.raises(KernelCrash, match=signal.Signals(sig).name):
        worker.call(abort_for_test, sig)
    out = worker.call(batch_and_alone, [Flatten()], (2,), np.ones((2, 2)), "binary16")
    np.testing.assert_array_equal(out[0], np.ones((2, 2)))


def test_check_torch_counts_a_crash_and_skips_the_model(monkeypatch) -> None:
    import soundness.torch_worker as tw  # noqa: PLC0415

    worker_ = TorchWorker()

    def crashing(fn, *args):  # the worker's own crash path, whatever the call
        return worker_.call(abort_for_test)

    monkeypatch.setattr(tw, "in_worker", crashing)
    rng = np.random.default_rng(1)
    model = Model("c", (2, 5, 1), (Conv2d(rng.normal(size=(2, 2, 3, 1)), None, (3, 2), (1, 1),
                                          (2, 2)), Flatten()))  # fmt: skip
    case = Case(model, rng.normal(size=(2, 2, 5, 1)), Options(low="binary16"), "test", 0)
    rep = Report()
    try:
        check_torch(case, rep)
    finally:
        worker_.close()
    assert rep.models == 0 and rep.inputs == 0 and not rep.violations
    ((msg, n),) = rep.torch_crashes.items()
    assert n == 1 and "SIGSEGV" in msg and "abort_for_test" in msg
