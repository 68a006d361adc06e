"""Experiment ``fig07`` (sec. 8.5, Fig. 7): hysteresis of the empirical load u_hat under a slow
sweep of the skew h up and down, at a = 4, gamma = T = 1, against the fold thresholds +-H(a).

Beyond the paper: the dynamic hysteresis. At a finite sweep rate the loop is wider than 2H(a);
the excess shrinks like rate^(2/3). Loops at several rates are extrapolated to rate -> 0 and the
switching thresholds compared with -+H(4).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model import two_expert as th
from ..params import RouterParams
from ..sim.hysteresis import sweep_hysteresis
from . import _hysteresis as hy
from .base import Check, Claim, num

ID = "fig07"
TITLE = "Hysteresis of the empirical load under a slow skew sweep"
PAPER = "Section 8.5, Fig. 7"


@dataclass(frozen=True)
class Config:
    a: float = 4.0  # paper
    gamma: float = 1.0  # paper
    T: float = 1.0  # paper
    # not given in the paper: the batch and step size of its other batch experiments (sec. 8.4)
    batch: int = 512
    eta: float = 0.002
    runs: int = 8  # replicas; the mean over them is what changes sign at a switch
    # the displayed loop: slow enough that its excess width over 2H is ~5%
    display_rate: float = 0.00125
    rates: tuple = hy.PAPER_RATES
    tolerance: float = 0.02  # claim: thresholds within 2% of -+H(a)
    seed: int = 7


def quick() -> Config:
    return Config(display_rate=0.005, rates=hy.QUICK_RATES, runs=8)


def run(config: Config, progress=None) -> dict:
    c = config
    p = RouterParams(a=c.a, gamma=c.gamma, T=c.T)
    loop = sweep_hysteresis(
        p, rate=c.display_rate, batch=c.batch, eta=c.eta, runs=c.runs, seed=c.seed
    )
    if progress:
        progress(1, 2)
    point = hy.measure(p, 0.0, c, seed=c.seed + 100)
    if progress:
        progress(2, 2)
    H = th.hysteresis_halfwidth(c.a, c.gamma, c.T)
    # history dependence at h = 0, read on the full loop: the load on the way up and down
    up0 = float(np.interp(0.0, loop.h[loop.upward], loop.u_mean[loop.upward]))
    dn = ~loop.upward
    dn0 = float(np.interp(0.0, loop.h[dn][::-1], loop.u_mean[dn][::-1]))
    # thin the loop to ~2000 points per leg for the data file and the figure
    k = max(1, loop.h.size // 4000)
    data = {
        "loop": {
            "h": loop.h[::k],
            "u_mean": loop.u_mean[::k],
            "u_std": loop.u_std[::k],
            "upward": loop.upward[::k],
            "rate": loop.rate,
            "h_switch_up": loop.h_switch_up,
            "h_switch_down": loop.h_switch_down,
        },
        "rates": point,
        "H": H,
        "u_at_h0": {"up": up0, "down": dn0},
    }
    return data


def claims(data: dict, config: Config) -> list[Claim]:
    c, point, H = config, data["rates"], data["H"]
    p = RouterParams(a=c.a, gamma=c.gamma, T=c.T)
    out = []
    for key, sign, name in (("up_extrapolated", 1, "up"), ("down_extrapolated", -1, "down")):
        measured = num(point[key])
        rel = abs(measured - sign * H) / H
        out.append(
            Claim(
                f"fig07-switch-{name}",
                f"Switching threshold of the {'upward' if sign > 0 else 'downward'} sweep at "
                f"h = {'+' if sign > 0 else '-'}H(a) (fold of Thm 5.1), a = {c.a:g}, after the "
                "rate -> 0 extrapolation",
                predicted=sign * H,
                measured=measured,
                tolerance=f"relative error <= {c.tolerance:.0%} (measured {rel:.2%})",
                holds=rel <= c.tolerance,
                checks=(Check.relative("switch h", measured, sign * H, c.tolerance),),
            )
        )
    # history dependence at h = 0: lower branch on the way up, upper branch on the way down
    up0, dn0 = data["u_at_h0"]["up"], data["u_at_h0"]["down"]
    u_star = th.equilibria(p)[-1].u
    out.append(
        Claim(
            "fig07-bistable",
            "At the same h = 0 the load depends on history: u_hat on the lower "
            "stable branch during the upward sweep, on the upper one during the downward sweep",
            predicted=[-u_star, u_star],
            measured=[up0, dn0],
            tolerance="each within 0.05 of the stable equilibria -+u*",
            holds=abs(up0 + u_star) <= 0.05 and abs(dn0 - u_star) <= 0.05,
            checks=(
                Check.absolute("u_hat up", up0, -u_star, 0.05),
                Check.absolute("u_hat down", dn0, u_star, 0.05),
            ),
        )
    )
    return out


def plot(data: dict, config: Config):
    import matplotlib.pyplot as plt

    from ..style import COLORS, THEORY, figure_style, panel_label

    d = data
    c = config
    lp = d["loop"]
    h, u, s, up = (np.asarray(lp[k]) for k in ("h", "u_mean", "u_std", "upward"))
    H = d["H"]
    p = RouterParams(a=c.a, gamma=c.gamma, T=c.T)
    with figure_style():
        fig, axs = plt.subplots(
            1, 2, figsize=(7.2, 3.0), layout="constrained", gridspec_kw={"width_ratios": [1.25, 1]}
        )
        ax = axs[0]
        # mean-field equilibria (stable branches) for reference
        ys = np.linspace(-7, 7, 801)
        hs = c.gamma * ys - c.a * np.tanh(ys / (2 * c.T))
        stable = th.drift_dy(ys, p) < 0
        for sel in (stable & (ys < 0), stable & (ys > 0)):
            ax.plot(hs[sel], th.load(ys[sel], c.T), ":", color="0.55", lw=1)
        ax.plot([], [], ":", color="0.55", lw=1, label="mean-field stable states")
        for mask, col, lab in ((up, COLORS[0], "sweep up"), (~up, COLORS[1], "sweep down")):
            ax.plot(h[mask], u[mask], "-", color=col, lw=1.3, label=f"{lab} (mean of runs)")
            ax.fill_between(h[mask], (u - s)[mask], (u + s)[mask], color=col, alpha=0.2, lw=0)
        for x in (-H, H):
            ax.axvline(x, **THEORY)
        ax.plot([], [], **THEORY, label="folds ±H(a)")
        ax.set(
            xlabel="skew h = b₁ − b₂",
            ylabel="empirical load û = (N₁ − N₂)/B",
            title=f"a = {c.a:g}, γ = T = {c.gamma:g}, B = {c.batch}, rate {lp['rate']:g}",
            xlim=(-1.9 * H, 1.9 * H),
        )
        ax.legend(loc="center left", fontsize=6.8)
        panel_label(ax, "a")
        hy.plot_rate_dependence(axs[1], d["rates"], COLORS)
        axs[1].set_title("dynamic hysteresis")
        panel_label(axs[1], "b")
    return fig
