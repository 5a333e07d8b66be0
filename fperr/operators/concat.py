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
