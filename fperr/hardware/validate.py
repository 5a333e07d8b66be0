"""Check every bound and certificate against real PyTorch runs (CPU or CUDA).

:func:`validate` runs a model in each of :data:`CONFIGS` (float64, float32
with TF32 off, PyTorch's defaults, TF32, float16 with and without reduced
precision reduction, bfloat16, float16 autocast) at several batch sizes --
kernel choice, and so the summation order, changes with the batch size -- and
checks, per input and output,

    |y_config - y_float64| <= R_config + R_float64

where ``R_config`` is fperr's bound (:func:`fperr.bounds.bound_run`) on the
distance of *any* run obeying the config's arithmetic model from the exact
output, and ``R_float64`` the same bound for float64 arithmetic: the slack
that covers the float64 reference's own rounding error (triangle
inequality; about 2^-29 of the binary32 bound).  It also counts argmax flips
against float32 (TF32 off) at the same batch size and, for the 16-bit
configs, whether any input the certificate (:mod:`fperr.certify`) calls safe
flipped anyway.

The :class:`ValidationReport` keeps the observed outputs (losslessly, in the
narrowest float format that holds them), so :func:`recheck` can recompute
the *current* bounds for a committed real-hardware run and list any output
they no longer cover: the regression guard for changes to the bounds.
"""

from __future__ import annotations

import hashlib
import platform
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..arith import Emulated
from ..errors import FperrInputError
from ..formats import Format, get_format
from ..layers import (
    Activation,
    Add,
    BatchNorm,
    Concat,
    Conv2d,
    Dense,
    Dropout,
    Flatten,
    LayerNorm,
    Reshape,
    RMSNorm,
    Softmax,
)
from ..model import Model, check_inputs
from ..rounding import round as fround
from .configs import CONFIGS, TorchConfig, arithmetic_for
from .probe import ProbeResult, probe
from .reports import (
    ConfigResult,
    ValidationReport,
    arith_key,
    finite_or_none,
    summarize,
)
from .torch_env import (
    device_name,
    flag_state,
    record_flags,
    require_torch,
    resolve_device,
    restore_flags,
)

__all__ = ["CONFIGS", "ConfigResult", "ProbeResult", "TorchConfig", "ValidationReport",
           "arithmetic_for", "probe", "recheck", "summarize", "validate"]  # fmt: skip

Array = npt.NDArray[np.float64]


# -- the environment ----------------------------------------------------------------------------
def _environment(torch: Any, device: str) -> dict[str, Any]:
    from .. import __version__
    dev = torch.device(device)
    env: dict[str, Any] = {
        "device": str(dev),
        "device_name": device_name(torch, dev),
        "driver": None,
        "torch": str(torch.__version__),
        "cuda": torch.version.cuda,
        "cudnn": None,
        "fperr": __version__,
        "numpy": np.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu_capability": _call(lambda: torch.backends.cpu.get_cpu_capability()),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if dev.type == "cuda":
        env["cudnn"] = _call(torch.backends.cudnn.version)
        env["capability"] = list(torch.cuda.get_device_capability(dev))
        env["driver"] = _driver()
    return env


def _call(f: Callable[[], Any]) -> Any:
    try:
        return f()
    except Exception:  # informational only: never fail a run over it
        return None


def _driver() -> str | None:
    import subprocess

    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True)  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else None


# -- the checks ---------------------------------------------------------------------------------
_TYPE_FIELD = (Activation, Add, BatchNorm, Concat, Conv2d, Dense, Dropout, Flatten, LayerNorm,
               Reshape, RMSNorm, Softmax)  # fmt: skip
"""Layer classes that held ``type`` (and a merge its ``arity``) as a dataclass field before
they became operators (class attributes now): their fingerprints keep hashing them, so
that committed reports keep matching their models."""


def _hashed_fields(layer: Any) -> dict[str, Any]:
    fields = dict(vars(layer))
    if isinstance(layer, _TYPE_FIELD):
        fields.setdefault("type", layer.type)
    if isinstance(layer, Add | Concat):
        fields.setdefault("arity", layer.arity)
    return fields


def _fingerprint(model: Model) -> str:
    """sha256 of the layer types, their parameters, the input shape and a graph's wiring."""
    h = hashlib.sha256(repr(tuple(model.input_shape)).encode())

    def walk(layers: Iterable[Any]) -> None:
        for layer in layers:
            h.update(layer.type.encode())
            for k, v in sorted(_hashed_fields(layer).items()):
                if k == "alpha" and layer.type != "elu":
                    continue  # ELU's parameter, added later: other layers' reports keep their hash
                if k == "axis" and layer.type == "softmax" and v == -1:
                    continue  # softmax's axis, added later: the default keeps committed hashes
                h.update(k.encode())
                if isinstance(v, np.ndarray):
                    h.update(repr(v.shape).encode() + np.ascontiguousarray(v, "<f8").tobytes())
                elif k == "layers":  # a residual block's body
                    walk(v)
                else:
                    h.update(repr(v).encode())

    walk(model.layers)
    if model.is_graph:  # two graphs of the same layers wired differently compute different things
        h.update(repr((model.wiring, model.names)).encode())
    return h.hexdigest()


def _parameters(layers: Iterable[Any]) -> list[np.ndarray[Any, Any]]:
    out: list[np.ndarray[Any, Any]] = []
    for layer in layers:
        for k, v in vars(layer).items():
            if isinstance(v, np.ndarray):
                out.append(v)
            elif k == "layers":
                out += _parameters(v)
    return out


def _double_rounded(values: list[np.ndarray[Any, Any]], storage: Format) -> int:
    """How many values torch's float64 -> float32 -> storage conversion puts elsewhere
    than rounding once (c10 converts double to Half/BFloat16 through float)."""
    if storage.p >= 24:
        return 0
    n = 0
    for v in values:
        x = np.asarray(v, np.float64).ravel()
        with np.errstate(over="ignore"):
            twice = fround(x.astype(np.float32).astype(np.float64), storage)
        n += int(np.sum(twice != fround(x, storage)))
    return n


def _ratios(bound: Array, observed: Array) -> tuple[Array, Array]:
    """Per input: max_k bound, max_k observed."""
    return bound.reshape(len(bound), -1).max(axis=1), observed.reshape(len(bound), -1).max(axis=1)


def _check(
    y: Array,
    y64: Array,
    bound: Array,
    pred32: npt.NDArray[np.int64],
    certified: npt.NDArray[np.bool_] | None,
    ref_class: npt.NDArray[np.int64] | None,
) -> dict[str, Any]:
    """The figures of one run: ``bound`` = R_config + R_float64, per output."""
    n = len(y)
    obs = np.abs(y - y64).reshape(n, -1)
    b = bound.reshape(n, -1)
    with np.errstate(invalid="ignore"):
        outside = ~(obs <= b) & ~np.isinf(b)
        excess = np.where(np.isinf(b), -np.inf, obs - b)
    bad = outside.any(axis=1)
    bmax, omax = _ratios(b, obs)
    pos = omax > 0
    ratio = bmax[pos] / omax[pos]

    def q(p: float) -> float | None:
        return finite_or_none(np.percentile(ratio, p)) if ratio.size else None

    pred = y.reshape(n, -1).argmax(axis=1)
    out: dict[str, Any] = {
        "n_inputs": n,
        "observed_max": finite_or_none(np.max(omax)),
        "observed_median": finite_or_none(np.median(omax)),
        "bound_median": finite_or_none(np.median(bmax)),
        "violations": int(bad.sum()),
        # a NaN output against a finite bound is as bad as it gets
        "worst_excess": finite_or_none(np.max(np.where(np.isnan(excess), np.inf, excess))),
        "violating_inputs": np.flatnonzero(bad)[:50].tolist(),
        "tightness": {
            "median": q(50),
            "p10": q(10),
            "p90": q(90),
            "min": q(0),
            "max": q(100),
            "n_zero": int((~pos).sum()),
        },
        "flips": int((pred != pred32).sum()),
        "flips_vs_float64": int((pred != y64.reshape(n, -1).argmax(axis=1)).sum()),
    }
    if certified is not None and ref_class is not None:
        wrong = certified & ((pred != pred32) | (pred != ref_class) | (pred32 != ref_class))
        out["certified"] = int(certified.sum())
        out["certified_flips"] = int(wrong.sum())
        out["certified_flipped_inputs"] = np.flatnonzero(wrong)[:50].tolist()
    return out


def _per_input_ratio(y: Array, y64: Array, bound: Array) -> Array:
    bmax, omax = _ratios(bound, np.abs(y - y64))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(omax > 0, bmax / omax, np.inf)


def _bound_chunk(model: Model, x: Array, arith: Emulated) -> tuple[Array, Array]:
    from ..bounds import bound_run

    rb = bound_run(model, x, arith)
    return rb.output, rb.radius


_THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


class _Bounds:
    """bound_run per distinct arithmetic, computed once; with ``workers`` > 1 in
    spawned processes (one BLAS thread each: the bound code gains nothing from
    more), over chunks of inputs, while the caller runs torch."""

    def __init__(
        self, model: Model, x: Array, log: Callable[[str], None], workers: int = 1
    ) -> None:
        self.model, self.x, self.log, self.workers = model, x, log, workers
        self.cache: dict[str, Any] = {}
        self.pending: dict[str, list[Any]] = {}
        self.pool: Any = None

    def start(self, ariths: Iterable[Emulated]) -> None:
        import multiprocessing
        import os
        from concurrent.futures import ProcessPoolExecutor

        todo = {arith_key(a): a for a in ariths}
        todo = {k: a for k, a in todo.items() if k not in self.cache and k not in self.pending}
        if self.workers <= 1 or not todo:
            return
        n = len(self.x)
        per = max(1, -(-2 * self.workers // len(todo)))  # ~2 tasks per worker
        size = max(1, -(-n // per))
        saved = {v: os.environ.get(v) for v in _THREAD_VARS}
        os.environ.update(dict.fromkeys(_THREAD_VARS, "1"))  # read by the spawned workers
        try:
            if self.pool is None:
                ctx = multiprocessing.get_context("spawn")  # no fork after CUDA init
                self.pool = ProcessPoolExecutor(self.workers, mp_context=ctx)
            for key, a in todo.items():
                self.log(f"bounding {n} inputs in {a.name} ({a.acc_rounding}), in the background")
                self.pending[key] = [
                    self.pool.submit(_bound_chunk, self.model, self.x[i : i + size], a)
                    for i in range(0, n, size)
                ]
        finally:
            for v, old in saved.items():
                if old is None:
                    os.environ.pop(v, None)
                else:
                    os.environ[v] = old

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(cancel_futures=True)
            self.pool = None

    def __call__(self, arith: Emulated) -> Any:
        from ..bounds import RunBound

        key = arith_key(arith)
        if key not in self.cache:
            if key in self.pending:
                parts = [f.result() for f in self.pending.pop(key)]
            else:
                self.log(f"bounding {len(self.x)} inputs in {arith.name} ({arith.acc_rounding})")
                parts = [_bound_chunk(self.model, self.x, arith)]
            out = np.concatenate([p[0] for p in parts])
            radius = np.concatenate([p[1] for p in parts])
            self.cache[key] = RunBound(out, radius, np.zeros((len(out), 0, out.shape[1])))
        return self.cache[key]

    def certified(self, low: Emulated, ref: Emulated) -> tuple[Any, Any]:
        """Certificate mask and reference class, exactly as :func:`fperr.certify.certify`."""
        from ..bounds import BoundResult
        from ..certify import CertifyResult

        lo, rf = self(low), self(ref)
        b = BoundResult(lo, rf, low, ref, "deterministic")
        c = CertifyResult(self.model.name, b, rf.output, lo.output)
        return c.certified, c.reference_class


# -- running ------------------------------------------------------------------------------------
def _run_defaults(model: Model, x: Array, device: str, bs: int) -> Any:
    """float32 with PyTorch's documented default flags: matmul TF32 off, cuDNN TF32
    on, reduced-precision reduction allowed.  ``run_torch`` always sets both TF32
    flags to one value, so it cannot express this mix."""
    from .torch_exec import TorchRun, to_torch

    torch = require_torch("validation")
    dev = torch.device(device)
    net = to_torch(model).to(device=dev, dtype=torch.float32)
    state = flag_state(torch)
    outs = []
    try:
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = True
        for r in ("fp16", "bf16"):
            setattr(torch.backends.cuda.matmul, f"allow_{r}_reduced_precision_reduction", True)
        with torch.inference_mode():
            flags = record_flags(torch, dev, "float32", False, None, bs, len(x))
            for i in range(0, len(x), bs):
                xb = torch.from_numpy(x[i : i + bs]).to(device=dev, dtype=torch.float32)
                outs.append(net(xb).to(torch.float64).cpu().numpy())
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
    finally:
        restore_flags(torch, state)
    return TorchRun(np.concatenate(outs).astype(np.float64), flags)


def _run(model: Model, x: Array, c: TorchConfig, device: str, bs: int) -> Any:
    from .torch_exec import run_torch

    if c.name == "float32_default":
        run = _run_defaults(model, x, device, bs)
    else:
        run = run_torch(model, x, dtype=c.dtype, device=device, tf32=c.tf32,
                        autocast=c.autocast or False,
                        reduced_precision_reduction=c.reduced_precision_reduction,
                        batch_size=bs)  # fmt: skip
    run.flags["config"] = c.name
    return run


def _resolve_configs(configs: Sequence[str | TorchConfig] | None) -> list[TorchConfig]:
    chosen = list(CONFIGS.values()) if configs is None else []
    for c in configs or ():
        if isinstance(c, TorchConfig):
            chosen.append(c)
        elif c in CONFIGS:
            chosen.append(CONFIGS[c])
        else:
            raise FperrInputError(f"unknown config {c!r}; valid: {', '.join(CONFIGS)}")
    names = [c.name for c in chosen]
    # float64 is the reference and float32 the flip reference: always run
    extra = [CONFIGS[n] for n in ("float64", "float32") if n not in names]
    return extra + chosen


def validate(
    model: Model,
    X: npt.ArrayLike,
    labels: npt.ArrayLike | None = None,
    device: str = "cpu",
    batch_sizes: Sequence[int | None] = (None, 1),
    configs: Sequence[str | TorchConfig] | None = None,
    probe_result: ProbeResult | None = None,
    log: Callable[[str], None] | None = None,
    workers: int = 1,
) -> ValidationReport:
    """Run ``model`` on ``X`` in every config x batch size and check the bounds.

    ``batch_sizes``: ``None`` means all inputs at once; the first entry's
    float64 run is the reference.  ``probe_result``: how the device's GEMMs
    accumulate (default: :func:`probe` it now); it decides the arithmetic of
    the 16-bit and TF32 configs (:func:`arithmetic_for`).  ``log``: progress
    messages (e.g. ``print`` to stderr).  ``workers``: processes computing the
    bounds (in the background, while torch runs); 1 computes them in this one.
    More than 1 spawns processes, which re-import the calling script: call it
    from a module or under ``if __name__ == "__main__":``.
    """
    say = log or (lambda _msg: None)
    torch = require_torch("validation")
    resolve_device(torch, device)
    x = check_inputs(X, model.input_shape)
    n = len(x)
    if n == 0:
        raise FperrInputError("no inputs to validate")
    if not batch_sizes:
        raise FperrInputError("batch_sizes is empty")
    for b in batch_sizes:
        if b is not None and b < 1:
            raise FperrInputError(f"batch sizes must be positive, got {b}")
    bss = list(dict.fromkeys(n if b is None else min(int(b), n) for b in batch_sizes))
    cfgs = _resolve_configs(configs)
    if probe_result is None:
        say(f"probing {device} ...")
        probe_result = probe(device)
    ariths = {c.name: arithmetic_for(c, device, probe_result, model) for c in cfgs}
    bounds = _Bounds(model, x, say, workers)
    try:
        bounds.start(a for a, _ in ariths.values())
        runs: dict[tuple[str, int], Any] = {}
        for bs in bss:
            for c in cfgs:
                say(f"running {c.name} at batch size {bs}")
                runs[(c.name, bs)] = _run(model, x, c, device, bs)
        for a, _ in ariths.values():
            bounds(a)
    finally:
        bounds.close()
    r64 = bounds(ariths["float64"][0]).radius
    ref_arith = ariths["float32"][0]
    params = _parameters(model.layers) + [x]
    y64 = runs[("float64", bss[0])].outputs

    results, arrays = [], {"inputs": x}
    if labels is not None:
        arrays["labels"] = np.asarray(labels, dtype=np.int64)
    arrays["outputs:float64@reference"] = y64
    min_ratio = np.full(n, np.inf)
    cert = {c.name: bounds.certified(ariths[c.name][0], ref_arith) for c in cfgs if c.certify}
    for bs in bss:
        pred32 = runs[("float32", bs)].predictions
        for c in cfgs:
            arith, why = ariths[c.name]
            run = runs[(c.name, bs)]
            total = bounds(arith).radius + r64
            cm, rc = cert.get(c.name, (None, None))
            figures = _check(run.outputs, y64, total, pred32, cm, rc)
            st = get_format(c.autocast) if c.autocast else arith.storage
            dr = _double_rounded(params, st)
            results.append(ConfigResult(c.name, bs, arith.to_dict(), why, dict(run.flags),
                                        double_rounded=dr, **figures))  # fmt: skip
            arrays[f"outputs:{c.name}@{bs}"] = run.outputs
            min_ratio = np.minimum(min_ratio, _per_input_ratio(run.outputs, y64, total))
    arrays["min_ratio"] = min_ratio.astype(np.float32)
    return ValidationReport(
        model_name=model.name,
        model_fingerprint=_fingerprint(model),
        n_inputs=n,
        environment=_environment(torch, device),
        probe=probe_result.to_dict(),
        certificate_reference=ref_arith.to_dict(),
        results=tuple(results),
        arrays=arrays,
    )


# -- reading reports ----------------------------------------------------------------------------
def _subset(report: ValidationReport, limit: int | None) -> npt.NDArray[np.int64]:
    """All inputs, or the ``limit`` closest to their bound plus every flipped one."""
    n = report.n_inputs
    if limit is None or limit >= n:
        return np.arange(n)
    a = report.arrays
    ratio = a["min_ratio"].astype(np.float64)
    chosen = set(np.argsort(ratio, kind="stable")[:limit].tolist())
    ref = a["outputs:float64@reference"].reshape(n, -1).argmax(axis=1)
    for r in report.results:
        pred = a[f"outputs:{r.key}"].reshape(n, -1).argmax(axis=1)
        chosen |= set(np.flatnonzero(pred != ref).tolist())
    return np.array(sorted(chosen), dtype=np.int64)


def recheck(
    report_path: str | Path | ValidationReport,
    model: Model,
    limit: int | None = None,
    workers: int = 1,
) -> list[str]:
    """Recompute the *current* bounds for a stored report; one line per problem.

    Every stored run is checked again, |y - y_float64| <= R + R_float64 per
    output, with each config's stored arithmetic, and every certificate of a
    16-bit config against the stored argmaxes.  ``limit``: only the inputs
    closest to their bound (and every input some run flipped), for a quick
    check.  ``workers``: processes for the bounds.  An empty list means the
    current bounds cover every stored run.
    """
    rep = report_path if isinstance(report_path, ValidationReport) else (
        ValidationReport.load(report_path))  # fmt: skip
    if rep.model_fingerprint != _fingerprint(model):
        raise FperrInputError(
            f"the report was made with another model than {model.name!r} (fingerprint differs)"
        )
    idx = _subset(rep, limit)
    x = rep.arrays["inputs"][idx]
    bounds = _Bounds(model, x, lambda _m: None, workers)
    ref_arith = Emulated.from_dict(rep.certificate_reference)
    a64 = next(
        (Emulated.from_dict(r.arithmetic) for r in rep.results if r.config == "float64"), None
    )
    if a64 is None:
        raise FperrInputError("the report has no float64 run")
    try:
        bounds.start([a64, ref_arith, *(Emulated.from_dict(r.arithmetic) for r in rep.results)])
        r64 = bounds(a64).radius
        problems = _recheck_runs(rep, idx, bounds, r64, ref_arith)
    finally:
        bounds.close()
    return problems


def _recheck_runs(
    rep: ValidationReport,
    idx: npt.NDArray[np.int64],
    bounds: _Bounds,
    r64: Array,
    ref_arith: Emulated,
) -> list[str]:
    a = rep.arrays
    y64 = a["outputs:float64@reference"][idx]
    problems: list[str] = []
    for r in rep.results:
        arith = Emulated.from_dict(r.arithmetic)
        y = a[f"outputs:{r.key}"][idx]
        pred32 = a[f"outputs:float32@{r.batch_size}"][idx]
        pred32 = pred32.reshape(len(idx), -1).argmax(axis=1)
        cm, rc = (None, None)
        if r.certified is not None:
            cm, rc = bounds.certified(arith, ref_arith)
        total = bounds(arith).radius + r64
        f = _check(y, y64, total, pred32, cm, rc)
        obs = np.abs(y - y64).reshape(len(idx), -1)
        for i in f["violating_inputs"][:10]:
            k = int(np.argmax(obs[i] - total.reshape(len(idx), -1)[i]))
            problems.append(
                f"{r.key}: input {int(idx[i])} output {k}: observed {obs[i, k]:.6g}"
                f" > bound {total.reshape(len(idx), -1)[i, k]:.6g} ({arith.name})"
            )
        if f["violations"] > 10:
            problems.append(f"{r.key}: ... {f['violations']} inputs outside the bound in all")
        for i in f.get("certified_flipped_inputs", [])[:10]:
            problems.append(f"{r.key}: input {int(idx[i])} certified but flipped against float32")
    return problems
