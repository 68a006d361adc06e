"""Command ``moebif diagnose LOG`` (registered on the app of cli.py): read a router log, run the
collapse monitor on every layer, print a table, write JSON and a figure."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer

from ._common import CLIError, app, emit_json

MIN_STEPS = 64


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
    from ..monitor import LayerMonitor, LogError, load_fractions, read_log
    from ..monitor.plot import diagnose_figure
    from ..monitor.profile import ACTIVE_KINDS
    from ..monitor.window import auto_window

    if window not in ("auto", "online"):
        try:
            w = int(window)
        except ValueError:
            raise CLIError(
                "--window", f"must be an integer, 'online' or 'auto', got {window!r}"
            ) from None
        if w < 32:
            raise CLIError("--window", f"must be >= 32 steps, got {w}")
    if top_k is not None and top_k < 1:
        raise CLIError("--top-k", f"must be >= 1, got {top_k}")
    if threshold is not None and (not math.isfinite(threshold) or not 0.0 < threshold < 1.0):
        raise CLIError("--threshold", f"must be in (0, 1), got {threshold}")
    try:
        rlog = read_log(log)
    except LogError as e:
        raise CLIError("LOG", str(e)) from None
    warnings = list(rlog.warnings)
    layers = _usable_layers(rlog, top_k, warnings)
    folder = check_writable_dir("--out", out)
    results, table = [], []
    for lay, k, k_from in layers:
        name, counts, n = lay.name, lay.counts, lay.n_experts
        rec = None
        if window == "online":
            w, eg = None, None
        elif window == "auto":
            w, eg, rec = auto_window(counts, n, k)
        else:
            w, eg = min(int(window), counts.shape[0]), None
        # the library's tested rule unless the user overrides its level
        rule = {} if threshold is None else {"threshold": threshold}
        mon = LayerMonitor(n, top_k=k, window=w, name=name, eta_gamma=eg, history=None, **rule)
        # the mean router logits (log v2 "scores"; absent in older logs) feed the feedback
        # estimator with the soft importance
        mon.update_many(counts, lay.importance, lay.scores, lay.forces)
        summ = mon.summary()
        summ["window_auto"] = window == "auto"
        summ["window_rule"] = window if window in ("auto", "online") else "fixed"
        summ["window_recommended"] = rec
        summ["top_k_from"] = k_from
        summ["importance_recorded"] = lay.importance is not None
        summ["scores_recorded"] = lay.scores is not None
        summ["forces_recorded"] = lay.forces is not None
        summ["forecast_history"] = mon.forecast_history()
        if lay.dropped is not None and lay.tokens is not None:
            routed = float(np.nansum(counts.sum(axis=1) + lay.dropped))
            summ["dropped_fraction"] = float(np.nansum(lay.dropped)) / routed if routed else 0.0
        results.append(
            {
                "layer": name,
                "steps": lay.steps,
                "loads": load_fractions(counts),
                "monitor": mon,
                "summary": summ,
            }
        )
        table.append(summ)
    for line in warnings:
        sys.stderr.write(f"warning: {line}\n")
    files = diagnose_figure(results, folder / "diagnose")
    meta = {
        "log": str(log),
        "log_files": list(rlog.files),
        "segments": [{"segment": g.segment, "start_step": g.start_step} for g in rlog.segments],
        "warnings": warnings,
    }
    atomic_write_json(folder / "diagnose.json", {**meta, "layers": table})
    files.append(str(folder / "diagnose.json"))
    if as_json:
        emit_json({**meta, "layers": table, "files": files})
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


def _usable_layers(rlog, top_k: int | None, warnings: list[str]) -> list:
    """``[(LayerLog, k, where k came from)]`` of the layers to diagnose: N and k from the
    header, ``--top-k`` checked against it; steps that routed nothing left out (with a
    warning); layers too short to fit left out while another is usable."""
    from dataclasses import replace

    out, short, empty = [], [], []
    assumed = []
    for lay in rlog.layers.values():
        n = lay.n_experts
        if lay.top_k is not None:
            if top_k is not None and top_k != lay.top_k:
                raise CLIError(
                    "--top-k",
                    f"{top_k} conflicts with the log header: layer {lay.name!r} was "
                    f"recorded with top_k = {lay.top_k}",
                )
            k, k_from = lay.top_k, "header"
        elif top_k is not None:
            k, k_from = top_k, "--top-k"
        else:
            k, k_from = 1, "default"
            assumed.append(lay.name)
        if k >= n:
            raise CLIError("--top-k", f"must be < {n} experts (layer {lay.name!r}), got {k}")
        total = lay.counts.sum(axis=1)
        if not (total > 0).any():
            empty.append(lay.name)
            continue
        if not (total > 0).all():
            keep = total > 0
            warnings.append(
                f"layer {lay.name!r}: {int((~keep).sum())} steps with no routed tokens left out"
            )
            lay = replace(
                lay,
                steps=lay.steps[keep],
                counts=lay.counts[keep],
                importance=None if lay.importance is None else lay.importance[keep],
                scores=None if lay.scores is None else lay.scores[keep],
                tokens=None if lay.tokens is None else lay.tokens[keep],
                dropped=None if lay.dropped is None else lay.dropped[keep],
            )
        if lay.counts.shape[0] < MIN_STEPS:
            short.append((lay.name, lay.counts.shape[0]))
            continue
        out.append((lay, k, k_from))
    if not out:
        if short:
            name, s = short[0]
            raise CLIError("LOG", f"layer {name!r}: need >= {MIN_STEPS} steps, got {s}")
        raise CLIError("LOG", f"layer {empty[0]!r}: all counts are zero (nothing was routed)")
    for name in empty:
        warnings.append(f"layer {name!r}: all counts are zero (nothing was routed): left out")
    for name, s in short:
        warnings.append(f"layer {name!r}: {s} steps (< {MIN_STEPS}): left out")
    if assumed:
        warnings.append(
            f"the log has no header: top_k unknown for {len(assumed)} layer(s), assuming "
            "--top-k 1 (pass --top-k K if the router selects K experts per token)"
        )
    return out


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
