"""Sphinx configuration of the fperr documentation.

Build (CI runs exactly this, warnings are errors):

    sphinx-build -q -W --keep-going -b html docs docs/_build/html

The notebooks of ``notebooks/`` are copied into ``docs/notebooks/`` (generated,
git-ignored) and executed afresh by myst-nb on every build; a cell that raises
fails the build (under ``-W``).
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path
from typing import Any

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # paper_figures (used by the notebooks) and fperr from the tree


def _copy_notebooks() -> None:
    """Mirror notebooks/*.ipynb into docs/notebooks/ (Sphinx reads only its source dir)."""
    dest = DOCS / "notebooks"
    dest.mkdir(exist_ok=True)
    wanted = {p.name: p for p in sorted((ROOT / "notebooks").glob("*.ipynb"))}
    for stale in dest.glob("*.ipynb"):
        if stale.name not in wanted:
            stale.unlink()
    for name, src in wanted.items():
        target = dest / name
        # copy only on change, so an incremental build re-executes only what changed
        if not target.is_file() or target.read_bytes() != src.read_bytes():
            shutil.copyfile(src, target)


_copy_notebooks()

from fperr import __version__  # noqa: E402  (after the path setup above)

project = "fperr"
author = "the fperr authors"
copyright = "the fperr authors"
version = release = __version__

extensions = [
    "myst_nb",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx_click",
]

exclude_patterns = ["_build", "Thumbs.db", ".DS_Store", "**.ipynb_checkpoints"]
source_suffix = {".rst": "restructuredtext", ".md": "myst-nb", ".ipynb": "myst-nb"}

# -- MyST --------------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# -- notebooks: executed on every build, with the outputs CI computes -------------------------
nb_execution_mode = "force"
nb_execution_timeout = 300  # seconds per cell: a hung cell fails the build (slowest cell ~25 s)
# A cell that raises is reported as a warning with the cell's traceback in the build log, which
# -W turns into a failed build (raising instead would hide the cell's traceback in a temp file).
nb_execution_raise_on_error = False
nb_execution_show_tb = True
nb_merge_streams = True

# -- autodoc -----------------------------------------------------------------------------------
autodoc_default_options = {
    "members": True,
    "show-inheritance": True,
}
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_mock_imports = ["torch", "onnx"]  # optional dependencies, imported lazily anyway
# Annotations that name a class only under TYPE_CHECKING stay strings; point them at the one
# public name (the class is documented both as fperr.X and in its module).
autodoc_type_aliases = {"Model": "fperr.Model", "Format": "fperr.Format"}
# Annotations that cannot be evaluated at all (they also name a torch or onnx type) keep the bare
# name "Model", which then matches both fperr.Model and fperr.model.Model, the same class.
# "ref.python" is the Python domain's ambiguous-target warning and nothing else.
suppress_warnings = ["ref.python"]
napoleon_google_docstring = False
napoleon_numpy_docstring = True


# -- docstrings write |x| for an absolute value ------------------------------------------------
# The docstrings use the plain-text notation of numerical analysis (|W| |x|, |fl(x) - x|), which
# reStructuredText would read as substitution references (an error under -W).  The project
# defines no substitutions, so every bar outside inline literals, interpreted text and literal
# blocks is escaped before the docstring is parsed: it renders as the bar it is.
_LITERAL_SPAN = re.compile(r"(``.+?``|`[^`]*`)")


def _escape_bars(line: str) -> str:
    parts = _LITERAL_SPAN.split(line)
    # odd indices are the literal / interpreted-text spans captured by the split
    return "".join(p if i % 2 else p.replace("|", r"\|") for i, p in enumerate(parts))


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def escape_absolute_values(
    app: Any, what: str, name: str, obj: Any, options: Any, lines: list[str]
) -> None:
    """autodoc-process-docstring: escape |...| except inside literal text."""
    literal_from: int | None = None  # indent of the paragraph that opened a literal block
    for i, line in enumerate(lines):
        if literal_from is not None:
            if not line.strip() or _indent(line) > literal_from:
                continue  # inside the literal block: leave as is
            literal_from = None
        stripped = line.rstrip()
        if stripped.endswith("::"):  # "text::" or a directive: indented lines that follow
            literal_from = _indent(line)
            if stripped.lstrip().startswith(".. "):
                continue
        lines[i] = _escape_bars(line)


def setup(app: Any) -> None:
    app.connect("autodoc-process-docstring", escape_absolute_values)


# -- HTML --------------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"fperr {__version__}"
html_static_path: list[str] = []
