"""The loss-free bias as a relay integral controller (part 3 of
:mod:`moebif.model.balancer_theory`): :class:`BiasTheory`, :class:`Chattering`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...params import RouterParams
from ..topk import topk_uniform_slope, two_level_inclusion_grid

__all__ = ["BiasTheory", "Chattering"]


@dataclass(frozen=True)
class Chattering:
    """Stationary fluctuations of the biased router at balance (two experts: the pair
    variables ``s = y + b``, ``b``, ``y``; N experts: one expert's deviation from the mean).

    ``regime``: ``noise`` (dithered relay, linear AR(1) theory), ``relay`` (deterministic
    relay) or ``unheld`` (the bias is too slow to hold balance against the batch noise);
    ``dither``: ``u kappa`` (per-step gain of the dithered relay);
    ``s_std``, ``b_std``, ``y_std``."""

    regime: str
    dither: float
    s_std: float
    b_std: float
    y_std: float


@dataclass(frozen=True)
class BiasTheory:
    """The loss-free bias of rate ``u`` per step on a router with step ``eta`` and batch ``B``
    (module docstring, part 3). ``U = 2u / eta`` is the relay rate on the winner-loser gap;
    ``lam``: the contrast eigenvalue ``A - gamma`` of the bare uniform state."""

    params: RouterParams
    u: float
    eta: float
    batch: int
    top_k: int = 1

    @property
    def n(self) -> int:
        return self.params.n_experts

    @property
    def alpha(self) -> float:
        return topk_uniform_slope(self.n, self.top_k) if self.top_k > 1 else 1.0 / self.n

    @property
    def gain(self) -> float:
        """``A = a alpha_k / (k T)`` (``a / 2T`` for two experts)."""
        p = self.params
        return p.a * self.alpha / (self.top_k * p.T)

    @property
    def lam(self) -> float:
        return self.gain - self.params.gamma

    @property
    def U(self) -> float:
        return 2.0 * self.u / self.eta

    # linear theory ------------------------------------------------------------------------

    @property
    def first_return_radius_linear(self) -> float:
        """``U A / lambda^2`` (score units): the linear first-return radius (``inf`` if
        ``lambda <= 0``)."""
        return self.U * self.gain / self.lam**2 if self.lam > 0 else math.inf

    @property
    def first_return_radius_issue(self) -> float:
        """``U / lambda``: the issue's conjecture (``s' = lambda s + h - u sign s`` at ``b``
        frozen)."""
        return self.U / self.lam if self.lam > 0 else math.inf

    @property
    def absorbed_skew_linear(self) -> float:
        """``U A / lambda``: the largest skew step absorbed from balance (``inf`` if
        ``lambda <= 0``)."""
        return self.U * self.gain / self.lam if self.lam > 0 else math.inf

    @property
    def absorbed_skew_issue(self) -> float:
        """``U``: the issue's conjecture ``|h| < u`` in these units."""
        return self.U

    # nonlinear mean field (two-level, one winner) ------------------------------------------

    def _dpi(self):
        """``pi_w - pi_l`` of the one-winner state as a vectorised function of the score gap."""
        p, n, k = self.params, self.n, self.top_k
        if k == 1:

            def f(s):
                d = np.asarray(s, dtype=float) / p.T
                e = np.exp(-np.abs(d))
                # winner ahead (d > 0): (1 - e) / (1 + (N - 1) e); behind: the loser's view
                return np.sign(d) * (1.0 - e) / (1.0 + (n - 1) * e)

            return f
        grid = np.linspace(0.0, 12.0, 601)
        vals = np.diff(two_level_inclusion_grid(n, 1, k, grid)[:, 1::-1], axis=1)[:, 0]

        def g(s):
            d = np.asarray(s, dtype=float) / p.T
            return np.sign(d) * np.interp(np.abs(d), grid, vals)

        return g

    def _escape_many(self, s0, h, s_thr: float, t_max: float, dt: float = 0.02) -> np.ndarray:
        """Mean field (RK4, vectorised over the initial gaps ``s0`` and skews ``h``) from
        ``(y = s0, b = 0)``: does ``s = y + b`` reach ``s_thr`` before it returns to 0? While
        ``s > 0`` the relay is ``b = -U t``, so ``y' = a dpi(y - U t) / k - gamma y + h``."""
        p, k = self.params, self.top_k
        dpi = self._dpi()
        U = self.U
        y = np.array(s0, dtype=float)
        h = np.broadcast_to(np.asarray(h, dtype=float), y.shape)
        alive = np.ones(y.shape, dtype=bool)
        esc = np.zeros(y.shape, dtype=bool)
        t = 0.0

        def f(t, y):
            return p.a * dpi(y - U * t) / k - p.gamma * y + h

        for _ in range(int(t_max / dt)):
            k1 = f(t, y)
            k2 = f(t + dt / 2, y + dt / 2 * k1)
            k3 = f(t + dt / 2, y + dt / 2 * k2)
            k4 = f(t + dt, y + dt * k3)
            y = np.where(alive, y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4), y)
            t += dt
            s = y - U * t
            up = alive & (s >= s_thr)
            esc |= up
            alive &= ~up & (s > 0.0)
            if not alive.any():
                break
        return esc

    def _boundary(self, make, s_thr: float, hi0: float) -> float:
        """Smallest value of a scanned quantity at which the mean field escapes: successive
        grids (64 points, zooming into the first escaping cell)."""
        t_max = 40.0 / self.params.gamma
        lo, hi = 0.0, hi0
        for _ in range(8):
            if make(np.array([hi]), s_thr, t_max)[0]:
                break
            lo, hi = hi, 2.0 * hi
        else:
            return math.inf
        for _ in range(4):
            x = np.linspace(lo, hi, 49)
            e = make(x, s_thr, t_max)
            i = int(np.argmax(e))
            if not e[i]:
                return hi
            lo, hi = x[max(i - 1, 0)], x[i]
        return 0.5 * (lo + hi)

    def escape_threshold(self) -> float:
        """Half the gap of the stable collapsed state of the bare reduced field (the level an
        excursion must reach to count as a collapse)."""
        from scipy.optimize import brentq

        p, k = self.params, self.top_k
        dpi = self._dpi()

        def f(s):
            return p.a * dpi(s) / k - p.gamma * s

        hi = (p.a + 1.0) / p.gamma + 1.0
        lo = 1e-6 * p.T
        if f(lo) <= 0:
            lo = self._peak() if self._peak() > 0 else lo
        try:
            return 0.5 * float(brentq(f, lo, hi))
        except ValueError:
            return 0.5 * hi

    def _peak(self) -> float:
        from scipy.optimize import minimize_scalar

        p, k = self.params, self.top_k
        dpi = self._dpi()
        res = minimize_scalar(
            lambda s: -(p.a * dpi(s) / k - p.gamma * s),
            bounds=(0.0, (p.a + 1.0) / p.gamma),
            method="bounded",
        )
        return float(res.x)

    def first_return_radius(self, *, s_thr: float | None = None) -> float:
        """Largest initial gap ``s0`` (bias 0, no skew) from which the mean-field router's gap
        first returns to 0 without reaching ``s_thr`` (default :meth:`escape_threshold`). This is
        **not** a recovery region: the bias has wound up by then and the gap can overshoot into
        a relay cycle; see :meth:`recovery_radius`. (Named ``capture_radius`` before.)"""
        s_thr = self.escape_threshold() if s_thr is None else s_thr

        def make(x, thr, t_max):
            return self._escape_many(np.minimum(x, 0.999 * thr), 0.0, thr, t_max)

        out = self._boundary(make, s_thr, min(self.first_return_radius_linear, 0.9 * s_thr))
        return out if out < 0.999 * s_thr else math.inf

    def recovery_radius(self) -> float:
        """Largest initial gap ``s0`` (bias 0, no skew) from which the closed loop returns to
        balance **and stays** (:func:`moebif.model.bias_relay.recovery_radius`)."""
        from ..bias_relay import recovery_radius

        return recovery_radius(self)

    def relay_cycle(self):
        """The closed loop's relay limit cycle of alternating collapses: existence, amplitude
        and period (:func:`moebif.model.bias_relay.relay_cycle`)."""
        from ..bias_relay import relay_cycle

        return relay_cycle(self)

    def absorbed_skew(self, *, s_thr: float | None = None) -> float:
        """Largest skew step ``h`` (on the winner-loser gap, from balance with ``b = 0``) that
        the mean-field router absorbs without reaching ``s_thr``."""
        s_thr = self.escape_threshold() if s_thr is None else s_thr

        def make(x, thr, t_max):
            return self._escape_many(np.full(x.shape, 1e-12), x, thr, t_max)

        return self._boundary(make, s_thr, max(self.absorbed_skew_linear, self.U))

    # chattering ------------------------------------------------------------------------------

    @property
    def kappa(self) -> float:
        """``sqrt(2B/pi) alpha_k / (T sqrt(q (1 - q)))``, ``q = k/N``: slope of
        ``E[sign(mean n - n_i)]`` in the selection deviation of expert ``i`` (score units)."""
        q = self.top_k / self.n
        return (
            math.sqrt(2.0 * self.batch / math.pi)
            * self.alpha
            / (self.params.T * math.sqrt(q * (1.0 - q)))
        )

    def _ar_matrices(self, u: float):
        p, k, B = self.params, self.top_k, self.batch
        q = k / self.n
        eta = self.eta
        g = self.gain
        kap = self.kappa
        M = np.array([[1.0 - eta * p.gamma + eta * g, eta * g], [-u * kap, 1.0 - u * kap]])
        sd_xi = math.sqrt(q * (1.0 - q) / B) / k
        cov = -math.sqrt(2.0 / math.pi) * sd_xi
        Q = np.array(
            [[(eta * p.a * sd_xi) ** 2, eta * p.a * u * cov], [eta * p.a * u * cov, u * u]]
        )
        return M, Q

    def hold_rate(self) -> float:
        """Smallest ``u`` for which the dithered relay holds the balanced state at all against
        the batch noise (spectral radius of the AR(1) map below 1; 0 when the bare uniform
        state is stable). Below it the balanced state is lost to the noise-driven instability
        (slow alternating collapses), whatever the capture radius says."""
        from scipy.optimize import brentq

        if self.lam <= 0:
            return 0.0

        def rad(u):
            M, _ = self._ar_matrices(u)
            return float(np.max(np.abs(np.linalg.eigvals(M)))) - 1.0

        hi = 1.0 / self.kappa
        if rad(hi) >= 0:
            return math.nan
        return float(brentq(rad, 1e-14, hi, xtol=1e-16))

    def chattering(self) -> Chattering:
        """Stationary fluctuations at balance (module docstring, part 3), in three regimes.

        ``noise`` (``u kappa < 1``): per expert ``i``,
        ``dr' = (1 - eta gamma) dr + eta a (alpha_k ds / (k T) + xi)``,
        ``dbeta' = dbeta + u (-kappa ds + nu)``, ``ds = dr + dbeta``, with the batch noise
        ``Var xi = q (1 - q) / (k^2 B)``, ``Var nu = 1`` and ``Cov(xi, nu) = -sqrt(2/pi) sd(xi)``
        (the sign of a Gaussian count against the count itself); the stationary covariance
        solves the discrete Lyapunov equation. ``relay`` (``u kappa >= 1``): the sign is
        deterministic and ``s`` cycles with period 2; for ``lambda > 0`` the symmetric cycle
        ``+-u`` is unstable and the cycle touching 0, levels ``{0, +-2u}`` (pair units), is the
        attractor: ``sd(s) = sqrt(2) u`` (``u`` for ``lambda < 0``). ``unheld``: ``u`` below
        :meth:`hold_rate`, no stationary balance (``nan``). Two experts report the pair
        variables (twice one expert's deviation)."""
        from scipy.linalg import solve_discrete_lyapunov

        u = self.u
        scale = 2.0 if self.n == 2 else 1.0
        dither = u * self.kappa
        M, Q = self._ar_matrices(u)
        if dither >= 1.0:
            amp = (math.sqrt(2.0) if self.lam > 0 else 1.0) * 0.5 * u
            return Chattering("relay", dither, scale * amp, scale * amp, 0.0)
        if np.max(np.abs(np.linalg.eigvals(M))) >= 1.0:
            return Chattering("unheld", dither, math.nan, math.nan, math.nan)
        S = solve_discrete_lyapunov(M, Q)
        s_std = math.sqrt(max(S[0, 0] + 2 * S[0, 1] + S[1, 1], 0.0))
        return Chattering(
            "noise",
            dither,
            scale * s_std,
            scale * math.sqrt(S[1, 1]),
            scale * math.sqrt(S[0, 0]),
        )
