"""The YAML model spec, validated by pydantic (extra fields forbidden).

A spec names layers and refers to weights by key in an ``.npz`` or
``.safetensors`` file; :mod:`fperr.model` turns it into arrays.
``fperr schema`` prints :func:`json_schema` for editors.

Each layer's spec is its operator's (:mod:`fperr.operators`, one module per
operator); this module joins them into one discriminated union on ``type``,
with the residual block and the top level.  Every number has its legal range,
so that a bad spec fails validation with one line instead of failing deep
inside a layer: sizes, strides and dilations are >= 1, paddings >= 0
(integers, at most :data:`fperr.operators.checks.MAX_INT`, the int32 range
PyTorch uses), and every float is finite (``.nan``/``.inf`` refused).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field

from .operators import REGISTRY, OperatorSpec, operator_specs
from .operators.checks import PosInt

# every layer's spec, the registered operators' (fperr.operators) included, has name and inputs
_Layer = OperatorSpec


class ResidualSpec(_Layer):
    type: Literal["residual"]
    layers: list[LayerSpec]


_LAYER_SPECS = (*operator_specs(), ResidualSpec)
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


LAYER_TYPES: tuple[str, ...] = (*REGISTRY, "residual")


def json_schema() -> dict[str, Any]:
    """JSON Schema of the model spec, for editor completion of ``model.yaml``."""
    return ModelSpec.model_json_schema()
