"""Online collapse monitor: per-layer expert counts in, metrics, model estimates and alarms out.

Per logged step the work is O(N) (accumulate the block sum; with importance and logits, the
O(K N) lag sums of :class:`~moebif.monitor.feedback.FeedbackStats`); every ``block`` steps the
block mean enters a ring buffer of the last ``window`` steps and the latent-score filter; every
``refit`` steps the Whittle fit of :mod:`moebif.monitor.whittle` (and the feedback fit of
:mod:`moebif.monitor.feedback`) is redone on the buffer.

**Fits off the training thread, deterministic.** A monitor inside someone else's training loop
must not stall it, and the same inputs must give the same alarms online, in bulk
(:meth:`LayerMonitor.update_many`) and replayed (``moebif diagnose``). So a refit is split in
three. At the refit step ``s`` the monitor takes a snapshot: the window's block means, a copy
of the feedback statistics (:meth:`FeedbackStats.snapshot`) and the load modes it holds. The
fits are a pure function of that snapshot and run on one worker thread that all monitors share
(a ``concurrent.futures`` executor, FIFO). Their result is concluded (regime, ``kappa_hat``,
the model-based alarms, the automatic window) at the first block end at or after
``s + refit_lag`` steps (default 8), on the calling thread, which waits there only if the worker
is not done yet; the offline paths conclude it at that same step, so the result cannot depend
on timing. ``background=False`` runs the fits at the concluding step on the calling thread:
the same results, blocking. A checkpoint saves a pending fit as its snapshot; the restored
monitor runs it again (:meth:`LayerMonitor.load_state_dict`).

The load modes (the eigenvectors of the load Jacobian at the window's profile; for top-k the
inclusion Jacobian of :mod:`moebif.model.inclusion`, N^2 integrals) are the one part that can
take seconds. They are kept while the profile stays put: within ``MODES_TOL`` (2%) of the
profile they were computed at plus twice its sampling error (:func:`_profile_moved`; the uniform
state has them in closed form). When a conclusion finds the profile moved, the new modes are
computed in a second worker lane and installed at the next refit's snapshot (one refit
interval later, waiting there only if they are not done); until then the fits use the modes
held. Only the first refit computes its modes within its own fit, and for ``N <= 16``
(``MODES_FRESH``: tens of ms) every fit does, so small routers use the modes of their very
window, also while a collapse moves the profile fast. The refit's cost is then
that of the fits themselves (tens of ms at N = 256), off the training thread; a step waits
only where ``refit_lag`` steps of training take less than that (benchmarks/bench_monitor.py
``cost``).

**Latent scores.** The router's scores are an exponential average of its own loads,
``r_{n+1} = (1 - eta gamma) r_n + eta a_eff l_n``, so ``d_i = r_i / T`` is reconstructed from the
loads alone up to its initial value: ``d = kappa N * EMA_{eta gamma}(l)`` (``a_eff / (gamma T) =
kappa N``). The score gap of the leading expert, ``d_max = kappa N (EMA_max - mean EMA of the
others)``, is compared with the one-winner saddle gap ``d_s`` of eq. (8) at ``kappa_hat``: past it
the mean-field router runs into collapse without further noise.

**Alarms** (each an :class:`Alarm` with a one-line explanation):

- ``approaching-threshold``: ``kappa_hat >= threshold`` (0.82) and the lower end of its 95%
  interval ``>= lower`` (0.7) on ``approach_refits`` (2) refits in a row. The point level sets
  the lead time (a window lags the ramp by about half its length); the lower bound vetoes the
  noisy fits of a balanced router (wide intervals, e.g. N = 2), so one rule serves all N. A fit
  whose interval has no finite lower end (the likelihood is flat: the window holds fewer than 4
  relaxation times, as when kappa -> 1) passes the lower-bound part. Fits that do not resolve the
  relaxation time count only after one that did: before it, a drift or a too short window would
  look like ``kappa -> 1``. Re-armed once ``kappa_hat < threshold - 0.05``;
- the two model-based alarms above need a window that spans at least ``min_units`` (50) units
  of ``1 / eta gamma_hat`` (``eta gamma`` of the last resolved fit): the estimator is only
  checked on windows of 100-2000 units, and a window of a few units (e.g. 64 steps of a real
  model at ``eta gamma ~ 0.2``) gives kappa_hat near 1 from any slow drift of the loads. Such
  fits have the regime ``short-window`` and raise nothing. Nor do fits whose window overlaps
  an active collapse alarm (regime ``excursion``): they describe the collapse, not the
  balanced state the model-based alarms are about;
- ``metastable`` (N >= 3, top-1): ``kappa_hat >= kappa_SN`` on ``consecutive`` refits: a stable
  collapsed state exists, jumps to it are noise-induced and give no lead-time warning; the
  message carries the Eyring-Kramers escape time (:mod:`moebif.model.metastability`) at
  ``(kappa_hat, eta gamma, B_eff)``;
- ``collapse-in-progress``: the latent gap ``d_max`` passes ``d_s + commit (d_c - d_s)``, a
  quarter of the way (default) from the saddle gap ``d_s`` to the collapsed gap ``d_c`` (the
  metastable regime; at the saddle itself noise sends about half the paths back), or the
  filtered max-load excess ``(l_max - 1/N) / (1/k - 1/N)`` rises ``excursion`` (0.25) above that
  of the short-term reference (the router's recent stable profile, which follows slow moves: a
  fast excursion), or the excess of the loads averaged over the last dwell rises ``excursion``
  above that of the long-term reference (:class:`~moebif.monitor.profile.FrozenReference`,
  frozen once the profile has settled: a drift, however slow);
- ``collapsed``: either rise passes ``collapsed`` (default 0.5), or half the experts alive in the
  reference are dead over a block;
- ``dead-experts``: an expert that carried ``>= 0.25 / N`` of the load in the frozen reference
  keeps a filtered load below a tenth of its share for a dwell
  (:class:`~moebif.monitor.profile.DeadExperts`);
- ``recovered`` (information): at least ``dwell`` steps after the last alarm, the max-load excess
  of both halves of the last dwell is within ``0.6 excursion`` of the frozen reference's (of the
  short-term reference before the alarm while none is frozen), the loads are stationary, every
  expert alive in the reference carries load again (and, in the metastable regime, the latent gap
  stayed below half the saddle gap for ``dwell`` steps). It clears every collapse-type alarm
  (``collapse-in-progress``, ``collapsed``, ``dead-experts``) at once: nothing stays latched once
  the layer is back. Alarms raised before the long-term reference exists (the initial transient)
  clear with a ``recovered`` when it is frozen: the layer has settled. Hysteresis: an alarm is
  not re-armed before its recovery, and the recovery needs the lower level on a ``dwell``-step
  average, so an excess hovering around ``excursion`` (noisy loads of small batches) gives one
  alarm and one recovery, not a flapping pair.

False alarms of the profile rules (benchmarks/study_drift.py, tests/monitor/test_profile_rules.py):
none on stationary heterogeneous profiles with rare experts and batches of 16-256 tokens (33
seeded runs of 5000 steps), none in the 8 layers of healthy training of tiny Qwen3-MoE,
GraniteMoE, OLMoE and Mixtral on real text over 3000 steps (docs/real-training.md). The frozen
reference assumes that the profile a router settles at stays its healthy one: a router that keeps
specialising until its excess is 0.25 above the settled one raises ``collapse-in-progress``
(``frozen_reference=False`` keeps only the short-term reference).
"""

from __future__ import annotations

import math
import os
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

import numpy as np

from ..model.thresholds import thresholds
from .metrics import load_metrics, max_load_excess
from .profile import (
    ACTIVE_KINDS,
    APPROACHING,
    COLLAPSE_IN_PROGRESS,
    COLLAPSED,
    DEAD_EXPERTS,
    PROFILE_RULES,
    RECOVERED,
    WARM_LEVEL,
    DeadExperts,
    FrozenReference,
)
from .profile import total_variation as _tv
from .whittle import WhittleFit, fit_whittle, load_modes, profile_error, stationary_profile

__all__ = ["Alarm", "LayerMonitor", "LoadMonitor", "default_block", "recommended_window"]


def recommended_window(n_experts: int, eta_gamma: float) -> int:
    """Window (steps) that meets the estimation accuracy of the acceptance study
    (benchmarks/bench_estimator.py) for N experts: ``clip(2800 / (N - 1), 150, 2000)`` units of
    ``1 / (eta gamma)``: 2000 for N = 2, 933 for N = 4, 400 for N = 8, 150 from N = 20 on. The
    pooled likelihood has N - 1 modes, so larger N needs shorter windows; a heterogeneous
    profile spreads the modes' rates and leaves the slowest mode less company, hence the floor."""
    units = min(max(150.0, 2800.0 / (n_experts - 1)), 2000.0)
    return max(64, int(round(units / eta_gamma)))


def default_block(window: int, n_experts: int) -> int:
    """Steps per block mean: about 1024 blocks a window, 2048 for N = 2. At the recommended
    windows a block then spans at most ~1 unit of ``1 / (eta gamma)``, so the white part of the
    spectrum (above ``eta gamma``) stays resolved; with 2-unit blocks (1024 blocks of the
    2000-unit N = 2 window) the median error at kappa = 0.6 is 0.024 instead of 0.014."""
    return max(1, int(window) // (2048 if n_experts == 2 else 1024))


@dataclass(frozen=True)
class Alarm:
    step: int
    kind: str
    message: str
    layer: str = ""

    def to_dict(self) -> dict:
        return {"step": self.step, "kind": self.kind, "layer": self.layer, "message": self.message}


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


def _executor(lane: str = "fits") -> ThreadPoolExecutor:
    """The worker threads that every monitor shares, one per lane (FIFO within a lane): ``fits``
    for the refits, ``modes`` for the load modes of a moved profile (the top-k load Jacobian
    can take seconds; in a lane of its own it never holds up a refit)."""
    with _EXECUTOR_LOCK:
        if lane not in _EXECUTORS:
            _EXECUTORS[lane] = ThreadPoolExecutor(
                max_workers=1, thread_name_prefix=f"moebif-{lane}"
            )
        return _EXECUTORS[lane]


def _forget_executors() -> None:
    _EXECUTORS.clear()  # a forked child has no worker threads: it starts its own


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_executors)


def _profile_moved(cached, profile, error) -> bool:
    """The profile left the one the modes were computed at: an expert's load moved by more than
    ``3 (MODES_TOL cached + 2 se)``, or all of them by more than ``MODES_TOL cached + 2 se`` in
    the mean square (``se``: the window's standard error of each load, :func:`profile_error`,
    at most ``MODES_TOL cached``). Sampling noise alone does not move it (the windows' profiles
    differ by ~1.4 se)."""
    # the noise allowance is capped (the sub-window scatter of a profile in motion is large)
    scale = MODES_TOL * cached + np.minimum(2.0 * np.nan_to_num(error), MODES_TOL * cached)
    z = np.abs(profile - cached) / np.maximum(scale, 1e-300)
    return bool(z.max() > 3.0 or np.sqrt(np.mean(z * z)) > 1.0)


def _modes_at(profile, k: int):
    """``(profile, mu, V, groups)`` of :func:`load_modes`, or None where the profile has none
    (a top-k load at 1/k or more)."""
    try:
        return (profile, *load_modes(profile, k))
    except (ValueError, np.linalg.LinAlgError):
        return None


def _fit_window(x, block: int, n: int, k: int, feedback, modes):
    """The fits of one refit, a pure function of its snapshot (run on the ``fits`` worker):
    ``(profile, modes computed here or None, whittle fit, feedback fit, profile moved)``.
    ``x``: the window's block means (M, N); ``feedback``: a :meth:`FeedbackStats.snapshot` or
    None; ``modes``: the monitor's ``(profile, mu, V, groups)`` (None: computed here)."""
    profile = stationary_profile(x)
    if n <= MODES_FRESH:
        modes = None  # cheap: the modes of this very window
    new = _modes_at(profile, k) if modes is None else None
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
    moved = modes is not None and _profile_moved(modes[0], profile, profile_error(x))
    return profile, new, fit, fb, moved


FILTER_STEPS = 10
MAX_DWELL = 128
RECOVER = 0.6  # recovered: both dwell halves back within this x excursion of the profile left


class _Refit:
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
        self.regime = "unresolved"
        self.reason = ""
        self.source = "none"
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
            d[k] = _finite_or_none(getattr(self, k))
        d["relaxation_rate_lo"] = _finite_or_none(self.relaxation_lo)
        d["relaxation_rate_hi"] = _finite_or_none(self.relaxation_hi)
        d["collapse_kappa"] = _finite_or_none(self.collapse_kappa)
        d["window_units"] = _finite_or_none(self.window_units)
        d["escape_steps"] = _finite_or_none(self.escape_steps)
        d["escape_steps_range"] = [_finite_or_none(x) for x in self.escape_range]
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


def _finite_or_none(x):
    return float(x) if x is not None and math.isfinite(x) else None


@dataclass
class LayerMonitor:
    """Collapse monitor of one MoE layer (see the module docstring).

    **Arguments:**

    - ``n_experts``: N; ``top_k``: experts per token (loads are ``count / (k B)``).
    - ``window``: steps in the fitting window; ``None`` (the default): automatic, the
      recommended window (:func:`recommended_window`) at the fitted ``eta gamma``, from 512
      steps until the first resolved fit, at most ``max_window``.
    - ``block``: steps per block mean (default :func:`default_block`; automatic with the window).
    - ``refit``: steps between fits (default ``window // 8``).
    - ``threshold``, ``lower``, ``approach_refits``: the ``approaching-threshold`` rule
      (``kappa_hat >= threshold`` and ``kappa_lo >= lower`` on ``approach_refits`` refits).
    - ``consecutive``: refits in a row for the ``metastable`` rule.
    - ``min_units``: the loads-based alarms need the fitted window to span at least this many
      units of ``1 / eta gamma_hat``.
    - ``excursion``, ``collapsed``: rise of the filtered max-load excess above that of the
      router's own stable profile (the reference) for ``collapse-in-progress`` and
      ``collapsed``; before a reference exists (warming up) nothing fires while the profile
      still moves, and a settled profile is alarmed only at the absolute levels
      ``max(excursion, 0.6)`` and ``max(collapsed, 0.9)``.
    - ``dwell``: steps the loads must stay back at a stable profile for ``recovered``, and the
      span over which stationarity is judged (default ``clip(20 / eta gamma, 32, min(window / 2,
      128))``).
    - ``warmup``: at least this many steps before a reference profile is taken (default 64);
      the reference is taken once the profile is stationary over a dwell.
    - ``dead_share``: ``dead-experts`` when an expert that carried at least ``0.25 / N`` of the
      load in the frozen long-term reference (:class:`~moebif.monitor.profile.FrozenReference`)
      keeps a filtered load below ``dead_share`` (0.1) of its reference share for a dwell
      (:class:`~moebif.monitor.profile.DeadExperts`); rare experts of a heterogeneous profile,
      and experts too rare for the batch to say (fewer than 20 tokens expected over a dwell;
      loads fed as fractions instead of counts give none), are not judged. ``None``: off.
    - ``frozen_reference``: keep the long-term reference, frozen once the profile has settled
      (stationary over two spans of ``max(4 dwell, 256)`` steps after the short-term reference
      is taken), and alarm on the drift of the excess from it, on dead experts, and judge
      recoveries against it (default). ``False``: only the short-term reference, which follows
      slow drifts (the monitor before the frozen reference: a slow drive goes unseen).
    - ``commit``: where between the saddle and the collapsed gap ``collapse-in-progress`` fires
      (metastable uniform top-1 router).
    - ``capacity``: tokens per expert per step, for the dropped fraction.
    - ``eta_gamma``: prior guess of ``eta gamma`` before the first fit (default ``20 / window``).
    - ``max_lag``: longest lag of the logit-based feedback estimator (steps).
    - ``force_segment``, ``force_segments``: the force estimator's segments (steps each) and
      how many of the last ones an estimate pools (:class:`~moebif.monitor.forces.ForceStats`).
    - ``horizon``: ``approaching-threshold`` also fires when the forecast says, with confidence,
      that the margin of the forces vanishes within this many steps (the upper end of the
      steps-to-collapse interval), or that it is negative already, on ``approach_refits``
      estimates in a row.
    - ``forecast_points``: estimates the margin's trend is fitted on.
    - ``refit_lag``: steps from a refit's snapshot to the step at which its fits are concluded
      (default 8; concluded at the first block end from there, at most the refit interval
      later; see the module docstring).
    - ``background``: run the fits on the shared worker thread (default); ``False`` runs them
      at the concluding step on the calling thread: the same results, later and blocking.
    - ``name``: layer label in alarms.
    - ``history``: fits and block records kept for read-out (the latest ``history`` of each;
      ``None``: all, as ``moebif diagnose`` does for a finished log). Memory is bounded by the
      window and ``history`` whatever the number of steps.

    :meth:`state_dict` / :meth:`load_state_dict` save and restore the whole state (plain Python
    values and lists: JSON- and ``torch.save``-safe), so a resumed run continues its window.
    """

    n_experts: int
    top_k: int = 1
    window: int | None = None
    block: int | None = None
    refit: int | None = None
    threshold: float = 0.82
    lower: float = 0.7
    approach_refits: int = 2
    consecutive: int = 3
    min_units: float = 50.0
    excursion: float = 0.25
    collapsed: float = 0.5
    commit: float = 0.25
    dwell: int | None = None
    warmup: int | None = None
    dead_share: float | None = 0.1
    frozen_reference: bool = True
    capacity: float | None = None
    eta_gamma: float | None = None
    max_lag: int = 64
    max_window: int = 1 << 16
    force_segment: int = 50
    force_segments: int = 20
    horizon: int = 1000
    forecast_points: int = 8
    refit_lag: int | None = None
    background: bool = True
    name: str = ""
    history: int | None = 2048
    alarms: list[Alarm] = field(default_factory=list, init=False)
    fits: deque = field(default_factory=deque, init=False)

    def __post_init__(self):
        n, k = int(self.n_experts), int(self.top_k)
        if n < 2:
            raise ValueError(f"n_experts: must be >= 2, got {n}")
        if not 1 <= k < n:
            raise ValueError(f"top_k: must be in 1..{n - 1}, got {k}")
        self._auto = self.window is None
        if self._auto:
            if self.block is not None:
                raise ValueError("block: set it only with a fixed window")
            self.window = 512
        if self.window < 32:
            raise ValueError(f"window: must be >= 32 steps, got {self.window}")
        self._cap_blocks = 2048 if n == 2 else 1024
        if self._auto:
            self.block = 1
            self._cap = self._cap_blocks
        else:
            self.block = default_block(self.window, n) if self.block is None else int(self.block)
            if self.block < 1 or self.window // self.block < 32:
                raise ValueError(
                    f"block: need window / block >= 32 blocks, got block = {self.block}"
                )
            self._cap = self.window // self.block
        self._user_refit = self.refit
        self._user_dwell = self.dwell
        self._set_refit()
        if self.history is not None and int(self.history) < 1:
            raise ValueError(f"history: must be >= 1 or None, got {self.history}")
        keep = None if self.history is None else int(self.history)
        self.fits = deque(maxlen=keep)
        self.block_record: deque = deque(maxlen=keep)  # (step, excess rise, latent gap)
        self.kappa_sn = collapse_ratio(n, k)
        self._buf = np.zeros((self._cap, n))  # block means of the loads (ring)
        self._nblocks = 0
        self._blk = np.zeros((self.block, n))  # counts of the current block
        self._in_block = 0
        self.step = 0
        self._since_refit = 0
        eg = self.eta_gamma if self.eta_gamma is not None else 20.0 / self.window
        self._eg = float(eg)
        self._eg_known = self.eta_gamma is not None
        self._ema = None  # loads filtered at the router's own rate
        self._had_resolved = False
        self._flags = {
            "approaching-threshold": False,
            "metastable": False,
            "collapse-in-progress": False,
            "collapsed": False,
            "dead-experts": False,
        }
        self._above = 0
        self._meta = 0
        self._excursion_step = -1  # last step with a collapse alarm active
        self._d_s = self._d_c = self._d_commit = math.nan
        self._calm = 0  # steps in a row with the latent gap calm (metastable rule)
        self._since_alarm = 0  # steps since the last collapse alarm
        # the router's own stable profile and its noise
        self._ref = None  # reference load profile (N,), None while warming up
        self._ref_pre = None  # the reference before the current collapse alarm
        self._ref_ex = 0.0
        # the long-term reference (frozen once settled) and the rules judged against it
        self._frozen = FrozenReference(n, k)
        share = 0.1 if self.dead_share is None else float(self.dead_share)
        self._dead_rule = DeadExperts(n, fraction=share)
        self._dead_now = np.zeros(n, dtype=bool)  # experts of the frozen reference now dead
        self._drift = math.nan  # dwell-mean excess minus the frozen reference's
        self._noise2 = 0.0  # mean square of the filtered excess rise while calm
        self._noise_n = 0
        self._recent = np.zeros((0, n))  # block means of the last dwell (for stationarity)
        self._feedback = None  # FeedbackStats, created on the first step with importance
        if int(self.horizon) < 1:
            raise ValueError(f"horizon: must be >= 1 step, got {self.horizon}")
        from .forces import ForceStats, Forecast

        self._fstats = ForceStats(segment=self.force_segment, segments=self.force_segments)
        self._forecaster = Forecast(points=self.forecast_points)
        self.forecasts: deque = deque(maxlen=keep)  # (ForceEstimate, ForecastState)
        self._f_above = 0
        self._collapse_cache = None  # (profile, A, kappa of the collapsed state)
        self._modes = None  # (profile, mu, V, groups): the load modes, kept while it stays put
        self._pending = None  # the snapshot of a fit not yet concluded (plain values)
        self._future = None  # its result on the worker thread (not part of the state)
        self._modes_request = None  # a moved profile whose modes the next refit installs
        self._modes_future = None  # (not part of the state)

    # -------------------------------------------------------------------------------------
    # window, refit and dwell

    def _set_refit(self) -> None:
        self.refit = (
            max(self.block, self.window // 8) if self._user_refit is None else int(self._user_refit)
        )
        if self._user_dwell is None:
            dw = int(round(20.0 / self._eg)) if getattr(self, "_eg_known", False) else 64
            # at most MAX_DWELL steps: a router back at a stable profile is seen as back
            # within a few hundred steps however slowly it forgets
            cap = min(max(32, self.window // 2), max(MAX_DWELL, self.block))
            self.dwell = int(min(max(dw, 32, self.block), cap))
        else:
            self.dwell = int(self._user_dwell)
        self._nd = max(1, -(-self.dwell // self.block))
        lag = 8 if self.refit_lag is None else int(self.refit_lag)
        self._lag = max(1, min(lag, self.refit))

    def _adapt_window(self) -> None:
        """Automatic window: the recommended one at the fitted eta gamma; the block grows (pairs
        of blocks merged) when the window needs more than the ring holds."""
        target = recommended_window(self.n_experts, self._eg)
        target = int(min(max(target, 256), self.max_window))
        while target > self._cap_blocks * self.block:
            self._merge_blocks()
        self.window = target
        self._set_refit()

    def _merge_blocks(self) -> None:
        nb = min(self._nblocks, self._cap)
        start = self._nblocks % self._cap if self._nblocks > self._cap else 0
        x = np.roll(self._buf, -start, axis=0)[:nb]
        if nb % 2:
            x = x[1:]  # the oldest block has no partner
        merged = x.reshape(-1, 2, self.n_experts).mean(axis=1)
        self._buf = np.zeros_like(self._buf)
        self._buf[: merged.shape[0]] = merged
        self._nblocks = merged.shape[0]
        old = self._blk[: self._in_block].copy()
        self.block *= 2
        self._blk = np.zeros((self.block, self.n_experts))
        self._blk[: old.shape[0]] = old

    # -------------------------------------------------------------------------------------
    # feeding

    def update(self, counts, importance=None, scores=None, forces=None) -> list[Alarm]:
        """One logged step: counts (or loads) of the N experts; optionally the soft importance
        (the router's mean probability per expert over the step's tokens) and the mean router
        logits, which let the monitor measure the feedback directly (:mod:`.feedback`), and the
        force probe's sums of the step (:mod:`.forces`), which give the margin and the forecast.
        Returns the alarms it raised.

        O(N) for the loads: the row is copied into a preallocated block buffer, and the loads
        of a block are computed when it closes, by the same code as :meth:`update_many` (so the
        two give bit-identical results)."""
        counts = np.asarray(counts, dtype=float)
        if importance is not None:
            self._push_feedback(counts, importance, scores)
        i = self._in_block
        self._blk[i] = counts
        self.step += 1
        # the forces of the initial transient (no stable profile yet) say nothing about the
        # balanced state the margin is about: they are not pooled
        out = [] if (forces is None or self._ref is None) else self._push_forces(forces)
        if i + 1 == self.block:
            self._in_block = 0
            bm, bc = self._block_stats(self._blk, 1)
            return out + self._push_block(bm[0], bc[0])
        self._in_block = i + 1
        return out

    def _push_forces(self, forces) -> list[Alarm]:
        """The forces' margin and forecast, updated at each closed segment; the forecast rule of
        ``approaching-threshold``."""
        if not self._fstats.push(forces):
            return []
        est = self._fstats.estimate()
        fc = self._forecaster.add(est, est.coefficient)
        self.forecasts.append((est, fc))
        warm = self._ref is None
        soon = (fc.steps_hi <= self.horizon) if math.isfinite(fc.steps_hi) else False
        self._f_above = self._f_above + 1 if (soon and not warm) else 0
        f = self._flags
        out = []
        if self._f_above >= self.approach_refits and not f["approaching-threshold"]:
            f["approaching-threshold"] = True
            if fc.steps_to_collapse == 0.0:
                when = "the margin is negative already"
            else:
                when = (
                    f"the margin vanishes in {fc.steps_to_collapse:.0f} steps "
                    f"[{fc.steps_lo:.0f}, {fc.steps_hi:.0f}]"
                )
            out.append(
                self._alarm(
                    "approaching-threshold",
                    f"forces: alpha* = {est.critical_coefficient:.3g} [{est.critical_lo:.3g}, "
                    f"{est.critical_hi:.3g}] against the coefficient {est.coefficient:.3g}; "
                    f"{when} (knob at collapse {fc.knob_at_collapse:.3g})",
                )
            )
            self.alarms += out
        elif f["approaching-threshold"] and self._f_above == 0 and fc.knob_margin_lo > 0:
            if not (math.isfinite(fc.steps_hi) and fc.steps_hi <= 2 * self.horizon):
                f["approaching-threshold"] = False
        return out

    def _push_feedback(self, counts, importance, scores) -> None:
        from .feedback import FeedbackStats

        if self._feedback is None:
            self._feedback = FeedbackStats(
                self.n_experts, max_lag=self.max_lag, segments=8, tau=max(self.window, 256)
            )
        tot = counts.sum()
        if tot <= 0:
            return
        imp = np.asarray(importance, dtype=float)
        s = imp.sum()
        if not (np.all(np.isfinite(imp)) and s > 0):
            return
        self._feedback.push(counts / tot, imp / s, scores)

    def _block_stats(self, seg, nb: int):
        """Block means of the loads and block sums of the counts of ``nb`` whole blocks."""
        s = seg.sum(axis=1, keepdims=True)
        loads = np.where(s > 0, seg / np.where(s > 0, s, 1.0), 1.0 / self.n_experts)
        m = self.block
        return loads.reshape(nb, m, -1).mean(axis=1), seg.reshape(nb, m, -1).sum(axis=1)

    def update_many(self, counts, importance=None, scores=None, forces=None) -> list[Alarm]:
        """Many steps at once, shape ``(S, N)`` (``importance``, ``scores``: the same shape, or
        ``None``; ``forces``: ``(S, 5)`` or ``None``): identical results to ``S`` calls of
        :meth:`update`."""
        c = np.asarray(counts, dtype=float)
        extra = [None if a is None else np.asarray(a, dtype=float) for a in (importance, scores)]
        for a, nm in zip(extra, ("importance", "scores"), strict=True):
            if a is not None and a.shape != c.shape:
                raise ValueError(f"{nm}: need shape {c.shape}, got {a.shape}")
        fo = None if forces is None else np.asarray(forces, dtype=float)
        if fo is not None and fo.shape != (c.shape[0], 5):
            raise ValueError(f"forces: need shape {(c.shape[0], 5)}, got {fo.shape}")
        if extra[0] is not None or fo is not None:  # per-step statistics need every step in turn
            out = []
            for i in range(c.shape[0]):
                sc = None if extra[1] is None else extra[1][i]
                imp = None if extra[0] is None else extra[0][i]
                out += self.update(c[i], imp, sc, None if fo is None else fo[i])
            return out
        out: list[Alarm] = []
        i = 0
        S = c.shape[0]
        while i < S:
            if self._in_block != 0:
                out += self.update(c[i])
                i += 1
                continue
            m = self.block
            nb = (S - i) // m
            if nb == 0:
                out += self.update(c[i])
                i += 1
                continue
            # whole blocks, up to the next refit or the conclusion of a pending fit (where the
            # block size may change)
            ahead = self.refit - self._since_refit
            if self._pending is not None:
                ahead = min(ahead, self._pending["apply"] - self.step)
            nb = min(nb, max(1, -(-ahead // m)))
            seg = c[i : i + nb * m]
            bm, bc = self._block_stats(seg, nb)
            for j in range(nb):
                self.step += m
                out += self._push_block(bm[j], bc[j])
            self._blk[m - 1 if m == self.block else 0] = seg[-1]  # the last step, for metrics()
            i += nb * m
        return out

    def _push_block(self, bm, bc) -> list[Alarm]:
        self._buf[self._nblocks % self._cap] = bm
        self._nblocks += 1
        self._since_refit += self.block
        # loads filtered at the router's own rate eta gamma (its latent scores are their EMA),
        # over at least FILTER_STEPS steps: on real text a single batch's data (one source
        # file) can put a third of the load on one expert, and a fit of such loads can read a
        # rate near 1 per step; no runaway is that fast
        keep = (1.0 - min(self._eg, 1.0 / FILTER_STEPS)) ** self.block
        self._ema = bm.copy() if self._ema is None else keep * self._ema + (1.0 - keep) * bm
        nd = self._nd
        self._recent = np.vstack([self._recent, bm])[-2 * nd :]
        out = self._check_profile(bm, bc)
        # the automatic window fits what it has while it grows (short windows are marked so)
        if self._pending is not None and self.step >= self._pending["apply"]:
            out += self._apply_fit()
        need = 32 if self._auto else max(self._cap // 2, 32)
        if self._since_refit >= self.refit and self._nblocks >= need:
            self._since_refit = 0
            if self._pending is not None:  # a lag longer than the refit interval
                out += self._apply_fit()
            self._start_fit()
        elif self._since_refit >= self.refit and self._feedback is not None:
            self._since_refit = 0
            self._feedback.close_segment()
        self.alarms += out
        return out

    # -------------------------------------------------------------------------------------
    # the profile rules: collapse, recovery, warming up

    def _alarm(self, kind: str, msg: str) -> Alarm:
        return Alarm(step=self.step, kind=kind, message=msg, layer=self.name)

    def _excess(self, loads=None) -> float:
        q = self._ema if loads is None else loads
        return max_load_excess(float(np.max(q)), self.n_experts, self.top_k)

    def latent_gap(self) -> float:
        """``d_max = kappa N (EMA_max - mean EMA of the others)`` at the current kappa_hat."""
        if self._ema is None or not self.fits or not math.isfinite(self.fits[-1].kappa):
            return math.nan
        e = self._ema
        i = int(e.argmax())
        others = (e.sum() - e[i]) / (self.n_experts - 1)
        return self.fits[-1].kappa * self.n_experts * (e[i] - others) * self.top_k

    def _dwell_means(self):
        """Mean loads over the last dwell, and over its two halves (None until filled)."""
        nd = self._nd
        if self._recent.shape[0] < nd or nd < 2:
            return None
        r = self._recent[-nd:]
        h = nd // 2
        return r.mean(axis=0), r[:h].mean(axis=0), r[h:].mean(axis=0)

    def _stationary(self, halves) -> bool:
        """The loads did not move over the dwell: the two halves agree within a few times the
        sampling noise of a half-dwell mean (estimated from the block-to-block scatter)."""
        nd = self._nd
        r = self._recent[-nd:]
        d = np.diff(r, axis=0)
        noise = math.sqrt(max(float((d**2).sum(axis=1).mean()) / 2.0, 0.0))  # per-block rms
        tol = 4.0 * noise * math.sqrt(2.0 / max(nd // 2, 1)) + 0.02
        return _tv(halves[0], halves[1]) <= tol

    def _dead(self, q, ref) -> int:
        """Experts that carried load in the reference and have (nearly) none now."""
        alive = ref >= 0.25 / self.n_experts
        return int(np.sum(alive & (q < 0.1 * ref)))

    def _collapse_active(self) -> bool:
        return self._flags[COLLAPSE_IN_PROGRESS] or self._flags[COLLAPSED]

    def _check_profile(self, bm, bc) -> list[Alarm]:
        out = []
        f = self._flags
        ex = self._excess()
        gap = self.latent_gap()
        dm = self._dwell_means()
        warming = self._ref is None
        if warming:
            # the initial transient is no alarm (a random-init router on real text can start far
            # from balance and move a long way); only a settled, absolutely concentrated profile
            # is: it never had a balanced state to leave
            lvl_in, lvl_col = max(self.excursion, WARM_LEVEL), max(self.collapsed, 0.9)
            settled = (
                dm is not None and self.step >= (self.warmup or 64) and self._stationary(dm[1:])
            )
            rise = ex if settled else -math.inf
            if settled and self._excess(dm[0]) < WARM_LEVEL:  # a collapsed profile is no reference
                self._ref = dm[0].copy()
                self._ref_ex = self._excess(self._ref)
        else:
            rise = ex - self._ref_ex
            lvl_in, lvl_col = self.excursion, self.collapsed
        fr = self._frozen
        if self.frozen_reference and self._ref is not None and not fr.frozen:
            if fr.push(bm, self.block, self.step, max(4 * self.dwell, 256)):
                out += self._settled()
        tokens = float(np.sum(bc)) / self.block  # token slots (k B) per step
        # the cumulative drift from the frozen reference, on the loads averaged over a dwell: a
        # slow drive needs no fast filter, and a dwell mean does not swing with one batch's data
        self._drift = fr.rise(dm[0]) if (fr.frozen and dm is not None) else math.nan
        ref = fr.loads if fr.frozen else self._ref
        if ref is None:
            ref = np.full(self.n_experts, 1.0 / self.n_experts)
        dying = self._dead(self._ema, ref) if not warming else 0
        alive = int(np.sum(ref >= 0.25 / self.n_experts))
        active = self._collapse_active()
        # jitter of the rise while clearly calm (small batches make the filtered loads noisy):
        # a collapse must stand out of it; a rise under way is never counted as jitter
        if not active and not warming and abs(rise) < 0.5 * lvl_in:
            self._noise2 += (rise * rise - self._noise2) / min(self._noise_n + 1, 64)
            self._noise_n += 1
        noise = 4.0 * math.sqrt(self._noise2) if self._noise_n >= 8 else 0.0
        self.block_record.append((self.step, rise if math.isfinite(rise) else math.nan, gap))
        in_meta = math.isfinite(self._d_s) and f["metastable"]
        past_saddle = in_meta and gap > self._d_commit
        runaway = rise >= max(lvl_in, noise)
        drifting = self._drift >= self.excursion  # False while NaN
        if not f[COLLAPSE_IN_PROGRESS] and (past_saddle or runaway or drifting):
            f[COLLAPSE_IN_PROGRESS] = True
            if past_saddle:
                why = (
                    f"latent score gap {gap:.2f} passed the saddle gap {self._d_s:.2f} by "
                    f"{self.commit:g} of the way to the collapsed gap {self._d_c:.2f}"
                )
            elif warming:
                why = f"filtered max-load excess {ex:.2f} >= {lvl_in:g} while warming up"
            elif runaway:
                why = (
                    f"filtered max-load excess {ex:.2f} rose {rise:.2f} above the router's "
                    f"recent stable profile ({self._ref_ex:.2f})"
                )
            else:
                why = (
                    f"max-load excess {self._excess(dm[0]):.2f} over the last {self.dwell} steps "
                    f"drifted {self._drift:+.2f} from the reference profile frozen at step "
                    f"{fr.step} ({fr.excess:.2f})"
                )
            out.append(self._alarm(COLLAPSE_IN_PROGRESS, why + "; the router is leaving balance"))
        many_dead = alive > self.top_k and dying >= max(1, (alive - self.top_k + 1) // 2)
        drift_collapsed = self._drift >= self.collapsed
        if not f[COLLAPSED] and (rise >= max(lvl_col, noise) or drift_collapsed or many_dead):
            f[COLLAPSED] = True
            if fr.frozen and math.isfinite(self._drift):
                where = (
                    f"{self._drift + fr.excess:.2f} over the last {self.dwell} steps against "
                    f"{fr.excess:.2f} in the reference frozen at step {fr.step}"
                )
            elif not warming:
                where = f"recent stable profile {self._ref_ex:.2f}; no long-term reference yet"
            else:
                where = "while warming up: no stable profile yet"
            lost = f", {dying} of {alive} experts alive in it dropped out" if not warming else ""
            out.append(
                self._alarm(
                    COLLAPSED,
                    f"filtered max-load excess {ex:.2f} ({where}){lost}: the load sits on few "
                    "experts",
                )
            )
        if self.dead_share is not None and fr.frozen:
            self._dead_now = self._dead_rule.update(self._ema, fr, self.block, tokens, self.dwell)
            if not f[DEAD_EXPERTS] and self._dead_now.any():
                f[DEAD_EXPERTS] = True
                out.append(self._alarm(DEAD_EXPERTS, self._dead_message()))
        if out and self._collapse_active() and self._ref_pre is None and self._ref is not None:
            self._ref_pre = self._ref.copy()
        if self._collapse_active():
            self._excursion_step = self.step
        self._calm = 0 if (in_meta and gap > 0.5 * self._d_s) else self._calm + self.block
        if out:
            self._since_alarm = 0
        else:
            self._since_alarm += self.block
        if any(f[kind] for kind in ACTIVE_KINDS) and self._since_alarm >= self.dwell:
            out += self._check_recovery(dm, tokens)
        elif not self._collapse_active() and self._ref is not None:
            # the short-term reference follows a slow drift of the stable profile (specialising
            # experts) so that a fast excursion is judged against where the router is now; the
            # slow drift itself is judged against the frozen reference
            w = min(1.0, self.block / max(self.window, 4 * self.dwell))
            self._ref = (1.0 - w) * self._ref + w * bm
            self._ref_ex = self._excess(self._ref)
        return out

    def _dead_message(self) -> str:
        fr, idx = self._frozen, np.flatnonzero(self._dead_now)
        names = ", ".join(str(i) for i in idx[:8]) + (", ..." if idx.size > 8 else "")
        now = ", ".join(f"{self._ema[i]:.3f}" for i in idx[:8])
        was = ", ".join(f"{fr.loads[i]:.3f}" for i in idx[:8])
        return (
            f"{idx.size} expert(s) ({names}) of the {int(fr.alive().sum())} alive in the "
            f"reference profile frozen at step {fr.step} kept less than {self.dead_share:g} of "
            f"their reference share for {self.dwell} steps (filtered loads {now} against {was})"
        )

    def _settled(self) -> list[Alarm]:
        """The long-term reference was just frozen: the layer settled, and the alarms raised
        before it (during the initial transient, against no or a short-lived reference) clear."""
        f, fr = self._flags, self._frozen
        self._ref = fr.loads.copy()  # the short-term reference restarts from the settled profile
        self._ref_ex = fr.excess
        kinds = [kind for kind in ACTIVE_KINDS if f[kind]]
        if not kinds:
            return []
        for kind in kinds:
            f[kind] = False
        self._ref_pre = None
        return [
            self._alarm(
                RECOVERED,
                f"the layer settled: its profile (max-load excess {fr.excess:.2f}) was stationary "
                "over two spans and is frozen as the long-term reference; the "
                f"{' and '.join(kinds)} raised before it belonged to the initial transient",
            )
        ]

    def _check_recovery(self, dm, tokens: float) -> list[Alarm]:
        """Every active collapse-type alarm clears at once when both halves of the dwell are
        back within ``RECOVER x excursion`` of the reference's excess (the frozen one once it
        exists, else the short-term one before the alarm), the loads are stationary, and every
        expert alive in the reference carries load again. An alarm raised before any reference
        clears when the layer settles (:meth:`_settled`)."""
        if dm is None or self._calm < self.dwell:
            return []
        fr = self._frozen
        if fr.frozen:
            target, what = fr.loads, f"the reference frozen at step {fr.step}"
        elif self._ref_pre is not None:
            target, what = self._ref_pre, "the profile before the collapse"
        else:
            return []
        mean = dm[0]
        # both halves of the dwell back (an excess swinging in and out is not back)
        rise = max(self._excess(dm[1]), self._excess(dm[2])) - self._excess(target)
        if rise >= RECOVER * self.excursion or not self._stationary(dm[1:]):
            return []
        if fr.frozen and self.dead_share is not None:
            if not self._dead_rule.revived(mean, fr, tokens, self.dwell):
                return []
        elif self._dead(mean, target) > 0:
            return []
        f = self._flags
        for kind in ACTIVE_KINDS:
            f[kind] = False
        self._dead_now[:] = False
        self._ref = mean.copy()  # the stable profile it came back to (it may differ)
        self._ref_ex = self._excess(self._ref)
        self._ref_pre = None
        return [
            self._alarm(
                RECOVERED,
                f"back at a stable profile: max-load excess {self._excess(mean):.2f} averaged "
                f"over the last {self.dwell} steps ({rise:+.2f} against {what}), every expert "
                "alive in it carries load again",
            )
        ]

    # -------------------------------------------------------------------------------------
    # the model-based rules

    def _start_fit(self) -> None:
        """Snapshot the window (and the feedback statistics) at this refit step and hand the
        fits to the worker thread; :meth:`_apply_fit` concludes them ``refit_lag`` steps on.
        Modes requested at the last conclusion are installed first (waiting if needed)."""
        if self._modes_request is not None:
            fut, self._modes_future = self._modes_future, None
            new = fut.result() if fut is not None else _modes_at(self._modes_request, self.top_k)
            self._modes_request = None
            if new is not None:
                self._modes = new
        nb = min(self._nblocks, self._cap)
        start = self._nblocks % self._cap if self._nblocks > self._cap else 0
        x = np.roll(self._buf, -start, axis=0)[:nb] if self._nblocks > self._cap else self._buf[:nb]
        want = max(32, self.window // self.block)
        fb = None
        if self._feedback is not None:
            self._feedback.close_segment()
            if len(self._feedback._seg) >= 4:
                fb = self._feedback.snapshot()
        self._pending = {
            "step": self.step,
            "apply": self.step + self._lag,
            "x": x[-want:].copy(),
            "block": self.block,
            "feedback": fb,
            "modes": self._modes,
        }
        self._submit()

    def _submit(self) -> None:
        p = self._pending
        args = (p["x"], p["block"], self.n_experts, self.top_k, p["feedback"], p["modes"])
        self._future = _executor("fits").submit(_fit_window, *args) if self.background else None

    def _submit_modes(self) -> None:
        if self.background:
            lane = _executor("modes")
            self._modes_future = lane.submit(_modes_at, self._modes_request, self.top_k)

    def _apply_fit(self) -> list[Alarm]:
        """Conclude the pending fit (waiting for the worker only if it is not done yet)."""
        p, fut = self._pending, self._future
        self._pending = self._future = None
        if fut is not None:
            profile, modes, fit, fb, moved = fut.result()
        else:
            profile, modes, fit, fb, moved = _fit_window(
                p["x"], p["block"], self.n_experts, self.top_k, p["feedback"], p["modes"]
            )
        if modes is not None:
            self._modes = modes
        if moved:  # new modes for the next refit, computed meanwhile in their own lane
            self._modes_request = profile
            self._submit_modes()
        return self._conclude(p["step"], p["x"].shape[0] * p["block"], profile, fit, fb)

    def _conclude(self, step: int, span: int, profile, fit, fb) -> list[Alarm]:
        """The regime and the model-based alarms from the fits of the window of ``span`` steps
        that ended at ``step``."""
        n, k = self.n_experts, self.top_k
        rf = _Refit(step, fit, fb)
        # which estimate speaks for the router: the logits when they resolve it
        if fb is not None and fb.resolved:
            rf.source = "logits"
            rf.kappa, rf.kappa_lo, rf.kappa_hi = fb.kappa, fb.kappa_lo, fb.kappa_hi
            rf.relaxation_rate = fb.relaxation_rate
            rf.relaxation_lo, rf.relaxation_hi = fb.relaxation_rate_lo, fb.relaxation_rate_hi
            rf.eta_gamma = fb.eta_gamma
        elif fit is not None and fit.resolved and fb is None:
            rf.source = "loads"
            rf.kappa, rf.kappa_lo, rf.kappa_hi = fit.kappa, fit.kappa_lo, fit.kappa_hi
            rf.relaxation_rate = fit.relaxation_rate
            rf.eta_gamma = fit.eta_gamma
            # the rate's interval from kappa's: relaxation = eta gamma (1 - kappa)
            rf.relaxation_lo = fit.eta_gamma * (1.0 - fit.kappa_hi)
            rf.relaxation_hi = fit.eta_gamma * (1.0 - fit.kappa_lo)
        if rf.source != "none" and 0.0 < rf.eta_gamma < 1.0:
            self._eg = rf.eta_gamma
            self._eg_known = True
            self._had_resolved = True
        if not math.isfinite(rf.kappa_lo) or rf.kappa_lo < -1e6:
            rf.kappa_lo = math.nan
        if rf.source == "none":
            if fb is not None:
                rf.reason = f"logits: {fb.reason}"
            elif fit is None:
                rf.reason = "loads: no fit (constant loads)"
            elif fit.at_edge:
                rf.reason = (
                    "loads: the relaxation time is not resolved (kappa at the edge of the search:"
                    " a drift, a collapse in progress or a too short window)"
                )
            else:
                rf.reason = "loads: the window holds fewer than 4 relaxation times"
            rf.regime = "unresolved"
        else:
            kap = rf.kappa
            rf.collapse_kappa = self._collapse_kappa(profile, kap)
            ksn = rf.collapse_kappa
            rf.regime = (
                "collapsing"
                if kap >= 1.0
                else ("metastable" if (n >= 3 and kap >= ksn) else "balanced")
            )
            dm = self._dwell_means()
            if (
                rf.regime == "collapsing"
                and rf.source == "loads"
                and not (self._flags["collapse-in-progress"] or self._flags["collapsed"])
                and dm is not None
                and self._stationary(dm[1:])
            ):
                # an unstable router runs away; loads that stay put with kappa_hat >= 1 are a
                # slow drive of the gate (the language model's gradient), which loads alone
                # cannot tell from feedback
                rf.regime = "unresolved"
                rf.reason = (
                    "loads: kappa_hat >= 1 on a stationary profile: a slow drive of the gate, "
                    "not feedback the loads can resolve (log the router's scores)"
                )
            uniform = float(np.abs(profile * n - 1.0).max()) <= 1e-9
            if n >= 3 and k == 1 and uniform and rf.kappa_hi >= ksn and fit is not None:
                rf._esc_args = (ksn, rf.eta_gamma, fit.b_eff, n)
        rf.window_units = span * self._eg
        if self._auto and self._eg_known:
            self._adapt_window()
        short = rf.source == "loads" and not (
            self._had_resolved and rf.window_units >= self.min_units
        )
        if short and rf.regime != "unresolved":
            rf.regime, rf.reason = (
                "short-window",
                (f"the window spans {rf.window_units:.0f} < {self.min_units:g} relaxation units"),
            )
        # a window that overlaps a collapse alarm is not about the balanced state
        excursion = step - span < self._excursion_step
        if excursion:
            rf.regime, rf.reason = "excursion", "the window overlaps a collapse alarm"
        if self._ref is None and rf.regime not in ("excursion",):
            rf.regime, rf.reason = "warming-up", "no stable load profile yet"
        self.fits.append(rf)
        out = []
        f = self._flags
        if rf.regime in ("excursion", "unresolved", "short-window", "warming-up"):
            self._above = self._meta = 0
            self._d_s = self._d_c = self._d_commit = math.nan
            return out
        kap = rf.kappa
        lo_ok = rf.kappa_lo >= self.lower or not math.isfinite(rf.kappa_lo)
        self._above = self._above + 1 if (kap >= self.threshold and lo_ok) else 0
        if self._above >= self.approach_refits and not f["approaching-threshold"]:
            f["approaching-threshold"] = True
            lo = "?" if not math.isfinite(rf.kappa_lo) else f"{rf.kappa_lo:.3f}"
            out.append(
                self._alarm(
                    "approaching-threshold",
                    f"kappa_hat = {kap:.3f} [{lo}, {rf.kappa_hi:.3f}] ({rf.source}) "
                    f">= {self.threshold:g} (lower end >= {self.lower:g}) on "
                    f"{self.approach_refits} refits; the slowest mode stops relaxing at 1",
                )
            )
        elif kap < self.threshold - 0.05:
            f["approaching-threshold"] = False
        if n >= 3:
            ksn = rf.collapse_kappa
            self._meta = self._meta + 1 if kap >= ksn else 0
            near_uniform = rf._esc_args is not None
            self._d_s, self._d_c = (
                saddle_gap(kap, n) if (near_uniform and ksn <= kap < 1.0) else (math.nan, math.nan)
            )
            self._d_commit = self._d_s + self.commit * (self._d_c - self._d_s)
            if self._meta >= self.consecutive and not f["metastable"]:
                f["metastable"] = True
                esc = rf.escape_steps
                tau = f"{esc:.3g} steps" if math.isfinite(esc) else "not given (outside the theory)"
                out.append(
                    self._alarm(
                        "metastable",
                        f"kappa_hat = {kap:.3f} >= {ksn:.3f}, where a stable collapsed state "
                        f"appears for this load profile: jumps to it are noise-induced and give "
                        f"no lead time; mean escape time {tau}",
                    )
                )
            elif kap < ksn - 0.03:
                f["metastable"] = False
        return out

    def _collapse_kappa(self, profile, kappa: float) -> float:
        """The stability ratio at which a stable collapsed state exists for this profile (its
        drifts held fixed): ``kappa_SN`` of the symmetric theory at a uniform profile, else
        from the drifts (:func:`moebif.model.heterogeneous.collapse_feedback`); computed only
        when kappa is high enough to matter, and cached while the profile stays put."""
        n, k = self.n_experts, self.top_k
        p = np.asarray(profile, dtype=float)
        if n < 3 or float(np.abs(p * n - 1.0).max()) <= 1e-9 or kappa < 0.5:
            return self.kappa_sn
        if k > 1 and n > 16:
            return self.kappa_sn  # the top-k drift continuation is too costly: symmetric value
        c = self._collapse_cache
        if c is not None and _tv(c[0], p) < 0.05 and abs(c[1] - kappa) < 0.05:
            return c[2]
        from ..model.heterogeneous import collapse_feedback, drifts_for_profile, state_of_profile

        try:
            st = state_of_profile(p, k)
            A = kappa / st.mu_max
            a_sn, _ = collapse_feedback(drifts_for_profile(p, A, k), k, rtol=1e-3)
            out = a_sn * st.mu_max if math.isfinite(a_sn) else math.inf
        except (ValueError, np.linalg.LinAlgError):
            out = self.kappa_sn
        self._collapse_cache = (p.copy(), kappa, out)
        return out

    # -------------------------------------------------------------------------------------
    # checkpoint

    def state_dict(self) -> dict:
        """The complete state as plain Python values (dicts, lists, numbers, strings): safe for
        ``json`` and for ``torch.save`` / ``torch.load(weights_only=True)``."""
        # a pending fit is saved as its snapshot (the worker's result is not waited for): the
        # restored monitor runs it again, a pure function of the snapshot, to the same result
        state = {k: v for k, v in vars(self).items() if k not in ("_future", "_modes_future")}
        return {"format": "moebif.LayerMonitor/1", "state": _encode(state)}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (of a monitor with the same N, top-k and window rule)."""
        if not isinstance(state, dict) or state.get("format") != "moebif.LayerMonitor/1":
            raise ValueError("state: not a LayerMonitor state_dict")
        values = _decode(state["state"])
        keys = ("n_experts", "top_k", "_auto") + (() if self._auto else ("window", "block"))
        for key in keys:
            if values.get(key) != getattr(self, key):
                raise ValueError(
                    f"state: {key.lstrip('_')} = {values.get(key)!r} does not match this "
                    f"monitor's {getattr(self, key)!r}"
                )
        vars(self).update(values)
        self._future = self._modes_future = None
        if self._pending is not None:
            self._submit()
        if self._modes_request is not None:
            self._submit_modes()

    @property
    def estimate(self) -> WhittleFit | None:
        """The last Whittle fit of the loads (None before the first refit)."""
        return self.fits[-1].fit if self.fits else None

    @property
    def reference(self) -> np.ndarray | None:
        """The router's own stable load profile (None while warming up)."""
        return None if self._ref is None else self._ref.copy()

    def _last_counts(self) -> np.ndarray:
        if self.step == 0:
            return np.zeros(self.n_experts)
        return self._blk[(self._in_block - 1) % self.block].copy()

    def metrics(self) -> dict:
        """Metrics of the last step (counts), of the filtered loads, of the short-term stable
        profile (``profile_*``: imbalance, rare experts and Neff; ``excess_rise``: the filtered
        excess above it) and of the frozen long-term reference (``reference_*``: its excess,
        the step it was frozen, its experts alive (carrying >= 0.25 / N); ``drift``: the excess
        of the loads averaged over the last dwell minus the reference's; ``dead_vs_reference``:
        experts alive in it that the ``dead-experts`` rule finds dead now)."""
        last = load_metrics(self._last_counts(), capacity=self.capacity)
        m = {k: float(v) for k, v in last.items()}
        if self._ema is not None:
            m["max_load_excess_filtered"] = self._excess()
        if self._ref is not None:
            prof = load_metrics(self._ref, loads=True)
            m["profile_max_load_excess"] = self._ref_ex
            m["profile_max_vio"] = float(prof["max_vio"])
            m["profile_n_eff"] = float(prof["n_eff"])
            m["profile_rare"] = float(np.mean(self._ref < 0.25 / self.n_experts))
            if self._ema is not None:
                m["excess_rise"] = self._excess() - self._ref_ex
        fr = self._frozen
        if fr.frozen:
            m["reference_max_load_excess"] = fr.excess
            m["reference_step"] = float(fr.step)
            m["reference_alive"] = float(fr.alive().sum())
            if math.isfinite(self._drift):
                m["drift"] = self._drift
            m["dead_vs_reference"] = float(self._dead_now.sum())
        return m

    def forecast(self) -> dict:
        """The forces' margin and forecast (plain values): ``critical_coefficient`` (``alpha*``
        with ``lo``/``hi``) and ``steps_to_collapse`` (``value``, ``lo``, ``hi``), each ``None``
        with a ``reason`` when not resolved; ``margin``, ``reinforcement``, ``restoring`` (per
        unit coefficient) with their intervals, ``coefficient`` (the knob now), ``step``."""
        if not self.forecasts:
            why = (
                "no force measurements (the probe needs the router's logits with their "
                "gradient: a training backward pass through a softmax router)"
                if self._fstats.step == 0 or not self._fstats.closed and not self._fstats.cur[3]
                else f"forces: the first segment of {self._fstats.segment} steps is not closed"
            )
            return {"critical_coefficient": None, "steps_to_collapse": None, "reason": why}
        est, fc = self.forecasts[-1]

        def trio(v, lo, hi):
            return {
                "value": _finite_or_none(v),
                "lo": _finite_or_none(lo),
                "hi": _finite_or_none(hi),
            }

        crit = (
            trio(est.critical_coefficient, est.critical_lo, est.critical_hi)
            if est.resolved
            else None
        )
        steps = None
        if est.resolved and math.isfinite(fc.steps_to_collapse):
            steps = trio(fc.steps_to_collapse, fc.steps_lo, fc.steps_hi)
        return {
            "step": self.step,
            "coefficient": _finite_or_none(est.coefficient),
            "critical_coefficient": crit,
            "steps_to_collapse": steps,
            "knob_at_collapse": _finite_or_none(fc.knob_at_collapse),
            "margin": trio(est.margin, est.margin_lo, est.margin_hi),
            "knob_margin": trio(fc.knob_margin, fc.knob_margin_lo, fc.knob_margin_hi),
            "reinforcement": trio(est.reinforcement, est.reinforcement_lo, est.reinforcement_hi),
            "restoring": trio(est.restoring, est.restoring_lo, est.restoring_hi),
            "steps_used": est.steps,
            "reason": est.reason if not est.resolved else fc.reason,
        }

    def forecast_history(self) -> list[dict]:
        """Every kept estimate: step, coefficient, alpha* and margin with intervals, steps to
        collapse (for plots and reports)."""
        rows = []
        for est, fc in self.forecasts:
            rows.append(
                {
                    "step": est.step,
                    "coefficient": _finite_or_none(est.coefficient),
                    "critical_coefficient": _finite_or_none(est.critical_coefficient),
                    "critical_lo": _finite_or_none(est.critical_lo),
                    "critical_hi": _finite_or_none(est.critical_hi),
                    "margin": _finite_or_none(est.margin),
                    "margin_lo": _finite_or_none(est.margin_lo),
                    "margin_hi": _finite_or_none(est.margin_hi),
                    "steps_to_collapse": _finite_or_none(fc.steps_to_collapse),
                    "steps_lo": _finite_or_none(fc.steps_lo),
                    "steps_hi": _finite_or_none(fc.steps_hi),
                }
            )
        return rows

    def state(self) -> str:
        """The layer's current state in one word: the active collapse-type alarm (``collapsed``,
        ``collapse-in-progress``, ``dead-experts``, most severe first), else ``warming-up``
        before a stable profile, else the regime of the last fit."""
        for kind in (COLLAPSED, COLLAPSE_IN_PROGRESS, DEAD_EXPERTS):
            if self._flags[kind]:
                return kind
        if self._ref is None:
            return "warming-up"
        return self.fits[-1].regime if self.fits else "unresolved"

    def active_alarms(self) -> list[dict]:
        """The alarms in force now (raised and not cleared), each as its last :class:`Alarm`
        dict. An ``approaching-threshold`` is left out once superseded: a collapse alarm is
        active, or the last fit reads ``collapsing`` (kappa_hat >= 1, past the threshold)."""
        kinds = [kind for kind, on in self._flags.items() if on]
        state = self.state()
        if state in ACTIVE_KINDS or state == "collapsing":
            kinds = [kind for kind in kinds if kind != APPROACHING]
        last = {a.kind: a for a in self.alarms}
        return [last[kind].to_dict() for kind in kinds if kind in last]

    def _profile_summary(self) -> dict:
        """The summary's keys of the profile rules (:meth:`summary`)."""
        fr = self._frozen
        ref = fr.to_dict()
        if ref is not None:
            ref["dead_now"] = np.flatnonzero(self._dead_now).tolist()
            ref["drift"] = _finite_or_none(self._drift)
        return {"state": self.state(), "active": self.active_alarms(), "reference": ref}

    def summary(self) -> dict:
        """Regime, metrics, the last estimate and the alarms (plain values, JSON-ready)."""
        last = self.fits[-1] if self.fits else None
        out = {
            "layer": self.name,
            "n_experts": self.n_experts,
            "top_k": self.top_k,
            "steps": self.step,
            "window": self.window,
            "block": self.block,
            "kappa_sn": self.kappa_sn,
            "regime": "warming-up"
            if last is None and self._ref is None
            else (last.regime if last is not None else "unresolved"),
            "reason": "" if last is None else last.reason,
            "metrics": self.metrics(),
            "profile": None if self._ref is None else self._ref.tolist(),
            "estimate": None if last is None else last.to_dict(),
            "alarms": [a.to_dict() for a in self.alarms],
        }
        out["forecast"] = self.forecast()
        out.update(self._profile_summary())
        if last is None:
            out["reason"] = "no fit yet: the window is not half full"
        fb = None if last is None else last.feedback
        fit = None if last is None else last.fit
        out["identifiable"] = {
            "kappa": None if last is None else _finite_or_none(last.kappa),
            "kappa_interval": None
            if last is None
            else [_finite_or_none(last.kappa_lo), _finite_or_none(last.kappa_hi)],
            "relaxation_rate": None if last is None else _finite_or_none(last.relaxation_rate),
            "relaxation_rate_interval": None
            if last is None
            else [_finite_or_none(last.relaxation_lo), _finite_or_none(last.relaxation_hi)],
            "eta_gamma": None if last is None else _finite_or_none(last.eta_gamma),
            "feedback": None if fb is None else _finite_or_none(fb.feedback),
            "feedback_interval": None
            if fb is None
            else [_finite_or_none(fb.feedback_lo), _finite_or_none(fb.feedback_hi)],
            "b_eff": None if fit is None else _finite_or_none(fit.b_eff),
            "source": "none" if last is None else last.source,
        }
        return out


class LoadMonitor:
    """Monitors of many layers, created on first sight of a layer key.

    ``LoadMonitor(n_experts=8, top_k=2, window=4096).update(step, {"layer0": counts, ...})``;
    keyword arguments are passed to every :class:`LayerMonitor`.
    """

    def __init__(self, **options):
        self.options = options
        self.layers: dict[str, LayerMonitor] = {}

    def layer(self, key, n_experts: int | None = None) -> LayerMonitor:
        key = str(key)
        if key not in self.layers:
            opts = dict(self.options)
            if n_experts is not None:
                opts["n_experts"] = n_experts
            self.layers[key] = LayerMonitor(name=key, **opts)
        return self.layers[key]

    def update(self, counts_by_layer: dict) -> list[Alarm]:
        out = []
        for key, c in counts_by_layer.items():
            c = np.asarray(c)
            out += self.layer(key, c.shape[-1]).update(c)
        return out

    @property
    def alarms(self) -> list[Alarm]:
        return sorted((a for m in self.layers.values() for a in m.alarms), key=lambda a: a.step)

    def summary(self) -> dict:
        return {k: m.summary() for k, m in self.layers.items()}


# ----------------------------------------------------------------------------------------------
# state_dict encoding: plain values only (tagged dicts for arrays, deques and records)


def _encode(x):
    if isinstance(x, np.ndarray):
        return {"__ndarray__": x.tolist(), "dtype": str(x.dtype), "shape": list(x.shape)}
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, deque):
        return {"__deque__": [_encode(v) for v in x], "maxlen": x.maxlen}
    if isinstance(x, tuple):
        return {"__tuple__": [_encode(v) for v in x]}
    if isinstance(x, list):
        return [_encode(v) for v in x]
    if isinstance(x, dict):
        return {"__dict__": [[_encode(k), _encode(v)] for k, v in x.items()]}
    if isinstance(x, Alarm):
        return {"__alarm__": x.to_dict()}
    if isinstance(x, WhittleFit):
        return {"__whittle__": {k: _encode(v) for k, v in asdict(x).items()}}
    if isinstance(x, _Refit):
        return {"__refit__": {k: _encode(getattr(x, k)) for k in _Refit.__slots__}}
    if type(x).__name__ in PROFILE_RULES and isinstance(x, PROFILE_RULES[type(x).__name__]):
        return {"__rule__": type(x).__name__, "state": {k: _encode(v) for k, v in vars(x).items()}}
    from .feedback import FeedbackFit, FeedbackStats
    from .forces import ForceEstimate, ForceStats, Forecast, ForecastState

    if isinstance(x, ForceStats):
        return {"__forcestats__": x.state_dict()}
    if isinstance(x, Forecast):
        return {"__forecast__": x.state_dict()}
    if isinstance(x, ForceEstimate):
        return {"__forceestimate__": {k: _encode(v) for k, v in asdict(x).items()}}
    if isinstance(x, ForecastState):
        return {"__forecaststate__": {k: _encode(v) for k, v in asdict(x).items()}}

    if isinstance(x, FeedbackFit):
        return {"__feedbackfit__": {k: _encode(v) for k, v in asdict(x).items()}}
    if isinstance(x, FeedbackStats):
        return {"__feedbackstats__": {k: _encode(v) for k, v in vars(x).items()}}
    return x


def _decode(x):
    if isinstance(x, list):
        return [_decode(v) for v in x]
    if not isinstance(x, dict):
        return x
    if "__ndarray__" in x:
        return np.array(x["__ndarray__"], dtype=x["dtype"]).reshape(x["shape"])
    if "__deque__" in x:
        return deque((_decode(v) for v in x["__deque__"]), maxlen=x["maxlen"])
    if "__tuple__" in x:
        return tuple(_decode(v) for v in x["__tuple__"])
    if "__dict__" in x:
        return {_decode(k): _decode(v) for k, v in x["__dict__"]}
    if "__alarm__" in x:
        return Alarm(**x["__alarm__"])
    if "__whittle__" in x:
        return WhittleFit(**{k: _decode(v) for k, v in x["__whittle__"].items()})
    if "__rule__" in x:
        rule = PROFILE_RULES[x["__rule__"]].__new__(PROFILE_RULES[x["__rule__"]])
        vars(rule).update({k: _decode(v) for k, v in x["state"].items()})
        return rule
    if "__refit__" in x:
        r = _Refit.__new__(_Refit)
        for k, v in x["__refit__"].items():
            setattr(r, k, _decode(v))
        return r
    from .feedback import FeedbackFit, FeedbackStats
    from .forces import ForceEstimate, ForceStats, Forecast, ForecastState

    if "__forcestats__" in x:
        return ForceStats.from_state(x["__forcestats__"])
    if "__forecast__" in x:
        return Forecast.from_state(x["__forecast__"])
    if "__forceestimate__" in x:
        return ForceEstimate(**{k: _decode(v) for k, v in x["__forceestimate__"].items()})
    if "__forecaststate__" in x:
        return ForecastState(**{k: _decode(v) for k, v in x["__forecaststate__"].items()})
    if "__feedbackfit__" in x:
        return FeedbackFit(**{k: _decode(v) for k, v in x["__feedbackfit__"].items()})
    if "__feedbackstats__" in x:
        st = FeedbackStats.__new__(FeedbackStats)
        st._unfolded = 0  # states saved before the batched averages
        vars(st).update({k: _decode(v) for k, v in x["__feedbackstats__"].items()})
        return st
    return x
