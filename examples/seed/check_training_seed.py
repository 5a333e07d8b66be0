"""Pure-fp16 training hazards of the seed models, predicted and then checked by emulation.

For each trained model of this folder (imported with ``fperr.from_torch``),
``fperr.check_training`` predicts what goes wrong when training continues with
every parameter, activation, gradient and Adam state stored in binary16 (the
seed paper's setting), on 128 of the stored MNIST test images (4 batches of 32),
then replays 10 optimizer steps in emulated binary16 and says which predictions
the run confirms.  Two settings: PyTorch's defaults (Adam eps 1e-8, no loss
scaling) and the fixes the first report suggests (eps 1e-4, loss scale 1024).

    OMP_NUM_THREADS=1 python examples/seed/check_training_seed.py [--models vit_tiny ...]

Writes ``check_training/<model>_<setting>.txt`` (the reports as ``fperr
check-training`` prints them) and prints the verdicts and emulated outcomes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import fperr

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from architectures import MODELS, load_weights  # noqa: E402
from seed_data import load_test_images  # noqa: E402

SETTINGS = {"default": {"eps": 1e-8, "loss_scale": 1.0},
            "fixed": {"eps": 1e-4, "loss_scale": 1024.0}}  # fmt: skip
IMAGES, BATCH, STEPS = 128, 32, 10


def main(argv: list[str] | None = None) -> int:
    trained = [m for m in MODELS if (HERE / f"{m}.npz").is_file() and m != "resnet56"]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="*", default=trained, choices=trained)
    ap.add_argument("--out", default=str(HERE / "check_training"))
    args = ap.parse_args(argv)
    X, y, _ = load_test_images(IMAGES, quiet=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        net = load_weights(MODELS[name](), str(HERE / f"{name}.npz")).eval()
        model = fperr.from_torch(net, input_shape=tuple(X.shape[1:]))
        for setting, kw in SETTINGS.items():
            report = fperr.check_training(model, X, y, batch_size=BATCH, emulate_steps=STEPS,
                                          **kw)  # fmt: skip
            (out / f"{name}_{setting}.txt").write_text(str(report) + "\n")
            seen = "; ".join(f"{c.status}: {c.prediction}" for c in report.confirmations)
            print(f"{name} {setting}: {'OK' if report.ok else 'HAZARD'}; emulated: {seen}",
                  flush=True)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
