"""Random streams, exact binomial/multinomial samplers and the batch-router kernels (numba).

Imported lazily by :mod:`moebif.sim.router` (numba costs ~0.3 s to import).

**Random streams.** Every replica ``i`` of a simulation owns an xoshiro256++ generator
(Blackman & Vigna 2018) whose 256-bit state is four successive SplitMix64 outputs started from
``mix64(mix64(seed) + i * 0x9E3779B97F4A7C15)``. A replica's numbers therefore depend only on
``(seed, i)``: not on the number of replicas, the thread count, the scheduling or how the steps
are split into chunks. Uniforms are ``((x >> 11) + 1/2) 2^-53``, in the open interval (0, 1).

**Binomial(n, p).** Exact. With ``p <= 1/2`` (otherwise ``n - Binomial(n, 1 - p)``):

- ``n p < 10``: sequential inversion from 0 (expected ``n p + 1`` comparisons), restarted in the
  rare event that round-off lets the search run past ``min(n, np + 10 sqrt(npq + 1))``;
- ``n p >= 10``: BTRD, transformed rejection with decomposition (W. Hoermann, "The generation
  of binomial random variates", J. Statist. Comput. Simul. 46 (1993) 101-110). Most draws
  (``0.86 v_r``: 70-80% for ``npq`` from 10^2 to 10^4) are accepted in the first step with one
  uniform and no transcendental function; about 1.15 uniforms a draw on average.

**Multinomial(n, p)** by conditional binomials, ``N_j ~ Binomial(n - sum_{i<j} N_i,
p_j / sum_{i>=j} p_i)``, with the suffix sums formed by addition (no cancellation).

**Kernels.** The batch router (Kiselev 2026, sec. 8) for a chunk of steps ``n0 <= n < n1``,
in place on the scores and the generator states; the serial and the ``prange`` kernels run the
very same per-block function, so they agree bit for bit. All functions use numba's
``error_model="numpy"`` (no zero-division checks: a division by zero can only occur in values
that are discarded).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

__all__ = [
    "binomial_sample",
    "multinomial_sample",
    "n_expert_chunk",
    "n_expert_chunk_parallel",
    "seed_streams",
    "two_expert_chunk",
    "two_expert_chunk_parallel",
    "uniform_sample",
]

_U64 = np.uint64
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_TWO_M53 = 1.0 / 9007199254740992.0  # 2^-53

# f_c(k) = log k! - (k + 1/2) log(k + 1) + (k + 1) - log sqrt(2 pi), k = 0..9 (mpmath, 40 digits)
_FC = np.array(
    [
        0.08106146679532726,
        0.0413406959554093,
        0.02767792568499834,
        0.020790672103765093,
        0.016644691189821193,
        0.013876128823070748,
        0.01189670994589177,
        0.010411265261972096,
        0.009255462182712733,
        0.00833056343336287,
    ]
)


# ----------------------------------------------------------------------------------------------
# SplitMix64 seeding and xoshiro256++


@njit(cache=True, error_model="numpy")
def _mix64(z):
    z = (z ^ (z >> _U64(30))) * _MIX1
    z = (z ^ (z >> _U64(27))) * _MIX2
    return z ^ (z >> _U64(31))


@njit(cache=True, error_model="numpy")
def seed_streams(seed, first, count):
    """xoshiro256++ states of replicas ``first .. first + count - 1``, shape ``(count, 4)``."""
    out = np.empty((count, 4), dtype=np.uint64)
    key = _mix64(_U64(seed))
    for i in range(count):
        x = _mix64(key + _U64(first + i) * _GOLDEN)
        for j in range(4):
            x = x + _GOLDEN
            out[i, j] = _mix64(x)
        if out[i, 0] == 0 and out[i, 1] == 0 and out[i, 2] == 0 and out[i, 3] == 0:
            out[i, 0] = _U64(1)  # the one forbidden state (probability 2^-256)
    return out


@njit(cache=True, error_model="numpy")
def _rotl(x, k):
    return (x << _U64(k)) | (x >> _U64(64 - k))


@njit(cache=True, error_model="numpy")
def _next_u64(st, i):
    """Next output of the xoshiro256++ generator whose state is row ``i`` of ``st``."""
    s0, s1, s2, s3 = st[i, 0], st[i, 1], st[i, 2], st[i, 3]
    result = _rotl(s0 + s3, 23) + s0
    t = s1 << _U64(17)
    s2 ^= s0
    s3 ^= s1
    s1 ^= s2
    s0 ^= s3
    s2 ^= t
    s3 = _rotl(s3, 45)
    st[i, 0], st[i, 1], st[i, 2], st[i, 3] = s0, s1, s2, s3
    return result


@njit(cache=True, error_model="numpy")
def draw_uniform(st, i):
    """A uniform double in the open interval (0, 1) from stream ``i``."""
    # the top 53 bits fit an int64: its conversion is cheaper than the unsigned one
    return (float(np.int64(_next_u64(st, i) >> _U64(11))) + 0.5) * _TWO_M53


# ----------------------------------------------------------------------------------------------
# binomial: inversion and BTRD


@njit(cache=True, error_model="numpy")
def _fc(k):
    """Stirling-series correction ``log k! - [(k + 1/2) log(k + 1) - (k + 1) + log sqrt(2 pi)]``."""
    if k <= 9:
        return _FC[k]
    r = 1.0 / (k + 1.0)
    r2 = r * r
    return (1.0 / 12.0 - (1.0 / 360.0 - r2 / 1260.0) * r2) * r


@njit(cache=True, error_model="numpy")
def _binomial_inversion(st, i, n, p, q, u):
    # sequential search from 0 with the pmf recursion f(x) = f(x-1) ((n + 1) r / x - r);
    # `u` is the first uniform, later attempts (after a round-off overrun) draw their own
    r = p / q
    g = r * (n + 1.0)
    qn = math.exp(n * math.log1p(-p))
    bound = min(float(n), math.floor(n * p + 10.0 * math.sqrt(n * p * q + 1.0)))
    while True:
        x = 0
        px = qn
        ok = True
        while u > px:
            x += 1
            if x > bound:
                ok = False
                break
            u -= px
            px *= g / x - r
        if ok:
            return x
        u = draw_uniform(st, i)


@njit(cache=True, error_model="numpy")
def _btrd_box(n, p, q):
    """BTRD set-up needed by step 1: ``(sqrt(npq), a, b, c, v_r)``."""
    spq = math.sqrt(n * p * q)
    b = 1.15 + 2.53 * spq
    a = -0.0873 + 0.0248 * b + 0.01 * p
    c = n * p + 0.5
    vr = 0.92 - 4.2 / b
    return spq, a, b, c, vr


@njit(cache=True, error_model="numpy")
def _btrd_step1(v, a, b, c, vr):
    """BTRD step 1: the variate (as a float) for a uniform ``v <= 0.86 v_r`` in the inner box."""
    u = v / vr - 0.43
    return math.floor((2.0 * a / (0.5 - abs(u)) + b) * u + c)


@njit(cache=True, error_model="numpy")
def _btrd(st, i, n, p, q, v):
    # Hoermann (1993), algorithm BTRD; requires p <= 1/2 and n p >= 10; `v` is the first
    # uniform. The constants needed only after step 1 are formed on the first visit of step 2.
    spq, a, b, c, vr = _btrd_box(n, p, q)
    urvr = 0.86 * vr
    m = -1
    r = nr = npq = alpha = 0.0
    first = True
    while True:
        # step 1: the box inside the hat, accepted without evaluating the pmf
        if not first:
            v = draw_uniform(st, i)
        first = False
        if v <= urvr:
            return int(_btrd_step1(v, a, b, c, vr))
        if m < 0:
            m = int(math.floor((n + 1.0) * p))
            r = p / q
            nr = (n + 1.0) * r
            npq = n * p * q
            alpha = (2.83 + 5.1 / b) * spq
        # step 2: the rest of the hat
        if v >= vr:
            u = draw_uniform(st, i) - 0.5
        else:
            u = v / vr - 0.93
            u = math.copysign(0.5, u) - u
            v = draw_uniform(st, i) * vr
        # step 3.0
        us = 0.5 - abs(u)
        if us <= 0.0:
            continue
        kf = math.floor((2.0 * a / us + b) * u + c)
        if kf < 0.0 or kf > n:
            continue
        k = int(kf)
        v = v * alpha / (a / (us * us) + b)
        km = abs(k - m)
        if km <= 15:
            # step 3.1: f(k) / f(m) by the recursion of the pmf
            f = 1.0
            if m < k:
                for j in range(m + 1, k + 1):
                    f *= nr / j - r
            elif m > k:
                for j in range(k + 1, m + 1):
                    v *= nr / j - r
            if v <= f:
                return k
            continue
        # step 3.2: squeeze on log f(k) / f(m)
        v = math.log(v)
        kmf = float(km)
        rho = (kmf / npq) * (((kmf / 3.0 + 0.625) * kmf + 1.0 / 6.0) / npq + 0.5)
        t = -kmf * kmf / (2.0 * npq)
        if v < t - rho:
            return k
        if v > t + rho:
            continue
        # steps 3.3-3.4: final acceptance with Stirling's formula
        nm = n - m + 1.0
        h = (m + 0.5) * math.log((m + 1.0) / (r * nm)) + _fc(m) + _fc(n - m)
        nk = n - k + 1.0
        if v <= (
            h
            + (n + 1.0) * math.log(nm / nk)
            + (k + 0.5) * math.log(nk * r / (k + 1.0))
            - _fc(k)
            - _fc(n - k)
        ):
            return k


@njit(cache=True, error_model="numpy")
def _binomial_small_from(st, i, n, p, q, u):
    """Binomial(n, p) for ``p <= 1/2`` given its first uniform ``u`` (drawn by the caller)."""
    if n <= 0 or not p > 0.0:  # also p = NaN: never loop on a NaN
        return 0
    if n == 1:
        return 1 if u < p else 0
    if n * p < 10.0:
        return _binomial_inversion(st, i, n, p, q, u)
    return _btrd(st, i, n, p, q, u)


@njit(cache=True, error_model="numpy")
def _binomial_small(st, i, n, p, q):
    """Binomial(n, p) for ``p <= 1/2``; ``q = 1 - p`` passed in so it keeps its accuracy.

    Every draw starts with one uniform (used by all three methods), so that the router kernel
    can draw it, and finish BTRD's step 1, for a whole block of replicas without branching.
    """
    return _binomial_small_from(st, i, n, p, q, draw_uniform(st, i))


@njit(cache=True, error_model="numpy")
def _binomial_pq(st, i, n, p, q):
    """Binomial(n, p) with both ``p`` and ``q = 1 - p`` given accurately."""
    if p <= q:
        return _binomial_small(st, i, n, p, q)
    return n - _binomial_small(st, i, n, q, p)


@njit(cache=True, error_model="numpy")
def draw_multinomial(st, i, n, w, suffix, out):
    """Multinomial(n, w / sum(w)) into ``out`` (shape ``(N,)``); ``w >= 0`` need not sum to 1.

    ``suffix`` is a work array of shape ``(N + 1,)``.
    """
    k = w.size
    suffix[k] = 0.0
    for j in range(k - 1, -1, -1):
        suffix[j] = suffix[j + 1] + w[j]
    rem = n
    for j in range(k - 1):
        if rem == 0:
            out[j] = 0
            continue
        s = suffix[j]
        x = _binomial_pq(st, i, rem, w[j] / s, suffix[j + 1] / s)
        out[j] = x
        rem -= x
    out[k - 1] = rem


# ----------------------------------------------------------------------------------------------
# samplers exposed for the tests and the benchmark (one stream, replica 0 of `seed`)


@njit(cache=True, error_model="numpy")
def uniform_sample(size, seed):
    """``size`` uniforms of (0, 1) from the stream of replica 0 of ``seed``."""
    st = seed_streams(seed, 0, 1)
    out = np.empty(size)
    for j in range(size):
        out[j] = draw_uniform(st, 0)
    return out


@njit(cache=True, error_model="numpy")
def binomial_sample(n, p, size, seed):
    """``size`` draws of Binomial(n, p), int64, from the stream of replica 0 of ``seed``."""
    st = seed_streams(seed, 0, 1)
    out = np.empty(size, dtype=np.int64)
    q = 1.0 - p
    for j in range(size):
        out[j] = _binomial_pq(st, 0, n, p, q)
    return out


@njit(cache=True, error_model="numpy")
def multinomial_sample(n, pvals, size, seed):
    """``size`` draws of Multinomial(n, pvals), shape ``(size, N)``, int64."""
    st = seed_streams(seed, 0, 1)
    k = pvals.size
    out = np.empty((size, k), dtype=np.int64)
    suffix = np.empty(k + 1)
    counts = np.empty(k, dtype=np.int64)
    for j in range(size):
        draw_multinomial(st, 0, n, pvals, suffix, counts)
        out[j, :] = counts
    return out


# ----------------------------------------------------------------------------------------------
# Kernels. Replicas are processed in blocks: within a block the loop over steps is outside the
# loop over replicas, so the out-of-order core overlaps the (long, serial) dependency chains
# y_n -> p -> N1 -> y_{n+1} of neighbouring replicas. Each block works on private copies of
# its scores and generator states (no false sharing between threads) and writes them back.
# Blocks only reorder independent work: every replica's arithmetic is the same whatever the
# blocking, so results do not depend on it.
#
# The two-expert kernel goes further and splits each step in two passes over the block: a
# branch-free pass (softmax, first uniform, BTRD set-up and step 1) that the core pipelines
# freely, then a pass that finishes the ~25% of draws step 1 did not settle. Mispredicted
# branches, which flush the pipeline, are thus confined to the draws that need them; this is
# worth ~30% over one replica at a time, and the random streams are consumed exactly as by
# _binomial_small, one replica at a time.
#
# Arguments shared by the kernels:
#   span = (n0, n1, steps, record_every): run steps n0 <= n < n1 of a run of `steps` updates;
#       step n draws a batch from the current state, records it when n % record_every == 0
#       (record index n // record_every), then updates the state unless n == steps (the final
#       record, drawn at the last state);
#   h, h_stride: the skew of steps n0, n0 + 1, ... (h_stride = 1) or a constant (h_stride = 0);
#   blocks: number of replica blocks (any value gives the same result).


@njit(cache=True, error_model="numpy")
def _two_expert_block(y, states, lo, hi, span, batch, model, h, h_stride, u_out, y_out, rec_y):
    n0, n1, steps, record_every = span
    eta, a_eff, gamma, T = model
    ys = y[lo:hi].copy()
    sts = states[lo:hi].copy()
    size = hi - lo
    # per-replica values passed from the branch-free pass to the finishing pass
    pmin = np.empty(size)
    pmax = np.empty(size)
    first_u = np.empty(size)
    box = np.empty(size)
    done = np.empty(size, dtype=np.bool_)
    decay = 1.0 - eta * gamma
    ka = 2.0 * eta * a_eff / batch  # eta a_eff u_hat = ka N1 + kc
    kc = -eta * a_eff
    inv_t = 1.0 / T
    phase = n0 % record_every  # steps since the last record
    for n in range(n0, n1):
        # pass 1, without branches: p1 = 1 / (1 + e^-z) as the smaller of p1, p2 (no overflow),
        # the first uniform of each draw and BTRD's step 1, which settles most draws
        for i in range(size):
            z = ys[i] * inv_t
            e = math.exp(-abs(z))
            s = 1.0 / (1.0 + e)
            p = e * s
            v = draw_uniform(sts, i)
            _, a, b, c, vr = _btrd_box(batch, p, s)
            pmin[i] = p
            pmax[i] = s
            first_u[i] = v
            box[i] = _btrd_step1(v, a, b, c, vr)
            done[i] = (batch * p >= 10.0) & (v <= 0.86 * vr)
        # pass 2: finish the other draws (the same algorithm as _binomial_small), record, update
        record = phase == 0
        j = n // record_every
        update = n < steps
        drive = kc + eta * h[(n - n0) * h_stride] if update else 0.0
        for i in range(size):
            if done[i]:
                k = int(box[i])
            else:
                k = _binomial_small_from(sts, i, batch, pmin[i], pmax[i], first_u[i])
            yi = ys[i]
            c1 = batch - k if yi > 0.0 else k
            if record:
                u_out[lo + i, j] = (2.0 * c1 - batch) / batch
                if rec_y:
                    y_out[lo + i, j] = yi
            if update:
                ys[i] = decay * yi + (ka * c1 + drive)
        phase += 1
        if phase == record_every:
            phase = 0
    y[lo:hi] = ys
    states[lo:hi] = sts


@njit(cache=True, error_model="numpy")
def two_expert_chunk(y, states, span, batch, model, h, h_stride, u_out, y_out, rec_y, blocks):
    """Two-expert batch router, serial: ``y <- y + eta (a_eff u_hat - gamma y + h_n)``.

    ``y`` (runs,) and ``states`` (runs, 4) are updated in place; ``model = (eta, a_eff, gamma,
    T)``. Step ``n`` draws ``N1 ~ Binomial(B, 1 / (1 + exp(-y_n / T)))`` and records
    ``u_hat = (2 N1 - B) / B`` in ``u_out[:, n // record_every]`` (and ``y_n`` in ``y_out`` if
    ``rec_y``). See the comment above for ``span``, ``h``, ``h_stride``, ``blocks``.
    """
    runs = y.size
    for b in range(blocks):
        lo, hi = b * runs // blocks, (b + 1) * runs // blocks
        _two_expert_block(y, states, lo, hi, span, batch, model, h, h_stride, u_out, y_out, rec_y)


@njit(cache=True, parallel=True, error_model="numpy")
def two_expert_chunk_parallel(
    y, states, span, batch, model, h, h_stride, u_out, y_out, rec_y, blocks
):
    """:func:`two_expert_chunk` with the blocks spread over numba's threads (``prange``)."""
    runs = y.size
    for b in prange(blocks):
        lo, hi = b * runs // blocks, (b + 1) * runs // blocks
        _two_expert_block(y, states, lo, hi, span, batch, model, h, h_stride, u_out, y_out, rec_y)


# ----------------------------------------------------------------------------------------------
# N experts: r_i <- r_i + eta (a l_i - rho (l_i - 1/N) - gamma r_i + b_i),  l = N / B


@njit(cache=True, error_model="numpy")
def _n_expert_block(r, states, lo, hi, span, batch, model, b, h, h_stride, l_out, r_out, rec_r):
    n0, n1, steps, record_every = span
    eta, a, rho, gamma, T = model
    use_h = h.size > 0
    rs = r[lo:hi].copy()
    sts = states[lo:hi].copy()
    k = rs.shape[1]
    w = np.empty(k)
    suffix = np.empty(k + 1)
    counts = np.empty(k, dtype=np.int64)
    drive = b.copy()
    decay = 1.0 - eta * gamma
    inv_t = 1.0 / T
    inv_n = 1.0 / k
    phase = n0 % record_every
    for n in range(n0, n1):
        record = phase == 0
        j = n // record_every
        update = n < steps
        if update and use_h:
            hn = h[(n - n0) * h_stride]
            drive[0] = 0.5 * hn
            drive[1] = -0.5 * hn
        for i in range(hi - lo):
            ri = rs[i]
            rmax = ri[0]
            for m in range(1, k):
                rmax = max(rmax, ri[m])
            # log-sum-exp softmax: the largest weight is exactly 1
            for m in range(k):
                w[m] = math.exp((ri[m] - rmax) * inv_t)
            draw_multinomial(sts, i, batch, w, suffix, counts)
            if record:
                for m in range(k):
                    l_out[lo + i, j, m] = counts[m] / batch
                    if rec_r:
                        r_out[lo + i, j, m] = ri[m]
            if update:
                for m in range(k):
                    lm = counts[m] / batch
                    ri[m] = decay * ri[m] + eta * (a * lm - rho * (lm - inv_n) + drive[m])
        phase += 1
        if phase == record_every:
            phase = 0
    r[lo:hi] = rs
    states[lo:hi] = sts


@njit(cache=True, error_model="numpy")
def n_expert_chunk(r, states, span, batch, model, b, h, h_stride, l_out, r_out, rec_r, blocks):
    """N-expert batch router, serial; ``r`` (runs, N) and ``states`` updated in place.

    ``model = (eta, a, rho, gamma, T)``. Step ``n`` draws the counts ``~ Multinomial(B,
    softmax(r_n / T))`` and records the loads in ``l_out[:, n // record_every, :]`` (and ``r_n``
    in ``r_out`` if ``rec_r``). The drift is ``b``, or ``(h_n/2, -h_n/2, b_3, ...)`` when ``h``
    is given (non-empty); pass an empty ``h`` for a constant drift.
    """
    runs = r.shape[0]
    for blk in range(blocks):
        lo, hi = blk * runs // blocks, (blk + 1) * runs // blocks
        _n_expert_block(r, states, lo, hi, span, batch, model, b, h, h_stride, l_out, r_out, rec_r)


@njit(cache=True, parallel=True, error_model="numpy")
def n_expert_chunk_parallel(
    r, states, span, batch, model, b, h, h_stride, l_out, r_out, rec_r, blocks
):
    """:func:`n_expert_chunk` with the blocks spread over numba's threads (``prange``)."""
    runs = r.shape[0]
    for blk in prange(blocks):
        lo, hi = blk * runs // blocks, (blk + 1) * runs // blocks
        _n_expert_block(r, states, lo, hi, span, batch, model, b, h, h_stride, l_out, r_out, rec_r)
