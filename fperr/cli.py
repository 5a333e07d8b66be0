"""The ``fperr`` command line: a thin shell over the library, no numerics.

Exit codes: 0 clean, 1 findings (e.g. inputs not certified), 2 usage, input or
configuration error -- reported as one line on stderr, never a traceback.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

import click

from .errors import FperrInputError


class _Group(click.Group):
    """Bad input (:class:`FperrInputError`) becomes one line on stderr and exit 2;
    anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except FperrInputError as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            click.echo(f"fperr: error: {msg}", err=True)
            ctx.exit(2)


def _strict_json(obj: Any) -> str:
    """Standard JSON: an infinite bound (or a NaN) is written as null, never as the
    ``Infinity`` / ``NaN`` tokens that strict parsers (jq, JavaScript) reject."""

    def clean(v: Any) -> Any:
        if isinstance(v, float):
            return v if math.isfinite(v) else None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(obj), allow_nan=False)


def _write(path: str, text: str) -> None:
    """Write a report the user asked for; an unwritable path is bad input."""
    from pathlib import Path

    try:
        Path(path).write_text(text)
    except OSError as exc:
        raise FperrInputError(f"cannot write {path}: {exc.strerror or exc}") from None


@click.group(cls=_Group)
@click.version_option(package_name="fperr")
def cli() -> None:
    """Floating-point error analysis of neural networks."""


_MODEL_HELP = "Model: .yaml/.yml spec, .onnx graph or torch.export .pt2 program."
_PROGRESS_DELAY = 2.0  # seconds before a progress bar appears: short runs stay quiet


def _model_and_data(
    model_path: str, inputs: str | None, labels: str | None = None
) -> tuple[Any, Any, Any]:
    """The model (any file kind :func:`fperr.model.load_model` reads) and its inputs;
    only a YAML spec can name its data, other kinds need --inputs."""
    from .model import load_model

    model = load_model(model_path)
    X, y = _data(model, model_path, inputs, labels)
    return model, X, y


def _data(model: Any, model_path: str, inputs: str | None, labels: str | None) -> tuple[Any, Any]:
    from pathlib import Path

    from .datasets import model_data

    if inputs is None and model.data is None:
        kind = Path(model_path).suffix.lower()
        what = "this spec has no data section" if kind in (".yaml", ".yml") else (
            f"a {kind} model carries no data")
        raise FperrInputError(f"{model_path}: {what}; give --inputs (and --labels)")
    return model_data(model, inputs, labels)


def _progress_bar(total: int, desc: str, quiet: bool) -> Any:
    """A tqdm bar on stderr when it is a terminal (after _PROGRESS_DELAY s), else None."""
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="input", file=sys.stderr, delay=_PROGRESS_DELAY,
                leave=False, dynamic_ncols=True)  # fmt: skip


def _gate(fraction: float, min_certified: float | None, all_certified: bool) -> tuple[int, str]:
    """Exit code and the text line of the --min-certified gate."""
    if min_certified is None:
        return (0 if all_certified else 1), ""
    ok = fraction >= min_certified
    verdict = "pass" if ok else "FAIL"
    line = (f"gate             certified {100 * fraction:.2f}% "
            f"{'>=' if ok else '<'} {100 * min_certified:.2f}% required: {verdict}")  # fmt: skip
    return (0 if ok else 1), line


@cli.command("formats")
def formats_cmd() -> None:
    """Table of the built-in formats and their constants."""
    from .formats import FORMATS

    header = f"{'name':<15}{'p':>4}{'emax':>6}{'u':>12}{'eps':>12}{'max':>13}"
    header += f"{'smallest_normal':>17}{'smallest_subnormal':>20}"
    click.echo(header)
    for f in FORMATS.values():
        click.echo(
            f"{f.name:<15}{f.p:>4}{f.emax:>6}{f.u:>12.4g}{f.eps:>12.4g}{f.max:>13.6g}"
            f"{f.smallest_normal:>17.6g}{f.smallest_subnormal:>20.6g}"
        )


@cli.command("round", context_settings={"ignore_unknown_options": True})
@click.argument("value", type=str)
@click.option("--format", "fmt_name", default="binary16", show_default=True, help="Target format.")
@click.option("--mode", default="nearest", show_default=True, help="Rounding mode.")
def round_cmd(value: str, fmt_name: str, mode: str) -> None:
    """Round VALUE to a format; show the result, its bits and the error."""
    from .formats import get_format
    from .round_report import round_report
    from .rounding import MODES

    fmt = get_format(fmt_name)
    if mode == "stochastic":
        raise FperrInputError("use the Python API for stochastic rounding (it needs a generator)")
    if mode not in MODES:
        raise FperrInputError(f"unknown rounding mode {mode!r}; valid modes: {', '.join(MODES)}")
    for line in round_report(value, fmt, mode):  # type: ignore[arg-type]
        click.echo(line)


@cli.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of model.yaml (for editor completion)."""
    import json

    from .spec import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@cli.command("bound")
@click.option("--model", "model_path", required=True, help=_MODEL_HELP)
@click.option(
    "--inputs", default=None,
    help="sklearn:NAME or .npy/.npz/.csv (default: the YAML spec's data; needed otherwise).",
)
@click.option("--labels", default=None, help="Labels (.npy/.csv), optional.")
@click.option("--low", default="binary16", show_default=True, help="Low-precision storage format.")
@click.option("--reference", default="binary32", show_default=True, help="Reference format.")
@click.option(
    "--accumulate", default="binary32", show_default=True, help="Accumulation format of LOW."
)
@click.option(
    "--reference-accumulate",
    default="binary32",
    show_default=True,
    help="Accumulation format of the reference.",
)
@click.option("--reference-operand", default=None, help="Operand format of the reference (tf32).")
@click.option("--truncating-accumulator", is_flag=True, help="Model chopping accumulators.")
@click.option(
    "--method",
    type=click.Choice(["deterministic", "probabilistic"]),
    default="deterministic",
    show_default=True,
    help="probabilistic: a model of independent rounding errors, not a certificate.",
)
@click.option("--confidence", default=0.999, show_default=True,
              help="For --method probabilistic: 1 - confidence is the failure probability "
              "per input in total (the low and the reference run get half each).")  # fmt: skip
@click.option("--on", "on", type=click.Choice(["logits", "softmax"]), default="logits")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable results on stdout.")
@click.option("--out", default=None, help="Also write the JSON report to this file.")
@click.option(
    "--suggest-fp32",
    "suggest",
    is_flag=False,
    flag_value=1.0,
    default=None,
    type=float,
    help="If inputs are not certified, find layers to keep in binary32 (optionally a "
    "target certified fraction, default all).",
)
@click.option(
    "--min-certified",
    default=None,
    type=click.FloatRange(0, 1),
    metavar="FRACTION",
    help="Exit 0 when at least this fraction of the inputs is certified (a CI gate).",
)
@click.option("--per-layer", "per_layer", is_flag=True,
              help="Report each layer's share of the bound (median over inputs of its part of "
              "max_k B_k): a rounding counts for the layer that rounds, a remainder term for "
              "the layer whose nonlinearity makes it (relu, maxpool hold only remainders), "
              "the engine's 1e-10 evaluation margin as its own line.")  # fmt: skip
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Run chunk by chunk on this Dask scheduler (tcp://host:8786); needs "
              "fperr[dask] and --inputs as a .npy or .zarr file every worker can read.")
@click.option("--workers", default=None, type=int, metavar="N",
              help="Run chunk by chunk on a local Dask cluster of N processes.")
@click.option("--chunk-size", "chunk_size", default=None, type=int,
              help="With --scheduler/--workers: inputs per chunk (default 4096).")
@click.option("--stream", default=None, metavar="OUT.jsonl",
              help="With --scheduler/--workers: append each chunk's certificates to this "
              "JSON-lines file as it completes (input order at the end).")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted --stream file (its model, inputs and options "
              "must match).")  # fmt: skip
@click.option("--engine", type=click.Choice(["auto", "backward", "zonotope"]), default="auto",
              show_default=True,
              help="Bound engine: backward (cost ~ K forward passes), zonotope (the reference), "
              "auto (backward for piecewise-linear models, zonotope with curved layers).")
@click.option("--ranges", type=click.Choice(["sharpened", "interval", "full", "unstable"]),
              default="sharpened", show_default=True,
              help="The backward engine's ranges at nonlinear layers: interval ranges sharpened "
              "by backward rows where wide (a budget of forward passes per input), interval "
              "ranges only (cheapest; infinite bounds on deep models), every unit sharpened "
              "(full: about one forward pass per unit; with --method probabilistic the ranges "
              "are probabilistic too, which deep CNNs need), or as full but at ReLUs and max "
              "pooling only the units whose range may change the rule (unstable: about half "
              "the cost of full, looser; with the deterministic method the inputs it leaves "
              "undecided get full ranges too).")
@click.option("--memory", default=None, metavar="BYTES",
              help="Memory budget of the bound engine, e.g. 2G or 8e9 (suffix K, M, G, T: "
              "powers of 1024): inputs are bounded in batches sized to it, and a model one "
              "input of which exceeds it is refused at once.  Default: FPERR_MAX_BYTES, else 4G.")
@click.option("--backend", type=click.Choice(["numpy", "torch"]), default=None,
              help="Where the bound engine's backward passes (most of its cost) run: numpy, "
              "or torch (needs torch; float64, bounds equal to numpy's within 1e-12 relative). "
              "Default: FPERR_BACKEND, else numpy.")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Device of the backward passes: cuda runs them with torch on the GPU "
              "(implies --backend torch; refused when torch sees no CUDA device). "
              "Default: FPERR_DEVICE, else cpu.")
@click.option("--cascade/--no-cascade", default=True, show_default=True,
              help="Bound every input cheaply first and sharply only where undecided "
              "(--per-layer turns it off: every input then gets a breakdown).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or status lines on stderr.")
def bound_cmd(
    model_path: str,
    inputs: str | None,
    labels: str | None,
    low: str,
    reference: str,
    accumulate: str,
    reference_accumulate: str,
    reference_operand: str | None,
    truncating_accumulator: bool,
    method: str,
    confidence: float,
    on: str,
    as_json: bool,
    out: str | None,
    suggest: float | None,
    min_certified: float | None,
    per_layer: bool,
    engine: str,
    ranges: str,
    memory: str | None,
    backend: str | None,
    device: str | None,
    cascade: bool,
    quiet: bool,
    scheduler: str | None,
    workers: int | None,
    chunk_size: int | None,
    stream: str | None,
    resume: bool,
) -> None:
    """Certify per input that LOW predicts the same class as REFERENCE.

    Exit 0 if every input is certified (with --min-certified: at least that
    fraction), 1 if not, 2 on bad input.
    """

    from . import __version__
    from .arith import Emulated
    from .bounds.backend import resolve as resolve_backend
    from .certify import certify

    def status(msg: str) -> None:
        if not quiet:
            click.echo(msg, err=True)

    from .distributed import command as dask_command

    if memory is not None:  # the engine reads its budget from the environment
        from .bounds.memory import max_bytes

        os.environ["FPERR_MAX_BYTES"] = memory
        max_bytes()  # a malformed budget fails here, as bad input
    if dask_command.wants_cluster(click.get_current_context().params):
        if resolve_backend(backend, device)[0] != "numpy":
            raise FperrInputError("--scheduler/--workers run the numpy backend on the CPU; "
                                  "drop --backend/--device")
        dask_command.main(click.get_current_context().params, status)
    model, X, y = _model_and_data(model_path, inputs, labels)
    acc_rounding = "truncate" if truncating_accumulator else "nearest"
    lo = Emulated.from_names(low, accumulate, acc_rounding=acc_rounding)
    # the reference keeps its own accumulator: --accumulate describes the low run only
    ref = Emulated.from_names(reference, reference_accumulate, reference_operand,
                              acc_rounding=acc_rounding)  # fmt: skip
    status(f"bounding {X.shape[0]} inputs through {model.name} ...")
    bar = _progress_bar(2 * X.shape[0], "bounding (reference, then low run)", quiet)
    try:
        result = certify(model, X, y, lo, ref, method=method, confidence=confidence, on=on,
                         progress=None if bar is None else bar.update, engine=engine,
                         cascade=cascade and not per_layer, ranges=ranges, backend=backend,
                         device=device)  # fmt: skip
    finally:
        if bar is not None:
            bar.close()
    hint = _infinite_hint(result.bounds.bound, ranges)
    if hint:
        status(hint)
    report = result.to_dict(per_layer=per_layer)
    report["summary"]["fperr_version"] = __version__
    report["summary"]["bound_backend"] = ":".join(resolve_backend(backend, device))
    code, gate = _gate(report["summary"]["certified_fraction"], min_certified,
                       bool(result.certified.all()))  # fmt: skip
    if min_certified is not None:
        report["summary"]["min_certified"] = min_certified
        report["summary"]["gate_passed"] = code == 0
    advice = None
    if suggest is not None and not result.certified.all():
        from .certify import suggest_fp32

        status("searching layers to keep in binary32 ...")
        advice = suggest_fp32(model, X, suggest, low=lo, reference=ref, method=method,
                              confidence=confidence, on=on)  # fmt: skip
        report["suggest_fp32"] = advice.to_dict()
    text = _strict_json(report)
    if out:
        _write(out, text)
    if as_json:
        click.echo(text)
    else:
        click.echo(result.text(per_layer=per_layer))
        if gate:
            click.echo(gate)
        if advice is not None:
            click.echo(advice.text())
    sys.exit(code)


def _infinite_hint(bound: Any, ranges: str) -> str | None:
    """A line for stderr when some inputs' bounds are infinite under cheaper ranges
    than full: in deep networks interval ranges outgrow the format (the seed
    CNNs' binary16 bounds), which full ranges avoid at a higher cost."""
    import numpy as np

    from .bounds.engine import PER_UNIT

    inf = int((~np.isfinite(bound)).any(axis=1).sum())
    if not inf or ranges in PER_UNIT:
        return None
    return (f"note: {inf} of {len(bound)} inputs have an infinite bound. Unless their "
            "values may overflow, the cause is ranges that grow past the format's "
            "largest number in a deep network: --ranges full (one backward row per unit, "
            "seconds per input) or --ranges unstable (rows for the unstable units only) "
            "keep them finite, see docs/theory.md")  # fmt: skip


@cli.command("convert")
@click.argument("model_path", metavar="MODEL")
@click.option("--out", "out_dir", required=True, metavar="DIR",
              help="Folder for MODEL's YAML spec, its weights and its data.")  # fmt: skip
@click.option("--inputs", default=None,
              help="Inputs to copy into DIR (sklearn:NAME or .npy/.npz/.csv); default: a YAML "
              "spec's own data, none for other kinds.")  # fmt: skip
@click.option("--labels", default=None, help="Labels (.npy/.csv) stored with the inputs.")
@click.option("--weights", "weights", default="npz", show_default=True, metavar="npz|safetensors",
              help="File format of the weights.")  # fmt: skip
def convert_cmd(
    model_path: str, out_dir: str, inputs: str | None, labels: str | None, weights: str
) -> None:
    """Write MODEL (.yaml, .onnx or torch.export .pt2) as DIR/<name>.yaml + weights.

    Every parameter is kept in float64 as read, so the converted spec computes the
    same outputs and bounds.  With inputs (or a YAML spec's data section) the spec
    gets a data section naming DIR/<name>_data.npz, so that
    ``fperr bound --model DIR/<name>.yaml`` needs no --inputs.  Exit 0 on
    success, 2 on bad input (a pickled .pt or another file kind: one line).
    """
    from .convert import convert_model

    res = convert_model(model_path, out_dir, inputs, labels, weights)
    data = f", data {res.data} ({res.inputs} inputs)" if res.data is not None else ""
    click.echo(f"wrote {res.spec}, weights {res.weights}{data}")


@cli.command("check-training")
@click.option("--model", "model_path", required=True,
              help=_MODEL_HELP + " Chains of dense, conv2d, pool, norm, residual, shape and "
              "activation layers.")  # fmt: skip
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--eps", default=1e-8, show_default=True, type=float, help="Adam epsilon.")
@click.option("--format", "fmt", default="binary16", show_default=True, help="Training format.")
@click.option("--inputs", default=None, help="Training inputs (default: the spec's data).")
@click.option("--labels", default=None, help="Labels (.npy/.csv), optional.")
@click.option("--loss-scale", default=1.0, show_default=True, type=float)
@click.option("--max-batches", default=None, type=click.IntRange(min=1),
              help="Check only the first N batches (a quick look).")  # fmt: skip
@click.option("--emulate-steps", default=10, show_default=True, type=click.IntRange(min=0),
              help="Then run this many optimizer steps with every state in the format and "
              "say which predictions they confirm (0: skip).")  # fmt: skip
def check_training_cmd(
    model_path: str,
    optimizer: str,
    lr: float,
    eps: float,
    fmt: str,
    inputs: str | None,
    labels: str | None,
    loss_scale: float,
    max_batches: int | None,
    emulate_steps: int,
) -> None:
    """Predict fp16 training hazards: vanishing eps, lost updates, underflow,
    batch-norm running statistics; a short emulated run confirms or refutes them.

    Exit 0 if no hazard is predicted, 1 if one is, 2 on bad input.
    """
    from .training import check_training

    model, X, y = _model_and_data(model_path, inputs, labels)
    if y is None:
        raise FperrInputError("check-training needs class labels (an .npz with 'labels')")
    report = check_training(model, X, y, optimizer=optimizer, lr=lr, eps=eps, fmt=fmt,
                            loss_scale=loss_scale, max_batches=max_batches,
                            emulate_steps=emulate_steps)  # fmt: skip
    click.echo(str(report))
    sys.exit(0 if report.ok else 1)


@cli.command("validate")
@click.option("--model", "model_path", default=None, help=_MODEL_HELP)
@click.option("--inputs", default=None, help="Inputs (default: the spec's data).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--out", default=None, help="Write the JSON report here.")
@click.option("--report", default=None, help="Summarize and re-check a stored report instead.")
@click.option("--batch-size", default=None, type=click.IntRange(min=1),
              help="Large batch size (default: all).")  # fmt: skip
@click.option("--limit", default=None, type=click.IntRange(min=1),
              help="Validate only the first N inputs.")  # fmt: skip
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Processes computing the bounds while torch runs.")  # fmt: skip
@click.option("--suite", is_flag=True,
              help="Probe the device and validate the bundled examples (no --model).")  # fmt: skip
@click.option("--examples", "examples_dir", default=None,
              help="With --suite: the folder of the example models and digits.npz "
              "(default: the ones installed with fperr).")  # fmt: skip
@click.option("--results", default="validation/results", show_default=True,
              help="With --suite: write <results>/<device>/ reports here.")  # fmt: skip
@click.option("--deep-inputs", default=300, show_default=True, type=click.IntRange(min=1),
              help="With --suite: inputs of the deep tanh MLP.")  # fmt: skip
def validate_cmd(
    model_path: str | None,
    inputs: str | None,
    device: str,
    out: str | None,
    report: str | None,
    batch_size: int | None,
    limit: int | None,
    workers: int,
    suite: bool,
    examples_dir: str | None,
    results: str,
    deep_inputs: int,
) -> None:
    """Run the model in real PyTorch precisions and check every bound.

    Exit 0 if no observed error exceeds its bound, 1 otherwise, 2 on bad input.
    """
    from pathlib import Path

    def log(msg: str) -> None:
        click.echo(msg, err=True)

    if suite:
        from .examples import data_dir
        from .hardware.suite import run_suite

        examples = Path(examples_dir) if examples_dir else data_dir()
        res = run_suite(device, Path(results), examples, inputs=limit,
                        deep_inputs=deep_inputs, workers=workers, log=log)  # fmt: skip
        click.echo("\n\n".join(res.texts))
        click.echo(f"reports in {res.out_dir}; "
                   + ("no violation" if res.ok else "FAILED: " + ", ".join(res.failed)))
        sys.exit(0 if res.ok else 1)
    if model_path is None:
        raise FperrInputError("--model is required (also with --report, to recompute bounds)")
    from .model import load_model

    model = load_model(model_path)
    if report is not None:
        _recheck_report(model, report, workers)
        return
    from .hardware.reports import summarize
    from .hardware.torch_env import require_torch, resolve_device
    from .hardware.validate import validate

    resolve_device(require_torch("validation"), device)
    X, y = _data(model, model_path, inputs, None)
    if limit is not None:
        X, y = X[:limit], None if y is None else y[:limit]
    rep = validate(model, X, y, device=device, batch_sizes=(batch_size, 1), log=log,
                   workers=workers)  # fmt: skip
    if out:
        _write(out, rep.to_json())
    click.echo(summarize(rep))
    sys.exit(0 if rep.ok else 1)


def _recheck_report(model: Any, path: str, workers: int) -> None:
    """Summarize a stored report and check it against the current bounds."""
    from .hardware.reports import ValidationReport, summarize
    from .hardware.validate import recheck

    rep = ValidationReport.load(path)
    problems = recheck(rep, model, workers=workers)
    verdict = "no violation" if not problems else f"{len(problems)} problems\n" + "\n".join(
        problems
    )
    click.echo(summarize(rep) + "\n\nrecheck against the current bounds: " + verdict)
    sys.exit(0 if rep.ok and not problems else 1)


@cli.command("probe")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
def probe_cmd(device: str) -> None:
    """Measure how the platform's fp16/bf16 GEMM accumulates; name the model.

    Exit 0 when an fperr accumulation model covers every fp16/bf16 setting, 1 otherwise.
    """
    from .hardware.probe import probe

    result = probe(device)
    click.echo(result.text())
    uncovered = [k for k, v in result.covered_by.items() if not v]
    if uncovered:
        click.echo("no fperr accumulation model covers: " + ", ".join(uncovered))
    sys.exit(1 if uncovered else 0)


@cli.command("kernels")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--out", "out_dir", default="validation/results", show_default=True,
              help="Write <out>/<device>/kernels.json here.")  # fmt: skip
@click.option("--fp32-values", default=1_000_000, show_default=True,
              type=click.IntRange(min=100),
              help="Size of the binary32 sample (binary16 and bfloat16: every value).")  # fmt: skip
def kernels_cmd(device: str, out_dir: str, fp32_values: int) -> None:
    """Measure the error of PyTorch's elementwise kernels (tanh, GELU, exp, ...)."""
    from pathlib import Path

    from .hardware.kernels import measure, write_table
    from .hardware.suite import device_label

    table = measure(device, fp32_values=fp32_values, log=lambda m: click.echo(m, err=True))
    path = write_table(table, Path(out_dir) / device_label(device) / "kernels.json")
    click.echo(f"wrote {path}")


@cli.command("figures")
@click.option("--out", "out_dir", default="paper_figures/out", show_default=True)
@click.option("--small", is_flag=True, help="Fewer inputs: a quick build.")
@click.option("--model", "model_path", default=None,
              help="Draw this model instead of the paper's. " + _MODEL_HELP)
@click.option("--inputs", default=None,
              help="With --model: its inputs (default: the spec's data).")
@click.option("--labels", default=None, help="With --model: labels of the inputs.")
def figures_cmd(
    out_dir: str, small: bool, model_path: str | None, inputs: str | None, labels: str | None
) -> None:
    """Build the paper figures (PDF + PNG) and LaTeX snippets, or with --model
    the figures of one's own model (tolerance vs bound, per layer, formats)."""
    from pathlib import Path

    if model_path is None and (inputs is not None or labels is not None):
        raise click.UsageError("--inputs and --labels need --model")
    try:
        from paper_figures.build import build_all, build_for_model
    except ImportError:
        raise FperrInputError(
            "paper_figures is not importable: reinstall fperr or run from the repository root"
        ) from None
    log = lambda m: click.echo(m, err=True)  # noqa: E731
    if model_path is None:
        paths = build_all(Path(out_dir), small=small, log=log)
    else:
        model, X, y = _model_and_data(model_path, inputs, labels)
        paths = build_for_model(model, X, y, Path(out_dir), small=small, log=log)
    click.echo(f"wrote {len(paths)} files to {out_dir}")


def main() -> None:
    cli(prog_name="fperr")


if __name__ == "__main__":  # pragma: no cover
    main()
