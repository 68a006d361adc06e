"""Token-level reference of the selection schemes, in numpy: one batch of tokens with their own
logits, routed exactly as the stacks do (the formulas of :mod:`moebif.model.balancers`).

In the score model every token's logits are ``r / T + G_t`` (``G_t``: iid standard Gumbel, the
token heterogeneity that makes the softmax sampling of the router kernels). This module routes
such a batch with Megatron's Sinkhorn, its quantile dual update, capacity with each drop policy
and expert choice, and reports what the kernels summarise: the counts, the dropped assignments,
the tokens left with fewer than ``k`` or with no expert. The tests compare it with the kernels'
score-model readings (:mod:`moebif.sim.balanced_router`).
"""

from __future__ import annotations

import numpy as np

from ..model.balancers import (
    drop_over_capacity,
    expert_capacity,
    expert_choice,
    quantile_update,
    sinkhorn,
)
from ..model.field import softmax

__all__ = [
    "capacity_step",
    "expert_choice_step",
    "quantile_step",
    "sinkhorn_step",
    "token_logits",
    "topk_map",
]


def token_logits(r, T: float, batch: int, rng: np.random.Generator) -> np.ndarray:
    """``(batch, N)`` token logits ``r / T + G`` with iid standard Gumbel ``G``."""
    r = np.asarray(r, dtype=float)
    return r[None, :] / T + rng.gumbel(size=(batch, r.size))


def topk_map(scores, k: int) -> np.ndarray:
    """Boolean routing map of the ``k`` largest scores of each token (row)."""
    s = np.asarray(scores, dtype=float)
    idx = np.argpartition(-s, k - 1, axis=1)[:, :k]
    out = np.zeros(s.shape, dtype=bool)
    np.put_along_axis(out, idx, True, axis=1)
    return out


def sinkhorn_step(r, T: float, batch: int, k: int, rng, tol: float = 1e-4) -> np.ndarray:
    """Counts of one batch routed by Megatron's Sinkhorn selection (top-k of the normalised
    ``exp(logits)``)."""
    z = token_logits(r, T, batch, rng)
    return topk_map(sinkhorn(z, tol), k).sum(axis=0)


def quantile_step(r, T: float, batch: int, k: int, beta, rng):
    """One batch of quantile balancing: ``(counts, beta_local)`` from Megatron's dual update on
    the token logits (the batch is routed with ``beta``)."""
    z = token_logits(r, T, batch, rng)
    idx, beta_local = quantile_update(z, k, beta)
    counts = np.bincount(idx.ravel(), minlength=z.shape[1])
    return counts, beta_local


def capacity_step(r, T: float, batch: int, k: int, cf: float, policy: str, rng) -> dict:
    """One batch with capacity ``C = ceil(cf k B / N)`` and a drop policy: ``counts`` (selected),
    ``served``, ``dropped`` (fraction of assignments), ``fewer`` (fraction of tokens that lost
    at least one expert), ``unrouted`` (fraction of tokens that lost all ``k``)."""
    z = token_logits(r, T, batch, rng)
    mp = topk_map(z, k)
    probs = softmax(z, 1.0)
    C = expert_capacity(batch, z.shape[1], k, cf)
    kept = drop_over_capacity(probs, mp, C, policy, rng)
    per_token = kept.sum(axis=1)
    return {
        "counts": mp.sum(axis=0),
        "served": kept.sum(axis=0),
        "dropped": float(1.0 - kept.sum() / mp.sum()),
        "fewer": float(np.mean(per_token < k)),
        "unrouted": float(np.mean(per_token == 0)),
    }


def expert_choice_step(r, T: float, batch: int, k: int, cf: float, rng, *, rank: str = "logit"):
    """One batch of expert choice with ``C = ceil(cf k B / N)`` per expert: ``(counts, unrouted)``
    with each expert ranking the tokens by their logit (``rank="logit"``) or by their softmax
    probability (``"prob"``, as Zhou et al. 2022)."""
    z = token_logits(r, T, batch, rng)
    C = expert_capacity(batch, z.shape[1], k, cf)
    scores = z if rank == "logit" else softmax(z, 1.0)
    mp = expert_choice(scores, C)
    return mp.sum(axis=0), float(np.mean(mp.sum(axis=1) == 0))
