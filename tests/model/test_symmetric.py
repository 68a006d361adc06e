"""Symmetric m-winner equilibria of (8) and the collapse threshold a_SN."""

import numpy as np
import pytest

from moebif import RouterParams, jacobian, solve_meanfield, vector_field
from moebif.model.symmetric import (
    branch_ratio,
    collapse_threshold,
    saddle_node_gap,
    symmetric_equilibria,
)
from moebif.model.thresholds import regime


@pytest.mark.parametrize("n,approx", [(4, 3.22), (8, 4.25), (64, 6.9)])
def test_collapse_threshold_values(n, approx):
    """The values quoted (rounded) in the many-experts issue."""
    a_sn = collapse_threshold(n, 1.0, 1.0)
    assert a_sn == pytest.approx(approx, rel=0.01)
    assert a_sn < n
    # scaling: a_SN is proportional to gamma T
    assert collapse_threshold(n, 2.0, 0.5) == pytest.approx(a_sn, rel=1e-9)
    assert collapse_threshold(n, 2.0, 1.5) == pytest.approx(3 * a_sn, rel=1e-9)


def test_two_experts_reduce_to_pitchfork():
    assert collapse_threshold(2, 1.3, 0.7) == pytest.approx(2 * 1.3 * 0.7)
    d = np.linspace(0.01, 5, 50)
    np.testing.assert_allclose(branch_ratio(d, 2, 1), d / np.tanh(d / 2))  # a/gT = d coth(d/2)


@pytest.mark.parametrize("n", [3, 4, 8])
@pytest.mark.parametrize("kappa_frac", [0.5, 0.9, 1.2])
def test_symmetric_equilibria_are_equilibria_and_stability_is_right(n, kappa_frac):
    a_sn = collapse_threshold(n, 1.0, 1.0)
    a = a_sn + kappa_frac * (n - a_sn)
    p = RouterParams(a=a, gamma=1.0, T=1.0, n_experts=n)
    eqs = symmetric_equilibria(p)
    for e in eqs:
        np.testing.assert_allclose(vector_field(e.r, p, b=np.zeros(n)), 0.0, atol=1e-10)
        lam = np.linalg.eigvalsh(jacobian(e.r, p))[-1]
        assert (lam < 0) == e.stable
    stable_collapsed = [e for e in eqs if e.stable and e.winners > 0]
    assert any(e.winners == 1 for e in stable_collapsed)


def test_no_stable_collapsed_state_below_a_sn():
    """a_SN is where the first stable collapsed state appears: below it only the uniform state."""
    for n in (3, 4, 6, 8, 16):
        a_sn = collapse_threshold(n, 1.0, 1.0)
        below = symmetric_equilibria(RouterParams(a=0.99 * a_sn, gamma=1.0, T=1.0, n_experts=n))
        assert [e.winners for e in below if e.stable] == [0]
        above = symmetric_equilibria(RouterParams(a=1.01 * a_sn, gamma=1.0, T=1.0, n_experts=n))
        assert sorted(e.winners for e in above if e.stable) == [0, 1]


def test_collapsed_state_persists_in_the_ode_between_thresholds():
    """Independent check by integration: in the metastable window a collapsed start stays
    collapsed and a near-uniform start stays uniform; below a_SN the collapse dissolves."""
    n = 8
    a_sn = collapse_threshold(n, 1.0, 1.0)
    t = np.linspace(0, 200, 5)
    r_col = np.zeros(n)
    r_col[0] = 6.0
    meta = RouterParams(a=0.5 * (a_sn + n), gamma=1.0, T=1.0, n_experts=n)
    assert solve_meanfield(meta, t, r_col, b=np.zeros(n))[-1].max() > 0.6
    near_uniform = np.linspace(-0.01, 0.01, n)
    assert solve_meanfield(meta, t, near_uniform, b=np.zeros(n))[-1].max() < 1 / n + 1e-6
    low = RouterParams(a=0.97 * a_sn, gamma=1.0, T=1.0, n_experts=n)
    assert solve_meanfield(low, t, r_col, b=np.zeros(n))[-1].max() < 1 / n + 1e-6


def test_regime_labels():
    n = 8
    a_sn = collapse_threshold(n, 1.0, 1.0)
    assert regime(RouterParams(a=0.9 * a_sn, gamma=1.0, T=1.0, n_experts=n)) == "balanced"
    assert regime(RouterParams(a=6.0, gamma=1.0, T=1.0, n_experts=n)) == "metastable"
    assert regime(RouterParams(a=8.0, gamma=1.0, T=1.0, n_experts=n)) == "collapsing"


def test_saddle_node_is_minimum_of_branch():
    d_sn, g_sn = saddle_node_gap(8, 1)
    d = np.linspace(0.01, 10, 2000)
    assert g_sn <= branch_ratio(d, 8, 1).min() + 1e-12
    assert saddle_node_gap(8, 4) == (0.0, 8.0)


def test_potential_gradient_and_hessian():
    """grad V = -(vector field), Hess V = -J (finite differences)."""
    from moebif.model.symmetric import potential, potential_gradient, potential_hessian

    p = RouterParams(a=5.0, gamma=0.8, T=0.7, h=0.3, n_experts=6)
    r = np.random.default_rng(1).normal(size=6)
    e = 1e-6
    fd = np.array(
        [(potential(r + e * v, p) - potential(r - e * v, p)) / (2 * e) for v in np.eye(6)]
    )
    np.testing.assert_allclose(potential_gradient(r, p), fd, atol=1e-7)
    np.testing.assert_allclose(potential_gradient(r, p), -vector_field(r, p), atol=1e-14)
    H = potential_hessian(r, p)
    fdH = np.column_stack(
        [
            (potential_gradient(r + e * v, p) - potential_gradient(r - e * v, p)) / (2 * e)
            for v in np.eye(6)
        ]
    )
    np.testing.assert_allclose(H, fdH, atol=1e-7)


@pytest.mark.parametrize("n", [3, 5, 8])
def test_branch_eigenvalues_match_full_jacobian(n):
    from moebif.model.symmetric import branch_eigenvalues

    p = RouterParams(a=0.9 * n, gamma=1.0, T=1.0, n_experts=n)
    for e in symmetric_equilibria(p):
        ev = branch_eigenvalues(p, e.winners, e.gap)
        closed = np.sort(np.concatenate([[v] * k for v, k in ev.values()]))
        assert sum(k for _, k in ev.values()) == n
        np.testing.assert_allclose(closed, np.linalg.eigvalsh(jacobian(e.r, p)), atol=1e-12)


def test_between_mode_vanishes_at_the_saddle_node():
    from moebif.model.symmetric import branch_eigenvalues

    for n in (3, 4, 8, 64):
        d_sn, g_sn = saddle_node_gap(n, 1)
        p = RouterParams(a=g_sn, gamma=1.0, T=1.0, n_experts=n)
        assert branch_eigenvalues(p, 1, d_sn)["between"][0] == pytest.approx(0.0, abs=1e-6)


def test_barrier_window_and_monotonicity():
    """The barrier exists only for a_SN < a < N gamma T, is positive, and vanishes at N gamma T
    (the saddle merges with the uniform state) while it grows toward a_SN."""
    import math

    from moebif.model.symmetric import barrier

    n = 8
    a_sn = collapse_threshold(n, 1.0, 1.0)
    assert math.isnan(barrier(RouterParams(a=0.95 * a_sn, gamma=1.0, T=1.0, n_experts=n)))
    assert math.isnan(barrier(RouterParams(a=8.2, gamma=1.0, T=1.0, n_experts=n)))
    a = np.linspace(a_sn * 1.01, 7.99, 12)
    dv = [barrier(RouterParams(a=x, gamma=1.0, T=1.0, n_experts=n)) for x in a]
    assert all(v > 0 for v in dv) and np.all(np.diff(dv) < 0)
    assert dv[-1] < 1e-4


# ----------------------------------------------------------------------------------------------
# the symmetric-branch reduction is complete; only one winner is ever stable


@pytest.mark.parametrize("n", [3, 5, 8])
def test_brute_force_newton_finds_only_symmetric_equilibria(n):
    """Damped Newton from 300 random starts: every root is an m-winner state of the list."""
    rng = np.random.default_rng(n)
    a_sn = collapse_threshold(n, 1.0, 1.0)
    for a in (0.9 * a_sn, 0.5 * (a_sn + n), 1.2 * n):
        p = RouterParams(a=a, gamma=1.0, T=1.0, n_experts=n)
        pred = []
        for e in symmetric_equilibria(p):
            z = np.zeros(n)
            z[: e.winners] = e.gap
            pred.append(np.sort(np.exp(z) / np.exp(z).sum())[::-1])
        found = set()
        for _ in range(300):
            x = a * rng.dirichlet(np.full(n, rng.choice([0.2, 1.0, 4.0])))
            for _ in range(100):
                pr = np.exp(x - x.max())
                pr /= pr.sum()
                J = a * (np.diag(pr) - np.outer(pr, pr)) - np.eye(n)
                dx = np.linalg.solve(J, x - a * pr)
                x = x + min(1.0, 2.0 / (np.abs(dx).max() + 1e-300)) * dx
                if np.abs(dx).max() < 1e-13 * (1 + np.abs(x).max()):
                    break
            pr = np.exp(x - x.max())
            pr /= pr.sum()
            if np.abs(a * pr - x).max() > 1e-9 * (1 + a):
                continue
            dist = [np.abs(np.sort(pr)[::-1] - q).max() for q in pred]
            assert min(dist) < 1e-8, "an equilibrium outside the symmetric families"
            found.add(int(np.argmin(dist)))
        stable = {i for i, e in enumerate(symmetric_equilibria(p)) if e.stable}
        assert stable <= found


def test_only_the_one_winner_branch_is_ever_stable():
    from moebif.model.symmetric import stable_onsets

    for n in (3, 4, 7, 8, 16):
        ons = stable_onsets(n)
        assert ons[1] == pytest.approx(collapse_threshold(n, 1.0, 1.0), rel=1e-4)
        assert all(v == np.inf for m, v in ons.items() if m > 1)


def test_branch_curve_matches_branch_eigenvalues():
    from moebif.model.symmetric import branch_curve, branch_eigenvalues

    n, m = 7, 2
    d = np.array([0.4, 1.5, 4.0])
    br = branch_curve(n, m, d)
    for i, di in enumerate(d):
        p = RouterParams(a=float(br.ratio[i]), gamma=1.0, T=1.0, n_experts=n)
        ev = branch_eigenvalues(p, m, di)
        for mode in ("within_winners", "within_losers", "between"):
            assert br.eigenvalues[mode][0][i] == pytest.approx(ev[mode][0], abs=1e-12)
            assert br.eigenvalues[mode][1] == ev[mode][1]


def test_branch_saddle_nodes_list():
    from moebif.model.symmetric import branch_saddle_nodes

    sn = branch_saddle_nodes(8)
    assert [s["winners"] for s in sn] == [1, 2, 3]
    assert sn[0]["ratio"] == pytest.approx(collapse_threshold(8, 1.0, 1.0))
    assert all(s["ratio"] < 8 for s in sn)
    assert branch_saddle_nodes(2) == []


# ----------------------------------------------------------------------------------------------
# metastability: escape theory and skew pulses


def test_escape_theory_quantities():
    from moebif.model.metastability import escape_theory
    from moebif.model.symmetric import barrier

    p = RouterParams(a=6.5, gamma=1.0, T=1.0, n_experts=8)
    th = escape_theory(p)
    assert th.barrier == pytest.approx(barrier(p), rel=1e-10)
    assert 0.5 < th.kappa_path < 1.0  # the noise along the path is hotter than at uniform
    assert th.lambda_u == pytest.approx(1 - 6.5 / 8)
    assert th.lambda_s < 0
    # the 1-d formula: log tau grows with slope -> kappa_path in X (large X)
    x1, x2 = (th.barrier_to_noise(batch=b, eta=0.05) for b in (400, 800))
    t1, t2 = (np.log(th.mean_escape_time(batch=b, eta=0.05)) for b in (400, 800))
    assert (t2 - t1) / (x2 - x1) == pytest.approx(th.kappa_path, rel=0.02)
    with pytest.raises(ValueError, match="a"):
        escape_theory(p.replace(a=8.5))


def test_pulse_threshold_against_the_ode():
    """A pulse 3% above h_c(tau) collapses the mean-field router, 3% below it does not."""
    from scipy.integrate import solve_ivp

    from moebif.model.metastability import escape_theory, pulse_threshold

    n = 8
    p = RouterParams(a=6.5, gamma=1.0, T=1.0, n_experts=n)
    th = escape_theory(p)
    for tau in (0.5, 4.0):
        hc = float(pulse_threshold(p, [tau])[0])
        for f, collapsed in ((1.03, True), (0.97, False)):

            def rhs(t, r, h=f * hc, tau=tau):
                pr = np.exp(r - r.max())
                pr /= pr.sum()
                b = np.zeros(n)
                b[0] = h if t < tau else 0.0
                return p.a * pr - r + b

            r0 = np.full(n, p.a / n)
            sol = solve_ivp(rhs, (0, tau), r0, rtol=1e-10, atol=1e-12)
            sol = solve_ivp(rhs, (tau, tau + 60), sol.y[:, -1], rtol=1e-10, atol=1e-12)
            d_end = sol.y[0, -1] - sol.y[1, -1]
            assert (d_end > th.d_s) == collapsed
