"""Command ``moebif diagnose LOG`` (registered on the app of cli.py): read a router log, run the
collapse monitor on every layer, print a table, write JSON and a figure."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from ._common import CLIError, app, emit_json


@app.command()
def diagnose(
    log: Annotated[Path, typer.Argument(help="Router log: .csv, .jsonl, .npy or .npz.")],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("diagnose"),
    window: Annotated[
        str, typer.Option("--window", help="Fitting window in steps, or 'auto'.")
    ] = "auto",
    top_k: Annotated[int, typer.Option("--top-k", help="Experts per token K >= 1.")] = 1,
    threshold: Annotated[
        float | None,
        typer.Option(
            "--threshold", help="kappa_hat level of approaching-threshold (default 0.82)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Diagnose a training run from its per-step expert counts: routing metrics, the stability
    ratio kappa_hat with its interval, eta*gamma, B_eff, the regime and the alarms, per layer.
    Writes OUT/diagnose.json, OUT/diagnose.png and .svg."""
    from .._io import atomic_write_json, check_writable_dir
    from ..monitor import LayerMonitor, LogError, load_fractions, read_log
    from ..monitor.plot import diagnose_figure
    from ..monitor.window import auto_window

    if window != "auto":
        try:
            w = int(window)
        except ValueError:
            raise CLIError("--window", f"must be an integer or 'auto', got {window!r}") from None
        if w < 32:
            raise CLIError("--window", f"must be >= 32 steps, got {w}")
    if top_k < 1:
        raise CLIError("--top-k", f"must be >= 1, got {top_k}")
    if threshold is not None and (not math.isfinite(threshold) or not 0.0 < threshold < 1.0):
        raise CLIError("--threshold", f"must be in (0, 1), got {threshold}")
    try:
        layers = read_log(log)
    except LogError as e:
        raise CLIError("LOG", str(e)) from None
    folder = check_writable_dir("--out", out)
    results, table = [], []
    for name, (steps, counts) in layers.items():
        n = counts.shape[1]
        if top_k >= n:
            raise CLIError("--top-k", f"must be < {n} experts (layer {name!r}), got {top_k}")
        if counts.shape[0] < 64:
            raise CLIError("LOG", f"layer {name!r}: need >= 64 steps, got {counts.shape[0]}")
        rec = None
        if window == "auto":
            w, eg, rec = auto_window(counts, n, top_k)
        else:
            w, eg = min(int(window), counts.shape[0]), None
        # the library's tested rule unless the user overrides its level
        rule = {} if threshold is None else {"threshold": threshold}
        mon = LayerMonitor(n, top_k=top_k, window=w, name=name, eta_gamma=eg, history=None, **rule)
        mon.update_many(counts)
        summ = mon.summary()
        summ["window_auto"] = window == "auto"
        summ["window_recommended"] = rec
        results.append(
            {
                "layer": name,
                "steps": steps,
                "loads": load_fractions(counts),
                "monitor": mon,
                "summary": summ,
            }
        )
        table.append(summ)
    files = diagnose_figure(results, folder / "diagnose")
    atomic_write_json(folder / "diagnose.json", {"log": str(log), "layers": table})
    files.append(str(folder / "diagnose.json"))
    if as_json:
        emit_json({"log": str(log), "layers": table, "files": files})
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"moebif diagnose {log}")
    for col in (
        "layer",
        "N",
        "steps",
        "CV",
        "MaxVio",
        "Neff",
        "dead",
        "κ̂ [95%]",
        "ηγ",
        "B_eff",
        "regime",
        "alarms",
    ):
        t.add_column(col)
    for s in table:
        m, e = s["metrics"], s["estimate"]
        if e is None:
            kap, eg, be, reg = "-", "-", "-", "no fit"
        else:
            lo = "?" if e["kappa_lo"] is None else f"{e['kappa_lo']:.2f}"
            kap = f"{e['kappa']:.3f} [{lo}, {e['kappa_hi']:.2f}]"
            eg, be, reg = f"{e['eta_gamma']:.3g}", f"{e['b_eff']:.3g}", s.get("regime", "-")
        kinds = sorted({a["kind"] for a in s["alarms"]})
        t.add_row(
            str(s["layer"]),
            str(s["n_experts"]),
            str(s["steps"]),
            f"{m['cv']:.2f}",
            f"{m['max_vio']:.2f}",
            f"{m['n_eff']:.1f}",
            f"{m['dead']:.0%}",
            kap,
            eg,
            be,
            reg,
            ", ".join(kinds) or "none",
        )
    con = Console(width=None if sys.stdout.isatty() else 160)
    con.print(t)
    for s in table:
        for a in s["alarms"]:
            con.print(
                f"step {a['step']} layer {s['layer']}: {a['kind']}: {a['message']}", markup=False
            )
    con.print("wrote " + ", ".join(files), markup=False)
