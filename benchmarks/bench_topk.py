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

Run: ``python benchmarks/bench_topk.py [--json PATH]`` (about a minute); exits 1 if a ratio is
below its target (table and checks also in ``bench-results/topk.json``).
"""

from __future__ import annotations

import math
import random
import sys
import time

import numba
import numpy as np
from _report import Report, arguments

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
# targets: the kernel keeps >= 80 % of the speed of its own sampler alone (the update costs
# little next to the draws), and is two orders of magnitude faster than a per-token Python loop
TARGET_FLOOR = 0.8
TARGET_NAIVE = 100.0


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


def _case(n, k, batch, state, threads) -> list:
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
    return [
        n,
        k,
        batch,
        state,
        *(rs / t for t in (best["kernel"], best["1 thread"], best["floor"], t_np, t_naive)),
        best["1 thread"] / picks * 1e9,
        best["floor"] / best["1 thread"],
        best["1 thread"] / best["kernel"],
        t_np / best["kernel"],
        t_naive / best["kernel"],
    ]


def main(argv=None) -> int:
    args = arguments(__doc__, argv)
    threads = numba.config.NUMBA_NUM_THREADS
    report = Report(
        "topk",
        f"top-k batch router: {RUNS} runs x {STEPS} steps, eta {ETA}, {threads} threads",
        json_path=args.json,
    )
    rows = [_case(n, k, batch, state, threads) for n, k, batch, state in CASES]
    rate = ">9.3g"
    report.table(
        "",
        [
            ("N", ">3"),
            ("k", ">2"),
            ("B", ">4"),
            ("state", ">9"),
            ("kernel", rate),
            ("1 thread", rate),
            ("floor", rate),
            ("numpy", rate),
            ("naive", rate),
            ("ns/pick", ">7.2f"),
            ("vs floor", ">8.2f"),
            ("threads", ">7.2f"),
            ("vs numpy", ">8.0f"),
            ("vs naive", ">8.0f"),
        ],
        rows,
    )
    report.note(
        "columns: replica-steps per second; ns/pick = single-thread time per token-expert pick;"
        "\nvs floor = floor time / 1-thread kernel time; threads = 1-thread / all-thread time;"
        "\nvs numpy, vs naive = speed-up of the kernel over those baselines."
    )
    for n, k, batch, state, *_, vs_floor, _threads, _numpy, vs_naive in rows:
        case = f"N={n} k={k} B={batch} {state}"
        report.check(f"{case}: 1-thread kernel / floor", vs_floor, TARGET_FLOOR)
        report.check(f"{case}: kernel / naive loop", vs_naive, TARGET_NAIVE)
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
