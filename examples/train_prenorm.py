"""Train the pre-norm residual MLP example shipped in ``examples/`` (issue 18).

Usage (needs fperr installed, ``pip install -e .``, plus torch and scikit-learn)::

    python examples/train_prenorm.py

Writes ``prenorm.npz`` (the state_dict, float32 values stored as float64
arrays) and ``prenorm.yaml`` (the fperr model spec) next to this script:

    digits (64) -> dense 64->128 -> B x [h + fc2(gelu(fc1(layernorm(h))))]
    -> layernorm -> dense 128->10,     fc1 128->256, fc2 256->128, B = 2

the feed-forward half of a transformer block.  :func:`trained` builds the same
family with any number of blocks in memory (the benchmark
``benchmarks/bench_layernorm.py`` uses 2, 4 and 8; only B = 2 is shipped, to
keep the examples small).  Training uses the fixed stratified 80/20 split of
``train_digits.py`` (the 20% are the held-out inputs), fixed seeds,
deterministic algorithms and one CPU thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch
from sklearn.model_selection import train_test_split
from torch import nn
from train_digits import save_npz, state_arrays  # the same folder: run as a script

HERE = Path(__file__).resolve().parent
SEED = 0
TEST_FRACTION = 0.2
BATCH_SIZE = 32
EPOCHS = 30
LR = 1e-3
WIDTH, HIDDEN = 128, 256


class Block(nn.Module):
    """Pre-norm residual MLP block: h + fc2(gelu(fc1(layernorm(h))))."""

    def __init__(self) -> None:
        super().__init__()
        self.ln = nn.LayerNorm(WIDTH)
        self.fc1 = nn.Linear(WIDTH, HIDDEN)
        self.fc2 = nn.Linear(HIDDEN, WIDTH)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.fc2(nn.functional.gelu(self.fc1(self.ln(h))))


class PreNorm(nn.Module):
    def __init__(self, blocks: int) -> None:
        super().__init__()
        self.inp = nn.Linear(64, WIDTH)
        self.blocks = nn.ModuleList(Block() for _ in range(blocks))
        self.ln_f = nn.LayerNorm(WIDTH)
        self.head = nn.Linear(WIDTH, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))


def split(labels: npt.NDArray[np.int64]) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(train, held-out) indices: the split of ``train_digits.py``."""
    idx = np.arange(len(labels))
    train, test = train_test_split(idx, test_size=TEST_FRACTION, random_state=SEED,
                                   stratify=labels)  # fmt: skip
    return np.asarray(train), np.asarray(test)


def load_digits() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    with np.load(HERE / "digits.npz", allow_pickle=False) as d:
        return d["inputs"], d["labels"]


def trained(blocks: int) -> tuple[PreNorm, float]:
    """The model with ``blocks`` blocks, trained with Adam; (model, held-out accuracy)."""
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    X, y = load_digits()
    tr, te = split(y)
    Xt, yt = torch.from_numpy(X.astype(np.float32)), torch.from_numpy(y)
    torch.manual_seed(SEED)
    model = PreNorm(blocks)
    order = torch.Generator().manual_seed(SEED)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    for _ in range(EPOCHS):
        for batch in torch.split(torch.from_numpy(tr)[torch.randperm(len(tr), generator=order)],
                                 BATCH_SIZE):  # fmt: skip
            opt.zero_grad()
            loss_fn(model(Xt[batch]), yt[batch]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(Xt[te]).argmax(1) == yt[te]).float().mean())
    return model, acc


def spec_text(blocks: int, weights: str, summary: str) -> str:
    """The fperr spec: residual blocks in the YAML form of fperr.spec.ResidualSpec."""
    lines = [
        "# Produced by examples/train_prenorm.py; rerun it rather than editing by hand.",
        f"# {summary}",
        f"name: digits-prenorm-{blocks}",
        f"weights: {weights}  # relative to this yaml file",
        "input: {shape: [64]}",
        "layers:",
        "  - {type: dense, weight: inp.weight, bias: inp.bias}",
    ]
    for i in range(blocks):
        p = f"blocks.{i}"
        lines += [
            "  - type: residual",
            "    layers:",
            f"      - {{type: layernorm, weight: {p}.ln.weight, bias: {p}.ln.bias, eps: 1.0e-5}}",
            f"      - {{type: dense, weight: {p}.fc1.weight, bias: {p}.fc1.bias}}",
            "      - {type: gelu}",
            f"      - {{type: dense, weight: {p}.fc2.weight, bias: {p}.fc2.bias}}",
        ]
    lines += [
        "  - {type: layernorm, weight: ln_f.weight, bias: ln_f.bias, eps: 1.0e-5}",
        "  - {type: dense, weight: head.weight, bias: head.bias}",
        "data: {inputs: digits.npz}  # relative to this yaml file; labels are inside the npz",
    ]
    return "\n".join(lines) + "\n"


def write(directory: Path, stem: str, blocks: int) -> Path:
    """Train a ``blocks``-block model and write ``stem``.yaml / .npz into ``directory``."""
    model, acc = trained(blocks)
    save_npz(directory / f"{stem}.npz", state_arrays(model))
    summary = f"float32 held-out accuracy {acc:.4f} (20% stratified split, seed {SEED})"
    path = directory / f"{stem}.yaml"
    path.write_text(spec_text(blocks, f"{stem}.npz", summary))
    if directory != HERE:  # the data path in the spec is relative to the yaml file
        path.write_text(path.read_text().replace("digits.npz", str(HERE / "digits.npz")))
    return path


def main() -> None:
    path = write(HERE, "prenorm", 2)
    size = (HERE / "prenorm.npz").stat().st_size / 1024
    print(f"{path.name}: {path.read_text().splitlines()[1][2:]}; prenorm.npz {size:.0f} KiB")


if __name__ == "__main__":
    main()
