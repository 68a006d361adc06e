"""Hysteresis sweeps of the batch router against the fold thresholds +-H(a - rho)."""

import math

import numpy as np
import pytest

from moebif import RouterParams, hysteresis_halfwidth
from moebif.sim.hysteresis import extrapolate_hysteresis, fit_rate_law, sweep_hysteresis


def test_fit_rate_law_recovers_a_known_law():
    v = np.array([0.04, 0.02, 0.01, 0.005, 0.0025])
    w = 2.13 + 4.8 * v ** (2 / 3)
    law = fit_rate_law(v, w)
    assert law.limit == pytest.approx(2.13, rel=1e-6)
    assert law.exponent == pytest.approx(2 / 3, rel=1e-5)
    assert law.limit_two_thirds == pytest.approx(2.13, rel=1e-10)
    with pytest.raises(ValueError, match="rates"):
        fit_rate_law([0.1, 0.2], [1.0, 2.0])


def test_single_sweep_switches_beyond_the_folds():
    """At a finite rate the loop is wider than 2H (the state lags behind the vanishing branch),
    and symmetric in h."""
    p = RouterParams(a=4.0, gamma=1.0, T=1.0)
    r = sweep_hysteresis(p, rate=0.01, seed=3)
    H = hysteresis_halfwidth(4.0, 1.0, 1.0)
    assert H < r.h_switch_up < H + 0.3
    assert -H - 0.3 < r.h_switch_down < -H
    assert r.h_switch_up == pytest.approx(-r.h_switch_down, abs=0.01)
    assert r.predicted_width == pytest.approx(2 * H)
    # the loop: on the way up the load sits on the lower branch at h = 0, on the way down on the
    # upper one
    k_up = np.argmin(np.abs(np.where(r.upward, r.h, np.inf)))
    k_dn = np.argmin(np.abs(np.where(~r.upward, r.h, np.inf)))
    assert r.u_mean[k_up] < -0.9 and r.u_mean[k_dn] > 0.9


def test_rate_to_zero_extrapolation_matches_2H():
    """Issue criterion: the extrapolated width within 2% of 2 H(4); thresholds too."""
    p = RouterParams(a=4.0, gamma=1.0, T=1.0)
    ex = extrapolate_hysteresis(p, rates=[0.04, 0.02, 0.01, 0.005, 0.0025], seed=0)
    H = hysteresis_halfwidth(4.0, 1.0, 1.0)
    assert ex.width_extrapolated == pytest.approx(2 * H, rel=0.02)
    assert ex.up.limit == pytest.approx(H, rel=0.02)
    assert ex.down.limit == pytest.approx(-H, rel=0.02)
    widths = [s.width for s in ex.sweeps]
    assert np.all(np.diff(widths) < 0)  # slower sweeps, narrower loops
    assert 0.4 < ex.width.exponent < 0.9  # near the saddle-node value 2/3


def test_negative_feedback_shrinks_the_loop():
    """Sec. 8.7: a_eff = a - rho; at a - rho <= 2 gamma T the loop closes as the rate -> 0."""
    p = RouterParams(a=4.0, gamma=1.0, T=1.0)
    w = [sweep_hysteresis(p, rate=0.01, rho=rho, seed=1).width for rho in (0.0, 1.0, 2.5)]
    assert w[0] > w[1] > w[2]
    ex = extrapolate_hysteresis(p, rates=[0.04, 0.02, 0.01, 0.005], rho=2.5, seed=5)
    assert ex.predicted_width == 0.0
    assert abs(ex.width_extrapolated) < 0.05


def test_sweep_validates_arguments():
    p = RouterParams(a=4.0, gamma=1.0, T=1.0)
    for kwargs, name in (
        ({"rate": 0.0}, "rate"),
        ({"rate": 0.01, "rho": -1.0}, "rho"),
        ({"rate": 0.01, "eta": math.nan}, "eta"),
    ):
        with pytest.raises(ValueError, match=f"^{name}:"):
            sweep_hysteresis(p, **kwargs)
