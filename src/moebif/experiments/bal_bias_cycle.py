"""Experiment ``bal-bias-cycle``: the loss-free bias's recovery region and its relay limit cycle.

Two experts, bias rate ``u`` per step, step ``eta``, batch ``B`` (``U = 2u / eta``). The mean field
of the closed loop ``s' = G(s) + gamma b - U sign s``, ``b' = -U sign s`` has a sliding segment
``|b| < U / gamma`` on ``s = 0`` (balance that stays), a stable relay cycle of alternating
collapses and an unstable cycle between them (:mod:`moebif.model.bias_relay`). Checked against
the batch router at four points (the issue's two and two more):

1. **recovery region**: from ``0.7 x recovery_radius`` at least 95% of the replicas return to
   balance and stay; from ``1.3 x`` at most 5% do;
2. **relay cycle**: the replicas that do not stay settle on a cycle whose amplitude ``max |s|``
   and period match the fixed point of the return map within 10%;
3. **first return is not recovery**: from ``0.8 x`` the first-return radius
   (``BiasTheory.first_return_radius``, the old "capture radius") the router lands on the
   cycle at the points where the recovery radius is well inside it;
4. **no start recovers** below the hold rate: at a small batch and ``u`` under
   ``BiasTheory.hold_rate`` even a balanced start is lost to the noise and ends on the relay
   cycle; above the hold rate it stays balanced.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from ..params import RouterParams
from .base import Check, Claim

ID = "bal-bias-cycle"
TITLE = "The loss-free bias: recovery region and relay limit cycle of the closed loop"
PAPER = "Beyond sec. 8.7: the bias of arXiv 2408.15664 in the phase plane"


@dataclass(frozen=True)
class Config:
    # (a, gamma, T, u): the two points (lambda = 1.3 and 0.75) and two more
    points: tuple = (
        (2.0, 0.7, 0.5, 1e-3),
        (9.0, 1.5, 2.0, 2e-3),
        (4.0, 1.0, 1.0, 1e-3),
        (3.0, 1.0, 0.5, 5e-4),
    )
    eta: float = 0.01
    # a large batch keeps the selection noise (width 2T / sqrt(B)) well below the radii
    batch: int = 65536
    factors: tuple = (0.7, 1.3)  # x recovery radius: the acceptance of the issue
    first_return_factor: float = 0.8  # x first-return radius (the example start)
    first_return_gap: float = 1.5  # checked where first-return / recovery radius >= this
    reps: int = 100
    periods: float = 3.0  # run time: this many cycle periods plus 20 / gamma
    # no start recovers: a small batch raises the hold rate (~ eta lambda / kappa, kappa ~ sqrt B)
    unheld_point: tuple = (2.0, 0.7, 0.5)
    unheld_batch: int = 512
    unheld_factors: tuple = (0.5, 2.0)  # u / hold_rate
    unheld_runs: int = 32
    unheld_periods: float = 3.0
    p_recover: float = 0.95
    p_escape: float = 0.05
    tolerance: float = 0.10
    seed: int = 61


def quick() -> Config:
    # the two points only
    return Config(points=Config.points[:2], reps=24, unheld_runs=12)


def _gap(run) -> np.ndarray:
    r, b = run.score_records, run.beta_records
    return (r[..., 0] - r[..., 1]) + (b[..., 0] - b[..., 1])


def _late_max(run, window: float) -> np.ndarray:
    """``max |s|`` of every replica over the last ``window`` of ODE time."""
    s = _gap(run)
    return np.abs(s[:, run.t >= run.t[-1] - window]).max(axis=1)


def _period(run, level: float, rows) -> float:
    """Median time between the last two upward passages of ``s`` through ``+level`` after a
    passage below ``-level`` (the cycle's collapses alternate)."""
    s = _gap(run)
    out = []
    for i in rows:
        state, ups = 0, []
        for t, v in zip(run.t, s[i], strict=True):
            if v > level and state <= 0:
                if state < 0:
                    ups.append(t)
                state = 1
            elif v < -level and state >= 0:
                state = -1
        if len(ups) >= 2:
            out.append(ups[-1] - ups[-2])
    return float(np.median(out)) if out else math.nan


def run(config: Config, progress=None) -> dict:
    from ..model import bias_relay as br
    from ..model.balancer_theory import BiasTheory
    from ..sim.balanced_router import simulate_balanced_router

    c = config
    total = len(c.points) + len(c.unheld_factors)
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    rows = []
    for i, (a, gamma, T, u) in enumerate(c.points):
        p = RouterParams(a=a, gamma=gamma, T=T, n_experts=2)
        bt = BiasTheory(p, u, c.eta, c.batch)
        thr = bt.escape_threshold()
        first = bt.first_return_radius()
        rr = br.recovery_radius(bt)
        cyc = br.relay_cycle(bt)
        s0 = [rr * f for f in c.factors]
        check_first = first / rr >= c.first_return_gap
        if check_first:
            s0.append(c.first_return_factor * first)
        starts = np.repeat(np.asarray(s0), c.reps)
        window = 1.2 * cyc.period
        run_p = simulate_balanced_router(
            p,
            f"bias:{u}",
            batch=c.batch,
            eta=c.eta,
            steps=round((c.periods * cyc.period + 20.0 / gamma) / c.eta),
            runs=starts.size,
            seed=c.seed + i,
            r0=np.stack([starts / 2, -starts / 2], axis=1),
            b=np.zeros(2),
            record_every=10,
            snapshot=True,
            record_scores=True,
        )
        late = _late_max(run_p, window)
        stay = late < 0.5 * thr
        p_stay = stay.reshape(len(s0), c.reps).mean(axis=1)
        on = np.flatnonzero(~stay)
        rows.append(
            {
                "a": a,
                "gamma": gamma,
                "T": T,
                "u": u,
                "U": bt.U,
                "lambda": bt.lam,
                "escape_threshold": thr,
                "first_return_radius": first,
                "recovery_radius": rr,
                "recovery_radius_linear": br.recovery_radius_linear(bt),
                "separatrix_b": cyc.separatrix,
                "sliding_edge_b": bt.U / gamma,
                "cycle_amplitude": cyc.amplitude,
                "cycle_period": cyc.period,
                "cycle_b": cyc.b_amplitude,
                "relaxation": dataclasses.asdict(br.relaxation_limit(bt)),
                "factors": list(c.factors),
                "p_stay": p_stay[: len(c.factors)].tolist(),
                "first_return_s0": s0[-1] if check_first else None,
                "first_return_p_stay": float(p_stay[-1]) if check_first else None,
                "sim_amplitude": float(np.median(late[on])) if on.size else None,
                "sim_period": _period(run_p, 0.5 * thr, on[:40]) if on.size else None,
                "n_on_cycle": int(on.size),
                "example_t": run_p.t[::5].tolist(),
                "example_s": _gap(run_p)[on[0] if on.size else 0, ::5].tolist(),
            }
        )
        tick()

    a, gamma, T = c.unheld_point
    p = RouterParams(a=a, gamma=gamma, T=T, n_experts=2)
    hold = BiasTheory(p, 1e-4, c.eta, c.unheld_batch).hold_rate()
    unheld = []
    for j, f in enumerate(c.unheld_factors):
        bt = BiasTheory(p, f * hold, c.eta, c.unheld_batch)
        cyc = br.relay_cycle(bt)
        thr = bt.escape_threshold()
        period = cyc.period if cyc.exists else 20.0 / gamma
        run_u = simulate_balanced_router(
            p,
            f"bias:{f * hold}",
            batch=c.unheld_batch,
            eta=c.eta,
            steps=round((c.unheld_periods * period + 20.0 / gamma) / c.eta),
            runs=c.unheld_runs,
            seed=c.seed + 100 + j,
            r0=np.zeros(2),
            b=np.zeros(2),
            record_every=10,
            snapshot=True,
            record_scores=True,
        )
        late = _late_max(run_u, 1.2 * period)
        on = late >= 0.5 * thr
        unheld.append(
            {
                "factor": f,
                "u": f * hold,
                "cycle_exists": cyc.exists,
                "cycle_amplitude": cyc.amplitude,
                "p_on_cycle": float(on.mean()),
                "sim_amplitude": float(np.median(late[on])) if on.any() else None,
            }
        )
        tick()
    return {
        "eta": c.eta,
        "batch": c.batch,
        "rows": rows,
        "hold_rate": hold,
        "unheld_batch": c.unheld_batch,
        "unheld": unheld,
    }


def _rel(m, p):
    return abs(m / p - 1.0) if m is not None and p and math.isfinite(m) else math.inf


def _label(r) -> str:
    return f"a={r['a']:g},g={r['gamma']:g},T={r['T']:g},u={r['u']:g}"


def claims(data: dict, config: Config) -> list[Claim]:
    c = config
    rows = data["rows"]
    out = []
    lo = [r["p_stay"][0] for r in rows]
    hi = [r["p_stay"][-1] for r in rows]
    out.append(
        Claim(
            "bal-bias-cycle-recovery",
            "Loss-free bias, two experts: the router returns to balance and stays iff the first "
            "return to s = 0 comes with |b| below the separatrix (the unstable cycle of the "
            "return map), i.e. iff s0 < recovery_radius; from 0.7x it recovers and stays, from "
            "1.3x it does not",
            predicted={_label(r): r["recovery_radius"] for r in rows},
            measured={
                f"P(stay) at {c.factors[0]:g}x": lo,
                f"P(stay) at {c.factors[-1]:g}x": hi,
            },
            tolerance=f">= {c.p_recover:.0%} at {c.factors[0]:g}x and <= {c.p_escape:.0%} at "
            f"{c.factors[-1]:g}x, at every point",
            holds=min(lo) >= c.p_recover and max(hi) <= c.p_escape,
            checks=(
                *(
                    Check(f"P(stay) low {_label(r)}", x, lower=c.p_recover)
                    for r, x in zip(rows, lo, strict=True)
                ),
                *(
                    Check(f"P(stay) high {_label(r)}", x, upper=c.p_escape)
                    for r, x in zip(rows, hi, strict=True)
                ),
            ),
        )
    )
    ra = [_rel(r["sim_amplitude"], r["cycle_amplitude"]) for r in rows]
    rp = [_rel(r["sim_period"], r["cycle_period"]) for r in rows]
    out.append(
        Claim(
            "bal-bias-cycle-amplitude",
            "Outside the recovery region the closed loop settles on the relay cycle of "
            "alternating collapses: amplitude max|s| and period of the stable fixed point of "
            "the return map (beyond the escape threshold)",
            predicted={
                "amplitude": [r["cycle_amplitude"] for r in rows],
                "period": [r["cycle_period"] for r in rows],
            },
            measured={
                "amplitude": [r["sim_amplitude"] for r in rows],
                "period": [r["sim_period"] for r in rows],
            },
            tolerance=f"relative error <= {c.tolerance:.0%} (worst amplitude {max(ra):.1%}, "
            f"period {max(rp):.1%})",
            holds=max(ra) <= c.tolerance
            and max(rp) <= c.tolerance
            and all(r["cycle_amplitude"] > r["escape_threshold"] for r in rows),
            checks=tuple(
                ch
                for r in rows
                for ch in (
                    Check.relative(
                        f"amplitude {_label(r)}",
                        math.nan if r["sim_amplitude"] is None else r["sim_amplitude"],
                        r["cycle_amplitude"],
                        c.tolerance,
                    ),
                    Check.relative(
                        f"period {_label(r)}",
                        math.nan if r["sim_period"] is None else r["sim_period"],
                        r["cycle_period"],
                        c.tolerance,
                    ),
                )
            ),
        )
    )
    fr = [r for r in rows if r["first_return_p_stay"] is not None]
    out.append(
        Claim(
            "bal-bias-cycle-first-return",
            "The first-return radius (the old capture radius) is not a recovery region: from "
            f"{c.first_return_factor:g}x of it the gap returns to 0 but the wound-up bias "
            "overshoots and the router locks into the relay cycle",
            predicted={
                _label(r): {
                    "first_return": r["first_return_radius"],
                    "recovery": r["recovery_radius"],
                }
                for r in fr
            },
            measured={_label(r): r["first_return_p_stay"] for r in fr},
            tolerance=f"P(stay) <= {c.p_escape:.0%} at every point with first-return / recovery "
            f">= {c.first_return_gap:g} ({len(fr)} points)",
            holds=bool(fr) and all(r["first_return_p_stay"] <= c.p_escape for r in fr),
            checks=tuple(
                Check(f"P(stay) {_label(r)}", r["first_return_p_stay"], upper=c.p_escape)
                for r in fr
            ),
        )
    )
    un = data["unheld"]
    below = [x for x in un if x["factor"] < 1]
    above = [x for x in un if x["factor"] > 1]
    ok = all(
        x["cycle_exists"]
        and x["p_on_cycle"] >= c.p_recover
        and _rel(x["sim_amplitude"], x["cycle_amplitude"]) <= c.tolerance
        for x in below
    ) and all(x["p_on_cycle"] <= c.p_escape for x in above)
    out.append(
        Claim(
            "bal-bias-cycle-unheld",
            f"B = {data['unheld_batch']}: below the hold rate no start recovers, not even the "
            "balanced one: the batch noise drives growing oscillations onto the relay cycle; "
            "above it the balance holds",
            predicted={
                "hold_rate": data["hold_rate"],
                "cycle amplitude": [x["cycle_amplitude"] for x in below],
            },
            measured={f"P(on cycle) at {x['factor']:g}x hold_rate": x["p_on_cycle"] for x in un}
            | {"amplitude": [x["sim_amplitude"] for x in below]},
            tolerance=f">= {c.p_recover:.0%} on the cycle (amplitude within "
            f"{c.tolerance:.0%}) below, <= {c.p_escape:.0%} above",
            holds=bool(ok),
            checks=(
                *(
                    Check(f"P(on cycle) at {x['factor']:g}", x["p_on_cycle"], lower=c.p_recover)
                    for x in below
                ),
                *(
                    Check.relative(
                        f"amplitude at {x['factor']:g}",
                        math.nan if x["sim_amplitude"] is None else x["sim_amplitude"],
                        x["cycle_amplitude"],
                        c.tolerance,
                    )
                    for x in below
                    if x["cycle_amplitude"]
                ),
                *(
                    Check(f"P(on cycle) at {x['factor']:g}", x["p_on_cycle"], upper=c.p_escape)
                    for x in above
                ),
            ),
        )
    )
    return out


def plot(data: dict, config: Config):
    import matplotlib.pyplot as plt

    from ..style import COLORS, THEORY, figure_style, panel_label

    rows = data["rows"]
    with figure_style():
        fig, axs = plt.subplots(1, 2, figsize=(7.2, 2.8), layout="constrained")
        ax = axs[0]
        for k, r in enumerate(rows):
            x = list(r["factors"])
            y = list(r["p_stay"])
            if r["first_return_s0"] is not None:
                x.append(r["first_return_s0"] / r["recovery_radius"])
                y.append(r["first_return_p_stay"])
            order = np.argsort(x)
            ax.plot(
                np.asarray(x)[order],
                np.asarray(y)[order],
                "o-",
                color=COLORS[k],
                lw=0.9,
                label=_label(r),
            )
            ax.plot(
                [r["first_return_radius"] / r["recovery_radius"]],
                [1.05],
                "v",
                color=COLORS[k],
                ms=5,
            )
        ax.axvline(1.0, **THEORY, label="recovery radius (theory)")
        ax.set(
            xlabel="start s0 / recovery radius",
            ylabel="P(back to balance and stays)",
            title="recovery region (▼: first-return radius)",
        )
        ax.legend(fontsize=5.5)
        panel_label(ax, "a")
        ax = axs[1]
        for k, r in enumerate(rows[:2]):
            ax.plot(r["example_t"], r["example_s"], color=COLORS[k], lw=0.8, label=_label(r))
            for sgn in (1, -1):
                ax.axhline(
                    sgn * r["cycle_amplitude"],
                    color=COLORS[k],
                    **{kk: v for kk, v in THEORY.items() if kk != "color"},
                )
        ax.set(
            xlabel="time t = n eta",
            ylabel="selection gap s",
            title="relay cycle (dashed: theory amplitude)",
        )
        ax.legend(fontsize=5.5)
        panel_label(ax, "b")
    return fig
