"""Shared by the balancer experiments (``bal-*``): collapse after a skew pulse, the crossing of a
collapse probability, and the routing cost of a scheme read from score records."""

from __future__ import annotations

import math

import numpy as np

from ..model.crossing import first_crossing
from ..model.field import softmax
from ..params import RouterParams


def pulse_drive(params, spec, top_k, batch, a, winners, gap) -> float:
    """Drift of the skew pulse on the winners: ``gamma T (gap + 3)``, plus the largest restoring
    drift of the scheme's field terms on the winner-loser gap along the path ``r = T d 1_W``,
    ``0 <= d <= gap + 3``, at the smallest ``a`` (a strong aux loss pushes back hard at
    intermediate gaps, more so for many experts, and a pulse that does not beat it never reaches
    the collapsed basin). Pushing past the collapsed state is harmless: without a stable one
    the router returns, with one it relaxes onto it."""
    from ..model.balancers import field_terms, parse_balancers
    from ..model.field import VectorField

    if isinstance(spec, str):
        spec = parse_balancers(spec)
    base = params.gamma * params.T * (max(gap, 1.0) + 3.0)
    terms = field_terms(spec, batch=batch) if spec is not None else ()
    if not terms:
        return base
    n = params.n_experts
    f = VectorField.of(params.replace(a=float(a)), top_k=top_k, b=np.zeros(n), terms=terms)
    bare = VectorField.of(params.replace(a=float(a)), top_k=top_k, b=np.zeros(n))
    push = 0.0
    for d in np.linspace(0.0, max(gap, 1.0) + 3.0, 41):
        r = np.zeros(n)
        r[:winners] = params.T * d
        g = f(r) - bare(r)  # the terms' drift alone
        push = max(push, float(np.mean(g[winners:]) - np.mean(g[:winners])))
    return base + 1.5 * push


def pulse_collapse(
    params: RouterParams,
    spec,
    *,
    top_k: int,
    batch: int,
    eta: float,
    a_values,
    reps: int,
    winners: int,
    gap: float,
    pulse_time: float,
    relax_time: float,
    seed: int,
    strength=None,
) -> np.ndarray:
    """``P(collapsed)`` at each ``a`` of ``a_values`` after a skew pulse: ``reps`` replicas
    each start at the uniform state, get a drift ``hp`` (:func:`pulse_drive`) on ``winners``
    experts for ``pulse_time``, then relax for ``relax_time`` (ODE time). A replica counts as
    collapsed when its winners' mean score exceeds the mean by half of ``gap`` (the score gap
    of the collapsed state at the fold) times ``T (N - m) / N``."""
    from ..sim.balanced_router import simulate_balanced_router

    n = params.n_experts
    a_rep = np.repeat(np.asarray(a_values, dtype=float), reps)
    n_p = max(1, round(pulse_time / eta))
    n_r = max(1, round(relax_time / eta))
    hp = pulse_drive(params, spec, top_k, batch, min(a_values), winners, gap)
    sched = np.zeros(n_p + n_r)
    sched[:n_p] = hp
    e = np.zeros(n)
    e[:winners] = 1.0
    run = simulate_balanced_router(
        params,
        spec,
        batch=batch,
        eta=eta,
        steps=n_p + n_r,
        runs=a_rep.size,
        top_k=top_k,
        seed=seed,
        a=a_rep,
        strength=None if strength is None else np.repeat(strength, reps),
        h=sched,
        direction=e,
        b=np.zeros(n),
        r0=np.tile(a_rep[:, None] / (n * params.gamma), (1, n)),
        record_every=None,
    )
    top = np.sort(run.scores, axis=1)[:, -winners:].mean(axis=1)
    lift = top - run.scores.mean(axis=1)
    thr = 0.5 * max(gap, 0.5) * params.T * (n - winners) / n
    return (lift > thr).reshape(-1, reps).mean(axis=1)


def p50(x, p) -> float:
    """Where a collapse probability first reaches 1/2 going up (linear interpolation)."""
    x = np.asarray(x, dtype=float)
    p = np.asarray(p, dtype=float)
    if p.size and p[0] >= 0.5:
        return math.nan
    return first_crossing(x, p, 0.5, direction="up") if np.any(p >= 0.5) else math.nan


def routing_cost(spec, scores, beta, contribution, T: float, dropped=None) -> np.ndarray:
    """Routing mass the scheme moves, per record: total-variation distance between the loads the
    router is expected to serve and the loads its task scores alone would give (top-1,
    ``softmax``; noisy gating: the noisy selection's inclusion probabilities), plus the dropped
    fraction. ``scores``, ``beta``, ``contribution``:
    ``(..., N)`` records; task scores are ``scores - contribution``."""
    r = np.asarray(scores, dtype=float)
    task = softmax(r - np.asarray(contribution, dtype=float), T)
    sel = spec.selection
    n = r.shape[-1]
    if sel == "bias":
        served = softmax(r + np.asarray(beta, dtype=float), T)
    elif sel == "quantile":
        served = softmax(r - T * np.asarray(beta, dtype=float), T)
    elif sel in ("sinkhorn", "expert_choice"):
        served = np.full(r.shape, 1.0 / n)
    elif sel == "noisy":
        from ..model.balancers import noisy_inclusion

        flat = r.reshape(-1, n)
        served = np.array(
            [
                noisy_inclusion((x - x.mean()) / T, 1, sigma=spec.noise, jitter=spec.jitter)
                for x in flat
            ]
        ).reshape(r.shape)
    else:
        served = softmax(r, T)
    if spec.capacity > 0:
        served = np.minimum(served, spec.capacity / n)
    tv = 0.5 * np.abs(served - task).sum(axis=-1)
    if spec.capacity > 0:
        tv = tv + 0.5 * (1.0 - served.sum(axis=-1))
    if dropped is not None and spec.expert_choice > 0:
        tv = tv + np.asarray(dropped)
    return tv


def jsonable_list(x):
    """Lists of floats with non-finite values as ``None``."""
    return [None if not np.isfinite(v) else float(v) for v in np.asarray(x, dtype=float).ravel()]
