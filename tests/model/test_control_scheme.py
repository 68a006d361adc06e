"""The closed-loop balancer as a scheme of the score model: the spec, the kernel (the law of
``model/control_law.py`` number for number), and its theory (``ControlTheory``): no stable
collapsed state up to 2 a_SN, no relay cycle where the sign update has one, and its cost."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moebif.model import bias_relay as br
from moebif.model import control_law as cl
from moebif.model.balancer_theory import BiasTheory, ControlTheory, advise
from moebif.model.balancers import parse_balancers
from moebif.model.schemes.control import model_margin, uniform_slope
from moebif.model.thresholds import thresholds
from moebif.params import ParameterError, RouterParams
from moebif.sim.balanced_router import simulate_balanced_router

GAINS = cl.ControlGains()


def _theory(n, k, a, *, eta=0.02, batch=512, gains=GAINS, gamma=1.0, T=1.0, margin="theory"):
    p = RouterParams(a=a, gamma=gamma, T=T, n_experts=n)
    return ControlTheory(p, gains, eta, batch, k, margin)


# -- spec ------------------------------------------------------------------------------------


def test_spec_syntax_round_trips_and_rejects_bad_items():
    s = parse_balancers("control:0.02:k_p=0.3:safety=1:margin=none")
    assert (s.control, s.control_kp, s.control_safety, s.control_margin) == (0.02, 0.3, 1, "none")
    assert parse_balancers(s.label()) == s
    assert s.selection == "control"
    assert parse_balancers("control").control == GAINS.k_i  # the law's default gains
    assert parse_balancers("control:k_i=0.05").control == 0.05
    for bad in (
        "control:0",
        "control:0.01:margin=x",
        "control:0.01:beta=0",
        "control,bias:1e-3",
        "control:0.01:k_p=a",
        "control:0.01:foo=1",
    ):
        with pytest.raises(ParameterError):
            parse_balancers(bad)


def test_model_margin_is_minus_the_contrast_eigenvalue_and_vanishes_at_a_lin():
    for n, k in ((8, 1), (8, 2), (64, 2)):
        a_lin = thresholds(n, k, 1.0, 0.7).linear
        assert model_margin(a_lin, 1.0, 0.7, n, k, 0.02) == pytest.approx(0.0, abs=1e-12)
        t = _theory(n, k, 0.6 * a_lin, T=0.7)
        assert t.open_margin == pytest.approx(-(0.02 * k / uniform_slope(n, k)) * t.lam)
        assert t.open_margin > 0 > _theory(n, k, 1.2 * a_lin, T=0.7).open_margin


# -- kernel ----------------------------------------------------------------------------------


@pytest.mark.parametrize("margin", ["theory", "none"])
def test_kernel_is_the_law_of_control_law_number_for_number(margin):
    # replay the kernel's selected loads through control_law.update: the same biases
    n, k, a, eta = 8, 2, 9.0, 0.02
    p = RouterParams(a=a, gamma=1.0, T=0.8, n_experts=n)
    r0 = np.zeros(n)
    r0[0] = 4.0
    run = simulate_balanced_router(
        p,
        f"control:0.02:k_p=0.15:margin={margin}",
        batch=256,
        eta=eta,
        steps=200,
        runs=2,
        top_k=k,
        seed=3,
        r0=r0,
        snapshot=True,
        record_every=1,
        record_scores=True,
        threads=1,
    )
    gains = cl.ControlGains(k_i=0.02, k_p=0.15)
    m = model_margin(a, 1.0, 0.8, n, k, eta) if margin == "theory" else None
    for i in range(2):
        st = cl.initial_state(n)
        for t in range(200):
            assert np.allclose(run.beta_records[i, t], st.bias, atol=1e-13, rtol=0)
            st = cl.update(gains, st, run.selected[i, t], m)
    assert st.gain == pytest.approx(cl.gain_factor(gains, n, m))


# -- theory: linear map --------------------------------------------------------------------


def test_linear_map_is_the_linearisation_of_the_two_level_closed_loop():
    # the nonlinear two-level map (control_law.update on the expected loads) from a small gap
    # follows M^t of the hand-derived linear map
    t = _theory(8, 1, 7.0, batch=None)
    eps = 1e-6
    run = t.two_level_run(1, [eps], steps=300, tol=0.0)
    M, _ = t.linear_map()
    # one winner: the gap of the contrast (winner minus loser) is x_w - x_l = x_w N/(N-1)
    z = np.array([eps, 0.0, 0.0])
    d_lin = [z[0]]
    for _ in range(300):
        z = M @ z
        d_lin.append(z[0])
    assert np.allclose(run.d[0], d_lin, atol=2e-3 * eps, rtol=0)


def test_linear_map_stable_where_the_open_loop_is_not():
    for n, k in ((8, 1), (64, 1), (8, 2), (64, 2)):
        thr = thresholds(n, k)
        for f in (1.0, 1.5, 2.0):
            t = _theory(n, k, f * thr.collapse)
            assert t.spectral_radius() < 1.0
        hot = _theory(n, k, 1.5 * thr.linear)
        assert hot.spectral_radius(closed=False) > 1.0 > hot.spectral_radius()
        # fixed gains (no margin) too, at these defaults
        assert _theory(n, k, 2 * thr.collapse, margin="none").spectral_radius() < 1.0


# -- theory: no stable collapsed state ---------------------------------------------------------


def _no_collapse(n, k, factor):
    thr = thresholds(n, k)
    t = _theory(n, k, factor * thr.collapse)
    # the closed loop: no collapsed fixed point on any branch (integral's authority)
    assert not any(c["fixed_point"] for c in t.collapsed_states())
    # the open loop has a stable collapsed state there ...
    gap = t.open_collapsed_gap(thr.winners)
    assert math.isfinite(gap) and gap > 1.0
    stay = t.two_level_run(thr.winners, [gap], steps=400, closed=False)
    assert abs(stay.d[0, -1] - gap) < 1e-3 * gap
    # ... from which the closed loop returns to balance
    back = t.two_level_run(thr.winners, [gap, 0.5 * gap], steps=8000)
    assert back.converged.all()


@pytest.mark.parametrize("n", [8, 64])
def test_no_stable_collapsed_state_up_to_twice_a_sn_top1(n):
    for f in (1.2, 2.0):
        _no_collapse(n, 1, f)


@pytest.mark.slow
@pytest.mark.parametrize("n", [8, 64])
def test_no_stable_collapsed_state_up_to_twice_a_sn_top2(n):
    for f in (1.2, 1.6, 2.0):
        _no_collapse(n, 2, f)


def test_collapse_criterion_both_sides():
    # with too little authority (bias_max) the theory predicts a collapsed fixed point, and
    # the two-level closed loop stays collapsed; with enough, it does not
    n, k = 8, 1
    a = 2.0 * thresholds(n, k).collapse
    weak = _theory(n, k, a, gains=cl.ControlGains(bias_max=0.3))
    c1 = weak.collapsed_states([1])[0]
    assert c1["fixed_point"] and c1["authority"] < c1["bias_needed"]
    gap = weak.open_collapsed_gap(1)
    run = weak.two_level_run(1, [gap], steps=3000)
    assert not run.converged[0] and run.s[0, -1] > 1.0
    strong = _theory(n, k, a, gains=cl.ControlGains(bias_max=1.5 * c1["bias_needed"] * 7 / 8))
    assert not strong.collapsed_states([1])[0]["fixed_point"]
    assert strong.two_level_run(1, [gap], steps=8000).converged[0]


# -- theory: no relay cycle ----------------------------------------------------------------


def test_no_relay_cycle_where_the_sign_update_has_one():
    # the point (bal-bias-cycle): the sign update locks into a relay cycle
    a, gamma, T, u, eta = 2.0, 0.7, 0.5, 1e-3, 0.01
    p = RouterParams(a=a, gamma=gamma, T=T, n_experts=2)
    bt = BiasTheory(p, u, eta, 65536)
    cyc = br.relay_cycle(bt)
    assert cyc.exists
    first = bt.first_return_radius()
    ct = ControlTheory(p, GAINS, eta, 65536, 1)
    assert ct.spectral_radius() < 1.0
    # from the relay cycle's own state and from starts across the sign update's first-return
    # ("capture") region: the closed loop returns to balance, no cycle
    s0 = np.linspace(0.1, 1.0, 4) * first / T
    d0 = np.r_[s0, -cyc.b_amplitude / T]
    b0 = np.r_[np.zeros(4), cyc.b_amplitude / T]
    run = ct.two_level_run(1, d0, b0, steps=20000)
    assert run.converged.all()
    # its crossings of s = 0 have a shrinking |b| (a return map with no fixed point but 0)
    s, b = run.s[-1], run.b[-1]
    cross = np.flatnonzero(np.sign(s[1:]) != np.sign(s[:-1]))
    amps = np.abs(b[cross])
    big = amps[amps > 1e-4]
    assert big.size >= 1 and np.all(np.diff(big) < 0)


# -- cost ----------------------------------------------------------------------------------


def test_chattering_matches_the_simulator():
    n, k, eta, batch = 8, 1, 0.02, 512
    a = 0.5 * thresholds(n, k).linear
    t = _theory(n, k, a, eta=eta, batch=batch)
    ch = t.chattering()
    assert ch.load_std >= ch.noise_load_std
    p = RouterParams(a=a, gamma=1.0, T=1.0, n_experts=n)
    run = simulate_balanced_router(
        p,
        "control",
        batch=batch,
        eta=eta,
        steps=3000,
        runs=8,
        top_k=k,
        seed=5,
        snapshot=True,
        record_every=1,
        threads=1,
    )
    sd = run.selected[:, 1000:, :].std()
    assert sd == pytest.approx(ch.load_std, rel=0.05)


def test_a_genuine_skew_is_absorbed_by_the_integral():
    # far below a_SN, small h: the open loop's linear response
    n, k, eta, batch, h = 8, 1, 0.02, 4096, 0.1
    a = 0.25 * thresholds(n, k).linear
    p = RouterParams(a=a, gamma=1.0, T=1.0, n_experts=n)
    e = np.zeros(n)
    e[0] = 1.0
    common = dict(
        batch=batch,
        eta=eta,
        steps=4000,
        runs=4,
        top_k=k,
        seed=2,
        h=h,
        direction=e,
        record_every=1000,
        threads=1,
    )
    closed = simulate_balanced_router(p, "control", **common)
    open_ = simulate_balanced_router(p, "none", **common)
    t = _theory(n, k, a, eta=eta, batch=batch)
    sk = t.skew_response()
    # open loop: expert 0 takes the load the skew asks for (linear response, small h)
    shift_open = open_.loads[:, -1, 0].mean() - 1.0 / n
    # h on expert 0 alone: its contrast part is h (N - 1) / N
    assert shift_open == pytest.approx(sk["open_load"] * h * (n - 1) / n, rel=0.15)
    # closed loop: balanced, the bias cancels the skew
    assert abs(closed.loads[:, -1, 0].mean() - 1.0 / n) < 0.1 * shift_open
    bias0 = closed.beta[:, 0].mean()
    assert bias0 == pytest.approx(sk["bias"] * h * (n - 1) / n, rel=0.05)


def test_advise_has_a_line_for_the_controller():
    p = RouterParams(a=13.0, gamma=1.0, T=1.0, n_experts=8)
    out = advise(p, 2, lr=0.02, batch=512, schemes=["control"])
    c = out["balancers"]["control"]
    assert c["achievable"] and "logits per step" in c["units"]
    assert 0.0 < c["strength"] < GAINS.k_i < c["k_i_max"]  # a = 13 > a_lin: a floor on k_i
    assert c["recommended"]["k_i"] == GAINS.k_i
    # the recommended gains are stable and rule collapse out
    t = _theory(8, 2, 13.0, gains=cl.ControlGains(bias_max=c["recommended"]["bias_max"]))
    assert t.spectral_radius() < 1 and not any(x["fixed_point"] for x in t.collapsed_states())
    assert c["bias_max_needed"] < GAINS.bias_max


def test_advise_any_gain_holds_balance_in_the_metastable_window():
    # a_SN <= a < a_lin: the open loop's balance is stable, so any k_i > 0 keeps it; the
    # integral is what removes the collapsed states (no collapsed fixed point)
    p = RouterParams(a=8.0, gamma=1.0, T=1.0, n_experts=8)
    c = advise(p, 2, lr=0.02, batch=512, schemes=["control"])["balancers"]["control"]
    assert c["strength"] == 0.0 and c["margin"] > 0
    assert c["gain_factor"] == pytest.approx(cl.gain_factor(GAINS, 8, c["margin"]))
    assert c["bias_max_needed"] > 0
