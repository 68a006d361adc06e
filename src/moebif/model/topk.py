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
``k = 1`` this is :mod:`moebif.model.symmetric`. Unlike ``k = 1``, equilibria of (8k) need not
have two score levels; the two-level branches are the ones computed here.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from ..params import check_positive
from .inclusion import RACE_STEP, check_top_k, race_low_sum
from .symmetric import SymmetricBranch

__all__ = [
    "TopKBranch",
    "topk_branch",
    "topk_collapse_threshold",
    "topk_linear_threshold",
    "topk_uniform_slope",
    "two_level_inclusion",
    "two_level_inclusion_grid",
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
def _log_binom(ns: tuple, kmax: int) -> np.ndarray:
    """``log C(n, c)`` for each ``n`` in ``ns`` and ``c < kmax``, shape ``(len(ns), kmax)``
    (``-inf`` where ``c > n`` or ``n < 0``)."""
    out = np.full((len(ns), kmax), -np.inf)
    for row, n in enumerate(ns):
        for c in range(min(kmax, n + 1)):
            out[row, c] = math.lgamma(n + 1) - math.lgamma(c + 1) - math.lgamma(n - c + 1)
    return out


def _binom_pmf(ns: tuple, wt: np.ndarray, kmax: int) -> np.ndarray:
    """``P(Binomial(n, q) = c)`` for each ``n`` in ``ns`` and ``c < kmax``, with
    ``q = 1 - e^{-wt}``: shape ``(len(ns),) + wt.shape + (kmax,)``.

    In logs: ``log q = log(-expm1(-wt))`` and ``log(1 - q) = -wt`` are both exact, so the pmf
    has full relative accuracy even where it is tiny."""
    lead = (slice(None),) + (None,) * wt.ndim
    logc = _log_binom(ns, kmax)[lead]
    c = np.arange(kmax)
    wt = wt[..., None]
    nn = np.array(ns, dtype=float)[lead + (None,)]
    with np.errstate(invalid="ignore", divide="ignore"):
        x = logc + c * np.log(-np.expm1(-wt)) - (nn - c) * wt
    return np.where(np.isneginf(logc), 0.0, np.exp(x))


def _dot_at(a: np.ndarray, b: np.ndarray, c: int) -> np.ndarray:
    """``P(A + B = c)`` along the last axis (counts), for every node."""
    return np.einsum("...a,...a->...", a[..., : c + 1], b[..., c::-1])


def two_level_inclusion(
    n: int, m: int, k: int, d: float, du: float = RACE_STEP
) -> tuple[float, ...]:
    """``(pi_w, pi_l, J_ww, J_ll, J_wl)`` at the state with m winners at gap d (in units of z):
    the inclusion probabilities of a winner and a loser and the off-diagonal entries of
    ``d pi / d z`` (winner-winner, loser-loser, winner-loser; NaN where a group has < 2 members).

    Weights: winners 1, losers ``e^{-d}`` (d >= 0) or winners ``e^{d}``, losers 1 (d < 0).
    One gap of :func:`two_level_inclusion_grid`."""
    return tuple(float(v) for v in two_level_inclusion_grid(n, m, k, [d], du)[0])


def two_level_inclusion_grid(n: int, m: int, k: int, d, du: float = RACE_STEP) -> np.ndarray:
    """:func:`two_level_inclusion` at every gap of ``d`` (1-d) at once: shape ``(len(d), 5)``.

    Each gap has the nodes of :func:`~moebif.model.inclusion.race_nodes` from the first one
    where ``P(C >= k) <= (W t)^k / k!`` reaches ``1e-19``; below it the cdf of the counts is 1
    and the sum of ``w t e^{-w t}`` is :func:`~moebif.model.inclusion.race_low_sum`. The gaps'
    node sets are padded to one length (padding nodes have weight 0)."""
    d = np.atleast_1d(np.asarray(d, dtype=float))
    ww = np.where(d >= 0, 1.0, np.exp(np.minimum(d, 0.0)))
    wl = np.where(d >= 0, np.exp(-np.maximum(d, 0.0)), 1.0)
    W = m * ww + (n - m) * wl
    # the k-th largest weight (the winners are the lighter group when d < 0)
    wk = np.where(d >= 0, ww if k <= m else wl, wl if k <= n - m else ww)
    lo = np.log(1e-18 / W)
    count = np.ceil((np.log(60.0 / wk) - lo) / du).astype(int) + 1  # nodes of race_nodes
    # first node where (W t)^k / k! reaches 1e-19
    start = np.ceil(((math.log(1e-19) + math.lgamma(k + 1)) / k - np.log(W) - lo) / du)
    i0 = np.clip(start, 0, count - 1).astype(int)
    q_max = int((count - i0).max())
    j = np.arange(q_max)
    valid = j[None, :] < (count - i0)[:, None]  # (D, Q)
    t = np.exp(lo[:, None] + du * (i0[:, None] + np.minimum(j[None, :], (count - i0 - 1)[:, None])))
    h = du  # the nodes are e^{lo + du j} exactly
    wts = np.where(valid, h, 0.0)
    wts[:, 0] *= np.where(i0 == 0, 0.5, 1.0)  # the trapezoid's half weight at either end
    wts[np.arange(d.size), count - i0 - 1] *= 0.5
    # nodes below i0: P(C <= k - 1) = 1
    t0 = np.exp(lo)
    lev = np.stack([ww, wl], axis=1)  # (D, 2)
    low = race_low_sum(lev, t0[:, None], du, i0[:, None])
    low -= np.where(i0[:, None] > 0, 0.5 * lev * t0[:, None] * np.exp(-lev * t0[:, None]), 0.0)
    wt_w, wt_l = ww[:, None] * t, wl[:, None] * t
    ew, el = np.exp(-wt_w), np.exp(-wt_l)
    # binomial pmfs of the other winners / losers (counts below k)
    bw = dict(zip((m - 2, m - 1, m), _binom_pmf((m - 2, m - 1, m), wt_w, k), strict=True))
    nl = (n - m - 2, n - m - 1, n - m)
    bl = dict(zip(nl, _binom_pmf(nl, wt_l, k), strict=True))

    def trap(g):
        return (g * wts).sum(axis=1)

    def cdf(a, b):  # P(A + B <= k - 1)
        return np.einsum("...a,...a->...", a, np.cumsum(b, axis=-1)[..., ::-1])

    out = np.full((d.size, 5), np.nan)
    out[:, 0] = h * low[:, 0] + trap(wt_w * ew * cdf(bw[m - 1], bl[n - m]))
    out[:, 1] = h * low[:, 1] + trap(wt_l * el * cdf(bw[m], bl[n - m - 1]))
    if m >= 2:
        out[:, 2] = -trap(wt_w * wt_w * ew * ew * _dot_at(bw[m - 2], bl[n - m], k - 1))
    if n - m >= 2:
        out[:, 3] = -trap(wt_l * wt_l * el * el * _dot_at(bw[m], bl[n - m - 2], k - 1))
    out[:, 4] = -trap(wt_w * wt_l * ew * el * _dot_at(bw[m - 1], bl[n - m - 1], k - 1))
    return out


TopKBranch = SymmetricBranch  # the same record as for top-1


def topk_branch(n_experts: int, k: int, winners: int, d) -> SymmetricBranch:
    """Sample the two-level branch with ``winners`` winners at score gaps ``d > 0`` (1-d array)."""
    n, m = int(n_experts), int(winners)
    k = check_top_k(k, n)
    if not 1 <= m < n:
        raise ValueError(f"winners: must be in 1..{n - 1}, got {m}")
    d = np.atleast_1d(np.asarray(d, dtype=float))
    vals = two_level_inclusion_grid(n, m, k, d)
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
