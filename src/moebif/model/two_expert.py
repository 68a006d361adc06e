"""Closed forms of the reduced two-expert router, eq. (6): y' = F(y) = a tanh(y/2T) - gamma y + h.

Everything here is a pure function of arrays and parameters (Kiselev 2026, sections 3-7):

- the drift F (6) and its derivatives F_y (15), F_yy, F_yyy; the potential V (12), V' = -F;
- the load map u = tanh(y/2T) (7) and its inverse;
- all equilibria with their stability (Thm 4.1, Thm 5.1);
- thresholds: a_c = N gamma T (10), the hysteresis half-width H(a) (18), the fold curve (16);
- the cusp: the local normal form (19)-(21) and the non-degeneracy derivatives of Prop. 6.1;
- the linearisation of the N-expert system at the uniform state, eq. (9).

Numerical notes. It is convenient to write the state as ``q = y / 2T``: then
``F = a tanh q - 2 gamma T q + h`` and the critical points of F (where F_y = 0) are
``q = +-q_a`` with ``sinh q_a = sqrt(kappa - 1)``, ``kappa = a / (2 gamma T)``. On each of the
(at most three) intervals between critical points F is strictly monotone, so every real root is
bracketed and found by a safeguarded Newton-bisection iteration that keeps the bracket (it
converges to the last ulp; scipy's brentq gives the same roots, see the tests, but importing
scipy.optimize would triple the start-up time of ``moebif theory``). Differences that cancel
near the cusp (``tanh q - q``, ``sinh q cosh q - q``) are evaluated by their Taylor series.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..params import RouterParams, check_positive

__all__ = [
    "CuspNormalForm",
    "Equilibrium",
    "critical_feedback",
    "cusp_derivatives",
    "cusp_fold_approximation",
    "cusp_normal_form",
    "drift",
    "drift_dy",
    "drift_dyy",
    "drift_dyyy",
    "equilibria",
    "fold_curve",
    "hysteresis_halfwidth",
    "load",
    "lowest_equilibrium",
    "potential",
    "score_gap",
    "stability_ratio",
    "uniform_state_eigenvalues",
]

_EPS = np.finfo(float).eps


def _tanh_series_coefficients(n: int) -> tuple[float, ...]:
    """Taylor coefficients c_k of tanh x = sum_k c_k x^(2k+1), from tanh' = 1 - tanh^2:
    (2k+1) c_k = -sum_{i+j=k-1} c_i c_j, computed exactly with fractions."""
    from fractions import Fraction

    c = [Fraction(1)]
    for k in range(1, n):
        c.append(-sum(c[i] * c[k - 1 - i] for i in range(k)) / (2 * k + 1))
    return tuple(float(x) for x in c)


# tanh q - q by its series for |q| < 1/2 (radius pi/2: 24 terms leave < 1e-19 relative)
_TANH_C = _tanh_series_coefficients(24)
_SERIES_Q = 0.5


# ----------------------------------------------------------------------------------------------
# load map (7)


def load(y, T: float):
    """Load imbalance ``u = p1 - p2 = tanh(y / 2T)``, eq. (7). Vectorised over ``y``."""
    return np.tanh(np.asarray(y, dtype=float) / (2.0 * T))


def score_gap(u, T: float):
    """Inverse of :func:`load`: ``y = 2T artanh(u)`` for ``-1 < u < 1`` (``+-inf`` at ``+-1``)."""
    u = np.asarray(u, dtype=float)
    with np.errstate(divide="ignore"):
        return 2.0 * T * np.arctanh(u)


# ----------------------------------------------------------------------------------------------
# drift (6), its derivatives (15), potential (12)


def _tanh_minus_id(q):
    """``tanh q - q`` without cancellation near ``q = 0`` (vectorised)."""
    q = np.asarray(q, dtype=float)
    small = np.abs(q) < _SERIES_Q
    x = np.where(small, q, 0.0)
    x2 = x * x
    acc = np.zeros_like(x)
    for ck in reversed(_TANH_C[1:]):  # Horner in x^2, from c_1 x^3 on
        acc = acc * x2 + ck
    series = acc * x2 * x
    return np.where(small, series, np.tanh(np.where(small, 1.0, q)) - q)


def _tanh_minus_id_scalar(q: float) -> float:
    if abs(q) >= _SERIES_Q:
        return math.tanh(q) - q
    x2 = q * q
    acc = 0.0
    for ck in reversed(_TANH_C[1:]):
        acc = acc * x2 + ck
    return acc * x2 * q


def _sech2(q):
    # 1/cosh^2 without overflow: cosh overflows near |q| = 710, where sech^2 is 0 anyway
    with np.errstate(over="ignore"):
        return 1.0 / np.cosh(q) ** 2


def drift(y, params: RouterParams):
    """Drift ``F(y) = a tanh(y/2T) - gamma y + h`` of the reduced system, eq. (6)."""
    p = params
    q = np.asarray(y, dtype=float) / (2.0 * p.T)
    c = 2.0 * p.gamma * p.T
    # near q = 0 write a tanh q - c q = (a - c) q + a (tanh q - q): the two large terms that
    # cancel at the cusp (a ~ c) are never formed
    near = (p.a - c) * q + p.a * _tanh_minus_id(q)
    far = p.a * np.tanh(q) - c * q
    return np.where(np.abs(q) < _SERIES_Q, near, far) + p.h


def drift_dy(y, params: RouterParams):
    """``F_y = (a / 2T) sech^2(y/2T) - gamma``, eq. (15): the eigenvalue at an equilibrium."""
    p = params
    q = np.asarray(y, dtype=float) / (2.0 * p.T)
    t2 = np.tanh(q) ** 2
    # sech^2 = 1 - tanh^2: (a - 2 gamma T)/2T - (a/2T) tanh^2 q has no cancellation near the cusp
    near = (p.a - 2.0 * p.gamma * p.T) / (2.0 * p.T) - p.a / (2.0 * p.T) * t2
    far = p.a / (2.0 * p.T) * _sech2(q) - p.gamma
    return np.where(t2 < 0.5, near, far)


def drift_dyy(y, params: RouterParams):
    """``F_yy = -(a / 2T^2) sech^2(q) tanh(q)`` with ``q = y/2T``."""
    p = params
    q = np.asarray(y, dtype=float) / (2.0 * p.T)
    return -p.a / (2.0 * p.T**2) * _sech2(q) * np.tanh(q)


def drift_dyyy(y, params: RouterParams):
    """``F_yyy = -(a / 4T^3) sech^2(q) (sech^2(q) - 2 tanh^2(q))`` with ``q = y/2T``."""
    p = params
    q = np.asarray(y, dtype=float) / (2.0 * p.T)
    s2 = _sech2(q)
    return -p.a / (4.0 * p.T**3) * s2 * (s2 - 2.0 * np.tanh(q) ** 2)


def _log_cosh(x):
    # log cosh x = |x| + log1p(exp(-2|x|)) - log 2: exact for all x, no overflow
    ax = np.abs(x)
    return ax + np.log1p(np.exp(-2.0 * ax)) - math.log(2.0)


def potential(y, params: RouterParams):
    """Potential ``V(y) = gamma y^2/2 - 2aT log cosh(y/2T) - h y``, eq. (12); ``y' = -V'(y)``."""
    p = params
    y = np.asarray(y, dtype=float)
    return 0.5 * p.gamma * y**2 - 2.0 * p.a * p.T * _log_cosh(y / (2.0 * p.T)) - p.h * y


# ----------------------------------------------------------------------------------------------
# thresholds (10), (16), (18)


def critical_feedback(gamma: float, T: float, n_experts: int = 2) -> float:
    """Feedback strength ``a_c = N gamma T`` where the uniform state loses stability, eq. (10)."""
    gamma = check_positive("gamma", gamma)
    T = check_positive("T", T)
    if n_experts < 2:
        raise ValueError(f"n_experts: must be >= 2, got {n_experts}")
    return n_experts * gamma * T


def stability_ratio(params: RouterParams) -> float:
    """``kappa = a / (N gamma T)``: below 1 the uniform state is linearly stable."""
    return params.kappa


def _shcosh_minus_q(q):
    """``sinh(q) cosh(q) - q = sinh(2q)/2 - q`` without cancellation near ``q = 0``.

    Series: ``sum_{k>=1} (2q)^(2k+1) / (2 (2k+1)!)``, used for |q| < 0.5 (13 terms: error < 1e-30).
    """
    q = np.asarray(q, dtype=float)
    direct = 0.5 * np.sinh(np.where(np.abs(q) < 0.5, 0.0, 2.0 * q)) - q
    x = 2.0 * np.where(np.abs(q) < 0.5, q, 0.0)
    x2 = x * x
    term = x * x2 / 12.0  # k = 1: x^3 / (2 * 3!)
    series = term.copy()
    for k in range(2, 14):
        term = term * x2 / ((2 * k) * (2 * k + 1))
        series = series + term
    return np.where(np.abs(q) < 0.5, series, direct)


def _critical_q(kappa_minus_one):
    """``q_a = arcosh sqrt(a / 2 gamma T) = arsinh sqrt(kappa - 1)``; ``kappa - 1`` passed directly
    so that it is not formed by a cancelling subtraction."""
    return np.arcsinh(np.sqrt(np.maximum(kappa_minus_one, 0.0)))


def hysteresis_halfwidth(a, gamma: float, T: float):
    """Half-width ``H(a) = 2 gamma T (sinh q_a cosh q_a - q_a)`` of the bistable band, eq. (18).

    Three equilibria exist iff ``|h| < H(a)`` (Thm 5.1); ``H(a) = 0`` for ``a <= 2 gamma T``.
    Vectorised over ``a``; returns a float for a scalar ``a``.
    """
    gamma = check_positive("gamma", gamma)
    T = check_positive("T", T)
    a_arr = np.asarray(a, dtype=float)
    ac = 2.0 * gamma * T
    q_a = _critical_q((a_arr - ac) / ac)
    H = np.where(a_arr > ac, ac * _shcosh_minus_q(q_a), 0.0)
    return float(H) if H.ndim == 0 else H


def fold_curve(q, gamma: float, T: float):
    """Fold (saddle-node) set in the ``(a, h)`` plane, eq. (16), parametrised by ``q = y/2T``.

    ``a(q) = 2 gamma T cosh^2 q``, ``h(q) = 2 gamma T (q - sinh q cosh q)``; ``q = 0`` is the cusp.
    Returns ``(a, h)`` with the shape of ``q``; the fold point's state is ``y = 2 T q``.
    """
    gamma = check_positive("gamma", gamma)
    T = check_positive("T", T)
    q = np.asarray(q, dtype=float)
    ac = 2.0 * gamma * T
    a = ac * np.cosh(q) ** 2
    h = -ac * _shcosh_minus_q(q) + 0.0  # + 0.0: no "-0.0" at the cusp
    return a, h


# ----------------------------------------------------------------------------------------------
# equilibria (Thm 4.1, Thm 5.1)


@dataclass(frozen=True, slots=True)
class Equilibrium:
    """An equilibrium ``y`` of eq. (6) with its load ``u = tanh(y/2T)``, stability and
    eigenvalue ``F_y(y)``. ``stable`` means asymptotically stable: F changes sign from + to -
    across ``y`` (so the non-hyperbolic point at ``a = 2 gamma T``, ``h = 0`` is stable, and the
    double root at a fold is not)."""

    y: float
    u: float
    stable: bool
    eigenvalue: float

    def to_dict(self) -> dict:
        return {"y": self.y, "u": self.u, "stable": self.stable, "eigenvalue": self.eigenvalue}


def _scaled_drift(q: float, a: float, c: float, h: float) -> float:
    # F in terms of q = y/2T: a tanh q - 2 gamma T q + h, with c = 2 gamma T (see drift())
    if abs(q) < _SERIES_Q:
        return (a - c) * q + a * _tanh_minus_id_scalar(q) + h
    return a * math.tanh(q) - c * q + h


def _root(lo: float, hi: float, a: float, c: float, h: float) -> float:
    """The root of ``f(q) = a tanh q - c q + h`` in ``[lo, hi]``, where f is monotone and
    ``f(lo) f(hi) <= 0``: Newton steps, replaced by bisection whenever they leave the bracket."""
    flo = _scaled_drift(lo, a, c, h)
    fhi = _scaled_drift(hi, a, c, h)
    if flo == 0.0:
        return lo
    if fhi == 0.0:
        return hi
    if (flo > 0.0) == (fhi > 0.0):
        raise ArithmeticError(f"root not bracketed in [{lo!r}, {hi!r}]")
    neg, pos = (lo, hi) if flo < 0.0 else (hi, lo)  # f(neg) < 0 < f(pos)
    x = 0.5 * (lo + hi)
    for _ in range(400):
        fx = _scaled_drift(x, a, c, h)
        if fx == 0.0:
            return x
        if fx < 0.0:
            neg = x
        else:
            pos = x
        t = math.tanh(x)
        dfx = (a - c) - a * t * t
        x_new = x - fx / dfx if dfx != 0.0 else math.nan
        left, right = min(neg, pos), max(neg, pos)
        if not left < x_new < right:  # also catches NaN
            x_new = left + 0.5 * (right - left)
        if abs(x_new - x) <= 2.0 * _EPS * abs(x_new) or right - left <= 2.0 * _EPS * max(
            abs(left), abs(right)
        ):
            return x_new
        if x_new == x:
            return x
        x = x_new
    return x


def lowest_equilibrium(a: float, gamma: float, T: float, h: float) -> float:
    """The lowest stable equilibrium ``y`` of ``y' = a tanh(y/2T) - gamma y + h`` for any real
    ``a`` (an effective feedback ``a - rho`` may be negative): the state a sweep starting far
    below the folds sits in."""
    c = 2.0 * gamma * T
    lo, hi = (h - abs(a)) / c - 1.0, (h + abs(a)) / c + 1.0
    if a > c:
        qa = math.asinh(math.sqrt((a - c) / c))
        if a * math.tanh(-qa) + c * qa + h < 0:  # a root left of -q_a exists: the lowest
            hi = -qa
    return 2.0 * T * _root(lo, hi, a, c, h)


def equilibria(params: RouterParams) -> list[Equilibrium]:
    """All real equilibria of the reduced system (6), sorted by ``y``.

    One equilibrium (stable) for ``a <= 2 gamma T`` or ``|h| > H(a)``; three (stable, unstable,
    stable) for ``|h| < H(a)``; two at a fold ``|h| = H(a)``, where the double root is reported
    once with eigenvalue 0 and ``stable=False``. Roots are accurate to a few ulps relative, apart
    from the intrinsic ill-conditioning at a fold or the cusp.
    """
    p = params
    if p.n_experts != 2:
        raise ValueError(
            "n_experts: the reduced equation (6) describes two experts; "
            f"got n_experts={p.n_experts} (use moebif.model.meanfield for N experts)"
        )
    a, h, T = p.a, p.h, p.T
    c = 2.0 * p.gamma * T
    # every root has |a tanh q| <= a, so it lies in [(h - a)/c, (h + a)/c]; F(lo) >= 0 >= F(hi)
    lo, hi = (h - a) / c, (h + a) / c
    pad = 1e-9 * (abs(lo) + abs(hi) + 1.0)  # rounding in lo, hi must not flip F's sign there
    lo, hi = lo - pad, hi + pad
    H = hysteresis_halfwidth(a, p.gamma, T) if a > c else 0.0
    # F is evaluated with an absolute rounding error of a few eps * (|a| + |c q| + |h|)
    band = 16.0 * _EPS * (a + abs(h) + abs(lo) * c + abs(hi) * c)

    roots: list[tuple[float, bool, bool]] = []  # (q, stable, double root)
    if H <= band:
        # a <= 2 gamma T (or numerically indistinguishable from the cusp): F strictly decreasing
        roots.append((_root(lo, hi, a, c, h), True, False))
    else:
        qa = float(_critical_q((a - c) / c))
        f_left = _scaled_drift(-qa, a, c, h)  # local minimum of F, = h - H
        f_right = _scaled_drift(qa, a, c, h)  # local maximum of F, = h + H
        fold_left, fold_right = abs(f_left) <= band, abs(f_right) <= band
        if fold_left:
            roots.append((-qa, False, True))
        elif f_left < 0.0:
            roots.append((_root(min(lo, -qa), -qa, a, c, h), True, False))
        if not (fold_left or fold_right) and f_left < 0.0 < f_right:
            roots.append((_root(-qa, qa, a, c, h), False, False))
        if fold_right:
            roots.append((qa, False, True))
        elif f_right > 0.0:
            roots.append((_root(qa, max(hi, qa), a, c, h), True, False))

    out = []
    for q, stable, double in roots:
        y = 2.0 * T * q
        eig = 0.0 if double else float(drift_dy(y, p))
        out.append(Equilibrium(y=y, u=math.tanh(q), stable=stable, eigenvalue=eig))
    return out


# ----------------------------------------------------------------------------------------------
# cusp (19)-(21), Prop. 6.1


@dataclass(frozen=True, slots=True)
class CuspNormalForm:
    """Local normal form ``x' = mu x - x^3 + epsilon`` of eq. (20) at given ``(a, h)``.

    From the expansion (19), ``F = mu y - c y^3 + h + O(y^5)`` with ``mu = a/2T - gamma`` and
    ``c = a / (24 T^3)``. The substitution ``y = x / sqrt(c)`` gives eq. (20) with
    ``epsilon = h sqrt(c)`` (the paper writes ``epsilon = h`` "up to smooth rescaling"; the
    factor ``sqrt(c)`` is needed for eq. (21) to match eq. (16)). Its fold set is
    ``4 mu^3 = 27 epsilon^2`` (21).
    """

    mu: float
    cubic: float
    epsilon: float
    state_scale: float  # y = state_scale * x

    @property
    def discriminant(self) -> float:
        """``4 mu^3 - 27 epsilon^2``: > 0 inside the bistable cusp region, 0 on its folds."""
        return 4.0 * self.mu**3 - 27.0 * self.epsilon**2


def cusp_normal_form(params: RouterParams) -> CuspNormalForm:
    """Coefficients of the cusp normal form (19)-(20) at ``params``."""
    p = params
    mu = p.a / (2.0 * p.T) - p.gamma
    cubic = p.a / (24.0 * p.T**3)
    if cubic == 0.0:
        raise ValueError("a: the cusp normal form needs a > 0")
    return CuspNormalForm(
        mu=mu, cubic=cubic, epsilon=p.h * math.sqrt(cubic), state_scale=1.0 / math.sqrt(cubic)
    )


def cusp_fold_approximation(a, gamma: float, T: float):
    """Fold half-width predicted by the normal form (21): ``|h| = sqrt(4 mu^3 / (27 c))``.

    Leading-order approximation of :func:`hysteresis_halfwidth` as ``a -> 2 gamma T``;
    0 for ``a <= 2 gamma T``. Vectorised over ``a``.
    """
    gamma = check_positive("gamma", gamma)
    T = check_positive("T", T)
    a = np.asarray(a, dtype=float)
    mu = np.maximum(a / (2.0 * T) - gamma, 0.0)
    c = a / (24.0 * T**3)
    out = np.sqrt(4.0 * mu**3 / (27.0 * np.where(c > 0, c, 1.0)))
    return float(out) if out.ndim == 0 else out


def cusp_derivatives(gamma: float, T: float) -> dict[str, float]:
    """Derivatives of F at the cusp ``(y, a, h) = (0, 2 gamma T, 0)`` (Prop. 6.1), evaluated from
    the general formulas: ``F = F_y = F_yy = 0``, ``F_yyy = -gamma / 2T^2``, ``F_h = 1``,
    ``F_ya = 1 / 2T``."""
    p = RouterParams(a=2.0 * gamma * T, gamma=gamma, T=T, h=0.0)
    return {
        "F": float(drift(0.0, p)),
        "F_y": float(drift_dy(0.0, p)),
        "F_yy": float(drift_dyy(0.0, p)),
        "F_yyy": float(drift_dyyy(0.0, p)),
        "F_h": 1.0,  # F is affine in h with unit slope, eq. (6)
        "F_ya": float(_sech2(0.0) / (2.0 * T)),  # d/da of F_y = sech^2(y/2T) / 2T
    }


# ----------------------------------------------------------------------------------------------
# N experts: linearisation at the uniform state, eq. (9)


def uniform_state_eigenvalues(params: RouterParams) -> dict[str, float | int]:
    """Eigenvalues of the N-expert system (8) at the uniform state ``r_i = a / (N gamma)``
    (``b = 0``), eq. (9): ``-gamma`` on the common mode and ``a/(NT) - gamma`` with multiplicity
    ``N - 1`` on the contrast subspace."""
    p = params
    return {
        "common": -p.gamma,
        "contrast": p.a / (p.n_experts * p.T) - p.gamma,
        "contrast_multiplicity": p.n_experts - 1,
    }
