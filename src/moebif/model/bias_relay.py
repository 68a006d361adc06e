"""The loss-free bias's closed loop in the phase plane: recovery region and relay limit cycle.

Two experts (or the one-winner branch of ``N`` experts, top-``k``), gap ``y`` of the scores,
bias gap ``b``, selection gap ``s = y + b``, relay rate ``U = 2 u / eta`` (module docstring of
:mod:`moebif.model.balancer_theory`, part 3). The deterministic mean field of the closed loop is

    s' = G(s) + gamma b - U sign(s),    b' = -U sign(s),    G(s) = a dpi(s) / k - gamma s,

``dpi`` the winner-loser gap of the inclusion probabilities (``tanh(s / 2T)`` for two experts;
``G`` is eq. (6)'s ``F`` at ``h = 0``, written in ``s``). It is odd under ``(s, b) -> (-s, -b)``.

**Sliding segment.** On ``s = 0`` the field points into the line from both sides iff
``|b| < U / gamma``; there the equivalent relay output is ``gamma b / U`` and ``b' = -gamma b``:
a trajectory that reaches ``s = 0`` with ``|b| < U / gamma`` stays balanced and ``b, y -> 0``.
One that reaches it with ``|b| > U / gamma`` crosses: the bias has wound up (``b ~ -U t``) and
drives the gap to the other side.

**Return map.** A crossing upward at ``s = 0`` with ``b = beta > U / gamma`` starts a half-swing
in ``s > 0`` with ``b = beta - U tau``; it returns to ``s = 0`` after ``tau*(beta)`` (always:
``b`` decreases without bound), with ``b = beta - U tau*``. By the symmetry the next crossing is
upward again with ``P(beta) = U tau*(beta) - beta`` (:func:`return_map`). The orbit recovers as
soon as ``P(beta) <= U / gamma``. Near the edge ``P(beta) < U / gamma`` (a small overshoot comes
back onto the sliding segment); for the linear field ``G = lambda s`` the return time diverges at
``beta_lin = U A / (gamma lambda)`` (``A = lambda + gamma``), and with the saturation of ``G``
``P`` rises steeply there and levels off near ``beta_inf = H / gamma`` (``H = max_{s>0} G``, the
fold skew ``H(a)`` of eq. 17-18): the bias must wind up to the fold of the collapsed branch
before the gap can jump back.

- **Relay cycle** (:func:`relay_cycle`): the largest fixed point ``beta_s`` of ``P`` (stable); a
  symmetric cycle of alternating collapses. Its amplitude is ``max |s|`` over the half-swing from
  ``beta_s``, its period ``2 tau*(beta_s)``. It exists iff ``P(beta) >= beta`` somewhere, i.e.
  for ``U`` below a critical rate (:func:`critical_rate`, a saddle-node of cycles); as
  ``U -> 0`` it becomes the relaxation oscillation of the bistable router driven across its folds
  by the bias: ``b`` sweeps ``+-H / gamma``, the amplitude tends to the far root of
  ``G(s) = -H`` and the period to ``4 H / (gamma U)`` (:func:`relaxation_limit`).
- **Separatrix**: the smallest fixed point ``beta_u > U / gamma`` of ``P`` (an unstable cycle).
  Orbits below it shrink onto the sliding segment; above it they grow onto the relay cycle.
- **Recovery radius** (:func:`recovery_radius`): a start ``(s0, b = 0)`` first returns to
  ``s = 0`` with ``beta_1 = U t_1(s0)`` (increasing in ``s0``); it recovers and stays iff
  ``beta_1 < beta_u``. For the linear field, with ``x = A / gamma``,
  ``r_lin = (U / lambda) [(1 - e^-x) + (gamma / lambda)(1 - (1 + x) e^-x)]``
  (:func:`recovery_radius_linear`), below the first-return radius ``U A / lambda^2``
  (``x -> inf``). The first-return radius (``BiasTheory.first_return_radius``, the largest ``s0``
  that returns to ``s = 0`` before reaching the escape threshold) says nothing about what
  happens after the return.
- **No start recovers** in the mean field never happens (``beta_1 -> 0`` as ``s0 -> 0``).
  In the batch router it happens when the noise-dithered relay cannot hold the balanced state
  (``u`` below ``BiasTheory.hold_rate``): the balance is then lost to growing oscillations,
  which end on the relay cycle whenever it exists.

Time is mean-field time ``t = n eta``; ``s``, ``b``, amplitudes in score units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy.integrate import solve_ivp
from scipy.optimize import brentq

from ..params import ParameterError
from .balancer_theory import BiasTheory
from .topk import two_level_inclusion_grid

__all__ = [
    "RelayCycle",
    "RelaxationLimit",
    "SwingResult",
    "critical_rate",
    "fold_skew",
    "recovers",
    "recovery_radius",
    "recovery_radius_linear",
    "relaxation_limit",
    "relay_cycle",
    "return_map",
    "separatrix",
    "swing",
]

_RTOL = 1e-10
_ATOL = 1e-12


@dataclass(frozen=True)
class SwingResult:
    """One half-swing in ``s > 0``: duration ``tau`` (ODE time), bias gap at its end ``b_end``,
    largest gap ``s_max``."""

    tau: float
    b_end: float
    s_max: float


@dataclass(frozen=True)
class RelayCycle:
    """The symmetric relay limit cycle of the closed loop (mean field).

    ``exists``; ``amplitude``: ``max |s|`` on the cycle; ``period`` (ODE time, two half-swings);
    ``b_amplitude``: ``|b|`` at the crossings of ``s = 0``; ``separatrix``: ``|b|`` at the
    crossings of the unstable cycle (``nan`` without a cycle); ``multiplier``: ``P'(beta_s)``
    (stable iff ``|.| < 1``). Without a cycle the numbers are ``nan``."""

    exists: bool
    amplitude: float
    period: float
    b_amplitude: float
    separatrix: float
    multiplier: float


@dataclass(frozen=True)
class RelaxationLimit:
    """``U -> 0`` limit of the relay cycle: ``b`` between ``+-H / gamma``, ``amplitude`` the far
    root of ``G(s) = -H``, ``period = 4 H / (gamma U)``."""

    fold_skew: float
    b_amplitude: float
    amplitude: float
    period: float


def _check(theory) -> BiasTheory:
    if not isinstance(theory, BiasTheory):
        raise ParameterError("theory", "must be a BiasTheory")
    return theory


def _dpi(theory: BiasTheory):
    """``pi_w - pi_l`` of the one-winner state as a function of the score gap ``s >= 0``."""
    p, n, k = theory.params, theory.n, theory.top_k
    if k == 1:
        if n == 2:
            return lambda s: math.tanh(s / (2.0 * p.T))

        def f(s):
            e = math.exp(-s / p.T)
            return (1.0 - e) / (1.0 + (n - 1) * e)

        return f
    grid = np.linspace(0.0, 12.0, 1201)
    vals = np.diff(two_level_inclusion_grid(n, 1, k, grid)[:, 1::-1], axis=1)[:, 0]
    return lambda s: float(np.interp(s / p.T, grid, vals))


def _field(theory: BiasTheory):
    p, k = theory.params, theory.top_k
    dpi = _dpi(theory)
    return lambda s: p.a * dpi(s) / k - p.gamma * s


def fold_skew(theory: BiasTheory) -> float:
    """``H = max_{s > 0} G(s)``: the skew at the fold of the collapsed branch (``H(a)`` of eq. 18
    for two experts; 0 when the uniform state is stable and ``G < 0`` on ``s > 0``)."""
    from scipy.optimize import minimize_scalar

    theory = _check(theory)
    p = theory.params
    G = _field(theory)
    hi = (p.a + 1.0) / p.gamma
    res = minimize_scalar(
        lambda s: -G(s), bounds=(0.0, hi), method="bounded", options={"xatol": 1e-12}
    )
    return max(float(-res.fun), 0.0)


def _t_max(theory: BiasTheory, s0: float, b0: float) -> float:
    p = theory.params
    # b must fall below -(a + gamma s0)/gamma at the latest for s' < 0 everywhere on s > 0
    return 4.0 * (abs(b0) + s0 + (p.a + 1.0) / p.gamma + 1.0) / theory.U + 20.0 / p.gamma


def swing(theory: BiasTheory, s0: float, b0: float) -> SwingResult:
    """Integrate ``s' = G(s) + gamma (b0 - U t) - U`` from ``s(0) = s0 >= 0`` until ``s`` returns
    to 0 (a half-swing of the closed loop in ``s > 0``)."""
    theory = _check(theory)
    p, U = theory.params, theory.U
    G = _field(theory)

    def rhs(t, y):
        return [G(max(y[0], 0.0)) + p.gamma * (b0 - U * t) - U]

    def hit(t, y):
        return y[0]

    def peak(t, y):
        return rhs(t, y)[0]

    hit.terminal = True
    hit.direction = -1.0
    peak.direction = -1.0
    # a start on s = 0 is nudged into s > 0 so that the event at t = 0 is not taken
    y0 = max(float(s0), 1e-14 * (1.0 + abs(b0)))
    if s0 <= 0.0 and p.gamma * b0 - U + G(y0) <= 0.0:
        return SwingResult(0.0, float(b0), 0.0)
    sol = solve_ivp(
        rhs,
        (0.0, _t_max(theory, y0, b0)),
        [y0],
        method="LSODA",
        events=(hit, peak),
        rtol=_RTOL,
        atol=_ATOL,
    )
    if not sol.t_events[0].size:
        raise RuntimeError("the half-swing did not return to s = 0")
    tau = float(sol.t_events[0][0])
    peaks = sol.y_events[1][:, 0] if sol.y_events[1].size else np.zeros(0)
    s_max = max(float(s0), float(peaks.max()) if peaks.size else 0.0)
    return SwingResult(tau, float(b0 - U * tau), s_max)


def return_map(theory: BiasTheory, beta: float) -> float:
    """``P(beta) = U tau*(beta) - beta``: the bias gap magnitude at the next upward crossing of
    ``s = 0`` after an upward crossing with ``b = beta`` (module docstring)."""
    return -swing(theory, 0.0, beta).b_end


def _fixed_points(theory: BiasTheory, points: int = 32) -> list:
    """Fixed points of ``P`` above ``U / gamma`` with their multipliers ``P'``, ascending: sign
    changes of ``P(beta) - beta`` on a grid geometric in ``beta - U / gamma``, then Brent."""
    p, U = theory.params, theory.U
    edge = U / p.gamma
    top = max(2.0 * fold_skew(theory) / p.gamma + 2.0 * edge, 4.0 * edge)
    # geometric in beta - edge: the separatrix sits at ~ edge (1 + gamma / lambda) for small U,
    # the stable cycle near H / gamma, up to a thousand times further out
    beta = edge + np.geomspace(0.02 * edge, top - edge, points)
    d = np.array([return_map(theory, x) - x for x in beta])
    out = []
    for i in np.flatnonzero(np.sign(d[:-1]) != np.sign(d[1:])):
        x = brentq(
            lambda x: return_map(theory, x) - x, beta[i], beta[i + 1], xtol=1e-11, rtol=1e-10
        )
        e = 1e-5 * x
        m = (return_map(theory, x + e) - return_map(theory, x - e)) / (2 * e)
        out.append((float(x), float(m)))
    return out


def separatrix(theory: BiasTheory) -> float:
    """``beta_u``: ``|b|`` at the crossings of the unstable cycle (``inf`` without a cycle)."""
    fps = _fixed_points(_check(theory))
    return fps[0][0] if fps else math.inf


def relay_cycle(theory: BiasTheory) -> RelayCycle:
    """The stable symmetric relay cycle (module docstring): the largest fixed point of the return
    map, its amplitude ``max |s|`` and period."""
    fps = _fixed_points(_check(theory))
    if not fps:
        nan = math.nan
        return RelayCycle(False, nan, nan, nan, nan, nan)
    beta_s, mult = fps[-1]
    sw = swing(theory, 0.0, beta_s)
    return RelayCycle(True, sw.s_max, 2.0 * sw.tau, beta_s, fps[0][0], mult)


def recovers(theory: BiasTheory, s0: float, b0: float = 0.0, *, max_swings: int = 200) -> bool:
    """Whether the mean field from ``(s0, b0)`` reaches the sliding segment ``|b| < U / gamma``
    of ``s = 0`` (and so returns to balance and stays)."""
    theory = _check(theory)
    edge = theory.U / theory.params.gamma
    s, b = float(s0), float(b0)
    if s < 0:
        s, b = -s, -b
    if s == 0.0 and abs(b) < edge:
        return True
    if s == 0.0 and b < 0:
        s, b = 0.0, -b
    beta = -swing(theory, s, b).b_end
    for _ in range(max_swings):
        if beta <= edge:
            return True
        nxt = return_map(theory, beta)
        if abs(nxt - beta) < 1e-9 * beta:
            return False
        beta = nxt
    return False


def recovery_radius(theory: BiasTheory) -> float:
    """Largest initial gap ``s0`` (bias 0, no skew) from which the mean-field closed loop returns
    to balance and stays: ``U t_1(s0) = beta_u`` (``inf`` without a relay cycle; 0 when the
    uniform state is stable is impossible: then there is no cycle either)."""
    theory = _check(theory)
    beta_u = separatrix(theory)
    if not math.isfinite(beta_u):
        return math.inf

    def excess(s0):
        return -swing(theory, s0, 0.0).b_end - beta_u

    hi = (
        theory.first_return_radius_linear
        if math.isfinite(theory.first_return_radius_linear)
        else 1.0
    )
    hi = max(hi, 1e-6)
    while excess(hi) < 0:
        hi *= 2.0
    return float(brentq(excess, 0.0, hi, xtol=1e-12, rtol=1e-10))


def recovery_radius_linear(theory: BiasTheory) -> float:
    """Recovery radius of the linearised loop (``G = lambda s``, ``u -> 0`` limit):
    ``(U / lambda) [(1 - e^-x) + (gamma / lambda)(1 - (1 + x) e^-x)]``, ``x = A / gamma``
    (``inf`` when ``lambda <= 0``)."""
    theory = _check(theory)
    lam, g = theory.lam, theory.params.gamma
    if lam <= 0:
        return math.inf
    x = theory.gain / g
    e = math.exp(-x)
    return theory.U / lam * ((1.0 - e) + g / lam * (1.0 - (1.0 + x) * e))


def relaxation_limit(theory: BiasTheory) -> RelaxationLimit:
    """The ``U -> 0`` limit of the relay cycle (module docstring)."""
    theory = _check(theory)
    p = theory.params
    H = fold_skew(theory)
    G = _field(theory)
    if H <= 0:
        nan = math.nan
        return RelaxationLimit(0.0, 0.0, nan, nan)
    hi = (p.a + H) / p.gamma + 1.0
    # the far root of G(s) + H = 0: beyond the peak of G
    from scipy.optimize import minimize_scalar

    s_peak = float(
        minimize_scalar(
            lambda s: -G(s),
            bounds=(0.0, (p.a + 1.0) / p.gamma),
            method="bounded",
            options={"xatol": 1e-12},
        ).x
    )
    amp = brentq(lambda s: G(s) + H, s_peak, hi, xtol=1e-12)
    return RelaxationLimit(H, H / p.gamma, float(amp), 4.0 * H / (p.gamma * theory.U))


def critical_rate(theory: BiasTheory) -> float:
    """The bias rate ``u_c`` (per step, at the theory's ``eta``) above which the relay cycle no
    longer exists (``0`` when the uniform state is stable and there is no bistability)."""
    from dataclasses import replace

    theory = _check(theory)
    if theory.lam <= 0 or fold_skew(theory) <= 0:
        return 0.0

    def has(u):
        return bool(_fixed_points(replace(theory, u=u), points=64))

    lo = theory.u
    if not has(lo):
        while not has(lo):
            lo *= 0.5
        hi = 2.0 * lo
    else:
        hi = 2.0 * lo
        while has(hi):
            lo, hi = hi, 2.0 * hi
    for _ in range(30):
        mid = math.sqrt(lo * hi)
        if has(mid):
            lo = mid
        else:
            hi = mid
        if hi / lo - 1 < 1e-4:
            break
    return math.sqrt(lo * hi)
