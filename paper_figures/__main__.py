"""``python -m paper_figures --out DIR [--small] [--only NAME ...]``: build the figures."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .build import MODULES, build_all


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m paper_figures", description=__doc__)
    ap.add_argument("--out", type=Path, default=Path("paper_figures") / "out",
                    help="output folder (default: paper_figures/out)")  # fmt: skip
    ap.add_argument("--small", action="store_true", help="fewer inputs: a quick check (< 30 s)")
    ap.add_argument("--only", nargs="+", choices=MODULES, metavar="NAME",
                    help=f"build only these modules ({', '.join(MODULES)})")  # fmt: skip
    ap.add_argument("--quiet", action="store_true", help="print nothing but the paths")
    args = ap.parse_args(argv)

    def log(msg: str) -> None:
        if not args.quiet:
            print(msg, file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    paths = build_all(args.out, small=args.small, only=args.only, log=log)
    for p in paths:
        print(p)
    log(f"{len(paths)} files in {args.out} ({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
