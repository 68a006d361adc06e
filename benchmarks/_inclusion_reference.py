"""The inclusion probabilities and Jacobian as moebif computed them before the vectorised
version (``src/moebif/model/inclusion.py`` at commit f776314), kept as the reference that the
benchmark (``bench_inclusion.py``) times and the tests (``tests/model/test_inclusion.py``)
compare against: O(N) Python steps per leave-one-out distribution, O(N^3) for the Jacobian.

Not part of the package: a private copy, so the old code is not in ``src``.
"""

from __future__ import annotations

import math

import numpy as np

RACE_STEP = 0.2


def _weights(r, T: float) -> np.ndarray:
    z = np.asarray(r, dtype=float) / T
    return np.exp(z - z.max())


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


def probabilities(r, T: float, k: int) -> np.ndarray:
    """The old ``inclusion_probabilities(r, T, k, method="integral")`` (no softmax shortcut, no
    split of sure winners: the cases compared have no score gaps beyond 700 T)."""
    w = _weights(r, T)
    t, wt, loo = _race(w, k)
    cdf = loo.sum(axis=2)  # P(C_{-i} <= k - 1)
    # integrand in u = log t: w_i t e^{-w_i t} P(C_{-i}(t) <= k - 1)
    g = wt * np.exp(-wt) * cdf
    du = math.log(t[1] / t[0])
    pi = du * (g.sum(axis=1) - 0.5 * (g[:, 0] + g[:, -1]))
    return np.clip(pi, 0.0, 1.0)


def jacobian(r, T: float, k: int, *, pair_loop: bool = False) -> np.ndarray:
    """``d pi_i / d r_j``, shape ``(N, N)``, symmetric with zero row sums (see the module
    docstring); by the integral for the off-diagonal entries.

    ``pair_loop``: use the loop over pairs for ``k = 2`` too (the old closed form for ``k = 2``,
    ``e^{-(W - w_l) t} - e^{-W t}``, loses every digit when one expert holds all but ~1e-8 of
    the weight: ``W - w_l`` cancels)."""
    w = _weights(r, T)
    n = w.size
    t = race_nodes(w, k, RACE_STEP)
    wt = w[:, None] * t[None, :]
    q = -np.expm1(-wt)
    du = math.log(t[1] / t[0])
    jac = np.zeros((n, n))
    if k == 2 and not pair_loop:
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


def jacobian_pairs(r, T: float, k: int, pairs) -> np.ndarray:
    """The old pair loop (``k != 2``, or ``pair_loop``) on the given pairs ``(i, j)`` only:
    their entries ``d pi_i / d r_j``. For timing a sample of a Jacobian too slow to compute
    whole (the loop's cost is the same for every pair)."""
    w = _weights(r, T)
    n = w.size
    t = race_nodes(w, k, RACE_STEP)
    wt = w[:, None] * t[None, :]
    q = -np.expm1(-wt)
    du = math.log(t[1] / t[0])
    out = np.empty(len(pairs))
    for m, (i, j) in enumerate(pairs):
        keep = np.ones(n, dtype=bool)
        keep[[i, j]] = False
        pb = _pb_prefix(q[keep], k)[-1][:, k - 1]
        g = wt[i] * wt[j] * np.exp(-(wt[i] + wt[j])) * pb
        out[m] = -du * (g.sum() - 0.5 * (g[0] + g[-1])) / T
    return out
