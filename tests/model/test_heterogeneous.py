"""Heterogeneous balanced states of (8) / (8k) with drifts: profiles, drifts, modes, kappa, and
the collapse threshold with the drifts, against the symmetric theory and brute force."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moebif.model.field import VectorField
from moebif.model.heterogeneous import (
    _loads,
    balanced_equilibrium,
    collapse_feedback,
    drifts_for_profile,
    feedback_for_kappa,
    load_jacobian,
    scores_for_loads,
    state_of_profile,
)
from moebif.model.thresholds import thresholds
from moebif.model.topk import topk_uniform_slope


@settings(max_examples=30, deadline=None)
@given(st.integers(3, 9), st.integers(1, 3), st.integers(0, 10_000))
def test_scores_for_loads_invert_the_loads(n, k, seed):
    k = min(k, n - 1)
    rng = np.random.default_rng(seed)
    f = rng.dirichlet(np.full(n, 4.0))
    if k > 1:  # top-k loads stay below 1/k: shrink towards uniform until the largest is 0.9/k
        lam = min(1.0, (0.9 / k - 1.0 / n) / (f.max() - 1.0 / n))
        f = lam * f + (1.0 - lam) / n
    z = scores_for_loads(f, k)
    np.testing.assert_allclose(_loads(z, k), f, atol=1e-10)
    assert abs(z.mean()) < 1e-12


@pytest.mark.parametrize("k", [1, 2])
def test_drifts_make_the_profile_an_equilibrium(k):
    f = np.array([0.05, 0.1, 0.2, 0.25, 0.15, 0.1, 0.1, 0.05])
    A = 3.0
    beta = drifts_for_profile(f, A, k)
    z = scores_for_loads(f, k)
    field = VectorField(A, 1.0, 1.0, beta, k)
    F = field(z)
    # an equilibrium up to the common shift of the scores (beta is centred)
    np.testing.assert_allclose(F - F.mean(), 0.0, atol=1e-10)


@pytest.mark.parametrize("n,k", [(4, 1), (8, 1), (8, 2), (6, 3)])
def test_uniform_state_kappa_is_a_over_a_lin(n, k):
    st_ = state_of_profile(np.full(n, 1.0 / n), k)
    expected = 1.0 / n if k == 1 else topk_uniform_slope(n, k) / k
    np.testing.assert_allclose(st_.mu, expected, rtol=1e-9)
    a_lin = thresholds(n, k).linear
    assert st_.kappa(0.8 * a_lin) == pytest.approx(0.8, rel=1e-9)


def test_load_jacobian_is_the_derivative_of_the_loads():
    rng = np.random.default_rng(3)
    for k in (1, 2, 3):
        z = rng.normal(size=7)
        J = load_jacobian(z, k)
        h = 1e-6
        fd = np.column_stack(
            [(_loads(z + h * e, k) - _loads(z - h * e, k)) / (2 * h) for e in np.eye(7)]
        )
        np.testing.assert_allclose(J, fd, atol=1e-8)
        np.testing.assert_allclose(J, J.T, atol=1e-12)


@pytest.mark.parametrize("n,k", [(4, 1), (8, 1), (8, 2), (64, 1)])
def test_collapse_feedback_without_drifts_is_the_symmetric_saddle_node(n, k):
    a, w = collapse_feedback(np.zeros(n), k, winner=0)
    assert a == pytest.approx(thresholds(n, k).collapse, rel=1e-5)
    assert w == 0


def _stable_collapse_exists(A, beta, k, w):
    """Brute force: Newton from many collapsed starts onto w; a stable equilibrium with w the
    busiest expert, other than the balanced state (which strong drifts concentrate too)?"""
    rng = np.random.default_rng(0)
    field = VectorField(A, 1.0, 1.0, beta, k)
    z_bal = balanced_equilibrium(A, beta, k)
    for _ in range(30):
        z = beta + rng.normal(size=beta.size) * 0.3
        z[w] += rng.uniform(1.0, 2.0) * A / k
        for _ in range(100):
            F = field(z)
            z = z - np.linalg.solve(field.jacobian(z), F)
            if not np.all(np.isfinite(z)):
                break
        if not np.all(np.isfinite(z)) or np.abs(field(z)).max() > 1e-9:
            continue
        f = field.inclusion(z)
        ev = np.linalg.eigvalsh(field.jacobian(z))
        other = np.abs((z - z.mean()) - (z_bal - z_bal.mean())).max() > 1e-4
        if other and np.argmax(f) == w and ev.max() < 0 and f[w] > 1.5 * np.delete(f, w).max():
            return True
    return False


def test_collapse_feedback_with_drifts_against_brute_force():
    rng = np.random.default_rng(11)
    beta = rng.normal(size=6) * 0.5
    beta -= beta.mean()
    a_sn, w = collapse_feedback(beta, 1)
    assert math.isfinite(a_sn)
    assert _stable_collapse_exists(1.01 * a_sn, beta, 1, w)
    assert not _stable_collapse_exists(0.97 * a_sn, beta, 1, w)
    # the favoured expert's branch appears first: below the symmetric threshold
    assert a_sn < thresholds(6, 1).collapse


def test_strong_drifts_have_no_separate_collapsed_state():
    beta = np.array([6.0, 0.0, 0.0, 0.0, 0.0, -6.0])
    beta -= beta.mean()
    assert collapse_feedback(beta, 1, winner=0)[0] == math.inf


@pytest.mark.parametrize("k", [1, pytest.param(2, marks=pytest.mark.slow)])  # k = 2: 50 s
def test_feedback_for_kappa_reaches_it_on_the_balanced_branch(k):
    rng = np.random.default_rng(5)
    beta = rng.normal(size=8) * 0.5
    beta -= beta.mean()
    A = feedback_for_kappa(beta, 0.75, k)
    z = balanced_equilibrium(A, beta, k)
    f = _loads(z, k)
    assert state_of_profile(f, k).kappa(A) == pytest.approx(0.75, abs=1e-6)
    # and it is the balanced state: stable, every expert still carrying load
    ev = np.linalg.eigvalsh(VectorField(A, 1.0, 1.0, beta, k).jacobian(z))
    assert ev.max() < 0 and f.min() > 0.005
