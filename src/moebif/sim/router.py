"""Stochastic routers: the per-token rule (2) and the batch router of sec. 8 (Kiselev 2026).

Batch router (sec. 8, with the load feedback ``rho`` of sec. 8.7). Each step ``n`` routes ``B``
tokens with the softmax of the current scores::

    (N_1, ..., N_N) ~ Multinomial(B, softmax(r / T)),    l_i = N_i / B,
    r_i <- r_i + eta (a l_i - rho (l_i - 1/N) - gamma r_i + b_i).

For two experts only the difference ``y = r1 - r2`` matters and it is simulated exactly::

    N1 ~ Binomial(B, 1 / (1 + exp(-y/T))),    u_hat = (N1 - N2) / B = 2 N1 / B - 1,
    y <- y + eta ((a - rho) u_hat - gamma y + h),    h = b1 - b2.

The per-token router of eq. (2) is the case ``B = 1``, ``rho = 0``. As ``eta -> 0`` the
process on the time scale ``t = n eta`` follows the mean-field ODE (3) / (6) (Prop. 3.1);
:func:`stationary_spread` gives the linear-noise size of the fluctuations around a stable state.

**Records.** Step ``n`` draws the batch from the state ``(y_n or r_n)`` and then updates it.
Every ``record_every``-th step, starting with step 0, records that batch (``u_hat_n`` or the
loads ``l_n``) together with the state it was drawn from, at ODE time ``t = n eta``. So the
first record is a genuine batch drawn at the initial state (its mean is ``tanh(y0 / 2T)``),
``K = steps // record_every + 1`` records are kept, and when ``record_every`` divides ``steps``
the last record is a batch drawn at the final state ``y_steps`` (no update follows it). Only
records are stored: memory is ``O(runs K)`` whatever the number of steps.

**Random numbers and speed.** The simulation runs in numba kernels
(:mod:`moebif.sim._kernels.sampling`) with one xoshiro256++ stream per replica derived from ``(seed,
replica index)`` and an exact binomial sampler (BTRD). Results are identical bit for bit for a given
seed whatever the thread count and chunking, and the first ``m`` replicas of a run with ``runs > m``
equal a run with ``runs = m``. :func:`simulate_batch_router_reference` is the same model in plain
numpy (numpy's own generator, so equal in distribution only), kept as a cross-check and benchmark
baseline."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..params import ParameterError, RouterParams, check_finite
from ._validation import (
    CHUNK_WORK,
    check_int,
    check_run,
    evaluate_schedule,
    finite_array,
    replica_blocks,
)

__all__ = [
    "BalancedSimulation",
    "SimulationResult",
    "StationarySpread",
    "simulate_batch_router",
    "simulate_batch_router_reference",
    "simulate_token_router",
    "stationary_spread",
]

Progress = Callable[[int, int], None]

# ----------------------------------------------------------------------------------------------
# result


@dataclass(frozen=True, eq=False)
class SimulationResult:
    """Records of a batch-router simulation.

    **Fields:**

    - ``t``: record times in ODE time ``t = n eta`` (``n = 0, record_every, ...``), shape ``(K,)``.
    - ``u_hat``: two experts: the empirical imbalance ``(N1 - N2) / B`` of the batch drawn at each
      recorded step, shape ``(runs, K)``; N experts: the loads ``N_i / B``, shape ``(runs, K, N)``.
    - ``scores``: ``None`` unless ``record_scores``; else the state each recorded batch was drawn
      from: ``y = r1 - r2`` of shape ``(runs, K)`` (two experts) or ``r`` of shape ``(runs, K, N)``.
    - ``params``, ``batch``, ``eta``, ``steps``, ``runs``, ``seed``, ``rho``, ``record_every``:
      the settings of the run (``params.h`` is the constant skew; a time-varying one is not kept).
    - ``seconds``: wall-clock duration of the simulation.
    """

    t: np.ndarray
    u_hat: np.ndarray
    scores: np.ndarray | None
    params: RouterParams
    batch: int
    eta: float
    steps: int
    runs: int
    seed: int
    rho: float
    record_every: int
    seconds: float

    @property
    def n_experts(self) -> int:
        return self.params.n_experts

    @property
    def u_mean(self) -> np.ndarray:
        """Mean of ``u_hat`` over the runs, shape ``(K,)`` (N experts: ``(K, N)``)."""
        return self.u_hat.mean(axis=0)

    @property
    def u_std(self) -> np.ndarray:
        """Standard deviation of ``u_hat`` over the runs (``ddof = 0``; 0 for a single run)."""
        return self.u_hat.std(axis=0)

    @property
    def final_u_mean(self):
        """``u_mean`` at the last record: a float (two experts) or shape ``(N,)``."""
        m = self.u_mean[-1]
        return float(m) if np.ndim(m) == 0 else m

    @property
    def final_u_std(self):
        """``u_std`` at the last record: a float (two experts) or shape ``(N,)``."""
        s = self.u_std[-1]
        return float(s) if np.ndim(s) == 0 else s


# ----------------------------------------------------------------------------------------------
# validation and set-up shared by the kernel driver and the numpy reference


@dataclass(frozen=True, eq=False)
class _Setup:
    params: RouterParams
    batch: int
    eta: float
    steps: int
    runs: int
    seed: int
    rho: float
    record_every: int
    h_kind: str  # "const", "array" or "callable"
    h_scalar: bool  # a constant h (scalar h, or b for two experts) replaces params.h
    h_const: float  # two experts, h_kind == "const"
    h_values: np.ndarray | Callable | None
    b: np.ndarray  # N experts: constant drift (zeros when h varies)
    state0: np.ndarray  # (runs,) y or (runs, N) r

    @property
    def n_experts(self) -> int:
        return self.params.n_experts

    @property
    def records(self) -> int:
        return self.steps // self.record_every + 1

    def h_chunk(self, n0: int, n1: int) -> tuple[np.ndarray, int]:
        """Skew of steps ``n0 <= n < min(n1, steps)`` and its stride (0 for a constant)."""
        if self.h_kind == "const":
            return np.array([self.h_const]), 0
        stop = min(n1, self.steps)
        if stop <= n0:  # only the final draw at n = steps, which is not followed by an update
            return np.zeros(1), 0
        if self.h_kind == "array":
            return np.ascontiguousarray(self.h_values[n0:stop]), 1
        return evaluate_schedule(self.h_values, np.arange(n0, stop) * self.eta), 1


def _prepare(params, batch, eta, steps, runs, seed, rho, y0, record_every, h, b, r0) -> _Setup:
    batch, eta, steps, runs, seed, rho = check_run(params, batch, eta, steps, runs, seed, rho)
    p = params
    n = p.n_experts
    record_every = check_int("record_every", record_every, 1)

    # external drift: constant (params.h or b) or a time-varying skew h(t)
    bvec = None
    if b is not None:
        bvec = finite_array("b", b)
        if bvec.shape != (n,):
            raise ParameterError("b", f"must have shape ({n},) for n_experts={n}, got {bvec.shape}")
        if h is not None:
            raise ParameterError("b", "give either b or h, not both")
    h_kind, h_const, h_values = "const", p.h if bvec is None else bvec[0] - bvec[1], None
    # the skew actually simulated replaces params.h in the result when it is a constant
    h_scalar = (h is not None and not callable(h) and np.ndim(h) == 0) or (
        bvec is not None and n == 2
    )
    if h is not None:
        if callable(h):
            h_kind, h_values = "callable", h
            evaluate_schedule(h, np.zeros(1))  # fail early, naming `h`
        elif np.ndim(h) == 0:
            h_const = check_finite("h", h)
        else:
            h_values = finite_array("h", h)
            if h_values.shape != (steps,):
                raise ParameterError(
                    "h",
                    f"must be a scalar, a callable or an array of shape ({steps},) "
                    f"(one value a step), got shape {h_values.shape}",
                )
            h_kind = "array"
    if h_kind != "const":
        b_const = np.zeros(n)
    elif bvec is not None:
        b_const = bvec
    else:
        b_const = p.replace(h=h_const).b

    # initial state
    y0a = finite_array("y0", y0)
    if y0a.shape not in ((), (runs,)):
        raise ParameterError("y0", f"must be a scalar or have shape ({runs},), got {y0a.shape}")
    if r0 is not None:
        r0a = finite_array("r0", r0)
        if r0a.shape not in ((n,), (runs, n)):
            raise ParameterError("r0", f"must have shape ({n},) or ({runs}, {n}), got {r0a.shape}")
        if np.any(y0a != 0.0):
            raise ParameterError("r0", "give either y0 or r0, not both")
        r0a = np.broadcast_to(r0a, (runs, n))
        state0 = r0a[:, 0] - r0a[:, 1] if n == 2 else r0a.copy()
    elif n == 2:
        state0 = np.broadcast_to(y0a, (runs,))
    else:
        # y0 splits as r = (y0/2, -y0/2, 0, ...), the same convention as b = (h/2, -h/2, 0, ...)
        state0 = np.zeros((runs, n))
        state0[:, 0] = 0.5 * y0a
        state0[:, 1] = -0.5 * y0a
    return _Setup(
        params=p,
        batch=batch,
        eta=eta,
        steps=steps,
        runs=runs,
        seed=seed,
        rho=rho,
        record_every=record_every,
        h_kind=h_kind,
        h_scalar=h_scalar,
        h_const=float(h_const),
        h_values=h_values,
        b=np.ascontiguousarray(b_const, dtype=float),
        state0=np.array(state0, dtype=float, order="C"),
    )


def _result(s: _Setup, u, scores, seconds, cls=None, **extra) -> SimulationResult:
    """The result of a set-up's run (``cls``: a subclass of :class:`SimulationResult`, with its
    ``extra`` fields)."""
    p = s.params.replace(h=s.h_const) if s.h_scalar else s.params
    return (cls or SimulationResult)(
        t=np.arange(s.records) * (s.record_every * s.eta),
        u_hat=u,
        scores=scores,
        params=p,
        batch=s.batch,
        eta=s.eta,
        steps=s.steps,
        runs=s.runs,
        seed=s.seed,
        rho=s.rho,
        record_every=s.record_every,
        seconds=seconds,
        **extra,
    )


# ----------------------------------------------------------------------------------------------
# the kernel driver


def simulate_batch_router(
    params: RouterParams,
    *,
    batch: int,
    eta: float,
    steps: int,
    runs: int,
    seed: int = 0,
    rho: float = 0.0,
    y0=0.0,
    record_every: int = 1,
    h=None,
    b=None,
    r0=None,
    record_scores: bool = False,
    threads: int | None = None,
    progress: Progress | None = None,
    chunk_steps: int | None = None,
    balancer=None,
) -> SimulationResult:
    """Simulate ``runs`` independent replicas of the batch router for ``steps`` steps.

    **Arguments:**

    - ``params``: :class:`~moebif.params.RouterParams`; ``params.n_experts`` selects N (two
      experts are simulated through ``y = r1 - r2``).
    - ``batch``: tokens a step ``B >= 1``.
    - ``eta``: step size, ``0 < eta < 2 / gamma``; step ``n`` is at ODE time ``t = n eta``.
    - ``steps``: number of router updates; ``runs``: number of independent replicas.
    - ``seed``: integer in ``[0, 2**64)``; replica ``i`` uses the stream of ``(seed, i)``.
    - ``rho``: negative load feedback of sec. 8.7, ``rho >= 0`` (``a_eff = a - rho``).
    - ``y0``: initial ``y = r1 - r2``, a scalar or shape ``(runs,)``. For N experts it sets
      ``r = (y0/2, -y0/2, 0, ...)`` unless ``r0`` is given.
    - ``record_every``: keep every ``record_every``-th step (step 0 included).
    - ``h``: skew ``b1 - b2`` replacing ``params.h``: a scalar, an array of shape ``(steps,)``
      (the value used by the update of step ``n``) or a callable ``h(t)`` of ODE time, evaluated
      on the step grid ``t = n eta`` chunk by chunk (called with an array when it accepts one).
      For N experts the drift is then ``(h/2, -h/2, 0, ...)``.
    - ``b``: constant drift vector of shape ``(N,)`` instead of ``params.h`` (not with ``h``).
    - ``r0``: initial scores, shape ``(N,)`` or ``(runs, N)`` (not with a non-zero ``y0``).
    - ``record_scores``: also keep the state each recorded batch was drawn from.
    - ``threads``: numba threads for the replicas; ``None``: numba's current setting, ``1``: the
      serial kernel. The result does not depend on it.
    - ``progress``: optional ``progress(done_steps, steps)``, called after each chunk of steps.
    - ``chunk_steps``: steps per kernel call (default: about 4 million replica-steps a call).
      The result does not depend on it.
    - ``balancer``: balancing schemes (a :class:`~moebif.model.balancers.BalancerSpec` or its
      text, e.g. ``"aux:1e-2,capacity:1.25"``), simulated by
      :func:`moebif.sim.balanced_router.simulate_balanced_router` (top-1); ``u_hat`` then holds
      the served loads (two experts: ``(served1 - served2) / B``) and the result is a
      :class:`BalancedSimulation`. ``None`` (default) or an empty spec: the engine above.

    **Returns:** a :class:`SimulationResult` with ``K = steps // record_every + 1`` records.

    Raises :class:`~moebif.params.ParameterError` naming the offending argument.
    """
    t_start = time.perf_counter()
    s = _prepare(params, batch, eta, steps, runs, seed, rho, y0, record_every, h, b, r0)
    if balancer is not None:
        from ..model.balancers import parse_balancers

        spec = parse_balancers(balancer) if isinstance(balancer, str) else balancer
        if not getattr(spec, "is_null", False):
            return _balanced(s, spec, record_scores, threads, progress, chunk_steps, t_start)
    if threads is not None:
        threads = check_int("threads", threads, 1)
    if chunk_steps is not None:
        chunk_steps = check_int("chunk_steps", chunk_steps, 1)
    if progress is not None and not callable(progress):
        raise ParameterError("progress", "must be callable as progress(done, total)")

    import numba

    from ._kernels import sampling as smp

    if threads is not None and threads > numba.config.NUMBA_NUM_THREADS:
        raise ParameterError(
            "threads",
            f"must be <= {numba.config.NUMBA_NUM_THREADS} (numba's maximum), got {threads}",
        )
    serial = threads == 1 or s.runs == 1
    rec = bool(record_scores)
    p, n, K = s.params, s.n_experts, s.records
    state = s.state0.copy()
    rng = smp.seed_streams(np.uint64(s.seed), 0, s.runs)
    if n == 2:
        u = np.empty((s.runs, K))
        sc = np.empty((s.runs, K)) if rec else np.empty((s.runs, 1))
        kernel = smp.two_expert_chunk if serial else smp.two_expert_chunk_parallel
    else:
        u = np.empty((s.runs, K, n))
        sc = np.empty((s.runs, K, n)) if rec else np.empty((s.runs, 1, 1))
        kernel = smp.n_expert_chunk if serial else smp.n_expert_chunk_parallel

    # the final record at n = steps (when it is a record step) needs one more draw, no update
    n_end = s.steps + 1 if s.steps % s.record_every == 0 else s.steps
    chunk = chunk_steps or max(1, CHUNK_WORK // (s.runs * (1 if n == 2 else n - 1)))
    saved_threads = numba.get_num_threads()
    try:
        if threads is not None and not serial:
            numba.set_num_threads(threads)
        blocks = replica_blocks(s.runs, 1 if serial else numba.get_num_threads())
        n0 = 0
        while n0 < n_end:
            n1 = min(n0 + chunk, n_end)
            if n1 == s.steps < n_end:
                n1 = n_end  # keep the final draw with the last steps (one progress report)
            hv, hs = s.h_chunk(n0, n1)
            span = (n0, n1, s.steps, s.record_every)
            if n == 2:
                model = (s.eta, p.a - s.rho, p.gamma, p.T)
                kernel(state, rng, span, s.batch, model, hv, hs, u, sc, rec, blocks)
            else:
                model = (s.eta, p.a, s.rho, p.gamma, p.T)
                hv = hv if s.h_kind != "const" else np.empty(0)
                kernel(state, rng, span, s.batch, model, s.b, hv, hs, u, sc, rec, blocks)
            n0 = n1
            if progress is not None:
                progress(min(n0, s.steps), s.steps)
    finally:
        numba.set_num_threads(saved_threads)
    if not np.all(np.isfinite(state)):
        raise FloatingPointError("router state became non-finite; reduce eta")
    return _result(s, u, sc if rec else None, time.perf_counter() - t_start)


@dataclass(frozen=True, eq=False)
class BalancedSimulation(SimulationResult):
    """A :class:`SimulationResult` of a router with balancing schemes; ``run`` is the full
    :class:`~moebif.sim.balanced_router.BalancedRun` (served and selected loads, dropped
    fraction, selection bias, the balancer's contribution to the scores)."""

    run: object = None


def _balanced(s: _Setup, spec, record_scores, threads, progress, chunk_steps, t_start):
    from .balanced_router import simulate_balanced_router

    n = s.n_experts
    if s.h_kind == "const":
        h, bvec = None, s.b
    else:
        h = s.h_values if s.h_kind == "callable" else s.h_values
        bvec = np.zeros(n)
    r0 = _scores_of(s)
    run = simulate_balanced_router(
        s.params,
        spec,
        batch=s.batch,
        eta=s.eta,
        steps=s.steps,
        runs=s.runs,
        seed=s.seed,
        rho=s.rho,
        h=h,
        b=bvec,
        r0=r0,
        record_every=s.record_every,
        snapshot=True,
        record_scores=record_scores,
        threads=threads,
        progress=progress,
        chunk_steps=chunk_steps,
    )
    if n == 2:
        u = (run.loads[..., 0] - run.loads[..., 1]).copy()
        sc = None
        if record_scores:
            sc = run.score_records[..., 0] - run.score_records[..., 1]
    else:
        u = run.loads
        sc = run.score_records if record_scores else None
    return _result(s, u, sc, time.perf_counter() - t_start, BalancedSimulation, run=run)


def _scores_of(s: _Setup) -> np.ndarray:
    """Initial scores ``(runs, N)`` of a set-up (two experts: ``r = (y0/2, -y0/2)``)."""
    if s.n_experts == 2:
        r = np.zeros((s.runs, 2))
        r[:, 0] = 0.5 * s.state0
        r[:, 1] = -0.5 * s.state0
        return r
    return s.state0


def simulate_token_router(
    params: RouterParams,
    *,
    eta: float,
    steps: int,
    runs: int,
    seed: int = 0,
    y0=0.0,
    record_every: int = 1,
    **options,
) -> SimulationResult:
    """The per-token router of eq. (2): :func:`simulate_batch_router` with ``B = 1``, ``rho = 0``.

    Each step routes one token ``I_n ~ softmax(r / T)`` and updates
    ``r_i <- r_i + eta (a 1{I_n = i} - gamma r_i + b_i)``; ``u_hat = +-1`` is the routed token.
    ``options`` are passed on (``h``, ``b``, ``r0``, ``record_scores``, ``threads``,
    ``progress``, ``chunk_steps``).
    """
    for name in ("batch", "rho"):
        if name in options:
            raise ParameterError(name, "is fixed by the per-token router (batch=1, rho=0)")
    return simulate_batch_router(
        params,
        batch=1,
        eta=eta,
        steps=steps,
        runs=runs,
        seed=seed,
        rho=0.0,
        y0=y0,
        record_every=record_every,
        **options,
    )


# ----------------------------------------------------------------------------------------------
# numpy reference


def simulate_batch_router_reference(
    params: RouterParams,
    *,
    batch: int,
    eta: float,
    steps: int,
    runs: int,
    seed: int = 0,
    rho: float = 0.0,
    y0=0.0,
    record_every: int = 1,
    h=None,
    b=None,
    r0=None,
    record_scores: bool = False,
) -> SimulationResult:
    """The batch router in plain numpy: a loop over steps, vectorised over replicas.

    Same model, arguments, record convention and result as :func:`simulate_batch_router`, but
    random numbers from ``numpy.random.default_rng(seed)`` (binomial / multinomial), so the two
    agree in distribution, not draw by draw. Meant for cross-checks and as a benchmark baseline.
    """
    t_start = time.perf_counter()
    s = _prepare(params, batch, eta, steps, runs, seed, rho, y0, record_every, h, b, r0)
    p, n, K, B = s.params, s.n_experts, s.records, s.batch
    rng = np.random.default_rng(s.seed)
    x = s.state0.copy()
    u = np.empty((s.runs, K) if n == 2 else (s.runs, K, n))
    sc = np.empty_like(u) if record_scores else None
    n_end = s.steps + 1 if s.steps % s.record_every == 0 else s.steps
    chunk = max(1, CHUNK_WORK // s.runs)
    for c0 in range(0, n_end, chunk):
        c1 = min(c0 + chunk, n_end)
        hv, hs = s.h_chunk(c0, c1)
        for step in range(c0, c1):
            hn = hv[(step - c0) * hs] if step < s.steps else 0.0
            if n == 2:
                z = x / p.T
                e = np.exp(-np.abs(z))
                counts = rng.binomial(B, np.where(z > 0.0, 1.0, e) / (1.0 + e))
                obs = (2.0 * counts - B) / B
            else:
                w = np.exp((x - x.max(axis=1, keepdims=True)) / p.T)
                counts = rng.multinomial(B, w / w.sum(axis=1, keepdims=True))
                obs = counts / B
            if step % s.record_every == 0:
                u[:, step // s.record_every] = obs
                if sc is not None:
                    sc[:, step // s.record_every] = x
            if step == s.steps:
                break
            if n == 2:
                x = x + s.eta * ((p.a - s.rho) * obs - p.gamma * x + hn)
            else:
                drive = s.b.copy()
                if s.h_kind != "const":
                    drive[0], drive[1] = 0.5 * hn, -0.5 * hn
                x = x + s.eta * (p.a * obs - s.rho * (obs - 1.0 / n) - p.gamma * x + drive)
    return _result(s, u, sc, time.perf_counter() - t_start)


# ----------------------------------------------------------------------------------------------
# linear-noise theory


@dataclass(frozen=True, slots=True)
class StationarySpread:
    """Linear-noise (AR(1)) prediction of the stationary fluctuations of the batch router.

    - ``y_star``, ``u_star``: the stable equilibrium of ``y' = (a - rho) tanh(y/2T) - gamma y + h``
      and its load ``tanh(y_star / 2T)``; ``eigenvalue``: ``F_y`` there (< 0).
    - ``y_std``: standard deviation of the score gap ``y``.
    - ``load_std``: standard deviation of the expected load ``tanh(y / 2T)``.
    - ``u_hat_std``: standard deviation of the observed ``u_hat`` (``load_std`` plus the binomial
      noise of the batch itself, added in quadrature).
    """

    y_star: float
    u_star: float
    eigenvalue: float
    y_std: float
    load_std: float
    u_hat_std: float


def stationary_spread(
    params: RouterParams, *, batch: int, eta: float, rho: float = 0.0, y_star: float | None = None
) -> StationarySpread:
    """Stationary spread of the two-expert batch router around a stable state (linear noise).

    Near a stable equilibrium ``y*`` of ``F(y) = a_eff tanh(y/2T) - gamma y + h``,
    ``a_eff = a - rho``, write ``y_n = y* + d_n`` and ``u_hat_n = u(y_n) + xi_n`` with
    ``E[xi_n | y_n] = 0``, ``Var xi_n = 4 p1 p2 / B = (1 - u*^2) / B``. Linearising the update,
    ``d_{n+1} = (1 + eta F_y) d_n + eta a_eff xi_n``, an AR(1) process whose stationary variance
    is exact for the linear map (no small-eta expansion):

        Var y = eta a_eff^2 (1 - u*^2) / (B (2 |F_y| - eta F_y^2)),

    the Ornstein-Uhlenbeck value ``eta a_eff^2 (1 - u*^2) / (2 B |F_y|)`` to leading order. The
    expected load moves by ``du/dy = (1 - u*^2) / 2T``, and ``u_hat`` adds the batch noise ``xi_n``,
    independent of ``y_n``:

        Var u_hat = ((1 - u*^2) / 2T)^2 Var y + (1 - u*^2) / B.

    **Arguments:** ``params`` (two experts), ``batch`` ``B``, ``eta``, ``rho`` as in
    :func:`simulate_batch_router`; ``y_star``: the equilibrium to expand around. By default the
    stable state that the mean-field flow reaches from ``y = 0`` (above 0 if ``h > 0``, below if
    ``h < 0``; for ``h = 0`` the state ``0`` if it is stable, else the upper one).

    **Returns:** a :class:`StationarySpread`. Raises ``ValueError`` at a non-hyperbolic state
    (``F_y = 0``: a fold or the cusp, where fluctuations are not Gaussian of this size).
    """
    p = params
    if p.n_experts != 2:
        raise ParameterError("n_experts", "the stationary spread is derived for two experts")
    batch = check_int("batch", batch, 1)
    eta = check_finite("eta", eta)
    if eta <= 0.0:
        raise ParameterError("eta", f"must be > 0, got {eta:g}")
    rho = check_finite("rho", rho)
    if rho < 0.0:
        raise ParameterError("rho", f"must be >= 0, got {rho:g}")
    a_eff = p.a - rho
    if y_star is None:
        y_star = _equilibrium_from_zero(p, a_eff)
    else:
        y_star = check_finite("y_star", y_star)
    u = math.tanh(y_star / (2.0 * p.T))
    one_u2 = (1.0 - u) * (1.0 + u)
    f_y = a_eff * one_u2 / (2.0 * p.T) - p.gamma
    denom = 2.0 * abs(f_y) - eta * f_y * f_y
    if not f_y < 0.0 or not denom > 0.0:
        raise ValueError(
            f"y_star={y_star:g} is not a linearly stable state of the discrete router "
            f"(F_y={f_y:g}, eta={eta:g})"
        )
    var_y = eta * a_eff**2 * one_u2 / (batch * denom)
    var_load = (one_u2 / (2.0 * p.T)) ** 2 * var_y
    return StationarySpread(
        y_star=float(y_star),
        u_star=u,
        eigenvalue=f_y,
        y_std=math.sqrt(var_y),
        load_std=math.sqrt(var_load),
        u_hat_std=math.sqrt(var_load + one_u2 / batch),
    )


def _equilibrium_from_zero(p: RouterParams, a_eff: float) -> float:
    from ..model.two_expert import equilibria

    if a_eff < 0.0:
        # F is strictly decreasing; its root lies in [(h - |a_eff|)/gamma, (h + |a_eff|)/gamma]
        from scipy.optimize import brentq

        def f(y):
            return a_eff * math.tanh(y / (2.0 * p.T)) - p.gamma * y + p.h

        lo, hi = (p.h + a_eff) / p.gamma, (p.h - a_eff) / p.gamma
        return float(brentq(f, lo, hi, xtol=1e-15)) if lo < hi else lo
    roots = equilibria(p.replace(a=a_eff))
    if p.h > 0.0:
        return next(e.y for e in roots if e.y > 0.0)
    if p.h < 0.0:
        return next(e.y for e in reversed(roots) if e.y < 0.0)
    zero = min(roots, key=lambda e: abs(e.y))
    if zero.stable:
        return zero.y
    return next(e.y for e in roots if e.y > 0.0 and e.stable)
