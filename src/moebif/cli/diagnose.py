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
    log: Annotated[
        Path,
        typer.Argument(
            help="Router log: .jsonl (with its rotated .1, .2, ... files), .csv, .npy, .npz, "
            "or a directory holding one log."
        ),
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("diagnose"),
    window: Annotated[
        str,
        typer.Option(
            "--window",
            help="Fitting window: 'online' (the monitor's own automatic window, as "
            "RouterMonitor uses during training: the same alarms), 'auto' (chosen from the "
            "whole log), or a number of steps.",
        ),
    ] = "online",
    top_k: Annotated[
        int | None,
        typer.Option(
            "--top-k",
            help="Experts per token K >= 1 (default: from the log's header; 1 for a log "
            "without one).",
        ),
    ] = None,
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
    N and top-k come from the log's header. Writes OUT/diagnose.json, OUT/diagnose.png and
    .svg."""
    from .._io import atomic_write_json, check_writable_dir
    from ..monitor import DiagnoseError
    from ..monitor import diagnose as run_diagnose
    from ..monitor.plot import diagnose_figure
    from ..monitor.profile import ACTIVE_KINDS

    try:
        d = run_diagnose(log, window=window, top_k=top_k, threshold=threshold)
    except DiagnoseError as e:
        raise CLIError(e.argument, e.message) from None
    folder = check_writable_dir("--out", out)
    for line in d.warnings:
        sys.stderr.write(f"warning: {line}\n")
    results = [
        {"layer": x.name, "steps": x.steps, "loads": x.loads, "monitor": x.monitor,
         "summary": x.summary}
        for x in d.layers
    ]  # fmt: skip
    files = diagnose_figure(results, folder / "diagnose")
    obj = d.to_dict()
    table = obj["layers"]
    atomic_write_json(folder / "diagnose.json", obj)
    files.append(str(folder / "diagnose.json"))
    if as_json:
        emit_json({**obj, "files": files})
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"moebif diagnose {log}")
    for col in (
        "layer",
        "N",
        "steps",
        "CV",
        "MaxVio",
        "Neff",
        "dead/ref",
        "κ̂ [95%]",
        "ηγ",
        "B_eff",
        "state",
        "α* [95%]",
        "α",
        "collapse in",
        "active alarms",
        "raised",
    ):
        t.add_column(col)
    for s in table:
        m, e = s["metrics"], s["estimate"]
        state = str(s.get("state", s.get("regime", "-")))
        if e is None:
            kap, eg, be = "-", "-", "-"
        else:
            kap = f"{_num(e.get('kappa'), '.3f')} [{_num(e.get('kappa_lo'), '.2f')}, "
            kap += f"{_num(e.get('kappa_hi'), '.2f')}]"
            eg = _num(e.get("eta_gamma"), ".3g")
            be = _num((s.get("identifiable") or {}).get("b_eff"), ".3g")
        if state in ACTIVE_KINDS:
            kap = "-"  # the last fits describe the collapse, not a balanced state
        ref = s.get("reference")
        dead = "-" if ref is None else f"{len(ref['dead_now'])}/{ref['alive']}"
        fc = s.get("forecast") or {}
        crit, sc = fc.get("critical_coefficient"), fc.get("steps_to_collapse")
        astar = when = "-"
        if crit is not None:
            astar = f"{_num(crit['value'], '.3g')} [{_num(crit['lo'], '.2g')}, "
            astar += f"{_num(crit['hi'], '.2g')}]"
        if sc is not None:
            when = f"{_num(sc['value'], '.0f')} [{_num(sc['lo'], '.0f')}, "
            when += f"{_num(sc['hi'], '.0f')}]"
        t.add_row(
            Text(str(s["layer"])),
            str(s["n_experts"]),
            str(s["steps"]),
            _num(m.get("cv"), ".2f"),
            _num(m.get("max_vio"), ".2f"),
            _num(m.get("n_eff"), ".1f"),
            dead,
            kap,
            eg,
            be,
            state,
            astar,
            _num(fc.get("coefficient"), ".3g"),
            when,
            ", ".join(a["kind"] for a in s.get("active", [])) or "none",
            _raised(s["alarms"]),
        )
    con = Console(width=None if sys.stdout.isatty() else 160)
    con.print(t)
    for s in table:
        for line in layer_report(s):
            con.print(line, markup=False)
    con.print("wrote " + ", ".join(files), markup=False)


def _raised(alarms: list[dict]) -> str:
    """The kinds raised over the run, in order of first appearance, with their counts."""
    counts: dict[str, int] = {}
    for a in alarms:
        counts[a["kind"]] = counts.get(a["kind"], 0) + 1
    return ", ".join(k if n == 1 else f"{k} x{n}" for k, n in counts.items()) or "none"


def layer_report(s: dict) -> list[str]:
    """The lines printed under the table for one layer summary (:meth:`LayerMonitor.summary`):
    its current state, its long-term reference and dead experts, and the alarm history, each
    alarm marked as active now or cleared."""
    from ..monitor.profile import ACTIVE_KINDS, RECOVERED

    name, state = s["layer"], str(s.get("state", s.get("regime", "-")))
    active = {a["kind"]: a for a in s.get("active", [])}
    lines = []
    if state in ACTIVE_KINDS:
        since = active[state]["step"] if state in active else "?"
        lines.append(
            f"layer {name}: {state} since step {since} (kappa_hat not shown: the fits of "
            "this window describe the collapse, not a balanced state)"
        )
    else:
        reason = f" ({s['reason']})" if s.get("reason") else ""
        lines.append(f"layer {name}: {state}{reason}")
    ref = s.get("reference")
    if ref is None:
        lines.append("  reference profile: none yet (the load profile has not settled)")
    else:
        drift = "" if ref.get("drift") is None else f", now {ref['drift']:+.2f} from it"
        dead = ref["dead_now"]
        gone = (
            f"; dead now: {len(dead)} of them (expert {', '.join(map(str, dead))})"
            if dead
            else "; none of them dead now"
        )
        lines.append(
            f"  reference profile: frozen at step {ref['step']}, max-load excess "
            f"{ref['max_load_excess']:.2f}{drift}; {ref['alive']} experts alive in it{gone}"
        )
    # a collapse-type alarm is cleared by the next recovered; the others are active while their
    # last raise is in the active list
    recovered = [a["step"] for a in s["alarms"] if a["kind"] == RECOVERED]
    for a in s["alarms"]:
        if a["kind"] == RECOVERED:
            tag = ""
        elif a["kind"] in active and active[a["kind"]]["step"] == a["step"]:
            tag = " [active]"
        elif a["kind"] in ACTIVE_KINDS:
            later = [r for r in recovered if r >= a["step"]]
            tag = f" [cleared at step {later[0]}]" if later else ""
        else:
            tag = " [past]"
        lines.append(f"  step {a['step']}: {a['kind']}{tag}: {a['message']}")
    return lines


def _num(x, spec: str) -> str:
    """``x`` formatted, or ``?`` when the estimator gave no finite number."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "?"
    return format(v, spec) if math.isfinite(v) else "?"
