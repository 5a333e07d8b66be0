"""The bundled example models and the digits data, shipped as package data.

``path("mlp")`` is the YAML spec of an example model (its weights and data
files lie beside it), ``load("mlp")`` the loaded :class:`~fperr.model.Model`,
``digits()`` the 1797 scikit-learn digits as ``(X, y)``.  They are found the
same way from a source checkout and from an installed wheel, so notebooks,
``fperr figures`` and the paper figures run outside the repository.

In a checkout the files of this folder are symbolic links to the repository's
``examples/`` (the files are megabytes: one copy, not two); building a wheel
copies their targets in.  Where links did not survive a checkout (they arrive as
small text files) the repository's ``examples/`` is read directly.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from ..errors import FperrInputError

if TYPE_CHECKING:
    from ..model import Model

#: the bundled example models, by name
NAMES: tuple[str, ...] = ("mlp", "cnn", "deep_tanh")

_HERE = Path(__file__).resolve().parent
_CHECKOUT = _HERE.parents[1] / "examples"  # only a source checkout has it


def data_dir() -> Path:
    """The folder holding the example specs, weights and ``digits.npz``."""
    for d in (_HERE, _CHECKOUT):
        # a real file, not a link that arrived as a few bytes of text
        if (d / "mlp.yaml").is_file() and (d / "digits.npz").stat().st_size > 1000:
            return d
    raise FileNotFoundError(f"the fperr example files are missing from {_HERE}")


def path(name: str) -> Path:
    """The YAML spec of the example model ``name`` (one of :data:`NAMES`)."""
    if name not in NAMES:
        raise FperrInputError(f"no example model {name!r}; have {', '.join(NAMES)}")
    return data_dir() / f"{name}.yaml"


def load(name: str) -> Model:
    """The example model ``name`` as a :class:`~fperr.model.Model`."""
    from ..model import load_model

    return load_model(path(name))


def digits() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """The digits inputs ``X`` (1797 x 64, values k/16) and their labels ``y``."""
    with np.load(data_dir() / "digits.npz", allow_pickle=False) as z:
        return np.asarray(z["inputs"], np.float64), np.asarray(z["labels"], np.int64)
