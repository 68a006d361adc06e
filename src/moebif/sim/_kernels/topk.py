"""Numba kernels of the N-expert batch router with top-k routing and a time-varying feedback a.

Imported lazily by :mod:`moebif.sim.topk_router`. Random streams and the exact multinomial sampler
are those of :mod:`moebif.sim._kernels.sampling` (one xoshiro256++ stream per replica from
``(seed, replica)``), so results do not depend on threads or chunking.

**Top-k counts of a batch, exactly.** Every token picks ``k`` distinct experts by sequential
draws without replacement from ``softmax(r/T)`` (Plackett-Luce = Gumbel-top-k). For the batch:

1. the first picks of the ``B`` tokens: ``Multinomial(B, softmax(r/T))`` by conditional
   binomials (for ``k = 1`` this is the whole batch, drawn exactly as in the engine of
   :mod:`moebif.sim._kernels.sampling`, so top-1 reproduces
   :func:`moebif.sim.router.simulate_batch_router` draw for draw);
2. the further ``k - 1`` picks of each token, one by one, from the experts it has not picked.
   Two alias tables (Walker/Vose) are built once a step: over all experts, and over all but
   the top one. A pick is drawn by *rejection* from the first table (a draw that hits an
   already picked expert is repeated, which leaves exactly the conditional law) when the
   picked experts hold at most half the mass; from the second when the top expert is among
   the picked ones and the others hold at most half of the rest (a collapsed winner); and
   otherwise by *inversion* over the remaining experts, with their mass summed directly (no
   cancellation when the picked experts hold almost all of it). Acceptance is >= 1/2 in the
   rejection steps, so a pick costs O(1) except in the last case, O(N).

Each way of drawing is exact, and which one is used depends only on the set already picked,
so the counts are exact in distribution (up to floating point). If every remaining weight
underflows (score gaps beyond ~745 T) the pick falls back to weights rescaled to the largest
remaining score.

**Step.** ``l_i = count_i / (k B)``; ``r_i <- (1 - eta gamma) r_i + eta (a_n l_i - rho (l_i - 1/N)
+ b_i + h_n e_i)`` with the feedback ``a_n`` and the pulse/skew amplitude ``h_n`` of step ``n``
(arrays, or constants with stride 0) along a fixed direction ``e``.

**Records** are window means: ``l_out[:, j, :]`` is the mean load over the steps
``j R <= n < (j + 1) R`` (``R = record_every``). **First passage:** with ``stop_gap > 0`` a replica
whose scores reach ``max_i r_i - mean_i r_i >= stop_gap`` at step ``n`` gets ``hit = n`` and is
frozen (no more draws or updates).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .sampling import draw_multinomial, draw_uniform, seed_streams

__all__ = ["topk_chunk", "topk_chunk_parallel", "topk_counts", "topk_counts_sample", "topk_work"]


@njit(cache=True)
def _alias_build(w, excl, prob, alias, q, small, large):
    """Walker/Vose alias table of the distribution ``w / sum(w)`` with expert ``excl`` left out
    (``excl = -1``: none). Returns the total weight of the included experts (summed directly)."""
    n = w.size
    tot = 0.0
    best = 0 if excl != 0 else 1
    for j in range(n):
        if j != excl:
            tot += w[j]
            if w[j] > w[best]:
                best = j
    if not tot > 0.0:
        return 0.0  # every included weight underflows: the table is not used
    ns = nl = 0
    for j in range(n):
        q[j] = 0.0 if j == excl else w[j] * n / tot
        alias[j] = j
        if q[j] < 1.0:
            small[ns] = j
            ns += 1
        else:
            large[nl] = j
            nl += 1
    while ns > 0 and nl > 0:
        ns -= 1
        sm = small[ns]
        lg = large[nl - 1]
        prob[sm] = q[sm]
        alias[sm] = lg
        q[lg] = (q[lg] + q[sm]) - 1.0
        if q[lg] < 1.0:
            nl -= 1
            small[ns] = lg
            ns += 1
    # leftovers are 1 up to round-off
    for t in range(nl):
        prob[large[t]] = 1.0
    for t in range(ns):
        prob[small[t]] = 1.0 if small[t] != excl else 0.0
        if small[t] == excl:
            alias[excl] = best
    return tot


@njit(cache=True)
def _alias_draw(st, i, prob, alias):
    u = draw_uniform(st, i) * prob.size
    j = int(u)
    return j if u - j < prob[j] else alias[j]


@njit(cache=True)
def _slow_pick(st, i, r, chosen_mask, inv_t):
    """Pick when all remaining weights underflow: weights rescaled to the largest remaining
    score."""
    n = r.size
    rmax = -np.inf
    for j in range(n):
        if not chosen_mask[j]:
            rmax = max(rmax, r[j])
    tot = 0.0
    for j in range(n):
        if not chosen_mask[j]:
            tot += math.exp((r[j] - rmax) * inv_t)
    u = draw_uniform(st, i) * tot
    last = -1
    for j in range(n):
        if chosen_mask[j]:
            continue
        last = j
        x = math.exp((r[j] - rmax) * inv_t)
        if u < x:
            return j
        u -= x
    return last


@njit(cache=True)
def _explicit_pick(st, i, w, chosen_mask, r, inv_t):
    """Inversion over the experts not yet picked; their mass is summed directly (no
    cancellation when the picked experts hold almost all of it)."""
    n = w.size
    rem = 0.0
    for j in range(n):
        if not chosen_mask[j]:
            rem += w[j]
    if not rem > 0.0:
        return _slow_pick(st, i, r, chosen_mask, inv_t)
    u = draw_uniform(st, i) * rem
    last = -1
    for j in range(n):
        if chosen_mask[j] or w[j] == 0.0:
            continue
        last = j
        if u < w[j]:
            return j
        u -= w[j]
    return last  # round-off ran past the end: the last positive remaining weight


@njit(cache=True)
def topk_counts(st, i, r, batch, k, inv_t, work):
    """Counts (tokens including each expert) of one batch at scores ``r``; ``w`` must hold
    ``exp((r - max r)/T)`` on entry (so the top expert has weight exactly 1). ``work``: the
    arrays of :func:`topk_work`."""
    w, msuf, first, counts, chosen, chosen_mask, prob0, alias0, prob1, alias1, q, small, large = (
        work
    )
    n = r.size
    draw_multinomial(st, i, batch, w, msuf, first)
    for m in range(n):
        counts[m] = first[m]
    if k == 1:
        return
    top = 0
    for m in range(1, n):
        if w[m] > w[top]:
            top = m
    tot0 = _alias_build(w, -1, prob0, alias0, q, small, large)
    tot1 = _alias_build(w, top, prob1, alias1, q, small, large)
    for m in range(n):
        chosen_mask[m] = False
    for j0 in range(n):
        for _ in range(first[j0]):
            chosen[0] = j0
            chosen_mask[j0] = True
            mass = w[j0]  # weight of the picked set; and without the top expert:
            mass1 = 0.0 if j0 == top else w[j0]
            for j in range(1, k):
                if mass <= 0.5 * tot0:
                    # rejection from the full distribution: acceptance >= 1/2
                    s = _alias_draw(st, i, prob0, alias0)
                    while chosen_mask[s]:
                        s = _alias_draw(st, i, prob0, alias0)
                elif chosen_mask[top] and tot1 > 0.0 and mass1 <= 0.5 * tot1:
                    # the top expert is picked (a collapsed winner): rejection from the others
                    s = _alias_draw(st, i, prob1, alias1)
                    while chosen_mask[s]:
                        s = _alias_draw(st, i, prob1, alias1)
                else:
                    s = _explicit_pick(st, i, w, chosen_mask, r, inv_t)
                chosen[j] = s
                chosen_mask[s] = True
                mass += w[s]
                if s != top:
                    mass1 += w[s]
                counts[s] += 1
            for j in range(k):
                chosen_mask[chosen[j]] = False


@njit(cache=True)
def topk_work(n, k):
    """Work arrays of one replica block."""
    return (
        np.empty(n),
        np.empty(n + 1),
        np.empty(n, dtype=np.int64),
        np.empty(n, dtype=np.int64),
        np.empty(k, dtype=np.int64),
        np.zeros(n, dtype=np.bool_),
        np.empty(n),
        np.empty(n, dtype=np.int64),
        np.empty(n),
        np.empty(n, dtype=np.int64),
        np.empty(n),
        np.empty(n, dtype=np.int64),
        np.empty(n, dtype=np.int64),
    )


@njit(cache=True)
def topk_counts_sample(r, T, k, batch, size, seed):
    """``size`` batches of top-k counts at fixed scores ``r`` (stream of replica 0 of ``seed``),
    shape ``(size, N)``: for the tests and the benchmark."""
    st = seed_streams(seed, 0, 1)
    n = r.size
    work = topk_work(n, k)
    w, counts = work[0], work[3]
    out = np.empty((size, n), dtype=np.int64)
    inv_t = 1.0 / T
    rmax = r.max()
    for j in range(size):
        for m in range(n):
            w[m] = math.exp((r[m] - rmax) * inv_t)
        topk_counts(st, 0, r, batch, k, inv_t, work)
        out[j, :] = counts
    return out


@njit(cache=True)
def _topk_block(r, states, lo, hi, args):
    n0, n1, steps, record_every, batch, k, eta, rho, gamma, T = args[:10]
    a, a_stride, h, h_stride, b, e, l_out, record, stop_gap, hit = args[10:]
    rs = r[lo:hi].copy()
    sts = states[lo:hi].copy()
    n = rs.shape[1]
    work = topk_work(n, k)
    w, counts = work[0], work[3]
    drive = np.empty(n)
    decay = 1.0 - eta * gamma
    inv_t = 1.0 / T
    inv_n = 1.0 / n
    inv_kb = 1.0 / (k * batch)
    inv_rec = 1.0 / record_every
    active = 0
    for i in range(hi - lo):
        if hit[lo + i] < 0:
            active += 1
    for step in range(n0, n1):
        if active == 0:
            break
        an = a[(step - n0) * a_stride]
        hn = h[(step - n0) * h_stride]
        for m in range(n):
            drive[m] = b[m] + hn * e[m]
        j = step // record_every
        for i in range(hi - lo):
            if hit[lo + i] >= 0:
                continue
            ri = rs[i]
            rmax = ri[0]
            rsum = 0.0
            for m in range(n):
                rmax = max(rmax, ri[m])
                rsum += ri[m]
            if stop_gap > 0.0 and rmax - rsum * inv_n >= stop_gap:
                hit[lo + i] = step
                active -= 1
                continue
            for m in range(n):
                w[m] = math.exp((ri[m] - rmax) * inv_t)
            topk_counts(sts, i, ri, batch, k, inv_t, work)
            for m in range(n):
                lm = counts[m] * inv_kb if k > 1 else counts[m] / batch
                if record:
                    l_out[lo + i, j, m] += lm * inv_rec
                ri[m] = decay * ri[m] + eta * (an * lm - rho * (lm - inv_n) + drive[m])
    r[lo:hi] = rs
    states[lo:hi] = sts


# Arguments of the chunk kernels, one flat tuple ``args`` (numba's parallel loops do not take
# nested tuples):
#   (n0, n1, steps, record_every, batch, k, eta, rho, gamma, T,
#    a, a_stride, h, h_stride, b, e, l_out, record, stop_gap, hit)
#   steps n0 <= n < n1 of a run of `steps` updates; a, h: feedback and skew amplitude of steps
#   n0, n0 + 1, ...
#   (stride 1) or constants (stride 0); b: constant drift, e: direction of the skew, both (N,);
#   l_out (runs, K, N): window means of the loads (when `record`); stop_gap > 0: first passage,
#   recorded in hit (runs,).


@njit(cache=True)
def topk_chunk(r, states, args, blocks):
    """Steps ``n0 <= n < n1`` of the top-k batch router for every replica (serial), in place on
    ``r`` (runs, N), ``states`` (runs, 4) and ``hit`` (runs,)."""
    runs = r.shape[0]
    for blk in range(blocks):
        _topk_block(r, states, blk * runs // blocks, (blk + 1) * runs // blocks, args)


@njit(cache=True, parallel=True)
def topk_chunk_parallel(r, states, args, blocks):
    """:func:`topk_chunk` with the replica blocks spread over numba's threads."""
    runs = r.shape[0]
    for blk in prange(blocks):
        _topk_block(r, states, blk * runs // blocks, (blk + 1) * runs // blocks, args)
