"""The feedback estimator of monitor/feedback.py against an independent batch router written
here in numpy (eq. (8), top-1, with drifts), including the case it exists for: a slow drive of
the gate (the language model's gradient) that loads alone cannot tell from positive feedback."""

import math

import numpy as np
import pytest

from moebif.model.field import softmax
from moebif.model.heterogeneous import balanced_equilibrium, state_of_profile
from moebif.monitor.feedback import FeedbackStats, fit_feedback
from moebif.monitor.whittle import load_modes, stationary_profile


def _router(n, a, beta, *, eta=0.01, batch=256, steps=8000, drive=0.0, seed=0):
    """Scores r_{t+1} = (1 - eta) r_t + eta (a f_t + beta) + w_t (gamma = T = 1), f_t the
    multinomial loads of softmax(r_t); w_t a slow random-walk drive of size ``drive``
    (exogenous: independent of the sampling). Returns loads, importance, scores (steps, n)."""
    rng = np.random.default_rng(seed)
    r = balanced_equilibrium(a, beta, 1)
    drift = np.zeros(n)
    F, P, S = (np.empty((steps, n)) for _ in range(3))
    for t in range(steps):
        p = softmax(r, 1.0)
        f = rng.multinomial(batch, p) / batch
        F[t], P[t], S[t] = f, p, r
        drift = 0.999 * drift + drive * rng.normal(size=n)
        r = (1.0 - eta) * r + eta * (a * f + beta) + drift * eta
    return F, P, S


def _fit(F, P, S, use_scores=True, segments=8):
    n = F.shape[1]
    st = FeedbackStats(n, max_lag=128, segments=segments, tau=F.shape[0] / 2)
    for t in range(F.shape[0]):
        st.push(F[t], P[t], S[t] if use_scores else None)
        if (t + 1) % (F.shape[0] // segments) == 0:
            st.close_segment()
    mu, V, _ = load_modes(stationary_profile(F), 1)
    return fit_feedback(st, (mu, V))


@pytest.fixture(scope="module")
def drifted():
    rng = np.random.default_rng(3)
    beta = rng.normal(size=6) * 0.4
    beta -= beta.mean()
    a = 4.0
    return beta, a


@pytest.fixture(scope="module")
def drifted_run(drifted):
    beta, a = drifted
    return _router(6, a, beta, eta=0.01, seed=1)


@pytest.mark.parametrize("use_scores", [True, False], ids=["logits", "importance"])
def test_feedback_and_kappa_of_a_heterogeneous_router(drifted, drifted_run, use_scores):
    beta, a = drifted
    eta = 0.01
    F, P, S = drifted_run
    fb = _fit(F, P, S, use_scores)
    z = balanced_equilibrium(a, beta, 1)
    kappa = a * state_of_profile(softmax(z, 1.0), 1).mu_max
    assert fb.source == ("logits" if use_scores else "importance")
    # g = eta a / T per step; the interval covers it and the estimate is within 15%
    assert fb.feedback_lo <= eta * a <= fb.feedback_hi
    assert fb.feedback == pytest.approx(eta * a, rel=0.15)
    assert fb.kappa == pytest.approx(kappa, abs=0.1)
    assert fb.eta_gamma == pytest.approx(eta, rel=0.3)
    assert fb.kappa_lo <= fb.kappa <= fb.kappa_hi
    assert fb.relaxation_rate == pytest.approx(fb.eta_gamma - fb.feedback * fb.mu_max, rel=1e-9)


def test_a_slow_drive_of_the_gate_does_not_read_as_feedback(drifted):
    """The drive moves the loads slowly (it inflates their low-frequency power, which a
    loads-only fit reads as feedback) but is independent of each step's sampling shock, so the
    measured response to the shock is still eta a."""
    beta, a = drifted
    eta = 0.01
    F0, P0, S0 = _router(6, a, beta, eta=eta, seed=2)
    F, P, S = _router(6, a, beta, eta=eta, seed=2, drive=0.002)
    # the drive is large: it at least triples the slow variance of the loads
    slow = lambda x: x.reshape(-1, 200, x.shape[1]).mean(axis=1).var(axis=0).sum()  # noqa: E731
    assert slow(F) > 3.0 * slow(F0)
    fb = _fit(F, P, S)
    assert fb.feedback_lo <= eta * a <= fb.feedback_hi
    assert fb.feedback == pytest.approx(eta * a, rel=0.2)
    # kappa also needs the forgetting, which the drive blurs: resolved only if it is close
    z = balanced_equilibrium(a, beta, 1)
    kappa = a * state_of_profile(softmax(z, 1.0), 1).mu_max
    assert (not fb.resolved) or abs(fb.kappa - kappa) < 0.15


def test_no_feedback_is_measured_as_none():
    n = 5
    F, P, S = _router(n, 0.0, np.linspace(-0.5, 0.5, n), seed=4)
    fb = _fit(F, P, S)
    assert fb.feedback_lo <= 0.0 <= fb.feedback_hi
    assert abs(fb.feedback) < 0.01 * 1.0  # far below eta a of any router near collapse
    # kappa is then near zero or unresolved: never a number the model cannot give
    assert (not fb.resolved) or (fb.kappa_lo <= fb.kappa <= fb.kappa_hi and fb.kappa < 0.3)
    for v in (fb.kappa, fb.kappa_lo, fb.kappa_hi):
        assert math.isnan(v) or -1.0 <= v <= 2.0
