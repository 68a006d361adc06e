"""Acceptance measurements of the collapse monitor (issue 7) and of the router monitor in a
training stack (issue 13), printed as tables.

    python benchmarks/bench_monitor.py [estimation|ramp|metastable|speed|stack|memory|logsize|
                                        overhead|cost|all] [--quick] [--json PATH]

Simulated logs come from the N-expert batch router (:func:`moebif.simulate_topk_router`, top-1,
gamma = T = 1, eta = 0.01, so one unit of 1/(eta gamma) is 100 steps). Fixed seeds.

``stack`` (the default; = ``memory``, ``logsize``, ``overhead``) measures RouterMonitor itself,
with targets: it prints a table and the checks, writes JSON (``benchmarks/_report.py``; default
``bench-results/bench_monitor_stack.json``, raw numbers under ``data``) and exits with code 1
below a target (``--quick``: 2,000 steps and 40 pairs, a smoke run, not the acceptance numbers):

- ``memory``: growth of the process over 20,000 steps at 48 layers x 64 experts (top-2, soft
  importance off: see :func:`memory_and_log`; default ``history`` and window, the log
  written), from just after the first step: traced Python/numpy allocations and the resident
  set after ``malloc_trim`` (target: both < 20 MB);
- ``logsize``: the log of the same run with ``log_max_bytes = 16 MB``, ``log_backups = 2``: the
  bytes on disk stay <= 3 x 16 MB (uncapped it would be the bytes per step times 20,000);
- ``cost`` (separately; not in ``all``): the monitor never stalls training. One LayerMonitor at
  N = 64 and 256, top-8, with importance and scores (:func:`topk_stream`), fed 3000 steps one
  ``update()`` at a time (many refits): CPU time per step of the whole process (the fits on the
  worker threads count; target <= 1 ms), the wall time of the slowest ``update()`` (target
  <= 50 ms), and ``moebif diagnose`` on a 2-layer, 3000-step log (target <= 20 s); JSON to
  ``bench-results/bench_monitor_cost.json``. The table also gives the calls and CPU time of the
  top-k inclusion Jacobian (model/inclusion.py), the one cost outside monitor/.
- ``overhead``: a 4-layer, 16-expert tiny Mixtral training on CPU (real text, batch 8 x 64, one
  thread): adjacent pairs of steps with and without the monitor (hooks, ``step()`` and its log)
  interleaved in one process, the force probes' gradient hooks included; the ratio of the mean
  step times (target: <= 1.03) and the slowest ``step()`` call (target: <= 50 ms).
"""

from __future__ import annotations

import gc
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

from moebif import RouterParams, simulate_topk_router
from moebif.monitor import LayerMonitor, default_block, fit_whittle, recommended_window

ETA = 0.01


def _counts(loads, batch):
    return np.rint(loads * batch)


def block_means(loads, block):
    M = loads.shape[0] // block
    return loads[: M * block].reshape(M, block, -1).mean(axis=1)


def estimation(runs=24, Ns=(2, 8, 64), batches=(64, 512, 4096)):
    """kappa_hat on stationary logs at the recommended window per N."""
    rows = []
    for N in Ns:
        W = recommended_window(N, ETA)
        block = default_block(W, N)
        burn = int(50 / ETA)
        for B in batches:
            for kappa in (0.6, 0.8, 0.9):
                p = RouterParams(a=kappa * N, gamma=1.0, T=1.0, n_experts=N)
                t0 = time.perf_counter()
                run = simulate_topk_router(
                    p,
                    batch=B,
                    eta=ETA,
                    steps=burn + W,
                    runs=runs,
                    seed=1000 * N + B + int(100 * kappa),
                    record_every=1,
                )
                loads = run.loads[:, burn + 1 :]
                # a replica that escaped to collapse (metastable N >= 3) is not a balanced log
                unit = int(1 / ETA)
                K = (loads.shape[1] // unit) * unit
                smooth = loads[:, :K].reshape(runs, -1, unit, N).mean(axis=2)
                escaped = smooth.max(axis=(1, 2)) > 1 / N + 0.5 * (1 - 1 / N)
                ks = []
                for r in np.nonzero(~escaped)[0]:
                    fit = fit_whittle(block_means(loads[r], block), block=block, n_experts=N)
                    ks.append(fit.kappa)
                ks = np.array(ks)
                med = float(np.median(ks)) if ks.size else math.nan
                mae = float(np.median(np.abs(ks - kappa))) if ks.size else math.nan
                rsd = float(1.4826 * np.median(np.abs(ks - med))) if ks.size else math.nan
                rows.append(
                    (
                        N,
                        B,
                        kappa,
                        W * ETA,
                        len(ks),
                        int(escaped.sum()),
                        med,
                        mae,
                        rsd,
                        time.perf_counter() - t0,
                    )
                )
                print(
                    f"N={N:3d} B={B:5d} kappa={kappa:.1f} window={W * ETA:5.0f}/(eta gamma) "
                    f"runs={len(ks):2d} escaped={int(escaped.sum()):2d} median={med:.3f} "
                    f"median|err|={mae:.3f} robust_sd={rsd:.3f} "
                    f"{'OK' if mae <= 0.03 and rsd <= 0.05 else 'NOT MET'}",
                    flush=True,
                )
    return rows


def speed():
    N, B = 8, 512
    p = RouterParams(a=0.8 * N, gamma=1.0, T=1.0, n_experts=N)
    run = simulate_topk_router(p, batch=B, eta=ETA, steps=200_000, runs=1, seed=3, record_every=1)
    c = _counts(run.loads[0], B)
    W = recommended_window(N, ETA)
    out = {}
    # escape times are computed on first read of a refit: the last mode reads every one
    modes = (
        ("update_many", True, False),
        ("update (per step)", False, False),
        ("update + escape", False, True),
    )
    for label, many, esc in modes:
        mon = LayerMonitor(N, window=W)
        t0 = time.perf_counter()
        if many:
            mon.update_many(c)
        else:
            for row in c:
                mon.update(row)
        if esc:
            for f in mon.fits:
                f.escape_steps  # noqa: B018
        dt = time.perf_counter() - t0
        out[label] = c.shape[0] / dt
        print(
            f"{label:20s} N={N} window={W}: {c.shape[0] / dt:,.0f} steps/s ({len(mon.fits)} refits)"
        )
    return out


def _first_alarm(mon, kind):
    return next((a.step for a in mon.alarms if a.kind == kind), None)


def _collapse_step(loads, N, unit):
    """First step at which the 1-unit mean of the max load passes halfway to one expert."""
    K = (loads.shape[0] // unit) * unit
    sm = loads[:K].reshape(-1, unit, N).mean(axis=1).max(axis=1)
    hit = np.nonzero(sm > 1 / N + 0.5 * (1 - 1 / N))[0]
    return None if hit.size == 0 else int((hit[0] + 1) * unit)


def ramp(runs=40, window_units=100.0, batch=512, Ns=(2, 8), seed=0, **rule):
    """Slow ramp kappa: 0.5 -> 1.3 over 800 units, and stationary runs at kappa = 0.7, with the
    monitor's default ``approaching-threshold`` rule (or the overrides in ``rule``, e.g.
    ``threshold=0.85``). ``seed`` shifts the seeds (0: the tuning seeds; 1000: fresh ones)."""
    unit = int(round(1 / ETA))
    steps = 800 * unit
    rows = []
    for N in Ns:
        p = RouterParams(a=0.5 * N, gamma=1.0, T=1.0, n_experts=N)
        a_of_t = lambda t, N=N: (0.5 + 0.8 * np.asarray(t) / 800.0) * N  # noqa: E731
        W = int(window_units * unit)
        t0 = time.perf_counter()
        ramp_run = simulate_topk_router(
            p,
            batch=batch,
            eta=ETA,
            steps=steps,
            runs=runs,
            a=a_of_t,
            seed=7 + N + seed,
            record_every=1,
        )
        stat = simulate_topk_router(
            p.replace(a=0.7 * N),
            batch=batch,
            eta=ETA,
            steps=steps,
            runs=runs,
            seed=70 + N + seed,
            record_every=1,
        )
        leads, missed, collapsed = [], 0, 0
        for r in range(runs):
            loads = ramp_run.loads[r]
            tc = _collapse_step(loads, N, unit)
            mon = LayerMonitor(N, window=W, **rule)
            mon.update_many(_counts(loads, batch))
            tw = _first_alarm(mon, "approaching-threshold")
            if tc is None:
                continue
            collapsed += 1
            if tw is None or tw >= tc:
                missed += 1
                leads.append(-math.inf)
            else:
                leads.append((tc - tw) / unit)
        leads = np.array(leads)
        ok_lead = float(np.mean(leads >= 20.0)) if leads.size else math.nan
        false = 0
        for r in range(runs):
            mon = LayerMonitor(N, window=W, **rule)
            mon.update_many(_counts(stat.loads[r], batch))
            false += _first_alarm(mon, "approaching-threshold") is not None
        fin = leads[np.isfinite(leads)]
        rows.append(
            (N, collapsed, ok_lead, float(np.median(fin)) if fin.size else math.nan, false / runs)
        )
        print(
            f"ramp N={N} B={batch} window={window_units:g}/(eta gamma) rule={rule or 'default'} "
            f"seeds+{seed}: "
            f"collapsed {collapsed}/{runs}; warned with lead >= 20 units: {ok_lead:.1%} "
            f"(median lead {rows[-1][3]:.0f} units, missed {missed}); stationary kappa=0.7 "
            f"runs that alarm over 800 units: {false}/{runs} = {false / runs:.1%} "
            f"[{time.perf_counter() - t0:.0f} s]",
            flush=True,
        )
    return rows


def metastable(runs=64, N=8, kappa=0.8, batch=8, window_units=100.0, max_units=3000):
    """Escape-time risk and the collapse-in-progress alarm in the metastable regime."""
    from moebif import escape_theory

    unit = int(round(1 / ETA))
    p = RouterParams(a=kappa * N, gamma=1.0, T=1.0, n_experts=N)
    th = escape_theory(p)
    d_b = 0.5 * (th.d_s + th.d_c)
    t0 = time.perf_counter()
    run = simulate_topk_router(
        p,
        batch=batch,
        eta=ETA,
        steps=max_units * unit,
        runs=runs,
        seed=11,
        record_every=1,
        stop_gap=d_b * (N - 1) / N,
    )
    hit = run.hit
    esc = np.where(hit >= 0, hit / unit, np.nan)
    cens = int(np.sum(hit < 0))
    W = int(window_units * unit)
    preds, leads, false, observed = [], [], 0, 0.0
    for r in range(runs):
        end = hit[r] if hit[r] >= 0 else max_units * unit
        loads = run.loads[r, :end]
        mon = LayerMonitor(N, window=W)
        mon.update_many(_counts(loads, batch))
        observed += end / unit
        if mon.fits:
            # the estimate a user would have had just before the escape: the last refit
            preds.append(mon.fits[-1].escape_steps / unit)
        cip = [a.step for a in mon.alarms if a.kind == "collapse-in-progress"]
        rec = [a.step for a in mon.alarms if a.kind == "recovered"]
        # an alarm followed by a recovery before the escape is a false alarm
        false += sum(1 for s in cip if any(s < q for q in rec))
        if hit[r] >= 0:
            fired = [s for s in cip if not any(s < q for q in rec)]
            leads.append((end - fired[0]) / unit if fired else -math.inf)
    leads = np.array(leads)
    mean_sim = float(np.nanmean(esc))
    preds = np.array(preds)
    pred_med = float(np.nanmedian(preds)) if preds.size else math.nan
    ratio = pred_med / mean_sim
    tau_th = th.mean_escape_time(batch=batch, eta=ETA)
    print(
        f"metastable N={N} kappa={kappa} B={batch} eta={ETA}: simulated mean escape "
        f"{mean_sim:.0f} units ({runs - cens}/{runs} escaped within {max_units}; censored "
        f"runs left out), theory at the true parameters {tau_th:.0f}; "
        f"monitor's estimate (median over runs) {pred_med:.0f} units, ratio {ratio:.2f} "
        f"{'OK' if 0.1 <= ratio <= 10 else 'NOT MET'}"
    )
    fired = np.isfinite(leads) & (leads > 0)
    print(
        f"  collapse-in-progress before the escape in {fired.sum()}/{leads.size} escapes "
        f"(median lead {np.median(leads[fired]) if fired.any() else math.nan:.1f} units); false "
        f"alarms {false} in {observed:.0f} units = {100 * false / observed:.3f} per 100 units "
        f"[{time.perf_counter() - t0:.0f} s]",
        flush=True,
    )
    return mean_sim, pred_med, ratio, fired.mean(), 100 * false / observed


# --------------------------------------------------------------------------------------------
# the cost of the monitor itself: a monitor that never stalls training

COST_TARGETS = {"cpu_ms_per_step": 1.0, "max_update_ms": 50.0, "diagnose_s": 20.0}


def topk_stream(n, k, steps, *, batch=256, a=0.3, eta=0.02, seed=0):
    """A top-k router with feedback, per step: expert counts, soft importance and mean logits
    ``(steps, n)`` each. Scores ``r`` (units T), tokens ``z = r + standard normal``, each token
    picks its top ``k``; ``r <- (1 - eta) r + eta a N (f - 1/N)`` from the step's loads ``f``
    (``a``: the feedback over its linear threshold, roughly)."""
    rng = np.random.default_rng(seed)
    r = rng.normal(size=n) * 0.1
    C, P, S = (np.empty((steps, n)) for _ in range(3))
    for t in range(steps):
        z = r[None, :] + rng.normal(size=(batch, n))
        p = np.exp(z - z.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        idx = np.argpartition(-z, k - 1, axis=1)[:, :k]
        C[t] = np.bincount(idx.ravel(), minlength=n)
        P[t], S[t] = p.mean(axis=0), z.mean(axis=0)
        r = (1.0 - eta) * r + eta * a * n * (C[t] / (k * batch) - 1.0 / n)
    return C, P, S


class _Timed:
    """Counts the calls of the top-k inclusion Jacobian and their CPU time (on whichever thread
    runs them): the monitor's one cost that lives outside monitor/ (model/inclusion.py)."""

    def __init__(self):
        import moebif.model.field as field

        self.field, self.orig = field, field.inclusion_jacobian
        self.calls, self.seconds = 0, 0.0

        def timed(*args, **kwargs):
            t0 = time.thread_time()
            try:
                return self.orig(*args, **kwargs)
            finally:
                self.calls += 1
                self.seconds += time.thread_time() - t0

        field.inclusion_jacobian = timed

    def close(self):
        self.field.inclusion_jacobian = self.orig


def layer_cost(n, *, k=8, steps=3000, seed=0, step_s=0.0, **options):
    """One LayerMonitor fed ``steps`` steps of :func:`topk_stream` with importance and scores,
    one ``update()`` at a time: process CPU time (every thread: the fits on the worker threads
    count) per step, the calling thread's CPU time per step, the wall time of the slowest
    ``update()``. ``step_s``: seconds slept between updates, a training step whose work is on
    the GPU (0: a tight loop, the worst case for waiting on a fit)."""
    C, P, S = topk_stream(n, k, steps, seed=seed)
    mon = LayerMonitor(n, top_k=k, **options)
    jac = _Timed()
    wall = np.empty(steps)
    try:
        p0, t0 = time.process_time(), time.thread_time()
        for i in range(steps):
            w0 = time.perf_counter()
            mon.update(C[i], P[i], S[i])
            wall[i] = time.perf_counter() - w0
            if step_s:
                time.sleep(step_s)
        t1 = time.thread_time()
        # a fit still running on a worker counts too: wait for it (outside the timed calls)
        for fut in (getattr(mon, "_future", None), getattr(mon, "_modes_future", None)):
            if fut is not None:
                fut.result()
        p1 = time.process_time()
    finally:
        jac.close()
    slow = np.argsort(wall)[-3:][::-1]
    return {
        "n_experts": n,
        "top_k": k,
        "steps": steps,
        "step_s": step_s,
        "refits": len(mon.fits),
        "window": mon.window,
        "cpu_ms_per_step": 1e3 * (p1 - p0) / steps,
        "thread_ms_per_step": 1e3 * (t1 - t0) / steps,
        "max_update_ms": 1e3 * float(wall.max()),
        "median_update_ms": 1e3 * float(np.median(wall)),
        "slowest_steps": [[int(j) + 1, 1e3 * float(wall[j])] for j in slow],
        "jacobian_calls": jac.calls,
        "jacobian_s": jac.seconds,
        "last_regime": mon.fits[-1].regime if mon.fits else None,
    }


def diagnose_cost(*, n=64, k=8, steps=3000, layers=2, folder=None):
    """``moebif diagnose`` on a ``layers``-layer log of ``steps`` steps (JSONL with importance and
    scores, top-k): wall and process CPU seconds of the whole command (read, monitor, figure)."""
    import contextlib
    import io
    import tempfile

    from moebif.cli import main as cli
    from moebif.monitor.logs import write_log

    folder = Path(folder or tempfile.mkdtemp(prefix="bench_monitor_cost_"))
    streams = {str(j): topk_stream(n, k, steps, seed=100 + j) for j in range(layers)}
    log = folder / "log.jsonl"
    write_log(
        log,
        np.arange(steps),
        {j: c for j, (c, _, _) in streams.items()},
        importance={j: p for j, (_, p, _) in streams.items()},
        scores={j: s for j, (_, _, s) in streams.items()},
        top_k=k,
    )
    jac = _Timed()
    try:
        w0, p0 = time.perf_counter(), time.process_time()
        with contextlib.redirect_stdout(io.StringIO()):
            rc = cli(["diagnose", str(log), "--out", str(folder / "out"), "--json"])
        wall, cpu = time.perf_counter() - w0, time.process_time() - p0
    finally:
        jac.close()
    return {
        "n_experts": n,
        "top_k": k,
        "steps": steps,
        "layers": layers,
        "exit_code": rc,
        "wall_s": wall,
        "cpu_s": cpu,
        "jacobian_calls": jac.calls,
        "jacobian_s": jac.seconds,
        "log": str(log),
    }


def cost(json_path=None, *, quick=False, steps=None, Ns=(64, 256)) -> int:
    """LayerMonitor's cost per step and its longest ``update()`` at N = 64 and 256 (top-8, with
    importance and scores), and ``moebif diagnose`` on a 2-layer log; table, checks, JSON."""
    from _report import Report

    steps = steps or (600 if quick else 3000)
    report = Report(
        "bench_monitor_cost",
        f"LayerMonitor cost, top-8 with importance and scores, {steps} steps"
        + (" [quick: not the acceptance run]" if quick else ""),
        json_path=json_path,
    )
    load0 = os.getloadavg()
    rows = []
    for n in Ns:
        c = layer_cost(n, steps=steps)
        report.data[f"layer_N{n}"] = c
        rows.append(
            [
                f"LayerMonitor N={n} k=8 ({c['refits']} refits, window {c['window']})",
                c["cpu_ms_per_step"],
                c["thread_ms_per_step"],
                c["max_update_ms"],
                f"{c['jacobian_calls']} / {c['jacobian_s']:.1f} s",
            ]
        )
        report.check(
            f"N={n}: CPU ms per step (all threads)",
            c["cpu_ms_per_step"],
            COST_TARGETS["cpu_ms_per_step"],
            at_least=False,
            unit=" ms",
        )
        report.check(
            f"N={n}: slowest update() wall",
            c["max_update_ms"],
            COST_TARGETS["max_update_ms"],
            at_least=False,
            unit=" ms",
        )
    # a training step of 5 ms (its work on the GPU, the host thread idle): the fits finish
    # within the refit lag and no step waits (information, no target)
    c = layer_cost(max(Ns), steps=steps, step_s=0.005)
    report.data[f"layer_N{max(Ns)}_5ms_steps"] = c
    rows.append(
        [
            f"  same, N={max(Ns)}, a 5 ms training step between updates",
            c["cpu_ms_per_step"],
            c["thread_ms_per_step"],
            c["max_update_ms"],
            f"{c['jacobian_calls']} / {c['jacobian_s']:.1f} s",
        ]
    )
    d = diagnose_cost(steps=steps)
    report.data["diagnose"] = d
    rows.append(
        [
            f"moebif diagnose, {d['layers']} layers x {d['steps']} steps, N={d['n_experts']}",
            1e3 * d["cpu_s"] / (d["layers"] * d["steps"]),
            None,
            1e3 * d["wall_s"],
            f"{d['jacobian_calls']} / {d['jacobian_s']:.1f} s",
        ]
    )
    report.require("diagnose exit code 0", d["exit_code"] == 0)
    report.check(
        "diagnose wall", d["wall_s"], COST_TARGETS["diagnose_s"], at_least=False, unit=" s"
    )
    load1 = os.getloadavg()
    report.data["load_average"] = [load0, load1]
    report.table(
        f"load average {load0[0]:.1f} -> {load1[0]:.1f} on {os.cpu_count()} cores (CPU times: "
        "process_time, every thread; the wall of one update() is what a training step waits)",
        [
            ("measurement", "<52"),
            ("CPU ms/step", ">11.3f"),
            ("caller ms/step", ">14.3f"),
            ("max wall ms", ">11.1f"),
            ("inclusion Jacobian", ">18"),
        ],
        rows,
    )
    report.note(
        "targets: <= 1 ms CPU per step and layer (fits included), no update() over 50 ms wall, "
        f"diagnose <= {COST_TARGETS['diagnose_s']:g} s; the diagnose row: CPU ms per step and "
        "layer, the whole command's wall in the 'max wall ms' column"
    )
    return report.finish()


# --------------------------------------------------------------------------------------------
# the router monitor in a training stack (issue 13)

# issue 19: the mean step time with the monitor (refits and the force probes' gradient hooks
# included) at most 1.03x, and no step() call over 50 ms
STACK_TARGETS = {"memory_mb": 20.0, "overhead_ratio": 1.03, "step_call_ms": 50.0}


def _stand_in_model(layers: int, n: int, k: int, tokens: int, seed: int = 0):
    """``layers`` transformers-5-style routers returning ``(logits, weights, indices)`` from a
    fixed pool of outputs (no model compute: what is measured is the monitor)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    pool = []
    for _ in range(16):
        logits = torch.randn(tokens, n, generator=g) * 0.3
        pool.append((logits, torch.ones(tokens, k), torch.topk(logits, k, dim=-1).indices))

    class Router(torch.nn.Module):
        top_k, num_experts, scoring_func = k, n, "softmax"

        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(n, 4))
            self.i = 0

        def forward(self, x):
            self.i = (self.i + 1) % len(pool)
            return pool[self.i]

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = torch.nn.ModuleList(Router() for _ in range(layers))

        def forward(self, x):
            for r in self.layers:
                r(x)

    return Net().train()


def _rss_mb() -> float:
    """Resident set size after handing the allocator's free pages back to the OS (glibc's
    ``malloc_trim``): what the process holds, not the high-water mark of freed temporaries."""
    gc.collect()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def memory_and_log(steps=20_000, layers=48, n=64, k=2, tokens=64, folder=None, importance=False):
    """Memory growth of RouterMonitor over ``steps`` and the size of its capped log."""
    import tempfile
    import tracemalloc

    import torch

    from moebif.monitor.hooks import RouterMonitor

    torch.set_num_threads(1)
    folder = Path(folder or tempfile.mkdtemp(prefix="bench_monitor_"))
    cap, backups = 16 * 2**20, 2
    model = _stand_in_model(layers, n, k, tokens)
    # importance off: with it, each layer's refit (every 64 steps) runs the feedback fit of
    # monitor/feedback.py, ~0.7 s at N = 64 on this machine, so 48 layers x 20,000 steps take
    # hours; its statistics have a fixed size (FeedbackStats), the memory is that of the rest.
    # Tracing starts before the monitor exists, so a buffer it replaces (the window's ring when
    # the automatic window merges blocks) is not counted as growth; the resident set also counts
    # the pages of the preallocated rings as they are first written (at most their size).
    gc.collect()
    tracemalloc.start()
    traced_before = tracemalloc.get_traced_memory()[0]
    mon = RouterMonitor(
        model,
        log=folder / "log.jsonl",
        log_max_bytes=cap,
        log_backups=backups,
        importance=importance,
    )
    x = torch.zeros(1)
    t0 = time.perf_counter()
    model(x)
    mon.step()
    gc.collect()
    traced0, rss0 = tracemalloc.get_traced_memory()[0], _rss_mb()
    footprint = (traced0 - traced_before) / 2**20
    samples = []
    for i in range(1, steps):
        model(x)
        mon.step()
        if i % 2000 == 0 or i == steps - 1:
            gc.collect()
            rss = _rss_mb() - rss0
            samples.append((i, (tracemalloc.get_traced_memory()[0] - traced0) / 2**20, rss))
            print(
                f"  memory: step {i:6d}: traced +{samples[-1][1]:.2f} MB, "
                f"RSS +{rss:.1f} MB [{time.perf_counter() - t0:.0f} s]",
                flush=True,
            )
    gc.collect()
    traced = (tracemalloc.get_traced_memory()[0] - traced0) / 2**20
    tracemalloc.stop()
    rss = _rss_mb() - rss0
    mon.close()
    files = sorted(folder.glob("log.jsonl*"))
    disk = sum(f.stat().st_size for f in files)
    from moebif.monitor import read_log

    try:
        back = read_log(folder / "log.jsonl").layers["layers.0"]
        read_back = True
    except Exception as e:  # the check reports it
        print(f"  read_log on the rotated log failed: {e}", file=sys.stderr)
        back, read_back = None, False
    kept = 1 if back is None else len(back.steps)
    bytes_per_step = disk / max(1, kept)
    return {
        "steps": steps,
        "layers": layers,
        "n_experts": n,
        "top_k": k,
        "importance": importance,
        "footprint_after_first_step_mb": footprint,
        "traced_growth_mb": traced,
        "rss_growth_mb": rss,
        "traced_samples": samples,
        "log_max_bytes": cap,
        "log_backups": backups,
        "log_files": len(files),
        "log_bytes_on_disk": disk,
        "log_cap_bytes": (backups + 1) * cap,
        "log_bytes_per_step": bytes_per_step,
        "log_uncapped_estimate_bytes": bytes_per_step * steps,
        "log_read_back": read_back,
        "log_steps_kept": None if back is None else [int(back.steps[0]), int(back.steps[-1])],
        "seconds": time.perf_counter() - t0,
    }


def overhead(pairs=200, batch=8, seq=64, seed=0, folder=None):
    """Median training-step time with the monitor over without, interleaved in one process."""
    import tempfile

    import torch
    from transformers import MixtralConfig, MixtralForCausalLM

    from moebif.monitor.hooks import RouterMonitor
    from moebif.monitor.tiny import text_batches

    torch.set_num_threads(1)
    folder = Path(folder or tempfile.mkdtemp(prefix="bench_overhead_"))
    torch.manual_seed(seed)
    cfg = MixtralConfig(
        vocab_size=512,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        num_local_experts=16,
        num_experts_per_tok=2,
        max_position_embeddings=seq,
        output_router_logits=True,
        router_aux_loss_coef=0.02,
    )
    model = MixtralForCausalLM(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    data = list(text_batches(2 * pairs + 8, batch, seq, seed=seed))
    it = iter(data)

    def train_step():
        x = next(it)
        loss = model(input_ids=x, labels=x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()

    for _ in range(3):  # warm-up
        train_step()
    mon = RouterMonitor(model, log=folder / "log.jsonl")
    assert len(mon.routers) == 4 and all(m.n_experts == 16 for m in mon.monitors.values())
    # adjacent pairs of steps, one with the monitor (hooks attached, step() called, log
    # written) and one without (hooks detached), in alternating order: slow drifts of the
    # shared machine's load cancel in each pair
    times = {"without": [], "with": []}
    step_calls = []
    for p in range(pairs):
        for kind in ("with", "without") if p % 2 == 0 else ("without", "with"):
            if kind == "with":
                mon.attach()
            t = time.perf_counter()
            train_step()
            if kind == "with":
                t1 = time.perf_counter()
                mon.step()
                step_calls.append(time.perf_counter() - t1)
            times[kind].append(time.perf_counter() - t)
            mon.detach()
    mon.close()
    probes = sum(r.probe is not None for r in mon._routes.values())
    med = {k: float(np.median(v)) for k, v in times.items()}
    mean = {k: float(np.mean(v)) for k, v in times.items()}
    # direct estimate, independent of the machine's noise between steps: the time of the
    # routers' forward calls with and without the hooks (replayed on captured inputs, 200
    # times, interleaved), plus the time of step() itself
    from moebif.monitor.hooks import find_routers

    inputs = {}
    handles = [
        m.register_forward_pre_hook(lambda mod, a, name=name: inputs.setdefault(name, a))
        for name, m in find_routers(model).items()
    ]
    train_step()
    for h in handles:
        h.remove()
    routers = find_routers(model)
    hook_cost, step_cost = [], []
    for _ in range(20):
        t = time.perf_counter()
        for _ in range(10):
            for name, m in routers.items():
                m(*inputs[name])
        bare = time.perf_counter() - t
        mon = RouterMonitor(model, log=folder / "log2.jsonl")
        t = time.perf_counter()
        for _ in range(10):
            for name, m in routers.items():
                m(*inputs[name])
        hooked = time.perf_counter() - t
        t = time.perf_counter()
        mon.step()
        step_cost.append(time.perf_counter() - t)
        mon.close()
        hook_cost.append((hooked - bare) / 10)  # per training step (one call per router)
    direct = float(np.median(hook_cost) + np.median(step_cost))
    paired = np.asarray(times["with"]) / np.asarray(times["without"])
    return {
        "model": "MixtralForCausalLM, 4 layers, 16 experts, top-2, hidden 128",
        "batch": [batch, seq],
        "threads": 1,
        "steps_each": len(times["with"]),
        "median_step_without_s": med["without"],
        "median_step_with_s": med["with"],
        "ratio": mean["with"] / mean["without"],
        "ratio_median": med["with"] / med["without"],
        "mean_step_without_s": mean["without"],
        "mean_step_with_s": mean["with"],
        "max_step_call_s": float(np.max(step_calls)),
        "force_probes": probes,
        "ratio_pairs_median": float(np.median(paired)),
        "hooks_s_per_step": float(np.median(hook_cost)),
        "step_call_s": float(np.median(step_cost)),
        "ratio_direct": 1.0 + direct / med["without"],
        "load_average": os.getloadavg(),
    }


def stack(
    which=("memory", "logsize", "overhead"), json_path=None, *, quick=False, steps=None, pairs=None
) -> int:
    """Run the stack measurements, print the table and the checks, write JSON
    (:class:`_report.Report`); 1 if a target is missed. ``quick``: 2,000 steps and 40 pairs (a
    smoke run of the benchmark itself, not the acceptance numbers)."""
    from _report import Report

    report = Report(
        "bench_monitor_stack",
        "RouterMonitor in a training stack (issue 13): memory, capped log, hook overhead"
        + (" [quick: not the acceptance run]" if quick else ""),
        json_path=json_path,
    )
    load0 = os.getloadavg()
    rows = []
    if "memory" in which or "logsize" in which:
        m = memory_and_log(steps=steps or (2_000 if quick else 20_000))
        growth = max(m["traced_growth_mb"], m["rss_growth_mb"])
        per_step = 1024 * growth / max(1, m["steps"] - 1)
        rows.append(
            [
                f"memory growth, {m['steps']} steps, {m['layers']} x {m['n_experts']}",
                f"traced +{m['traced_growth_mb']:.2f} MB, RSS +{m['rss_growth_mb']:.1f} MB "
                f"({per_step:.2f} KB/step; {m['footprint_after_first_step_mb']:.1f} MB held "
                "after the first step)",
                f"< {STACK_TARGETS['memory_mb']:g} MB",
                "ok" if growth < STACK_TARGETS["memory_mb"] else "NOT MET",
            ]
        )
        settled = [x for x in m["traced_samples"] if x[0] >= 2000]
        if len(settled) >= 2:
            (i0, t0, r0), (i1, t1, r1) = settled[0], settled[-1]
            rows.append(
                [
                    f"  from step {i0} (automatic window settled) to {i1}",
                    f"traced +{t1 - t0:.2f} MB, RSS +{r1 - r0:.1f} MB (the RSS from the first "
                    "step includes the first write of each layer's preallocated window ring)",
                    "(info)",
                    "",
                ]
            )
        rows.append(
            [
                f"log on disk, cap {m['log_max_bytes'] / 2**20:.0f} MB x {m['log_backups'] + 1}",
                f"{m['log_bytes_on_disk'] / 2**20:.1f} MB in {m['log_files']} files, "
                f"{m['log_bytes_per_step'] / 1024:.1f} KB/step (uncapped "
                f"~{m['log_uncapped_estimate_bytes'] / 2**20:.0f} MB)",
                f"<= {m['log_cap_bytes'] / 2**20:.0f} MB",
                "ok" if m["log_bytes_on_disk"] <= m["log_cap_bytes"] else "NOT MET",
            ]
        )
        # as ratios to the target (the report's checks): growth / target < 1
        report.check(
            "memory growth / 20 MB", growth / STACK_TARGETS["memory_mb"], 1.0, at_least=False
        )
        report.check(
            "log bytes on disk / cap",
            m["log_bytes_on_disk"] / m["log_cap_bytes"],
            1.0,
            at_least=False,
        )
        report.require("rotated log read back by read_log", m["log_read_back"])
        report.data["memory"] = m
    if "overhead" in which:
        o = overhead(pairs=pairs or (40 if quick else 200))
        rows.append(
            [
                f"hooks (forces on {o['force_probes']}) + step(), 4 x 16 experts, CPU",
                f"{o['ratio']:.4f}x mean (step {o['mean_step_without_s'] * 1e3:.1f} -> "
                f"{o['mean_step_with_s'] * 1e3:.1f} ms; median {o['ratio_median']:.4f}x, "
                f"pairs {o['ratio_pairs_median']:.4f}x)",
                f"<= {STACK_TARGETS['overhead_ratio']:g}x",
                "ok" if o["ratio"] <= STACK_TARGETS["overhead_ratio"] else "NOT MET",
            ]
        )
        rows.append(
            [
                "  direct: hooks + step() / bare step",
                f"{o['ratio_direct']:.4f}x (hooks {o['hooks_s_per_step'] * 1e6:.0f} us + "
                f"step() {o['step_call_s'] * 1e6:.0f} us per step)",
                f"<= {STACK_TARGETS['overhead_ratio']:g}x",
                "ok" if o["ratio_direct"] <= STACK_TARGETS["overhead_ratio"] else "NOT MET",
            ]
        )
        rows.append(
            [
                "  slowest step() call",
                f"{o['max_step_call_s'] * 1e3:.1f} ms",
                f"<= {STACK_TARGETS['step_call_ms']:g} ms",
                "ok" if o["max_step_call_s"] * 1e3 <= STACK_TARGETS["step_call_ms"] else "NOT MET",
            ]
        )
        report.check(
            "mean step time with / without the monitor",
            o["ratio"],
            STACK_TARGETS["overhead_ratio"],
            at_least=False,
        )
        report.check(
            "slowest step() / 50 ms",
            o["max_step_call_s"] * 1e3 / STACK_TARGETS["step_call_ms"],
            1.0,
            at_least=False,
        )
        report.data["overhead"] = o
    load1 = os.getloadavg()
    report.table(
        f"load average {load0[0]:.1f} -> {load1[0]:.1f} on {os.cpu_count()} cores"
        + (" (shared machine: the times are noisy, the interleaved ratio much less)"),
        [("measurement", "<56"), ("value", "<90"), ("target", "<10"), ("verdict", "<8")],
        rows,
    )
    return report.finish()


def main(argv=None) -> int:
    import argparse

    from _report import arguments

    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument(
        "what",
        nargs="?",
        default="stack",
        choices=(
            "estimation",
            "ramp",
            "metastable",
            "speed",
            "stack",
            "memory",
            "logsize",
            "overhead",
            "cost",
            "all",
        ),
        help="which measurements (default: stack, the ones with targets)",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run of stack")
    parser.add_argument(
        "--steps", type=int, default=None, help="memory: steps (20000); cost: steps (3000)"
    )
    parser.add_argument("--pairs", type=int, default=None, help="overhead: step pairs (200)")
    parser.add_argument(
        "--experts", default="64,256", help="cost: the N of the LayerMonitor rows (64,256)"
    )
    args = arguments(__doc__, argv, parser)
    what = args.what
    if what in ("estimation", "all"):
        estimation()
    if what in ("speed", "all"):
        speed()
    if what in ("ramp", "all"):
        # windows for drift detection (docs/monitoring.md): 200 units for N = 2, 100 for N = 8;
        # seeds+0 were used to choose the rule, seeds+1000 are fresh
        for seed in (0, 1000):
            ramp(window_units=200.0, Ns=(2,), seed=seed)
            ramp(window_units=100.0, Ns=(8,), seed=seed)
    if what in ("metastable", "all"):
        metastable()
    if what == "cost":
        Ns = tuple(int(v) for v in args.experts.split(","))
        return cost(args.json, quick=args.quick, steps=args.steps, Ns=Ns)
    parts = {"stack": ("memory", "logsize", "overhead"), "all": ("memory", "logsize", "overhead")}
    parts.update({k: (k,) for k in ("memory", "logsize", "overhead")})
    if what in parts:
        return stack(parts[what], args.json, quick=args.quick, steps=args.steps, pairs=args.pairs)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
