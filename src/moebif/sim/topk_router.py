"""The N-expert batch router with top-k routing, a time-varying feedback ``a(t)`` and skew pulses.

Each step routes ``B`` tokens; every token picks ``k`` distinct experts by Gumbel-top-k of
``r / T`` (Plackett-Luce without replacement from ``softmax(r / T)``; ``k = 1`` is the paper's
router). With ``l_i = count_i / (k B)``::

    r_i <- r_i + eta (a_n l_i - rho (l_i - 1/N) - gamma r_i + b_i + h_n e_i).

As ``eta -> 0`` this follows the mean-field ODE ``r' = (a/k) pi(r) - gamma r + b + h e``
(:mod:`moebif.model.topk`). The counts of a batch are drawn exactly (see
:mod:`moebif.sim._kernels.topk`), with one xoshiro256++ stream per replica from ``(seed, replica)``:
same seed, same numbers, whatever the thread count or chunking, and for ``k = 1`` the very draws of
:func:`moebif.sim.router.simulate_batch_router`.

Beyond the engine of :mod:`moebif.sim.router`: ``a`` may vary in time (ramps for the hysteresis in
``a``), the skew ``h`` acts along any direction ``e`` (a pulse on one expert), records are window
means of the loads, and replicas can stop at a first passage (``max r - mean r >= stop_gap``),
for escape times.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from ..params import ParameterError, RouterParams, check_finite
from ._validation import (
    CHUNK_WORK,
    check_int,
    check_run,
    evaluate_schedule,
    finite_array,
    parse_schedule,
    replica_blocks,
    schedule_chunk,
)
from .results import NExpertRun

__all__ = ["NExpertRun", "simulate_topk_router"]


def simulate_topk_router(
    params: RouterParams,
    *,
    batch: int,
    eta: float,
    steps: int,
    runs: int,
    top_k: int = 1,
    seed: int = 0,
    rho: float = 0.0,
    a=None,
    h=None,
    direction=None,
    b=None,
    r0=None,
    record_every: int | None = 1,
    stop_gap: float | None = None,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    chunk_steps: int | None = None,
    balancer=None,
) -> NExpertRun:
    """Simulate ``runs`` replicas of the top-k batch router for ``steps`` steps.

    **Arguments:**

    - ``params``: :class:`~moebif.params.RouterParams` (``n_experts = N >= 2``).
    - ``batch`` ``B``, ``eta``, ``steps``, ``runs``, ``seed``, ``rho``: as in
      :func:`moebif.sim.router.simulate_batch_router`; step ``n`` is at ODE time ``t = n eta``.
    - ``top_k``: experts per token, ``1 <= k < N``.
    - ``a``: feedback replacing ``params.a``: scalar, array of shape ``(steps,)`` or callable of
      ODE time ``a(t)`` (ramps).
    - ``h``: skew amplitude along ``direction`` (same forms as ``a``; default 0).
    - ``direction``: shape ``(N,)``, default ``(1/2, -1/2, 0, ...)`` (the convention of ``b``).
    - ``b``: constant drift, shape ``(N,)``; default ``params.b`` (``0`` when ``h`` is given).
    - ``r0``: initial scores ``(N,)`` or ``(runs, N)``; default the uniform state ``a/(N gamma)``.
    - ``record_every``: window length of the load records (``None``: no records).
    - ``stop_gap``: stop each replica at its first step with ``max r - mean r >= stop_gap``.
    - ``threads``, ``progress``, ``chunk_steps``: as in the engine; results do not depend on them.
    - ``balancer``: balancing schemes (a :class:`~moebif.model.balancers.BalancerSpec` or its
      text); the run is then :func:`moebif.sim.balanced_router.simulate_balanced_router` and
      returns its :class:`~moebif.sim.balanced_router.BalancedRun` (an :class:`NExpertRun`
      whose ``loads`` are the served loads). Not with ``stop_gap`` or a time-varying ``a``.
    """
    t_start = time.perf_counter()
    if balancer is not None:
        from ..model.balancers import parse_balancers

        spec = parse_balancers(balancer) if isinstance(balancer, str) else balancer
        if not getattr(spec, "is_null", False):
            if stop_gap is not None:
                raise ParameterError("stop_gap", "is not supported with a balancer")
            if a is not None and (callable(a) or np.ndim(a) != 0):
                raise ParameterError("a", "must be a constant with a balancer")
            from .balanced_router import simulate_balanced_router

            return simulate_balanced_router(
                params,
                spec,
                batch=batch,
                eta=eta,
                steps=steps,
                runs=runs,
                top_k=top_k,
                seed=seed,
                rho=rho,
                a=a,
                h=h,
                direction=direction,
                b=b,
                r0=r0,
                record_every=record_every,
                threads=threads,
                progress=progress,
                chunk_steps=chunk_steps,
            )
    batch, eta, steps, runs, seed, rho = check_run(params, batch, eta, steps, runs, seed, rho)
    p = params
    n = p.n_experts
    k = check_int("top_k", top_k, 1)
    if k >= n:
        raise ParameterError("top_k", f"must be < n_experts = {n}, got {k}")
    if record_every is not None:
        record_every = check_int("record_every", record_every, 1)
    gap = 0.0 if stop_gap is None else check_finite("stop_gap", stop_gap)
    if stop_gap is not None and gap <= 0.0:
        raise ParameterError("stop_gap", f"must be > 0, got {gap:g}")
    if threads is not None:
        threads = check_int("threads", threads, 1)
    if chunk_steps is not None:
        chunk_steps = check_int("chunk_steps", chunk_steps, 1)

    a_vals, a_stride, a_fn = parse_schedule("a", a, p.a, steps, eta)
    h_vals, h_stride, h_fn = parse_schedule("h", h, 0.0, steps, eta)
    e = np.zeros(n)
    e[0], e[1] = 0.5, -0.5
    if direction is not None:
        e = finite_array("direction", direction)
        if e.shape != (n,):
            raise ParameterError("direction", f"must have shape ({n},), got {e.shape}")
    if b is None:
        bvec = np.zeros(n) if h is not None else p.b
    else:
        bvec = finite_array("b", b)
        if bvec.shape != (n,):
            raise ParameterError("b", f"must have shape ({n},), got {bvec.shape}")
    if r0 is None:
        state = np.full((runs, n), p.a / (n * p.gamma))
    else:
        r0a = finite_array("r0", r0)
        if r0a.shape not in ((n,), (runs, n)):
            raise ParameterError("r0", f"must have shape ({n},) or ({runs}, {n}), got {r0a.shape}")
        state = np.array(np.broadcast_to(r0a, (runs, n)), dtype=float, order="C")

    import numba

    from ._kernels import topk as tk
    from ._kernels.sampling import seed_streams

    if threads is not None and threads > numba.config.NUMBA_NUM_THREADS:
        raise ParameterError("threads", f"must be <= {numba.config.NUMBA_NUM_THREADS}")
    serial = threads == 1 or runs == 1
    kernel = tk.topk_chunk if serial else tk.topk_chunk_parallel
    rng = seed_streams(np.uint64(seed), 0, runs)
    hit = np.full(runs, -1, dtype=np.int64)
    rec = record_every is not None
    R = record_every if rec else steps
    K = -(-steps // R) if rec else 0
    l_out = np.zeros((runs, K, n)) if rec else np.zeros((runs, 1, n))
    per_step = runs * (n + batch * (k - 1) // 4 + 1)
    chunk = chunk_steps or max(1, CHUNK_WORK // per_step)
    saved = numba.get_num_threads()
    try:
        if threads is not None and not serial:
            numba.set_num_threads(threads)
        blocks = replica_blocks(runs, 1 if serial else numba.get_num_threads())
        n0 = 0
        while n0 < steps:
            n1 = min(n0 + chunk, steps)
            av = schedule_chunk(a_vals, a_stride, a_fn, n0, n1, eta, "a")
            hv = schedule_chunk(h_vals, h_stride, h_fn, n0, n1, eta, "h")
            args = (n0, n1, steps, R, batch, k, eta, rho, p.gamma, p.T)
            args += (av, a_stride, hv, h_stride, bvec, e, l_out, rec, gap, hit)
            kernel(state, rng, args, blocks)
            n0 = n1
            if progress is not None:
                progress(n0, steps)
            if gap > 0.0 and np.all(hit >= 0):
                break
    finally:
        numba.set_num_threads(saved)
    if not np.all(np.isfinite(state)):
        raise FloatingPointError("router state became non-finite; reduce eta")
    starts = np.arange(K) * R
    a_t = _at(a_vals, a_stride, a_fn, starts, eta)
    h_t = _at(h_vals, h_stride, h_fn, starts, eta)
    if rec and steps % R:
        # the last window is shorter than R steps (replicas that stopped: rescaled below)
        l_out[hit < 0, K - 1] *= R / (steps % R)
    if rec and gap > 0.0:
        # windows that were not complete when the replica stopped: rescale the partial one,
        # leave the later ones at zero
        for i in np.flatnonzero(hit >= 0):
            j = hit[i] // R
            done = hit[i] - j * R
            if j < K and done > 0:
                l_out[i, j] *= R / done
    return NExpertRun(
        t=starts * eta,
        loads=l_out if rec else np.zeros((runs, 0, n)),
        a_t=a_t,
        h_t=h_t,
        scores=state,
        hit=hit,
        params=p,
        top_k=k,
        batch=batch,
        eta=eta,
        steps=steps,
        runs=runs,
        seed=seed,
        rho=rho,
        record_every=R,
        seconds=time.perf_counter() - t_start,
    )


def _at(vals, stride, fn, steps_idx, eta):
    if steps_idx.size == 0:
        return np.zeros(0)
    if fn is not None:
        return evaluate_schedule(fn, steps_idx * eta)
    if stride == 0:
        return np.full(steps_idx.size, float(vals[0]))
    return vals[steps_idx]
