"""Heterogeneous balanced states: the N-expert router (8) / (8k) with drifts ``b != 0``.

A router trained on real data does not sit at the uniform state. Its experts specialise and
the data skews them: in the model these are the drifts ``b_i`` of eq. (8), and the balanced
state is a stable non-uniform equilibrium ``p*``. In units ``gamma T`` (``d = r / T``,
``A = a / (gamma T)``, ``beta = b / (gamma T)``) the equilibria of (8k) solve

    d = A f(d) + beta,      f(d) = pi(d) / k  (the loads; the softmax for top-1),

so a measured load profile ``f*`` and a feedback ``A`` fix the drifts up to a common constant:
``beta = z* - A f*``, where ``z*`` are the scores whose loads are ``f*`` (``log f*`` for top-1;
for top-k the inverse of the inclusion probabilities, :func:`scores_for_loads`).

**Stability of the current state.** Near ``d*`` the loads respond to the scores through
``K = d f / d d`` (``diag f - f f^T`` for top-1; the inclusion Jacobian over ``k`` for top-k),
symmetric with the common mode in its kernel. Linearised, ``x' = gamma (A K - I) x``: its
eigenvectors are the modes, each relaxing at ``gamma (1 - A mu_j)``. The stability ratio of
the state is

    kappa = A mu_max(K),

1 where the slowest mode stops relaxing; at the uniform state ``mu_max = 1/N`` (top-1) and
``alpha_k / k`` (top-k), so ``kappa = a / a_lin`` as in :mod:`.thresholds`.

**Collapse threshold with the drifts.** Holding ``beta`` fixed and raising ``A``, the state
runs to a collapsed branch on which one expert (the one the slowest mode points to) takes most
of the load. That branch is born in a saddle-node at ``A_SN(beta)``: the smallest feedback at
which a stable collapsed state exists (:func:`collapse_feedback`). Below it the heterogeneous
state is the only stable one; above it, it is metastable. With ``beta = 0`` it is the
``a_SN / (gamma T)`` of the symmetric theory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .field import VectorField, softmax

__all__ = [
    "HeterogeneousState",
    "balanced_equilibrium",
    "collapse_feedback",
    "drifts_for_profile",
    "feedback_for_kappa",
    "load_jacobian",
    "scores_for_loads",
    "state_of_profile",
]


def _loads(z, top_k: int) -> np.ndarray:
    if top_k == 1:
        return softmax(z, 1.0)
    from .inclusion import inclusion_probabilities

    return inclusion_probabilities(z, 1.0, top_k) / top_k


def load_jacobian(z, top_k: int = 1) -> np.ndarray:
    """``K = d f / d z`` at scores ``z`` (units ``T = 1``), shape ``(N, N)``, symmetric, rows
    summing to zero: ``diag p - p p^T`` for top-1, the inclusion Jacobian over ``k`` for
    top-k."""
    z = np.asarray(z, dtype=float)
    return VectorField(1.0, 1.0, 1.0, np.zeros(z.size), int(top_k)).inclusion_jacobian(z) / top_k


def scores_for_loads(f, top_k: int = 1, *, tol: float = 1e-12, max_iter: int = 100) -> np.ndarray:
    """The scores ``z`` (units ``T = 1``, mean zero) whose loads are ``f`` (shape ``(N,)``,
    positive, summing to one, each below ``1 / k``): ``log f`` centred for top-1; for top-k
    Newton's method on the inclusion probabilities (from ``log f``)."""
    f = np.asarray(f, dtype=float)
    if f.ndim != 1 or f.size < 2 or not np.all(np.isfinite(f)) or np.any(f <= 0.0):
        raise ValueError("f: need a 1-d profile of positive loads")
    f = f / f.sum()
    z = np.log(f)
    z -= z.mean()
    if top_k == 1:
        return z
    if np.any(f >= 1.0 / top_k):
        raise ValueError(f"f: top-{top_k} loads must stay below 1/{top_k}")
    n = f.size
    # first without the Jacobian (N^2 integrals; one evaluation of the loads is N): the step
    # log f - log f(z) is Newton's with the diagonal Jacobian of the log loads, a contraction
    # here (d log f_i / d z_i is near 1 - k f_i), so Newton only polishes if it stalls
    best = math.inf
    for _ in range(max_iter):
        fz = _loads(z, top_k)
        res = float(np.abs(fz - f).max())
        if res <= tol:
            return z
        if not (res < 0.9 * best and np.all(fz > 0.0)):
            break
        best = res
        z = z + (np.log(f) - np.log(fz))
        z -= z.mean()
    for _ in range(max_iter):
        r = _loads(z, top_k) - f
        if np.abs(r).max() <= tol:
            break
        K = load_jacobian(z, top_k)
        # K is singular along the common mode: solve on the contrasts (mean-zero step)
        step = np.linalg.lstsq(K + np.ones((n, n)) / n, -r, rcond=None)[0]
        z = z + step
        z -= z.mean()
    return z


def drifts_for_profile(f, feedback: float, top_k: int = 1) -> np.ndarray:
    """``beta = z* - A f*``: the drifts (units ``gamma T``, mean zero) that make the load profile
    ``f`` an equilibrium of (8k) at feedback ``A = a / (gamma T)`` (module docstring)."""
    z = scores_for_loads(f, top_k)
    f = np.asarray(f, dtype=float) / np.sum(f)
    beta = z - feedback * f
    return beta - beta.mean()


@dataclass(frozen=True)
class HeterogeneousState:
    """A non-uniform balanced state: loads ``f`` (N,), scores ``z`` (units T), the eigenvalues
    ``mu`` (ascending) and eigenvectors ``modes`` (columns) of the load Jacobian ``K`` on the
    contrast subspace (the common mode removed), and ``top_k``."""

    f: np.ndarray
    z: np.ndarray
    mu: np.ndarray
    modes: np.ndarray
    top_k: int

    @property
    def mu_max(self) -> float:
        return float(self.mu[-1])

    def kappa(self, feedback: float) -> float:
        """``kappa = A mu_max``: the stability ratio of this state at feedback ``A``."""
        return feedback * self.mu_max

    @property
    def slowest_winner(self) -> int:
        """The expert the slowest mode points to: the largest component of its eigenvector, with
        the sign that increases the busiest expert's load."""
        v = self.modes[:, -1]
        if v[int(np.argmax(self.f))] < 0:
            v = -v
        return int(np.argmax(v))


def state_of_profile(f, top_k: int = 1) -> HeterogeneousState:
    """The modes of the profile ``f`` (see the module docstring)."""
    f = np.asarray(f, dtype=float)
    z = scores_for_loads(f, top_k)
    K = load_jacobian(z, top_k)
    n = f.size
    mu, V = np.linalg.eigh(0.5 * (K + K.T))
    common = int(np.argmax(np.abs(V.sum(axis=0))))  # the eigenvector along (1, ..., 1)
    keep = np.array([j for j in range(n) if j != common])
    return HeterogeneousState(f / f.sum(), z, mu[keep], V[:, keep], int(top_k))


def collapse_feedback(
    beta, top_k: int = 1, *, winner: int | None = None, rtol: float = 1e-6
) -> tuple[float, int]:
    """``(A_SN, winner)``: the smallest ``A = a / (gamma T)`` at which a stable collapsed state of
    (8k) with drifts ``beta`` (units ``gamma T``) exists, on the branch where ``winner`` takes most
    of the load (default: every expert, keeping the smallest; experts with equal drifts share a
    branch). ``inf`` when the branch has no saddle-node: strong drifts make the collapsed state
    the balanced one continued, concentrating smoothly with ``A``, with nothing to jump to.
    With ``beta = 0`` it is the symmetric ``a_SN / (gamma T)`` (:mod:`.thresholds`).

    The collapsed branch is followed from a deep collapse down in ``A`` (Newton from the last
    solution) until it is lost (no convergence, an unstable solution or a jump away from the
    winner), and the fold is bracketed and bisected to relative accuracy ``rtol``."""
    beta = np.asarray(beta, dtype=float)
    n = beta.size
    candidates = range(n) if winner is None else [int(winner)]
    best = (math.inf, -1)
    seen = set()
    for w in candidates:
        key = round(float(beta[w]), 12)
        if key in seen:
            continue
        seen.add(key)
        a_sn = _fold_of_branch(beta, int(top_k), w, rtol)
        if a_sn < best[0]:
            best = (a_sn, w)
    return best


def _solve(field: VectorField, z0: np.ndarray, w: int):
    """A stable equilibrium near ``z0`` on the same branch (``w`` the busiest expert, its load
    not fallen by more than a third: no jump to another branch), or None."""
    z = z0.copy()
    f0 = field.inclusion(z0)[w]
    try:
        with np.errstate(over="raise", divide="raise", invalid="raise"):
            z = _newton(field, z, w)
            if z is None or field.inclusion(z)[w] < 2.0 / 3.0 * f0:
                return None
            return z
    except (np.linalg.LinAlgError, ArithmeticError, ValueError):
        return None  # a step into scores the load map cannot take (overflow): not on the branch


def _newton(field: VectorField, z: np.ndarray, w: int):
    for _ in range(40):
        F = field(z)
        dz = np.linalg.solve(field.jacobian(z), -F)
        z = z + dz
        if not np.all(np.isfinite(z)):
            return None
        if np.abs(dz).max() <= 1e-11 * (1.0 + np.abs(z).max()):
            break
    else:
        return None
    if np.abs(field(z)).max() > 1e-8 * (1.0 + np.abs(z).max()):
        return None
    f = field.inclusion(z)
    others = np.delete(f, w)
    if not f[w] > others.max() * (1.0 + 1e-9):
        return None
    # stable: every eigenvalue but the common mode's (-gamma) below zero
    ev = np.linalg.eigvalsh(0.5 * (field.jacobian(z) + field.jacobian(z).T))
    return z if ev[-1] < -1e-12 else None


def _fold_of_branch(beta, top_k, w, rtol) -> float:
    n = beta.size
    from .thresholds import thresholds

    # a stable collapse onto w to start from: near the symmetric linear threshold (for top-k
    # much larger feedback destabilises the losers, who then collapse among themselves)
    scale = thresholds(n, top_k).linear + float(np.ptp(beta))
    z = None
    for A in (scale, 0.8 * scale, 1.3 * scale, 0.6 * scale, 2.0 * scale):
        z0 = beta.copy()
        z0[w] += A / top_k
        z = _solve(VectorField(A, 1.0, 1.0, beta, top_k), z0, w)
        if z is not None:
            break
    if z is None:
        return math.inf
    hi, z_hi = A, z
    lo = None
    a, floor = hi, 1e-3 * hi
    while a > floor:  # walk down geometrically until the branch is lost
        a_next = 0.85 * a
        z_next = _solve(VectorField(a_next, 1.0, 1.0, beta, top_k), z_hi, w)
        if z_next is None:
            lo = a_next
            break
        a, hi, z_hi = a_next, a_next, z_next
    if lo is None:
        return math.inf  # stable all the way down: no saddle-node on this branch
    z_bal = balanced_equilibrium(hi, beta, top_k)
    if np.abs((z_hi - z_hi.mean()) - (z_bal - z_bal.mean())).max() < 1e-6 * (1.0 + hi):
        # the branch walked down is the balanced state itself, concentrated by strong drifts
        # onto the favoured expert (it was lost only where its load falls fast): no separate
        # collapsed state on this branch
        return math.inf
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        z_mid = _solve(VectorField(mid, 1.0, 1.0, beta, top_k), z_hi, w)
        if z_mid is None:
            lo = mid
        else:
            hi, z_hi = mid, z_mid
    return hi


def balanced_equilibrium(feedback: float, beta, top_k: int = 1, *, steps: int = 400) -> np.ndarray:
    """The balanced equilibrium scores ``d`` (units ``T``) of (8k) with drifts ``beta`` at
    ``A = feedback``: the branch continued from ``A = 0`` (where ``d = beta``) in ``steps``
    Newton-corrected steps, so it is the state a router raising its feedback slowly sits in."""
    beta = np.asarray(beta, dtype=float)
    z = beta.copy()
    for A in np.linspace(0.0, float(feedback), steps + 1)[1:]:
        field = VectorField(A, 1.0, 1.0, beta, int(top_k))
        for _ in range(50):
            F = field(z)
            if np.abs(F).max() < 1e-12 * (1.0 + np.abs(z).max()):
                break
            z = z - np.linalg.solve(field.jacobian(z), F)
    return z


def feedback_for_kappa(beta, kappa: float, top_k: int = 1, *, a_max: float | None = None) -> float:
    """The feedback ``A`` at which the balanced state of drifts ``beta`` has stability ratio
    ``kappa`` (raising ``A`` from 0 along the branch), or NaN if the branch never reaches it
    (strong drifts: the state concentrates smoothly and stays stable). Bisection in ``A``."""
    from .thresholds import thresholds

    beta = np.asarray(beta, dtype=float)
    n = beta.size

    def kap(A):
        # the same continuation as balanced_equilibrium's default (a coarser one can jump
        # past the branch's fold to an unstable root, whose kappa exceeds 1)
        z = balanced_equilibrium(A, beta, top_k)
        f = _loads(z, top_k)
        return A * state_of_profile(f, top_k).mu_max

    a_hi = a_max or 1.5 * thresholds(n, top_k).linear + 2.0 * float(np.ptp(beta))
    grid = np.linspace(0.0, a_hi, 41)[1:]
    prev = 0.0
    for A in grid:
        if kap(A) >= kappa:
            lo, hi = prev, A
            for _ in range(40):
                mid = 0.5 * (lo + hi)
                lo, hi = (mid, hi) if kap(mid) < kappa else (lo, mid)
            return 0.5 * (lo + hi)
        prev = A
    return math.nan
