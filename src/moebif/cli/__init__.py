"""The ``moebif`` command: parses, validates, calls the library, prints.

One module per command group (``theory``, ``simulate``, ``branches``, ``diagnose``,
``reproduce``, ``sweep``, ``explore``, ``advise``); each registers its commands on the app of
:mod:`._common` and imports nothing from the others. Heavy modules (numba kernels, matplotlib,
torch) are imported inside the commands that need them.
"""

from __future__ import annotations

import sys

import typer

from .._io import OutputError
from ..params import ParameterError
from . import advise as advise
from . import branches as branches
from . import diagnose as diagnose
from . import explore as explore
from . import reproduce as reproduce
from . import simulate as simulate
from . import sweep as sweep
from . import theory as theory
from ._common import OPTION_OF, CLIError, app, emit_json

__all__ = ["app", "main"]

# ----------------------------------------------------------------------------------------------
# entry point


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: runs the app and turns bad input into exit code 2."""
    args = sys.argv[1:] if argv is None else list(argv)
    as_json = "--json" in args[: args.index("--")] if "--" in args else "--json" in args
    try:
        rv = app(args=args, prog_name="moebif", standalone_mode=False)
    except typer.TyperException as e:  # usage errors of the parser: bad value, unknown option
        msg = _one_line(e.format_message())
        if getattr(e, "exit_code", 2) != 2:
            print(f"moebif: error: {msg}", file=sys.stderr)
            return int(e.exit_code)
        _fail(msg, _usage_argument(e), as_json)
    except (CLIError, ParameterError, OutputError) as e:
        if isinstance(e, ParameterError) and e.name in OPTION_OF:
            e = CLIError(OPTION_OF[e.name], str(e).split(": ", 1)[1])
        arg = getattr(e, "option", None) or getattr(e, "name", None)
        _fail(_one_line(str(e)), arg, as_json)
    except (typer.Abort, KeyboardInterrupt):
        print("moebif: interrupted", file=sys.stderr)
        return 130
    except typer.Exit as e:
        return e.exit_code
    return rv if isinstance(rv, int) else 0


def _usage_argument(e) -> str | None:
    """The option or argument a parser error is about (click's ``param``), if it says."""
    param = getattr(e, "param", None)
    if param is not None:
        opts = getattr(param, "opts", None) or [getattr(param, "name", None)]
        return max(opts, key=len) if opts and opts[0] else None
    return getattr(e, "option_name", None)


def _fail(message: str, argument: str | None = None, as_json: bool = False) -> None:
    """Bad input: one line on stderr, exit code 2; with ``--json`` also the error as the one JSON
    object on stdout, ``{"error": {"argument": ..., "message": ...}}``."""
    print(f"moebif: error: {message}", file=sys.stderr)
    if as_json:
        if argument and message.startswith(f"{argument}: "):
            message = message[len(argument) + 2 :]
        emit_json({"error": {"argument": argument, "message": message}})
    raise SystemExit(2)
