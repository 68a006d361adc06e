"""Top-k inclusion probabilities ``pi_i(r)`` and their Jacobian: the loads of the top-k router
(see :mod:`moebif.model.topk` for the model and the derivation).

Each token picks ``k`` distinct experts by Gumbel-top-k of ``z = r / T`` (Plackett-Luce without
replacement from ``softmax(r / T)``); ``pi_i`` is the probability that expert ``i`` is among them,

    pi_i = int_0^inf w_i e^{-w_i t} P(C_{-i}(t) <= k - 1) dt,    w_j = e^{z_j},

with ``C_{-i}(t)`` the Poisson-binomial count of the other experts whose exponential clocks rang
before ``t``. Computed exactly by enumeration of the ordered picks (``N <= 16``) or by the
trapezoidal rule in ``u = log t`` (geometric convergence), with positive-term recursions only.
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
    """Trapezoid nodes t = e^u covering the integrand's mass (see the module docstring)."""
    ws = np.sort(w)[::-1]
    lo = math.log(1e-18 / ws.sum())
    hi = math.log(60.0 / ws[min(k, w.size) - 1])
    m = int(math.ceil((hi - lo) / du))
    return np.exp(lo + du * np.arange(m + 1))


def _pb_prefix(q: np.ndarray, k: int) -> np.ndarray:
    """``P(count of Bernoulli(q_0..q_{j-1}) = c)`` for ``c < k``: shape ``(N + 1, Q, k)``.
    ``q`` has shape ``(N, Q)``; counts ``>= k`` are dropped (not needed)."""
    n, nq = q.shape
    out = np.zeros((n + 1, nq, k))
    out[0, :, 0] = 1.0
    for j in range(n):
        prev = out[j]
        cur = out[j + 1]
        cur[:] = prev * (1.0 - q[j])[:, None]
        cur[:, 1:] += prev[:, :-1] * q[j][:, None]
    return out


def _race(w: np.ndarray, k: int, du: float = RACE_STEP):
    """Nodes, their Bernoulli probabilities, and P(C_{-i}(t) = c) for c < k: ``(N, Q, k)``."""
    t = race_nodes(w, k, du)
    wt = w[:, None] * t[None, :]
    q = -np.expm1(-wt)  # 1 - e^{-w t}, accurate for small w t
    pre = _pb_prefix(q, k)
    suf = _pb_prefix(q[::-1], k)[::-1]  # suf[j]: experts j..N-1
    n = w.size
    loo = np.empty((n, t.size, k))
    for c in range(k):
        # P(C_{-i} = c) = sum_{a+b=c} pre[i][a] suf[i+1][b]
        loo[:, :, c] = np.einsum("iqa,iqa->iq", pre[:n, :, : c + 1], suf[1:, :, c::-1])
    return t, wt, loo


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
    t, wt, loo = _race(w, k)
    cdf = loo.sum(axis=2)  # P(C_{-i} <= k - 1)
    # integrand in u = log t: w_i t e^{-w_i t} P(C_{-i}(t) <= k - 1)
    g = wt * np.exp(-wt) * cdf
    du = math.log(t[1] / t[0])
    pi = du * (g.sum(axis=1) - 0.5 * (g[:, 0] + g[:, -1]))
    return np.clip(pi, 0.0, 1.0)


def inclusion_jacobian(r, T: float, k: int) -> np.ndarray:
    """``d pi_i / d r_j``, shape ``(N, N)``, symmetric with zero row sums (see the module
    docstring); by the integral for the off-diagonal entries."""
    T = check_positive("T", T)
    w = _weights(r, T)
    n = w.size
    k = check_top_k(k, n)
    t = race_nodes(w, k, RACE_STEP)
    wt = w[:, None] * t[None, :]
    q = -np.expm1(-wt)
    du = math.log(t[1] / t[0])
    jac = np.zeros((n, n))
    if k == 2:
        # P(C_{-ij} = 1) e^{-(w_i + w_j) t} = sum_{l != i, j} A_l with
        # A_l = e^{-(W - w_l) t} - e^{-W t} (W = sum w): the leave-two-out sum in closed form,
        # every term positive, vectorised over the pairs
        W = w.sum()
        A = np.exp(-(W - w)[:, None] * t[None, :]) - np.exp(-W * t)[None, :]  # (N, Q)
        tot = A.sum(axis=0)
        g = wt[:, None, :] * wt[None, :, :] * (tot[None, None, :] - A[:, None, :] - A[None, :, :])
        integ = -du * (g.sum(axis=-1) - 0.5 * (g[..., 0] + g[..., -1]))
        jac = integ - np.diag(np.diag(integ))
        jac[np.diag_indices(n)] = -jac.sum(axis=1)
        return jac / T
    for i in range(n):
        for j in range(i + 1, n):
            keep = np.ones(n, dtype=bool)
            keep[[i, j]] = False
            pb = _pb_prefix(q[keep], k)[-1][:, k - 1]  # P(C_{-ij} = k - 1)
            g = wt[i] * wt[j] * np.exp(-(wt[i] + wt[j])) * pb
            jac[i, j] = jac[j, i] = -du * (g.sum() - 0.5 * (g[0] + g[-1]))
    jac[np.diag_indices(n)] = -jac.sum(axis=1)
    return jac / T
