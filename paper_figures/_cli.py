"""``python -m paper_figures.fig_X [OUT_DIR] [--small]`` for a single figure."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

DEFAULT_OUT = Path("paper_figures") / "out"


def main(make: Callable[..., list[Path]], argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(make.__module__ or "").rpartition(".")[2])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT, help="output folder")
    parser.add_argument("--small", action="store_true", help="fewer inputs, for a quick check")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    for path in make(args.out, small=args.small):
        print(path)
