"""Experiment ``fig10`` (sec. 8.7, Fig. 10): hysteresis width vs feedback strength a at
gamma = T = 1, against the mean-field prediction 2H(a) of eq. (18)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..model import two_expert as th
from ..params import RouterParams
from . import _hysteresis as hy
from .base import Check, Claim, num

ID = "fig10"
TITLE = "Hysteresis width vs feedback strength"
PAPER = "Section 8.7, Fig. 10"


@dataclass(frozen=True)
class Config:
    gamma: float = 1.0  # paper
    T: float = 1.0  # paper
    # not given in the paper: a from just above the cusp (a = 2 gamma T) to 3x it
    a_values: tuple = (2.25, 2.5, 3.0, 3.5, 4.0, 5.0, 6.0)
    batch: int = 512  # as in sec. 8.4
    eta: float = 0.002
    runs: int = 8
    rates: tuple = hy.PAPER_RATES
    claim_a_min: float = 3.0  # the claim covers a >= 3 (closer to the cusp, see notes)
    tolerance: float = 0.02
    seed: int = 10


def quick() -> Config:
    return Config(a_values=(2.5, 3.0, 4.0, 6.0), rates=hy.QUICK_RATES)


def run(config: Config, progress=None) -> dict:
    c = config
    points = []
    for i, a in enumerate(c.a_values):
        points.append(
            hy.measure(RouterParams(a=a, gamma=c.gamma, T=c.T), 0.0, c, seed=c.seed + 1000 * i)
        )
        if progress:
            progress(i + 1, len(c.a_values))
    a_th = np.linspace(2 * c.gamma * c.T, max(c.a_values) * 1.05, 300)
    return {
        "points": points,
        "a_theory": a_th,
        "width_theory": 2 * th.hysteresis_halfwidth(a_th, c.gamma, c.T),
    }


def _width(p: dict) -> float:
    return num(p["width_extrapolated"])


def claims(data: dict, config: Config) -> list[Claim]:
    c, points = config, data["points"]
    checked = [p for p in points if p["a"] >= c.claim_a_min]
    rel = [abs(_width(p) / p["predicted_width"] - 1) for p in checked]
    out = [
        Claim(
            "fig10-width",
            f"Hysteresis width equals 2H(a) (eq. 18) for every a >= "
            f"{c.claim_a_min:g} scanned (rate -> 0 extrapolation)",
            predicted={f"a={p['a']:g}": p["predicted_width"] for p in checked},
            measured={f"a={p['a']:g}": _width(p) for p in checked},
            tolerance=f"relative error <= {c.tolerance:.0%} each (worst {max(rel):.2%})",
            holds=all(r <= c.tolerance for r in rel),  # a NaN width fails (max would skip it)
            checks=tuple(
                Check.relative(f"width a={p['a']:g}", _width(p), p["predicted_width"], c.tolerance)
                for p in checked
            ),
        )
    ]
    widths = [_width(p) for p in points]
    out.append(
        Claim(
            "fig10-growth",
            "The loop width grows with the positive feedback a",
            predicted="increasing",
            measured=widths,
            tolerance="strictly increasing in a",
            holds=bool(np.all(np.diff(widths) > 0)),
            checks=(Check("smallest increase", np.min(np.diff(widths)), lower=0.0),),
        )
    )
    return out


def notes(data: dict, config: Config) -> str:
    near = [p for p in data["points"] if p["a"] < config.claim_a_min]
    text = ""
    if near:
        text = (
            "Closer to the cusp ("
            + ", ".join(
                f"a = {p['a']:g}: {_width(p) / p['predicted_width'] - 1:+.1%}" for p in near
            )
            + ") the finite batch lets the router escape over the shallow "
            "barrier before the fold, and the lag is not yet in its rate^(2/3) regime, so the "
            "extrapolated width is less accurate; it is shown, not claimed."
        )
    checked = [p for p in data["points"] if p["a"] >= config.claim_a_min]
    text += (
        " Claimed points, rate -> 0 width against 2H(a): "
        + ", ".join(f"a = {p['a']:g}: {_width(p) / p['predicted_width'] - 1:+.2%}" for p in checked)
        + "."
    )
    if min(config.rates) > min(hy.PAPER_RATES):
        text += (
            f" These sweeps are faster than the full variant's (slowest rate {min(config.rates):g}"
            f" against {min(hy.PAPER_RATES):g}). At a = 3, the claimed point nearest the cusp, "
            "their free-exponent fit lands systematically low: -0.9% to -2.6% over five seeds "
            "(quick variant, measured), against the 2% tolerance, so fig10-width is fragile "
            "in this variant."
        )
    return text.strip()


def plot(data: dict, config: Config):
    import matplotlib.pyplot as plt

    from ..style import COLORS, figure_style, panel_label

    d = data
    c = config
    pts = d["points"]
    with figure_style():
        fig, axs = plt.subplots(1, 2, figsize=(7.2, 3.0), layout="constrained")
        hy.plot_width_scan(
            axs[0],
            [p["a"] for p in pts],
            pts,
            d["a_theory"],
            d["width_theory"],
            xlabel="feedback strength a",
            colors=COLORS,
        )
        axs[0].axvline(2 * c.gamma * c.T, color="0.6", lw=0.8, ls=":")
        axs[0].set_title(f"γ = T = {c.gamma:g}, B = {c.batch}")
        panel_label(axs[0], "a")
        ax = axs[1]
        a = np.array([p["a"] for p in pts])
        rel = np.array([_width(p) / p["predicted_width"] - 1 for p in pts])
        ax.axhspan(
            -c.tolerance,
            c.tolerance,
            color=COLORS[2],
            alpha=0.12,
            lw=0,
            label=f"±{c.tolerance:.0%}",
        )
        ax.axhline(0, color="0.3", lw=0.8, ls="--")
        ax.plot(a, rel, "o-", color=COLORS[0], ms=5, label="rate → 0 width / 2H(a) − 1")
        ax.set(xlabel="feedback strength a", ylabel="relative error", title="agreement")
        ax.legend()
        panel_label(ax, "b")
    return fig
