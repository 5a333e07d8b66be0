"""The array library the backward engine's rows live in: numpy, or torch on a CPU or GPU.

A bound's cost is dominated by its backward passes: rows (N, R, n) pulled
back through every layer (GEMMs with the weights, products with slopes) and
their absolute values summed against the local error boxes
(:func:`.backward.pull_back`): 90-98% of the time of a bound with sharpened,
unstable or full ranges.  The forward pass (the emulated runs, the local error
boxes, the interval ranges) stays in numpy, except its float64 magnitude
products (:meth:`Backend.gemm`, :meth:`Backend.conv2d`); the rows may live
elsewhere.  Under :func:`using`, the functions of :mod:`.backward` move the
rows and what they meet (weights, slopes, boxes) to the backend, and bring the
radii back to numpy (:meth:`Backend.host`).

A step's adjoint written only with operators common to numpy arrays and torch
tensors (``@``, ``*``, ``reshape``, ``swapaxes``, slicing, ``abs``) and with
this module's helpers is marked :func:`portable`; any other adjoint runs in
numpy on a copy of the rows (correct, slower), so every layer works on every
backend.

Both backends compute in float64; they differ only in the order of the GEMMs'
sums (a relative change of about 1e-16 per product), so their bounds agree to
about 1e-13 relative.  A context variable, as :mod:`.weight_memo`: concurrent
calls in threads keep their own backend.
"""

from __future__ import annotations

import contextvars
import os
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import numpy as np

from ..errors import FperrInputError

BACKENDS = ("numpy", "torch")
F = TypeVar("F", bound=Callable[..., Any])


class Backend:
    """numpy: arrays pass through unchanged."""

    name = "numpy"
    device = "cpu"
    native = True  # every adjoint runs here as written

    def on(self, a: Any) -> Any:
        """A long-lived array (a weight, a step's box or slopes) on the backend,
        converted once while it lives within a :func:`using` block."""
        return a

    def fresh(self, a: Any) -> Any:
        """A transient array (rows) on the backend, not remembered."""
        return a

    def host(self, a: Any) -> Any:
        """A backend array as a numpy array."""
        return np.asarray(a)

    def zeros(self, shape: tuple[int, ...]) -> Any:
        return np.zeros(shape)

    def arange(self, n: int) -> Any:
        return np.arange(n)

    def sqrt(self, a: Any) -> Any:
        return np.sqrt(a)

    def permute(self, a: Any, axes: tuple[int, ...]) -> Any:
        return a.transpose(axes)

    def scatter_add(self, index: Any, values: Any, size: int) -> Any:
        """(size,) with ``values`` summed into their ``index`` slots."""
        return np.bincount(index, values, minlength=size).astype(np.float64, copy=False)

    def live(self, flat: Any) -> Any:
        """Indices of the rows of ``flat`` (M, n) that are not all zero."""
        return np.flatnonzero(flat.any(axis=1))

    def occupancy(self, g: Any) -> tuple[Any, Any]:
        """Host boolean arrays (M, H) and (M, W): the rows and columns where each of
        the images ``g`` (M, C, H, W) holds a nonzero value."""
        nz = (g != 0).any(axis=1)  # channels first: the contiguous reduction (7x faster)
        return nz.any(axis=2), nz.any(axis=1)

    def contiguous(self, a: Any) -> Any:
        return np.ascontiguousarray(a)

    def close(self) -> None:
        """Forget what :meth:`on` converted (the end of a :func:`using` block)."""

    def out_of_memory(self, exc: BaseException) -> bool:
        """Whether ``exc`` is this backend's device running out of memory (numpy's
        MemoryError is the engine's own business: :mod:`.memory`)."""
        return False

    def broadcast_to(self, a: Any, shape: tuple[int, ...]) -> Any:
        return np.broadcast_to(a, shape)

    def sparse_rows(self, mat: Any, rows: Any) -> Any:
        """``rows @ mat`` for a scipy sparse ``mat`` (m, n) and rows (M, m)."""
        return np.asarray((mat.T @ rows.T).T)

    def gemm(self, a: Any, b: Any) -> Any:
        """``a @ b`` of numpy arrays in float64, as a numpy array, on the backend."""
        return a @ b

    def conv2d(self, v: Any, w: Any, layer: Any) -> Any:
        """``layer``'s convolution of ``v`` (N, C, H, W) with kernel ``w``, no bias, in
        float64, as a numpy array, by the backend's kernel; None: it has none."""
        return None

    def conv2d_input(self, g: Any, layer: Any, in_shape: tuple[int, ...]) -> Any:
        """The adjoint of ``layer``'s convolution applied to ``g`` (M, C_out, H', W'),
        by the backend's own kernel; None: the backend has none (numpy)."""
        return None


class TorchBackend(Backend):
    """torch float64 tensors on ``device``; numpy arrays met are converted once
    while they live (keyed by identity; an entry leaves with its array, so a
    call over many batches holds only the live batch's arrays on the device)."""

    name = "torch"
    native = False

    def __init__(self, torch: Any, device: Any) -> None:
        self.torch = torch
        self.device = device
        self._kept: dict[int, tuple[Any, Any]] = {}  # id -> (weak reference, tensor)
        self._finalizers: list[weakref.finalize] = []

    def on(self, a: Any) -> Any:
        if isinstance(a, self.torch.Tensor):
            return a
        return self._remember(a, self.fresh)

    def _remember(self, a: Any, convert: Callable[[Any], Any]) -> Any:
        """``convert(a)``, once while ``a`` lives (Python scalars: every time)."""
        key = id(a)
        hit = self._kept.get(key)
        if hit is not None and hit[0]() is a:
            return hit[1]
        t = convert(a)
        try:
            ref = weakref.ref(a)
        except TypeError:  # Python scalars: nothing to remember
            return t
        self._kept[key] = (ref, t)
        # runs while ``a`` is freed, before its identity can be reused
        self._finalizers.append(weakref.finalize(a, self._kept.pop, key, None))
        return t

    def out_of_memory(self, exc: BaseException) -> bool:
        return isinstance(exc, self.torch.OutOfMemoryError)

    def close(self) -> None:
        for f in self._finalizers:  # arrays that outlive the call (weights) hold no tensors
            f.detach()
        self._finalizers.clear()
        self._kept.clear()

    def fresh(self, a: Any) -> Any:
        if isinstance(a, self.torch.Tensor):
            return a
        # a copy: numpy views may be read-only or strided in ways torch refuses;
        # floats in float64, as numpy would promote them against float64 rows
        # (torch's GEMMs refuse mixed precisions)
        arr = np.asarray(a)
        if arr.dtype.kind == "f" and arr.dtype != np.float64:
            arr = arr.astype(np.float64)
        return self.torch.tensor(arr, device=self.device)

    def host(self, a: Any) -> Any:
        if isinstance(a, self.torch.Tensor):
            return a.detach().cpu().numpy()
        return np.asarray(a)

    def zeros(self, shape: tuple[int, ...]) -> Any:
        return self.torch.zeros(shape, dtype=self.torch.float64, device=self.device)

    def arange(self, n: int) -> Any:
        return self.torch.arange(n, device=self.device)

    def sqrt(self, a: Any) -> Any:
        return self.torch.sqrt(a)

    def permute(self, a: Any, axes: tuple[int, ...]) -> Any:
        return a.permute(axes)

    def scatter_add(self, index: Any, values: Any, size: int) -> Any:
        out = self.zeros((size,))
        return out.index_add_(0, index, values)

    def live(self, flat: Any) -> Any:
        return self.torch.nonzero(flat.any(dim=1)).reshape(-1)

    def occupancy(self, g: Any) -> tuple[Any, Any]:
        nz = (g != 0).any(dim=1)
        return self.host(nz.any(dim=2)), self.host(nz.any(dim=1))

    def contiguous(self, a: Any) -> Any:
        return a.contiguous()

    def broadcast_to(self, a: Any, shape: tuple[int, ...]) -> Any:
        return a.broadcast_to(shape)

    def sparse_rows(self, mat: Any, rows: Any) -> Any:
        return (self._remember(mat, self._sparse_transpose) @ rows.T).T

    def _sparse_transpose(self, mat: Any) -> Any:
        t = mat.T.tocoo()
        index = self.torch.tensor(np.stack([t.row, t.col]), dtype=self.torch.int64)
        sparse = self.torch.sparse_coo_tensor(index, self.torch.tensor(t.data), t.shape,
                                              check_invariants=True)  # fmt: skip
        return sparse.coalesce().to(self.device)

    def gemm(self, a: Any, b: Any) -> Any:
        # the forward pass's float64 magnitude products of dense layers
        return self.host(self.fresh(a) @ self.fresh(b))

    def conv2d(self, v: Any, w: Any, layer: Any) -> Any:
        # the forward pass's exact convolutions (magnitudes, radii): 1.5-2.2x numpy's
        # im2col and GEMM on one CPU core, and on the GPU where the rows are
        out = self.torch.nn.functional.conv2d(
            self.fresh(v), self.fresh(w), None, layer.stride, layer.padding, layer.dilation,
            layer.groups)  # fmt: skip
        return self.host(out)

    def conv2d_input(self, g: Any, layer: Any, in_shape: tuple[int, ...]) -> Any:
        # torch's gradient of a convolution with respect to its input: the same
        # adjoint as numpy's GEMM and col2im, 1.6-4.5x faster on one CPU core
        # (float64, 100-400 rows, 16-96 channels, 8x8 to 32x32 images)
        return self.torch.nn.grad.conv2d_input(
            (g.shape[0], *in_shape), self.on(layer.weight), g.contiguous(), layer.stride,
            layer.padding, layer.dilation, layer.groups)  # fmt: skip


_NUMPY = Backend()
_CURRENT: contextvars.ContextVar[Backend] = contextvars.ContextVar(
    "fperr_backend", default=_NUMPY
)


def current() -> Backend:
    """The backend of the enclosing :func:`using` block (numpy outside any)."""
    return _CURRENT.get()


def resolve(backend: str | None = None, device: str | None = None) -> tuple[str, str]:
    """(backend, device) named by the arguments: ``"numpy"`` (CPU only) or
    ``"torch"`` on ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``); a device other
    than the CPU implies torch.  None: the environment's ``FPERR_BACKEND`` and
    ``FPERR_DEVICE``, else numpy on the CPU.  An unknown backend is an input error
    (devices are checked by :func:`make`, which needs torch for it)."""
    backend = backend or os.environ.get("FPERR_BACKEND") or "numpy"
    device = device or os.environ.get("FPERR_DEVICE") or "cpu"
    if backend not in BACKENDS:
        raise FperrInputError(f"unknown backend {backend!r}; use one of {', '.join(BACKENDS)}")
    return ("numpy" if backend == "numpy" and device == "cpu" else "torch"), device


def make(backend: str | None = None, device: str | None = None) -> Backend:
    """The backend :func:`resolve` names.  Unknown names, a missing torch or an
    unavailable device are input errors."""
    backend, device = resolve(backend, device)
    if backend == "numpy":
        return _NUMPY
    from ..hardware.torch_env import require_torch, resolve_device

    torch = require_torch(f"the bound engine on device {device!r} ({backend})")
    return TorchBackend(torch, resolve_device(torch, device))


@contextmanager
def using(backend: str | None = None, device: str | None = None) -> Iterator[Backend]:
    """Run the backward passes within on this backend.  Nested blocks keep the
    outer block's backend (one call's stages share one; see :func:`make`)."""
    outer = _CURRENT.get()
    if outer is not _NUMPY:
        yield outer
        return
    b = make(backend, device)
    token = _CURRENT.set(b)
    try:
        yield b
    except Exception as exc:
        if not b.out_of_memory(exc):
            raise
        raise FperrInputError(
            f"the bound engine ran out of memory on {b.device}: give it a smaller budget "
            "(--memory / FPERR_MAX_BYTES; its rows are pulled back in chunks sized to it)"
        ) from None
    finally:
        _CURRENT.reset(token)
        b.close()


def on(a: Any) -> Any:
    """:meth:`Backend.on` of the current backend."""
    return _CURRENT.get().on(a)


def portable(fn: F) -> F:
    """Mark an adjoint as written for every backend (see the module docstring)."""
    fn.portable = True  # type: ignore[attr-defined]
    return fn


def apply_adjoint(adjoint: Callable[[Any], Any], rows: Any) -> Any:
    """``adjoint(rows)`` on the current backend: as written where it is portable,
    else in numpy on a copy of the rows and the result moved back."""
    b = _CURRENT.get()
    if b.native or getattr(adjoint, "portable", False):
        return adjoint(rows)
    out = adjoint(b.host(rows))
    return [b.fresh(o) for o in out] if isinstance(out, list) else b.fresh(out)
