"""Command ``moebif reproduce``: the experiments of the paper, with figures, claims, report; at
one seed or several; or the claims of a finished run re-derived from its saved data."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ._common import CLIError, app

# ----------------------------------------------------------------------------------------------
# reproduce


def _ids(only: str | None) -> list[str] | None:
    from ..experiments import REGISTRY

    if only is None:
        return None
    ids = [i.strip() for i in only.split(",") if i.strip()]
    unknown = [i for i in ids if i not in REGISTRY]
    if unknown or not ids:
        known = ", ".join(REGISTRY)
        msg = (
            f"unknown experiment id {unknown[0]!r} (known: {known})" if unknown else "no ids given"
        )
        raise CLIError("--only", msg)
    return list(dict.fromkeys(ids))


@app.command()
def reproduce(
    only: Annotated[
        str | None, typer.Option("--only", help="Comma-separated experiment ids (default: all).")
    ] = None,
    quick: Annotated[bool, typer.Option("--quick", help="Small, fast variant.")] = False,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("results"),
    jobs: Annotated[int, typer.Option("--jobs", help="Worker processes J >= 1.")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Recompute finished experiments.")] = False,
    seed: Annotated[
        int | None,
        typer.Option(
            "--seed",
            help="Base seed K >= 0: every experiment derives its seed from K "
            "(default: each experiment's own seed).",
        ),
    ] = None,
    seeds: Annotated[
        int | None,
        typer.Option(
            "--seeds",
            help="Run every experiment at S >= 1 seeds (OUT/seed-0 ... OUT/seed-<S-1>); a claim "
            "holds only if it holds at every seed with a margin of 2 seed spreads or more; "
            "otherwise it is fragile (some seeds, or a thinner margin) or does not hold.",
        ),
    ] = None,
    recheck: Annotated[
        Path | None,
        typer.Option(
            "--recheck",
            help="Re-derive every claim of the finished run in DIR from its saved data.json and "
            "config.json (no recomputation), rewrite its claims and report, say what changed.",
        ),
    ] = None,
) -> int:
    """Reproduce the paper's experiments into OUT, with figures, data, claims and a report."""
    from .._io import check_writable_dir

    ids = _ids(only)
    if recheck is not None:
        given = [
            name
            for name, v in (("--quick", quick), ("--force", force), ("--seed", seed is not None))
            if v
        ] + (["--seeds"] if seeds is not None else [])
        if given:
            raise CLIError("--recheck", f"cannot be combined with {given[0]} (nothing is run)")
        return _recheck(recheck, ids)
    if jobs < 1:
        raise CLIError("--jobs", f"must be >= 1, got {jobs}")
    if seed is not None and seed < 0:
        raise CLIError("--seed", f"must be >= 0, got {seed}")
    if seeds is not None and seeds < 1:
        raise CLIError("--seeds", f"must be >= 1, got {seeds}")
    check_writable_dir("--out", out)

    from rich.console import Console

    from ..experiments.report import claims_table
    from ..experiments.runner import reproduce as run_reproduce

    outcomes = run_reproduce(
        ids, out=out, quick=quick, jobs=jobs, force=force, seed=seed, seeds=seeds
    )
    con = Console()
    if seeds is None:
        claims = [c for o in outcomes for c in o.claims]
    else:
        import json

        wanted = {o.id for o in outcomes}
        claims = [
            c for c in json.loads((out / "claims.json").read_text()) if c["experiment"] in wanted
        ]
    con.print(claims_table(claims))
    con.print(f"report: {out / 'report.html'}   claims: {out / 'claims.json'}")
    failed = sorted({o.id for o in outcomes if o.status == "failed"})
    if failed:
        print(f"moebif: error: experiments failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _recheck(folder: Path, ids: list[str] | None) -> int:
    import json

    from rich.console import Console

    from ..experiments.report import claims_table
    from ..experiments.runner import RecheckError, recheck

    try:
        outcomes = recheck(folder, ids)
    except RecheckError as e:
        raise CLIError("--recheck", str(e)) from None
    con = Console()
    claims = json.loads((folder / "claims.json").read_text())
    if ids:
        claims = [c for c in claims if c["experiment"] in ids]
    con.print(claims_table(claims))
    n_changed = 0
    for o in outcomes:
        where = f" (seed {o.seed_index})" if o.seed_index is not None else ""
        if o.error:
            n_changed += 1
            print(f"[{o.id}]{where} cannot re-derive its claims: {o.error}", file=sys.stderr)
            continue
        for what, names in (("changed", o.changed), ("new", o.added), ("gone", o.removed)):
            for name in names:
                n_changed += 1
                print(f"[{o.id}]{where} claim {name}: {what}", file=sys.stderr)
    n = sum(len(o.claims) for o in outcomes)
    holds = all(c["holds"] for c in claims)
    print(
        f"rechecked {n} claims of {len({o.id for o in outcomes})} experiments in {folder}: "
        + (f"{n_changed} changed" if n_changed else "none changed")
        + ("" if holds else "; some claims do not hold"),
        file=sys.stderr,
    )
    con.print(f"report: {folder / 'report.html'}   claims: {folder / 'claims.json'}")
    return 0 if n_changed == 0 and holds else 1
