"""Check an imported model against the PyTorch module it came from.

``torch.fx`` records what the module's Python code calls, which is not always
what the module computes: ``y += z`` is recorded as ``y + z`` although torch
writes into ``y``'s storage (and so into every view of it), forward hooks
do not run while tracing, and a random op traced as a call looks deterministic.
So after the import both are run on the same random inputs, the module as a
float64 copy in eval mode, the imported model with exact (float64) arithmetic;
they must agree to float64 rounding.  This catches what no static rule names;
the static rules (torch_alias, the dropout and batch norm checks) come first
so that the usual cases get a message naming the op.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from ..errors import SpecError
from ..model import Model

# Normwise relative agreement required.  Float64 evaluation in two orders differs by
# about n * 2^-53 times the condition number; every mismatch the check exists for
# (an overwritten value, a dropped unit) is of the order of the outputs themselves.
RTOL = 1e-8
BATCH = 3


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def torch_float64_eval(module: Any, x: np.ndarray, name: str) -> np.ndarray:
    """The module's eval-mode output on ``x``, computed by a float64 copy of it."""
    import torch

    try:
        ref = copy.deepcopy(module).double().eval()
    except Exception as exc:  # deepcopy failures have many types
        raise SpecError(
            f"{name}: cannot copy the module to check the import ({_first_line(exc)}); "
            "pass check=False to skip the check"
        ) from None
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            y = ref(torch.from_numpy(x.copy()))  # a copy: an in-place first op may write it
    except Exception as exc:  # the module's own errors
        raise SpecError(
            f"{name}: running the module in float64 to check the import failed "
            f"({_first_line(exc)}); pass check=False to skip the check"
        ) from None
    if not isinstance(y, torch.Tensor):
        raise SpecError(f"{name}: the module returned {type(y).__name__}, not a tensor")
    return np.asarray(y.detach().cpu().numpy(), dtype=np.float64)


def mismatch(got: np.ndarray, want: np.ndarray) -> tuple[float, float] | None:
    """(max |got - want|, the same relative to max |want|) if they disagree, else None."""
    if got.shape != want.shape:
        return (float("inf"), float("inf"))
    finite = np.isfinite(want)
    scale = float(np.abs(want[finite]).max()) if finite.any() else 0.0
    with np.errstate(invalid="ignore"):
        same = np.isclose(got, want, rtol=0.0, atol=RTOL * scale, equal_nan=True)
    if same.all():
        return None
    diff = np.abs(got - want)
    worst = float(np.nanmax(np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))))
    return worst, worst / scale if scale > 0 else float("inf")


def check_against_torch(module: Any, model: Model, name: str, seed: int = 0) -> None:
    """Raise SpecError unless ``model`` computes what ``module`` computes in eval mode."""
    rng = np.random.default_rng(seed)
    x: np.ndarray = rng.standard_normal((BATCH, *model.input_shape))
    readers = [model.layers[i] for i in range(len(model.layers)) if -1 in model.inputs_of(i)]
    if readers and all(layer.type == "embedding" for layer in readers):  # token ids
        vocab = min(int(layer.weight.shape[0]) for layer in readers)  # type: ignore[attr-defined]
        x = rng.integers(0, vocab, (BATCH, *model.input_shape))  # int64: torch's long ids
    want = torch_float64_eval(module, x, name)
    got = model.forward(x)
    bad = mismatch(got, want)
    if bad is not None:
        diff, rel = bad
        raise SpecError(
            f"{name}: the imported model differs from what the module computes in eval mode "
            f"(float64, random inputs): max |difference| {diff:.3g}, relative {rel:.3g}; "
            "torch.fx does not record some of what the module does (an in-place update "
            "such as y += z on a value that is read again, a forward hook, a random op): "
            "rewrite it out of place"
        )
