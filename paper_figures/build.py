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
from typing import Any

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
    "fig_seed",
    "tex",
)


def available() -> list[str]:
    """The modules of :data:`MODULES` present in this installation, less those
    whose data file (a module's ``NEEDS``) is missing: figures drawn from a
    checkout's results, which an installed wheel does not carry."""
    out = []
    for name in MODULES:
        if importlib.util.find_spec(f"{__package__}.{name}") is None:
            continue
        needs = getattr(importlib.import_module(f"{__package__}.{name}"), "NEEDS", None)
        if needs is None or Path(needs).is_file():
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


#: the figures that draw one model, as (module, keyword naming the model(s))
MODEL_FIGURES: tuple[tuple[str, str], ...] = (
    ("fig_tolerance", "models"),
    ("fig_per_layer", "models"),
    ("fig_formats", "model"),
)


def build_for_model(
    model: Any,
    inputs: Any,
    labels: Any | None,
    out_dir: Path | str,
    small: bool = False,
    log: Callable[[str], None] | None = None,
) -> list[Path]:
    """Build the figures of :data:`MODEL_FIGURES` for one's own ``model``
    (a :class:`fperr.model.Model`) on ``inputs`` (and ``labels``, optional)
    into ``out_dir``; return every file written.  Inputs that do not fit the
    model, or labels that do not fit the inputs, raise ``FperrInputError``."""
    from fperr.errors import FperrInputError
    from fperr.model import check_inputs

    from . import data

    X = check_inputs(inputs, model.input_shape)
    if X.shape[0] == 0:
        raise FperrInputError("no inputs to draw: the inputs file holds 0 rows")
    if labels is not None and len(labels) != X.shape[0]:
        raise FperrInputError(f"{len(labels)} labels for {X.shape[0]} inputs")
    key = data.register("model", model, X, labels)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: list[Path] = []
    for name, keyword in MODEL_FIGURES:
        t0 = time.perf_counter()
        arg: Any = key if keyword == "model" else [key]
        written = list(importlib.import_module(f"{__package__}.{name}").make(
            out_dir, small=small, **{keyword: arg}))  # fmt: skip
        paths += written
        if log is not None:
            log(f"{name:<18} {time.perf_counter() - t0:6.1f} s  {len(written)} files")
    return paths
