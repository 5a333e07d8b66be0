"""The YAML model spec, validated by pydantic (extra fields forbidden).

A spec names layers and refers to weights by key in an ``.npz`` or
``.safetensors`` file; :mod:`fperr.model` turns it into arrays.
``fperr schema`` prints :func:`json_schema` for editors.

Every number has its legal range here, so that a bad spec fails validation
with one line instead of failing deep inside a layer: sizes, strides and
dilations are >= 1, paddings >= 0 (integers, at most :data:`MAX_INT`, the
int32 range PyTorch uses), and every float is finite (``.nan``/``.inf`` refused).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from .operators import REGISTRY, OperatorSpec, operator_specs

MAX_INT = 2**31 - 1
"""Largest size, stride, padding or dilation (int32, as in PyTorch)."""

# strict: YAML writes integers as integers; 2.0, 1.0e+12 and true are refused
PosInt = Annotated[int, Field(strict=True, ge=1, le=MAX_INT)]
NonNegInt = Annotated[int, Field(strict=True, ge=0, le=MAX_INT)]
PosPair = PosInt | tuple[PosInt, PosInt]
NonNegPair = NonNegInt | tuple[NonNegInt, NonNegInt]


# every layer's spec, the registered operators' (fperr.operators) included, has name and inputs
_Layer = OperatorSpec


class DenseSpec(_Layer):
    type: Literal["dense"]
    weight: str = Field(description="key of the (out, in) weight matrix")
    bias: str | None = Field(None, description="key of the (out,) bias")


class Conv2dSpec(_Layer):
    type: Literal["conv2d"]
    weight: str = Field(description="key of the (out, in/groups, kh, kw) kernel")
    bias: str | None = None
    stride: PosPair = 1
    padding: NonNegPair = 0
    dilation: PosPair = 1
    groups: PosInt = 1


class MaxPool2dSpec(_Layer):
    type: Literal["maxpool2d"]
    kernel_size: PosPair
    stride: PosPair | None = None
    padding: NonNegPair = 0


class AvgPool2dSpec(_Layer):
    type: Literal["avgpool2d"]
    kernel_size: PosPair
    stride: PosPair | None = None
    padding: NonNegPair = 0


class FlattenSpec(_Layer):
    type: Literal["flatten"]


class ReshapeSpec(_Layer):
    type: Literal["reshape"]
    shape: list[PosInt] = Field(min_length=1, description="shape without the batch dimension")


class ActivationSpec(_Layer):
    type: Literal["relu", "relu6", "tanh", "sigmoid", "gelu", "gelu_tanh", "silu", "hardswish",
                  "hardsigmoid"]  # fmt: skip


class EluSpec(_Layer):
    type: Literal["elu"]
    alpha: float = Field(1.0, allow_inf_nan=False)


class LeakyReluSpec(_Layer):
    type: Literal["leaky_relu"]
    negative_slope: float = 0.01


class SoftmaxSpec(_Layer):
    type: Literal["softmax"]
    axis: int = Field(-1, description="per-input axis (no batch axis; negative from the end)")


class BatchNormSpec(_Layer):
    type: Literal["batchnorm"]
    weight: str | None = None
    bias: str | None = None
    running_mean: str
    running_var: str
    eps: float = Field(1e-5, gt=0)


class LayerNormSpec(_Layer):
    type: Literal["layernorm"]
    weight: str | None = None
    bias: str | None = None
    eps: float = Field(1e-5, gt=0)
    normalized_shape: list[PosInt] | None = Field(
        None, min_length=1, description="trailing dimensions normalised over (default: from weight)"
    )


class RMSNormSpec(_Layer):
    type: Literal["rmsnorm"]
    weight: str | None = None
    eps: float = Field(2.0**-23, gt=0, description="default: torch.finfo(torch.float32).eps")
    normalized_shape: list[PosInt] | None = Field(
        None, min_length=1, description="trailing dimensions normalised over (default: from weight)"
    )


class DropoutSpec(_Layer):
    type: Literal["dropout"]
    p: float = Field(0.5, ge=0, le=1)


class AddSpec(_Layer):
    type: Literal["add"]


class ConcatSpec(_Layer):
    type: Literal["concat"]
    axis: NonNegInt = Field(0, description="axis of the per-input shape (0: channels)")


class ResidualSpec(_Layer):
    type: Literal["residual"]
    layers: list[LayerSpec]


_LAYER_SPECS = (
    DenseSpec, Conv2dSpec, MaxPool2dSpec, AvgPool2dSpec, FlattenSpec, ReshapeSpec,
    ActivationSpec, EluSpec, LeakyReluSpec, SoftmaxSpec, BatchNormSpec, LayerNormSpec, DropoutSpec,
    RMSNormSpec, ResidualSpec, AddSpec, ConcatSpec, *operator_specs(),
)  # fmt: skip
if TYPE_CHECKING:
    LayerSpec = Any
else:
    LayerSpec = Annotated[Union[_LAYER_SPECS], Field(discriminator="type")]  # noqa: UP007
ResidualSpec.model_rebuild()


class InputSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    shape: list[PosInt] = Field(
        min_length=1, description="shape of one input, without the batch dimension"
    )


class DataSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    inputs: str = Field(description="sklearn:NAME or a .npy/.npz/.csv path")
    labels: str | None = None


class ModelSpec(BaseModel):
    """Top level of ``model.yaml``."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = "model"
    weights: str | None = Field(None, description=".npz or .safetensors file, relative to the yaml")
    input: InputSpec
    layers: list[LayerSpec]
    data: DataSpec | None = None


LAYER_TYPES: tuple[str, ...] = (
    "dense", "conv2d", "maxpool2d", "avgpool2d", "flatten", "reshape", "relu", "relu6", "tanh",
    "sigmoid", "gelu", "gelu_tanh", "silu", "hardswish", "hardsigmoid", "elu", "leaky_relu",
    "softmax", "batchnorm", "layernorm", "rmsnorm", "dropout", "residual",
    "add", "concat", *REGISTRY,
)  # fmt: skip


def json_schema() -> dict[str, Any]:
    """JSON Schema of the model spec, for editor completion of ``model.yaml``."""
    return ModelSpec.model_json_schema()
