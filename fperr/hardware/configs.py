"""The PyTorch configurations ``fperr validate`` runs, and for each the fperr
arithmetic whose bound must cover it (with the reason, recorded in reports)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any, Literal

from ..arith import Emulated
from ..formats import get_format
from ..layers import Conv2d, Residual
from ..model import Model
from .probe import ProbeResult

Rounding = Literal["nearest", "truncate"]

# Elementwise functions (tanh, exp, erf, sigmoid, GELU) are not correctly
# rounded, and PyTorch's vectorised kernels err far more in the tails (GELU's
# 0.5 x (1 + erf) cancels, bf16 sigmoid near -88): every config leaves
# ``func_ulps`` unset, so its bound uses the allowance measured on the real
# kernels (``fperr kernels``, fperr/data/kernel_allowance.json) -- the same one
# ``fperr bound`` uses.


# -- configurations -----------------------------------------------------------------------------
@dataclass(frozen=True)
class TorchConfig:
    """One way of running a model in PyTorch (the arguments of ``run_torch``)."""

    name: str
    dtype: str
    tf32: bool = False
    autocast: str | None = None
    reduced_precision_reduction: bool | None = None
    tensor_cores: bool = False  # on CUDA: GEMMs on tensor cores (chopping accumulators)
    certify: bool = False  # 16-bit: check the fp16-vs-fp32 certificate against it
    description: str = ""


CONFIGS: dict[str, TorchConfig] = {
    c.name: c
    for c in (
        TorchConfig("float64", "float64", description="the reference: float64 everywhere"),
        TorchConfig("float32", "float32", description="float32, TF32 off (strict IEEE)"),
        TorchConfig("float32_default", "float32",
                    description="float32 with PyTorch's default flags (cuDNN may use TF32)"),
        TorchConfig("tf32", "float32", tf32=True, tensor_cores=True,
                    description="float32 with TF32 allowed for matmuls and convolutions"),
        TorchConfig("float16_red", "float16", reduced_precision_reduction=True,
                    tensor_cores=True, certify=True,
                    description="float16, cuBLAS reduced-precision reduction allowed"),
        TorchConfig("float16", "float16", reduced_precision_reduction=False,
                    tensor_cores=True, certify=True,
                    description="float16, reduced-precision reduction disallowed"),
        TorchConfig("bfloat16", "bfloat16", reduced_precision_reduction=False,
                    tensor_cores=True, certify=True, description="bfloat16"),
        TorchConfig("autocast_float16", "float32", autocast="float16",
                    reduced_precision_reduction=True, tensor_cores=True, certify=True,
                    description="float32 model under torch.autocast(float16), default flags"),
    )
}  # fmt: skip


def _has_conv(layers: Iterable[Any]) -> bool:
    return any(
        isinstance(layer, Conv2d) or (isinstance(layer, Residual) and _has_conv(layer.layers))
        for layer in layers
    )


def _acc_rounding(measured: str | None, device: str, tensor_cores: bool) -> Rounding:
    # docs/hardware.md: tensor cores do not round to nearest inside the accumulation;
    # a chopping model (2 u_acc per addition) unless the probe measured
    # round-to-nearest.  CPU FMA units round to nearest unless the probe saw
    # chopping or directed rounding ("inconclusive": no evidence against it).
    if measured == "nearest":
        return "nearest"
    if device.startswith("cuda") and tensor_cores:
        return "truncate"
    return "nearest" if measured in (None, "inconclusive") else "truncate"


def arithmetic_for(
    config: TorchConfig | str, device: str, probe_result: ProbeResult, model: Model | None = None
) -> tuple[Emulated, str]:
    """The fperr arithmetic whose bound must cover ``config`` on ``device``, and why."""
    c = CONFIGS[config] if isinstance(config, str) else config
    pr = probe_result
    cuda = device.startswith("cuda")
    if c.name == "float32_default" and cuda and model is not None and _has_conv(model.layers):
        # PyTorch's defaults leave cuDNN's TF32 on (torch.backends.cudnn.allow_tf32
        # = True): convolutions run on TF32 tensor cores, so the TF32 model applies.
        arith, why = arithmetic_for(replace(c, name="tf32", tf32=True, tensor_cores=True),
                                    device, pr, model)  # fmt: skip
        return arith, "PyTorch's default cuDNN TF32 for convolutions: " + why
    if c.dtype == "float64":
        # Only the slack: float64 vs exact, any order (MKL/cuBLAS DGEMM round to nearest).
        return Emulated.from_names("binary64", "binary64"), (
            "float64 storage and accumulation: the reference's own error, used as slack"
        )
    if c.dtype == "float32" and c.autocast is None and not c.tf32:
        # Strict float32: SGEMM/SIMD FMA kernels round every operation to nearest.
        rnd = _acc_rounding(pr.rounding.get("float32"), device, False)
        why = "float32 storage, float32 FMA accumulation"
        if c.name == "float32_default":
            why += " (matmul TF32 is off by default" + (
                "; the model has no convolutions for cuDNN's TF32)" if cuda else ")"
            )
        return Emulated.from_names("binary32", "binary32", acc_rounding=rnd), (
            f"{why}, {rnd} (probe: {pr.rounding.get('float32')})"
        )
    if c.tf32:
        # TF32 kernels round (or chop) both GEMM operands to TF32 and accumulate
        # in float32; the TF32 arithmetic bounds both operand roundings with a
        # full TF32 ulp, which covers chopping.  On the CPU the TF32 flags do
        # nothing: the run is plain float32, covered too.
        rnd = _acc_rounding(pr.rounding.get("tf32"), device, c.tensor_cores)
        arith = Emulated.from_names("binary32", "binary32", "tf32", acc_rounding=rnd)
        return arith, (
            f"TF32 operands (probe: {pr.tf32_operand}), chop-safe, float32 accumulation, {rnd}"
        )
    low = c.autocast or c.dtype
    red = bool(c.reduced_precision_reduction)
    key = f"{low}/red={red}"
    storage = get_format(low)
    measured = pr.accumulate.get(key, "unknown")
    if red:
        # Reduced-precision reduction lets cuBLAS reduce split-K partial sums in
        # 16 bits: 16-bit accumulation unless the probe saw fp32 accumulation.
        acc = "binary32" if measured == "binary32" else storage.name
    else:
        # fp32 accumulation (cuBLAS computeType 32F, CPU opmath); a 16-bit
        # accumulator, if the probe saw one, is the model.
        acc = storage.name if measured == storage.name else "binary32"
    rnd = _acc_rounding(pr.rounding.get(key), device, c.tensor_cores)
    what = "autocast " if c.autocast else ""
    return Emulated.from_names(storage, acc, acc_rounding=rnd), (
        f"{what}{storage.name} storage, {acc} accumulation (probe: {measured}), {rnd}"
    )
