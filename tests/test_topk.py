"""Top-k routing: inclusion probabilities, thresholds, and the exact batch kernel."""

import itertools
import math

import numpy as np
import pytest

from moebif import RouterParams
from moebif.model.topk import (
    inclusion_jacobian,
    inclusion_probabilities,
    topk_branch,
    topk_collapse_threshold,
    topk_linear_threshold,
    topk_uniform_slope,
    topk_vector_field,
)


def _rand_scores(rng, n, spread=2.0):
    return rng.normal(size=n) * spread


@pytest.mark.parametrize("n,k", [(3, 1), (4, 2), (5, 3), (8, 2), (8, 4), (12, 5), (10, 9)])
def test_inclusion_sums_to_k_and_methods_agree(n, k):
    rng = np.random.default_rng(n * 10 + k)
    for spread in (0.3, 2.0, 8.0):
        r = _rand_scores(rng, n, spread)
        exact = inclusion_probabilities(r, 0.7, k, method="enumerate")
        quad = inclusion_probabilities(r, 0.7, k, method="integral")
        assert exact.sum() == pytest.approx(k, abs=1e-12)
        assert quad.sum() == pytest.approx(k, abs=1e-11)
        np.testing.assert_allclose(quad, exact, rtol=1e-11, atol=1e-300)


def test_inclusion_top1_is_softmax_and_extreme_scores():
    r = np.array([1e3, 0.0, -2e3, 5.0])
    p = inclusion_probabilities(r, 1.0, 1, method="integral")
    np.testing.assert_allclose(p, [1.0, 0.0, 0.0, 0.0], atol=1e-15)
    # huge gaps: no NaN, winners included with probability 1, tiny ones keep relative accuracy
    r = np.array([800.0, 790.0, 0.0, -5.0, 1.0])
    for method in ("enumerate", "integral"):
        p = inclusion_probabilities(r, 1.0, 3, method=method)
        assert np.all(np.isfinite(p))
        assert p[:2] == pytest.approx([1.0, 1.0])
        assert p.sum() == pytest.approx(3.0)
    e = inclusion_probabilities(r, 1.0, 3, method="enumerate")
    q = inclusion_probabilities(r, 1.0, 3, method="integral")
    np.testing.assert_allclose(q, e, rtol=1e-11)


def test_inclusion_against_mpmath():
    """One case against a 30-digit evaluation of the exponential-race integral."""
    import mpmath as mp

    mp.mp.dps = 30
    r = [0.4, -1.3, 2.2, 0.0, 0.9, -0.2]
    k = 3
    w = [mp.e ** mp.mpf(x) for x in r]

    def pi(i):
        def f(t):
            # P(C_{-i}(t) <= k-1) by the generating function of the Bernoullis
            poly = [mp.mpf(1)]
            for j, wj in enumerate(w):
                if j == i:
                    continue
                q = 1 - mp.e ** (-wj * t)
                new = [mp.mpf(0)] * (len(poly) + 1)
                for c, v in enumerate(poly):
                    new[c] += v * (1 - q)
                    new[c + 1] += v * q
                poly = new
            return w[i] * mp.e ** (-w[i] * t) * mp.fsum(poly[:k])

        return mp.quad(f, [0, 1, 10, mp.inf])

    ref = np.array([float(pi(i)) for i in range(len(r))])
    np.testing.assert_allclose(
        inclusion_probabilities(np.array(r), 1.0, k, method="integral"), ref, rtol=1e-12
    )


def test_inclusion_jacobian_symmetric_and_matches_finite_differences():
    rng = np.random.default_rng(3)
    r = rng.normal(size=6)
    for k in (1, 2, 4):
        J = inclusion_jacobian(r, 0.8, k)
        np.testing.assert_allclose(J, J.T, atol=1e-14)
        np.testing.assert_allclose(J.sum(axis=1), 0.0, atol=1e-14)
        e = 1e-6
        fd = np.column_stack(
            [
                (
                    inclusion_probabilities(r + e * v, 0.8, k, method="enumerate")
                    - inclusion_probabilities(r - e * v, 0.8, k, method="enumerate")
                )
                / (2 * e)
                for v in np.eye(6)
            ]
        )
        np.testing.assert_allclose(J, fd, atol=1e-8)


@pytest.mark.parametrize("n,k", [(4, 1), (5, 2), (8, 3), (8, 7)])
def test_uniform_slope_closed_form(n, k):
    J = inclusion_jacobian(np.zeros(n), 1.0, k)
    alpha = topk_uniform_slope(n, k)
    np.testing.assert_allclose(J, alpha * (np.eye(n) - 1.0 / n), atol=1e-13)


def test_linear_threshold_values():
    assert topk_linear_threshold(8, 1, 1.0, 1.0) == pytest.approx(8.0)
    assert topk_linear_threshold(64, 1, 0.5, 2.0) == pytest.approx(64.0)
    # alpha_2(8) = (6/7)(1/7 + 1/8)
    assert topk_linear_threshold(8, 2, 1.0, 1.0) == pytest.approx(2 / ((6 / 7) * (1 / 7 + 1 / 8)))
    assert topk_linear_threshold(8, 2, 2.0, 3.0) == pytest.approx(6 * 8.711111111111112)


def test_topk_branch_k1_is_the_closed_form():
    from moebif.model.symmetric import branch_curve

    d = np.array([0.3, 1.0, 2.8, 7.0])
    for m in (1, 2, 5):
        a, b = topk_branch(8, 1, m, d), branch_curve(8, m, d)
        np.testing.assert_allclose(a.ratio, b.ratio, rtol=1e-12)
        for mode in ("within_losers", "between"):
            np.testing.assert_allclose(a.eigenvalues[mode][0], b.eigenvalues[mode][0], atol=1e-12)
        np.testing.assert_array_equal(a.stable, b.stable)


@pytest.mark.parametrize("n,k,m", [(6, 2, 1), (6, 2, 2), (8, 3, 1), (8, 3, 4)])
def test_topk_branch_states_are_equilibria_with_those_eigenvalues(n, k, m):
    for d in (0.7, 2.5):
        br = topk_branch(n, k, m, [d])
        g = float(br.ratio[0])
        p = RouterParams(a=g, gamma=1.0, T=1.0, n_experts=n)
        z = np.zeros(n)
        z[:m] = d
        r = p.a / k * inclusion_probabilities(z, 1.0, k)  # gamma r = (a/k) pi
        np.testing.assert_allclose(topk_vector_field(r, p, k, b=np.zeros(n)), 0.0, atol=1e-11)
        J = g / k * inclusion_jacobian(r, 1.0, k) - np.eye(n)
        ev = np.linalg.eigvalsh(J)
        closed = [-1.0] + [v[0] for v, mult in br.eigenvalues.values() for _ in range(mult)]
        np.testing.assert_allclose(np.sort(ev), np.sort(closed), atol=1e-9)


def test_topk_collapse_threshold_top1_and_scan():
    from moebif.model.symmetric import collapse_threshold

    a, m = topk_collapse_threshold(8, 1, 1.0, 1.0)
    assert m == 1 and a == pytest.approx(collapse_threshold(8, 1.0, 1.0), rel=1e-9)
    a2, m2 = topk_collapse_threshold(8, 2, 1.0, 1.0)
    assert m2 == 1 and a2 < topk_linear_threshold(8, 2, 1.0, 1.0)
    # the stable part of the one-winner branch starts at a2: just below, nothing stable
    br = topk_branch(8, 2, 1, np.linspace(0.05, 12, 400))
    assert br.ratio[br.stable].min() >= a2 - 1e-9


# ----------------------------------------------------------------------------------------------
# the batch kernel


def _set_probs(w, k):
    """Plackett-Luce probability of every k-subset."""
    n = len(w)
    out = {}
    for perm in itertools.permutations(range(n), k):
        prob, rem = 1.0, sum(w)
        for j in perm:
            prob *= w[j] / rem
            rem -= w[j]
        key = frozenset(perm)
        out[key] = out.get(key, 0.0) + prob
    return out


def test_topk_counts_exact_distribution():
    """Counts of a batch of B = 2 tokens, N = 4, k = 2, against the exact law (chi-square)."""
    from scipy.stats import chi2

    from moebif.sim._kernels.topk import topk_counts_sample

    r = np.array([1.2, 0.0, -0.7, 0.4])
    w = np.exp(r)
    sets = _set_probs(list(w), 2)
    law: dict = {}
    for s1, p1 in sets.items():
        for s2, p2 in sets.items():
            c = tuple(int(i in s1) + int(i in s2) for i in range(4))
            law[c] = law.get(c, 0.0) + p1 * p2
    size = 200_000
    draws = topk_counts_sample(r, 1.0, 2, 2, size, 7)
    assert np.all(draws.sum(axis=1) == 4)
    keys = sorted(law)
    obs = np.array([np.sum(np.all(draws == np.array(k), axis=1)) for k in keys])
    assert obs.sum() == size
    exp = np.array([law[k] for k in keys]) * size
    stat = float(np.sum((obs - exp) ** 2 / exp))
    assert stat < chi2.ppf(1 - 1e-4, len(keys) - 1)


@pytest.mark.parametrize("k", [2, 3, 5])
def test_topk_counts_mean_matches_inclusion(k):
    from moebif.sim._kernels.topk import topk_counts_sample

    r = np.array([2.0, 1.0, 0.5, 0.0, 0.0, -1.0, -3.0, 0.3])
    draws = topk_counts_sample(r, 1.0, k, 64, 20_000, 1)
    assert np.all(draws.sum(axis=1) == 64 * k)
    pi = inclusion_probabilities(r, 1.0, k)
    mean = draws.mean(axis=0) / 64
    se = draws.std(axis=0) / 64 / math.sqrt(draws.shape[0])
    assert np.max(np.abs(mean - pi) / se) < 5.0


def test_topk_counts_collapsed_and_underflow():
    """A collapsed winner (rejection from the second table) and remaining weights that
    underflow (score gaps > 745 T) give the exact inclusion law, never NaN."""
    from moebif.sim._kernels.topk import topk_counts_sample

    r = np.array([40.0, 0.0, 0.0, -1.0, 0.5, 0.0, 0.0, 0.0])
    draws = topk_counts_sample(r, 1.0, 3, 64, 20_000, 2)
    pi = inclusion_probabilities(r, 1.0, 3)
    mean = draws.mean(axis=0) / 64
    se = draws.std(axis=0) / 64 / math.sqrt(draws.shape[0]) + 1e-12
    assert np.max(np.abs(mean - pi) / se) < 5.0
    r = np.array([2000.0, 1000.0, 0.0, 0.0, -1.0])
    draws = topk_counts_sample(r, 1.0, 3, 16, 5000, 3)
    assert np.all(draws[:, 0] == 16) and np.all(draws[:, 1] == 16)
    # the third pick is among the three bottom experts with weights (1, 1, e^-1)
    frac = draws[:, 2:].sum(axis=0) / draws[:, 2:].sum()
    np.testing.assert_allclose(frac, np.array([1, 1, math.exp(-1)]) / (2 + math.exp(-1)), atol=0.01)


def test_top1_equals_the_papers_router_bit_for_bit():
    from moebif.sim.router import simulate_batch_router
    from moebif.sim.topk_router import simulate_topk_router

    p = RouterParams(a=6.0, gamma=1.0, T=0.8, h=0.3, n_experts=6)
    r0 = np.random.default_rng(0).normal(size=6)
    a = simulate_batch_router(p, batch=64, eta=0.01, steps=300, runs=20, seed=3, r0=r0)
    b = simulate_topk_router(p, batch=64, eta=0.01, steps=300, runs=20, seed=3, r0=r0, top_k=1)
    np.testing.assert_array_equal(a.u_hat[:, :300], b.loads)


def test_topk_router_reproducible_and_thread_independent():
    from moebif.sim.topk_router import simulate_topk_router

    p = RouterParams(a=7.0, gamma=1.0, T=1.0, n_experts=8)
    kw = dict(batch=32, eta=0.05, steps=400, runs=24, top_k=2, seed=9, record_every=50)
    a = simulate_topk_router(p, threads=1, **kw)
    b = simulate_topk_router(p, **kw)
    c = simulate_topk_router(p, chunk_steps=37, **kw)
    np.testing.assert_array_equal(a.loads, b.loads)
    np.testing.assert_array_equal(a.scores, c.scores)
    np.testing.assert_allclose(a.loads.sum(axis=2), 1.0, atol=1e-12)


def test_topk_router_follows_the_mean_field():
    """Small eta: the replica mean of the loads follows (8k) from a skewed start."""
    from scipy.integrate import solve_ivp

    from moebif.sim.topk_router import simulate_topk_router

    n, k = 6, 2
    p = RouterParams(a=4.0, gamma=1.0, T=1.0, n_experts=n)
    r0 = np.array([1.0, 0.5, 0.0, 0.0, -0.5, -1.0])
    sim = simulate_topk_router(
        p, batch=256, eta=0.01, steps=400, runs=64, top_k=k, r0=r0, record_every=100, b=np.zeros(n)
    )
    sol = solve_ivp(
        lambda t, r: topk_vector_field(r, p, k, b=np.zeros(n)),
        (0, 4),
        r0,
        t_eval=sim.t + 0.5,
        rtol=1e-9,
        atol=1e-11,
    )  # window midpoints
    mf = np.array([inclusion_probabilities(x, 1.0, k) / k for x in sol.y.T])
    assert np.max(np.abs(sim.loads.mean(axis=0) - mf)) < 0.01


def test_stop_gap_first_passage():
    from moebif.sim.topk_router import simulate_topk_router

    p = RouterParams(a=12.0, gamma=1.0, T=1.0, n_experts=8)  # above N gamma T: collapses
    sim = simulate_topk_router(
        p, batch=64, eta=0.05, steps=4000, runs=8, seed=1, record_every=None, stop_gap=3.0
    )
    assert np.all(sim.hit >= 0)
    assert np.all(np.isfinite(sim.hit_time))
    gaps = sim.scores.max(axis=1) - sim.scores.mean(axis=1)
    assert np.all(gaps >= 3.0)  # frozen at the passage


def test_bad_arguments():
    from moebif.params import ParameterError
    from moebif.sim.topk_router import simulate_topk_router

    p = RouterParams(a=1.0, gamma=1.0, T=1.0, n_experts=4)
    with pytest.raises(ParameterError, match="top_k"):
        simulate_topk_router(p, batch=8, eta=0.1, steps=5, runs=1, top_k=4)
    with pytest.raises(ParameterError, match="a"):
        simulate_topk_router(p, batch=8, eta=0.1, steps=5, runs=1, a=np.ones(3))
    with pytest.raises(ValueError, match="top_k"):
        inclusion_probabilities(np.zeros(4), 1.0, 0)


# ----------------------------------------------------------------------------------------------
# command line


def _cli(capsys, *args):
    import json

    from moebif.cli import main

    code = main(list(args))
    out = capsys.readouterr().out
    return code, json.loads(out) if "--json" in args else out


def test_cli_theory_top_k(capsys):
    code, rep = _cli(
        capsys,
        "theory",
        "--a",
        "7",
        "--gamma",
        "1",
        "--T",
        "1",
        "--experts",
        "8",
        "--top-k",
        "2",
        "--json",
    )
    assert code == 0
    assert rep["critical_a"] == pytest.approx(8.711111111111112)
    assert rep["collapse_a"] == pytest.approx(topk_collapse_threshold(8, 2, 1.0, 1.0)[0])
    assert rep["regime"] == "metastable" and rep["kappa"] == pytest.approx(7 / 8.711111111111112)
    code, rep = _cli(
        capsys, "theory", "--a", "7", "--gamma", "1", "--T", "1", "--experts", "8", "--json"
    )
    assert rep["critical_a"] == 8.0 and rep["regime"] == "metastable"
    assert rep["collapse_a"] == pytest.approx(4.249799008647895)
    code, rep = _cli(capsys, "theory", "--a", "3", "--gamma", "1", "--T", "1", "--json")
    assert rep["regime"] == "bistable" and "hysteresis_halfwidth" in rep  # N = 2 as before


def test_cli_theory_top_k_bad(capsys):
    with pytest.raises(SystemExit) as e:
        _cli(
            capsys,
            "theory",
            "--a",
            "7",
            "--gamma",
            "1",
            "--T",
            "1",
            "--experts",
            "4",
            "--top-k",
            "4",
        )
    assert e.value.code == 2
    assert "--top-k" in capsys.readouterr().err


def test_cli_branches(capsys, tmp_path):
    code, rep = _cli(
        capsys,
        "branches",
        "--experts",
        "4",
        "--out",
        str(tmp_path / "o"),
        "--points",
        "60",
        "--json",
    )
    assert code == 0
    assert rep["collapse_a"] == pytest.approx(3.2187410883369556)
    for f in rep["files"]:
        assert (tmp_path / "o" / f.split("/")[-1]).stat().st_size > 0
