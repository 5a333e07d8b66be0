"""What an operator of the model IR is: one class holds everything about it.

A registered operator (:func:`register`) carries, in one file:

- its YAML spec (a pydantic model, ``Spec``) and the way back (``spec_fields``);
- shape inference (``out_shape``) and the forward pass written once against
  :mod:`fperr.arith` (exact float64 or emulated in any format);
- its bound rules: ``step`` for the backward engine (a cheap forward range and
  the linear map that pulls output rows back to its inputs, see
  :mod:`fperr.bounds.steps`), and optionally ``rule`` for the forward zonotope
  (the reference engine for chains);
- the a-priori rule over an input box (``apriori``) where it has one;
- how other executors run it: ``torch_module`` (real PyTorch kernels, for
  validation: the torch layer users' models use where there is one, else
  ``torch_forward``) and ``mpmath_forward`` (the high-precision oracle);
- its import patterns: the ``torch.nn`` leaf modules it stands for
  (``torch_module_classes``, ``from_torch_module``) and the ONNX op types it
  imports (``onnx_ops``, ``from_onnx``), the ``torch.fx`` calls (``fx_functions``,
  ``fx_methods``, ``from_fx``) and the ``torch.export`` aten ops (``aten_ops``,
  ``from_aten``) it stands for.

Every layer type is an operator, found through :data:`REGISTRY` by the model
loader, the engines, the executors and the memory estimate, never dispatched by
type; adding one touches its own file and its tests.  (The residual block of
:mod:`fperr.layers` is a nested chain, not an operator.)  A class may stand for
several types (:attr:`Operator.types`: the activations, max and average
pooling), the instance's ``type`` saying which.  Every behaviour an operator
does not offer raises :class:`OperatorUnsupported` (a
:class:`~fperr.errors.FperrInputError`) with one line that names it.

The pattern follows onnx.reference (one class per ONNX operator, each with
its own ``_run``) and auto_LiRPA's bound operators (each with its forward
value and its backward bound rule).
"""

from __future__ import annotations

import builtins
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field

from ..errors import FperrInputError, SpecError

if TYPE_CHECKING:
    import onnx

    from ..arith import Arithmetic
    from ..bounds.enclosure import Enclosure
    from ..bounds.quick import Quick
    from ..bounds.rules import Context
    from ..bounds.steps import Step
    from ..importers.onnx_converter import _OnnxConverter
    from ..importers.onnx_ops import Site
    from ..model import Model

Array = npt.NDArray[np.float64]
Shape = tuple[int, ...]
Put = Callable[[str, "Array | None"], "str | None"]
"""``put(name, array)`` stores a parameter array for saving and returns its key."""


class OperatorUnsupported(FperrInputError):
    """An operator does not offer a behaviour (an engine, an executor)."""


class OperatorSpec(BaseModel):
    """Fields every layer's YAML spec has (the base of :mod:`fperr.spec`'s layers too)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)
    name: str | None = Field(None, description="name other layers' inputs refer to")
    inputs: list[str] | None = Field(
        None, min_length=1,
        description="names of the layers (or 'input') this layer reads; default: the one before",
    )  # fmt: skip


class Weights:
    """What ``from_spec`` may ask of the weight file (see :class:`fperr.model._Weights`)."""

    def get(self, key: str | None, where: str, ndim: int | None = None) -> Array | None:
        raise NotImplementedError  # pragma: no cover - protocol

    def need(self, key: str, where: str, ndim: int | None = None) -> Array:
        raise NotImplementedError  # pragma: no cover - protocol


class Operator:
    """Base class of registered operators."""

    type: ClassVar[str]
    types: ClassVar[tuple[str, ...]] = ()
    """Every type name the class stands for, when several (activations, pooling):
    the instance's ``type`` says which; empty: just ``type``."""
    Spec: ClassVar[builtins.type[OperatorSpec]]
    arity: ClassVar[int] = 1
    """Inputs read: 1, 2, ... or 0 for any number >= 2 (``merge`` instead of ``forward``)."""
    sharpen: ClassVar[float | None] = None
    """Backward engine: sharpen incoming ranges wider than this fraction of the values
    (layers whose local error depends on the range beyond second order), or None."""
    def sharpen_threshold(self) -> float | None:
        """:attr:`sharpen`, or the instance's own where it depends on the instance."""
        return self.sharpen

    def unstable(self, x: Array, reach: Array) -> npt.NDArray[np.bool_] | None:
        """Backward engine, ``ranges="unstable"``: the input units whose range
        [x - reach, x + reach] may change this operator's rule (a ReLU unit whose
        range reaches the kink, a max-pooling window whose winner is in doubt), the
        only ones sharpened there; None where every unit's range matters (curved
        functions: the threshold alone decides)."""
        return None

    def has_quick(self) -> bool:
        """Whether :meth:`quick` bounds this operator: the cascade's first stage
        (:mod:`fperr.bounds.quick`, both runs in one forward pass) for models whose
        every layer has it."""
        return False

    def quick(self, q: Quick, lo: Context, ref: Context) -> Quick:
        """Both runs' values and error bounds at this operator's output, from its
        input's (:class:`fperr.bounds.quick.Quick`); ``lo`` and ``ref`` the runs'
        worst-case contexts."""
        raise OperatorUnsupported(f"{self.type}: no quick bound (the cascade's first stage)")

    needs_functional: ClassVar[bool] = False
    """Backward engine: ``step`` takes ``functional=``, the radius of any functional of
    its input pulled back through every earlier layer (a norm's signed projections)."""
    uses_spread: ClassVar[bool] = False
    """Backward engine: ``step`` takes ``spread=``, per input a bound s <= r on this
    run's own error |x - x*| (from a reference run's values, see
    :func:`fperr.bounds.engine.bound`): any run's and the exact inputs then lie in
    [x - r - s, x + r + s] rather than [x - 2r, x + 2r] (nonlinearities' slopes,
    max pooling's winners)."""
    moves_units: ClassVar[bool] = False
    """Values only move (flatten, reshape, dropout): the zonotope engine keeps the
    generators without a copy (its memory estimate)."""

    @classmethod
    def example(cls, rng: np.random.Generator) -> Model:
        """A small model that uses this operator (random parameters from ``rng``): the
        conformance and soundness tests run every registered operator through it."""
        raise NotImplementedError

    @classmethod
    def example_for(cls, type_name: str, rng: np.random.Generator) -> Model:
        """:meth:`example` for one of :attr:`types` (a class standing for several)."""
        return cls.example(rng)

    @classmethod
    def specs(cls) -> tuple[builtins.type[OperatorSpec], ...]:
        """The YAML spec classes of the class's types (one unless it stands for several)."""
        return (cls.Spec,)

    # -- construction and saving --------------------------------------------------------
    @classmethod
    def from_spec(cls, spec: Any, weights: Weights, where: str) -> Operator:
        """The operator a validated spec describes (parameters from ``weights``)."""
        raise NotImplementedError

    def spec_fields(self, put: Put) -> dict[str, Any]:
        """The spec's fields other than ``type``, ``name`` and ``inputs`` (None: omitted)."""
        return {}

    # -- shapes and values ---------------------------------------------------------------
    def out_shape(self, shape: Shape) -> Shape:
        if self.arity != 1:
            raise SpecError(f"{self.type} reads several inputs: it needs a graph model "
                            "('inputs:')")  # fmt: skip
        raise NotImplementedError

    def merge_shape(self, shapes: list[Shape]) -> Shape:
        self._check_arity(len(shapes))
        return self.out_shape(shapes[0])

    def forward(self, x: Array, arith: Arithmetic) -> Array:
        if self.arity != 1:
            raise SpecError(f"{self.type} reads several inputs: it needs a graph model "
                            "('inputs:')")  # fmt: skip
        raise NotImplementedError

    def merge(self, xs: list[Array], arith: Arithmetic) -> Array:
        """The output for a list of inputs (one per wired input)."""
        return self.forward(xs[0], arith)

    def _check_arity(self, n: int) -> None:
        want = self.arity
        if (want == 0 and n < 2) or (want and n != want):
            need = "at least two" if want == 0 else str(want)
            raise SpecError(f"{self.type}: reads {need} input{'s' * (need != '1')}, got {n}")

    # -- bounds ------------------------------------------------------------------------------
    def step(self, xs: list[Array], rs: list[Array], ctx: Context, group: int) -> Step:
        """The backward engine's step: computed inputs ``xs``, each ``(N, *in)``, and
        their radii ``rs`` (and ``functional=`` where :attr:`needs_functional`)."""
        raise NotImplementedError

    def rule(self, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
        """The forward zonotope rule (chains only)."""
        raise OperatorUnsupported(f"{self.type} has no forward-zonotope rule; use the "
                                  "backward engine (engine='backward')")  # fmt: skip

    @classmethod
    def has_rule(cls) -> bool:
        return cls.rule is not Operator.rule

    def apriori(self, lo: Array, hi: Array, r: Array, arith: Any,
                out_shape: Shape) -> tuple[Array, Array, Array]:  # fmt: skip
        """The a-priori rule (:mod:`fperr.bounds.apriori`): the output's value interval
        [lo, hi] and error radius for every input in [lo, hi] with errors up to ``r``
        (one input's arrays, no batch axis)."""
        raise OperatorUnsupported(f"a-priori bounds do not support layer type {self.type!r}")

    def zonotope_matrix_floats(self, in_shape: Shape, out_shape: Shape) -> int:
        """Floats the zonotope rule allocates beyond the generators to form the layer's
        matrix (a convolution's im2col of the unit images; memory estimate)."""
        return 0

    def work(self, in_shapes: list[Shape], out_shape: Shape) -> float:
        """Multiply-adds per input (the backward engine's sharpening budget counts them)."""
        return float(math.prod(out_shape))

    def products(self, in_shapes: list[Shape], out_shape: Shape) -> int:
        """Terms of all dot products per input: the events of the probabilistic bound's
        failure budget (Higham & Mary 2019, Theorem 3.1)."""
        return 0

    # -- other executors ---------------------------------------------------------------------
    def torch_module(self, in_shapes: list[Shape]) -> Any:
        """The ``torch.nn.Module`` the torch executor runs (per-input shapes ``in_shapes``);
        by default :meth:`torch_forward` with :meth:`torch_parameters` as float64
        parameters.  Operators with a torch layer of their own return it, so that a
        validation run takes the kernels users' models take."""
        from ..hardware.torch_exec import operator_module

        return operator_module(self)

    def torch_forward(self, xs: list[Any], params: dict[str, Any]) -> Any:
        """The output from torch tensors ``xs`` (real kernels, any dtype and device);
        ``params``: :meth:`torch_parameters` as tensors of the run's dtype and device."""
        raise OperatorUnsupported(f"{self.type} has no torch executor")

    def torch_parameters(self) -> dict[str, Array]:
        """Parameter arrays the torch executor moves to the run's dtype and device."""
        return {k: v for k, v in vars(self).items() if isinstance(v, np.ndarray)}

    def mpmath_forward(self, xs: list[Any]) -> Any:
        """The output from object arrays of ``mpmath.mpf`` (at the caller's precision)."""
        raise OperatorUnsupported(f"{self.type} has no mpmath executor")

    # -- import patterns -----------------------------------------------------------------------
    torch_module_classes: ClassVar[tuple[tuple[str, bool], ...]] = ()
    """The ``torch.nn`` leaf modules the torch importer turns into this operator, as
    (name of a class in ``torch.nn``, exact) pairs: exact matches the class only, not its
    subclasses (which may compute something else); otherwise any instance matches.  The
    importer tries them in :data:`REGISTRY` order, then ``nn.Identity``
    (:func:`fperr.importers.from_torch._module_converters`)."""

    @classmethod
    def from_torch_module(cls, mod: Any) -> Any:
        """A leaf module of :attr:`torch_module_classes` as the torch importer's
        ``(build, hint, elementwise)``: ``build(shape)`` the layers for a per-input shape,
        ``hint`` the per-input shape the module implies (or None), ``elementwise`` whether
        it acts on each value alone.  Settings the operator cannot express raise the
        importer's ``_Unsupported`` (the module is then listed as unsupported)."""
        raise OperatorUnsupported(f"{cls.__name__} imports no torch.nn module")

    onnx_ops: ClassVar[tuple[str, ...]] = ()
    """The ONNX op types (default domain) the ONNX importer turns into this operator;
    each is declared by one operator at most.  The importer's table is these, each to
    :meth:`from_onnx`, plus the converters of :mod:`fperr.importers.onnx_ops` for op
    types that are no one operator's (several operators, or none: Add, Cast, ...)
    (:func:`fperr.importers.onnx_converter.converters`)."""

    @classmethod
    def from_onnx(cls, cv: _OnnxConverter, n: onnx.NodeProto, s: Site) -> None:
        """A node ``n`` of an op type of :attr:`onnx_ops` converted, as the ONNX
        importer's converters do: its data inputs read as index maps from ``cv.lays``
        (constants from ``cv``), the layers added to ``cv`` and the layout of the
        output recorded in ``cv.lays``; ``s`` the node's attributes, label and first
        input.  Nodes the operator cannot express raise the importer's ``_Unsupported``
        (the node is then counted as unsupported)."""
        raise OperatorUnsupported(f"{cls.__name__} imports no ONNX op")

    fx_functions: ClassVar[tuple[str, ...]] = ()
    """The ``torch.fx`` call_function targets the torch importer turns into this
    operator, as dotted names of torch objects (``"torch.nn.functional.softmax"``,
    ``"torch.relu"``, ``"operator.matmul"``) that the importer resolves lazily; each
    target is declared by one operator at most.  The importer's table is these, each to
    :meth:`from_fx`, plus its own converters of targets that are no one operator's
    (add, getitem, split, reshape, SDPA, ...)
    (:func:`fperr.importers.from_torch._function_converters`)."""
    fx_methods: ClassVar[tuple[str, ...]] = ()
    """The tensor method names (``torch.fx`` call_method nodes: ``"softmax"``,
    ``"relu_"``) the torch importer turns into this operator, each to :meth:`from_fx`,
    declared by one operator at most (:data:`fperr.importers.from_torch._METHODS`)."""

    @classmethod
    def from_fx(cls, node: Any, label: str, params: Any) -> Any:
        """A ``torch.fx`` node of :attr:`fx_functions` or :attr:`fx_methods` converted, as
        the torch importer's converters do: the importer's op (or ops) reading the node's
        value arguments; ``params(a)`` the module tensor an argument node reads, or None.
        A class with several entries dispatches on ``node.target`` (the torch object or
        the method name).  Calls the operator cannot express raise the importer's
        ``_Unsupported`` (the node is then listed as unsupported)."""
        raise OperatorUnsupported(f"{cls.__name__} imports no torch.fx call")

    aten_ops: ClassVar[tuple[str, ...]] = ()
    """The aten overload packets (``"aten.softmax"``, as ``str(op.overloadpacket)``) the
    ``torch.export`` importer turns into this operator, each to :meth:`from_aten`,
    declared by one operator at most; the importer adds its own converters of ops that
    are no one operator's (:func:`fperr.importers.torch_export._converters`)."""

    @classmethod
    def from_aten(cls, n: Any, label: str, ctx: Any) -> Any:
        """An aten node ``n`` of an op of :attr:`aten_ops` converted, as the
        ``torch.export`` importer's converters do: the list of the importer's ops;
        ``ctx`` its parameters and per-input shapes.  Nodes the operator cannot express
        raise the importer's ``_Unsupported``."""
        raise OperatorUnsupported(f"{cls.__name__} imports no aten op")


REGISTRY: dict[str, type[Operator]] = {}
"""Every registered operator class, by its ``type`` name."""


def register(cls: type[Operator]) -> type[Operator]:
    """Class decorator: add an operator to :data:`REGISTRY` under each of its types
    (each must be new)."""
    for name in cls.types or (cls.type,):
        if name in REGISTRY:  # pragma: no cover - a programming error
            raise ValueError(f"operator type {name!r} registered twice")
        REGISTRY[name] = cls
    return cls


def is_operator(layer: object) -> bool:
    return isinstance(layer, Operator)


def check_axis(op: str, axis: int, ndim: int) -> int:
    """A per-input axis (negative counts from the end) as a nonnegative index."""
    if not -ndim <= axis < ndim:
        raise SpecError(f"{op}: axis {axis} out of range for a per-input shape of rank {ndim}")
    return axis % ndim
