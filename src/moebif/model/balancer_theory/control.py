"""The closed-loop balancer (part 6 of :mod:`moebif.model.balancer_theory`): the gain-scheduled PI
selection bias of :mod:`moebif.model.control_law` on the score model, :class:`ControlTheory`.

Notation: ``N`` experts, top-``k``, router step ``eta`` (one step = one optimizer step on a batch
of ``B`` tokens), ``alpha_k`` the uniform slope of the inclusion probabilities, ``A = a alpha_k /
(k T)``, ``lambda_c = A - gamma`` (with a load feedback ``rho``: ``a - rho`` for ``a``); ``x``
the logits ``r / T``, ``b`` the law's bias (logits), ``e = N f - 1`` the relative load errors.
The gain factor ``g`` is the law's schedule on the model's margin
(:func:`moebif.model.schemes.control.model_margin`), or 1 (fixed gains).

**1. Linear map at balance** (:meth:`ControlTheory.linear_map`). Per expert deviation (every
contrast mode of the uniform state alike), the state ``(x, I, E)`` (logit, integral, error EMA)
moves a step as

    e  = mu (x + I - g k_p E) + xi,          mu = N alpha_k / k,
    x' = (1 - eta gamma) x + eta (a - rho) e / (N T),
    I' = I - g k_i e,      E' = (1 - beta) E + beta e,

``xi`` the batch noise of ``e`` (``Var xi = (N - k) / (k B)``, the inclusion counts are
``Binomial(B, k / N)``). The map is linear (no sign, no switching): near balance its orbits are
sums of geometric modes, so it has a cycle iff an eigenvalue lies on the unit circle; with the
spectral radius below 1 (:meth:`spectral_radius`) balance is linearly stable and there is no
cycle near it. The sign update's relay (:mod:`moebif.model.bias_relay`) switches at a fixed
amplitude and has one.

**2. Chattering** (:meth:`chattering`): the stationary covariance of that AR(1) map (discrete
Lyapunov equation, as :meth:`BiasTheory.chattering`): std of one expert's load ``f = (1 + e) / N``,
of its logit and of its bias, against the open loop (``k_i = k_p = 0``; ``nan`` where the open
loop's balance is unstable).

**3. Skew response** (:meth:`skew_response`): a genuine constant skew ``h`` on expert ``i``'s
score drift. The open loop follows it, ``df = (alpha_k / k) h / (T (gamma - A))`` (the load the
task gradient asks for); the integral absorbs it entirely (``e = 0`` at the fixed point, so
``df = 0``) with the bias ``b = -h / (gamma T)`` logits: the distortion is the whole of the open
loop's response.

**4. No collapsed equilibrium** (:meth:`collapsed_states`). A fixed point of the closed loop has
``I`` stationary, so ``e = 0`` wherever the integral is not at its clip: the loads are uniform,
``r`` is uniform and the bias is 0. A collapsed fixed point needs the clip. On the two-level
states (``m`` winners; the states on which :func:`moebif.model.thresholds` finds ``a_SN``), with
selection gap ``s > 0`` the scores sit at ``d / T = (a - rho) dpi(s) / (k gamma T)``, so the
bias gap must be ``s - d / T >= -beta*``, ``beta*(m) = max_s [(a - rho) dpi(s) / (k gamma T) -
s]``. The overloaded winners' integral falls until the clip, where the bias gap is at most
``-G(m)``, ``G(m) = bias_max N / max(m, N - m)`` (the integral stays centred). So there is no
collapsed fixed point on branch ``m`` when ``G(m) > beta*(m)``.

**5. The two-level closed loop** (:meth:`two_level_run`): the deterministic (``B -> inf``) router
on the two-level states with :func:`moebif.model.control_law.update` itself acting on the
``N``-vector of expected loads: the check that starts on the open loop's stable collapsed
states, and inside the sign update's first-return region, return to balance.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ...params import RouterParams
from ..control_law import ControlGains, gain_factor, initial_state, update
from ..schemes.control import gains_of, model_margin, uniform_slope

__all__ = ["ControlChattering", "ControlTheory", "TwoLevelRun", "control_advice", "two_level_pi"]


@dataclass(frozen=True)
class ControlChattering:
    """Stationary fluctuations at balance (one expert): ``load_std`` (of ``f``), ``logit_std``
    (of ``r / T``), ``bias_std`` (of ``b``, logits) with the controller; ``open_load_std``,
    ``open_logit_std`` without it (``nan``: the open loop's balance is unstable);
    ``noise_load_std``: the batch noise alone, ``sqrt(q (1 - q) / B) / k``."""

    load_std: float
    logit_std: float
    bias_std: float
    open_load_std: float
    open_logit_std: float
    noise_load_std: float


@dataclass(frozen=True)
class TwoLevelRun:
    """A deterministic two-level run: ``s`` (selection gap, logits), ``d`` (score gap ``/ T``)
    and ``b`` (bias gap) per step, shape ``(runs, steps + 1)``; ``converged`` (the state norm
    fell below ``tol``), ``steps_to_converge`` (``-1``: not within the run)."""

    s: np.ndarray
    d: np.ndarray
    b: np.ndarray
    converged: np.ndarray
    steps_to_converge: np.ndarray


def two_level_pi(n: int, m: int, k: int, s) -> tuple[np.ndarray, np.ndarray]:
    """Inclusion probabilities of a winner and a loser at selection gaps ``s`` (logits)."""
    s = np.asarray(s, dtype=float)
    if k == 1:
        ez = np.exp(-np.abs(s))
        big = 1.0 / (m + (n - m) * ez)  # s >= 0: winners weight 1
        pw = np.where(s >= 0, big, ez / (m * ez + (n - m)))
        pl = np.where(s >= 0, ez * big, 1.0 / (m * ez + (n - m)))
        return pw, pl
    from ..topk import two_level_inclusion_grid

    vals = two_level_inclusion_grid(n, m, k, s.ravel())
    return vals[:, 0].reshape(s.shape), vals[:, 1].reshape(s.shape)


@dataclass(frozen=True)
class ControlTheory:
    """The closed loop of :mod:`moebif.model.control_law` on the score model (module docstring).

    **Arguments:** ``params`` (``a``, ``gamma``, ``T``, ``N``), ``gains``
    (:class:`~moebif.model.control_law.ControlGains`), ``eta`` (router step), ``batch``
    (``None``: ``B -> inf``), ``top_k``, ``margin`` (``theory``: the gain schedule reads
    :func:`~moebif.model.schemes.control.model_margin`; ``none``: fixed gains), ``rho``."""

    params: RouterParams
    gains: ControlGains
    eta: float
    batch: int | None = None
    top_k: int = 1
    margin: str = "theory"
    rho: float = 0.0

    @classmethod
    def from_spec(cls, spec, params, *, eta, batch=None, top_k=1, rho=0.0) -> ControlTheory:
        """The theory of a :class:`~moebif.model.balancers.BalancerSpec` with ``control``."""
        return cls(params, gains_of(spec), eta, batch, top_k, spec.control_margin, rho)

    @property
    def n(self) -> int:
        return self.params.n_experts

    @property
    def alpha(self) -> float:
        return uniform_slope(self.n, self.top_k)

    @property
    def mu(self) -> float:
        """``N alpha_k / k``: slope of ``e`` in the selection logits at balance."""
        return self.n * self.alpha / self.top_k

    @property
    def lam(self) -> float:
        """Open-loop contrast eigenvalue ``(a - rho) alpha_k / (k T) - gamma`` (ODE time)."""
        p = self.params
        return (p.a - self.rho) * self.alpha / (self.top_k * p.T) - p.gamma

    @property
    def open_margin(self) -> float:
        """The model's margin ``m`` (logits per step per unit load)."""
        p = self.params
        return model_margin(p.a, p.gamma, p.T, self.n, self.top_k, self.eta, self.rho)

    @property
    def gain(self) -> float:
        """The scheduled factor ``g`` (1 with fixed gains)."""
        m = self.open_margin if self.margin == "theory" else None
        return gain_factor(self.gains, self.n, m)

    # 1. linear map ----------------------------------------------------------------------------

    def linear_map(self, *, closed: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """``(M, v)``: the per-step map of ``(x, I, E)`` and the column ``v`` the noise ``xi``
        enters with (module docstring, part 1); ``closed=False``: the gains set to 0."""
        p, gn = self.params, self.gains
        g = self.gain
        ki, kp = (g * gn.k_i, g * gn.k_p) if closed else (0.0, 0.0)
        c1 = self.eta * (p.a - self.rho) / (self.n * p.T)
        v = np.array([c1, -ki, gn.beta])
        w = np.array([1.0, 1.0, -kp])
        M = np.diag([1.0 - self.eta * p.gamma, 1.0, 1.0 - gn.beta]) + self.mu * np.outer(v, w)
        return M, v

    def spectral_radius(self, *, closed: bool = True) -> float:
        """Largest ``|eigenvalue|`` of :meth:`linear_map` (``< 1``: balance is stable, and
        the map has no cycle near it)."""
        M, _ = self.linear_map(closed=closed)
        if not closed:
            return float(abs(M[0, 0]))
        return float(np.max(np.abs(np.linalg.eigvals(M))))

    def settling_steps(self) -> float:
        """``-1 / log(radius)``: steps per e-fold of the slowest closed-loop mode."""
        rad = self.spectral_radius()
        return -1.0 / math.log(rad) if rad < 1.0 else math.inf

    # 2. chattering ----------------------------------------------------------------------------

    def noise_var(self) -> float:
        """``Var xi = (N - k) / (k B)`` of one expert's ``e`` (0 for ``B -> inf``)."""
        if self.batch is None:
            return 0.0
        return (self.n - self.top_k) / (self.top_k * self.batch)

    def _stationary(self, closed: bool) -> tuple[float, float, float]:
        from scipy.linalg import solve_discrete_lyapunov

        M, v = self.linear_map(closed=closed)
        if not closed:
            M, v = M[:1, :1], v[:1]
        if np.max(np.abs(np.linalg.eigvals(M))) >= 1.0:
            return math.nan, math.nan, math.nan
        q = self.noise_var()
        S = solve_discrete_lyapunov(M, q * np.outer(v, v))
        g = self.gain
        w = np.array([1.0, 1.0, -g * self.gains.k_p]) if closed else np.array([1.0])
        var_e = self.mu**2 * float(w @ S @ w) + q
        bias_var = 0.0
        if closed:
            wb = np.array([0.0, 1.0, -g * self.gains.k_p])
            bias_var = float(wb @ S @ wb)
        return math.sqrt(var_e) / self.n, math.sqrt(S[0, 0]), math.sqrt(max(bias_var, 0.0))

    def chattering(self) -> ControlChattering:
        """Stationary fluctuations with and without the controller (module docstring, part 2)."""
        f, x, b = self._stationary(True)
        fo, xo, _ = self._stationary(False)
        return ControlChattering(f, x, b, fo, xo, math.sqrt(self.noise_var()) / self.n)

    # 3. skew response -------------------------------------------------------------------------

    def skew_response(self) -> dict:
        """Per unit skew ``h`` (score drift on one expert's contrast): ``open_load`` (the open
        loop's load shift, ``nan`` where its balance is unstable), ``closed_load`` (0: the
        integral absorbs it), ``bias`` (the closed loop's bias, logits), ``distortion`` (load
        the controller removes: the open loop's response)."""
        p = self.params
        open_load = math.nan
        if self.lam < 0:
            open_load = (self.alpha / self.top_k) / (p.T * -self.lam)
        return {
            "open_load": open_load,
            "closed_load": 0.0,
            "bias": -1.0 / (p.gamma * p.T),
            "distortion": open_load,
        }

    # 4. collapsed states ----------------------------------------------------------------------

    def bias_needed(self, winners: int, *, s_max: float | None = None, points: int = 600) -> float:
        """``beta*(m) = max_{s > 0} [(a - rho) dpi(s) / (k gamma T) - s]`` (logits): the bias gap
        against the ``m`` winners that a collapsed fixed point on branch ``m`` needs."""
        p = self.params
        n, m, k = self.n, int(winners), self.top_k
        s_max = s_max or (p.a - self.rho) / (k * p.gamma * p.T) + 2.0
        s = np.linspace(1e-6, s_max, points)
        pw, pl = two_level_pi(n, m, k, s)
        val = (p.a - self.rho) * (pw - pl) / (k * p.gamma * p.T) - s
        return float(max(val.max(), 0.0))

    def authority(self, winners: int) -> float:
        """``G(m) = bias_max N / max(m, N - m)``: the largest bias gap against ``m`` winners the
        clipped, centred integral can hold (logits)."""
        m = int(winners)
        return self.gains.bias_max * self.n / max(m, self.n - m)

    def collapsed_states(self, winners=None) -> list[dict]:
        """Per branch ``m`` (default: all ``1..N-1`` for ``N <= 16``, else ``m <= k + 1`` and
        ``m >= N - k - 1``, as :func:`~moebif.model.topk.topk_collapse_threshold`):
        ``{"winners", "bias_needed", "authority", "fixed_point"}``; ``fixed_point`` is whether
        a collapsed fixed point can exist (``authority <= bias_needed``)."""
        n, k = self.n, self.top_k
        if winners is None:
            winners = (
                range(1, n) if n <= 16 else sorted(set(range(1, k + 2)) | set(range(n - k - 1, n)))
            )
        out = []
        for m in winners:
            need = self.bias_needed(m)
            auth = self.authority(m)
            out.append(
                {"winners": m, "bias_needed": need, "authority": auth, "fixed_point": auth <= need}
            )
        return out

    def open_collapsed_gap(self, winners: int) -> float:
        """The score gap ``d / T`` of the open loop's stable collapsed state on branch ``m`` at
        this ``a`` (the largest such gap; ``nan`` if the branch has none), from the branch curve
        of :mod:`moebif.model.symmetric` / :mod:`moebif.model.topk`."""
        from ..symmetric import branch_curve
        from ..topk import topk_branch

        p = self.params
        n, m, k = self.n, int(winners), self.top_k
        d = np.geomspace(1e-2, 4.0 * math.log(n) + 2.0 * (p.a - self.rho) / p.T + 12.0, 800)
        br = branch_curve(n, m, d) if k == 1 else topk_branch(n, k, m, d)
        target = (p.a - self.rho) / (p.gamma * p.T)
        diff = br.ratio - target
        best = math.nan
        for i in range(d.size - 1):
            if br.stable[i] and br.stable[i + 1] and diff[i] * diff[i + 1] <= 0:
                t = diff[i] / (diff[i] - diff[i + 1]) if diff[i] != diff[i + 1] else 0.0
                best = float(d[i] + t * (d[i + 1] - d[i]))
        return best

    # 5. the two-level closed loop ---------------------------------------------------------------

    def two_level_run(
        self,
        winners: int,
        d0,
        b0=0.0,
        *,
        steps: int,
        closed: bool = True,
        tol: float = 1e-6,
    ) -> TwoLevelRun:
        """The deterministic router on the two-level states from score gaps ``d0`` (``r / T``,
        winners minus losers) and bias gaps ``b0`` (logits; the integral holds them), for
        ``steps`` steps, with :func:`~moebif.model.control_law.update` on the ``N``-vector of
        expected loads (``closed=False``: no controller). ``converged``: the state norm
        ``|d| + |I| + |E|`` (gaps) fell below ``tol``; the run stops when every start has
        converged (the arrays are cut there)."""
        p = self.params
        n, m, k = self.n, int(winners), self.top_k
        d = np.atleast_1d(np.asarray(d0, dtype=float)).copy()
        runs = d.size
        b0 = np.broadcast_to(np.asarray(b0, dtype=float), (runs,))
        group = np.zeros(n)
        group[:m] = 1.0
        states = []
        for j in range(runs):
            st = initial_state(n)
            ivec = b0[j] * (group - m / n)
            states.append(type(st)(ivec, st.e_ema, ivec.copy()))
        margin = self.open_margin if self.margin == "theory" else None
        gains = self.gains
        S = np.empty((runs, steps + 1))
        D = np.empty((runs, steps + 1))
        Bg = np.empty((runs, steps + 1))
        conv = np.full(runs, -1, dtype=np.int64)
        a_eff = p.a - self.rho
        for t in range(steps + 1):
            bg = np.array([st.bias[0] - st.bias[-1] for st in states])
            s = d + bg
            S[:, t], D[:, t], Bg[:, t] = s, d, bg
            norm = np.abs(d) + np.array(
                [
                    abs(st.integral[0] - st.integral[-1]) + abs(st.e_ema[0] - st.e_ema[-1])
                    for st in states
                ]
            )
            newly = (conv < 0) & (norm < tol)
            conv[newly] = t
            if t == steps or conv.min() >= 0:
                S, D, Bg = S[:, : t + 1], D[:, : t + 1], Bg[:, : t + 1]
                break
            pw, pl = two_level_pi(n, m, k, s)
            # scores: r_i <- (1 - eta gamma) r_i + eta (a - rho) l_i (+ rho / N, common)
            d = (1.0 - self.eta * p.gamma) * d + self.eta * a_eff * (pw - pl) / (k * p.T)
            if closed:
                for j in range(runs):
                    loads = np.where(group > 0, pw[j], pl[j]) / k
                    states[j] = update(gains, states[j], loads, margin)
        return TwoLevelRun(S, D, Bg, conv >= 0, conv)


def control_advice(params: RouterParams, top_k: int, *, eta: float, batch: int) -> dict:
    """``advise``'s entry for the controller at ``params`` (N experts, top-``k``, router step
    ``eta``): the range of integral gains ``k_i`` (with ``k_p = 10 k_i``, the default ratio, and
    the gain schedule on the model's margin) for which balance is stable (spectral radius of the
    linear map below 1), the recommended ``k_i`` (the default 1e-2 when inside the range, else
    the range's geometric middle; ``strength`` 0: any ``k_i > 0``), the ``bias_max`` the
    integral needs to rule the collapsed fixed points out (part 4, with a factor 2 of headroom)
    and the cost at the recommended gains."""
    from scipy.optimize import brentq

    d = ControlGains()

    def theory(ki: float, bias_max: float = d.bias_max) -> ControlTheory:
        gains = ControlGains(k_i=ki, k_p=10.0 * ki, bias_max=bias_max)
        return ControlTheory(params, gains, eta, batch, top_k)

    def excess(log_ki: float) -> float:
        return theory(math.exp(log_ki)).spectral_radius() - 1.0

    grid = np.linspace(math.log(1e-7), math.log(10.0), 120)
    vals = np.array([excess(x) for x in grid])
    ok = vals < 0
    if not ok.any():
        return {"strength": None, "achievable": False, "units": "integral gain k_i"}
    i0 = int(np.argmax(ok))
    i1 = len(ok) - 1 - int(np.argmax(ok[::-1]))
    # stable down to the grid's end: any k_i > 0 holds balance (the open loop's is stable)
    lo = 0.0 if i0 == 0 else math.exp(brentq(excess, grid[i0 - 1], grid[i0]))
    hi = math.exp(grid[i1] if i1 == len(ok) - 1 else brentq(excess, grid[i1], grid[i1 + 1]))
    rec = d.k_i if lo < d.k_i < hi else math.sqrt(max(lo, 1e-7) * hi)
    t = theory(rec)
    need = max(
        (c["bias_needed"] * max(c["winners"], t.n - c["winners"]) / t.n)
        for c in t.collapsed_states()
    )
    ch = t.chattering()
    return {
        "strength": lo,
        "achievable": True,
        "units": "integral gain k_i, logits per step per unit load error N f - 1 (k_p = 10 k_i)",
        "k_i_max": hi,
        "recommended": {"k_i": rec, "k_p": 10.0 * rec, "bias_max": max(2.0 * need, d.bias_max)},
        "bias_max_needed": need,
        "gain_factor": t.gain,
        "margin": t.open_margin,
        "settling_steps": t.settling_steps(),
        "cost": {
            "skew_response": 0.0,
            "dropped_fraction": 0.0,
            "chattering_load_std": ch.load_std,
            "noise_load_std": ch.noise_load_std,
        },
    }
