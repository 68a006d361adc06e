"""Command ``moebif advise``: the regime of a router and, for each balancing scheme, the minimal
strength that rules its collapse out and what that costs (:func:`moebif.model.balancer_theory.
advise`; field definitions in docs/balancing.md)."""

from __future__ import annotations

import math
from typing import Annotated

import typer

from ._common import CLIError, app, emit_json, finite, router_params


@app.command()
def advise(
    experts: Annotated[int, typer.Option("--experts", help="Number of experts N >= 2.")],
    a: Annotated[float, typer.Option("--a", help="Reinforcement strength a >= 0.")],
    gamma: Annotated[float, typer.Option("--gamma", help="Forgetting gamma > 0.")],
    T: Annotated[float, typer.Option("--T", help="Softmax temperature T > 0.")],
    top_k: Annotated[int, typer.Option("--top-k", help="Experts per token, 1 <= K < N.")] = 1,
    lr: Annotated[
        float,
        typer.Option("--lr", help="Router step eta: one step advances ODE time by LR."),
    ] = 1e-3,
    batch: Annotated[
        int, typer.Option("--batch", help="Tokens a step B, for batch-dependent costs.")
    ] = 512,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Which balancer, and how strong, rules collapse out (N experts, top-k)."""
    p = router_params(a, gamma, T, 0.0, experts)
    if not 1 <= top_k < experts:
        raise CLIError("--top-k", f"must be in 1..{experts - 1} for {experts} experts, got {top_k}")
    finite("--lr", lr)
    if lr <= 0:
        raise CLIError("--lr", f"must be > 0, got {lr:g}")
    if batch < 1:
        raise CLIError("--batch", f"must be >= 1, got {batch}")
    from ..model.balancer_theory import advise as advise_report

    report = advise_report(p, top_k, lr=lr, batch=batch)
    if as_json:
        emit_json(_clean(report))
        return
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(
        f"N={experts} top-{top_k} a={a:g} gamma={gamma:g} T={T:g}: regime [bold]"
        f"{report['regime']}[/bold]  (collapse_a = {report['collapse_a']:.4g}, "
        f"critical_a = {report['critical_a']:.4g}, kappa = {report['kappa']:.3f})"
    )
    tab = Table(show_edge=False, header_style="bold")
    for col in ("scheme", "minimal strength", "skew response", "dropped", "note"):
        tab.add_column(col)
    for name, e in report["balancers"].items():
        cost = e.get("cost", {})
        s = e["strength"]
        note = ""
        if e.get("rho_rule") is not None:
            note = f"rho rule {e['rho_rule']:.3g}"
        if "chattering_std" in cost:
            note = f"chattering sd {cost['chattering_std']:.2g} ({cost['chattering_regime']})"
        tab.add_row(
            name,
            "not reachable" if s is None else f"{s:.4g}",
            _fmt(cost.get("skew_response")),
            _fmt(cost.get("dropped_fraction")),
            note,
        )
    con.print(tab)
    con.print(
        "strength: loss coefficients (SGD at the router's step); capacity: the largest cf that "
        "still rules collapse out; bias and adam: per-step rates; quantile, sinkhorn, "
        "expert-choice: on/off. --json for the full report (docs/balancing.md)."
    )


def _fmt(x) -> str:
    return "" if x is None else f"{x:.3g}"


def _clean(obj):
    """JSON-ready: numpy scalars to floats, non-finite numbers to null."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, str | int):
        return obj
    try:
        x = float(obj)
    except (TypeError, ValueError):
        return obj
    return x if math.isfinite(x) else None
