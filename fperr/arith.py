"""Arithmetics an executor runs the IR in: exact float64, or emulated.

A layer's forward pass is written once against this small interface; the
arithmetic decides where values are rounded:

* :class:`Exact` -- float64 numpy, no rounding beyond float64's own;
* :class:`Emulated` -- values stored in ``storage``, matmul/conv operands in
  ``operand`` (TF32 for PyTorch's TF32 mode), dot products accumulated in
  ``accumulate`` in ``order``; elementwise functions are computed in float64
  and rounded once to ``storage``; the bounds add the error measured on
  PyTorch's kernels (:mod:`fperr.bounds.allowance`), or ``func_ulps`` ulps of
  ``accumulate`` when that is given.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from .formats import FORMATS, Format, get_format
from .rounding import round as fround

Array = npt.NDArray[np.float64]
Order = Literal["sequential", "pairwise", "blocked", "blas"]


class Exact:
    """float64 arithmetic: the reference the bounds are stated against."""

    name = "exact"

    def store(self, x: Array) -> Array:
        return x

    def to_operand(self, x: Array) -> Array:
        return x

    def activation_operand(self, x: Array) -> Array:
        return x

    def matmul(self, a: Array, b: Array) -> Array:
        return np.matmul(a, b)

    def func(self, f: Callable[[Array], Array], x: Array) -> Array:
        return f(x)

    def to_dict(self) -> dict[str, Any]:
        return {"name": "exact", "storage": "binary64"}

    def __repr__(self) -> str:
        return "Exact()"


@dataclass(frozen=True)
class Emulated:
    """Low-precision arithmetic of a kernel, emulated exactly.

    ``storage``: format of every stored activation and parameter.
    ``accumulate``: format of the partial sums of dot products.
    ``operand``: format matmul/conv operands are rounded to (default:
    ``storage``; ``tf32`` for TF32 tensor cores).
    ``order``: the summation order emulated; the bounds hold for any order.
    ``acc_rounding``: ``"truncate"`` models accumulators that chop (tensor
    cores, see docs/hardware.md), doubling the per-addition error in the bounds.
    ``func_ulps``: ``None`` (default) bounds elementwise functions (exp, tanh,
    GELU, ...) by the allowance measured on real kernels
    (:mod:`fperr.bounds.allowance`); a number instead assumes they are
    evaluated in ``accumulate`` within that many ulps, then rounded to ``storage``.
    """

    storage: Format = field(default_factory=lambda: get_format("binary16"))
    accumulate: Format = field(default_factory=lambda: get_format("binary32"))
    operand: Format | None = None
    order: Order = "blas"
    block: int = 32
    acc_rounding: Literal["nearest", "truncate"] = "nearest"
    func_ulps: float | None = None

    @classmethod
    def from_names(
        cls,
        storage: str | Format = "binary16",
        accumulate: str | Format = "binary32",
        operand: str | Format | None = None,
        **kw: Any,
    ) -> Emulated:
        op = get_format(operand) if operand is not None else None
        return cls(get_format(storage), get_format(accumulate), op, **kw)

    @property
    def name(self) -> str:
        op = f", operand {self.operand.name}" if self.operand else ""
        return f"{self.storage.name} (accumulate {self.accumulate.name}{op})"

    @property
    def operand_format(self) -> Format:
        return self.operand or self.storage

    @property
    def u_acc(self) -> float:
        """Per-operation relative error of the accumulator (2u when truncating)."""
        return self.accumulate.u * (2 if self.acc_rounding == "truncate" else 1)

    def store(self, x: Array) -> Array:
        return fround(x, self.storage)

    def to_operand(self, x: Array) -> Array:
        return fround(x, self.operand_format)

    @property
    def operand_narrower(self) -> bool:
        """Whether matmul operands are rounded below storage precision (TF32)."""
        return not self.operand_format.contains(self.storage)

    def activation_operand(self, x: Array) -> Array:
        """Stored activations as matmul operands: rounded only where the operand
        format is narrower than storage (TF32); otherwise they are already exact."""
        return self.to_operand(x) if self.operand_narrower else x

    def matmul(self, a: Array, b: Array) -> Array:
        """Dot products of already-rounded operands, accumulated, then stored."""
        binary32 = get_format("binary32")
        if self.order == "blas" and self.accumulate == binary32 and self.operand_format.p <= 24:
            # Operands are float32 values, so their products are exact in float64:
            # a float64 GEMM rounded once to binary32 is a run of a (wider)
            # binary32 accumulator within Higham's model.  A float32 GEMM would
            # do too, but BLAS picks its kernel (and order) by batch size, so a
            # row would compute differently alone and in a batch; in float64 the
            # order only shows in the last float64 bits, far below binary32.
            # (asarray: float64 operands, the usual case, are not copied)
            wide = np.matmul(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))
            with np.errstate(over="ignore"):
                acc = wide.astype(np.float32)
                if self.storage.same_values(binary32):  # stored as accumulated
                    return acc.astype(np.float64)
                if self.storage.same_values(FORMATS["binary16"]):
                    # numpy's float32 -> float16 cast rounds to nearest-even, as the
                    # float64 one does from the same (exactly widened) value: one pass
                    # fewer (tests/test_arith.py sweeps the halfway cases)
                    return acc.astype(np.float16).astype(np.float64)
                return self.store(acc.astype(np.float64))
        from .accumulation import AccumulationModel
        from .accumulation import matmul as acc_matmul

        # Operands are exact in `operand`; the model must not round the sums
        # to `operand` when that is narrower than `storage` (TF32).
        inner = self.operand_format if self.operand is None else self.accumulate
        model = AccumulationModel(inner, self.accumulate, self.order, self.block)
        return self.store(acc_matmul(a, b, model))

    def func(self, f: Callable[[Array], Array], x: Array) -> Array:
        with np.errstate(over="ignore"):
            return self.store(f(x))

    def to_dict(self) -> dict[str, Any]:
        """Every field, losslessly (:meth:`from_dict` inverts it); built-in formats by
        name, others as their fields.  ``name`` and ``operand_format`` are for reading."""
        return {
            "name": self.name,
            "storage": _format_to(self.storage),
            "accumulate": _format_to(self.accumulate),
            "operand": None if self.operand is None else _format_to(self.operand),
            "operand_format": self.operand_format.name,
            "order": self.order,
            "block": self.block,
            "acc_rounding": self.acc_rounding,
            "func_ulps": self.func_ulps,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Emulated:
        op = d.get("operand")
        return cls(_format_from(d["storage"]), _format_from(d["accumulate"]),
                   None if op is None else _format_from(op), d.get("order", "blas"),
                   d.get("block", 32), d.get("acc_rounding", "nearest"),
                   d.get("func_ulps"))  # fmt: skip


def _format_to(f: Format) -> Any:
    return f.name if FORMATS.get(f.name) == f else asdict(f)


def _format_from(d: Any) -> Format:
    return get_format(d) if isinstance(d, str) else Format(**d)


Arithmetic = Exact | Emulated
