"""Layout ops and attention shared by both torch front ends (fx and ``torch.export``).

- axis moves of one value: ``transpose(a, b)``, ``permute(dims)``, ``.mT`` as the
  registry's ``permute`` operator on the per-input axes (the batch axis, 0, must
  stay where it is: an import computes per input);
- static sizes: ``x.shape[i]`` / ``x.size(i)`` for i >= 1 read as the integer the
  module computes with the given ``input_shape`` (:func:`annotate_static`);
- ``scaled_dot_product_attention`` (no mask, no dropout, not causal) in its math
  form: ``matmul(q, k^T)``, ``scale`` by ``1 / sqrt(d)`` (or the given ``scale``),
  ``softmax`` along the last axis, ``matmul`` with v.

The SDPA decomposition scales the scores once, after the product, as the
encoder-layer expansion of :mod:`.torch_attention` does.  torch 2.13's math
kernel (``_scaled_dot_product_attention_math``) instead scales q and k each by
``sqrt(scale)`` = d^(-1/4) before the product, and its CPU flash kernel (what a
float16/bfloat16 CPU run takes) multiplies the float32 scores by ``scale``
inside the kernel; all three are q k^T / sqrt(d) in exact arithmetic (so the
float64 import check holds), and for d a power of 4 (d^(-1/4) a power of two)
the math kernel's two scalings are exact too.  The bound is for the decomposed
form; the tests measure torch's CPU kernel in float16 against it.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from typing import Any

from ..errors import SpecError
from ..layers import Layer, Shape, Softmax
from ..operators import REGISTRY
from .graph import Build, _Op, _Unsupported

STATIC_KEY = "fperr_static"  # fx node.meta key: the int a shape query evaluates to


# -- axis moves --------------------------------------------------------------------------------
def _axis(d: int, nd: int, what: str) -> int:
    if not -nd <= d < nd:
        raise SpecError(f"{what}: dim {d} out of range for {nd} dims (batch included)")
    return d % nd


def _permute_layers(axes: Sequence[int]) -> list[Layer]:
    """A permute of the per-input axes; nothing for the identity."""
    axes = tuple(int(a) for a in axes)
    if axes == tuple(range(len(axes))):
        return []
    return [REGISTRY["permute"](axes)]  # type: ignore[call-arg]


def transpose_build(a: int, b: int) -> Build:
    """``x.transpose(a, b)`` (torch's dims, batch dim 0) on a batch of inputs."""

    def build(shape: Shape) -> list[Layer]:
        nd = len(shape) + 1
        i, j = _axis(int(a), nd, "transpose"), _axis(int(b), nd, "transpose")
        if 0 in (i, j) and i != j:
            raise SpecError(f"transpose({a}, {b}) moves the batch axis; only per-input axes "
                            "can be transposed")  # fmt: skip
        axes = list(range(len(shape)))
        if i != j:
            axes[i - 1], axes[j - 1] = axes[j - 1], axes[i - 1]
        return _permute_layers(axes)

    return build


def permute_build(dims: Sequence[int]) -> Build:
    """``x.permute(dims)`` (torch's dims, batch dim 0): dim 0 must stay first."""

    def build(shape: Shape) -> list[Layer]:
        nd = len(shape) + 1
        if len(dims) != nd:
            raise SpecError(f"permute {list(dims)} of inputs {list(shape)} (batch dim 0)")
        d = [_axis(int(v), nd, "permute") for v in dims]
        if sorted(d) != list(range(nd)):
            raise SpecError(f"permute {list(dims)} is not a permutation")
        if d[0] != 0:
            raise SpecError(f"permute {list(dims)} moves the batch axis")
        return _permute_layers([v - 1 for v in d[1:]])

    return build


def constant_dims(dims: Any) -> tuple[int, ...]:
    """``permute(*dims)`` / ``permute(dims)`` arguments as ints (_Unsupported otherwise)."""
    if len(dims) == 1 and isinstance(dims[0], Sequence):
        dims = dims[0]
    if not all(isinstance(d, int) for d in dims):
        raise _Unsupported("dims are not constants")
    return tuple(int(d) for d in dims)


# -- static sizes (fx) -------------------------------------------------------------------------
def annotate_static(gm: Any, input_shape: Sequence[int]) -> None:
    """Run the fx graph once on zeros of ``(2, *input_shape)`` in eval mode and record,
    on each node that evaluates to an int (an item of a shape query), that int in
    ``node.meta[STATIC_KEY]``; with tensors, their per-input shape in
    ``node.meta["fperr_shape"]``.  Failures leave the graph unannotated (the
    converters then refuse non-constant sizes, as before)."""
    import torch
    import torch.fx as fx

    class Recorder(fx.Interpreter):
        def run_node(self, n: Any) -> Any:
            result = super().run_node(n)
            if isinstance(result, int) and not isinstance(result, bool):
                n.meta[STATIC_KEY] = int(result)
            elif isinstance(result, torch.Tensor) and result.dim() >= 1:
                n.meta["fperr_shape"] = tuple(int(d) for d in result.shape[1:])
            return result

    modes = [(m, m.training) for m in gm.modules()]
    gm.eval()
    try:
        with torch.no_grad():
            Recorder(gm).run(torch.zeros(2, *(int(d) for d in input_shape)))
    except Exception:  # noqa: BLE001 - any failure: no static sizes, the import says why later
        for n in gm.graph.nodes:
            n.meta.pop(STATIC_KEY, None)
            n.meta.pop("fperr_shape", None)
    finally:
        for m, mode in modes:
            m.training = mode


def static_int(node: Any, what: str) -> int:
    """The int an fx shape-query node evaluates to (see :func:`annotate_static`)."""
    value = getattr(node, "meta", {}).get(STATIC_KEY)
    if value is None:
        raise _Unsupported(f"{what}: non-constant dimensions (pass input_shape)")
    return int(value)


# -- scaled dot-product attention --------------------------------------------------------------
def _last_two(shape: Shape) -> list[Layer]:
    if len(shape) < 2:
        raise SpecError(f"attention: k of per-input shape {list(shape)} has no (T, d) axes")
    axes = list(range(len(shape)))
    axes[-1], axes[-2] = axes[-2], axes[-1]
    return _permute_layers(axes)


def sdpa_ops(
    label: str, q: Hashable, k: Hashable, v: Hashable, out: Hashable, factor: float
) -> list[_Op]:
    """The math form of ``scaled_dot_product_attention(q, k, v)`` as ops: scores
    ``matmul(q, k^T)`` times ``factor``, softmax along the last axis, ``matmul``
    with v (see the module docstring for the choice of where to scale)."""
    matmul, scale = REGISTRY["matmul"], REGISTRY["scale"]  # type: Any, Any

    def tag(t: str) -> Hashable:
        return (out, t)

    return [
        _Op(f"{label}.kT", (k,), tag("kT"), _last_two),
        _Op(f"{label}.scores", (q, tag("kT")), tag("qk"), merge=lambda s: matmul()),
        _Op(f"{label}.scale", (tag("qk"),), tag("scores"), lambda s: [scale(factor)]),
        _Op(f"{label}.softmax", (tag("scores"),), tag("probs"), lambda s: [Softmax(axis=-1)]),
        _Op(f"{label}.context", (tag("probs"), v), out, merge=lambda s: matmul()),
    ]


def sdpa_factor(scale: Any, head_dim: int) -> float:
    """torch's default scale 1 / sqrt(d), or the given constant."""
    if scale is None:
        return 1.0 / math.sqrt(head_dim)
    if not isinstance(scale, int | float) or isinstance(scale, bool):
        raise _Unsupported("scale is not a constant")
    return float(scale)


def sdpa_options(mask: Any, dropout_p: Any, is_causal: Any, enable_gqa: Any) -> None:
    """Refuse what the decomposition does not compute."""
    if mask is not None:
        raise _Unsupported("attn_mask")
    if dropout_p not in (0, 0.0):
        raise _Unsupported(f"dropout_p={dropout_p} (random in every mode)")
    if is_causal:
        raise _Unsupported("is_causal=True")
    if enable_gqa:
        raise _Unsupported("enable_gqa=True")


def power_of_two(c: Any) -> bool:
    """Whether ``c`` is a finite nonzero float whose reciprocal is exact (2^k): then
    x / c and x * (1 / c) are the same rounded value in every format."""
    if not isinstance(c, int | float) or isinstance(c, bool) or not math.isfinite(c) or c == 0:
        return False
    m, _ = math.frexp(abs(float(c)))
    return m == 0.5
