"""The two-expert theory (eqs. 6-21) against independent computations and the paper's statements."""

import math

import mpmath
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq

from moebif import (
    RouterParams,
    cusp_derivatives,
    cusp_fold_approximation,
    cusp_normal_form,
    drift,
    drift_dy,
    drift_dyy,
    drift_dyyy,
    equilibria,
    fold_curve,
    hysteresis_halfwidth,
    load,
    potential,
    regime,
    score_gap,
)

mpmath.mp.dps = 50


def brute_force_roots(p: RouterParams, n: int = 200_001) -> list[float]:
    """Roots of F by sign changes on a fine grid covering all roots, refined by scipy's brentq."""
    lo, hi = (p.h - p.a) / p.gamma - 1.0, (p.h + p.a) / p.gamma + 1.0
    y = np.linspace(lo, hi, n)
    f = drift(y, p)
    roots = []
    for i in np.nonzero(np.sign(f[:-1]) * np.sign(f[1:]) <= 0)[0]:
        if f[i] == 0.0:
            roots.append(y[i])
        elif f[i + 1] != 0.0:
            roots.append(brentq(lambda x: float(drift(x, p)), y[i], y[i + 1], xtol=1e-14))
    return sorted(roots)


def mp_root(p: RouterParams, y0: float) -> float:
    """A 50-digit root of F near y0 (independent arithmetic)."""
    a, g, T, h = (mpmath.mpf(v) for v in (p.a, p.gamma, p.T, p.h))
    return float(mpmath.findroot(lambda y: a * mpmath.tanh(y / (2 * T)) - g * y + h, y0))


# ----------------------------------------------------------------------------------------------
# drift, derivatives, potential, load map


def test_derivatives_match_finite_differences():
    p = RouterParams(a=3.3, gamma=0.7, T=0.9, h=0.2)
    y = np.linspace(-6, 6, 41)
    e = 1e-5
    np.testing.assert_allclose(
        drift_dy(y, p), (drift(y + e, p) - drift(y - e, p)) / (2 * e), rtol=1e-8, atol=1e-9
    )
    np.testing.assert_allclose(
        drift_dyy(y, p), (drift_dy(y + e, p) - drift_dy(y - e, p)) / (2 * e), rtol=1e-7, atol=1e-9
    )
    np.testing.assert_allclose(
        drift_dyyy(y, p),
        (drift_dyy(y + e, p) - drift_dyy(y - e, p)) / (2 * e),
        rtol=1e-6,
        atol=1e-8,
    )


def test_potential_is_gradient_of_drift():
    """Eq. (11)-(12): y' = -V'(y)."""
    p = RouterParams(a=4.0, gamma=1.3, T=0.6, h=-0.4)
    y = np.linspace(-8, 8, 61)
    e = 1e-5
    dV = (potential(y + e, p) - potential(y - e, p)) / (2 * e)
    np.testing.assert_allclose(-dV, drift(y, p), rtol=1e-7, atol=1e-8)


def test_potential_minima_are_stable_equilibria():
    p = RouterParams(a=4.0, gamma=1.0, T=1.0, h=0.3)
    eqs = equilibria(p)
    for e in eqs:
        v0 = potential(e.y, p)
        side = potential(np.array([e.y - 1e-3, e.y + 1e-3]), p)
        assert (np.all(side > v0)) == e.stable


def test_load_map_roundtrip_and_identity_5():
    """Eq. (5): p1 - p2 = tanh(y/2T) for the softmax of (r1, r2)."""
    T = 0.7
    r = np.array([[1.3, -0.4], [0.0, 5.0], [700.0, -700.0]])
    from moebif import softmax

    p = softmax(r, T)
    np.testing.assert_allclose(p[:, 0] - p[:, 1], load(r[:, 0] - r[:, 1], T), rtol=1e-14)
    u = np.linspace(-0.999, 0.999, 101)
    np.testing.assert_allclose(load(score_gap(u, T), T), u, rtol=1e-13)


def test_extreme_scores_stay_finite():
    """Saturation: y/T ~ 1e3 and beyond: no overflow, no NaN."""
    p = RouterParams(a=2000.0, gamma=1.0, T=1.0, h=0.0)
    y = np.array([-1e4, -2e3, -1e3, 0.0, 1e3, 2e3, 1e4])
    with np.errstate(over="raise", invalid="raise", divide="raise", under="ignore"):
        for f in (drift, drift_dy, drift_dyy, drift_dyyy, potential):
            assert np.all(np.isfinite(f(y, p)))
        assert np.all(np.isfinite(load(y, p.T)))


# ----------------------------------------------------------------------------------------------
# equilibria


@settings(max_examples=150, deadline=None)
@given(
    a=st.floats(0.05, 40.0),
    gamma=st.floats(0.1, 5.0),
    T=st.floats(0.1, 5.0),
    hr=st.floats(-3.0, 3.0),
)
def test_equilibria_match_brute_force(a, gamma, T, hr):
    """All roots, and the count 3 iff |h| < H(a) (Thm 5.1), away from a thin band at the fold."""
    H = hysteresis_halfwidth(a, gamma, T)
    h = hr * max(H, 0.1 * gamma * T)  # h on the scale of the bistable band
    assume(abs(abs(h) - H) > 1e-3 * (H + gamma * T))
    p = RouterParams(a=a, gamma=gamma, T=T, h=h)
    eqs = equilibria(p)
    got = [e.y for e in eqs]
    ref = brute_force_roots(p)
    assert len(got) == len(ref)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-9 * T)
    assert len(eqs) == (3 if abs(h) < H else 1)
    if len(eqs) == 3:
        assert [e.stable for e in eqs] == [True, False, True]
        assert eqs[0].eigenvalue < 0 < eqs[1].eigenvalue and eqs[2].eigenvalue < 0
    else:
        assert eqs[0].stable and eqs[0].eigenvalue <= 0
    assert regime(p) == (
        "bistable" if len(eqs) == 3 else ("balanced" if a <= 2 * gamma * T else "biased")
    )


@pytest.mark.parametrize(
    "a,gamma,T,h",
    [
        (3.0, 1.0, 1.0, 0.08),  # the paper's Fig. 6 setting
        (4.0, 1.0, 1.0, 0.5),
        (1.0, 1.0, 1.0, 1e-30),  # tiny h: root ~ 2e-30, must be relative-exact
        (2.0000001, 1.0, 1.0, 1e-12),  # next to the cusp
        (2.0, 1.0, 1.0, 1e-20),  # on the pitchfork: cubic root (12 h)^(1/3)
        (2000.0, 1.0, 1.0, 0.5),  # saturation, y/T ~ 1e3
        (1e4, 2.0, 0.5, -3.0),
        (3.0, 1.0, 1.0, 1e6),  # huge h
        (0.0, 1.0, 1.0, 0.3),  # no feedback: y = h / gamma
    ],
)
def test_equilibria_agree_with_50_digit_roots(a, gamma, T, h):
    p = RouterParams(a=a, gamma=gamma, T=T, h=h)
    for e in equilibria(p):
        ref = mp_root(p, e.y)
        assert e.y == pytest.approx(ref, rel=1e-12, abs=1e-300)
        assert e.u == pytest.approx(math.tanh(ref / (2 * T)), rel=1e-12, abs=1e-300)


def test_equilibria_at_the_fold_report_a_double_root():
    a, gamma, T = 4.0, 1.0, 1.0
    H = hysteresis_halfwidth(a, gamma, T)
    for sign in (1, -1):
        eqs = equilibria(RouterParams(a=a, gamma=gamma, T=T, h=sign * H))
        assert len(eqs) == 2
        double = [e for e in eqs if not e.stable]
        assert len(double) == 1 and double[0].eigenvalue == 0.0
        q_a = math.acosh(math.sqrt(a / (2 * gamma * T)))
        assert abs(double[0].y) == pytest.approx(2 * T * q_a, rel=1e-12)
        # just inside the band: three roots; just outside: one
        inside = equilibria(RouterParams(a=a, gamma=gamma, T=T, h=sign * H * (1 - 1e-9)))
        outside = equilibria(RouterParams(a=a, gamma=gamma, T=T, h=sign * H * (1 + 1e-9)))
        assert len(inside) == 3 and len(outside) == 1


def test_equilibria_are_odd_in_h():
    """Symmetry (y, h) -> (-y, -h) of eq. (6)."""
    for h in (0.0, 0.3, 1.0, 2.5):
        up = equilibria(RouterParams(a=4.0, gamma=1.0, T=1.0, h=h))
        down = equilibria(RouterParams(a=4.0, gamma=1.0, T=1.0, h=-h))
        np.testing.assert_allclose([e.y for e in up], [-e.y for e in reversed(down)], rtol=1e-14)


def test_n_experts_rejected_by_reduced_equation():
    with pytest.raises(ValueError, match="n_experts"):
        equilibria(RouterParams(a=3.0, gamma=1.0, T=1.0, n_experts=3))


# ----------------------------------------------------------------------------------------------
# Thm 4.1: pitchfork at a = 2 gamma T


@pytest.mark.parametrize("gamma,T", [(1.0, 1.0), (0.3, 2.5), (4.0, 0.1)])
def test_theorem_4_1_pitchfork(gamma, T):
    ac = 2 * gamma * T
    below = equilibria(RouterParams(a=0.9 * ac, gamma=gamma, T=T))
    assert len(below) == 1 and below[0].y == 0.0 and below[0].stable
    assert below[0].eigenvalue == pytest.approx(0.9 * ac / (2 * T) - gamma)
    at = equilibria(RouterParams(a=ac, gamma=gamma, T=T))
    assert len(at) == 1 and at[0].y == 0.0 and at[0].stable and at[0].eigenvalue == 0.0
    above = equilibria(RouterParams(a=1.1 * ac, gamma=gamma, T=T))
    assert len(above) == 3
    assert [e.stable for e in above] == [True, False, True]
    assert above[0].y == pytest.approx(-above[2].y, rel=1e-14)
    assert above[1].y == 0.0
    # supercritical: y* ~ sqrt(mu / c) with mu = a/2T - gamma, c = a / 24 T^3 (eq. 19)
    a = ac * (1 + 1e-6)
    ystar = equilibria(RouterParams(a=a, gamma=gamma, T=T))[2].y
    assert ystar == pytest.approx(math.sqrt((a / (2 * T) - gamma) / (a / (24 * T**3))), rel=1e-5)


# ----------------------------------------------------------------------------------------------
# Thm 5.1: fold curve (16), H(a) (18)


@settings(max_examples=100, deadline=None)
@given(q=st.floats(-3.0, 3.0), gamma=st.floats(0.1, 5.0), T=st.floats(0.1, 5.0))
def test_fold_points_satisfy_F_and_Fy_zero(q, gamma, T):
    a, h = fold_curve(q, gamma, T)
    p = RouterParams(a=float(a), gamma=gamma, T=T, h=float(h))
    y = 2 * T * q
    scale = a + gamma * abs(y) + abs(h)
    assert abs(drift(y, p)) <= 1e-10 * scale
    assert abs(drift_dy(y, p)) <= 1e-10 * (a / (2 * T) + gamma)


def test_fold_curve_cusp_and_symmetry():
    a, h = fold_curve(np.array([0.0]), 1.3, 0.7)
    assert a[0] == pytest.approx(2 * 1.3 * 0.7) and h[0] == 0.0
    q = np.linspace(0.01, 2, 50)
    ap, hp = fold_curve(q, 1.0, 1.0)
    am, hm = fold_curve(-q, 1.0, 1.0)
    np.testing.assert_array_equal(ap, am)
    np.testing.assert_array_equal(hp, -hm)
    assert np.all(np.diff(ap) > 0) and np.all(hp < 0)


def test_halfwidth_is_fold_curve_branch():
    """H(a) = -h(q_a) with a(q_a) = a, eq. (18) vs (16), including next to the cusp."""
    # q >= 1e-3: below that, rounding a = 2 gamma T cosh^2 q itself loses a - 2 gamma T
    q = np.concatenate([np.geomspace(1e-3, 0.4, 30), np.linspace(0.5, 4, 30)])
    a, h = fold_curve(q, 1.7, 0.6)
    np.testing.assert_allclose(hysteresis_halfwidth(a, 1.7, 0.6), -h, rtol=1e-9)


def test_halfwidth_against_high_precision():
    for a in (2.000001, 2.01, 2.5, 3.0, 4.0, 10.0, 100.0):
        q = mpmath.acosh(mpmath.sqrt(mpmath.mpf(a) / 2))
        ref = float(2 * (mpmath.sinh(q) * mpmath.cosh(q) - q))
        assert hysteresis_halfwidth(a, 1.0, 1.0) == pytest.approx(ref, rel=1e-13)


def test_halfwidth_zero_below_threshold_and_vectorised():
    a = np.array([0.0, 1.0, 2.0, 2.5, 4.0])
    H = hysteresis_halfwidth(a, 1.0, 1.0)
    assert H.shape == (5,)
    assert np.all(H[:3] == 0.0) and np.all(np.diff(H[2:]) > 0)
    assert isinstance(hysteresis_halfwidth(4.0, 1.0, 1.0), float)


@settings(max_examples=60, deadline=None)
@given(a=st.floats(2.05, 30.0), frac=st.floats(0.0, 2.0))
def test_three_roots_iff_inside_band(a, frac):
    H = hysteresis_halfwidth(a, 1.0, 1.0)
    assume(abs(frac - 1.0) > 1e-6)
    eqs = equilibria(RouterParams(a=a, gamma=1.0, T=1.0, h=frac * H))
    assert len(eqs) == (3 if frac < 1 else 1)


# ----------------------------------------------------------------------------------------------
# cusp: eqs. (19)-(21), Prop. 6.1


@pytest.mark.parametrize("gamma,T", [(1.0, 1.0), (0.5, 2.0), (3.0, 0.25)])
def test_proposition_6_1_derivatives(gamma, T):
    d = cusp_derivatives(gamma, T)
    assert d["F"] == 0.0 and d["F_y"] == pytest.approx(0.0, abs=1e-15) and d["F_yy"] == 0.0
    assert d["F_yyy"] == pytest.approx(-gamma / (2 * T**2), rel=1e-14)
    assert d["F_h"] == 1.0
    assert d["F_ya"] == pytest.approx(1 / (2 * T), rel=1e-14)
    # F_ya independently, by differencing F_y in a
    e = 1e-6
    fy = [drift_dy(0.0, RouterParams(a=2 * gamma * T + s, gamma=gamma, T=T)) for s in (e, -e)]
    assert (fy[0] - fy[1]) / (2 * e) == pytest.approx(d["F_ya"], rel=1e-8)


def test_expansion_19_matches_drift():
    p = RouterParams(a=2.2, gamma=1.0, T=0.8, h=0.01)
    nf = cusp_normal_form(p)
    y = np.linspace(-0.05, 0.05, 11)
    approx = nf.mu * y - nf.cubic * y**3 + p.h
    assert np.max(np.abs(approx - drift(y, p))) < 1e-8  # O(y^5)


def test_normal_form_rescaling():
    """y = s x maps F/s onto x' = mu x - x^3 + epsilon (eq. 20) up to O(y^5)."""
    p = RouterParams(a=2.1, gamma=1.0, T=1.0, h=0.003)
    nf = cusp_normal_form(p)
    s = nf.state_scale
    for xmax in (0.1, 0.05, 0.025):
        x = np.linspace(-xmax, xmax, 9)
        lhs = drift(s * x, p) / s
        rhs = nf.mu * x - x**3 + nf.epsilon
        # the remainder is the quintic term of a tanh(y/2T): (2a/15) (y/2T)^5, divided by s
        quintic = 2 * p.a / 15 * (s * xmax / (2 * p.T)) ** 5 / s
        assert np.max(np.abs(lhs - rhs)) == pytest.approx(quintic, rel=0.05)


def test_eq_21_agrees_with_eq_16_near_the_cusp():
    """Ratio of the normal-form fold half-width (21) to the exact H(a) (18) tends to 1."""
    gamma, T = 1.0, 1.0
    q = np.array([0.3, 0.1, 0.03, 0.01, 0.003])
    a, _ = fold_curve(q, gamma, T)
    ratio = cusp_fold_approximation(a, gamma, T) / hysteresis_halfwidth(a, gamma, T)
    err = np.abs(ratio - 1)
    assert np.all(np.diff(err) < 0)  # monotone approach
    assert err[-1] < 1e-4
    # the error is O(q^2) = O(a - 2 gamma T): halving q quarters the error
    assert err[-2] / err[-1] == pytest.approx((q[-2] / q[-1]) ** 2, rel=0.05)


def test_normal_form_discriminant_sign_matches_root_count():
    for a, h in [(2.1, 0.0), (2.1, 0.01), (2.1, 0.05), (2.3, 0.05), (1.9, 0.0)]:
        p = RouterParams(a=a, gamma=1.0, T=1.0, h=h)
        three = len(equilibria(p)) == 3
        assert (cusp_normal_form(p).discriminant > 0) == three
