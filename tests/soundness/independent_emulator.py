"""An emulator of fperr's model IR, written from scratch for the soundness tests.

It reads the *parameters* of fperr's layer dataclasses (``fperr.layers``) and
nothing else of fperr: rounding, summation orders, elementwise functions and
every layer's arithmetic are computed here.  Rounding to binary16/binary32
(round to nearest) uses numpy casts from binary64, which round correctly
(one rounding of an exact binary64 value); everything else (bfloat16, TF32,
truncating accumulators, division, square roots, fused multiply-adds, values
that are not exact in binary64) uses gmpy2 contexts that are IEEE formats
with gradual underflow.  The exact run uses gmpy2 at 256 bits on object
arrays (only context methods, never the Python operators, which would round
to the global context's 53 bits).

One :class:`Machine` is one kernel inside fperr's stated arithmetic model
(``fperr.arith.Emulated``): activations and parameters stored in
``storage``; matmul operands in ``operand`` (weights stored first, then
converted, to nearest or chopped as TF32 hardware may); dot products
accumulated in ``accumulate`` in one of :data:`ORDERS` (each product
rounded, or fused multiply-adds), to nearest or chopping; the bias added
after storing the sum, or in the accumulator (a fused epilogue); elementwise
functions within ``func_ulps`` ulps of ``accumulate`` (:data:`FUNC_MODES`),
then stored; softmax (x - max, exp, sum, divide), layer norm (mean,
variance, rsqrt, affine), batch norm (the forms of :class:`Variant`) and
average pooling either correctly rounded or step by step in ``accumulate``.
Elementwise steps round to nearest even where the accumulator chops (tensor
cores chop inside the sums only).  Each run records status flags
(``overflow``, ``product_underflow``, ``acc_tail``, ``func_tail``) that let a
failure be attributed to a known hole of issue 11.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from functools import reduce
from typing import Any

import gmpy2
import numpy as np
import numpy.typing as npt

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

Array = npt.NDArray[Any]  # float64 for emulated runs, object (gmpy2.mpfr) for the exact run

EXACT_BITS = 256
_HP = gmpy2.context(precision=EXACT_BITS)
_ROUNDING = {
    "nearest": gmpy2.RoundToNearest,
    "truncate": gmpy2.RoundToZero,
    "down": gmpy2.RoundDown,
    "up": gmpy2.RoundUp,
}

ORDERS = (
    "sequential",
    "reversed",
    "pairwise",
    "ascending",
    "descending",
    "alternating",
    "random",
    "positives_first",
    "negatives_first",
    "fma",
)
FUNC_MODES = ("correct", "acc", "up", "down")


# -- formats ------------------------------------------------------------------------
@dataclass(frozen=True)
class Fmt:
    """An IEEE-style binary format: precision p (with the hidden bit), emax, subnormals."""

    name: str
    p: int
    emax: int

    @property
    def emin(self) -> int:
        return 1 - self.emax

    @property
    def smallest_normal(self) -> float:
        return 2.0**self.emin

    @property
    def max(self) -> float:
        return (2.0 - 2.0 ** (1 - self.p)) * 2.0**self.emax

    def context(self, mode: str = "nearest") -> gmpy2.context:
        # MPFR exponents: x = m 2^e with m in [1/2, 1); the smallest subnormal
        # 2^(emin - p + 1) is 1/2 * 2^(emin - p + 2).
        return gmpy2.context(
            precision=self.p,
            emax=self.emax + 1,
            emin=self.emin - self.p + 2,
            subnormalize=True,
            round=_ROUNDING[mode],
        )


FORMATS: dict[str, Fmt] = {
    "binary16": Fmt("binary16", 11, 15),
    "binary32": Fmt("binary32", 24, 127),
    "bfloat16": Fmt("bfloat16", 8, 127),
    "tf32": Fmt("tf32", 11, 127),
}
_NUMPY = {"binary16": np.float16, "binary32": np.float32}


# -- elementwise helpers ------------------------------------------------------------
def mp(x: Any) -> Array:
    """float64 (or already mpfr) array -> object array of exact mpfr values."""
    a = np.asarray(x)
    if a.dtype == object:
        return a
    with np.errstate(invalid="ignore"):  # NaN passes through frompyfunc
        return np.asarray(np.frompyfunc(lambda t: gmpy2.mpfr(t, 53), 1, 1)(a), dtype=object)


def _omap(fn: Callable[..., Any], *arrays: Any) -> Array:
    """Apply a gmpy2 function elementwise; object array out."""
    with np.errstate(invalid="ignore"):
        return np.asarray(np.frompyfunc(fn, len(arrays), 1)(*arrays), dtype=object)


def _fmap(fn: Callable[..., Any], *arrays: Any) -> Array:
    """Apply a gmpy2 function elementwise; float64 array out."""
    with np.errstate(invalid="ignore"):
        out = np.frompyfunc(lambda *v: float(fn(*v)), len(arrays), 1)(*arrays)
    return np.asarray(out, dtype=object).astype(np.float64)


def _two_sum_err(a: Array, b: Array, s: Array) -> Array:
    """Knuth's TwoSum: s + err == a + b exactly (no overflow in binary64 here)."""
    bb = s - a
    return (a - (s - bb)) + (b - bb)


def _two_prod_err(a: Array, b: Array, p: Array) -> Array:
    """Dekker's TwoProduct with Veltkamp splitting: p + err == a b exactly."""

    def split(v: Array) -> tuple[Array, Array]:
        c = 134217729.0 * v  # 2^27 + 1
        hi = c - (c - v)
        return hi, v - hi

    ah, al = split(a)
    bh, bl = split(b)
    return ((ah * bh - p) + ah * bl + al * bh) + al * bl


def hp_function(name: str) -> Callable[[Any], Any]:
    """f at 256 bits: the value a correctly rounded kernel rounds."""
    if name == "tanh":
        return _HP.tanh
    if name == "exp":
        return _HP.exp
    if name == "sigmoid":
        return lambda v: _HP.div(1, _HP.add(1, _HP.exp(_HP.minus(v))))
    if name == "gelu":  # x Phi(x) = x/2 erfc(-x/sqrt 2): no cancellation in the left tail
        root2 = _HP.sqrt(2)
        return lambda v: _HP.mul(_HP.div(v, 2), _HP.erfc(_HP.div(_HP.minus(v), root2)))
    raise ValueError(f"no elementwise function {name!r}")


class Rounding:
    """Round exact values to one format in one rounding mode, recording overflow."""

    def __init__(self, fmt: Fmt, mode: str, flags: set[str], tails: bool = False) -> None:
        self.fmt, self.mode, self.flags, self.tails = fmt, mode, flags, tails
        self.ctx = fmt.context(mode)
        self.dtype = _NUMPY.get(fmt.name) if mode == "nearest" else None

    def _note_overflow(self, out: Array, *ins: Array) -> None:
        finite = np.ones(np.shape(out), dtype=bool)
        for a in ins:
            finite &= np.isfinite(a)
        if (finite & ~np.isfinite(out)).any():
            self.flags.add("overflow")

    def __call__(self, v: Array) -> Array:
        """float64 values (exact) -> nearest (or chopped) values of the format."""
        v = np.asarray(v, dtype=np.float64)
        if self.dtype is not None:
            with np.errstate(over="ignore", invalid="ignore"):
                out = v.astype(self.dtype).astype(np.float64)
        else:
            out = _fmap(self.ctx.plus, v)
        self._note_overflow(out, v)
        return out

    def from_mp(self, v: Any) -> Array:
        """Exact mpfr (or float64) values -> one rounding to the format."""
        a = np.asarray(v)
        if a.dtype != object:
            return self(a)
        out = _fmap(self.ctx.plus, a)
        self._note_overflow(out, a.astype(np.float64))
        self._note_tail(out, a)
        return out

    def _note_tail(self, out: Array, exact: Any) -> None:
        """Flag an inexact result below the normal range (an accumulator's
        absolute error there is not relative: issue 11, item 3)."""
        if not self.tails:
            return
        small = np.abs(out) < self.fmt.smallest_normal
        if small.any():
            e = np.broadcast_to(np.asarray(exact, dtype=object), out.shape)[small]
            if _omap(lambda o, x: o != x, out[small], e).astype(bool).any():
                self.flags.add("acc_tail")

    def add(self, a: Array, b: Array) -> Array:
        a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
        with np.errstate(invalid="ignore", over="ignore"):
            s = a + b
            exact = np.isfinite(s) & (_two_sum_err(a, b, s) == 0)
        out = self(np.where(exact, s, 0.0))
        if not exact.all():
            out[~exact] = _fmap(self.ctx.add, a[~exact], b[~exact])
            self._note_overflow(out, a, b)
        return out

    def mul(self, a: Array, b: Array) -> tuple[Array, Array]:
        """Rounded products and a mask of products that underflowed inexactly."""
        a, b = np.broadcast_arrays(np.asarray(a, np.float64), np.asarray(b, np.float64))
        with np.errstate(invalid="ignore", over="ignore"):
            p = a * b
            exact = np.isfinite(p) & (_two_prod_err(a, b, p) == 0)
        out = self(np.where(exact, p, 0.0))
        if not exact.all():
            out[~exact] = _fmap(self.ctx.mul, a[~exact], b[~exact])
            self._note_overflow(out, a, b)
        tiny = exact & (p != 0) & (np.abs(p) < self.fmt.smallest_normal) & (out != p)
        return out, tiny

    def op(self, name: str, *args: Array) -> Array:
        """Correctly rounded div, sqrt or fma through the gmpy2 context."""
        fn = {"div": self.ctx.div, "sqrt": self.ctx.sqrt, "fma": self.ctx.fma}[name]
        bs = np.broadcast_arrays(*(np.asarray(a, np.float64) for a in args))
        out = _fmap(fn, *bs) if bs[0].size else np.zeros(bs[0].shape)
        self._note_overflow(out, *bs)
        if self.tails and bs[0].size:
            exact = {"div": _HP.div, "sqrt": _HP.sqrt, "fma": _HP.fma}[name]
            self._note_tail(out, _omap(exact, *(mp(b) for b in bs)))
        return out


# -- summation orders ---------------------------------------------------------------------
def _sign_split(row: Array, first: str) -> npt.NDArray[np.int64]:
    """Indices of one row: one sign by decreasing magnitude, then the other."""
    mag = np.abs(row)
    pos = [int(i) for i in np.argsort(-mag, kind="stable") if not row[i] < 0]
    neg = [int(i) for i in np.argsort(-mag, kind="stable") if row[i] < 0]
    if first == "alternating":
        out: list[int] = []
        for k in range(max(len(pos), len(neg))):
            out += pos[k : k + 1] + neg[k : k + 1]
        return np.asarray(out, dtype=np.int64)
    parts = (pos, neg) if first == "positives_first" else (neg, pos)
    return np.asarray(parts[0] + parts[1], dtype=np.int64)


def permutation(T: Array, order: str, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """(M, n) indices: the order each row's terms are added in."""
    M, n = T.shape
    base = np.broadcast_to(np.arange(n), (M, n))
    mag = np.abs(np.asarray(T, dtype=np.float64))
    if order in ("sequential", "pairwise", "fma"):
        return np.asarray(base)
    if order == "reversed":
        return np.asarray(base[:, ::-1])
    if order == "ascending":
        return np.argsort(mag, axis=1, kind="stable")
    if order == "descending":
        return np.argsort(-mag, axis=1, kind="stable")
    if order == "random":
        return np.argsort(rng.random((M, n)), axis=1)
    if order in ("alternating", "positives_first", "negatives_first"):
        return np.stack([_sign_split(np.asarray(r, np.float64), order) for r in T])
    raise ValueError(f"unknown order {order!r}")


# -- machines ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Variant:
    """How one run differs from another inside the arithmetic model."""

    order: str = "sequential"
    func: str = "correct"  # elementwise kernels: correct / acc / up / down (func_ulps ulps)
    epilogue: str = "separate"  # bias: rounded to storage after the sum, or fused in acc
    operand_mode: str = "nearest"  # conversion to a narrower operand format (TF32 may chop)
    # batch norm: "torch" (parameters stored, alpha = w / sqrt(v + eps) and
    # beta = b - m alpha in the accumulator, y = x alpha + beta: PyTorch's CPU
    # kernel), "two_step" ((x - m) alpha + b), "torch32" (parameters kept in
    # binary32), "folded" (s, t computed exactly then stored: fperr before issue 11)
    bn: str = "torch"


VARIANTS: tuple[Variant, ...] = (
    Variant("sequential", "correct", "separate", "nearest", "torch"),
    Variant("reversed", "acc", "fused", "nearest", "two_step"),
    Variant("pairwise", "up", "separate", "truncate", "torch32"),
    Variant("ascending", "down", "fused", "nearest", "torch"),
    Variant("descending", "correct", "fused", "truncate", "two_step"),
    Variant("alternating", "up", "separate", "nearest", "torch32"),
    Variant("random", "down", "separate", "truncate", "two_step"),
    Variant("positives_first", "acc", "separate", "nearest", "torch32"),
    Variant("negatives_first", "up", "fused", "nearest", "two_step"),
    Variant("fma", "down", "fused", "truncate", "torch"),
)


class Machine:
    """One emulated run: storage / accumulate / operand formats, one variant."""

    exact = False

    def __init__(
        self,
        storage: str,
        accumulate: str,
        operand: str | None = None,
        acc_mode: str = "nearest",
        variant: Variant = VARIANTS[0],
        func_ulps: int = 1,
        seed: int = 0,
        tail_ulps: bool = False,
    ) -> None:
        self.flags: set[str] = set()
        self.variant, self.func_ulps, self.tail_ulps = variant, func_ulps, tail_ulps
        self.st = Rounding(FORMATS[storage], "nearest", self.flags)
        self.acc = Rounding(FORMATS[accumulate], acc_mode, self.flags, tails=True)
        # elementwise kernels (functions, softmax, batch norm, affine steps) round
        # to nearest in the accumulator's format even where sums chop (tensor cores)
        self.fn = Rounding(FORMATS[accumulate], "nearest", self.flags, tails=True)
        self.op = Rounding(FORMATS[operand], variant.operand_mode, self.flags) if operand else None
        self.b32 = Rounding(FORMATS["binary32"], "nearest", self.flags)
        self.rng = np.random.default_rng(seed)

    # parameters and stored values
    def const(self, v: Any) -> Array:
        return np.asarray(v, dtype=np.float64)

    def store(self, v: Array) -> Array:
        return self.st(v)

    def store_mp(self, v: Any) -> Array:
        return self.st.from_mp(v)

    def weights(self, w: Array) -> Array:
        """Weights as matmul operands: stored, then converted to the operand format."""
        ws = self.store(self.const(w))
        return self.op(ws) if self.op is not None else ws

    def act_operand(self, x: Array) -> Array:
        return self.op(x) if self.op is not None else x

    @contextmanager
    def nearest(self) -> Iterator[None]:
        """Run elementwise kernel steps in the accumulator's format, to nearest."""
        saved, self.acc = self.acc, self.fn
        try:
            yield
        finally:
            self.acc = saved

    # accumulator arithmetic
    def acc_round(self, v: Any) -> Array:
        return self.acc(self.const(v))

    def acc_add(self, a: Array, b: Array) -> Array:
        return self.acc.add(a, b)

    def acc_sub(self, a: Array, b: Array) -> Array:
        return self.acc.add(a, -np.asarray(b, dtype=np.float64))

    def acc_mul(self, a: Array, b: Array) -> Array:
        out, tiny = self.acc.mul(a, b)
        if tiny.any():
            self.flags.add("product_underflow")
        return out

    def acc_div(self, a: Any, b: Any) -> Array:
        return self.acc.op("div", a, b)

    def acc_sqrt(self, a: Array) -> Array:
        return self.acc.op("sqrt", a)

    def acc_fma(self, a: Array, b: Array, c: Array) -> Array:
        out = self.acc.op("fma", a, b, c)
        exact = _omap(_HP.fma, mp(a), mp(b), mp(c))
        mag = np.abs(exact.astype(np.float64))
        inexact = _omap(lambda o, e: o != e, out, exact).astype(bool)
        if ((mag != 0) & (mag < self.acc.fmt.smallest_normal) & inexact).any():
            self.flags.add("product_underflow")
        return out

    def st_add(self, a: Array, b: Array) -> Array:
        return self.st.add(a, b)

    # sums and dot products
    def sum_rows(self, T: Array) -> Array:
        """(M, n) terms -> (M,) sums in this run's order."""
        T = np.asarray(T, dtype=np.float64)
        if T.shape[1] == 0:
            return np.zeros(T.shape[0])
        P = permutation(T, self.variant.order, self.rng)
        T = np.take_along_axis(T, P, axis=1)
        if self.variant.order == "pairwise":
            return self._pairwise(T)
        s = T[:, 0]
        for j in range(1, T.shape[1]):
            s = self.acc_add(s, T[:, j])
        return s

    def _pairwise(self, T: Array) -> Array:
        n = T.shape[1]
        if n == 1:
            return T[:, 0]
        h = (n + 1) // 2
        return self.acc_add(self._pairwise(T[:, :h]), self._pairwise(T[:, h:]))

    def dot(self, A: Array, B: Array) -> Array:
        """Row-wise dot products of operands A, B (M, n)."""
        if self.variant.order != "fma" or A.shape[1] == 0:
            return self.sum_rows(self.acc_mul(A, B))
        s = self.acc_mul(A[:, 0], B[:, 0])
        for j in range(1, A.shape[1]):
            s = self.acc_fma(A[:, j], B[:, j], s)
        return s

    # elementwise kernels
    def acc_value(self, hp: Array) -> Array:
        """A kernel's value of f in the accumulator, within func_ulps ulps of f.

        Below the accumulator's normal range an ulp is an absolute error that
        no relative allowance covers; there values are rounded to nearest
        unless ``tail_ulps`` (then the ``func_tail`` flag is raised).
        """
        mode = self.variant.func
        nearest = self.acc.from_mp(hp)
        if mode in ("correct", "acc"):
            return nearest
        dt = _NUMPY[self.acc.fmt.name]
        ctx = self.acc.fmt.context("down" if mode == "up" else "up")
        v = _fmap(ctx.plus, hp).astype(dt)
        target = dt(np.inf) if mode == "up" else dt(-np.inf)
        with np.errstate(over="ignore"):
            for _ in range(self.func_ulps):
                v = np.nextafter(v, target)
        mag = np.abs(np.asarray(hp, dtype=object).astype(np.float64))
        tail = (mag < self.acc.fmt.smallest_normal) & (v.astype(np.float64) != nearest)
        if not self.tail_ulps:
            return np.where(tail, nearest, v.astype(np.float64))
        if tail.any():
            self.flags.add("func_tail")
        return v.astype(np.float64)

    def func(self, name: str, x: Array) -> Array:
        hp = _omap(hp_function(name), mp(x))
        if self.variant.func == "correct":
            return self.store_mp(hp)
        with self.nearest():
            return self.store(self.acc_value(hp))

    def leaky(self, x: Array, slope: float) -> Array:
        if self.variant.func == "correct":  # one rounding of the exact product
            return self.store_mp(_omap(_HP.mul, gmpy2.mpfr(slope, 53), mp(x)))
        # a kernel (torch's): the slope converted to the accumulator's format,
        # one product there, stored
        with self.nearest():
            return self.store(self.acc_mul(self.acc_round(slope), x))


class ExactMachine(Machine):
    """The exact run: object arrays of 256-bit mpfr values, no rounding."""

    exact = True

    def __init__(self) -> None:
        self.flags = set()
        self.variant = Variant()
        self.op = None

    def nearest(self) -> AbstractContextManager[None]:
        return nullcontext()

    def const(self, v: Any) -> Array:
        return mp(np.asarray(v, dtype=np.float64))

    def store(self, v: Array) -> Array:
        return v

    def store_mp(self, v: Any) -> Array:
        return mp(v)

    def weights(self, w: Array) -> Array:
        return self.const(w)

    def acc_round(self, v: Any) -> Array:
        return self.const(v)

    def acc_add(self, a: Array, b: Array) -> Array:
        return _omap(_HP.add, mp(a), mp(b))

    def acc_sub(self, a: Array, b: Array) -> Array:
        return _omap(_HP.sub, mp(a), mp(b))

    def acc_mul(self, a: Array, b: Array) -> Array:
        return _omap(_HP.mul, mp(a), mp(b))

    def acc_div(self, a: Any, b: Any) -> Array:
        return _omap(_HP.div, mp(a), mp(b))

    def acc_sqrt(self, a: Array) -> Array:
        return _omap(_HP.sqrt, mp(a))

    def acc_fma(self, a: Array, b: Array, c: Array) -> Array:
        return _omap(_HP.fma, mp(a), mp(b), mp(c))

    def st_add(self, a: Array, b: Array) -> Array:
        return self.acc_add(a, b)

    def sum_rows(self, T: Array) -> Array:
        T = mp(T)
        return np.asarray([reduce(_HP.add, row, gmpy2.mpfr(0)) for row in T], dtype=object)

    def dot(self, A: Array, B: Array) -> Array:
        return self.sum_rows(self.acc_mul(A, B))

    def func(self, name: str, x: Array) -> Array:
        return _omap(hp_function(name), mp(x))

    def leaky(self, x: Array, slope: float) -> Array:
        return _omap(_HP.mul, gmpy2.mpfr(slope, 53), mp(x))


# -- layers -------------------------------------------------------------------------------
def _bias(m: Machine, s: Array, bias: Array | None, shape: tuple[int, ...]) -> Array:
    """Stored result of a dot product plus an optional bias (stored in storage)."""
    if bias is None:
        return m.store(s)
    b = m.store(m.const(bias)).reshape(shape)
    if m.variant.epilogue == "fused":  # bias added in the accumulator, one rounding
        return m.store(m.acc_add(s, b))
    return m.st_add(m.store(s), b)  # cuBLAS/numpy: sum stored, then the bias add rounded


def dense(layer: Dense, x: Array, m: Machine) -> Array:
    w = m.weights(layer.weight)  # (K, n)
    xo = m.act_operand(x)
    s = m.dot(np.broadcast_to(xo, w.shape), w)
    return _bias(m, s, layer.bias, (-1,))


def im2col(
    x: Array,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    fill: Any,
) -> tuple[Array, int, int]:
    """(C, H, W) -> rows of patches (Ho*Wo, C*kh*kw) in (c, i, j) order, Ho, Wo."""
    C, H, W = x.shape
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    ho = (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    wo = (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    xp = np.full((C, H + 2 * ph, W + 2 * pw), fill, dtype=x.dtype)
    xp[:, ph : ph + H, pw : pw + W] = x
    rows = []
    for oh in range(ho):
        r = oh * sh + dh * np.arange(kh)
        for ow in range(wo):
            c = ow * sw + dw * np.arange(kw)
            rows.append(xp[:, r][:, :, c].reshape(-1))
    return np.stack(rows), ho, wo


def conv2d(layer: Conv2d, x: Array, m: Machine) -> Array:
    w = m.weights(layer.weight)  # (Co, Cg, kh, kw)
    xo = m.act_operand(x)
    co, cg = w.shape[:2]
    g = layer.groups
    og = co // g
    outs = []
    for gi in range(g):
        cols, ho, wo = im2col(
            xo[gi * cg : (gi + 1) * cg],
            layer.kernel,
            layer.stride,
            layer.padding,
            layer.dilation,
            0.0,
        )
        wg = w[gi * og : (gi + 1) * og].reshape(og, -1)
        A = np.concatenate([cols] * og)  # (og * L, n)
        B = np.repeat(wg, cols.shape[0], axis=0)
        outs.append(m.dot(A, B).reshape(og, ho, wo))
    return _bias(m, np.concatenate(outs), layer.bias, (-1, 1, 1))


def pool2d(layer: Pool2d, x: Array, m: Machine) -> Array:
    fill = -math.inf if layer.kind == "max" else 0.0
    C = x.shape[0]
    wins = [
        im2col(x[c : c + 1], layer.kernel, layer.stride, layer.padding, (1, 1), fill)
        for c in range(C)
    ]
    _, ho, wo = wins[0]
    T = np.stack([w for w, _, _ in wins])  # (C, Ho*Wo, k)
    if layer.kind == "max":
        return np.max(T, axis=-1).reshape(C, ho, wo)  # exact in every format
    k = T.shape[-1]
    s = m.sum_rows(T.reshape(-1, k))  # padding zeros are summed too (count_include_pad)
    return m.store(m.acc_div(s, float(k))).reshape(C, ho, wo)


def activation(layer: Activation, x: Array, m: Machine) -> Array:
    if layer.type == "relu":
        return np.where(x < 0, m.const(0.0), x)  # keeps NaN as NaN
    if layer.type == "relu6":  # 0 and 6 are exact in every format
        return np.where(x < 0, m.const(0.0), np.where(x > 6, m.const(6.0), x))
    if layer.type == "leaky_relu":
        return np.where(x > 0, x, m.leaky(x, float(layer.negative_slope)))
    return m.func(layer.type, x)


def softmax_exact(x: Array) -> Array:
    v = mp(x)
    top = max(v.tolist())
    e = _omap(_HP.exp, _omap(_HP.sub, v, top))
    s = reduce(_HP.add, e.tolist(), gmpy2.mpfr(0))
    return _omap(_HP.div, e, s)


def softmax(x: Array, m: Machine) -> Array:
    """1-D softmax: correctly rounded, or a kernel in the accumulator:
    d = x - max x, e = exp d (within func_ulps ulps), s = sum e, y = e / s."""
    if m.exact or m.variant.func == "correct":
        return m.store_mp(softmax_exact(x))
    with m.nearest():
        d = m.acc_sub(x, np.max(x))
        e = m.acc_value(_omap(_HP.exp, mp(d)))
        s = m.sum_rows(e[None, :])
        return m.store(m.acc_div(e, s))


def _layernorm_exact(X: Array, w: Array | None, b: Array | None, eps: float) -> Array:
    X = mp(X)
    n = X.shape[1]
    ex = ExactMachine()
    mean = ex.acc_div(ex.sum_rows(X), float(n))
    z = ex.acc_sub(X, mean[:, None])
    var = ex.acc_div(ex.sum_rows(ex.acc_mul(z, z)), float(n))
    u = ex.acc_div(z, ex.acc_sqrt(ex.acc_add(var, ex.const(eps)))[:, None])
    u = u if w is None else ex.acc_mul(u, w)
    return u if b is None else ex.acc_add(u, b)


def _layernorm_kernel(X: Array, w: Array | None, b: Array | None, eps: float, m: Machine) -> Array:
    n = X.shape[1]
    mean = m.acc_div(m.sum_rows(X), float(n))
    z = m.acc_sub(X, mean[:, None])
    var = m.acc_div(m.sum_rows(m.acc_mul(z, z)), float(n))
    rstd = m.acc_div(1.0, m.acc_sqrt(m.acc_add(var, m.acc_round(eps))))
    u = m.acc_mul(z, rstd[:, None])
    with m.nearest():  # the affine step is elementwise
        if w is not None and b is not None and m.variant.order == "fma":
            return m.acc_fma(u, w, b)
        u = u if w is None else m.acc_mul(u, w)
        return u if b is None else m.acc_add(u, b)


def layernorm(layer: LayerNorm, x: Array, m: Machine) -> Array:
    n = math.prod(layer.normalized_shape)
    X = x.reshape(-1, n)
    w = None if layer.weight is None else m.store(m.const(layer.weight.reshape(-1)))
    b = None if layer.bias is None else m.store(m.const(layer.bias.reshape(-1)))
    if m.exact or m.variant.func == "correct":
        y = m.store_mp(_layernorm_exact(X, w, b, layer.eps))
    else:
        y = m.store(_layernorm_kernel(X, w, b, layer.eps, m))
    return y.reshape(x.shape)


def _bn_fold(layer: BatchNorm) -> tuple[Array, Array]:
    """Exact scale s = w / sqrt(var + eps) and shift t = b - mean s (256 bits)."""
    C = layer.running_mean.shape[0]
    w = mp(np.ones(C) if layer.weight is None else layer.weight)
    b = mp(np.zeros(C) if layer.bias is None else layer.bias)
    var = _omap(_HP.add, mp(layer.running_var), gmpy2.mpfr(layer.eps, 53))
    s = _omap(_HP.div, w, _omap(_HP.sqrt, var))
    t = _omap(_HP.sub, b, _omap(_HP.mul, mp(layer.running_mean), s))
    return s, t


def _bn_kernel(layer: BatchNorm, x: Array, m: Machine, shape: tuple[int, ...]) -> Array:
    """A batch-norm kernel: statistics and parameters stored (in storage, or in
    binary32 for "torch32"), alpha = w / sqrt(v + eps) and the rest in the
    accumulator, in the folded (x alpha + beta) or two-step ((x - m) alpha + b) form."""
    C = layer.running_mean.shape[0]
    form = m.variant.bn

    def param(v: Array | None, default: float) -> Array:
        p = m.const(np.full(C, default) if v is None else v)
        return (m.b32(p) if form == "torch32" else m.store(p)).reshape(shape)

    mean, var = param(layer.running_mean, 0.0), param(layer.running_var, 1.0)
    w, b = param(layer.weight, 1.0), param(layer.bias, 0.0)
    t = m.acc.from_mp(_omap(_HP.add, mp(var), gmpy2.mpfr(layer.eps, 53)))  # opmath(v + eps)
    alpha = m.acc_div(w, m.acc_sqrt(t))
    fma = m.variant.order == "fma"
    if form == "two_step":
        y = m.acc_add(m.acc_mul(m.acc_sub(x, mean), alpha), b)
    elif fma:
        y = m.acc_fma(x, alpha, m.acc_fma(-mean, alpha, b))
    else:
        y = m.acc_add(m.acc_mul(x, alpha), m.acc_sub(b, m.acc_mul(mean, alpha)))
    if m.variant.func == "correct" and form != "two_step":  # one rounding of x alpha + beta
        beta = m.acc_sub(b, m.acc_mul(mean, alpha))
        ex = ExactMachine()
        return m.store_mp(ex.acc_add(ex.acc_mul(x, alpha), beta))
    return m.store(y)


def batchnorm(layer: BatchNorm, x: Array, m: Machine) -> Array:
    """Eval batch norm over axis 0 of one input."""
    shape = (-1,) + (1,) * (x.ndim - 1)
    s, t = _bn_fold(layer)
    if m.exact:
        return m.acc_add(m.acc_mul(x, s.reshape(shape)), t.reshape(shape))
    if m.variant.bn != "folded":
        return _bn_kernel(layer, x, m, shape)
    # s and t stored, then y = x s + t (a BN folded ahead of time)
    s_hat, t_hat = m.store_mp(s).reshape(shape), m.store_mp(t).reshape(shape)
    if m.variant.order == "fma":
        return m.store(m.acc_fma(x, s_hat, t_hat))
    return m.store(m.acc_add(m.acc_mul(x, s_hat), t_hat))


def residual(layer: Residual, x: Array, m: Machine) -> Array:
    return m.st_add(x, run_layers(layer.layers, x, m))


def run_layers(layers: Sequence[Any], x: Array, m: Machine) -> Array:
    for layer in layers:
        x = run_layer(layer, x, m)
    return x


def run_layer(layer: Any, x: Array, m: Machine) -> Array:
    if isinstance(layer, Dense):
        return dense(layer, x, m)
    if isinstance(layer, Conv2d):
        return conv2d(layer, x, m)
    if isinstance(layer, Pool2d):
        return pool2d(layer, x, m)
    if isinstance(layer, Flatten):
        return x.reshape(-1)
    if isinstance(layer, Reshape):
        return x.reshape(tuple(layer.shape))
    if isinstance(layer, Dropout):
        return x  # inference
    if isinstance(layer, Activation):
        return activation(layer, x, m)
    if isinstance(layer, Softmax):
        return softmax(x, m)
    if isinstance(layer, BatchNorm):
        return batchnorm(layer, x, m)
    if isinstance(layer, LayerNorm):
        return layernorm(layer, x, m)
    if isinstance(layer, Residual):
        return residual(layer, x, m)
    raise TypeError(f"the emulator has no layer {type(layer).__name__}")


def run(layers: Sequence[Any], x: npt.ArrayLike, m: Machine) -> Array:
    """One input (no batch axis) through the layers; the input is stored first."""
    x0 = np.asarray(x, dtype=np.float64)
    h = m.const(x0) if m.exact else m.store(x0)
    return np.asarray(run_layers(layers, h, m)).reshape(-1)
