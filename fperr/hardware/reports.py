"""Validation reports: per-run results, lossless storage of outputs, summaries.

:class:`ValidationReport` is what :func:`fperr.hardware.validate` returns and
what ``validation/results/<device>/<model>.json`` holds (format
``fperr-validation/1``): the environment, the probe, one
:class:`ConfigResult` per configuration and batch size, and every run's
outputs, stored as zlib + base64 of the narrowest float format that holds
them exactly (float16 and bfloat16 runs cost two bytes an output), so that
:func:`fperr.hardware.recheck` can check them against later bounds.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from ..arith import Emulated
from ..errors import FperrInputError

__all__ = ["REPORT_FORMAT", "ConfigResult", "ValidationReport", "summarize"]

REPORT_FORMAT = "fperr-validation/1"


# -- (de)serialising arithmetics and arrays ---------------------------------------------------
def arith_key(a: Emulated) -> str:
    d = a.to_dict()
    d.pop("name")
    return json.dumps(d, sort_keys=True)


def _encode(a: npt.ArrayLike) -> dict[str, Any]:
    """An array as JSON: zlib + base64 of the narrowest dtype that holds it exactly."""
    x = np.asarray(a)
    if x.dtype.kind == "f":
        x64 = x.astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            f32 = x64.astype(np.float32)
            cands: list[tuple[str, np.ndarray[Any, Any]]] = [("float16", x64.astype("<f2"))]
            cands.append(("bfloat16", (f32.astype("<f4").view("<u4") >> 16).astype("<u2")))
            cands += [("float32", f32.astype("<f4")), ("float64", x64.astype("<f8"))]
        for kind, c in cands:
            if np.array_equal(_decode_raw(kind, c), x64, equal_nan=True):
                break
    elif x.dtype.kind in "iub":
        xi = x.astype(np.int64)
        lo, hi = (int(xi.min()), int(xi.max())) if xi.size else (0, 0)
        kind = next(t for t in ("int8", "int16", "int32", "int64")
                    if np.iinfo(t).min <= lo and hi <= np.iinfo(t).max)  # fmt: skip
        c = xi.astype("<" + np.dtype(kind).str[1:])
    else:
        raise TypeError(f"cannot store arrays of dtype {x.dtype}")
    data = base64.b64encode(zlib.compress(c.tobytes(), 9)).decode("ascii")
    return {"dtype": kind, "shape": list(x.shape), "zlib_base64": data}


def _decode_raw(kind: str, c: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if kind == "bfloat16":
        return (c.astype("<u4") << 16).view("<f4").astype(np.float64)
    return c.astype(np.float64) if kind.startswith("float") else c.astype(np.int64)


def _decode(d: dict[str, Any]) -> np.ndarray[Any, Any]:
    raw = zlib.decompress(base64.b64decode(d["zlib_base64"]))
    kind = d["dtype"]
    stored = {"bfloat16": "<u2", "float16": "<f2", "float32": "<f4", "float64": "<f8"}.get(
        kind, "<" + np.dtype(kind).str[1:] if kind.startswith("int") else kind
    )
    return _decode_raw(kind, np.frombuffer(raw, dtype=stored)).reshape(d["shape"])


# -- results ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConfigResult:
    """One configuration at one batch size, checked against its bound.

    Errors are absolute, per output, against the float64 PyTorch run.
    ``violations``: inputs with some output outside bound + slack;
    ``worst_excess``: max over outputs of observed - (bound + slack), <= 0 when
    sound.  ``tightness``: per input, max_k bound / max_k observed (inputs whose
    observed error is 0 are counted in ``n_zero``, not in the ratios).
    ``flips``: argmax differs from float32 (TF32 off) at the same batch size.
    ``certified`` / ``certified_flips``: 16-bit configs only; a certified input
    must not flip against float32 nor leave the certificate's class.
    ``double_rounded``: weights and inputs whose float64 -> float32 -> storage
    conversion (what torch does) differs from rounding once (what fperr assumes).
    """

    config: str
    batch_size: int
    arithmetic: dict[str, Any]
    reason: str
    flags: dict[str, Any]
    n_inputs: int
    observed_max: float | None
    observed_median: float | None
    bound_median: float | None
    violations: int
    worst_excess: float | None
    violating_inputs: list[int]
    tightness: dict[str, float | None]
    flips: int
    flips_vs_float64: int
    certified: int | None = None
    certified_flips: int | None = None
    certified_flipped_inputs: list[int] = field(default_factory=list)
    double_rounded: int = 0

    @property
    def key(self) -> str:
        return f"{self.config}@{self.batch_size}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ConfigResult:
        return cls(**d)


@dataclass(frozen=True, eq=False)
class ValidationReport:
    """Every configuration x batch size checked for one model on one device.

    ``arrays``: ``inputs``, ``labels`` (if any), ``outputs:<config>@<batch>``
    for every run and ``min_ratio`` (per input, the smallest bound/observed
    over all runs), kept so that :func:`recheck` can redo the check.
    """

    model_name: str
    model_fingerprint: str
    n_inputs: int
    environment: dict[str, Any]
    probe: dict[str, Any]
    certificate_reference: dict[str, Any]
    results: tuple[ConfigResult, ...]
    arrays: dict[str, np.ndarray[Any, Any]] = field(default_factory=dict, repr=False)
    slack: str = "R_float64: fperr bound of float64 arithmetic against exact (triangle inequality)"

    @property
    def device(self) -> str:
        return str(self.environment.get("device", "?"))

    @property
    def violations(self) -> int:
        """Bound violations, summed over configs and batch sizes (must be 0)."""
        return sum(r.violations for r in self.results)

    @property
    def certified_flips(self) -> int:
        return sum(r.certified_flips or 0 for r in self.results)

    @property
    def ok(self) -> bool:
        return self.violations == 0 and self.certified_flips == 0

    def result(self, config: str, batch_size: int | None = None) -> ConfigResult:
        for r in self.results:
            if r.config == config and (batch_size is None or r.batch_size == batch_size):
                return r
        raise KeyError(f"no result for {config}@{batch_size}")

    def __repr__(self) -> str:
        configs = {r.config for r in self.results}
        bss = sorted({r.batch_size for r in self.results}, reverse=True)
        return (
            f"ValidationReport({self.model_name!r} on {self.device}"
            f" ({self.environment.get('device_name')}): {len(configs)} configs x batch sizes"
            f" {bss} x {self.n_inputs} inputs, {self.violations} violations,"
            f" {self.certified_flips} certified flips)"
        )

    def _repr_html_(self) -> str:
        head = ["config", "batch", "arithmetic", "max observed", "median bound", "violations",
                "tightness median", "flips", "certified", "certified flips"]  # fmt: skip
        rows = "".join(
            "<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in (
                r.config, r.batch_size, r.arithmetic["name"], _g(r.observed_max),
                _g(r.bound_median), r.violations, _g(r.tightness["median"]),
                r.flips, "" if r.certified is None else r.certified,
                "" if r.certified_flips is None else r.certified_flips)) + "</tr>"
            for r in self.results
        )  # fmt: skip
        th = "".join(f"<th>{h}</th>" for h in head)
        return f"<div><b>{html.escape(repr(self))}</b><table><tr>{th}</tr>{rows}</table></div>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": REPORT_FORMAT,
            "model": self.model_name,
            "model_fingerprint": self.model_fingerprint,
            "n_inputs": self.n_inputs,
            "environment": self.environment,
            "probe": self.probe,
            "certificate_reference": self.certificate_reference,
            "slack": self.slack,
            "summary": {"violations": self.violations, "certified_flips": self.certified_flips},
            "results": [asdict(r) for r in self.results],
            "arrays": _encode_arrays(self.arrays),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ValidationReport:
        if d.get("format") != REPORT_FORMAT:
            raise FperrInputError(f"not an fperr validation report (format {d.get('format')!r})")
        arrays = _decode_arrays(d.get("arrays", {}))
        return cls(d["model"], d["model_fingerprint"], d["n_inputs"], d["environment"],
                   d["probe"], d["certificate_reference"],
                   tuple(ConfigResult.from_dict(r) for r in d["results"]), arrays,
                   d.get("slack", cls.slack))  # fmt: skip

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, allow_nan=False) + "\n"

    def save(self, path: str | Path) -> None:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> ValidationReport:
        p = Path(path)
        if not p.is_file():
            raise FperrInputError(f"validation report not found: {p}")
        try:
            d = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FperrInputError(f"{p}: not JSON ({exc})") from None
        if not isinstance(d, dict):
            raise FperrInputError(f"{p}: not an fperr validation report")
        try:
            return cls.from_dict(d)
        except (KeyError, TypeError, ValueError, zlib.error) as exc:
            raise FperrInputError(f"{p}: malformed validation report ({exc!r})") from None


def _encode_arrays(arrays: dict[str, np.ndarray[Any, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    seen: dict[bytes, str] = {}
    for name, a in arrays.items():
        h = hashlib.sha256(str(a.shape).encode() + np.ascontiguousarray(a).tobytes()).digest()
        if h in seen and a.dtype.kind == "f":  # identical runs (CPU: TF32 flags do nothing)
            out[name] = {"same_as": seen[h]}
        else:
            seen[h] = name
            out[name] = _encode(a)
    return out


def _decode_arrays(d: dict[str, Any]) -> dict[str, np.ndarray[Any, Any]]:
    out: dict[str, np.ndarray[Any, Any]] = {}
    for name, v in d.items():
        out[name] = out[v["same_as"]] if "same_as" in v else _decode(v)
    return out


def finite_or_none(v: Any) -> float | None:
    """A float for JSON: None where it is not finite (NaN, an infinite bound)."""
    f = float(v)
    return f if np.isfinite(f) else None


def _g(v: float | None, width: int = 0) -> str:
    return f"{'-' if v is None else format(v, '.3g'):>{width}}"


def summarize(report: ValidationReport) -> str:
    """A plain-text table of a report, for printing."""
    env = report.environment
    lines = [
        f"fperr validate: {report.model_name}, {report.n_inputs} inputs, {report.device}"
        f" ({env.get('device_name')}), torch {env.get('torch')}"
        + (
            f", CUDA {env.get('cuda')}, driver {env.get('driver')}"
            if report.device.startswith("cuda")
            else ""
        ),
        f"probe: {report.probe.get('model')}",
        f"check: |y - y_float64| <= bound + slack ({report.slack})",
        "",
        f"{'config':<17}{'batch':>6}  {'arithmetic':<42}{'max obs':>10}{'med bound':>10}"
        f"{'viol':>5}  {'tightness med [p10, p90] min':<30}{'flips':>6}{'cert':>6}{'c.flip':>7}",
    ]
    for r in report.results:
        a = r.arithmetic
        arith = f"{a['name']}" + (", chop" if a.get("acc_rounding") == "truncate" else "")
        t = r.tightness
        tight = f"{_g(t['median'])} [{_g(t['p10'])}, {_g(t['p90'])}] {_g(t['min'])}"
        lines.append(
            f"{r.config:<17}{r.batch_size:>6}  {arith:<42}{_g(r.observed_max, 10)}"
            f"{_g(r.bound_median, 10)}{r.violations:>5}  {tight:<30}{r.flips:>6}"
            f"{'' if r.certified is None else r.certified:>6}"
            f"{'' if r.certified_flips is None else r.certified_flips:>7}"
        )
    dr = {r.config: r.double_rounded for r in report.results if r.double_rounded}
    if dr:
        lines.append(f"note: torch double-rounds (float64 -> float32 -> storage) {dr} values;"
                     " fperr's bounds assume one rounding")  # fmt: skip
    runs = len(report.results)
    lines.append("")
    lines.append(
        f"{runs} runs x {report.n_inputs} inputs: {report.violations} bound violations,"
        f" {report.certified_flips} certified inputs flipped" + ("" if report.ok else "  -- FAILED")
    )
    return "\n".join(lines)
