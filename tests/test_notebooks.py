"""The notebooks are what notebooks/make_notebooks.py writes, without outputs.

Running them is ``pytest --nbmake notebooks/`` (not part of the default run).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

pytest.importorskip("nbformat")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("make_notebooks", NOTEBOOKS / "make_notebooks.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_are_generated_and_have_no_outputs() -> None:
    gen = _generator()
    assert len(gen.NOTEBOOKS) == 5
    for stem in gen.NOTEBOOKS:
        path = NOTEBOOKS / f"{stem}.ipynb"
        text = path.read_text()
        assert text == gen.render(stem), f"{path.name} is stale: run notebooks/make_notebooks.py"
        for cell in json.loads(text)["cells"]:
            if cell["cell_type"] == "code":
                assert cell["outputs"] == [] and cell["execution_count"] is None
