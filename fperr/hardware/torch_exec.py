"""Run an IR model in PyTorch: the real-hardware counterpart of the emulation.

:func:`to_torch` builds an ``nn.Module`` from a :class:`~fperr.model.Model`
(an ``nn.Sequential`` for a chain; for a graph model, a module whose forward
evaluates its nodes in order, each reading the outputs its wiring names);
:func:`run_torch` runs a batch through it in float64, float32 (TF32 on or
off), float16, bfloat16 or under autocast, on the CPU or a CUDA device, and
returns a :class:`TorchRun`: the outputs as float64 plus a record of every
setting that decides the rounding (dtype, device, versions, TF32 and
reduced-precision-reduction flags, batch size).

Every global torch flag :func:`run_torch` changes is restored when it
returns, whether or not it raised.  torch is imported inside the functions.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import numpy.typing as npt

from ..errors import FperrInputError
from ..layers import (
    Layer,
    Residual,
    Shape,
    is_merge,
)
from ..model import Model, check_inputs
from ..operators import Operator
from ..rounding import round as fround
from .torch_env import record_flags, require_torch, resolve_device, torch_flags

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["DTYPES", "TorchRun", "run_torch", "to_torch"]

Array = npt.NDArray[np.float64]
DTYPES: tuple[str, ...] = ("float64", "float32", "float16", "bfloat16")


# -- IR -> nn.Module ---------------------------------------------------------------------------
def float64_parameter(a: Array) -> Any:
    """``a`` as a float64 ``nn.Parameter`` (moved with its module's dtype and device)."""
    torch = require_torch()
    return torch.nn.Parameter(torch.from_numpy(np.array(a, np.float64)))


def _module(layer: Layer, shape: Shape) -> torch.nn.Module:
    """The nn.Module of one IR layer whose per-input input shape is ``shape``: an
    operator's own (:meth:`~fperr.operators.Operator.torch_module`), or a residual
    block's x + body(x)."""
    torch = require_torch()
    base: Any = torch.nn.Module

    class ResidualModule(base):
        def __init__(self, body: Any) -> None:
            super().__init__()
            self.body = body

        def forward(self, x: Any) -> Any:
            return x + self.body(x)

    if isinstance(layer, Residual):
        return ResidualModule(_sequential(layer.layers, shape))
    if isinstance(layer, Operator):
        return layer.torch_module([shape])
    raise FperrInputError(f"layer type {layer.type!r} has no torch module")


def operator_module(op: Operator) -> Any:
    """A registered operator as a module: its parameters as float64 ``nn.Parameter``s
    (moved with the module's dtype and device), its forward from ``torch_forward``."""
    torch = require_torch()
    base: Any = torch.nn.Module

    class OperatorModule(base):
        def __init__(self) -> None:
            super().__init__()
            self.op = op
            self.params = torch.nn.ParameterDict(
                {k: float64_parameter(v) for k, v in op.torch_parameters().items()}
            )

        def forward(self, *xs: Any) -> Any:
            return self.op.torch_forward(list(xs), dict(self.params.items()))

        def extra_repr(self) -> str:
            return repr(self.op)

    return OperatorModule()


def _sequential(layers: tuple[Layer, ...], shape: Shape) -> torch.nn.Sequential:
    torch = require_torch()
    mods = []
    for layer in layers:
        mods.append(_module(layer, shape))
        shape = layer.out_shape(shape)
    return torch.nn.Sequential(*mods)


_TORCH_FORMATS = {"float16": "binary16", "bfloat16": "bfloat16", "float32": "binary32"}


def _graph_module(model: Model) -> torch.nn.Module:
    """A graph model as one module: per-node modules in an ``nn.ModuleList``, evaluated
    in the model's (topological) order, each reading the outputs ``model.inputs_of`` names."""
    torch = require_torch()
    base: Any = torch.nn.Module
    shapes = model.shapes()
    wiring = tuple(model.inputs_of(i) for i in range(len(model.layers)))
    nodes = [
        cast(Operator, layer).torch_module([shapes[j + 1] for j in ins]) if is_merge(layer)
        else _module(layer, shapes[ins[0] + 1])
        for layer, ins in zip(model.layers, wiring, strict=True)
    ]  # fmt: skip
    # the last node reading each value (-1: the input): values are dropped after it
    last = {j: i for i, ins in enumerate(wiring) for j in ins}

    class GraphModule(base):
        def __init__(self) -> None:
            super().__init__()
            self.nodes = torch.nn.ModuleList(nodes)
            self.wiring = wiring

        def forward(self, x: Any) -> Any:
            vals: dict[int, Any] = {-1: x}
            for i, (node, ins) in enumerate(zip(self.nodes, self.wiring, strict=True)):
                vals[i] = node(*(vals[j] for j in ins))
                for j in set(ins):  # a node may read one value twice (x + x)
                    if last[j] == i:
                        del vals[j]
            return vals[len(self.wiring) - 1]

        def extra_repr(self) -> str:
            return f"wiring={list(map(list, self.wiring))}"

    return GraphModule()


def to_torch(model: Model) -> torch.nn.Module:
    """A module in float64, eval mode, computing ``model.forward``: an ``nn.Sequential``
    for a chain, a module evaluating the nodes by the wiring for a graph model."""
    net: torch.nn.Module
    if model.is_graph:
        net = _graph_module(model)
    else:
        net = _sequential(model.layers, tuple(model.input_shape))
    net.eval()
    net.requires_grad_(False)
    return net


# -- running -----------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TorchRun:
    """Outputs of a PyTorch run (as float64) and the settings that produced them."""

    outputs: Array
    flags: dict[str, Any] = field(default_factory=dict)

    @property
    def predictions(self) -> npt.NDArray[np.int64]:
        return np.asarray(self.outputs.reshape(len(self.outputs), -1).argmax(axis=1))

    def _summary(self) -> str:
        f = self.flags
        mode = f.get("dtype", "?")
        if f.get("autocast"):
            mode = f"autocast {f['autocast']}"
        if f.get("dtype") == "float32" and f.get("tf32"):
            mode += " (TF32)"
        return f"{mode} on {f.get('device_name') or f.get('device', '?')}"

    def __repr__(self) -> str:
        shape = "x".join(map(str, self.outputs.shape))
        return f"TorchRun({self._summary()}, outputs {shape}, torch {self.flags.get('torch')})"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{html.escape(str(k))}</th>"
            f"<td style='text-align:left'>{html.escape(str(v))}</td></tr>"
            for k, v in self.flags.items()
        )
        shape = " &times; ".join(map(str, self.outputs.shape))
        return (
            f"<div><b>TorchRun</b>: {html.escape(self._summary())}, outputs {shape}"
            f"<table>{rows}</table></div>"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the flags, the output shape and the outputs as nested lists."""
        return {
            "flags": dict(self.flags),
            "shape": list(self.outputs.shape),
            "outputs": self.outputs.tolist(),
        }


def run_torch(
    model: Model,
    X: npt.ArrayLike,
    dtype: str = "float32",
    device: str = "cpu",
    tf32: bool = False,
    autocast: bool | str = False,
    reduced_precision_reduction: bool | None = None,
    batch_size: int | None = None,
) -> TorchRun:
    """Run ``model`` on ``X`` in PyTorch and record how.

    ``dtype``: parameters and activations in float64, float32, float16 or
    bfloat16.  ``tf32``: allow TF32 tensor cores for float32 matmuls and
    convolutions (``torch.backends.cuda.matmul.allow_tf32`` and
    ``torch.backends.cudnn.allow_tf32``; both are set, to False too, since
    cuDNN defaults to True).  ``autocast``: run a float32 model under
    ``torch.autocast`` (True: float16 on CUDA, bfloat16 on the CPU; or a
    dtype name).  ``reduced_precision_reduction``: set cuBLAS'
    ``allow_fp16/bf16_reduced_precision_reduction`` (None leaves them).
    ``batch_size``: run in chunks of this many inputs (default: all at once).
    Outputs come back as float64; ``flags`` records every setting.
    """
    torch = require_torch()
    if dtype not in DTYPES:
        raise FperrInputError(f"unknown dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    dev = resolve_device(torch, device)
    auto: str | None = None
    if autocast:
        auto = autocast if isinstance(autocast, str) else (
            "float16" if dev.type == "cuda" else "bfloat16")  # fmt: skip
        if auto not in ("float16", "bfloat16"):
            raise FperrInputError(f"autocast dtype must be float16 or bfloat16, not {auto!r}")
        if dtype != "float32":
            raise FperrInputError(f"autocast runs a float32 model; got dtype={dtype!r}")
    x = check_inputs(X, model.input_shape)
    n = x.shape[0]
    if batch_size is not None and batch_size < 1:
        raise FperrInputError(f"batch_size must be positive, got {batch_size}")
    bs = n if batch_size is None else min(batch_size, max(n, 1))

    tdtype = getattr(torch, dtype)
    # torch converts float64 to float16/bfloat16 through float32 (rounding
    # twice); round once with fperr first so the conversion is exact.
    fmt = _TORCH_FORMATS.get(dtype)
    if fmt is not None:
        x = fround(x, fmt)
    net = to_torch(model)
    if fmt is not None:
        with torch.no_grad():
            for p in list(net.parameters()) + list(net.buffers()):
                if p.is_floating_point():
                    p.copy_(torch.from_numpy(fround(p.detach().cpu().numpy(), fmt)))
    net = net.to(device=dev, dtype=tdtype)
    outs: list[Array] = []
    with torch_flags(torch, tf32, reduced_precision_reduction), torch.inference_mode():
        flags = record_flags(torch, dev, dtype, tf32, auto, bs, n)
        for i in range(0, n, max(bs, 1)):
            xb = torch.from_numpy(x[i : i + bs]).to(device=dev, dtype=tdtype)
            if auto is not None:
                with torch.autocast(dev.type, dtype=getattr(torch, auto)):
                    y = net(xb)
            else:
                y = net(xb)
            outs.append(y.to(dtype=torch.float64).cpu().numpy())
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
    out_shape = (0, *model.output_shape)
    outputs = np.concatenate(outs) if outs else np.empty(out_shape)
    return TorchRun(np.asarray(outputs, dtype=np.float64), flags)
