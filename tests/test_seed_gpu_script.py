"""examples/seed/seed_gpu.py, the seed models' run in every torch format for
validation/run_gpu.sh, on the CPU path (CI has no GPU): its report holds what the
header promises and its deltas are measured against float64."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
SEED = Path(__file__).resolve().parents[1] / "examples" / "seed"


def test_seed_gpu_report_on_the_cpu(tmp_path):
    sys.path.insert(0, str(SEED))
    try:
        import seed_gpu
    finally:
        sys.path.remove(str(SEED))
    assert seed_gpu.main(["--device", "cpu", "--n", "12", "--n-batch1", "3",
                          "--models", "resnet20", "--out", str(tmp_path)]) == 0  # fmt: skip
    doc = json.loads((tmp_path / "cpu" / "seed.json").read_text())
    (row,) = doc["rows"]
    assert row["model"] == "resnet20" and row["images"] == 12 and row["batch1_images"] == 3
    assert row["float64_device_vs_cpu"] == 0.0  # the same kernels on the CPU
    for run in seed_gpu.RUNS:
        for b in (1000, 1):
            assert isinstance(row[f"flips_{run}_b{b}"], int)
    # float32 errs near 2^-24 relative; the 16-bit runs far more, bfloat16 most
    assert 0 < row["max_delta_fp32_b1000"] < 1e-4
    assert row["max_delta_fp32_b1000"] < row["max_delta_fp16_b1000"] < row["max_delta_bf16_b1000"]
    for fmt in ("tf32", "fp16", "bf16"):
        assert 0.0 <= row[f"lemma_{fmt}"] <= 1.0
    # the lemma's count, recomputed from its definition for one format, is the report's
    net = seed_gpu.load_weights(seed_gpu.MODELS["resnet20"](), str(SEED / "resnet20.npz"))
    X, _, _ = seed_gpu.load_test_images(12, quiet=True)
    ref = seed_gpu.float64_logits(net, X, "cpu")
    y32 = seed_gpu.logits(net, X, "fp32", 1000, "cpu")
    d = np.zeros(12)
    for run in ("fp16", "autocast_fp16"):
        for b, n in ((1000, 12), (1, 3)):
            y = seed_gpu.logits(net, X[:n], run, b, "cpu")
            d[:n] = np.maximum(d[:n], np.abs(y - ref[:n]).max(axis=1))
    top = np.sort(y32, axis=1)
    d32 = np.abs(y32 - ref).max(axis=1)
    assert row["lemma_fp16"] == float(np.mean(top[:, -1] - top[:, -2] > 2 * (d + d32)))
