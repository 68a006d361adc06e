"""Throughput of the top-k batch-router kernel (``moebif.router_nexp``) against its floor and
baselines, in the spirit of SPEC sec. 6.

Cases (N, k, B) at a balanced state (``a = a_lin / 2``) and, for one case, at a collapsed
one-winner state. Measured side by side, best of ``REPEATS`` interleaved runs:

- kernel: ``simulate_topk_router`` (the whole public call), on all threads and on 1 thread;
- floor: the same number of exact top-k batch draws alone (``topk_counts_sample``: the sampler
  of the kernel without the router update), at the kernel's final scores, one thread;
- numpy Gumbel-top-k: ``argpartition`` of ``r/T + Gumbel`` for every token, vectorised over
  replicas and tokens, loop over steps (exact too; a strong pure-numpy baseline);
- naive: a per-token Python loop of sequential draws without replacement (timed on a short
  run, extrapolated).

Run: ``python benchmarks/bench_topk.py`` (about a minute).
"""

from __future__ import annotations

import math
import random
import time

import numba
import numpy as np

from moebif.model.topk import topk_linear_threshold
from moebif.params import RouterParams
from moebif.sim._kernels.topk import topk_counts_sample
from moebif.sim.topk_router import simulate_topk_router

CASES = [  # (N, k, B, state)
    (8, 1, 512, "balanced"),
    (8, 2, 512, "balanced"),
    (64, 2, 512, "balanced"),
    (64, 8, 512, "balanced"),
    (64, 2, 512, "collapsed"),
]
RUNS, STEPS = 256, 400
ETA = 0.02
REPEATS = 3
NAIVE_REPLICA_STEPS = 20


def _setup(n, k, state):
    a_lin = topk_linear_threshold(n, k, 1.0, 1.0)
    if state == "balanced":
        return RouterParams(a=0.5 * a_lin, gamma=1.0, T=1.0, n_experts=n), None
    r0 = np.zeros(n)
    r0[0] = 6.0  # one winner, well inside the collapsed basin at a = 0.5 a_lin
    return RouterParams(a=0.5 * a_lin, gamma=1.0, T=1.0, n_experts=n), r0


def numpy_gumbel(params, k, batch, steps, runs, r0, seed=0):
    rng = np.random.default_rng(seed)
    n = params.n_experts
    r = np.full((runs, n), params.a / (n * params.gamma)) if r0 is None else np.tile(r0, (runs, 1))
    for _ in range(steps):
        g = r[:, None, :] / params.T + rng.gumbel(size=(runs, batch, n))
        top = np.argpartition(-g, k - 1, axis=2)[:, :, :k]
        counts = np.zeros((runs, n))
        np.add.at(counts, (np.repeat(np.arange(runs), batch * k), top.reshape(runs, -1).ravel()), 1)
        load = counts / (k * batch)
        r = r + ETA * (params.a * load - params.gamma * r)
    return r


def naive(params, k, batch, steps, r0, seed=0):
    rnd = random.Random(seed)
    n = params.n_experts
    r = [params.a / (n * params.gamma)] * n if r0 is None else list(r0)
    for _ in range(steps):
        mx = max(r)
        w = [math.exp((x - mx) / params.T) for x in r]
        counts = [0] * n
        for _ in range(batch):
            chosen = set()
            for _ in range(k):
                rem = sum(w[j] for j in range(n) if j not in chosen)
                u = rnd.random() * rem
                for j in range(n):
                    if j in chosen:
                        continue
                    if u < w[j]:
                        break
                    u -= w[j]
                chosen.add(j)
                counts[j] += 1
        r = [
            x + ETA * (params.a * c / (k * batch) - params.gamma * x)
            for x, c in zip(r, counts, strict=True)
        ]
    return r


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _case(n, k, batch, state, threads) -> str:
    """Time one case; returns its table row."""
    p, r0 = _setup(n, k, state)
    common = dict(
        batch=batch, eta=ETA, steps=STEPS, runs=RUNS, top_k=k, seed=1, r0=r0, record_every=None
    )
    sim = simulate_topk_router(p, **common)  # warm-up (compilation)
    r_end = sim.scores[0].copy()
    topk_counts_sample(r_end, p.T, k, batch, 2, 0)
    methods = {
        "kernel": lambda: simulate_topk_router(p, threads=threads, **common),
        "1 thread": lambda: simulate_topk_router(p, threads=1, **common),
        "floor": lambda: topk_counts_sample(r_end, p.T, k, batch, RUNS * STEPS, 0),
    }
    best = dict.fromkeys(methods, math.inf)
    for _ in range(REPEATS):
        for name, fn in methods.items():
            best[name] = min(best[name], _timed(fn))
    np_steps = max(2, STEPS // 20)
    t_np = _timed(lambda: numpy_gumbel(p, k, batch, np_steps, RUNS, r0)) * STEPS / np_steps
    t_naive = _timed(lambda: naive(p, k, batch, NAIVE_REPLICA_STEPS, r0))
    t_naive *= RUNS * STEPS / NAIVE_REPLICA_STEPS
    rs = RUNS * STEPS
    picks = rs * batch * k
    return (
        f"{n:>3} {k:>2} {batch:>4} {state:>9} | "
        + " ".join(
            f"{rs / t:>9.3g}"
            for t in (best["kernel"], best["1 thread"], best["floor"], t_np, t_naive)
        )
        + f" | {best['1 thread'] / picks * 1e9:>7.2f} {best['floor'] / best['1 thread']:>8.2f}"
        f" {best['1 thread'] / best['kernel']:>7.2f} {t_np / best['kernel']:>8.0f}"
        f" {t_naive / best['kernel']:>8.0f}"
    )


def main() -> None:
    threads = numba.config.NUMBA_NUM_THREADS
    print(f"top-k batch router: {RUNS} runs x {STEPS} steps, eta {ETA}, {threads} threads\n")
    head = (
        f"{'N':>3} {'k':>2} {'B':>4} {'state':>9} | {'kernel':>9} {'1 thread':>9} "
        f"{'floor':>9} {'numpy':>9} {'naive':>9} | {'ns/pick':>7} {'vs floor':>8} "
        f"{'threads':>7} {'vs numpy':>8} {'vs naive':>8}"
    )
    print(head)
    print("-" * len(head))
    for n, k, batch, state in CASES:
        print(_case(n, k, batch, state, threads))
    print(
        "\ncolumns: replica-steps per second; ns/pick = single-thread time per token-expert pick;"
        "\nvs floor = floor time / 1-thread kernel time (>= 0.8 wanted); threads = 1-thread / "
        "all-thread time;\nvs numpy, vs naive = speed-up of the kernel over those baselines."
    )


if __name__ == "__main__":
    main()
