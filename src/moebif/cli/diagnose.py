"""Command ``moebif diagnose LOG`` (registered on the app of cli.py): read a router log, run the
collapse monitor on every layer, print a table, write JSON and a figure."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from ._common import CLIError, _emit_json, app


def _first_excursion(loads, top_k: int, level: float = 0.25) -> int:
    """First step at which the max-load excess ``(l_max - 1/N) / (1/k - 1/N)`` of the loads
    averaged over ``max(4, S // 100)`` steps reaches ``level`` (the monitor's ``excursion``);
    ``S`` if it never does."""
    import numpy as np

    from ..monitor import max_load_excess

    S, n = loads.shape
    m = max(4, S // 100)
    if S < m:
        return S
    c = np.cumsum(np.vstack([np.zeros((1, n)), loads]), axis=0)
    avg = (c[m:] - c[:-m]) / m  # avg[i]: mean of steps i .. i + m - 1
    ex = max_load_excess(avg.max(axis=1), n, top_k)
    hit = np.nonzero(ex >= level)[0]
    return int(hit[0]) if hit.size else S


def _auto_window(counts, n: int, top_k: int = 1) -> tuple[int, float | None, int | None]:
    """``(window, eta gamma, recommended window)`` for ``--window auto``.

    ``eta gamma`` (needed to express the recommended window in steps) is fitted on the stretch
    of the log before the first load excursion: a collapse inside the fitted stretch would pass
    for a slow relaxation. The window is the recommended one, at most the whole log; when the
    log has an excursion, at most the longer of the pre-excursion stretch and a quarter of the
    log (the monitor's ``dwell``, half a window, must fit between a collapse and the end of the
    log for a recovery to show). When the pre-excursion stretch is too short (< 64 steps) or
    does not resolve ``eta gamma``, the window is that maximum and ``eta gamma`` is left to the
    monitor."""
    import numpy as np

    from ..monitor import fit_whittle, load_fractions, recommended_window

    S = counts.shape[0]
    loads = load_fractions(counts)
    P = _first_excursion(loads, top_k)
    cap = S if P == S else max(32, S // 4)
    pre = loads[:P]
    block = max(1, P // 2048)
    M = P // block
    if P < 64 or M < 32:
        return cap, None, None
    bm = pre[: M * block].reshape(M, block, n).mean(axis=1)
    try:
        fit = fit_whittle(bm, block=block, n_experts=n)
    except ValueError:
        return cap, None, None
    if fit.at_edge or not 0.0 < fit.eta_gamma < 1.0:
        return cap, None, None
    rec = recommended_window(n, fit.eta_gamma)
    return int(np.clip(rec, 32, cap)), fit.eta_gamma, rec


def _figure(results, path_stem: Path) -> list[str]:
    import io

    import matplotlib.pyplot as plt
    import numpy as np

    from .._io import atomic_write_bytes
    from ..experiments.style import COLORS, THEORY, figure_style

    colors = {
        "approaching-threshold": "#d68910",
        "metastable": "#8e44ad",
        "collapse-in-progress": "#c0392b",
        "collapsed": "#7b1010",
        "recovered": "#2a9d4b",
    }
    shown = results[:4]
    files = []
    with figure_style():
        fig, axes = plt.subplots(
            len(shown),
            2,
            figsize=(7.0, 2.1 * len(shown) + 0.3),
            layout="constrained",
            squeeze=False,
            sharex=True,
        )
        for row, res in zip(axes, shown, strict=True):
            steps, loads, mon = res["steps"], res["loads"], res["monitor"]
            n = loads.shape[1]
            # block means for legibility: ~400 points per curve
            b = max(1, loads.shape[0] // 400)
            K = loads.shape[0] // b
            lb = loads[: K * b].reshape(K, b, n).mean(axis=1)
            sb = steps[: K * b].reshape(K, b).mean(axis=1)
            order = np.argsort(-lb.max(axis=0))  # colour the experts that peaked highest
            for j, i in enumerate(order):
                row[0].plot(
                    sb,
                    lb[:, i],
                    lw=0.9,
                    color=COLORS[j % len(COLORS)] if j < 3 else "0.6",
                    alpha=1.0 if j < 3 else 0.6,
                )
            row[0].axhline(1.0 / n, **{**THEORY, "linewidth": 0.9})
            row[0].set(ylabel="load", title=f"{res['layer']}: expert loads (dashed: 1/N)")
            fits = mon.fits
            if fits:
                fs = np.array([steps[min(f.step, len(steps)) - 1] for f in fits])
                k = np.array([f.fit.kappa for f in fits])
                lo = np.array([f.fit.kappa_lo for f in fits])
                hi = np.array([f.fit.kappa_hi for f in fits])
                ok = np.array(
                    [f.regime not in ("unresolved", "short-window", "excursion") for f in fits]
                )
                lo = np.where(np.isfinite(lo), lo, np.nan)
                # the band and the line on the fits the alarms use; the others as grey crosses
                row[1].fill_between(
                    fs,
                    np.clip(np.where(ok, lo, np.nan), -0.5, 1.5),
                    np.clip(np.where(ok, hi, np.nan), -0.5, 1.5),
                    color=COLORS[0],
                    alpha=0.2,
                    lw=0,
                    label="95% interval",
                )
                row[1].plot(
                    fs, np.where(ok, k, np.nan), "o-", color=COLORS[0], lw=1.3, ms=2.5, label="κ̂"
                )
                if (~ok).any():
                    row[1].plot(
                        fs[~ok],
                        k[~ok],
                        "x",
                        color="0.5",
                        ms=4,
                        label="κ̂ not used (short window, collapse, unresolved)",
                    )
            row[1].axhline(1.0, **{**THEORY, "linewidth": 0.9}, label="linear threshold κ = 1")
            ksn = mon._kappa_sn
            if n >= 3 and ksn < 1.0:
                row[1].axhline(ksn, color="#8e44ad", ls=":", lw=0.9, label=f"κ_SN = {ksn:.2f}")
            row[1].axhline(
                mon.threshold,
                color="#d68910",
                ls="-.",
                lw=0.9,
                label=f"alarm threshold {mon.threshold:g}",
            )
            seen = set()
            for a in mon.alarms:
                x = steps[min(a.step, len(steps)) - 1]
                for ax in row:
                    ax.axvline(
                        x,
                        color=colors.get(a.kind, "k"),
                        lw=0.8,
                        alpha=0.8,
                        label=a.kind if (ax is row[0] and a.kind not in seen) else None,
                    )
                seen.add(a.kind)
            row[1].set(
                ylabel="κ̂ = a/(NγT)", title="stability ratio κ̂ (band: 95%)", ylim=(-0.05, 1.15)
            )
        # one legend for the figure, below the panels: the alarm kinds and the kappa_hat lines
        handles, labels = {}, []
        for ax in axes.ravel():
            for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
                if lab not in handles:
                    handles[lab] = h
                    labels.append(lab)
        fig.legend(
            [handles[lab] for lab in labels],
            labels,
            loc="outside lower center",
            ncols=min(4, len(labels)),
            fontsize=6.5,
            frameon=False,
        )
        for ax in axes[-1]:
            ax.set_xlabel("training step")
        for ext in ("png", "svg"):
            buf = io.BytesIO()
            fig.savefig(buf, format=ext, dpi=200, metadata={"Date": None} if ext == "svg" else None)
            atomic_write_bytes(path_stem.with_suffix(f".{ext}"), buf.getvalue())
            files.append(str(path_stem.with_suffix(f".{ext}")))
        plt.close(fig)
    return files


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
            w, eg, rec = _auto_window(counts, n, top_k)
        else:
            w, eg = min(int(window), counts.shape[0]), None
        # the library's tested rule unless the user overrides its level
        rule = {} if threshold is None else {"threshold": threshold}
        mon = LayerMonitor(n, top_k=top_k, window=w, name=name, eta_gamma=eg, **rule)
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
    files = _figure(results, folder / "diagnose")
    atomic_write_json(folder / "diagnose.json", {"log": str(log), "layers": table})
    files.append(str(folder / "diagnose.json"))
    if as_json:
        _emit_json({"log": str(log), "layers": table, "files": files})
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
