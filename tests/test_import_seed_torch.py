"""The seed paper's architectures imported from PyTorch by both front ends (issue 12).

ResNet-20, VGG-11-BN, MobileNetV2-tiny and ViT-tiny (explicit attention) from
examples/seed/architectures.py with their trained weights, and a ViT built on
nn.TransformerEncoder (pre-norm GELU layers, as in /tmp/w/arch.py of the issue's
session, and a post-norm variant) with seeded random weights, imported with
torch.fx (``tracer="fx"``) and with torch.export (``tracer="export"``).

Oracle: torch itself.  The imported model's exact forward must match the module
run by torch in float64 to 1e-12 normwise; the bound of a binary16-storage /
binary32-accumulation run must cover torch's CPU float16 output elementwise
(the fast path of eval-mode attention off, as fperr's validation runs do).
"""

from __future__ import annotations

import copy
import math
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from op_checks import torch_run_unfused  # noqa: E402

import fperr  # noqa: E402
from fperr.arith import Emulated  # noqa: E402
from fperr.errors import FperrInputError, SpecError  # noqa: E402

SEED = Path(__file__).resolve().parents[1] / "examples" / "seed"
SHAPE = (1, 32, 32)
TRACERS = ("fx", "export")


class ViT(nn.Module):
    """Conv patch embedding, class token, positions, nn.TransformerEncoder, head on x[:, 0]."""

    def __init__(self, norm_first: bool = True, d=64, depth=6, heads=4, patch=4, img=32):
        super().__init__()
        self.pe = nn.Conv2d(1, d, patch, patch)
        n = (img // patch) ** 2
        self.cls = nn.Parameter(torch.randn(1, 1, d) * 0.02)
        self.pos = nn.Parameter(torch.randn(1, n + 1, d) * 0.02)
        layer = nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=norm_first)  # fmt: skip
        self.enc = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        x = self.pe(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        x = self.enc(x)
        return self.head(self.ln(x[:, 0]))


def _seed_module(name: str) -> nn.Module:
    if str(SEED) not in sys.path:
        sys.path.insert(0, str(SEED))
    from architectures import MODELS, load_weights

    return load_weights(MODELS[name](), str(SEED / f"{name}.npz"))


def _vit(norm_first: bool) -> nn.Module:
    torch.manual_seed(0)
    return ViT(norm_first).eval()


MODULES = {
    "resnet20": lambda: _seed_module("resnet20"),
    "vgg11_bn": lambda: _seed_module("vgg11_bn"),
    "mobilenetv2_tiny": lambda: _seed_module("mobilenetv2_tiny"),
    "vit_tiny": lambda: _seed_module("vit_tiny"),
    "vit_encoder_prenorm": lambda: _vit(True),
    "vit_encoder_postnorm": lambda: _vit(False),
}


def _images(n: int) -> np.ndarray:
    with np.load(SEED / "mnist_test_1000.npz") as f:
        return np.asarray(f["inputs"][:n], dtype=np.float64)


def _inputs(name: str, n: int) -> np.ndarray:
    if name.startswith("vit_encoder"):  # random weights: random inputs of the image's range
        return np.random.default_rng(7).uniform(0.0, 1.0, size=(n, *SHAPE))
    return _images(n)


@pytest.mark.parametrize("tracer", TRACERS)
@pytest.mark.parametrize("name", list(MODULES))
def test_import_matches_torch_float64(name, tracer):
    module = MODULES[name]()
    model = fperr.from_torch(module, input_shape=SHAPE, tracer=tracer)
    x = _inputs(name, 3)
    want = torch_run_unfused(module, x, torch.float64)
    got = model.forward(x, fperr.Exact())
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    print(f"{name} {tracer}: {len(model.layers)} layers, relative error {rel:.2e}")
    assert rel <= 1e-12


@pytest.mark.parametrize("tracer", TRACERS)
@pytest.mark.parametrize("norm_first", [True, False], ids=["prenorm", "postnorm"])
def test_vit_bound_covers_torch_float16(norm_first, tracer):
    module = _vit(norm_first)
    model = fperr.from_torch(module, input_shape=SHAPE, tracer=tracer)
    x = _images(2)
    rb = fperr.bound_run(model, x, Emulated.from_names("binary16", "binary32"))
    radius = np.asarray(rb.radius)
    low, exact = (torch_run_unfused(module, x, dt) for dt in (torch.float16, torch.float64))
    err = np.abs(low - exact)
    assert not np.isnan(radius).any()
    assert np.all(err.reshape(radius.shape) <= radius)
    ratio = float(np.median(radius / np.maximum(err.reshape(radius.shape), 1e-300)))
    print(
        f"vit {'pre' if norm_first else 'post'}-norm {tracer}: median bound/observed {ratio:.3g}"
        f", finite {np.isfinite(radius).mean():.2f}, max observed {err.max():.2e}"
    )


# -- layout ops and SDPA on small modules --------------------------------------------------------
class Layout(nn.Module):
    """transpose, permute, .mT, reshape with sizes read from x.shape, @, / 4, softmax."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 8)

    def forward(self, x):
        b, t, _ = x.shape
        h = self.lin(x).reshape(b, t, 2, 4).permute(0, 2, 1, 3)  # (N, 2, T, 4)
        s = torch.softmax(h @ h.mT / 4.0, dim=-1)
        return torch.transpose(s @ h, 1, 2).reshape(b, t * 8)


class SDPA(nn.Module):
    """F.scaled_dot_product_attention called directly (head size 8: 8^(-1/4) is not a
    power of two, so where the scale goes changes roundings, not the exact value)."""

    def __init__(self, causal: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        self.qkv = nn.Linear(6, 48)
        self.causal, self.dropout = causal, dropout

    def forward(self, x):
        q, k, v = (self.qkv(x)[..., 16 * i : 16 * i + 16].unflatten(-1, (2, 8)).transpose(1, 2)
                   for i in range(3))  # fmt: skip
        o = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, dropout_p=self.dropout)
        return o.transpose(1, 2).flatten(2).mean(1)


@pytest.mark.parametrize("tracer", TRACERS)
@pytest.mark.parametrize("cls", [Layout, SDPA])
def test_layout_and_sdpa_match_torch(cls, tracer):
    torch.manual_seed(1)
    module = cls().eval()
    model = fperr.from_torch(module, input_shape=(5, 6), tracer=tracer)
    x = np.random.default_rng(3).normal(size=(4, 5, 6))
    want = torch_run_unfused(module, x, torch.float64)
    got = model.forward(x, fperr.Exact())
    assert np.linalg.norm(got - want) <= 1e-12 * np.linalg.norm(want)
    # the decomposed SDPA scales after the product, by the float64 1/sqrt(8)
    if cls is SDPA:
        scales = [layer.factor for layer in model.layers if type(layer).__name__ == "Scale"]
        assert scales == [1 / math.sqrt(8)]


class Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(6, 16)
        self.layer = nn.TransformerEncoderLayer(16, 4, 32, 0.0, batch_first=True)
        self.register_buffer("mask", torch.zeros(5, 5))

    def forward(self, x):
        return self.layer(self.embed(x), src_mask=self.mask).mean(1)


class Odd(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 4)

    def forward(self, x):
        return torch.cumsum(torch.sin(self.lin(x)), 1) + torch.sin(x[:, :4])


class TrainDropout(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 4)

    def forward(self, x):
        return F.dropout(self.lin(x), 0.5, training=True)


class BatchTranspose(nn.Module):
    def forward(self, x):
        return x.transpose(0, 1).reshape(x.shape[0], -1)


class DivideByThree(nn.Module):
    def forward(self, x):
        return x / 3.0


REFUSALS = [
    (lambda: SDPA(causal=True), (5, 6), "export", r"scaled_dot_product_attention \(1: is_causal"),
    (lambda: SDPA(causal=True), (5, 6), "fx", "is_causal"),
    (Masked, (5, 6), "export", r"1 op of 1 kind: nn\.MultiheadAttention \(1: .*mask"),
    (Masked, (5, 6), "fx", "masks"),
    (Odd, (6,), "export", r"unsupported: 3 ops of 2 kinds: aten\.sin \(2\), aten\.cumsum \(1\)"),
    (TrainDropout, (6,), "export", r"aten\.dropout \(1: train=True"),
    (TrainDropout, (6,), "fx", "training=True"),
    (BatchTranspose, (2, 3), "fx", "moves the batch axis"),
    (BatchTranspose, (2, 3), "export", "batch axis"),
    (DivideByThree, (4,), "fx", "only by a power of two"),
    (DivideByThree, (4,), "export", "only by a power of two"),
]


@pytest.mark.parametrize("make, shape, tracer, message", REFUSALS,
                         ids=[f"{r[0]().__class__.__name__}-{r[2]}" for r in REFUSALS])  # fmt: skip
def test_refusals_are_one_line(make, shape, tracer, message):
    torch.manual_seed(0)
    with pytest.raises(FperrInputError, match=message) as info:
        fperr.from_torch(make().eval(), input_shape=shape, tracer=tracer)
    assert "\n" not in str(info.value) and len(str(info.value)) < 400


def test_export_needs_input_shape_and_a_known_tracer():
    with pytest.raises(SpecError, match="needs input_shape"):
        fperr.from_torch(nn.Sequential(nn.Linear(4, 2)), tracer="export")
    with pytest.raises(SpecError, match="tracer must be"):
        fperr.from_torch(nn.Sequential(nn.Linear(4, 2)), tracer="jit")


class LayerNorm2d(torch.nn.Module):
    """Layer norm over the channels of an image (ConvNeXt's LayerNorm2d): torch
    normalises trailing axes only, so it is written permute - LayerNorm - permute."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = torch.nn.LayerNorm(8)
        self.head = torch.nn.Linear(8 * 5 * 5, 4)

    def forward(self, x):
        y = self.norm(self.conv(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.head(y.flatten(1))


@pytest.mark.parametrize("tracer", TRACERS)
def test_layer_norm_over_channels_imports_as_permutes(tracer):
    """Layer norm along a non-trailing axis: permutes around the trailing-axis
    norm, matching torch in float64 (1e-12) and bounding its float16 CPU run."""
    torch.manual_seed(0)
    module = LayerNorm2d().eval()
    model = fperr.from_torch(module, input_shape=(3, 5, 5), tracer=tracer)
    assert [layer.type for layer in model.layers] == [
        "conv2d", "permute", "layernorm", "permute", "flatten", "dense"]
    x = np.random.default_rng(0).normal(size=(4, 3, 5, 5))
    with torch.no_grad():
        want = copy.deepcopy(module).double()(torch.from_numpy(x)).numpy()
        low = copy.deepcopy(module).half()(torch.from_numpy(x).half()).double().numpy()
    got = model.forward(x)
    assert np.linalg.norm(got - want) <= 1e-12 * np.linalg.norm(want)
    rb = fperr.bound_run(model, x, Emulated.from_names("binary16", "binary32"))
    assert np.all(np.abs(low - got) <= rb.radius)  # measured: at most 0.08 of the bound
