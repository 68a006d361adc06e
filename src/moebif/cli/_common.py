"""What every command shares: the typer app, the one-line bad-input error and the JSON printer.

Contract (SPEC section 4): ``--json`` prints exactly one JSON object on stdout; bad input exits
with code 2 and one line on stderr naming the argument, never a traceback.
"""

from __future__ import annotations

import json
import math
import sys
from typing import Annotated

import typer

from .._version import __version__
from ..params import ParameterError, RouterParams

app = typer.Typer(
    name="moebif",
    help="Bifurcations, hysteresis and collapse of adaptive softmax MoE routers (Kiselev 2026).",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# names of library fields -> the CLI option that sets them, for error messages
OPTION_OF = {
    "a": "--a",
    "gamma": "--gamma",
    "T": "--T",
    "h": "--h",
    "n_experts": "--experts",
    "eta": "--eta",
    "batch": "--batch",
    "steps": "--steps",
    "runs": "--runs",
    "rho": "--rho",
    "rate": "--rate",
    "y0": "--y0",
    "seed": "--seed",
}


class CLIError(Exception):
    """Bad input detected by a command: reported as one line, exit code 2."""

    def __init__(self, option: str, message: str):
        super().__init__(f"{option}: {message}")
        self.option, self.message = option, message


def router_params(a: float, gamma: float, T: float, h: float, experts: int) -> RouterParams:
    try:
        return RouterParams(a=a, gamma=gamma, T=T, h=h, n_experts=experts)
    except ParameterError as e:
        raise CLIError(OPTION_OF.get(e.name, e.name), str(e).split(": ", 1)[1]) from None


def finite(option: str, value: float) -> float:
    if not math.isfinite(value):
        raise CLIError(option, f"must be finite, got {value}")
    return value


def emit_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, allow_nan=False) + "\n")


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"moebif {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print version."),
    ] = False,
) -> None:
    """moebif: the bifurcation model of adaptive softmax routers, exact and simulated."""
