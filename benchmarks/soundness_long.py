"""The property-based soundness suite (tests/soundness) on many more cases.

Same generators and checks as the CI tests, with a configurable number of
examples per profile and random (not derandomized) seeds; no shrinking.
Prints, per profile and in total: models, inputs, (model, input, run) triples
(one run per summation order / kernel variant, low and reference), low x
reference pairs compared with the bound, certified inputs, violations by
check and class (NEW = explained by no open hole of issue 11), the largest
observed / allowed ratios, crashes and fperr warnings, and the first
reproductions of each NEW class.

    python benchmarks/soundness_long.py --examples 2000
    python benchmarks/soundness_long.py --examples 300 --profiles tiny huge --torch
    python benchmarks/soundness_long.py --examples 500 --json out.json
"""

from __future__ import annotations

import argparse
import json
import pickle
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from hypothesis import HealthCheck, Phase, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from soundness.checks import (  # noqa: E402
    KNOWN_OPEN,
    Report,
    check_case,
    check_torch,
    reproduction,
)
from soundness.generators import Case, Options, cases, quick_options  # noqa: E402

# profile -> keyword arguments of check_case (the CI test of the same name)
PROFILES: dict[str, dict[str, Any]] = {
    "normal": {},
    "negative_slope": {},
    "tiny": {"tails": True},
    "huge": {},
    "batch": {"batch": True},
    "batchnorm": {},
    "quick": {},
    "quick_tiny": {"tails": True},
    "quick_huge": {"batch": True},
    "wide": {},
}
TORCH_PROFILES = ("piecewise_linear", "smooth", "batchnorm", "quick", "wide")


def run_profile(
    profile: str, examples: int, rnd: int, torch: bool, save: str | None = None
) -> tuple[Report, list[str]]:
    total, repros = Report(), []
    failing: list[Case] = []
    seen: set[tuple[str, str]] = set()
    first_stages = profile.startswith("quick")
    opts = quick_options() if first_stages else None
    if torch:
        opts = st.builds(
            Options,
            low=st.sampled_from(("binary16", "bfloat16")),
            on=st.sampled_from(("logits",) if first_stages else ("logits", "softmax")),
            cascade=st.just(first_stages),
        )

    @seed(rnd)
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(cases(profile, opts))
    def one(case: Case) -> None:
        if torch:
            rep = Report()
            check_torch(case, rep)
        else:
            rep = check_case(case, **PROFILES[profile])
        total.merge(rep)
        if save and rep.violations:
            failing.append(case)
            Path(save).mkdir(parents=True, exist_ok=True)
            with open(Path(save) / f"{'torch-' if torch else ''}{profile}.pkl", "wb") as f:
                pickle.dump(failing, f)
        for v in rep.new:  # one reproduction per (check, first layer type) class
            key = (v.kind, v.run.split(":")[0] if v.kind != "crash" else v.run[:60])
            if key not in seen and len(repros) < 10:
                seen.add(key)
                repros.append(reproduction(case, rep, limit=3))

    one()
    return total, repros


def classes(rep: Report) -> Counter[str]:
    c: Counter[str] = Counter()
    for v in rep.violations:
        c[f"{v.kind}: {','.join(sorted(v.classes)) or 'NEW'}"] += 1
    return c


def describe(name: str, rep: Report, seconds: float) -> dict[str, Any]:
    out = {
        "profile": name,
        "seconds": round(seconds, 1),
        "models": rep.models,
        "inputs": rep.inputs,
        "runs": rep.runs,
        "pairs": rep.pairs,
        "certified": rep.certified,
        "violations": len(rep.violations),
        "new": len(rep.new),
        "by_class": dict(classes(rep)),
        "max_ratio": {k: round(r, 4) for k, r in rep.max_ratio.items()},
        "crashes": dict(rep.crashes),
        "torch_crashes": dict(rep.torch_crashes),
        "fperr_warnings": dict(rep.fperr_warnings),
    }
    print(
        f"{name:>22}: {rep.models} models, {rep.inputs} inputs, {rep.runs} (model, input, run) "
        f"triples, {rep.pairs} pairs, {rep.certified} certified; {len(rep.violations)} "
        f"violations ({len(rep.new)} NEW); max observed/allowed "
        + ", ".join(f"{k} {r:.3g}" for k, r in sorted(rep.max_ratio.items()))
        + f"; {seconds:.0f} s"
    )
    for k, n in sorted(classes(rep).items()):
        print(f"{'':>24}{n:6d}  {k}")
    for k, n in rep.crashes.items():
        print(f"{'':>24}{n:6d}  crash {k[:100]}")
    for k, n in rep.torch_crashes.items():
        print(f"{'':>24}{n:6d}  torch crashed, model skipped: {k[:100]}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=1000, help="generated cases per profile")
    ap.add_argument("--profiles", nargs="*", default=list(PROFILES), choices=list(PROFILES))
    ap.add_argument(
        "--torch",
        action="store_true",
        help="also torch CPU runs (" + ", ".join(TORCH_PROFILES) + ")",
    )
    ap.add_argument("--seed", type=int, default=int(time.time()) % 100000)
    ap.add_argument("--json", default=None, help="write the figures here")
    ap.add_argument("--save", default=None, help="pickle the failing cases into this folder")
    args = ap.parse_args()
    print(f"seed {args.seed}; open holes treated as known: {', '.join(KNOWN_OPEN)}")
    jobs = [(p, False) for p in args.profiles]
    jobs += [(p, True) for p in TORCH_PROFILES] if args.torch else []
    total, results, repros = Report(), [], []
    for profile, torch in jobs:
        t0 = time.perf_counter()
        rep, rs = run_profile(profile, args.examples, args.seed, torch, args.save)
        name = f"torch-{profile}" if torch else profile
        results.append(describe(name, rep, time.perf_counter() - t0))
        total.merge(rep)
        repros += [f"[{name}] {r}" for r in rs]
    results.append(describe("total", total, sum(r["seconds"] for r in results)))
    for r in repros:
        print("\n" + r)
    if args.json:
        Path(args.json).write_text(json.dumps({"seed": args.seed, "results": results}, indent=1))


if __name__ == "__main__":
    main()
