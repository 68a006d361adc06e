"""The balancing schemes' formulas (as the stacks write them) and their mean-field terms."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moebif.model import balancers as bl
from moebif.model.field import VectorField, softmax
from moebif.model.inclusion import inclusion_probabilities
from moebif.model.topk import topk_uniform_slope
from moebif.params import ParameterError, RouterParams

RNG = np.random.default_rng(12)


# -- spec ----------------------------------------------------------------------------------------


def test_parse_round_trip_and_fields():
    spec = bl.parse_balancers("aux:1e-2,zloss:1e-3,bias:1e-3,capacity:1.25")
    assert (spec.aux, spec.zloss, spec.bias, spec.capacity) == (1e-2, 1e-3, 1e-3, 1.25)
    assert spec.aux_variant == "hf" and spec.selection == "bias" and spec.has_gradient
    assert bl.parse_balancers(spec.label()) == spec
    other = bl.parse_balancers("aux-megatron:0.1:layers=4,quantile:0.9,adam:floor=0.5,lr:1e-3")
    assert other.aux_variant == "megatron" and other.aux_layers == 4
    assert other.quantile and other.quantile_ema == 0.9 and other.optimizer == "adam"
    assert other.adam_floor == 0.5 and other.lr == 1e-3
    assert bl.parse_balancers(other.label()) == other
    assert bl.parse_balancers("").is_null and bl.parse_balancers("none").is_null
    assert bl.parse_balancers("capacity:1.1:policy=random").capacity_policy == "random"


@pytest.mark.parametrize(
    "text",
    [
        "foo:1",
        "aux",
        "aux:x",
        "aux:-1",
        "bias:1e-3,quantile",
        "sinkhorn,expert-choice:1",
        "noisy:1,quantile",
        "capacity:1:policy=bogus",
        "aux:1:layers=x",
        "quantile:1.0",
        "capacity:1.2,expert-choice:1",
        "aux:1:foo=2",
    ],
)
def test_parse_rejects_with_the_argument_named(text):
    with pytest.raises(ParameterError) as e:
        bl.parse_balancers(text)
    assert e.value.name.startswith("balancer")


def test_scaled_multiplies_every_strength():
    spec = bl.parse_balancers("aux:0.1,capacity:1.5,bias:1e-3")
    s2 = spec.scaled(2.0)
    assert (s2.aux, s2.capacity, s2.bias) == (0.2, 3.0, 2e-3)


# -- the stacks' formulas -------------------------------------------------------------------------


def _batch(t=64, n=6, k=2):
    z = RNG.normal(size=(t, n))
    probs = softmax(z, 1.0)
    idx = np.argsort(-probs, axis=1)[:, :k]
    mp = np.zeros_like(probs)
    np.put_along_axis(mp, idx, 1.0, axis=1)
    return z, probs, mp, idx[:, 0]


def test_aux_normalisations_relate_as_the_stacks_do():
    z, probs, mp, first = _batch()
    n, k = 6, 2
    hf = bl.aux_loss(probs, mp, variant="hf", top_k=k)
    f, P = mp.mean(axis=0), probs.mean(axis=0)
    assert hf == pytest.approx(n * np.sum(f * P), rel=1e-14)
    # Megatron and OLMo-core (local batch): N/k sum f P; DeepSpeed top-k likewise
    assert bl.aux_loss(probs, mp, variant="megatron", top_k=k) == pytest.approx(hf / k)
    assert bl.aux_loss(probs, mp, variant="olmo", top_k=k) == pytest.approx(hf / k)
    # DeepSpeed top-2: the first choice only, N sum me ce1
    f1 = np.bincount(first, minlength=n) / len(first)
    ds2 = bl.aux_loss(probs, mp, variant="deepspeed", top_k=2, first_choice=first)
    assert ds2 == pytest.approx(n * np.sum(f1 * P))
    # at balance f = k/N, P = 1/N: HF gives k, Megatron 1
    assert bl.aux_normalisation("hf", 8, 2)[0] * 8 * (2 / 8) * (1 / 8) == pytest.approx(2.0)


def test_z_loss_and_importance():
    z, probs, _, _ = _batch()
    lse = np.log(np.exp(z).sum(axis=1))
    assert bl.z_loss(z) == pytest.approx(np.mean(lse**2))
    P = probs.mean(axis=0)
    assert bl.importance_loss(probs) == pytest.approx(np.var(P) / np.mean(P) ** 2)  # CV^2


def test_bias_update_uncentred_and_centred():
    n = np.array([10.0, 30.0, 20.0, 20.0])
    up = bl.bias_update(np.zeros(4), n, 0.1)
    assert np.allclose(up, [0.1, -0.1, 0.0, 0.0])
    skew = np.array([50.0, 10.0, 10.0, 10.0])
    unc = bl.bias_update(np.zeros(4), skew, 0.1)
    cen = bl.bias_update(np.zeros(4), skew, 0.1, centred=True)
    assert unc.sum() == pytest.approx(0.2) and cen.sum() == pytest.approx(0.0, abs=1e-15)
    assert np.allclose(np.diff(unc), np.diff(cen))  # the same up to a common shift


def test_quantile_update_targets_m_k_over_n_tokens():
    s = RNG.normal(size=(96, 8))
    s[:, 0] += 1.0  # a preferred expert
    idx, beta_local = bl.quantile_update(s, 2, np.zeros(8))
    assert np.bincount(idx.ravel(), minlength=8)[0] > 40
    # the defining property: beta_local is the (m k / N + 1)-th largest of s - alpha in each
    # column (alpha: the (k+1)-th largest of s - beta in each row; ties at 0 are common)
    alpha = -np.sort(-s, axis=1)[:, 2:3]
    above = ((s - alpha) > beta_local).sum(axis=0)
    at_least = ((s - alpha) >= beta_local).sum(axis=0)
    assert np.all(above <= 24) and np.all(at_least >= 25)
    # routed with it, the preferred expert is brought back towards m k / N = 24
    idx2, _ = bl.quantile_update(s, 2, beta_local)
    assert abs(np.bincount(idx2.ravel(), minlength=8)[0] - 24) <= 8
    with pytest.raises(ParameterError):
        bl.quantile_update(s[:95], 2, np.zeros(8))
    assert np.mean(bl.quantile_beta(np.ones(8), beta_local, 0.5)) == pytest.approx(0, abs=1e-14)


def test_sinkhorn_is_doubly_balanced():
    cost = RNG.normal(size=(200, 5))
    m = bl.sinkhorn(cost, tol=1e-7)
    assert np.allclose(m.sum(axis=0), 1.0 / 5, rtol=1e-4)
    assert np.allclose(m.sum(axis=1), 1.0 / 200, rtol=1e-4)


def test_capacity_and_drop_policies():
    assert bl.expert_capacity(512, 8, 1, 1.0) == 64
    assert bl.expert_capacity(512, 8, 2, 1.25) == 160
    assert bl.expert_capacity(100, 8, 1, 1.0) == 13  # ceil
    _, probs, mp, _ = _batch(t=80, n=4, k=1)
    for pol in bl.DROP_POLICIES:
        kept = bl.drop_over_capacity(probs, mp, 15, pol, np.random.default_rng(0))
        assert np.all(kept.sum(axis=0) == np.minimum(mp.sum(axis=0), 15))
        assert np.all(kept <= mp.astype(bool))
    kept = bl.drop_over_capacity(probs, mp, 15, "probs")
    for j in range(4):  # the kept ones are the most probable of the column
        col = mp[:, j].astype(bool)
        if col.sum() > 15:
            assert probs[kept[:, j], j].min() >= probs[col & ~kept[:, j], j].max()
    kept = bl.drop_over_capacity(probs, mp, 15, "position")
    for j in range(4):
        rows = np.flatnonzero(mp[:, j])
        assert set(np.flatnonzero(kept[:, j])) == set(rows[:15])
    ec = bl.expert_choice(RNG.normal(size=(50, 4)), 10)
    assert np.all(ec.sum(axis=0) == 10)


# -- mean-field terms -----------------------------------------------------------------------------


def _fd_grad(fun, r, h=1e-6):
    return np.array([(fun(r + h * e) - fun(r - h * e)) / (2 * h) for e in np.eye(r.size)])


@pytest.mark.parametrize(
    "variant,k",
    [("hf", 1), ("hf", 2), ("megatron", 2), ("olmo", 3), ("deepspeed", 2), ("deepspeed", 3)],
)
def test_aux_term_is_minus_the_gradient_of_the_stacks_loss(variant, k):
    """All tokens share the logits: P = softmax(r/T); f is held (no gradient through it)."""
    n, T = 7, 0.8
    r = RNG.normal(size=n)
    pi = inclusion_probabilities(r, T, k) if k > 1 else softmax(r, T)
    first = softmax(r, T)  # DeepSpeed top-2: the first choice's expected fraction
    tokens = 4

    def loss(rr):
        probs = np.tile(softmax(rr, T), (tokens, 1))
        if variant == "deepspeed" and k == 2:
            return n * np.sum(first * probs.mean(axis=0))  # N^2 mean(me ce1), ce1 = E[first]
        return bl.aux_loss(probs, np.tile(pi, (tokens, 1)), variant=variant, top_k=k)

    field = VectorField(1.0, 1.0, T, np.zeros(n), k)
    term = bl.AuxLossTerm(0.3, variant, rate=1.7)
    assert np.allclose(term.drift(field.state(r)), -1.7 * 0.3 * _fd_grad(loss, r), atol=1e-8)


def test_zloss_and_importance_terms_are_minus_their_gradients():
    n, T = 5, 1.3
    r = RNG.normal(size=n)
    field = VectorField(1.0, 1.0, T, np.zeros(n), 1)
    st_ = field.state(r)
    g = _fd_grad(lambda rr: bl.z_loss((rr / T)[None, :]), r)
    assert np.allclose(bl.ZLossTerm(0.2, rate=2.0).drift(st_), -2.0 * 0.2 * g, atol=1e-8)
    g = _fd_grad(lambda rr: bl.importance_loss(softmax(rr, T)[None, :]), r)
    assert np.allclose(bl.ImportanceTerm(0.4).drift(st_), -0.4 * g, atol=1e-8)


TERMS = [
    bl.AuxLossTerm(0.4, "hf"),
    bl.AuxLossTerm(0.4, "deepspeed"),
    bl.ZLossTerm(0.3),
    bl.ImportanceTerm(0.5),
    bl.CapacityTerm(1.1),
    bl.CapacityTerm(1.1, batch=32),
    bl.SelectionOffsetTerm((0.3, -0.2, 0.0, 0.1, 0.0)),
]


@pytest.mark.parametrize("term", TERMS, ids=lambda t: f"{t.name}")
@pytest.mark.parametrize("k", [1, 2])
def test_term_jacobians_against_finite_differences(term, k):
    p = RouterParams(a=3.0, gamma=1.0, T=0.7, n_experts=5)
    field = VectorField.of(p, top_k=k, terms=(term,))
    r = RNG.normal(size=5)
    J = field.jacobian(r)
    Jn = _fd_grad(field, r).T
    assert np.allclose(J, Jn, atol=2e-7)


def test_noisy_term_and_field_without_terms_unchanged():
    p = RouterParams(a=3.0, gamma=1.0, T=1.0, n_experts=4)
    r = RNG.normal(size=4)
    bare = VectorField.of(p)
    assert np.array_equal(bare(r), VectorField.of(p, terms=())(r))
    f = VectorField.of(p, terms=(bl.NoisyGatingTerm(sigma=0.5),))
    assert np.allclose(f.jacobian(r), _fd_grad(f, r, 1e-4).T, atol=1e-5)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_noisy_inclusion_reduces_to_gumbel(k):
    z = RNG.normal(size=7)
    assert np.allclose(bl.noisy_inclusion(z, k), inclusion_probabilities(z, 1.0, k), atol=1e-9)
    # the noise law is tabulated and interpolated: ~1e-6 relative accuracy
    assert bl.noisy_uniform_slope(7, k) == pytest.approx(topk_uniform_slope(7, k), rel=2e-5)


def test_noisy_two_level_matches_general_inclusion():
    z = np.zeros(6)
    z[:2] = 0.8
    full = bl.noisy_inclusion(z, 2, sigma=0.7)
    pw, pl = bl.noisy_two_level(6, 2, 2, 0.8, sigma=0.7)
    assert (pw, pl) == pytest.approx((full[0], full[-1]), rel=1e-4)
    assert 2 * pw + 4 * pl == pytest.approx(2.0, rel=1e-4)


@settings(max_examples=25, deadline=None)
@given(st.integers(3, 12), st.floats(0.05, 2.0))
def test_noise_flattens_the_uniform_slope(n, sigma):
    """Extra logit noise spreads the selection: the uniform-state slope decreases (T_eff > T)."""
    assert bl.noisy_uniform_slope(n, 1, sigma=sigma) < 1.0 / n


def test_field_terms_of_a_spec():
    names = [t.name for t in bl.field_terms(bl.parse_balancers("aux:1,zloss:1,capacity:2"))]
    assert names == ["aux", "zloss", "capacity"]
    assert bl.field_terms(bl.parse_balancers("bias:1e-3")) == ()
