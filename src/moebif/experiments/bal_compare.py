"""Experiment ``bal-compare``: all balancing schemes on one router, at equal cost.

N = 8 experts, top-1, ``a = 6 gamma T``: between ``a_SN = 4.25`` and ``N gamma T = 8``, the
balanced state is linearly stable but a transient skew collapses it for good (``nexp-metastable``).
Each scheme is run over a range of strengths; every replica starts balanced, gets a strong skew
pulse on expert 1, and relaxes, while the data keeps a genuine preference ``h_ref`` for expert 1.

- **benefit**: ``1 - P(collapsed at the end)``;
- **cost**: the routing mass the scheme moves, averaged over the relaxation: the total-variation
  distance between the loads the router serves and the loads its own task scores would give
  (the scores minus what a gradient scheme contributed; the unbiased scores for the selection
  schemes), plus the dropped fraction. A gradient scheme moves mass by bending the scores, a
  selection scheme by overriding them; capacity and expert choice by dropping.

At a common cost budget each scheme's benefit is read off its curve (linear interpolation). The
same run checks :func:`moebif.model.balancer_theory.advise` at ``h_ref = 0``: below its minimal
strength the pulse collapses the router, above it does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..params import RouterParams
from .base import Check, Claim

ID = "bal-compare"
TITLE = "All balancing schemes on one router: collapse after a skew pulse against routing cost"
PAPER = "Beyond sec. 8.7: which balancer, how strong, at what cost"

# scheme -> (spec text with {s}, strengths); strengths bracket each scheme's minimal strength
SWEEPS = {
    "aux": ("aux:{s}", (0.5, 1.0, 1.6, 2.5, 4.0)),
    "zloss": ("zloss:{s}", (0.08, 0.16, 0.27, 0.45, 0.8)),
    "importance": ("importance:{s}", (0.25, 0.5, 0.8, 1.25, 2.0)),
    "capacity": ("capacity:{s}", (3.0, 2.0, 1.6, 1.3, 1.1)),
    "bias": ("bias:{s}", (1e-4, 3e-4, 1e-3, 3e-3, 1e-2)),
    "quantile": ("quantile:{s}", (0.999, 0.99, 0.9, 0.0)),
    "sinkhorn": ("sinkhorn", (1.0,)),
    "expert-choice": ("expert-choice:{s}", (1.0, 1.25)),
    "noisy": ("noisy:{s}", (0.5, 1.5, 3.0)),
}


@dataclass(frozen=True)
class Config:
    n_experts: int = 8
    a: float = 6.0
    gamma: float = 1.0
    T: float = 1.0
    batch: int = 512
    eta: float = 0.02
    h_ref: float = 0.2  # genuine skew towards expert 1 (the data's own preference)
    pulse: float = 6.0  # skew pulse on expert 1 ...
    pulse_time: float = 4.0  # ... for this long (ODE time)
    relax_time: float = 40.0
    reps: int = 16
    noisy_batch: int = 128  # noisy gating draws every token's logits: a smaller batch
    schemes: tuple = tuple(SWEEPS)
    budget: float = 0.05  # the common cost: 5% of the routing mass
    check_factors: tuple = (0.7, 1.4)  # advise check: x the minimal strength
    check_schemes: tuple = ("aux", "zloss", "importance")
    seed: int = 61


def quick() -> Config:
    return Config(
        reps=6,
        relax_time=30.0,
        schemes=("aux", "bias", "capacity", "quantile"),
        check_schemes=("aux",),
    )


def _strengths(name: str, c: Config):
    s = SWEEPS[name][1]
    if c.reps < 10:  # quick: the ends and the middle
        s = tuple(s[i] for i in sorted({0, len(s) // 2, len(s) - 1}))
    return s


def _simulate(c: Config, spec_text: str, h_ref: float, seed: int):
    from ..model.balancers import parse_balancers
    from ..sim.balanced_router import simulate_balanced_router

    spec = parse_balancers(spec_text)
    n = c.n_experts
    p = RouterParams(a=c.a, gamma=c.gamma, T=c.T, n_experts=n)
    n_p = round(c.pulse_time / c.eta)
    n_r = round(c.relax_time / c.eta)
    sched = np.zeros(n_p + n_r)
    sched[:n_p] = c.pulse
    e1 = np.zeros(n)
    e1[0] = 1.0
    b = h_ref * e1
    batch = c.noisy_batch if spec.selection == "noisy" else c.batch
    if spec.quantile and (batch % n):
        batch -= batch % n
    R = max(1, n_r // 20)
    run = simulate_balanced_router(
        p,
        spec,
        batch=batch,
        eta=c.eta,
        steps=n_p + n_r,
        runs=c.reps,
        seed=seed,
        h=sched,
        direction=e1,
        b=b,
        record_every=R,
        snapshot=True,
        record_scores=True,
    )
    return spec, run, n_p // R


def _measure(c: Config, spec, run, start: int) -> dict:
    from ._balancers import routing_cost

    r = run.scores
    lift = r[:, 0] - np.delete(r, 0, axis=1).mean(axis=1)
    # collapsed onto expert 1: its score ahead by more than the saddle's gap (d_s ~ 1.1 at a = 6)
    collapsed = lift > 1.5 * c.T
    cost = routing_cost(
        spec,
        run.score_records[:, start:],
        run.beta_records[:, start:],
        run.contribution_records[:, start:],
        c.T,
        dropped=run.dropped[:, start:],
    )
    drop = float(run.dropped[:, start:].mean()) if spec.capacity > 0 else 0.0
    return {
        "p_collapse": float(collapsed.mean()),
        "cost": float(cost.mean()),
        "dropped": drop,
        "selected_max": float(run.selected[:, -1].max(axis=1).mean()),
    }


def run(config: Config, progress=None) -> dict:
    from ..model.balancer_theory import minimal_strength

    c = config
    total = sum(len(_strengths(s, c)) for s in c.schemes) + 2 * len(c.check_schemes)
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    sweeps = {}
    for i, name in enumerate(c.schemes):
        text = SWEEPS[name][0]
        pts = []
        for j, s in enumerate(_strengths(name, c)):
            spec, run_s, start = _simulate(c, text.format(s=s), c.h_ref, c.seed + 10 * i + j)
            pts.append({"strength": s, **_measure(c, spec, run_s, start)})
            tick()
        sweeps[name] = pts
    baseline_spec, run0, start0 = _simulate(c, "none", c.h_ref, c.seed + 999)
    baseline = _measure(c, baseline_spec, run0, start0)
    checks = []
    for i, name in enumerate(c.check_schemes):
        s_min = minimal_strength(name, c.a, c.n_experts, 1, c.gamma, c.T)
        for j, f in enumerate(c.check_factors):
            spec, run_s, start = _simulate(
                c, SWEEPS[name][0].format(s=f * s_min), 0.0, c.seed + 500 + 10 * i + j
            )
            checks.append(
                {"scheme": name, "minimal": s_min, "factor": f, **_measure(c, spec, run_s, start)}
            )
            tick()
    at_budget = {}
    for name, pts in sweeps.items():
        at_budget[name] = _benefit_at(pts, c.budget)
    return {
        "sweeps": sweeps,
        "baseline": baseline,
        "checks": checks,
        "budget": c.budget,
        "at_budget": at_budget,
    }


def _benefit_at(pts, budget: float):
    """``1 - P(collapse)`` at the cost ``budget`` by linear interpolation along the sweep (in
    order of increasing cost); ``None`` if the sweep's costs do not bracket the budget."""
    xs = np.array([p["cost"] for p in pts])
    ys = np.array([1.0 - p["p_collapse"] for p in pts])
    order = np.argsort(xs)
    xs, ys = xs[order], ys[order]
    if xs.size == 1:
        return float(ys[0]) if abs(xs[0] - budget) <= 0.5 * budget else None
    if not xs[0] <= budget <= xs[-1]:
        return None
    return float(np.interp(budget, xs, ys))


def claims(data: dict, config: Config) -> list[Claim]:
    c = config
    out = []
    for name in c.check_schemes:
        rows = [x for x in data["checks"] if x["scheme"] == name]
        lo = [x for x in rows if x["factor"] < 1]
        hi = [x for x in rows if x["factor"] > 1]
        out.append(
            Claim(
                f"bal-compare-advise-{name}",
                f"N = 8, top-1, a = {c.a:g} (metastable): advise's minimal {name} strength "
                f"({rows[0]['minimal']:.4g}, derived from the mean field with the scheme's term) "
                "separates collapse from recovery after a strong skew pulse",
                predicted="P(collapse) >= 0.75 below, <= 0.25 above",
                measured={f"{x['factor']:g} x minimal": x["p_collapse"] for x in rows},
                tolerance="at "
                + ", ".join(f"{f:g}" for f in c.check_factors)
                + " x the minimal strength",
                holds=all(x["p_collapse"] >= 0.75 for x in lo)
                and all(x["p_collapse"] <= 0.25 for x in hi),
                checks=(
                    *(Check(f"P at {x['factor']:g}", x["p_collapse"], lower=0.75) for x in lo),
                    *(Check(f"P at {x['factor']:g}", x["p_collapse"], upper=0.25) for x in hi),
                ),
            )
        )
    base = data["baseline"]
    out.append(
        Claim(
            "bal-compare-baseline",
            f"Without a balancer the pulse collapses the router at a = {c.a:g} (metastable window)",
            predicted=1.0,
            measured=base["p_collapse"],
            tolerance="P(collapse) >= 0.9",
            holds=base["p_collapse"] >= 0.9,
            checks=(Check("P(collapse)", base["p_collapse"], lower=0.9),),
        )
    )
    sel = [n for n in ("sinkhorn", "expert-choice") if n in data["sweeps"]]
    if sel:
        pc = {n: max(p["p_collapse"] for p in data["sweeps"][n]) for n in sel}
        out.append(
            Claim(
                "bal-compare-by-construction",
                "Sinkhorn and expert choice are balanced by construction: no collapse at any a",
                predicted=0.0,
                measured=pc,
                tolerance="P(collapse) = 0",
                holds=all(v == 0.0 for v in pc.values()),
                checks=tuple(Check(f"P(collapse) {n}", v, upper=0.0) for n, v in pc.items()),
            )
        )
    return out


def notes(data: dict, config: Config) -> str:
    ab = data["at_budget"]
    parts = [f"{k}: {'n/a' if v is None else f'{v:.2f}'}" for k, v in ab.items()]
    return (
        f"Benefit 1 - P(collapse) at the cost budget {data['budget']:.0%} of the routing mass: "
        + ", ".join(parts)
        + " (n/a: the scheme's sweep does not reach that cost)."
    )


def plot(data: dict, config: Config):
    import matplotlib.pyplot as plt

    from ..style import COLORS, figure_style, panel_label

    sweeps = data["sweeps"]
    names = list(sweeps)
    # one colour a scheme (the house palette, then tab10 when there are more schemes than it has)
    palette = list(COLORS) if len(names) <= len(COLORS) else list(plt.cm.tab10.colors)
    colors = {n: palette[i % len(palette)] for i, n in enumerate(names)}
    markers = dict(zip(names, "osD^v<>ph*", strict=False))
    with figure_style():
        fig, axs = plt.subplots(
            1, 2, figsize=(7.2, 3.0), layout="constrained", gridspec_kw={"width_ratios": [1.5, 1]}
        )
        ax = axs[0]
        for n in names:
            pts = sorted(sweeps[n], key=lambda p: p["cost"])
            ls = "-" if len(pts) > 1 else "none"
            ax.plot(
                [max(p["cost"], 1e-4) for p in pts],
                [1 - p["p_collapse"] for p in pts],
                ls=ls,
                marker=markers[n],
                color=colors[n],
                ms=4,
                lw=1.0,
                label=n,
            )
        b = data["baseline"]
        ax.plot(max(b["cost"], 1e-4), 1 - b["p_collapse"], "x", color="0.2", label="none")
        ax.axvline(data["budget"], color="0.3", ls="--", lw=0.9, label="cost budget")
        ax.set(
            xscale="log",
            xlabel="routing mass moved (TV + dropped)",
            ylabel="1 − P(collapse) after the pulse",
            title=f"N = {config.n_experts}, a = {config.a:g}, genuine skew h = {config.h_ref:g}",
        )
        ax.legend(fontsize=5.8, ncol=2, loc="center left")
        panel_label(ax, "a")
        ax = axs[1]
        ab = data["at_budget"]
        shown = [n for n in names if ab[n] is not None]
        ax.barh(range(len(shown)), [ab[n] for n in shown], color=[colors[n] for n in shown])
        ax.set_yticks(range(len(shown)), shown)
        ax.set_xlim(0, 1.05)
        ax.set(xlabel="1 − P(collapse)", title=f"at equal cost ({data['budget']:.0%})")
        panel_label(ax, "b")
    return fig
