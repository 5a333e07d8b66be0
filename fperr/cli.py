"""The ``fperr`` command line: a thin shell over the library, no numerics.

Exit codes: 0 clean, 1 findings (e.g. inputs not certified), 2 usage, input or
configuration error -- reported as one line on stderr, never a traceback.
"""

from __future__ import annotations

import math
import sys
from typing import Any

import click

from .errors import FperrInputError

# Errors that mean "the user gave us something wrong": one line, exit 2.
_INPUT_ERRORS: tuple[type[BaseException], ...] = (FperrInputError, ValueError, OSError)


class _Group(click.Group):
    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.Exit:
            raise
        except click.ClickException:
            raise
        except _INPUT_ERRORS as exc:
            msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            click.echo(f"fperr: error: {msg}", err=True)
            ctx.exit(2)


@click.group(cls=_Group)
@click.version_option(package_name="fperr")
def cli() -> None:
    """Floating-point error analysis of neural networks."""


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
    from fractions import Fraction

    from .bits import to_bits, total_bits
    from .formats import get_format
    from .rounding import round_scalar

    fmt = get_format(fmt_name)
    try:
        exact = Fraction(value)
    except (ValueError, ZeroDivisionError):
        raise FperrInputError(f"not a number: {value!r}") from None
    if mode == "stochastic":
        raise FperrInputError("use the Python API for stochastic rounding (it needs a generator)")
    x = float(exact)
    y = round_scalar(exact, fmt, mode)  # type: ignore[arg-type]
    nbits = total_bits(fmt)
    click.echo(f"input:        {value} (nearest float64: {x!r})")
    click.echo(f"{fmt.name}:{' ' * max(1, 13 - len(fmt.name))}{y!r}")
    if not math.isnan(y):
        hex_digits = (nbits + 3) // 4
        click.echo(f"bits:         0x{to_bits(y, fmt):0{hex_digits}x} ({nbits} bits)")
    if math.isfinite(y):
        err = abs(Fraction(y) - exact)
        e = math.frexp(abs(x))[1] - 1 if x != 0 else fmt.emin
        ulp = Fraction(fmt.ulp(e))
        click.echo(f"abs error:    {float(err):.6g}")
        click.echo(f"error (ulps): {float(err / ulp):.6g}")
        if exact != 0:
            click.echo(f"rel error:    {float(err / abs(exact)):.6g}  (u = {fmt.u:.6g})")


@cli.command("schema")
def schema_cmd() -> None:
    """Print the JSON Schema of model.yaml (for editor completion)."""
    import json

    from .spec import json_schema

    click.echo(json.dumps(json_schema(), indent=2))


@cli.command("bound")
@click.option("--model", "model_path", required=True, help="Model spec (YAML).")
@click.option(
    "--inputs", default=None, help="sklearn:NAME or .npy/.npz/.csv (default: spec's data)."
)
@click.option("--labels", default=None, help="Labels (.npy/.csv), optional.")
@click.option("--low", default="binary16", show_default=True, help="Low-precision storage format.")
@click.option("--reference", default="binary32", show_default=True, help="Reference format.")
@click.option("--accumulate", default="binary32", show_default=True, help="Accumulation format.")
@click.option("--reference-operand", default=None, help="Operand format of the reference (tf32).")
@click.option("--truncating-accumulator", is_flag=True, help="Model chopping accumulators.")
@click.option(
    "--method",
    type=click.Choice(["deterministic", "probabilistic"]),
    default="deterministic",
    show_default=True,
)
@click.option("--confidence", default=0.999, show_default=True, help="For --method probabilistic.")
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
def bound_cmd(
    model_path: str,
    inputs: str | None,
    labels: str | None,
    low: str,
    reference: str,
    accumulate: str,
    reference_operand: str | None,
    truncating_accumulator: bool,
    method: str,
    confidence: float,
    on: str,
    as_json: bool,
    out: str | None,
    suggest: float | None,
) -> None:
    """Certify per input that LOW predicts the same class as REFERENCE.

    Exit 0 if every input is certified, 1 if some are not, 2 on bad input.
    """
    import json
    from pathlib import Path

    from . import __version__
    from .arith import Emulated
    from .certify import certify
    from .datasets import model_data
    from .model import load_model

    model = load_model(model_path)
    X, y = model_data(model, inputs, labels)
    acc_rounding = "truncate" if truncating_accumulator else "nearest"
    lo = Emulated.from_names(low, accumulate, acc_rounding=acc_rounding)
    ref = Emulated.from_names(reference, accumulate, reference_operand, acc_rounding=acc_rounding)
    click.echo(f"bounding {X.shape[0]} inputs through {model.name} ...", err=True)
    result = certify(model, X, y, lo, ref, method, confidence, on)
    report = result.to_dict()
    report["summary"]["fperr_version"] = __version__
    advice = None
    if suggest is not None and not result.certified.all():
        from .certify import suggest_fp32

        click.echo("searching layers to keep in binary32 ...", err=True)
        advice = suggest_fp32(model, X, suggest, lo, ref, method, confidence, on)
        report["suggest_fp32"] = advice.to_dict()
    if out:
        Path(out).write_text(json.dumps(report))
    if as_json:
        click.echo(json.dumps(report))
    else:
        click.echo(result.text())
        if advice is not None:
            click.echo(advice.text())
    sys.exit(0 if bool(result.certified.all()) else 1)


@cli.command("check-training")
@click.option("--model", "model_path", required=True, help="Model spec (YAML), dense layers.")
@click.option("--optimizer", type=click.Choice(["adam", "sgd"]), default="adam", show_default=True)
@click.option("--lr", default=1e-3, show_default=True, type=float)
@click.option("--eps", default=1e-8, show_default=True, type=float, help="Adam epsilon.")
@click.option("--format", "fmt", default="binary16", show_default=True, help="Training format.")
@click.option("--inputs", default=None, help="Training inputs (default: the spec's data).")
@click.option("--labels", default=None, help="Labels (.npy/.csv), optional.")
@click.option("--loss-scale", default=1.0, show_default=True, type=float)
def check_training_cmd(
    model_path: str,
    optimizer: str,
    lr: float,
    eps: float,
    fmt: str,
    inputs: str | None,
    labels: str | None,
    loss_scale: float,
) -> None:
    """Predict fp16 training hazards: vanishing eps, lost updates, underflow.

    Exit 0 if no hazard is found, 1 if one is, 2 on bad input.
    """
    from .training import check_training_cli

    text, code = check_training_cli(
        model_path, optimizer, lr, eps, fmt, inputs, labels=labels, loss_scale=loss_scale
    )
    click.echo(text)
    sys.exit(code)


@cli.command("validate")
@click.option("--model", "model_path", default=None, help="Model spec (YAML).")
@click.option("--inputs", default=None, help="Inputs (default: the spec's data).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
@click.option("--out", default=None, help="Write the JSON report here.")
@click.option("--report", default=None, help="Summarize and re-check a stored report instead.")
@click.option("--batch-size", default=None, type=int, help="Large batch size (default: all).")
def validate_cmd(
    model_path: str | None,
    inputs: str | None,
    device: str,
    out: str | None,
    report: str | None,
    batch_size: int | None,
) -> None:
    """Run the model in real PyTorch precisions and check every bound.

    Exit 0 if no observed error exceeds its bound, 1 otherwise, 2 on bad input.
    """
    from .errors import FperrInputError
    from .validate import validate_cli

    if model_path is None:
        raise FperrInputError("--model is required (also with --report, to recompute bounds)")
    text, code = validate_cli(
        model_path, inputs, device, out, report, batch_size,
        log=lambda m: click.echo(m, err=True),
    )  # fmt: skip
    click.echo(text)
    sys.exit(code)


@cli.command("probe")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True)
def probe_cmd(device: str) -> None:
    """Measure how the platform's fp16/bf16 GEMM accumulates; name the model."""
    from .probe import probe_cli

    text, code = probe_cli(device)
    click.echo(text)
    sys.exit(code)


@cli.command("figures")
@click.option("--out", "out_dir", default="paper_figures/out", show_default=True)
@click.option("--small", is_flag=True, help="Fewer inputs: a quick build.")
def figures_cmd(out_dir: str, small: bool) -> None:
    """Build every paper figure (PDF + PNG) and the LaTeX snippets."""
    from pathlib import Path

    try:
        from paper_figures.build import build_all
    except ImportError:
        from .errors import FperrInputError

        raise FperrInputError(
            "paper_figures is not importable: run from the repository root"
        ) from None
    paths = build_all(Path(out_dir), small=small, log=lambda m: click.echo(m, err=True))
    click.echo(f"wrote {len(paths)} files to {out_dir}")


def main() -> None:
    cli(prog_name="fperr")


if __name__ == "__main__":  # pragma: no cover
    main()
