"""Sweep specs: the TOML file of ``moebif sweep``, parsed and checked before anything runs.

A spec has four tables::

    [study]                      # what one cell runs
    simulator = "batch_router"   # a registered simulator, or: experiment = "fig08"
    name = "collapse map"        # optional label

    [params]                     # fixed values of the study's parameters (defaults otherwise)
    a = 3.0

    [axes]                       # the grid: one coordinate per axis, in this order
    T = { start = 0.3, stop = 5.0, num = 24, log = true }
    gamma = [0.5, 1.0, 2.0]

    [run]
    replicas = 16                # independent replicas a cell
    seed = 0
    quantities = ["collapsed", "max_load"]
    task_seconds = 1.0           # optional: target work of one task (one store chunk)
    cells_per_task = 4           # optional: fixed task size instead

Axes are lists (values of the parameter's type, distinct) or ranges: ``{start, stop, num}``
(``numpy.linspace``, both ends included), with ``log = true`` (``numpy.geomspace``), or
``{start, stop, step}`` (``start, start + step, ...`` up to ``stop`` included).

Every error is a :class:`SpecError` whose ``key`` names the entry at fault (``axes.T``,
``params.eta``, ``run.quantities[1]``, ...). Every cell of the grid is checked, so a value that
is only invalid in combination (``eta * gamma >= 2`` at the largest ``gamma``) is reported with
the axis and the cell.

**Cells and seeds.** Cells are numbered in C order over the axes as written (the last axis
fastest). Cell ``i`` runs with the seed ``SeedSequence(seed).spawn(n_cells)[i]`` (as one
``uint64``), so its numbers do not depend on the executor, the chunking or the other cells.
"""

from __future__ import annotations

import hashlib
import json
import math
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..params import ParameterError
from .experiments import get_study
from .params import REQUIRED, Param
from .studies import STUDIES, Study

__all__ = [
    "MAX_CELLS",
    "MAX_CELL_SECONDS",
    "MAX_STORED_VALUES",
    "SpecError",
    "SweepSpec",
    "cell_seed",
    "load_spec",
    "parse_spec",
]

_TOP = ("study", "params", "axes", "run")

# What a sweep may ask for, checked before anything is built or run (docs/sweeps.md, "Limits").
MAX_CELLS = 100_000
"""Default largest grid (``--max-cells`` raises it): checking, planning and storing a grid costs
about 30 us a cell in this process, before any task runs."""
MAX_CELL_SECONDS = 86_400.0
"""Largest estimated single-core time of one cell: a cell is never split across tasks, so a
killed sweep loses up to this much work a worker."""
MAX_STORED_VALUES = 10**9
"""Largest number of values the store holds (8 GB of float64)."""
MAX_REPLICAS = 10**6
_RUN = ("replicas", "seed", "quantities", "task_seconds", "cells_per_task")


class SpecError(ValueError):
    """A spec entry is wrong. ``.key`` names it (``axes.T``, ``params.eta``, ...)."""

    def __init__(self, key: str, message: str):
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def cell_seed(seed: int, index: int) -> int:
    """The seed of cell ``index``: ``SeedSequence(seed).spawn(n)[index]``, one ``uint64``."""
    ss = np.random.SeedSequence(seed, spawn_key=(int(index),))
    return int(ss.generate_state(1, np.uint64)[0])


@dataclass(frozen=True, eq=False)
class SweepSpec:
    """A checked spec. Build it with :func:`load_spec` or :func:`parse_spec`.

    **Fields:** ``study`` (registry key: a simulator name or ``experiment:ID``), ``name``
    (label), ``params`` (every parameter that is not an axis, defaults filled in), ``axes``
    (name -> 1-d array, in the spec's order), ``replicas``, ``seed``, ``quantities``,
    ``task_seconds``, ``cells_per_task`` (``None``: sized from the cost estimate), ``text`` (the
    TOML source, if any).
    """

    study: str
    name: str
    params: dict
    axes: dict[str, np.ndarray]
    replicas: int
    seed: int
    quantities: tuple[str, ...]
    task_seconds: float = 1.0
    cells_per_task: int | None = None
    text: str | None = field(default=None, repr=False)

    @property
    def entry(self) -> Study:
        return get_study(self.study)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(v) for v in self.axes.values())

    @property
    def n_cells(self) -> int:
        return math.prod(self.shape)

    def cell_values(self, index) -> dict:
        """All parameter values of cell ``index`` (flat C-order index, or a tuple of indices)."""
        idx = np.unravel_index(index, self.shape) if np.ndim(index) == 0 else index
        v = dict(self.params)
        for (name, values), i in zip(self.axes.items(), idx, strict=True):
            v[name] = values[int(i)].item()
        return v

    def iter_cells(self):
        """The parameter values of every cell, in C order (faster than :meth:`cell_values`)."""
        import itertools

        names = list(self.axes)
        for combo in itertools.product(*(v.tolist() for v in self.axes.values())):
            v = dict(self.params)
            v.update(zip(names, combo, strict=True))
            yield v

    def canonical(self) -> dict:
        """The spec as plain JSON data, defaults resolved (stored with the results)."""
        kind = "experiment" if self.study.startswith("experiment:") else "simulator"
        return {
            "study": {kind: self.study.split(":", 1)[-1], "name": self.name},
            "params": dict(self.params),
            "axes": {k: v.tolist() for k, v in self.axes.items()},
            "run": {
                "replicas": self.replicas,
                "seed": self.seed,
                "quantities": list(self.quantities),
            },
        }

    def fingerprint(self) -> str:
        """Hash of what determines the numbers (not the label, nor the task size)."""
        c = self.canonical()
        c["study"].pop("name")
        blob = json.dumps(c, sort_keys=True, allow_nan=False).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def expert_width(self) -> int:
        """Length of the ``expert`` dimension: the largest N over the grid (0 if unused)."""
        entry = self.entry
        if not any("expert" in entry.quantities[q].dims for q in self.quantities):
            return 0
        return max(entry.experts(v) for v in self.iter_cells())

    def cell_cost(self) -> np.ndarray:
        """Estimated single-core seconds of every cell, shape ``shape``."""
        entry = self.entry
        c = [entry.cost(v, self.replicas) for v in self.iter_cells()]
        return np.asarray(c, dtype=float).reshape(self.shape)

    def chunks(self) -> tuple[int, ...]:
        """Cells a task along each axis: about ``task_seconds`` of work (or ``cells_per_task``
        cells), filling the last axis first."""
        if self.cells_per_task is not None:
            per = self.cells_per_task
        else:
            mean = float(self.cell_cost().mean())
            per = max(1, int(self.task_seconds / mean)) if mean > 0 else self.n_cells
        return chunk_shape(self.shape, per)


def chunk_shape(shape: tuple[int, ...], cells: int) -> tuple[int, ...]:
    """A block of at most ``cells`` cells (at least one), filling the last axes first."""
    out = []
    left = max(1, int(cells))
    for n in reversed(shape):
        c = max(1, min(n, left))
        out.append(c)
        left = max(1, left // c) if c == n else 1
    return tuple(reversed(out))


# ----------------------------------------------------------------------------------------------
# parsing


def load_spec(path: str | Path, *, max_cells: int = MAX_CELLS) -> SweepSpec:
    """Read and check a TOML spec; raises :class:`SpecError` (key ``spec`` when the file cannot
    be read or is not TOML)."""
    path = Path(path)
    try:
        if path.stat().st_size > 2**20:
            raise SpecError("spec", f"{str(path)!r} is larger than 1 MiB; not a spec")
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SpecError("spec", f"cannot read {str(path)!r}: {e.strerror}") from None
    except UnicodeDecodeError:
        raise SpecError("spec", f"{str(path)!r} is not UTF-8 text") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise SpecError("spec", f"not valid TOML: {e}") from None
    return parse_spec(doc, text=text, max_cells=max_cells)


def parse_spec(doc: dict, *, text: str | None = None, max_cells: int = MAX_CELLS) -> SweepSpec:
    """Check a spec given as a dict (the parsed TOML) and return a :class:`SweepSpec`.

    ``max_cells``: the largest grid accepted (:data:`MAX_CELLS`); the size of every axis and of
    the grid is checked before any array is built, the estimated cost of every cell against
    :data:`MAX_CELL_SECONDS` and the store's size against :data:`MAX_STORED_VALUES`."""
    if not isinstance(doc, dict):
        raise SpecError("spec", "must be a table")
    for key in doc:
        if key not in _TOP:
            raise SpecError(key, f"unknown table (expected {', '.join(_TOP)})")
    study_key, entry, label = _study(doc.get("study"))
    params_in = _table(doc, "params")
    axes_in = _table(doc, "axes")
    run = _table(doc, "run")

    known = entry.params
    for key in params_in:
        if key not in known:
            raise SpecError(f"params.{key}", _unknown_param(key, entry))
    if not axes_in:
        raise SpecError("axes", "give at least one axis (a parameter with a list or range)")
    axes: dict[str, np.ndarray] = {}
    for key, raw in axes_in.items():
        if key not in known:
            raise SpecError(f"axes.{key}", _unknown_param(key, entry))
        if key in params_in:
            raise SpecError(f"axes.{key}", "is also set in [params]; give it in one place")
        axes[key] = _axis(f"axes.{key}", key, known[key], raw, max_cells)
    n_cells = math.prod(len(v) for v in axes.values())
    if n_cells > max_cells:
        shape = " x ".join(str(len(v)) for v in axes.values())
        raise SpecError(
            "axes",
            f"{n_cells} cells ({shape}); a sweep has at most {max_cells} "
            "(pass --max-cells N to allow more)",
        )

    params = {}
    for key, p in known.items():
        if key in axes:
            continue
        if key in params_in:
            params[key] = _check(f"params.{key}", key, p, params_in[key])
        elif p.default is REQUIRED:
            raise SpecError(
                f"params.{key}", f"required by {entry.name}: give it in [params] or [axes]"
            )
        else:
            params[key] = p.default

    for key in run:
        if key not in _RUN:
            raise SpecError(f"run.{key}", f"unknown key (expected {', '.join(_RUN)})")
    replicas = _check(
        "run.replicas",
        "replicas",
        Param(int, 16, ge=1, le=MAX_REPLICAS),
        run.get("replicas", 16),
    )
    seed = _check("run.seed", "seed", Param(int, 0, ge=0, lt=2.0**64), run.get("seed", 0))
    task_seconds = _check(
        "run.task_seconds", "task_seconds", Param(float, 1.0, gt=0), run.get("task_seconds", 1.0)
    )
    cells_per_task = run.get("cells_per_task")
    if cells_per_task is not None:
        cells_per_task = _check(
            "run.cells_per_task", "cells_per_task", Param(int, 1, ge=1), cells_per_task
        )
    quantities = _quantities(run.get("quantities"), entry)

    spec = SweepSpec(
        study=study_key,
        name=label,
        params=params,
        axes=axes,
        replicas=replicas,
        seed=seed,
        quantities=quantities,
        task_seconds=task_seconds,
        cells_per_task=cells_per_task,
        text=text,
    )
    _check_cells(spec, entry)
    return spec


def _table(doc: dict, key: str) -> dict:
    t = doc.get(key, {})
    if not isinstance(t, dict):
        raise SpecError(key, "must be a table")
    return t


def _study(t) -> tuple[str, Study, str]:
    if t is None:
        raise SpecError("study", "missing table [study] (simulator = ... or experiment = ...)")
    if not isinstance(t, dict):
        raise SpecError("study", "must be a table")
    for key in t:
        if key not in ("simulator", "experiment", "name"):
            raise SpecError(f"study.{key}", "unknown key (expected simulator, experiment, name)")
    if ("simulator" in t) == ("experiment" in t):
        raise SpecError("study", "give exactly one of simulator = ... or experiment = ...")
    label = t.get("name", "")
    if not isinstance(label, str):
        raise SpecError("study.name", f"must be a string, got {label!r}")
    if "simulator" in t:
        name = t["simulator"]
        if not isinstance(name, str) or name not in STUDIES:
            known = ", ".join(STUDIES)
            raise SpecError("study.simulator", f"unknown simulator {name!r} (known: {known})")
        return name, STUDIES[name], label or name
    exp = t["experiment"]
    if not isinstance(exp, str):
        raise SpecError("study.experiment", f"must be a string, got {exp!r}")
    try:
        entry = get_study(f"experiment:{exp}")
    except ParameterError as e:
        raise SpecError("study.experiment", str(e).split(": ", 1)[1]) from None
    return entry.name, entry, label or exp


def _unknown_param(key: str, entry: Study) -> str:
    return f"unknown parameter of {entry.name} (known: {', '.join(entry.params)})"


def _check(loc: str, name: str, p: Param, value):
    try:
        return p.check(name, value)
    except ParameterError as e:
        raise SpecError(loc, str(e).split(": ", 1)[1]) from None


_RANGE_KEYS = {"start", "stop", "num", "log", "step"}


def _too_many(loc: str, count, max_cells: int) -> SpecError:
    return SpecError(
        loc,
        f"gives {count:.4g} values; a sweep has at most {max_cells} cells "
        "(pass --max-cells N to allow more)",
    )


def _axis(loc: str, name: str, p: Param, raw, max_cells: int = MAX_CELLS) -> np.ndarray:
    if isinstance(raw, list):
        if not raw:
            raise SpecError(loc, "empty axis (give at least one value)")
        if len(raw) > max_cells:
            raise _too_many(loc, len(raw), max_cells)
        values = [_check(f"{loc}[{i}]", name, p, x) for i, x in enumerate(raw)]
    elif isinstance(raw, dict):
        values = _range(loc, name, p, raw, max_cells)
    else:
        raise SpecError(loc, f"must be a list of values or a range table, got {raw!r}")
    if any(v is None for v in values):
        raise SpecError(loc, "axis values must not be empty")
    if len(set(values)) != len(values):
        dup = next(v for v in values if values.count(v) > 1)
        raise SpecError(loc, f"duplicate value {dup!r} (coordinates must be distinct)")
    if p.kind is str:
        return np.array(values, dtype=object).astype(str)
    dtype = {bool: bool, int: np.int64, float: np.float64}[p.kind]
    return np.array(values, dtype=dtype)


def _range(loc: str, name: str, p: Param, raw: dict, max_cells: int = MAX_CELLS) -> list:
    bad = set(raw) - _RANGE_KEYS
    if bad:
        raise SpecError(
            f"{loc}.{sorted(bad)[0]}", "unknown range key (start, stop, num, log, step)"
        )
    if p.kind not in (int, float):
        raise SpecError(loc, f"a range needs a numeric parameter; {name} is {p.kind.__name__}")
    for key in ("start", "stop"):
        if key not in raw:
            raise SpecError(loc, f"a range needs start and stop (missing {key})")
    num_p = Param(float, 0.0)
    start = _check(f"{loc}.start", "start", num_p, raw["start"])
    stop = _check(f"{loc}.stop", "stop", num_p, raw["stop"])
    if ("num" in raw) == ("step" in raw):
        raise SpecError(loc, "a range needs exactly one of num or step")
    if "num" in raw:
        num = _check(f"{loc}.num", "num", Param(int, 1, ge=0), raw["num"])
        if num == 0:
            raise SpecError(loc, "empty axis (num = 0)")
        if num > max_cells:
            raise _too_many(f"{loc}.num", num, max_cells)
        log = raw.get("log", False)
        if not isinstance(log, bool):
            raise SpecError(f"{loc}.log", f"must be true or false, got {log!r}")
        if log:
            if start <= 0 or stop <= 0:
                raise SpecError(loc, "a log range needs start > 0 and stop > 0")
            values = np.geomspace(start, stop, num)
        else:
            values = np.linspace(start, stop, num)
    else:
        if "log" in raw:
            raise SpecError(f"{loc}.log", "log goes with num, not with step")
        step = _check(f"{loc}.step", "step", Param(float, 1.0), raw["step"])
        if step == 0 or (stop - start) * step < 0:
            raise SpecError(f"{loc}.step", f"must move from start = {start:g} towards stop")
        with np.errstate(all="ignore"):
            ratio = np.float64(stop - start) / np.float64(step)
        if not ratio + 1 <= max_cells:  # NaN and inf included (start, stop near the float max)
            raise _too_many(f"{loc}.step", float(ratio) + 1, max_cells)
        count = math.floor(ratio * (1 + 1e-12) + 1e-9) + 1
        values = start + step * np.arange(count)
    if p.kind is int:
        rounded = np.round(values)
        if "step" in raw and not np.all(rounded == values):
            raise SpecError(loc, f"{name} is an integer; start and step must be integers")
        values = rounded
    out = [v.item() for v in values]
    if p.kind is int:
        out = [int(v) for v in out]
        if len(set(out)) != len(out):
            raise SpecError(
                loc, f"{name} is an integer and the range repeats values after rounding"
            )
    return [_check(f"{loc}", name, p, v) for v in out]


def _quantities(raw, entry: Study) -> tuple[str, ...]:
    if raw is None:
        raise SpecError(
            "run.quantities", f"list what to record (known: {', '.join(entry.quantities)})"
        )
    if not isinstance(raw, list) or not raw:
        raise SpecError("run.quantities", "must be a non-empty list of quantity names")
    out = []
    for i, q in enumerate(raw):
        if not isinstance(q, str) or q not in entry.quantities:
            known = ", ".join(entry.quantities)
            raise SpecError(
                f"run.quantities[{i}]", f"unknown quantity {q!r} of {entry.name} (known: {known})"
            )
        if q in out:
            raise SpecError(f"run.quantities[{i}]", f"{q!r} is listed twice")
        out.append(q)
    return tuple(out)


class _Where:
    """``k=v, ...`` of a cell's axes, formatted only when an error message needs it."""

    def __init__(self, v: dict, axes):
        self.v, self.axes = v, axes

    def __format__(self, spec: str) -> str:
        return ", ".join(f"{k}={self.v[k]!r}" for k in self.axes)


def _check_cells(spec: SweepSpec, entry: Study) -> None:
    """Run the study's cross-parameter checks and the quantities' requirements on every cell,
    then the limits on a cell's estimated cost and on the store's size."""
    width = 0
    for v in spec.iter_cells():
        where = _Where(v, spec.axes)
        try:
            entry.check(v)
        except ParameterError as e:
            name = e.name
            loc = f"axes.{name}" if name in spec.axes else f"params.{name}"
            raise SpecError(loc, f"{str(e).split(': ', 1)[1]} (at cell {where})") from None
        for j, q in enumerate(spec.quantities):
            why = entry.quantities[q].requires
            msg = why(v) if why is not None else None
            if msg:
                raise SpecError(f"run.quantities[{j}]", f"{q}: {msg}")
        try:
            cost = float(entry.cost(v, spec.replicas))
        except (ArithmeticError, ValueError):
            cost = math.inf
        if not cost <= MAX_CELL_SECONDS:  # NaN too
            size = entry.size_params
            loc = next((f"axes.{k}" for k in size if k in spec.axes), None) or next(
                (f"params.{k}" for k in size if k in spec.params), "run.replicas"
            )
            raise SpecError(
                loc,
                f"one cell would take about {cost / 3600:.3g} core-hours (at cell {where}); "
                f"a cell runs in one task and may take at most {MAX_CELL_SECONDS / 3600:g}: "
                f"use fewer replicas a cell, or change {', '.join(size)}",
            )
        width = max(width, entry.experts(v))
    stored = 0
    for q in spec.quantities:
        dims = entry.quantities[q].dims
        n = spec.n_cells * (spec.replicas if "replica" in dims else 1)
        stored += n * (max(width, 1) if "expert" in dims else 1)
    if stored > MAX_STORED_VALUES:
        raise SpecError(
            "run.replicas",
            f"the store would hold {stored:.3g} values ({8 * stored / 1e9:.3g} GB); at most "
            f"{MAX_STORED_VALUES:.0e}: fewer cells, replicas or quantities",
        )
