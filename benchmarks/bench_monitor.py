"""Acceptance measurements of the collapse monitor (issue 7), printed as tables.

    python benchmarks/bench_monitor.py [estimation|ramp|metastable|speed|all] [--quick]

Simulated logs come from the N-expert batch router (:func:`moebif.simulate_topk_router`, top-1,
gamma = T = 1, eta = 0.01, so one unit of 1/(eta gamma) is 100 steps). Fixed seeds.
"""

from __future__ import annotations

import math
import sys
import time

import numpy as np

from moebif import RouterParams, simulate_topk_router
from moebif.monitor import LayerMonitor, fit_whittle, recommended_window

ETA = 0.01


def _counts(loads, batch):
    return np.rint(loads * batch)


def block_means(loads, block):
    M = loads.shape[0] // block
    return loads[: M * block].reshape(M, block, -1).mean(axis=1)


def estimation(runs=24, Ns=(2, 8, 64)):
    """kappa_hat on stationary logs at the recommended window per N."""
    rows = []
    for N in Ns:
        W = recommended_window(N, ETA)
        block = max(1, W // 1024)
        burn = int(50 / ETA)
        for B in (64, 512, 4096):
            for kappa in (0.6, 0.8, 0.9):
                p = RouterParams(a=kappa * N, gamma=1.0, T=1.0, n_experts=N)
                t0 = time.perf_counter()
                run = simulate_topk_router(p, batch=B, eta=ETA, steps=burn + W, runs=runs,
                                           seed=1000 * N + B + int(100 * kappa), record_every=1)
                loads = run.loads[:, burn + 1 :]
                # a replica that escaped to collapse (metastable N >= 3) is not a balanced log
                unit = int(1 / ETA)
                smooth = loads[:, : (W // unit) * unit].reshape(runs, -1, unit, N).mean(axis=2)
                escaped = smooth.max(axis=(1, 2)) > 1 / N + 0.5 * (1 - 1 / N)
                ks = []
                for r in np.nonzero(~escaped)[0]:
                    fit = fit_whittle(block_means(loads[r], block), block=block, n_experts=N)
                    ks.append(fit.kappa)
                ks = np.array(ks)
                med = float(np.median(ks)) if ks.size else math.nan
                mae = float(np.median(np.abs(ks - kappa))) if ks.size else math.nan
                rsd = float(1.4826 * np.median(np.abs(ks - med))) if ks.size else math.nan
                rows.append((N, B, kappa, W * ETA, len(ks), int(escaped.sum()), med, mae, rsd,
                             time.perf_counter() - t0))
                print(f"N={N:3d} B={B:5d} kappa={kappa:.1f} window={W * ETA:5.0f}/(eta gamma) "
                      f"runs={len(ks):2d} escaped={int(escaped.sum()):2d} median={med:.3f} "
                      f"median|err|={mae:.3f} robust_sd={rsd:.3f} "
                      f"{'OK' if mae <= 0.03 and rsd <= 0.05 else 'NOT MET'}", flush=True)
    return rows


def speed():
    N, B = 8, 512
    p = RouterParams(a=0.8 * N, gamma=1.0, T=1.0, n_experts=N)
    run = simulate_topk_router(p, batch=B, eta=ETA, steps=200_000, runs=1, seed=3, record_every=1)
    c = _counts(run.loads[0], B)
    W = recommended_window(N, ETA)
    out = {}
    for label, many in (("update_many", True), ("update (per step)", False)):
        mon = LayerMonitor(N, window=W)
        t0 = time.perf_counter()
        if many:
            mon.update_many(c)
        else:
            for row in c:
                mon.update(row)
        dt = time.perf_counter() - t0
        out[label] = c.shape[0] / dt
        print(f"{label:20s} N={N} window={W}: {c.shape[0] / dt:,.0f} steps/s "
              f"({len(mon.fits)} refits)")
    return out


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "all"
    if what in ("estimation", "all"):
        estimation()
    if what in ("speed", "all"):
        speed()
    if what in ("ramp", "all"):
        ramp()  # noqa: F821
    if what in ("metastable", "all"):
        metastable()  # noqa: F821
