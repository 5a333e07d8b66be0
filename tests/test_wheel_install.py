"""A built wheel works outside the repository: the examples ship as package data.

Builds a wheel from a copy of the sources (no build folder is left in the
checkout), installs it without its dependencies into a fresh venv that sees
this environment's packages, and runs the command line and the examples API
from a temporary folder outside the repository.  Nothing is downloaded:
``--no-build-isolation`` uses this environment's setuptools.  About 20 s.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLED = ("mlp.yaml", "mlp.npz", "cnn.yaml", "cnn.npz", "deep_tanh.yaml", "deep_tanh.npz",
           "digits.npz")  # fmt: skip


def _run(args: list[str], cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "MPLBACKEND": "Agg", "PYTHONNOUSERSITE": "1"}  # fmt: skip
    env.pop("PYTHONPATH", None)  # the checkout must not leak in
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)  # fmt: skip


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the venv's bin folder, a working folder outside the repository)."""
    for mod in ("setuptools", "wheel", "pip"):
        pytest.importorskip(mod, reason=f"building a wheel offline needs {mod}")
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "out", "*.egg-info")
    for name in ("fperr", "paper_figures"):  # links (fperr/examples) are copied as files
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    built = _run([sys.executable, "-m", "pip", "wheel", str(src), "--no-deps",
                  "--no-build-isolation", "--no-index", "-q", "-w", str(tmp / "dist")],
                 cwd=tmp)  # fmt: skip
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = (tmp / "dist").glob("fperr-*.whl")

    env_dir = tmp / "venv"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    py = env_dir / "bin" / "python"
    purelib = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                   cwd=tmp).stdout.strip()  # fmt: skip
    # this environment's packages (numpy, click, ...) without running its .pth
    # files, so an editable install of the checkout stays out of sight
    ours = [sysconfig.get_path("purelib"), *site.getsitepackages()]
    Path(purelib, "outer_env.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")
    inst = _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps",
                 "--no-index", "-q", str(wheel)], cwd=tmp)  # fmt: skip
    assert inst.returncode == 0, inst.stderr[-2000:]
    work = tmp / "work"
    work.mkdir()
    return env_dir / "bin", work


def test_examples_load_from_the_wheel(installed: tuple[Path, Path]) -> None:
    bin_dir, work = installed
    code = (
        "import json, fperr, paper_figures\n"
        "m = fperr.examples.load('mlp')\n"
        "X, y = fperr.examples.digits()\n"
        "print(json.dumps({'fperr': fperr.__file__, 'figs': paper_figures.__file__,\n"
        "  'path': str(fperr.examples.path('mlp')), 'name': m.name, 'n': len(X),\n"
        "  'labels': sorted(set(y.tolist())), 'out': fperr.examples.load('cnn').name}))\n"
    )
    r = _run([str(bin_dir / "python"), "-c", code], cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    got = json.loads(r.stdout)
    venv_dir = bin_dir.parent
    for key in ("fperr", "figs", "path"):  # the installed copies, not the checkout
        assert Path(got[key]).is_relative_to(venv_dir), (key, got[key])
    spec = Path(got["path"])
    assert not spec.is_symlink()
    for name in BUNDLED:
        f = spec.parent / name
        assert f.is_file() and not f.is_symlink(), name
        assert f.read_bytes() == (REPO / "examples" / name).read_bytes(), name
    assert not (spec.parent / "prenorm.yaml").exists()
    assert got["name"] == "digits-mlp" and got["out"] == "digits-cnn"
    assert got["n"] == 1797 and got["labels"] == list(range(10))


def test_cli_bound_and_figures_from_the_wheel(installed: tuple[Path, Path]) -> None:
    bin_dir, work = installed
    where = _run([str(bin_dir / "python"), "-c",
                  "import fperr.examples as e; print(e.path('mlp'))"], cwd=work)  # fmt: skip
    spec = where.stdout.strip()
    fperr = str(bin_dir / "fperr")
    r = _run([fperr, "bound", "--model", spec, "--min-certified", "0.9", "--json"], cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)["summary"]  # the spec's data section: all digits
    assert summary["inputs"] == 1797 and summary["certified_fraction"] >= 0.9

    r = _run([fperr, "figures", "--small", "--out", str(work / "paper")], cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    for stem in ("fig_tolerance", "fig_per_layer", "fig_formats", "fig_validation"):
        assert (work / "paper" / f"{stem}.png").stat().st_size > 1000, stem

    r = _run([fperr, "figures", "--model", spec.replace("mlp", "cnn"), "--small",
              "--out", str(work / "own")], cwd=work)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    assert sorted(p.name for p in (work / "own").iterdir()) == sorted(
        f"{s}.{e}" for s in ("fig_tolerance", "fig_per_layer", "fig_formats")
        for e in ("pdf", "png"))  # fmt: skip


def test_notebook_setup_outside_the_repository(installed: tuple[Path, Path]) -> None:
    """The notebooks' first cells run from a copy outside the repository
    (no bare StopIteration looking for the checkout)."""
    bin_dir, work = installed
    nb = json.loads((REPO / "notebooks" / "02_bounds_and_certificates.ipynb").read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    upto = next(i for i, c in enumerate(cells) if "fperr.examples.load" in c)
    code = "\n".join(cells[: upto + 1]) + "\nprint(ROOT, model.name, X.shape)\n"
    r = _run([str(bin_dir / "python"), "-c", code], cwd=work)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[:2] == ["None", "digits-mlp"]
