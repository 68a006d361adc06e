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
FOLD = 32  # steps between folds of the N x N averages (at most the ring's length - 1)


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

    A step costs O(K N) (K lags); the two N x N averages of ``f e^T`` are not updated step by
    step (an outer product per step is O(N^2) of Python-dispatched work, 1.5 ms at N = 256) but
    folded in from the ring as one matrix product every :data:`FOLD` steps and at
    :meth:`close_segment`, with each step's exponential weight: the same average up to rounding,
    and the same fold points for the same sequence of pushes and segment ends (so a monitor fed
    step by step, in bulk or from a checkpoint gets bit-identical sums).
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
        self._unfolded = 0  # steps in the ring not yet folded into _fe0, _fe1
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
        if self.t > self.lags[-1]:  # every lag has its pair (all but the first steps)
            idx = (self.t - 1 - self.lags) % self.L
            past_e, past_x = self._e[idx], self._x[idx]
            cur["plus"] += past_e @ x  # x_t . e_{t-k}: pairs (n = t - k, n + k)
            cur["minus"] += past_x @ e  # x_{t-k} . e_t
            cur["npairs"] += 1
            cur["px"] += x
            cur["pe"] += past_e
            cur["mx"] += past_x
            cur["me"] += e
        elif (ok := self.lags < self.t).any():
            idx = (self.t - 1 - self.lags[ok]) % self.L
            past_e, past_x = self._e[idx], self._x[idx]
            cur["plus"][ok] += past_e @ x
            cur["minus"][ok] += past_x @ e
            cur["npairs"][ok] += 1
            cur["px"][ok] += x
            cur["pe"][ok] += past_e
            cur["mx"][ok] += past_x
            cur["me"][ok] += e
        # white part of Cov(f, e): lag 0 minus the mean of lags +-1 (the N x N parts folded in
        # from the ring in batches)
        a = max(self._alpha, 1.0 / (self._ema_steps + 1))
        self._ema_steps += 1
        self._mf += a * (f - self._mf)
        self._me += a * (e - self._me)
        self._mp += a * (P - self._mp)
        self._unfolded += 1
        if self._unfolded >= min(FOLD, self.L - 1):
            self._fold()

    def _fold(self) -> None:
        """Fold the unfolded steps of the ring into the exponential averages of ``f e^T`` (lag
        0) and of its symmetric lag-1 part: ``M <- prod(1 - a) M + sum_u a_u prod_{v > u}
        (1 - a_v) X_u``, the same recursion as step by step, as two matrix products."""
        p = self._unfolded
        if p == 0:
            return
        self._unfolded = 0
        u = np.arange(self._ema_steps - p, self._ema_steps)  # steps 0, 1, ... of the stream
        a = np.maximum(self._alpha, 1.0 / (u + 1.0))
        d = 1.0 - a
        later = np.append(np.cumprod(d[::-1])[::-1][1:], 1.0)  # prod_{v > u} (1 - a_v)
        w = a * later
        i = (self.t - p + np.arange(p)) % self.L
        F, E = self._f[i], self._e[i]
        self._fe0 *= float(np.prod(d))
        self._fe0 += (F * w[:, None]).T @ E
        lag = u >= 1  # lag 1 needs the step before (the first step of the stream has none)
        if lag.any():
            j = (i[lag] - 1) % self.L
            wl = 0.5 * w[lag][:, None]
            self._fe1 *= float(np.prod(d[lag]))
            self._fe1 += (F[lag] * wl).T @ self._e[j] + (self._f[j] * wl).T @ E[lag]

    def close_segment(self) -> None:
        """End the current segment (called at every refit)."""
        self._fold()
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
        self._fold()
        mean = np.outer(self._mf, self._me)
        return (self._fe0 - mean) - (self._fe1 - mean)

    @property
    def mean_importance(self) -> np.ndarray:
        return self._mp.copy()

    def state_dict(self) -> dict:
        return {k: v for k, v in vars(self).items()}

    def snapshot(self) -> FeedbackStats:
        """A copy that :func:`fit_feedback` can read while this one goes on being pushed (the
        closed segments are never changed after closing, so they are shared; the averages are
        copied, the ring is left out)."""
        self._fold()
        snap = FeedbackStats.__new__(FeedbackStats)
        vars(snap).update(vars(self))
        snap._seg = list(self._seg)
        snap._cur = self._new_segment()
        for key in ("_fe0", "_fe1", "_mf", "_me", "_mp"):
            setattr(snap, key, getattr(self, key).copy())
        snap._x = snap._e = snap._f = np.zeros((0, self.n))
        return snap


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


# (no g = 0: there the responses vanish for every eta gamma, and a local fit can stall)
_G_GRID = np.array([-1.0, -0.5, -0.2, -0.1, -0.05, -0.02, -0.01, -0.002, 0.002, 0.01, 0.02, 0.05])
_G_GRID = np.concatenate([_G_GRID, [0.1, 0.2, 0.5, 1.0, 2.0]])
_EG_GRID = np.geomspace(1e-3, 1.5, 16)
_BOUNDS = (np.array([-50.0, 1e-6]), np.array([50.0, 1.99]))


def _model(theta, lags, mu, c):
    """``R_k`` of the module docstring; ``theta = (g, eta gamma)``, each a float or an array
    (of one shape ``S``: the result has shape ``S + (lags,)``)."""
    g = np.asarray(theta[0], dtype=float)[..., None, None]
    eg = np.asarray(theta[1], dtype=float)[..., None, None]
    phi = 1.0 - eg + g * mu
    cj = c / (1.0 - 0.5 * g * mu)
    with np.errstate(over="ignore", invalid="ignore"):
        terms = np.sign(phi) * np.abs(phi) ** (lags[:, None] - 1.0) * cj
        return g[..., 0] * terms.sum(axis=-1)


def _fit(R, lags, mu, c):
    """Least squares ``(g, eta gamma)``: the cost on a grid (vectorised), then a local fit from
    the two best grid points (one local fit from each of 12 starts cost ~80 ms a refit)."""
    from scipy.optimize import least_squares

    scale = max(float(np.abs(R).max()), 1e-300)
    G, EG = np.meshgrid(_G_GRID, _EG_GRID, indexing="ij")
    with np.errstate(all="ignore"):
        cost = np.sum(((_model((G, EG), lags, mu, c) - R) / scale) ** 2, axis=-1)
    cost = np.where(np.isfinite(cost), cost, np.inf).ravel()
    best = None
    for j in np.argsort(cost, kind="stable")[:2]:
        try:
            with np.errstate(all="ignore"):
                r = least_squares(
                    lambda th: (_model(th, lags, mu, c) - R) / scale,
                    [G.ravel()[j], EG.ravel()[j]],
                    bounds=_BOUNDS,
                )
        except ValueError:  # the model overflowed on the way (phi > 1 at long lags)
            continue
        if np.all(np.isfinite(r.fun)) and (best is None or r.cost < best.cost):
            best = r
    return best.x if best is not None else np.array([np.nan, np.nan])


def _refine(Rs, lags, mu, c, theta, iters: int = 8):
    """Gauss-Newton from ``theta`` for many response vectors at once, ``Rs`` (reps, lags): the
    jackknife's leave-one-segment-out fits, each a small move from the full fit. NaN where a
    replicate does not converge."""
    scale = max(float(np.abs(Rs).max()), 1e-300)
    th = np.tile(np.asarray(theta, dtype=float), (Rs.shape[0], 1))
    with np.errstate(all="ignore"):
        for _ in range(iters):
            h = 1e-6 * np.maximum(np.abs(th), 1e-4)
            m0 = _model(th.T, lags, mu, c)
            J = np.stack(
                [
                    (_model((th[:, 0] + h[:, 0], th[:, 1]), lags, mu, c) - m0) / h[:, :1],
                    (_model((th[:, 0], th[:, 1] + h[:, 1]), lags, mu, c) - m0) / h[:, 1:],
                ],
                axis=-1,
            )  # (reps, lags, 2)
            r = (m0 - Rs) / scale
            JtJ = np.einsum("rki,rkj->rij", J, J) / scale**2
            Jtr = np.einsum("rki,rk->ri", J, r) / scale
            # a little damping: near g = 0 the responses hardly depend on eta gamma
            JtJ = JtJ + 1e-9 * np.abs(JtJ).max(axis=(1, 2))[:, None, None] * np.eye(2)
            ok = np.isfinite(JtJ).all(axis=(1, 2)) & (np.abs(np.linalg.det(JtJ)) > 0)
            step = np.full_like(th, np.nan)
            if ok.any():
                step[ok] = -np.linalg.solve(JtJ[ok], Jtr[ok][..., None])[..., 0]
            th = np.clip(th + step, *_BOUNDS)
            if np.all(np.abs(step[ok]) <= 1e-10 * (1.0 + np.abs(th[ok]))):
                break
        final = np.sum(((_model(th.T, lags, mu, c) - Rs) / scale) ** 2, axis=-1)
    th[~np.isfinite(final)] = np.nan
    return th


def fit_feedback(stats: FeedbackStats, modes) -> FeedbackFit:
    """Fit ``(g, eta gamma)`` to the responses of :class:`FeedbackStats` (module docstring).

    ``modes``: ``(mu, V)`` of the load Jacobian at the window's profile, or ``(mu, V, groups)``
    as :func:`moebif.monitor.whittle.load_modes` returns them: then the modes of a group (equal
    ``mu`` within its tolerance) share the group's mean rate in the fit, as in the Whittle fit
    (at N = 256, 255 distinct rates made the fit cost 0.1 s)."""
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
    # (V^T Sigma Q V)_jj as two matrix products (the four-operand einsum is O(N^4))
    c = np.sum((V.T @ Sigma) * (Q @ V).T, axis=1)
    R = stats.responses()

    def derived(g, eg):
        return g * mu[-1] / eg, eg - g * mu[-1]

    nan = math.nan
    if nseg < 4 or not np.all(np.isfinite(R)) or not np.all(np.isfinite(c)) or c.sum() <= 0:
        reason = "fewer than 4 segments" if nseg < 4 else "no shock variance (f = P?)"
        return FeedbackFit(
            *(nan,) * 12, stats.source or "none", stats.steps, nseg, float(mu[-1]), False, reason
        )
    # modes of one eigenvalue respond alike: summed, the model has one term per distinct mu (or
    # per group of exchangeable modes, when given: their rates agree within the groups' tolerance)
    if len(modes) > 2:
        inv = np.zeros(mu.size, dtype=int)
        for j, idx in enumerate(modes[2]):
            inv[idx] = j
    else:
        inv = np.unique(np.round(mu / mu[-1], 9), return_inverse=True)[1].ravel()
    mu_u = np.bincount(inv, weights=mu) / np.bincount(inv)
    mu_u[-1] = mu[
        -1
    ]  # the slowest group relaxes at the slowest mode's rate (as in the Whittle fit)
    c_u = np.bincount(inv, weights=c)
    g, eg = _fit(R, lags, mu_u, c_u)
    kap, lam = derived(g, eg)
    # jackknife over the segments: each replicate refined from the full fit
    Rs = np.stack([stats.responses(exclude=i) for i in range(nseg)])
    th = _refine(Rs, lags, mu_u, c_u, (g, eg)) if np.isfinite([g, eg]).all() else Rs[:, :2] * np.nan
    reps = [(gi, egi, *derived(gi, egi)) for gi, egi in th]
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
