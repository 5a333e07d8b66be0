"""The ``fperr`` command line: a thin shell over the library, no numerics.

Exit codes: 0 clean, 1 findings (e.g. inputs not certified), 2 usage, input or
configuration error -- reported as one line on stderr, never a traceback.
"""

from __future__ import annotations

import math
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
    if math.isfinite(y) or math.isinf(y):
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


def main() -> None:
    cli(prog_name="fperr")


if __name__ == "__main__":  # pragma: no cover
    main()
