"""Commands ``moebif sweep`` (a parameter study into a Zarr store) and ``moebif sweep-plot``."""

from __future__ import annotations

import contextlib
import math
import sys
from pathlib import Path
from typing import Annotated

import typer

from ._common import CLIError, app, emit_json


@contextlib.contextmanager
def _sweep_bar(enabled: bool):
    """A ``progress(cells, total, tasks, tasks_total)`` callback drawing a rich bar on stderr."""
    if not (enabled and sys.stderr.isatty()):
        yield None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("sweep"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("cells  {task.fields[tasks]}"),
        TimeElapsedColumn(),
        TextColumn("<"),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        task = bar.add_task("sweep", total=None, tasks="")

        def update(cells, total, tasks, tasks_total):
            bar.update(task, completed=cells, total=total, tasks=f"{tasks}/{tasks_total} chunks")

        yield update


def _note(msg: str) -> None:
    print(msg, file=sys.stderr)


def _need_extra() -> None:
    import importlib.util

    missing = [
        m for m in ("dask", "distributed", "xarray", "zarr") if not importlib.util.find_spec(m)
    ]
    if missing:
        print(
            f"moebif: error: sweeps need {', '.join(missing)}: pip install 'moebif[sweep]'",
            file=sys.stderr,
        )
        raise typer.Exit(1)


@app.command()
def sweep(
    spec_path: Annotated[Path, typer.Argument(metavar="SPEC.toml", help="The study (TOML).")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Zarr store to write (default: SPEC stem + .zarr).")
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option("--scheduler", help="Address of a Dask scheduler, e.g. tcp://host:8786."),
    ] = None,
    connect_timeout: Annotated[
        float,
        typer.Option(
            "--connect-timeout",
            help="Seconds to reach the --scheduler (default 2; docs/sweeps.md).",
        ),
    ] = 2.0,
    local_workers: Annotated[
        int | None,
        typer.Option("--local-workers", help="Start a Dask LocalCluster of K worker processes."),
    ] = None,
    jobs: Annotated[
        int | None,
        typer.Option("--jobs", help="Run on J local processes (no Dask)."),
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue the store: compute only missing chunks.")
    ] = False,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Check the spec, print the plan, run nothing.")
    ] = False,
    max_cells: Annotated[
        int,
        typer.Option("--max-cells", help="Largest grid accepted (default 100000; docs/sweeps.md)."),
    ] = 100_000,
    dashboard: Annotated[
        str,
        typer.Option(
            "--dashboard",
            help="Address of the LocalCluster's dashboard (default 127.0.0.1:8787, loopback "
            "only; 'none': no dashboard).",
        ),
    ] = "127.0.0.1:8787",
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> int:
    """Run a parameter study into a Zarr store, in-process or on Dask (docs/sweeps.md)."""
    _need_extra()
    from ..sweep.spec import SpecError, load_spec

    chosen = [
        o
        for o, v in (
            ("--scheduler", scheduler),
            ("--local-workers", local_workers),
            ("--jobs", jobs),
        )
        if v is not None
    ]
    if len(chosen) > 1:
        raise CLIError(chosen[1], "give only one of --scheduler, --local-workers, --jobs")
    if local_workers is not None and local_workers < 1:
        raise CLIError("--local-workers", f"must be >= 1, got {local_workers}")
    if jobs is not None and jobs < 1:
        raise CLIError("--jobs", f"must be >= 1, got {jobs}")
    if scheduler is not None and not scheduler.strip():
        raise CLIError("--scheduler", "must be an address such as tcp://host:8786")
    if not (math.isfinite(connect_timeout) and 0.0 < connect_timeout <= 600.0):
        raise CLIError("--connect-timeout", f"must be in (0, 600] seconds, got {connect_timeout}")
    if max_cells < 1:
        raise CLIError("--max-cells", f"must be >= 1, got {max_cells}")
    if not dashboard.strip():
        raise CLIError("--dashboard", "must be an address such as 127.0.0.1:8787, or none")
    try:
        spec = load_spec(spec_path, max_cells=max_cells)
    except SpecError as e:
        where = "" if e.key == "spec" else f" (in {spec_path})"
        raise CLIError(e.key, f"{e.message}{where}") from None
    if out is None:
        out = Path(spec_path.stem + ".zarr")

    from .._io import check_writable_dir
    from ..sweep.store import StoreError, SweepStore

    check_writable_dir("--out", out.parent if str(out.parent) else Path("."))
    if resume and not out.exists():
        # a sweep started with --resume from the first run on (a batch script) just starts
        _note(f"moebif: --resume: {out} does not exist yet; starting it")
        resume = False
    elif resume:
        try:
            SweepStore.open(out).check_spec(spec)
        except StoreError as e:
            raise CLIError("--resume", str(e)) from None
    elif out.exists():
        raise CLIError("--out", f"{str(out)!r} exists; pass --resume to continue it, or remove it")

    chunks = spec.chunks()
    if dry_run:
        import numpy as np

        n_tasks = int(np.prod([-(-n // c) for n, c in zip(spec.shape, chunks, strict=True)]))
        plan = {
            "study": spec.study,
            "cells": spec.n_cells,
            "shape": dict(zip(spec.axes, spec.shape, strict=True)),
            "chunks": dict(zip(spec.axes, chunks, strict=True)),
            "tasks": n_tasks,
            "estimated_core_seconds": float(spec.cell_cost().sum()),
            "store": str(out),
        }
        if as_json:
            emit_json(plan)
        else:
            print(
                f"{spec.study}: {plan['cells']} cells {plan['shape']}, {n_tasks} tasks of "
                f"{plan['chunks']}, about {plan['estimated_core_seconds']:.0f} core-seconds "
                f"-> {out}"
            )
        return 0

    from ..sweep.executors import DaskExecutor, ExecutorError, InProcess, LocalProcesses
    from ..sweep.runner import run_sweep

    try:
        if scheduler is not None:
            executor = DaskExecutor(scheduler, timeout=connect_timeout)
        elif local_workers is not None:
            address = None if dashboard.strip().lower() == "none" else dashboard.strip()
            executor = DaskExecutor(local_workers=local_workers, dashboard_address=address)
        elif jobs is not None and jobs > 1:
            executor = LocalProcesses(jobs)
        else:
            executor = InProcess()
    except ExecutorError as e:
        raise CLIError(chosen[0] if chosen else "--scheduler", str(e)) from None

    with executor:
        if not as_json:
            _note(f"sweep: {spec.study}, {spec.n_cells} cells, on {executor.describe()} -> {out}")
        if executor.dashboard:
            _note(f"dask dashboard: {executor.dashboard}")
        if executor.workers == 0:
            _note("no workers connected to the scheduler yet; tasks start when they join")
        try:
            with _sweep_bar(True) as bar:
                report = run_sweep(spec, out, executor=executor, resume=resume, progress=bar)
        except KeyboardInterrupt:
            executor.quiet()
            _interrupted(out)
            raise typer.Exit(130) from None
        except (StoreError, ExecutorError) as e:
            raise CLIError("--resume" if resume else "--out", str(e)) from None
        except Exception as e:  # a task failed (after the executor's retries)
            print(f"moebif: error: a sweep task failed: {type(e).__name__}: {e}", file=sys.stderr)
            print(f"moebif: finished chunks are kept in {out}; fix and --resume", file=sys.stderr)
            return 1
    if as_json:
        emit_json(report.to_dict())
    else:
        print(
            f"{report.cells} cells in {report.tasks} chunks ({len(report.tasks_run)} computed, "
            f"{report.tasks_skipped} already done) on {report.executor}: {report.seconds:.1f} s"
            f" -> {out}"
        )
    return 0


def _interrupted(out: Path) -> None:
    try:
        from ..sweep.store import SweepStore

        st = SweepStore.open(out)
        n = len(st.blocks())
        left = len(st.pending())
        _note(f"moebif: interrupted; {n - left} of {n} chunks are in {out}; continue with --resume")
    except Exception:
        _note("moebif: interrupted")


@app.command("sweep-plot")
def sweep_plot(
    store: Annotated[Path, typer.Argument(metavar="STORE", help="A store written by sweep.")],
    quantity: Annotated[
        str | None, typer.Option("--quantity", help="Variable to draw (default: collapsed).")
    ] = None,
    x: Annotated[str | None, typer.Option("--x", help="Axis along x (default: the first).")] = None,
    y: Annotated[str | None, typer.Option("--y", help="Axis along y (default: the next).")] = None,
    select: Annotated[
        list[str] | None,
        typer.Option("--select", help="AXIS=VALUE for an axis not drawn (repeatable)."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="File stem of the figure (default: STORE without .zarr)."),
    ] = None,
    formats: Annotated[
        str | None,
        typer.Option(
            "--format",
            help="Comma-separated file formats among png, svg, pdf (default: png,svg; an --out "
            "ending in .png, .svg or .pdf gives that one).",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Draw the phase diagram of a sweep store (PNG + SVG, or PDF; 200 dpi) with theory
    boundaries."""
    _need_extra()
    if not store.is_dir():
        raise CLIError("STORE", f"{str(store)!r} is not a store (no such folder)")
    chosen = {}
    for item in select or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise CLIError("--select", f"expected AXIS=VALUE, got {item!r}")
        chosen[key.strip()] = _parse_value(value.strip())
    stem = out if out is not None else store.with_suffix("") if store.suffix else store
    if stem == store:
        stem = store.with_name(store.name + "_phase")
    from ..sweep.plot import FORMATS

    chosen_formats = ("png", "svg")
    if out is not None and out.suffix.lower() in tuple(f".{f}" for f in FORMATS):
        stem = out.with_suffix("")
        chosen_formats = (out.suffix.lower()[1:],)
    if formats is not None:
        chosen_formats = tuple(f.strip().lower() for f in formats.split(",") if f.strip())
        bad = [f for f in chosen_formats if f not in FORMATS]
        if bad or not chosen_formats:
            raise CLIError(
                "--format", f"expected one or more of {', '.join(FORMATS)}, got {formats!r}"
            )

    from .._io import check_writable_dir
    from ..sweep.plot import PlotError, plot_store, save_figure

    check_writable_dir("--out", stem.parent if str(stem.parent) else Path("."))
    try:
        import xarray as xr

        ds = xr.open_zarr(store)
    except Exception as e:
        raise CLIError("STORE", f"cannot open {str(store)!r} as a Zarr store: {e}") from None
    try:
        fig = plot_store(ds, quantity=quantity, x=x, y=y, select=chosen)
    except PlotError as e:
        raise CLIError(e.option, str(e).split(": ", 1)[1]) from None
    files = [str(p) for p in save_figure(fig, stem, formats=chosen_formats)]
    done = int(ds["done"].sum())
    summary = {"store": str(store), "files": files, "cells": int(ds["done"].size), "done": done}
    if as_json:
        emit_json(summary)
    else:
        print(f"phase diagram: {', '.join(files)} ({done} of {summary['cells']} cells)")


def _parse_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    if text in ("true", "false"):
        return text == "true"
    return text
