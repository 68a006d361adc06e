"""Experiment ``fig09``: finite-time onset of collapse vs Tc = a / (2 gamma) (sec. 8.7, Fig. 9).

At ``a = 3``, ``h = 0`` and for several ``gamma``, the batch router is run at a scan of
temperatures ``T`` from a small random initial asymmetry and the final mean ``|u_hat|`` over the
runs is recorded. The onset temperature is where that curve reaches ``onset_level = 0.1``
(linear interpolation on the ``T`` grid, scanning down from high ``T``). Theory (Thm 4.1): the
balanced state loses stability at ``Tc = a / (2 gamma)``; at a finite horizon the unstable mode,
growing at ``gamma (kappa - 1)``, needs ``kappa = Tc / T`` somewhat above 1 to become visible, so
the finite-time onset lies a little below ``Tc``.

Time scale, as in ``fig08``: ``eta = eta_gamma / gamma`` and ``t_end = horizon_gamma / gamma``. In
the scaled variables ``q = y / 2T``, ``s = gamma t`` the router then depends on ``kappa`` only, so
the expected onset ratio ``T_onset / Tc`` is the same for every gamma and the scatter between
gammas is Monte-Carlo noise (each gamma has its own random streams): the scale ``Tc ~ 1/gamma``
is tested directly.

Figure: (a) final mean ``|u_hat|`` against ``T / Tc`` for every gamma, the level 0.1 and
``T = Tc`` (dashed); (b) the onset temperatures (bootstrap error bars) against ``Tc = a / 2 gamma``
(dashed).

Claims: ``fig09-onset`` (``T_onset / Tc`` in ``[0.85, 1)`` for every gamma), ``fig09-scale``
(``T_onset`` scales as ``gamma^-1``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .base import Check, Claim, floats, num
from .fig08_collapse_region import final_abs_u

ID = "fig09"
TITLE = "Finite-time onset temperature of collapse against Tc = a / (2 gamma)"
PAPER = "Section 8.7, Fig. 9; Thm 4.1"


@dataclass(frozen=True)
class Config:
    # the paper's values (sec. 8.7)
    a: float = 3.0
    h: float = 0.0
    onset_level: float = 0.1
    # not given: eight gammas over [0.5, 3] (Tc from 3 down to 0.5)
    gammas: tuple = (0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5, 3.0)
    # not given: the T scan, in units of Tc: 31 points, 0.01 apart, over [0.8, 1.1] (brackets
    # the whole accepted range [0.85, 1) and goes above Tc, where no collapse is expected)
    T_over_Tc: tuple = tuple(np.round(np.linspace(0.8, 1.1, 31), 10))
    # batch size of the paper's other batch-router experiments (sec. 8.4)
    batch: int = 512
    # not given: replicas a point (the onset's bootstrap error is ~0.003 Tc with 32)
    runs: int = 32
    # not given: eta = eta_gamma / gamma and t_end = horizon_gamma / gamma, the same choice as
    # fig08 (the unstable mode grows at gamma (kappa - 1): time in units of 1/gamma)
    eta_gamma: float = 0.02
    horizon_gamma: float = 100.0
    # the same "small random initial asymmetry" as fig08: initial load ~ N(0, 0.05^2)
    init_asymmetry: float = 0.05
    # claim fig09-onset: T_onset / Tc must lie in [lo, 1)
    ratio_min: float = 0.85
    # claim fig09-scale: fitted exponent of T_onset ~ gamma^p equals -1 within this
    exponent_tol: float = 0.05
    bootstrap: int = 200
    seed: int = 0


def quick() -> Config:
    return Config(
        gammas=(0.5, 1.0, 2.0, 3.0),
        T_over_Tc=tuple(np.round(np.linspace(0.8, 1.1, 16), 10)),
        runs=16,
    )


def onset(T: np.ndarray, m: np.ndarray, level: float) -> float:
    """Highest ``T`` at which ``m(T)`` reaches ``level``, scanning down from the largest ``T``
    (linear interpolation between grid points); NaN if not bracketed by the grid."""
    T, m = np.asarray(T, dtype=float), np.asarray(m, dtype=float)
    order = np.argsort(T)[::-1]
    T, m = T[order], m[order]
    if m[0] >= level:
        return math.nan  # already collapsed at the top of the scan
    for k in range(1, T.size):
        if m[k] >= level:
            w = (level - m[k - 1]) / (m[k] - m[k - 1])
            return float(T[k - 1] + w * (T[k] - T[k - 1]))
    return math.nan


def run(config: Config, progress=None) -> dict:
    cfg = config
    gammas = np.asarray(cfg.gammas, dtype=float)
    x = np.asarray(cfg.T_over_Tc, dtype=float)
    Tc = cfg.a / (2.0 * gammas)
    finals = np.empty((gammas.size, x.size, cfg.runs))
    for i, g in enumerate(gammas):
        for j, r in enumerate(x):
            finals[i, j] = final_abs_u(cfg, float(g), float(r * Tc[i]), i, j)
        if progress:
            progress(i + 1, gammas.size)

    mean = finals.mean(axis=2)
    T_grid = x[None, :] * Tc[:, None]
    T_on = np.array([onset(T_grid[i], mean[i], cfg.onset_level) for i in range(gammas.size)])
    # bootstrap over replicas (independently at every T) for the onset's sampling error
    rng = np.random.default_rng(np.random.SeedSequence([cfg.seed, 99]))
    boot = np.empty((cfg.bootstrap, gammas.size))
    for b in range(cfg.bootstrap):
        idx = rng.integers(0, cfg.runs, size=finals.shape)
        mb = np.take_along_axis(finals, idx, axis=2).mean(axis=2)
        boot[b] = [onset(T_grid[i], mb[i], cfg.onset_level) for i in range(gammas.size)]
    T_on_sd = np.nanstd(boot, axis=0, ddof=1)
    ratio = T_on / Tc
    finite = np.isfinite(T_on)
    exponent = (
        float(np.polyfit(np.log(gammas[finite]), np.log(T_on[finite]), 1)[0])
        if finite.sum() >= 2
        else math.nan
    )

    return {
        "gamma": gammas,
        "Tc": Tc,
        "T_over_Tc": x,
        "T": T_grid,
        "final_abs_u_mean": mean,
        "final_abs_u_se": finals.std(axis=2, ddof=1) / math.sqrt(cfg.runs),
        "T_onset": T_on,
        "T_onset_sd": T_on_sd,
        "ratio": ratio,
        "exponent": exponent,
        "eta": cfg.eta_gamma / gammas,
        "t_end": cfg.horizon_gamma / gammas,
    }


def claims(data: dict, config: Config) -> list[Claim]:
    cfg = config
    gammas, Tc = floats(data["gamma"]), floats(data["Tc"])
    T_on, T_on_sd = floats(data["T_onset"]), floats(data["T_onset_sd"])
    ratio, exponent = floats(data["ratio"]), num(data["exponent"])
    finite = np.isfinite(T_on)
    ok_ratio = bool(np.all(finite) and np.all((ratio >= cfg.ratio_min) & (ratio < 1.0)))
    return [
        Claim(
            "fig09-onset",
            f"At a = {cfg.a:g}, h = 0 the finite-time onset of collapse (final mean |u_hat| = "
            f"{cfg.onset_level:g}) lies below, and close to, Tc = a / (2 gamma) for every gamma",
            predicted={"Tc": Tc, "ratio_range": [cfg.ratio_min, 1.0]},
            measured={"gamma": gammas, "T_onset": T_on, "ratio": ratio, "ratio_sd": T_on_sd / Tc},
            tolerance=f"{cfg.ratio_min:g} <= T_onset / Tc < 1 for all {gammas.size} gammas "
            f"(horizon {cfg.horizon_gamma:g} / gamma, {cfg.runs} runs a point)",
            holds=ok_ratio,
            checks=tuple(
                Check(f"T_onset / Tc gamma={g:g}", r, lower=cfg.ratio_min, upper=1.0)
                for g, r in zip(gammas, ratio, strict=True)
            ),
        ),
        Claim(
            "fig09-scale",
            "The onset temperature follows the predicted scale Tc ~ 1/gamma",
            predicted=-1.0,
            measured=exponent,
            tolerance=f"least-squares exponent of T_onset ~ gamma^p within "
            f"{cfg.exponent_tol:g} of -1",
            holds=bool(abs(exponent + 1.0) <= cfg.exponent_tol),
            checks=(Check.absolute("exponent", exponent, -1.0, cfg.exponent_tol),),
        ),
    ]


def plot(data: dict, config: Config):
    import matplotlib.pyplot as plt

    from ..style import COLORS, THEORY, figure_style, panel_label

    cfg = config
    d = data
    gammas, Tc = np.asarray(d["gamma"]), np.asarray(d["Tc"])
    x, mean, se = (np.asarray(d[k]) for k in ("T_over_Tc", "final_abs_u_mean", "final_abs_u_se"))
    T_on, T_sd, ratio = (np.asarray(d[k], dtype=float) for k in ("T_onset", "T_onset_sd", "ratio"))
    cmap = plt.get_cmap("viridis")
    colors = [cmap(0.9 * i / max(1, gammas.size - 1)) for i in range(gammas.size)]
    with figure_style():
        fig, axs = plt.subplots(1, 2, figsize=(7.0, 3.0), layout="constrained")
        ax = axs[0]
        for i, g in enumerate(gammas):
            ax.plot(x, mean[i], "-", color=colors[i], lw=1.0, label=f"γ = {g:g}")
            ax.fill_between(x, mean[i] - se[i], mean[i] + se[i], color=colors[i], alpha=0.2, lw=0)
        ax.axhline(cfg.onset_level, color=COLORS[1], lw=0.8, ls=":")
        ax.text(
            x[-1],
            cfg.onset_level,
            "onset level ",
            color=COLORS[1],
            fontsize=7,
            ha="right",
            va="bottom",
        )
        ax.axvline(1.0, **THEORY, label="T = Tc (theory)")
        ax.set(
            xlabel="temperature T / Tc,  Tc = a / (2γ)",
            ylabel="final mean |û|",
            title=f"a = {cfg.a:g}, h = 0, B = {cfg.batch}, t = {cfg.horizon_gamma:g}/γ",
            xlim=(x[0], x[-1]),
            ylim=(0, None),
        )
        ax.legend(loc="upper right", ncols=2, fontsize=6.5)
        panel_label(ax, "a")

        ax = axs[1]
        gg = np.linspace(0.9 * gammas.min(), 1.05 * gammas.max(), 300)
        ax.plot(gg, cfg.a / (2 * gg), **THEORY, label="Tc = a / (2γ) (theory)")
        ok = np.isfinite(T_on)
        ax.errorbar(
            gammas[ok],
            T_on[ok],
            yerr=T_sd[ok],
            fmt="o",
            color=COLORS[0],
            ms=4,
            capsize=2,
            label="finite-time onset (simulation)",
        )
        ax.set(
            xlabel="forgetting rate γ",
            ylabel="temperature T",
            title="Onset of collapse (final mean |û| = " + f"{cfg.onset_level:g})",
        )
        ax.legend(loc="upper right")
        # inset: the onset in units of Tc, where the finite-time shift is visible
        ins = ax.inset_axes([0.5, 0.33, 0.46, 0.38])
        ins.axhline(1.0, **THEORY)
        ins.axhspan(cfg.ratio_min, 1.0, color=COLORS[2], alpha=0.12, lw=0)
        ins.errorbar(
            gammas[ok],
            ratio[ok],
            yerr=T_sd[ok] / Tc[ok],
            fmt="o",
            color=COLORS[0],
            ms=3,
            capsize=1.5,
        )
        lo = min(np.nanmin(ratio) if ok.any() else 1.0, 0.97)
        ins.set_ylim(lo - 0.01, 1.01)
        ins.set_xlabel("γ", fontsize=7, labelpad=1)
        ins.set_title("T_onset / Tc (shaded: claim range)", fontsize=6.5, pad=2)
        ins.tick_params(labelsize=6.5)
        panel_label(ax, "b")
    return fig
