"""Self-attention modules of PyTorch as graphs of fperr operators.

``torch.fx`` cannot trace into ``nn.MultiheadAttention``,
``nn.TransformerEncoderLayer`` or ``nn.TransformerEncoder`` (their forwards
branch on tensor properties), so the tracer keeps them as leaf modules
(:func:`attention_leaves`) and each is expanded here into the operators its
eval-mode forward computes (``F.multi_head_attention_forward``):

- the packed input projection, one ``linear`` (T, D) -> (T, 3D), then q, k, v
  as ``slice``s, reshaped to heads (``reshape``, ``permute``: (H, T, dh), k as
  (H, dh, T));
- ``need_weights=True`` (the module's default): q scaled by sqrt(1/dh), then
  ``matmul`` q k^T; ``need_weights=False`` (what the encoder layer asks for:
  ``scaled_dot_product_attention``, whose math form is q k^T times 1/sqrt(dh)):
  ``matmul`` then ``scale``;
- ``softmax`` along the last axis, ``matmul`` with v, heads joined back, and
  the output projection ``linear``.

Bounds of this graph hold for any kernel whose every step errs within the
model of its operator; a fused kernel (flash attention on the CPU, the
"fast path" of ``torch._native_multi_head_attention`` that eval mode takes)
keeps intermediate values in float32 and rounds fewer times, which the
model allows, but its online softmax is not the one the softmax rule was
measured on.  fperr's own torch runs never take it (its executor runs the
imported operators, not ``nn.MultiheadAttention``); the users' eval-mode runs
do, and the tests measure it on the CPU (float16, bfloat16: largest error 0.09
of the bound, rounding differently from the unfused modules) as they measure
SDPA's CPU kernel.  CUDA's fused kernels are not yet measured.

Only batch-first self-attention without masks is imported (``query``,
``key`` and ``value`` one tensor; no ``attn_mask``, ``key_padding_mask``,
``is_causal``, ``bias_k``/``bias_v`` or ``add_zero_attn``); anything else is
refused with the reason.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from typing import Any

from ..layers import Activation, Layer, LayerNorm, Reshape, Shape, Softmax
from ..operators import REGISTRY
from .graph import Array, _Op, _Unsupported


def attention_leaves() -> tuple[type, ...]:
    """Module classes the fx tracer keeps whole (expanded by :func:`attention_ops`)."""
    from torch import nn

    return (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerEncoder)


def _np(t: Any) -> Array | None:
    from .from_torch import _np as to_np

    return to_np(t)


def _value(base: Hashable, tag: str) -> Hashable:
    """A value inside an expanded module (never an fx node, so never read outside)."""
    return (base, tag)


class _Builder:
    """Collects the ops of one expansion; values are fx nodes or synthetic keys."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.ops: list[_Op] = []

    def chain(self, x: Hashable, out: Hashable, name: str, layers: Any) -> Hashable:
        """``layers`` (a list, or a function of the input shape) applied to ``x``."""
        build = layers if callable(layers) else (lambda shape, ls=list(layers): list(ls))
        self.ops.append(_Op(f"{self.label}.{name}", (x,), out, build))
        return out

    def merge(self, xs: tuple[Hashable, ...], out: Hashable, name: str, layer: Any) -> Hashable:
        if layer is None:  # an add of two values: the graph's Add
            self.ops.append(_Op(f"{self.label}.{name}", xs, out))
        else:
            self.ops.append(_Op(f"{self.label}.{name}", xs, out, merge=lambda shapes: layer))
        return out


def _linear(w: Any, b: Any) -> Layer:
    return REGISTRY["linear"](_np(w), _np(b))  # type: ignore[call-arg]


def _heads(shape: Shape, h: int, axes: tuple[int, ...], start: int, d: int) -> list[Layer]:
    """(T, 3D) -> one of q, k, v per head: slice, (T, H, dh), permuted to ``axes``."""
    t = shape[0]
    return [REGISTRY["slice"](-1, start, start + d), Reshape((t, h, d // h)),  # type: ignore[call-arg]
            REGISTRY["permute"](axes)]  # type: ignore[call-arg]  # fmt: skip


def mha_ops(b: _Builder, mod: Any, x: Hashable, out: Hashable, need_weights: bool) -> Hashable:
    """Append the ops of ``mod`` (an ``nn.MultiheadAttention``) on ``x``; returns ``out``."""
    if not mod.batch_first:
        raise _Unsupported("batch_first=False (fperr's batch axis is the first)")
    if not mod._qkv_same_embed_dim or mod.in_proj_weight is None:
        raise _Unsupported("separate q/k/v projection weights")
    if mod.bias_k is not None or mod.add_zero_attn:
        raise _Unsupported("bias_k/bias_v or add_zero_attn")
    d, h = int(mod.embed_dim), int(mod.num_heads)
    dh = d // h
    proj = b.chain(x, _value(out, "proj"), "in_proj", [_linear(mod.in_proj_weight,
                                                               mod.in_proj_bias)])  # fmt: skip
    q = b.chain(proj, _value(out, "q"), "q", lambda s: _heads(s, h, (1, 0, 2), 0, d))
    k = b.chain(proj, _value(out, "k"), "k", lambda s: _heads(s, h, (1, 2, 0), d, d))
    v = b.chain(proj, _value(out, "v"), "v", lambda s: _heads(s, h, (1, 0, 2), 2 * d, d))
    matmul, scale = REGISTRY["matmul"], REGISTRY["scale"]  # type: Any, Any
    if need_weights:  # F.multi_head_attention_forward: q * sqrt(1 / dh), then bmm
        q = b.chain(q, _value(out, "q_scaled"), "scale", [scale(math.sqrt(1.0 / dh))])
        scores = b.merge((q, k), _value(out, "scores"), "scores", matmul())
    else:  # scaled_dot_product_attention's math form: (q k^T) * (1 / sqrt(dh))
        raw = b.merge((q, k), _value(out, "qk"), "scores", matmul())
        scores = b.chain(raw, _value(out, "scores"), "scale", [scale(1.0 / math.sqrt(dh))])
    probs = b.chain(scores, _value(out, "probs"), "softmax", [Softmax(axis=-1)])
    ctx = b.merge((probs, v), _value(out, "context"), "context", matmul())
    return b.chain(ctx, out, "out_proj", lambda s: [
        REGISTRY["permute"]((1, 0, 2)), Reshape((s[1], d)),  # type: ignore[call-arg]
        _linear(mod.out_proj.weight, mod.out_proj.bias)])  # fmt: skip


def _activation(mod: Any) -> Layer:
    import torch.nn.functional as F
    from torch import nn

    act = mod.activation
    if act is F.relu or isinstance(act, nn.ReLU):
        return Activation("relu")
    if act is F.gelu or (isinstance(act, nn.GELU) and act.approximate == "none"):
        return Activation("gelu")
    if isinstance(act, nn.GELU) and act.approximate == "tanh":
        return Activation("gelu_tanh")
    raise _Unsupported(f"activation {getattr(act, '__name__', type(act).__name__)}")


def _norm(mod: Any) -> Layer:
    return LayerNorm(tuple(mod.normalized_shape), _np(mod.weight), _np(mod.bias), float(mod.eps))


def encoder_layer_ops(b: _Builder, mod: Any, x: Hashable, out: Hashable) -> Hashable:
    """``nn.TransformerEncoderLayer`` in eval mode: pre-norm (``norm_first``)
    x + sa(ln1(x)), then + ff(ln2(.)); post-norm ln1(x + sa(x)), then ln2(. + ff(.))."""
    if not mod.self_attn.batch_first:
        raise _Unsupported("batch_first=False (fperr's batch axis is the first)")
    act = _activation(mod)

    def sa(v: Hashable, tag: str) -> Hashable:
        return mha_ops(b, mod.self_attn, v, _value(out, tag), need_weights=False)

    def ff(v: Hashable, tag: str) -> Hashable:
        return b.chain(v, _value(out, tag), tag, [
            _linear(mod.linear1.weight, mod.linear1.bias), act,
            _linear(mod.linear2.weight, mod.linear2.bias)])  # fmt: skip

    if mod.norm_first:
        n1 = b.chain(x, _value(out, "norm1"), "norm1", [_norm(mod.norm1)])
        h = b.merge((x, sa(n1, "sa")), _value(out, "res1"), "add1", None)
        n2 = b.chain(h, _value(out, "norm2"), "norm2", [_norm(mod.norm2)])
        return b.merge((h, ff(n2, "ff")), out, "add2", None)
    h = b.merge((x, sa(x, "sa")), _value(out, "res1"), "add1", None)
    h = b.chain(h, _value(out, "norm1"), "norm1", [_norm(mod.norm1)])
    s = b.merge((h, ff(h, "ff")), _value(out, "res2"), "add2", None)
    return b.chain(s, out, "norm2", [_norm(mod.norm2)])


def attention_ops(mod: Any, node: Any, label: str) -> list[_Op]:
    """The ops of a leaf attention module's call node (its output value: ``node``)."""
    from torch import nn

    b = _Builder(label)
    if isinstance(mod, nn.MultiheadAttention):
        q, k, v = (node.args + (None,) * 3)[:3]
        k = node.kwargs.get("key", k)
        v = node.kwargs.get("value", v)
        q = node.kwargs.get("query", q)
        if not (q is k is v):
            raise _Unsupported("query, key and value must be one tensor (self-attention)")
        for arg in ("key_padding_mask", "attn_mask"):
            if node.kwargs.get(arg) is not None:
                raise _Unsupported(arg)
        if node.kwargs.get("is_causal") or len(node.args) > 3:
            raise _Unsupported("positional options or is_causal")
        mha_ops(b, mod, q, node, bool(node.kwargs.get("need_weights", True)))
        return b.ops
    if any(node.kwargs.get(a) is not None for a in ("mask", "src_mask", "src_key_padding_mask")
           ) or len(node.args) > 1 or node.kwargs.get("is_causal"):  # fmt: skip
        raise _Unsupported("masks")
    x = node.args[0] if node.args else node.kwargs.get("src")
    if isinstance(mod, nn.TransformerEncoderLayer):
        encoder_layer_ops(b, mod, x, node)
        return b.ops
    layers = list(mod.layers)
    for i, layer in enumerate(layers):  # nn.TransformerEncoder: its layers, then its norm
        last = i == len(layers) - 1 and mod.norm is None
        b.label = f"{label}.layers.{i}"
        x = encoder_layer_ops(b, layer, x, node if last else _value(node, f"layer{i}"))
    b.label = label
    if mod.norm is not None:
        b.chain(x, node, "norm", [_norm(mod.norm)])
    return b.ops
