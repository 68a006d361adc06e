"""Shared by fig07, fig10, fig11: hysteresis loops measured at several sweep rates, extrapolated
to rate -> 0, and the width-vs-parameter plot."""

from __future__ import annotations

import numpy as np

from ..params import RouterParams
from ..sim.hysteresis import extrapolate_hysteresis
from .base import num

# Sweep rates dh/dt (ODE time). The lag behind the fold shrinks like rate^(2/3); halving rates
# down to 1.25e-3 keep the slowest loop's excess width below ~5% of 2H(a) for a - rho >= 3 and
# make the rate -> 0 fit accurate to ~1% (measured; see the claims).
PAPER_RATES = (0.02, 0.01, 0.005, 0.0025, 0.00125)
QUICK_RATES = (0.04, 0.02, 0.01, 0.005)


def measure(params: RouterParams, rho: float, cfg, seed: int) -> dict:
    """Loops at ``cfg.rates`` for one parameter point; JSON-ready summary of the fits."""
    ex = extrapolate_hysteresis(
        params, rates=cfg.rates, batch=cfg.batch, eta=cfg.eta, runs=cfg.runs, seed=seed, rho=rho
    )
    return {
        "a": params.a,
        "rho": rho,
        "rates": ex.rates,
        "h_switch_up": [s.h_switch_up for s in ex.sweeps],
        "h_switch_down": [s.h_switch_down for s in ex.sweeps],
        "width": [s.width for s in ex.sweeps],
        "width_extrapolated": ex.width.limit,
        "width_exponent": ex.width.exponent,
        "width_extrapolated_exponent_2_3": ex.width.limit_two_thirds,
        "up_extrapolated": ex.up.limit,
        "down_extrapolated": ex.down.limit,
        "predicted_width": ex.predicted_width,
        "fit": {
            "limit": ex.width.limit,
            "coefficient": ex.width.coefficient,
            "exponent": ex.width.exponent,
        },
    }


def plot_width_scan(
    ax,
    x,
    points: list[dict],
    x_theory,
    w_theory,
    *,
    xlabel: str,
    colors,
    theory_label: str = "mean field 2H(a)",
):
    """Measured widths (slowest rate: open circles; rate -> 0 extrapolation: filled) against
    the mean-field prediction (dashed)."""
    from ..style import THEORY

    ax.plot(x_theory, w_theory, **THEORY, label=theory_label)
    slow = [num(p["width"][-1]) for p in points]
    ax.plot(
        x,
        slow,
        "o",
        mfc="white",
        color=colors[1],
        ms=5,
        label=f"measured, rate {points[0]['rates'][-1]:g}",
    )
    ax.plot(
        x,
        [num(p["width_extrapolated"]) for p in points],
        "o",
        color=colors[0],
        ms=5,
        label="measured, rate → 0 (fit)",
    )
    ax.set(xlabel=xlabel, ylabel="hysteresis width Δh")
    ax.legend()


def plot_rate_dependence(ax, point: dict, colors):
    """Width vs rate^(2/3) with the fitted law and its limit, against 2H (dashed)."""
    from ..style import THEORY

    v = np.asarray(point["rates"], dtype=float)
    w = np.asarray(point["width"], dtype=float)
    f = {k: num(x) for k, x in point["fit"].items()}
    vv = np.linspace(0, v.max(), 200)
    ax.plot(v ** (2 / 3), w, "o", color=colors[0], ms=5, label="measured loop width")
    ax.plot(
        vv ** (2 / 3),
        f["limit"] + f["coefficient"] * vv ** f["exponent"],
        "-",
        color=colors[0],
        lw=1,
        label=f"fit w₀ + c·v^β, β = {f['exponent']:.2f}",
    )
    ax.axhline(point["predicted_width"], **THEORY, label="mean field 2H(a − ρ)")
    ax.plot([0], [f["limit"]], "*", color=colors[1], ms=9, label=f"w₀ = {f['limit']:.4f}")
    ax.set(xlabel="sweep rate (dh/dt)^(2/3)", ylabel="hysteresis width Δh")
    ax.legend()
