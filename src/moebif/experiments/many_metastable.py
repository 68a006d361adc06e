"""Experiment ``nexp-metastable``: the balanced router between ``a_SN`` and ``N gamma T``.

N = 8, top-1, ``gamma = T = 1``, ``a = 6.5`` (between ``a_SN = 4.25`` and ``N gamma T = 8``):
the uniform state is linearly stable, yet a collapsed state is stable too, behind the barrier
``Delta V`` of the one-winner saddle.

(1) **Escape by batch noise.** Replicas start balanced and run until they collapse (scores
pass beyond the saddle). The mean escape time is measured for several batch sizes B (the noise
temperature at the uniform state is ``eps_0 = eta a^2 / (2 B N)``) and compared with the
Kramers/Eyring estimate of :mod:`moebif.model.metastability`: ``log E[tau]`` is linear in the
barrier-to-noise ratio ``X = Delta V / eps_0`` with slope ``kappa_path`` (< 1, because the
noise along the escape path is hotter than at the uniform state).

**The prefactor.** The Eyring-Kramers estimate (exact 1-d mean first-passage time along the
path, Gaussian transverse widths at the uniform state and at the saddle, N saddles) overestimates
the mean escape time by a constant factor, ~1.6 here, at every B: the measured ratio is
0.6-0.7. This is not a finite-barrier effect (the ratio does not move towards 1 as X grows) nor
the multinomial (non-Gaussian) batch noise or the time step (a Gaussian-noise chain with the same
covariance and a 1-d chain along the path give the same). It is the irreversibility of the
dynamics: the noise covariance ``(eta a^2 / B)(diag p - p p^T)`` depends on the state, and off
the symmetric line it couples the path with the N - 2 transverse (loser) contrasts. The
Eyring-Kramers factor uses only the transverse widths at the two end points; the WKB prefactor
``K`` of the stationary density ``K exp(-Phi / eps)`` is then transported along the escape path
(Maier-Stein; Bouchet-Reygner 2016 for additive noise) and changes between them by the factor
:func:`transverse_correction` (0.620 at N = 8, a = 6.5; 0.30 at N = 16, a = 10; 0.84 at N = 4,
a = 3.7, all checked against the batch router within its standard error).

(2) **Collapse by a transient skew.** A drift ``h`` on one expert for a time ``tau`` (a burst of
skewed data), then nothing: the probability that the router ends collapsed, as a map over
``(tau, h)``, against the mean-field boundary ``h_c(tau)`` (:func:`moebif.model.metastability.
pulse_threshold`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..params import RouterParams
from .base import Check, Claim, floats, num

ID = "nexp-metastable"
TITLE = "Metastable balance: escape times against Kramers, and collapse by a skew pulse"
PAPER = "Beyond sec. 3.2: N experts between a_SN and N gamma T"


@dataclass(frozen=True)
class Config:
    n_experts: int = 8
    a: float = 6.5  # inside the metastable window (4.25, 8); barrier Delta V = 0.0092
    gamma: float = 1.0
    T: float = 1.0
    # escape: eta 0.05 (relaxation rates <= 1 here, so the Euler map is close to the ODE) and
    # batches giving X = Delta V / eps_0 from ~2.8 to ~6.2 (mean escape times ~1e2 to ~2e3)
    eta: float = 0.05
    batches: tuple = (40, 52, 64, 76, 88)
    escape_runs: int = 160
    cap_factor: float = 12.0  # stop a run at 12x the predicted mean (censored; none expected)
    slope_tolerance: float = 0.20  # the claim
    # pulse map: B = 256 makes spontaneous escape negligible (X ~ 18) within the window
    pulse_batch: int = 256
    pulse_taus: tuple = (0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)
    pulse_factors: tuple = (0.6, 0.7, 0.8, 0.88, 0.94, 1.0, 1.06, 1.13, 1.25, 1.4, 1.6)
    pulse_runs: int = 32
    relax_time: float = 40.0  # after the pulse: long enough to fall back or to collapse
    pulse_tolerance: float = 0.10
    seed: int = 21


def quick() -> Config:
    return Config(
        batches=(40, 56, 72),
        escape_runs=64,
        pulse_taus=(0.5, 2.0, 8.0, 32.0),
        pulse_factors=(0.6, 0.8, 0.94, 1.06, 1.25, 1.6),
        pulse_runs=16,
    )


def transverse_correction(params: RouterParams) -> float:
    """The factor by which the N - 2 transverse contrasts change the mean escape time from the
    uniform state over the one-winner saddle, beyond the Eyring-Kramers ratio of Gaussian
    widths (see the module docstring): ``E[tau] = tau_EK * C``.

    Along the symmetric path ``r = x u`` (``u`` the winner contrast, gap ``d = x / (c T)``,
    ``c = sqrt((N - 1)/N)``) with one transverse loser contrast ``y``, write the drift ``b`` and
    the noise ``A = diag p - p p^T`` (in units of ``eps = eta a^2 / B``) to second order in
    ``y``. The quasi-potential is ``Phi = Phi_0(x) + h(x) y^2 / 2`` per transverse direction,
    ``Phi_0' = 2 V' / A_xx``; its transverse curvature obeys the Riccati equation (from the
    Hamilton-Jacobi equation at order ``y^2``, along the escape path ``x' = V'(x)``)

        V' h' / 2 = lam h - A_yy h^2 / 2 - c1 Phi_0' h - b2 Phi_0' / 2 - A2 Phi_0'^2 / 4,

    from ``h = 2 lam / A_yy`` at the uniform state to the same at the saddle, with
    ``lam = gamma - a p_l / T`` (transverse relaxation rate), ``A_yy = p_l``,
    ``c1 = d A_xy / dy = -kappa p_w p_l / T``, ``b2 = d^2 b_x / dy^2 = -a kappa p_w p_l / T^2``,
    ``A2 = d^2 A_xx / dy^2 = -kappa^2 (1 - 2 p_w) p_w p_l / T^2``, ``kappa = sqrt(N / (N - 1))``.
    The WKB prefactor obeys (order ``eps^0`` of the Fokker-Planck equation)
    ``d log K / dt = -(N - 2)(-lam + A_yy h / 2 + c1 Phi_0')`` along the path, so

        C = K(uniform) / K(saddle) = exp( (N - 2) int_0^{x_s} (-lam + A_yy h / 2 + c1 Phi_0')
            / V'(x) dx ).

    For additive noise and a gradient drift the integrand vanishes (``h = 2 lam / A_yy``,
    ``c1 = 0``) and ``C = 1``."""
    from scipy.integrate import solve_ivp

    from ..model.metastability import escape_theory

    p, n = params, params.n_experts
    th = escape_theory(p)
    c, kap = math.sqrt((n - 1) / n), math.sqrt(n / (n - 1))

    def terms(x):
        e = math.exp(-x / (c * p.T))
        pw = 1.0 / (1.0 + (n - 1) * e)
        pl = e * pw
        vp = p.gamma * x - p.a * c * (pw - pl)
        axx = kap**2 * pw * (1.0 - pw)
        lam = p.gamma - p.a * pl / p.T
        c1 = -kap * pw * pl / p.T
        b2 = -p.a * kap * pw * pl / p.T**2
        a2 = -(kap**2) * (1.0 - 2.0 * pw) * pw * pl / p.T**2
        return vp, 2.0 * vp / axx, pl, lam, c1, b2, a2

    def rhs(x, z):
        h = z[0]
        vp, phi, ayy, lam, c1, b2, a2 = terms(x)
        dh = 2.0 * (
            lam * h - 0.5 * ayy * h * h - c1 * phi * h - 0.5 * b2 * phi - 0.25 * a2 * phi**2
        )
        return [dh / vp, (n - 2) * (-lam + 0.5 * ayy * h + c1 * phi) / vp]

    # the path starts and ends at fixed points (V' = 0), where h is at its local value; both
    # are attracting for the Riccati flow, so the ends can be cut off very close to them
    x0, x1 = 1e-7 * th.x_s, (1.0 - 1e-7) * th.x_s
    _, _, pl0, lam0, *_ = terms(x0)
    sol = solve_ivp(rhs, (x0, x1), [2.0 * lam0 / pl0, 0.0], method="LSODA", rtol=1e-10, atol=1e-12)
    return float(math.exp(sol.y[1, -1]))


def _stop_gap(th) -> float:
    """``max r - mean r`` halfway between the saddle and the collapsed state (one winner)."""
    n = th.n
    return (n - 1) / n * th.params.T * 0.5 * (th.d_s + th.d_c)


def run(config: Config, progress=None) -> dict:
    from ..model.metastability import escape_theory, pulse_threshold
    from ..sim.topk_router import simulate_topk_router

    c = config
    p = RouterParams(a=c.a, gamma=c.gamma, T=c.T, n_experts=c.n_experts)
    th = escape_theory(p)
    gap = _stop_gap(th)
    total = len(c.batches) + len(c.pulse_taus)
    done = 0

    # (1) escape times
    rows = []
    for i, B in enumerate(c.batches):
        pred = th.mean_escape_time(batch=B, eta=c.eta)
        steps = int(math.ceil(c.cap_factor * pred / c.eta))
        sim = simulate_topk_router(
            p,
            batch=B,
            eta=c.eta,
            steps=steps,
            runs=c.escape_runs,
            seed=c.seed + i,
            record_every=None,
            stop_gap=gap,
        )
        t_hit = sim.hit_time
        hits = int(np.isfinite(t_hit).sum())
        exposure = float(np.nansum(t_hit) + (c.escape_runs - hits) * steps * c.eta)
        mean = exposure / hits if hits else math.inf  # exponential MLE with censoring
        rows.append(
            {
                "batch": B,
                "X": th.barrier_to_noise(batch=B, eta=c.eta),
                "hits": hits,
                "mean_escape_time": mean,
                "log_mean": math.log(mean),
                "log_se": 1 / math.sqrt(hits),
                "predicted_time": pred,
                "median": float(np.nanmedian(t_hit)),
                "cv": float(np.nanstd(t_hit) / np.nanmean(t_hit)),
            }
        )
        done += 1
        if progress:
            progress(done, total)
    X = np.array([r["X"] for r in rows])
    L = np.array([r["log_mean"] for r in rows])
    w = np.array([r["hits"] for r in rows], dtype=float)
    slope, icpt = np.polyfit(X, L, 1, w=np.sqrt(w))
    # slope's standard error from the Poisson-like scatter of log means (1/sqrt(hits))
    Xc = X - np.average(X, weights=w)
    slope_se = math.sqrt(1.0 / np.sum(w * Xc**2))

    # (2) pulse map
    e1 = np.zeros(c.n_experts)
    e1[0] = 1.0
    h_c = pulse_threshold(p, np.array(c.pulse_taus))
    cells = []
    for j, (tau, hc) in enumerate(zip(c.pulse_taus, h_c, strict=True)):
        n_pulse = max(1, round(tau / c.eta))
        steps = n_pulse + round(c.relax_time / c.eta)
        for f in c.pulse_factors:
            sched = np.zeros(steps)
            sched[:n_pulse] = f * hc
            sim = simulate_topk_router(
                p,
                batch=c.pulse_batch,
                eta=c.eta,
                steps=steps,
                runs=c.pulse_runs,
                seed=c.seed + 1000 + j,
                h=sched,
                direction=e1,
                b=np.zeros(c.n_experts),
                record_every=None,
                stop_gap=gap,
            )
            cells.append(
                {"tau": tau, "h": f * hc, "factor": f, "p_collapse": float(np.mean(sim.hit >= 0))}
            )
        done += 1
        if progress:
            progress(done, total)
    # h where P(collapse) crosses 1/2, per tau (linear interpolation in log h)
    h50 = []
    for tau in c.pulse_taus:
        cs = [x for x in cells if x["tau"] == tau]
        hs = np.array([x["h"] for x in cs])
        ps = np.array([x["p_collapse"] for x in cs])
        idx = np.flatnonzero((ps[:-1] < 0.5) & (ps[1:] >= 0.5))
        if idx.size == 0:
            h50.append(math.nan)
            continue
        k = int(idx[0])
        lh = np.log(hs[k]) + (0.5 - ps[k]) / (ps[k + 1] - ps[k]) * np.log(hs[k + 1] / hs[k])
        h50.append(float(np.exp(lh)))
    h50 = np.array(h50)

    # the potential and the noise along the path, for the figure
    d = np.linspace(-0.5, th.d_c + 0.5, 400)
    x = th.x_of_d(d)
    n = c.n_experts
    zmax = np.maximum(d, 0.0)
    ew, el = np.exp(d - zmax), np.exp(-zmax)
    den = ew + (n - 1) * el
    pw = ew / den
    # logsumexp(r / T) on the line r = x u: r_l / T + log(e^d + N - 1)
    lse = -x / (c.T * math.sqrt(n * (n - 1))) + zmax + np.log(den)
    V = 0.5 * c.gamma * x**2 - c.a * c.T * lse + c.a * c.T * math.log(n)
    s = n * pw * (1 - pw) / (n - 1)
    data = {
        "theory": {
            "barrier": th.barrier,
            "kappa_path": th.kappa_path,
            "d_s": th.d_s,
            "d_c": th.d_c,
            "lambda_u": th.lambda_u,
            "lambda_s": th.lambda_s,
            "transverse_factor": th.transverse,
            "transverse_correction": transverse_correction(p),
            "stop_gap": gap,
        },
        "escape": rows,
        "fit": {"slope": float(slope), "intercept": float(icpt), "slope_se": slope_se},
        "pulse": {"cells": cells, "taus": list(c.pulse_taus), "h_c": h_c, "h_50": h50},
        "path": {"d": d, "V": V, "noise_ratio": s * n},
    }
    return data


def claims(data: dict, config: Config) -> list[Claim]:
    c = config
    pred_slope = data["theory"]["kappa_path"]
    slope, slope_se = data["fit"]["slope"], data["fit"]["slope_se"]
    ratio = np.array([num(r["mean_escape_time"]) / r["predicted_time"] for r in data["escape"]])
    hits = np.array([r["hits"] for r in data["escape"]], dtype=float)
    corr = data["theory"]["transverse_correction"]
    # pooled log ratio, each B weighted by its escapes (the standard error of a log mean of
    # exponential times is 1 / sqrt(hits))
    ok = (hits > 0) & np.isfinite(ratio)
    w = hits[ok]
    pooled = float(np.exp(np.sum(w * np.log(ratio[ok])) / w.sum())) if ok.any() else math.nan
    pooled_se = float(1.0 / math.sqrt(w.sum())) if ok.any() else math.nan
    h_c, h50 = floats(data["pulse"]["h_c"]), floats(data["pulse"]["h_50"])
    rel = np.abs(h50 / h_c - 1.0)
    return [
        Claim(
            "nexp-kramers-slope",
            f"N = {c.n_experts}, a = {c.a:g} (metastable): log of the mean escape time of the "
            "balanced batch router is linear in the barrier-to-noise ratio X = Delta V / eps_0, "
            "eps_0 = eta a^2 / (2 B N), with the slope kappa_path of the quasi-potential "
            "along the one-winner escape path",
            predicted=pred_slope,
            measured={"slope": float(slope), "standard_error": slope_se},
            tolerance=f"relative error <= {c.slope_tolerance:.0%} "
            f"(measured {abs(slope / pred_slope - 1):.1%})",
            holds=abs(slope / pred_slope - 1.0) <= c.slope_tolerance,
            checks=(Check.relative("slope", slope, pred_slope, c.slope_tolerance),),
        ),
        Claim(
            "nexp-kramers-prefactor",
            "Mean escape times over the Eyring-Kramers estimate (1-d exact mean first-passage "
            "time along the path, Gaussian transverse widths, N saddles) equal the transverse "
            "WKB correction C of the state-dependent batch noise (the prefactor transported "
            "along the escape path), the same at every B; the plain Eyring-Kramers estimate "
            "(ratio 1) is off by the factor C",
            predicted={"ratio": corr, "plain Eyring-Kramers": 1.0},
            measured={
                "pooled ratio": pooled,
                "standard_error": pooled_se,
                "measured/predicted": ratio.tolist(),
            },
            tolerance=f"pooled ratio (weighted by escapes, {int(w.sum())} over "
            f"{len(ratio)} B) within 3 standard errors ({3 * pooled_se:.1%}) of C = {corr:.3f} "
            f"(measured {pooled / corr - 1:+.1%}); the earlier tolerance was a factor 2 around 1",
            holds=bool(ok.any() and abs(math.log(pooled / corr)) <= 3 * pooled_se),
            checks=(
                Check.absolute("log pooled ratio", math.log(pooled), math.log(corr), 3 * pooled_se),
            ),
        ),
        Claim(
            "nexp-pulse-boundary",
            f"A skew pulse h on one expert for a time tau collapses the router (a = {c.a:g}, "
            "uniform state linearly stable) with probability 1/2 at the mean-field boundary "
            "h_c(tau), where d(tau) reaches the saddle",
            predicted=h_c.tolist(),
            measured=h50.tolist(),
            tolerance=f"relative error <= {c.pulse_tolerance:.0%} at every tau "
            f"(worst {np.nanmax(rel) if np.isfinite(rel).any() else math.nan:.1%})",
            holds=bool(np.all(np.isfinite(rel)) and np.all(rel <= c.pulse_tolerance)),
            checks=tuple(
                Check.relative(f"h_50 tau={t:g}", m, p, c.pulse_tolerance)
                for t, m, p in zip(data["pulse"]["taus"], h50, h_c, strict=True)
            ),
        ),
    ]


def plot(data: dict, config: Config):
    import matplotlib.pyplot as plt
    from matplotlib.colors import Normalize

    from ..model.metastability import pulse_threshold
    from ..style import COLORS, THEORY, figure_style, panel_label

    c = config
    d = data
    th = d["theory"]
    with figure_style():
        fig, axs = plt.subplots(1, 3, figsize=(7.2, 2.6), layout="constrained")
        ax = axs[0]
        path = d["path"]
        dd, V = np.asarray(path["d"]), np.asarray(path["V"])
        dv = th["barrier"]
        ax.plot(dd, V / dv, color=COLORS[0], label="potential V / ΔV")
        ax.axvline(th["d_s"], color="0.5", lw=0.8, ls=":")
        ax.annotate(
            "",
            xy=(th["d_s"], 1.0),
            xytext=(th["d_s"], 0.0),
            arrowprops={"arrowstyle": "<->", "color": "0.3", "lw": 0.8},
        )
        ax.text(th["d_s"] + 0.05, 0.45, "ΔV", fontsize=7.5)
        ax.set(
            xlabel="score gap d = (r₁ − r_l)/T",
            ylabel="(V − V_uniform) / ΔV",
            title="escape path",
            xlim=(-0.4, 2.2),
            ylim=(-6.0, 2.0),
        )
        ax.text(
            0.97,
            0.03,
            f"N = {c.n_experts}\na = {c.a:g} γT",
            transform=ax.transAxes,
            ha="right",
            va="bottom",
            fontsize=7,
        )
        ax2 = ax.twinx()
        ax2.plot(
            dd, path["noise_ratio"], color=COLORS[4], lw=1.0, ls="-.", label="noise D(d) / D(0)"
        )
        ax2.set_ylim(0.0, 2.5)
        ax2.set_ylabel("noise along path D(d) / D(0)", color=COLORS[4], fontsize=7.5)
        ax2.tick_params(axis="y", colors=COLORS[4], labelsize=7)
        ax2.spines["right"].set_visible(True)
        h1, l1 = ax.get_legend_handles_labels()
        h2, l2 = ax2.get_legend_handles_labels()
        ax.legend(h1 + h2, l1 + l2, fontsize=6.3, loc="lower left")
        panel_label(ax, "a")

        ax = axs[1]
        rows = d["escape"]
        X = np.array([r["X"] for r in rows])
        L = np.array([r["log_mean"] for r in rows])
        se = np.array([r["log_se"] for r in rows])
        ax.errorbar(
            X,
            L,
            yerr=se,
            fmt="o",
            color=COLORS[0],
            ms=4,
            capsize=2,
            label="batch router, mean escape time",
        )
        xx = np.linspace(X.min() * 0.9, X.max() * 1.05, 50)
        f = d["fit"]
        ax.plot(
            xx,
            f["intercept"] + f["slope"] * xx,
            "-",
            color=COLORS[0],
            lw=0.9,
            label=f"fit, slope {f['slope']:.3f}",
        )
        lp = np.log([r["predicted_time"] for r in rows])
        ax.plot(X, lp, **THEORY, label=f"Eyring-Kramers, slope κ = {th['kappa_path']:.3f}")
        corr = th["transverse_correction"]
        ax.plot(
            X, lp + np.log(corr), "-", color=COLORS[2], lw=1.0, label=f"× WKB correction {corr:.3f}"
        )
        ax.set(
            xlabel="barrier / noise  X = ΔV / ε₀",
            ylabel="log mean escape time (ODE time)",
            title="escape by batch noise",
        )
        ax.legend(fontsize=6.3, loc="upper left")
        panel_label(ax, "b")

        ax = axs[2]
        cells = d["pulse"]["cells"]
        tau = np.array([x["tau"] for x in cells])
        h = np.array([x["h"] for x in cells])
        pc = np.array([x["p_collapse"] for x in cells])
        sc = ax.scatter(
            tau, h, c=pc, cmap="viridis", norm=Normalize(0, 1), s=22, marker="s", edgecolors="none"
        )
        tt = np.geomspace(min(tau) * 0.8, max(tau) * 1.2, 60)
        p = RouterParams(a=c.a, gamma=c.gamma, T=c.T, n_experts=c.n_experts)
        ax.plot(tt, pulse_threshold(p, tt), **THEORY, label="mean-field boundary h_c(τ)")
        ax.plot(
            d["pulse"]["taus"],
            d["pulse"]["h_50"],
            "o",
            mfc="none",
            color=COLORS[1],
            ms=5,
            label="measured P = 1/2",
        )
        ax.set(
            xscale="log",
            yscale="log",
            xlabel="pulse duration τ (ODE time)",
            ylabel="pulse strength h",
            title="collapse by a skew pulse",
        )
        ax.legend(fontsize=6.3, loc="upper right")
        cb = fig.colorbar(sc, ax=ax, pad=0.01)
        cb.set_label("P(collapse)", fontsize=7.5)
        cb.ax.tick_params(labelsize=7)
        panel_label(ax, "c")
    return fig
