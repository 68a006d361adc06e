"""Inclusion probabilities and their Jacobian (:mod:`moebif.model.inclusion`) against the
former implementation (benchmarks/_inclusion_reference.py: O(N) Python steps per distribution,
O(N^3) for the Jacobian), Monte Carlo Gumbel-top-k sampling and finite differences, and the
Jacobian's invariants."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from moebif.model.inclusion import inclusion_jacobian, inclusion_probabilities

_REF = Path(__file__).resolve().parents[2] / "benchmarks" / "_inclusion_reference.py"


@pytest.fixture(scope="module")
def reference():
    spec = importlib.util.spec_from_file_location("inclusion_reference", _REF)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _cases():
    """Seeded table: (N, k, spread, seed); the reference Jacobian costs ~N^3 k, so the largest
    N is taken at a few (k, spread) only."""
    out = []
    for n in (3, 4, 6, 9, 13, 20, 33):
        for k in sorted({1, 2, min(3, n - 1), min(5, n - 1), min(8, n - 1), min(n - 1, 19)}):
            for spread in (0.3, 3.0, 40.0):
                out.append((n, k, spread, 1000 * n + 10 * k + int(spread)))
    out += [(64, 2, s, 64020 + int(s)) for s in (0.3, 3.0, 40.0)]
    out += [(64, 8, 1.5, 64081), (48, 5, 8.0, 48058)]
    return out


CASES = _cases()


def _scores(n, spread, seed):
    return np.random.default_rng(seed).normal(size=n) * spread


@pytest.mark.parametrize("n,k,spread,seed", CASES)
def test_probabilities_match_the_reference(reference, n, k, spread, seed):
    r = _scores(n, spread, seed)
    ref = reference.probabilities(r, 0.8, k)
    for method in ("integral", "auto"):
        pi = inclusion_probabilities(r, 0.8, k, method=method)
        np.testing.assert_allclose(pi, ref, rtol=0, atol=1e-10)
        assert pi.sum() == pytest.approx(k, abs=1e-10)
    # tiny probabilities keep their relative accuracy
    pi = inclusion_probabilities(r, 0.8, k, method="integral")
    np.testing.assert_allclose(pi, ref, rtol=1e-9, atol=1e-300)


@pytest.mark.parametrize("n,k,spread,seed", CASES)
def test_jacobian_matches_the_reference(reference, n, k, spread, seed):
    r = _scores(n, spread, seed)
    J = inclusion_jacobian(r, 0.8, k)
    w = np.exp((r - r.max()) / 0.8)
    # the reference's closed form for k = 2 cancels when one expert holds nearly all the
    # weight (it is off by up to 9 here); its loop over pairs is exact there
    loop = k == 2 and 1.0 - w.max() / w.sum() < 1e-6
    np.testing.assert_allclose(J, reference.jacobian(r, 0.8, k, pair_loop=loop), rtol=0, atol=1e-10)
    # invariants: a common shift of the scores changes nothing (rows), sum_i pi_i = k
    # (columns); symmetric
    np.testing.assert_allclose(J.sum(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(J.sum(axis=0), 0.0, atol=1e-12)
    np.testing.assert_array_equal(J, J.T)


def test_jacobian_symmetry_is_a_property_of_the_model():
    """d pi_i / d z_j = d pi_j / d z_i (pi is the gradient of E[sum of the k largest z + G]):
    checked on finite differences of the exact enumeration, not assumed."""
    r = _scores(9, 1.5, 4)
    for k in (2, 4, 7):
        e = 1e-6
        fd = np.column_stack(
            [
                (
                    inclusion_probabilities(r + e * v, 1.0, k, method="enumerate")
                    - inclusion_probabilities(r - e * v, 1.0, k, method="enumerate")
                )
                / (2 * e)
                for v in np.eye(r.size)
            ]
        )
        np.testing.assert_allclose(fd, fd.T, atol=1e-8)
        np.testing.assert_allclose(inclusion_jacobian(r, 1.0, k), fd, atol=1e-8)


def _gumbel_top_k_counts(r, T, k, draws, rng, chunk=20_000):
    counts = np.zeros(r.size)
    for start in range(0, draws, chunk):
        m = min(chunk, draws - start)
        g = r / T + rng.gumbel(size=(m, r.size))
        top = np.argpartition(-g, k - 1, axis=1)[:, :k]
        counts += np.bincount(top.ravel(), minlength=r.size)
    return counts


@pytest.mark.parametrize("spread", [0.5, 2.0])
def test_probabilities_against_monte_carlo_n256_k8(spread):
    """200k Gumbel-top-k draws at N = 256, k = 8: every pi_i within 4 standard errors."""
    rng = np.random.default_rng(11)
    r = rng.normal(size=256) * spread
    draws = 200_000
    freq = _gumbel_top_k_counts(r, 1.0, 8, draws, rng) / draws
    pi = inclusion_probabilities(r, 1.0, 8)
    se = np.sqrt(pi * (1 - pi) / draws)
    assert pi.sum() == pytest.approx(8.0, abs=1e-10)
    assert np.all(np.abs(freq - pi) <= 4 * se + 1e-12), np.max(np.abs(freq - pi) / (se + 1e-300))


@pytest.mark.parametrize("spread", [0.5, 2.0, 6.0])
def test_jacobian_against_finite_differences_n256_k8(spread):
    r = np.random.default_rng(12).normal(size=256) * spread
    J = inclusion_jacobian(r, 1.0, 8)
    e = 1e-5
    fd = np.empty_like(J)
    for j in range(r.size):
        v = np.zeros(r.size)
        v[j] = e
        fd[:, j] = (
            inclusion_probabilities(r + v, 1.0, 8) - inclusion_probabilities(r - v, 1.0, 8)
        ) / (2 * e)
    np.testing.assert_allclose(J, fd, rtol=0, atol=1e-9)
    np.testing.assert_allclose(J.sum(axis=1), 0.0, atol=1e-12)
    np.testing.assert_array_equal(J, J.T)


def test_uniform_state_n256():
    """At equal scores the Jacobian is alpha_k (I - 11^T/N) (closed form in model.topk)."""
    from moebif.model.topk import topk_uniform_slope

    for k in (2, 8):
        J = inclusion_jacobian(np.zeros(256), 1.0, k)
        alpha = topk_uniform_slope(256, k)
        np.testing.assert_allclose(J, alpha * (np.eye(256) - 1.0 / 256), atol=1e-13)
        np.testing.assert_allclose(inclusion_probabilities(np.zeros(256), 1.0, k), k / 256)


@pytest.mark.parametrize("n,m,k", [(256, 1, 8), (256, 250, 8), (40, 3, 5), (9, 8, 2)])
def test_two_level_values_are_those_of_the_state(n, m, k):
    """topk.two_level_inclusion_grid (binomial counts, one grid of gaps at once) against the
    general inclusion probabilities and Jacobian of the m-winner state."""
    from moebif.model.topk import two_level_inclusion, two_level_inclusion_grid

    d = np.array([-2.0, 0.05, 1.0, 4.0, 15.0])
    vals = two_level_inclusion_grid(n, m, k, d)
    for row, gap in zip(vals, d, strict=True):
        z = np.zeros(n)
        z[:m] = gap
        pi = inclusion_probabilities(z, 1.0, k)
        J = inclusion_jacobian(z, 1.0, k)
        j_ll = J[-1, -2] if n - m >= 2 else np.nan
        want = [pi[0], pi[-1], J[0, 1] if m >= 2 else np.nan, j_ll, J[0, -1]]
        np.testing.assert_allclose(row, want, rtol=1e-9, atol=1e-13)
        np.testing.assert_allclose(row, two_level_inclusion(n, m, k, float(gap)), rtol=1e-13)
