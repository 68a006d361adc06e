"""Capacity (part 4 of :mod:`moebif.model.balancer_theory`): the smallest capacity factor with a
stable collapsed state, the dropped fraction, and expert choice's unrouted tokens."""

from __future__ import annotations

import math

import numpy as np

from ..balancers import CapacityTerm, expert_capacity
from ..field import VectorField
from ..topk import two_level_inclusion
from .scan import gap_grid, max_eig, point_a, scan_branch, two_level_state, winner_set

__all__ = ["capacity_scan", "dropped_fraction", "expert_choice_unrouted"]


def capacity_scan(a: float, n: int, k: int, gamma: float, T: float, points: int = 160) -> float:
    """Smallest capacity factor (``B -> inf``) at which a stable m-winner state exists at this
    ``a``: on the part of a branch where the winners are clipped and the losers not,
    ``a (cf / N - pi_l / k) = gamma T d`` gives ``cf(d) = N (gamma T d / a + pi_l / k)``; an
    unclipped (bare) stable state at this ``a`` counts for ``cf >= N pi_w / k``."""
    from scipy.optimize import brentq

    best = math.inf
    d_max = 4.0 * math.log(n) + 12.0 + 2.0 * a / (gamma * T)
    grid = gap_grid(n, d_max, points)
    bare = VectorField(a, gamma, T, np.zeros(n), k)

    def kink(m, d, vals):
        # cf(d) - N pi_w / k: negative where the winners are clipped
        st = two_level_state(bare, n, k, m, d, 0.0, vals, a)
        return n * (gamma * T * d / a + st.pi[-1] / k) - n * st.pi[0] / k

    def clipped(m, d, vals, exact=False):
        st = two_level_state(bare, n, k, m, d, 0.0, vals, a)
        pw, pl = st.pi[0] / k, st.pi[-1] / k
        cf = n * (gamma * T * d / a + pl)
        if not exact and not (n * pl <= cf <= n * pw):
            return None
        J = field_cf(min(cf, n * pw)).jacobian_at(st)
        return cf, max_eig(J)

    def field_cf(cf):
        return VectorField(a, gamma, T, np.zeros(n), k, (CapacityTerm(cf),))

    for m in winner_set(n, k):

        def pt(d, v, m=m):
            return clipped(m, d, v)

        cand, table = scan_branch(n, k, m, grid, pt, largest=False)
        if cand is not None:
            best = min(best, cand[0])
        # the edge of the clipped part (winners exactly at capacity)
        kv = [kink(m, d, table[i]) for i, d in enumerate(grid)]
        for i in range(len(grid) - 1):
            if kv[i] * kv[i + 1] < 0:

                def fk(d, m=m):
                    v = two_level_inclusion(n, m, k, float(d)) if k > 1 else None
                    return kink(m, d, v)

                d0 = brentq(fk, grid[i], grid[i + 1], xtol=1e-13)
                v = two_level_inclusion(n, m, k, float(d0)) if k > 1 else None
                q = clipped(m, d0, v, exact=True)
                if q is not None and q[1] < 0:
                    best = min(best, q[0])
        # bare stable states at this a: a_bare(d) = a
        abare = []
        for i, d in enumerate(grid):
            q = point_a(bare.with_terms(()), n, k, m, d, table[i], True)
            abare.append(math.nan if q is None else q[0] - a)
        for i in range(len(grid) - 1):
            if np.isfinite(abare[i]) and np.isfinite(abare[i + 1]) and abare[i] * abare[i + 1] < 0:

                def fa(d, m=m):
                    v = two_level_inclusion(n, m, k, float(d)) if k > 1 else None
                    q = point_a(bare, n, k, m, d, v, True)
                    return q[0] - a

                d0 = brentq(fa, grid[i], grid[i + 1], xtol=1e-12)
                v = two_level_inclusion(n, m, k, float(d0)) if k > 1 else None
                st = two_level_state(bare, n, k, m, d0, 0.0, v, a)
                if max_eig(bare.jacobian_at(st)) < 0:
                    best = min(best, n * st.pi[0] / k)
    return best


def dropped_fraction(
    cf: float, n_experts: int, top_k: int = 1, batch: int | None = 512, pi=None
) -> float:
    """Fraction of token-expert assignments dropped by capacity ``C = ceil(cf k B / N)``:
    ``sum_i E[(n_i - C)+] / (k B)`` with ``n_i ~ Binomial(B, pi_i)`` (default: the uniform state
    ``pi_i = k / N``); ``batch = None``: the limit ``sum_i (pi_i / k - cf / N)+``."""
    n, k = int(n_experts), int(top_k)
    pi = np.full(n, k / n) if pi is None else np.asarray(pi, dtype=float)
    if batch is None:
        return float(np.sum(np.maximum(pi / k - cf / n, 0.0)))
    from scipy.stats import binom

    B = int(batch)
    C = expert_capacity(B, n, k, cf)
    if C >= B:
        return 0.0
    served = binom.sf(np.arange(C)[:, None], B, pi[None, :]).sum(axis=0)
    out = float(np.maximum(B * pi - served, 0.0).sum()) / (k * B)
    return out if out > 1e-13 else 0.0


def expert_choice_unrouted(cf: float, n_experts: int, top_k: int = 1, batch: int = 512) -> float:
    """Fraction of tokens taken by no expert under expert choice with ``C = ceil(cf k B / N)``,
    when each expert ranks the tokens by their own iid scores: ``(1 - C/B)^N``."""
    n = int(n_experts)
    C = min(expert_capacity(batch, n, top_k, cf), batch)
    return float((1.0 - C / batch) ** n)
