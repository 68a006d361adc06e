"""The loss-free bias's closed loop in the phase plane (moebif.model.bias_relay): the return map
against its closed-form expansion, the linear and relaxation limits, the cycle and the separatrix
against a direct integration of the 2-D loop, and the recovery region against the batch
router."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moebif.model import bias_relay as br
from moebif.model.balancer_theory import BiasTheory
from moebif.params import ParameterError, RouterParams

ETA = 0.01
BATCH = 65536
# (a, gamma, T, u): the two points and two more (lambda = 1.3, 0.75, 1, 2)
POINTS = [
    (2.0, 0.7, 0.5, 1e-3),
    (9.0, 1.5, 2.0, 2e-3),
    (4.0, 1.0, 1.0, 1e-3),
    (3.0, 1.0, 0.5, 5e-4),
]


def theory(a, gamma, T, u, eta=ETA, batch=BATCH):
    return BiasTheory(RouterParams(a=a, gamma=gamma, T=T, n_experts=2), u, eta, batch)


@pytest.fixture(scope="module")
def p1():
    bt = theory(*POINTS[0])
    return bt, br.relay_cycle(bt), br.recovery_radius(bt)


def discrete_loop(bt, s0, b0, steps):
    """The batch router at B -> inf (the loads are their expectations, the bias steps by
    ``u sign``), in the variables ``y, b``: vectorised over the starts, returns ``s`` of every
    step ``(len(s0), steps)``."""
    p, u, eta = bt.params, bt.u, bt.eta
    b = np.array(b0, dtype=float) * np.ones_like(s0)
    y = np.array(s0, dtype=float) - b
    out = np.empty((y.size, steps))
    for n in range(steps):
        s = y + b
        out[:, n] = s
        y = y + eta * (p.a * np.tanh(s / (2 * p.T)) - p.gamma * y)
        b = b - 2.0 * u * np.sign(s)
    return out


def test_return_map_near_the_sliding_edge_is_the_closed_form():
    # upward crossing with b = beta = U/gamma + c/gamma: s' = -c + ... ; to first order in c the
    # half-swing lasts tau = 2c/(gamma U), so P(beta) = beta - 2U/gamma (and recovers)
    bt = theory(*POINTS[0])
    U, g = bt.U, bt.params.gamma
    for c in (1e-3, 1e-4):
        beta = (U + c) / g
        P = br.return_map(bt, beta)
        assert abs(P - (beta - 2 * U / g)) < 5.0 * c**2 / (g * U) * (1 + bt.lam / g)
        assert abs(P) < U / g


def test_cycle_and_separatrix_against_the_discrete_loop(p1):
    bt, cyc, rr = p1
    assert cyc.exists and abs(cyc.multiplier) < 1.0
    assert rr < bt.first_return_radius()
    steps = round(3.0 * cyc.period / ETA)
    s = discrete_loop(bt, np.array([0.9 * rr, 1.1 * rr, 3.0 * rr]), 0.0, steps)
    late = np.abs(s[:, -round(1.2 * cyc.period / ETA) :]).max(axis=1)
    thr = bt.escape_threshold()
    assert late[0] < 0.05 * thr  # recovered and stays
    assert late[1] > thr and late[2] > thr  # on the relay cycle
    # the discrete loop is the mean field to O(eta)
    assert abs(late[1] / cyc.amplitude - 1) < 0.01
    assert abs(late[2] / cyc.amplitude - 1) < 0.01
    # period: upward zero crossings of s on the cycle
    up = np.flatnonzero((s[2, :-1] <= 0) & (s[2, 1:] > 0))
    per = np.diff(up)[-1] * ETA
    assert abs(per / cyc.period - 1) < 0.01


def test_recovers_classifies_around_the_radius(p1):
    bt, cyc, rr = p1
    assert br.recovers(bt, 0.97 * rr)
    assert not br.recovers(bt, 1.03 * rr)
    assert br.recovers(bt, 0.0, 0.5 * bt.U / bt.params.gamma)  # on the sliding segment


def test_linear_limit_of_the_recovery_radius():
    # u -> 0: the field is linear over the excursion; the closed form r_lin
    bt = theory(2.0, 0.7, 0.5, 3e-4)
    assert abs(br.recovery_radius(bt) / br.recovery_radius_linear(bt) - 1) < 0.005


@pytest.mark.slow
def test_relay_cycle_disappears_above_the_critical_rate():
    bt = theory(*POINTS[3])
    uc = br.critical_rate(bt)
    assert uc > bt.u
    from dataclasses import replace

    assert br.relay_cycle(replace(bt, u=0.97 * uc)).exists
    above = replace(bt, u=1.03 * uc)
    assert not br.relay_cycle(above).exists
    assert br.recovery_radius(above) == math.inf


def test_stable_uniform_state_has_no_cycle():
    bt = theory(1.0, 1.0, 1.0, 1e-3)  # lambda = -1/2
    assert br.fold_skew(bt) == 0.0
    assert not br.relay_cycle(bt).exists
    assert br.critical_rate(bt) == 0.0


def test_rejects_other_objects():
    with pytest.raises(ParameterError, match="theory"):
        br.relay_cycle((2.0, 0.7, 0.5))


@settings(max_examples=60, deadline=None)
@given(
    lam=st.floats(0.05, 5.0),
    gamma=st.floats(0.1, 3.0),
    U=st.floats(1e-3, 1.0),
)
def test_linear_recovery_radius_is_inside_the_first_return_radius(lam, gamma, U):
    a, T = 2.0 * (lam + gamma), 1.0
    bt = BiasTheory(RouterParams(a=a, gamma=gamma, T=T, n_experts=2), U * ETA / 2, ETA, BATCH)
    r = br.recovery_radius_linear(bt)
    assert 0.0 < r <= bt.first_return_radius_linear * (1.0 + 1e-12)  # equal once e^-x underflows
    # and tends to it when the forgetting is slow (x = A / gamma -> inf)
    x = bt.gain / gamma
    assert r > bt.first_return_radius_linear * (1.0 - (1.0 + x) * math.exp(-x)) - 1e-15


@pytest.mark.slow
@settings(max_examples=12, deadline=None)
@given(
    a=st.floats(1.6, 8.0),
    gamma=st.floats(0.4, 1.5),
    T=st.floats(0.3, 2.0),
    u=st.floats(2e-4, 3e-3),
)
def test_cycle_exceeds_escape_threshold_and_recovery_inside_first_return(a, gamma, T, u):
    bt = BiasTheory(RouterParams(a=a, gamma=gamma, T=T, n_experts=2), u, ETA, BATCH)
    cyc = br.relay_cycle(bt)
    if cyc.exists:
        assert cyc.amplitude > bt.escape_threshold()
        assert abs(cyc.multiplier) < 1.0
        rr = br.recovery_radius(bt)
        assert rr <= bt.first_return_radius() * (1 + 1e-6)
        assert cyc.separatrix < cyc.b_amplitude


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_recovery_region_and_cycle_against_the_batch_router(point):
    from moebif.sim.balanced_router import simulate_balanced_router

    a, gamma, T, u = point
    bt = theory(a, gamma, T, u)
    cyc, rr = br.relay_cycle(bt), br.recovery_radius(bt)
    thr = bt.escape_threshold()
    reps = 60
    s0 = np.repeat(rr * np.array([0.7, 1.3]), reps)
    t_run = 3.0 * cyc.period + 20.0 / gamma
    run = simulate_balanced_router(
        bt.params,
        f"bias:{u}",
        batch=BATCH,
        eta=ETA,
        steps=round(t_run / ETA),
        runs=s0.size,
        seed=7,
        r0=np.stack([s0 / 2, -s0 / 2], axis=1),
        b=np.zeros(2),
        record_every=10,
        snapshot=True,
        record_scores=True,
        threads=1,
    )
    s = np.diff(run.score_records[..., ::-1], axis=-1)[..., 0]
    s = s + np.diff(run.beta_records[..., ::-1], axis=-1)[..., 0]
    late = np.abs(s[:, run.t >= run.t[-1] - 1.2 * cyc.period]).max(axis=1)
    stay = (late < 0.5 * thr).reshape(2, reps).mean(axis=1)
    assert stay[0] >= 0.95
    assert stay[1] <= 0.05
    on_cycle = late[~(late < 0.5 * thr)]
    assert abs(np.median(on_cycle) / cyc.amplitude - 1) < 0.10
