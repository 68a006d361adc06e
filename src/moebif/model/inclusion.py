"""Top-k inclusion probabilities ``pi_i(r)`` and their Jacobian: the loads of the top-k router
(see :mod:`moebif.model.topk` for the model and the derivation).

Each token picks ``k`` distinct experts by Gumbel-top-k of ``z = r / T`` (Plackett-Luce without
replacement from ``softmax(r / T)``); ``pi_i`` is the probability that expert ``i`` is among them,

    pi_i = int_0^inf w_i e^{-w_i t} P(C_{-i}(t) <= k - 1) dt,    w_j = e^{z_j},

with ``C_{-i}(t)`` the Poisson-binomial count of the other experts whose exponential clocks rang
before ``t`` (Bernoulli ``q_j = 1 - a_j``, ``a_j = e^{-w_j t}``). The Jacobian (eq. 8k's,
symmetric: ``pi = grad_z Phi``; rows and columns sum to zero) has the off-diagonal entries

    d pi_i / d z_j = - int (w_i t a_i)(w_j t a_j) P(C_{-ij}(t) = k - 1) du,    u = log t.

**Computation.** Exactly by enumeration of the ordered picks (``N <= 16``), or by the
trapezoidal rule in ``u`` (step :data:`RACE_STEP`, geometric convergence) on the nodes of
:func:`race_nodes`, of which only a window needs the counts: below it
``P(C >= k) <= (W t)^k / k!`` is negligible (the small-t part of ``pi_i`` is the sum of
``w t e^{-w t}``, :func:`race_low_sum`), above it a Chernoff bound
``min_theta e^{theta k} prod_j (a_j + q_j e^{-theta})`` is. Per node, in O(N k):

- the *tail* experts (``rho = q / a`` with ``rho^{k-1} <= 2^7`` at every node used) have
  ``P_{-i}(c) = (P(c) - q_i P_{-i}(c - 1)) / a_i`` from the full distribution ``P`` (a product
  tree); each step multiplies earlier rounding errors by ``rho_i``, at most ``384`` ulps in all;
- the *head* (the few experts with larger odds) by prefix/suffix recursions times the tail's
  distribution, positive terms only.

The Jacobian's pairs with a tail expert ``j`` divide ``j``'s factor out of ``P_{-i}``,

    a_j P_{-ij}(k - 1) = sum_s (-rho_j)^s P_{-i}(k - 1 - s),

so all of them are one matrix product over (node, s) of ``du (w_i t a_i) P_{-i}(k-1-s)`` and
``(w_j t)(-rho_j)^s``: O(N^2 k Q) flops in BLAS for ``Q`` nodes. Pairs within the head use
prefix, middle and suffix distributions (positive terms). ``k = 1``: the softmax Jacobian.
"""

from __future__ import annotations

import math

import numpy as np

from ..params import check_positive

__all__ = [
    "RACE_STEP",
    "check_top_k",
    "inclusion_jacobian",
    "inclusion_probabilities",
    "race_low_sum",
    "race_nodes",
]

_MAX_ENUMERATE = 16
# trapezoidal step in u = log t: the integrand is analytic in the strip |Im u| < pi/2, so the
# error is ~exp(-pi^2 / h) (~1e-17 at h = 0.25); 0.2 leaves a margin
RACE_STEP = 0.2


def check_top_k(k, n: int) -> int:
    """``k`` as an int, or ``ValueError`` naming ``top_k`` unless ``1 <= k < n``."""
    if isinstance(k, bool) or not isinstance(k, int | np.integer):
        raise ValueError(f"top_k: must be an integer, got {k!r}")
    if not 1 <= k < n:
        raise ValueError(f"top_k: must be in 1..{n - 1} for {n} experts, got {k}")
    return int(k)


def _weights(r, T: float) -> np.ndarray:
    z = np.asarray(r, dtype=float) / T
    if z.ndim != 1 or not np.all(np.isfinite(z)):
        raise ValueError("r: must be a finite 1-d score vector")
    return np.exp(z - z.max())


# ----------------------------------------------------------------------------------------------
# exact enumeration


def _enumerate(w: np.ndarray, k: int) -> np.ndarray:
    """Plackett-Luce probabilities of every chosen set, level by level (sets as bitmasks)."""
    n = w.size
    level = {0: (1.0, 0.0)}  # mask -> (probability, weight of the chosen set)
    total = float(np.sum(np.sort(w)))
    for _ in range(k):
        nxt: dict[int, tuple[float, float]] = {}
        for mask, (prob, ws) in level.items():
            # remaining mass summed directly (no cancellation when the chosen set dominates)
            rest = [j for j in range(n) if not mask >> j & 1]
            rem = math.fsum(w[j] for j in rest) if ws > 0.5 * total else total - ws
            for j in rest:
                m2 = mask | (1 << j)
                pj = prob * w[j] / rem
                old = nxt.get(m2)
                nxt[m2] = (pj + old[0], ws + w[j]) if old else (pj, ws + w[j])
        level = nxt
    pi = np.zeros(n)
    for mask, (prob, _) in level.items():
        for j in range(n):
            if mask >> j & 1:
                pi[j] += prob
    return pi


# ----------------------------------------------------------------------------------------------
# the integral over the exponential race


def race_nodes(w: np.ndarray, k: int, du: float) -> np.ndarray:
    """Trapezoid nodes t = e^u covering the integrand's mass (see the module docstring):
    from ``1e-18 / sum(w)`` to ``60 / w_(k)`` (the k-th largest weight)."""
    ws = np.sort(w)[::-1]
    lo = math.log(1e-18 / ws.sum())
    hi = math.log(60.0 / ws[min(k, w.size) - 1])
    m = int(math.ceil((hi - lo) / du))
    return np.exp(lo + du * np.arange(m + 1))


def _prefix_suffix(a: np.ndarray, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Count distributions (``c < k``) of the first ``j`` and of the last ``n - j`` of ``n``
    Bernoulli(``q``) (``a = 1 - q``): ``pre[j]``, ``suf[j]``, each of shape ``(n + 1, Q, k)``.
    Both recursions run in one loop (positive terms only)."""
    n, nq = q.shape
    out = np.zeros((n + 1, 2, nq, k))  # [:, 0]: prefix; [n - j, 1]: suffix from j
    out[0, :, :, 0] = 1.0
    a2 = np.stack([a, a[::-1]], axis=1)[..., None]  # (n, 2, Q, 1)
    q2 = np.stack([q, q[::-1]], axis=1)[..., None]
    for j in range(n):
        prev, cur = out[j], out[j + 1]
        np.multiply(prev, a2[j], out=cur)
        cur[..., 1:] += prev[..., :-1] * q2[j]
    return out[:, 0], out[::-1, 1]


def _conv(x: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Truncated product of count distributions along the last axis: ``(x * y)[c]``, ``c < k``
    (fewer where both are shorter); positive terms only."""
    if x.shape[-1] > y.shape[-1]:
        x, y = y, x  # one operation per coefficient of the shorter one
    dx, dy = x.shape[-1], y.shape[-1]
    d = min(dx + dy - 1, k)
    out = np.zeros(np.broadcast_shapes(x.shape[:-1], y.shape[:-1]) + (d,))
    for c in range(min(dx, d)):
        m = min(dy, d - c)
        out[..., c : c + m] += x[..., c : c + 1] * y[..., :m]
    return out


def _pb_product(a: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """``P(count = c)``, ``c < k``, of independent Bernoulli(``q``) (``a = 1 - q``, given
    separately for accuracy): shape ``(Q, k)`` from ``(n, Q)``, by a pairwise product tree."""
    polys = np.stack([a, q], axis=-1)[..., :k] if a.shape[0] else np.ones((1, a.shape[1], 1))
    while polys.shape[0] > 1:
        if polys.shape[0] % 2:
            one = np.zeros((1,) + polys.shape[1:])
            one[..., 0] = 1.0
            polys = np.concatenate([polys, one])
        polys = _conv(polys[0::2], polys[1::2], k)
    out = np.zeros((a.shape[1], k))
    out[:, : polys.shape[-1]] = polys[0]
    return out


def _head_size(w_sorted: np.ndarray, t_max: float, k: int) -> int:
    """Number of experts (weights sorted in decreasing order) with ``rho^(k-1) > 2^7`` at the
    last node (``rho = e^{w t} - 1``, the odds that an expert's clock has rung): the *head*.
    Dividing a factor ``a + q x`` out of a count distribution amplifies its rounding errors by
    at most ``(1 + rho) rho^(k-1)``, so a tail expert is divided out (<= 384 ulps) and the head
    gets positive-term recursions."""
    if k == 1:
        return 0  # P_{-i}(0) = P(0) / a_i: a division, nothing amplified
    bound = math.log1p(2.0 ** (7.0 / (k - 1)))
    return int(np.searchsorted(-w_sorted * t_max, -bound, side="left"))


def _leave_one_out(ws: np.ndarray, t: np.ndarray, k: int, head: int):
    """``P(C_{-i}(t) = c)`` for ``c < k``, shape ``(N, Q, k)``, weights ``ws`` sorted in
    decreasing order. Returns it with ``a = e^{-w t}``, ``q = 1 - a`` and the prefix/suffix
    distributions of the head (for the leave-two-out of head pairs).

    The head (experts that ring with probability > 1/2 at some node) by prefix/suffix
    recursions times the tail's product; a tail expert by dividing its factor ``a + q x`` out
    of the full distribution (``P_{-i}(c) = (P(c) - q P_{-i}(c - 1)) / a``), which is stable
    for ``rho = q / a <= 1`` (the error of each step is damped by ``rho``)."""
    wt = ws[:, None] * t[None, :]
    a = np.exp(-wt)
    q = -np.expm1(-wt)
    n, nq = wt.shape
    tail = _pb_product(a[head:], q[head:], k)  # (Q, k)
    pre, suf = _prefix_suffix(a[:head], q[:head], k)  # suf[j]: head experts j..head-1
    loo = np.empty((n, nq, k))
    if head:
        loo[:head] = _conv(_conv(pre[:head], suf[1:], k), tail[None], k)
    full = _conv(pre[head], tail, k)
    if head < n:
        at, qt = a[head:], q[head:]
        prev = full[None, :, 0] / at
        loo[head:, :, 0] = prev
        for c in range(1, k):
            prev = (full[None, :, c] - qt * prev) / at
            loo[head:, :, c] = prev
        np.maximum(loo[head:], 0.0, out=loo[head:])
    return loo, wt, a, q, pre, suf, tail


_THETAS = np.array([0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0])


def _chernoff(w: np.ndarray, t: float, m: int) -> float:
    """``min_theta e^{theta m} prod_l (1 - q_l (1 - e^{-theta}))``: bounds
    ``P(C_{-S}(t) <= m - |S| - 1)`` for any set ``S`` of excluded experts (each excluded factor
    is at least ``e^{-theta}``); decreasing in ``t``."""
    q = -np.expm1(-w * t)
    logs = np.log1p(-np.outer(q, -np.expm1(-_THETAS))).sum(axis=0)
    return math.exp(min((_THETAS * m + logs).min(), 0.0))


def _last_node(w: np.ndarray, t: np.ndarray, start: int, m: int, tol: float) -> int:
    """The last node index ``>= start`` where the Chernoff bound is still ``>= tol``, by
    bisection (the bound decreases along the nodes); ``start - 1`` if none."""

    def above(i):
        return _chernoff(w, t[i], m) >= tol

    if start >= t.size or not above(start):
        return start - 1
    lo, hi = start, t.size - 1  # above(lo)
    if above(hi):
        return hi
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if above(mid):
            lo = mid
        else:
            hi = mid
    return lo


def _first_node(t: np.ndarray, W: float, power: int, factorial: int, tol: float) -> int:
    """The first node where ``(W t)^power / factorial!`` reaches ``tol`` (a bound of the
    neglected part below it)."""
    x = math.exp((math.log(tol) + math.lgamma(factorial + 1)) / power) / W
    return int(np.searchsorted(t, x, side="left"))


# neglected parts of the integrands below/above the nodes used (relative to their scale)
_TAIL = 1e-19


def _pi_window(w, t, k: int, W: float) -> tuple[int, int]:
    """Nodes ``i0..i1`` on which ``P(C_{-i} <= k - 1)`` is computed for ``pi``: below ``i0``,
    ``P(C_{-i} >= k) <= (W t)^k / k!`` is negligible (the cdf is 1); above ``i1`` the cdf is
    below its Chernoff bound, times ``W t <= W t_max`` (so the neglected part is small next to
    ``pi_i >= w_i / W``)."""
    i0 = min(_first_node(t, W, k, k, _TAIL), t.size - 1)
    return i0, _last_node(w, t, i0, k, _TAIL / (W * t[-1]))


def _jacobian_window(w, t, k: int, W: float) -> tuple[int, int]:
    """Nodes ``i0..i1`` outside of which the Jacobian's integrand
    ``(w_i t)(w_j t) e^{-(w_i + w_j) t} P(C_{-ij} = k - 1)`` is negligible: below
    ``(W t)^{k+1} / (k-1)!`` (small t) and ``e^{-2}`` times the Chernoff bound (large t)."""
    i0 = min(_first_node(t, W, k + 1, k - 1, _TAIL), t.size - 1)
    return i0, _last_node(w, t, i0, k + 1, _TAIL * math.e**2)


def race_low_sum(w, t0, du: float, m) -> np.ndarray:
    """``sum_{q < m} w t_q e^{-w t_q}`` over the nodes ``t_q = t0 e^{q du}``; ``w``, ``t0`` and
    ``m`` broadcast together. By its power series in ``w t`` (geometric sums over the nodes)
    where ``w t_m <= 1/2``, else summed node by node."""
    w, t0, m = np.broadcast_arrays(
        np.asarray(w, dtype=float), np.asarray(t0, dtype=float), np.asarray(m)
    )
    x = w * t0 * np.exp(m * du)  # w t_m, the first node not summed
    # sum_q (w t_q)^p = (x^p - (w t0)^p) / (e^{p du} - 1); the terms x^(p-1)/(p-1)! are below
    # 1e-18 by p = 17
    p = _POWERS
    xp = x[..., None] ** p - (w * t0)[..., None] ** p
    out = xp @ (_SERIES / np.expm1(p * du))
    for idx in zip(*np.nonzero(x > 0.5), strict=True):
        wt = w[idx] * t0[idx] * np.exp(du * np.arange(m[idx]))
        out[idx] = (wt * np.exp(-wt)).sum()
    return np.where(m > 0, out, 0.0)


_POWERS = np.arange(1, 18)
_SERIES = np.array([(-1.0) ** (p - 1) / math.factorial(p - 1) for p in range(1, 18)])


def _probabilities_integral(w: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-w, kind="stable")
    ws = w[order]
    t = race_nodes(ws, k, RACE_STEP)
    du = math.log(t[1] / t[0])
    W = float(ws.sum())
    i0, i1 = _pi_window(ws, t, k, W)
    # trapezoid: du (sum of g - half the end values), g = w t e^{-w t} P(C_{-i} <= k - 1)
    total = race_low_sum(ws, t[0], du, i0)
    ends = np.zeros_like(ws)
    if i0 > 0:
        ends += ws * t[0] * np.exp(-ws * t[0])
    if i1 >= i0:
        tm = t[i0 : i1 + 1]
        loo, wt, a = _leave_one_out(ws, tm, k, _head_size(ws, tm[-1], k))[:3]
        g = wt * a * np.minimum(loo.sum(axis=2), 1.0)
        total += g.sum(axis=1)
        if i0 == 0:
            ends += g[:, 0]
        if i1 == t.size - 1:
            ends += g[:, -1]
    pi = np.empty_like(w)
    pi[order] = du * (total - 0.5 * ends)
    return np.clip(pi, 0.0, 1.0)


def _head_pairs(jac, du, h, a, q, pre, suf, tail, k) -> None:
    """Fill ``jac[i, j]`` (without the sign) for the pairs of head experts ``i < j``:
    ``P_{-ij} = pre_i * (head experts strictly between) * suf_{j+1} * tail`` with positive
    terms only, all pairs ``(i, i + d)`` at once for each distance ``d``."""
    head, n = h.shape[0], jac.shape[0]
    # right[j]: h_j times the distribution of the experts after j (head, then tail), reversed
    right = _conv(suf[1:], tail[None], k)[..., ::-1] * h[..., None]
    left = pre[: head - 1] * (du * h[: head - 1, :, None])  # before i, then those in (i, i + d)
    flat = jac.reshape(-1)
    for d in range(1, head):
        m = head - d
        if d > 1:
            new = left[:m] * a[d - 1 : head - 1, :, None]
            new[..., 1:] += left[:m, :, :-1] * q[d - 1 : head - 1, :, None]
            left = new
        v = np.einsum("iqc,iqc->i", left[:m], right[d:head])
        flat[d : d + m * (n + 1) : n + 1] = v  # jac[i, i + d]
        flat[d * n : d * n + m * (n + 1) : n + 1] = v  # jac[i + d, i]


def _jacobian_integral(w: np.ndarray, k: int) -> np.ndarray:
    """``d pi_i / d z_j`` for ``k >= 2`` (see :func:`inclusion_jacobian`)."""
    n = w.size
    order = np.argsort(-w, kind="stable")
    ws = w[order]
    t = race_nodes(ws, k, RACE_STEP)
    du = math.log(t[1] / t[0])
    W = float(ws.sum())
    i0, i1 = _jacobian_window(ws, t, k, W)
    jac = np.zeros((n, n))
    if i1 >= i0:
        t = t[i0 : i1 + 1]
        head = _head_size(ws, t[-1], k)
        loo, wt, a, q, pre, suf, tail = _leave_one_out(ws, t, k, head)
        h = wt * a  # w t e^{-w t}
        # pairs (i, j) with j in the tail: divide j's factor out of P_{-i} (rho_j <= 1),
        # P_{-ij}(k-1) = sum_s (-rho_j)^s P_{-i}(k-1-s) / a_j, one matrix product over (node, s)
        x = (du * h)[:, :, None] * loo[:, :, ::-1]  # (N, Q, k): P_{-i}(k-1-s)
        rho = q[head:] / a[head:]
        y = np.empty((n - head, t.size, k))
        y[:, :, 0] = wt[head:]
        for s in range(1, k):
            y[:, :, s] = -rho * y[:, :, s - 1]
        off = x.reshape(n, -1) @ y.reshape(n - head, t.size * k).T  # (N, N - head)
        jac[:, head:] = off
        jac[head:, :head] = off[:head].T
        jac[head:, head:] = 0.5 * (off[head:] + off[head:].T)
        if head > 1:
            _head_pairs(jac, du, h[:head], a[:head], q[:head], pre, suf, tail, k)
        jac = -jac
    np.fill_diagonal(jac, 0.0)
    np.fill_diagonal(jac, -jac.sum(axis=1))
    inv = np.argsort(order)
    out = jac.take(inv, axis=0).take(inv, axis=1)
    return out


def inclusion_probabilities(r, T: float, k: int, *, method: str = "auto") -> np.ndarray:
    """``pi_i(r)``: probability that expert ``i`` is among the ``k`` experts a token picks.

    **Arguments:** ``r`` scores, shape ``(N,)``; ``T`` temperature; ``k`` in ``1..N-1``;
    ``method``: ``"enumerate"`` (exact, ``N <= 16``), ``"integral"`` (1-d quadrature, any N),
    ``"auto"`` (softmax for ``k = 1``, enumeration for ``N <= 8``, else the integral).

    **Returns:** shape ``(N,)``, entries in ``[0, 1]`` summing to ``k``.
    """
    T = check_positive("T", T)
    w = _weights(r, T)
    k = check_top_k(k, w.size)
    if method not in ("auto", "enumerate", "integral"):
        raise ValueError(f"method: unknown {method!r} (enumerate, integral, auto)")
    # experts ahead of all the others by more than 700 T are picked with probability
    # 1 - O(e^-700): take them out and route the remaining slots among the others (their own
    # weights, rescaled, so nothing underflows)
    z = np.asarray(r, dtype=float) / T
    order = np.argsort(-z, kind="stable")
    gaps = z[order[:-1]] - z[order[1:]]
    sure = [j + 1 for j in range(k - 1) if gaps[j] > 700.0]
    if sure and k > 1:
        j = sure[-1]
        pi = np.zeros(w.size)
        pi[order[:j]] = 1.0
        rest = order[j:]
        if k - j >= rest.size:
            pi[rest] = 1.0
        else:
            pi[rest] = inclusion_probabilities(np.asarray(r, float)[rest], T, k - j, method=method)
        return pi
    if method == "auto":
        if k == 1:
            return w / w.sum()
        method = "enumerate" if w.size <= 8 else "integral"
    if method == "enumerate":
        if w.size > _MAX_ENUMERATE:
            raise ValueError(f"method: enumeration is for N <= {_MAX_ENUMERATE}, got N = {w.size}")
        return _enumerate(w, k)
    return _probabilities_integral(w, k)


def inclusion_jacobian(r, T: float, k: int) -> np.ndarray:
    """``d pi_i / d r_j``, shape ``(N, N)``: symmetric, rows and columns summing to zero (see
    the module docstring). ``k = 1``: the softmax Jacobian ``(diag p - p p^T) / T``; otherwise
    the off-diagonal entries by the integral, the diagonal from the zero row sums.

    **Arguments:** ``r`` scores, shape ``(N,)``; ``T`` temperature; ``k`` in ``1..N-1``.
    """
    T = check_positive("T", T)
    w = _weights(r, T)
    k = check_top_k(k, w.size)
    if k == 1:
        p = w / w.sum()
        jac = -np.outer(p, p)
        np.fill_diagonal(jac, 0.0)
        np.fill_diagonal(jac, -jac.sum(axis=1))
        return jac / T
    return _jacobian_integral(w, k) / T
