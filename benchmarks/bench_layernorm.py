"""Layer norm in pre-norm residual MLPs (issue 18): certified fraction, tightness, growth.

Models: ``examples/prenorm.yaml`` (digits -> dense 64->128 -> 2 blocks
h + fc2(gelu(fc1(layernorm(h)))), fc1 128->256, fc2 256->128 -> layernorm ->
dense 128->10) and the same family with 4 and 8 blocks, trained by
``examples/train_prenorm.py`` (seeded).  Inputs: the held-out 20% of digits.

Observed error: the largest |y_run - y_ref| over binary16 runs (binary32
arithmetic) emulated by numpy casts in six summation orders and two layer-norm
kernels (tests/test_layernorm_tight.py), fperr's emulated low run, and torch
CPU float16; y_ref is the binary32 reference run.  Reported before (the rule
as it was, copied below as ``old_layernorm_rule``) and after:

* certified inputs vs the lemma with the observed delta (targets: >= 95%, 0 flips);
* median over inputs of max_k B_k / max_k observed_k (target <= 50);
* that ratio at 8 blocks over 2 blocks (target <= 4), and per-block growth
  of the bound and of the observed error of the residual stream.

Run: python benchmarks/bench_layernorm.py [--n 360] [--depths 2 4 8]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

import fperr.bounds.rules as rules
from fperr.arith import Emulated
from fperr.bounds import bound_run
from fperr.bounds.enclosure import Enclosure, half_ulp
from fperr.bounds.rules import Context, _layernorm_range
from fperr.certify import certified_sharp
from fperr.formats import gamma
from fperr.layers import LayerNorm
from fperr.model import Model, load_model

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))
sys.path.insert(0, str(ROOT / "tests"))
import train_prenorm  # noqa: E402
from test_layernorm_tight import all_runs, exact_forward, fp16_forward  # noqa: E402

LOW = Emulated.from_names("binary16", "binary32")
REF = Emulated.from_names("binary32", "binary32")


def old_layernorm_rule(layer: LayerNorm, enc: Enclosure, ctx: Context, index: int) -> Enclosure:
    """The rule before issue 18, verbatim (reference only): layer norm y = w u + b,
    u = z / s, z = x - mean x, s = sqrt(|z|^2/n + eps).

    Mean value form per component: du = J(xi) dz with J = I/s - a a^T,
    a = z / (sqrt(n) s^1.5).  The generators go through J at the computed
    point, signed; the spread of J over the enclosure (|1/s - 1/s_hat| and
    |a_i a_j - a_hat_i a_hat_j|, with s in [s_min, s_max] and z within 2 rho of
    the computed z, rho = r + mean r) times |dz| <= rho is a deterministic box.
    Kernel allowance (stated, for an fp32 kernel): u within gamma_{2n+8}(u_acc)
    (|u| + 1 + mean|x| / s_min) of exact (mean and variance are sums of n
    terms), times (1 + rho_r) and plus alpha_r (|x| + mean|x|) for the
    measured error of the reciprocal square root; the affine part adds
    2 u_acc (|w u| + |b|).
    """
    a = ctx.arith
    enc = enc.materialize()
    x = enc.value
    y = layer.forward(x, a)
    n = int(np.prod(layer.normalized_shape))
    N, shape = x.shape[0], x.shape
    xg = x.reshape(N, -1, n)
    rg = enc.radius().reshape(xg.shape)
    w = np.ones(n) if layer.weight is None else layer.weight.reshape(-1)
    b = np.zeros(n) if layer.bias is None else layer.bias.reshape(-1)
    w_hat, b_hat = a.store(w), a.store(b)
    z = xg - xg.mean(axis=-1, keepdims=True)
    rho = rg + rg.mean(axis=-1, keepdims=True)
    rho2 = np.sqrt(np.square(rho).sum(axis=-1, keepdims=True))
    znorm = np.sqrt(np.square(z).sum(axis=-1, keepdims=True))
    s_hat = np.sqrt(np.square(znorm) / n + layer.eps)
    s_min = np.sqrt(np.maximum(znorm - 2 * rho2, 0.0) ** 2 / n + layer.eps)
    s_max = np.sqrt((znorm + 2 * rho2) ** 2 / n + layer.eps)
    # signed part: J(z_hat) (P gens), P = centring
    q = enc.gens.shape[2]
    g = enc.gens.reshape(N, xg.shape[1], n, q)  # explicit: q may be 0 (exact inputs)
    pg = g - g.mean(axis=2, keepdims=True)
    dot = np.einsum("bgn,bgnq->bgq", z, pg)[:, :, None, :]
    jg = pg / s_hat[..., None] - z[..., None] * dot / (n * s_hat[..., None] ** 3)
    gens = (jg * w[None, None, :, None]).reshape(N, xg.shape[1] * n, q)
    # spread of J over the enclosure, applied to |dz| <= rho
    a_hat = z / (math.sqrt(n) * s_hat**1.5)
    da = (2 * rho * s_min**-1.5 + np.abs(z) * (s_min**-1.5 - s_max**-1.5)) / math.sqrt(n)
    spread = (
        (1 / s_min - 1 / s_max) * rho
        + da * ((np.abs(a_hat) + da) * rho).sum(axis=-1, keepdims=True)
        + np.abs(a_hat) * (da * rho).sum(axis=-1, keepdims=True)
    )
    u_mag = (np.abs(z) + 2 * rho) / s_min
    # 1 / sqrt(var + eps): the measured rsqrt, |e| <= rho_r |f| + alpha_r, on top
    rho_r, alpha_r = ctx.func_relative("rsqrt")
    xmean = (np.abs(xg) + 2 * rg).mean(axis=-1, keepdims=True)
    kernel_u = ((1 + gamma(2 * n + 8, a.u_acc)) * (1 + rho_r) - 1) * (
        u_mag + 1 + xmean / s_min
    ) + alpha_r * (np.abs(xg) + 2 * rg + xmean)
    remainder = np.abs(w) * spread
    under, overflow = _layernorm_range(ctx, xg, rg, z, rho, s_min, u_mag, w_hat, b_hat)
    params = np.abs(w_hat - w) * u_mag + np.abs(b_hat - b)  # parameter rounding
    local = np.abs(w_hat) * kernel_u + 2 * a.u_acc * (np.abs(w_hat) * u_mag + np.abs(b_hat)) + under
    local = np.where(overflow, np.inf, local)
    yg = y.reshape(xg.shape)
    prop = np.abs(w) * (rho / s_min + np.abs(z) * rho2 / (math.sqrt(n) * s_min**2))
    local = local + half_ulp(
        np.abs(yg) + half_ulp(np.abs(yg), a.storage) + 2 * (prop + local + params), a.storage
    )
    out = Enclosure(y, gens, enc.groups, enc.random)
    out = out.add_box(remainder.reshape(shape), index, random=False)
    return ctx.add_local(out, local.reshape(shape), params.reshape(shape), index)


@contextlib.contextmanager
def layernorm_rule(which: str) -> Iterator[None]:
    """Bound with the current rule (``new``) or the one before issue 18 (``old``)."""
    saved = LayerNorm.rule
    if which == "old":
        LayerNorm.rule = old_layernorm_rule  # type: ignore[method-assign]
    try:
        yield
    finally:
        LayerNorm.rule = saved  # type: ignore[method-assign]


@contextlib.contextmanager
def block_radii(blocks: int, out: list[np.ndarray]) -> Iterator[None]:
    """Record max_k radius of the residual stream after each top-level block."""
    saved = rules.residual_rule
    depth = [0]
    calls: list[np.ndarray] = []

    def spy(layer, enc, ctx, index):
        depth[0] += 1
        try:
            res = saved(layer, enc, ctx, index)
        finally:
            depth[0] -= 1
        if depth[0] == 0:
            r = res.radius().reshape(res.value.shape[0], -1)
            calls.append(np.where(np.isnan(r), np.inf, r).max(axis=1))  # NaN: unbounded
        return res

    rules.residual_rule = spy  # apply_rule looks it up at each call
    try:
        yield
    finally:
        rules.residual_rule = saved
        # calls come batch by batch, blocks in order within a batch
        for b in range(blocks):
            out.append(np.concatenate(calls[b::blocks]) if calls else np.zeros(0))


def models(depths: list[int], tmp: Path) -> dict[int, Model]:
    out = {}
    for d in depths:
        path = ROOT / "examples" / "prenorm.yaml"
        if d != 2 or not path.exists():
            path = train_prenorm.write(tmp, f"prenorm{d}", d)
        out[d] = load_model(path)
    return out


def observed(model: Model, X: np.ndarray, y_low: np.ndarray, y_ref: np.ndarray):
    runs = [*all_runs(model, X), y_low]
    dev = np.max([np.abs(y - y_ref) for y in runs], axis=0)
    flips = np.any([np.argmax(y, 1) != np.argmax(y_ref, 1) for y in runs], axis=0)
    return dev, flips


def stream_errors(model: Model, X: np.ndarray, blocks: int) -> list[np.ndarray]:
    """max_k |h_run - h_exact| of the residual stream after each block, max over runs."""
    out = []
    for b in range(1, blocks + 1):
        prefix = Model("prefix", model.input_shape, model.layers[: 1 + b])
        ex = exact_forward(prefix, X)
        runs = [fp16_forward(prefix, X, o) for o in ("sequential", "pairwise", "descending")]
        out.append(np.max([np.abs(y - ex).max(axis=1) for y in runs], axis=0))
    return out


def evaluate(model: Model, X: np.ndarray, which: str, blocks: int) -> dict:
    radii: list[np.ndarray] = []
    t0 = time.perf_counter()
    with layernorm_rule(which), block_radii(blocks, radii), np.errstate(all="ignore"):
        low = bound_run(model, X, LOW, batch_size=30)
    with layernorm_rule(which), np.errstate(all="ignore"):
        ref = bound_run(model, X, REF, batch_size=30)
    seconds = time.perf_counter() - t0
    B = low.radius + ref.radius
    y_ref = ref.output
    dev, flips = observed(model, X, low.output, y_ref)
    cert = certified_sharp(y_ref, np.maximum(B, 2 * ref.radius))
    lemma = certified_sharp(y_ref, dev)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = B.max(axis=1) / dev.max(axis=1)
    return {
        "seconds": seconds,
        "certified": int(cert.sum()),
        "lemma": int(lemma.sum()),
        "flips": int((cert & flips).sum()),
        "observed_flips": int(flips.sum()),
        "median_ratio": float(np.median(ratio)),
        "median_B": float(np.median(B.max(axis=1))),
        "median_obs": float(np.median(dev.max(axis=1))),
        "radii": radii,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=360, help="held-out inputs (of 360)")
    ap.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--old", action="store_true", help="also the rule before issue 18")
    args = ap.parse_args()
    Xall, labels = train_prenorm.load_digits()
    _, te = train_prenorm.split(labels)
    X = Xall[te[: args.n]]
    ratios = {}
    with tempfile.TemporaryDirectory() as tmp:
        nets = models(args.depths, Path(tmp))
    for d, model in nets.items():
        for which in (["old"] if args.old else []) + ["new"]:
            r = evaluate(model, X, which, d)
            n = X.shape[0]
            print(f"{d} blocks, {which} rule ({r['seconds']:.1f} s): certified "
                  f"{r['certified']}/{n} vs lemma-with-observed-delta {r['lemma']}/{n} "
                  f"({r['certified'] / max(r['lemma'], 1):.1%}); certified flips {r['flips']} "
                  f"(observed flips {r['observed_flips']}); median max B {r['median_B']:.3g}, "
                  f"median max observed {r['median_obs']:.3g}, median B/observed "
                  f"{r['median_ratio']:.3g}")  # fmt: skip
            if which == "new":
                ratios[d] = r["median_ratio"]
                obs = stream_errors(model, X, d)
                rad = [np.median(v) for v in r["radii"]]
                ob = [float(np.median(v)) for v in obs]
                grow_b = [rad[i] / rad[i - 1] for i in range(1, d)]
                grow_o = [ob[i] / ob[i - 1] for i in range(1, d)]
                print("   residual stream after each block: median max radius "
                      + " ".join(f"{v:.3g}" for v in rad) + "; observed "
                      + " ".join(f"{v:.3g}" for v in ob))  # fmt: skip
                print("   per-block growth: bound " + " ".join(f"{v:.2f}" for v in grow_b)
                      + "; observed " + " ".join(f"{v:.2f}" for v in grow_o)
                      + "; bound/observed per block "
                      + " ".join(f"{a / b:.3g}" for a, b in zip(rad, ob, strict=True)))  # fmt: skip
    if 2 in ratios:
        for d in ratios:
            if d != 2:
                print(f"median B/observed at {d} blocks / at 2 blocks: {ratios[d] / ratios[2]:.2f}")


if __name__ == "__main__":
    main()
