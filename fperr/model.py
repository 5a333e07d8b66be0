"""A model: an input shape and an ordered list of IR layers.

Layers form a chain (each reads the one before; residual blocks nest a
branch), or a graph: ``wiring[i]`` lists the layers layer i reads (-1: the
model input), in topological order, the output being the last layer; merges
(:class:`~fperr.layers.Add`, :class:`~fperr.layers.Concat`) read several.
In YAML a layer's optional ``name:`` and ``inputs:`` give the graph.

``load_model(path)`` reads a YAML spec (parsed within the limits of
:mod:`fperr.yaml_io`, validated by :mod:`fperr.spec`) and its weights
(``.npz`` with ``allow_pickle=False``, or ``.safetensors``), checks every
shape, and refuses NaN/inf and complex weights; any problem raises
:class:`~fperr.errors.SpecError` naming the layer, and nothing is
half-loaded.  A :class:`Model` made in Python is checked the same way: real
finite parameters, residual blocks nested at most :data:`MAX_NESTING` deep.
``Model.save`` writes the YAML + npz pair back.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml
from pydantic import ValidationError
from pydantic_core import ErrorDetails

from . import spec as S
from .arith import Arithmetic, Exact
from .errors import SpecError
from .layers import Layer, Residual, Shape, is_merge
from .operators import REGISTRY, Operator
from .yaml_io import load_yaml

Array = npt.NDArray[np.float64]

MAX_NESTING = 32
"""Deepest nesting of residual blocks (the bound rules recurse once per level)."""


@dataclass(frozen=True, eq=False)
class Model:
    name: str
    input_shape: Shape
    layers: tuple[Layer, ...]
    data: S.DataSpec | None = None
    source: Path | None = field(default=None, repr=False)
    wiring: tuple[tuple[int, ...], ...] | None = None
    names: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        check_parameters(self.layers)
        check_wiring(self.layers, self.wiring, self.names)
        self.shapes()  # validates the whole chain

    @property
    def is_graph(self) -> bool:
        """Whether the layers form a graph (named inputs) rather than a chain."""
        return self.wiring is not None

    def inputs_of(self, i: int) -> tuple[int, ...]:
        """Indices of the layers whose outputs layer ``i`` reads (-1: the model input)."""
        return (i - 1,) if self.wiring is None else self.wiring[i]

    def node_name(self, i: int) -> str:
        return self.names[i] if self.names is not None else f"{i}"

    def require_chain(self, what: str) -> None:
        """Refuse a graph model in code that walks the layers as a chain."""
        if self.wiring is not None:
            raise SpecError(f"{what} supports chains of layers (with residual blocks) only; "
                            f"model {self.name!r} is a graph (named inputs)")  # fmt: skip

    def appended(self, layer: Layer) -> Model:
        """This model with ``layer`` applied to its output (e.g. a final softmax)."""
        n = len(self.layers)
        wiring = None if self.wiring is None else (*self.wiring, (n - 1,))
        names = None if self.names is None else (*self.names, f"{n}")
        return Model(self.name, self.input_shape, (*self.layers, layer), self.data, self.source,
                     wiring, names)  # fmt: skip

    def shapes(self) -> list[Shape]:
        """Per-input shape after each layer; the first entry is the input shape."""
        shapes = [tuple(self.input_shape)]
        for i, layer in enumerate(self.layers):
            ins = [shapes[j + 1] for j in self.inputs_of(i)]
            try:
                if is_merge(layer):
                    shapes.append(layer.merge_shape(ins))  # type: ignore[attr-defined]
                else:
                    shapes.append(layer.out_shape(ins[0]))
            except SpecError as exc:
                raise SpecError(f"layer {self.node_name(i)} ({layer.type}): {exc}") from None
        return shapes

    @property
    def output_shape(self) -> Shape:
        return self.shapes()[-1]

    def forward(self, x: npt.ArrayLike, arith: Arithmetic | None = None) -> Array:
        """Run a batch of shape ``(N, *input_shape)`` through the model."""
        return self.activations(x, arith)[-1]

    def activations(self, x: npt.ArrayLike, arith: Arithmetic | None = None) -> list[Array]:
        """Inputs (rounded to storage) and the output of every layer."""
        arith = arith or Exact()
        h = check_inputs(x, self.input_shape)
        hs = [arith.store(h)]
        for i, layer in enumerate(self.layers):
            ins = [hs[j + 1] for j in self.inputs_of(i)]
            if is_merge(layer):
                hs.append(layer.merge(ins, arith))  # type: ignore[attr-defined]
            else:
                hs.append(layer.forward(ins[0], arith))
        return hs

    def n_params(self) -> int:
        return sum(a.size for _, a in _layer_arrays(self.layers, ""))

    def save(self, path: str | Path) -> None:
        """Write ``path`` (YAML) and its weights next to it (same stem, .npz),
        creating the folder if needed."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        arrays: dict[str, Array] = {}
        spec = {
            "name": self.name,
            "weights": path.with_suffix(".npz").name,
            "input": {"shape": list(self.input_shape)},
            "layers": [self._node_spec(i, arrays) for i in range(len(self.layers))],
        }  # fmt: skip
        if self.data is not None:
            spec["data"] = {k: self._relocate(v, path.parent) for k, v in
                            self.data.model_dump(exclude_none=True).items()}  # fmt: skip
        np.savez(path.with_suffix(".npz"), **arrays)  # type: ignore[arg-type]
        path.write_text(yaml.safe_dump(spec, sort_keys=False))

    def _node_spec(self, i: int, arrays: dict[str, Array]) -> dict[str, Any]:
        out = _layer_to_spec(self.layers[i], f"{i}", arrays)
        if self.names is not None:
            out["name"] = self.names[i]
        if self.wiring is not None:
            out["inputs"] = [self.node_name(j) if j >= 0 else "input" for j in self.wiring[i]]
        return out

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
    """Inputs as a float64 batch; dtype, shape and finiteness errors raise SpecError."""
    raw = np.asarray(x)
    if raw.dtype.kind not in "biuf":  # a cast would drop imaginary parts or fail
        raise SpecError(f"inputs must be real numbers, got dtype {raw.dtype}")
    h = raw.astype(np.float64, copy=False)
    if h.ndim == 0:
        raise SpecError("inputs must be a batch (N, ...), got a scalar")
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


def check_parameters(layers: Iterable[Layer]) -> None:
    """Every array parameter real and finite, residual nesting at most
    :data:`MAX_NESTING`; a :class:`SpecError` names the layer by its index path."""
    stack: list[tuple[tuple[Layer, ...], str]] = [(tuple(layers), "")]
    while stack:
        group, path = stack.pop()
        for i, layer in enumerate(group):
            where = f"layer {path}{i} ({getattr(layer, 'type', type(layer).__name__)})"
            for name, a in vars(layer).items():
                if isinstance(a, np.ndarray):
                    _check_values(where, name, a)
            if isinstance(layer, Residual):
                if path.count(".") >= MAX_NESTING:  # path: one dot per enclosing block
                    top = f"layer {path.split('.')[0]} (residual)"
                    raise SpecError(f"{top}: residual blocks nested more than {MAX_NESTING} deep")
                stack.append((tuple(layer.layers), f"{path}{i}."))


def check_wiring(
    layers: tuple[Layer, ...], wiring: tuple[tuple[int, ...], ...] | None,
    names: tuple[str, ...] | None,
) -> None:  # fmt: skip
    """A graph model's wiring: one entry per layer, each reading earlier layers
    (-1: the model input), as many inputs as the layer takes, every layer but the
    last read by a later one (the output is the last layer); merges only in graphs."""
    if names is not None and (len(names) != len(layers) or len(set(names)) != len(names)):
        raise SpecError("layer names must be given for every layer and be distinct")
    if wiring is None:
        for i, layer in enumerate(layers):
            if is_merge(layer):
                raise SpecError(f"layer {i} ({layer.type}) merges several inputs: name them "
                                "with 'inputs:' (a graph model)")  # fmt: skip
        return
    if len(wiring) != len(layers):
        raise SpecError(f"{len(wiring)} wiring entries for {len(layers)} layers")
    read: set[int] = set()
    for i, (layer, ins) in enumerate(zip(layers, wiring, strict=True)):
        where = f"layer {names[i] if names else i} ({layer.type})"
        arity = getattr(layer, "arity", 1) if is_merge(layer) else 1
        if (arity and len(ins) != arity) or (not arity and len(ins) < 2):
            want = arity or "at least 2"
            raise SpecError(f"{where}: reads {len(ins)} inputs, takes {want}")
        for j in ins:
            if not -1 <= j < i:
                raise SpecError(f"{where}: reads a layer that is not before it ({j})")
        read.update(ins)
    unread = [i for i in range(len(layers) - 1) if i not in read]
    if unread:
        i = unread[0]
        where = f"layer {names[i] if names else i} ({layers[i].type})"
        raise SpecError(f"{where}: its output is read by no later layer (the model's output "
                        "is the last layer)")  # fmt: skip


def _check_values(where: str, name: str, a: np.ndarray[Any, Any]) -> None:
    if a.dtype.kind not in "biuf":
        what = "complex" if a.dtype.kind == "c" else "not real numbers"
        raise SpecError(f"{where}: {name} is {what} (dtype {a.dtype}); fperr needs real values")
    if not np.all(np.isfinite(a)):
        raise SpecError(f"{where}: {name} contains NaN or inf")


# -- loading ------------------------------------------------------------------------
def load_weights(path: Path) -> dict[str, np.ndarray[Any, Any]]:
    """Every array of a weights file as stored (dtypes are checked where a layer
    uses one: :class:`_Weights`); a bad file raises SpecError."""
    if not path.is_file():
        raise SpecError(f"weights file not found: {path}")
    if path.suffix == ".npz":
        raw = _read_npz(path)
    elif path.suffix == ".safetensors":
        raw = _read_safetensors(path)
    else:
        raise SpecError(f"unknown weights format {path.suffix!r} (use .npz or .safetensors)")
    return raw


# What a damaged or foreign file raises inside numpy and zipfile: the file is bad input.
_READ_ERRORS = (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def _read_npz(path: Path) -> dict[str, np.ndarray[Any, Any]]:
    try:
        # our own handle: np.load leaves its file open when the archive is damaged
        with path.open("rb") as handle:
            if handle.read(2) != b"PK":  # np.load would take other files for .npy or pickles
                raise SpecError(f"cannot read weights {path}: not an .npz (zip) file")
            handle.seek(0)
            with np.load(handle, allow_pickle=False) as z:
                return {k: np.asarray(z[k]) for k in z.files}
    except SpecError:
        raise
    except _READ_ERRORS as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecError(f"cannot read weights {path}: {why} (truncated or damaged?)") from None


def _read_safetensors(path: Path) -> dict[str, np.ndarray[Any, Any]]:
    try:
        from safetensors.numpy import load_file
    except ImportError:
        raise SpecError("reading .safetensors needs the safetensors package") from None
    try:
        return {k: np.asarray(v) for k, v in load_file(str(path)).items()}
    except Exception as exc:  # safetensors raises its own error types
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SpecError(f"cannot read weights {path}: {why}") from None


class _Weights:
    def __init__(self, arrays: Mapping[str, np.ndarray[Any, Any]], source: str) -> None:
        self.arrays, self.source = arrays, source

    def get(self, key: str | None, where: str, ndim: int | None = None) -> Array | None:
        if key is None:
            return None
        if key not in self.arrays:
            raise SpecError(f"{where}: key {key!r} not found in {self.source}")
        a = self.arrays[key]
        if ndim is not None and a.ndim != ndim:
            raise SpecError(f"{where}: {key!r} has shape {list(a.shape)}, expected {ndim}-D")
        _check_values(where, repr(key), a)  # before the cast, which drops imaginary parts
        return np.asarray(a, dtype=np.float64)

    def need(self, key: str, where: str, ndim: int | None = None) -> Array:
        a = self.get(key, where, ndim)
        assert a is not None
        return a


def _new(where: str, cls: Callable[..., Layer], *args: Any) -> Layer:
    """``cls(*args)``, its constructor's SpecError prefixed with the layer's place
    (which replaces the constructor's own ``type:`` prefix)."""
    try:
        return cls(*args)
    except SpecError as exc:
        if str(exc).startswith(f"{where}: "):  # the weights' own messages name the place
            raise
        msg = re.sub(r"^[a-z0-9_]+: ", "", str(exc))
        raise SpecError(f"{where}: {msg}") from None


def _build(spec: Any, w: _Weights, where: str) -> Layer:
    if spec.type == "residual":
        return Residual(tuple(_build(s, w, f"{where} branch layer {i}") for i, s in
                              enumerate(spec.layers)))  # fmt: skip
    return _new(where, REGISTRY[spec.type].from_spec, spec, w, where)


def model_from_spec(spec: S.ModelSpec, arrays: Mapping[str, np.ndarray[Any, Any]],
                    source: str = "weights", path: Path | None = None) -> Model:  # fmt: skip
    w = _Weights(arrays, source)
    layers = tuple(_build(s, w, f"layer {s.name or i} ({s.type})")
                   for i, s in enumerate(spec.layers))  # fmt: skip
    wiring, names = _wiring(spec.layers)
    return Model(spec.name, tuple(spec.input.shape), layers, spec.data, path, wiring, names)


def _wiring(specs: list[Any]) -> tuple[tuple[tuple[int, ...], ...] | None, tuple[str, ...] | None]:
    """Layer names and the indices each layer reads: ``inputs:`` names earlier
    layers (or ``input``); a layer without ``inputs:`` reads the one before it.
    A spec with no ``inputs:`` anywhere is a chain (wiring None)."""
    if not any(s.inputs is not None for s in specs):
        if any(s.name is not None for s in specs):
            return None, tuple(s.name or f"{i}" for i, s in enumerate(specs))
        return None, None
    names = tuple(s.name or f"{i}" for i, s in enumerate(specs))
    index: dict[str, int] = {"input": -1}
    wiring = []
    for i, s in enumerate(specs):
        ins = [names[i - 1] if i else "input"] if s.inputs is None else s.inputs
        for n in ins:
            if n not in index:
                raise SpecError(f"layer {names[i]} ({s.type}): input {n!r} names no earlier "
                                "layer (nor 'input')")  # fmt: skip
        wiring.append(tuple(index[n] for n in ins))
        if names[i] in index:
            raise SpecError(f"layer {names[i]} ({s.type}): the name is used twice")
        index[names[i]] = i
    return tuple(wiring), names


def _pydantic_message(exc: ValidationError) -> str:
    """The most telling error, one line.

    A value that may be an int or a pair fails both branches of the union;
    the branch whose type matched says what is wrong (a range), the other only
    that the type differs, so range errors come first.  Branch names such as
    ``constrained-int`` or ``tuple[...]`` are dropped from the location.
    """
    errors = exc.errors()

    def type_mismatch(err: ErrorDetails) -> bool:
        return err["type"].endswith("_type") or err["type"] == "int_from_float"

    def where(err: ErrorDetails) -> str:
        return ".".join(str(p) for p in err["loc"] if isinstance(p, int) or p.isidentifier())

    err = min(errors, key=type_mismatch)  # min keeps the first of equals
    places = {where(e) for e in errors}
    more = f" ({len(places)} places)" if len(places) > 1 else ""
    return f"{where(err)}: {err['msg']}{more}"


def load_model(path: str | Path) -> Model:
    """Load a model file: a YAML spec and its weights (see the module docstring), an
    ``.onnx`` graph or a ``torch.export`` ``.pt2`` program; see :mod:`fperr.model_files`."""
    from .model_files import load_model_file  # it imports this module

    return load_model_file(path)


def load_spec_model(path: str | Path) -> Model:
    """Load ``model.yaml`` and its weights; see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"model file not found: {path}")
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise SpecError(f"{path}: expected a mapping with 'input' and 'layers'")
    try:
        spec = S.ModelSpec.model_validate(raw)
    except ValidationError as exc:
        raise SpecError(f"{path}: {_pydantic_message(exc)}") from None
    arrays: dict[str, np.ndarray[Any, Any]] = {}
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

    if isinstance(layer, Residual):
        fields = {"layers": [_layer_to_spec(s, f"{key}.{i}", arrays)
                             for i, s in enumerate(layer.layers)]}  # fmt: skip
    else:
        assert isinstance(layer, Operator)  # every other layer is an operator
        fields = layer.spec_fields(put)
    return {"type": layer.type, **{k: v for k, v in fields.items() if v is not None}}
