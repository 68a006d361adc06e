"""Online collapse monitor: per-layer expert counts in, metrics, model estimates and alarms out.

Per logged step the work is O(N) (accumulate the block sum); every ``block`` steps the block
mean enters a ring buffer of the last ``window`` steps and the latent-score filter; every
``refit`` steps the Whittle fit of :mod:`moebif.monitor.whittle` is redone on the buffer.

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
  message carries the Eyring-Kramers escape time (:mod:`moebif.metastability`) at
  ``(kappa_hat, eta gamma, B_eff)``;
- ``collapse-in-progress``: the latent gap ``d_max`` passes ``d_s + commit (d_c - d_s)``, a
  quarter of the way (default) from the saddle gap ``d_s`` to the collapsed gap ``d_c`` (the
  metastable regime; at the saddle itself noise sends about half the paths back), or the
  filtered max-load excess ``(l_max - 1/N) / (1/k - 1/N)`` passes ``excursion`` (otherwise);
- ``collapsed``: the filtered max-load excess passes ``collapsed`` (default 0.5) or half the
  experts are dead over a block;
- ``recovered`` (information): at least ``dwell`` steps after the last collapse alarm, the
  max-load excess of the loads averaged over the last ``dwell`` steps is below
  ``excursion / 2`` (and, in the metastable regime, the latent gap stayed below half the saddle
  gap for ``dwell`` steps). Hysteresis: a collapse alarm is not re-armed before its recovery, and
  the recovery needs the lower level on a ``dwell``-step average, so an excess hovering around
  ``excursion`` (noisy loads of small batches) gives one alarm and one recovery, not a flapping
  pair. After a recovery, the generic collapse alarms also need the ``dwell``-step average
  excess at ``excursion`` or more (a band from ``excursion / 2`` to ``excursion`` on the same
  averaged excess: a new collapse must be sustained, not a noisy step).
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass, field

import numpy as np

from ..model.thresholds import thresholds
from .metrics import load_metrics, max_load_excess
from .whittle import WhittleFit, fit_whittle

__all__ = ["Alarm", "LayerMonitor", "LoadMonitor", "default_block", "recommended_window"]

# window per N in units of 1 / (eta gamma) steps, from benchmarks/bench_monitor.py
_WINDOW_UNITS = ((2, 2000.0), (8, 200.0), (10**9, 100.0))


def recommended_window(n_experts: int, eta_gamma: float) -> int:
    """Window (steps) that meets the estimation accuracy of the acceptance study for N experts:
    2000 / (eta gamma) for N = 2, 200 for 3 <= N <= 8, 100 beyond (the pooled likelihood has
    N - 1 degrees of freedom per frequency, so larger N needs shorter windows; at 1000 units
    the N = 2, kappa = 0.6 error is 0.025-0.031, on the edge of the 0.03 target)."""
    for n_max, units in _WINDOW_UNITS:
        if n_experts <= n_max:
            return max(64, int(round(units / eta_gamma)))
    raise AssertionError


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
    :mod:`moebif.metastability`); inf below ``kappa_SN``, 0 at or above 1."""
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


class _Refit:
    """One refit: its step, fit and regime. The escape time (and its range over the 95% interval
    of kappa) is computed on first access: it costs more than the fit and is rarely read."""

    __slots__ = ("step", "fit", "regime", "window_units", "_esc_args", "_esc", "_esc_range")

    def __init__(
        self, step: int, fit: WhittleFit, regime: str, esc_args=None, window_units=math.nan
    ):
        self.step = step
        self.fit = fit
        self.regime = regime
        self.window_units = window_units
        self._esc_args = esc_args  # (kappa_sn, n) when the escape time applies, else None
        self._esc = None
        self._esc_range = None

    @property
    def escape_steps(self) -> float:
        """Eyring-Kramers mean escape time (steps) at kappa_hat; inf below kappa_SN."""
        if self._esc is None:
            self._esc = math.inf
            if self._esc_args is not None:
                ksn, n = self._esc_args
                fit = self.fit
                if fit.kappa >= ksn:
                    self._esc = escape_time(fit.kappa, fit.eta_gamma, fit.b_eff, n)
        return self._esc

    @property
    def escape_range(self) -> tuple[float, float]:
        """The escape time at the two ends of the 95% interval of kappa (computed separately
        from :attr:`escape_steps`, on first read)."""
        if self._esc_range is None:
            self._esc_range = (math.inf, math.inf)
            if self._esc_args is not None:
                n, fit = self._esc_args[1], self.fit
                self._esc_range = (
                    escape_time(min(fit.kappa_hi, 1.0), fit.eta_gamma, fit.b_eff, n),
                    escape_time(fit.kappa_lo, fit.eta_gamma, fit.b_eff, n),
                )
        return self._esc_range

    def to_dict(self) -> dict:
        d = {"step": self.step, "regime": self.regime}
        d.update(self.fit.to_dict())
        d["window_units"] = _finite_or_none(self.window_units)
        d["escape_steps"] = _finite_or_none(self.escape_steps)
        d["escape_steps_range"] = [_finite_or_none(x) for x in self.escape_range]
        return d


def _finite_or_none(x):
    return float(x) if x is not None and math.isfinite(x) else None


@dataclass
class LayerMonitor:
    """Collapse monitor of one MoE layer (see the module docstring).

    **Arguments:**

    - ``n_experts``: N; ``top_k``: experts per token (loads are ``count / (k B)``).
    - ``window``: steps in the fitting window (see :func:`recommended_window`).
    - ``block``: steps per block mean (default :func:`default_block`).
    - ``refit``: steps between fits (default ``window // 8``).
    - ``threshold``, ``lower``, ``approach_refits``: the ``approaching-threshold`` rule
      (``kappa_hat >= threshold`` and ``kappa_lo >= lower`` on ``approach_refits`` refits).
    - ``consecutive``: refits in a row for the ``metastable`` rule.
    - ``min_units``: the model-based alarms need the fitted window to span at least this many
      units of ``1 / eta gamma_hat``.
    - ``excursion``, ``collapsed``: filtered max-load excess levels (generic collapse rules).
    - ``dwell``: steps averaged (and waited) for ``recovered`` (default
      ``max(block, window // 2)``: half a window).
    - ``commit``: where between the saddle and the collapsed gap ``collapse-in-progress`` fires.
    - ``capacity``: tokens per expert per step, for the dropped fraction.
    - ``eta_gamma``: prior guess of ``eta gamma`` for the latent filter before the first fit
      (default ``20 / window``).
    - ``name``: layer label in alarms.
    - ``history``: fits and block records kept for read-out (the latest ``history`` of each;
      ``None``: all, as ``moebif diagnose`` does for a finished log). Memory is bounded by the
      window and ``history`` whatever the number of steps.

    :meth:`state_dict` / :meth:`load_state_dict` save and restore the whole state (plain Python
    values and lists: JSON- and ``torch.save``-safe), so a resumed run continues its window.
    """

    n_experts: int
    top_k: int = 1
    window: int = 4096
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
    capacity: float | None = None
    eta_gamma: float | None = None
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
        if self.window < 32:
            raise ValueError(f"window: must be >= 32 steps, got {self.window}")
        self.block = default_block(self.window, n) if self.block is None else int(self.block)
        if self.block < 1 or self.window // self.block < 32:
            raise ValueError(f"block: need window / block >= 32 blocks, got block = {self.block}")
        self.refit = max(self.block, self.window // 8) if self.refit is None else int(self.refit)
        self._cap = self.window // self.block
        self.dwell = max(self.block, self.window // 2) if self.dwell is None else int(self.dwell)
        self._calm = 0  # steps in a row with the latent gap calm (for `recovered`)
        self._since_alarm = 0  # steps since the last collapse alarm
        self._recovered = False  # a collapse alarm was followed by `recovered`
        self._nd = min(-(-self.dwell // self.block), self._cap)  # blocks in the dwell average
        self._dsum = np.zeros(n)  # sum of the last min(_nblocks, _nd) block means
        self._buf = np.zeros((self._cap, n))
        self._nblocks = 0
        self._blk = np.zeros((self.block, n))  # counts of the current block (ring of `block`)
        self._in_block = 0
        self.step = 0
        self._since_refit = 0
        eg = self.eta_gamma if self.eta_gamma is not None else 20.0 / self.window
        self._eg = float(eg)
        self._ema = None
        self._had_resolved = False  # some fit resolved the relaxation time
        self._flags = {
            "approaching-threshold": False,
            "metastable": False,
            "collapse-in-progress": False,
            "collapsed": False,
        }
        self._above = 0
        self._meta = 0
        self._excursion_step = -1  # last step with a collapse alarm active
        self._d_s = self._d_c = self._d_commit = math.nan
        self.kappa_sn = collapse_ratio(n, k)
        if self.history is not None and int(self.history) < 1:
            raise ValueError(f"history: must be >= 1 or None, got {self.history}")
        keep = None if self.history is None else int(self.history)
        self.fits = deque(maxlen=keep)
        self.block_record: deque = deque(maxlen=keep)  # (step, max_load_filtered, latent_gap)
        # soft importance (mean router probability per expert), when the caller has it
        self._iblk = np.full((self.block, n), np.nan)
        self._ibuf = np.full((self._cap, n), np.nan)

    # -------------------------------------------------------------------------------------
    # feeding

    def update(self, counts, importance=None) -> list[Alarm]:
        """One logged step: counts (or loads) of the N experts, and optionally the soft
        importance (the router's mean probability per expert over the step's tokens). Returns
        the alarms it raised.

        O(N) and allocation-free: the row is copied into a preallocated block buffer; the loads
        and sums of a block are computed when it closes, by the same code as :meth:`update_many`
        (so the two give bit-identical results)."""
        i = self._in_block
        self._blk[i] = counts
        self._iblk[i] = np.nan if importance is None else importance
        self.step += 1
        if i + 1 == self.block:
            self._in_block = 0
            bm, bc = self._block_stats(self._blk, 1)
            return self._push_block(bm[0], bc[0], self._iblk.mean(axis=0))
        self._in_block = i + 1
        return []

    def _block_stats(self, seg, nb: int):
        """Block means of the loads and block sums of the counts of ``nb`` whole blocks."""
        s = seg.sum(axis=1, keepdims=True)
        loads = np.where(s > 0, seg / np.where(s > 0, s, 1.0), 1.0 / self.n_experts)
        m = self.block
        return loads.reshape(nb, m, -1).mean(axis=1), seg.reshape(nb, m, -1).sum(axis=1)

    def update_many(self, counts, importance=None) -> list[Alarm]:
        """Many steps at once, shape ``(S, N)`` (``importance``: the same shape, or ``None``):
        identical results to ``S`` calls of :meth:`update`, vectorised over whole blocks."""
        c = np.asarray(counts, dtype=float)
        imp = None if importance is None else np.asarray(importance, dtype=float)
        if imp is not None and imp.shape != c.shape:
            raise ValueError(f"importance: need shape {c.shape}, got {imp.shape}")
        out: list[Alarm] = []
        i = 0
        S = c.shape[0]
        while i < S and self._in_block != 0:
            out += self.update(c[i], None if imp is None else imp[i])
            i += 1
        m = self.block
        nb = (S - i) // m
        if nb:
            seg = c[i : i + nb * m]
            bm, bc = self._block_stats(seg, nb)
            if imp is None:
                bi = np.full_like(bm, np.nan)
            else:
                bi = imp[i : i + nb * m].reshape(nb, m, -1).mean(axis=1)
            for j in range(nb):
                self.step += m
                out += self._push_block(bm[j], bc[j], bi[j])
            self._blk[m - 1] = seg[-1]  # the last step, for metrics()
            i += nb * m
        while i < S:
            out += self.update(c[i], None if imp is None else imp[i])
            i += 1
        return out

    def _push_block(self, bm, bc, bi) -> list[Alarm]:
        if self._nblocks >= self._nd:
            self._dsum -= self._buf[(self._nblocks - self._nd) % self._cap]
        self._dsum += bm
        self._buf[self._nblocks % self._cap] = bm
        self._ibuf[self._nblocks % self._cap] = bi
        self._nblocks += 1
        self._since_refit += self.block
        # latent scores: EMA of the loads at the router's own rate eta gamma
        keep = (1.0 - min(self._eg, 1.0)) ** self.block
        self._ema = bm.copy() if self._ema is None else keep * self._ema + (1.0 - keep) * bm
        out = self._check_excursion(bc)
        if self._since_refit >= self.refit and self._nblocks >= self._cap // 2:
            self._since_refit = 0
            out += self._refit()
        self.alarms += out
        return out

    # -------------------------------------------------------------------------------------
    # rules

    def _alarm(self, kind: str, msg: str) -> Alarm:
        return Alarm(step=self.step, kind=kind, message=msg, layer=self.name)

    def _excess(self) -> float:
        return max_load_excess(float(self._ema.max()), self.n_experts, self.top_k)

    def latent_gap(self) -> float:
        """``d_max = kappa N (EMA_max - mean EMA of the others)`` at the current kappa_hat."""
        if self._ema is None or not self.fits or not self.fits[-1].fit.resolved:
            return math.nan
        e = self._ema
        i = int(e.argmax())
        others = (e.sum() - e[i]) / (self.n_experts - 1)
        return self.fits[-1].fit.kappa * self.n_experts * (e[i] - others) * self.top_k

    def _check_excursion(self, bc) -> list[Alarm]:
        out = []
        ex = self._excess()
        gap = self.latent_gap()
        self.block_record.append((self.step, ex, gap))
        dead = float((bc <= 0).mean())
        f = self._flags
        in_meta = math.isfinite(self._d_s) and f["metastable"]
        past_saddle = in_meta and gap > self._d_commit
        # the loads averaged over the last `dwell` steps are back below excursion / 2
        # (the average, not the filtered loads: with few tokens per step the max of the noisy
        # loads alone sits near the level): used for `recovered` and, after a recovery, to
        # re-arm the collapse alarms (a new collapse must also show on the average)
        nd = min(self._nd, self._nblocks)
        ex_dwell = max_load_excess(float(self._dsum.max()) / nd, self.n_experts, self.top_k)
        sustained = not self._recovered or ex_dwell >= self.excursion
        if not f["collapse-in-progress"] and (past_saddle or (ex >= self.excursion and sustained)):
            f["collapse-in-progress"] = True
            why = (
                f"latent score gap {gap:.2f} passed the saddle gap {self._d_s:.2f} by "
                f"{self.commit:g} of the way to the collapsed gap {self._d_c:.2f}"
                if past_saddle
                else f"filtered max-load excess {ex:.2f} >= {self.excursion:g}"
            )
            out.append(self._alarm("collapse-in-progress", why + "; the router is leaving balance"))
        if not f["collapsed"] and sustained and (ex >= self.collapsed or dead >= 0.5):
            f["collapsed"] = True
            out.append(
                self._alarm(
                    "collapsed",
                    f"filtered max-load excess {ex:.2f}, dead experts "
                    f"{dead:.0%}: the load sits on few experts",
                )
            )
        if f["collapse-in-progress"] or f["collapsed"]:
            self._excursion_step = self.step
        self._calm = 0 if (in_meta and gap > 0.5 * self._d_s) else self._calm + self.block
        if out:
            self._since_alarm = 0
        else:
            self._since_alarm += self.block
        if (
            (f["collapse-in-progress"] or f["collapsed"])
            and self._since_alarm >= self.dwell
            and self._calm >= self.dwell
            and ex_dwell < 0.5 * self.excursion
        ):
            f["collapse-in-progress"] = f["collapsed"] = False
            self._recovered = True
            out.append(
                self._alarm(
                    "recovered",
                    f"max-load excess averaged over the last {self.dwell} steps back to "
                    f"{ex_dwell:.2f} < {0.5 * self.excursion:g}",
                )
            )
        return out

    def _refit(self) -> list[Alarm]:
        nb = min(self._nblocks, self._cap)
        start = self._nblocks % self._cap if self._nblocks > self._cap else 0
        x = np.roll(self._buf, -start, axis=0)[:nb] if self._nblocks > self._cap else self._buf[:nb]
        try:
            fit = fit_whittle(x, block=self.block, n_experts=self.n_experts)
        except ValueError:
            return []
        n, k = self.n_experts, self.top_k
        ksn = self.kappa_sn
        kap = fit.kappa
        regime = (
            "collapsing"
            if kap >= 1.0
            else ("metastable" if (n >= 3 and kap >= ksn) else "balanced")
        )
        esc_args = (ksn, n) if (n >= 3 and k == 1 and fit.kappa_hi >= ksn) else None
        if fit.resolved and 0.0 < fit.eta_gamma < 1.0:
            self._eg = fit.eta_gamma
        self._had_resolved = self._had_resolved or fit.resolved
        if not fit.resolved:
            regime = "unresolved"
        # units of 1 / (eta gamma) in the window, at the rate of the last resolved fit; before
        # any resolved fit there is no time scale (a drift or a short window looks like
        # kappa -> 1), so the window counts as short
        span = fit.blocks * fit.block * self._eg
        short = not (self._had_resolved and span >= self.min_units)
        if short:
            regime = "short-window"
        # a window that overlaps a collapse alarm is not about the balanced state
        excursion = self.step - nb * self.block < self._excursion_step
        if excursion:
            regime = "excursion"
        rf = _Refit(self.step, fit, regime, esc_args, span)
        self.fits.append(rf)
        out = []
        f = self._flags
        if excursion:
            return out
        if short:
            self._above = self._meta = 0
            self._d_s = self._d_c = self._d_commit = math.nan
            return out
        lo_ok = fit.kappa_lo >= self.lower or not math.isfinite(fit.kappa_lo)
        self._above = self._above + 1 if (kap >= self.threshold and lo_ok) else 0
        if self._above >= self.approach_refits and not f["approaching-threshold"]:
            f["approaching-threshold"] = True
            out.append(
                self._alarm(
                    "approaching-threshold",
                    f"kappa_hat = {kap:.3f} [{fit.kappa_lo:.3f}, {fit.kappa_hi:.3f}] "
                    f">= {self.threshold:g} (lower end >= {self.lower:g}) on "
                    f"{self.approach_refits} refits; collapse at 1",
                )
            )
        elif kap < self.threshold - 0.05:
            f["approaching-threshold"] = False
        if n >= 3:
            self._meta = self._meta + 1 if kap >= ksn else 0
            self._d_s, self._d_c = (
                saddle_gap(kap, n) if (k == 1 and ksn <= kap < 1.0) else (math.nan, math.nan)
            )
            self._d_commit = self._d_s + self.commit * (self._d_c - self._d_s)
            if self._meta >= self.consecutive and not f["metastable"]:
                f["metastable"] = True
                tau = "n/a (top-k)" if k > 1 else f"{rf.escape_steps:.3g} steps"
                out.append(
                    self._alarm(
                        "metastable",
                        f"kappa_hat = {kap:.3f} >= kappa_SN = {ksn:.3f}: a stable "
                        f"collapsed state exists; noise-induced jumps give no lead "
                        f"time; mean escape time {tau}",
                    )
                )
            elif kap < ksn - 0.03:
                f["metastable"] = False
        return out

    # -------------------------------------------------------------------------------------
    # read-out

    # -------------------------------------------------------------------------------------
    # checkpoint

    def state_dict(self) -> dict:
        """The complete state as plain Python values (dicts, lists, numbers, strings): safe for
        ``json`` and for ``torch.save`` / ``torch.load(weights_only=True)``."""
        return {"format": "moebif.LayerMonitor/1", "state": _encode(vars(self))}

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict` (of a monitor with the same N, top-k and window)."""
        if not isinstance(state, dict) or state.get("format") != "moebif.LayerMonitor/1":
            raise ValueError("state: not a LayerMonitor state_dict")
        values = _decode(state["state"])
        for key in ("n_experts", "top_k", "window", "block"):
            if values.get(key) != getattr(self, key):
                raise ValueError(
                    f"state: {key} = {values.get(key)!r} does not match this monitor's "
                    f"{getattr(self, key)!r}"
                )
        vars(self).update(values)

    @property
    def estimate(self) -> WhittleFit | None:
        return self.fits[-1].fit if self.fits else None

    def _last_counts(self) -> np.ndarray:
        if self.step == 0:
            return np.zeros(self.n_experts)
        return self._blk[(self._in_block - 1) % self.block].copy()

    def metrics(self) -> dict:
        """Metrics of the last step (counts) plus those of the filtered loads."""
        last = load_metrics(self._last_counts(), capacity=self.capacity)
        m = {k: float(v) for k, v in last.items()}
        if self._ema is not None:
            m["max_load_excess_filtered"] = self._excess()
        return m

    def summary(self) -> dict:
        out = {
            "layer": self.name,
            "n_experts": self.n_experts,
            "top_k": self.top_k,
            "steps": self.step,
            "window": self.window,
            "block": self.block,
            "kappa_sn": self.kappa_sn,
            "metrics": self.metrics(),
            "estimate": self.fits[-1].to_dict() if self.fits else None,
            "alarms": [a.to_dict() for a in self.alarms],
        }
        if self.fits:
            out["regime"] = self.fits[-1].regime
            fit = self.fits[-1].fit
            out["identifiable"] = {
                "kappa": fit.kappa,
                "eta_gamma": fit.eta_gamma,
                "b_eff": fit.b_eff,
                "relaxation_rate": fit.relaxation_rate,
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
    if "__refit__" in x:
        r = _Refit.__new__(_Refit)
        for k, v in x["__refit__"].items():
            setattr(r, k, _decode(v))
        return r
    return x
