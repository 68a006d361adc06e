"""Acceptance of the monitor's estimators on simulated logs (issue 12), as tables.

    python benchmarks/bench_estimator.py [loads|logits|all] [--runs R] [--quick] [--json PATH]

**loads**: the Whittle fit of the loads (:func:`moebif.monitor.fit_whittle`) at the recommended
window, on stationary logs of the N-expert batch router with top-1 and top-2 routing, at the
uniform state and at a heterogeneous balanced state (random drifts ``b``), for the stability
ratio of the current state ``kappa`` in {0.5, 0.75, 0.9}. The truth ``kappa = A mu_max`` is that
of the deterministic balanced state (:mod:`moebif.model.heterogeneous`). Targets per cell:
median ``|kappa_hat - kappa| <= 0.03``, robust sd (1.4826 MAD) ``<= 0.05``, and at most 1 in 24
runs raising a false ``metastable`` alarm (false: the drifts give no stable collapsed state at
that feedback). Replicas that escape to collapse (metastable cells) are not stationary logs and
are left out, and counted.

**logits**: the feedback measured from the router's logits (:mod:`moebif.monitor.feedback`)
on the top-1 router with its scores recorded: ``g = eta a / T`` and kappa, with the coverage of
the 95% intervals.

Simulated logs: gamma = T = 1, eta = 0.01 (one unit of 1/(eta gamma) is 100 steps), B = 512,
fixed seeds. Prints the tables, writes them as JSON (default ``bench-results/estimator.json``,
``--json PATH``), exits 1 if a target is missed. ``--quick``: N = 4 and 8 only (and with
``--runs`` small, a check that it works).
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings

import numpy as np
from _report import Report, arguments

from moebif import RouterParams, simulate_batch_router, simulate_topk_router
from moebif.model.field import softmax
from moebif.model.heterogeneous import (
    balanced_equilibrium,
    collapse_feedback,
    feedback_for_kappa,
    state_of_profile,
)
from moebif.model.inclusion import inclusion_probabilities
from moebif.model.thresholds import thresholds
from moebif.monitor import LayerMonitor, default_block, fit_whittle, recommended_window
from moebif.monitor.feedback import FeedbackStats, fit_feedback
from moebif.monitor.whittle import load_modes, stationary_profile

ETA, B = 0.01, 512


def _loads(z, k):
    """The loads of scores ``z`` (units T): the inclusion probabilities over k."""
    return softmax(z, 1.0) if k == 1 else inclusion_probabilities(z, 1.0, k) / k


def drifts(n: int, k: int, kappa: float, seed: int) -> tuple[np.ndarray, float]:
    """Random drifts (units gamma T) of a realistic spread whose balanced state reaches kappa,
    and the feedback A at which it has that kappa (the spread is halved until it does)."""
    rng = np.random.default_rng(seed)
    beta = rng.normal(size=n)
    beta -= beta.mean()
    sd = 0.6
    while sd >= 0.01:  # near the fold of the balanced branch only a small spread reaches kappa
        A = feedback_for_kappa(sd * beta, kappa, k)
        if math.isfinite(A):
            # the state the logs start from must have that kappa (just below a fold of the
            # balanced branch the continuation can land past it)
            f = _loads(balanced_equilibrium(A, sd * beta, k), k)
            if abs(A * state_of_profile(f, k).mu_max - kappa) < 0.01:
                return sd * beta, A
        sd /= 2
    raise RuntimeError(f"no drift spread (down to sd 0.01) reaches kappa = {kappa}")


def cell(n, k, kappa, hetero, runs, seed, units_factor=1.0):
    """One cell: estimates of kappa on ``runs`` stationary logs."""
    if hetero:
        beta, A = drifts(n, k, kappa, seed)
    else:
        beta = np.zeros(n)
        A = kappa * thresholds(n, k).linear
    z = balanced_equilibrium(A, beta, k)
    f_star = _loads(z, k)
    kappa_true = A * state_of_profile(f_star, k).mu_max if hetero else kappa
    # a stable collapsed state at this feedback? then a metastable alarm is right
    if n >= 3:
        if hetero:
            a_sn, _ = collapse_feedback(beta, k, rtol=1e-4)
        else:
            a_sn = thresholds(n, k).collapse
        metastable = A >= a_sn
    else:
        metastable = False
    W = int(recommended_window(n, ETA) * units_factor)
    block = default_block(W, n)
    burn = int(50 / ETA)
    p = RouterParams(a=A, gamma=1.0, T=1.0, n_experts=n)
    run = simulate_topk_router(
        p,
        batch=B,
        eta=ETA,
        steps=burn + W,
        runs=runs,
        top_k=k,
        seed=seed,
        b=beta,
        r0=z,
        record_every=1,
    )
    loads = run.loads[:, burn:]
    unit = int(1 / ETA)
    K = (loads.shape[1] // unit) * unit
    smooth = loads[:, :K].reshape(runs, -1, unit, n).mean(axis=2)
    excess = (smooth.max(axis=2) - 1.0 / n) / (1.0 / k - 1.0 / n)
    ref = (f_star.max() - 1.0 / n) / (1.0 / k - 1.0 / n)
    escaped = excess.max(axis=1) > ref + 0.5 * (1.0 - ref)
    ks, false_meta = [], 0
    for r in np.nonzero(~escaped)[0]:
        M = loads.shape[1] // block
        bm = loads[r, : M * block].reshape(M, block, n).mean(axis=1)
        fit = fit_whittle(bm, block=block, n_experts=n, top_k=k, profile=stationary_profile(bm))
        ks.append(fit.kappa)
        mon = LayerMonitor(n, top_k=k, window=W)
        mon.update_many(np.rint(loads[r] * k * B))
        if not metastable and any(a.kind == "metastable" for a in mon.alarms):
            false_meta += 1
    err = np.array(ks) - kappa_true
    med = float(np.median(np.abs(err))) if err.size else math.nan
    rsd = float(1.4826 * np.median(np.abs(err - np.median(err)))) if err.size else math.nan
    return {
        "N": n,
        "top_k": k,
        "profile": "heterogeneous" if hetero else "uniform",
        "kappa": round(float(kappa_true), 4),
        "max_load": float(f_star.max()),
        "min_load": float(f_star.min()),
        "metastable": bool(metastable),
        "window_units": W * ETA,
        "runs": int((~escaped).sum()),
        "escaped": int(escaped.sum()),
        "median_abs_err": med,
        "robust_sd": rsd,
        "false_metastable": false_meta,
        "ok": bool(err.size and med <= 0.03 and rsd <= 0.05 and false_meta <= runs / 24),
    }


def loads_table(runs=24, quick=False):
    rows = []
    Ns = (4, 8) if quick else (4, 8, 64)
    for n in Ns:
        for k in (1, 2):
            for hetero in (False, True):
                for kappa in (0.5, 0.75, 0.9):
                    t0 = time.perf_counter()
                    row = cell(n, k, kappa, hetero, runs, seed=1000 * n + 100 * k + int(kappa * 40))
                    row["seconds"] = round(time.perf_counter() - t0, 1)
                    rows.append(row)
                    print(
                        f"N={n:3d} k={k} {row['profile']:13s} kappa={row['kappa']:.3f} "
                        f"(max load {row['max_load']:.3f}) window {row['window_units']:.0f} u: "
                        f"runs {row['runs']:2d} (+{row['escaped']} escaped) median|err| "
                        f"{row['median_abs_err']:.3f} sd {row['robust_sd']:.3f} false metastable "
                        f"{row['false_metastable']} {'ok' if row['ok'] else 'BELOW TARGET'} "
                        f"({row['seconds']} s)",
                        flush=True,
                    )
    return rows


def logits_table(runs=12):
    rows = []
    for n, hetero in ((8, False), (8, True), (64, True)):
        for kappa in (0.5, 0.9):
            beta, A = drifts(n, 1, kappa, 7 * n) if hetero else (np.zeros(n), kappa * n)
            z = balanced_equilibrium(A, beta, 1)
            kt = A * state_of_profile(softmax(z, 1.0), 1).mu_max if hetero else kappa
            W = 20000
            sim = simulate_batch_router(
                RouterParams(a=A, gamma=1.0, T=1.0, n_experts=n),
                batch=B,
                eta=ETA,
                steps=W,
                runs=runs,
                seed=31 + n,
                b=beta,
                r0=z,
                record_scores=True,
            )
            g_true = ETA * A
            gs, kaps, cover = [], [], 0
            for r in range(runs):
                f, S = sim.u_hat[r, :W], sim.scores[r, :W]
                P = softmax(S, 1.0)
                st = FeedbackStats(n, max_lag=256, segments=8, tau=W / 2)
                for t in range(W):
                    st.push(f[t], P[t], S[t])
                    if (t + 1) % (W // 8) == 0:
                        st.close_segment()
                mu, V, _ = load_modes(stationary_profile(f), 1)
                fb = fit_feedback(st, (mu, V))
                gs.append(fb.feedback)
                kaps.append(fb.kappa)
                cover += fb.feedback_lo <= g_true <= fb.feedback_hi
            gs, kaps = np.array(gs), np.array(kaps)
            row = {
                "N": n,
                "profile": "heterogeneous" if hetero else "uniform",
                "kappa": float(kt),
                "g_true": g_true,
                "g_median": float(np.median(gs)),
                "g_rel_err": float(np.median(np.abs(gs / g_true - 1))),
                "kappa_median_abs_err": float(np.median(np.abs(kaps - kt))),
                "g_coverage": cover / runs,
            }
            row["ok"] = bool(row["g_rel_err"] <= 0.05 and row["kappa_median_abs_err"] <= 0.05)
            rows.append(row)
            print(
                f"logits N={n} {row['profile']:13s} kappa={kt:.3f}: g {g_true:.4f} median "
                f"{row['g_median']:.4f} (rel err {row['g_rel_err']:.3f}), median|kappa err| "
                f"{row['kappa_median_abs_err']:.3f}, 95% coverage of g {row['g_coverage']:.2f} "
                f"{'ok' if row['ok'] else 'BELOW TARGET'}",
                flush=True,
            )
    return rows


LOADS_COLUMNS = [
    ("N", ">3"),
    ("k", ">2"),
    ("profile", "<13"),
    ("kappa", ">6.3f"),
    ("max load", ">8.3f"),
    ("window u", ">8.0f"),
    ("runs", ">4"),
    ("escaped", ">7"),
    ("median|err|", ">11.3f"),
    ("robust sd", ">9.3f"),
    ("false meta", ">10"),
    ("ok", ">3"),
]
LOADS_KEYS = [
    "N",
    "top_k",
    "profile",
    "kappa",
    "max_load",
    "window_units",
    "runs",
    "escaped",
    "median_abs_err",
    "robust_sd",
    "false_metastable",
    "ok",
]
LOGITS_COLUMNS = [
    ("N", ">3"),
    ("profile", "<13"),
    ("kappa", ">6.3f"),
    ("g true", ">8.4f"),
    ("g median", ">8.4f"),
    ("g rel err", ">9.3f"),
    ("median|kappa err|", ">17.3f"),
    ("95% coverage g", ">14.2f"),
    ("ok", ">3"),
]
LOGITS_KEYS = [
    "N",
    "profile",
    "kappa",
    "g_true",
    "g_median",
    "g_rel_err",
    "kappa_median_abs_err",
    "g_coverage",
    "ok",
]


def _row(r, keys):
    return [("yes" if r[k] else "NO") if k == "ok" else r[k] for k in keys]


def _section(report, name, title, columns, keys, rows) -> None:
    """One table of cells, and the check that every cell met its targets."""
    report.table(f"{name}: {title}", columns, [_row(r, keys) for r in rows])
    n_ok = sum(r["ok"] for r in rows)
    report.require(f"{name}: every cell on target ({n_ok}/{len(rows)})", n_ok == len(rows))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", nargs="?", default="all", choices=("loads", "logits", "all"))
    ap.add_argument("--runs", type=int, default=24)
    ap.add_argument("--quick", action="store_true", help="N = 4 and 8 only")
    a = arguments(__doc__, argv, ap)
    if a.runs < 2:
        ap.error("--runs: must be >= 2")
    warnings.simplefilter("ignore", RuntimeWarning)
    report = Report(
        "estimator",
        f"monitor estimators on simulated logs (gamma = T = 1, eta = {ETA}, B = {B}); "
        f"{a.runs} runs a cell{' (quick: N = 4, 8)' if a.quick else ''}",
        json_path=a.json,
    )
    if a.what in ("loads", "all"):
        _section(
            report,
            "loads",
            "Whittle fit at the recommended window (targets: median|err| <= 0.03, robust sd "
            "<= 0.05, false metastable <= runs/24)",
            LOADS_COLUMNS,
            LOADS_KEYS,
            loads_table(a.runs, a.quick),
        )
    if a.what in ("logits", "all"):
        _section(
            report,
            "logits",
            "feedback from the router's logits (targets: g rel err <= 0.05, median|kappa err| "
            "<= 0.05)",
            LOGITS_COLUMNS,
            LOGITS_KEYS,
            logits_table(max(4, a.runs // 2)),
        )
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
