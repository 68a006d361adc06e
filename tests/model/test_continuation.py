"""Pseudo-arclength continuation of (8) against the closed forms."""

import numpy as np
import pytest

from moebif import RouterParams
from moebif.model import two_expert as th
from moebif.model.continuation import continue_equilibria, continue_folds
from moebif.model.symmetric import (
    branch_curve,
    branch_ratio,
    collapse_threshold,
    saddle_node_gap,
    symmetric_equilibria,
)


def _collapsed(n, a):
    p = RouterParams(a=a, gamma=1.0, T=1.0, n_experts=n)
    return p, max((e for e in symmetric_equilibria(p) if e.winners == 1), key=lambda e: e.gap)


@pytest.mark.parametrize("n", [3, 4, 8])
def test_one_winner_fold_branch_point_and_stability(n):
    a_sn = collapse_threshold(n, 1.0, 1.0)
    p, start = _collapsed(n, 0.5 * (a_sn + n))
    br = continue_equilibria(
        p, start.r, parameter="a", direction=-1, p_min=0.5 * a_sn, p_max=1.2 * n
    )
    assert [s.kind for s in br.points] == ["fold", "branch"]
    assert br.folds[0].param == pytest.approx(a_sn, rel=1e-10)
    d_fold = br.folds[0].x[0] - br.folds[0].x[1]
    assert d_fold == pytest.approx(saddle_node_gap(n, 1)[0], rel=1e-5)
    bp = br.branch_points[0]
    assert bp.param == pytest.approx(n, rel=1e-6) and bp.multiplicity == n - 1
    # every point on g_1(d) (branch N-1 for d < 0), stability as in closed form
    d = br.x[:, 0] - br.x[:, 1]
    ok = np.abs(d) > 1e-6
    np.testing.assert_allclose(br.param[ok], branch_ratio(d[ok], n, 1), rtol=1e-10)
    closed = np.where(
        d[ok] > 0,
        branch_curve(n, 1, np.abs(d[ok])).stable,
        branch_curve(n, n - 1, np.abs(d[ok])).stable,
    )
    np.testing.assert_array_equal(br.stable[ok], closed)
    # residual of (8) at every continued point
    for r, a in zip(br.x, br.param, strict=True):
        z = r - r.max()
        pr = np.exp(z) / np.exp(z).sum()
        assert np.abs(a * pr - r).max() < 1e-9 * (1 + a)


@pytest.mark.parametrize("n,m", [(5, 2), (7, 3)])
def test_other_branch_folds(n, m):
    d_sn, g_sn = saddle_node_gap(n, m)
    p = RouterParams(a=n - 0.05, gamma=1.0, T=1.0, n_experts=n)
    start = max((e for e in symmetric_equilibria(p) if e.winners == m), key=lambda e: e.gap)
    br = continue_equilibria(p, start.r, parameter="a", direction=-1, p_min=1.0, p_max=n + 1)
    assert br.folds and br.folds[0].param == pytest.approx(g_sn, rel=1e-10)
    assert not br.stable.any()  # m >= 2 winners: never stable


def test_uniform_branch_point_multiplicity():
    n = 6
    p = RouterParams(a=2.0, gamma=1.0, T=1.0, n_experts=n)
    br = continue_equilibria(p, np.full(n, 2.0 / n), parameter="a", p_max=9.0)
    assert len(br.points) == 1
    bp = br.points[0]
    assert bp.kind == "branch" and bp.multiplicity == n - 1
    assert bp.param == pytest.approx(n, rel=1e-8)
    assert np.all(br.stable[br.param < n - 1e-6]) and not np.any(br.stable[br.param > n + 1e-6])


def test_two_expert_folds_and_fold_curve():
    """N = 2 through (8): folds in h at +-H(a), and the fold curve (16) by continuing in a."""
    a = 4.0
    p = RouterParams(a=a, gamma=1.0, T=1.0, n_experts=2)
    y = th.equilibria(p)[-1].y
    r0 = np.array([a / 2 + y / 2, a / 2 - y / 2])
    br = continue_equilibria(p, r0, parameter="h", direction=-1, p_min=-10, p_max=10)
    H = th.hysteresis_halfwidth(a, 1.0, 1.0)
    assert sorted(f.param for f in br.folds) == pytest.approx([-H, H], rel=1e-11)
    for direction in (1, -1):
        fc = continue_folds(
            p,
            br.folds[0],
            parameters=("h", "a"),
            direction=direction,
            p2_min=2.0001,
            p2_max=9.0,
            max_steps=300,
        )
        Hs = np.array([th.hysteresis_halfwidth(x, 1.0, 1.0) for x in fc.p2])
        np.testing.assert_allclose(np.abs(fc.p1), Hs, atol=1e-10)
        assert fc.p2.size > 20


def test_continuation_in_temperature_and_a_drift_component():
    """T: the fold is where a / (gamma T) = g_min; b_i: equilibria of (8) with a skew."""
    n, a = 8, 6.0
    p, start = _collapsed(n, a)
    br = continue_equilibria(p.replace(T=1.0), start.r, parameter="T", direction=1, p_max=3.0)
    g_sn = saddle_node_gap(n, 1)[1]
    assert br.folds[0].param == pytest.approx(a / g_sn, rel=1e-10)
    bb = continue_equilibria(p, start.r, parameter="b3", direction=1, p_max=1.0, max_steps=60)
    for r, val in zip(bb.x, bb.param, strict=True):
        b = np.zeros(n)
        b[3] = val
        z = r - r.max()
        pr = np.exp(z) / np.exp(z).sum()
        assert np.abs(a * pr - r + b).max() < 1e-9


def test_topk_continuation_fold():
    """Continuation of the top-2 mean field (8k) finds the fold of its one-winner branch."""
    from moebif.model.inclusion import inclusion_probabilities
    from moebif.model.topk import topk_collapse_threshold

    n, k = 6, 2
    a_sn, m = topk_collapse_threshold(n, k, 1.0, 1.0)
    a0 = a_sn + 0.5
    z = np.zeros(n)
    z[0] = 4.0
    p = RouterParams(a=a0, gamma=1.0, T=1.0, n_experts=n)
    # relax to the collapsed equilibrium by iterating r = (a/k) pi(r)
    r = z
    for _ in range(300):
        r = a0 / k * inclusion_probabilities(r, 1.0, k)
    br = continue_equilibria(
        p, r, parameter="a", direction=-1, top_k=k, p_min=1.0, p_max=a0 + 0.3, max_steps=200
    )
    assert m == 1 and br.folds[0].param == pytest.approx(a_sn, rel=1e-8)
