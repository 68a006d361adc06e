"""Collapse thresholds with a scheme and the minimal strength that rules collapse out (part 2 of
:mod:`moebif.model.balancer_theory`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...params import ParameterError, RouterParams, check_positive
from ..balancers import BalancerSpec, field_terms, noisy_two_level, noisy_uniform_slope
from ..field import VectorField
from ..schemes import SCHEMES
from ..thresholds import thresholds
from .capacity import capacity_scan
from .effective import effective_parameters, linear_threshold
from .scan import (
    gap_grid,
    max_eig,
    point_a,
    scan_branch,
    two_level_state,
    two_level_table,
    winner_set,
)

__all__ = [
    "STRENGTH_SCHEMES",
    "BalancedThresholds",
    "balanced_thresholds",
    "branch_drift_max",
    "hysteresis_width",
    "linear_noisy",
    "minimal_strength",
    "noisy_collapse_threshold",
    "scheme_spec",
]


@dataclass(frozen=True)
class BalancedThresholds:
    """Thresholds with a scheme: ``linear`` (uniform state), ``collapse`` (smallest ``a`` with a
    stable collapsed state; ``inf``: none found), ``winners`` (its branch), ``gap`` (its score
    gap ``d``, 0 for a branch born at the linear threshold)."""

    linear: float
    collapse: float
    winners: int
    gap: float

    def to_dict(self) -> dict:
        return {
            "linear": self.linear if math.isfinite(self.linear) else None,
            "collapse": self.collapse if math.isfinite(self.collapse) else None,
            "winners": self.winners,
            "gap": self.gap,
        }


def balanced_thresholds(
    spec: BalancerSpec,
    n_experts: int,
    top_k: int = 1,
    gamma: float = 1.0,
    T: float = 1.0,
    *,
    rate: float = 1.0,
    batch: int | None = None,
    eta: float | None = None,
    winners=None,
    points: int = 160,
) -> BalancedThresholds:
    """``collapse_a`` and the linear threshold of the field with the smooth terms of ``spec``
    (module docstring, part 2). Schemes without a static term (bias, quantile, Sinkhorn, expert
    choice) are not accepted here: they have no stable collapsed state at any ``a``. Noisy gating
    uses the fold of the one-winner branch (:func:`noisy_collapse_threshold`)."""
    gamma = check_positive("gamma", gamma)
    T = check_positive("T", T)
    n, k = int(n_experts), int(top_k)
    if spec.bias > 0 or spec.quantile or spec.sinkhorn or spec.expert_choice > 0:
        raise ParameterError("balancer", "selection overrides have no static collapsed state")
    lin = linear_threshold(spec, n, k, gamma, T, rate=rate, batch=batch, eta=eta)
    if spec.noise > 0 or spec.jitter > 0:
        if spec.has_gradient or spec.capacity > 0:
            raise ParameterError("balancer", "noisy gating thresholds: noise alone")
        a_sn, d = noisy_collapse_threshold(n, k, gamma, T, sigma=spec.noise, jitter=spec.jitter)
        return BalancedThresholds(lin, a_sn, 1, d)
    terms = field_terms(spec, rate=rate, batch=batch)
    field = VectorField(1.0, gamma, T, np.zeros(n), k, terms)
    shift_inv = all(getattr(t, "shift_invariant", True) for t in terms)
    ms = winners if winners is not None else winner_set(n, k)
    d_max = 4.0 * math.log(n) + 12.0
    best = (math.inf, 0, math.nan)
    for _ in range(5):
        grid = gap_grid(n, d_max, points)
        at_end = False
        for m in ms:

            def point(d, v, m=m):
                return point_a(field, n, k, m, d, v, shift_inv)

            cand, _ = scan_branch(n, k, m, grid, point, largest=False)
            if cand is not None and cand[2] == 0:
                # stable from d -> 0: the branch leaves the uniform state at the linear
                # threshold (a supercritical pitchfork)
                cand = (min(cand[0], lin), 0.0, 0)
            if cand is not None and cand[0] < best[0]:
                best = (cand[0], m, cand[1])
                at_end = cand[2] == len(grid) - 1
        if not at_end:
            break
        d_max *= 2.0
    return BalancedThresholds(lin, best[0], best[1], best[2])


def _strength_scan(
    spec_unit: BalancerSpec,
    a: float,
    n: int,
    k: int,
    gamma: float,
    T: float,
    rate: float,
    points: int = 160,
) -> float:
    """For a scheme whose terms are linear in its strength ``s`` (aux, importance, z-loss):
    ``sup`` of the strengths at which a stable m-winner state exists at this ``a`` (0: none at
    any strength), from one scan of each branch: at gap ``d`` the winner and loser equations fix
    ``s(d)`` (and, for the z-loss, the common level)."""
    terms = field_terms(spec_unit, rate=rate)
    unit = VectorField(0.0, gamma, T, np.zeros(n), k, terms)
    bare = VectorField(0.0, gamma, T, np.zeros(n), k)
    zl = [t for t in terms if not getattr(t, "shift_invariant", True)]
    best = 0.0
    d_max = 4.0 * math.log(n) + 12.0 + 2.0 * math.log1p(a / (gamma * T))

    def point(m, d, vals):
        if zl:
            # E_l: a X_l - gamma c + s g_l(c) = 0, E_w likewise, g = -kappa (c/T + L0) p, so
            # g_w / g_l = p_w / p_l and the common level c is linear
            st0 = two_level_state(bare, n, k, m, d, 0.0, vals, 1.0)
            X = st0.pi / k
            p = st0.p
            rho = p[0] / p[-1]
            if abs(rho - 1.0) < 1e-14:
                return None
            c = (gamma * T * d - a * X[0] + a * X[-1] * rho) / (gamma * (rho - 1.0))
        else:
            c = 0.0
        st = two_level_state(unit, n, k, m, d, c, vals, 0.0)
        g = unit.drift_at(st) + gamma * st.r  # the terms at unit strength
        base = a * st.pi / k - gamma * st.r
        if zl:
            if not g[-1] < 0 and not g[-1] > 0:
                return None
            s = -base[-1] / g[-1]
        else:
            dg = g[0] - g[-1]
            if not dg < 0:
                return None
            s = -(base[0] - base[-1]) / dg
        if not s > 0:
            return None
        J = a / k * st.dpi - gamma * np.eye(n) + s * (unit.jacobian_at(st) + gamma * np.eye(n))
        return float(s), max_eig(J)

    for m in winner_set(n, k):
        grid = gap_grid(n, d_max, points)

        def pt(d, v, m=m):
            return point(m, d, v)

        cand, _ = scan_branch(n, k, m, grid, pt, largest=True)
        if cand is not None:
            if cand[2] == len(grid) - 1:
                return math.inf  # still stable at the end of the scan: no finite strength
            if cand[2] == 0:
                # stable from d -> 0: the branch is born at the linear threshold, where the
                # strength is the one that makes the uniform state marginal
                cand = (max(cand[0], _linear_strength(spec_unit, a, n, k, gamma, T, rate)),)
            best = max(best, cand[0])
    return best


def _linear_strength(spec_unit, a, n, k, gamma, T, rate) -> float:
    """Strength at which the uniform state's contrast eigenvalue vanishes at this ``a``."""
    from scipy.optimize import brentq

    p = RouterParams(a=a, gamma=gamma, T=T, n_experts=n)

    def lam(s):
        return effective_parameters(spec_unit.scaled(s), p, top_k=k, rate=rate).contrast

    if lam(0.0) <= 0:
        return 0.0
    hi = 1.0
    while lam(hi) > 0:
        hi *= 4.0
        if hi > 1e12:
            return math.inf
    return float(brentq(lam, 0.0, hi, xtol=1e-14, rtol=1e-12))


def noisy_collapse_threshold(
    n_experts: int,
    top_k: int = 1,
    gamma: float = 1.0,
    T: float = 1.0,
    *,
    sigma: float = 0.0,
    jitter: float = 0.0,
) -> tuple[float, float]:
    """``(a_SN, d)`` of the noisy selection: the fold ``min_d k gamma T d / (pi_w - pi_l)`` of the
    one-winner branch with the inclusion probabilities of
    :func:`~moebif.model.balancers.noisy_two_level` (for Gumbel noise, ``sigma = 0``, the fold of
    :mod:`moebif.model.symmetric` for top-1)."""
    from scipy.optimize import minimize_scalar

    n, k = int(n_experts), int(top_k)

    def g(d):
        pw, pl = noisy_two_level(n, 1, k, d, sigma=sigma, jitter=jitter)
        return k * d / (pw - pl) if pw > pl else math.inf

    grid = np.geomspace(0.05, 4.0 * math.log(n) + 12.0 + 8.0 * sigma, 60)
    vals = [g(d) for d in grid]
    i = int(np.argmin(vals))
    if i == 0:
        return linear_noisy(n, k, gamma, T, sigma, jitter), 0.0
    res = minimize_scalar(
        g,
        bounds=(grid[i - 1], grid[min(i + 1, len(grid) - 1)]),
        method="bounded",
        options={"xatol": 1e-8},
    )
    return float(res.fun) * gamma * T, float(res.x)


def linear_noisy(n, k, gamma, T, sigma, jitter) -> float:
    """Linear threshold of the noisy selection: ``k gamma T / alpha_noise``."""
    return k * gamma * T / noisy_uniform_slope(n, k, sigma=sigma, jitter=jitter)


#: name -> scheme class, for the names with a minimal-strength theory (from the registry)
STRENGTH_SCHEMES = {
    name: cls for name, cls in SCHEMES.items() if name in getattr(cls, "strength_names", ())
}


def scheme_spec(name: str, strength: float) -> BalancerSpec:
    """The :class:`BalancerSpec` of one scheme of :data:`STRENGTH_SCHEMES` at ``strength``."""
    if name not in STRENGTH_SCHEMES:
        raise ParameterError("scheme", f"must be one of {', '.join(STRENGTH_SCHEMES)}")
    return BalancerSpec(**STRENGTH_SCHEMES[name]().parse(name, float(strength), {}, name))


def minimal_strength(
    name: str,
    a: float,
    n_experts: int,
    top_k: int = 1,
    gamma: float = 1.0,
    T: float = 1.0,
    *,
    rate: float = 1.0,
    batch: int | None = None,
    s_max: float = 1e6,
    rtol: float = 1e-7,
) -> float:
    """Smallest strength of scheme ``name`` (:data:`STRENGTH_SCHEMES`) with
    ``collapse_a(strength) > a``, i.e. no stable collapsed state at this ``a`` (0 if the bare
    router has none; ``inf`` if no finite strength does it). For ``capacity`` it is the *largest*
    capacity factor ``cf > 1`` with ``collapse_a(cf) > a`` (``inf``: any; ``nan``: none).

    Gradient schemes (linear in their coefficient) are solved by one scan of each branch
    (:func:`_strength_scan`); capacity and noise by bisection on ``collapse_a``."""
    from scipy.optimize import brentq

    n, k = int(n_experts), int(top_k)
    gamma = check_positive("gamma", gamma)
    T = check_positive("T", T)
    bare = thresholds(n, k, gamma, T).collapse
    kind = getattr(STRENGTH_SCHEMES.get(name), "kind", None)
    if kind == "gradient":
        if a < bare:
            return 0.0
        s = _strength_scan(scheme_spec(name, 1.0), a, n, k, gamma, T, rate)
        return s if s <= s_max else math.inf

    def excess(s):
        th = balanced_thresholds(scheme_spec(name, s), n, k, gamma, T, rate=rate, batch=batch)
        return th.collapse - a

    if kind == "capacity" and batch is None:
        if a < bare:
            return math.inf
        cf = capacity_scan(a, n, k, gamma, T)
        return cf if cf > 1.0 else math.nan
    if kind == "capacity":
        if a < bare:
            return math.inf
        lo, hi = 1.0 + 1e-6, 1.5
        if excess(lo) <= 0:
            return math.nan
        while excess(hi) > 0:
            hi = 1.0 + 2.0 * (hi - 1.0)
            if hi > 64:
                return math.inf
        return float(brentq(excess, lo, hi, rtol=rtol))
    if a < bare:
        return 0.0
    lo, hi = 0.0, 0.5
    while excess(hi) <= 0:
        lo, hi = hi, 2.0 * hi
        if hi > s_max:
            return math.inf
    return float(brentq(excess, lo, hi, rtol=rtol, xtol=1e-10))


def branch_drift_max(
    a: float, n_experts: int, top_k: int = 1, gamma: float = 1.0, T: float = 1.0
) -> float:
    """``max_{m, d >= 0} [a (pi_w - pi_l) / k - gamma T d]``: the largest mean-field drift of the
    winner-loser score gap on the two-level branches (0 when the uniform state attracts every
    branch). A relay acting on that gap at a rate above it (the loss-free bias with
    ``2 u / eta``, or the aux loss under Adam with ``2 lr / eta``) leaves no collapsed state and
    no collapsing excursion."""
    from scipy.optimize import minimize_scalar

    n, k = int(n_experts), int(top_k)
    best = 0.0
    grid = gap_grid(n, 4.0 * math.log(n) + 12.0 + a / (gamma * T), 160)
    for m in winner_set(n, k):
        table = two_level_table(n, k, m, grid)
        vals = [a * (v[0] - v[1]) / k - gamma * T * d for v, d in zip(table, grid, strict=True)]
        i = int(np.argmax(vals))

        def drift(d, m=m):
            v = two_level_table(n, k, m, (float(d),))[0]
            return a * (v[0] - v[1]) / k - gamma * T * d

        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        res = minimize_scalar(
            lambda d: -drift(d), bounds=(lo, hi), method="bounded", options={"xatol": 1e-10}
        )
        best = max(best, vals[i], -float(res.fun))
    return best


def hysteresis_width(
    spec: BalancerSpec,
    a: float,
    gamma: float = 1.0,
    T: float = 1.0,
    *,
    rate: float = 1.0,
    points: int = 600,
) -> float:
    """Width ``2 H`` of the hysteresis loop in the skew ``h = b1 - b2`` of two experts with the
    smooth terms of ``spec`` (eqs. 17-18 with the terms): along ``y = r1 - r2`` the skew that
    holds ``y`` at rest is ``h(y) = -(F_1 - F_2)`` (with the common level at rest for the
    z-loss); ``H = -min_{y > 0} h(y)`` (0 when ``h`` is increasing: no hysteresis)."""
    from scipy.optimize import brentq, minimize_scalar

    terms = field_terms(spec, rate=rate)
    field = VectorField(a, gamma, T, np.zeros(2), 1, terms)
    shift_inv = all(getattr(t, "shift_invariant", True) for t in terms)

    def h_of(y):
        def common(c):
            f = field(np.array([c + 0.5 * y, c - 0.5 * y]))
            return f[0] + f[1]

        c = 0.0
        if not shift_inv:
            lo, hi = -1.0, 1.0
            while common(lo) * common(hi) > 0:
                lo, hi = 2 * lo, 2 * hi
            c = brentq(common, lo, hi, xtol=1e-13)
        f = field(np.array([c + 0.5 * y, c - 0.5 * y]))
        return -(f[0] - f[1])

    y = np.linspace(1e-4, 2.0 * (a + 1.0) / gamma + 4.0 * T, points)
    hv = np.array([h_of(v) for v in y])
    i = int(np.argmin(hv))
    if hv[i] >= 0 or i == 0:
        return 0.0
    res = minimize_scalar(
        h_of,
        bounds=(y[max(i - 1, 0)], y[min(i + 1, points - 1)]),
        method="bounded",
        options={"xatol": 1e-10},
    )
    return float(-2.0 * min(res.fun, hv[i]))
