"""Experiment ``fig08``: the collapse region in the (T, gamma) plane at h = 0 (sec. 8.6, Fig. 8).

For every pair (T, gamma) of a grid, the batch router of sec. 8 (``a = 3``, ``h = 0``) is run from
a small random initial asymmetry and the final mean ``|u_hat|`` over the runs is recorded. Theory
(Thm 4.1): the balanced state is stable iff ``a <= 2 gamma T``, i.e. ``kappa = a / (2 gamma T)
<= 1``; above the line the router collapses to one of the states ``+-u*``.

Time scale. The unstable mode grows at the rate ``F_y(0) = gamma (kappa - 1)`` (ODE time
``t = n eta``), so the horizon is ``t_end = horizon_gamma / gamma`` and the step
``eta = eta_gamma / gamma``: every cell runs the same number of steps, and in the scaled variables
``q = y / 2T``, ``s = gamma t`` the router is ``q <- q + eta gamma (kappa u_hat - q)`` with
``u_hat`` the batch imbalance at load ``tanh q``. Cells with equal ``kappa`` are therefore
statistically identical (their random streams differ): the final state is a function of
``kappa`` alone, which panel (b) shows.

Figure: (a) heat map of the final mean ``|u_hat|`` (dark = balanced), the line ``a = 2 gamma T``
(dashed), the excluded band ``|kappa - 1| <= band`` (dotted) and the cells whose classification
disagrees with the theory (crosses); (b) the same cells against ``kappa``, with the mean-field
``|u*|`` (dashed).

Claim ``fig08-threshold``: the collapsed / balanced classification (final mean ``|u_hat|`` above
/ below ``collapse_threshold``) agrees with ``a > 2 gamma T`` on at least 97% of the cells
outside the band.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..model import two_expert as th
from ..params import RouterParams
from ..sim.router import simulate_batch_router
from .base import Check, Claim, floats

ID = "fig08"
TITLE = "Collapse region in the (T, gamma) plane at h = 0 against the threshold a = 2 gamma T"
PAPER = "Section 8.6, Fig. 8; Thm 4.1"


@dataclass(frozen=True)
class Config:
    # the paper's values (sec. 8.6)
    a: float = 3.0
    h: float = 0.0
    # not given: log grids over [0.3, 5] in T and gamma. 0.3 x 5 = 1.5 = a/2, so the line
    # gamma T = a/2 runs through the centre of the plane (kappa from 0.06 to 17). The point
    # counts 24 and 21 make the log steps incommensurate (not 5:6, which would put kappa on a
    # coarse lattice 1.024^k), so cells lie at all distances from the line, many just outside
    # the excluded band.
    T_range: tuple = (0.3, 5.0)
    T_points: int = 24
    gamma_range: tuple = (0.3, 5.0)
    gamma_points: int = 21
    # the batch size of the paper's other batch-router experiments (sec. 8.4)
    batch: int = 512
    # not given: replicas per cell; the standard error of a cell mean is <= 0.05 with 16
    runs: int = 16
    # not given: eta = eta_gamma / gamma; eta gamma = 0.02 keeps the Euler map accurate
    # (contraction 1 - eta gamma per step) and the score noise small in every cell
    eta_gamma: float = 0.02
    # not given: t_end = horizon_gamma / gamma. At the band edge kappa = 1.05 the mode grows as
    # exp(0.05 gamma t): 100 / gamma covers the growth from the initial asymmetry (e^5 ~ 150)
    # and the saturation at |u*| = 0.37, and damps the asymmetry by e^-5 at kappa = 0.95
    horizon_gamma: float = 100.0
    # "a small random initial asymmetry": initial load tanh(y0/2T) ~ N(0, sd^2) per replica,
    # small against the collapsed states (|u*| >= 0.37 outside the band)
    init_asymmetry: float = 0.05
    # collapsed iff final mean |u_hat| > 0.2. Balanced cells sit at the batch noise
    # E|u_hat| ~ sqrt(2 / (pi B)) = 0.035 (plus a little score noise); the mean-field |u*| = 0.2
    # at kappa = 1.014, inside the band, so any cell outside the band that has reached its
    # attractor is classified correctly
    collapse_threshold: float = 0.2
    # claim: cells with |kappa - 1| <= band are excluded, agreement needed on the others
    band: float = 0.05
    min_agreement: float = 0.97
    seed: int = 0


def quick() -> Config:
    return Config(T_points=12, gamma_points=11, runs=8)


def _grid(rng: tuple, points: int) -> np.ndarray:
    return np.geomspace(rng[0], rng[1], points)


def final_abs_u(cfg, gamma: float, T: float, i: int, j: int) -> np.ndarray:
    """Final ``|u_hat|`` of every replica in cell (gamma_i, T_j), shape ``(runs,)``; ``cfg``
    is this module's or fig09's Config (eta and the horizon scale as 1/gamma)."""
    p = RouterParams(a=cfg.a, gamma=gamma, T=T, h=cfg.h)
    eta = cfg.eta_gamma / gamma
    steps = round(cfg.horizon_gamma / cfg.eta_gamma)
    # independent, reproducible streams per cell: one for the initial state, one for the router
    init = np.random.default_rng(np.random.SeedSequence([cfg.seed, i, j, 0]))
    u0 = np.clip(cfg.init_asymmetry * init.standard_normal(cfg.runs), -0.99, 0.99)
    seed = int(np.random.SeedSequence([cfg.seed, i, j, 1]).generate_state(1, np.uint64)[0])
    sim = simulate_batch_router(
        p,
        batch=cfg.batch,
        eta=eta,
        steps=steps,
        runs=cfg.runs,
        seed=seed,
        y0=2.0 * T * np.arctanh(u0),
        record_every=steps,
    )
    return np.abs(sim.u_hat[:, -1])


def meanfield_collapse(kappa: np.ndarray) -> np.ndarray:
    """Mean-field ``|u*|`` at h = 0 against ``kappa`` (any shape): 0 for ``kappa <= 1``, else
    ``tanh q`` with ``q = kappa tanh q`` (the stable collapsed state of Thm 4.1)."""
    out = np.zeros_like(np.asarray(kappa, dtype=float))
    for k, kap in np.ndenumerate(np.asarray(kappa, dtype=float)):
        if kap > 1.0:
            out[k] = max(e.u for e in th.equilibria(RouterParams(a=2.0 * kap, gamma=1.0, T=1.0)))
    return out


def run(config: Config, progress=None) -> dict:
    cfg = config
    Ts, gammas = _grid(cfg.T_range, cfg.T_points), _grid(cfg.gamma_range, cfg.gamma_points)
    final = np.empty((gammas.size, Ts.size))
    final_se = np.empty_like(final)
    for i, g in enumerate(gammas):
        for j, T in enumerate(Ts):
            u = final_abs_u(cfg, float(g), float(T), i, j)
            final[i, j] = u.mean()
            final_se[i, j] = u.std(ddof=1) / math.sqrt(u.size) if u.size > 1 else 0.0
        if progress:
            progress(i + 1, gammas.size)

    kappa = cfg.a / (2.0 * gammas[:, None] * Ts[None, :])
    collapsed = final > cfg.collapse_threshold
    predicted = kappa > 1.0
    outside = np.abs(kappa - 1.0) > cfg.band
    disagree = outside & (collapsed != predicted)
    n_out = int(outside.sum())
    agreement = float(1.0 - disagree.sum() / n_out)
    return {
        "T": Ts,
        "gamma": gammas,
        "kappa": kappa,
        "final_abs_u_mean": final,
        "final_abs_u_se": final_se,
        "collapsed": collapsed,
        "predicted_collapsed": predicted,
        "outside_band": outside,
        "disagree": disagree,
        "agreement": agreement,
        "eta": cfg.eta_gamma / gammas,
        "t_end": cfg.horizon_gamma / gammas,
        "steps_per_cell": round(cfg.horizon_gamma / cfg.eta_gamma),
    }


def claims(data: dict, config: Config) -> list[Claim]:
    cfg = config
    kappa = floats(data["kappa"])
    outside = np.asarray(data["outside_band"], dtype=bool)
    disagree = np.asarray(data["disagree"], dtype=bool)
    n_out = int(outside.sum())
    agreement = data["agreement"]
    return [
        Claim(
            "fig08-threshold",
            f"At h = 0, a = {cfg.a:g} the batch router collapses (final mean |u_hat| > "
            f"{cfg.collapse_threshold:g}) exactly where a > 2 gamma T (Thm 4.1), over the "
            f"(T, gamma) grid [{cfg.T_range[0]:g}, {cfg.T_range[1]:g}] x "
            f"[{cfg.gamma_range[0]:g}, {cfg.gamma_range[1]:g}]",
            predicted=1.0,
            measured={
                "agreement": agreement,
                "cells_outside_band": n_out,
                "disagreeing_cells": int(disagree.sum()),
                "cells_in_band": int(kappa.size - n_out),
            },
            tolerance=f"agreement >= {cfg.min_agreement:g} on cells with |kappa - 1| > "
            f"{cfg.band:g} (kappa = a / 2 gamma T)",
            holds=agreement >= cfg.min_agreement,
            checks=(Check("agreement", agreement, lower=cfg.min_agreement),),
        )
    ]


def _edges(centres: np.ndarray) -> np.ndarray:
    """Cell edges of a log grid: geometric midpoints, extended by half a step at both ends."""
    lc = np.log(centres)
    mid = 0.5 * (lc[1:] + lc[:-1])
    return np.exp(np.concatenate([[2 * lc[0] - mid[0]], mid, [2 * lc[-1] - mid[-1]]]))


def plot(data: dict, config: Config):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from ..style import COLORS, THEORY, figure_style, panel_label

    cfg = config
    d = data
    Ts, gammas = np.asarray(d["T"]), np.asarray(d["gamma"])
    final, kappa = np.asarray(d["final_abs_u_mean"]), np.asarray(d["kappa"])
    disagree, outside = np.asarray(d["disagree"], bool), np.asarray(d["outside_band"], bool)
    with figure_style():
        fig, axs = plt.subplots(
            1, 2, figsize=(7.2, 3.3), layout="constrained", width_ratios=[1.2, 1]
        )
        fig.get_layout_engine().set(wspace=0.12)
        ax = axs[0]
        mesh = ax.pcolormesh(
            _edges(Ts), _edges(gammas), final, cmap="magma", vmin=0.0, vmax=1.0, shading="flat"
        )
        fig.colorbar(mesh, ax=ax, label="final mean |û|", pad=0.02)
        Tl = np.geomspace(Ts[0] / 1.2, Ts[-1] * 1.2, 200)
        ax.plot(Tl, cfg.a / (2 * Tl), **{**THEORY, "color": "white"}, label="a = 2γT (theory)")
        for f, lab in ((1 + cfg.band, f"|κ − 1| = {cfg.band:g} (excluded)"), (1 - cfg.band, None)):
            ax.plot(Tl, cfg.a / (2 * f * Tl), ":", color="0.75", lw=0.8, label=lab)
        jj, ii = np.nonzero(disagree.T)
        ax.plot(
            Ts[jj],
            gammas[ii],
            "x",
            color=COLORS[5],
            ms=5,
            mew=1.3,
            label=f"disagrees with theory ({disagree.sum()})",
        )
        ax.set(
            xscale="log",
            yscale="log",
            xlim=(_edges(Ts)[0], _edges(Ts)[-1]),
            ylim=(_edges(gammas)[0], _edges(gammas)[-1]),
            xlabel="softmax temperature T",
            ylabel="forgetting rate γ",
            title=f"h = 0, a = {cfg.a:g}, B = {cfg.batch}, {cfg.runs} runs a cell",
        )
        ticks = [v for v in (0.3, 0.5, 1, 2, 3, 5, 10) if Ts[0] <= v <= Ts[-1] * 1.01]
        ax.set_xticks(ticks, [f"{v:g}" for v in ticks], minor=False)
        ax.xaxis.set_minor_formatter(NullFormatter())
        ticks = [v for v in (0.3, 0.5, 1, 2, 3, 5, 10) if gammas[0] <= v <= gammas[-1] * 1.01]
        ax.set_yticks(ticks, [f"{v:g}" for v in ticks], minor=False)
        ax.yaxis.set_minor_formatter(NullFormatter())
        leg = ax.legend(loc="upper right", labelcolor="white")
        for line in leg.get_lines()[2:]:
            line.set_color(COLORS[5])
        panel_label(ax, "a")

        ax = axs[1]
        k = kappa.ravel()
        ax.plot(
            k[outside.ravel()],
            final.ravel()[outside.ravel()],
            "o",
            ms=2.5,
            color=COLORS[0],
            alpha=0.6,
            mew=0,
            label="grid cells",
        )
        ax.plot(
            k[~outside.ravel()],
            final.ravel()[~outside.ravel()],
            "o",
            ms=2.5,
            color="0.6",
            mew=0,
            label="cells in the band",
        )
        kk = np.geomspace(k.min(), k.max(), 400)
        ax.plot(kk, meanfield_collapse(kk), **THEORY, label="mean-field |u*|")
        ax.axhline(cfg.collapse_threshold, color=COLORS[1], lw=0.8, ls=":")
        ax.text(
            k.min(),
            cfg.collapse_threshold,
            "collapse threshold",
            color=COLORS[1],
            fontsize=7,
            ha="left",
            va="bottom",
        )
        ax.axvline(1.0, color="0.5", lw=0.6)
        ax.set(
            xscale="log",
            xlabel="κ = a / (2γT)",
            ylabel="final mean |û|",
            title="All cells against κ",
            ylim=(0, 1.02),
        )
        ax.legend(loc="upper left")
        panel_label(ax, "b")
    return fig
