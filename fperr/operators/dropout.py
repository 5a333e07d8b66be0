"""dropout: ``torch.nn.Dropout`` at inference, the identity."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import Field

from ..errors import SpecError
from .base import Array, Operator, OperatorSpec, Put, Shape, Weights, register
from .checks import check_scalar
from .flatten import MovesValues

if TYPE_CHECKING:
    import onnx

    from ..arith import Arithmetic
    from ..importers.onnx_converter import _OnnxConverter as Cv
    from ..importers.onnx_ops import Site
    from ..model import Model


class DropoutSpec(OperatorSpec):
    type: Literal["dropout"]
    p: float = Field(0.5, ge=0, le=1)


@register
@dataclass(frozen=True, eq=False)
class Dropout(MovesValues):
    p: float = 0.5
    type = "dropout"
    Spec = DropoutSpec
    torch_module_classes = (("Dropout", True), ("Dropout1d", True), ("Dropout2d", True),
                            ("AlphaDropout", True))  # fmt: skip
    onnx_ops = ("Dropout",)

    def __post_init__(self) -> None:
        check_scalar("dropout", "p", self.p, 0.0, False)
        if self.p > 1:
            raise SpecError(f"dropout: p must be a probability in [0, 1], got {self.p!r}")

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        from ..model import Model
        from .dense import Dense

        w1, w2 = rng.normal(size=(5, 4)) / 2, rng.normal(size=(3, 5)) / 2
        return Model("dropout", (4,), (Dense(w1), cls(0.1), Dense(w2)))

    fx_functions = (*(f"torch.nn.functional.{k}" for k in (
        "dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout",
        "feature_alpha_dropout")), "torch.dropout")  # fmt: skip

    @classmethod
    def from_fx(cls, node: Any, label: str, params: Any) -> Any:
        """F.dropout and its variants, torch.dropout (eval mode: see from_torch._dropout)."""
        from ..importers.from_torch import _dropout, _unary

        return _unary(node, label, _dropout(node), elementwise=True)

    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        return cls(spec.p)

    @classmethod
    def from_torch_module(cls, mod: Any) -> Any:
        """nn.Dropout, Dropout1d, Dropout2d, AlphaDropout: identities in eval mode."""
        from ..importers.builders import _const

        p: Any = mod.p  # identities in eval mode, whatever mod.training says
        return _const([cls(float(p))]), None, True

    @classmethod
    def from_onnx(cls, cv: Cv, n: onnx.NodeProto, s: Site) -> None:
        """Dropout: the identity in inference (refused where it drops at random)."""
        cv.check_dropout(n)
        ratio = cv.const(n, 1)
        p = float(ratio.reshape(-1)[0]) if ratio is not None else float(s.attrs.get("ratio", 0.5))
        cv.lays[n.output[0]] = cv.unary(s.label, s.x, [cls(p)])

    def spec_fields(self, put: Put) -> dict[str, Any]:
        return {"p": self.p}

    def out_shape(self, shape: Shape) -> Shape:
        return shape

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        return x  # inference: identity

    def torch_module(self, in_shapes: list[Shape]) -> Any:
        from ..hardware.torch_env import require_torch

        return require_torch().nn.Dropout(self.p)
