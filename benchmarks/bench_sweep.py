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
``bench-results/sweep.json`` (``--json PATH``), exits 1 below target. Run on a quiet machine:
other jobs on the cores show up directly in these ratios (the load average is printed). Run:
``python benchmarks/bench_sweep.py [--work SECONDS] [--quick] [--json PATH]``; ``--quick`` sizes
the workload to 6 s (checks that it works; its ratios are dominated by start-up costs).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import xarray as xr
from _report import Report, arguments

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


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--work", type=float, default=WORK, help="core-seconds of work")
    parser.add_argument("--quick", action="store_true", help="a 6 s workload")
    args = arguments(__doc__, argv, parser)
    work = 6.0 if args.quick else args.work
    if not work > 0:
        parser.error("--work: must be > 0")
    spec = _spec(work)
    load0 = os.getloadavg()[0]
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
    load1 = os.getloadavg()[0]

    d1, d2, p2 = (rows[k][1] for k in ("dask, 1 worker", "dask, 2 workers", "local processes, 2"))
    chunks = spec.chunks()
    tasks = -(-CELLS[0] // chunks[0]) * -(-CELLS[1] // chunks[1])
    report = Report(
        "sweep",
        f"sweep benchmark: {spec.n_cells} cells x {REPLICAS} replicas x {spec.params['steps']} "
        f"steps (two experts, B=512), {tasks} tasks of {chunks} cells; estimated "
        f"{spec.cell_cost().sum():.0f} core-seconds; {os.cpu_count()} cores; load average "
        f"{load0:.2f} before, {load1:.2f} after",
        json_path=args.json,
    )
    report.table(
        "",
        [("executor", "<22"), ("workers", ">7"), ("seconds", ">9.2f"), ("vs dask 1", ">10.2f")],
        [[name, workers, sec, d1 / sec] for name, (workers, sec) in rows.items()],
    )
    report.check("dask 2 / dask 1", d1 / d2, TARGETS["dask 2 / dask 1"])
    report.check("processes / dask (2 workers)", p2 / d2, TARGETS["processes / dask (2 workers)"])
    report.require("stores identical bit for bit", identical)
    if args.quick:
        report.note("quick mode: a 6 s workload, its ratios are dominated by start-up costs")
    if max(load0, load1) > 1.5:
        report.note("other jobs were running (load average > 1.5): these ratios are unreliable")
    return report.finish()


if __name__ == "__main__":
    sys.exit(main())
