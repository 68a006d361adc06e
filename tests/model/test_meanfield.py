"""N-expert mean-field (8): softmax, vector field, Jacobian, linearisation (9)-(10), ODE solver."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moebif import (
    RouterParams,
    drift,
    jacobian,
    load,
    softmax,
    solve_meanfield,
    uniform_state,
    uniform_state_eigenvalues,
    vector_field,
)
from moebif.params import ParameterError


def test_softmax_overflow_free():
    r = np.array([1e3, -1e3, 999.0, 0.0]) * 1.0
    with np.errstate(over="raise", invalid="raise"):
        p = softmax(r, 1e-0)
        p_cold = softmax(r, 1e-3)  # r/T ~ 1e6
    assert np.all(np.isfinite(p)) and p.sum() == pytest.approx(1.0)
    assert p_cold[0] == 1.0 and np.all(np.isfinite(p_cold))
    np.testing.assert_allclose(
        softmax(np.array([0.1, 0.2, 0.3]), 0.5),
        np.exp([0.2, 0.4, 0.6]) / np.exp([0.2, 0.4, 0.6]).sum(),
    )


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 12), seed=st.integers(0, 2**31), T=st.floats(0.2, 3.0), a=st.floats(0.0, 10.0)
)
def test_jacobian_matches_finite_differences(n, seed, T, a):
    p = RouterParams(a=a, gamma=0.8, T=T, h=0.3, n_experts=n)
    r = np.random.default_rng(seed).normal(scale=2.0, size=n)
    J = jacobian(r, p)
    e = 1e-6
    fd = np.column_stack(
        [(vector_field(r + e * v, p) - vector_field(r - e * v, p)) / (2 * e) for v in np.eye(n)]
    )
    np.testing.assert_allclose(J, fd, atol=1e-7)
    np.testing.assert_allclose(J, J.T, atol=1e-15)  # gradient system


@pytest.mark.parametrize("n", [2, 3, 8, 64])
@pytest.mark.parametrize("kappa", [0.5, 1.0, 1.7])
def test_uniform_state_eigenvalues_eq_9(n, kappa):
    gamma, T = 0.9, 1.3
    p = RouterParams(a=kappa * n * gamma * T, gamma=gamma, T=T, n_experts=n)
    r = uniform_state(p)
    np.testing.assert_allclose(vector_field(r, p, b=np.zeros(n)), 0.0, atol=1e-12)
    ev = np.linalg.eigvalsh(jacobian(r, p))
    pred = uniform_state_eigenvalues(p)
    expected = np.sort([pred["common"]] + [pred["contrast"]] * pred["contrast_multiplicity"])
    np.testing.assert_allclose(ev, expected, atol=1e-12)
    # the common mode (1,...,1) has eigenvalue -gamma
    np.testing.assert_allclose(jacobian(r, p) @ np.ones(n), -gamma * np.ones(n), atol=1e-12)


@pytest.mark.parametrize("n", [2, 3, 8, 64])
def test_contrast_eigenvalue_changes_sign_at_N_gamma_T(n):
    gamma, T = 1.0, 0.7
    ac = n * gamma * T
    signs = []
    for a in (0.99 * ac, 1.01 * ac):
        p = RouterParams(a=a, gamma=gamma, T=T, n_experts=n)
        signs.append(np.sign(np.linalg.eigvalsh(jacobian(uniform_state(p), p))[-1]))
    assert signs == [-1.0, 1.0]


def test_two_expert_field_reduces_to_eq_6():
    p = RouterParams(a=3.0, gamma=1.2, T=0.8, h=0.4)
    rng = np.random.default_rng(0)
    for _ in range(10):
        r = rng.normal(size=2) * 3
        f = vector_field(r, p)
        assert f[0] - f[1] == pytest.approx(float(drift(r[0] - r[1], p)), rel=1e-12, abs=1e-12)


def test_vector_field_finite_at_extreme_scores():
    p = RouterParams(a=3.0, gamma=1.0, T=1e-3, n_experts=5)
    r = np.array([1e3, -1e3, 0, 5, 7.0])
    assert np.all(np.isfinite(vector_field(r, p))) and np.all(np.isfinite(jacobian(r, p)))


def test_solve_meanfield_linear_closed_form():
    """a = 0: y' = -gamma y + h, y = h/gamma + (y0 - h/gamma) exp(-gamma t)."""
    p = RouterParams(a=0.0, gamma=0.7, T=1.3, h=0.5)
    t = np.linspace(0, 10, 101)
    y0 = -2.0
    y = p.h / p.gamma + (y0 - p.h / p.gamma) * np.exp(-p.gamma * t)
    u = solve_meanfield(p, t, y0)
    err = (u - load(y, p.T)) / (1e-12 + 1e-8 * np.abs(load(y, p.T)))
    assert np.max(np.abs(err)) < 1.0


def test_solve_meanfield_two_integrators_agree():
    p = RouterParams(a=3.0, gamma=1.0, T=1.0, h=0.08)
    t = np.linspace(0, 60, 601)
    u1 = solve_meanfield(p, t, 0.0)
    u2 = solve_meanfield(p, t, 0.0, method="Radau")
    np.testing.assert_allclose(u1, u2, atol=1e-8)
    # it converges to the stable equilibrium with u > 0 (h > 0 selects expert 1)
    from moebif import equilibria

    assert u1[-1] == pytest.approx(equilibria(p)[-1].u, abs=1e-8)


def test_solve_meanfield_n_experts_matches_reduction():
    p2 = RouterParams(a=3.0, gamma=1.0, T=1.0, h=0.08)
    t = np.linspace(0, 5, 51)
    u = solve_meanfield(p2, t, 0.3)
    loads = solve_meanfield(p2, t, np.array([0.3, 0.0]), b=np.array([0.04, -0.04]))
    np.testing.assert_allclose(loads[:, 0] - loads[:, 1], u, atol=1e-8)
    # N experts: loads sum to one; a time-varying h is honoured
    p4 = RouterParams(a=3.0, gamma=1.0, T=1.0, n_experts=4)
    L = solve_meanfield(p4, t, np.zeros(4), h=lambda s: 0.1 * (1.0 + math.sin(s)))
    np.testing.assert_allclose(L.sum(axis=1), 1.0, atol=1e-12)
    assert L[-1, 0] > L[-1, 1]


def test_solve_meanfield_validates_grid():
    p = RouterParams(a=3.0, gamma=1.0, T=1.0)
    with pytest.raises(ParameterError, match="^t:"):
        solve_meanfield(p, [0.0, 1.0, 0.5])
    with pytest.raises(ParameterError, match="^y0:"):
        solve_meanfield(p.replace(n_experts=3), [0.0, 1.0], np.zeros(2))
    with pytest.raises(ParameterError, match="^b:"):
        vector_field(np.zeros(3), p.replace(n_experts=3), b=np.zeros(2))
