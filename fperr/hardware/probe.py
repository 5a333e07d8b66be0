"""Probe how a platform's low-precision GEMMs really accumulate.

:func:`probe` runs a few crafted and random matrix products in PyTorch on the
CPU or a CUDA device and names the accumulation model that matches them, so
that :mod:`fperr.hardware.validate` can choose the arithmetic whose bound must
cover each real configuration (what the probes found: docs/hardware.md).  The tests:

* ``2048+ones``: a row ``[2048, 1, ..., 1]`` of length K times ones.  The
  exact sum 2047 + K is an integer below 2^24, so an fp32 accumulator gives
  round16(2047 + K); an fp16 accumulator absorbs every 1 into 2048
  (spacing 2 there) and gives 2048.
* ``1+tiny``: ``[1, 2^-12, ...]``: fp16 accumulation stays at 1.
* ``rounding``: ``1024 + f ulp`` (f = +-0.75, +-0.25 ulp of the accumulator
  at 1024) at k = 0, 1 and ``-1024`` at k = K - 1, in another block of the
  reduction.  The accumulator holds round(1024 + f ulp) when -1024 arrives,
  so the result reads the accumulator's rounding off directly: nearest gives
  (1, -1, 0, 0) ulp for f = (0.75, -0.75, 0.25, -0.25), truncation (chopping)
  (0, 0, 0, 0), rounding down (0, -1, 0, -1), up (1, 0, 1, 0); an accumulator
  wider than assumed, or a kernel that adds -1024 first, gives f itself
  ("exact": this shape tells nothing).
* ``tf32_operand``: ``(1 + 3 * 2^-12) * 1`` in float32 with TF32 allowed:
  operands rounded to nearest TF32 give 1 + 2^-10, chopped ones 1, no TF32 the
  input unchanged.
* ``random``: random GEMMs against float64 on the same rounded inputs and
  against fperr's emulation (sequential fp32 order, BLAS order); which
  candidate models' deterministic bounds cover every output.

torch is imported inside the functions.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ..formats import gamma, get_format
from ..rounding import round as fround
from .torch_env import device_name, require_torch, resolve_device, torch_flags

__all__ = ["ProbeResult", "probe", "probe_cli"]

Array = npt.NDArray[np.float64]

# Reduction dims of the crafted tests, and the row/column counts: 1 (GEMV
# kernels) and 128 (GEMM kernels, the path model layers take).
_KS = (256, 1024, 4096)
_MNS = (1, 128)
_ROUNDING_K = 1024
_FRACTIONS = (0.75, -0.75, 0.25, -0.25)
_SIGNATURES: dict[str, tuple[float, ...]] = {
    "nearest": (1.0, -1.0, 0.0, 0.0),
    "truncate": (0.0, 0.0, 0.0, 0.0),
    "down": (0.0, -1.0, 0.0, -1.0),
    "up": (1.0, 0.0, 1.0, 0.0),
    "exact": _FRACTIONS,
}
_RANDOM_KS = (64, 512, 4096)
_RANDOM_MN = 64
_ACC_P = {"binary16": 11, "bfloat16": 8, "binary32": 24}


@dataclass(frozen=True, eq=False)
class ProbeResult:
    """How one platform's GEMMs accumulate, measured.

    ``accumulate``: per ``"<dtype>/red=<bool>"`` (float16, bfloat16; the
    reduced-precision-reduction flag), the narrowest accumulator format the
    ``2048+ones`` and ``1+tiny`` tests allow: ``"binary32"``, the storage
    format itself (``"binary16"``/``"bfloat16"``: 16-bit accumulation), or
    ``"unknown"``.  ``rounding``: per ``"<dtype>/red=<bool>"`` and for
    ``float32`` (TF32 off) and ``tf32``, the accumulator's rounding read off the
    ``rounding`` test: nearest, truncate, down, up, mixed or inconclusive.
    ``tf32_operand``: how float32 operands become TF32 (nearest, truncate,
    none: TF32 not applied).  ``covered_by``: per dtype key, the candidate
    models whose deterministic bound covered every random GEMM output.
    ``tests``: the raw measurements.
    """

    device: str
    device_name: str
    torch: str
    cuda: str | None
    accumulate: dict[str, str]
    rounding: dict[str, str]
    tf32_operand: str
    covered_by: dict[str, list[str]]
    tests: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def model(self) -> str:
        """The fp16 GEMM accumulation model, in words (reduced precision reduction off)."""
        return self.describe("float16", False)

    def describe(self, dtype: str = "float16", reduced_precision_reduction: bool = False) -> str:
        key = f"{dtype}/red={reduced_precision_reduction}"
        storage = get_format(dtype).name
        acc = self.accumulate.get(key, "unknown")
        rnd = self.rounding.get(key, "inconclusive")
        words = {"nearest": "round-to-nearest", "truncate": "truncating (chopping)",
                 "down": "rounding down", "up": "rounding up"}  # fmt: skip
        return f"{storage} storage, {acc} accumulation, {words.get(rnd, rnd + ' rounding')}"

    def text(self) -> str:
        lines = [f"probe: {self.device} ({self.device_name}), torch {self.torch}"
                 + (f", CUDA {self.cuda}" if self.cuda else "")]  # fmt: skip
        for dtype in ("float16", "bfloat16"):
            for red in (False, True):
                key = f"{dtype}/red={red}"
                cov = len(self.covered_by.get(key, []))
                eq = self.tests.get(key, {}).get("random/K=512", {}).get("frac_equal_blas_f32acc")
                same = "" if eq is None else f", {100 * eq:.1f}% equal to fp32-accumulate BLAS"
                lines.append(f"  {key:<20} {self.describe(dtype, red)}"
                             f"  (random GEMMs: {cov}/4 model bounds cover{same})")  # fmt: skip
        lines.append(f"  float32 (TF32 off)   accumulator rounding: {self.rounding.get('float32')}")
        lines.append(
            f"  tf32                 operands rounded: {self.tf32_operand}; accumulator"
            f" rounding: {self.rounding.get('tf32')}"
        )
        return "\n".join(lines)

    def __repr__(self) -> str:
        return f"ProbeResult({self.device} ({self.device_name}): {self.model})"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td style='text-align:left'>{html.escape(line.strip())}</td></tr>"
            for line in self.text().splitlines()[1:]
        )
        head = html.escape(self.text().splitlines()[0])
        return f"<div><b>ProbeResult</b> {head}<table>{rows}</table></div>"

    def to_dict(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "device_name": self.device_name,
            "torch": self.torch,
            "cuda": self.cuda,
            "model": self.model,
            "accumulate": dict(self.accumulate),
            "rounding": dict(self.rounding),
            "tf32_operand": self.tf32_operand,
            "covered_by": {k: list(v) for k, v in self.covered_by.items()},
            "tests": self.tests,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeResult:
        return cls(d["device"], d["device_name"], d["torch"], d.get("cuda"),
                   dict(d["accumulate"]), dict(d["rounding"]), d["tf32_operand"],
                   {k: list(v) for k, v in d.get("covered_by", {}).items()},
                   d.get("tests", {}))  # fmt: skip


# -- the tests ----------------------------------------------------------------------------------
def _mm(torch: Any, a: Array, b: Array, dtype: str, dev: Any, tf32: bool = False) -> Array:
    """``a @ b`` in torch ``dtype`` on ``dev`` (inputs exact in ``dtype``), as float64."""
    t = getattr(torch, dtype)
    ta = torch.from_numpy(np.ascontiguousarray(a)).to(device=dev, dtype=t)
    tb = torch.from_numpy(np.ascontiguousarray(b)).to(device=dev, dtype=t)
    with torch_flags(torch, tf32, None), torch.inference_mode():
        out = torch.matmul(ta, tb).to(torch.float64).cpu().numpy()
    return np.asarray(out, dtype=np.float64)


def _round1(x: float, fmt: Any) -> float:
    return float(fround(np.array([x]), fmt)[0])


def _accumulation_tests(torch: Any, dtype: str, dev: Any) -> tuple[dict[str, Any], str]:
    storage = get_format(dtype)
    tests: dict[str, Any] = {}
    verdicts = set()
    for k in _KS:
        for mn in _MNS:
            a = np.ones((mn, k))
            a[:, 0] = 2048.0
            c = _mm(torch, a, np.ones((k, mn)), dtype, dev)
            exact = 2047.0 + k
            wide = _round1(exact, storage)
            got = sorted({float(v) for v in c.ravel()})
            tests[f"2048+ones/K={k}/MN={mn}"] = {"got": got, "exact": exact, "wide_acc": wide}
            verdicts.add("binary32" if got == [wide] else storage.name if got == [2048.0] else "?")
            tiny = 2.0 ** -(storage.p + 1)  # below half an ulp of 1
            a = np.full((mn, k), tiny)
            a[:, 0] = 1.0
            c = _mm(torch, a, np.ones((k, mn)), dtype, dev)
            exact = 1.0 + (k - 1) * tiny
            wide = _round1(exact, storage)
            got = sorted({float(v) for v in c.ravel()})
            tests[f"1+tiny/K={k}/MN={mn}"] = {"got": got, "exact": exact, "wide_acc": wide}
            verdicts.add("binary32" if got == [wide] else storage.name if got == [1.0] else "?")
    acc = verdicts.pop() if len(verdicts) == 1 else "unknown"
    return tests, "unknown" if acc == "?" else acc


def _classify(values: tuple[float | None, ...]) -> str:
    for name, sig in _SIGNATURES.items():
        if all(v == s for v, s in zip(values, sig, strict=True)):
            return name
    return "other"


def _rounding_test(
    torch: Any, dtype: str, dev: Any, acc_p: int, tf32: bool = False
) -> tuple[dict[str, Any], str]:
    """The ``rounding`` test; ``acc_p``: precision of the accumulator to probe."""
    ulp = 2.0 ** (10 - (acc_p - 1))  # spacing of the accumulator at 1024
    tests: dict[str, Any] = {}
    classes = []
    k = _ROUNDING_K
    for mn in _MNS:
        units: list[float | None] = []
        for f in _FRACTIONS:
            a = np.zeros((mn, k))
            b = np.zeros((k, mn))
            a[:, 0], b[0] = 1024.0, 1.0
            # f ulp as an exact product of two short numbers (fp16, bf16, TF32 alike)
            a[:, 1], b[1] = f * ulp * 2.0**7, 2.0**-7
            a[:, k - 1], b[k - 1] = -1024.0, 1.0
            c = _mm(torch, a, b, dtype, dev, tf32)
            got = sorted({float(v) for v in c.ravel()})
            units.append(got[0] / ulp if len(got) == 1 else None)  # None: outputs differ
        cls = _classify(tuple(units))
        tests[f"rounding/K={k}/MN={mn}"] = {"ulps": units, "class": cls}
        classes.append(cls)
    informative = {c for c in classes if c != "exact"}
    if not informative:
        verdict = "inconclusive"
    elif len(informative) == 1:
        verdict = informative.pop()
        verdict = "mixed" if verdict == "other" else verdict
    else:
        verdict = "mixed"
    return tests, verdict


def _tf32_operand_test(torch: Any, dev: Any) -> tuple[dict[str, Any], str]:
    v = 1.0 + 3 * 2.0**-12  # 0.75 of a TF32 ulp above 1
    k, mn = 256, 128
    a = np.zeros((mn, k))
    a[:, 0] = v
    c = _mm(torch, a, np.ones((k, mn)), "float32", dev, tf32=True)
    got = sorted({float(x) for x in c.ravel()})
    classes: dict[tuple[float, ...], str] = {(1.0 + 2.0**-10,): "nearest", (1.0,): "truncate",
                                             (v,): "none"}  # fmt: skip
    verdict = classes.get(tuple(got), "other")
    return {"tf32_operand": {"input": v, "got": got, "class": verdict}}, verdict


def _model_bound(a: Array, b: Array, c_exact: Array, storage: str, acc: str, chop: bool) -> Array:
    """|c - exact| <= u_s (|exact| + g) + g, g = gamma_K(u_acc) |A||B| (Higham 2002, Lemma 3.1)."""
    s, f = get_format(storage), get_format(acc)
    u_acc = f.u * (2 if chop else 1)
    k = a.shape[1]
    g = gamma(k, u_acc) * (np.abs(a) @ np.abs(b))
    return np.asarray(s.u * (np.abs(c_exact) + g) + g)


def _random_tests(torch: Any, dtype: str, dev: Any, seed: int = 0) -> tuple[dict[str, Any], list]:
    from ..accumulation import AccumulationModel
    from ..accumulation import matmul as acc_matmul

    fmt = get_format(dtype)
    storage, b32 = fmt.name, get_format("binary32")
    rng = np.random.default_rng(seed)
    candidates = {
        f"{storage}/binary32/nearest": (storage, "binary32", False),
        f"{storage}/binary32/truncate": (storage, "binary32", True),
        f"{storage}/{storage}/nearest": (storage, storage, False),
        f"{storage}/{storage}/truncate": (storage, storage, True),
    }
    covered = dict.fromkeys(candidates, True)
    tests: dict[str, Any] = {}
    for k in _RANDOM_KS:
        a = fround(rng.standard_normal((_RANDOM_MN, k)), storage)
        b = fround(rng.standard_normal((k, _RANDOM_MN)), storage)
        c = _mm(torch, a, b, dtype, dev)
        exact = a @ b  # float64: products exact, sums within k 2^-53 |a||b|, negligible
        seq = acc_matmul(a, b, AccumulationModel(fmt, b32, "sequential"))
        blas = acc_matmul(a, b, AccumulationModel(fmt, b32, "blas"))
        absprod = np.abs(a) @ np.abs(b)
        entry = {
            "max_err_over_absprod": float(np.max(np.abs(c - exact) / absprod)),
            "frac_equal_sequential_f32acc": float(np.mean(c == seq)),
            "frac_equal_blas_f32acc": float(np.mean(c == blas)),
            "u_storage": get_format(storage).u,
        }
        for name, (s, acc, chop) in candidates.items():
            ok = bool(np.all(np.abs(c - exact) <= _model_bound(a, b, exact, s, acc, chop)))
            entry[f"covered:{name}"] = ok
            covered[name] = covered[name] and ok
        tests[f"random/K={k}"] = entry
    return tests, [name for name, ok in covered.items() if ok]


def probe(device: str = "cpu") -> ProbeResult:
    """Measure how ``device``'s fp16/bf16/TF32 GEMMs accumulate; see the module docstring."""
    torch = require_torch("probing a platform")
    dev = resolve_device(torch, device)
    tests: dict[str, Any] = {}
    accumulate: dict[str, str] = {}
    rounding: dict[str, str] = {}
    covered: dict[str, list[str]] = {}
    for dtype in ("float16", "bfloat16"):
        for red in (False, True):
            key = f"{dtype}/red={red}"
            with torch_flags(torch, False, red):
                t_acc, acc = _accumulation_tests(torch, dtype, dev)
                p = _ACC_P.get(acc, _ACC_P["binary32"])
                t_rnd, rnd = _rounding_test(torch, dtype, dev, p)
                t_rand, cov = _random_tests(torch, dtype, dev)
            accumulate[key], rounding[key], covered[key] = acc, rnd, cov
            tests[key] = {**t_acc, **t_rnd, **t_rand}
    t32, rounding["float32"] = _rounding_test(torch, "float32", dev, 24, tf32=False)
    ttf, rounding["tf32"] = _rounding_test(torch, "float32", dev, 24, tf32=True)
    top, tf32_operand = _tf32_operand_test(torch, dev)
    tests["float32"], tests["tf32"] = t32, {**ttf, **top}
    return ProbeResult(
        device=str(dev),
        device_name=device_name(torch, dev),
        torch=str(torch.__version__),
        cuda=torch.version.cuda if dev.type == "cuda" else None,
        accumulate=accumulate,
        rounding=rounding,
        tf32_operand=tf32_operand,
        covered_by=covered,
        tests=tests,
    )


def probe_cli(device: str = "cpu") -> tuple[str, int]:
    """Text for ``fperr probe`` and its exit code: 0 when every fp16/bf16 setting is
    covered by some fperr accumulation model's bound, 1 when one is not."""
    result = probe(device)
    text = result.text()
    uncovered = [k for k, v in result.covered_by.items() if not v]
    if uncovered:
        text += "\nno fperr accumulation model covers: " + ", ".join(uncovered)
    return text, 1 if uncovered else 0
