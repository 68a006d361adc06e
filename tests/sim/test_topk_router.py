"""The exact top-k batch kernel and the top-k router against the inclusion probabilities."""

import itertools
import math

import numpy as np
import pytest

from moebif import RouterParams
from moebif.model.field import topk_vector_field
from moebif.model.inclusion import inclusion_probabilities


def _rand_scores(rng, n, spread=2.0):
    return rng.normal(size=n) * spread


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
