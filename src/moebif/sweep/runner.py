"""The sweep driver: plan the tasks, run them on an executor, write each result as it arrives."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .executors import Executor, ExecutorError, InProcess
from .spec import SweepSpec
from .store import StoreError, SweepStore
from .tasks import Task, TaskResult, versions

__all__ = ["SweepReport", "plan_tasks", "run_sweep"]

#: ``progress(cells_done, cells_total, tasks_done, tasks_total)``
Progress = Callable[[int, int, int, int], None]


@dataclass(frozen=True)
class SweepReport:
    """What :func:`run_sweep` did.

    ``tasks_run`` are the indices of the tasks computed by this call (in the order they
    finished); ``tasks_skipped`` the ones already done in a resumed store."""

    store: Path
    cells: int
    tasks: int
    tasks_run: tuple[int, ...]
    tasks_skipped: int
    seconds: float
    executor: str
    dashboard: str | None
    chunks: dict

    def to_dict(self) -> dict:
        return {
            "store": str(self.store),
            "cells": self.cells,
            "tasks": self.tasks,
            "tasks_run": len(self.tasks_run),
            "tasks_skipped": self.tasks_skipped,
            "seconds": self.seconds,
            "executor": self.executor,
            "dashboard": self.dashboard,
            "chunks": self.chunks,
        }


def plan_tasks(spec: SweepSpec, store: SweepStore, threads: int | None) -> list[Task]:
    """The tasks of ``store``'s chunks that are not done yet."""
    blocks = store.blocks()
    axes = tuple((k, tuple(v.tolist())) for k, v in spec.axes.items())
    width = spec.expert_width()
    return [
        Task(
            index=i,
            block=blocks[i],
            study=spec.study,
            params=dict(spec.params),
            axes=axes,
            replicas=spec.replicas,
            seed=spec.seed,
            quantities=spec.quantities,
            expert_width=width,
            threads=threads,
        )
        for i in store.pending()
    ]


def run_sweep(
    spec: SweepSpec,
    store: str | Path,
    *,
    executor: Executor | None = None,
    resume: bool = False,
    progress: Progress | None = None,
    on_result: Callable[[TaskResult], None] | None = None,
) -> SweepReport:
    """Run ``spec`` into the Zarr store at ``store``.

    **Arguments:**

    - ``spec``: a checked :class:`~moebif.sweep.spec.SweepSpec`.
    - ``store``: path of the store; it must not exist unless ``resume``.
    - ``executor``: where tasks run (default :class:`~moebif.sweep.executors.InProcess`).
    - ``resume``: continue an existing store made by the same spec: only the chunks not marked
      done are computed (the store's chunking is kept).
    - ``progress``: called after every written chunk (and once at the start).
    - ``on_result``: called with each :class:`~moebif.sweep.tasks.TaskResult` after it is
      written (raising there stops the sweep; what was written stays).

    **Returns:** a :class:`SweepReport`. Raises :class:`~moebif.sweep.store.StoreError` for a
    store that exists (without ``resume``), is missing or differs from the spec (with it), and
    :class:`~moebif.sweep.executors.ExecutorError` when a worker ran other versions.
    """
    t0 = time.perf_counter()
    path = Path(store)
    executor = executor or InProcess()
    if resume and path.exists():
        st = SweepStore.open(path)
        st.check_spec(spec)
    elif resume:
        raise StoreError(f"nothing to resume: {str(path)!r} does not exist")
    else:
        if path.exists():
            raise StoreError(f"{str(path)!r} already exists (resume it, or remove it)")
        st = SweepStore.create(path, spec, spec.chunks())

    tasks = plan_tasks(spec, st, executor.threads)
    n_tasks = len(st.blocks())
    skipped = n_tasks - len(tasks)
    cells_done = spec.n_cells - sum(t.cells for t in tasks)
    tasks_done = skipped
    if progress is not None:
        progress(cells_done, spec.n_cells, tasks_done, n_tasks)
    mine = versions()
    ran = []
    for res in executor.run(tasks):
        if res.versions != mine:
            raise ExecutorError(
                f"task {res.index} ran with {res.versions}, this process has {mine}: "
                "results would not be identical"
            )
        st.write(res)
        ran.append(res.index)
        cells_done += res.seeds.size
        tasks_done += 1
        if progress is not None:
            progress(cells_done, spec.n_cells, tasks_done, n_tasks)
        if on_result is not None:
            on_result(res)
    return SweepReport(
        store=path,
        cells=spec.n_cells,
        tasks=n_tasks,
        tasks_run=tuple(ran),
        tasks_skipped=skipped,
        seconds=time.perf_counter() - t0,
        executor=executor.describe(),
        dashboard=executor.dashboard,
        chunks=dict(st.attrs["chunks"]),
    )
