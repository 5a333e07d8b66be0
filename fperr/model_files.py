"""Which file holds a model, and how to read it safely: one dispatch on the file kind.

* ``.yaml`` / ``.yml``: an fperr spec (:func:`fperr.model.load_spec_model`);
* ``.onnx``: an ONNX graph (:func:`fperr.importers.from_onnx`);
* ``.pt2``: a ``torch.export`` program (``torch.export.save``), read with
  ``torch.export.load`` -- no pickle -- and imported with
  :func:`fperr.importers.from_torch` after its ATen calls are mapped back to
  the ``torch.nn.functional`` calls the importer knows;
* ``.pt`` / ``.pth`` / ``.pkl`` / ``.ckpt``: refused, because reading a pickle
  runs whatever code the file names; the message says how to export instead.

Anything else, or a binary file named ``.yaml``, is refused with one line.
Only a YAML spec can name its data; other kinds need ``--inputs``.
torch and onnx are imported inside the functions.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import SpecError
from .model import Model, load_spec_model

__all__ = ["MODEL_KINDS", "load_model_file"]

MODEL_KINDS = ".yaml/.yml (fperr spec), .onnx (ONNX graph) or .pt2 (torch.export program)"

_PICKLES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


def load_model_file(path: str | Path) -> Model:
    """Load a model from ``path``, choosing the reader by the file's suffix."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(f"model file not found: {path}")
    kind = path.suffix.lower()
    if kind in (".yaml", ".yml"):
        _require_text(path)
        return load_spec_model(path)
    if kind == ".onnx":
        from .importers import from_onnx

        return from_onnx(path)
    if kind == ".pt2":
        return _load_exported_program(path)
    if kind in _PICKLES:
        raise SpecError(
            f"{path}: a pickled PyTorch file is not read (unpickling runs arbitrary code); "
            "save the model with torch.export.save(...) as .pt2 or torch.onnx.export(...) as .onnx"
        )
    raise SpecError(f"{path}: unknown model file kind {kind or '(no suffix)'!r}; "
                    f"give {MODEL_KINDS}")  # fmt: skip


def _require_text(path: Path) -> None:
    """A YAML spec is UTF-8 text; a binary file (an ONNX graph, a checkpoint) renamed
    .yaml would otherwise fail deep inside the YAML reader with a codec message."""
    with path.open("rb") as fh:
        head = fh.read(4096)
    try:
        head.decode("utf-8")
        binary = b"\x00" in head
    except UnicodeDecodeError as exc:
        # a character cut at the 4096-byte edge of a longer file is still text
        binary = len(head) < 4096 or exc.start < len(head) - 4
    if binary:
        raise SpecError(f"{path}: binary content, not a YAML spec; an ONNX graph must end in "
                        ".onnx, a torch.export program in .pt2")  # fmt: skip


# -- torch.export programs ------------------------------------------------------------------
def _load_exported_program(path: Path) -> Model:
    try:
        import torch
    except ImportError:
        raise SpecError(f"{path}: a .pt2 program needs PyTorch (pip install torch)") from None
    if not zipfile.is_zipfile(path):
        raise SpecError(f"{path}: not a torch.export program (a .pt2 file is a zip archive)")
    log = logging.getLogger("torch.export")
    level = log.level
    log.setLevel(logging.ERROR)  # torch logs a traceback before trying its older format
    try:
        program = torch.export.load(str(path))
    except Exception as exc:  # a corrupt archive raises many types
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if "warnings above" in first:  # the warnings are the ones silenced here
            first = "not an archive torch.export.save wrote (or from another torch version)"
        raise SpecError(f"{path}: cannot read a torch.export program: {first}") from None
    finally:
        log.setLevel(level)
    from .importers import from_torch

    gm = _functional_graph(program.module(), path)
    try:
        return from_torch(gm, _input_shape(gm, path), name=path.stem)
    except SpecError as exc:
        if "fixed batch size" not in str(exc):
            raise
        raise SpecError(f"{exc}; export with a dynamic batch dimension: torch.export.export("
                        "model, (x,), dynamic_shapes=({0: Dim('batch')},))") from None  # fmt: skip


def _input_shape(gm: Any, path: Path) -> tuple[int, ...]:
    """The shape of the one input without its batch dimension, from the export's metadata."""
    inputs = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if len(inputs) != 1:
        raise SpecError(f"{path}: expected a program with one input, it has {len(inputs)}")
    val = inputs[0].meta.get("val")
    shape = getattr(val, "shape", None)
    if shape is None or len(shape) < 2 or not all(isinstance(d, int) for d in shape[1:]):
        raise SpecError(f"{path}: the program's input needs a static shape (batch, ...)")
    return tuple(int(d) for d in shape[1:])


def _aten_table() -> dict[Any, Callable[..., Any]]:
    """ATen overloads of an exported program -> (functional, argument adapter).

    The adapter maps the ATen argument tuple to the functional's; calls not in
    the table stay ATen calls, which the importer reports as unsupported.
    """
    import torch
    import torch.nn.functional as F

    aten = torch.ops.aten

    def same(fn: Callable[..., Any]) -> Callable[..., Any]:
        return lambda args, kw: (fn, args, kw)

    return {
        aten.linear.default: same(F.linear),
        aten.conv2d.default: same(F.conv2d),
        aten.relu.default: same(torch.relu),
        aten.relu_.default: same(torch.relu_),
        aten.tanh.default: same(torch.tanh),
        aten.sigmoid.default: same(torch.sigmoid),
        aten.gelu.default: same(F.gelu),
        aten.leaky_relu.default: same(F.leaky_relu),
        aten.relu6.default: same(F.relu6),
        aten.hardtanh.default: same(F.hardtanh),
        aten.silu.default: same(F.silu),
        aten.hardswish.default: same(F.hardswish),
        aten.hardsigmoid.default: same(F.hardsigmoid),
        # elu(x, alpha, scale, input_scale): ELU when both scales are 1, else (SELU,
        # CELU) left an ATen call, reported unsupported
        aten.elu.default: lambda a, kw: ((F.elu, a[:2], {}) if tuple(a[2:4]) in ((), (1,),
                                         (1, 1)) else (aten.elu.default, a, kw)),  # fmt: skip
        aten.max_pool2d.default: same(F.max_pool2d),
        aten.avg_pool2d.default: same(F.avg_pool2d),
        aten.flatten.using_ints: same(torch.flatten),
        aten.softmax.int: same(torch.softmax),
        aten.dropout.default: same(F.dropout),
        aten.add.Tensor: same(torch.add),
        # layer_norm(x, shape, w, b, eps, cudnn_enable): drop the backend flag
        aten.layer_norm.default: lambda a, kw: (F.layer_norm, a[:5], {}),
        # rms_norm(x, shape, w=None, eps=None), what nn.RMSNorm exports as (torch 2.13);
        # an eps left out is pinned as the importer pins nn.RMSNorm(eps=None)
        aten.rms_norm.default: _rms_norm_args,
        # batch_norm(x, w, b, mean, var, training, momentum, eps, cudnn_enabled)
        aten.batch_norm.default: lambda a, kw: (
            F.batch_norm, (a[0], a[3], a[4], a[1], a[2], a[5], a[6], a[7]), {}
        ),
    }


def _rms_norm_args(a: tuple[Any, ...], kw: dict[str, Any]) -> tuple[Any, ...]:
    """aten.rms_norm(x, normalized_shape, weight=None, eps=None) -> F.rms_norm with eps
    given: ``None`` (nn.RMSNorm's default, omitted from the exported call) pinned to
    :data:`~fperr.layers.RMS_EPS_DEFAULT`, finfo(float32).eps, what a float32 run uses."""
    import torch.nn.functional as F

    from .layers import RMS_EPS_DEFAULT

    full = {**dict(zip(("input", "normalized_shape", "weight", "eps"), a, strict=False)), **kw}
    eps = full.get("eps")
    x, ns, w = full["input"], full["normalized_shape"], full.get("weight")
    return F.rms_norm, (x, ns, w, RMS_EPS_DEFAULT if eps is None else eps), {}


def _functional_graph(gm: Any, path: Path) -> Any:
    """The exported graph with ATen calls replaced by functional ones, the export's guard
    call dropped and the one-element output tuple unwrapped (what ``from_torch`` reads)."""
    import torch
    import torch.fx as fx

    table = _aten_table()
    aten = torch.ops.aten
    methods = {aten.sym_size.int: "size", aten.view.default: "view",
               aten.reshape.default: "reshape"}  # fmt: skip
    graph = fx.Graph()
    env: dict[Any, Any] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and str(node.target).startswith("_guards"):
            continue  # the export's input-shape guard computes nothing
        if node.op == "output":
            out = node.args[0]
            if isinstance(out, (tuple, list)):
                if len(out) != 1:
                    raise SpecError(f"{path}: expected one output tensor, got {len(out)}")
                out = out[0]
            graph.output(env[out])
            continue
        new = graph.node_copy(node, lambda n: env[n])
        adapt = table.get(node.target) if node.op == "call_function" else None
        if node.target in methods:  # x.size(0), x.view(...): the importer's forms
            new.op, new.target = "call_method", methods[node.target]
        elif adapt is not None:
            new.target, new.args, new.kwargs = adapt(new.args, new.kwargs)
        env[node] = new
    return fx.GraphModule(gm, graph, class_name=path.stem)
