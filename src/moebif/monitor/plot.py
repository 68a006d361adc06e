"""The figure of ``moebif diagnose``: per layer, the expert loads and kappa_hat with its band,
the thresholds and the alarms (PNG + SVG)."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..style import COLORS, THEORY, figure_style, save_figure

__all__ = ["diagnose_figure"]


def diagnose_figure(results, path_stem) -> list[str]:
    """Draw the first four layers of ``results`` (dicts with ``layer``, ``steps`` (S,),
    ``loads`` (S, N) and the finished :class:`~moebif.monitor.LayerMonitor` as ``monitor``) and
    save ``path_stem.png`` and ``.svg``. Returns the paths."""
    colors = {
        "approaching-threshold": "#d68910",
        "metastable": "#8e44ad",
        "collapse-in-progress": "#c0392b",
        "collapsed": "#7b1010",
        "recovered": "#2a9d4b",
    }
    shown = results[:4]
    forces = any(res["monitor"].forecasts for res in shown)
    with figure_style():
        fig, axes = plt.subplots(
            len(shown),
            3 if forces else 2,
            figsize=(10.0 if forces else 7.0, 2.1 * len(shown) + 0.3),
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
                k = np.array([f.kappa for f in fits], dtype=float)
                lo = np.array([f.kappa_lo for f in fits], dtype=float)
                hi = np.array([f.kappa_hi for f in fits], dtype=float)
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
            ksn = mon.kappa_sn
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
            if forces:
                _forces_panel(row[2], mon, steps)
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
        files = save_figure(fig, path_stem)
        plt.close(fig)
    return files


def _forces_panel(ax, mon, steps) -> None:
    """The margin of the forces in knob units: the critical coefficient alpha* (band: 95%)
    against the coefficient in force; the title carries the last forecast."""
    rows = mon.forecast_history()
    if not rows:
        ax.set(title="forces: not measured")
        return
    at = np.array([steps[min(r["step"], len(steps)) - 1] for r in rows], dtype=float)

    def col(key):
        return np.array([np.nan if r[key] is None else r[key] for r in rows], dtype=float)

    ax.fill_between(
        at, col("critical_lo"), col("critical_hi"), color=COLORS[1], alpha=0.2, lw=0,
        label="α* 95% interval",
    )  # fmt: skip
    ax.plot(at, col("critical_coefficient"), "-", color=COLORS[1], lw=1.2, label="α* (critical)")
    ax.plot(at, col("coefficient"), "-", color="k", lw=1.0, label="α (aux coefficient)")
    fc = mon.forecast()
    st = fc.get("steps_to_collapse")
    if st is not None and st["value"] is not None:
        lo = "?" if st["lo"] is None else f"{st['lo']:.0f}"
        hi = "?" if st["hi"] is None else f"{st['hi']:.0f}"
        title = f"forces: collapse in {st['value']:.0f} [{lo}, {hi}] steps"
    else:
        title = "forces: margin α - α* (no collapse forecast)"
    ax.set(ylabel="aux coefficient", title=title)
