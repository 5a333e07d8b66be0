"""The one place fperr touches torch's global state: import, devices, flags.

``require_torch`` imports torch or raises one clear input error;
``resolve_device`` turns "cpu" / "cuda" into a ``torch.device``;
``torch_flags`` sets TF32 and reduced-precision-reduction flags for a block
and restores every global setting it may change, whether or not the block
raised; ``record_flags`` reads them back for a report.  torch is imported
only inside these functions.
"""

from __future__ import annotations

import math
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import FperrInputError

__all__ = ["device_name", "flag_state", "record_flags", "require_torch", "resolve_device",
           "restore_flags", "torch_flags"]  # fmt: skip

_PRECISION_PATHS = ("", "cuda.matmul", "cudnn", "cudnn.conv", "cudnn.rnn", "mkldnn",
                    "mkldnn.matmul", "mkldnn.conv", "mkldnn.rnn")  # fmt: skip
_REDUCTIONS = ("fp16", "bf16")


def require_torch(purpose: str = "running a model in PyTorch") -> Any:
    """torch, or one clear input error saying what needed it."""
    try:
        import torch
    except ImportError:
        raise FperrInputError(f"{purpose} needs torch (pip install torch)") from None
    return torch


def resolve_device(torch: Any, device: str) -> Any:
    """A torch.device for "cpu" or "cuda"; unknown or unavailable devices are input errors."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise FperrInputError(f"unknown device {device!r}; use cpu or cuda") from None
    if dev.type not in ("cpu", "cuda"):
        raise FperrInputError(f"unsupported device {device!r}; use cpu or cuda")
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise FperrInputError(f"device {device!r} requested but torch.cuda.is_available() is False")
    return dev


def _backend(torch: Any, path: str) -> Any:
    obj = torch.backends
    for part in filter(None, path.split(".")):
        obj = getattr(obj, part)
    return obj


def _read(f: Any) -> Any:
    try:
        return f()
    except (RuntimeError, AttributeError):  # mixed legacy/new TF32 APIs, old torch
        return None


def flag_state(torch: Any) -> dict[str, Any]:
    """Every global setting run_torch may change, read without side effects."""
    mm = torch.backends.cuda.matmul
    state: dict[str, Any] = {
        "float32_matmul_precision": _read(torch.get_float32_matmul_precision),
        "cudnn.allow_tf32": _read(lambda: torch.backends.cudnn.allow_tf32),
    }
    for path in _PRECISION_PATHS:
        state[f"fp32_precision:{path}"] = _read(lambda p=path: _backend(torch, p).fp32_precision)
    for r in _REDUCTIONS:
        name = f"allow_{r}_reduced_precision_reduction"
        state[name] = _read(lambda n=name: getattr(mm, n))
        state[name + "_split_k"] = _read(lambda n=name: getattr(mm, n + "_split_k"))
    return state


def restore_flags(torch: Any, state: dict[str, Any]) -> None:
    mm = torch.backends.cuda.matmul
    # The legacy setters write the new-API strings too, so they go first and the
    # strings are put back afterwards.
    if state["float32_matmul_precision"] is not None:
        torch.set_float32_matmul_precision(state["float32_matmul_precision"])
    if state["cudnn.allow_tf32"] is not None:
        torch.backends.cudnn.allow_tf32 = state["cudnn.allow_tf32"]
    for path in _PRECISION_PATHS:
        value = state[f"fp32_precision:{path}"]
        if value is not None:
            _backend(torch, path).fp32_precision = value
    for r in _REDUCTIONS:
        name = f"allow_{r}_reduced_precision_reduction"
        if state[name] is not None:
            split = state[name + "_split_k"]
            setattr(mm, name, state[name] if split is None else (state[name], split))


@contextmanager
def torch_flags(torch: Any, tf32: bool, reduction: bool | None) -> Iterator[None]:
    state = flag_state(torch)
    try:
        # The legacy setters keep the legacy and new TF32 states consistent (a mix
        # makes later reads raise); allow_tf32 also sets float32_matmul_precision.
        torch.backends.cuda.matmul.allow_tf32 = tf32
        torch.backends.cudnn.allow_tf32 = tf32
        if reduction is not None:
            for r in _REDUCTIONS:
                name = f"allow_{r}_reduced_precision_reduction"
                split = state[name + "_split_k"]
                setattr(torch.backends.cuda.matmul, name,
                        reduction if split is None else (reduction, split))  # fmt: skip
        yield
    finally:
        restore_flags(torch, state)



def device_name(torch: Any, dev: Any) -> str:
    if dev.type == "cuda":
        return str(torch.cuda.getdevice_name(dev))
    return platform.processor() or platform.machine() or dev.type




def record_flags(
    torch: Any, dev: Any, dtype: str, tf32: bool, auto: str | None, bs: int, n: int
) -> dict[str, Any]:
    mm = torch.backends.cuda.matmul
    cudnn = torch.backends.cudnn
    return {
        "dtype": dtype,
        "autocast": auto,
        "device": str(dev),
        "device_name": device_name(torch, dev),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cudnn": _read(cudnn.version) if dev.type == "cuda" else None,
        "tf32": tf32,
        "tf32_capable": dev.type == "cuda" and torch.cuda.get_device_capability(dev)[0] >= 8,
        "tf32_matmul": _read(lambda: mm.allow_tf32),
        "tf32_cudnn": _read(lambda: cudnn.allow_tf32),
        "float32_matmul_precision": _read(torch.get_float32_matmul_precision),
        "fp16_reduced_precision_reduction": _read(
            lambda: mm.allow_fp16_reduced_precision_reduction
        ),
        "bf16_reduced_precision_reduction": _read(
            lambda: mm.allow_bf16_reduced_precision_reduction
        ),
        "fp16_accumulation": _read(lambda: mm.allow_fp16_accumulation),
        "cudnn_deterministic": bool(cudnn.deterministic),
        "batch_size": bs,
        "n_inputs": n,
        "n_batches": math.ceil(n / bs) if bs else 0,
    }
