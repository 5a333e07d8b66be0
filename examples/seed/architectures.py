"""CIFAR-style stand-ins for the architectures of the seed paper's Table 5.

Yun et al. 2023, "Standalone 16-bit Training" (arXiv 2305.10947), Table 5,
compares fp16 and fp32 on CIFAR-10 for ResNet-32/56/110, VGG-16/19 with
BatchNorm, MobileNetV2 and ViT-8/12 (among others).  The models here keep each
architecture's numerical ingredients (convolutions, BatchNorm, projection and
identity shortcuts, depthwise convolutions, ReLU6, layer norm, GELU, softmax
attention) at a size that trains on one CPU thread in minutes, for 1-channel
32x32 inputs (MNIST padded by 2 pixels on each side).

Only plain ``torch.nn`` modules carry weights (``Conv2d``, ``BatchNorm2d``,
``Linear``, ``LayerNorm``, ``ReLU``, ``ReLU6``, ``GELU``, ``AdaptiveAvgPool2d``,
``MaxPool2d``); the ``forward`` methods add only additions (residuals),
reshapes, the class token, the positional embedding and the softmax of
attention.  No training code lives here: importers can import this module.

Every constructor takes no required arguments and returns a model for inputs of
shape ``(N, 1, 32, 32)`` with pixel values in ``[0, 1]`` (no mean/std
normalisation) and 10 output logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

IN_CHANNELS = 1
IMAGE_SIZE = 32
NUM_CLASSES = 10


# -- ResNet-20 (He et al. 2016, the CIFAR variant of section 4.2) ---------------------


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, plus a shortcut, then ReLU.

    The shortcut is the identity when the shape is kept, else a projection
    (1x1 convolution with the block's stride, then BN): option B of He et al.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, 0, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """CIFAR ResNet-(6n+2): a 3x3 stem, 3 stages of n basic blocks, GAP, linear."""

    def __init__(self, blocks_per_stage: int, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(IN_CHANNELS, widths[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU()
        stages: list[nn.Module] = []
        in_channels = widths[0]
        for index, width in enumerate(widths):
            blocks: list[nn.Module] = []
            for block in range(blocks_per_stage):
                stride = 2 if index > 0 and block == 0 else 1
                blocks.append(BasicBlock(in_channels, width, stride))
                in_channels = width
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[-1], NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = torch.flatten(self.pool(out), 1)
        logits: torch.Tensor = self.fc(out)
        return logits


def resnet20() -> ResNetCifar:
    """ResNet-20 (n = 3), the seed's ResNet-32/56/110 at depth 20."""
    return ResNetCifar(3)


def resnet56() -> ResNetCifar:
    """ResNet-56 (n = 9), the seed's ResNet-56 at its own depth."""
    return ResNetCifar(9)


# -- VGG-11 with BatchNorm, reduced width (Simonyan & Zisserman 2015, config A) -----

VGG11_REDUCED: tuple[int | str, ...] = (16, "M", 32, "M", 64, 64, "M", 128, 128, "M", 128, 128, "M")


class VGG(nn.Module):
    """conv3x3-BN-ReLU stacks with 2x2 max-pools; five pools take 32x32 to 1x1.

    As in the CIFAR versions of VGG, the classifier is one linear layer on the
    1x1 feature map (the ImageNet 4096-wide head would dominate the size).
    """

    def __init__(self, config: tuple[int | str, ...] = VGG11_REDUCED) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = IN_CHANNELS
        for item in config:
            if item == "M":
                layers.append(nn.MaxPool2d(2, 2))
                continue
            assert isinstance(item, int)
            layers += [
                nn.Conv2d(in_channels, item, 3, 1, 1, bias=False),
                nn.BatchNorm2d(item),
                nn.ReLU(),
            ]
            in_channels = item
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(in_channels, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits: torch.Tensor = self.classifier(self.flatten(self.features(x)))
        return logits


def vgg11_bn() -> VGG:
    """VGG-11-BN at reduced width (16-32-64-64-128-128-128-128)."""
    return VGG(VGG11_REDUCED)


# -- MobileNetV2-tiny (Sandler et al. 2018) ------------------------------------------

# (expansion t, output channels c, repeats n, first stride s), as in Table 2 of the paper
MOBILENETV2_TINY: tuple[tuple[int, int, int, int], ...] = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 2, 2),
    (6, 64, 2, 2),
    (6, 96, 1, 1),
)


class InvertedResidual(nn.Module):
    """1x1 expansion-BN-ReLU6, 3x3 depthwise-BN-ReLU6, 1x1 linear projection-BN.

    The residual is added when the block keeps the shape (stride 1, same width).
    With expansion 1 the expansion convolution is omitted, as in the paper.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_channels * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers += [
                nn.Conv2d(in_channels, hidden, 1, 1, 0, bias=False),
                nn.BatchNorm2d(hidden),
                nn.ReLU6(),
            ]
        layers += [
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU6(),
            nn.Conv2d(hidden, out_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(out_channels),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.conv(x)
        return x + out if self.use_residual else out


class MobileNetV2(nn.Module):
    """Stem conv3x3-BN-ReLU6, inverted residual stages, conv1x1-BN-ReLU6, GAP, linear."""

    def __init__(
        self,
        config: tuple[tuple[int, int, int, int], ...] = MOBILENETV2_TINY,
        stem_channels: int = 16,
        last_channels: int = 256,
    ) -> None:
        super().__init__()
        # stride 1 in the stem, as in CIFAR ports of MobileNetV2 (32x32 inputs)
        layers: list[nn.Module] = [
            nn.Conv2d(IN_CHANNELS, stem_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU6(),
        ]
        in_channels = stem_channels
        for expansion, channels, repeats, first_stride in config:
            for repeat in range(repeats):
                stride = first_stride if repeat == 0 else 1
                layers.append(InvertedResidual(in_channels, channels, stride, expansion))
                in_channels = channels
        layers += [
            nn.Conv2d(in_channels, last_channels, 1, 1, 0, bias=False),
            nn.BatchNorm2d(last_channels),
            nn.ReLU6(),
        ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_channels, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.flatten(self.pool(self.features(x)), 1)
        logits: torch.Tensor = self.classifier(out)
        return logits


def mobilenetv2_tiny() -> MobileNetV2:
    """MobileNetV2 with 8 inverted residual blocks, expansion 6, widths 16-96."""
    return MobileNetV2()


# -- ViT-tiny (Dosovitskiy et al. 2021) ----------------------------------------------


class Attention(nn.Module):
    """Multi-head softmax self-attention with explicit q, k, v and output projections.

    Written out (rather than ``nn.MultiheadAttention``) so that every product is
    visible: per head, softmax(q k^T / sqrt(d_head)) v, then the output projection.
    """

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim {dim} is not a multiple of heads {heads}")
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        return x.reshape(batch, tokens, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        q, k, v = (
            self.split_heads(self.q(x)),
            self.split_heads(self.k(x)),
            self.split_heads(self.v(x)),
        )
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
        out = torch.softmax(scores, dim=-1) @ v
        out = out.transpose(1, 2).reshape(batch, tokens, dim)
        projected: torch.Tensor = self.proj(out)
        return projected


class TransformerBlock(nn.Module):
    """Pre-norm encoder block: x + attn(LN(x)), then x + MLP(LN(x)), MLP = Linear-GELU-Linear."""

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp_dim)
        self.act = nn.GELU()  # the exact (erf) GELU, torch's default
        self.fc2 = nn.Linear(mlp_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        out: torch.Tensor = x + self.fc2(self.act(self.fc1(self.norm2(x))))
        return out


class ViT(nn.Module):
    """Patch embedding (conv, kernel = stride = patch), class token, learned positions,
    pre-norm blocks, final LayerNorm, linear head on the class token."""

    def __init__(
        self, patch: int = 4, dim: int = 64, depth: int = 6, heads: int = 4, mlp_dim: int = 128
    ) -> None:
        super().__init__()
        tokens = (IMAGE_SIZE // patch) ** 2
        self.patch_embed = nn.Conv2d(IN_CHANNELS, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, tokens + 1, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp_dim) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)  # (N, tokens, dim)
        cls = self.cls_token.expand(patches.shape[0], -1, -1)
        out = torch.cat([cls, patches], dim=1) + self.pos_embed
        out = self.norm(self.blocks(out))
        logits: torch.Tensor = self.head(out[:, 0])
        return logits


def vit_tiny() -> ViT:
    """ViT with patch 4, dim 64, 4 heads, 6 blocks, MLP width 128, GELU, pre-norm."""
    return ViT()


# name -> constructor, in the order train_seed.py trains them
MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet20": resnet20,
    "vgg11_bn": vgg11_bn,
    "mobilenetv2_tiny": mobilenetv2_tiny,
    "vit_tiny": vit_tiny,
    "resnet56": resnet56,
}


def load_weights(model: nn.Module, path: str) -> nn.Module:
    """Load an ``examples/seed/<name>.npz`` (written by ``train_seed.py``) into ``model``.

    The files hold every state_dict entry as float32 except BatchNorm's
    ``num_batches_tracked`` counters, which do not enter the eval-mode forward
    pass; those keep the model's own values.  Returns ``model`` in eval mode.
    """
    import numpy as np  # local: importers that only build the models need no numpy

    with np.load(path, allow_pickle=False) as archive:
        state = {key: torch.from_numpy(archive[key]) for key in archive.files}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or any(not key.endswith("num_batches_tracked") for key in missing):
        raise KeyError(f"{path}: missing {missing}, unexpected {unexpected}")
    return model.eval()
