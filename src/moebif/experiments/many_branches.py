"""Experiment ``nexp-branches``: bifurcation diagrams of the N-expert router (8) beyond the
paper's linearisation (sec. 3.2).

For N in {2, 3, 4, 8, 16, 64}: the largest load of every symmetric equilibrium ("m winners")
against ``a / (gamma T)``, stable solid, unstable dashed, with the linear threshold ``N`` of
eq. (10) and the saddle-node ``a_SN`` where the stable collapsed state is born. Claims check the
closed forms against numerical continuation (folds, branch points, stability along branches),
against brute-force Newton from many random starts (no other equilibria), the two-expert fold
curve (16) against fold continuation, and the reduction to the paper's pitchfork for N = 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..model.diagram import branch_diagram
from ..model.symmetric import (
    branch_curve,
    branch_ratio,
    collapse_threshold,
    saddle_node_gap,
    stable_onsets,
    symmetric_equilibria,
    winner_load,
)
from ..params import RouterParams
from .base import Claim, num

ID = "nexp-branches"
TITLE = "Bifurcation diagrams of the N-expert router: metastable balance below N gamma T"
PAPER = "Beyond sec. 3.2, eqs. (8)-(10)"


@dataclass(frozen=True)
class Config:
    gamma: float = 1.0
    T: float = 1.0
    experts: tuple = (2, 3, 4, 8, 16, 64)  # the list
    points: int = 500  # samples a branch in the diagram
    a_max_factor: float = 1.35  # diagrams extend to a = 1.35 N gamma T
    # a_SN(N) table: typical MoE sizes
    table_experts: tuple = (2, 3, 4, 6, 8, 12, 16, 32, 64, 128, 256)
    # continuation checks (64-dimensional continuation takes ~1 s)
    continuation_experts: tuple = (3, 4, 8, 16, 64)
    # brute-force Newton: random starts per (N, a); a at these fractions of [a_SN, N] (and
    # one point below a_SN and one above N)
    newton_experts: tuple = (3, 4, 8)
    newton_starts: int = 400
    newton_positions: tuple = (-0.1, 0.3, 0.8, 1.15)
    seed: int = 0


def quick() -> Config:
    return Config(points=200, continuation_experts=(3, 8), newton_experts=(4, 8), newton_starts=120)


def plot_diagram(ax, dg: dict, *, colors, label_lines: bool = True, max_gray: int = 12) -> None:
    """One bifurcation diagram: uniform state, the m = 1 branch in colour, the others grey."""
    from ..style import THEORY

    a_lin, a_sn, a_max = dg["linear_threshold"], dg["collapse_threshold"], dg["a_max"]
    u = dg["uniform_load"]
    ax.plot([0, a_lin], [u, u], "-", color=colors[0], lw=1.6, label="uniform state")
    ax.plot([a_lin, a_max], [u, u], "--", color=colors[0], lw=1.2)
    many = len(dg["branches"]) > max_gray
    for br in dg["branches"]:
        m = br["winners"]
        a, y, st = (np.asarray(br[k]) for k in ("a", "max_load", "stable"))
        if a.size == 0:
            continue
        col = colors[1] if m == 1 else "0.55"
        lw = 1.6 if m == 1 else (0.5 if many else 0.8)
        # split into stable / unstable runs
        idx = np.flatnonzero(np.diff(st.astype(int)) != 0) + 1
        for seg in np.split(np.arange(a.size), idx):
            if seg.size == 0:
                continue
            s = seg if seg[0] == 0 else np.r_[seg[0] - 1, seg]
            ax.plot(a[s], y[s], "-" if st[seg[0]] else "--", color=col, lw=lw)
    ax.plot([], [], "-", color=colors[1], lw=1.6, label="one winner (m = 1)")
    other = "m ≥ 2 winners (unstable)" if dg["top_k"] == 1 else "m ≥ 2 winners"
    ax.plot([], [], "--", color="0.55", lw=0.8, label=other)
    ax.axvline(a_lin, **THEORY)
    if a_sn < a_lin - 1e-9:
        ax.axvline(a_sn, color=colors[2], ls=":", lw=1.4)
        ax.axvspan(
            a_sn,
            a_lin,
            color=colors[2],
            alpha=0.08,
            lw=0,
            label="metastable balance" if label_lines else None,
        )
    for f in dg.get("folds", [])[:1]:
        ax.plot([f["a"]], [f["max_load"]], "o", color=colors[2], ms=4, zorder=5)
    ax.set(xlim=(0, a_max), ylim=(0, 1.02))
    if label_lines:
        if not a_sn < a_lin - 1e-9:  # nothing shaded here: a legend entry all the same
            ax.fill_between([], [], color=colors[2], alpha=0.08, lw=0, label="metastable balance")
        lin = "linear threshold N γT" if dg["top_k"] == 1 else "linear threshold a_lin"
        ax.plot([], [], **THEORY, label=lin)
        ax.plot(
            [],
            [],
            color=colors[2],
            ls=":",
            lw=1.4,
            marker="o",
            ms=4,
            label="saddle-node a_SN (stable collapse appears)",
        )


def diagram_figure(dg: dict):
    """The figure of ``moebif branches``: one diagram of :func:`moebif.model.diagram.
    branch_diagram` with its legend (closed by the caller)."""
    import matplotlib.pyplot as plt

    from ..style import COLORS, figure_style

    n, k = dg["n_experts"], dg["top_k"]
    with figure_style():
        fig, ax = plt.subplots(figsize=(6.0, 3.0), layout="constrained")
        plot_diagram(ax, dg, colors=COLORS)
        routing = "top-1" if k == 1 else f"top-{k}"
        ax.set(
            xlabel="feedback a / (γT)",
            ylabel="largest load" if k == 1 else "largest load (count / kB)",
            title=f"N = {n} experts, {routing} routing",
        )
        fig.legend(loc="outside right center", fontsize=6.8)
    return fig


# ----------------------------------------------------------------------------------------------
# checks


def _newton_roots(p: RouterParams, starts: int, rng) -> list[np.ndarray]:
    """Equilibria of (8), b = 0, by damped Newton from random starts ``r = (a/gamma) q`` with
    ``q`` ~ Dirichlet (loads of any shape); returns the sorted load profiles found."""
    n = p.n_experts
    alpha = rng.choice([0.2, 0.5, 1.0, 3.0], size=starts)
    q = np.array([rng.dirichlet(np.full(n, al)) for al in alpha])
    r = p.a / p.gamma * q
    found = []
    for x in r:
        for _ in range(100):
            z = x / p.T
            pr = np.exp(z - z.max())
            pr /= pr.sum()
            F = p.a * pr - p.gamma * x
            J = p.a / p.T * (np.diag(pr) - np.outer(pr, pr)) - p.gamma * np.eye(n)
            try:
                dx = np.linalg.solve(J, -F)
            except np.linalg.LinAlgError:
                break
            step = min(1.0, 2.0 / (np.abs(dx).max() + 1e-300))
            x = x + step * dx
            if np.abs(dx).max() < 1e-13 * (1 + np.abs(x).max()):
                break
        z = x / p.T
        pr = np.exp(z - z.max())
        pr /= pr.sum()
        if np.abs(p.a * pr - p.gamma * x).max() < 1e-10 * (1 + p.a):
            found.append(np.sort(pr)[::-1])
    return found


def _profiles(p: RouterParams) -> list[np.ndarray]:
    n = p.n_experts
    out = []
    for e in symmetric_equilibria(p):
        z = np.zeros(n)
        z[: e.winners] = e.gap
        pr = np.exp(z - z.max())
        out.append(np.sort(pr / pr.sum())[::-1])
    return out


def _checks(c: Config) -> dict:
    """The measurements behind the claims: continuation against the closed forms, brute-force
    Newton, the stability of the m >= 2 branches, the N = 2 fold curve. JSON-ready."""
    from ..model import two_expert as th
    from ..model.continuation import continue_equilibria, continue_folds

    data: dict = {}
    # 1. fold of the m = 1 branch by continuation vs the closed form; stability along it
    worst_fold, worst_g, mismatch, bp_ok, rows = 0.0, 0.0, 0, True, []
    for n in c.continuation_experts:
        a_sn = collapse_threshold(n, c.gamma, c.T)
        p = RouterParams(a=0.5 * (a_sn + n * c.gamma * c.T), gamma=c.gamma, T=c.T, n_experts=n)
        start = max((e for e in symmetric_equilibria(p) if e.winners == 1), key=lambda e: e.gap)
        br = continue_equilibria(
            p,
            start.r,
            parameter="a",
            direction=-1,
            p_min=0.5 * a_sn,
            p_max=1.2 * n * c.gamma * c.T,
            ds_max=0.25,
        )
        fold = br.folds[0].param if br.folds else math.nan
        worst_fold = max(worst_fold, abs(fold - a_sn) / a_sn)
        # every continued point against g_1(d) and the closed-form stability
        d = (br.x[:, 0] - br.x[:, 1]) / c.T
        ok = np.abs(d) > 1e-6
        g = branch_ratio(d[ok], n, 1) * c.gamma * c.T
        worst_g = max(worst_g, float(np.max(np.abs(br.param[ok] - g) / g)))
        closed = branch_curve(n, 1, np.abs(d[ok]))
        # d < 0 on branch 1 is branch N-1 at |d|
        closed_neg = branch_curve(n, n - 1, np.abs(d[ok]))
        st = np.where(d[ok] > 0, closed.stable, closed_neg.stable)
        mismatch += int(np.sum(st != br.stable[ok]))
        bps = br.branch_points
        bp_ok &= len(bps) == 1 and abs(bps[0].param - n * c.gamma * c.T) < 1e-6 * n
        bp_ok &= bps[0].multiplicity == n - 1 if bps else False
        rows.append(
            {
                "n": n,
                "fold_continuation": fold,
                "fold_closed_form": a_sn,
                "points": int(br.param.size),
            }
        )
    data["continuation"] = rows
    data["fold_worst_relative_error"] = worst_fold
    data["branch_relative_residual"] = worst_g
    data["stability_mismatches"] = mismatch
    data["branch_point_as_predicted"] = bool(bp_ok)

    # 2. brute-force Newton: no equilibria besides the symmetric ones
    rng = np.random.default_rng(c.seed)
    extra, missing_stable, n_found, nrows = 0, 0, 0, []
    for n in c.newton_experts:
        a_sn = collapse_threshold(n, c.gamma, c.T)
        for f in c.newton_positions:
            a = (a_sn + f * (n - a_sn)) * c.gamma * c.T
            p = RouterParams(a=a, gamma=c.gamma, T=c.T, n_experts=n)
            pred = _profiles(p)
            roots = _newton_roots(p, c.newton_starts, rng)
            n_found += len(roots)
            seen = set()
            for x in roots:
                dist = [np.abs(x - q).max() for q in pred]
                j = int(np.argmin(dist))
                if dist[j] > 1e-8:
                    extra += 1
                else:
                    seen.add(j)
            stable_idx = {j for j, e in enumerate(symmetric_equilibria(p)) if e.stable}
            missing_stable += len(stable_idx - seen)
            nrows.append({"n": n, "a": a, "predicted": len(pred), "distinct_found": len(seen)})
    data["newton"] = nrows
    data["newton_totals"] = {
        "equilibria_outside_families": extra,
        "stable_missed": missing_stable,
        "converged_starts": n_found,
    }

    # 3. only the one-winner branch has stable states: the m >= 2 branches with stable points
    others = {}
    for n in c.experts:
        if n > 2:
            ons = stable_onsets(n)
            others[n] = [m for m, v in ons.items() if m != 1 and math.isfinite(v)]
    data["stable_other_branches"] = others

    # 5. N = 2: the paper's pitchfork; fold curve (16) by two-parameter continuation
    d = np.linspace(0.01, 8, 200)
    pitch = float(np.max(np.abs(branch_ratio(d, 2, 1) - d / np.tanh(d / 2))))
    p2 = RouterParams(a=4.0 * c.gamma * c.T, gamma=c.gamma, T=c.T, n_experts=2)
    y = th.equilibria(p2)[-1].y
    r0 = np.array([p2.a / (2 * c.gamma) + y / 2, p2.a / (2 * c.gamma) - y / 2])
    b1 = continue_equilibria(p2, r0, parameter="h", direction=-1, p_min=-3 * p2.a, p_max=3 * p2.a)
    fc = continue_folds(
        p2, b1.folds[0], parameters=("h", "a"), direction=1, p2_max=10 * c.gamma * c.T, ds_max=0.1
    )
    H = np.array([th.hysteresis_halfwidth(a, c.gamma, c.T) for a in fc.p2])
    fold_err = float(np.max(np.abs(np.abs(fc.p1) - H) / (H + c.gamma * c.T)))
    data["two_expert_fold_curve"] = {"a": fc.p2, "h": fc.p1, "H": H}
    data["two_expert"] = {
        "branch_residual": pitch,
        "fold_curve_error": fold_err,
        "fold_points": int(fc.p1.size),
    }
    return data


def claims(data: dict, config: Config) -> list[Claim]:
    c, ck, table = config, data["checks"], data["table"]
    rows = ck["continuation"]
    worst_fold = num(ck["fold_worst_relative_error"])
    worst_g, mismatch = num(ck["branch_relative_residual"]), ck["stability_mismatches"]
    nt, two = ck["newton_totals"], ck["two_expert"]
    others = ck["stable_other_branches"]
    pitch, fold_err = two["branch_residual"], two["fold_curve_error"]
    out = [
        Claim(
            "nexp-fold-continuation",
            "The saddle-node of the one-winner branch found by pseudo-arclength continuation of "
            "(8) equals the closed form a_SN = gamma T min_d g_1(d), N = "
            + ", ".join(str(n) for n in c.continuation_experts),
            predicted=[r["fold_closed_form"] for r in rows],
            measured=[r["fold_continuation"] for r in rows],
            tolerance="relative error <= 1e-9",
            holds=worst_fold <= 1e-9,
        ),
        Claim(
            "nexp-branch-formula",
            "Every continued equilibrium lies on a / (gamma T) = d (m e^d + N - m) / (e^d - 1), "
            "and its stability (full Jacobian eigenvalues) equals the closed-form one",
            predicted={"relative_residual": 0.0, "stability_mismatches": 0},
            measured={"relative_residual": worst_g, "stability_mismatches": mismatch},
            tolerance="residual <= 1e-10, no mismatch",
            holds=worst_g <= 1e-10 and mismatch == 0,
        ),
        Claim(
            "nexp-branch-point",
            "Continuation detects the branch point where the one-winner branch crosses the uniform "
            "state, at a = N gamma T, with N - 1 eigenvalues crossing (the S_N-symmetric kernel)",
            predicted="one branch point at N gamma T, multiplicity N - 1",
            measured="as predicted" if ck["branch_point_as_predicted"] else "not as predicted",
            tolerance="location within 1e-6 N",
            holds=bool(ck["branch_point_as_predicted"]),
        ),
        Claim(
            "nexp-newton-complete",
            "Brute-force Newton from random starts finds no equilibrium of (8) outside the "
            "symmetric m-winner families, and finds every stable one",
            predicted={"equilibria_outside_families": 0, "stable_missed": 0},
            measured=dict(nt),
            tolerance="exact counts",
            holds=nt["equilibria_outside_families"] == 0 and nt["stable_missed"] == 0,
        ),
        Claim(
            "nexp-only-one-winner-stable",
            "Only the one-winner branch (m = 1) has stable points: branches with m >= 2 winners "
            "are unstable within the winners (eigenvalue gamma (d e^d / (e^d - 1) - 1) > 0)",
            predicted=[],
            measured=sorted({m for v in others.values() for m in v}),
            tolerance="no stable point on any m >= 2 branch",
            holds=all(not v for v in others.values()),
        ),
    ]
    # a_SN < N gamma T for N >= 3, = 2 gamma T (pitchfork) for N = 2
    below = all(r["collapse_a"] < r["critical_a"] for r in table if r["n"] >= 3)
    out.append(
        Claim(
            "nexp-collapse-below-linear",
            "For N >= 3 the stable collapsed state exists from a_SN < N gamma T: the balanced "
            "router is only metastable for a_SN <= a < N gamma T",
            predicted={r["n"]: r["critical_a"] for r in table},
            measured={r["n"]: r["collapse_a"] for r in table},
            tolerance="a_SN < N gamma T for every N >= 3",
            holds=below,
        )
    )
    out.append(
        Claim(
            "nexp-n2-pitchfork",
            "N = 2: the one-winner branch is the paper's pitchfork a / (gamma T) = d coth(d / 2) "
            "from a = 2 gamma T, and two-parameter fold continuation reproduces the fold curve "
            "(16)",
            predicted={"a_SN": 2 * c.gamma * c.T, "max |h| - H(a)": 0.0},
            measured={
                "a_SN": table[0]["collapse_a"],
                "branch_residual": pitch,
                "fold_curve_error": fold_err,
                "fold_points": two["fold_points"],
            },
            tolerance="branch residual and fold-curve error <= 1e-9",
            holds=pitch <= 1e-9
            and fold_err <= 1e-9
            and table[0]["collapse_a"] == 2 * c.gamma * c.T,
        )
    )
    return out


def run(config: Config, progress=None) -> dict:
    c = config
    diagrams = []
    for i, n in enumerate(c.experts):
        diagrams.append(branch_diagram(n, a_max=c.a_max_factor * n, points=c.points))
        if progress:
            progress(i + 1, len(c.experts) + 1)
    table = []
    for n in c.table_experts:
        a_sn = collapse_threshold(n, c.gamma, c.T)
        d_sn = saddle_node_gap(n, 1)[0] if n > 2 else 0.0
        table.append(
            {
                "n": n,
                "collapse_a": a_sn,
                "critical_a": n * c.gamma * c.T,
                "ratio": a_sn / (n * c.gamma * c.T),
                "gap": d_sn,
                "max_load_at_fold": winner_load(n, 1, d_sn) if n > 2 else 0.5,
            }
        )
    checks = _checks(c)
    if progress:
        progress(len(c.experts) + 1, len(c.experts) + 1)
    return {
        "diagrams": diagrams,
        "table": table,
        "checks": checks,
        "units": "a in units of gamma T",
    }


def plot(data: dict, config: Config):
    import matplotlib.pyplot as plt

    from ..style import COLORS, figure_style, panel_label

    dgs = data["diagrams"]
    with figure_style():
        ncol = 3
        nrow = -(-len(dgs) // ncol)
        fig, axs = plt.subplots(nrow, ncol, figsize=(7.2, 2.35 * nrow), layout="constrained")
        for i, (ax, dg) in enumerate(zip(axs.flat, dgs, strict=False)):
            plot_diagram(ax, dg, colors=COLORS, label_lines=i == 0)
            n = dg["n_experts"]
            sn = f", a_SN = {dg['collapse_threshold']:.3g}"
            ax.set_title(f"N = {n}" + (sn if n > 2 else " (pitchfork)"))
            if i % ncol == 0:
                ax.set_ylabel("largest load max pᵢ")
            if i // ncol == nrow - 1:
                ax.set_xlabel("feedback a / (γT)")
            panel_label(ax, "abcdef"[i])
        for ax in list(axs.flat)[len(dgs) :]:
            ax.axis("off")
        axs.flat[0].legend(loc="upper left", fontsize=6.3)
    return fig
