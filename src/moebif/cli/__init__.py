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
from ._common import OPTION_OF, CLIError, app

__all__ = ["app", "main"]

# ----------------------------------------------------------------------------------------------
# entry point


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: runs the app and turns bad input into exit code 2."""
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        rv = app(args=args, prog_name="moebif", standalone_mode=False)
    except typer.TyperException as e:  # usage errors of the parser: bad value, unknown option
        msg = _one_line(e.format_message())
        if getattr(e, "exit_code", 2) != 2:
            print(f"moebif: error: {msg}", file=sys.stderr)
            return int(e.exit_code)
        _fail(msg)
    except (CLIError, ParameterError, OutputError) as e:
        if isinstance(e, ParameterError) and e.name in OPTION_OF:
            e = CLIError(OPTION_OF[e.name], str(e).split(": ", 1)[1])
        _fail(_one_line(str(e)))
    except (typer.Abort, KeyboardInterrupt):
        print("moebif: interrupted", file=sys.stderr)
        return 130
    except typer.Exit as e:
        return e.exit_code
    return rv if isinstance(rv, int) else 0


def _fail(message: str) -> None:
    print(f"moebif: error: {message}", file=sys.stderr)
    raise SystemExit(2)
