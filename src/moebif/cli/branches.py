"""Command ``moebif branches`` : the bifurcation diagram of the
N-expert router, its thresholds, and its data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import CLIError, app, emit_json, router_params


@app.command()
def branches(
    experts: Annotated[int, typer.Option("--experts", help="Number of experts N >= 2.")],
    top_k: Annotated[
        int, typer.Option("--top-k", help="Experts per token K (top-k routing), 1 <= K < N.")
    ] = 1,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("branches"),
    points: Annotated[int, typer.Option("--points", help="Samples per branch P >= 20.")] = 400,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Bifurcation diagram of the N-expert router: every symmetric equilibrium ("m winners")
    against a / (gamma T), stable solid, unstable dashed, with the linear threshold and the
    saddle-node a_SN. Writes OUT/branches_N<N>_k<K>.png, .svg and .json (a in units of
    gamma T)."""
    router_params(float(experts), 1.0, 1.0, 0.0, experts)  # validates --experts
    if not 1 <= top_k < experts:
        raise CLIError("--top-k", f"must be in 1..{experts - 1} for {experts} experts, got {top_k}")
    if points < 20:
        raise CLIError("--points", f"must be >= 20, got {points}")
    from .._io import atomic_write_json, check_writable_dir, jsonable
    from ..experiments.many_branches import diagram_figure
    from ..model.diagram import branch_diagram
    from ..style import save_figure

    folder = check_writable_dir("--out", out)
    dg = branch_diagram(experts, top_k=top_k, points=points)
    stem = folder / f"branches_N{experts}_k{top_k}"
    save_figure(diagram_figure(dg), stem)
    atomic_write_json(stem.with_suffix(".json"), jsonable(dg))
    files = [str(stem.with_suffix(x)) for x in (".png", ".svg", ".json")]
    summary = {
        "n_experts": experts,
        "top_k": top_k,
        "critical_a": dg["linear_threshold"],
        "collapse_a": dg["collapse_threshold"],
        "units": "gamma T",
        "files": files,
    }
    if as_json:
        emit_json(summary)
        return
    from rich.console import Console

    con = Console()
    a_sn, a_lin = dg["collapse_threshold"], dg["linear_threshold"]
    between = "metastable in between" if a_sn < a_lin else "no metastable window (pitchfork)"
    con.print(
        f"N = {experts}, top-{top_k}: stable collapse from a_SN = {a_sn:.6g} gamma T; "
        f"balanced state unstable from {a_lin:.6g} gamma T; {between}"
    )
    con.print("wrote " + ", ".join(files))
