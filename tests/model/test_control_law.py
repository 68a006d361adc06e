"""The closed-loop balancing law (moebif.model.control_law) against its own linear theory, on the
paper's reduced two-expert router (eq. 6) and on a static softmax plant with a closed-form
balancing bias."""

from __future__ import annotations

import numpy as np
import pytest

from moebif.model.control_law import (
    ControlGains,
    ControlState,
    gain_factor,
    initial_state,
    sign_update,
    update,
)


def _softmax(z):
    e = np.exp(z - z.max())
    return e / e.sum()


def test_absorbs_a_constant_skew_in_a_static_softmax_plant():
    # loads f = softmax(z + h e_0 + b): balance needs z + h e_0 + b constant, so the bias the
    # integral settles at is -(z + h e_0), centred
    rng = np.random.default_rng(0)
    n, h = 8, 1.5
    z = rng.normal(0, 0.5, n)
    z[0] += h
    gains = ControlGains(k_i=0.05, k_p=0.1)
    st = initial_state(n)
    for _ in range(2000):
        st = update(gains, st, _softmax(z + st.bias))
    want = -(z - z.mean())
    np.testing.assert_allclose(st.bias, want, atol=1e-6)
    np.testing.assert_allclose(_softmax(z + st.bias), np.full(n, 1 / n), atol=1e-7)


def _two_expert(a, gains, *, steps, eta=0.05, gamma=0.0, T=1.0, y0=0.05, law="pi", u=0.0):
    """The reduced router y' = a tanh((y + beta)/2T) - gamma y (eq. 6, h = 0) stepped with Euler
    at ``eta``; beta = b_0 - b_1 the bias contrast from the law; returns the imbalance u_n."""
    st, y, out = initial_state(2), y0, []
    b = np.zeros(2)
    for _ in range(steps):
        beta = (st.bias[0] - st.bias[1]) if law == "pi" else b[0] - b[1]
        imb = np.tanh((y + beta) / (2 * T))
        loads = np.array([(1 + imb) / 2, (1 - imb) / 2])
        y += eta * (a * imb - gamma * y)
        if law == "pi":
            st = update(gains, st, loads)
        else:
            b = sign_update(b, loads, u)
        out.append(imb)
    return np.array(out)


@pytest.mark.parametrize("ratio, grows", [(0.8, True), (1.25, False)])
def test_integral_gain_threshold_matches_the_trace_condition(ratio, grows):
    # gamma = 0 (AdamW): the closed-loop trace mu c (eta a - N k_i) changes sign at N k_i = eta a
    a, eta, n = 3.0, 0.05, 2
    k_i = ratio * eta * a / n
    u = _two_expert(a, ControlGains(k_i=k_i, k_p=0.0), steps=3000, eta=eta)
    if grows:
        assert abs(u[-1]) > 0.5  # runs away to a collapsed state
    else:
        assert abs(u[-1]) < 1e-3 and np.all(np.abs(u[-500:]) < 1e-3)


@pytest.mark.parametrize("k_p, balances", [(0.0, False), (1.0, True)])
def test_proportional_gain_moves_the_threshold_through_gamma(k_p, balances):
    # a = 3 > 2 gamma T = 2: the open loop has passed the pitchfork of Thm 4.1. With an integral
    # gain short of the reinforcement (N k_i = 0.1 eta a) the trace mu c (eta a - N k_i) - eta
    # gamma (mu = 1/2T, c = 1/(1 + N k_p mu)) is negative iff c < 0.74, i.e. k_p > 0.35
    a, gamma, eta, n, mu = 3.0, 1.0, 0.05, 2, 0.5
    k_i = 0.1 * eta * a / n
    c = 1 / (1 + n * k_p * mu)
    assert (mu * c * (eta * a - n * k_i) - eta * gamma < 0) == balances
    u_open = _two_expert(a, ControlGains(k_i=0.0, k_p=0.0), steps=2000, eta=eta, gamma=gamma)
    assert abs(u_open[-1]) > 0.7  # the collapsed root of a tanh(y/2) = y, y ~ 2.6
    gains = ControlGains(k_i=k_i, k_p=k_p, beta=1.0)  # beta = 1: the P term of the linear theory
    u = _two_expert(a, gains, steps=4000, eta=eta, gamma=gamma)
    if balances:
        assert np.all(np.abs(u[-500:]) < 1e-3)
    else:
        assert np.max(np.abs(u[-500:])) > 0.1


def test_the_schedule_stabilises_a_loop_whose_base_gain_is_short():
    # base N k_i = 0.3 eta a (unstable alone); the measured open-loop margin m = -eta a raises it
    a, eta, n = 3.0, 0.05, 2
    gains = ControlGains(k_i=0.3 * eta * a / n, k_p=0.0)
    g = gain_factor(gains, n, -eta * a)
    assert g * n * gains.k_i > eta * a
    st, y, out = initial_state(2), 0.05, []
    for _ in range(3000):
        imb = np.tanh((y + st.bias[0] - st.bias[1]) / 2)
        y += eta * a * imb
        st = update(gains, st, [(1 + imb) / 2, (1 - imb) / 2], margin=-eta * a)
        out.append(imb)
    assert np.all(np.abs(out[-500:]) < 1e-3) and st.gain == pytest.approx(g)


def test_no_relay_cycle_where_the_sign_update_keeps_one():
    # reinforcement below the relay's reach (eta a < N u): the sign update chatters at a fixed
    # amplitude forever; the linear law converges
    a, eta, u = 0.02, 0.05, 1e-3
    us = _two_expert(a, None, steps=4000, eta=eta, law="sign", u=u)
    assert np.std(us[-200:]) > 1e-4 and np.max(np.abs(us[-200:])) > 2e-4
    up = _two_expert(a, ControlGains(k_i=1e-2, k_p=0.0), steps=4000, eta=eta)
    assert np.max(np.abs(up[-200:])) < 1e-6


def test_gain_factor_closed_form():
    gains = ControlGains(k_i=0.01, safety=2.0, gain_max=20.0)
    n = 8
    assert gain_factor(gains, n, None) == 1.0
    assert gain_factor(gains, n, float("nan")) == 1.0
    assert gain_factor(gains, n, 1.0) == 1.0  # margin beyond the reference: no raise
    assert gain_factor(gains, n, 0.0) == pytest.approx(3.0)  # 1 + safety
    assert gain_factor(gains, n, -0.08) == pytest.approx(1 + 2 * (0.08 + 0.08) / 0.08)
    assert gain_factor(gains, n, -100.0) == 20.0


def test_update_is_centred_and_noise_free_at_balance():
    gains = ControlGains()
    st = update(gains, initial_state(4), [3, 1, 1, 1])
    assert abs(st.bias.sum()) < 1e-12 and abs(st.integral.sum()) < 1e-12
    e = np.array([1.0, -1 / 3, -1 / 3, -1 / 3])  # N f - 1, f = (1/2, 1/6, 1/6, 1/6)
    np.testing.assert_allclose(st.integral, -gains.k_i * e)
    np.testing.assert_allclose(st.bias, -gains.k_i * e - gains.k_p * gains.beta * e)
    same = update(gains, st, [0, 0, 0, 0])  # no load this step: unchanged
    assert same is st
    bal = update(gains, initial_state(4), [5, 5, 5, 5])
    assert np.all(bal.bias == 0)


def test_validation():
    with pytest.raises(ValueError, match="k_i"):
        ControlGains(k_i=-1)
    with pytest.raises(ValueError, match="beta"):
        ControlGains(beta=0)
    with pytest.raises(ValueError, match="loads"):
        update(ControlGains(), initial_state(3), [1, 2])
    with pytest.raises(ValueError, match="n_experts"):
        initial_state(1)
    assert isinstance(initial_state(3), ControlState)


def test_sign_update_is_deepseeks_rule():
    b = sign_update(np.zeros(4), [10, 2, 2, 6], u=1e-3)
    np.testing.assert_allclose(b, [-1e-3, 1e-3, 1e-3, -1e-3])
