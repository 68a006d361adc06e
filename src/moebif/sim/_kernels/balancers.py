"""Numba kernels of the batch router with the balancing schemes of :mod:`moebif.model.balancers`.

Imported lazily by :mod:`moebif.sim.balanced_router`. Random streams and samplers are those of
:mod:`.sampling` and :mod:`.topk` (one xoshiro256++ stream per replica from ``(seed, replica)``),
so results do not depend on threads or chunking; with every scheme off and the softmax selection
the draws and the arithmetic are those of :func:`.topk.topk_chunk`, number for number.

**One step of one replica** (``r``: scores, ``beta``: selection bias, ``B`` tokens, top-``k``):

1. selection logits: ``r / T`` (softmax), ``(r + beta) / T`` (loss-free bias), ``r / T - beta``
   (quantile), uniform (Sinkhorn, in the score model: see :mod:`moebif.sim.balanced_router`);
   the counts ``n_i`` (tokens including expert ``i``) by the exact top-k sampler of :mod:`.topk`;
   noisy gating draws every token's logits ``z + G + sigma Z`` (``G`` Gumbel, ``Z`` normal;
   jitter: ``(z - mean z + G)(1 + eps U)``) and keeps its ``k`` largest; expert choice gives every
   expert ``C = ceil(cf k B / N)`` tokens.
2. capacity: served ``min(n_i, C)``, ``C = ceil(cf k B / N)``; the rest is dropped.
3. gradient schemes at the unbiased router probabilities ``p = softmax(r / T)`` with the token
   fractions ``f = n / B`` (or the first-choice fractions): ``g = aux_c/T p (f - f.p)
   + 2 z lse/T p + 2 w N / T p ((p - 1/N) - p.(p - 1/N))``; SGD ``Delta = -lr g``, Adam
   ``Delta = -lr m_hat / (sqrt(v_hat) + eps)`` with ``v`` the EMA of ``g^2 + floor^2``.
4. ``r <- (1 - eta gamma) r + eta (a l - rho (l - 1/N) + b + h e) + Delta``, ``l`` = served / (kB);
   ``rb`` (the part of ``r`` the balancer contributed) ``<- (1 - eta gamma) rb + Delta``.
5. bias: ``beta += u sign(mean n - n)`` (centred: minus its mean); quantile: ``beta <-
   ema beta + (1 - ema)(r/T - mean r/T)`` (the next batch is routed with it); control (selection
   ``r / T + beta``, ``beta`` in logits): the law of :func:`moebif.model.control_law.update` on
   the selected loads ``n / (k B)``, with its integral and error EMA in ``ctl`` (``(runs, 2, N)``)
   and the gain factor ``g`` from the model's margin ``eta (gamma k / alpha_k - (a - rho) / T)``
   of the replica's ``a`` (:func:`moebif.model.schemes.control.model_margin`).

**Balancer parameters** ``bal`` (float64, layout ``BAL_*`` below), per-replica ``a_rep`` and a
per-replica multiplier ``s_rep`` of every strength (coefficients, ``u``, ``sigma``, ``eps`` and the
capacity factors), so a phase diagram over ``(a, strength)`` is one call.

**Records.** ``snapshot = False``: window means of served loads, selected loads and dropped
fraction over ``j R <= n < (j + 1) R``; ``snapshot = True``: the batch of step ``n`` when
``n % R == 0`` (the convention of :mod:`.sampling`; the final draw at ``n = steps`` is made
without an update). With ``rec_scores``: ``r``, ``beta`` and ``rb`` at the end of each window
(snapshots: the state the recorded batch was drawn from).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from .sampling import draw_uniform, seed_streams
from .topk import topk_counts, topk_work

__all__ = [
    "BAL_SIZE",
    "balanced_chunk",
    "balanced_chunk_parallel",
    "noisy_counts_sample",
]

# layout of the balancer parameter vector
BAL_MODE = 0  # 0 softmax, 1 bias, 2 quantile, 3 sinkhorn, 4 expert choice, 5 noisy, 6 control
BAL_AUX = 1  # alpha * c (the normalisation of the variant folded in)
BAL_AUX_FIRST = 2  # 1: f of the first choice only (DeepSpeed top-2)
BAL_Z = 3
BAL_IMP = 4
BAL_U = 5
BAL_CENTRED = 6
BAL_EMA = 7
BAL_CAP = 8  # capacity factor, 0: none
BAL_SIGMA = 9
BAL_JITTER = 10
BAL_EC = 11  # expert choice capacity factor
BAL_LR = 12
BAL_ADAM = 13
BAL_B1 = 14
BAL_B2 = 15
BAL_EPS = 16
BAL_FLOOR = 17
BAL_GRAD = 18  # 1: a gradient scheme is on
# the closed-loop PI selection bias (mode 6, moebif.model.control_law)
BAL_KI = 19
BAL_KP = 20
BAL_CBETA = 21
BAL_SAFETY = 22
BAL_BMAX = 23
BAL_GMAX = 24
BAL_SCHED = 25  # 1: the gain schedule reads the model's margin, 0: fixed gains
BAL_KALPHA = 26  # k / alpha_k (the margin's restoring force per unit load, over gamma)
BAL_SIZE = 27


@njit(cache=True)
def _normal(st, i):
    """A standard normal variate (Box-Muller, one of the pair)."""
    u1 = draw_uniform(st, i)
    u2 = draw_uniform(st, i)
    return math.sqrt(-2.0 * math.log(u1)) * math.cos(2.0 * math.pi * u2)


@njit(cache=True)
def _noisy_counts(st, i, z, batch, k, sigma, jitter, counts, first, x, best):
    """Counts of a batch whose tokens keep the ``k`` largest of ``z + G + sigma Z`` (jitter:
    ``(z - mean z + G)(1 + jitter U(-1, 1))``); ``first``: counts of the largest."""
    n = z.size
    zbar = 0.0
    if jitter > 0.0:
        for m in range(n):
            zbar += z[m]
        zbar /= n
    for m in range(n):
        counts[m] = 0
        first[m] = 0
    for _ in range(batch):
        for m in range(n):
            g = -math.log(-math.log(draw_uniform(st, i)))
            if jitter > 0.0:
                v = (z[m] - zbar + g) * (1.0 + jitter * (2.0 * draw_uniform(st, i) - 1.0))
            else:
                v = z[m] + g
            if sigma > 0.0:
                v += sigma * _normal(st, i)
            x[m] = v
        # the k largest by insertion into best[0..k-1] (descending)
        filled = 0
        for m in range(n):
            v = x[m]
            if filled < k:
                j = filled
                filled += 1
            elif v > x[best[k - 1]]:
                j = k - 1
            else:
                continue
            while j > 0 and x[best[j - 1]] < v:
                best[j] = best[j - 1]
                j -= 1
            best[j] = m
        for j in range(k):
            counts[best[j]] += 1
        first[best[0]] += 1


@njit(cache=True)
def noisy_counts_sample(z, k, batch, sigma, jitter, size, seed):
    """``size`` batches of noisy top-k counts at fixed logits ``z`` (stream of replica 0 of
    ``seed``), shape ``(size, N)``: the sampling floor of the noisy kernel, and for the tests."""
    st = seed_streams(seed, 0, 1)
    n = z.size
    out = np.empty((size, n), dtype=np.int64)
    counts = np.empty(n, dtype=np.int64)
    first = np.empty(n, dtype=np.int64)
    x = np.empty(n)
    best = np.empty(k, dtype=np.int64)
    for j in range(size):
        _noisy_counts(st, 0, z, batch, k, sigma, jitter, counts, first, x, best)
        out[j, :] = counts
    return out


@njit(cache=True)
def _control_gain(sc, an, rho, eta, gamma, T, n, bal):
    """The law's gain factor ``g`` (:func:`moebif.model.control_law.gain_factor`) at the model's
    margin ``eta (gamma k / alpha_k - (a - rho) / T)`` (1 with fixed gains)."""
    ki = bal[BAL_KI] * sc
    if bal[BAL_SCHED] <= 0.0 or ki <= 0.0:
        return 1.0
    margin = eta * (gamma * bal[BAL_KALPHA] - (an - rho) / T)
    ref = n * ki
    g = 1.0 + bal[BAL_SAFETY] * max(0.0, ref - margin) / ref
    return min(g, bal[BAL_GMAX])


@njit(cache=True)
def _control_update(bi, cts, i, counts, scale, gki, gkp, beta, bmax):
    """One step of :func:`moebif.model.control_law.update` in place: ``bi`` the bias (logits),
    ``cts[i, 0]`` the integral, ``cts[i, 1]`` the error EMA, ``counts`` the selected counts,
    ``scale`` ``N / (k B)``; ``gki``, ``gkp``: the scheduled gains."""
    n = bi.size
    keep = 1.0 - beta
    mean_i = 0.0
    for m in range(n):
        e = counts[m] * scale - 1.0
        cts[i, 1, m] = keep * cts[i, 1, m] + beta * e
        v = cts[i, 0, m] - gki * e
        cts[i, 0, m] = v
        mean_i += v
    mean_i /= n
    mean_b = 0.0
    for m in range(n):
        v = cts[i, 0, m] - mean_i
        if v > bmax:
            v = bmax
        elif v < -bmax:
            v = -bmax
        cts[i, 0, m] = v
        w = v - gkp * cts[i, 1, m]
        bi[m] = w
        mean_b += w
    mean_b /= n
    for m in range(n):
        bi[m] -= mean_b


@njit(cache=True)
def _balanced_block(r, beta, mom, vel, rb, ctl, states, lo, hi, args):
    n0, n1, steps, record_every, batch, k, eta, rho, gamma, T = args[:10]
    a_rep, s_rep, h, h_stride, b, e, bal, l_out, sel_out, drop_out = args[10:20]
    record, snapshot, rec_scores, r_out, beta_out, rb_out = args[20:]
    rs = r[lo:hi].copy()
    bs = beta[lo:hi].copy()
    ms = mom[lo:hi].copy()
    vs = vel[lo:hi].copy()
    rbs = rb[lo:hi].copy()
    cts = ctl[lo:hi].copy()
    sts = states[lo:hi].copy()
    n = rs.shape[1]
    work = topk_work(n, k)
    w, first, counts = work[0], work[2], work[3]
    zsel = np.empty(n)
    p = np.empty(n)
    g = np.empty(n)
    dlt = np.empty(n)
    drive = np.empty(n)
    xbuf = np.empty(n)
    zlog = np.empty(n)
    zeros = np.zeros(n)
    best = np.empty(k, dtype=np.int64)
    mode = int(bal[BAL_MODE])
    has_grad = bal[BAL_GRAD] > 0.0
    adam = bal[BAL_ADAM] > 0.0
    lr = bal[BAL_LR]
    b1, b2, aeps, floor2 = bal[BAL_B1], bal[BAL_B2], bal[BAL_EPS], bal[BAL_FLOOR] ** 2
    decay = 1.0 - eta * gamma
    gki = np.zeros(hi - lo)
    gkp = np.zeros(hi - lo)
    if mode == 6:
        for i in range(hi - lo):
            sc = s_rep[lo + i]
            gc = _control_gain(sc, a_rep[lo + i], rho, eta, gamma, T, rs.shape[1], bal)
            gki[i] = gc * bal[BAL_KI] * sc
            gkp[i] = gc * bal[BAL_KP] * sc
    c_beta, c_bmax = bal[BAL_CBETA], bal[BAL_BMAX]
    c_scale = n / (k * batch)
    inv_t = 1.0 / T
    inv_n = 1.0 / n
    inv_kb = 1.0 / (k * batch)
    inv_rec = 1.0 / record_every
    for step in range(n0, n1):
        update = step < steps
        if snapshot:
            rec_now = record and step % record_every == 0
            j = step // record_every
        else:
            rec_now = record
            j = step // record_every
        hn = h[(step - n0) * h_stride] if update else 0.0
        for m in range(n):
            drive[m] = b[m] + hn * e[m]
        if adam and update:
            c1 = 1.0 / (1.0 - b1 ** (step + 1))
            c2 = 1.0 / (1.0 - b2 ** (step + 1))
        else:
            c1 = c2 = 1.0
        for i in range(hi - lo):
            ri = rs[i]
            bi = bs[i]
            sc = s_rep[lo + i]
            an = a_rep[lo + i]
            # 1. selection (softmax: the scores themselves, no copy)
            zs = ri
            zmax = 0.0
            if mode == 1:
                zs = zsel
                for m in range(n):
                    zsel[m] = ri[m] + bi[m]
            elif mode == 2:
                zs = zsel
                for m in range(n):
                    zsel[m] = ri[m] - T * bi[m]
            elif mode == 6:
                zs = zsel
                for m in range(n):
                    zsel[m] = ri[m] + T * bi[m]
            if mode == 4:
                cap_ec = math.ceil(bal[BAL_EC] * sc * k * batch * inv_n - 1e-12)
                cap_ec = min(cap_ec, batch)
                for m in range(n):
                    counts[m] = cap_ec
                    first[m] = 0
            elif mode == 5:
                for m in range(n):
                    zlog[m] = zs[m] * inv_t
                _noisy_counts(
                    sts,
                    i,
                    zlog,
                    batch,
                    k,
                    bal[BAL_SIGMA] * sc,
                    min(bal[BAL_JITTER] * sc, 0.999),
                    counts,
                    first,
                    xbuf,
                    best,
                )
            elif mode == 3:
                # Sinkhorn in the score model: the selection ignores the scores
                for m in range(n):
                    w[m] = 1.0
                topk_counts(sts, i, zeros, batch, k, inv_t, work)
            else:
                zmax = zs[0]
                for m in range(1, n):
                    zmax = max(zmax, zs[m])
                for m in range(n):
                    w[m] = math.exp((zs[m] - zmax) * inv_t)
                topk_counts(sts, i, zs, batch, k, inv_t, work)
            # 3. gradient schemes
            if has_grad and update:
                if mode == 0:
                    # the selection weights are the router's own: exp((r - max r) / T)
                    rmax = zmax
                    tot = 0.0
                    for m in range(n):
                        tot += w[m]
                    inv_tot = 1.0 / tot
                    for m in range(n):
                        p[m] = w[m] * inv_tot
                else:
                    rmax = ri[0]
                    for m in range(1, n):
                        rmax = max(rmax, ri[m])
                    tot = 0.0
                    for m in range(n):
                        p[m] = math.exp((ri[m] - rmax) * inv_t)
                        tot += p[m]
                    for m in range(n):
                        p[m] /= tot
                aux = bal[BAL_AUX] * sc * inv_t
                zc = 2.0 * bal[BAL_Z] * sc * inv_t
                wi = 2.0 * bal[BAL_IMP] * sc * n * inv_t
                s_fp = 0.0
                s_pv = 0.0
                if aux > 0.0:
                    use_first = bal[BAL_AUX_FIRST] > 0.0
                    for m in range(n):
                        fm = (first[m] if use_first else counts[m]) / batch
                        g[m] = fm
                        s_fp += fm * p[m]
                if wi > 0.0:
                    for m in range(n):
                        s_pv += p[m] * (p[m] - inv_n)
                zl = zc * (rmax * inv_t + math.log(tot)) if zc > 0.0 else 0.0
                for m in range(n):
                    gm = zl * p[m]
                    if aux > 0.0:
                        gm += aux * p[m] * (g[m] - s_fp)
                    if wi > 0.0:
                        gm += wi * p[m] * ((p[m] - inv_n) - s_pv)
                    if adam:
                        mm = b1 * ms[i, m] + (1.0 - b1) * gm
                        vv = b2 * vs[i, m] + (1.0 - b2) * (gm * gm + floor2)
                        ms[i, m] = mm
                        vs[i, m] = vv
                        dlt[m] = -lr * (mm * c1) / (math.sqrt(vv * c2) + aeps)
                    else:
                        dlt[m] = -lr * gm
            # 2 and 4: capacity, records (snapshots: the batch of this step and the state it
            # was drawn from), the router update, in one pass
            cap = bal[BAL_CAP] * sc
            cmax = math.ceil(cap * k * batch * inv_n - 1e-12) if cap > 0.0 else batch + 1
            dropped = 0.0
            for m in range(n):
                c = counts[m]
                if c > cmax:
                    dropped += c - cmax
                    c = cmax
                lm = c * inv_kb if k > 1 else c / batch
                if rec_now:
                    sm = counts[m] * inv_kb if k > 1 else counts[m] / batch
                    if snapshot:
                        l_out[lo + i, j, m] = lm
                        sel_out[lo + i, j, m] = sm
                        if rec_scores:
                            r_out[lo + i, j, m] = ri[m]
                            beta_out[lo + i, j, m] = bi[m]
                            rb_out[lo + i, j, m] = rbs[i, m]
                    else:
                        l_out[lo + i, j, m] += lm * inv_rec
                        sel_out[lo + i, j, m] += sm * inv_rec
                if update:
                    ri[m] = decay * ri[m] + eta * (an * lm - rho * (lm - inv_n) + drive[m])
                    if has_grad:
                        ri[m] += dlt[m]
                        rbs[i, m] = decay * rbs[i, m] + dlt[m]
            if rec_now:
                if snapshot:
                    drop_out[lo + i, j] = dropped * inv_kb
                else:
                    drop_out[lo + i, j] += dropped * inv_kb * inv_rec
            if not update:
                continue
            # 5. selection biases
            if mode == 1:
                u = bal[BAL_U] * sc
                # the counts of a batch sum to k B: their mean is k B / N
                mean_c = k * batch * inv_n
                dsum = 0.0
                for m in range(n):
                    diff = mean_c - counts[m]
                    dm = u if diff > 0.0 else (-u if diff < 0.0 else 0.0)
                    bi[m] += dm
                    dsum += dm
                if bal[BAL_CENTRED] > 0.0:
                    centre = dsum * inv_n
                    for m in range(n):
                        bi[m] -= centre
            elif mode == 6:
                _control_update(bi, cts, i, counts, c_scale, gki[i], gkp[i], c_beta, c_bmax)
            elif mode == 2:
                ema = bal[BAL_EMA]
                zbar = 0.0
                for m in range(n):
                    zbar += ri[m]
                zbar *= inv_n
                bbar = 0.0
                for m in range(n):
                    bi[m] = ema * bi[m] + (1.0 - ema) * (ri[m] - zbar) * inv_t
                    bbar += bi[m]
                bbar *= inv_n
                for m in range(n):
                    bi[m] -= bbar
            if rec_scores and not snapshot:
                last = (step + 1) % record_every == 0 or step + 1 == steps
                if last:
                    for m in range(n):
                        r_out[lo + i, j, m] = ri[m]
                        beta_out[lo + i, j, m] = bi[m]
                        rb_out[lo + i, j, m] = rbs[i, m]
    r[lo:hi] = rs
    beta[lo:hi] = bs
    mom[lo:hi] = ms
    vel[lo:hi] = vs
    rb[lo:hi] = rbs
    ctl[lo:hi] = cts
    states[lo:hi] = sts


# Arguments: one flat tuple (numba's parallel loops take no nested tuples)
#   (n0, n1, steps, record_every, batch, k, eta, rho, gamma, T,
#    a_rep, s_rep, h, h_stride, b, e, bal, l_out, sel_out, drop_out,
#    record, snapshot, rec_scores, r_out, beta_out, rb_out)


@njit(cache=True)
def balanced_chunk(r, beta, mom, vel, rb, ctl, states, args, blocks):
    """Steps ``n0 <= n < n1`` of the balanced router for every replica (serial), in place on the
    state arrays (all ``(runs, N)``; ``ctl``: ``(runs, 2, N)``) and ``states`` (``(runs, 4)``)."""
    runs = r.shape[0]
    for blk in range(blocks):
        lo, hi = blk * runs // blocks, (blk + 1) * runs // blocks
        _balanced_block(r, beta, mom, vel, rb, ctl, states, lo, hi, args)


@njit(cache=True, parallel=True)
def balanced_chunk_parallel(r, beta, mom, vel, rb, ctl, states, args, blocks):
    """:func:`balanced_chunk` with the replica blocks spread over numba's threads."""
    runs = r.shape[0]
    for blk in prange(blocks):
        lo, hi = blk * runs // blocks, (blk + 1) * runs // blocks
        _balanced_block(r, beta, mom, vel, rb, ctl, states, lo, hi, args)
