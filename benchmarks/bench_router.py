"""Throughput of the batch-router kernel against its floor and baselines (SPEC sec. 6).

Fig. 6 settings (a = 3, gamma = T = 1, h = 0.08, B = 512, eta = 0.002) on two ensembles,
small (40 runs x 10^4 steps) and large (4000 runs x 10^3 steps). Measured side by side:

- kernel: ``simulate_batch_router`` (the whole public call) on 2 threads and on 1 thread;
- floor: the same number of exact binomial draws alone, ``numpy.random.Generator.binomial(B, p)``
  in one vectorised call, at the p values the kernel visited;
- reference: ``simulate_batch_router_reference`` (numpy, loop over steps, vectorised over runs);
- naive: a per-token Python loop with ``random.random`` (timed on a short run, extrapolated).

Each method is timed ``REPEATS`` times, interleaved with the others, and the fastest time is
kept (the machine may be shared). Numba compilation happens in a warm-up before any timing.
Run: ``python benchmarks/bench_router.py [--json PATH]``; exits 1 if a ratio is below its
target (table and checks also in ``bench-results/router.json``).
"""

from __future__ import annotations

import math
import random
import sys
import time

import numba
import numpy as np
from _report import Report, arguments

from moebif.params import RouterParams
from moebif.sim.router import simulate_batch_router, simulate_batch_router_reference

PARAMS = RouterParams(a=3.0, gamma=1.0, T=1.0, h=0.08)
BATCH = 512
ETA = 0.002
ENSEMBLES = {"small": (40, 10_000), "large": (4000, 1_000)}
REPEATS = 5
NAIVE_REPLICA_STEPS = 200
TARGETS = {"floor": 0.8, "floor_goal": 1.0, "threads": 1.7, "naive": 200.0}


def naive_router(params: RouterParams, *, batch, eta, steps, runs, seed=0):
    """Per-token Python loop: every token draws its expert with ``random.random()``."""
    rnd = random.Random(seed)
    a, gamma, T, h = params.a, params.gamma, params.T, params.h
    out = np.empty((runs, steps))
    for i in range(runs):
        y = 0.0
        for n in range(steps):
            z = y / T
            p1 = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
            n1 = 0
            for _ in range(batch):
                if rnd.random() < p1:
                    n1 += 1
            u = (2 * n1 - batch) / batch
            out[i, n] = u
            y += eta * (a * u - gamma * y + h)
    return out


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(runs: int, steps: int, max_threads: int) -> dict[str, float]:
    """Best wall time (seconds) of each method for ``runs x steps`` replica-steps."""
    common = dict(batch=BATCH, eta=ETA, steps=steps, runs=runs, seed=1)
    # the p values visited by the kernel: p1 = 1 / (1 + exp(-y/T)) at every state that drew a batch
    y = simulate_batch_router(PARAMS, record_scores=True, **common).scores[:, :steps]
    p1 = (1.0 / (1.0 + np.exp(-y / PARAMS.T))).ravel()
    rng = np.random.default_rng(1)

    methods = {
        f"kernel, {max_threads} threads": lambda: simulate_batch_router(
            PARAMS, threads=max_threads, **common
        ),
        "kernel, 1 thread": lambda: simulate_batch_router(PARAMS, threads=1, **common),
        "floor: numpy binomial": lambda: rng.binomial(BATCH, p1),
        "numpy reference": lambda: simulate_batch_router_reference(PARAMS, **common),
    }
    best = dict.fromkeys(methods, math.inf)
    for rep in range(REPEATS):
        for name, fn in methods.items():
            if name == "numpy reference" and rep >= 2:
                continue  # slow and not a target: two timings are enough
            best[name] = min(best[name], _timed(fn))

    naive_runs = 2
    naive_steps = NAIVE_REPLICA_STEPS // naive_runs
    t_naive = min(
        _timed(
            lambda: naive_router(PARAMS, batch=BATCH, eta=ETA, steps=naive_steps, runs=naive_runs)
        )
        for _ in range(2)
    )
    best["naive per-token loop (extrapolated)"] = t_naive * runs * steps / NAIVE_REPLICA_STEPS
    return best


def main(argv=None) -> int:
    args = arguments(__doc__, argv)
    max_threads = min(2, numba.config.NUMBA_NUM_THREADS)
    # warm-up: compile (or load from the on-disk cache) the serial and the parallel kernels
    for threads in (1, max_threads):
        simulate_batch_router(PARAMS, batch=BATCH, eta=ETA, steps=10, runs=4, threads=threads)

    report = Report(
        "router",
        f"batch router, a={PARAMS.a:g} gamma={PARAMS.gamma:g} T={PARAMS.T:g} h={PARAMS.h:g} "
        f"B={BATCH} eta={ETA:g}; numba {numba.__version__}, numpy {np.__version__}, "
        f"threading layer {numba.threading_layer()}; best of {REPEATS}",
        json_path=args.json,
    )
    rows = []
    for ens, (runs, steps) in ENSEMBLES.items():
        best = measure(runs, steps, max_threads)
        work = runs * steps
        floor = best["floor: numpy binomial"]
        naive = best["naive per-token loop (extrapolated)"]
        for name, sec in best.items():
            rows.append(
                [f"{ens} ({runs} x {steps})", name, sec, work / sec, floor / sec, naive / sec]
            )
        k_multi = best[f"kernel, {max_threads} threads"]
        k_one = best["kernel, 1 thread"]
        report.check(
            f"{ens}: kernel ({max_threads} threads) / floor", floor / k_multi, TARGETS["floor"]
        )
        report.check(f"{ens}: kernel (1 thread) / floor", floor / k_one, TARGETS["floor"])
        report.check(
            f"{ens}: kernel ({max_threads} threads) / naive", naive / k_multi, TARGETS["naive"]
        )
        if ens == "large" and max_threads > 1:
            report.check(
                f"{ens}: {max_threads} threads / 1 thread", k_one / k_multi, TARGETS["threads"]
            )
    report.table(
        "",
        [
            ("ensemble", "<22"),
            ("method", "<38"),
            ("seconds", ">10.4f"),
            ("replica-steps/s", ">16.3e"),
            ("x floor", ">8.2f"),
            ("x naive", ">9.1f"),
        ],
        rows,
    )
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
