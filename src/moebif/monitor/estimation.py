"""Estimation: the fits of a refit and the estimate they give, apart from what the alarms make
of it (:mod:`moebif.monitor.rules`) and from the monitor's bookkeeping (:mod:`.monitor`).

- :func:`fit_window`: the fits of one window, a pure function of its snapshot (the block means,
  the feedback statistics, the load modes held), run on a shared worker thread
  (:func:`executor`, one FIFO lane for the fits and one for the load modes);
- :func:`choose_estimate`: which estimator speaks for the router (the logits when they resolve
  it, else the loads when no logits were recorded), written into a :class:`Refit`;
- :func:`classify_regime`: the regime of a resolved kappa_hat (:class:`~.kinds.Regime`);
- the model quantities the alarms quote: :func:`collapse_ratio` (``kappa_SN``),
  :func:`saddle_gap`, :func:`escape_time`.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..model.thresholds import thresholds
from .kinds import Regime, Source
from .whittle import WhittleFit, fit_whittle, load_modes, profile_error, stationary_profile

__all__ = [
    "MODES_FRESH",
    "MODES_TOL",
    "Refit",
    "choose_estimate",
    "classify_regime",
    "collapse_ratio",
    "escape_time",
    "executor",
    "fit_window",
    "modes_at",
    "profile_moved",
    "saddle_gap",
    "unresolved_reason",
]


def collapse_ratio(n_experts: int, top_k: int = 1) -> float:
    """``kappa_SN = a_SN / a_lin``: the kappa at which a stable collapsed state appears
    (1 for N = 2: the pitchfork)."""
    return thresholds(n_experts, top_k).kappa_sn


_SNG_CACHE: dict[int, tuple[float, float]] = {}


def saddle_gap(kappa: float, n_experts: int) -> float:
    """``(d_s, d_c)``: score gaps of the one-winner saddle and of the collapsed state of eq. (8)
    at ``a / (gamma T) = kappa N`` (NaN outside the metastable window)."""
    from ..model.symmetric import branch_ratio, saddle_node_gap

    n = n_experts
    if n not in _SNG_CACHE:
        _SNG_CACHE[n] = saddle_node_gap(n, 1)
    d_sn, g_sn = _SNG_CACHE[n]
    c = kappa * n
    if not g_sn < c < n:
        return math.nan, math.nan
    out = []
    # g_1 decreases from N to g_sn on (0, d_sn), then increases without bound
    for lo, hi, down in ((1e-12, d_sn, True), (d_sn, d_sn + 10.0 + 2.0 * c, False)):
        for _ in range(100):
            mid = 0.5 * (lo + hi)
            if (float(branch_ratio(mid, n, 1)) > c) == down:
                lo = mid
            else:
                hi = mid
        out.append(0.5 * (lo + hi))
    return out[0], out[1]


def escape_time(kappa: float, eta_gamma: float, b_eff: float, n_experts: int) -> float:
    """Mean escape time (steps) from the balanced state at ``kappa`` (Eyring-Kramers, see
    :mod:`moebif.model.metastability`); inf below ``kappa_SN``, 0 at or above 1."""
    if not math.isfinite(kappa):
        return math.nan
    if kappa >= 1.0:
        return 0.0
    if n_experts < 3 or kappa <= collapse_ratio(n_experts) or not b_eff > 0:
        return math.inf
    from ..model.metastability import escape_theory
    from ..params import RouterParams

    p = RouterParams(a=kappa * n_experts, gamma=1.0, T=1.0, n_experts=n_experts)
    import warnings

    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tau = escape_theory(p).mean_escape_time(batch=b_eff, eta=eta_gamma)
    except (ValueError, ArithmeticError):
        return math.nan
    with np.errstate(over="ignore"):
        return float(tau / eta_gamma)


# ----------------------------------------------------------------------------------------------
# the fits, off the training thread

MODES_TOL = 0.02  # relative change of the loads that needs new load modes (beyond the noise)
MODES_FRESH = 16  # up to this N every fit computes its own modes (the Jacobian takes ~10 ms)

_EXECUTORS: dict[str, ThreadPoolExecutor] = {}
_EXECUTOR_LOCK = threading.Lock()


def executor(lane: str = "fits") -> ThreadPoolExecutor:
    """The worker threads that every monitor shares, one per lane (FIFO within a lane): ``fits``
    for the refits, ``modes`` for the load modes of a moved profile (the top-k load Jacobian
    can take seconds; in a lane of its own it never holds up a refit)."""
    with _EXECUTOR_LOCK:
        if lane not in _EXECUTORS:
            _EXECUTORS[lane] = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"moebif-{lane}"
            )
        return _EXECUTORS[lane]


def forget_executors() -> None:
    _EXECUTORS.clear()  # a forked child has no worker threads: it starts its own


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=forget_executors)


def profile_moved(cached, profile, error) -> bool:
    """The profile left the one the modes were computed at: an expert's load moved by more than
    ``3 (MODES_TOL cached + 2 se)``, or all of them by more than ``MODES_TOL cached + 2 se`` in
    the mean square (``se``: the window's standard error of each load, :func:`profile_error`,
    at most ``MODES_TOL cached``). Sampling noise alone does not move it (the windows' profiles
    differ by ~1.4 se)."""
    # the noise allowance is capped (the sub-window scatter of a profile in motion is large)
    scale = MODES_TOL * cached + np.minimum(2.0 * np.nan_to_num(error), MODES_TOL * cached)
    z = np.abs(profile - cached) / np.maximum(scale, 1e-300)
    return bool(z.max() > 3.0 or np.sqrt(np.mean(z * z)) > 1.0)


def modes_at(profile, k: int):
    """``(profile, mu, V, groups)`` of :func:`load_modes`, or None where the profile has none
    (a top-k load at 1/k or more)."""
    try:
        return (profile, *load_modes(profile, k))
    except (ValueError, np.linalg.LinAlgError):
        return None


def fit_window(x, block: int, n: int, k: int, feedback, modes):
    """The fits of one refit, a pure function of its snapshot (run on the ``fits`` worker):
    ``(profile, modes computed here or None, whittle fit, feedback fit, profile moved)``.
    ``x``: the window's block means (M, N); ``feedback``: a :meth:`FeedbackStats.snapshot` or
    None; ``modes``: the monitor's ``(profile, mu, V, groups)`` (None: computed here)."""
    profile = stationary_profile(x)
    if n <= MODES_FRESH:
        modes = None  # cheap: the modes of this very window
    new = modes_at(profile, k) if modes is None else None
    use = modes if modes is not None else new
    fit = fb = None
    if use is not None:
        try:
            fit = fit_whittle(x, block=block, n_experts=n, top_k=k, profile=profile, modes=use[1:])
        except ValueError:
            fit = None
        if feedback is not None:
            from .feedback import fit_feedback

            try:
                fb = fit_feedback(feedback, use[1:])
            except (ValueError, np.linalg.LinAlgError):
                fb = None
    moved = modes is not None and profile_moved(modes[0], profile, profile_error(x))
    return profile, new, fit, fb, moved


class Refit:
    """One refit: its step, the fits behind it and what the monitor concluded. ``kappa`` and
    the relaxation rate are those of the estimator used (``source``: ``"logits"`` for the
    feedback measured from the router's logits, ``"loads"`` for the Whittle fit of the loads),
    NaN with a ``reason`` when unresolved. The escape time (and its range over the 95% interval
    of kappa) is computed on first access: it costs more than the fit and is rarely read."""

    __slots__ = (
        "step",
        "fit",
        "feedback",
        "regime",
        "reason",
        "source",
        "kappa",
        "kappa_lo",
        "kappa_hi",
        "relaxation_rate",
        "relaxation_lo",
        "relaxation_hi",
        "eta_gamma",
        "collapse_kappa",
        "window_units",
        "_esc_args",
        "_esc",
        "_esc_range",
    )

    def __init__(self, step: int, fit: WhittleFit | None, feedback=None):
        self.step = step
        self.fit = fit
        self.feedback = feedback
        self.regime = Regime.UNRESOLVED
        self.reason = ""
        self.source = Source.NONE
        self.kappa = self.kappa_lo = self.kappa_hi = math.nan
        self.relaxation_rate = self.relaxation_lo = self.relaxation_hi = math.nan
        self.eta_gamma = math.nan
        self.collapse_kappa = math.nan
        self.window_units = math.nan
        self._esc_args = None  # (kappa_sn, n) when the escape time applies, else None
        self._esc = None
        self._esc_range = None

    @property
    def escape_steps(self) -> float:
        """Eyring-Kramers mean escape time (steps) at kappa_hat; inf below kappa_SN; NaN where
        the theory does not apply (heterogeneous profile, top-k) or is beyond its range."""
        if self._esc is None:
            self._esc = math.inf if self._esc_args is not None else math.nan
            if self._esc_args is not None and self.kappa >= self._esc_args[0]:
                self._esc = _bounded(escape_time(self.kappa, *self._esc_args[1:]))
        return self._esc

    @property
    def escape_range(self) -> tuple[float, float]:
        """The escape time at the two ends of the 95% interval of kappa (computed separately
        from :attr:`escape_steps`, on first read)."""
        if self._esc_range is None:
            self._esc_range = (math.nan, math.nan)
            if self._esc_args is not None and math.isfinite(self.kappa_lo):
                args = self._esc_args[1:]
                self._esc_range = (
                    _bounded(escape_time(min(self.kappa_hi, 1.0), *args)),
                    _bounded(escape_time(self.kappa_lo, *args)),
                )
        return self._esc_range

    def to_dict(self) -> dict:
        d = {"step": self.step, "regime": self.regime, "reason": self.reason}
        d["source"] = self.source
        for k in ("kappa", "kappa_lo", "kappa_hi", "relaxation_rate", "eta_gamma"):
            d[k] = finite_or_none(getattr(self, k))
        d["relaxation_rate_lo"] = finite_or_none(self.relaxation_lo)
        d["relaxation_rate_hi"] = finite_or_none(self.relaxation_hi)
        d["collapse_kappa"] = finite_or_none(self.collapse_kappa)
        d["window_units"] = finite_or_none(self.window_units)
        d["escape_steps"] = finite_or_none(self.escape_steps)
        d["escape_steps_range"] = [finite_or_none(x) for x in self.escape_range]
        d["loads"] = None if self.fit is None else self.fit.to_dict()
        d["logits"] = None if self.feedback is None else self.feedback.to_dict()
        return d


# escape times beyond this many steps are outside what the model can say (a barrier of
# hundreds of noise units): reported as undetermined, never as 1e32 steps
_MAX_ESCAPE = 1e12


def _bounded(steps: float) -> float:
    return (
        steps
        if (math.isfinite(steps) and steps <= _MAX_ESCAPE) or steps == math.inf
        else (math.nan)
    )


def finite_or_none(x):
    return float(x) if x is not None and math.isfinite(x) else None


def choose_estimate(rf: Refit, fit, fb) -> None:
    """Write into ``rf`` the estimate that speaks for the router: the feedback measured from the
    logits (``fb``) when it resolves the window; else the Whittle fit of the loads (``fit``)
    when it resolves it and no logits were recorded (a logits fit that did not resolve is not
    replaced by the loads: the loads cannot tell feedback from a slow drive the logits see);
    else nothing (``source`` stays ``none``). The lower end of kappa is NaN where it is not
    finite (a flat likelihood)."""
    if fb is not None and fb.resolved:
        rf.source = Source.LOGITS
        rf.kappa, rf.kappa_lo, rf.kappa_hi = fb.kappa, fb.kappa_lo, fb.kappa_hi
        rf.relaxation_rate = fb.relaxation_rate
        rf.relaxation_lo, rf.relaxation_hi = fb.relaxation_rate_lo, fb.relaxation_rate_hi
        rf.eta_gamma = fb.eta_gamma
    elif fit is not None and fit.resolved and fb is None:
        rf.source = Source.LOADS
        rf.kappa, rf.kappa_lo, rf.kappa_hi = fit.kappa, fit.kappa_lo, fit.kappa_hi
        rf.relaxation_rate = fit.relaxation_rate
        rf.eta_gamma = fit.eta_gamma
        # the rate's interval from kappa's: relaxation = eta gamma (1 - kappa)
        rf.relaxation_lo = fit.eta_gamma * (1.0 - fit.kappa_hi)
        rf.relaxation_hi = fit.eta_gamma * (1.0 - fit.kappa_lo)
    if not math.isfinite(rf.kappa_lo) or rf.kappa_lo < -1e6:
        rf.kappa_lo = math.nan


def unresolved_reason(fit, fb) -> str:
    """Why no estimator resolved the window (one line)."""
    if fb is not None:
        return f"logits: {fb.reason}"
    if fit is None:
        return "loads: no fit (constant loads)"
    if fit.at_edge:
        return (
            "loads: the relaxation time is not resolved (kappa at the edge of the search:"
            " a drift, a collapse in progress or a too short window)"
        )
    return "loads: the window holds fewer than 4 relaxation times"


def classify_regime(kappa: float, collapse_kappa: float, n_experts: int) -> Regime:
    """The regime of a resolved kappa_hat: ``collapsing`` at or above 1, ``metastable`` (N >= 3)
    at or above the kappa where a stable collapsed state appears, else ``balanced``."""
    if kappa >= 1.0:
        return Regime.COLLAPSING
    if n_experts >= 3 and kappa >= collapse_kappa:
        return Regime.METASTABLE
    return Regime.BALANCED
