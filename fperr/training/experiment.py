"""The real experiment: standalone low-precision training in PyTorch (imported lazily)."""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from ..errors import FperrInputError
from ..layers import Activation, Dense, Dropout, Flatten, Layer, Reshape
from .backward import _training_layers
from .constants import ACTIVATIONS, OPTIMIZERS
from .report import _json_float

if TYPE_CHECKING:  # pragma: no cover
    from ..model import Model


# -- the real experiment (torch) ------------------------------------------------------
@dataclass(frozen=True)
class TrainRun:
    """One training run of :func:`train_pure`.

    ``nan_step``: the first optimizer step (1-based) after which some
    parameter is NaN or inf; ``loss_nan_step``: the first step whose loss is
    not finite; ``None`` if never.  Accuracies are of the final model
    (argmax; a NaN model predicts class 0 everywhere).  ``unchanged``: the
    fraction of parameter entries still bit-equal to their initial values at
    the end (lost updates, and weights that never get a gradient).
    """

    dtype: str
    eps: float
    seed: int
    lr: float
    epochs: int
    steps: int
    test_acc: float
    train_acc: float
    final_loss: float
    nan_step: int | None
    loss_nan_step: int | None
    seconds: float
    stopped_early: bool
    optimizer: str = "adam"
    unchanged: float = math.nan

    @property
    def nan(self) -> bool:
        return self.nan_step is not None or self.loss_nan_step is not None

    def to_dict(self) -> dict[str, Any]:
        d = {k: _json_float(v) if isinstance(v, float) else v for k, v in vars(self).items()}
        d["nan"] = self.nan
        return d


def _widths_and_acts(model_or_spec: Any) -> list[tuple[str, int, int]]:
    """[("dense", in, out) | ("relu"/"tanh"/"sigmoid", 0, 0) ...] of a dense architecture."""
    from ..model import Model as _Model
    from ..model import load_model

    if isinstance(model_or_spec, str | Path):
        model_or_spec = load_model(model_or_spec)
    if isinstance(model_or_spec, _Model):
        arch: list[tuple[str, int, int]] = []
        for layer in _training_layers(model_or_spec):
            if isinstance(layer, Dense):
                if layer.bias is None:
                    raise FperrInputError("train_pure rebuilds dense layers with biases only")
                arch.append(("dense", int(layer.weight.shape[1]), int(layer.weight.shape[0])))
            elif isinstance(layer, Activation) and layer.type in ACTIVATIONS:
                arch.append((layer.type, 0, 0))
            elif not isinstance(layer, Flatten | Reshape | Dropout):
                raise FperrInputError(
                    f"train_pure rebuilds dense models (dense, {'/'.join(ACTIVATIONS)}) only; "
                    f"the model has a {layer.type} layer"
                )
        return arch
    widths = [int(w) for w in model_or_spec]
    if len(widths) < 2 or min(widths) < 1:
        raise FperrInputError(f"layer widths must be >= 2 positive ints, got {widths}")
    arch = []
    for k, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        if k:
            arch.append(("relu", 0, 0))
        arch.append(("dense", a, b))
    return arch


def _build_torch(arch: list[tuple[str, int, int]], seed: int) -> Any:
    import torch
    from torch import nn

    torch.manual_seed(seed)
    acts = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
    mods: list[nn.Module] = [
        nn.Linear(a, b) if kind == "dense" else acts[kind]() for kind, a, b in arch
    ]
    return nn.Sequential(*mods)


def initial_model(model_or_spec: Any, seed: int, name: str = "init") -> Model:
    """The fperr model :func:`train_pure` starts from with ``seed`` (torch's default init).

    ``model_or_spec``: an fperr dense model or its YAML path (its architecture;
    the weights are re-initialised), or layer widths of a ReLU MLP, e.g.
    ``(64, 256, 256, 10)``.  Needs torch.
    """
    from ..model import Model as _Model

    arch = _widths_and_acts(model_or_spec)
    net = _build_torch(arch, seed)
    layers: list[Layer] = []
    for (kind, _, _), mod in zip(arch, net, strict=True):
        if kind == "dense":
            w = mod.weight.detach().double().numpy().copy()
            b = mod.bias.detach().double().numpy().copy()
            layers.append(Dense(w, b))
        else:
            layers.append(Activation(kind))
    return _Model(name, (arch[0][1],), tuple(layers))


def stratified_split(
    labels: npt.ArrayLike, test_fraction: float = 0.3, seed: int = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Train and test indices, each class split ``test_fraction`` (rounded) to test."""
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train: list[npt.NDArray[np.int64]] = []
    test: list[npt.NDArray[np.int64]] = []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = int(round(test_fraction * len(idx)))
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def train_pure(
    model_or_spec: Any,
    X: npt.ArrayLike,
    y: npt.ArrayLike,
    dtype: str = "float16",
    eps: float = 1e-8,
    seeds: Sequence[int] = (0, 1, 2),
    epochs: int = 40,
    *,
    lr: float = 1e-3,
    betas: tuple[float, float] = (0.9, 0.999),
    optimizer: str = "adam",
    batch_size: int = 32,
    test_fraction: float = 0.3,
    split_seed: int = 0,
    stop_on_nan: bool = True,
    device: str = "cpu",
) -> list[TrainRun]:
    """Train a dense classifier with everything in ``dtype``: the standalone experiment.

    ``dtype`` ``"float16"``/``"bfloat16"``: ``model.to(dtype)``, inputs in
    ``dtype``, ``torch.optim.Adam`` (or plain ``SGD`` with ``optimizer="sgd"``;
    ``eps`` and ``betas`` then unused) on the low-precision parameters (its
    states share their dtype), no master weights, no autocast, no loss
    scaling.  ``"float32"`` is the reference.  The data are split with
    :func:`stratified_split`; each seed sets the initialisation (see
    :func:`initial_model`) and the batch order.  With ``stop_on_nan`` a run
    whose parameters turn NaN/inf stops one step later (nothing recovers
    from NaN weights; that step records the loss going NaN).
    """
    import torch

    dt = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}.get(dtype)
    if dt is None:
        raise FperrInputError(f"dtype must be float16, bfloat16 or float32, got {dtype!r}")
    if optimizer not in OPTIMIZERS:
        raise FperrInputError(
            f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}"
        )
    arch = _widths_and_acts(model_or_spec)
    Xa = np.asarray(X, dtype=np.float64)
    ya = np.asarray(y, dtype=np.int64)
    tr, te = stratified_split(ya, test_fraction, split_seed)
    Xt = torch.from_numpy(Xa.reshape(len(Xa), -1)).to(device=device, dtype=dt)
    yt = torch.from_numpy(ya).to(device)
    tr_t, te_t = torch.from_numpy(tr).to(device), torch.from_numpy(te).to(device)
    runs: list[TrainRun] = []
    for seed in seeds:
        net = _build_torch(arch, seed).to(device=device, dtype=dt)
        params = list(net.parameters())
        initial = [p.detach().clone() for p in params]
        opt: torch.optim.Optimizer = (
            torch.optim.Adam(params, lr=lr, betas=betas, eps=eps)
            if optimizer == "adam"
            else torch.optim.SGD(params, lr=lr)
        )
        gen = torch.Generator().manual_seed(seed)
        start = time.perf_counter()
        loop = _train_epochs(net, opt, Xt, yt, tr_t, gen, epochs, batch_size, stop_on_nan)
        seconds = time.perf_counter() - start
        same = sum(int((p.detach() == p0).sum()) for p, p0 in zip(params, initial, strict=True))
        total = sum(p.numel() for p in params)
        net.eval()
        with torch.no_grad():
            pred = net(Xt).argmax(dim=1)
            test_acc = float((pred[te_t] == yt[te_t]).double().mean())
            train_acc = float((pred[tr_t] == yt[tr_t]).double().mean())
        runs.append(
            TrainRun(dtype, eps, int(seed), lr, epochs, loop.steps, test_acc, train_acc,
                     loop.loss, loop.nan_step, loop.loss_nan_step, seconds, loop.stopped,
                     optimizer, same / total)
        )  # fmt: skip
    return runs


@dataclass(frozen=True)
class _Loop:
    steps: int
    loss: float
    nan_step: int | None
    loss_nan_step: int | None
    stopped: bool


def _train_epochs(
    net: Any, opt: Any, Xt: Any, yt: Any, tr_t: Any, gen: Any, epochs: int, batch_size: int,
    stop_on_nan: bool,
) -> _Loop:  # fmt: skip
    """The training loop; with ``stop_on_nan`` it stops one step after the parameters
    turn NaN/inf (nothing recovers from NaN weights; that step records the loss going NaN)."""
    import torch
    import torch.nn.functional as F

    params = list(net.parameters())
    step = 0
    nan_step: int | None = None
    loss_nan_step: int | None = None
    loss = torch.tensor(math.nan)
    net.train()
    for _ in range(epochs):
        perm = tr_t[torch.randperm(len(tr_t), generator=gen).to(tr_t.device)]
        for batch in torch.split(perm, batch_size):
            step += 1
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(net(Xt[batch]), yt[batch])
            if loss_nan_step is None and not bool(torch.isfinite(loss)):
                loss_nan_step = step
            loss.backward()
            opt.step()
            if nan_step is None:
                with torch.no_grad():
                    finite = all(bool(torch.isfinite(p).all()) for p in params)
                if not finite:
                    nan_step = step
            # One more step after the parameters broke records the loss going NaN.
            if stop_on_nan and nan_step is not None and (loss_nan_step is not None
                                                         or step > nan_step):  # fmt: skip
                return _Loop(step, float(loss.detach().float()), nan_step, loss_nan_step, True)
    return _Loop(step, float(loss.detach().float()), nan_step, loss_nan_step, False)
