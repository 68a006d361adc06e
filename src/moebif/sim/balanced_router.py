"""The batch router with the balancing schemes of real MoE stacks (two experts, N experts, top-k).

Each step routes ``B`` tokens, applies the selection scheme, the capacity, the gradient schemes
and the bias updates of :mod:`moebif.model.balancers` exactly as the numba kernel of
:mod:`moebif.sim._kernels.balancers` documents, and updates

    r <- r + eta (a l - rho (l - 1/N) - gamma r + b + h_n e) + Delta_balancer,

``l`` the served loads ``served_i / (k B)``. As ``eta -> 0`` with ``lr / eta`` fixed this follows
the mean-field field with the terms of :func:`moebif.model.balancers.field_terms`.

**What is exact and what is the score model's reading.** All tokens of a batch share the
router logits ``r / T``; their heterogeneity is the Gumbel noise of the softmax sampling (the
per-token logits are ``r / T + G_t``). So:

- the Switch aux loss, the z-loss and the importance loss are the stacks' formulas evaluated on
  the batch (``f`` from the sampled counts, ``P = softmax(r / T)``); the micro-batch, per-sequence
  and global-batch variants coincide (the aux gradient is linear in ``f``);
- the loss-free bias, quantile balancing and capacity act on the sampled counts as in the stacks;
  quantile balancing's column quantile of the token logits ``r / T + G_t`` is ``r / T`` plus a
  constant up to ``O(1 / sqrt(B))``, which is what the kernel uses (the exact dual update on
  Gumbel token logits, :func:`moebif.sim.token_level.quantile_step`, is checked against it);
- Sinkhorn's column scaling of ``exp(r / T + G_t)`` makes the selection independent of ``r``
  (to ``O(1 / sqrt(B))``): the kernel samples the top-k picks uniformly;
- capacity drop policies (probs, position, random) change *which* token-expert pairs are
  dropped, never how many: the served counts ``min(n_i, C)`` and hence the dynamics are the same
  for all three (the token-level consequences are in :mod:`moebif.sim.token_level`);
- expert choice serves exactly ``C = ceil(cf k B / N)`` tokens per expert;
- noisy gating and jitter draw every token's logits (``O(B N)`` per step).

Results are bit-for-bit reproducible for a seed whatever the threads and chunking.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..model.balancers import BalancerSpec, parse_balancers
from ..model.schemes import scheme_instances
from ..params import ParameterError, RouterParams, check_finite
from ._validation import (
    CHUNK_WORK,
    check_int,
    check_run,
    finite_array,
    parse_schedule,
    replica_blocks,
    schedule_chunk,
)
from .results import NExpertRun

__all__ = ["BalancedRun", "balancer_vector", "simulate_balanced_router"]

# the kernel's selection modes, read from the scheme registry (softmax: no scheme changes it)
_MODES = {"softmax": 0} | {
    s.kernel_mode[0]: s.kernel_mode[1] for s in scheme_instances() if s.kernel_mode is not None
}


@dataclass(frozen=True, eq=False)
class BalancedRun(NExpertRun):
    """Result of :func:`simulate_balanced_router` (an :class:`NExpertRun`: ``loads`` are the
    *served* loads ``served_i / (k B)``, window means or snapshots).

    Extra fields: ``selected`` (the selected loads ``n_i / (k B)``, same shape), ``dropped``
    (dropped fraction of assignments, ``(runs, K)``), ``beta`` (final selection bias, score units
    for the loss-free bias, logit units for quantile balancing and the closed-loop control),
    ``contribution`` (the part of the final scores the gradient schemes contributed),
    ``score_records``, ``beta_records``, ``contribution_records`` (``(runs, K, N)`` with
    ``record_scores``, else ``None``), ``a_rep``, ``strength`` (per-replica ``a`` and strength
    multiplier), ``balancer``, ``lr``, ``snapshot``."""

    selected: np.ndarray
    dropped: np.ndarray
    beta: np.ndarray
    contribution: np.ndarray
    score_records: np.ndarray | None
    beta_records: np.ndarray | None
    contribution_records: np.ndarray | None
    a_rep: np.ndarray
    strength: np.ndarray
    balancer: BalancerSpec
    lr: float
    snapshot: bool


def balancer_vector(spec: BalancerSpec, n_experts: int, top_k: int, lr: float) -> np.ndarray:
    """The float vector the kernel reads (layout ``BAL_*`` of :mod:`._kernels.balancers`)."""
    from ._kernels import balancers as kb

    v = np.zeros(kb.BAL_SIZE)
    v[kb.BAL_MODE] = _MODES[spec.selection]
    for scheme in scheme_instances():
        for slot, value in scheme.kernel(spec, n_experts, top_k).items():
            v[getattr(kb, f"BAL_{slot}")] = value
    v[kb.BAL_LR] = lr
    v[kb.BAL_ADAM] = 1.0 if spec.optimizer == "adam" else 0.0
    v[kb.BAL_B1] = spec.adam_beta1
    v[kb.BAL_B2] = spec.adam_beta2
    v[kb.BAL_EPS] = spec.adam_eps
    v[kb.BAL_FLOOR] = spec.adam_floor
    v[kb.BAL_GRAD] = 1.0 if spec.has_gradient else 0.0
    return v


def _per_replica(name: str, value, default: float, runs: int) -> np.ndarray:
    if value is None:
        return np.full(runs, float(default))
    arr = finite_array(name, value)
    if arr.ndim == 0:
        return np.full(runs, float(arr))
    if arr.shape != (runs,):
        raise ParameterError(name, f"must be a scalar or have shape ({runs},), got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=float)


def simulate_balanced_router(
    params: RouterParams,
    balancer,
    *,
    batch: int,
    eta: float,
    steps: int,
    runs: int,
    top_k: int = 1,
    seed: int = 0,
    rho: float = 0.0,
    a=None,
    strength=None,
    h=None,
    direction=None,
    b=None,
    r0=None,
    beta0=None,
    record_every: int | None = 1,
    snapshot: bool = False,
    record_scores: bool = False,
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    chunk_steps: int | None = None,
) -> BalancedRun:
    """Simulate ``runs`` replicas of the batch router with the balancing schemes ``balancer``.

    **Arguments:**

    - ``params``: :class:`~moebif.params.RouterParams` (``N = n_experts >= 2``).
    - ``balancer``: a :class:`~moebif.model.balancers.BalancerSpec` or its text
      (``"aux:1e-2,bias:1e-3"``, :func:`~moebif.model.balancers.parse_balancers`).
    - ``batch``, ``eta``, ``steps``, ``runs``, ``seed``, ``rho``, ``top_k``: as in
      :func:`moebif.sim.topk_router.simulate_topk_router` (``t = n eta``).
    - ``a``: feedback per replica, scalar or ``(runs,)`` (default ``params.a``).
    - ``strength``: multiplier of every strength of ``balancer`` per replica, scalar or
      ``(runs,)`` (default 1): a phase diagram over ``(a, strength)`` is one call.
    - ``h``: skew amplitude along ``direction`` (scalar, ``(steps,)`` or a callable of ODE time;
      default 0), ``direction`` ``(N,)`` (default ``(1/2, -1/2, 0, ...)``), ``b``: constant drift
      (default ``params.b``, or 0 when ``h`` is given).
    - ``r0``: initial scores ``(N,)`` or ``(runs, N)`` (default uniform ``a / (N gamma)``);
      ``beta0``: initial selection bias (default 0).
    - ``record_every``: window ``R`` (``None``: no records); ``snapshot``: record the batch of
      every ``R``-th step (and the final draw at ``n = steps``) instead of window means;
      ``record_scores``: keep ``r``, ``beta`` and the balancer's contribution per record.
    - ``threads``, ``progress``, ``chunk_steps``: as in the other drivers.

    The gradient schemes step with ``balancer.lr`` (default ``eta``). Raises
    :class:`~moebif.params.ParameterError` naming the offending argument.
    """
    t_start = time.perf_counter()
    spec = parse_balancers(balancer) if isinstance(balancer, str) else balancer
    if not isinstance(spec, BalancerSpec):
        raise ParameterError("balancer", "must be a BalancerSpec or its text")
    batch, eta, steps, runs, seed, rho = check_run(params, batch, eta, steps, runs, seed, rho)
    p = params
    n = p.n_experts
    k = check_int("top_k", top_k, 1)
    if k >= n:
        raise ParameterError("top_k", f"must be < n_experts = {n}, got {k}")
    if spec.quantile and (batch * k) % n:
        raise ParameterError("batch", f"quantile balancing needs batch * top_k divisible by {n}")
    lr = eta if spec.lr is None else float(spec.lr)
    if record_every is not None:
        record_every = check_int("record_every", record_every, 1)
    if threads is not None:
        threads = check_int("threads", threads, 1)
    if chunk_steps is not None:
        chunk_steps = check_int("chunk_steps", chunk_steps, 1)
    if progress is not None and not callable(progress):
        raise ParameterError("progress", "must be callable as progress(done, total)")
    a_rep = _per_replica("a", a, p.a, runs)
    if np.any(a_rep < 0):
        raise ParameterError("a", "must be >= 0")
    s_rep = _per_replica("strength", strength, 1.0, runs)
    if np.any(s_rep < 0):
        raise ParameterError("strength", "must be >= 0")
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
    state = _initial("r0", r0, runs, n, np.full(n, p.a / (n * p.gamma)) if r0 is None else None)
    beta = _initial("beta0", beta0, runs, n, np.zeros(n) if beta0 is None else None)
    check_finite("eta", eta)

    import numba

    from ._kernels import balancers as kb
    from ._kernels.sampling import seed_streams

    if threads is not None and threads > numba.config.NUMBA_NUM_THREADS:
        raise ParameterError("threads", f"must be <= {numba.config.NUMBA_NUM_THREADS}")
    serial = threads == 1 or runs == 1
    kernel = kb.balanced_chunk if serial else kb.balanced_chunk_parallel
    bal = balancer_vector(spec, n, k, lr)
    rng = seed_streams(np.uint64(seed), 0, runs)
    mom = np.zeros((runs, n))
    vel = np.zeros((runs, n))
    contrib = np.zeros((runs, n))
    ctl = np.zeros((runs, 2, n))
    if spec.selection == "control":
        ctl[:, 0, :] = beta - beta.mean(axis=1, keepdims=True)  # the integral holds the bias
    rec = record_every is not None
    R = record_every if rec else steps
    if snapshot:
        K = steps // R + 1 if rec else 0
        n_end = steps + 1 if (rec and steps % R == 0) else steps
    else:
        K = -(-steps // R) if rec else 0
        n_end = steps
    shape = (runs, max(K, 1), n)
    l_out = np.zeros(shape)
    sel_out = np.zeros(shape)
    drop_out = np.zeros((runs, max(K, 1)))
    sc_shape = shape if record_scores and rec else (runs, 1, n)
    r_out = np.zeros(sc_shape)
    b_out = np.zeros(sc_shape)
    rb_out = np.zeros(sc_shape)
    per_step = runs * (n + batch * (k - 1) // 4 + 1)
    if spec.selection == "noisy":
        per_step = runs * batch * n * 4
    chunk = chunk_steps or max(1, CHUNK_WORK // per_step)
    saved = numba.get_num_threads()
    try:
        if threads is not None and not serial:
            numba.set_num_threads(threads)
        blocks = replica_blocks(runs, 1 if serial else numba.get_num_threads())
        n0 = 0
        while n0 < n_end:
            n1 = min(n0 + chunk, n_end)
            if n1 == steps < n_end:
                n1 = n_end
            hv = schedule_chunk(h_vals, h_stride, h_fn, n0, min(n1, steps), eta, "h")
            if hv.size == 0:
                hv = np.zeros(1)
            args = (n0, n1, steps, R, batch, k, eta, rho, p.gamma, p.T)
            args += (a_rep, s_rep, hv, h_stride, bvec, e, bal, l_out, sel_out, drop_out)
            args += (rec, snapshot, bool(record_scores and rec), r_out, b_out, rb_out)
            kernel(state, beta, mom, vel, contrib, ctl, rng, args, blocks)
            n0 = n1
            if progress is not None:
                progress(min(n0, steps), steps)
    finally:
        numba.set_num_threads(saved)
    if not np.all(np.isfinite(state)):
        raise FloatingPointError("router state became non-finite; reduce eta or the strengths")
    if rec and not snapshot and steps % R:
        scale = R / (steps % R)
        l_out[:, K - 1] *= scale
        sel_out[:, K - 1] *= scale
        drop_out[:, K - 1] *= scale
    starts = np.arange(K) * R
    h_t = np.zeros(K) if h_fn is None and h_stride == 0 else np.zeros(K)
    if K:
        idx = np.minimum(starts, steps - 1)
        if h_fn is not None:
            from ._validation import evaluate_schedule

            h_t = evaluate_schedule(h_fn, idx * eta)
        elif h_stride == 0:
            h_t = np.full(K, float(h_vals[0]))
        else:
            h_t = h_vals[idx]
    keep = slice(0, K)
    return BalancedRun(
        t=starts * eta,
        loads=l_out[:, keep] if rec else np.zeros((runs, 0, n)),
        a_t=np.full(K, float(np.mean(a_rep))),
        h_t=h_t,
        scores=state,
        hit=np.full(runs, -1, dtype=np.int64),
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
        selected=sel_out[:, keep] if rec else np.zeros((runs, 0, n)),
        dropped=drop_out[:, keep] if rec else np.zeros((runs, 0)),
        beta=beta,
        contribution=contrib,
        score_records=r_out[:, keep] if record_scores and rec else None,
        beta_records=b_out[:, keep] if record_scores and rec else None,
        contribution_records=rb_out[:, keep] if record_scores and rec else None,
        a_rep=a_rep,
        strength=s_rep,
        balancer=spec,
        lr=lr,
        snapshot=bool(snapshot),
    )


def _initial(name, value, runs, n, default):
    if value is None:
        return np.array(np.broadcast_to(default, (runs, n)), dtype=float, order="C")
    arr = finite_array(name, value)
    if arr.shape not in ((n,), (runs, n)):
        raise ParameterError(name, f"must have shape ({n},) or ({runs}, {n}), got {arr.shape}")
    return np.array(np.broadcast_to(arr, (runs, n)), dtype=float, order="C")
