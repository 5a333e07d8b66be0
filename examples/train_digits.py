"""Train the example digits classifiers shipped in ``examples/``.

Usage (needs fperr installed, ``pip install -e .``, plus torch and scikit-learn)::

    python examples/train_digits.py

Writes, next to this script:

* ``digits.npz``: scikit-learn's 1797 8x8 digits, ``inputs`` (1797 x 64,
  pixels 0..16 divided by 16, see :mod:`fperr.datasets`) and ``labels``.
  All 1797 inputs form the evaluation set of the example models.
* ``mlp``: 64-256-256-10 ReLU MLP.
* ``cnn``: reshape to 1x8x8, conv 1->8 3x3, ReLU, max-pool 2, conv 8->16 3x3,
  ReLU, max-pool 2, flatten, dense 64->10.
* ``deep_tanh``: 64-512-512-512-512-10 tanh MLP (a hard case for bounds).

Each model as ``NAME.npz`` (the ``nn.Sequential`` state_dict: float32 values
stored as float64 arrays) plus ``NAME.yaml`` (the fperr model spec).  The
models are trained on a fixed stratified 80/20 split of the data, with fixed
seeds, deterministic algorithms and one CPU thread, so a rerun with the same
torch build on the same kind of CPU reproduces the files byte for byte.
"""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import yaml
from sklearn.model_selection import train_test_split
from torch import nn

from fperr.datasets import load_inputs

HERE = Path(__file__).resolve().parent
SEED = 0
TEST_FRACTION = 0.2
BATCH_SIZE = 32


@dataclass(frozen=True)
class Recipe:
    """One example model: its file stem, spec name, architecture and training."""

    stem: str
    name: str
    build: Callable[[], nn.Sequential]
    epochs: int
    lr: float


def build_mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)
    )


def build_cnn() -> nn.Sequential:
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, 8, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, kernel_size=3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def build_deep_tanh() -> nn.Sequential:
    widths = [64, 512, 512, 512, 512]
    layers: list[nn.Module] = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(fan_in, fan_out), nn.Tanh()]
    layers.append(nn.Linear(widths[-1], 10))
    return nn.Sequential(*layers)


RECIPES = (
    Recipe("mlp", "digits-mlp", build_mlp, epochs=40, lr=1e-3),
    Recipe("cnn", "digits-cnn", build_cnn, epochs=60, lr=3e-3),
    Recipe("deep_tanh", "digits-deep-tanh", build_deep_tanh, epochs=30, lr=3e-4),
)


# -- training ------------------------------------------------------------------


def train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, recipe: Recipe) -> None:
    """Adam on cross-entropy, mini-batches in a seeded random order."""
    order = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.Adam(model.parameters(), lr=recipe.lr)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(recipe.epochs):
        for batch in torch.split(torch.randperm(len(X), generator=order), BATCH_SIZE):
            optimizer.zero_grad()
            loss_fn(model(X[batch]), y[batch]).backward()
            optimizer.step()
    model.eval()


@torch.no_grad()
def predict(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    logits: torch.Tensor = model(X)
    return logits.argmax(dim=1)


def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    return float((predict(model, X) == y).float().mean())


# -- writing -------------------------------------------------------------------


def save_npz(path: Path, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
    """Like ``np.savez_compressed``, but with fixed timestamps: byte-reproducible."""
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(info, buffer.getvalue(), zipfile.ZIP_DEFLATED, compresslevel=9)


def state_arrays(model: nn.Module) -> dict[str, npt.NDArray[np.float64]]:
    """The state_dict under its own keys, float32 values as float64 arrays."""
    return {
        key: value.detach().numpy().astype(np.float64) for key, value in model.state_dict().items()
    }


def pair(value: object) -> int:
    """A square kernel/stride/padding parameter, ``2`` or ``(2, 2)``, as one int."""
    if isinstance(value, int):
        return value
    if isinstance(value, tuple) and len(set(value)) == 1 and isinstance(value[0], int):
        return value[0]
    raise ValueError(f"parameter {value!r} has no spec form (not a square int)")


def layer_entry(index: str, module: nn.Module) -> str:
    """The spec's flow-style entry for one module of the nn.Sequential."""
    if isinstance(module, nn.Linear):
        return f"{{type: dense, weight: {index}.weight, bias: {index}.bias}}"
    if isinstance(module, nn.Conv2d):
        return (
            f"{{type: conv2d, weight: {index}.weight, bias: {index}.bias, "
            f"stride: {pair(module.stride)}, padding: {pair(module.padding)}, "
            f"dilation: {pair(module.dilation)}, groups: {module.groups}}}"
        )
    if isinstance(module, nn.MaxPool2d):
        return (
            f"{{type: maxpool2d, kernel_size: {pair(module.kernel_size)}, "
            f"stride: {pair(module.stride)}}}"
        )
    if isinstance(module, nn.Unflatten):
        if module.dim != 1:
            raise ValueError("only Unflatten(1, shape) has a spec form")
        shape = ", ".join(str(n) for n in module.unflattened_size)
        return f"{{type: reshape, shape: [{shape}]}}"
    if isinstance(module, nn.Flatten):
        return "{type: flatten}"
    simple = {nn.ReLU: "relu", nn.Tanh: "tanh"}
    if type(module) in simple:
        return f"{{type: {simple[type(module)]}}}"
    raise ValueError(f"no spec form for {module!r}")


def spec_text(recipe: Recipe, model: nn.Sequential, summary: str) -> str:
    layers = "".join(
        f"  - {layer_entry(index, module)}\n" for index, module in model.named_children()
    )
    return (
        "# Produced by examples/train_digits.py; rerun it rather than editing by hand.\n"
        f"# {summary}\n"
        f"name: {recipe.name}\n"
        f"weights: {recipe.stem}.npz  # relative to this yaml file\n"
        "input: {shape: [64]}\n"
        "layers:\n"
        f"{layers}"
        "data: {inputs: digits.npz}  # relative to this yaml file; labels are inside the npz\n"
    )


def check_written(recipe: Recipe, model: nn.Module, X_all: torch.Tensor) -> int:
    """Re-read the files; return how many float64 predictions differ from float32."""
    spec = yaml.safe_load((HERE / f"{recipe.stem}.yaml").read_text())
    with np.load(HERE / spec["weights"], allow_pickle=False) as archive:
        weights = {key: torch.from_numpy(archive[key]) for key in archive.files}
    for layer in spec["layers"]:
        for role in ("weight", "bias"):
            if role in layer and layer[role] not in weights:
                raise RuntimeError(f"{recipe.stem}.yaml names missing array {layer[role]!r}")
    reference = recipe.build().double()
    reference.load_state_dict(weights)
    reference.eval()
    return int((predict(reference, X_all.double()) != predict(model, X_all)).sum())


# -- main ------------------------------------------------------------------------


def main() -> None:
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    inputs, labels = load_inputs("sklearn:digits")
    assert labels is not None
    save_npz(HERE / "digits.npz", {"inputs": inputs, "labels": labels})
    print(f"digits.npz: {inputs.shape[0]} inputs of {inputs.shape[1]} pixels in [0, 1]")

    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=TEST_FRACTION, random_state=SEED, stratify=labels
    )
    X_all = torch.from_numpy(inputs.astype(np.float32))
    y_all = torch.from_numpy(labels)
    X_train, y_train = X_all[train_idx], y_all[train_idx]
    X_test, y_test = X_all[test_idx], y_all[test_idx]

    for recipe in RECIPES:
        torch.manual_seed(SEED)
        model = recipe.build()
        start = time.perf_counter()
        train(model, X_train, y_train, recipe)
        seconds = time.perf_counter() - start
        train_acc = accuracy(model, X_train, y_train)
        test_acc = accuracy(model, X_test, y_test)
        all_acc = accuracy(model, X_all, y_all)
        summary = (
            f"float32 accuracy: train {train_acc:.4f} ({len(X_train)} inputs), "
            f"test {test_acc:.4f} ({len(X_test)}), all {all_acc:.4f} ({len(X_all)})"
        )
        save_npz(HERE / f"{recipe.stem}.npz", state_arrays(model))
        (HERE / f"{recipe.stem}.yaml").write_text(spec_text(recipe, model, summary))
        differ = check_written(recipe, model, X_all)
        size_kb = (HERE / f"{recipe.stem}.npz").stat().st_size / 1024
        print(
            f"{recipe.stem}: {summary}; {seconds:.1f} s; {recipe.stem}.npz {size_kb:.0f} KiB; "
            f"float64 vs float32 predictions differ on {differ} of {len(X_all)} inputs"
        )


if __name__ == "__main__":
    main()
