"""matmul: the product of two activations (attention's Q K^T and P V).

Inputs A (..., m, k) and B (..., k, n) with equal leading dimensions (no
broadcasting): per input and leading index, m n dot products of length k,
accumulated in the accumulator and stored (as a dense layer without weights).

Both operands carry error.  With computed A^, B^ and radii rA, rB (the exact
values and every run lie within r of each other: |e_A| <= rA for e_A = A_exact
- A_run), for any run (A_run = A^ + a2) and the exact inputs (A^ + a1),

    A_ex B_ex - A_run B_run = e_A B^ + A^ e_B + (a1 e_B + e_A b1 - e_A e_B),

(a2 = a1 - e_A, b2 = b1 - e_B), so the step's linear part is the pair of maps
(e_A -> e_A B^, e_B -> A^ e_B) and the bilinear remainder is at most
|a1||e_B| + |e_A||b1| + |e_A||e_B| <= 3 rA rB, a deterministic box (it is
rA rB only for the computed run itself, a2 = b2 = 0).  The rounding of the
product is :func:`fperr.bounds.rules.affine_local` with |W||x| replaced by
(|A^| + 2 rA)(|B^| + 2 rB): gamma_k(u_acc) for the accumulation in any order
(Higham 2002, Lemma 3.1 and eq. 3.11), the underflow terms, and the storage
rounding of any run's sum.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..errors import SpecError
from .base import Array, Operator, OperatorSpec, Shape, Weights, register

if TYPE_CHECKING:
    from ..arith import Arithmetic
    from ..bounds.rules import Context
    from ..bounds.steps import Step
    from ..model import Model


class MatMulSpec(OperatorSpec):
    type: Literal["matmul"]


def batched_matmul(a: Array, b: Array, arith: Arithmetic) -> Array:
    """a (N, ..., m, k) @ b (N, ..., k, n) in ``arith``, one 2-D product per batch
    element and leading index (:meth:`fperr.arith.Emulated.matmul` takes one
    shared 2-D right operand, so each pair is its own call)."""
    lead = a.shape[:-2]
    m, n = a.shape[-2], b.shape[-1]
    a2 = a.reshape(-1, *a.shape[-2:])
    b2 = b.reshape(-1, *b.shape[-2:])
    out = np.empty((a2.shape[0], m, n))
    for i in range(a2.shape[0]):
        out[i] = arith.matmul(a2[i], b2[i])
    return out.reshape(*lead, m, n)


@register
class MatMul(Operator):
    type = "matmul"
    Spec = MatMulSpec
    arity = 2
    sharpen = 0.02  # the remainder |dA||dB| is second order in the ranges (as backward.SHARPEN)

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        """Two heads of scores (q k^T) of 4 tokens of 6 features: q and k are 1x1
        convolutions of the input (both carry error), k is transposed by permute."""
        from ..layers import Conv2d, Dense, Flatten
        from ..model import Model
        from .permute import Permute

        def proj() -> Conv2d:
            return Conv2d(rng.normal(size=(2, 2, 1, 1)), rng.normal(size=2) * 0.1)

        layers = (proj(), proj(), Permute((0, 2, 1)), cls(), Flatten(),
                  Dense(rng.normal(size=(3, 32)) / 6, rng.normal(size=3) * 0.1))  # fmt: skip
        wiring = ((-1,), (-1,), (1,), (0, 2), (3,), (4,))
        names = ("q", "k", "kt", "scores", "flat", "out")
        return Model("matmul", (2, 4, 6), layers, wiring=wiring, names=names)

    # x @ W with a 2-D parameter W is the linear operator with W^T (by the operands,
    # as ONNX MatMul of a weight is dense): declared here, on a @ b of two values
    fx_functions = ("operator.matmul", "torch.matmul", "torch.bmm")
    fx_methods = ("matmul",)
    aten_ops = ("aten.matmul", "aten.bmm")

    @classmethod
    def from_fx(cls, node: Any, label: str, params: Any) -> Any:
        """a @ b, torch.matmul, torch.bmm, a.matmul(b) of two computed values."""
        from torch.fx import Node

        from ..importers.builders import _const
        from ..importers.from_torch import _arg, _unary
        from ..importers.graph import _Op, _Unsupported
        from .base import REGISTRY

        a = _arg(node, 0, "input")
        b = node.args[1] if len(node.args) > 1 else node.kwargs.get(
            "other", node.kwargs.get("mat2"))  # fmt: skip
        if not (isinstance(a, Node) and isinstance(b, Node)) or params(a) is not None:
            raise _Unsupported("matmul of a constant or a parameter on the left")
        w = params(b)
        if w is not None:
            if w.ndim != 2:
                raise _Unsupported("matmul with a parameter of rank other than 2")
            return _unary(node, label, _const([REGISTRY["linear"](w.T.copy(), None)]))  # type: ignore[call-arg]
        return _Op(label, (a, b), node, merge=lambda shapes: cls())

    @classmethod
    def from_aten(cls, n: Any, label: str, ctx: Any) -> Any:
        from ..importers.builders import _const
        from ..importers.graph import _Op, _Unsupported
        from ..importers.torch_export import _unary
        from .base import REGISTRY

        a, b = n.args[0], n.args[1]
        if ctx.const(a) is not None:
            raise _Unsupported("matmul with a parameter on the left")
        w = ctx.param(b)
        if w is not None:
            if w.ndim != 2:
                raise _Unsupported("matmul with a parameter of rank other than 2")
            return _unary(n, label, ctx, _const([REGISTRY["linear"](w.T.copy(), None)]))  # type: ignore[call-arg]
        return [_Op(label, (a, b), n, merge=lambda shapes: cls())]

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        return cls()

    def merge_shape(self, shapes: list[Shape]) -> Shape:
        self._check_arity(len(shapes))
        sa, sb = (tuple(s) for s in shapes)
        if len(sa) < 2 or len(sb) != len(sa) or sa[:-2] != sb[:-2] or sa[-1] != sb[-2]:
            raise SpecError(f"matmul: needs (..., m, k) and (..., k, n) with equal leading "
                            f"dims (no broadcasting), got {list(sa)} and {list(sb)}")  # fmt: skip
        return (*sa[:-1], sb[-1])

    def merge(self, xs: list[Array], arith: Arithmetic) -> Array:
        self._check_arity(len(xs))
        a, b = xs
        return batched_matmul(arith.activation_operand(a), arith.activation_operand(b), arith)

    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int) -> Step:
        from ..bounds.backend import on, portable
        from ..bounds.rules import _operand_error, affine_local
        from ..bounds.steps import Step, _local_boxes

        a_hat, b_hat = xs
        ra, rb = rs[0].reshape(a_hat.shape), rs[1].reshape(b_hat.shape)
        y = self.merge(xs, ctx.arith)
        N = y.shape[0]
        aa, ab = np.abs(a_hat), np.abs(b_hat)
        mag_a, mag_b = aa + 2 * ra, ab + 2 * rb  # every run's operands
        dxa, dxb = _operand_error(mag_a, ctx.arith), _operand_error(mag_b, ctx.arith)
        op_a = mag_a if dxa is None else mag_a + dxa  # magnitudes of the operands as rounded
        op_b = mag_b if dxb is None else mag_b + dxb
        extra = np.zeros_like(y)
        if dxa is not None and dxb is not None:  # TF32: both operands rounded (or chopped)
            extra = dxa @ op_b + mag_a @ dxb
        # any run's operands differ from ours by <= 2 (r + dx): its pre-rounding sum lies
        # within 2 half_drift of ours
        da = ra if dxa is None else ra + dxa
        db = rb if dxb is None else rb + dxb
        half_drift = da @ op_b + (aa if dxa is None else aa + dxa) @ db
        count = lambda: (mag_a > 0).astype(np.float64) @ (mag_b > 0)  # noqa: E731
        local = affine_local(y, y, op_a @ op_b, half_drift, np.zeros_like(y), ctx,
                              a_hat.shape[-1], count)  # fmt: skip
        image = (ra @ ab + aa @ rb).reshape(N, -1)
        remainder = (3 * (ra @ rb)).reshape(N, -1)

        @portable
        def adjoint(lam: Array) -> list[Array]:
            R = lam.shape[1]
            rows = lam.reshape(N, R, *y.shape[1:])
            ga = rows @ on(b_hat).swapaxes(-1, -2)[:, None]  # Lambda B^T
            gb = on(a_hat).swapaxes(-1, -2)[:, None] @ rows  # A^T Lambda
            return [ga.reshape(N, R, -1), gb.reshape(N, R, -1)]

        boxes = [(remainder, False), *_local_boxes(ctx, local, extra)]
        step = Step(y, adjoint, image, group, boxes)
        step.arity = 2
        return step

    def _mnk(self, in_shapes: list[Shape], out_shape: Shape) -> int:
        return math.prod(out_shape) * int(in_shapes[0][-1])

    def work(self, in_shapes: list[Shape], out_shape: Shape) -> float:
        return float(self._mnk(in_shapes, out_shape))

    def products(self, in_shapes: list[Shape], out_shape: Shape) -> int:
        return self._mnk(in_shapes, out_shape)

    def torch_forward(self, xs: list[Any], params: dict[str, Any]) -> Any:
        import torch

        return torch.matmul(xs[0], xs[1])

    def mpmath_forward(self, xs: list[Any]) -> Any:
        return np.matmul(xs[0], xs[1])  # object arrays: mpf products and sums

    def __repr__(self) -> str:
        return "MatMul()"
