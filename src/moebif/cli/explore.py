"""Command ``moebif explore``: the interactive web explorer (needs the ``explore`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import CLIError, app


@app.command()
def explore(
    port: Annotated[
        int | None,
        typer.Option(
            "--port",
            help="Port on 127.0.0.1 (0: any free port; default 8765, or a free one if taken).",
        ),
    ] = None,
    log: Annotated[
        Path | None,
        typer.Option(
            "--log",
            help="A diagnose.json (or `moebif diagnose --json` output) or a router log "
            "(.csv, .jsonl, .npy, .npz): its kappa_hat path is drawn on the regime diagram.",
        ),
    ] = None,
    top_k: Annotated[
        int, typer.Option("--top-k", help="Experts per token K of a router log (default 1).")
    ] = 1,
) -> None:
    """Interactive explorer of the router's bifurcations in the browser: sliders, linked views,
    trajectories, balancers and the monitor's kappa_hat path. Serves on the loopback only and
    prints the URL."""
    try:
        import starlette  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError:
        raise CLIError(
            "explore", "needs the explore extra: pip install 'moebif[explore]'"
        ) from None
    from ..explore.logs import read_monitor_log
    from ..explore.server import PortError, serve
    from ..monitor import LogError

    if top_k < 1:
        raise CLIError("--top-k", f"must be >= 1, got {top_k}")
    monitor = None
    if log is not None:
        try:
            monitor = read_monitor_log(log, top_k=top_k)
        except LogError as e:
            raise CLIError("--log", str(e)) from None
    try:
        serve(port=port, monitor=monitor)
    except PortError as e:
        raise CLIError("--port", str(e)) from None
    _exit_now()


def _exit_now() -> None:
    """After a stop (SIGTERM, Ctrl+C) a request abandoned mid-computation may still hold a
    worker thread that Python would wait for at exit: nothing is left to save, so leave now."""
    import os
    import sys
    import threading

    busy = [t for t in threading.enumerate() if t is not threading.main_thread() and not t.daemon]
    if busy:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
