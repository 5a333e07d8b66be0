"""Accumulation models: how real kernels round sums of products.

An :class:`AccumulationModel` names the format inputs and outputs are stored
in (``storage``), the format every product and partial sum is rounded to
(``accumulate``) and the order of the additions.  :func:`sum`, :func:`dot` and
:func:`matmul` return (as float64) exactly what such a kernel computes: inputs
rounded to ``storage``; each term (a product, exact when ``2 * storage.p <=
accumulate.p``; an input for ``sum``) rounded to ``accumulate``; terms added in
``order``, each partial sum rounded to ``accumulate``; the result rounded to
``storage``.  All rounding is to nearest-even.  Orders:

* ``"sequential"``: left to right from 0, ``((0 + t0) + t1) + ...``;
* ``"pairwise"``: adjacent pairs level by level, ``(t0 + t1) + (t2 + t3)``,
  ...; an odd last term moves up a level unchanged;
* ``"blocked"``: sequential in blocks of ``block`` terms, then sequential from
  0 over the block sums;
* ``"blas"``: any order.  The error bounds elsewhere in fperr hold for every
  order; this emulates one by a float32 BLAS call when ``accumulate`` is
  binary32 and the products are exact in it (fused multiply-adds then round
  like separate ones), else it is ``"sequential"``.

binary32/binary64 accumulators use numpy's float32/float64 arithmetic (each
operation correctly rounded).  Others compute in float64 and round each result
with :func:`fperr.round`, which is exact: a product of two ``p <= 26``-bit
numbers is a float64 number, and rounding the float64 sum of two ``p``-bit
numbers to ``p`` bits equals rounding the exact sum when ``53 >= 2p + 1``
(S. A. Figueroa, "When is double rounding innocuous?", SIGNUM Newsl. 30(3), 1995).
"""

from __future__ import annotations

import builtins
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

from .errors import FperrInputError
from .formats import FORMATS, Format, get_format
from .rounding import round as _fround

try:  # scipy is a dependency; its BLAS rank-1 update is the fast sequential kernel
    from scipy.linalg.blas import sger as _sger
except ImportError:  # pragma: no cover - numpy fallback below is always correct
    _sger = None

# fmt: off
__all__ = ["AccumulationModel", "Order", "ORDERS", "PRESETS", "get_accumulation",
           "accumulation_names", "sum", "dot", "matmul"]
# fmt: on

Order = Literal["sequential", "pairwise", "blocked", "blas"]
ORDERS: tuple[str, ...] = get_args(Order)
FloatArray = npt.NDArray[np.float64]
Array = npt.NDArray[Any]

_B16, _B32, _B64 = FORMATS["binary16"], FORMATS["binary32"], FORMATS["binary64"]
_TILE = 1 << 18  # elements per tile of rank-1 updates: 1 MiB of float32 stays in L2


def _is(fmt: Format, ref: Format) -> bool:
    return fmt.same_values(ref)


def _emulable(fmt: Format) -> bool:  # see the module docstring
    return fmt.p <= 26 and fmt.emax <= 480


@dataclass(frozen=True)
class AccumulationModel:
    """Storage format, accumulator format and summation order of a kernel.

    Products ``a*b`` are rounded to ``accumulate`` (exact when
    ``2 * storage.p <= accumulate.p``); see the module docstring for the
    orders.  ``block`` is the block size of ``order="blocked"``.
    """

    storage: Format = _B16
    accumulate: Format = _B32
    order: Order = "blas"
    block: int = 32

    def __post_init__(self) -> None:
        # accept names too, as everywhere else in fperr
        object.__setattr__(self, "storage", get_format(self.storage))
        object.__setattr__(self, "accumulate", get_format(self.accumulate))
        if self.order not in ORDERS:
            valid = ", ".join(ORDERS)
            raise FperrInputError(f"unknown order {self.order!r}; valid orders: {valid}")
        if int(self.block) != self.block or self.block < 1:
            raise FperrInputError(f"block must be a positive integer, got {self.block!r}")
        acc64 = _is(self.accumulate, _B64)
        for f, ok in ((self.accumulate, acc64), (self.storage, acc64 and _is(self.storage, _B64))):
            if not (ok or _emulable(f)):
                raise FperrInputError(
                    f"cannot emulate {f.name} exactly: it needs p <= 26 and emax <= 480 "
                    "(or binary64 accumulation, with binary64 storage if any)"
                )

    @property
    def products_exact(self) -> bool:
        """Every product of two storage numbers is exact in ``accumulate``."""
        s, a = self.storage, self.accumulate  # precision, overflow, underflow:
        return 2 * s.p <= a.p and s.emax < a.emax // 2 and 2 * (s.emin - s.p) + 1 >= a.emin - a.p

    def __repr__(self) -> str:
        block = f", block={self.block}" if self.order == "blocked" else ""
        return (
            f"AccumulationModel(storage={self.storage.name}, "
            f"accumulate={self.accumulate.name}, order={self.order!r}{block})"
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain data: format names (all parameters for custom formats)."""
        d = asdict(self)
        for key in ("storage", "accumulate"):
            f = getattr(self, key)
            d[key] = f.name if FORMATS.get(f.name) == f else d[key]
        return d


NUMPY_FP16 = AccumulationModel(_B16, _B32, "sequential")
CUBLAS_FP32ACC = AccumulationModel(_B16, _B32, "blas")
FP16ACC = AccumulationModel(_B16, _B16, "sequential")
FP32 = AccumulationModel(_B32, _B32, "blas")
BF16 = AccumulationModel(FORMATS["bfloat16"], _B32, "blas")
TF32 = AccumulationModel(FORMATS["tf32"], _B32, "blas")

PRESETS: dict[str, AccumulationModel] = {
    "numpy_fp16": NUMPY_FP16,
    "cublas_fp32acc": CUBLAS_FP32ACC,
    "fp16acc": FP16ACC,
    "fp32": FP32,
    "bf16": BF16,
    "tf32": TF32,
}


def accumulation_names() -> list[str]:
    """Names accepted by :func:`get_accumulation`."""
    return sorted(PRESETS)


def get_accumulation(name: str | AccumulationModel) -> AccumulationModel:
    """Look up a preset model by name (case-insensitive); a model is returned as is."""
    if isinstance(name, AccumulationModel):
        return name
    try:
        return PRESETS[str(name).strip().lower()]
    except KeyError:
        raise FperrInputError(
            f"unknown accumulation model {name!r}; valid names: {', '.join(accumulation_names())}"
        ) from None


# -- threads and rounding -----------------------------------------------------------
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
_WORKERS = max(1, min(4, _CPUS or 1))
_pool: tuple[int, ThreadPoolExecutor] | None = None  # (pid, pool): a forked child needs its own


def _run(jobs: Sequence[Callable[[], None]]) -> None:
    """Run independent jobs, on threads when there are several: numpy releases
    the GIL in its loops.  Each job writes its own slice, so results never
    depend on the scheduling.  Jobs must not call ``_run`` themselves."""
    global _pool
    if len(jobs) < 2 or _WORKERS < 2:
        for job in jobs:
            job()
        return
    if _pool is None or _pool[0] != os.getpid():
        _pool = (os.getpid(), ThreadPoolExecutor(_WORKERS, thread_name_prefix="fperr-acc"))
    futures = [_pool[1].submit(job) for job in jobs[1:]]
    jobs[0]()
    for f in futures:
        f.result()


def _parts(n: int, min_size: int) -> list[tuple[int, int]]:  # <= _WORKERS pieces
    k = max(1, min(_WORKERS, n // max(min_size, 1)))
    return [(n * i // k, n * (i + 1) // k) for i in range(k)]


_local = threading.local()


def _scratch(name: str, shape: tuple[int, ...], dtype: Any, order: Any = "C") -> Array:
    """A reusable array of this thread (contents undefined).  Fresh large
    blocks cost a page fault per 4 KiB, which can exceed the arithmetic done
    in them; blocks over 8 MiB are not kept."""
    size = int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize
    if size > 1 << 23:
        return np.empty(shape, dtype, order=order)
    bufs: dict[str, Array] = _local.__dict__.setdefault("bufs", {})
    if name not in bufs or bufs[name].nbytes < size:
        bufs[name] = np.empty(max(size, 1 << 16), np.uint8)
    return bufs[name][:size].view(dtype).reshape(shape, order=order)


def _binary16(x: Array, c: Array, y: Array) -> None:
    """``y[:] = x`` rounded to binary16, nearest-even, as numpy's casts do but
    faster, for float32 or float64 ``x`` (``y``: x's dtype; ``c``: a buffer of
    ints as wide).  With ``e`` the binade of ``|x|`` clamped to [-14, 15]
    and ``c = 2**(e + q - 11)`` (q = 24 or 53), ``|x| + c`` lies in [c, 2c]
    where the spacing is binary16's ``2**(e - 10)``: one rounding to nearest
    at the right place, ties to even (the last bit's parity is binary16's);
    subtracting ``c`` again is exact."""
    it, mant, bias = (np.int32, 23, 127) if x.dtype == np.float32 else (np.int64, 52, 1023)
    np.bitwise_and(x.view(it), ((1 << mant) - 1) ^ np.iinfo(it).max, out=c)  # exponent
    np.clip(c, it((bias - 14) << mant), it((bias + 15) << mant), out=c)
    c += it((mant - 10) << mant)
    np.abs(x, out=y)
    y += c.view(x.dtype)
    y -= c.view(x.dtype)
    y[y > _B16.max] = np.inf  # from 65520 up: ties-to-even lands on 65536
    np.copysign(y, x, out=y)


def _round_range(xf: Array, of: Array, fmt: Format, lo: int, hi: int) -> None:
    """``of[lo:hi] = round(xf[lo:hi], fmt)`` in cache-sized chunks with reused
    buffers (fresh large temporaries cost page faults and cache misses)."""
    size = max(1, min(1 << 14, hi - lo))
    b16 = _is(fmt, _B16)
    if b16:
        c = _scratch("c", (size,), np.int32 if xf.dtype == np.float32 else np.int64)
        y = _scratch("y", (size,), xf.dtype)
    with np.errstate(over="ignore", invalid="ignore"):  # errstate is per thread
        for i in range(lo, hi, size):
            j = min(i + size, hi)
            if b16:
                _binary16(xf[i:j], c[: j - i], y[: j - i])
                of[i:j] = y[: j - i]
            else:
                of[i:j] = _fround(xf[i:j], fmt)


def _round_all(
    xs: list[npt.ArrayLike], fmt: Format, dtype: type[np.floating[Any]], scratch: bool = False
) -> list[Array]:
    """Each ``x`` rounded to ``fmt`` (nearest), as ``dtype`` arrays (which must
    hold ``fmt``'s numbers exactly; in this thread's scratch space if asked),
    the work split over threads."""
    # (np.asarray, not ascontiguousarray: that turns 0-d arrays into 1-d ones)
    ins = [np.asarray(x) for x in xs]
    ins = [
        np.asarray(x, np.float32 if x.dtype == np.float32 else np.float64, order="C") for x in ins
    ]
    total = builtins.sum(x.size for x in ins)
    buf = _scratch("storage", (total,), dtype) if scratch else np.empty(total, dtype)
    outs, jobs, start = [], [], 0
    for xa in ins:
        of = buf[start : start + xa.size]
        start += xa.size
        outs.append(of.reshape(xa.shape))
        xf = xa.reshape(-1)
        jobs += [partial(_round_range, xf, of, fmt, lo, hi) for lo, hi in _parts(xf.size, 1 << 16)]
    _run(jobs)
    return outs


# -- arithmetic of the accumulator ------------------------------------------------------
class _Arith:
    """Products and sums rounded to ``accumulate``, on arrays of ``dtype``:
    native float32/float64 arithmetic, or float64 rounded with fperr.round."""

    def __init__(self, model: AccumulationModel) -> None:
        self.model = model
        acc = model.accumulate
        st = model.storage  # binary32 arithmetic needs storage numbers to be float32 numbers
        fits = st.p <= 24 and st.emax <= 127 and st.emin - st.p + 1 >= -149
        self.native = _is(acc, _B64) or (_is(acc, _B32) and fits)
        f32 = self.native and _is(acc, _B32)
        self.dtype: type[np.floating[Any]] = np.float32 if f32 else np.float64

    def _fix(self, out: Array) -> Array:
        if not self.native:
            with np.errstate(over="ignore", invalid="ignore"):
                out[...] = _fround(out, self.model.accumulate)
        return out

    def terms(self, x: Array) -> Array:
        """Storage numbers rounded to ``accumulate`` (the terms of a sum)."""
        return self._fix(np.array(x, dtype=self.dtype))

    def mul(self, a: Array, b: Array, out: Array | None = None) -> Array:
        with np.errstate(over="ignore", invalid="ignore", under="ignore"):
            return self._fix(np.multiply(a, b, out=out, dtype=self.dtype))

    def add(self, a: Array, b: Array, out: Array | None = None) -> Array:
        with np.errstate(over="ignore", invalid="ignore"):
            return self._fix(np.add(a, b, out=out, dtype=self.dtype))


def _reduce_last(t: Array, ar: _Arith, order: str, block: int) -> Array:
    """Sum the terms ``t`` along the last axis in ``order``."""
    n = t.shape[-1]
    if order == "blas" and ar.native:
        with np.errstate(over="ignore", invalid="ignore"):
            return np.sum(t, axis=-1, dtype=ar.dtype)  # numpy's own (pairwise) order
    if order == "pairwise":
        if n == 0:
            return np.zeros(t.shape[:-1], ar.dtype)
        while t.shape[-1] > 1:
            h = t.shape[-1] // 2
            s = ar.add(t[..., 0 : 2 * h : 2], t[..., 1 : 2 * h : 2])
            t = np.concatenate([s, t[..., 2 * h :]], axis=-1) if t.shape[-1] % 2 else s
        return t[..., 0]
    if order == "blocked" and n > block:
        nb = -(-n // block)
        # zero padding is harmless: a partial sum from 0 is never -0, and s + 0 == s
        pad = np.zeros((*t.shape[:-1], nb * block - n), ar.dtype)
        blocks = np.concatenate([t, pad], axis=-1).reshape(*t.shape[:-1], nb, block)
        return _reduce_last(_reduce_last(blocks, ar, "sequential", 0), ar, "sequential", 0)
    z = np.zeros((*t.shape[:-1], 1), ar.dtype)
    if ar.native:  # ufunc.accumulate is defined as r[i] = r[i-1] + t[i]: sequential
        with np.errstate(over="ignore", invalid="ignore"):
            return np.add.accumulate(np.concatenate([z, t], axis=-1), axis=-1)[..., -1]
    acc = z[..., 0]
    for i in range(n):
        ar.add(acc, t[..., i], out=acc)
    return acc


def _finish(acc: Array, model: AccumulationModel) -> FloatArray:
    return _round_all([acc], model.storage, np.float64)[0]


def sum(  # noqa: A001 - fperr.accumulation.sum mirrors numpy.sum
    x: npt.ArrayLike, model: AccumulationModel | str = CUBLAS_FP32ACC, axis: int = -1
) -> FloatArray:
    """The sum of ``x`` along ``axis`` as a kernel with ``model`` computes it."""
    model = get_accumulation(model)
    ar = _Arith(model)
    t = np.moveaxis(ar.terms(_round_all([x], model.storage, ar.dtype)[0]), axis, -1)
    return _finish(_reduce_last(t, ar, model.order, model.block), model)


def dot(
    x: npt.ArrayLike, y: npt.ArrayLike, model: AccumulationModel | str = CUBLAS_FP32ACC
) -> FloatArray:
    """``sum_i x[..., i] * y[..., i]`` (operands broadcast) under ``model``;
    a 0-d array for two vectors."""
    model = get_accumulation(model)
    ar = _Arith(model)
    xs, ys = _round_all([x, y], model.storage, ar.dtype)
    return _finish(_reduce_last(ar.mul(xs, ys), ar, model.order, model.block), model)


# -- matmul -------------------------------------------------------------------------
def _f32_products_exact(a: Array, b: Array, storage: Format) -> bool:
    """Every product a[i,k] * b[k,j] is exact in binary32 (so a fused
    multiply-add rounds like a multiply then an add): <= 24 bits, no
    over- or underflow."""
    if 2 * storage.p > 24:
        return False
    if AccumulationModel(storage, _B32).products_exact or a.size == 0 or b.size == 0:
        return True  # any two storage numbers (binary16, fp8), or nothing to multiply
    aa, ab = np.abs(a), np.abs(b)
    big = float(np.max(aa)) * float(np.max(ab))
    tiny = float(np.min(aa, where=aa > 0, initial=1)) * float(np.min(ab, where=ab > 0, initial=1))
    return big < 2.0**127 and tiny >= 2.0**-126  # in the normal range 2p <= 24 bits fit


def _seq_matmul(a: Array, b: Array, ar: _Arith) -> Array:
    """``a @ b`` (2-D, accumulator dtype) summed sequentially from 0 in k order."""
    m, k = a.shape
    n = b.shape[1]
    out = _scratch("acc", (m, n), ar.dtype)
    out.fill(0)
    at = _scratch("at", (k, m), a.dtype)
    at[...] = a.T
    if (
        _sger is not None
        and ar.dtype == np.float32
        and m * n >= 4096
        and _f32_products_exact(a, b, ar.model.storage)
        and np.isfinite(a).all()
        and np.isfinite(b).all()
    ):
        # BLAS rank-1 update C += a_k b_k^T: one multiply-add per element and
        # call, fused or not, rounds as fl32(c + a*b) since a*b is exact.
        # Finite inputs only: a BLAS may skip a column whose factor is zero,
        # which would hide 0 * inf = NaN.  Tiles of rows keep C in cache.
        rows = max(1, min(m, _TILE // max(n, 1)))
        for i0 in range(0, m, rows):
            c = _scratch("sger", (min(rows, m - i0), n), np.float32, order="F")
            c.fill(0)
            for kk in range(k):
                c = _sger(1.0, at[kk, i0 : i0 + rows], b[kk], a=c, overwrite_a=1)
            out[i0 : i0 + c.shape[0]] = c
        return out

    def tile(i0: int, i1: int) -> None:  # rank-1 updates of rows i0:i1, in cache
        acc, tmp = out[i0:i1], _scratch("tmp", (i1 - i0, n), ar.dtype)
        for kk in range(k):
            ar.mul(at[kk, i0:i1, None], b[kk], out=tmp)
            ar.add(acc, tmp, out=acc)

    rows = max(1, min(_TILE // max(n, 1), -(-m // _WORKERS) if m * n * k >= 1 << 22 else m))
    _run([partial(tile, i0, min(i0 + rows, m)) for i0 in range(0, m, rows)])
    return out


def _matmul2d(a: Array, b: Array, model: AccumulationModel, ar: _Arith) -> Array:
    m, k = a.shape
    n = b.shape[1]
    order = model.order
    if order == "blas":
        if ar.dtype == np.float32:
            exact = _f32_products_exact(a, b, model.storage)
        else:  # float64: storage products (<= 52 bits) are exact
            exact = ar.native and model.storage.p <= 26
        if exact:
            with np.errstate(over="ignore", invalid="ignore"):
                return np.matmul(a, b, out=_scratch("acc", (m, n), ar.dtype))
        order = "sequential"
    if order == "blocked" and k > model.block:
        total = _scratch("total", (m, n), ar.dtype)
        total.fill(0)
        for k0 in range(0, k, model.block):
            part = _seq_matmul(a[:, k0 : k0 + model.block], b[k0 : k0 + model.block], ar)
            ar.add(total, part, out=total)
        return total
    if order == "pairwise":
        out = _scratch("acc", (m, n), ar.dtype)
        rows = max(1, _TILE // max(k * n, 1))
        for i0 in range(0, m, rows):
            p = ar.mul(a[i0 : i0 + rows, :, None], b[None, :, :])
            out[i0 : i0 + rows] = _reduce_last(np.moveaxis(p, 1, -1), ar, "pairwise", 0)
        return out
    return _seq_matmul(a, b, ar)


def matmul(
    a: npt.ArrayLike, b: npt.ArrayLike, model: AccumulationModel | str = CUBLAS_FP32ACC
) -> FloatArray:
    """``a @ b`` under ``model`` for ``a`` of shape (..., m, k) and ``b`` (k, n)."""
    model = get_accumulation(model)
    ar = _Arith(model)
    sa, sb = np.shape(a), np.shape(b)
    if len(sa) < 2 or len(sb) != 2 or sa[-1] != sb[0]:
        raise FperrInputError(f"matmul needs a (..., m, k) and b (k, n); got {sa}, {sb}")
    a_st, b_st = _round_all([a, b], model.storage, ar.dtype, scratch=True)  # float32 if binary32
    a2 = a_st.reshape(int(np.prod(sa[:-1], dtype=np.int64)), sa[-1])
    acc = _matmul2d(a2, b_st, model, ar)  # b is shared by the batch: one 2-D product
    return _finish(acc, model).reshape(*sa[:-1], sb[1])
