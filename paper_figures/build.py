"""Build every paper figure and LaTeX snippet: ``build_all(out_dir, small=False)``.

``small=True`` evaluates fewer inputs and lengths (a quick check for tests
and notebooks, well under 30 s); the default is the paper's full set.  The
modules share one process-wide cache of model runs (:mod:`paper_figures.data`),
so building them together costs less than building them one by one.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import time
from collections.abc import Callable
from pathlib import Path

from . import style  # noqa: F401 - Agg backend and SOURCE_DATE_EPOCH before any figure

#: modules with ``make(out_dir, small=False) -> list[Path]``, in build order
MODULES: tuple[str, ...] = (
    "fig_tolerance",
    "fig_error_growth",
    "fig_per_layer",
    "fig_formats",
    "fig_number_line",
    "fig_validation",
    "fig_lost_updates",
    "tex",
)


def available() -> list[str]:
    """The modules of :data:`MODULES` present in this checkout."""
    out = []
    for name in MODULES:
        if importlib.util.find_spec(f"{__package__}.{name}") is not None:
            out.append(name)
    return out


def maker(name: str) -> Callable[[Path, bool], list[Path]]:
    """``make`` of one module as ``f(out_dir, small)``; modules whose ``make``
    has no ``small`` parameter are always built in full."""
    make = importlib.import_module(f"{__package__}.{name}").make
    if "small" in inspect.signature(make).parameters:
        return lambda out_dir, small: list(make(out_dir, small=small))
    return lambda out_dir, small: list(make(out_dir))


def build_all(
    out_dir: Path | str,
    small: bool = False,
    only: list[str] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Build the figures (all, or the modules named in ``only``) into ``out_dir``;
    return every file written."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = available() if only is None else list(only)
    unknown = sorted(set(names) - set(MODULES))
    if unknown:
        raise ValueError(
            f"unknown figure module(s) {', '.join(unknown)}; have {', '.join(MODULES)}"
        )
    paths: list[Path] = []
    for name in names:
        t0 = time.perf_counter()
        written = maker(name)(out_dir, small)
        paths += written
        if log is not None:
            log(f"{name:<18} {time.perf_counter() - t0:6.1f} s  {len(written)} files")
    return paths
