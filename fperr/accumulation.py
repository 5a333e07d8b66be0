"""Accumulation models: how real kernels round sums of products.

An :class:`AccumulationModel` names the format inputs and outputs are stored
in (``storage``), the format every product and partial sum is rounded to
(``accumulate``) and the order of the additions.  :func:`sum`, :func:`dot` and
:func:`matmul` return, as float64, exactly what a kernel with that model does:
inputs are rounded to ``storage``; each term (a product, exact when
``2 * storage.p <= accumulate.p``, or an input for ``sum``) is rounded to
``accumulate``; the terms are added in ``order``, each partial sum rounded to
``accumulate``; the result is rounded to ``storage``.  All rounding is to
nearest-even.  Orders:

* ``"sequential"``: left to right from 0, ``((0 + t0) + t1) + ...``;
* ``"pairwise"``: adjacent pairs level by level, ``(t0 + t1) + (t2 + t3)``,
  ...; an odd last term moves up a level unchanged;
* ``"blocked"``: sequential inside blocks of ``block`` terms, then sequential
  from 0 over the block sums;
* ``"blas"``: whatever order an optimised kernel picks.  The error bounds
  elsewhere in fperr hold for any order; this emulates one of them by a
  float32 BLAS call when ``accumulate`` is binary32 and the products are exact
  in binary32 (so fused multiply-adds round like separate ones), and falls
  back to ``"sequential"`` otherwise.

binary32 and binary64 accumulators use numpy's float32/float64 arithmetic,
which rounds every operation correctly.  Other formats compute in float64 and
round each result with :func:`fperr.round`: exact, because a product of two
``p <= 26``-bit numbers is a float64 number, and rounding the float64 sum of
two ``p``-bit numbers to ``p`` bits equals rounding the exact sum when
``53 >= 2p + 1`` (S. A. Figueroa, "When is double rounding innocuous?", ACM
SIGNUM Newsletter 30(3), 1995).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, astuple, dataclass
from functools import partial
from typing import Any, Literal, get_args

import numpy as np
import numpy.typing as npt

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
# Elements per cache tile of the rank-1 update loops: 1 MiB of float32, the
# L2 size of one core on typical x86, so the accumulator stays in cache.
_TILE = 1 << 18


def _is(fmt: Format, ref: Format) -> bool:
    return (fmt.p, fmt.emax, fmt.subnormals, fmt.inf_nan) == astuple(ref)[1:]


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
            raise ValueError(f"unknown order {self.order!r}; valid orders: {', '.join(ORDERS)}")
        if int(self.block) != self.block or self.block < 1:
            raise ValueError(f"block must be a positive integer, got {self.block!r}")
        acc64 = _is(self.accumulate, _B64)
        for f, ok in ((self.accumulate, acc64), (self.storage, acc64 and _is(self.storage, _B64))):
            if not (ok or _emulable(f)):
                raise ValueError(
                    f"cannot emulate {f.name} exactly: it needs p <= 26 and emax <= 480 "
                    "(or binary64 accumulation, with binary64 storage if any)"
                )

    @property
    def products_exact(self) -> bool:
        """Whether every product of two storage numbers is exact in ``accumulate``
        (precision and range)."""
        s, a = self.storage, self.accumulate
        return (
            2 * s.p <= a.p
            and 2 * (s.emax + 1) <= a.emax
            and 2 * (s.emin - s.p + 1) >= a.emin - a.p + 1
        )

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
        raise ValueError(
            f"unknown accumulation model {name!r}; valid names: {', '.join(accumulation_names())}"
        ) from None


# -- threads and rounding -----------------------------------------------------------
_CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
_WORKERS = max(1, min(4, _CPUS or 1))
_pool: ThreadPoolExecutor | None = None


def _run(jobs: Sequence[Callable[[], None]]) -> None:
    """Run independent jobs, on threads when there are several: numpy releases
    the GIL in its loops.  Each job writes its own slice, so results never
    depend on the scheduling.  Jobs must not call ``_run`` themselves."""
    global _pool
    if len(jobs) < 2 or _WORKERS < 2:
        for job in jobs:
            job()
        return
    if _pool is None:
        _pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="fperr-accumulation")
    futures = [_pool.submit(job) for job in jobs[1:]]
    jobs[0]()
    for f in futures:
        f.result()


def _parts(n: int, min_size: int) -> list[tuple[int, int]]:
    """Split range(n) into at most _WORKERS pieces of at least min_size."""
    k = max(1, min(_WORKERS, n // max(min_size, 1)))
    return [(n * i // k, n * (i + 1) // k) for i in range(k)]


def _binary16(x: Array) -> Array:
    """``x`` (contiguous float32 or float64) rounded to binary16, nearest-even:
    numpy's casts, faster (this is the bulk of a float32 BLAS matmul's
    emulation).  With ``e`` the binade of ``|x|`` clamped to [-14, 15] and
    ``c = 2**(e + q - 11)`` (q = 24 or 53), ``|x| + c`` lies in [c, 2c) where
    the spacing is binary16's ``2**(e - 10)``: one rounding to nearest-even at
    the right place (the last bit's parity is the binary16 one), and
    subtracting ``c`` is exact."""
    it, mant, bias = (np.int32, 23, 127) if x.dtype == np.float32 else (np.int64, 52, 1023)
    c: Array = np.bitwise_and(x.view(it), ((1 << mant) - 1) ^ np.iinfo(it).max)  # exponent
    np.clip(c, it((bias - 14) << mant), it((bias + 15) << mant), out=c)
    c += it((mant - 10) << mant)
    y = np.abs(x)
    y += c.view(x.dtype)
    y -= c.view(x.dtype)
    y[y > _B16.max] = np.inf  # 65520 and above: ties-to-even lands on 65536
    return np.copysign(y, x, out=y)


def _round_all(xs: list[npt.ArrayLike], fmt: Format, dtype: type[np.floating[Any]]) -> list[Array]:
    """Each ``x`` rounded to ``fmt`` (nearest), as ``dtype`` arrays (which must
    hold ``fmt``'s numbers exactly), the work split over threads."""
    outs, jobs, b16 = [], [], _is(fmt, _B16)
    for x in xs:
        xa = np.asarray(x)
        # (not ascontiguousarray: it turns 0-d arrays into 1-d ones)
        xa = np.asarray(xa if xa.dtype == np.float32 else xa.astype(np.float64), order="C")
        out = np.empty(xa.shape, dtype)
        outs.append(out)
        xf, of = xa.reshape(-1), out.reshape(-1)

        def job(xf: Array = xf, of: Array = of, lo: int = 0, hi: int = 0) -> None:
            with np.errstate(over="ignore", invalid="ignore"):  # errstate is per thread
                of[lo:hi] = _binary16(xf[lo:hi]) if b16 else _fround(xf[lo:hi], fmt)

        jobs += [partial(job, lo=lo, hi=hi) for lo, hi in _parts(xf.size, 1 << 16)]
    _run(jobs)
    return outs


# -- arithmetic of the accumulator ------------------------------------------------------
class _Arith:
    """Products and sums rounded to ``accumulate``, on arrays of ``dtype``.

    binary32 and binary64 accumulators use numpy's own correctly rounded
    float32/float64 arithmetic; other formats compute in float64 and round
    each result with :func:`fperr.round` (exact: see the module docstring).
    """

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


def _storage_terms(xs: list[npt.ArrayLike], ar: _Arith) -> list[Array]:
    """Inputs rounded to storage; as float32 when the accumulator is native
    binary32 (storage numbers are float32 numbers then), else float64."""
    dtype = ar.dtype if ar.native else np.float64
    return _round_all(xs, ar.model.storage, dtype)


def _finish(acc: Array, model: AccumulationModel) -> FloatArray:
    return _round_all([acc], model.storage, np.float64)[0]


def sum(  # noqa: A001 - fperr.accumulation.sum mirrors numpy.sum
    x: npt.ArrayLike, model: AccumulationModel | str = CUBLAS_FP32ACC, axis: int = -1
) -> FloatArray:
    """The sum of ``x`` along ``axis`` as a kernel with ``model`` computes it."""
    model = get_accumulation(model)
    ar = _Arith(model)
    t = np.moveaxis(ar.terms(_storage_terms([x], ar)[0]), axis, -1)
    return _finish(_reduce_last(t, ar, model.order, model.block), model)


def dot(
    x: npt.ArrayLike, y: npt.ArrayLike, model: AccumulationModel | str = CUBLAS_FP32ACC
) -> FloatArray:
    """``sum_i x[..., i] * y[..., i]`` (operands broadcast) under ``model``;
    a 0-d array for two vectors."""
    model = get_accumulation(model)
    ar = _Arith(model)
    xs, ys = _storage_terms([x, y], ar)
    return _finish(_reduce_last(ar.mul(xs, ys), ar, model.order, model.block), model)


# -- matmul -------------------------------------------------------------------------
def _f32_products_exact(a: Array, b: Array, storage: Format) -> bool:
    """Every product a[i,k] * b[k,j] is exact in binary32 (so a fused
    multiply-add rounds like a multiply then an add): <= 24 bits, no
    over- or underflow."""
    if 2 * storage.p > 24:
        return False
    if 2 * (storage.emax + 1) <= 127 and 2 * (storage.emin - storage.p + 1) >= -149:
        return True  # any two storage numbers (binary16, fp8)
    if a.size == 0 or b.size == 0:
        return True
    with np.errstate(invalid="ignore", over="ignore"):
        aa, ab = np.abs(a), np.abs(b)
        big = float(np.max(aa)) * float(np.max(ab))
        tiny = float(np.min(aa, where=aa > 0, initial=np.inf)) * float(
            np.min(ab, where=ab > 0, initial=np.inf)
        )
    return big < 2.0**127 and tiny >= 2.0**-126  # normal range: 2p <= 24 bits fit


def _seq_matmul(a: Array, b: Array, ar: _Arith) -> Array:
    """``a @ b`` (2-D, accumulator dtype) summed sequentially from 0 in k order."""
    m, k = a.shape
    n = b.shape[1]
    out = np.zeros((m, n), ar.dtype)
    at = np.ascontiguousarray(a.T)
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
            c = np.zeros((min(rows, m - i0), n), np.float32, order="F")
            for kk in range(k):
                c = _sger(1.0, at[kk, i0 : i0 + rows], b[kk], a=c, overwrite_a=1)
            out[i0 : i0 + c.shape[0]] = c
        return out

    def tile(i0: int, i1: int) -> None:  # rank-1 updates of rows i0:i1, in cache
        acc, tmp = out[i0:i1], np.empty((i1 - i0, n), ar.dtype)
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
                return np.matmul(a, b)
        order = "sequential"
    if order == "blocked" and k > model.block:
        total = np.zeros((m, n), ar.dtype)
        for k0 in range(0, k, model.block):
            part = _seq_matmul(a[:, k0 : k0 + model.block], b[k0 : k0 + model.block], ar)
            ar.add(total, part, out=total)
        return total
    if order == "pairwise":
        out = np.empty((m, n), ar.dtype)
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
        raise ValueError(f"matmul needs a (..., m, k) and b (k, n); got {sa}, {sb}")
    a_st, b_st = _storage_terms([a, b], ar)
    a2 = a_st.reshape(int(np.prod(sa[:-1], dtype=np.int64)), sa[-1])
    acc = _matmul2d(a2, b_st, model, ar)  # b is shared by the batch: one 2-D product
    return _finish(acc, model).reshape(*sa[:-1], sb[1])
