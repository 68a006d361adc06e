"""Commands ``moebif theory`` and ``moebif fold-curve``: closed forms of the mean-field router."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..model.thresholds import theory_report
from ._common import CLIError, app, emit_json, router_params

# ----------------------------------------------------------------------------------------------
# theory


@app.command()
def theory(
    a: Annotated[float, typer.Option("--a", help="Reinforcement strength a >= 0.")],
    gamma: Annotated[float, typer.Option("--gamma", help="Forgetting gamma > 0.")],
    T: Annotated[float, typer.Option("--T", help="Softmax temperature T > 0.")],
    h: Annotated[float, typer.Option("--h", help="External skew h = b1 - b2.")] = 0.0,
    experts: Annotated[int, typer.Option("--experts", help="Number of experts N >= 2.")] = 2,
    top_k: Annotated[
        int, typer.Option("--top-k", help="Experts per token K (top-k routing), 1 <= K < N.")
    ] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Equilibria, stability, thresholds and regime of the mean-field router."""
    p = router_params(a, gamma, T, h, experts)
    if not 1 <= top_k < experts:
        raise CLIError("--top-k", f"must be in 1..{experts - 1} for {experts} experts, got {top_k}")
    rep = theory_report(p, top_k)
    if as_json:
        emit_json(rep)
        return
    from rich.console import Console
    from rich.table import Table

    con = Console()
    if top_k > 1:
        con.print(
            f"a={p.a:g}  gamma={p.gamma:g}  T={p.T:g}  N={p.n_experts}  top-{top_k} routing   "
            f"linear threshold a_lin = {rep['critical_a']:.6g}   kappa = {rep['kappa']:.4g}"
        )
        con.print(
            f"regime: [bold]{rep['regime']}[/bold]   collapse threshold a_SN = "
            f"{rep['collapse_a']:.6g} ({rep['collapse_winners']} winner(s))"
        )
        eig = rep["uniform_state_eigenvalues"]
        con.print(
            f"uniform state: eigenvalue {eig['common']:.4g} (common mode), "
            f"{eig['contrast']:.4g} x{eig['contrast_multiplicity']} (contrast modes)"
        )
        return
    con.print(
        f"a={p.a:g}  gamma={p.gamma:g}  T={p.T:g}  h={p.h:g}  N={p.n_experts}   "
        f"critical a = N gamma T = {rep['critical_a']:g}   kappa = {rep['kappa']:.4g}"
    )
    line = f"regime: [bold]{rep['regime']}[/bold]"
    if p.n_experts == 2:
        line += f"   hysteresis half-width H(a) = {rep['hysteresis_halfwidth']:.6g}"
    else:
        line += f"   collapse threshold a_SN = {rep['collapse_a']:.6g}"
    con.print(line)
    eig = rep["uniform_state_eigenvalues"]
    con.print(
        f"uniform state: eigenvalue {eig['common']:.4g} (common mode), "
        f"{eig['contrast']:.4g} x{eig['contrast_multiplicity']} (contrast modes)"
    )
    table = Table(title="equilibria" if p.n_experts == 2 else "symmetric equilibria (b = 0)")
    if p.n_experts == 2:
        cols = ("y = r1 - r2", "u = tanh(y/2T)", "eigenvalue F_y", "stable")
        for c in cols:
            table.add_column(c, justify="right")
        for e in rep["equilibria"]:
            table.add_row(
                f"{e['y']:.10g}", f"{e['u']:.10g}", f"{e['eigenvalue']:.6g}", str(e["stable"])
            )
    else:
        for c in ("winners m", "score gap d", "max load", "max eigenvalue", "stable"):
            table.add_column(c, justify="right")
        for e in rep["equilibria"]:
            table.add_row(
                str(e["winners"]),
                f"{e['gap']:.6g}",
                f"{e['max_load']:.6g}",
                f"{e['eigenvalue']:.6g}",
                str(e["stable"]),
            )
    con.print(table)


# ----------------------------------------------------------------------------------------------
# fold-curve


@app.command("fold-curve")
def fold_curve_cmd(
    gamma: Annotated[float, typer.Option("--gamma", help="Forgetting gamma > 0.")],
    T: Annotated[float, typer.Option("--T", help="Softmax temperature T > 0.")],
    q_max: Annotated[float, typer.Option("--q-max", help="Parameter range |q| <= Q.")] = 2.0,
    points: Annotated[int, typer.Option("--points", help="Number of points P >= 2.")] = 201,
    csv: Annotated[
        Path | None, typer.Option("--csv", help="Write the curve to FILE as CSV.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """The fold (saddle-node) curve (16) in the (a, h) plane, q in [-Q, Q]."""
    import numpy as np

    from ..model import two_expert as theory

    router_params(2.0 * gamma * T if gamma > 0 and T > 0 else 0.0, gamma, T, 0.0, 2)
    if not (math.isfinite(q_max) and q_max > 0):
        raise CLIError("--q-max", f"must be finite and > 0, got {q_max}")
    if q_max > 300:
        raise CLIError("--q-max", f"must be <= 300 (cosh^2 q overflows beyond), got {q_max}")
    if points < 2:
        raise CLIError("--points", f"must be >= 2, got {points}")
    if csv is not None and as_json:
        raise CLIError("--csv", "use either --csv or --json, not both")
    q = np.linspace(-q_max, q_max, points)
    a, hh = theory.fold_curve(q, gamma, T)
    y = 2.0 * T * q
    if csv is not None:
        from .._io import atomic_write_text, check_writable_file

        check_writable_file("--csv", csv)
        rows = ["q,a,h,y"] + [
            f"{qi!r},{ai!r},{hi!r},{yi!r}" for qi, ai, hi, yi in zip(q, a, hh, y, strict=True)
        ]
        atomic_write_text(csv, "\n".join(rows) + "\n")
        print(f"wrote {points} points to {csv}", file=sys.stderr)
        return
    if as_json:
        emit_json(
            {
                "params": {"gamma": gamma, "T": T},
                "cusp": {"a": 2.0 * gamma * T, "h": 0.0},
                "q": q.tolist(),
                "a": a.tolist(),
                "h": hh.tolist(),
                "y": y.tolist(),
            }
        )
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        title=f"fold curve (16), gamma={gamma:g}, T={T:g}; cusp at a={2 * gamma * T:g}, h=0"
    )
    for c in ("q", "a(q)", "h(q)", "y = 2Tq"):
        table.add_column(c, justify="right")
    idx = np.unique(np.linspace(0, points - 1, min(points, 11)).round().astype(int))
    for i in idx:
        table.add_row(f"{q[i]:.4g}", f"{a[i]:.6g}", f"{hh[i]:.6g}", f"{y[i]:.4g}")
    Console().print(table)
