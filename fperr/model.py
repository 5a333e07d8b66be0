"""A model: an input shape and an ordered list of IR layers.

``load_model(path)`` reads a YAML spec (validated by :mod:`fperr.spec`) and
its weights (``.npz`` with ``allow_pickle=False``, or ``.safetensors``),
checks every shape, and refuses NaN/inf weights; any problem raises
:class:`~fperr.errors.SpecError` naming the layer, and nothing is
half-loaded.  ``Model.save`` writes the YAML + npz pair back.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml
from pydantic import ValidationError

from . import spec as S
from .arith import Arithmetic, Exact
from .errors import SpecError
from .layers import (
    Activation,
    BatchNorm,
    Conv2d,
    Dense,
    Dropout,
    Flatten,
    Layer,
    LayerNorm,
    Pool2d,
    Reshape,
    Residual,
    Shape,
    Softmax,
)

Array = npt.NDArray[np.float64]


@dataclass(frozen=True, eq=False)
class Model:
    name: str
    input_shape: Shape
    layers: tuple[Layer, ...]
    data: S.DataSpec | None = None
    source: Path | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        self.shapes()  # validates the whole chain

    def shapes(self) -> list[Shape]:
        """Per-input shape after each layer; the first entry is the input shape."""
        shapes = [tuple(self.input_shape)]
        for i, layer in enumerate(self.layers):
            try:
                shapes.append(layer.out_shape(shapes[-1]))
            except SpecError as exc:
                raise SpecError(f"layer {i} ({layer.type}): {exc}") from None
        return shapes

    @property
    def output_shape(self) -> Shape:
        return self.shapes()[-1]

    def forward(self, x: npt.ArrayLike, arith: Arithmetic | None = None) -> Array:
        """Run a batch (N, *input_shape) through the model."""
        return self.activations(x, arith)[-1]

    def activations(self, x: npt.ArrayLike, arith: Arithmetic | None = None) -> list[Array]:
        """Inputs (rounded to storage) and the output of every layer."""
        arith = arith or Exact()
        h = check_inputs(x, self.input_shape)
        hs = [arith.store(h)]
        for layer in self.layers:
            hs.append(layer.forward(hs[-1], arith))
        return hs

    def n_params(self) -> int:
        return sum(a.size for _, a in _layer_arrays(self.layers, ""))

    def save(self, path: str | Path) -> None:
        """Write ``path`` (YAML) and its weights next to it (same stem, .npz)."""
        path = Path(path)
        arrays: dict[str, Array] = {}
        spec = {
            "name": self.name,
            "weights": path.with_suffix(".npz").name,
            "input": {"shape": list(self.input_shape)},
            "layers": [_layer_to_spec(layer, f"{i}", arrays) for i, layer in
                       enumerate(self.layers)],
        }  # fmt: skip
        if self.data is not None:
            spec["data"] = {k: self._relocate(v, path.parent) for k, v in
                            self.data.model_dump(exclude_none=True).items()}  # fmt: skip
        np.savez(path.with_suffix(".npz"), **arrays)  # type: ignore[arg-type]
        path.write_text(yaml.safe_dump(spec, sort_keys=False))

    def _relocate(self, ref: str, new_dir: Path) -> str:
        """A data path relative to the source YAML, rewritten relative to ``new_dir``."""
        if ref.startswith("sklearn:") or self.source is None or Path(ref).is_absolute():
            return ref
        target = (self.source.parent / ref).resolve()
        return os.path.relpath(target, new_dir.resolve())

    def __repr__(self) -> str:
        kinds = ", ".join(layer.type for layer in self.layers)
        return f"Model({self.name!r}, input {list(self.input_shape)}, layers [{kinds}])"


def check_inputs(x: npt.ArrayLike, input_shape: Shape) -> Array:
    """Inputs as a float64 batch; shape and finiteness errors raise SpecError."""
    h = np.asarray(x, dtype=np.float64)
    if h.shape[1:] != tuple(input_shape):
        if h.ndim >= 1 and math.prod(h.shape[1:]) == math.prod(input_shape):
            h = h.reshape((h.shape[0], *input_shape))
        else:
            raise SpecError(
                f"inputs have shape {list(h.shape)}; the model expects [N, "
                f"{', '.join(map(str, input_shape))}]"
            )
    bad = ~np.isfinite(h)
    if bad.any():
        first = int(np.argwhere(bad.reshape(h.shape[0], -1).any(axis=1))[0, 0])
        raise SpecError(f"inputs contain {int(bad.sum())} NaN/inf values (first in input {first})")
    return h


# -- loading ------------------------------------------------------------------------
def _pair(
    v: int | tuple[int, int] | None, default: tuple[int, int] | None = None
) -> tuple[int, int]:
    if v is None:
        assert default is not None
        return default
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def load_weights(path: Path) -> dict[str, Array]:
    if not path.is_file():
        raise SpecError(f"weights file not found: {path}")
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: np.asarray(z[k], dtype=np.float64) for k in z.files}
        except (ValueError, OSError) as exc:
            raise SpecError(f"cannot read weights {path}: {exc}") from None
    if path.suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise SpecError("reading .safetensors needs the safetensors package") from None
        try:
            tensors = load_file(str(path))
        except Exception as exc:  # safetensors raises its own error type
            raise SpecError(f"cannot read weights {path}: {exc}") from None
        return {k: np.asarray(v, dtype=np.float64) for k, v in tensors.items()}
    raise SpecError(f"unknown weights format {path.suffix!r} (use .npz or .safetensors)")


class _Weights:
    def __init__(self, arrays: Mapping[str, Array], source: str) -> None:
        self.arrays, self.source = arrays, source

    def get(self, key: str | None, where: str, ndim: int | None = None) -> Array | None:
        if key is None:
            return None
        if key not in self.arrays:
            raise SpecError(f"{where}: key {key!r} not found in {self.source}")
        a = self.arrays[key]
        if ndim is not None and a.ndim != ndim:
            raise SpecError(f"{where}: {key!r} has shape {list(a.shape)}, expected {ndim}-D")
        if not np.all(np.isfinite(a)):
            raise SpecError(f"{where}: {key!r} contains NaN or inf")
        return a

    def need(self, key: str, where: str, ndim: int | None = None) -> Array:
        a = self.get(key, where, ndim)
        assert a is not None
        return a


def _build(spec: Any, w: _Weights, where: str) -> Layer:
    t = spec.type
    if t == "dense":
        weight = w.need(spec.weight, where, 2)
        bias = w.get(spec.bias, where, 1)
        if bias is not None and bias.shape[0] != weight.shape[0]:
            raise SpecError(
                f"{where}: bias has {bias.shape[0]} entries, weight {weight.shape[0]} rows"
            )
        return Dense(weight, bias)
    if t == "conv2d":
        weight = w.need(spec.weight, where, 4)
        bias = w.get(spec.bias, where, 1)
        return Conv2d(weight, bias, _pair(spec.stride), _pair(spec.padding), _pair(spec.dilation),
                      spec.groups)  # fmt: skip
    if t in ("maxpool2d", "avgpool2d"):
        k = _pair(spec.kernel_size)
        return Pool2d(t[:3], k, _pair(spec.stride, k), _pair(spec.padding))
    if t == "flatten":
        return Flatten()
    if t == "reshape":
        return Reshape(tuple(spec.shape))
    if t in ("relu", "tanh", "sigmoid", "gelu"):
        return Activation(t)
    if t == "leaky_relu":
        return Activation("leaky_relu", spec.negative_slope)
    if t == "softmax":
        return Softmax()
    if t == "dropout":
        return Dropout(spec.p)
    if t == "batchnorm":
        return BatchNorm(
            w.need(spec.running_mean, where, 1), w.need(spec.running_var, where, 1),
            w.get(spec.weight, where, 1), w.get(spec.bias, where, 1), spec.eps,
        )  # fmt: skip
    if t == "layernorm":
        ln_weight = w.get(spec.weight, where)
        shape = spec.normalized_shape or (list(ln_weight.shape) if ln_weight is not None else None)
        if shape is None:
            raise SpecError(f"{where}: layernorm needs normalized_shape or weight")
        return LayerNorm(tuple(shape), ln_weight, w.get(spec.bias, where), spec.eps)
    if t == "residual":
        return Residual(tuple(_build(s, w, f"{where} branch layer {i}") for i, s in
                              enumerate(spec.layers)))  # fmt: skip
    raise SpecError(f"{where}: unknown layer type {t!r}")  # pragma: no cover (pydantic)


def model_from_spec(spec: S.ModelSpec, arrays: Mapping[str, Array], source: str = "weights",
                    path: Path | None = None) -> Model:  # fmt: skip
    w = _Weights(arrays, source)
    layers = tuple(_build(s, w, f"layer {i} ({s.type})") for i, s in enumerate(spec.layers))
    return Model(spec.name, tuple(spec.input.shape), layers, spec.data, path)


def _pydantic_message(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" + (
        f" ({len(exc.errors())} errors)" if len(exc.errors()) > 1 else ""
    )


def load_model(path: str | Path) -> Model:
    """Load ``model.yaml`` and its weights; see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"model file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise SpecError(f"{path}: malformed YAML{at}") from None
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping with 'input' and 'layers'")
    try:
        spec = S.ModelSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(f"{path}: {_pydantic_message(exc)}") from None
    arrays: dict[str, Array] = {}
    if spec.weights is not None:
        arrays = load_weights(path.parent / spec.weights)
    return model_from_spec(spec, arrays, spec.weights or "weights", path)


# -- saving ---------------------------------------------------------------------------
def _layer_arrays(layers: tuple[Layer, ...], prefix: str) -> list[tuple[str, Array]]:
    out: list[tuple[str, Array]] = []
    for i, layer in enumerate(layers):
        for k, v in vars(layer).items():
            if isinstance(v, np.ndarray):
                out.append((f"{prefix}{i}.{k}", v))
        if isinstance(layer, Residual):
            out += _layer_arrays(layer.layers, f"{prefix}{i}.")
    return out


def _layer_to_spec(layer: Layer, key: str, arrays: dict[str, Array]) -> dict[str, Any]:
    def put(name: str, a: Array | None) -> str | None:
        if a is None:
            return None
        arrays[f"{key}.{name}"] = a
        return f"{key}.{name}"

    handlers: dict[type, Callable[[Any], dict[str, Any]]] = {
        Dense: lambda L: {"weight": put("weight", L.weight), "bias": put("bias", L.bias)},
        Conv2d: lambda L: {"weight": put("weight", L.weight), "bias": put("bias", L.bias),
                           "stride": list(L.stride), "padding": list(L.padding),
                           "dilation": list(L.dilation), "groups": L.groups},
        Pool2d: lambda L: {"kernel_size": list(L.kernel), "stride": list(L.stride),
                           "padding": list(L.padding)},
        Reshape: lambda L: {"shape": list(L.shape)},
        Dropout: lambda L: {"p": L.p},
        BatchNorm: lambda L: {"running_mean": put("running_mean", L.running_mean),
                              "running_var": put("running_var", L.running_var),
                              "weight": put("weight", L.weight), "bias": put("bias", L.bias),
                              "eps": L.eps},
        LayerNorm: lambda L: {"normalized_shape": list(L.normalized_shape),
                              "weight": put("weight", L.weight), "bias": put("bias", L.bias),
                              "eps": L.eps},
        Residual: lambda L: {"layers": [_layer_to_spec(s, f"{key}.{i}", arrays)
                                        for i, s in enumerate(L.layers)]},
        Activation: lambda L: ({"negative_slope": L.negative_slope}
                               if L.type == "leaky_relu" else {}),
    }  # fmt: skip
    fields = handlers.get(type(layer), lambda L: {})(layer)
    return {"type": layer.type, **{k: v for k, v in fields.items() if v is not None}}
