"""Probe a device and validate the bundled example models on it.

``fperr validate --suite`` runs this: it writes
``<results>/<label>/{probe.json, <model>.json, summary.txt}``, the label being
``cpu`` or the GPU's name with unsafe characters replaced
(``NVIDIA_H100_80GB_HBM3``).  The MLP and the CNN run on all 1,797 digits, the
deep tanh MLP on the first ``deep_inputs`` (its bound costs ~0.15 s per input
and arithmetic on one core).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..datasets import load_inputs
from ..errors import FperrInputError
from ..model import load_model
from .probe import probe
from .reports import summarize
from .torch_env import require_torch, resolve_device
from .validate import validate

EXAMPLE_MODELS = ("mlp", "cnn", "deep_tanh")


@dataclass(frozen=True)
class SuiteResult:
    """Where the reports went, their summaries, and the models with a violation."""

    out_dir: Path
    texts: tuple[str, ...]
    failed: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.failed


def device_label(device: str) -> str:
    """``cpu``, or the CUDA device's name as a folder name."""
    if not device.startswith("cuda"):
        return "cpu"
    torch = require_torch("validation")
    name = torch.cuda.get_device_name(resolve_device(torch, device))
    return re.sub(r"[^A-Za-z0-9.-]+", "_", name)


def run_suite(
    device: str,
    results: Path,
    examples: Path,
    models: Sequence[str] = EXAMPLE_MODELS,
    inputs: int | None = None,
    deep_inputs: int = 300,
    workers: int = 1,
    log: Callable[[str], None] | None = None,
) -> SuiteResult:
    """Probe ``device``, validate each example model, write the reports under ``results``."""
    say = log or (lambda _m: None)
    data = examples / "digits.npz"
    if not data.is_file():
        raise FperrInputError(f"no example data at {data}: run from the repository root "
                              "or pass the examples folder")  # fmt: skip
    out = results / device_label(device)
    out.mkdir(parents=True, exist_ok=True)
    pr = probe(device)
    (out / "probe.json").write_text(json.dumps(pr.to_dict(), indent=1) + "\n")
    say(pr.text())
    texts, failed = [pr.text()], []
    X, y = load_inputs(data)
    for name in models:
        model = load_model(examples / f"{name}.yaml")
        n = deep_inputs if name == "deep_tanh" else len(X)
        n = min(n, inputs or n)
        say(f"validating {name} on {n} inputs ({device})")
        labels = None if y is None else y[:n]
        rep = validate(model, X[:n], labels, device=device, probe_result=pr, log=say,
                       workers=workers)  # fmt: skip
        rep.save(out / f"{name}.json")
        texts.append(summarize(rep))
        (out / "summary.txt").write_text("\n\n".join(texts) + "\n")
        say(f"{name}: {rep.violations} violations, {rep.certified_flips} certified flips")
        if not rep.ok:
            failed.append(name)
    return SuiteResult(out, tuple(texts), tuple(failed))
