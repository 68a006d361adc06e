"""Metastability of the balanced router for ``a_SN < a < N gamma T`` (eq. 8, b = 0, top-1).

**Escape path.** By the symmetry that permutes the losers, the way from the uniform state to
collapse onto expert 1 runs along the line ``r = c 1 + x u`` with the unit contrast
``u = (N - 1, -1, ..., -1) / sqrt(N (N - 1))``; the common mode ``c`` relaxes by itself and
carries no noise (loads sum to one). On the line the score gap is
``d = (r_1 - r_l) / T = x sqrt(N / (N - 1)) / T`` and the potential is

    V(x) = gamma x^2 / 2 - a T log(e^{d} + N - 1) + const,
    V'(x) = gamma x - a sqrt((N - 1) / N) (p_w - p_l),

with the barrier ``Delta V = V(x_s) - V(0)`` at the one-winner saddle ``x_s``
(:func:`moebif.model.symmetric.barrier`).

**Batch noise.** One step changes the scores by ``eta a (l - p)`` plus the drift, with
``Cov(l) = (diag p - p p^T) / B``; per unit of ODE time ``t = n eta`` the covariance is
``eta a^2 (diag p - p p^T) / B``, so (Ito, diffusion limit)
``dr = -grad V dt + sqrt(eta a^2 / B) (diag p - p p^T)^{1/2} dW``. Along ``u``:

    dx = -V'(x) dt + sqrt(D(x)) dW,    D(x) = (eta a^2 / B) s(x),
    s(x) = u^T (diag p - p p^T) u = N p_w (1 - p_w) / (N - 1).

**Effective noise temperature.** ``s`` is ``1/N`` at the uniform state and grows along the path
(to ``N/(4(N - 1))`` at ``p_w = 1/2``), so the noise is not a constant temperature: the escape
exponent is the 1-d quasi-potential (Freidlin-Wentzell; exact stationary density of the 1-d
diffusion, ``rho ~ exp(-int 2 V'/D)``)

    Phi = int_0^{x_s} 2 V'(x) / D(x) dx = (Delta V / eps_0) * kappa_path,
    eps_0 = eta a^2 / (2 B N)   (the temperature at the uniform state, D(0) = 2 eps_0),
    kappa_path = (1 / Delta V) int_0^{x_s} V'(x) / (N s(x)) dx  (< 1).

So ``log E[tau] = const + kappa_path * Delta V / eps_0``: linear in the barrier-to-noise ratio
``X = Delta V / eps_0 = 2 B N Delta V / (eta a^2)`` with slope ``kappa_path`` (not 1: the noise
felt along the path is hotter than at the uniform state by the factor ``1 / kappa_path``).

**Mean escape time.** The 1-d mean first-passage time from ``x = 0`` to ``x_b > x_s`` is exact
for the 1-d diffusion: ``tau_1 = int_0^{x_b} dy e^{Psi(y)} int_{-inf}^{y} 2 e^{-Psi(z)} / D(z) dz``,
``Psi = int 2 V'/D``. The ``N - 2`` transverse contrasts add the Eyring-Kramers ratio of the
Gaussian widths at the well and at the saddle, ``[(D_u / lambda_u) / (D_s / lambda_s)]^{(N-2)/2}``
with ``lambda_u = gamma - a/(N T)``, ``D_u = eta a^2 / (B N)`` (uniform) and
``lambda_s = gamma - a p_l / T``, ``D_s = eta a^2 p_l / B`` (saddle, loser contrasts); and any of
the ``N`` experts can win: ``E[tau] ~= tau_1 F_perp / N``.

**Skew pulses.** A drift ``h`` on expert 1 during ``0 <= t < tau`` keeps the symmetric line:
``T d' = a (p_w - p_l) - gamma T d + h``. The mean-field router collapses iff ``d(tau) > d_s``;
:func:`pulse_threshold` gives the smallest such ``h`` for each ``tau``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..params import RouterParams
from .symmetric import collapse_threshold, symmetric_equilibria

__all__ = [
    "EscapeTheory",
    "escape_theory",
    "pulse_threshold",
]


def _pw_pl(d, n):
    """``(p_w, p_l)`` at gap ``d >= 0`` (one winner), overflow-free."""
    e = np.exp(-np.asarray(d, dtype=float))
    den = 1.0 + (n - 1) * e
    return 1.0 / den, e / den


@dataclass(frozen=True)
class EscapeTheory:
    """Escape from the uniform state over the one-winner saddle (see the module docstring).

    ``x_s``, ``d_s``: saddle on the contrast line; ``d_c``: the collapsed state; ``barrier``:
    ``Delta V``; ``kappa_path``: the slope of ``log E[tau]`` in ``X = Delta V / eps_0``;
    ``lambda_u``, ``lambda_s``: eigenvalues (of ``Hess V``) along the path at the uniform state
    (``> 0``) and at the saddle (``< 0``); ``transverse``: ``F_perp``."""

    params: RouterParams
    x_s: float
    d_s: float
    d_c: float
    barrier: float
    kappa_path: float
    lambda_u: float
    lambda_s: float
    transverse: float

    @property
    def n(self) -> int:
        return self.params.n_experts

    def x_of_d(self, d):
        n = self.n
        return np.asarray(d) * self.params.T * math.sqrt((n - 1) / n)

    def noise_temperature(self, *, batch: int, eta: float) -> float:
        """``eps_0 = eta a^2 / (2 B N)``."""
        return eta * self.params.a**2 / (2.0 * batch * self.n)

    def barrier_to_noise(self, *, batch: int, eta: float) -> float:
        """``X = Delta V / eps_0``."""
        return self.barrier / self.noise_temperature(batch=batch, eta=eta)

    def mean_escape_time(self, *, batch: int, eta: float, d_b: float | None = None) -> float:
        """Predicted ``E[tau]`` (ODE time) to reach gap ``d_b`` (default halfway from the saddle
        to the collapsed state) from the uniform state."""
        from scipy.integrate import cumulative_trapezoid

        p, n = self.params, self.n
        d_b = 0.5 * (self.d_s + self.d_c) if d_b is None else d_b
        sigma2 = eta * p.a**2 / batch
        # grid on x from deep in the well (x < 0: the winner below the others) to x_b
        x_b = float(self.x_of_d(d_b))
        width = math.sqrt(sigma2 / n / (2.0 * self.lambda_u))
        x = np.linspace(-12.0 * width - 0.2 * x_b, x_b, 40001)
        d = x * math.sqrt(n / (n - 1)) / p.T
        # p_w, p_l for either sign of d (for d < 0 expert 1 is the smallest of N equal-ish)
        z = np.stack([d, np.zeros_like(d)])
        zmax = np.maximum(d, 0.0)
        ew, el = np.exp(z[0] - zmax), np.exp(-zmax)
        den = ew + (n - 1) * el
        pw, pl = ew / den, el / den
        vprime = p.gamma * x - p.a * math.sqrt((n - 1) / n) * (pw - pl)
        D = sigma2 * n * pw * (1.0 - pw) / (n - 1)
        psi = cumulative_trapezoid(2.0 * vprime / D, x, initial=0.0)
        # e^{Psi(y)} int_{-inf}^{y} 2 e^{-Psi(z)} / D(z) dz in logs (Psi spans hundreds)
        log_inner = np.logaddexp.accumulate(np.log(2.0 * (x[1] - x[0]) / D) - psi)
        outer = np.exp(psi + log_inner)
        i0 = np.searchsorted(x, 0.0)
        tau1 = float(np.trapezoid(outer[i0:], x[i0:]))
        return tau1 * self.transverse / n


def escape_theory(params: RouterParams) -> EscapeTheory:
    """The quantities of the module docstring at ``params`` (``N >= 3``, ``h = 0``,
    ``a_SN < a < N gamma T``)."""
    from scipy.integrate import quad

    p, n = params, params.n_experts
    if n < 3:
        raise ValueError("n_experts: the escape over the one-winner saddle needs N >= 3")
    a_sn = collapse_threshold(n, p.gamma, p.T)
    if not a_sn < p.a < p.critical_a:
        raise ValueError(f"a: must be in the metastable window ({a_sn:.6g}, {p.critical_a:.6g})")
    eqs = sorted(
        (e for e in symmetric_equilibria(p.replace(h=0.0)) if e.winners == 1), key=lambda e: e.gap
    )
    d_s, d_c = eqs[0].gap, eqs[-1].gap
    c = math.sqrt((n - 1) / n)

    def vprime(x):
        pw, pl = _pw_pl(x / (c * p.T), n)
        return p.gamma * x - p.a * c * (pw - pl)

    def s(x):
        pw, _ = _pw_pl(x / (c * p.T), n)
        return n * pw * (1.0 - pw) / (n - 1)

    x_s = c * p.T * d_s
    opts = {"epsabs": 0.0, "epsrel": 1e-12, "limit": 200}
    barrier = quad(vprime, 0.0, x_s, **opts)[0]
    weighted = quad(lambda x: vprime(x) / (n * s(x)), 0.0, x_s, **opts)[0]
    pw_s, pl_s = _pw_pl(d_s, n)
    lam_u = p.gamma - p.a / (n * p.T)
    lam_s = p.gamma - p.a * n * pw_s * pl_s / p.T  # between mode of Hess V (negative)
    lam_perp_s = p.gamma - p.a * pl_s / p.T
    # [(D_u / lambda_u) / (D_s / lambda_s)]^{(N-2)/2}, D_u ~ 1/N, D_s ~ p_l
    transverse = ((1.0 / n) / lam_u / (pl_s / lam_perp_s)) ** ((n - 2) / 2.0)
    return EscapeTheory(
        params=p,
        x_s=x_s,
        d_s=d_s,
        d_c=d_c,
        barrier=barrier,
        kappa_path=weighted / barrier,
        lambda_u=lam_u,
        lambda_s=lam_s,
        transverse=transverse,
    )


def pulse_threshold(params: RouterParams, tau) -> np.ndarray:
    """Smallest skew ``h`` on one expert that, held for a time ``tau`` from the uniform state,
    makes the mean-field router (8) collapse (``d(tau) > d_s``); vectorised over ``tau``.

    ``h`` solves ``tau = int_0^{d_s} T dd / (a (p_w - p_l)(d) - gamma T d + h)``; below
    ``h_min = max_{[0, d_s]} (gamma T d - a (p_w - p_l))`` no pulse, however long, suffices."""
    from scipy.integrate import quad
    from scipy.optimize import brentq, minimize_scalar

    p, n = params, params.n_experts
    th = escape_theory(p)
    d_s = th.d_s

    def resist(d):
        pw, pl = _pw_pl(d, n)
        return p.gamma * p.T * d - p.a * (pw - pl)

    res = minimize_scalar(
        lambda d: -resist(d), bounds=(0.0, d_s), method="bounded", options={"xatol": 1e-12}
    )
    h_min = max(-res.fun, 0.0)
    parts = ((0.0, float(res.x)), (float(res.x), d_s))

    def time_to_saddle(h):
        # split at the bottleneck (the maximum of the resistance), where the integrand peaks
        f = lambda d: p.T / (h - resist(d))  # noqa: E731
        return sum(quad(f, lo, hi, epsrel=1e-11, limit=400)[0] for lo, hi in parts)

    out = []
    for t in np.atleast_1d(np.asarray(tau, dtype=float)):
        hi = h_min + 1.0
        while time_to_saddle(hi) > t:
            hi *= 2.0
        # the time diverges like delta^(-1/2) as h -> h_min + delta: shrink delta until it
        # exceeds t (quadrature stays well conditioned)
        delta = 1e-2 * (h_min + 1e-3)
        while time_to_saddle(h_min + delta) <= t and delta > 1e-14:
            delta *= 0.1
        lo = h_min + delta
        out.append(brentq(lambda h, t=t: time_to_saddle(h) - t, lo, hi, xtol=1e-13, rtol=1e-12))
    return np.array(out)
