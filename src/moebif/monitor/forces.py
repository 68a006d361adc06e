"""The forces on a router measured at every step, the stability margin they give, and its forecast.

**The forces in the model.** The paper's router moves its scores by a reinforcement and a
restoring force (eq. 8): ``r_{n+1} = r_n + eta (a l_n - gamma r_n) + eta (balancer)``. The
reinforcement ``a`` raises the scores of the experts the batch loaded; the balancer (an aux loss
of strength ``alpha``, written ``rho`` in :mod:`moebif.model.balancers`) lowers them. Linearised
around the router's profile, the contrast modes grow at ``mu (a_eff - alpha rho_1) - gamma``
(``mu`` the load Jacobian's eigenvalue), so the router is stable while ``a_eff < alpha rho_1 +
gamma / mu``. An AdamW-trained router has no visible forgetting (``gamma`` is the weight decay,
``lr lambda ~ 1e-5`` a step): its balance is the contest of the two forces alone, and the
critical coefficient is ``alpha* = a_eff / rho_1``.

**What is measured.** A real router's logits are ``z = W x``. During the backward pass the
gradient ``G = dL/dz`` (tokens x N) of the training loss reaches the logits. The balancing part
of it is known in closed form: for the Switch/Hugging Face loss ``alpha N sum_i F_i P_i`` (``F``
the fraction of tokens that chose each expert, ``P`` the mean probability, both pooled over the
layers the loss pools), ``dL_aux / dz_tj = alpha N / (L T) p_tj (F_j - sum_i F_i p_ti)``
(:func:`aux_logit_gradient`; the top-k selection carries no gradient). The rest, ``G - alpha
G_aux``, is the language model's part. Each part is turned into the step the optimiser makes with
it: its weight gradient ``G^T X``, divided by the optimiser's normalisation ``sqrt(v_hat) + eps``
(Adam's second moment of the router's weight gradient, kept by the probe with Adam's ``beta2``),
applied to the mean router input: ``dz_part = -(G_part^T X / (sqrt(v_hat) + eps)) x_bar``, in
units of the learning rate. Projected on the step's own load deviation ``delta_n = f_n -
EMA(f)`` (the batch's sampling shock, the instrument that the feedback estimator of
:mod:`.feedback` also uses), the regression slopes over many steps are

    R = sum_n <dz_LM,n, delta_n> / sum_n |delta_n|^2      (reinforcement, per unit load),
    A = sum_n <dz_aux,n, delta_n> / sum_n |delta_n|^2     (restoring force per unit alpha),

``R`` the Adam-normalised ``a_eff`` and ``-A`` the Adam-normalised ``rho_1``. A constant drive of
the gate (the language model preferring some experts) does not correlate with a fresh shock and
drops out of both. Then

    margin = -(R + alpha A)    (> 0: stable),       alpha* = -R / A.

The slopes' intervals come from a jackknife over segments of ``segment`` steps (the last
``segments`` of them).

**The forecast.** In units of the knob, the margin is ``d = alpha - alpha*`` (``A < 0``). Its
trend over the last estimates (a weighted least-squares line) is extrapolated to zero: steps to
collapse, with the interval from the ends of ``d``'s interval; the knob value at collapse is
``alpha*`` at that time. A schedule of the knob (an aux coefficient ramped down) and a drift of
``alpha*`` (a reinforcement growing) both show in the trend.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["ForceEstimate", "ForceStats", "Forecast", "ForecastState", "aux_logit_gradient"]

_Z95 = 1.959963984540054
FORCE_FIELDS = 5  # per step: <dz_LM, d>, <dz_aux, d>, |d|^2, count, alpha summed over count


def aux_logit_gradient(probs, fractions, rows):
    """Gradient of the Switch/Hugging Face aux loss ``N sum_i F_i P_i`` (coefficient 1) on the
    router logits of one layer, ``(T, N)``: ``N / rows * p_tj (F_j - sum_i F_i p_ti)``.

    **Arguments:**

    - ``probs``: ``(T, N)`` softmax probabilities of this layer's tokens.
    - ``fractions``: ``(N,)`` ``F_i``, the tokens that chose expert ``i`` (summed over the ``k``
      slots) over ``rows``, pooled over the layers the loss pools.
    - ``rows``: the tokens pooled (``L T`` for ``L`` layers of ``T`` tokens).

    Works on numpy arrays and on torch tensors alike (no host transfer).
    """
    n = probs.shape[-1]
    mix = (probs * fractions).sum(-1)[..., None]  # numpy and torch alike
    return (n / rows) * probs * (fractions - mix)


@dataclass(frozen=True)
class ForceEstimate:
    """One estimate of the forces over the last segments (NaN where not resolved).

    ``reinforcement`` (``R``) and ``restoring`` (``A``, per unit coefficient) in learning-rate
    units of logit step per unit of load deviation; ``margin = -(R + alpha A)``;
    ``critical_coefficient = -R / A``; ``*_lo``/``*_hi``: 95% intervals (jackknife over
    segments); ``coefficient``: the knob's mean over the window; ``steps``: steps used."""

    step: int
    coefficient: float
    reinforcement: float
    reinforcement_lo: float
    reinforcement_hi: float
    restoring: float
    restoring_lo: float
    restoring_hi: float
    margin: float
    margin_lo: float
    margin_hi: float
    critical_coefficient: float
    critical_lo: float
    critical_hi: float
    steps: int
    resolved: bool
    reason: str

    def to_dict(self) -> dict:
        return {k: (_num(v) if isinstance(v, float) else v) for k, v in asdict(self).items()}


def _num(x):
    return float(x) if x is not None and math.isfinite(x) else None


class ForceStats:
    """Per-step force sums by segment; :meth:`estimate` over the last ``segments`` closed ones.

    :meth:`push` takes the five per-step values the probe accumulates on the device
    (:data:`FORCE_FIELDS`): ``<dz_LM, delta>``, ``<dz_aux, delta>``, ``|delta|^2``, the number of
    backward passes, and the coefficient summed over them. O(1) a step.

    The optimiser's normalisation changes by orders of magnitude early in training (Adam's second
    moment grows from zero), so sums of the raw projections would be dominated by the first
    segments. Each step's language-model response is therefore measured in units of that step's
    own restoring rate ``A_n = <dz_aux, delta> / |delta|^2`` (the aux step is computed exactly
    for the shock, so ``A_n`` has no sampling noise of its own):

        alpha* = sum_n <dz_LM,n, delta_n> / (-A_n)  /  sum_n |delta_n|^2,

    the critical coefficient, free of the normalisation's scale. ``A`` itself is reported as the
    mean rate of the last segment (the current scale), with ``R = -alpha* A``."""

    # per segment: sum of <dz_LM, d> / (-A_n), sum |d|^2, sum <dz_aux, d>, backward passes,
    # coefficient sum, steps with a restoring force, steps
    _W = 7

    def __init__(self, *, segment: int = 50, segments: int = 20):
        if int(segment) < 1:
            raise ValueError(f"force_segment: need >= 1 step, got {segment}")
        if int(segments) < 4:
            raise ValueError(f"force_segments: need >= 4, got {segments}")
        self.segment = int(segment)
        self.segments = int(segments)
        self.closed: deque = deque(maxlen=self.segments)
        self.cur = np.zeros(self._W)
        self.step = 0

    def push(self, values) -> bool:
        """One step's sums; True when it closed a segment."""
        v = np.asarray(values, dtype=float)
        self.step += 1
        if v.shape != (FORCE_FIELDS,) or not np.all(np.isfinite(v)) or v[3] <= 0:
            return False
        s_lm, s_aux, s_dd, count, alpha = v
        if s_dd > 0 and s_aux < 0:
            a_n = s_aux / s_dd
            self.cur[0] += s_lm / -a_n
            self.cur[1] += s_dd
            self.cur[2] += s_aux
            self.cur[5] += 1
        self.cur[3] += count
        self.cur[4] += alpha
        self.cur[6] += 1
        if self.cur[6] >= self.segment:
            self.closed.append(self.cur.copy())
            self.cur[:] = 0.0
            return True
        return False

    def estimate(self, *, min_segments: int = 6) -> ForceEstimate:
        segs = np.array(self.closed) if self.closed else np.zeros((0, self._W))
        m = segs.shape[0]
        steps = int(segs[:, 6].sum()) if m else 0
        alpha = float(segs[-1, 4] / segs[-1, 3]) if m else math.nan  # the knob now
        nan = math.nan
        if m < min_segments:
            return ForceEstimate(
                self.step, alpha, *(nan,) * 12, steps, False,
                f"forces: {m} of {min_segments} segments of {self.segment} steps so far",
            )  # fmt: skip
        if not np.all(segs[:, 1] > 0):
            return ForceEstimate(
                self.step, alpha, *(nan,) * 12, steps, False,
                "forces: no restoring force in some segments (no balancing loss acts on the "
                "logits, or the loads never moved)",
            )  # fmt: skip
        tot = segs.sum(axis=0)
        crit = tot[0] / tot[1]
        loo = (tot[0] - segs[:, 0]) / (tot[1] - segs[:, 1])  # leave one segment out
        se = math.sqrt((m - 1) / m * float(((loo - loo.mean()) ** 2).sum()))
        c_lo, c_hi = crit - _Z95 * se, crit + _Z95 * se
        A = float(segs[-1, 2] / segs[-1, 1])  # the restoring rate at the current scale
        R = -crit * A
        d, d_lo, d_hi = alpha - crit, alpha - c_hi, alpha - c_lo
        return ForceEstimate(
            step=self.step,
            coefficient=alpha,
            reinforcement=R,
            reinforcement_lo=-c_lo * A,
            reinforcement_hi=-c_hi * A,
            restoring=A,
            restoring_lo=A,
            restoring_hi=A,
            margin=-A * d,
            margin_lo=-A * d_lo,
            margin_hi=-A * d_hi,
            critical_coefficient=float(crit),
            critical_lo=float(c_lo),
            critical_hi=float(c_hi),
            steps=steps,
            resolved=True,
            reason="",
        )

    def state_dict(self) -> dict:
        return {
            "segment": self.segment,
            "segments": self.segments,
            "closed": [s.tolist() for s in self.closed],
            "cur": self.cur.tolist(),
            "step": self.step,
        }

    @classmethod
    def from_state(cls, d: dict) -> ForceStats:
        st = cls(segment=d["segment"], segments=d["segments"])
        st.closed.extend(np.asarray(s, dtype=float) for s in d["closed"])
        st.cur = np.asarray(d["cur"], dtype=float)
        st.step = int(d["step"])
        return st


@dataclass(frozen=True)
class ForecastState:
    """The forecast at one estimate: the knob margin ``d = alpha - alpha*`` with its interval,
    its trend (per step), and the steps to its zero (NaN where not forecast; 0 when the margin
    is already negative with confidence)."""

    step: int
    knob_margin: float
    knob_margin_lo: float
    knob_margin_hi: float
    trend: float
    trend_se: float
    steps_to_collapse: float
    steps_lo: float
    steps_hi: float
    knob_at_collapse: float
    reason: str


class Forecast:
    """Extrapolates the knob margin ``alpha - alpha*`` of successive :class:`ForceEstimate` to
    its zero. ``points``: the estimates the trend is fitted on (the last ones)."""

    def __init__(self, *, points: int = 8):
        if int(points) < 3:
            raise ValueError(f"forecast_points: need >= 3, got {points}")
        self.points = int(points)
        self.hist: deque = deque(maxlen=self.points)  # (step, alpha, d, se_d, alpha*)

    def add(self, est: ForceEstimate, alpha_now: float) -> ForecastState:
        nan = math.nan
        if not est.resolved or not math.isfinite(alpha_now):
            self.hist.clear()
            return ForecastState(est.step, *(nan,) * 9, est.reason or "no coefficient")
        d = alpha_now - est.critical_coefficient
        d_lo = alpha_now - est.critical_hi
        d_hi = alpha_now - est.critical_lo
        se = max((d_hi - d_lo) / (2 * _Z95), 1e-12)
        self.hist.append((est.step, alpha_now, d, se, est.critical_coefficient))
        if d_hi < 0.0:
            return ForecastState(
                est.step, d, d_lo, d_hi, nan, nan, 0.0, 0.0, 0.0, est.critical_coefficient,
                "the coefficient is below alpha* with confidence: the margin is negative",
            )  # fmt: skip
        if len(self.hist) < 3:
            return ForecastState(
                est.step, d, d_lo, d_hi, nan, nan, nan, nan, nan, nan,
                f"forecast: {len(self.hist)} of 3 estimates for a trend",
            )  # fmt: skip
        h = np.array(self.hist)
        t = h[:, 0] - h[-1, 0]
        if not np.ptp(t) > 0:
            return ForecastState(
                est.step, d, d_lo, d_hi, nan, nan, nan, nan, nan, nan, "forecast: no time span"
            )
        # the knob's own trend is known exactly (a schedule); alpha*'s is estimated, and used
        # only where it is resolved (its points share segments, so its error is taken from the
        # scatter about the line, never below what the intervals say)
        knob_slope = float(np.polyfit(t, h[:, 1], 1)[0])
        w = 1.0 / h[:, 3] ** 2
        tw = (w * t).sum() / w.sum()
        sxx = (w * (t - tw) ** 2).sum()
        c = h[:, 4]
        cw = (w * c).sum() / w.sum()
        crit_slope = float((w * (t - tw) * (c - cw)).sum() / sxx)
        resid = c - (cw + crit_slope * (t - tw))
        s2 = max((w * resid**2).sum() / max(len(h) - 2, 1), 1.0)
        crit_se = math.sqrt(s2 / sxx)
        # alpha*'s own trend counts where it is resolved and closes the margin (a reinforcement
        # growing toward the coefficient); one that moves away is not relied on, as alpha*
        # shifts with the state once the knob moves
        if crit_slope < _Z95 * crit_se:
            crit_slope, crit_se = 0.0, 0.0
        slope = knob_slope - crit_slope
        if slope + _Z95 * crit_se >= 0.0:
            return ForecastState(
                est.step, d, d_lo, d_hi, slope, crit_se, math.inf, nan, nan, nan,
                "the margin is not shrinking with confidence",
            )  # fmt: skip
        down_fast = -(slope - _Z95 * crit_se)
        down_slow = -(slope + _Z95 * crit_se)
        steps = max(d, 0.0) / -slope
        lo = max(d_lo, 0.0) / down_fast
        hi = d_hi / down_slow
        knob = alpha_now + knob_slope * steps
        return ForecastState(
            est.step, d, d_lo, d_hi, slope, crit_se, steps, lo, hi, knob, ""
        )  # fmt: skip

    def state_dict(self) -> dict:
        return {"points": self.points, "hist": [list(h) for h in self.hist]}

    @classmethod
    def from_state(cls, d: dict) -> Forecast:
        f = cls(points=d["points"])
        f.hist.extend(tuple(h) for h in d["hist"])
        return f
