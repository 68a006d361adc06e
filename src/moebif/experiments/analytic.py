"""Experiment ``theory``: the analytical picture of sections 3-6 and its claims.

Figure: (a) the potential (12) below and above the pitchfork; (b) the pitchfork diagram (Thm
4.1); (c) the bistable region bounded by the fold curve (16), the cusp, and the normal-form
approximation (21); (d) the S-shaped equilibrium curve u(h) at a > 2 gamma T with +-H(a).
Claims: Thm 4.1, Thm 5.1, Prop. 6.1, eq. (21) vs (16), eqs. (9)-(10).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..model import two_expert as th
from ..model.meanfield import jacobian, uniform_state
from ..params import RouterParams
from .base import Claim

ID = "theory"
TITLE = "Pitchfork, folds, cusp and hysteresis band of the reduced router (6)"
PAPER = "Sections 4-6, Thm 4.1, Thm 5.1, Prop. 6.1, eqs. (9)-(21)"


@dataclass(frozen=True)
class Config:
    gamma: float = 1.0
    T: float = 1.0
    # (a): one value below and one above the pitchfork a = 2 gamma T
    a_below: float = 1.5
    a_above: float = 3.0
    # (b): range of a for the pitchfork diagram
    a_max: float = 6.0
    pitchfork_points: int = 241
    # (c): fold curve parameter range |q| <= q_max
    q_max: float = 1.3
    # (d): S-curve at the paper's hysteresis setting a = 4 (sec. 8.5)
    a_scurve: float = 4.0
    # claims: random (a, h) points checked against brute-force root counting; parameter sets
    # (gamma, T) on which Thm 4.1 is checked; expert counts for eqs. (9)-(10)
    random_points: int = 2000
    seed: int = 0
    gamma_T_sets: tuple = ((1.0, 1.0), (0.5, 2.0), (3.0, 0.2))
    expert_counts: tuple = (2, 3, 8, 64)


def quick() -> Config:
    return Config(pitchfork_points=81, random_points=300)


def _brute_force_count(p: RouterParams, n: int = 20001) -> int:
    y = np.linspace((p.h - p.a) / p.gamma - 1, (p.h + p.a) / p.gamma + 1, n)
    f = th.drift(y, p)
    return int(np.count_nonzero(np.sign(f[:-1]) != np.sign(f[1:])))


def _checks(cfg: Config) -> dict:
    """The measurements behind the claims (root counts, residuals, eigenvalues): JSON-ready."""
    out: dict = {}
    # Thm 4.1 on both sides of (and at) the threshold
    counts, ok = [], True
    for g, T in cfg.gamma_T_sets:
        ac = 2 * g * T
        below = th.equilibria(RouterParams(a=0.9 * ac, gamma=g, T=T))
        at = th.equilibria(RouterParams(a=ac, gamma=g, T=T))
        above = th.equilibria(RouterParams(a=1.1 * ac, gamma=g, T=T))
        counts.append([len(below), len(at), len(above)])
        ok &= len(below) == 1 and below[0].stable and below[0].eigenvalue < 0
        ok &= len(at) == 1 and at[0].stable and at[0].eigenvalue == 0.0
        ok &= [e.stable for e in above] == [True, False, True] and above[1].y == 0.0
        ok &= math.isclose(above[0].y, -above[2].y, rel_tol=1e-14)
    out["thm4.1"] = {"counts": counts, "as_stated": bool(ok)}

    # Thm 5.1 (a): fold residuals along (16)
    q = np.linspace(-3, 3, 601)
    worst = 0.0
    for g, T in cfg.gamma_T_sets:
        a, h = th.fold_curve(q, g, T)
        for ai, hi, qi in zip(a, h, q, strict=True):
            p = RouterParams(a=float(ai), gamma=g, T=T, h=float(hi))
            y = 2 * T * qi
            worst = max(
                worst,
                abs(float(th.drift(y, p))) / (ai + g * abs(y) + abs(hi)),
                abs(float(th.drift_dy(y, p))) / (ai / (2 * T) + g),
            )
    out["thm5.1-folds"] = {"worst_residual": float(worst)}

    # Thm 5.1 (b): three roots iff |h| < H(a), against brute-force sign counting
    rng = np.random.default_rng(cfg.seed)
    agree = total = 0
    for _ in range(cfg.random_points):
        g, T = rng.uniform(0.2, 3.0, size=2)
        a = rng.uniform(0.1, 8.0) * g * T
        H = th.hysteresis_halfwidth(a, g, T)
        h = rng.uniform(-2, 2) * max(H, 0.1 * g * T)
        if abs(abs(h) - H) < 1e-6 * (H + g * T):
            continue  # numerically on the fold
        p = RouterParams(a=a, gamma=g, T=T, h=h)
        n_code = len(th.equilibria(p))
        total += 1
        agree += n_code == _brute_force_count(p) == (3 if abs(h) < H else 1)
    out["thm5.1-count"] = {"agree": int(agree), "total": int(total)}

    # Prop. 6.1
    dev = 0.0
    for g, T in cfg.gamma_T_sets:
        d = th.cusp_derivatives(g, T)
        dev = max(
            dev,
            abs(d["F"]),
            abs(d["F_y"]),
            abs(d["F_yy"]),
            abs(d["F_yyy"] + g / (2 * T**2)) / (g / (2 * T**2)),
            abs(d["F_ya"] - 1 / (2 * T)) * 2 * T,
            abs(d["F_h"] - 1),
        )
    out["prop6.1"] = {"max_deviation": float(dev)}

    # eq. (21) vs (16) near the cusp
    qs = np.array([0.1, 0.03, 0.01])
    a, _ = th.fold_curve(qs, cfg.gamma, cfg.T)
    ratio = th.cusp_fold_approximation(a, cfg.gamma, cfg.T) / th.hysteresis_halfwidth(
        a, cfg.gamma, cfg.T
    )
    out["eq21-vs-eq16"] = {"q": qs, "ratio": ratio}

    # eqs. (9)-(10)
    worst, flips = 0.0, True
    for n in cfg.expert_counts:
        for kappa in (0.8, 1.2):
            p = RouterParams(a=kappa * n * cfg.gamma * cfg.T, gamma=cfg.gamma, T=cfg.T, n_experts=n)
            ev = np.linalg.eigvalsh(jacobian(uniform_state(p), p))
            pr = th.uniform_state_eigenvalues(p)
            expect = np.sort([pr["common"]] + [pr["contrast"]] * (n - 1))
            worst = max(worst, float(np.max(np.abs(ev - expect))))
            flips &= (ev[-1] < 0) == (kappa < 1)
    out["eq9-10"] = {"worst_eigenvalue_error": float(worst), "sign_change": bool(flips)}
    return out


def claims(data: dict, config: Config) -> list[Claim]:
    cfg, ck = config, data["checks"]
    t41 = ck["thm4.1"]
    worst_fold = ck["thm5.1-folds"]["worst_residual"]
    agree, total = ck["thm5.1-count"]["agree"], ck["thm5.1-count"]["total"]
    dev = ck["prop6.1"]["max_deviation"]
    qs, ratio = np.asarray(ck["eq21-vs-eq16"]["q"]), np.asarray(ck["eq21-vs-eq16"]["ratio"])
    worst_ev, flips = ck["eq9-10"]["worst_eigenvalue_error"], ck["eq9-10"]["sign_change"]
    return [
        Claim(
            "thm4.1",
            "Pitchfork at a = 2 gamma T: one stable equilibrium for a <= 2 gamma T "
            "(non-hyperbolic at equality); for a > 2 gamma T, y = 0 unstable and +-y* stable",
            predicted="counts [1, 1, 3] at a/(2 gamma T) = 0.9, 1, 1.1; "
            "stabilities S | S(0) | S U S",
            measured={"counts": t41["counts"]},
            tolerance="exact",
            holds=bool(t41["as_stated"]),
        ),
        Claim(
            "thm5.1-folds",
            "Along the curve (16), F = F_y = 0 (fold points)",
            predicted=0.0,
            measured=worst_fold,
            tolerance="<= 1e-10 (relative to the terms' size)",
            holds=worst_fold <= 1e-10,
        ),
        Claim(
            "thm5.1-count",
            "For a > 2 gamma T there are three equilibria iff |h| < H(a) (17)-(18), else one",
            predicted=1.0,
            measured=agree / total,
            tolerance=f"all of {total} random (a, gamma, T, h) agree with brute-force counting",
            holds=agree == total,
        ),
        Claim(
            "prop6.1",
            "At (0, 2 gamma T, 0): F = F_y = F_yy = 0, F_yyy = -gamma/(2T^2), F_h = 1, "
            "F_ya = 1/(2T)",
            predicted=0.0,
            measured=dev,
            tolerance="max relative deviation <= 1e-12",
            holds=dev <= 1e-12,
        ),
        Claim(
            "eq21-vs-eq16",
            "The normal-form fold set 4 mu^3 = 27 eps^2 (21), with eps = h sqrt(a/24T^3), "
            "matches the exact fold curve (16) to leading order near the cusp",
            predicted=1.0,
            measured={"q": qs, "ratio": ratio},
            tolerance="|ratio - 1| decreasing and < 1e-3 at q = 0.01",
            holds=bool(np.all(np.diff(np.abs(ratio - 1)) < 0) and abs(ratio[-1] - 1) < 1e-3),
        ),
        Claim(
            "eq9-10",
            "N-expert Jacobian at the uniform state: -gamma (common mode), a/(NT) - gamma "
            "(multiplicity N-1); the uniform state loses stability at a = N gamma T",
            predicted=0.0,
            measured=worst_ev,
            tolerance=f"max |eigenvalue error| <= 1e-10 for N in {list(cfg.expert_counts)}; "
            "sign change across kappa = 1",
            holds=worst_ev <= 1e-10 and flips,
        ),
    ]


def run(config: Config, progress=None) -> dict:
    cfg = config
    g, T = cfg.gamma, cfg.T
    ac = 2 * g * T
    data: dict = {}

    # (a) potentials
    y = np.linspace(-5 * T, 5 * T, 401)
    data["potential"] = {"y": y}
    for key, a in (("below", cfg.a_below), ("above", cfg.a_above)):
        p = RouterParams(a=a, gamma=g, T=T)
        data["potential"][key] = {
            "a": a,
            "V": th.potential(y, p),
            "equilibria": [e.to_dict() for e in th.equilibria(p)],
        }

    # (b) pitchfork: equilibria vs a at h = 0, computed by the root finder
    branches = []
    # uniform grid plus points crowding the threshold, where the branches grow like sqrt(a - ac)
    a_grid = np.union1d(
        np.linspace(0.0, cfg.a_max, cfg.pitchfork_points), ac * (1.0 + np.geomspace(1e-6, 0.05, 25))
    )
    for a in a_grid:
        for e in th.equilibria(RouterParams(a=float(a), gamma=g, T=T)):
            branches.append((float(a), e.y, e.u, e.stable))
    data["pitchfork"] = {
        "a": [b[0] for b in branches],
        "y": [b[1] for b in branches],
        "u": [b[2] for b in branches],
        "stable": [b[3] for b in branches],
    }
    if progress:
        progress(1, 3)

    # (c) fold curve and normal form
    q = np.linspace(-cfg.q_max, cfg.q_max, 401)
    a_f, h_f = th.fold_curve(q, g, T)
    a_nf = np.linspace(ac, float(a_f.max()), 200)
    data["fold"] = {
        "q": q,
        "a": a_f,
        "h": h_f,
        "a_normal_form": a_nf,
        "h_normal_form": th.cusp_fold_approximation(a_nf, g, T),
    }

    # (d) S-curve at a_scurve: exact parametrisation h(y) = gamma y - a tanh(y/2T)
    a4 = cfg.a_scurve
    ys = np.linspace(-7 * T, 7 * T, 1401)
    p4 = RouterParams(a=a4, gamma=g, T=T)
    data["scurve"] = {
        "a": a4,
        "y": ys,
        "h": g * ys - a4 * np.tanh(ys / (2 * T)),
        "u": th.load(ys, T),
        "stable": th.drift_dy(ys, p4) < 0,
        "H": th.hysteresis_halfwidth(a4, g, T),
    }
    if progress:
        progress(2, 3)
    data["checks"] = _checks(cfg)
    if progress:
        progress(3, 3)
    return data


def plot(data: dict, config: Config):
    import matplotlib.pyplot as plt

    from ..style import COLORS, THEORY, figure_style, panel_label

    d = data
    g, T = config.gamma, config.T
    ac = 2 * g * T
    with figure_style():
        fig, axs = plt.subplots(2, 2, figsize=(7.0, 5.6), layout="constrained")

        ax = axs[0, 0]
        pot = d["potential"]
        for key, c in (("below", COLORS[0]), ("above", COLORS[1])):
            V = np.asarray(pot[key]["V"])
            ax.plot(
                pot["y"],
                V - V[len(V) // 2],
                color=c,
                label=f"a = {pot[key]['a']:g} ({'<' if key == 'below' else '>'} 2γT)",
            )
            for e in pot[key]["equilibria"]:
                p = RouterParams(a=pot[key]["a"], gamma=g, T=T)
                v = float(th.potential(e["y"], p)) - V[len(V) // 2]
                ax.plot(e["y"], v, "o", ms=4, color=c, mfc=c if e["stable"] else "white")
        ax.set(
            xlabel="score difference y = r₁ − r₂",
            ylabel="potential V(y) − V(0)",
            title="Potential (12), h = 0",
        )
        ax.legend()
        panel_label(ax, "a")

        ax = axs[0, 1]
        pf = d["pitchfork"]
        a_arr, u_arr, st = (np.asarray(pf[k]) for k in ("a", "u", "stable"))
        for branch_sign in (-1, 0, 1):
            if branch_sign == 0:
                m = np.isclose(u_arr, 0.0)
                for stab, ls in ((True, "-"), (False, "--")):
                    mm = m & (st == stab)
                    ax.plot(a_arr[mm], u_arr[mm], ls, color=COLORS[0] if stab else "0.4")
            else:
                m = np.sign(u_arr) == branch_sign
                ax.plot(a_arr[m], u_arr[m], "-", color=COLORS[0])
        ax.axvline(ac, **{**THEORY, "linewidth": 0.9}, label="a = 2γT")
        ax.plot([], [], "-", color=COLORS[0], label="stable")
        ax.plot([], [], "--", color="0.4", label="unstable")
        ax.set(
            xlabel="feedback strength a",
            ylabel="equilibrium load u* = tanh(y*/2T)",
            title=f"Pitchfork (Thm 4.1), γ = {g:g}, T = {T:g}",
        )
        ax.legend(loc="upper left")
        panel_label(ax, "b")

        ax = axs[1, 0]
        fo = d["fold"]
        a_f, h_f = np.asarray(fo["a"]), np.asarray(fo["h"])
        half = a_f.size // 2
        order = np.argsort(a_f[half:])
        aa = a_f[half:][order]
        HH = -h_f[half:][order]
        ax.fill_between(
            aa, -HH, HH, color=COLORS[0], alpha=0.15, lw=0, label="bistable: |h| < H(a)"
        )
        ax.plot(a_f, h_f, "-", color=COLORS[0], label="fold curve (16)")
        a_nf, h_nf = np.asarray(fo["a_normal_form"]), np.asarray(fo["h_normal_form"])
        ax.plot(a_nf, h_nf, ":", color=COLORS[1], lw=1.6, label="normal form (21)")
        ax.plot(a_nf, -h_nf, ":", color=COLORS[1], lw=1.6)
        ax.plot([ac], [0], "k*", ms=8, label="cusp (2γT, 0)")
        ax.set(
            xlabel="feedback strength a",
            ylabel="skew h",
            title="Bifurcation set (Thm 5.1)",
            xlim=(ac * 0.8, float(a_f.max())),
        )
        ax.legend(loc="upper left")
        panel_label(ax, "c")

        ax = axs[1, 1]
        sc = d["scurve"]
        h_s, u_s, st = (np.asarray(sc[k]) for k in ("h", "u", "stable"))
        # split into contiguous stability segments
        cuts = np.flatnonzero(np.diff(st.astype(int))) + 1
        for seg in np.split(np.arange(h_s.size), cuts):
            s = bool(st[seg[0]])
            ax.plot(h_s[seg], u_s[seg], "-" if s else "--", color=COLORS[0] if s else "0.4")
        H = sc["H"]
        for x in (-H, H):
            ax.axvline(x, **{**THEORY, "linewidth": 0.9})
        ax.text(H, -0.25, " +H(a)", fontsize=7.5)
        ax.text(-H, 0.25, "−H(a) ", fontsize=7.5, ha="right")
        ax.plot([], [], "-", color=COLORS[0], label="stable")
        ax.plot([], [], "--", color="0.4", label="unstable")
        ax.set(
            xlabel="skew h",
            ylabel="equilibrium load u*",
            xlim=(-3, 3),
            title=f"Equilibria vs h at a = {sc['a']:g} (H = {H:.4f})",
        )
        ax.legend(loc="center right")
        panel_label(ax, "d")
    return fig
