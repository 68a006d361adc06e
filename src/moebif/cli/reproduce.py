"""Command ``moebif reproduce``: the experiments of the paper, with figures, claims, report."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ._common import CLIError, app

# ----------------------------------------------------------------------------------------------
# reproduce


@app.command()
def reproduce(
    only: Annotated[
        str | None, typer.Option("--only", help="Comma-separated experiment ids (default: all).")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Small, fast variant.")] = False,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("results"),
    jobs: Annotated[int, typer.Option("--jobs", help="Worker processes J >= 1.")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Recompute finished experiments.")] = False,
) -> int:
    """Reproduce the paper's experiments into OUT, with figures, data, claims and a report."""
    from .._io import check_writable_dir
    from ..experiments import REGISTRY

    ids = None
    if only is not None:
        ids = [i.strip() for i in only.split(",") if i.strip()]
        unknown = [i for i in ids if i not in REGISTRY]
        if unknown or not ids:
            known = ", ".join(REGISTRY)
            msg = (
                f"unknown experiment id {unknown[0]!r} (known: {known})"
                if unknown
                else ("no ids given")
            )
            raise CLIError("--only", msg)
        ids = list(dict.fromkeys(ids))
    if jobs < 1:
        raise CLIError("--jobs", f"must be >= 1, got {jobs}")
    check_writable_dir("--out", out)

    from rich.console import Console

    from ..experiments.report import claims_table
    from ..experiments.runner import reproduce as run_reproduce

    outcomes = run_reproduce(ids, out=out, quick=quick, jobs=jobs, force=force)
    claims = [c for o in outcomes for c in o.claims]
    con = Console()
    con.print(claims_table(claims))
    con.print(f"report: {out / 'report.html'}   claims: {out / 'claims.json'}")
    failed = [o.id for o in outcomes if o.status == "failed"]
    if failed:
        print(f"moebif: error: experiments failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0
