"""concat: inputs joined along one per-input axis (0: channels), exact; rows
split back to the inputs they came from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from ..errors import SpecError
from .base import Array, Operator, OperatorSpec, Put, Shape, Weights, register
from .checks import NonNegInt, check_ints

if TYPE_CHECKING:
    import onnx

    from ..arith import Arithmetic
    from ..bounds.rules import Context
    from ..bounds.steps import Step
    from ..importers.onnx_converter import _OnnxConverter as Cv
    from ..importers.onnx_ops import Site
    from ..model import Model


class ConcatSpec(OperatorSpec):
    type: Literal["concat"]
    axis: NonNegInt = Field(0, description="axis of the per-input shape (0: channels)")


@register
@dataclass(frozen=True, eq=False)
class Concat(Operator):
    """Inputs joined along ``axis`` of the per-input shape (0: channels); exact."""

    axis: int = 0
    type = "concat"
    Spec = ConcatSpec
    arity = 0  # any number >= 2
    onnx_ops = ("Concat",)

    def __post_init__(self) -> None:
        check_ints("concat", "axis", (self.axis,), 0, 1)

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        """Two convolutions of one image joined along the channels, then a head."""
        from ..model import Model
        from .conv2d import Conv2d
        from .dense import Dense
        from .flatten import Flatten

        a = Conv2d(rng.normal(size=(2, 1, 2, 2)) / 2)
        b = Conv2d(rng.normal(size=(3, 1, 2, 2)) / 2, rng.normal(size=3) / 4)
        layers = (a, b, cls(0), Flatten(), Dense(rng.normal(size=(3, 5 * 3 * 3)) / 4))
        wiring = ((-1,), (-1,), (0, 1), (2,), (3,))
        return Model("concat", (1, 4, 4), layers, wiring=wiring,
                     names=("a", "b", "ab", "flat", "out"))  # fmt: skip

    # parameters broadcast to the batch (a class token) become constant nodes that the
    # concat reads (from_torch.cat_ops)
    fx_functions = ("torch.cat", "torch.concat")
    aten_ops = ("aten.cat",)

    @classmethod
    def from_fx(cls, node: Any, label: str, params: Any) -> Any:
        """torch.cat along one axis of computed values and parameters (a class token
        ``cls.expand(x.shape[0], -1, -1)``): a graph's concat, parameters as constants."""
        from torch.fx import Node

        from ..importers.from_torch import _arg, _expanded_parameter, cat_ops
        from ..importers.graph import _Unsupported

        values = _arg(node, 0, "tensors")
        dim = int(_arg(node, 1, "dim", 0))
        if not isinstance(values, list | tuple) or not all(isinstance(v, Node) for v in values):
            raise _Unsupported("cat of constants")
        if dim == 0:
            raise _Unsupported("cat along the batch axis")
        expanded = {i: _expanded_parameter(v, params) for i, v in enumerate(values)}
        consts = {i: p for i, p in expanded.items() if p is not None}
        if any(params(v) is not None for v in values):
            raise _Unsupported("cat of a parameter without expand to the batch")
        return cat_ops(node, label, values, consts,
                       lambda shapes: cls(dim - 1 if dim > 0 else len(shapes[0]) + dim))

    @classmethod
    def from_aten(cls, n: Any, label: str, ctx: Any) -> Any:
        from ..importers.from_torch import cat_ops
        from ..importers.graph import _Unsupported
        from ..importers.torch_export import _a

        values, dim = list(n.args[0]), int(_a(n, 1, "dim", 0))
        nd = len(ctx.shape(n)) + 1
        d = dim % nd if -nd <= dim < nd else dim
        if d == 0:
            raise _Unsupported("cat along the batch axis")
        if any(ctx.param(v) is not None for v in values):
            raise _Unsupported("cat of a parameter without expand to the batch")
        consts = {i: ctx.expanded[v] for i, v in enumerate(values) if v in ctx.expanded}
        return cat_ops(n, label, values, consts, lambda shapes: cls(d - 1))

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        return cls(spec.axis)

    @classmethod
    def from_onnx(cls, cv: Cv, n: onnx.NodeProto, s: Site) -> None:
        """Activations (and constants: a class token, each a constant node feeding the
        concat) joined along a per-input axis; a Concat of one node's values alone is
        data movement on its index map (the importer's MOVEMENT)."""
        from ..importers.graph import _Unsupported
        from ..importers.onnx_layout import canonical
        from ..importers.onnx_ops import _axis, _per_axis

        data = [i for i in n.input if i in cv.lays]
        full = cv.lays[data[0]].idx.shape
        ax = _axis(int(s.attrs["axis"]), len(full), "concat")
        got = [cv.per(cv.lays[i], s.label) for i in data]
        a = got[0][2]
        if any(g[2] != a for g in got):
            raise _Unsupported("inputs with different batch axes")
        keys: list[Any] = []
        shapes: list[Shape] = []
        for i in n.input:
            if i in cv.lays:
                k, sh, _ = got[data.index(i)]
            else:
                c = np.asarray(cv.values[i], dtype=np.float64)
                if c.ndim != len(full) or c.shape[a] not in (1, cv.batch):
                    raise _Unsupported(f"a constant of shape {list(c.shape)}")
                want = tuple(cv.batch if d == a else c.shape[d] for d in range(c.ndim))
                k, sh = cv.constant(s.label, cv.lift(c, want, a, "the constant"))
            keys.append(k)
            shapes.append(sh)
        node, per = cv.merge(s.label, keys, shapes, cls(_per_axis(ax, a)))
        cv.lays[n.output[0]] = canonical(node, per, cv.batch, a)

    def spec_fields(self, put: Put) -> dict[str, Any]:
        return {"axis": self.axis}

    def merge_shape(self, shapes: list[Shape]) -> Shape:
        a = self.axis
        ok = len(shapes) >= 2 and all(len(s) > a for s in shapes)
        ok = ok and all(s[:a] + s[a + 1 :] == shapes[0][:a] + shapes[0][a + 1 :] for s in shapes)
        if not ok:
            raise SpecError(f"concat: inputs {[list(s) for s in shapes]} differ outside axis {a}")
        return (*shapes[0][:a], sum(s[a] for s in shapes), *shapes[0][a + 1 :])

    def merge(self, xs: list[Array], arith: Arithmetic) -> Array:
        return np.concatenate(xs, axis=self.axis + 1)

    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int) -> Step:
        from ..bounds.steps import concat_step

        return concat_step(xs, rs, self.axis, group)

    def torch_forward(self, xs: list[Any], params: dict[str, Any]) -> Any:
        from ..hardware.torch_env import require_torch

        return require_torch().cat(xs, dim=self.axis + 1)  # +1: the batch axis

    def mpmath_forward(self, xs: list[Any]) -> Any:
        return np.concatenate(xs, axis=self.axis + 1)  # +1: the batch axis
