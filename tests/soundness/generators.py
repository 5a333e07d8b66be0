"""Hypothesis strategies: small random models over fperr's whole schema, data
batches and option sets (issue 11, the soundness suite).

Structure (layer types, sizes, strides, paddings, dilations, groups, slopes,
eps, which parameters are present) is drawn by hypothesis so that failures
shrink to small models; array contents come from a numpy generator seeded by
a drawn integer, in a drawn style (Gaussian, small integers, powers of two,
sparse, wide dynamic range) and scale.  A :class:`Profile` sets the
magnitudes and parameter edges: ``normal`` stays clear of the known open
holes (no negative slopes, no subnormal or near-overflow data), the others
aim at one hole each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from hypothesis import strategies as st

from fperr import Emulated, Model
from fperr.layers import (
    Activation,
    BatchNorm,
    Conv2d,
    Dense,
    Dropout,
    Flatten,
    LayerNorm,
    Pool2d,
    Reshape,
    Residual,
    Softmax,
)

Array = npt.NDArray[np.float64]
Shape = tuple[int, ...]

STYLES = ("normal", "ints", "pow2", "sparse", "wide")
ACTIVATIONS = ("relu", "relu6", "leaky_relu", "tanh", "sigmoid", "gelu")


@dataclass(frozen=True)
class Profile:
    """Magnitudes and parameter edges of the generated models and data."""

    name: str
    weight_scales: tuple[float, ...] = (0.05, 0.3, 1.0, 3.0)
    data_scales: tuple[float, ...] = (0.1, 1.0, 10.0)
    slopes: tuple[float, ...] = (0.0, 1e-3, 0.01, 0.2, 1.0, 1.5, 3.0)
    bn_vars: tuple[float, ...] = (0.0, 1e-8, 1e-3, 0.1, 1.0, 10.0)
    eps: tuple[float, ...] = (1e-5, 1e-3, 1e-12, 1.0)
    activations: tuple[str, ...] = ACTIVATIONS
    overflow_row: bool = False  # one input row that overflows binary16 (batch dependence)
    first_batchnorm: bool = False  # every model starts with a batch norm
    # only layers the cascade's quick stage bounds (fperr.bounds.quick): dense, conv,
    # batch norm, the activations above, max pooling, reshapes and dropout; a chain
    quick_layers: bool = False
    # vector models of 3-4 dense layers of this many units (inputs too), each with an
    # activation: where the Euclidean ranges (fperr.bounds.norm_ranges) cap the
    # interval ones (on the default 1-8 units they rarely do)
    wide: tuple[int, int] | None = None


PROFILES: dict[str, Profile] = {
    "normal": Profile("normal"),
    "negative_slope": Profile(
        "negative_slope", slopes=(-3.0, -1.0, -0.5, -0.01, -1e-3), activations=("leaky_relu",)
    ),
    # products and values in the subnormal ranges of binary16 (6e-8 .. 6e-5),
    # bfloat16 / binary32 (1e-45 .. 1e-38)
    "tiny": Profile(
        "tiny", weight_scales=(1e-3, 1e-2, 1e-20), data_scales=(1e-4, 1e-6, 1e-20, 1e-39)
    ),
    # near the overflow thresholds of binary16 (65504) and bfloat16 / binary32 (3.4e38)
    "huge": Profile(
        "huge", weight_scales=(1.0, 30.0, 1e18), data_scales=(1e3, 3e4, 6e4, 1e19, 1e37)
    ),
    "batch": Profile("batch", overflow_row=True),
    "piecewise_linear": Profile("piecewise_linear", activations=("relu", "relu6", "leaky_relu")),
    # tails of tanh / sigmoid / GELU (torch's vectorised kernels err most there)
    "batchnorm": Profile("batchnorm", first_batchnorm=True),
    "quick": Profile("quick", activations=("relu", "relu6"), quick_layers=True),
    # the cascade's first stages (fperr.bounds.coarse, .quick) at the ends of the
    # exponent range: subnormal products and sums, values near overflow
    "quick_tiny": Profile("quick_tiny", weight_scales=(1e-3, 1e-2, 1e-20),
                          data_scales=(1e-4, 1e-6, 1e-20, 1e-39), activations=("relu", "relu6"),
                          quick_layers=True),  # fmt: skip
    "quick_huge": Profile("quick_huge", weight_scales=(1.0, 30.0, 1e18),
                          data_scales=(1e3, 3e4, 6e4, 1e19, 1e37), activations=("relu", "relu6"),
                          quick_layers=True, overflow_row=True),  # fmt: skip
    # He-like weights (0.15 ~ sqrt(2 / 96)) so activations stay O(1) through the stack
    "wide": Profile("wide", weight_scales=(0.1, 0.15, 0.2), data_scales=(0.1, 1.0),
                    activations=("relu", "leaky_relu", "tanh"), wide=(64, 128)),
    "smooth": Profile(
        "smooth", data_scales=(1.0, 10.0, 100.0), activations=("tanh", "sigmoid", "gelu")
    ),
}


@dataclass(frozen=True)
class Options:
    """One configuration of ``fperr bound`` (the CLI's options)."""

    low: str = "binary16"
    accumulate: str = "binary32"
    reference_operand: str | None = None
    truncate: bool = False
    on: str = "logits"
    # elementwise kernels within this many ulps of the accumulator (the model the
    # emulator implements); None: fperr's default (measured kernel allowances)
    func_ulps: float | None = 1.0
    # the bound engine (fperr.bounds.ENGINES); "auto" picks by layer types
    engine: str = "auto"
    cascade: bool = False  # certify's cascade: most inputs then get the cheap stage's bound
    ranges: str = "sharpened"  # the backward engine's ranges (fperr.bounds.engine.RANGES)

    @property
    def acc_mode(self) -> str:
        return "truncate" if self.truncate else "nearest"

    def _kw(self) -> dict[str, Any]:
        kw: dict[str, Any] = {"acc_rounding": self.acc_mode}
        if self.func_ulps is not None:
            kw["func_ulps"] = self.func_ulps
        return kw

    def low_arith(self) -> Emulated:
        return Emulated.from_names(self.low, self.accumulate, **self._kw())

    def reference_arith(self) -> Emulated:
        # the reference keeps a binary32 accumulator (issue 11, item 8)
        return Emulated.from_names("binary32", "binary32", self.reference_operand, **self._kw())

    def describe(self) -> str:
        op = f", reference operand {self.reference_operand}" if self.reference_operand else ""
        tr = ", truncating accumulator" if self.truncate else ""
        return (f"low {self.low}, accumulate {self.accumulate}{op}{tr}, on {self.on}, "
                f"engine {self.engine}{', cascade' if self.cascade else ''}, "
                f"ranges {self.ranges}")


@dataclass
class Case:
    model: Model
    X: Array  # (N, *input_shape)
    options: Options
    profile: str
    seed: int

    def describe(self) -> str:
        return f"{describe_model(self.model)}; {self.options.describe()}; profile {self.profile}"


def describe_model(model: Model) -> str:
    def one(layer: Any) -> str:
        if isinstance(layer, Residual):
            return "residual[" + ", ".join(one(s) for s in layer.layers) + "]"
        if isinstance(layer, Activation) and layer.type == "leaky_relu":
            return f"leaky_relu({layer.negative_slope:g})"
        if isinstance(layer, Conv2d):
            return (
                f"conv{tuple(layer.weight.shape)}s{layer.stride}p{layer.padding}"
                f"d{layer.dilation}g{layer.groups}"
            )
        if isinstance(layer, Pool2d):
            return f"{layer.kind}pool k{layer.kernel}s{layer.stride}p{layer.padding}"
        if isinstance(layer, Dense):
            return f"dense{tuple(layer.weight.shape)}"
        return layer.type

    return f"input {list(model.input_shape)}: " + ", ".join(one(x) for x in model.layers)


# -- arrays ---------------------------------------------------------------------------
def array(rng: np.random.Generator, shape: Shape, style: str, scale: float) -> Array:
    """Random values of one style; integer and power-of-two styles are exact in binary16."""
    p2 = 2.0 ** round(math.log2(scale))
    if style == "ints":
        return rng.integers(-3, 4, size=shape).astype(np.float64) * p2
    if style == "pow2":
        return rng.choice([-1.0, 1.0], size=shape) * 2.0 ** rng.integers(-3, 4, size=shape) * p2
    if style == "sparse":
        return rng.normal(size=shape) * scale * (rng.random(shape) < 0.5)
    if style == "wide":
        return rng.choice([-1.0, 1.0], size=shape) * scale * 10.0 ** rng.uniform(-3, 1, shape)
    return rng.normal(size=shape) * scale


class Draw:
    """Hypothesis draws plus a seeded numpy generator for array contents."""

    def __init__(self, draw: Any, profile: Profile, rng: np.random.Generator) -> None:
        self.draw, self.profile, self.rng = draw, profile, rng

    def int(self, lo: int, hi: int) -> int:
        return int(self.draw(st.integers(lo, hi)))

    def pick(self, options: tuple[Any, ...] | list[Any]) -> Any:
        return self.draw(st.sampled_from(list(options)))

    def weights(self, shape: Shape) -> Array:
        return array(self.rng, shape, self.pick(STYLES), self.pick(self.profile.weight_scales))

    def maybe(self, shape: Shape) -> Array | None:
        return self.weights(shape) if self.draw(st.booleans()) else None


# -- layers -----------------------------------------------------------------------------
def activation(d: Draw) -> Activation:
    kind = d.pick(d.profile.activations)
    if kind == "leaky_relu":
        return Activation("leaky_relu", float(d.pick(d.profile.slopes)))
    return Activation(kind)


def batchnorm(d: Draw, channels: int) -> BatchNorm:
    var = d.pick(d.profile.bn_vars) * d.rng.uniform(0.5, 2.0, channels)
    mean = d.weights((channels,))
    return BatchNorm(mean, var, d.maybe((channels,)), d.maybe((channels,)), d.pick(d.profile.eps))


def layernorm(d: Draw, shape: Shape) -> LayerNorm:
    k = d.int(1, len(shape))
    norm = tuple(shape[-k:])
    return LayerNorm(norm, d.maybe(norm), d.maybe(norm), d.pick(d.profile.eps))


def dense(d: Draw, n: int, m: int) -> Dense:
    return Dense(d.weights((m, n)), d.maybe((m,)))


def _fit(size: int, k: int, dil: int, pad: int) -> int:
    """Smallest padding >= pad with a non-empty output."""
    need = dil * (k - 1) + 1
    return max(pad, math.ceil((need - size) / 2))


def conv(d: Draw, shape: Shape, same: bool = False) -> Conv2d:
    c = shape[0]
    groups = d.pick([g for g in range(1, c + 1) if c % g == 0])
    cout = c if same else groups * d.int(1, 2)
    k = (d.pick((1, 3)), d.pick((1, 3))) if same else (d.int(1, 3), d.int(1, 3))
    dil = (d.int(1, 2), d.int(1, 2))
    if same:  # shape preserving (residual branches)
        stride, pad = (1, 1), (dil[0] * (k[0] - 1) // 2, dil[1] * (k[1] - 1) // 2)
    else:
        stride = (d.int(1, 3), d.int(1, 3))
        pad = tuple(_fit(shape[i + 1], k[i], dil[i], d.int(0, 2)) for i in (0, 1))
    w = d.weights((cout, c // groups, *k))
    return Conv2d(w, d.maybe((cout,)), stride, pad, dil, groups)  # type: ignore[arg-type]


def pool(d: Draw, shape: Shape, same: bool = False) -> Pool2d:
    kind = "max" if d.profile.quick_layers else d.pick(("max", "avg"))
    if same:
        return Pool2d(kind, (3, 3), (1, 1), (1, 1))
    k = (d.int(1, min(3, shape[1])), d.int(1, min(3, shape[2])))
    pad = (d.int(0, k[0] // 2), d.int(0, k[1] // 2))
    return Pool2d(kind, k, (d.int(1, 3), d.int(1, 3)), pad)


def reshape3(d: Draw, shape: Shape) -> Reshape:
    c, h, w = shape
    return Reshape(d.pick([(c, h * w, 1), (1, c * h, w), (c, w, h)]))


def branch(d: Draw, shape: Shape, depth: int) -> tuple[Any, ...]:
    """1-2 shape-preserving layers for a residual block."""
    image = len(shape) == 3
    kinds = ["act", "bn", "ln", "dropout"] + (["conv", "pool"] if image else ["dense"])
    kinds += ["residual"] if depth < 2 else []
    out: list[Any] = []
    for _ in range(d.int(1, 2)):
        kind = d.pick(kinds)
        if kind == "conv":
            out.append(conv(d, shape, same=True))
        elif kind == "pool":
            out.append(pool(d, shape, same=True))
        elif kind == "dense":
            out.append(dense(d, shape[0], shape[0]))
        elif kind == "residual":
            out.append(Residual(branch(d, shape, depth + 1)))
        else:
            out.append(common(d, kind, shape))
    return tuple(out)


def common(d: Draw, kind: str, shape: Shape) -> Any:
    if kind == "act":
        return activation(d)
    if kind == "bn":
        return batchnorm(d, shape[0])
    if kind == "ln":
        return layernorm(d, shape)
    return Dropout(float(d.draw(st.floats(0.0, 1.0))))


def _quick(d: Draw, kinds: tuple[str, ...]) -> tuple[str, ...]:
    """``kinds`` without those the quick stage has no rule for, in its profile."""
    if not d.profile.quick_layers:
        return kinds
    return tuple(k for k in kinds if k not in ("ln", "residual", "softmax"))


def image_stage(d: Draw, shape: Shape) -> tuple[list[Any], Shape]:
    layers: list[Any] = []
    for _ in range(d.int(1, 3)):
        kinds = ("conv", "conv", "pool", "act", "bn", "ln", "dropout", "reshape", "residual")
        kind = d.pick(_quick(d, kinds))
        if kind == "conv":
            layer: Any = conv(d, shape)
        elif kind == "pool":
            layer = pool(d, shape)
        elif kind == "reshape":
            layer = reshape3(d, shape)
        elif kind == "residual":
            layer = Residual(branch(d, shape, 1))
        else:
            layer = common(d, kind, shape)
        shape = layer.out_shape(shape)
        layers.append(layer)
    return layers, shape


def vector_stage(d: Draw, n: int) -> tuple[list[Any], int]:
    layers: list[Any] = []
    for _ in range(d.int(0, 3)):
        kind = d.pick(_quick(d, ("dense", "dense", "act", "act", "bn", "ln", "dropout",
                                 "residual", "softmax")))  # fmt: skip
        if kind == "dense":
            m = d.int(1, 8)
            layers.append(dense(d, n, m))
            n = m
        elif kind == "residual":
            layers.append(Residual(branch(d, (n,), 1)))
        elif kind == "softmax":
            layers.append(Softmax())
        else:
            layers.append(common(d, kind, (n,)))
    return layers, n


@st.composite
def models(draw: Any, profile: Profile) -> Model:
    seed = draw(st.integers(0, 2**32 - 1))
    d = Draw(draw, profile, np.random.default_rng(seed))
    if profile.wide is not None:
        return wide_model(d, profile.wide, seed)
    kind = d.pick(("vector", "image", "vector_to_image"))
    layers: list[Any] = []
    if kind == "vector":
        input_shape: Shape = (d.int(1, 8),)
        n = input_shape[0]
    else:
        shape: Shape = (d.int(1, 3), d.int(1, 5), d.int(1, 5))
        if kind == "image":
            input_shape = shape
        else:
            input_shape = (d.int(1, 6),)
            layers += [dense(d, input_shape[0], math.prod(shape)), Reshape(shape)]
        more, shape = image_stage(d, shape)
        layers += more + [Flatten()]
        n = math.prod(shape)
    if profile.first_batchnorm:
        layers.insert(0, batchnorm(d, input_shape[0]))
    more, n = vector_stage(d, n)
    # two or more outputs; the single-output edge has its own test
    layers += more + [dense(d, n, d.int(2, 5))]
    head = d.pick(_quick(d, ("logits", "softmax", "activation")))
    if head == "softmax":
        layers.append(Softmax())
    elif head == "activation":  # an elementwise kernel's error reaches the output unmixed
        layers.append(activation(d))
    return Model(f"generated-{seed}", input_shape, tuple(layers))


def wide_model(d: Draw, widths: tuple[int, int], seed: int) -> Model:
    """3-4 dense layers of ``widths`` units, each followed by an activation, then the
    output layer: the errors of many roundings meet in every unit."""
    n = d.int(*widths)
    input_shape = (n,)
    layers: list[Any] = []
    for _ in range(d.int(3, 4)):
        m = d.int(*widths)
        layers += [dense(d, n, m), activation(d)]
        n = m
    layers.append(dense(d, n, d.int(2, 5)))
    return Model(f"generated-wide-{seed}", input_shape, tuple(layers))


@st.composite
def inputs(draw: Any, shape: Shape, profile: Profile) -> Array:
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(draw(st.integers(1, 3))):
        style = draw(st.sampled_from(STYLES + ("zeros", "constant")))
        scale = draw(st.sampled_from(profile.data_scales))
        if style == "zeros":
            rows.append(np.zeros(shape))
        elif style == "constant":
            rows.append(np.full(shape, scale))
        else:
            rows.append(array(rng, shape, style, scale))
    if profile.overflow_row:  # overflows binary16 in the first layer, NaN (inf * 0) later
        rows.insert(draw(st.integers(0, len(rows))), np.full(shape, 1e6))
    return np.stack(rows)


def quick_options() -> st.SearchStrategy[Options]:
    """Options under which certify's cascade starts with the quick stage: operands
    not narrower than storage, logits (no softmax appended), the cascade on."""
    return st.builds(
        Options,
        low=st.sampled_from(("binary16", "bfloat16")),
        accumulate=st.sampled_from(("binary32", "binary16")),
        truncate=st.booleans(),
        engine=st.sampled_from(("auto", "backward", "zonotope")),
        cascade=st.just(True),
        ranges=st.sampled_from(("sharpened", "unstable", "full")),
    )


def options() -> st.SearchStrategy[Options]:
    return st.builds(
        Options,
        low=st.sampled_from(("binary16", "bfloat16")),
        accumulate=st.sampled_from(("binary32", "binary16")),
        reference_operand=st.sampled_from((None, "tf32")),
        truncate=st.booleans(),
        on=st.sampled_from(("logits", "softmax")),
        engine=st.sampled_from(("auto", "backward", "zonotope")),
        cascade=st.sampled_from((False, False, True)),
        ranges=st.sampled_from(("sharpened", "sharpened", "unstable", "full")),
    )


@st.composite
def cases(
    draw: Any,
    profile: str = "normal",
    opts: st.SearchStrategy[Options] | None = None,
) -> Case:
    prof = PROFILES[profile]
    model = draw(models(prof))
    X = draw(inputs(model.input_shape, prof))
    o = draw(opts if opts is not None else options())
    return Case(model, X, o, profile, draw(st.integers(0, 2**16)))
