"""Parameter sweeps of the batch router: hysteresis loops in the skew h (sec. 8.5, 8.7) with their
rate -> 0 extrapolation, and ramps of the feedback a for N experts and top-k (the collapse and
recovery points of the many-experts diagram).

A hysteresis sweep ramps the skew ``h`` at a constant rate ``v = dh/dt`` (ODE time ``t = n eta``)
from ``-h_max`` up to ``+h_max`` and back down, starting every replica on the lower stable branch.
The switching thresholds are where the replica-mean ``u_hat`` changes sign. In the mean-field
limit they are ``+-H(a - rho)`` (Thm 5.1 with ``a_eff = a - rho``, sec. 8.7), but at a finite rate
the state lags behind the vanishing branch: near a fold the excess scales like ``v^(2/3)``
(dynamic saddle-node). :func:`extrapolate_hysteresis` measures the loop at a few rates and fits
``w(v) = w0 + c v^beta`` to each threshold and to the width.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..model.crossing import first_crossing
from ..model.two_expert import hysteresis_halfwidth, lowest_equilibrium
from ..params import ParameterError, RouterParams, check_finite, check_positive

__all__ = [
    "FeedbackSweep",
    "HysteresisResult",
    "HysteresisExtrapolation",
    "RateLaw",
    "extrapolate_hysteresis",
    "fit_rate_law",
    "sweep_feedback",
    "sweep_hysteresis",
]


@dataclass(frozen=True, eq=False)
class HysteresisResult:
    """One up-and-down sweep. Arrays have one entry per record (shape ``(K,)``)."""

    h: np.ndarray  # skew at each record
    t: np.ndarray  # ODE time of each record
    u_mean: np.ndarray  # replica mean of u_hat
    u_std: np.ndarray  # replica standard deviation of u_hat
    upward: np.ndarray  # bool: record belongs to the upward leg
    h_switch_up: float
    h_switch_down: float
    rate: float
    h_max: float
    a_eff: float
    params: RouterParams
    rho: float
    batch: int
    eta: float
    runs: int
    seed: int
    steps: int
    seconds: float

    @property
    def width(self) -> float:
        """Loop width ``h_switch_up - h_switch_down``."""
        return self.h_switch_up - self.h_switch_down

    @property
    def predicted_width(self) -> float:
        """Mean-field width ``2 H(a - rho)`` (0 when ``a - rho <= 2 gamma T``)."""
        return 2.0 * _halfwidth(self.a_eff, self.params)


def _halfwidth(a_eff: float, p: RouterParams) -> float:
    return hysteresis_halfwidth(a_eff, p.gamma, p.T) if a_eff > 0 else 0.0


def sweep_hysteresis(
    params: RouterParams,
    *,
    rate: float,
    batch: int = 512,
    eta: float = 0.002,
    runs: int = 8,
    seed: int = 0,
    rho: float = 0.0,
    h_max: float | None = None,
    record_every: int | None = None,
    smooth: int | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> HysteresisResult:
    """Sweep ``h`` from ``-h_max`` to ``+h_max`` and back at rate ``dh/dt = rate``.

    **Arguments:**

    - ``params``: router parameters (``params.h`` is ignored: ``h`` is swept).
    - ``rate``: ``|dh/dt|`` in ODE time, ``> 0``.
    - ``batch``, ``eta``, ``runs``, ``seed``, ``rho``: as in
      :func:`~moebif.sim.router.simulate_batch_router`.
    - ``h_max``: sweep amplitude; default ``H(a_eff) + 0.75 gamma T + 4 rate^(2/3)``, beyond the
      fold plus the rate-dependent lag.
    - ``record_every``: default such that ``h`` moves by about ``h_max / 4000`` between records.
    - ``smooth``: centred moving-average window (records) on the replica mean before the sign
      test; default: a window spanning ``h_max / 200``.

    **Returns:** :class:`HysteresisResult`; switching thresholds are NaN if the mean never
    changed sign (then raise ``h_max``).
    """
    from .router import simulate_batch_router

    p = params
    rate = check_positive("rate", rate)
    rho = check_finite("rho", rho)
    if rho < 0:
        raise ParameterError("rho", f"must be >= 0, got {rho:g}")
    eta = check_positive("eta", eta)
    a_eff = p.a - rho
    H = _halfwidth(a_eff, p)
    if h_max is None:
        h_max = H + 0.75 * p.gamma * p.T + 4.0 * rate ** (2.0 / 3.0)
    h_max = check_positive("h_max", h_max)
    dh = rate * eta  # change of h per step
    leg = max(2, math.ceil(2.0 * h_max / dh))
    steps = 2 * leg
    if record_every is None:
        record_every = max(1, round(h_max / 4000.0 / dh))
    n = np.arange(steps)
    h_steps = np.where(n < leg, -h_max + dh * n, h_max - dh * (n - leg))
    y0 = lowest_equilibrium(a_eff, p.gamma, p.T, -h_max)

    t0 = time.perf_counter()
    sim = simulate_batch_router(
        p.replace(h=0.0),
        batch=batch,
        eta=eta,
        steps=steps,
        runs=runs,
        seed=seed,
        rho=rho,
        y0=y0,
        record_every=record_every,
        h=h_steps,
        threads=threads,
        progress=progress,
    )
    n_rec = np.arange(sim.t.size) * sim.record_every
    h_rec = np.where(n_rec < leg, -h_max + dh * n_rec, h_max - dh * (n_rec - leg))
    upward = n_rec < leg
    u_mean = sim.u_mean
    if smooth is None:
        # a centred window spanning h_max / 200: unbiased for a locally linear u(h) (the gentle
        # crossing without bistability) and for a sharp symmetric jump, and it keeps the
        # first-crossing test from firing on sampling noise
        smooth = max(1, round(h_max / 200.0 / (dh * record_every)))
    if smooth > 1:
        u_mean_s = np.convolve(u_mean, np.ones(smooth) / smooth, mode="same")
    else:
        u_mean_s = u_mean
    h_up = first_crossing(h_rec[upward], u_mean_s[upward], direction="up")
    h_down = first_crossing(h_rec[~upward], u_mean_s[~upward], direction="down")
    return HysteresisResult(
        h=h_rec,
        t=sim.t,
        u_mean=u_mean,
        u_std=sim.u_std,
        upward=upward,
        h_switch_up=h_up,
        h_switch_down=h_down,
        rate=rate,
        h_max=h_max,
        a_eff=a_eff,
        params=p,
        rho=rho,
        batch=sim.batch,
        eta=eta,
        runs=sim.runs,
        seed=seed,
        steps=steps,
        seconds=time.perf_counter() - t0,
    )


# ----------------------------------------------------------------------------------------------
# rate -> 0 extrapolation


@dataclass(frozen=True)
class RateLaw:
    """Fit ``value(v) = limit + coefficient * v^exponent`` over sweep rates ``v``."""

    limit: float
    coefficient: float
    exponent: float
    limit_two_thirds: float  # the limit with the exponent fixed at the saddle-node value 2/3
    residual: float  # rms misfit of the free fit

    def __call__(self, v):
        return self.limit + self.coefficient * np.asarray(v, dtype=float) ** self.exponent


def fit_rate_law(rates: Sequence[float], values: Sequence[float]) -> RateLaw:
    """Least-squares fit of ``limit + c v^beta`` (free ``beta`` in [0.2, 1.5]), and of the same
    law with ``beta = 2/3`` (linear least squares). Needs at least three finite points."""
    from scipy.optimize import curve_fit

    v = np.asarray(rates, dtype=float)
    w = np.asarray(values, dtype=float)
    ok = np.isfinite(v) & np.isfinite(w)
    v, w = v[ok], w[ok]
    if v.size < 3:
        raise ValueError("rates: need at least three rates with a measured switch")
    X = np.column_stack([np.ones_like(v), v ** (2.0 / 3.0)])
    (l23, c23), *_ = np.linalg.lstsq(X, w, rcond=None)

    def law(x, lim, c, beta):
        return lim + c * x**beta

    try:
        (lim, c, beta), _ = curve_fit(
            law,
            v,
            w,
            p0=(l23, c23, 2.0 / 3.0),
            bounds=([-np.inf, -np.inf, 0.2], [np.inf, np.inf, 1.5]),
            maxfev=20000,
        )
    except RuntimeError:  # no convergence: report the fixed-exponent fit
        lim, c, beta = l23, c23, 2.0 / 3.0
    res = float(np.sqrt(np.mean((law(v, lim, c, beta) - w) ** 2)))
    return RateLaw(float(lim), float(c), float(beta), float(l23), res)


@dataclass(frozen=True, eq=False)
class HysteresisExtrapolation:
    """Sweeps at several rates and the fitted rate -> 0 limits."""

    sweeps: list[HysteresisResult] = field(repr=False)
    rates: np.ndarray
    up: RateLaw  # h_switch_up(v)
    down: RateLaw  # h_switch_down(v)
    width: RateLaw  # width(v)
    predicted_halfwidth: float

    @property
    def width_extrapolated(self) -> float:
        return self.width.limit

    @property
    def predicted_width(self) -> float:
        return 2.0 * self.predicted_halfwidth


def extrapolate_hysteresis(
    params: RouterParams,
    *,
    rates: Sequence[float],
    batch: int = 512,
    eta: float = 0.002,
    runs: int = 8,
    seed: int = 0,
    rho: float = 0.0,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> HysteresisExtrapolation:
    """Run :func:`sweep_hysteresis` at each rate (seeds ``seed, seed + 1, ...``) and fit the
    thresholds and the width to ``limit + c v^beta``."""
    rates = np.asarray(sorted(rates, reverse=True), dtype=float)
    if rates.size < 3:
        raise ParameterError("rates", "need at least three sweep rates")
    sweeps = []
    for i, v in enumerate(rates):
        sweeps.append(
            sweep_hysteresis(
                params,
                rate=float(v),
                batch=batch,
                eta=eta,
                runs=runs,
                seed=seed + i,
                rho=rho,
                threads=threads,
            )
        )
        if progress is not None:
            progress(i + 1, rates.size)
    up = fit_rate_law(rates, [s.h_switch_up for s in sweeps])
    down = fit_rate_law(rates, [s.h_switch_down for s in sweeps])
    width = fit_rate_law(rates, [s.width for s in sweeps])
    return HysteresisExtrapolation(
        sweeps, rates, up, down, width, _halfwidth(params.a - rho, params)
    )


# ----------------------------------------------------------------------------------------------
# slow ramps of the feedback a: hysteresis between the balanced and the collapsed router


@dataclass(frozen=True, eq=False)
class FeedbackSweep:
    """One up-and-down ramp of ``a`` (see :func:`sweep_feedback`); arrays per record window.

    ``a_up`` / ``a_down``: per replica, the ``a`` where the largest load first crossed
    ``threshold`` upward on the up-leg / downward on the down-leg (NaN: no crossing);
    ``a_switch_up`` / ``a_switch_down``: their means over the replicas."""

    a: np.ndarray
    upward: np.ndarray
    max_load_mean: np.ndarray
    max_load_std: np.ndarray
    a_up: np.ndarray
    a_down: np.ndarray
    threshold: float
    rate: float
    top_k: int
    seconds: float

    @property
    def a_switch_up(self) -> float:
        return float(np.nanmean(self.a_up)) if np.isfinite(self.a_up).any() else float("nan")

    @property
    def a_switch_down(self) -> float:
        return float(np.nanmean(self.a_down)) if np.isfinite(self.a_down).any() else float("nan")


def sweep_feedback(
    params: RouterParams,
    *,
    rate: float,
    a_low: float,
    a_high: float,
    threshold: float,
    top_k: int = 1,
    batch: int = 512,
    eta: float = 0.02,
    runs: int = 16,
    seed: int = 0,
    window: float = 0.01,
    down_only: bool = False,
    r0=None,
    threads: int | None = None,
) -> FeedbackSweep:
    """Ramp ``a`` from ``a_low`` up to ``a_high`` and back at ``|da/dt| = rate`` (ODE time),
    starting every replica at the uniform state, and find where the largest load crosses
    ``threshold`` (up-leg: collapse; down-leg: recovery). Loads are averaged over windows in
    which ``a`` moves by ``window``. With ``down_only`` only the down-leg is run, from the
    scores ``r0`` (e.g. a collapsed state at ``a_high``)."""
    from ..params import check_positive

    rate = check_positive("rate", rate)
    if not 0.0 <= a_low < a_high:
        raise ParameterError("a_low", "need 0 <= a_low < a_high")
    da = rate * eta
    leg = max(2, math.ceil((a_high - a_low) / da))
    first = leg if down_only else 0  # step index of the schedule where the run starts
    n = np.arange(first, 2 * leg)
    a_steps = np.where(n < leg, a_low + da * n, a_high - da * (n - leg))
    rec = max(1, round(window / da))
    from .topk_router import simulate_topk_router

    run = simulate_topk_router(
        params.replace(a=a_low),
        batch=batch,
        eta=eta,
        steps=a_steps.size,
        runs=runs,
        top_k=top_k,
        seed=seed,
        a=a_steps,
        record_every=rec,
        threads=threads,
        r0=r0,
    )
    # the a of each window: its midpoint
    starts = first + np.arange(run.t.size) * rec
    mid = np.minimum(starts + 0.5 * (rec - 1), 2 * leg - 1)
    a_mid = np.where(mid < leg, a_low + da * mid, a_high - da * (mid - leg))
    upward = starts + rec <= leg
    downward = starts >= leg
    ml = run.max_load
    a_up = np.array(
        [first_crossing(a_mid[upward], x[upward], threshold, direction="up") for x in ml]
    )
    a_dn = np.array(
        [first_crossing(a_mid[downward], x[downward], threshold, direction="down") for x in ml]
    )
    return FeedbackSweep(
        a=a_mid,
        upward=upward,
        max_load_mean=ml.mean(axis=0),
        max_load_std=ml.std(axis=0),
        a_up=a_up,
        a_down=a_dn,
        threshold=threshold,
        rate=rate,
        top_k=top_k,
        seconds=run.seconds,
    )
