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
profile they were computed at plus twice its sampling error
(:func:`~.estimation.profile_moved`; the uniform state has them in closed form). When a
conclusion finds the profile moved, the new modes are computed in a second worker lane and
installed at the next refit's snapshot (one refit interval later, waiting there only if they
are not done); until then the fits use the modes held. Only the first refit computes its
modes within its own fit, and for ``N <= 16`` (``MODES_FRESH``: tens of ms) every fit does, so
small routers use the modes of their very window, also while a collapse moves the profile
fast. The refit's cost is then that of the fits themselves (tens of ms at N = 256), off the
training thread; a step waits only where ``refit_lag`` steps of training take less than that
(benchmarks/bench_monitor.py ``cost``).

**Latent scores.** The router's scores are an exponential average of its own loads,
``r_{n+1} = (1 - eta gamma) r_n + eta a_eff l_n``, so ``d_i = r_i / T`` is reconstructed from the
loads alone up to its initial value: ``d = kappa N * EMA_{eta gamma}(l)`` (``a_eff / (gamma T) =
kappa N``). The score gap of the leading expert, ``d_max = kappa N (EMA_max - mean EMA of the
others)``, is compared with the one-winner saddle gap ``d_s`` of eq. (8) at ``kappa_hat``: past it
the mean-field router runs into collapse without further noise.

**Alarms** (each an :class:`Alarm` with a one-line explanation; each rule is an object with its
own state in :mod:`moebif.monitor.rules`, its kind an :class:`~.kinds.AlarmKind`; the fits and
the estimate are in :mod:`moebif.monitor.estimation`, the checkpoint in
:mod:`moebif.monitor.state`):

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
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from .estimation import (
    MODES_FRESH as MODES_FRESH,
)
from .estimation import (
    MODES_TOL as MODES_TOL,
)
from .estimation import (
    Refit,
    choose_estimate,
    classify_regime,
    executor,
    finite_or_none,
    fit_window,
    modes_at,
    unresolved_reason,
)
from .estimation import collapse_ratio as collapse_ratio
from .estimation import escape_time as escape_time
from .estimation import saddle_gap as saddle_gap
from .kinds import ACTIVE_KINDS, UNUSED_REGIMES, Alarm, AlarmKind, Regime, Source
from .metrics import load_metrics, max_load_excess
from .profile import WARM_LEVEL, FrozenReference
from .profile import total_variation as _tv
from .rules import RULES, AlarmRule, BlockContext
from .whittle import WhittleFit

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


FILTER_STEPS = 10
MAX_DWELL = 128


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
        self._excursion_step = -1  # last step with a collapse alarm active
        # the router's own stable profile and its noise
        self._ref = None  # reference load profile (N,), None while warming up
        self._ref_ex = 0.0
        # the long-term reference (frozen once settled) and the rules judged against it
        self._frozen = FrozenReference(n, k)
        # the alarm rules, each with its own state (moebif.monitor.rules), in registry order
        self.rules: dict[AlarmKind, AlarmRule] = {kind: cls(self) for kind, cls in RULES.items()}
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
        out = []
        for rule in self.rules.values():
            out += rule.on_forecast(self, est, fc, warm=warm)
        self.alarms += out
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

    def alarm(self, kind: AlarmKind, msg: str) -> Alarm:
        """An :class:`Alarm` of this layer at the current step."""
        return Alarm(step=self.step, kind=kind, message=msg, layer=self.name)

    def excess(self, loads=None) -> float:
        """Max-load excess of ``loads`` (default: the filtered loads)."""
        q = self._ema if loads is None else loads
        return max_load_excess(float(np.max(q)), self.n_experts, self.top_k)

    @property
    def filtered_loads(self) -> np.ndarray | None:
        """The loads filtered at the router's own rate (its latent scores are their EMA)."""
        return self._ema

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

    def stationary(self, halves) -> bool:
        """The loads did not move over the dwell: the two halves agree within a few times the
        sampling noise of a half-dwell mean (estimated from the block-to-block scatter)."""
        nd = self._nd
        r = self._recent[-nd:]
        d = np.diff(r, axis=0)
        noise = math.sqrt(max(float((d**2).sum(axis=1).mean()) / 2.0, 0.0))  # per-block rms
        tol = 4.0 * noise * math.sqrt(2.0 / max(nd // 2, 1)) + 0.02
        return _tv(halves[0], halves[1]) <= tol

    def dead_count(self, q, ref) -> int:
        """Experts that carried load in the reference and have (nearly) none now."""
        alive = ref >= 0.25 / self.n_experts
        return int(np.sum(alive & (q < 0.1 * ref)))

    def collapse_active(self) -> bool:
        """``collapse-in-progress`` or ``collapsed`` is active."""
        r = self.rules
        return r[AlarmKind.COLLAPSE_IN_PROGRESS].active or r[AlarmKind.COLLAPSED].active

    def restart_reference(self, loads, excess: float | None = None) -> None:
        """The short-term reference restarts from ``loads`` (a recovery, the layer settling)."""
        self._ref = np.array(loads, dtype=float, copy=True)
        self._ref_ex = self.excess(self._ref) if excess is None else excess

    def _check_profile(self, bm, bc) -> list[Alarm]:
        """One closed block: the references follow the profile, then the profile rules judge
        it (:class:`~moebif.monitor.rules.BlockContext`), then the recovery."""
        out = []
        ex = self.excess()
        gap = self.latent_gap()
        dm = self._dwell_means()
        warming = self._ref is None
        if warming:
            # the initial transient is no alarm (a random-init router on real text can start far
            # from balance and move a long way); only a settled, absolutely concentrated profile
            # is: it never had a balanced state to leave
            lvl_in, lvl_col = max(self.excursion, WARM_LEVEL), max(self.collapsed, 0.9)
            settled = (
                dm is not None and self.step >= (self.warmup or 64) and self.stationary(dm[1:])
            )
            rise = ex if settled else -math.inf
            if settled and self.excess(dm[0]) < WARM_LEVEL:  # a collapsed profile is no reference
                self._ref = dm[0].copy()
                self._ref_ex = self.excess(self._ref)
        else:
            rise = ex - self._ref_ex
            lvl_in, lvl_col = self.excursion, self.collapsed
        fr = self._frozen
        recovered = self.rules[AlarmKind.RECOVERED]
        if self.frozen_reference and self._ref is not None and not fr.frozen:
            if fr.push(bm, self.block, self.step, max(4 * self.dwell, 256)):
                out += recovered.settled(self, fr)
        tokens = float(np.sum(bc)) / self.block  # token slots (k B) per step
        # the cumulative drift from the frozen reference, on the loads averaged over a dwell: a
        # slow drive needs no fast filter, and a dwell mean does not swing with one batch's data
        self._drift = fr.rise(dm[0]) if (fr.frozen and dm is not None) else math.nan
        ref = fr.loads if fr.frozen else self._ref
        if ref is None:
            ref = np.full(self.n_experts, 1.0 / self.n_experts)
        dying = self.dead_count(self._ema, ref) if not warming else 0
        alive = int(np.sum(ref >= 0.25 / self.n_experts))
        active = self.collapse_active()
        # jitter of the rise while clearly calm (small batches make the filtered loads noisy):
        # a collapse must stand out of it; a rise under way is never counted as jitter
        if not active and not warming and abs(rise) < 0.5 * lvl_in:
            self._noise2 += (rise * rise - self._noise2) / min(self._noise_n + 1, 64)
            self._noise_n += 1
        noise = 4.0 * math.sqrt(self._noise2) if self._noise_n >= 8 else 0.0
        self.block_record.append((self.step, rise if math.isfinite(rise) else math.nan, gap))
        meta = self.rules[AlarmKind.METASTABLE]
        in_meta = meta.in_window
        ctx = BlockContext(
            step=self.step,
            layer=self.name,
            ex=ex,
            gap=gap,
            dm=dm,
            warming=warming,
            rise=rise,
            lvl_in=lvl_in,
            lvl_col=lvl_col,
            noise=noise,
            ref_ex=self._ref_ex,
            drift=self._drift,
            frozen=fr,
            tokens=tokens,
            dying=dying,
            alive=alive,
            in_meta=in_meta,
            past_saddle=in_meta and gap > meta.d_commit,
        )
        for rule in self.rules.values():
            if rule is not recovered:
                out += rule.on_block(self, ctx)
        recovered.after_block(self, ctx, out)
        if self.collapse_active():
            self._excursion_step = self.step
        if recovered.due(self):
            out += recovered.on_block(self, ctx)
        elif not self.collapse_active() and self._ref is not None:
            # the short-term reference follows a slow drift of the stable profile (specialising
            # experts) so that a fast excursion is judged against where the router is now; the
            # slow drift itself is judged against the frozen reference
            w = min(1.0, self.block / max(self.window, 4 * self.dwell))
            self._ref = (1.0 - w) * self._ref + w * bm
            self._ref_ex = self.excess(self._ref)
        return out

    # -------------------------------------------------------------------------------------
    # the model-based rules

    def _start_fit(self) -> None:
        """Snapshot the window (and the feedback statistics) at this refit step and hand the
        fits to the worker thread; :meth:`_apply_fit` concludes them ``refit_lag`` steps on.
        Modes requested at the last conclusion are installed first (waiting if needed)."""
        if self._modes_request is not None:
            fut, self._modes_future = self._modes_future, None
            new = fut.result() if fut is not None else modes_at(self._modes_request, self.top_k)
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
        self._future = executor("fits").submit(fit_window, *args) if self.background else None

    def _submit_modes(self) -> None:
        if self.background:
            lane = executor("modes")
            self._modes_future = lane.submit(modes_at, self._modes_request, self.top_k)

    def _apply_fit(self) -> list[Alarm]:
        """Conclude the pending fit (waiting for the worker only if it is not done yet)."""
        p, fut = self._pending, self._future
        self._pending = self._future = None
        if fut is not None:
            profile, modes, fit, fb, moved = fut.result()
        else:
            profile, modes, fit, fb, moved = fit_window(
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
        that ended at ``step``: the estimate (:func:`~.estimation.choose_estimate`), its regime
        (:func:`~.estimation.classify_regime`, then the monitor's vetoes), the automatic
        window, then the rules (:meth:`~.rules.AlarmRule.on_fit`)."""
        n, k = self.n_experts, self.top_k
        rf = Refit(step, fit, fb)
        choose_estimate(rf, fit, fb)
        if rf.source != Source.NONE and 0.0 < rf.eta_gamma < 1.0:
            self._eg = rf.eta_gamma
            self._eg_known = True
            self._had_resolved = True
        if rf.source == Source.NONE:
            rf.reason = unresolved_reason(fit, fb)
            rf.regime = Regime.UNRESOLVED
        else:
            kap = rf.kappa
            rf.collapse_kappa = self._collapse_kappa(profile, kap)
            ksn = rf.collapse_kappa
            rf.regime = classify_regime(kap, ksn, n)
            dm = self._dwell_means()
            if (
                rf.regime == Regime.COLLAPSING
                and rf.source == Source.LOADS
                and not self.collapse_active()
                and dm is not None
                and self.stationary(dm[1:])
            ):
                # an unstable router runs away; loads that stay put with kappa_hat >= 1 are a
                # slow drive of the gate (the language model's gradient), which loads alone
                # cannot tell from feedback
                rf.regime = Regime.UNRESOLVED
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
        short = rf.source == Source.LOADS and not (
            self._had_resolved and rf.window_units >= self.min_units
        )
        if short and rf.regime != Regime.UNRESOLVED:
            rf.regime, rf.reason = (
                Regime.SHORT_WINDOW,
                (f"the window spans {rf.window_units:.0f} < {self.min_units:g} relaxation units"),
            )
        # a window that overlaps a collapse alarm is not about the balanced state
        excursion = step - span < self._excursion_step
        if excursion:
            rf.regime, rf.reason = Regime.EXCURSION, "the window overlaps a collapse alarm"
        if self._ref is None and rf.regime != Regime.EXCURSION:
            rf.regime, rf.reason = Regime.WARMING_UP, "no stable load profile yet"
        self.fits.append(rf)
        out = []
        if rf.regime in UNUSED_REGIMES:
            for rule in self.rules.values():
                rule.on_unused_fit(self, rf)
            return out
        for rule in self.rules.values():
            out += rule.on_fit(self, rf)
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
        """The complete state, versioned (:mod:`moebif.monitor.state`): ``state_key``,
        ``version`` and named groups of plain Python values (dicts, lists, numbers, strings),
        each alarm rule's own state under its kind; safe for ``json`` and for ``torch.save`` /
        ``torch.load(weights_only=True)``."""
        from .state import LAYER_STATE_KEY, LAYER_STATE_VERSION, LAYOUT, encode

        # a pending fit is saved as its snapshot (the worker's result is not waited for): the
        # restored monitor runs it again, a pure function of the snapshot, to the same result
        out: dict = {"state_key": LAYER_STATE_KEY, "version": LAYER_STATE_VERSION}
        for group, keys in LAYOUT.items():
            out[group] = {key: encode(getattr(self, attr)) for key, attr in keys.items()}
        out["rules"] = {str(kind): rule.state_dict() for kind, rule in self.rules.items()}
        out["alarms"] = encode(self.alarms)
        return out

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (of a monitor with the same N, top-k and window rule),
        of this version or of the release before it (version 1); anything else raises a
        ``ValueError`` of one line."""
        from .state import LAYER_STATE_KEY, LAYER_STATE_VERSION, LAYOUT, V1_FORMAT, decode, from_v1

        if isinstance(state, dict) and state.get("format") == V1_FORMAT:
            state = from_v1(state)
        if not isinstance(state, dict) or state.get("state_key") != LAYER_STATE_KEY:
            raise ValueError("state: not a LayerMonitor state_dict")
        if state.get("version") != LAYER_STATE_VERSION:
            raise ValueError(
                f"state: a LayerMonitor state of version {state.get('version')!r}; this moebif "
                f"reads versions 1 and {LAYER_STATE_VERSION}"
            )
        missing = [g for g in (*LAYOUT, "rules", "alarms") if g not in state]
        if missing:
            raise ValueError(f"state: a LayerMonitor state_dict without {missing[0]!r}")
        values = {}
        for group, keys in LAYOUT.items():
            saved = state[group]
            gone = [key for key in keys if key not in saved]
            if gone:
                raise ValueError(f"state: {group} lacks {gone[0]!r}")
            values.update({attr: decode(saved[key]) for key, attr in keys.items()})
        checks = ("n_experts", "top_k", "_auto") + (() if self._auto else ("window", "block"))
        for key in checks:
            if values.get(key) != getattr(self, key):
                raise ValueError(
                    f"state: {key.lstrip('_')} = {values.get(key)!r} does not match this "
                    f"monitor's {getattr(self, key)!r}"
                )
        rules = {kind: cls(self) for kind, cls in RULES.items()}
        for kind, rule in rules.items():
            if str(kind) not in state["rules"]:
                raise ValueError(f"state: no state of the rule {kind!s}")
            rule.load_state_dict(state["rules"][str(kind)])
        vars(self).update(values)
        self.rules = rules
        self.alarms = decode(state["alarms"])
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
            m["max_load_excess_filtered"] = self.excess()
        if self._ref is not None:
            prof = load_metrics(self._ref, loads=True)
            m["profile_max_load_excess"] = self._ref_ex
            m["profile_max_vio"] = float(prof["max_vio"])
            m["profile_n_eff"] = float(prof["n_eff"])
            m["profile_rare"] = float(np.mean(self._ref < 0.25 / self.n_experts))
            if self._ema is not None:
                m["excess_rise"] = self.excess() - self._ref_ex
        fr = self._frozen
        if fr.frozen:
            m["reference_max_load_excess"] = fr.excess
            m["reference_step"] = float(fr.step)
            m["reference_alive"] = float(fr.alive().sum())
            if math.isfinite(self._drift):
                m["drift"] = self._drift
            m["dead_vs_reference"] = float(self.rules[AlarmKind.DEAD_EXPERTS].now.sum())
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
                "value": finite_or_none(v),
                "lo": finite_or_none(lo),
                "hi": finite_or_none(hi),
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
            "coefficient": finite_or_none(est.coefficient),
            "critical_coefficient": crit,
            "steps_to_collapse": steps,
            "knob_at_collapse": finite_or_none(fc.knob_at_collapse),
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
                    "coefficient": finite_or_none(est.coefficient),
                    "critical_coefficient": finite_or_none(est.critical_coefficient),
                    "critical_lo": finite_or_none(est.critical_lo),
                    "critical_hi": finite_or_none(est.critical_hi),
                    "margin": finite_or_none(est.margin),
                    "margin_lo": finite_or_none(est.margin_lo),
                    "margin_hi": finite_or_none(est.margin_hi),
                    "steps_to_collapse": finite_or_none(fc.steps_to_collapse),
                    "steps_lo": finite_or_none(fc.steps_lo),
                    "steps_hi": finite_or_none(fc.steps_hi),
                }
            )
        return rows

    def state(self) -> str:
        """The layer's current state in one word: the active collapse-type alarm (``collapsed``,
        ``collapse-in-progress``, ``dead-experts``, most severe first), else ``warming-up``
        before a stable profile, else the regime of the last fit."""
        for kind in (AlarmKind.COLLAPSED, AlarmKind.COLLAPSE_IN_PROGRESS, AlarmKind.DEAD_EXPERTS):
            if self.rules[kind].active:
                return kind
        if self._ref is None:
            return Regime.WARMING_UP
        return self.fits[-1].regime if self.fits else Regime.UNRESOLVED

    def active_alarms(self) -> list[dict]:
        """The alarms in force now (raised and not cleared), each as its last :class:`Alarm`
        dict. An ``approaching-threshold`` is left out once superseded: a collapse alarm is
        active, or the last fit reads ``collapsing`` (kappa_hat >= 1, past the threshold)."""
        kinds = [kind for kind, rule in self.rules.items() if rule.active]
        state = self.state()
        if state in ACTIVE_KINDS or state == Regime.COLLAPSING:
            kinds = [kind for kind in kinds if kind != AlarmKind.APPROACHING]
        last = {a.kind: a for a in self.alarms}
        return [last[kind].to_dict() for kind in kinds if kind in last]

    def _profile_summary(self) -> dict:
        """The summary's keys of the profile rules (:meth:`summary`)."""
        fr = self._frozen
        ref = fr.to_dict()
        if ref is not None:
            ref["dead_now"] = np.flatnonzero(self.rules[AlarmKind.DEAD_EXPERTS].now).tolist()
            ref["drift"] = finite_or_none(self._drift)
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
            "regime": Regime.WARMING_UP
            if last is None and self._ref is None
            else (last.regime if last is not None else Regime.UNRESOLVED),
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
            "kappa": None if last is None else finite_or_none(last.kappa),
            "kappa_interval": None
            if last is None
            else [finite_or_none(last.kappa_lo), finite_or_none(last.kappa_hi)],
            "relaxation_rate": None if last is None else finite_or_none(last.relaxation_rate),
            "relaxation_rate_interval": None
            if last is None
            else [finite_or_none(last.relaxation_lo), finite_or_none(last.relaxation_hi)],
            "eta_gamma": None if last is None else finite_or_none(last.eta_gamma),
            "feedback": None if fb is None else finite_or_none(fb.feedback),
            "feedback_interval": None
            if fb is None
            else [finite_or_none(fb.feedback_lo), finite_or_none(fb.feedback_hi)],
            "b_eff": None if fit is None else finite_or_none(fit.b_eff),
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
