"""The router's feedback measured from its logits: how the scores respond to a load shock.

In the batch router of eq. (8) the scores integrate the loads, ``r_{n+1} = (1 - eta gamma) r_n +
eta a l_n + ...``, and a batch's loads are the router's own expectation plus the sampling noise of
the step. With the router's logits the monitor sees both parts every step: the soft importance
``P_n`` (the mean over the step's tokens of the router probabilities) and the hard loads ``f_n``
(``count / (k B)``). Their difference ``e_n = f_n - P_n`` is the step's shock: it is drawn afresh
with the batch, and it reaches later steps only through the router's feedback. So the response
of the later scores to it measures the feedback directly, apart from any drift that the
language-model gradient adds to the gate (that drift is not correlated with a step's fresh
sampling noise).

**Model.** Linearised around the stable profile, with the load Jacobian ``K`` (modes ``v_j``,
eigenvalues ``mu_j``; :mod:`moebif.model.heterogeneous`) and the feedback per step
``g = eta a_eff / T`` (logit units per unit of load), a shock ``eps_n`` moves the scores by
``g eps_n`` and then relaxes with ``Phi = (1 - eta gamma) I + g K``:

    Cov(x_{n+k}, e_n) = g Q Phi^(k-1) Sigma,     k >= 1,

for the mean logits ``x = r`` (``Q = I``) or the soft importance ``x = P`` (``Q`` the softmax
Jacobian ``diag P - P P^T``), with ``Sigma`` the covariance of the shock (the white part of
``Cov(f_n, e_n)``). In trace form, on the modes of ``K``:

    R_k = tr[Cov(x_{n+k}, e_n) - Cov(x_{n-k}, e_n)] = g sum_j phi_j^(k-1) c_j,
    phi_j = 1 - eta gamma + g mu_j,    c_j = (V^T Sigma Q V)_jj / (1 - g mu_j / 2).

Subtracting the mirror lag ``-k`` (zero in the model: a shock cannot move earlier scores)
removes what a real router adds on top: the slow co-movement of the scores with the hard-soft
offset ``f - P``, which depends on the state (its trace is symmetric in the lag). The
``1 - g mu_j / 2`` corrects the white part of ``Cov(f, e)`` for the feedback's own response at
lag one. ``(g, eta gamma)`` are fitted to ``R_k`` on a log-spaced set of lags by least squares,
and the interval comes from a jackknife over the segments of the window. Then

    kappa = g mu_max / eta gamma,    relaxation rate = eta gamma - g mu_max  (per step).

A known feedback added to the gate (e.g. a bias ``c (f - 1/N)`` per step) shifts ``g`` by ``c``
and the relaxation rate by ``-c mu_max``; that is how this estimator is checked on real models.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["FeedbackFit", "FeedbackStats", "fit_feedback", "lag_set"]

_Z95 = 1.959963984540054


def lag_set(max_lag: int, count: int = 20) -> np.ndarray:
    """Log-spaced lags ``1 .. max_lag`` (at most ``count``, all distinct)."""
    return np.unique(np.round(np.geomspace(1, max(int(max_lag), 2), count)).astype(int))


class FeedbackStats:
    """Streaming sums for :func:`fit_feedback`, by segment (one segment per refit), so a fit uses
    the last ``segments`` segments (a sliding window) and can be jackknifed over them.

    Per step (:meth:`push`): the hard loads ``f`` (N,), the soft importance ``P`` (N,) and, when
    known, the mean router logits ``scores`` (N,), which are the better response variable (their
    response to a shock is the feedback itself, with no softmax Jacobian in between).
    Memory is fixed: a ring of ``max_lag + 2`` steps, the segment sums, and two N x N averages.
    """

    def __init__(self, n_experts: int, *, max_lag: int = 64, segments: int = 16, tau: float = 1e3):
        self.n = int(n_experts)
        self.lags = lag_set(max_lag)
        self.L = int(self.lags.max()) + 2
        self.segments = int(segments)
        self._x = np.zeros((self.L, self.n))
        self._e = np.zeros((self.L, self.n))
        self._f = np.zeros((self.L, self.n))
        self.t = 0  # steps pushed
        self.source: str | None = None  # "logits" or "importance"
        self._alpha = 1.0 / float(tau)
        # exponential averages of f e^T at lag 0 and of its lag +-1 symmetric part, and means
        self._fe0 = np.zeros((self.n, self.n))
        self._fe1 = np.zeros((self.n, self.n))
        self._mf = np.zeros(self.n)
        self._me = np.zeros(self.n)
        self._mp = np.zeros(self.n)
        self._ema_steps = 0
        self._seg = []  # closed segments: dicts of sums
        self._cur = self._new_segment()

    def _new_segment(self) -> dict:
        K = self.lags.size
        return {
            "count": 0,
            "plus": np.zeros(K),  # sum x_{n+k} . e_n
            "minus": np.zeros(K),  # sum x_{n-k} . e_n
            "npairs": np.zeros(K),
            # the pairs' own sums (exact demeaning: the scores' mean is large, their shocks small)
            "px": np.zeros((K, self.n)),  # sum of x_{n+k} over the plus pairs
            "pe": np.zeros((K, self.n)),  # sum of e_n over the plus pairs
            "mx": np.zeros((K, self.n)),  # sum of x_{n-k} over the minus pairs
            "me": np.zeros((K, self.n)),  # sum of e_n over the minus pairs
            "sx": np.zeros(self.n),
            "se": np.zeros(self.n),
            "sf": np.zeros(self.n),
        }

    def push(self, f, importance, scores=None) -> None:
        """One step: hard loads ``f``, soft importance, optional mean logits."""
        f = np.asarray(f, dtype=float)
        P = np.asarray(importance, dtype=float)
        src = "logits" if scores is not None else "importance"
        if self.source is None:
            self.source = src
        elif src != self.source:
            return  # a step without the response variable of the others: skipped
        x = P if scores is None else np.asarray(scores, dtype=float)
        x = x - x.mean()  # the common mode of the logits carries nothing
        e = f - P
        i = self.t % self.L
        self._x[i], self._e[i], self._f[i] = x, e, f
        self.t += 1
        cur = self._cur
        cur["count"] += 1
        cur["sx"] += x
        cur["se"] += e
        cur["sf"] += f
        ok = self.lags < self.t
        if ok.any():
            idx = (self.t - 1 - self.lags[ok]) % self.L
            past_e, past_x = self._e[idx], self._x[idx]
            cur["plus"][ok] += past_e @ x  # x_t . e_{t-k}: pairs (n = t - k, n + k)
            cur["minus"][ok] += past_x @ e  # x_{t-k} . e_t
            cur["npairs"][ok] += 1
            cur["px"][ok] += x
            cur["pe"][ok] += past_e
            cur["mx"][ok] += past_x
            cur["me"][ok] += e
        # white part of Cov(f, e): lag 0 minus the mean of lags +-1
        a = max(self._alpha, 1.0 / (self._ema_steps + 1))
        self._ema_steps += 1
        self._mf += a * (f - self._mf)
        self._me += a * (e - self._me)
        self._mp += a * (P - self._mp)
        self._fe0 += a * (np.outer(f, e) - self._fe0)
        if self.t >= 2:
            j = (self.t - 2) % self.L
            lag1 = 0.5 * (np.outer(f, self._e[j]) + np.outer(self._f[j], e))
            self._fe1 += a * (lag1 - self._fe1)

    def close_segment(self) -> None:
        """End the current segment (called at every refit)."""
        if self._cur["count"]:
            self._seg.append(self._cur)
            if len(self._seg) > self.segments:
                self._seg.pop(0)
        self._cur = self._new_segment()

    @property
    def steps(self) -> int:
        return int(sum(s["count"] for s in self._seg))

    def responses(self, exclude: int | None = None) -> np.ndarray:
        """``R_k`` (shape of :attr:`lags`) over the closed segments (leaving out ``exclude``)."""
        segs = [s for i, s in enumerate(self._seg) if i != exclude]
        cnt = sum(s["count"] for s in segs)
        if cnt == 0:
            return np.full(self.lags.size, np.nan)
        npairs = np.maximum(sum(s["npairs"] for s in segs), 1.0)

        def cov(key, kx, ke):
            mx = sum(s[kx] for s in segs) / npairs[:, None]
            me = sum(s[ke] for s in segs) / npairs[:, None]
            return sum(s[key] for s in segs) / npairs - np.einsum("kn,kn->k", mx, me)

        return cov("plus", "px", "pe") - cov("minus", "mx", "me")

    def shock_covariance(self) -> np.ndarray:
        """The white part of ``Cov(f_n, e_n)`` (N, N): lag 0 minus the mean of lags +-1."""
        mean = np.outer(self._mf, self._me)
        return (self._fe0 - mean) - (self._fe1 - mean)

    @property
    def mean_importance(self) -> np.ndarray:
        return self._mp.copy()

    def state_dict(self) -> dict:
        return {k: v for k, v in vars(self).items()}


@dataclass(frozen=True)
class FeedbackFit:
    """Result of :func:`fit_feedback`. Rates are per step.

    - ``feedback``: ``g = eta a_eff / T``, the scores' response to a unit load shock (logit
      units per unit of load when ``source == "logits"``); ``feedback_lo``, ``feedback_hi``.
    - ``eta_gamma``: the forgetting per step, with ``eta_gamma_lo``, ``eta_gamma_hi``.
    - ``kappa``: ``g mu_max / eta gamma`` (1 where the slowest mode stops relaxing), interval.
    - ``relaxation_rate``: ``eta gamma - g mu_max`` per step, interval.
    - ``source``: the response variable, ``"logits"`` (mean router logits) or ``"importance"``.
    - ``steps``, ``segments``: the window fitted; ``mu_max``: of the load Jacobian there.
    - ``resolved``, ``reason``: whether the data determine kappa (else why not).
    """

    feedback: float
    feedback_lo: float
    feedback_hi: float
    eta_gamma: float
    eta_gamma_lo: float
    eta_gamma_hi: float
    kappa: float
    kappa_lo: float
    kappa_hi: float
    relaxation_rate: float
    relaxation_rate_lo: float
    relaxation_rate_hi: float
    source: str
    steps: int
    segments: int
    mu_max: float
    resolved: bool
    reason: str

    def to_dict(self) -> dict:
        return {
            k: (v if not isinstance(v, float) or math.isfinite(v) else None)
            for k, v in asdict(self).items()
        }


def _model(theta, lags, mu, c):
    g, eg = theta
    phi = 1.0 - eg + g * mu
    cj = c / (1.0 - 0.5 * g * mu)
    with np.errstate(over="ignore", invalid="ignore"):
        return g * ((np.sign(phi) * np.abs(phi) ** (lags[:, None] - 1.0)) * cj[None, :]).sum(1)


def _fit(R, lags, mu, c, start=None):
    from scipy.optimize import least_squares

    scale = max(float(np.abs(R).max()), 1e-300)
    best = None
    starts = (
        [start]
        if start is not None
        else [(g0, eg0) for g0 in (0.02, 0.2, 1.0, -0.2) for eg0 in (0.01, 0.1, 0.5)]
    )
    for g0, eg0 in starts:
        r = least_squares(
            lambda th: (_model(th, lags, mu, c) - R) / scale,
            [g0, min(max(eg0, 1e-6), 1.99)],
            bounds=([-50.0, 1e-6], [50.0, 1.99]),
        )
        if np.all(np.isfinite(r.fun)) and (best is None or r.cost < best.cost):
            best = r
    return best.x if best is not None else np.array([np.nan, np.nan])


def fit_feedback(stats: FeedbackStats, modes) -> FeedbackFit:
    """Fit ``(g, eta gamma)`` to the responses of :class:`FeedbackStats` (module docstring).

    ``modes``: ``(mu, V)`` of the load Jacobian at the window's profile (e.g. from
    :func:`moebif.monitor.whittle.load_modes`)."""
    mu, V = np.asarray(modes[0], dtype=float), np.asarray(modes[1], dtype=float)
    nseg = len(stats._seg)
    lags = stats.lags.astype(float)
    Sigma = stats.shock_covariance()
    Sigma = 0.5 * (Sigma + Sigma.T)
    if stats.source == "importance":
        P = np.clip(stats.mean_importance, 0.0, None)
        Q = np.diag(P) - np.outer(P, P)
    else:
        Q = np.eye(stats.n)
    c = np.einsum("ij,jk,kl,li->i", V.T, Sigma, Q, V)
    R = stats.responses()

    def derived(g, eg):
        return g * mu[-1] / eg, eg - g * mu[-1]

    nan = math.nan
    if nseg < 4 or not np.all(np.isfinite(R)) or not np.all(np.isfinite(c)) or c.sum() <= 0:
        reason = "fewer than 4 segments" if nseg < 4 else "no shock variance (f = P?)"
        return FeedbackFit(
            *(nan,) * 12, stats.source or "none", stats.steps, nseg, float(mu[-1]), False, reason
        )
    g, eg = _fit(R, lags, mu, c)
    kap, lam = derived(g, eg)
    # jackknife over the segments
    reps = []
    for i in range(nseg):
        gi, egi = _fit(stats.responses(exclude=i), lags, mu, c, start=(g, eg))
        reps.append((gi, egi, *derived(gi, egi)))
    reps = np.array(reps)
    full = np.array([g, eg, kap, lam])
    ok = np.all(np.isfinite(reps), axis=1)
    if ok.sum() >= 3:
        m = int(ok.sum())
        jm = reps[ok].mean(axis=0)
        se = np.sqrt((m - 1) / m * ((reps[ok] - jm) ** 2).sum(axis=0))
    else:
        se = np.full(4, np.inf)
    lo, hi = full - _Z95 * se, full + _Z95 * se
    reason = ""
    if not np.all(np.isfinite(full)):
        reason = "the response fit did not converge"
    elif not eg > 0:
        reason = "no forgetting resolved (eta gamma at 0)"
    elif not np.isfinite(se[2]) or se[2] > 0.15:
        reason = f"kappa too uncertain (standard error {se[2]:.2g} > 0.15): window too short"
    elif lam * stats.steps < 4.0 and lam > 0:
        reason = "the window holds fewer than 4 relaxation times"
    resolved = reason == ""
    return FeedbackFit(
        feedback=float(g),
        feedback_lo=float(lo[0]),
        feedback_hi=float(hi[0]),
        eta_gamma=float(eg),
        eta_gamma_lo=float(max(lo[1], 0.0)),
        eta_gamma_hi=float(hi[1]),
        kappa=float(kap),
        kappa_lo=float(lo[2]),
        kappa_hi=float(hi[2]),
        relaxation_rate=float(lam),
        relaxation_rate_lo=float(lo[3]),
        relaxation_rate_hi=float(hi[3]),
        source=stats.source,
        steps=stats.steps,
        segments=nseg,
        mu_max=float(mu[-1]),
        resolved=resolved,
        reason=reason,
    )
