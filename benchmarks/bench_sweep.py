"""Scaling of ``moebif sweep`` across executors, side by side in one run.

The workload is a two-expert collapse map (batch router, 12 x 10 cells of (T, gamma), 32
replicas a cell) sized to about ``WORK`` seconds of single-core work by the sweep's own cost
estimate, in tasks of about one second (two cells). It runs three times into fresh stores:

- Dask, a ``LocalCluster`` of 1 worker process (one thread);
- Dask, a ``LocalCluster`` of 2 worker processes;
- the local-process executor (``ProcessPoolExecutor``) with 2 processes.

Each executor is started and warmed up (kernels loaded in every worker) before its sweep is
timed, as a user's cluster is already running; the time is the whole :func:`run_sweep` call,
store creation and every region write included. The three stores are checked to hold the same
values bit for bit.

Targets: 2 Dask workers against 1 at least 1.8x; Dask within 10% of the local processes at
the same worker count (Dask time <= 1.1x). Prints a table, writes
``bench-results/bench_sweep.json``, exits 1 below target. Run on a quiet machine: other jobs on
the cores show up directly in these ratios. Run: ``python benchmarks/bench_sweep.py [WORK]``.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import xarray as xr

from moebif.sweep import DaskExecutor, LocalProcesses, parse_spec, run_sweep

WORK = 60.0  # seconds of single-core work (cost estimate)
TARGETS = {"dask 2 / dask 1": 1.8, "processes / dask (2 workers)": 1 / 1.1}
CELLS = (12, 10)
REPLICAS = 32


def _spec(work: float):
    cell_seconds = work / (CELLS[0] * CELLS[1])
    steps = round(cell_seconds * 1.2e7 / REPLICAS)  # the batch router's cost estimate
    doc = {
        "study": {"simulator": "batch_router", "name": "bench: two-expert collapse map"},
        "params": {"a": 3.0, "batch": 512, "eta": 0.01, "steps": steps},
        "axes": {
            "T": {"start": 0.3, "stop": 5.0, "num": CELLS[0], "log": True},
            "gamma": {"start": 0.3, "stop": 5.0, "num": CELLS[1], "log": True},
        },
        "run": {
            "replicas": REPLICAS,
            "seed": 0,
            "quantities": ["collapsed", "max_load", "final_loads"],
            "task_seconds": 1.0,
        },
    }
    return parse_spec(doc)


def _time(spec, executor, store: Path) -> float:
    executor.warm_up()
    t0 = time.perf_counter()
    rep = run_sweep(spec, store, executor=executor)
    seconds = time.perf_counter() - t0
    assert len(rep.tasks_run) == rep.tasks
    return seconds


def main() -> int:
    work = float(sys.argv[1]) if len(sys.argv) > 1 else WORK
    spec = _spec(work)
    tmp = Path(tempfile.mkdtemp(prefix="bench-sweep-"))
    rows = {}
    try:
        runs = [
            ("dask, 1 worker", 1, lambda: DaskExecutor(local_workers=1, dashboard_address=None)),
            ("dask, 2 workers", 2, lambda: DaskExecutor(local_workers=2, dashboard_address=None)),
            ("local processes, 2", 2, lambda: LocalProcesses(2)),
        ]
        for name, workers, make in runs:
            with make() as ex:
                rows[name] = (workers, _time(spec, ex, tmp / f"{len(rows)}.zarr"))
        stores = [xr.open_zarr(tmp / f"{i}.zarr").load().drop_attrs() for i in range(3)]
        identical = all(s.identical(stores[0]) for s in stores[1:])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    d1, d2, p2 = (rows[k][1] for k in ("dask, 1 worker", "dask, 2 workers", "local processes, 2"))
    checks = {"dask 2 / dask 1": d1 / d2, "processes / dask (2 workers)": p2 / d2}
    chunks = spec.chunks()
    tasks = -(-CELLS[0] // chunks[0]) * -(-CELLS[1] // chunks[1])
    print(
        f"sweep benchmark: {spec.n_cells} cells x {REPLICAS} replicas x {spec.params['steps']} "
        f"steps (two experts, B=512), {tasks} tasks of {chunks} cells; estimated "
        f"{spec.cell_cost().sum():.0f} core-seconds; {os.cpu_count()} cores, "
        f"python {platform.python_version()}"
    )
    header = f"{'executor':<22} {'workers':>7} {'seconds':>9} {'speed-up vs dask 1':>19}"
    print(header)
    print("-" * len(header))
    for name, (workers, sec) in rows.items():
        print(f"{name:<22} {workers:>7} {sec:>9.2f} {d1 / sec:>18.2f}x")
    print("-" * len(header))
    ok = identical
    for label, value in checks.items():
        target = TARGETS[label]
        good = value >= target
        ok &= good
        verdict = "ok" if good else "BELOW TARGET"
        print(f"{label:<32} {value:>6.3f}x   target >= {target:.3f}x   {verdict}")
    print(f"stores identical bit for bit: {identical}")
    out = Path("bench-results")
    out.mkdir(exist_ok=True)
    record = {
        "benchmark": "sweep",
        "work_estimate_seconds": float(spec.cell_cost().sum()),
        "cells": spec.n_cells,
        "tasks": tasks,
        "seconds": {k: v[1] for k, v in rows.items()},
        "ratios": checks,
        "targets": TARGETS,
        "identical": identical,
        "ok": bool(ok),
        "cpu_count": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    (out / "bench_sweep.json").write_text(json.dumps(record, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
