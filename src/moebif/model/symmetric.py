"""Symmetric equilibria of the N-expert mean-field router, eq. (8) with b = 0.

Eq. (8), ``r' = a p(r) - gamma r``, is the gradient flow of
``V(r) = gamma |r|^2 / 2 - a T logsumexp(r / T)``. Besides the uniform state it has "m winners,
N - m losers" equilibria: ``gamma r_w = a p_w``, ``gamma r_l = a p_l`` with score gap
``d = (r_w - r_l) / T > 0``, which gives

    a / (gamma T) = g_m(d) = d (m e^d + N - m) / (e^d - 1).

``g_m(0+) = N`` (the linear threshold (10)) and ``g_m(d) ~ N + (m - N/2) d`` for small d, so for
``m < N/2`` the branch bends back below ``N`` and is born in a saddle-node at
``min_d g_m(d) < N``. For ``m = 1`` the upper part of that branch is the collapsed state: stable
for ``a > a_SN = gamma T min_d g_1(d)``, while the uniform state is still linearly stable up to
``a = N gamma T``. Between the two the balanced router is only metastable.

Every equilibrium of (8) with ``b = 0`` is of this two-level form: ``gamma r_i = a p_i`` gives
``p_i = e^{c p_i} / Z`` with ``c = a / (gamma T)``, and ``x e^{-c x} = 1/Z`` has at most two roots
``x`` in (0, 1). So the branches ``m = 1 .. N - 1`` (with ``d > 0``; ``d < 0`` on branch m is
branch ``N - m``, ``g_m(-d) = g_{N-m}(d)``) and the uniform state are all the equilibria.

Stability along every branch is decided by the eigenvalues of the full (symmetric) Jacobian,
which on a symmetric state are known in closed form (:func:`branch_eigenvalues`): with
``p_w = e^d / (m e^d + N - m)`` and ``p_l = 1 / (m e^d + N - m)``,

- ``-gamma`` on the common mode (1, ..., 1);
- ``(a/T) p_w - gamma`` on the ``m - 1`` contrasts within the winners;
- ``(a/T) p_l - gamma`` on the ``N - m - 1`` contrasts within the losers;
- ``(a/T) N p_w p_l - gamma`` on the one contrast between the groups (it vanishes at the fold).

On the branch, ``(a/T) p_w - gamma = gamma (d e^d / (e^d - 1) - 1) > 0``: every branch with
``m >= 2`` winners is unstable (within the winners), so the only stable collapsed states are on
the upper part of ``m = 1`` and ``a_SN = min_m (onset of a stable part) = gamma T min_d g_1(d)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..params import RouterParams, check_positive
from .field import VectorField, softmax

__all__ = [
    "SymmetricBranch",
    "SymmetricEquilibrium",
    "branch_curve",
    "branch_saddle_nodes",
    "stable_onsets",
    "barrier",
    "branch_eigenvalues",
    "branch_ratio",
    "winner_load",
    "collapse_threshold",
    "saddle_node_gap",
    "symmetric_equilibria",
    "potential",
    "potential_gradient",
    "potential_hessian",
]


def _logsumexp(z):
    zmax = np.max(z, axis=-1, keepdims=True)
    return (zmax + np.log(np.sum(np.exp(z - zmax), axis=-1, keepdims=True)))[..., 0]


def potential(r, params: RouterParams, b=None):
    """``V(r) = gamma |r|^2 / 2 - a T logsumexp(r / T) - b.r``: eq. (8) is ``r' = -grad V``.
    ``r`` has shape ``(..., N)``; ``b`` defaults to ``params.b``."""
    p = params
    r = np.asarray(r, dtype=float)
    b = p.b if b is None else np.asarray(b, dtype=float)
    return 0.5 * p.gamma * np.sum(r * r, axis=-1) - p.a * p.T * _logsumexp(r / p.T) - r @ b


def potential_gradient(r, params: RouterParams, b=None):
    """``grad V = gamma r - a softmax(r/T) - b`` (minus the vector field of eq. 8)."""
    return -VectorField.of(params, b=b)(r)


def potential_hessian(r, params: RouterParams):
    """``Hess V = gamma I - (a/T)(diag p - p p^T)``: minus the Jacobian of eq. (8)."""
    return -VectorField.of(params).jacobian(r)


def branch_eigenvalues(params: RouterParams, winners: int, gap: float) -> dict:
    """Closed-form Jacobian eigenvalues of (8) at the symmetric state with ``m = winners`` and
    score gap ``d = gap``, with their multiplicities (they add up to N)."""
    p, n, m = params, params.n_experts, winners
    if not 0 <= m < n:
        raise ValueError(f"winners: must be in 0..{n - 1}, got {m}")
    # p_w, p_l without overflow for large d
    if m == 0:
        pw = pl = 1.0 / n
    else:
        e = math.exp(-gap)
        pw = 1.0 / (m + (n - m) * e)
        pl = e / (m + (n - m) * e)
    k = p.a / p.T
    out = {"common": (-p.gamma, 1)}
    if m == 0:
        out["contrast"] = (k / n - p.gamma, n - 1)
        return out
    out["within_winners"] = (k * pw - p.gamma, m - 1)
    out["within_losers"] = (k * pl - p.gamma, n - m - 1)
    out["between"] = (k * n * pw * pl - p.gamma, 1)
    return out


def barrier(params: RouterParams) -> float:
    """Potential barrier ``V(saddle) - V(uniform)`` on the way from the balanced state to
    collapse (the one-winner saddle, lower part of the ``m = 1`` branch), for
    ``a_SN <= a < N gamma T`` with ``b = 0``. NaN outside that window (no barrier: either no
    collapsed state, or the uniform state is itself unstable)."""
    p = params
    if p.n_experts == 2:
        return math.nan
    eqs = [e for e in symmetric_equilibria(p.replace(h=0.0)) if e.winners == 1]
    if p.a >= p.critical_a or len(eqs) < 2:
        return math.nan
    saddle = min(eqs, key=lambda e: e.gap)
    zero = np.zeros(p.n_experts)
    v0 = potential(np.full(p.n_experts, p.a / (p.n_experts * p.gamma)), p, zero)
    return float(potential(saddle.r, p, zero) - v0)


def winner_load(n_experts: int, winners: int, d: float) -> float:
    """Load ``p_w = 1 / (m + (N - m) e^{-d})`` of each winner of the symmetric state with
    ``m = winners`` winners at score gap ``d`` (scalar, overflow-free for ``d >= 0``)."""
    return float(1.0 / (winners + (n_experts - winners) * math.exp(-d)))


def branch_ratio(d, n_experts: int, winners: int):
    """``g_m(d) = d (m e^d + N - m) / (e^d - 1)``, the value of ``a / (gamma T)`` on the branch with
    ``m`` winners at score gap ``d > 0`` (overflow-free form; vectorised over ``d``)."""
    d = np.asarray(d, dtype=float)
    em = np.exp(-d)
    # d / (1 - e^-d) = d / -expm1(-d); at d -> 0 the limit is N
    with np.errstate(invalid="ignore", divide="ignore"):
        out = d * (winners + (n_experts - winners) * em) / -np.expm1(-d)
    return np.where(d == 0.0, float(n_experts), out)


def saddle_node_gap(n_experts: int, winners: int = 1) -> tuple[float, float]:
    """``(d_SN, g_m(d_SN))``: the score gap and ``a / (gamma T)`` at the fold of branch ``m``.

    Only branches with ``m < N/2`` fold back below the linear threshold; for the others the
    minimum is at ``d -> 0`` and ``(0, N)`` is returned.
    """
    n, m = n_experts, winners
    if not 1 <= m < n:
        raise ValueError(f"winners: must be in 1..{n - 1}, got {m}")
    if 2 * m >= n:
        return 0.0, float(n)
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(
        lambda d: float(branch_ratio(d, n, m)),
        bounds=(1e-9, 4.0 * math.log(n) + 20.0),
        method="bounded",
        options={"xatol": 1e-12},
    )
    return float(res.x), float(res.fun)


def collapse_threshold(n_experts: int, gamma: float, T: float) -> float:
    """``a_SN``: the smallest ``a`` at which a stable collapsed (one-winner) state exists.

    Equals ``2 gamma T`` for two experts (the pitchfork); for ``N >= 3`` it is the saddle-node of
    the one-winner branch, below the linear threshold ``N gamma T`` (about ``3.22 gamma T`` for
    ``N = 4``).
    """
    gamma = check_positive("gamma", gamma)
    T = check_positive("T", T)
    if n_experts == 2:
        return 2.0 * gamma * T
    return gamma * T * saddle_node_gap(n_experts, 1)[1]


@dataclass(frozen=True, slots=True)
class SymmetricEquilibrium:
    """An equilibrium of (8) with ``m`` winners (``m = 0``: the uniform state)."""

    winners: int
    gap: float  # d = (r_w - r_l) / T
    r: np.ndarray  # scores, shape (N,), winners first
    max_load: float
    eigenvalue: float  # largest eigenvalue of the Jacobian
    stable: bool

    def to_dict(self) -> dict:
        return {
            "winners": self.winners,
            "gap": self.gap,
            "max_load": self.max_load,
            "eigenvalue": self.eigenvalue,
            "stable": self.stable,
        }


def _equilibrium(params: RouterParams, m: int, d: float) -> SymmetricEquilibrium:
    p, n = params, params.n_experts
    z = np.zeros(n)
    z[:m] = d
    pr = softmax(z, 1.0)
    r = p.a * pr / p.gamma
    lam = max(v for v, mult in branch_eigenvalues(p, m, d).values() if mult > 0)
    return SymmetricEquilibrium(
        winners=m, gap=float(d), r=r, max_load=float(pr.max()), eigenvalue=lam, stable=lam < 0.0
    )


def symmetric_equilibria(params: RouterParams) -> list[SymmetricEquilibrium]:
    """The uniform state and every "m winners" equilibrium of (8) at ``b = 0``, ``h = 0``.

    Sorted by ``(m, d)``. Roots of ``g_m(d) = a / (gamma T)`` are bracketed on each monotone piece
    of ``g_m`` (split at its minimum) and refined with Brent's method.
    """
    p, n = params, params.n_experts
    if p.h != 0.0:
        raise ValueError("h: symmetric equilibria need h = 0")
    from scipy.optimize import brentq

    target = p.a / (p.gamma * p.T)
    out = [_equilibrium(p, 0, 0.0)]
    for m in range(1, n):
        d_sn, g_sn = saddle_node_gap(n, m)

        def f(d, m=m):
            return float(branch_ratio(d, n, m)) - target

        gaps = []
        # falling piece (0, d_sn): g from N down to g_sn
        if d_sn > 0.0 and g_sn < target < n:
            gaps.append(brentq(f, 1e-300, d_sn, xtol=1e-15, rtol=4 * np.finfo(float).eps))
        # rising piece (d_sn, inf): g from g_sn to infinity (~ m d)
        if target > g_sn:
            hi = max(d_sn, 1.0)
            while f(hi) < 0.0:
                hi *= 2.0
            lo = max(d_sn, 1e-300)
            if f(lo) < 0.0:
                gaps.append(brentq(f, lo, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps))
        out.extend(_equilibrium(p, m, d) for d in sorted(gaps))
    return out


@dataclass(frozen=True, eq=False)
class SymmetricBranch:
    """The m-winner branch sampled at score gaps ``d`` (arrays of shape ``(M,)``).

    ``ratio``: ``a / (gamma T)`` on the branch; ``pi_w``, ``pi_l``: inclusion probabilities of a
    winner and a loser (for top-1, the softmax loads ``p_w``, ``p_l``); ``eigenvalues``: mode ->
    ``(lambda / gamma, multiplicity)`` for ``within_winners``, ``within_losers``, ``between``
    (the common mode, ``-gamma``, is left out); ``stable``: all of them negative."""

    n_experts: int
    k: int
    winners: int
    d: np.ndarray
    ratio: np.ndarray
    pi_w: np.ndarray
    pi_l: np.ndarray
    eigenvalues: dict
    stable: np.ndarray

    @property
    def max_load(self) -> np.ndarray:
        """Largest expected load ``max(pi) / k`` (the load of a winner for ``d > 0``)."""
        return np.maximum(self.pi_w, self.pi_l) / self.k


def branch_curve(n_experts: int, winners: int, d) -> SymmetricBranch:
    """The branch with ``m = winners`` of the top-1 router (8) at gaps ``d > 0`` (vectorised),
    with the closed-form eigenvalues of :func:`branch_eigenvalues` divided by ``gamma``."""
    n, m = int(n_experts), int(winners)
    if not 1 <= m < n:
        raise ValueError(f"winners: must be in 1..{n - 1}, got {m}")
    d = np.atleast_1d(np.asarray(d, dtype=float))
    e = np.exp(-d)
    pw = 1.0 / (m + (n - m) * e)
    pl = e * pw
    g = branch_ratio(d, n, m)
    eig = {
        "within_winners": (g * pw - 1.0, m - 1),
        "within_losers": (g * pl - 1.0, n - m - 1),
        "between": (g * n * pw * pl - 1.0, 1),
    }
    lam = np.full(d.shape, -np.inf)
    for v, mult in eig.values():
        if mult > 0:
            lam = np.maximum(lam, v)
    return SymmetricBranch(n, 1, m, d, g, pw, pl, eig, lam < 0.0)


def branch_saddle_nodes(n_experts: int) -> list[dict]:
    """Saddle-nodes of the branches ``m < N/2`` (the others have none): a list of
    ``{"winners", "gap", "ratio"}`` with ``ratio = a_SN(N, m) / (gamma T)``."""
    return [
        dict(zip(("winners", "gap", "ratio"), (m, *saddle_node_gap(n_experts, m)), strict=True))
        for m in range(1, n_experts)
        if 2 * m < n_experts
    ]


def stable_onsets(n_experts: int, *, points: int = 4000) -> dict[int, float]:
    """For every branch ``m``, the smallest ``a / (gamma T)`` at which it has a stable point
    (``inf``: never), from the closed-form eigenvalues on a fine grid of gaps. Only ``m = 1``
    is finite (see the module docstring); its value is ``a_SN / (gamma T)`` up to the grid."""
    n = int(n_experts)
    d = np.geomspace(1e-3, 4.0 * math.log(n) + 30.0, points)
    out = {}
    for m in range(1, n):
        br = branch_curve(n, m, d)
        out[m] = float(br.ratio[br.stable].min()) if br.stable.any() else math.inf
    return out
