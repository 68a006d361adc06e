"""Experiment ``nexp-hysteresis``: hysteresis in the feedback ``a`` of the N-expert batch router.

N = 8 experts (top-1, and top-2 routing), ``gamma = T = 1``. The feedback ``a`` is ramped slowly
up from below ``a_SN`` (balanced start) to above the linear threshold and back down. On the way
up the router collapses near the linear threshold (``N gamma T`` for top-1): a finite-time onset
that moves *below* the threshold at slow ramps, because the balanced state is only metastable
there and batch noise carries it over the shrinking barrier. On the way down it stays collapsed
until the collapsed state disappears at the saddle-node ``a_SN``, far below the threshold. The
recovery point is measured at several ramp rates and extrapolated to rate -> 0 with
``a(v) = a_0 + c v^beta`` (dynamic saddle-node lag ~ v^(2/3)).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from ..model.thresholds import thresholds
from ..params import RouterParams
from .base import Check, Claim, floats, num

ID = "nexp-hysteresis"
TITLE = "Collapse near N gamma T, recovery only at a_SN: hysteresis in the feedback a"
PAPER = "Beyond sec. 8.5-8.7: N experts, top-k"


@dataclass(frozen=True)
class Config:
    n_experts: int = 8  # the choice
    gamma: float = 1.0
    T: float = 1.0
    # (top_k, batch): top-1 at the batch of the paper's experiments, and one top-k case; top-2
    # draws B (k - 1) extra picks a step, so a smaller batch keeps its cost comparable
    cases: tuple = ((1, 512), (2, 256))
    # eta: 0.05 (gamma eta = 0.05) keeps the Euler map close to the ODE (relaxation rates here
    # are <= 1) and makes the slowest ramp ~2e5 steps
    eta: float = 0.05
    runs: int = 24  # replicas per ramp; the switch is the mean of their crossing points
    rates: tuple = (0.04, 0.02, 0.01, 0.005)  # |da/dt|; the slowest is displayed
    margin_low: float = 0.75  # ramp from a_SN - 0.75 gamma T ...
    margin_high: float = 1.5  # ... to a_lin + 1.5 gamma T
    tolerance_down: float = 0.05  # the claim: recovery within 5% of a_SN
    tolerance_up: float = 0.10  # collapse "near" the linear threshold: within 10%
    seed: int = 11


def quick() -> Config:
    return Config(runs=8, rates=(0.04, 0.02, 0.01))


def _theory(n: int, k: int, gamma: float, T: float) -> dict:
    """Thresholds and the largest load at the fold of the collapsing branch (gamma = T = 1
    units are rescaled)."""
    thr = thresholds(n, k, gamma, T)
    if k == 1:
        from ..model.symmetric import saddle_node_gap

        d, _ = saddle_node_gap(n, 1)
        return {
            "a_lin": thr.linear,
            "a_sn": thr.collapse,
            "fold_load": float(1.0 / (1.0 + (n - 1) * np.exp(-d))),
        }
    from scipy.optimize import minimize_scalar

    from ..model.topk import topk_branch

    res = minimize_scalar(
        lambda d: float(topk_branch(n, k, thr.winners, [d]).ratio[0]),
        bounds=(0.05, 4 * np.log(n) + 8),
        method="bounded",
    )
    fold = topk_branch(n, k, thr.winners, [res.x])
    return {
        "a_lin": thr.linear,
        "a_sn": thr.collapse,
        "fold_load": float(fold.max_load[0]),
    }


def run(config: Config, progress=None) -> dict:
    from scipy.optimize import OptimizeWarning

    from ..sim.hysteresis import fit_rate_law, sweep_feedback

    c = config
    p = RouterParams(a=1.0, gamma=c.gamma, T=c.T, n_experts=c.n_experts)
    cases = []
    total = len(c.cases) * len(c.rates)
    done = 0
    for ci, (k, batch) in enumerate(c.cases):
        th = _theory(c.n_experts, k, c.gamma, c.T)
        thr = 0.5 * (1.0 / c.n_experts + th["fold_load"])
        sweeps = []
        for i, v in enumerate(sorted(c.rates, reverse=True)):
            sweeps.append(
                sweep_feedback(
                    p,
                    rate=v,
                    a_low=th["a_sn"] - c.margin_low * c.gamma * c.T,
                    a_high=th["a_lin"] + c.margin_high * c.gamma * c.T,
                    threshold=thr,
                    top_k=k,
                    batch=batch,
                    eta=c.eta,
                    runs=c.runs,
                    seed=c.seed + 100 * ci + i,
                )
            )
            done += 1
            if progress:
                progress(done, total)
        rates = np.array([s.rate for s in sweeps])
        ups = np.array([s.a_switch_up for s in sweeps])
        downs = np.array([s.a_switch_down for s in sweeps])
        with warnings.catch_warnings():
            # three rates and three parameters: the fit is exact, its covariance undefined
            warnings.simplefilter("ignore", OptimizeWarning)
            fit = fit_rate_law(rates, downs)
        slow = sweeps[-1]
        k_thin = max(1, slow.a.size // 3000)
        cases.append(
            {
                "top_k": k,
                "batch": batch,
                **th,
                "threshold": thr,
                "rates": rates,
                "a_switch_up": ups,
                "a_switch_down": downs,
                "a_up_sd": [float(np.nanstd(s.a_up)) for s in sweeps],
                "a_down_sd": [float(np.nanstd(s.a_down)) for s in sweeps],
                "down_fit": {
                    "limit": fit.limit,
                    "coefficient": fit.coefficient,
                    "exponent": fit.exponent,
                    "limit_two_thirds": fit.limit_two_thirds,
                },
                "loop": {
                    "a": slow.a[::k_thin],
                    "max_load_mean": slow.max_load_mean[::k_thin],
                    "max_load_std": slow.max_load_std[::k_thin],
                    "upward": slow.upward[::k_thin],
                    "rate": slow.rate,
                },
            }
        )
    return {"cases": cases, "n_experts": c.n_experts, "eta": c.eta, "runs": c.runs}


def claims(data: dict, config: Config) -> list[Claim]:
    c, out = config, []
    for cs in data["cases"]:
        k, batch = cs["top_k"], cs["batch"]
        rates, ups = floats(cs["rates"]), floats(cs["a_switch_up"])
        downs = floats(cs["a_switch_down"])
        limit = num(cs["down_fit"]["limit"])
        name = "top-1" if k == 1 else f"top-{k}"
        rel = abs(limit - cs["a_sn"]) / cs["a_sn"]
        out.append(
            Claim(
                f"nexp-hysteresis-recovery-top{k}",
                f"N = {c.n_experts}, {name}, B = {batch}: on the way down the collapsed router "
                "recovers balance only at the saddle-node a_SN (rate -> 0 extrapolation of the "
                "recovery point), far below the linear threshold",
                predicted=cs["a_sn"],
                measured=limit,
                tolerance=f"relative error <= {c.tolerance_down:.0%} (measured {rel:.2%})",
                holds=rel <= c.tolerance_down,
                checks=(Check.relative("recovery a", limit, cs["a_sn"], c.tolerance_down),),
            )
        )
        rel_up = abs(ups[-1] - cs["a_lin"]) / cs["a_lin"]
        hyst = bool(np.all(ups > downs))
        out.append(
            Claim(
                f"nexp-hysteresis-collapse-top{k}",
                f"N = {c.n_experts}, {name}: on the way up a balanced start collapses near the "
                f"linear threshold (slowest ramp, rate {rates[-1]:g}); the loop is open at every "
                "rate (collapse above recovery)",
                predicted=cs["a_lin"],
                measured=float(ups[-1]),
                tolerance=f"relative distance <= {c.tolerance_up:.0%} (measured {rel_up:.2%}) "
                "and a_up > a_down at every rate",
                holds=rel_up <= c.tolerance_up and hyst,
                checks=(
                    Check.relative("collapse a", ups[-1], cs["a_lin"], c.tolerance_up),
                    Check("smallest a_up - a_down", np.min(ups - downs), lower=0.0),
                ),
            )
        )
    return out


def notes(data: dict, config: Config) -> str:
    return (
        "Up-switches drift below the linear threshold as the ramp slows: the balanced "
        "state is metastable there and batch noise triggers the collapse (see "
        "nexp-metastable)."
    )


def plot(data: dict, config: Config):
    import matplotlib.pyplot as plt

    from ..model.diagram import branch_diagram
    from ..style import COLORS, THEORY, figure_style, panel_label

    c = config
    cases = data["cases"]
    with figure_style():
        fig, axs = plt.subplots(1, len(cases) + 1, figsize=(7.2, 2.9), layout="constrained")
        for ax, cs, lab in zip(axs, cases, "abc", strict=False):
            k = cs["top_k"]
            dg = branch_diagram(c.n_experts, top_k=k, a_max=cs["a_lin"] + c.margin_high, points=300)
            for br in dg["branches"]:
                a, y, st = (np.asarray(br[x]) for x in ("a", "max_load", "stable"))
                if st.any():
                    ax.plot(np.where(st, a, np.nan), y, ":", color="0.45", lw=1.2)
            ax.plot(
                [0, cs["a_lin"]],
                [1 / c.n_experts] * 2,
                ":",
                color="0.45",
                lw=1.2,
                label="mean-field stable states",
            )
            lp = cs["loop"]
            a, m, s, up = (
                np.asarray(lp[x]) for x in ("a", "max_load_mean", "max_load_std", "upward")
            )
            for mask, col, name in ((up, COLORS[0], "ramp up"), (~up, COLORS[1], "ramp down")):
                ax.plot(a[mask], m[mask], "-", color=col, lw=1.3, label=name)
                ax.fill_between(a[mask], (m - s)[mask], (m + s)[mask], color=col, alpha=0.2, lw=0)
            ax.axvline(cs["a_lin"], **THEORY, label="linear threshold")
            ax.axvline(cs["a_sn"], color=COLORS[2], ls=":", lw=1.4, label="saddle-node a_SN")
            ax.set(
                xlabel="feedback a / (γT)",
                ylabel="largest load (window mean)",
                title=f"top-{k} routing, B = {cs['batch']}",
                ylim=(0, 1.0),
            )
            ax.set_xlim(cs["a_sn"] - c.margin_low, cs["a_lin"] + c.margin_high)
            ax.text(
                0.97,
                0.04,
                f"N = {c.n_experts}\nda/dt = {lp['rate']:g}",
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=7,
            )
            panel_label(ax, lab)
        axs[0].legend(loc="upper left", fontsize=6.3)
        ax = axs[-1]
        for cs, col in zip(cases, COLORS[0::3], strict=False):
            v = np.asarray(cs["rates"])
            x = v ** (2 / 3)
            f = cs["down_fit"]
            k = cs["top_k"]
            ax.plot(x, cs["a_switch_down"], "o", color=col, ms=4, label=f"recovery, top-{k}")
            ax.plot(
                x, cs["a_switch_up"], "s", mfc="white", color=col, ms=4, label=f"collapse, top-{k}"
            )
            vv = np.linspace(0, v.max(), 100)
            ax.plot(
                vv ** (2 / 3),
                f["limit"] + f["coefficient"] * vv ** f["exponent"],
                "-",
                color=col,
                lw=0.9,
            )
            ax.axhline(cs["a_sn"], color=col, ls=":", lw=1.2)
            ax.axhline(cs["a_lin"], color=col, ls="--", lw=1.0)
        ax.set(
            xlabel="ramp rate (da/dt)^(2/3)",
            ylabel="switching feedback a / (γT)",
            title="switch points vs ramp rate",
        )
        ax.plot([], [], "k:", lw=1.2, label="a_SN (theory)")
        ax.plot([], [], "k--", lw=1.0, label="a_lin (theory)")
        ax.set_ylim(3.0, 10.5)
        ax.legend(fontsize=5.8, loc="upper center", ncol=2, columnspacing=0.8)
        panel_label(ax, "abc"[len(cases)])
    return fig
