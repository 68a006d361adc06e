"""Experiment ``fig06``: the batch router against its mean-field limit (sec. 8.4, Fig. 6).

The batch router of sec. 8 (``B`` tokens a step, ``u_hat = (N1 - N2) / B``) is run from the
balanced state ``y0 = 0`` with a small skew ``h``; the replica mean of ``u_hat(t)`` is compared
with the mean-field ODE (6), ``y' = a tanh(y/2T) - gamma y + h``, mapped to load by
``u = tanh(y/2T)``, on the ODE time scale ``t = n eta``.

Figure: (a) mean +- sd of ``u_hat`` over the runs and the mean-field ``u(t)``; (b) the
stationary distribution of ``u_hat`` around the stable state against the linear-noise Gaussian of
:func:`moebif.sim.router.stationary_spread`; (c) Prop. 3.1: the distance to the ODE as ``eta -> 0``.

Claims: ``fig06-meanfield`` (sup-distance of the replica mean to the ODE), ``fig06-spread``
(stationary spread against the linear-noise prediction), ``prop3.1`` (mean-field limit).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..model.meanfield import solve_meanfield
from ..params import RouterParams
from ..sim.router import simulate_batch_router, stationary_spread
from .base import Check, Claim

ID = "fig06"
TITLE = "Batch router vs the mean-field ODE: transient, stationary spread, eta -> 0 limit"
PAPER = "Section 8.4, Fig. 6; Prop. 3.1"


@dataclass(frozen=True)
class Config:
    # the paper's values (sec. 8.4)
    a: float = 3.0
    h: float = 0.08
    gamma: float = 1.0
    T: float = 1.0
    batch: int = 512
    eta: float = 0.002
    runs: int = 40
    # not given: the curve starts balanced, so the transient shows the escape from y = 0
    y0: float = 0.0
    # not given: ODE time 20 = 10^4 steps covers the escape (t ~ 5) and ~10 relaxation times
    # 1/|F_y| = 1.55 of the stable state
    horizon: float = 20.0
    # one record every 5 steps (dt = 0.01): a smooth curve, 2001 points
    record_every: int = 5
    # fig06-meanfield: sup_t |mean u_hat - u_mf| (noise of the mean of 40 batches is ~0.007)
    meanfield_tol: float = 0.05

    # fig06-spread: a long run started at the stable state y*. The score gap y is an AR(1)
    # process with correlation time 1/(eta |F_y|) ~ 770 steps; 64 runs x 10^5 steps give
    # ~4000 independent y samples (sd known to ~1%) and 1.3e5 almost independent u_hat records.
    spread_runs: int = 64
    spread_horizon: float = 200.0
    # drop the first 10 ODE time units: the variance builds up at rate 2 |F_y| ~ 1.3
    spread_burn_in: float = 10.0
    # keep every 50th step: the batch noise that dominates u_hat is fresh each step, and y
    # stays oversampled (15 records per correlation time)
    spread_record_every: int = 50
    spread_rtol: float = 0.10

    # prop3.1: replica-mean distance to the ODE over a fixed horizon for shrinking eta. The
    # eta-bias (Euler step plus noise-induced drift, both O(eta)) is ~1e-3 at eta = 0.005; the
    # batch noise of u_hat (1/sqrt(B) a record) would swamp it, so the estimator is the mean of
    # E[u_hat | y] = tanh(y/2T) over the runs (same expectation, no batch noise), whose standard
    # error with 2000 runs (~3e-4) is several times smaller than the smallest bias.
    conv_etas: tuple = (0.04, 0.02, 0.01, 0.005)
    conv_runs: int = 2000
    # the escape from y = 0 (t ~ 4-5), where the error peaks, and the approach to y*
    conv_horizon: float = 10.0
    # common record grid for every eta (a multiple of each step)
    conv_dt: float = 0.04
    seed: int = 0


def quick() -> Config:
    return Config(
        spread_runs=16,
        spread_horizon=100.0,
        conv_etas=(0.04, 0.02, 0.01),
        conv_runs=500,
    )


def _steps(duration: float, eta: float) -> int:
    n = round(duration / eta)
    if not math.isclose(n * eta, duration, rel_tol=1e-9):
        raise ValueError(f"duration {duration} is not a whole number of steps of eta={eta}")
    return n


def _transient(cfg: Config, p: RouterParams, progress) -> dict:
    steps = _steps(cfg.horizon, cfg.eta)
    sim = simulate_batch_router(
        p,
        batch=cfg.batch,
        eta=cfg.eta,
        steps=steps,
        runs=cfg.runs,
        seed=cfg.seed,
        y0=cfg.y0,
        record_every=cfg.record_every,
        progress=progress,
    )
    u_mf = solve_meanfield(p, sim.t, cfg.y0)
    err = np.abs(sim.u_mean - u_mf)
    return {
        "t": sim.t,
        "u_mean": sim.u_mean,
        "u_std": sim.u_std,
        "u_meanfield": u_mf,
        "sup_error": float(err.max()),
        "t_sup_error": float(sim.t[err.argmax()]),
    }


def _stationary(cfg: Config, p: RouterParams) -> dict:
    pred = stationary_spread(p, batch=cfg.batch, eta=cfg.eta)
    steps = _steps(cfg.spread_horizon, cfg.eta)
    every = cfg.spread_record_every
    sim = simulate_batch_router(
        p,
        batch=cfg.batch,
        eta=cfg.eta,
        steps=steps,
        runs=cfg.spread_runs,
        seed=cfg.seed + 1,
        y0=pred.y_star,
        record_every=every,
        record_scores=True,
    )
    keep = sim.t >= cfg.spread_burn_in
    u = sim.u_hat[:, keep].ravel()
    y = sim.scores[:, keep].ravel()
    # u_hat lives on the lattice 2k/B - 1: bins of two lattice points each, edges between points
    step = 2.0 / cfg.batch
    k = np.rint((u + 1.0) / step)
    edges = -1.0 + step * (np.arange(k.min(), k.max() + 3.0, 2.0) - 0.5)
    counts, edges = np.histogram(u, bins=edges)
    return {
        "y_star": pred.y_star,
        "u_star": pred.u_star,
        "eigenvalue": pred.eigenvalue,
        "predicted_u_hat_std": pred.u_hat_std,
        "predicted_y_std": pred.y_std,
        "predicted_load_std": pred.load_std,
        "measured_u_hat_std": float(u.std(ddof=1)),
        "measured_y_std": float(y.std(ddof=1)),
        "measured_u_hat_mean": float(u.mean()),
        "samples": int(u.size),
        "hist_edges": edges,
        "hist_density": counts / (u.size * np.diff(edges)),
    }


def _convergence(cfg: Config, p: RouterParams, progress) -> dict:
    etas = sorted(cfg.conv_etas, reverse=True)
    t = np.arange(_steps(cfg.conv_horizon, cfg.conv_dt) + 1) * cfg.conv_dt
    u_mf = solve_meanfield(p, t, cfg.y0)
    weak, weak_se, t_weak, strong = [], [], [], []
    for i, eta in enumerate(etas):
        sim = simulate_batch_router(
            p,
            batch=cfg.batch,
            eta=eta,
            steps=_steps(cfg.conv_horizon, eta),
            runs=cfg.conv_runs,
            seed=cfg.seed + 100 + i,
            y0=cfg.y0,
            record_every=_steps(cfg.conv_dt, eta),
            record_scores=True,
        )
        load = np.tanh(sim.scores / (2.0 * p.T))  # E[u_hat | y]: same mean, no batch noise
        dev = np.abs(load.mean(axis=0) - u_mf)
        j = int(dev.argmax())
        weak.append(float(dev[j]))
        weak_se.append(float(load[:, j].std(ddof=1) / math.sqrt(cfg.conv_runs)))
        t_weak.append(float(t[j]))
        # per-replica sup distance: Prop. 3.1 is convergence in probability of each path
        strong.append(float(np.sqrt(np.mean(np.abs(load - u_mf).max(axis=1) ** 2))))
        if progress:
            progress(i + 1, len(etas))
    return {
        "eta": etas,
        "weak_error": weak,
        "weak_error_se": weak_se,
        "t_weak_error": t_weak,
        "strong_error": strong,
        "weak_slope": float(np.polyfit(np.log(etas), np.log(weak), 1)[0]),
        "strong_slope": float(np.polyfit(np.log(etas), np.log(strong), 1)[0]),
    }


def claims(data: dict, config: Config) -> list[Claim]:
    cfg = config
    tr, st, cv = data["transient"], data["stationary"], data["convergence"]
    out = [
        Claim(
            "fig06-meanfield",
            f"The mean of u_hat over {cfg.runs} runs of the batch router (a={cfg.a:g}, "
            f"h={cfg.h:g}, gamma={cfg.gamma:g}, T={cfg.T:g}, B={cfg.batch}, eta={cfg.eta:g}) "
            "follows the mean-field ODE (6) mapped to load, u = tanh(y/2T)",
            predicted=0.0,
            measured={"sup_error": tr["sup_error"], "at_t": tr["t_sup_error"]},
            tolerance=f"sup over t in [0, {cfg.horizon:g}] of |mean u_hat - u_mf| "
            f"<= {cfg.meanfield_tol:g}",
            holds=tr["sup_error"] <= cfg.meanfield_tol,
            checks=(Check("sup_error", tr["sup_error"], upper=cfg.meanfield_tol),),
        )
    ]
    rel_u = st["measured_u_hat_std"] / st["predicted_u_hat_std"] - 1.0
    rel_y = st["measured_y_std"] / st["predicted_y_std"] - 1.0
    out.append(
        Claim(
            "fig06-spread",
            "Around the stable state the stationary spread of the batch router matches the "
            "linear-noise (AR(1)) prediction: sd of u_hat, and sd of the score gap y",
            predicted={"u_hat_std": st["predicted_u_hat_std"], "y_std": st["predicted_y_std"]},
            measured={
                "u_hat_std": st["measured_u_hat_std"],
                "y_std": st["measured_y_std"],
                "rel_dev_u_hat": rel_u,
                "rel_dev_y": rel_y,
                "samples": st["samples"],
            },
            tolerance=f"|measured / predicted - 1| <= {cfg.spread_rtol:g} for both "
            f"({cfg.spread_runs} runs x {cfg.spread_horizon:g} time units from y*, "
            f"first {cfg.spread_burn_in:g} dropped)",
            holds=abs(rel_u) <= cfg.spread_rtol and abs(rel_y) <= cfg.spread_rtol,
            checks=(
                Check.relative(
                    "u_hat_std",
                    st["measured_u_hat_std"],
                    st["predicted_u_hat_std"],
                    cfg.spread_rtol,
                ),
                Check.relative(
                    "y_std", st["measured_y_std"], st["predicted_y_std"], cfg.spread_rtol
                ),
            ),
        )
    )
    weak, strong = np.array(cv["weak_error"]), np.array(cv["strong_error"])
    mono_w = bool(np.all(np.diff(weak) < 0))
    mono_s = bool(np.all(np.diff(strong) < 0))
    out.append(
        Claim(
            "prop3.1",
            "Mean-field limit (Prop. 3.1): as eta -> 0 the batch router approaches the ODE on a "
            f"fixed horizon t <= {cfg.conv_horizon:g}; the replica mean (weak error, O(eta)) and "
            "each path (RMS over runs of sup_t |u_path - u_mf|) both converge",
            predicted="errors decrease to 0 as eta -> 0",
            measured={
                "eta": cv["eta"],
                "weak_error": cv["weak_error"],
                "weak_error_se": cv["weak_error_se"],
                "strong_error": cv["strong_error"],
                "weak_slope": cv["weak_slope"],
                "strong_slope": cv["strong_slope"],
            },
            tolerance="both errors strictly decrease as eta decreases, and "
            "weak_error(eta_min) < weak_error(eta_max) / 2 "
            f"({cfg.conv_runs} runs an eta; path load = tanh(y/2T) = E[u_hat | y])",
            holds=mono_w and mono_s and weak[-1] < weak[0] / 2,
            checks=(
                Check("smallest weak-error decrease", -np.max(np.diff(weak)), lower=0.0),
                Check("smallest strong-error decrease", -np.max(np.diff(strong)), lower=0.0),
                Check("weak_error(eta_min)", weak[-1], upper=weak[0] / 2),
            ),
        )
    )
    return out


def run(config: Config, progress=None) -> dict:
    cfg = config
    p = RouterParams(a=cfg.a, gamma=cfg.gamma, T=cfg.T, h=cfg.h)
    # work units: the transient (4), the stationary run (4), one per eta of the eta scan
    total = 8 + len(cfg.conv_etas)

    def report(done):
        if progress:
            progress(done, total)

    transient = _transient(cfg, p, lambda d, n: report(4 * d / n))
    stationary = _stationary(cfg, p)
    report(8)
    convergence = _convergence(cfg, p, lambda d, n: report(8 + d))
    return {"transient": transient, "stationary": stationary, "convergence": convergence}


def plot(data: dict, config: Config):
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from ..style import COLORS, THEORY, figure_style, panel_label

    cfg = config
    tr, st, cv = (data[k] for k in ("transient", "stationary", "convergence"))
    with figure_style():
        fig = plt.figure(figsize=(7.0, 5.4), layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=[1, 1.05])
        ax = top.subplots()
        t, m, s = (np.asarray(tr[k]) for k in ("t", "u_mean", "u_std"))
        ax.fill_between(
            t, m - s, m + s, color=COLORS[0], alpha=0.22, lw=0, label="± 1 sd over runs"
        )
        ax.plot(t, m, color=COLORS[0], lw=1.0, label=f"batch router, mean of {cfg.runs} runs")
        ax.plot(
            t,
            tr["u_meanfield"],
            **{**THEORY, "linewidth": 1.6},
            label="mean-field ODE (6), u = tanh(y/2T)",
        )
        ax.set(
            xlabel="time t = n η",
            ylabel="load imbalance û = (N₁ − N₂)/B",
            title=f"a = {cfg.a:g}, h = {cfg.h:g}, γ = {cfg.gamma:g}, T = {cfg.T:g}, "
            f"B = {cfg.batch}, η = {cfg.eta:g}, y(0) = {cfg.y0:g}",
            xlim=(0, t[-1]),
        )
        ax.legend(loc="lower right", title=f"sup |mean û − u_mf| = {tr['sup_error']:.3f}")
        panel_label(ax, "a")

        axs = bottom.subplots(1, 2)
        ax = axs[0]
        edges, dens = np.asarray(st["hist_edges"]), np.asarray(st["hist_density"])
        ax.stairs(dens, edges, fill=True, color=COLORS[0], alpha=0.3)
        ax.stairs(dens, edges, color=COLORS[0], lw=0.9, label="batch router (stationary run)")
        us, sd = st["u_star"], st["predicted_u_hat_std"]
        x = np.linspace(edges[0], edges[-1], 400)
        ax.plot(
            x,
            np.exp(-0.5 * ((x - us) / sd) ** 2) / (sd * math.sqrt(2 * math.pi)),
            **THEORY,
            label="linear-noise Gaussian",
        )
        ax.text(
            0.02,
            0.97,
            f"sd û  {st['measured_u_hat_std']:.4f}\n  theory {sd:.4f}\n"
            f"sd y  {st['measured_y_std']:.5f}\n  theory {st['predicted_y_std']:.5f}",
            transform=ax.transAxes,
            va="top",
            fontsize=7,
        )
        ax.set(
            xlabel=f"û around the stable state u* = {us:.3f}",
            ylabel="probability density",
            title="Stationary spread",
            ylim=(0, 1.3 * dens.max()),
        )
        ax.legend(loc="upper right")
        panel_label(ax, "b")

        ax = axs[1]
        eta = np.asarray(cv["eta"])
        weak, strong = np.asarray(cv["weak_error"]), np.asarray(cv["strong_error"])
        ax.plot(eta, strong, "s-", color=COLORS[2], ms=4, label="single path (RMS over runs)")
        ax.errorbar(
            eta,
            weak,
            yerr=cv["weak_error_se"],
            fmt="o-",
            color=COLORS[1],
            ms=4,
            capsize=2,
            label="replica mean (± 1 s.e.)",
        )
        # orders of convergence, drawn through the largest-eta point as guides
        ax.plot(eta, strong[0] * np.sqrt(eta / eta[0]), **THEORY, label="∝ η¹ᐟ², ∝ η (guides)")
        ax.plot(eta, weak[0] * eta / eta[0], **THEORY)
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="step size η",
            ylabel=f"sup over t ≤ {cfg.conv_horizon:g} of |u − u_mf|",
            title="Prop. 3.1: mean-field limit η → 0",
            ylim=(0.3 * weak.min(), 2.0 * strong.max()),
        )
        ax.set_xticks(eta, [f"{e:g}" for e in eta])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.legend(loc="lower right")
        panel_label(ax, "c")
    return fig
