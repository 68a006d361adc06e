"""Command ``moebif advise``: the regime of a router and, for each balancing scheme, the minimal
strength that rules its collapse out and what that costs (:func:`moebif.model.balancer_theory.
advise`; field definitions in docs/balancing.md)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from ._common import CLIError, app, emit_json, finite, router_params


@app.command()
def advise(
    experts: Annotated[
        int | None, typer.Option("--experts", help="Number of experts N >= 2.")
    ] = None,
    a: Annotated[float | None, typer.Option("--a", help="Reinforcement strength a >= 0.")] = None,
    gamma: Annotated[float | None, typer.Option("--gamma", help="Forgetting gamma > 0.")] = None,
    T: Annotated[float | None, typer.Option("--T", help="Softmax temperature T > 0.")] = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Experts per token, 1 <= K < N.")] = 1,
    lr: Annotated[
        float,
        typer.Option("--lr", help="Router step eta: one step advances ODE time by LR."),
    ] = 1e-3,
    batch: Annotated[
        int, typer.Option("--batch", help="Tokens a step B, for batch-dependent costs.")
    ] = 512,
    from_log: Annotated[
        Path | None,
        typer.Option(
            "--from-log",
            help="A RouterMonitor log: advise from its measured forces, in the units of the "
            "user's stack (HF, Megatron, OLMo-core coefficients; bias rates per step). Replaces "
            "--experts/--a/--gamma/--T.",
        ),
    ] = None,
    until: Annotated[
        int | None,
        typer.Option("--until", help="With --from-log: read the steps before this one only."),
    ] = None,
    optimizer_lr: Annotated[
        float | None,
        typer.Option(
            "--optimizer-lr",
            help="With --from-log: the optimiser's learning rate, where the log does not "
            "record it (for the bias rate).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Which balancer, and how strong, rules collapse out (N experts, top-k); with --from-log,
    from a training log's measured forces in the stack's own units."""
    if from_log is not None:
        _advise_from_log(from_log, until, optimizer_lr, as_json)
        return
    for opt, v in (("--experts", experts), ("--a", a), ("--gamma", gamma), ("--T", T)):
        if v is None:
            raise CLIError(opt, "is required (or give --from-log LOG)")
    for opt, v in (("--until", until), ("--optimizer-lr", optimizer_lr)):
        if v is not None:
            raise CLIError(opt, "only applies with --from-log LOG")
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
    for col in ("scheme", "minimal strength", "units", "skew response", "dropped", "note"):
        tab.add_column(col)
    for name, e in report["balancers"].items():
        cost = e.get("cost", {})
        s = e["strength"]
        note = ""
        if e.get("rho_rule") is not None:
            note = f"rho rule {e['rho_rule']:.3g}"
        if "chattering_std" in cost:
            note = f"chattering sd {cost['chattering_std']:.2g} ({cost['chattering_regime']})"
        if "recommended" in e:
            r = e["recommended"]
            note = (
                f"stable up to k_i {e['k_i_max']:.3g}; use k_i {r['k_i']:.3g}, k_p {r['k_p']:.3g}, "
                f"bias_max >= {e['bias_max_needed']:.3g} logits; load sd "
                f"{cost['chattering_load_std']:.2g} (noise {cost['noise_load_std']:.2g})"
            )
        tab.add_row(
            name,
            "not reachable" if s is None else f"{s:.4g}",
            e.get("units", ""),
            _fmt(cost.get("skew_response")),
            _fmt(cost.get("dropped_fraction")),
            note,
        )
    con.print(tab)
    con.print(
        "These are the model's units (SGD on the scores r = T z at the router's step eta); for "
        "a stack's own coefficient, measure the router: moebif advise --from-log LOG. --json "
        "for the full report (docs/balancing.md)."
    )


def _advise_from_log(path: Path, until, optimizer_lr, as_json: bool) -> None:
    from ..monitor import LogError
    from ..monitor.advice import STACK_NAMES, advise_from_log

    if until is not None and until < 1:
        raise CLIError("--until", f"must be a step >= 1, got {until}")
    if optimizer_lr is not None:
        finite("--optimizer-lr", optimizer_lr)
        if optimizer_lr <= 0:
            raise CLIError("--optimizer-lr", f"must be > 0, got {optimizer_lr:g}")
    try:
        res = advise_from_log(path, until=until, lr=optimizer_lr)
    except LogError as e:
        raise CLIError("--from-log", str(e)) from None
    if as_json:
        emit_json(res.to_dict())
        return
    from rich.console import Console
    from rich.table import Table

    con = Console()
    opt = res.optimizer or {}
    con.print(
        f"{path}: {len(res.layers)} router(s), aux pooled over {res.pooled_layers} layer(s); "
        f"optimiser {opt.get('kind', 'not recorded')}, lr "
        f"{'unknown' if res.lr is None else f'{res.lr:g}'}"
        + ("" if res.until is None else f"; steps before {res.until}")
    )
    tab = Table(show_edge=False, header_style="bold")
    cols = ["layer", "step", "alpha* [95%]", "in force", "recommended >="]
    cols += [f"{s} rec." for s in ("Megatron", "OLMo-core")] + ["bias u logits/step"]
    for col in cols:
        tab.add_column(col)
    for lab, L in res.layers.items():
        if L.critical is None:
            tab.add_row(lab, str(L.step), "unresolved", _fmt(L.coefficient), "", "", "", "")
            continue
        if L.bias_rate_logits is None:
            bias = ""
        elif not L.bias_needed:
            bias = "not needed (LM restores)"
        else:
            bias = f"{L.bias_rate_logits:.3g}"
        tab.add_row(
            lab,
            str(L.step),
            f"{L.critical:.3g} [{L.critical_lo:.3g}, {L.critical_hi:.3g}]",
            _fmt(L.coefficient) + ("" if L.safe is None else (" safe" if L.safe else " UNSAFE")),
            f"{L.recommended:.3g}",
            f"{L.stacks['megatron']['recommended']:.3g}",
            f"{L.stacks['olmo']['recommended']:.3g}",
            bias,
        )
    con.print(tab)
    for lab, L in res.layers.items():
        if L.reason:
            con.print(f"{lab}: {L.reason}")
    con.print(
        "Units: alpha*, in force and recommended are Hugging Face router_aux_loss_coef (the loss "
        f"pooled over {res.pooled_layers} layers); the Megatron ({STACK_NAMES['megatron']}) and "
        f"OLMo-core ({STACK_NAMES['olmo']}) columns put the same aux gradient on a layer; "
        "recommended = the interval's upper end + 5% (the width of the collapse jump); the bias "
        "rate is in logits per optimiser step (--json: probability and affinity units, limits)."
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
