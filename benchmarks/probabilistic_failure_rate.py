"""How often the probabilistic bound fails, against the probability it states.

``method="probabilistic"`` is a model (Higham & Mary 2019): it assumes the
roundings of computed values are independent and zero-mean, which
round-to-nearest does not make true (rigorous only under stochastic
rounding, Connolly, Higham & Mary 2021).  This measures the observed rate
of inputs with |y_run - y_exact| > B for some output, over many random
models and inputs, and compares it with the stated failure probability per
input.  Three families:

* ``random``: MLPs with Gaussian weights and inputs (the model's premise is
  plausible);
* ``positive``: MLPs with positive weights and constant inputs, so that
  rounding errors of sums tend to share a sign;
* ``constant``: one dense layer summing n = 256 .. 4096 equal terms (equal
  weights, equal inputs): the partial sums' rounding errors are a
  deterministic sequence, the premise fails by construction.

Runs: every summation order fperr emulates (blas, sequential, pairwise,
blocked); the exact result is float64.  Usage:
    python benchmarks/probabilistic_failure_rate.py [MODELS_PER_CELL] [SEED]
"""

from __future__ import annotations

import sys
import time
import warnings

import numpy as np

from fperr.arith import Emulated
from fperr.bounds import bound_run
from fperr.layers import Activation, Dense
from fperr.model import Model

ORDERS = ("blas", "sequential", "pairwise", "blocked")
CONFIGS = (("binary16", "binary32"), ("binary16", "binary16"), ("bfloat16", "binary32"))
ACTS = ("relu", "tanh", "sigmoid", "gelu", "leaky_relu")


def random_model(rng: np.random.Generator, family: str) -> tuple[Model, np.ndarray]:
    """A model and a batch of 16 inputs of one family."""
    if family == "constant":
        n = int(rng.choice([256, 1024, 4096]))
        w = np.full((2, n), rng.uniform(0.25, 2.0))
        X = np.repeat(rng.uniform(0.01, 3.0, (16, 1)), n, axis=1)
        return Model("sum", (n,), (Dense(w, None),)), X
    structured = family == "positive"
    depth, n_in = int(rng.integers(1, 4)), int(rng.choice([16, 64, 256]))
    widths = [n_in] + [int(rng.choice([8, 32, 128])) for _ in range(depth)] + [4]
    layers: list = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        if structured:  # positive weights: sums of terms of one sign
            w = rng.uniform(0.5, 1.5, (b, a)) / a
        else:
            w = rng.standard_normal((b, a)) / np.sqrt(a)
        layers.append(Dense(w, rng.standard_normal(b) * 0.1))
        if i < depth:
            layers.append(Activation(str(rng.choice(ACTS))))
    X = rng.standard_normal((16, n_in)) * rng.choice([0.1, 1.0, 10.0])
    if structured:  # constant inputs: one value repeated
        X = np.repeat(rng.uniform(0.1, 10.0, (16, 1)), n_in, axis=1)
    return Model("mlp", (n_in,), tuple(layers)), X


def measure(rng: np.random.Generator, family: str, config: tuple[str, str]) -> dict:
    model, X = random_model(rng, family)
    low = Emulated.from_names(*config)
    rb = bound_run(model, X, low, method="probabilistic")
    exact = model.forward(X)
    obs = np.max([np.abs(model.forward(X, Emulated.from_names(*config, order=o)) - exact)
                  for o in ORDERS], axis=0)  # fmt: skip
    finite = np.isfinite(rb.radius).all(axis=1)
    ratio = np.where(rb.radius > 0, obs / np.where(rb.radius > 0, rb.radius, 1), 0)
    return {
        "inputs": int(finite.sum()),
        "failed": int(((obs > rb.radius).any(axis=1) & finite).sum()),
        "worst": float(ratio[finite].max()) if finite.any() else 0.0,
        "stated": rb.failure_probability,
    }


def main(models: int = 40, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    t0 = time.time()
    print(f"{'family':10s} {'low':22s} {'models':>6s} {'inputs':>6s} {'failed':>6s}"
          f" {'rate':>8s} {'stated p':>9s} {'max err/B':>9s}")  # fmt: skip
    for name in ("random", "positive", "constant"):
        for config in CONFIGS:
            cells = [measure(rng, name, config) for _ in range(models)]
            n = sum(c["inputs"] for c in cells)
            f = sum(c["failed"] for c in cells)
            stated = max(c["stated"] for c in cells)
            worst = max(c["worst"] for c in cells)
            print(f"{name:10s} {'/'.join(config):22s} {models:6d} {n:6d} {f:6d}"
                  f" {f / max(n, 1):8.4f} {stated:9.2g} {worst:9.3f}", flush=True)  # fmt: skip
    print(f"({time.time() - t0:.0f} s; rate = inputs with |error| > B for some output)")


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        main(*(int(a) for a in sys.argv[1:3]))
