"""The stochastic batch router (Kiselev 2026, sec. 8) against the theory and its numpy reference.

- kernel vs numpy reference: same law (moments, two-sample KS) for 2 and 4 experts;
- Prop. 3.1: the replica mean approaches the mean-field ODE as eta -> 0; Fig. 6 setting;
- linear-noise (AR(1)) spread around the stable state, :func:`stationary_spread`;
- N experts: the uniform state is stable below a = N gamma T and breaks above;
- bit-for-bit reproducibility across threads, chunking, record settings; validation.

All seeds are fixed; statistical bands are several standard errors wide.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from moebif.model.meanfield import solve_meanfield
from moebif.model.two_expert import drift_dy, equilibria
from moebif.params import ParameterError, RouterParams
from moebif.sim.router import (
    SimulationResult,
    simulate_batch_router,
    simulate_batch_router_reference,
    simulate_token_router,
    stationary_spread,
)

FIG6 = RouterParams(a=3.0, gamma=1.0, T=1.0, h=0.08)


def assert_same_law(x, y, *, what=""):
    """Two samples from the same distribution: means, standard deviations and two-sample KS."""
    x, y = np.ravel(x), np.ravel(y)
    se = math.sqrt(x.var() / x.size + y.var() / y.size)
    assert abs(x.mean() - y.mean()) <= 5 * se + 1e-12, what
    assert x.std() == pytest.approx(y.std(), rel=0.1, abs=1e-12), what
    assert stats.ks_2samp(x, y).pvalue > 1e-3, what


# ----------------------------------------------------------------------------------------------
# records and result


def test_record_convention_and_shapes():
    r = simulate_batch_router(
        FIG6, batch=64, eta=0.01, steps=10, runs=3, record_every=3, y0=40.0, record_scores=True
    )
    assert isinstance(r, SimulationResult)
    assert r.u_hat.shape == r.scores.shape == (3, 4)  # steps 0, 3, 6, 9
    np.testing.assert_allclose(r.t, [0.0, 0.03, 0.06, 0.09])
    assert np.all(r.u_hat[:, 0] == 1.0)  # y0 / T = 40: every token goes to expert 1
    assert np.all(r.scores[:, 0] == 40.0)
    assert r.u_mean.shape == r.u_std.shape == (4,)
    assert isinstance(r.final_u_mean, float) and isinstance(r.final_u_std, float)
    assert (r.batch, r.steps, r.runs, r.record_every, r.seed, r.rho) == (64, 10, 3, 3, 0, 0.0)
    assert r.seconds > 0 and r.params == FIG6
    assert simulate_batch_router(FIG6, batch=8, eta=0.01, steps=5, runs=2).scores is None


def test_first_record_is_a_batch_at_the_initial_state():
    # E u_hat_0 = tanh(y0 / 2T); the last record (steps divisible by record_every) is a batch
    # drawn at the final state, so its lattice is that of a batch: multiples of 2 / B
    y0, B = 1.0, 32
    r = simulate_batch_router(FIG6, batch=B, eta=0.01, steps=4, runs=20_000, y0=y0, seed=3)
    se = math.sqrt((1 - math.tanh(y0 / 2) ** 2) / B / 20_000)
    assert abs(r.u_hat[:, 0].mean() - math.tanh(y0 / 2)) < 5 * se
    np.testing.assert_array_equal(np.round(r.u_hat * B / 2) * 2 / B, r.u_hat)


def test_no_overflow_at_large_scores():
    r = simulate_batch_router(FIG6, batch=16, eta=0.001, steps=5, runs=2, y0=2e3)
    assert np.all(r.u_hat == 1.0)
    p4 = RouterParams(a=2.0, gamma=1.0, T=1.0, n_experts=4)
    r = simulate_batch_router(p4, batch=16, eta=0.001, steps=5, runs=2, r0=[0.0, 1e3, -1e3, 0.0])
    assert np.all(r.u_hat[:, :, 1] == 1.0) and np.all(np.isfinite(r.u_hat))


# ----------------------------------------------------------------------------------------------
# kernel vs numpy reference (same law)


def test_kernel_matches_reference_two_experts():
    kw = dict(
        batch=128, eta=0.01, steps=300, runs=3000, record_every=100, rho=0.5, record_scores=True
    )
    k = simulate_batch_router(FIG6, seed=1, **kw)
    r = simulate_batch_router_reference(FIG6, seed=1, **kw)
    assert k.u_hat.shape == r.u_hat.shape == (3000, 4)
    for j in (1, 3):
        assert_same_law(k.u_hat[:, j], r.u_hat[:, j], what=f"u_hat record {j}")
        assert_same_law(k.scores[:, j], r.scores[:, j], what=f"y record {j}")


def test_kernel_matches_reference_time_varying_h():
    steps = 400
    sweep = np.linspace(-0.5, 0.5, steps)
    kw = dict(
        batch=64, eta=0.01, steps=steps, runs=2000, record_every=200, h=sweep, record_scores=True
    )
    k = simulate_batch_router(FIG6, seed=2, **kw)
    r = simulate_batch_router_reference(FIG6, seed=2, **kw)
    assert_same_law(k.scores[:, -1], r.scores[:, -1], what="y after an h sweep")
    assert_same_law(k.u_hat[:, -1], r.u_hat[:, -1], what="u_hat after an h sweep")


def test_kernel_matches_reference_four_experts():
    p4 = RouterParams(a=2.0, gamma=1.0, T=0.8, h=0.3, n_experts=4)
    kw = dict(
        batch=64,
        eta=0.02,
        steps=200,
        runs=2000,
        record_every=100,
        rho=0.3,
        r0=[0.0, 0.2, -0.1, 0.4],
        record_scores=True,
    )
    k = simulate_batch_router(p4, seed=4, **kw)
    r = simulate_batch_router_reference(p4, seed=4, **kw)
    assert k.u_hat.shape == (2000, 3, 4)
    np.testing.assert_allclose(k.u_hat.sum(axis=2), 1.0)
    for j in range(4):
        assert_same_law(k.u_hat[:, -1, j], r.u_hat[:, -1, j], what=f"load {j}")
        assert_same_law(k.scores[:, -1, j], r.scores[:, -1, j], what=f"score {j}")


# ----------------------------------------------------------------------------------------------
# mean-field limit (Prop. 3.1), Fig. 6, linear noise


def test_mean_field_limit_prop_3_1():
    """sup_t |E tanh(y/2T) - u_mf(t)| on [0, 8] shrinks with eta (Euler bias O(eta), noise
    O(sqrt(eta / B runs))); the observed u_hat mean stays within its binomial noise band."""
    errors = []
    for eta in (0.02, 0.005, 0.00125):
        steps = round(8.0 / eta)
        r = simulate_batch_router(
            FIG6,
            batch=512,
            eta=eta,
            steps=steps,
            runs=1000,
            seed=5,
            record_every=steps // 40,
            record_scores=True,
        )
        u_mf = solve_meanfield(FIG6, r.t, 0.0)
        errors.append(np.max(np.abs(np.tanh(r.scores / 2.0).mean(axis=0) - u_mf)))
        band = 5 * math.sqrt(1.0 / 512 / 1000)  # Var u_hat <= 1 / B per run
        assert np.max(np.abs(r.u_mean - u_mf)) < band + 2 * errors[-1]
    assert errors[0] > 2.0 * errors[1] > 0.0, errors
    assert errors[1] > errors[2], errors
    assert errors[2] < 2e-3, errors


def test_fig6_batch_router_follows_mean_field():
    r = simulate_batch_router(
        FIG6, batch=512, eta=0.002, steps=5000, runs=40, seed=0, record_every=10
    )
    u_mf = solve_meanfield(FIG6, r.t, 0.0)
    assert np.max(np.abs(r.u_mean - u_mf)) <= 0.05
    upper = max(e.u for e in equilibria(FIG6) if e.stable)
    assert r.final_u_mean == pytest.approx(upper, abs=0.02)


def test_stationary_spread_matches_linear_noise():
    """Long run started at the stable state: the spread of y and of u_hat within 10% of the
    AR(1) prediction (about 4000 effective samples of y: ~2% standard error)."""
    sp = stationary_spread(FIG6, batch=512, eta=0.002)
    stable = [e for e in equilibria(FIG6) if e.stable]
    assert sp.y_star == pytest.approx(max(e.y for e in stable))
    assert sp.eigenvalue == pytest.approx(float(drift_dy(sp.y_star, FIG6)))
    r = simulate_batch_router(
        FIG6,
        batch=512,
        eta=0.002,
        steps=100_000,
        runs=64,
        seed=6,
        y0=sp.y_star,
        record_every=100,
        record_scores=True,
    )
    y, u = r.scores[:, 10:], r.u_hat[:, 10:]
    assert y.std() / sp.y_std == pytest.approx(1.0, abs=0.1)
    assert u.std() / sp.u_hat_std == pytest.approx(1.0, abs=0.1)
    assert np.tanh(y / 2.0).std() / sp.load_std == pytest.approx(1.0, abs=0.1)


def test_stationary_spread_small_batch_and_feedback():
    # a larger y spread (B = 16, eta = 0.05) and a_eff = a - rho
    for rho in (0.0, 1.5):
        sp = stationary_spread(FIG6, batch=16, eta=0.05, rho=rho)
        r = simulate_batch_router(
            FIG6,
            batch=16,
            eta=0.05,
            steps=40_000,
            runs=32,
            seed=7,
            rho=rho,
            y0=sp.y_star,
            record_every=10,
            record_scores=True,
        )
        assert r.scores[:, 20:].std() / sp.y_std == pytest.approx(1.0, abs=0.1), rho
        assert r.u_hat[:, 20:].std() / sp.u_hat_std == pytest.approx(1.0, abs=0.1), rho


def test_stationary_spread_formula():
    sp = stationary_spread(FIG6, batch=512, eta=1e-6)
    one_u2 = 1 - sp.u_star**2
    ou = 1e-6 * 9 * one_u2 / (2 * 512 * abs(sp.eigenvalue))  # leading (OU) order
    assert sp.y_std**2 == pytest.approx(ou, rel=1e-5)
    assert sp.u_hat_std**2 == pytest.approx(sp.load_std**2 + one_u2 / 512, rel=1e-12)
    # F(-y; -h) = -F(y; h): from y = 0 the flow with h < 0 reaches the mirror image
    upper = stationary_spread(FIG6, batch=512, eta=0.002)
    lower = stationary_spread(FIG6.replace(h=-0.08), batch=512, eta=0.002)
    assert lower.y_star == pytest.approx(-upper.y_star, rel=1e-12)
    assert lower.u_hat_std == pytest.approx(upper.u_hat_std, rel=1e-12)
    assert stationary_spread(FIG6.replace(h=0.0, a=1.0), batch=8, eta=0.01).y_star == 0.0
    assert stationary_spread(FIG6, batch=8, eta=0.01, rho=5.0).eigenvalue < 0  # a_eff < 0
    with pytest.raises(ValueError):
        stationary_spread(FIG6.replace(h=0.0, a=2.0), batch=8, eta=0.01)  # the cusp: F_y = 0


# ----------------------------------------------------------------------------------------------
# N experts


@pytest.mark.parametrize("n_experts", [4, 8])
def test_uniform_state_stable_below_threshold_breaks_above(n_experts):
    # kappa = a / (N gamma T): 0.7 (uniform linearly stable; a large batch keeps it there even
    # in the metastable band of N = 8) and 1.5 (unstable: one expert takes the load)
    for kappa, stays in ((0.7, True), (1.5, False)):
        p = RouterParams(a=kappa * n_experts, gamma=1.0, T=1.0, n_experts=n_experts)
        r = simulate_batch_router(
            p,
            batch=4096,
            eta=0.01,
            steps=3000,
            runs=8,
            seed=8,
            record_every=500,
            b=np.zeros(n_experts),
        )
        max_load = r.u_hat[:, -1, :].max(axis=1)
        if stays:
            assert np.all(max_load < 1.0 / n_experts + 0.05), (kappa, max_load)
        else:
            assert np.all(max_load > 0.8), (kappa, max_load)


def test_n_experts_y0_convention_and_h_sweep():
    p4 = RouterParams(a=1.0, gamma=1.0, T=1.0, n_experts=4)
    kw = dict(batch=256, eta=0.01, steps=500, runs=4, seed=9, record_scores=True)
    a = simulate_batch_router(p4, y0=1.0, **kw)
    b = simulate_batch_router(p4, r0=[0.5, -0.5, 0.0, 0.0], **kw)
    np.testing.assert_array_equal(a.u_hat, b.u_hat)
    # a time-varying h equal to params.h everywhere gives the constant-h run bit for bit
    ph = p4.replace(h=0.4)
    c = simulate_batch_router(ph, **kw)
    d = simulate_batch_router(p4, h=np.full(500, 0.4), **kw)
    e = simulate_batch_router(p4, h=lambda t: 0.4 + 0.0 * t, **kw)
    np.testing.assert_array_equal(c.scores, d.scores)
    np.testing.assert_array_equal(c.scores, e.scores)
    f = simulate_batch_router(p4, b=[0.2, -0.2, 0.0, 0.0], **kw)
    np.testing.assert_array_equal(c.scores, f.scores)


# ----------------------------------------------------------------------------------------------
# reproducibility


def test_same_seed_same_bits_any_threads_chunks_records():
    kw = dict(batch=512, eta=0.002, steps=600, runs=37, seed=10, record_scores=True)
    base = simulate_batch_router(FIG6, threads=1, **kw)
    for variant in (
        dict(threads=2),
        dict(threads=2, chunk_steps=7),
        dict(chunk_steps=1),
        dict(threads=1, chunk_steps=600),
    ):
        other = simulate_batch_router(FIG6, **variant, **kw)
        np.testing.assert_array_equal(base.u_hat, other.u_hat, err_msg=str(variant))
        np.testing.assert_array_equal(base.scores, other.scores, err_msg=str(variant))
    sub = simulate_batch_router(FIG6, record_every=3, chunk_steps=50, **kw)
    np.testing.assert_array_equal(sub.u_hat, base.u_hat[:, ::3])
    np.testing.assert_array_equal(sub.scores, base.scores[:, ::3])
    # replica i depends on (seed, i) only; a shorter run is a prefix of a longer one
    few = simulate_batch_router(FIG6, **{**kw, "runs": 5})
    np.testing.assert_array_equal(few.u_hat, base.u_hat[:5])
    short = simulate_batch_router(FIG6, **{**kw, "steps": 300})
    np.testing.assert_array_equal(short.u_hat, base.u_hat[:, :301])
    other_seed = simulate_batch_router(FIG6, **{**kw, "seed": 11})
    assert not np.array_equal(other_seed.u_hat, base.u_hat)


def test_same_seed_same_bits_four_experts():
    p4 = RouterParams(a=5.0, gamma=1.0, T=1.0, h=0.1, n_experts=4)
    kw = dict(batch=100, eta=0.01, steps=300, runs=21, seed=12, record_scores=True)
    base = simulate_batch_router(p4, threads=1, **kw)
    other = simulate_batch_router(p4, threads=2, chunk_steps=13, **kw)
    np.testing.assert_array_equal(base.u_hat, other.u_hat)
    np.testing.assert_array_equal(base.scores, other.scores)
    assert not np.array_equal(base.u_hat, simulate_batch_router(p4, **{**kw, "seed": 13}).u_hat)


def test_equivalent_inputs_give_identical_runs():
    kw = dict(batch=128, eta=0.01, steps=200, runs=6, seed=14, record_scores=True)
    base = simulate_batch_router(FIG6, **kw)
    same = [
        simulate_batch_router(FIG6.replace(h=0.0), h=0.08, **kw),
        simulate_batch_router(FIG6.replace(h=0.0), h=np.full(200, 0.08), **kw),
        simulate_batch_router(FIG6.replace(h=0.0), h=lambda t: 0.08, **kw),
        simulate_batch_router(FIG6.replace(h=0.0), b=[0.05, -0.03], **kw),
        simulate_batch_router(FIG6, r0=[0.0, 0.0], **kw),
        simulate_batch_router(FIG6, y0=np.zeros(6), **kw),
    ]
    for i, r in enumerate(same):
        np.testing.assert_array_equal(base.scores, r.scores, err_msg=str(i))
    # rho enters the two-expert dynamics only through a_eff = a - rho
    fb = simulate_batch_router(FIG6, rho=1.0, **kw)
    np.testing.assert_array_equal(
        fb.scores, simulate_batch_router(FIG6.replace(a=2.0), **kw).scores
    )


def test_per_replica_initial_states():
    y0 = np.array([-3.0, 0.0, 3.0])
    r = simulate_batch_router(
        FIG6, batch=512, eta=0.01, steps=100, runs=3, y0=y0, record_scores=True
    )
    np.testing.assert_array_equal(r.scores[:, 0], y0)
    assert r.u_hat[0, -1] < 0 < r.u_hat[2, -1]


def test_token_router_is_batch_one():
    # eq. (2): one token a step; monostable setting (a < 2 gamma T), where single-token noise
    # cannot switch branches, so the hidden load follows the mean field (Prop. 3.1)
    p = RouterParams(a=1.0, gamma=1.0, T=1.0, h=0.5)
    kw = dict(eta=0.002, steps=2500, runs=400, seed=15, record_every=250, y0=-1.0)
    tok = simulate_token_router(p, record_scores=True, **kw)
    assert set(np.unique(tok.u_hat)) <= {-1.0, 1.0} and tok.batch == 1 and tok.rho == 0.0
    np.testing.assert_array_equal(tok.u_hat, simulate_batch_router(p, batch=1, **kw).u_hat)
    u_mf = solve_meanfield(p, tok.t, -1.0)
    assert np.max(np.abs(np.tanh(tok.scores / 2.0).mean(axis=0) - u_mf)) < 0.01
    assert np.max(np.abs(tok.u_mean - u_mf)) < 5 / math.sqrt(400)
    with pytest.raises(ParameterError):
        simulate_token_router(p, batch=4, **kw)


def test_progress_reports_chunks():
    calls = []
    simulate_batch_router(
        FIG6,
        batch=8,
        eta=0.01,
        steps=100,
        runs=2,
        chunk_steps=30,
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(30, 100), (60, 100), (90, 100), (100, 100)]
    calls.clear()
    simulate_batch_router(
        FIG6,
        batch=8,
        eta=0.01,
        steps=90,
        runs=2,
        chunk_steps=30,
        progress=lambda *a: calls.append(a),
    )
    assert calls == [(30, 90), (60, 90), (90, 90)]


# ----------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    ("name", "kwargs"),
    [
        ("eta", dict(eta=0.0)),
        ("eta", dict(eta=-1.0)),
        ("eta", dict(eta=float("nan"))),
        ("eta", dict(eta=2.5)),  # eta * gamma >= 2: the discrete map diverges
        ("batch", dict(batch=0)),
        ("batch", dict(batch=2.5)),
        ("steps", dict(steps=0)),
        ("runs", dict(runs=0)),
        ("rho", dict(rho=-0.1)),
        ("rho", dict(rho=float("inf"))),
        ("record_every", dict(record_every=0)),
        ("seed", dict(seed=-1)),
        ("y0", dict(y0=float("nan"))),
        ("y0", dict(y0=np.zeros(3))),
        ("h", dict(h=np.zeros(9))),
        ("h", dict(h=float("nan"))),
        ("h", dict(h=lambda t: float("nan"))),
        ("h", dict(h=np.array([0.0] * 9 + [np.inf]))),
        ("b", dict(b=[0.0, 0.0, 0.0])),
        ("b", dict(b=[0.0, 0.0], h=0.1)),
        ("r0", dict(r0=[0.0, 0.0, 0.0])),
        ("r0", dict(r0=[0.0, 0.0], y0=1.0)),
        ("threads", dict(threads=0)),
        ("threads", dict(threads=10**6)),
        ("params", dict(params="not params")),
    ],
)
def test_validation_names_the_argument(name, kwargs):
    args = dict(params=FIG6, batch=8, eta=0.01, steps=10, runs=2)
    args.update(kwargs)
    with pytest.raises(ParameterError) as info:
        simulate_batch_router(args.pop("params"), **args)
    assert info.value.name == name


def test_validation_n_experts_shapes():
    p4 = RouterParams(a=1.0, gamma=1.0, T=1.0, n_experts=4)
    for name, kwargs in (("b", dict(b=[0.0, 0.0])), ("r0", dict(r0=np.zeros((3, 4))))):
        with pytest.raises(ParameterError) as info:
            simulate_batch_router(p4, batch=8, eta=0.01, steps=10, runs=2, **kwargs)
        assert info.value.name == name
    with pytest.raises(ParameterError) as info:
        simulate_batch_router_reference(p4, batch=8, eta=0.0, steps=10, runs=2)
    assert info.value.name == "eta"


def test_two_pass_kernel_draws_like_the_tested_sampler():
    """The kernel's pass structure consumes each replica's stream exactly as the binomial
    sampler of test_sampling.py does, one draw at a time: replay it in Python."""
    from moebif.sim._kernels import sampling as smp

    B, eta, steps, runs, seed = 512, 0.01, 60, 3, 21
    a, gamma, T, h = FIG6.a, FIG6.gamma, FIG6.T, FIG6.h
    r = simulate_batch_router(
        FIG6, batch=B, eta=eta, steps=steps, runs=runs, seed=seed, y0=-0.3, record_scores=True
    )
    st = smp.seed_streams(np.uint64(seed), 0, runs)
    for i in range(runs):
        y = -0.3
        for n in range(steps + 1):
            z = y * (1.0 / T)
            e = math.exp(-abs(z))
            s = 1.0 / (1.0 + e)
            k = smp._binomial_small(st, i, B, e * s, s)
            n1 = B - k if y > 0.0 else k
            assert r.u_hat[i, n] == (2.0 * n1 - B) / B
            assert r.scores[i, n] == pytest.approx(y, rel=1e-12, abs=1e-15)
            y = (1.0 - eta * gamma) * y + (2.0 * eta * a / B * n1 + (-eta * a + eta * h))
