"""Cost of the bound engine at scale: width, depth, batch, memory (issue 13).

Every ratio divides a time by a plain float64 forward chain of the same
model and batch, measured in the same process at the same thread count:
numpy matmul, bias add and relu; torch float64 ``conv2d``/``max_pool2d`` for
convolutional models when torch imports (else fperr's exact forward).  Each
time is the best of 3 (5 for certify), the baseline run in turn with what it
divides (:func:`paired`).  Depth counts weight layers.  Parts:

* grid: ``bound(model, X, engine="backward")`` / baseline for He-initialised
  ReLU MLPs (float32 weights), input dim 256, width {256, 1024,
  2048}, depth {2, 4, 8}, 10 outputs, N = 1,000.  Targets: <= 30x at width
  256, <= 20x at 1,024 and 2,048; the ratio grows <= 1.5x from depth 2 to 8.
  The old zonotope engine is timed at width 256, depth 2 and 4 for comparison.
* certify: ``certify()`` on the digits MLP and CNN (all 1,797 inputs), with
  and without the cascade / baseline.  Target <= 8x (cascade).
* memory: peak RSS of a subprocess running ``bound(engine="backward")`` at N = 10,000 on grid
  points, and on a 3x64x64 convolutional model.  Target <= 2 GiB.
* tightness: median bound / observed (worst of 4 summation orders, see
  benchmarks/tightness.py) over 300 digits inputs, targets 16 (mlp), 14
  (cnn), 41.5 (deep_tanh); certified counts on all digits inputs.

Run with one thread for a fair comparison on a shared machine:
    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python benchmarks/scaling.py [--quick]
        [--part grid|certify|memory|tightness] [--memory-all]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import subprocess
import sys
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from fperr.bounds import bound
from fperr.certify import certify
from fperr.layers import Activation, Conv2d, Dense, Flatten, Pool2d
from fperr.model import Model, load_model

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent / "examples"
GIB = 2**30
IN_DIM, OUT_DIM, SEED = 256, 10, 0

torch: Any = None  # imported by load_torch(): the memory subprocess stays without it
F: Any = None
ON: dict[str, str] = {}  # --backend / --device: where bound()'s backward passes run


def load_torch() -> None:
    """torch float64 convolutions are the baseline for conv models when torch imports."""
    global torch, F
    try:
        import torch as t
        import torch.nn.functional as f
    except ImportError:  # pragma: no cover - torch is optional
        return
    torch, F = t, f


def best(fn: Callable[[], Any], repeat: int = 3) -> float:
    return min(timeit.repeat(fn, number=1, repeat=repeat))


def paired(base: Callable[[], Any], *fns: Callable[[], Any], repeat: int = 3) -> list[float]:
    """Best times of ``base`` and each of ``fns``, run in turn ``repeat`` times: a
    shared machine's speed drifts by 10-25% within a minute, and a ratio of two
    times taken far apart carries that drift (the float64 forward pass of the
    digits MLP took 6.3 to 8.5 ms in one sitting)."""
    times = [[] for _ in range(len(fns) + 1)]
    for _ in range(repeat):
        for t, fn in zip(times, (base, *fns), strict=True):
            t.append(best(fn, 1))
    return [min(t) for t in times]


# --------------------------------------------------------------------- models
def relu_mlp(width: int, depth: int, seed: int = SEED) -> Model:
    """He-initialised ReLU MLP (std sqrt(2 / fan_in)): activations stay O(1)."""
    rng = np.random.default_rng(seed)
    dims = [IN_DIM] + [width] * (depth - 1) + [OUT_DIM]
    layers: list[Any] = []
    for i in range(depth):
        w = rng.standard_normal((dims[i + 1], dims[i])) * np.sqrt(2.0 / dims[i])
        b = 0.01 * rng.standard_normal(dims[i + 1])
        # float32 values, as trained weights are
        layers.append(Dense(w.astype(np.float32).astype(float), b.astype(np.float32).astype(float)))
        if i < depth - 1:
            layers.append(Activation("relu"))
    return Model(f"mlp-w{width}-d{depth}", (IN_DIM,), tuple(layers))


def conv64(seed: int = SEED) -> Model:
    """conv 3->16, relu, maxpool 2, conv 16->32, relu, maxpool 2, flatten, dense -> 10."""
    rng = np.random.default_rng(seed)

    def he(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[1:]))

    layers = (Conv2d(he(16, 3, 3, 3), np.zeros(16), padding=(1, 1)), Activation("relu"),
              Pool2d("max", (2, 2), (2, 2)),
              Conv2d(he(32, 16, 3, 3), np.zeros(32), padding=(1, 1)), Activation("relu"),
              Pool2d("max", (2, 2), (2, 2)), Flatten(),
              Dense(he(10, 32 * 16 * 16), np.zeros(10)))  # fmt: skip
    return Model("conv-3x64x64", (3, 64, 64), layers)


def inputs(model: Model, n: int, seed: int = SEED + 1) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *model.input_shape))


# ------------------------------------------------------------------ baseline
def _torch_layer(layer: Any, h: Any) -> Any:
    if layer.type == "conv2d":
        b = None if layer.bias is None else torch.from_numpy(np.asarray(layer.bias, np.float64))
        return F.conv2d(h, torch.from_numpy(np.asarray(layer.weight, np.float64)), b,
                        layer.stride, layer.padding, layer.dilation, layer.groups)  # fmt: skip
    if layer.type in ("maxpool2d", "max") or getattr(layer, "kind", "") == "max":
        return F.max_pool2d(h, layer.kernel, layer.stride, layer.padding)
    if getattr(layer, "kind", "") == "avg":
        return F.avg_pool2d(h, layer.kernel, layer.stride, layer.padding)
    raise TypeError(layer.type)


def baseline_fn(model: Model, X: np.ndarray) -> Callable[[], Any]:
    """A plain float64 forward chain: numpy for dense/relu/reshape, torch for conv/pool."""
    kinds = {layer.type for layer in model.layers}
    plain = {"dense", "relu", "flatten", "reshape"}
    spatial = {"conv2d", "maxpool2d", "avgpool2d", "pool2d"}
    if not kinds <= plain | spatial:
        return lambda: model.forward(X)
    if kinds & spatial and torch is None:
        return lambda: model.forward(X)

    def run() -> Any:
        h: Any = X
        layer: Any
        for layer in model.layers:
            t = layer.type
            if t == "dense":
                h = h.reshape(h.shape[0], -1) @ layer.weight.T
                if layer.bias is not None:
                    h = h + layer.bias
            elif t == "relu":
                h = np.maximum(h, 0) if isinstance(h, np.ndarray) else torch.relu(h)
            elif t == "flatten":
                h = h.reshape(h.shape[0], -1)
                h = h.numpy() if not isinstance(h, np.ndarray) else h
            elif t == "reshape":
                h = h.reshape(h.shape[0], *layer.shape)
            else:
                h = _torch_layer(layer, torch.from_numpy(h) if isinstance(h, np.ndarray) else h)
        return h

    return run


# ---------------------------------------------------------------------- grid
def part_grid(widths: list[int], depths: list[int], n: int) -> None:
    print(f"\n== grid: bound(model, X, engine='backward'), N = {n}; ratio = time / float64 "
          "forward (engine auto hands inputs whose interval ranges grow wide to the zonotope)")
    print(f"{'width':>6} {'depth':>5} {'forward ms':>11} {'bound s':>8} {'ratio':>8} "
          f"{'target':>7} {'met':>4} {'max B':>10} {'B inf':>6}")  # fmt: skip
    ratios: dict[tuple[int, int], float] = {}
    for w in widths:
        for d in depths:
            model = relu_mlp(w, d)
            X = inputs(model, n)
            res: list[Any] = []
            t0, tb = paired(baseline_fn(model, X),
                            lambda: res.append(bound(model, X, engine="backward", **ON)))  # noqa: B023
            target = 30 if w <= 256 else 20
            r = tb / t0
            ratios[w, d] = r
            b = res[-1].bound
            maxb, inf = float(np.max(b)), float(np.mean(~np.isfinite(b)))
            print(f"{w:>6} {d:>5} {t0 * 1e3:>11.2f} {tb:>8.2f} {r:>7.1f}x {target:>6}x "
                  f"{'yes' if r <= target else 'NO':>4} {maxb:>10.3g} {inf:>6.0%}",
                  flush=True)  # fmt: skip
    lo, hi = min(depths), max(depths)
    for w in widths:
        g = ratios[w, hi] / ratios[w, lo]
        print(f"   width {w}: ratio growth depth {lo} -> {hi}: {g:.2f}x (target <= 1.5x) "
              f"{'yes' if g <= 1.5 else 'NO'}")  # fmt: skip
    for d in [d for d in (2, 4) if d in depths]:
        model = relu_mlp(256, d)
        X = inputs(model, n)
        t0 = best(baseline_fn(model, X))
        res = []
        tz = best(lambda: res.append(bound(model, X, engine="zonotope")), repeat=1)  # noqa: B023
        print(f"   old engine='zonotope', width 256 depth {d}: {tz:.2f} s, {tz / t0:.0f}x, "
              f"max B {float(np.max(res[-1].bound)):.3g} (backward {ratios[256, d]:.1f}x)",
              flush=True)  # fmt: skip


# ------------------------------------------------------------------- certify
def digits() -> tuple[np.ndarray, np.ndarray]:
    d = np.load(EXAMPLES / "digits.npz")
    return d["inputs"], d["labels"]


def part_certify() -> None:
    X, labels = digits()
    print(f"\n== certify() on the digits examples, N = {len(X)}; ratio = time / float64 forward")
    print(f"{'model':>6} {'forward ms':>11} {'cascade s':>10} {'ratio':>8} {'met':>4} "
          f"{'no cascade s':>13} {'ratio':>8} {'certified (casc / no)':>22}")  # fmt: skip
    for name in ("mlp", "cnn"):
        model = load_model(EXAMPLES / f"{name}.yaml")
        out: dict[bool, Any] = {}
        t0, tc, tn = paired(
            baseline_fn(model, X),
            lambda: out.__setitem__(True, certify(model, X, labels, **ON)),  # noqa: B023
            lambda: out.__setitem__(False, certify(model, X, labels, cascade=False,  # noqa: B023
                                                   **ON)), repeat=5)  # fmt: skip
        c, nc = int(out[True].certified.sum()), int(out[False].certified.sum())
        print(f"{name:>6} {t0 * 1e3:>11.2f} {tc:>10.2f} {tc / t0:>7.1f}x "
              f"{'yes' if tc / t0 <= 8 else 'NO':>4} {tn:>13.2f} {tn / t0:>7.1f}x "
              f"{f'{c} / {nc}':>22}", flush=True)  # fmt: skip


# -------------------------------------------------------------------- memory
def child_memory(spec: dict[str, Any]) -> None:
    """In a subprocess: build the model, bound N inputs, print peak RSS as JSON."""
    # a guard for the shared machine: fail with MemoryError rather than swap it out
    cap = int(spec.get("cap_gib", 8) * GIB)
    resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    model = conv64() if spec["kind"] == "conv" else relu_mlp(spec["width"], spec["depth"])
    X = inputs(model, spec["n"])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = time.perf_counter()
    err = ""
    try:
        bound(model, X, engine="backward")
    except MemoryError:
        err = "MemoryError"
    except Exception as exc:  # report, do not hide: the parent prints it
        err = f"{type(exc).__name__}: {exc}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"before": before, "peak": peak, "s": time.perf_counter() - t, "err": err}))


def run_child(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child-memory", json.dumps(spec)]
    p = subprocess.run(cmd, capture_output=True, text=True, check=False)
    try:
        return dict(json.loads(p.stdout.strip().splitlines()[-1]))
    except (json.JSONDecodeError, IndexError):
        return {"before": 0, "peak": 0, "s": 0.0, "err": (p.stderr.strip() or "?")[-200:]}


def part_memory(points: list[tuple[int, int]], n: int, conv_n: int) -> None:
    print("\n== memory: peak RSS of a subprocess running bound() (includes the interpreter, "
          "the model and X); target <= 2 GiB")  # fmt: skip
    print(f"{'model':>16} {'N':>6} {'RSS before GiB':>15} {'peak GiB':>9} {'met':>4} {'s':>7}")
    specs = [({"kind": "mlp", "width": w, "depth": d, "n": n}, f"mlp w{w} d{d}")
             for w, d in points]  # fmt: skip
    specs.append(({"kind": "conv", "n": conv_n}, "conv 3x64x64"))
    for spec, label in specs:
        r = run_child(spec)
        peak = r["peak"] / GIB
        met = "yes" if peak <= 2 and not r["err"] else "NO"
        print(f"{label:>16} {spec['n']:>6} {r['before'] / GIB:>15.2f} {peak:>9.2f} {met:>4} "
              f"{r['s']:>7.1f} {r['err']}", flush=True)  # fmt: skip


# ----------------------------------------------------------------- tightness
def _tightness_module() -> Any:
    spec = importlib.util.spec_from_file_location("fperr_bench_tightness", HERE / "tightness.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def part_tightness(n: int) -> None:
    from fperr.arith import Emulated
    from fperr.bounds import bound_run

    tight = _tightness_module()
    X, labels = digits()
    low = Emulated.from_names("binary16", "binary32")
    targets = {"mlp": 16.0, "cnn": 14.0, "deep_tanh": 41.5}
    print(f"\n== tightness: median bound / observed (worst of {len(tight.ORDERS)} orders), "
          f"{n} inputs; certified counts with certify() on all {len(X)}")  # fmt: skip
    print(f"{'model':>10} {'auto':>7} {'target':>7} {'met':>4} {'zonotope':>9} "
          f"{'certified auto':>15} {'zonotope, no cascade':>21} {'s (auto)':>9}")  # fmt: skip
    for name, target in targets.items():
        model = load_model(EXAMPLES / f"{name}.yaml")
        obs = tight.observed(model, X[:n])
        r_auto = tight.ratio(bound_run(model, X[:n], low).radius, obs)
        if name == "deep_tanh":  # auto is the zonotope here: no second run
            r_zono, zc = r_auto, "(auto = zonotope)"
        else:
            r_zono = tight.ratio(bound_run(model, X[:n], low, engine="zonotope").radius, obs)
            zc = str(int(certify(model, X, labels, engine="zonotope", cascade=False)
                         .certified.sum()))  # fmt: skip
        t = time.perf_counter()
        ca = int(certify(model, X, labels).certified.sum())
        ta = time.perf_counter() - t
        print(f"{name:>10} {r_auto:>7.1f} {target:>7} {'yes' if r_auto <= target else 'NO':>4} "
              f"{r_zono:>9.1f} {ca:>15} {zc:>21} {ta:>9.1f}", flush=True)  # fmt: skip


# ---------------------------------------------------------------------- main
def header() -> None:
    env = {k: os.environ.get(k, "unset") for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                   "MKL_NUM_THREADS")}  # fmt: skip
    tt = f", torch {torch.__version__} threads {torch.get_num_threads()}" if torch else ", no torch"
    print("threads: " + ", ".join(f"{k}={v}" for k, v in env.items())
          + f"; numpy {np.__version__}{tt}; cpus {os.cpu_count()}")  # fmt: skip
    if env["OMP_NUM_THREADS"] != "1" or env["OPENBLAS_NUM_THREADS"] != "1":
        print("   (set OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 for a fair comparison)")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="widths 256/1024, depths 2/4, N=300; no memory part")  # fmt: skip
    ap.add_argument("--part", choices=("grid", "certify", "memory", "tightness"))
    ap.add_argument("--memory-all", action="store_true",
                    help="memory at every grid point (slow); default a subset")  # fmt: skip
    ap.add_argument("--conv-n", type=int, default=1000, help="inputs of the 3x64x64 conv model")
    ap.add_argument("--backend", choices=("numpy", "torch"), default="numpy",
                    help="where bound() runs its backward passes (grid, certify)")  # fmt: skip
    ap.add_argument("--device", default="cpu", help="cpu or cuda (implies torch)")
    ap.add_argument("--child-memory", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    ON.update(backend="torch" if a.device != "cpu" else a.backend, device=a.device)
    if a.child_memory:
        child_memory(json.loads(a.child_memory))
        return
    load_torch()
    header()
    print(f"bound engine's backward passes: backend {ON['backend']}, device {a.device} (the "
          "baseline stays numpy float64 on the CPU)")
    widths, depths, n = ([256, 1024], [2, 4], 300) if a.quick else ([256, 1024, 2048], [2, 4, 8],
                                                                    1000)  # fmt: skip
    parts = [a.part] if a.part else ["grid", "certify", "tightness"] + ([] if a.quick else
                                                                       ["memory"])  # fmt: skip
    if "grid" in parts:
        part_grid(widths, depths, n)
    if "certify" in parts:
        part_certify()
    if "tightness" in parts:
        part_tightness(300)
    if "memory" in parts:
        pts = [(w, d) for w in widths for d in depths] if a.memory_all else [
            (256, 2), (256, 8), (1024, 2), (1024, 8), (2048, 2)]
        if not a.memory_all:
            print("\n(memory on a subset of the grid at N = 10,000; --memory-all for every point)")
        part_memory(pts, 10_000, a.conv_n)


if __name__ == "__main__":
    main()
