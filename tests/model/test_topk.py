"""Top-k routing: inclusion probabilities, the uniform slope and the thresholds of (8k)."""

import numpy as np
import pytest

from moebif import RouterParams
from moebif.model.field import topk_vector_field
from moebif.model.inclusion import inclusion_jacobian, inclusion_probabilities
from moebif.model.topk import (
    topk_branch,
    topk_collapse_threshold,
    topk_linear_threshold,
    topk_uniform_slope,
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
