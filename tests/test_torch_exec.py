"""Running IR models in PyTorch: agreement with the exact executor, flags, restoration."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fperr.errors import FperrInputError
from fperr.layers import (
    Activation,
    BatchNorm,
    Conv2d,
    Dense,
    Dropout,
    Flatten,
    LayerNorm,
    Pool2d,
    Reshape,
    Residual,
    Softmax,
)
from fperr.model import Model, load_model

torch = pytest.importorskip("torch")

from fperr.hardware.torch_env import flag_state  # noqa: E402
from fperr.hardware.torch_exec import TorchRun, run_torch, to_torch  # noqa: E402

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
X = np.load(EXAMPLES / "digits.npz")["inputs"]
MLP = load_model(EXAMPLES / "mlp.yaml")
CNN = load_model(EXAMPLES / "cnn.yaml")
CUDA = torch.cuda.is_available()


def every_layer_model() -> Model:
    rng = np.random.default_rng(5)

    def r(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape) * 0.5

    layers = (
        Reshape((1, 8, 8)),
        Conv2d(r(4, 1, 3, 3), r(4), padding=(1, 1)),
        BatchNorm(r(4), rng.uniform(0.5, 2.0, 4), r(4), r(4), eps=1e-3),
        Activation("leaky_relu", 0.1),
        Pool2d("avg", (2, 2), (2, 2), (1, 1)),
        Conv2d(r(6, 2, 2, 2), None, stride=(2, 1), padding=(0, 1), dilation=(1, 2), groups=2),
        Activation("gelu"),
        Pool2d("max", (2, 2), (1, 1), (1, 0)),
        Flatten(),
        Dense(r(8, 72), r(8)),
        LayerNorm((8,), r(8), None, eps=1e-4),
        Residual((Dense(r(8, 8), r(8)), Activation("tanh"), Dropout(0.2))),
        BatchNorm(r(8), rng.uniform(0.5, 2.0, 8)),
        Activation("sigmoid"),
        Residual((Dense(r(8, 8), None), Activation("relu"))),
        Reshape((2, 4)),
        LayerNorm((2, 4)),
        Flatten(),
        Dense(r(10, 8), r(10)),
        Softmax(),
    )
    return Model("every-layer", (64,), layers)


@pytest.mark.parametrize("model", [MLP, CNN, every_layer_model()], ids=["mlp", "cnn", "every"])
def test_float64_run_equals_exact_executor(model: Model) -> None:
    run = run_torch(model, X[:300], dtype="float64")
    assert run.outputs.dtype == np.float64 and run.outputs.shape == (300, 10)
    np.testing.assert_allclose(run.outputs, model.forward(X[:300]), rtol=1e-12, atol=1e-12)


def test_to_torch_is_an_eval_float64_module() -> None:
    net = to_torch(every_layer_model())
    assert not net.training
    params = list(net.parameters())
    assert params and all(p.dtype == torch.float64 and not p.requires_grad for p in params)
    assert [type(m).__name__ for m in net][:4] == ["ReshapeModule", "Conv2d", "BatchNorm2d",
                                                    "LeakyReLU"]  # fmt: skip


@pytest.mark.parametrize("model", [MLP, CNN], ids=["mlp", "cnn"])
def test_float16_differs_from_float32_but_is_close(model: Model) -> None:
    r32 = run_torch(model, X, dtype="float32")
    r16 = run_torch(model, X, dtype="float16")
    diff = np.abs(r16.outputs - r32.outputs)
    assert diff.max() > 0
    assert diff.max() <= 1e-2 * np.abs(r32.outputs).max()
    assert np.mean(r16.predictions == r32.predictions) > 0.99
    # float16 outputs are float16 numbers, float32 ones float32 numbers
    assert np.array_equal(r16.outputs, r16.outputs.astype(np.float16).astype(np.float64))
    assert np.array_equal(r32.outputs, r32.outputs.astype(np.float32).astype(np.float64))


def test_bfloat16_and_autocast_runs() -> None:
    r32 = run_torch(MLP, X[:200])
    for run in (run_torch(MLP, X[:200], dtype="bfloat16"), run_torch(MLP, X[:200], autocast=True)):
        diff = np.abs(run.outputs - r32.outputs)
        assert 0 < diff.max() <= 5e-2 * np.abs(r32.outputs).max()
    auto = run_torch(MLP, X[:5], autocast="bfloat16")
    assert auto.flags["autocast"] == "bfloat16" and auto.flags["dtype"] == "float32"


def test_flags_are_recorded() -> None:
    run = run_torch(MLP, X[:100], dtype="float32", tf32=True, reduced_precision_reduction=False,
                    batch_size=30)  # fmt: skip
    f = run.flags
    assert f["dtype"] == "float32" and f["device"] == "cpu" and f["autocast"] is None
    assert f["torch"] == torch.__version__ and f["cuda"] == torch.version.cuda
    assert f["device_name"] and isinstance(f["device_name"], str)
    assert f["tf32"] is True and f["tf32_matmul"] is True and f["tf32_cudnn"] is True
    assert f["float32_matmul_precision"] == "high"
    assert f["fp16_reduced_precision_reduction"] is False
    assert f["bf16_reduced_precision_reduction"] is False
    assert f["batch_size"] == 30 and f["n_inputs"] == 100 and f["n_batches"] == 4
    plain = run_torch(MLP, X[:10]).flags
    assert plain["tf32"] is False and plain["tf32_matmul"] is False
    assert plain["tf32_cudnn"] is False  # set explicitly: cuDNN's own default is True
    assert plain["batch_size"] == 10


def test_batches_give_the_same_outputs() -> None:
    whole = run_torch(CNN, X[:97], dtype="float64")
    parts = run_torch(CNN, X[:97], dtype="float64", batch_size=10)
    np.testing.assert_allclose(parts.outputs, whole.outputs, rtol=1e-13, atol=1e-13)
    assert run_torch(MLP, X[:0]).outputs.shape == (0, 10)


def _set_nondefault_flags() -> None:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_fp16_reduced_precision_reduction = False


@pytest.mark.parametrize("initial", ["default", "changed"])
def test_global_flags_are_restored(initial: str) -> None:
    before = flag_state(torch)
    try:
        if initial == "changed":
            _set_nondefault_flags()
        start = flag_state(torch)
        for kw in (
            {"tf32": True, "reduced_precision_reduction": True},
            {"tf32": False, "reduced_precision_reduction": False},
            {"dtype": "float16"},
            {"autocast": True},
        ):
            run_torch(MLP, X[:8], **kw)
            assert flag_state(torch) == start, kw
        # legacy getters still work: the legacy and new TF32 APIs were not mixed
        assert torch.backends.cuda.matmul.allow_tf32 == (initial == "changed")
        assert torch.get_float32_matmul_precision() in ("highest", "high")
    finally:
        _restore_flags(before)
    assert flag_state(torch) == before


def _restore_flags(state: dict[str, Any]) -> None:
    from fperr.hardware.torch_env import restore_flags

    restore_flags(torch, state)


def test_global_flags_are_restored_after_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import fperr.hardware.torch_exec as te

    Module: Any = torch.nn.Module

    class Boom(Module):
        def forward(self, x: Any) -> Any:
            assert torch.backends.cuda.matmul.allow_tf32
            raise RuntimeError("boom")

    before = flag_state(torch)
    monkeypatch.setattr(te, "to_torch", lambda model: Boom())
    with pytest.raises(RuntimeError, match="boom"):
        run_torch(MLP, X[:4], tf32=True, reduced_precision_reduction=False)
    assert flag_state(torch) == before


def test_torch_run_repr_html_and_dict() -> None:
    run = run_torch(MLP, X[:3], dtype="float16")
    assert isinstance(run, TorchRun)
    text = repr(run)
    assert text.startswith("TorchRun(float16 on ") and "outputs 3x10" in text and "\n" not in text
    html = run._repr_html_()
    assert "<table>" in html and "float16" in html and "batch_size" in html
    d = run.to_dict()
    assert d["shape"] == [3, 10] and d["flags"]["dtype"] == "float16"
    assert np.array_equal(np.array(d["outputs"]), run.outputs)
    json.dumps(d)  # JSON-ready
    with pytest.raises(AttributeError):
        run.outputs = run.outputs  # type: ignore[misc]  # frozen


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"dtype": "float8"}, "unknown dtype 'float8'"),
        ({"autocast": True, "dtype": "float16"}, "autocast runs a float32 model"),
        ({"autocast": "float64"}, "autocast dtype must be float16 or bfloat16"),
        ({"batch_size": 0}, "batch_size must be positive"),
        ({"device": "nonsense"}, "unknown device 'nonsense'"),
    ],
)
def test_bad_arguments(kw: dict[str, Any], message: str) -> None:
    with pytest.raises(FperrInputError, match=message):
        run_torch(MLP, X[:2], **kw)


def test_bad_inputs_raise_spec_errors() -> None:
    from fperr.errors import SpecError

    with pytest.raises(SpecError, match="inputs have shape"):
        run_torch(MLP, np.zeros((2, 5)))
    bad = X[:3].copy()
    bad[1, 1] = np.nan
    with pytest.raises(SpecError, match="NaN"):
        run_torch(MLP, bad)


@pytest.mark.skipif(CUDA, reason="checks the error without CUDA")
def test_cuda_requested_without_cuda() -> None:
    with pytest.raises(FperrInputError, match="torch.cuda.is_available"):
        run_torch(MLP, X[:2], device="cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_runs_and_records_the_device() -> None:
    exact = MLP.forward(X)
    r64 = run_torch(MLP, X, dtype="float64", device="cuda")
    np.testing.assert_allclose(r64.outputs, exact, rtol=1e-12, atol=1e-12)
    for model in (MLP, CNN):
        ieee = run_torch(model, X, dtype="float32", device="cuda", tf32=False)
        tf32 = run_torch(model, X, dtype="float32", device="cuda", tf32=True)
        half = run_torch(model, X, dtype="float16", device="cuda")
        auto = run_torch(model, X, device="cuda", autocast=True)
        ref = model.forward(X)
        assert np.abs(ieee.outputs - ref).max() < 1e-4 * np.abs(ref).max()
        assert np.abs(half.outputs - ref).max() < 1e-2 * np.abs(ref).max()
        assert np.abs(auto.outputs - ref).max() < 1e-2 * np.abs(ref).max()
        assert tf32.flags["tf32_matmul"] is True and ieee.flags["tf32_matmul"] is False
        if tf32.flags["tf32_capable"]:
            assert np.abs(tf32.outputs - ref).max() < 1e-2 * np.abs(ref).max()
    f = r64.flags
    assert f["device"].startswith("cuda") and f["cuda"] and f["cudnn"]
    assert f["device_name"] == torch.cuda.get_device_name(0)
