"""Experiment ``ctl-suppression``: the closed-loop balancer suppresses the bifurcation.

The gain-scheduled PI selection bias of :mod:`moebif.model.control_law` (``--balancer control``,
default gains ``k_i = 1e-2``, ``k_p = 0.1``, gain schedule on the model's margin) against
DeepSeek-V3's sign update (``bias:1e-3``) and the Switch aux loss (``aux:1e-2``) in the score
model (batch router, ``gamma = T = 1``). Checked:

1. **collapse**: after a skew pulse on the winners of the branch where ``a_SN(N, k)`` is born
   (drift ``gamma T (d + 3)`` for ``3 / gamma``, ``d`` the open loop's stable collapsed gap at
   this ``a``), ``P(collapse)`` at the end of ``10 / gamma`` more is at most 5% with the
   controller, at ``N = 8, 64``, top-1 and top-2, ``a = 1.25`` and ``2 x a_SN``; the same pulse
   collapses the sign-updated and the aux-balanced router at ``2 x a_SN``;
2. **theory**: at the same points :class:`~moebif.model.balancer_theory.ControlTheory` finds no
   collapsed fixed point (the integral's authority exceeds the bias a collapsed state needs),
   a stable balance (spectral radius of the linear map < 1), and the deterministic two-level
   closed loop returns to balance from the open loop's stable collapsed state;
3. **no lasting oscillation**: two experts at the points of ``bal-bias-cycle`` where the sign
   update has a relay cycle: from starts across its first-return ("capture") region the sign
   update locks into the cycle, the controller returns to balance and stays;
4. **cost**: the chattering (stationary sd of one expert's load) against the AR(1)/Lyapunov
   theory with and without the controller, and a genuine skew: the open loop's load follows it,
   the controller removes it (bias ``-h / (gamma T)``);
5. **throughput**: the kernel with the controller against the sampling floor (the draws alone,
   as ``benchmarks/bench_balancers.py``), target 0.8x.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from ..params import RouterParams
from .base import Claim

ID = "ctl-suppression"
TITLE = "The closed-loop balancer: no collapse, no relay cycle, and its cost"
PAPER = "Beyond sec. 8.7: feedback control that suppresses the bifurcation (issue 21)"


@dataclass(frozen=True)
class Config:
    # (N, k, B): B = 512 for top-1 and 256 for top-2, as bal-phase
    cases: tuple = ((8, 1, 512), (8, 2, 256), (64, 1, 512), (64, 2, 256))
    factors: tuple = (1.25, 1.5, 2.0)  # a / a_SN(N, k)
    eta: float = 0.02
    controller: str = "control"
    sign_update: str = "bias:1e-3"  # DeepSeek-V3's rate
    aux: str = "aux:1e-2"  # the stacks' usual coefficient
    reps: int = 60
    pulse_time: float = 3.0  # ODE time, x 1 / gamma
    pulse_extra: float = 3.0  # the pulse's drift: gamma T (d + extra)
    relax_time: float = 10.0
    late_time: float = 2.0  # collapse read from the mean loads over this last window
    two_level_steps: int = 6000
    # no lasting oscillation: bal-bias-cycle's issue points (a, gamma, T, u), where the sign
    # update has a relay cycle and its first-return radius exceeds its recovery radius
    osc_points: tuple = ((2.0, 0.7, 0.5, 1e-3), (9.0, 1.5, 2.0, 2e-3))
    osc_eta: float = 0.01
    osc_batch: int = 65536
    osc_factors: tuple = (0.1, 0.25, 0.5, 0.8, 1.0)  # x first-return radius
    osc_cycle_factor: float = 0.8  # the sign update is on its cycle from here on
    osc_reps: int = 16
    osc_periods: float = 2.5
    # cost: chattering at a balanced point (the open loop's balance is stable there)
    chatter_case: tuple = (8, 1, 512)
    chatter_a: float = 0.5  # x a_lin
    chatter_steps: int = 4000
    chatter_burn: int = 1000
    chatter_runs: int = 16
    skew_h: float = 0.1
    skew_a: float = 0.25  # x a_lin: the open loop's response is linear
    skew_batch: int = 4096
    skew_steps: int = 4000
    skew_runs: int = 4
    # throughput, as benchmarks/bench_balancers.py: (N, k, B, runs, steps)
    speed_cases: tuple = ((8, 1, 512, 256, 400), (64, 2, 256, 64, 200))
    speed_repeats: int = 7
    p_max: float = 0.05
    p_collapse: float = 0.95
    tolerance: float = 0.10
    throughput_target: float = 0.8
    seed: int = 71


def quick() -> Config:
    return Config(
        factors=(1.25, 2.0),
        reps=24,
        two_level_steps=4000,
        osc_factors=(0.25, 0.6, 1.0),
        osc_reps=8,
        osc_periods=2.0,
        chatter_steps=3000,
        chatter_runs=8,
    )


def _pulse_run(c: Config, n, k, batch, a, spec, gap, winners, seed, reps):
    from ..sim.balanced_router import simulate_balanced_router

    p = RouterParams(a=a, gamma=1.0, T=1.0, n_experts=n)
    e = np.zeros(n)
    e[:winners] = 1.0
    pulse = round(c.pulse_time / c.eta)
    relax = round(c.relax_time / c.eta)
    h = np.zeros(pulse + relax)
    h[:pulse] = gap + c.pulse_extra
    late = max(1, round(c.late_time / c.eta))
    run = simulate_balanced_router(
        p,
        spec,
        batch=batch,
        eta=c.eta,
        steps=pulse + relax,
        runs=reps,
        top_k=k,
        seed=seed,
        h=h,
        direction=e,
        record_every=late,
    )
    return run.selected[:, -1, :]  # mean selected loads over the last window


def _gap(run, T) -> np.ndarray:
    """Selection gap ``s`` (score units) of two experts: scores plus the bias (the controller's
    in logits, the sign update's in score units)."""
    r, b = run.score_records, run.beta_records
    scale = T if run.balancer.selection == "control" else 1.0
    return (r[..., 0] - r[..., 1]) + scale * (b[..., 0] - b[..., 1])


def _throughput(c: Config) -> list[dict]:
    from ..model.topk import topk_linear_threshold
    from ..sim._kernels.topk import topk_counts_sample
    from ..sim.balanced_router import simulate_balanced_router

    def timed(fn):
        t0 = time.process_time()
        fn()
        return time.process_time() - t0

    rows = []
    for n, k, batch, runs, steps in c.speed_cases:
        a = 0.5 * topk_linear_threshold(n, k, 1.0, 1.0)
        p = RouterParams(a=a, gamma=1.0, T=1.0, n_experts=n)
        common = dict(
            batch=batch,
            eta=c.eta,
            steps=steps,
            runs=runs,
            top_k=k,
            seed=1,
            record_every=None,
            threads=1,
        )
        r_end = simulate_balanced_router(p, c.controller, **common).scores[0].copy()
        topk_counts_sample(r_end, p.T, k, batch, 2, 0)

        def kernel(p=p, common=common):
            simulate_balanced_router(p, c.controller, **common)

        def floor(r_end=r_end, k=k, batch=batch, size=runs * steps):
            topk_counts_sample(r_end, 1.0, k, batch, size, 0)

        tk = tf = math.inf
        for _ in range(c.speed_repeats):
            tk = min(tk, timed(kernel))
            tf = min(tf, timed(floor))
        rows.append({"n": n, "k": k, "batch": batch, "seconds": tk, "floor": tf, "ratio": tf / tk})
    return rows


def run(config: Config, progress=None) -> dict:
    from ..model import bias_relay as br
    from ..model.balancer_theory import BiasTheory, ControlTheory
    from ..model.balancers import parse_balancers
    from ..model.thresholds import thresholds
    from ..sim.balanced_router import simulate_balanced_router

    c = config
    spec = parse_balancers(c.controller)
    total = len(c.cases) * len(c.factors) + len(c.osc_points) + 3
    done = 0

    def tick():
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    # 1-2. collapse after a pulse, and the theory at the same points
    points = []
    for ci, (n, k, batch) in enumerate(c.cases):
        thr = thresholds(n, k, 1.0, 1.0)
        m = thr.winners
        for fi, f in enumerate(c.factors):
            a = f * thr.collapse
            p = RouterParams(a=a, gamma=1.0, T=1.0, n_experts=n)
            ct = ControlTheory.from_spec(spec, p, eta=c.eta, batch=batch, top_k=k)
            gap = ct.open_collapsed_gap(m)
            winner_load = None
            if math.isfinite(gap):
                from ..model.balancer_theory.control import two_level_pi

                pw, _ = two_level_pi(n, m, k, np.array([gap]))
                winner_load = float(pw[0] / k)
            level = 0.5 * (1.0 / n + winner_load) if winner_load else 2.0 / n
            row = {
                "n": n,
                "k": k,
                "batch": batch,
                "factor": f,
                "a": a,
                "a_sn": thr.collapse,
                "a_lin": thr.linear,
                "winners": m,
                "open_gap": gap,
                "winner_load": winner_load,
                "collapse_level": level,
            }
            for key, sp in (("control", c.controller), ("sign", c.sign_update), ("aux", c.aux)):
                seed = c.seed + 1000 * ci + 10 * fi + {"control": 0, "sign": 1, "aux": 2}[key]
                loads = _pulse_run(c, n, k, batch, a, sp, gap, m, seed, c.reps)
                row[f"p_{key}"] = float((loads.max(axis=1) >= level).mean())
                row[f"max_load_{key}"] = float(np.median(loads.max(axis=1)))
            states = ct.collapsed_states()
            row["theory"] = {
                "radius": ct.spectral_radius(),
                "gain": ct.gain,
                "margin": ct.open_margin,
                "bias_needed": max(s["bias_needed"] for s in states),
                "authority_ratio": min(
                    s["authority"] / max(s["bias_needed"], 1e-300) for s in states
                ),
                "fixed_point": any(s["fixed_point"] for s in states),
            }
            if math.isfinite(gap):
                tl = ct.two_level_run(m, [gap], steps=c.two_level_steps, tol=1e-4)
                row["theory"]["two_level_converged"] = bool(tl.converged[0])
                row["theory"]["two_level_steps"] = int(tl.steps_to_converge[0])
            else:
                row["theory"]["two_level_converged"] = None
                row["theory"]["two_level_steps"] = None
            points.append(row)
            tick()

    # 3. no lasting oscillation where the sign update has a relay cycle
    osc = []
    for i, (a, gamma, T, u) in enumerate(c.osc_points):
        p = RouterParams(a=a, gamma=gamma, T=T, n_experts=2)
        bt = BiasTheory(p, u, c.osc_eta, c.osc_batch)
        cyc = br.relay_cycle(bt)
        first = bt.first_return_radius()
        thr = bt.escape_threshold()
        ct = ControlTheory.from_spec(spec, p, eta=c.osc_eta, batch=c.osc_batch, top_k=1)
        s0 = np.repeat(np.asarray(c.osc_factors) * first, c.osc_reps)
        period = cyc.period if cyc.exists else 20.0 / gamma
        steps = round((c.osc_periods * period + 20.0 / gamma) / c.osc_eta)
        window = 1.2 * period
        res = {
            "a": a,
            "gamma": gamma,
            "T": T,
            "u": u,
            "first_return_radius": first,
            "escape_threshold": thr,
            "cycle_exists": cyc.exists,
            "cycle_amplitude": cyc.amplitude,
            "cycle_period": cyc.period,
            "radius": ct.spectral_radius(),
            "factors": list(c.osc_factors),
        }
        tl = ct.two_level_run(
            1,
            np.r_[s0[:: c.osc_reps] / T, -cyc.b_amplitude / T],
            np.r_[np.zeros(len(c.osc_factors)), cyc.b_amplitude / T],
            steps=40000,
            tol=1e-4,
        )
        res["two_level_converged"] = tl.converged.tolist()
        for key, sp in (("control", c.controller), ("sign", f"bias:{u}")):
            run_o = simulate_balanced_router(
                p,
                sp,
                batch=c.osc_batch,
                eta=c.osc_eta,
                steps=steps,
                runs=s0.size,
                seed=c.seed + 500 + 10 * i + (key == "sign"),
                r0=np.stack([s0 / 2, -s0 / 2], axis=1),
                b=np.zeros(2),
                record_every=10,
                snapshot=True,
                record_scores=True,
            )
            s = _gap(run_o, T)
            late = np.abs(s[:, run_o.t >= run_o.t[-1] - window]).max(axis=1)
            on = (late >= 0.5 * thr).reshape(len(c.osc_factors), c.osc_reps)
            res[f"p_osc_{key}"] = on.mean(axis=1).tolist()
            res[f"late_{key}"] = float(np.median(late))
            res["example_t"] = run_o.t[::5].tolist()
            res[f"example_{key}"] = s[-1, ::5].tolist()
        osc.append(res)
        tick()

    # 4. cost: chattering and skew
    from ..model.control_law import ControlGains  # noqa: F401  (the gains live in the spec)

    n, k, batch = c.chatter_case
    a_lin = thresholds(n, k, 1.0, 1.0).linear
    p = RouterParams(a=c.chatter_a * a_lin, gamma=1.0, T=1.0, n_experts=n)
    ct = ControlTheory.from_spec(spec, p, eta=c.eta, batch=batch, top_k=k)
    ch = ct.chattering()
    sim_sd = {}
    for key, sp in (("control", c.controller), ("open", "none")):
        run_c = simulate_balanced_router(
            p,
            sp,
            batch=batch,
            eta=c.eta,
            steps=c.chatter_steps,
            runs=c.chatter_runs,
            top_k=k,
            seed=c.seed + 700 + (key == "open"),
            snapshot=True,
            record_every=1,
        )
        sim_sd[key] = float(run_c.selected[:, c.chatter_burn :, :].std())
    chatter = {
        "n": n,
        "k": k,
        "batch": batch,
        "a": p.a,
        "predicted_control": ch.load_std,
        "predicted_open": ch.open_load_std,
        "noise": ch.noise_load_std,
        "bias_std": ch.bias_std,
        "measured_control": sim_sd["control"],
        "measured_open": sim_sd["open"],
    }
    tick()
    p = RouterParams(a=c.skew_a * a_lin, gamma=1.0, T=1.0, n_experts=n)
    ct = ControlTheory.from_spec(spec, p, eta=c.eta, batch=c.skew_batch, top_k=k)
    sk = ct.skew_response()
    e = np.zeros(n)
    e[0] = 1.0
    common = dict(
        batch=c.skew_batch,
        eta=c.eta,
        steps=c.skew_steps,
        runs=c.skew_runs,
        top_k=k,
        h=c.skew_h,
        direction=e,
        record_every=c.skew_steps // 4,
    )
    closed = simulate_balanced_router(p, c.controller, seed=c.seed + 800, **common)
    open_ = simulate_balanced_router(p, "none", seed=c.seed + 801, **common)
    contrast = c.skew_h * (n - 1) / n
    skew = {
        "h": c.skew_h,
        "a": p.a,
        "predicted_open": sk["open_load"] * contrast,
        "predicted_bias": sk["bias"] * contrast,
        "measured_open": float(open_.loads[:, -1, 0].mean() - 1.0 / n),
        "measured_closed": float(closed.loads[:, -1, 0].mean() - 1.0 / n),
        "measured_bias": float(closed.beta[:, 0].mean()),
    }
    tick()
    speed = _throughput(c)
    tick()
    return {
        "eta": c.eta,
        "points": points,
        "osc": osc,
        "chatter": chatter,
        "skew": skew,
        "throughput": speed,
    }


def _rel(m, p):
    return abs(m / p - 1.0) if m is not None and p and math.isfinite(p) else math.inf


def _lab(r) -> str:
    return f"N={r['n']},k={r['k']},a={r['factor']:g}aSN"


def claims(data: dict, config: Config) -> list[Claim]:
    c = config
    pts = data["points"]
    out = []
    pc = {_lab(r): r["p_control"] for r in pts}
    out.append(
        Claim(
            "ctl-suppression-collapse",
            "After a skew pulse that collapses the sign-updated router, the closed-loop "
            "controller leaves the router collapsed with probability at most 5% (N = 8, 64, "
            "top-1 and top-2, a up to 2 a_SN)",
            predicted="P(collapse) = 0: no collapsed fixed point of the closed loop",
            measured=pc,
            tolerance=f"P(collapse) <= {c.p_max:.0%} at every point ({c.reps} replicas each)",
            holds=max(pc.values()) <= c.p_max,
        )
    )
    top = [r for r in pts if r["factor"] == max(c.factors)]
    out.append(
        Claim(
            "ctl-suppression-baselines",
            f"The same pulse collapses the sign update ({c.sign_update}) and the aux loss "
            f"({c.aux}) at {max(c.factors):g} a_SN (reported at every point)",
            predicted="a stable collapsed state exists (a >= a_SN) and neither removes it",
            measured={_lab(r): {"sign": r["p_sign"], "aux": r["p_aux"]} for r in pts},
            tolerance=f"P(collapse) >= {c.p_collapse:.0%} for both at {max(c.factors):g} a_SN",
            holds=all(min(r["p_sign"], r["p_aux"]) >= c.p_collapse for r in top),
        )
    )
    th = {_lab(r): r["theory"] for r in pts}
    ok = all(
        t["radius"] < 1.0 and not t["fixed_point"] and t["two_level_converged"] is True
        for t in th.values()
    )
    out.append(
        Claim(
            "ctl-suppression-theory",
            "The model's theory (ControlTheory): at every point the open loop has a stable "
            "collapsed state (branch continuation), the closed loop has none (the integral's "
            "authority exceeds the bias a collapsed state needs), its balance is stable (linear "
            "map's spectral radius < 1) and the deterministic two-level closed loop returns to "
            "balance from the open loop's collapsed state",
            predicted={k: {"authority / needed": v["authority_ratio"]} for k, v in th.items()},
            measured={
                k: {"radius": v["radius"], "two-level steps": v["two_level_steps"]}
                for k, v in th.items()
            },
            tolerance="radius < 1, authority / needed > 1, two-level run converged, everywhere",
            holds=ok and all(math.isfinite(r["open_gap"]) for r in pts),
        )
    )
    osc = data["osc"]
    i_cyc = [j for j, f in enumerate(osc[0]["factors"]) if f >= c.osc_cycle_factor]
    ctl_max = max(max(o["p_osc_control"]) for o in osc)
    sign_min = min(min(o["p_osc_sign"][j] for j in i_cyc) for o in osc) if i_cyc else math.nan
    out.append(
        Claim(
            "ctl-suppression-oscillation",
            "Two experts where the sign update has a relay cycle (bal-bias-cycle's points): "
            "from starts across its first-return (capture) region the sign update locks into "
            "the cycle of alternating collapses, the controller returns to balance and stays "
            "(no lasting oscillation)",
            predicted={
                f"a={o['a']:g},u={o['u']:g}": {
                    "sign cycle": o["cycle_exists"],
                    "control radius": o["radius"],
                    "control two-level converged": all(o["two_level_converged"]),
                }
                for o in osc
            },
            measured={
                f"a={o['a']:g},u={o['u']:g}": {
                    "P(osc) control": o["p_osc_control"],
                    "P(osc) sign": o["p_osc_sign"],
                }
                for o in osc
            },
            tolerance=f"control P(lasting oscillation) <= {c.p_max:.0%} from every start; sign "
            f"update >= {c.p_collapse:.0%} on its cycle from >= {c.osc_cycle_factor:g}x",
            holds=ctl_max <= c.p_max
            and sign_min >= c.p_collapse
            and all(
                o["cycle_exists"] and o["radius"] < 1 and all(o["two_level_converged"]) for o in osc
            ),
        )
    )
    ch = data["chatter"]
    e1 = _rel(ch["measured_control"], ch["predicted_control"])
    e2 = _rel(ch["measured_open"], ch["predicted_open"])
    out.append(
        Claim(
            "ctl-suppression-chattering",
            "Cost 1, chattering: the stationary sd of one expert's load with the controller and "
            "without it follow the AR(1)/Lyapunov theory; the controller adds "
            f"{ch['predicted_control'] / ch['predicted_open'] - 1:+.1%} (theory) to the open "
            "loop's",
            predicted={"control": ch["predicted_control"], "open": ch["predicted_open"]},
            measured={"control": ch["measured_control"], "open": ch["measured_open"]},
            tolerance=f"relative error <= {c.tolerance:.0%} (control {e1:.1%}, open {e2:.1%})",
            holds=e1 <= c.tolerance and e2 <= c.tolerance,
        )
    )
    sk = data["skew"]
    e_open = _rel(sk["measured_open"], sk["predicted_open"])
    e_bias = _rel(sk["measured_bias"], sk["predicted_bias"])
    absorbed = abs(sk["measured_closed"]) <= c.tolerance * abs(sk["measured_open"])
    out.append(
        Claim(
            "ctl-suppression-skew",
            "Cost 2, distortion: with a genuine skew h the open loop's load follows it (linear "
            "response), the integral absorbs it entirely (bias -h / (gamma T)): the whole of "
            "the task's load preference is removed",
            predicted={
                "open load shift": sk["predicted_open"],
                "closed load shift": 0.0,
                "bias": sk["predicted_bias"],
            },
            measured={
                "open load shift": sk["measured_open"],
                "closed load shift": sk["measured_closed"],
                "bias": sk["measured_bias"],
            },
            tolerance=f"open within 15% ({e_open:.1%}), closed <= {c.tolerance:.0%} of open, "
            f"bias within 5% ({e_bias:.1%})",
            holds=e_open <= 0.15 and absorbed and e_bias <= 0.05,
        )
    )
    sp = data["throughput"]
    out.append(
        Claim(
            "ctl-suppression-throughput",
            "Throughput of the kernel with the controller against the sampling floor (the "
            "draws alone, one thread, best of repeats in process CPU time)",
            predicted=f">= {c.throughput_target:g}x",
            measured={f"N={r['n']},k={r['k']},B={r['batch']}": r["ratio"] for r in sp},
            tolerance=f"ratio >= {c.throughput_target:g} in every case",
            holds=min(r["ratio"] for r in sp) >= c.throughput_target,
        )
    )
    return out


def plot(data: dict, config: Config):
    import matplotlib.pyplot as plt

    from ..style import COLORS, THEORY, figure_style, panel_label

    pts = data["points"]
    with figure_style():
        fig, axs = plt.subplots(1, 3, figsize=(10.0, 2.9), layout="constrained")
        ax = axs[0]
        cases = sorted({(r["n"], r["k"]) for r in pts})
        for j, (n, k) in enumerate(cases):
            rows = [r for r in pts if (r["n"], r["k"]) == (n, k)]
            f = [r["factor"] for r in rows]
            ax.plot(f, [r["p_sign"] for r in rows], "s--", color=COLORS[j], lw=0.8, ms=3)
            ax.plot(
                f,
                [r["p_control"] for r in rows],
                "o-",
                color=COLORS[j],
                lw=0.9,
                ms=3,
                label=f"N={n}, top-{k}",
            )
        ax.axhline(config.p_max, **THEORY, label="5%")
        ax.set(
            xlabel="a / a_SN(N, k)",
            ylabel="P(collapse) after the pulse",
            title="control (o, solid) vs sign update (s, dashed)",
        )
        ax.legend(fontsize=5.5)
        panel_label(ax, "a")
        ax = axs[1]
        o = data["osc"][0]
        ax.plot(o["example_t"], o["example_sign"], color=COLORS[1], lw=0.8, label="sign update")
        ax.plot(o["example_t"], o["example_control"], color=COLORS[0], lw=0.9, label="control")
        for sgn in (1, -1):
            ax.axhline(sgn * o["cycle_amplitude"], **THEORY)
        ax.set(
            xlabel="time t = n eta",
            ylabel="selection gap s",
            title=f"start at {o['factors'][-1]:g}x first-return radius",
        )
        ax.legend(fontsize=6)
        panel_label(ax, "b")
        ax = axs[2]
        ch = data["chatter"]
        x = np.arange(2)
        ax.bar(
            x - 0.18,
            [ch["predicted_open"], ch["predicted_control"]],
            0.36,
            color="0.6",
            label="theory (Lyapunov)",
        )
        ax.bar(
            x + 0.18,
            [ch["measured_open"], ch["measured_control"]],
            0.36,
            color=COLORS[0],
            label="batch router",
        )
        ax.axhline(ch["noise"], **THEORY, label="batch noise alone")
        ax.set_xticks(x, ["open loop", "control"])
        ax.set(ylabel="sd of one expert's load", title="chattering")
        ax.legend(fontsize=6)
        panel_label(ax, "c")
    return fig
