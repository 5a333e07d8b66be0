"""``fperr convert``: any model file fperr reads, written as a self-contained YAML spec.

The model is read by :func:`fperr.model.load_model` (``.yaml``, ``.onnx`` or a
``torch.export`` ``.pt2``; pickles and other kinds are refused there with one
line) and written by :meth:`fperr.model.Model.save` into ``out_dir`` as
``<stem>.yaml`` and its weights: ``<stem>.npz`` or ``<stem>.safetensors``, every
array float64 as the model holds it, so the converted model computes bit for bit
what the original does.  Inputs (given, or the source spec's own data section)
are copied into ``<stem>_data.npz`` (keys ``inputs`` and ``labels``) and named in
the spec's ``data`` section by a path relative to the spec: the folder can be
moved or shared as a whole.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import yaml

from .errors import FperrInputError
from .model import Model, check_inputs, load_model

__all__ = ["WEIGHT_KINDS", "Converted", "convert_model"]

WEIGHT_KINDS = ("npz", "safetensors")


@dataclass(frozen=True)
class Converted:
    """What :func:`convert_model` wrote."""

    spec: Path
    weights: Path
    data: Path | None  # inputs (and labels) as .npz, or None without data
    inputs: int  # how many inputs the data file holds (0 without data)


def convert_model(
    model_path: str | Path,
    out_dir: str | Path,
    inputs: str | None = None,
    labels: str | None = None,
    weights: str = "npz",
) -> Converted:
    """Read ``model_path`` and write it as ``out_dir/<stem>.yaml`` + weights (+ data).

    ``inputs``/``labels`` are read like ``fperr bound --inputs/--labels``; without
    them, a YAML source's data section is copied.  Raises
    :class:`~fperr.errors.FperrInputError` (one line) for bad files or options.
    """
    if weights not in WEIGHT_KINDS:
        raise FperrInputError(f"unknown weights format {weights!r}; use npz or safetensors")
    source = Path(model_path)
    model = load_model(source)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FperrInputError(f"--out {out}: exists and is not a folder")
    spec_path = out / f"{source.stem}.yaml"
    _refuse_overwriting(source, spec_path, weights)
    X, y = _data(model, inputs, labels)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # data=None: Model.save would point back at the source's data; ours is copied
        replace(model, data=None).save(spec_path)
        wpath = spec_path.with_suffix(".npz")
        if weights == "safetensors":
            wpath = _npz_to_safetensors(wpath)
        data_path = None if X is None else _write_data(out / f"{source.stem}_data.npz", X, y)
        _rewrite_spec(spec_path, wpath, data_path)
    except OSError as exc:
        raise FperrInputError(f"cannot write to {out}: {exc.strerror or exc}") from None
    return Converted(spec_path, wpath, data_path, 0 if X is None else int(X.shape[0]))


def _refuse_overwriting(source: Path, spec_path: Path, weights: str) -> None:
    """Converting a spec into its own folder would replace the files being read."""
    targets = {spec_path, spec_path.with_suffix(".npz"), spec_path.with_suffix(f".{weights}")}
    if source.resolve() in {t.resolve() for t in targets}:
        raise FperrInputError(f"--out {spec_path.parent} would overwrite {source}; "
                              "choose another folder")  # fmt: skip


def _data(
    model: Model, inputs: str | None, labels: str | None
) -> tuple[npt.NDArray[np.float64] | None, npt.NDArray[np.int64] | None]:
    """The inputs to copy (checked against the model's input shape), or None."""
    from .datasets import model_data

    if inputs is None and model.data is None:
        if labels is not None:
            raise FperrInputError("--labels needs --inputs (the model carries no data)")
        return None, None
    X, y = model_data(model, inputs, labels)
    X = check_inputs(X, model.input_shape)
    if y is not None and len(y) != len(X):
        raise FperrInputError(f"{len(y)} labels for {len(X)} inputs")
    return X, y


def _write_data(path: Path, X: npt.NDArray[np.float64], y: Any) -> Path:
    arrays = {"inputs": np.asarray(X, dtype=np.float64)}
    if y is not None:
        arrays["labels"] = np.asarray(y, dtype=np.int64)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def _npz_to_safetensors(npz: Path) -> Path:
    """Model.save writes .npz; the same float64 arrays go into .safetensors."""
    try:
        from safetensors.numpy import save_file
    except ImportError:
        raise FperrInputError("--weights safetensors needs the safetensors package "
                              "(pip install safetensors)") from None  # fmt: skip
    with np.load(npz, allow_pickle=False) as z:
        arrays = {k: np.ascontiguousarray(z[k]) for k in z.files}
    target = npz.with_suffix(".safetensors")
    save_file(arrays, str(target))
    npz.unlink()
    return target


def _rewrite_spec(spec_path: Path, weights: Path, data: Path | None) -> None:
    """Point the spec at its weights and data, by names relative to the spec."""
    spec = yaml.safe_load(spec_path.read_text())
    spec["weights"] = weights.name
    if data is not None:
        spec["data"] = {"inputs": data.name}  # the labels, if any, are inside the npz
    header = "# written by fperr convert; paths are relative to this file\n"
    spec_path.write_text(header + yaml.safe_dump(spec, sort_keys=False, default_flow_style=None))
