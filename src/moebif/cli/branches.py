"""Command ``moebif branches`` (registered on the app of cli.py): the bifurcation diagram of the
N-expert router, its thresholds, and its data."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import CLIError, _emit_json, _params, app


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
    _params(float(experts), 1.0, 1.0, 0.0, experts)  # validates --experts
    if not 1 <= top_k < experts:
        raise CLIError("--top-k", f"must be in 1..{experts - 1} for {experts} experts, got {top_k}")
    if points < 20:
        raise CLIError("--points", f"must be >= 20, got {points}")
    from .._io import atomic_write_bytes, atomic_write_json, check_writable_dir
    from ..experiments.base import jsonable
    from ..experiments.many_branches import diagram, plot_diagram

    folder = check_writable_dir("--out", out)
    dg = diagram(experts, top_k=top_k, points=points)
    stem = folder / f"branches_N{experts}_k{top_k}"

    import io

    import matplotlib.pyplot as plt

    from ..experiments.style import COLORS, figure_style

    with figure_style():
        fig, ax = plt.subplots(figsize=(6.0, 3.0), layout="constrained")
        plot_diagram(ax, dg, colors=COLORS)
        routing = "top-1" if top_k == 1 else f"top-{top_k}"
        ax.set(
            xlabel="feedback a / (γT)",
            ylabel="largest load" if top_k == 1 else "largest load (count / kB)",
            title=f"N = {experts} experts, {routing} routing",
        )
        fig.legend(loc="outside right center", fontsize=6.8)
        for ext in ("png", "svg"):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, dpi=200, metadata={"Date": None} if ext == "svg" else None)
            atomic_write_bytes(stem.with_suffix(f".{ext}"), buf.getvalue())
        plt.close(fig)
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
        _emit_json(summary)
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
