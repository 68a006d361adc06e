"""Top-k routing: inclusion probabilities, the mean-field ODE and its thresholds.

Each token picks ``k`` distinct experts by Gumbel-top-k of the scores ``z = r / T``, which is
the same as Plackett-Luce sampling without replacement from ``softmax(r / T)`` (and as an
exponential race: ``E_j ~ Exp(rate w_j)``, ``w_j = e^{z_j}``, keep the ``k`` smallest). The load
of expert ``i`` is ``l_i = count_i / (k B)``, so the loads sum to one and ``k = 1`` is the
paper's router. Its mean is ``pi_i(r) / k`` with the *inclusion probability*

    pi_i = P(i among the k picks) = int_0^inf w_i e^{-w_i t} P(C_{-i}(t) <= k - 1) dt,

where ``C_{-i}(t)`` counts the other experts whose clocks rang before ``t``: a sum of independent
Bernoulli(``1 - e^{-w_j t}``) (Poisson-binomial). ``sum_i pi_i = k``. The mean-field ODE is

    r' = (a / k) pi(r) - gamma r + b,                                         (8k)

again a gradient flow: ``pi = grad_z Phi`` with ``Phi(z) = E[sum of the k largest z_j + G_j]``
(``G_j`` standard Gumbel; envelope theorem), so its Jacobian
``(a / (k T)) d pi / d z - gamma I`` is symmetric, with off-diagonal entries

    d pi_i / d z_j = - int_0^inf w_i w_j t e^{-(w_i + w_j) t} P(C_{-ij}(t) = k - 1) dt   (i != j)

and rows summing to zero (a common shift of the scores changes nothing).

**Computation.** ``method="enumerate"``: exact sum over the ordered picks (subsets of size
``<= k`` with their Plackett-Luce probabilities; ``N <= 16``). ``method="integral"``: the one-
dimensional integral above in ``u = log t``, where the integrand is analytic and decays
exponentially at both ends, by the trapezoidal rule (geometric convergence; ~1e-15 relative with
the default step, checked against the enumeration and mpmath in the tests). The Poisson-binomial
probabilities come from prefix/suffix recursions with positive terms only (no cancellation).

**Uniform state.** At ``r_1 = ... = r_N`` the Jacobian of ``pi`` is ``alpha (I - 11^T / N) / T``
with (derived from the integral, Beta-function identity)

    alpha_k = (N - k) / (N - 1) * (H_N - H_{N-k}),     H_n = 1 + 1/2 + ... + 1/n,

so the uniform state of (8k) loses stability at ``a_lin = k gamma T / alpha_k`` (``N gamma T`` for
``k = 1``).

**Symmetric branches.** "m winners at score gap d": ``z = d`` on m experts, 0 on the others.
With ``pi_w, pi_l`` their inclusion probabilities the equilibrium condition reads

    a / (gamma T) = g_{m,k}(d) = k d / (pi_w(d) - pi_l(d)),

and the Jacobian has the eigenvalues ``(a/(kT)) mu - gamma`` with ``mu`` = ``-m J_ww - (N-m) J_wl``
(m - 1 contrasts within the winners), ``-(N-m) J_ll - m J_wl`` (N - m - 1 within the losers),
``-N J_wl`` (between the groups), 0 (common mode; eigenvalue ``-gamma``), where ``J_xy`` are
the off-diagonal entries of ``d pi / d z`` (the binomial form of the integral above). For
``k = 1`` this is :mod:`moebif.nexperts`. Unlike ``k = 1``, equilibria of (8k) need not have two
score levels; the two-level branches are the ones computed here.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..params import check_positive
from .inclusion import RACE_STEP, check_top_k, race_low_sum, race_nodes, race_window
from .symmetric import SymmetricBranch

__all__ = [
    "TopKBranch",
    "topk_branch",
    "topk_collapse_threshold",
    "topk_linear_threshold",
    "topk_uniform_slope",
    "two_level_inclusion",
]

# ----------------------------------------------------------------------------------------------
# uniform state


def topk_uniform_slope(n_experts: int, k: int) -> float:
    """``alpha_k = (N - k)/(N - 1) (H_N - H_{N-k})``: ``d pi / d z = alpha_k (I - 11^T/N)`` at
    the uniform state (``alpha_1 = 1/N``)."""
    n = int(n_experts)
    k = check_top_k(k, n)
    harmonic = math.fsum(1.0 / j for j in range(n - k + 1, n + 1))
    return (n - k) / (n - 1) * harmonic


def topk_linear_threshold(n_experts: int, k: int, gamma: float, T: float) -> float:
    """``a_lin = k gamma T / alpha_k``: the uniform state of (8k) is linearly stable iff
    ``a < a_lin`` (``N gamma T`` for ``k = 1``)."""
    gamma = check_positive("gamma", gamma)
    T = check_positive("T", T)
    return k * gamma * T / topk_uniform_slope(n_experts, k)


# ----------------------------------------------------------------------------------------------
# symmetric two-level states


@functools.lru_cache(maxsize=1024)
def _log_binom(n: int, kmax: int) -> np.ndarray:
    """``log C(n, c)`` for ``c < min(kmax, n + 1)``."""
    c = np.arange(min(kmax, n + 1))
    return np.array([math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(n - x + 1) for x in c])


def _binom_pmf(n: int, wt: np.ndarray, kmax: int, logq: np.ndarray) -> np.ndarray:
    """``P(Binomial(n, q) = c)`` for ``c < kmax`` with ``q = 1 - e^{-wt}``, shape ``(Q, kmax)``.

    In logs: ``logq = log q = log(-expm1(-wt))`` and ``log(1 - q) = -wt`` are both exact, so
    the pmf has full relative accuracy even where it is tiny."""
    out = np.zeros((wt.size, kmax))
    if n < 0:
        return out
    logc = _log_binom(n, kmax)
    c = np.arange(logc.size)
    out[:, : c.size] = np.exp(logc + c * logq[:, None] - (n - c) * wt[:, None])
    return out


def _conv_at(a: np.ndarray, b: np.ndarray, c: int) -> np.ndarray:
    """``P(A + B = c)`` along the node axis."""
    return np.einsum("qa,qa->q", a[:, : c + 1], b[:, c::-1])


def two_level_inclusion(
    n: int, m: int, k: int, d: float, du: float = RACE_STEP
) -> tuple[float, ...]:
    """``(pi_w, pi_l, J_ww, J_ll, J_wl)`` at the state with m winners at gap d (in units of z):
    the inclusion probabilities of a winner and a loser and the off-diagonal entries of
    ``d pi / d z`` (winner-winner, loser-loser, winner-loser; NaN where a group has < 2 members).

    Weights: winners 1, losers ``e^{-d}`` (d >= 0) or winners ``e^{d}``, losers 1 (d < 0).
    The binomial counts are evaluated on the nodes of :func:`~moebif.model.inclusion.race_window`
    only (below them ``P(C <= k - 1) = 1``, above them every integrand is negligible)."""
    ww, wl = (1.0, math.exp(-d)) if d >= 0 else (math.exp(d), 1.0)
    levels = np.array([ww, wl])
    counts = np.array([m, n - m], dtype=float)
    t = race_nodes(np.array([ww] * m + [wl] * (n - m)), k, du)
    h = math.log(t[1] / t[0])
    i0, i1 = race_window(levels, k, t, counts=counts)
    # nodes below i0: P(C <= k - 1) = 1; the trapezoid's half weight at the first node
    low_w, low_l = race_low_sum(levels, t[0], h, i0)
    if i0 > 0:
        low_w, low_l = (low_w, low_l) - 0.5 * levels * t[0] * np.exp(-levels * t[0])
    t_all, t = t, t[i0 : i1 + 1]
    first, last = i0 == 0, i1 == t_all.size - 1
    wt_w, wt_l = ww * t, wl * t
    ew, el = np.exp(-wt_w), np.exp(-wt_l)
    lq_w, lq_l = np.log(-np.expm1(-wt_w)), np.log(-np.expm1(-wt_l))
    # binomial pmfs of the other winners / losers (counts below k)
    bw = {j: _binom_pmf(j, wt_w, k, lq_w) for j in (m - 2, m - 1, m) if j >= 0}
    bl = {j: _binom_pmf(j, wt_l, k, lq_l) for j in (n - m - 2, n - m - 1, n - m) if j >= 0}

    def trap(g):
        if g.size == 0:
            return 0.0
        return h * (g.sum() - 0.5 * (g[0] * first + g[-1] * last))

    def cdf(a, b):  # P(A + B <= k - 1)
        return np.einsum("qa,qa->q", a, np.cumsum(b, axis=1)[:, ::-1])

    pi_w = h * low_w + trap(wt_w * ew * cdf(bw[m - 1], bl[n - m]))
    pi_l = h * low_l + trap(wt_l * el * cdf(bw[m], bl[n - m - 1]))
    nan = math.nan
    j_ww = -trap(wt_w * wt_w * ew * ew * _conv_at(bw[m - 2], bl[n - m], k - 1)) if m >= 2 else nan
    j_ll = (
        -trap(wt_l * wt_l * el * el * _conv_at(bw[m], bl[n - m - 2], k - 1)) if n - m >= 2 else nan
    )
    j_wl = -trap(wt_w * wt_l * ew * el * _conv_at(bw[m - 1], bl[n - m - 1], k - 1))
    return pi_w, pi_l, j_ww, j_ll, j_wl


TopKBranch = SymmetricBranch  # the same record as for top-1


def topk_branch(n_experts: int, k: int, winners: int, d) -> SymmetricBranch:
    """Sample the two-level branch with ``winners`` winners at score gaps ``d > 0`` (1-d array)."""
    n, m = int(n_experts), int(winners)
    k = check_top_k(k, n)
    if not 1 <= m < n:
        raise ValueError(f"winners: must be in 1..{n - 1}, got {m}")
    d = np.atleast_1d(np.asarray(d, dtype=float))
    vals = np.array([two_level_inclusion(n, m, k, float(x)) for x in d])
    pi_w, pi_l, j_ww, j_ll, j_wl = vals.T
    ratio = k * d / (pi_w - pi_l)
    # lambda / gamma = (g / k) mu - 1
    s = ratio / k
    eig = {
        "within_winners": (s * (-m * j_ww - (n - m) * j_wl) - 1.0, m - 1),
        "within_losers": (s * (-(n - m) * j_ll - m * j_wl) - 1.0, n - m - 1),
        "between": (s * (-n * j_wl) - 1.0, 1),
    }
    lam = np.full(d.shape, -np.inf)
    for v, mult in eig.values():
        if mult > 0:
            lam = np.maximum(lam, v)
    return SymmetricBranch(n, k, m, d, ratio, pi_w, pi_l, eig, lam < 0.0)


def topk_collapse_threshold(
    n_experts: int, k: int, gamma: float, T: float, *, winners=None, d_max: float | None = None
) -> tuple[float, int]:
    """``(a_SN, m)``: the smallest ``a`` at which a stable two-level collapsed state of (8k)
    exists, and its number of winners. Scans the branches ``m`` in ``winners`` on a grid of
    gaps, then refines the onset of the stable part (a fold, where ``between`` vanishes, or a
    point where another mode changes sign).

    Default ``winners``: all ``m`` for ``N <= 16``; otherwise ``m <= k + 1`` (one or a few
    winners take the load) and ``m >= N - k - 1`` (a few starved experts). For small ``k / N``
    the one-winner branch comes first; for ``k`` close to ``N`` states with one or two starved
    experts (``m = N - 1, N - 2``) can come first (e.g. ``N = 8, k = 5``)."""
    from scipy.optimize import brentq, minimize_scalar

    gamma = check_positive("gamma", gamma)
    T = check_positive("T", T)
    n = int(n_experts)
    k = check_top_k(k, n)
    if winners is None:
        ms = range(1, n) if n <= 16 else sorted(set(range(1, k + 2)) | set(range(n - k - 1, n)))
    else:
        ms = winners
    d_max = d_max or 4.0 * math.log(n) + 12.0
    grid = np.geomspace(0.01, d_max, 160)
    best, best_m = math.inf, 0
    for m in ms:
        br = topk_branch(n, k, m, grid)
        if not br.stable.any():
            continue
        i = int(np.argmax(br.stable))  # first stable sample
        cands = [br.ratio[br.stable].min()]
        if i > 0:
            lo, hi = grid[i - 1], grid[i]

            def lam(d, m=m):
                b = topk_branch(n, k, m, [d])
                return max(v[0] for v, mult in b.eigenvalues.values() if mult > 0)

            d_on = brentq(lam, lo, hi, xtol=1e-13)
            r_on = float(topk_branch(n, k, m, [d_on]).ratio[0])
            # the onset is a fold when g has its minimum there; refine on the stable side
            res = minimize_scalar(
                lambda d, m=m: float(topk_branch(n, k, m, [d]).ratio[0]),
                bounds=(d_on, min(d_on + 2.0, d_max)),
                method="bounded",
                options={"xatol": 1e-10},
            )
            cands += [r_on, float(res.fun)]
        val = min(cands)
        if val < best:
            best, best_m = val, m
    return best * gamma * T, best_m
