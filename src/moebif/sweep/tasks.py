"""One task of a sweep: the cells of one store chunk, computed wherever the executor runs it.

A :class:`Task` is plain data (the study's registry key, the fixed parameters, the axes, the
block of cells), so it pickles to any worker that has moebif installed; :func:`run_task` looks the
study up in the registry there. Each cell uses its own seed (:func:`~moebif.sweep.spec.cell_seed`),
so the values do not depend on where, with which neighbours or in which order a cell ran.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

__all__ = ["Task", "TaskResult", "run_task", "versions"]


@dataclass(frozen=True)
class Task:
    """The cells ``block`` (a ``(start, stop)`` per axis) of a sweep."""

    index: int
    block: tuple[tuple[int, int], ...]
    study: str
    params: dict
    axes: tuple[tuple[str, tuple], ...]
    replicas: int
    seed: int
    quantities: tuple[str, ...]
    expert_width: int
    threads: int | None = 1

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(b - a for a, b in self.block)

    @property
    def cells(self) -> int:
        return math.prod(self.shape)


@dataclass(frozen=True, eq=False)
class TaskResult:
    """What a task sends back: one array per quantity (shape: block + quantity dims), the
    cells' seeds, the versions it ran with and its wall time."""

    index: int
    block: tuple[tuple[int, int], ...]
    arrays: dict
    seeds: np.ndarray
    versions: dict
    seconds: float


def versions() -> dict:
    """Versions that determine the numbers (the store keeps them; workers must match)."""
    import numba

    from .._version import __version__

    return {"moebif": __version__, "numpy": np.__version__, "numba": numba.__version__}


def run_task(task: Task) -> TaskResult:
    """Compute every cell of ``task`` (called on the worker)."""
    from .experiments import get_study
    from .spec import cell_seed

    t0 = time.perf_counter()
    entry = get_study(task.study)
    names = [a for a, _ in task.axes]
    values = [v for _, v in task.axes]
    shape_all = tuple(len(v) for v in values)
    shape = task.shape
    arrays = {}
    for q in task.quantities:
        spec = entry.quantities[q]
        extra = tuple(task.replicas if d == "replica" else task.expert_width for d in spec.dims)
        fill = False if spec.dtype == "bool" else np.nan
        arrays[q] = np.full(shape + extra, fill, dtype=spec.dtype)
    seeds = np.zeros(shape, dtype=np.uint64)

    saved = _set_numba_threads(task.threads)
    try:
        for local in np.ndindex(*shape):
            idx = tuple(a + i for (a, _), i in zip(task.block, local, strict=True))
            flat = int(np.ravel_multi_index(idx, shape_all))
            v = dict(task.params)
            for name, vals, i in zip(names, values, idx, strict=True):
                v[name] = vals[i]
            s = cell_seed(task.seed, flat)
            seeds[local] = s
            out = entry.run(
                v,
                replicas=task.replicas,
                seed=s,
                quantities=task.quantities,
                threads=task.threads,
            )
            for q in task.quantities:
                val = np.asarray(out[q])
                target = arrays[q][local]
                if val.ndim and val.shape != target.shape:
                    # the expert dimension is padded to the largest N of the grid (NaN beyond N)
                    target[..., : val.shape[-1]] = val
                else:
                    arrays[q][local] = val
    finally:
        _set_numba_threads(saved)
    return TaskResult(
        index=task.index,
        block=task.block,
        arrays=arrays,
        seeds=seeds,
        versions=versions(),
        seconds=time.perf_counter() - t0,
    )


def _set_numba_threads(threads: int | None) -> int | None:
    """Set numba's thread count for this thread (tasks use 1, so workers do not oversubscribe
    the cores); returns the previous value."""
    if threads is None:
        return None
    import numba

    saved = numba.get_num_threads()
    numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
    return saved
