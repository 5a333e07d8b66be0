"""Model loading, saving and input checks; emulated fp16 against plain numpy fp16."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fperr.arith import Emulated, Exact
from fperr.errors import SpecError
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

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DIGITS = np.load(EXAMPLES / "digits.npz")
X, LABELS = DIGITS["inputs"], DIGITS["labels"]


# -- the shipped examples ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("stem", "shapes"),
    [
        ("mlp", [(64,), (256,), (256,), (256,), (256,), (10,)]),
        (
            "cnn",
            [
                (64,),
                (1, 8, 8),
                (8, 8, 8),
                (8, 8, 8),
                (8, 4, 4),
                (16, 4, 4),
                (16, 4, 4),
                (16, 2, 2),
                (64,),
                (10,),
            ],
        ),  # fmt: skip
        ("deep_tanh", [(64,)] + [(512,)] * 8 + [(10,)]),
    ],
)
def test_examples_load_with_shapes_and_accuracy(stem: str, shapes: list[tuple[int, ...]]) -> None:
    model = load_model(EXAMPLES / f"{stem}.yaml")
    assert model.shapes() == shapes
    assert model.input_shape == (64,) and model.output_shape == (10,)
    out = model.forward(X)
    assert out.shape == (len(X), 10) and out.dtype == np.float64
    assert np.mean(out.argmax(axis=1) == LABELS) > 0.95
    hs = model.activations(X[:3])
    assert [h.shape[1:] for h in hs] == shapes


def _all_layers_model(rng: np.random.Generator) -> Model:
    """A small model with every layer type, for round trips and executors."""

    def r(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape) * 0.5

    layers = (
        Reshape((2, 6, 6)),
        Conv2d(r(4, 1, 3, 3), r(4), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=2),
        BatchNorm(r(4), rng.uniform(0.5, 2.0, 4), r(4), r(4), eps=1e-3),
        Activation("leaky_relu", 0.1),
        Pool2d("avg", (2, 2), (2, 2), (1, 1)),
        Conv2d(r(3, 4, 2, 2), None, stride=(2, 1), padding=(0, 1), dilation=(1, 2)),
        Activation("gelu"),
        Pool2d("max", (2, 2), (1, 1), (1, 0)),
        Flatten(),
        Dense(r(8, 3 * 3 * 3), r(8)),
        LayerNorm((8,), r(8), r(8), eps=1e-4),
        Residual((Dense(r(8, 8), r(8)), Activation("tanh"), Dropout(0.2))),
        Activation("sigmoid"),
        Residual((Dense(r(8, 8), None), Activation("relu"))),
        Dense(r(5, 8), r(5)),
        Softmax(),
    )
    return Model("every-layer", (72,), layers)


def test_every_layer_model_shapes(rng: np.random.Generator) -> None:
    model = _all_layers_model(rng)
    assert model.output_shape == (5,)
    out = model.forward(rng.standard_normal((4, 72)))
    np.testing.assert_allclose(out.sum(axis=1), 1.0, rtol=1e-14)


@pytest.mark.parametrize("stem", ["mlp", "cnn", "deep_tanh", "every-layer"])
def test_save_load_round_trip_is_identical(
    stem: str, tmp_path: Path, rng: np.random.Generator
) -> None:
    if stem == "every-layer":
        model, x = _all_layers_model(rng), rng.standard_normal((6, 72))
    else:
        model, x = load_model(EXAMPLES / f"{stem}.yaml"), X[:50]
    model.save(tmp_path / "saved.yaml")
    assert (tmp_path / "saved.npz").is_file()
    again = load_model(tmp_path / "saved.yaml")
    assert again.shapes() == model.shapes()
    assert [layer.type for layer in again.layers] == [layer.type for layer in model.layers]
    assert again.n_params() == model.n_params()
    for arith in (Exact(), Emulated()):
        a, b = model.forward(x, arith), again.forward(x, arith)
        assert np.array_equal(a.view(np.int64), b.view(np.int64))


# -- every bad input is a one-line SpecError ----------------------------------------------------
MLP_YAML = (EXAMPLES / "mlp.yaml").read_text()


def _spec_error(tmp_path: Path, yaml_text: str | None, weights: dict | None = None) -> str:
    path = tmp_path / "model.yaml"
    if yaml_text is not None:
        path.write_text(yaml_text.replace("mlp.npz", "w.npz"))
    if weights is None:
        with np.load(EXAMPLES / "mlp.npz") as z:
            weights = {k: z[k] for k in z.files}
    np.savez(tmp_path / "w.npz", **weights)
    with pytest.raises(SpecError) as info:
        load_model(path)
    msg = str(info.value)
    assert "\n" not in msg and msg.strip() == msg and msg
    return msg


def test_missing_yaml(tmp_path: Path) -> None:
    msg = _spec_error(tmp_path, None)
    assert "model file not found" in msg and "model.yaml" in msg


def test_missing_weights_file(tmp_path: Path) -> None:
    msg = _spec_error(tmp_path, MLP_YAML.replace("mlp.npz", "absent.npz"))
    assert "weights file not found" in msg and "absent.npz" in msg


def test_missing_weights_key(tmp_path: Path) -> None:
    msg = _spec_error(tmp_path, MLP_YAML.replace("2.bias", "7.bias"))
    assert msg == "layer 2 (dense): key '7.bias' not found in w.npz"


def test_shape_mismatch_names_layer_and_both_shapes(tmp_path: Path) -> None:
    # swap the second and third dense layers: layer 4 then gets 10 values, expects 256
    swapped = (
        MLP_YAML.replace("2.weight", "X.weight").replace("4.weight", "2.weight")
        .replace("X.weight", "4.weight").replace("2.bias", "X.bias")
        .replace("4.bias", "2.bias").replace("X.bias", "4.bias")
    )  # fmt: skip
    msg = _spec_error(tmp_path, swapped)
    assert msg.startswith("layer 4 (dense):")
    assert "[256]" in msg and "[10]" in msg


def test_bias_shape_mismatch(tmp_path: Path) -> None:
    with np.load(EXAMPLES / "mlp.npz") as z:
        w = {k: z[k] for k in z.files}
    w["0.bias"] = w["0.bias"][:100]
    msg = _spec_error(tmp_path, MLP_YAML, w)
    assert msg.startswith("layer 0 (dense):") and "100" in msg and "256" in msg


def test_unknown_layer_type(tmp_path: Path) -> None:
    msg = _spec_error(tmp_path, MLP_YAML.replace("{type: relu}", "{type: swish}", 1))
    assert "layers.1" in msg and "'swish'" in msg


@pytest.mark.parametrize(
    ("old", "new", "where"),
    [
        ("{type: relu}", "{type: relu, slope: 2}", "layers.1.relu.slope"),
        ("input: {shape: [64]}", "input: {shape: [64], dtype: f16}", "input.dtype"),
        ("name: digits-mlp", "name: digits-mlp\ncolour: blue", "colour"),
    ],
)
def test_extra_field(tmp_path: Path, old: str, new: str, where: str) -> None:
    msg = _spec_error(tmp_path, MLP_YAML.replace(old, new, 1))
    assert where in msg and "Extra inputs are not permitted" in msg


def test_missing_field(tmp_path: Path) -> None:
    msg = _spec_error(tmp_path, MLP_YAML.replace("input: {shape: [64]}", ""))
    assert "input" in msg and "Field required" in msg


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_weights(tmp_path: Path, bad: float) -> None:
    with np.load(EXAMPLES / "mlp.npz") as z:
        w = {k: z[k].copy() for k in z.files}
    w["2.weight"][3, 7] = bad
    msg = _spec_error(tmp_path, MLP_YAML, w)
    assert msg == "layer 2 (dense): '2.weight' contains NaN or inf"


def test_malformed_yaml(tmp_path: Path) -> None:
    msg = _spec_error(tmp_path, MLP_YAML.replace("layers:", "layers: [", 1))
    assert "malformed YAML at line" in msg


def test_yaml_not_a_mapping(tmp_path: Path) -> None:
    msg = _spec_error(tmp_path, "- just\n- a list\n")
    assert "expected a mapping" in msg


def test_corrupt_weights_file(tmp_path: Path) -> None:
    (tmp_path / "model.yaml").write_text(MLP_YAML.replace("mlp.npz", "w.npz"))
    (tmp_path / "w.npz").write_bytes(b"not a zip file")
    with pytest.raises(SpecError, match="cannot read weights"):
        load_model(tmp_path / "model.yaml")


def test_wrong_weights_rank(tmp_path: Path) -> None:
    with np.load(EXAMPLES / "mlp.npz") as z:
        w = {k: z[k] for k in z.files}
    w["4.weight"] = w["4.weight"].reshape(-1)
    msg = _spec_error(tmp_path, MLP_YAML, w)
    assert msg.startswith("layer 4 (dense):") and "2-D" in msg


@pytest.mark.parametrize(
    ("x", "fragment"),
    [
        (np.zeros((3, 63)), "inputs have shape [3, 63]; the model expects [N, 64]"),
        (np.zeros(64), "inputs have shape [64]"),
        (np.zeros((2, 8, 7)), "inputs have shape [2, 8, 7]"),
    ],
)
def test_forward_rejects_wrong_input_shape(x: np.ndarray, fragment: str) -> None:
    model = load_model(EXAMPLES / "mlp.yaml")
    with pytest.raises(SpecError) as info:
        model.forward(x)
    assert fragment in str(info.value) and "\n" not in str(info.value)


def test_forward_accepts_images_of_the_right_size() -> None:
    model = load_model(EXAMPLES / "mlp.yaml")
    np.testing.assert_array_equal(model.forward(X[:5].reshape(5, 8, 8)), model.forward(X[:5]))


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_forward_rejects_nan_inputs(bad: float) -> None:
    model = load_model(EXAMPLES / "cnn.yaml")
    x = X[:6].copy()
    x[4, 10] = bad
    with pytest.raises(SpecError) as info:
        model.forward(x, Emulated())
    assert str(info.value) == "inputs contain 1 NaN/inf values (first in input 4)"


def test_model_constructor_validates_the_chain() -> None:
    with pytest.raises(
        SpecError, match=r"layer 1 \(dense\): dense: expects input \[4\], got \[3\]"
    ):
        Model("m", (2,), (Dense(np.ones((3, 2))), Dense(np.ones((1, 4)))))


# -- emulated binary16 equals a plain numpy float16 execution, bit for bit ---------------------
# numpy's float16 matmul converts to float32, accumulates sequentially in float32 and rounds
# the sum once to float16: binary16 storage + binary32 sequential accumulation.
F16 = np.float16
NUMPY_FP16 = Emulated.from_names("binary16", "binary32", order="sequential")


def _numpy_conv16(x: np.ndarray, w: np.ndarray, b: np.ndarray, pad: int) -> np.ndarray:
    """Stride-1 float16 convolution via an im2col written here, patches in (c, i, j) order."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    xp = np.zeros((n, c, h + 2 * pad, wd + 2 * pad), dtype=F16)
    xp[:, :, pad : pad + h, pad : pad + wd] = x
    ho, wo = h + 2 * pad - kh + 1, wd + 2 * pad - kw + 1
    cols = np.stack(
        [xp[:, :, i : i + kh, j : j + kw].reshape(n, c * kh * kw) for i in range(ho)
         for j in range(wo)],
        axis=1,
    )  # fmt: skip
    z = cols @ w.reshape(o, -1).T + b  # (n, ho*wo, o), float16
    assert z.dtype == F16
    return z.transpose(0, 2, 1).reshape(n, o, ho, wo)


def _numpy_maxpool2(x: np.ndarray) -> np.ndarray:
    n, c, h, w = x.shape
    return x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))


def _same_bits(a16: np.ndarray, b64: np.ndarray) -> bool:
    assert a16.dtype == F16
    back = b64.astype(F16)
    return bool(np.array_equal(back.astype(np.float64), b64)) and bool(
        np.array_equal(a16.view(np.uint16), back.view(np.uint16))
    )


def test_emulated_fp16_mlp_equals_numpy_float16() -> None:
    model = load_model(EXAMPLES / "mlp.yaml")
    x = X[:300]
    h = x.astype(F16)
    numpy_layers = [h]
    for layer in model.layers:
        if isinstance(layer, Dense):
            assert layer.bias is not None
            h = h @ layer.weight.astype(F16).T + layer.bias.astype(F16)
        else:
            h = np.maximum(h, F16(0))
        assert h.dtype == F16
        numpy_layers.append(h)
    emulated = model.forward(x, NUMPY_FP16)
    assert _same_bits(h, emulated)
    # per layer too, so that a failure says where
    hs = model.activations(x, NUMPY_FP16)
    assert len(hs) == len(numpy_layers) == len(model.layers) + 1
    names = ["input"] + [f"layer {i} ({layer.type})" for i, layer in enumerate(model.layers)]
    for name, want, got in zip(names, numpy_layers, hs, strict=True):
        assert _same_bits(want, got), name


def test_emulated_fp16_cnn_equals_numpy_float16() -> None:
    model = load_model(EXAMPLES / "cnn.yaml")
    x = X[:200]
    h = x.astype(F16)
    for layer in model.layers:
        if isinstance(layer, Reshape):
            h = h.reshape(len(h), *layer.shape)
        elif isinstance(layer, Conv2d):
            assert layer.bias is not None and layer.stride == (1, 1) and layer.groups == 1
            h = _numpy_conv16(h, layer.weight.astype(F16), layer.bias.astype(F16),
                              layer.padding[0])  # fmt: skip
        elif isinstance(layer, Activation):
            h = np.maximum(h, F16(0))
        elif isinstance(layer, Pool2d):
            h = _numpy_maxpool2(h)
        elif isinstance(layer, Flatten):
            h = h.reshape(len(h), -1)
        else:
            assert isinstance(layer, Dense) and layer.bias is not None
            h = h @ layer.weight.astype(F16).T + layer.bias.astype(F16)
        assert h.dtype == F16
    assert _same_bits(h, model.forward(x, NUMPY_FP16))


def test_emulated_fp16_differs_from_exact_but_is_close() -> None:
    model = load_model(EXAMPLES / "mlp.yaml")
    exact, emulated = model.forward(X[:100]), model.forward(X[:100], Emulated())
    assert not np.array_equal(exact, emulated)
    assert np.max(np.abs(exact - emulated)) < 0.1
    assert np.array_equal(emulated, emulated.astype(F16).astype(np.float64))


# -- bad weights files and relocated specs ------------------------------------------------------
def test_corrupt_safetensors_is_a_spec_error(tmp_path: Path) -> None:
    pytest.importorskip("safetensors")
    (tmp_path / "model.yaml").write_text(MLP_YAML.replace("mlp.npz", "w.safetensors"))
    (tmp_path / "w.safetensors").write_bytes(b"\x10" + b"\x00" * 7 + b'{"a": 1}garbage')
    with pytest.raises(SpecError):
        load_model(tmp_path / "model.yaml")


def test_save_elsewhere_keeps_the_data_path_valid(tmp_path: Path) -> None:
    model = load_model(EXAMPLES / "mlp.yaml")
    assert model.data is not None
    model.save(tmp_path / "copy.yaml")
    again = load_model(tmp_path / "copy.yaml")
    assert again.data is not None
    assert (tmp_path / again.data.inputs).resolve().is_file()


def test_pool_padding_beyond_half_the_kernel_is_rejected() -> None:
    from fperr.layers import Pool2d

    with pytest.raises(SpecError, match="exceeds half the kernel"):
        Pool2d("max", (2, 2), (1, 1), (2, 2)).out_shape((1, 4, 4))
