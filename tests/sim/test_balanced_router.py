"""The batch router with balancers: kernel against an independent numpy step, invariances,
every scheme exercised, the score-model readings against the token-level references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moebif.model.balancer_theory import dropped_fraction, expert_choice_unrouted
from moebif.model.balancers import (
    aux_normalisation,
    expert_capacity,
    field_terms,
    noisy_inclusion,
    parse_balancers,
)
from moebif.model.field import softmax
from moebif.model.meanfield import solve_meanfield
from moebif.params import ParameterError, RouterParams
from moebif.sim import token_level as tl
from moebif.sim.balanced_router import BalancedRun, simulate_balanced_router
from moebif.sim.router import BalancedSimulation, simulate_batch_router
from moebif.sim.topk_router import simulate_topk_router

P8 = RouterParams(a=5.0, gamma=1.0, T=1.0, n_experts=8, h=0.3)


@pytest.mark.parametrize("k", [1, 2])
def test_no_scheme_is_the_topk_kernel_number_for_number(k):
    common = dict(batch=128, eta=0.02, steps=300, runs=12, top_k=k, seed=3, record_every=30)
    a = simulate_topk_router(P8, **common)
    b = simulate_balanced_router(P8, "none", **common)
    assert np.array_equal(a.loads, b.loads) and np.array_equal(a.scores, b.scores)
    # the drivers' balancer=None and empty specs take the original engines
    assert type(simulate_topk_router(P8, balancer="none", **common)) is type(a)
    assert isinstance(simulate_topk_router(P8, balancer="aux:0.1", **common), BalancedRun)


def _reference_steps(spec, p, k, batch, eta, lr, run):
    """Recompute each step's update from the recorded batch (counts) and state: an independent
    numpy implementation of the documented step."""
    n = p.n_experts
    R, Bt, RB = run.score_records, run.beta_records, run.contribution_records
    counts = np.rint(run.selected * k * batch)
    m = np.zeros_like(R[:, 0])
    v = np.zeros_like(R[:, 0])
    worst = 0.0
    for t in range(R.shape[1] - 1):
        r, beta, c = R[:, t], Bt[:, t], counts[:, t]
        served = c.copy()
        if spec.capacity > 0:
            served = np.minimum(c, expert_capacity(batch, n, k, spec.capacity))
        load = served / (k * batch)
        pr = softmax(r, p.T)
        lse = np.log(np.exp(r / p.T).sum(axis=1))
        g = np.zeros_like(r)
        if spec.aux > 0:
            cn, _ = aux_normalisation(spec.aux_variant, n, k)
            f = c / batch
            g += spec.aux * cn / p.T * pr * (f - (f * pr).sum(axis=1, keepdims=True))
        if spec.zloss > 0:
            g += 2 * spec.zloss / p.T * lse[:, None] * pr
        if spec.importance > 0:
            vv = pr - 1.0 / n
            g += 2 * spec.importance * n / p.T * pr * (vv - (pr * vv).sum(axis=1, keepdims=True))
        if spec.optimizer == "adam":
            m = spec.adam_beta1 * m + (1 - spec.adam_beta1) * g
            v = spec.adam_beta2 * v + (1 - spec.adam_beta2) * (g * g + spec.adam_floor**2)
            mh = m / (1 - spec.adam_beta1 ** (t + 1))
            vh = v / (1 - spec.adam_beta2 ** (t + 1))
            delta = -lr * mh / (np.sqrt(vh) + spec.adam_eps)
        else:
            delta = -lr * g
        r_next = (1 - eta * p.gamma) * r + eta * (p.a * load + p.b) + delta
        worst = max(worst, np.abs(r_next - R[:, t + 1]).max())
        if spec.has_gradient:
            worst = max(worst, np.abs((1 - eta * p.gamma) * RB[:, t] + delta - RB[:, t + 1]).max())
        if spec.bias > 0:
            d = spec.bias * np.sign(c.mean(axis=1, keepdims=True) - c)
            if spec.bias_centred:
                d -= d.mean(axis=1, keepdims=True)
            worst = max(worst, np.abs(beta + d - Bt[:, t + 1]).max())
        if spec.quantile:
            zc = (r_next - r_next.mean(axis=1, keepdims=True)) / p.T
            b2 = spec.quantile_ema * beta + (1 - spec.quantile_ema) * zc
            b2 -= b2.mean(axis=1, keepdims=True)
            worst = max(worst, np.abs(b2 - Bt[:, t + 1]).max())
    return worst


@pytest.mark.parametrize(
    "text,k",
    [
        ("aux:0.5", 1),
        ("aux:0.5", 2),
        ("aux-megatron:0.5", 2),
        ("zloss:0.2", 1),
        ("importance:0.7", 2),
        ("aux:0.3,zloss:0.1,capacity:1.1", 1),
        ("aux:0.3,adam", 1),
        ("aux:0.3,adam:floor=0.05,lr:0.003", 2),
        ("bias:1e-2", 1),
        ("bias-centred:1e-2", 2),
        ("quantile:0.8", 1),
        ("capacity:1.05", 2),
    ],
)
def test_kernel_step_against_numpy(text, k):
    spec = parse_balancers(text)
    eta = 0.05
    run = simulate_balanced_router(
        P8,
        spec,
        batch=64,
        eta=eta,
        steps=40,
        runs=5,
        top_k=k,
        seed=11,
        record_every=1,
        snapshot=True,
        record_scores=True,
    )
    lr = eta if spec.lr is None else spec.lr
    assert _reference_steps(spec, P8, k, 64, eta, lr, run) < 1e-12


def test_results_do_not_depend_on_threads_or_chunks():
    common = dict(batch=64, eta=0.02, steps=200, runs=40, top_k=2, seed=5, record_every=20)
    a = simulate_balanced_router(P8, "aux:0.2,bias:1e-3", threads=1, **common)
    b = simulate_balanced_router(P8, "aux:0.2,bias:1e-3", threads=2, chunk_steps=7, **common)
    assert np.array_equal(a.loads, b.loads) and np.array_equal(a.beta, b.beta)
    # the first replicas of a larger run are the same
    c = simulate_balanced_router(P8, "aux:0.2,bias:1e-3", **{**common, "runs": 13})
    assert np.array_equal(c.loads, a.loads[:13])


@pytest.mark.parametrize(
    "text",
    [
        "noisy:0.5",
        "jitter:0.05",
        "sinkhorn",
        "expert-choice:1.25",
        "quantile",
        "aux-deepspeed:0.3",
        "aux-olmo:0.3:layers=2",
        "bias:1e-3,noisy:0.3",
    ],
)
def test_every_scheme_runs(text):
    run = simulate_balanced_router(
        P8, text, batch=64, eta=0.02, steps=60, runs=4, top_k=2, seed=1, record_every=20
    )
    assert np.all(np.isfinite(run.scores)) and np.all(np.isfinite(run.loads))
    if not text.startswith("expert-choice"):
        assert np.allclose(run.selected.sum(axis=2), 1.0)
    else:
        C = expert_capacity(64, 8, 2, 1.25)
        assert np.allclose(run.loads, C / (2 * 64))


def test_centring_changes_only_the_common_mode():
    common = dict(batch=256, eta=0.02, steps=400, runs=6, seed=2, record_every=50)
    a = simulate_balanced_router(P8, "bias:3e-3", **common)
    b = simulate_balanced_router(P8, "bias-centred:3e-3", **common)
    assert abs(b.beta.sum(axis=1)).max() < 1e-9
    assert abs(a.beta.sum(axis=1)).max() > 1e-3  # Megatron's bias drifts in the common mode
    da = a.beta - a.beta.mean(axis=1, keepdims=True)
    db = b.beta - b.beta.mean(axis=1, keepdims=True)
    assert np.abs(da - db).max() < 1e-6  # the selection sees the same contrasts
    assert np.abs(a.loads.mean(axis=(0, 1)) - b.loads.mean(axis=(0, 1))).max() < 0.01


def test_noisy_counts_follow_the_noisy_inclusion():
    from moebif.sim._kernels.balancers import noisy_counts_sample

    z = np.array([0.6, 0.2, 0.0, -0.3, 0.1])
    for k, sigma, jitter in [(1, 0.8, 0.0), (2, 0.5, 0.0), (1, 0.0, 0.2)]:
        c = noisy_counts_sample(z, k, 200, sigma, jitter, 400, 7)
        pi = (
            noisy_inclusion(z - z.mean(), k, sigma=sigma, jitter=jitter)
            if jitter
            else noisy_inclusion(z, k, sigma=sigma)
        )
        se = np.sqrt(200 * pi * (1 - pi) / 400)
        assert np.all(np.abs(c.mean(axis=0) - 200 * pi) < 5 * se)


def test_aux_router_follows_its_mean_field():
    p = RouterParams(a=3.0, gamma=1.0, T=1.0, n_experts=4, h=0.5)
    spec = parse_balancers("aux:0.8")
    common = dict(
        batch=4096, eta=0.005, steps=1600, runs=16, record_every=100, seed=4, r0=np.zeros(4)
    )
    run = simulate_balanced_router(p, spec, **common)
    # the last window (t in [7.5, 8]) against the mean field averaged over it
    tw = np.linspace(7.5, 8.0, 11)
    mf = solve_meanfield(p, np.concatenate([[0.0], tw]), np.zeros(4), terms=field_terms(spec))
    assert np.abs(run.loads[:, -1].mean(axis=0) - mf[1:].mean(axis=0)).max() < 0.005
    # without the aux loss the same router is further from balance
    bare = simulate_balanced_router(p, "none", **common)
    assert np.ptp(bare.loads[:, -1].mean(axis=0)) > np.ptp(run.loads[:, -1].mean(axis=0)) + 0.02


def test_batch_router_with_a_balancer():
    p = RouterParams(a=3.0, gamma=1.0, T=1.0, h=0.1)
    res = simulate_batch_router(
        p,
        batch=256,
        eta=0.01,
        steps=200,
        runs=4,
        record_every=50,
        balancer="capacity:1.05",
        record_scores=True,
    )
    assert isinstance(res, BalancedSimulation)
    assert res.u_hat.shape == (4, 5) and res.scores.shape == (4, 5)
    run = res.run
    assert np.allclose(res.u_hat, run.loads[..., 0] - run.loads[..., 1])
    assert run.dropped.mean() > 0


@pytest.mark.parametrize(
    "kw,name",
    [
        ({"balancer": "foo:1"}, "balancer"),
        ({"balancer": 3}, "balancer"),
        ({"a": [1.0, 2.0]}, "a"),
        ({"strength": -1.0}, "strength"),
        ({"balancer": "quantile", "batch": 63}, "batch"),
        ({"top_k": 8}, "top_k"),
        ({"r0": np.zeros(3)}, "r0"),
    ],
)
def test_bad_arguments_are_named(kw, name):
    args = dict(batch=64, eta=0.02, steps=10, runs=3, balancer="aux:0.1")
    args.update(kw)
    spec = args.pop("balancer")
    with pytest.raises(ParameterError) as e:
        simulate_balanced_router(P8, spec, **args)
    assert e.value.name.split(".")[0] == name


def test_topk_router_rejects_what_the_balanced_kernel_cannot_do():
    with pytest.raises(ParameterError, match="stop_gap"):
        simulate_topk_router(
            P8, batch=32, eta=0.02, steps=5, runs=2, stop_gap=1.0, balancer="aux:0.1"
        )
    with pytest.raises(ParameterError, match="constant"):
        simulate_topk_router(
            P8, batch=32, eta=0.02, steps=5, runs=2, a=np.ones(5), balancer="aux:0.1"
        )


# -- token-level references -----------------------------------------------------------------------


def test_sinkhorn_selection_ignores_the_scores():
    rng = np.random.default_rng(0)
    r = np.array([2.0, 1.0, 0.0, 0.0, -1.0])
    counts = np.array([tl.sinkhorn_step(r, 1.0, 500, 1, rng) for _ in range(60)])
    assert np.abs(counts.mean(axis=0) - 100).max() < 3.0
    # ... and is more even than a multinomial at uniform probabilities
    assert counts.var(axis=0).mean() < 0.8 * 500 * 0.2 * 0.8


def test_quantile_reading_of_the_kernel():
    """The column quantile of token logits r/T + G is r/T plus a common constant (to
    O(1/sqrt(B))): what the kernel uses for the bias."""
    rng = np.random.default_rng(1)
    r = np.array([1.5, 0.5, 0.0, -0.5])
    bl_ = np.array([tl.quantile_step(r, 1.0, 4000, 1, r - r.mean(), rng)[1] for _ in range(10)])
    dev = bl_ - r
    assert np.ptp(dev.mean(axis=0)) < 0.03


def test_capacity_policies_drop_the_same_number():
    rng = np.random.default_rng(2)
    rows = {
        pol: [tl.capacity_step(np.zeros(8), 1.0, 512, 2, 1.0, pol, rng) for _ in range(40)]
        for pol in ("probs", "position", "random")
    }
    pred = dropped_fraction(1.0, 8, 2, 512)
    for pol, rr in rows.items():
        assert np.mean([x["dropped"] for x in rr]) == pytest.approx(pred, rel=0.12), pol
    # but which tokens lose all their experts differs: position drops late tokens twice
    un = {pol: np.mean([x["unrouted"] for x in rr]) for pol, rr in rows.items()}
    assert un["position"] > un["random"] >= un["probs"]


def test_expert_choice_unrouted_matches_the_formula():
    rng = np.random.default_rng(3)
    u = [tl.expert_choice_step(np.zeros(8), 1.0, 512, 1, 1.0, rng)[1] for _ in range(60)]
    assert np.mean(u) == pytest.approx(expert_choice_unrouted(1.0, 8, 1, 512), rel=0.05)
    up = [
        tl.expert_choice_step(np.zeros(8), 1.0, 512, 1, 1.0, rng, rank="prob")[1] for _ in range(20)
    ]
    assert np.mean(up) < 0.5 * np.mean(u)  # ranking by probability couples the columns
    assert math.isfinite(np.mean(up))
