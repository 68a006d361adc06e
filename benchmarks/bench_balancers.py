"""Throughput of the balancer kernels against their sampling floor, side by side, one thread.

For each case (N, k, B) and scheme: the whole public call ``simulate_balanced_router`` on one
thread, against the floor, the random draws the kernel makes alone at the kernel's final scores
(``topk_counts_sample``: the exact top-k sampler, for every scheme that samples from the scores,
at uniform scores for Sinkhorn;
``noisy_counts_sample``: every token's noisy logits, for noisy gating). Target: kernel >= 0.8x
the floor's throughput (SPEC sec. 6). Expert choice draws nothing (its time is reported, no
ratio). The unbalanced top-k kernel is timed too, for reference.

Each method is timed ``REPEATS`` times in process CPU time, kernel and floor alternately, the
fastest kept (the machine may be shared: CPU time is much less affected than wall time).
Prints a table and the checks, writes them as JSON (``bench-results/balancers.json``, or
``--json PATH``), exits with status 1 if a ratio is below target.
Run: ``python benchmarks/bench_balancers.py [--json PATH]``.
"""

from __future__ import annotations

import math
import os
import sys
import time

import numba
import numpy as np
from _report import Report, arguments

from moebif.model.topk import topk_linear_threshold
from moebif.params import RouterParams
from moebif.sim._kernels.balancers import noisy_counts_sample
from moebif.sim._kernels.topk import topk_counts_sample
from moebif.sim.balanced_router import simulate_balanced_router
from moebif.sim.topk_router import simulate_topk_router

# (N, k, B, runs, steps): top-k cases draw B (k - 1) more picks a step, so fewer replica-steps
CASES = [(2, 1, 512, 256, 400), (8, 1, 512, 256, 400), (8, 2, 512, 64, 400), (64, 2, 512, 64, 200)]
SCHEMES = [
    "aux:0.1",
    "aux:0.1,adam",
    "zloss:0.01",
    "importance:0.1",
    "bias:1e-3",
    "quantile",
    "capacity:1.25",
    "sinkhorn",
    "control",
    "aux:0.05,zloss:0.001,bias:1e-3,capacity:1.25",
]
NOISY = [(8, 2, 128, "noisy:0.5"), (8, 1, 128, "jitter:0.01")]
RUNS, STEPS = 256, 400
ETA = 0.02
REPEATS = 5
TARGET = 0.8


def _timed(fn) -> float:
    # CPU time of this process: everything here runs on one thread, and the CPU time is far
    # less sensitive than the wall clock to other jobs sharing the machine
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def _best(fn) -> float:
    return min(_timed(fn) for _ in range(REPEATS))


def _side_by_side(kernel, floor) -> tuple[float, float]:
    """Best times of ``kernel`` and ``floor``, timed alternately (a shared machine's load
    then affects both alike)."""
    tk = tf = math.inf
    for _ in range(REPEATS):
        tk = min(tk, _timed(kernel))
        tf = min(tf, _timed(floor))
    return tk, tf


def _row(n, k, batch, work, scheme, seconds, floor, target):
    ratio = None if floor is None else floor / seconds
    return dict(
        n=n,
        k=k,
        batch=batch,
        work=work,
        scheme=scheme,
        seconds=seconds,
        floor=floor,
        ratio=ratio,
        target=target,
    )


def _case(n, k, batch, runs, steps, schemes) -> list[dict]:
    p = RouterParams(a=0.5 * topk_linear_threshold(n, k, 1.0, 1.0), gamma=1.0, T=1.0, n_experts=n)
    common = dict(
        batch=batch, eta=ETA, steps=steps, runs=runs, top_k=k, seed=1, record_every=None, threads=1
    )
    base = simulate_topk_router(p, **common)
    r_end = base.scores[0].copy()
    topk_counts_sample(r_end, p.T, k, batch, 2, 0)  # compile / load

    def floor():
        topk_counts_sample(r_end, p.T, k, batch, runs * steps, 0)

    t, tf = _side_by_side(lambda: simulate_topk_router(p, **common), floor)
    rows = [_row(n, k, batch, runs * steps, "(unbalanced top-k kernel)", t, tf, None)]

    def floor_uniform():
        # Sinkhorn's selection in the score model ignores the scores: uniform draws
        topk_counts_sample(np.zeros(n), p.T, k, batch, runs * steps, 0)

    for spec in schemes:
        simulate_balanced_router(p, spec, **{**common, "steps": 2})  # compile / load
        fl = floor_uniform if spec == "sinkhorn" else floor
        t, tf = _side_by_side(lambda spec=spec: simulate_balanced_router(p, spec, **common), fl)
        rows.append(_row(n, k, batch, runs * steps, spec, t, tf, TARGET))
    return rows


def _noisy(n, k, batch, spec) -> dict:
    p = RouterParams(a=0.5 * topk_linear_threshold(n, k, 1.0, 1.0), gamma=1.0, T=1.0, n_experts=n)
    runs, steps = 32, 100
    common = dict(
        batch=batch, eta=ETA, steps=steps, runs=runs, top_k=k, seed=1, record_every=None, threads=1
    )
    run = simulate_balanced_router(p, spec, **common)
    z = run.scores[0] / p.T
    sigma = float(spec.split(":")[1]) if spec.startswith("noisy") else 0.0
    jitter = float(spec.split(":")[1]) if spec.startswith("jitter") else 0.0
    noisy_counts_sample(z, k, batch, sigma, jitter, 2, 0)
    t, t_floor = _side_by_side(
        lambda: simulate_balanced_router(p, spec, **common),
        lambda: noisy_counts_sample(z, k, batch, sigma, jitter, runs * steps, 0),
    )
    return _row(n, k, batch, runs * steps, spec, t, t_floor, TARGET)


def main(argv=None) -> int:
    args = arguments(__doc__, argv)
    report = Report(
        "balancers",
        f"balancer kernels against their sampling floor, one thread, eta {ETA}; numba "
        f"{numba.__version__}, numpy {np.__version__}; best of {REPEATS} in process CPU time, "
        "kernel and floor alternately",
        json_path=args.json,
    )
    rows = []
    for case in CASES:
        rows += _case(*case, SCHEMES)
    rows += [_noisy(*c) for c in NOISY]
    p = RouterParams(a=2.0, gamma=1.0, T=1.0, n_experts=8)
    common = dict(batch=512, eta=ETA, steps=STEPS, runs=RUNS, seed=1, record_every=None, threads=1)
    simulate_balanced_router(p, "expert-choice:1", **{**common, "steps": 2})
    t_ec = _best(lambda: simulate_balanced_router(p, "expert-choice:1", **common))
    rows.append(_row(8, 1, 512, RUNS * STEPS, "expert-choice:1 (no draws)", t_ec, None, None))
    report.table(
        "",
        [
            ("N", ">3"),
            ("k", ">2"),
            ("B", ">4"),
            ("rep-steps", ">9"),
            ("scheme", "<46"),
            ("seconds", ">8.4f"),
            ("floor s", ">8.4f"),
            ("steps/s", ">10.3g"),
            ("x floor", ">8.2f"),
        ],
        [
            [
                r["n"],
                r["k"],
                r["batch"],
                r["work"],
                r["scheme"],
                r["seconds"],
                r["floor"],
                r["work"] / r["seconds"],
                r["ratio"],
            ]
            for r in rows
        ],
    )
    report.note(
        f"x floor = floor time / kernel time; target: kernel >= {TARGET}x the floor (the same"
        " random draws alone, one thread); the unbalanced top-k kernel and expert choice (no"
        " draws) are shown for reference, without a target"
    )
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else math.nan
    report.note(
        f"load average at the end: {load:.1f} on {os.cpu_count()} CPUs (a loaded machine makes"
        " the floor and the kernel noisy alike; rerun on an idle machine before trusting a"
        " ratio within 0.05 of the target)"
    )
    for r in rows:
        if r["target"] is not None:
            label = f"N={r['n']} k={r['k']} B={r['batch']} {r['scheme']}: kernel / floor"
            report.check(label, r["ratio"], r["target"])
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
