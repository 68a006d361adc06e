"""``moebif reproduce``: run the registered experiments, write their outputs atomically, resume;
run them at several seeds; re-derive the claims of a finished run from its saved data.

Layout of the output folder ``OUT`` of a run at one seed::

    OUT/<id>/figure.png, figure.svg   the figure
    OUT/<id>/data.json                its data
    OUT/<id>/claims.json              the claims it checks (re-derivable from data.json)
    OUT/<id>/config.json              resolved config, seed, versions, wall time, variant
    OUT/claims.json                   every claim, in registry order
    OUT/report.html                   self-contained report (figures embedded)
    OUT/run.json                      what ran: variant, base seed, number of seeds

A run at ``S`` seeds (``seeds=S``) keeps one such folder per seed, ``OUT/seed-0`` ...
``OUT/seed-<S-1>`` (seed 0 is the single-seed run's seed), and writes ``OUT/claims.json`` and
``OUT/report.html`` for all seeds together: every claim with the fraction of seeds at which it
holds, the spread of its measured values and its margin (how many seed spreads the measured
values lie inside their tolerance); it holds only if it holds at every seed by a margin of 2
spreads or more, and is fragile otherwise if it holds at some seed.

Each experiment is built in a hidden temporary folder and renamed into place when complete, so a
killed run loses only the experiments in flight; a re-run skips the finished ones (same variant,
quick or full, and same seed) unless ``force``.

Every experiment's claims are computed from its data exactly as it reads back from
``data.json`` (:func:`moebif.experiments.base.json_roundtrip`), so :func:`recheck` re-derives
the very same claims without recomputing anything.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import tempfile
import time
import traceback
import zlib
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .._io import atomic_write_json, atomic_write_text, default_mode
from .._version import __version__
from ..style import save_figure
from . import REGISTRY, load_experiment
from .base import ExperimentResult, config_from_dict, config_to_dict, json_roundtrip

__all__ = [
    "FRAGILE_MARGIN",
    "ExperimentOutcome",
    "RecheckError",
    "RecheckOutcome",
    "aggregate_claims",
    "evaluate",
    "experiment_config",
    "experiment_seed",
    "is_complete",
    "recheck",
    "reproduce",
    "run_one",
    "seed_folder",
]

RUN_FILE = "run.json"

# Rough relative cost of each experiment (seconds on the 2-core machine, quick and full): with
# several workers the costliest start first, so that the run does not end waiting for one long
# experiment started last. Only the order changes, never a result; unknown ids go in between.
# (The full-size costs of the bal-* experiments are estimates, 4-5x their quick ones.)
COST = {
    "bal-phase": (40, 180),
    "fig04": (12, 130),
    "fig01": (16, 120),
    "nexp-topk": (13, 110),
    "fig10": (14, 110),
    "fig11": (14, 77),
    "nexp-metastable": (6, 62),
    "fig02": (12, 59),
    "fig05": (8, 56),
    "nexp-hysteresis": (7, 46),
    "fig07": (7, 28),
    "nexp-branches": (4, 25),
    "fig09": (3, 21),
    "fig08": (3, 21),
    "fig03": (2, 17),
    "theory": (1, 12),
    "fig06": (2, 14),
    "bal-bias": (5, 25),
    "bal-bias-cycle": (20, 60),
    "bal-capacity": (5, 25),
    "bal-compare": (2, 10),
    "ctl-suppression": (30, 120),
}


@dataclass
class ExperimentOutcome:
    id: str
    status: str  # "done", "skipped", "failed"
    seconds: float
    claims: list[dict]
    error: str = ""
    seed_index: int = 0


# ----------------------------------------------------------------------------------------------
# seeds


def experiment_seed(exp_id: str, default: int, *, base: int | None = None, index: int = 0) -> int:
    """The seed experiment ``exp_id`` runs at.

    Without ``base`` and at ``index`` 0 it is the experiment's own default (the seed of its
    ``Config``), so a plain run is unchanged. Otherwise it is derived from ``base`` (or, without
    one, from the default), the experiment id and ``index`` by :class:`numpy.random.SeedSequence`
    hashing: distinct experiments and indices get unrelated seeds (never ``seed + 1``, which
    would share the streams an experiment derives as ``seed + i``). Seeds are < 2**31."""
    if base is None and index == 0:
        return int(default)
    if base is not None and base < 0:
        raise ValueError(f"base seed must be >= 0, got {base}")
    origin = [1, int(base)] if base is not None else [0, int(default)]
    words = [zlib.crc32(exp_id.encode("utf-8")), int(index), *origin]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint32)[0] >> 1)


def experiment_config(mod, quick: bool, *, base_seed: int | None = None, index: int = 0):
    """The resolved ``Config`` of module ``mod``: quick or full, at the derived seed."""
    config = mod.quick() if quick else mod.Config()
    seed = experiment_seed(mod.ID, config.seed, base=base_seed, index=index)
    return config if seed == config.seed else replace(config, seed=seed)


def seed_folder(out: str | os.PathLike, index: int) -> Path:
    """The folder of seed ``index`` of a multi-seed run in ``out``."""
    return Path(out) / f"seed-{index}"


# ----------------------------------------------------------------------------------------------
# one experiment


def _versions() -> dict:
    import importlib.metadata as md

    out = {"moebif": __version__, "python": platform.python_version()}
    for name in ("numpy", "scipy", "numba", "matplotlib", "torch", "scikit-learn"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def _read_meta(out: Path, exp_id: str) -> dict | None:
    try:
        return json.loads((out / exp_id / "config.json").read_text())
    except (OSError, ValueError):
        return None


def is_complete(out: Path, exp_id: str, quick: bool, seed: int | None = None) -> bool:
    """Whether ``out/<exp_id>`` holds a finished run of the same variant (and, if given, the
    same seed)."""
    meta = _read_meta(Path(out), exp_id)
    if meta is None or meta.get("complete") is not True or meta.get("quick") != quick:
        return False
    return seed is None or meta.get("seed") == seed


def evaluate(mod, config, progress: Callable | None = None) -> ExperimentResult:
    """Run one experiment module: its data (as saved, JSON-ready), the claims derived from that
    data alone, and its notes."""
    data = json_roundtrip(mod.run(config, progress=progress))
    notes = mod.notes(data, config) if hasattr(mod, "notes") else ""
    return ExperimentResult(data=data, claims=mod.claims(data, config), notes=notes)


def _claim_dicts(claims, exp_id: str) -> list[dict]:
    return json_roundtrip([{**c.to_dict(), "experiment": exp_id} for c in claims])


def run_one(
    exp_id: str,
    quick: bool,
    out: str,
    progress: Callable | None = None,
    *,
    base_seed: int | None = None,
    index: int = 0,
) -> dict:
    """Run one experiment and move its finished folder into ``out/<exp_id>`` (atomic rename)."""
    import matplotlib.pyplot as plt

    mod = load_experiment(exp_id)
    config = experiment_config(mod, quick, base_seed=base_seed, index=index)
    t0 = time.perf_counter()
    result = evaluate(mod, config, progress)
    fig = mod.plot(result.data, config)
    seconds = time.perf_counter() - t0

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{exp_id}.partial-", dir=out_dir))
    try:
        os.chmod(tmp, default_mode(directory=True))
        save_figure(fig, tmp / "figure")
        plt.close(fig)
        (tmp / "data.json").write_text(json.dumps(result.data, allow_nan=False))
        claims = _claim_dicts(result.claims, exp_id)
        (tmp / "claims.json").write_text(json.dumps(claims, indent=2, allow_nan=False))
        meta = {
            "id": exp_id,
            "title": mod.TITLE,
            "paper": mod.PAPER,
            "quick": quick,
            "config": config_to_dict(config),
            "seed": getattr(config, "seed", None),
            "base_seed": base_seed,
            "seed_index": index,
            "versions": _versions(),
            "seconds": seconds,
            "notes": result.notes,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "complete": True,
        }
        (tmp / "config.json").write_text(json.dumps(meta, indent=2, allow_nan=False))
        final = out_dir / exp_id
        if final.exists():
            trash = Path(tempfile.mkdtemp(prefix=f".{exp_id}.old-", dir=out_dir))
            os.replace(final, trash / exp_id)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        else:
            os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return {"seconds": seconds, "claims": claims}


def _worker(
    exp_id: str,
    quick: bool,
    out: str,
    base_seed,
    index: int,
    queue,
    progress=None,
    numba_threads: int | None = None,
) -> dict:
    if numba_threads is not None:  # one worker of several: its share of the cores
        import numba

        numba.set_num_threads(max(1, min(numba_threads, numba.config.NUMBA_NUM_THREADS)))
    if progress is None:

        def progress(done, total):
            if queue is not None:
                queue.put(((exp_id, index), float(done), float(total)))

    try:
        return run_one(exp_id, quick, out, progress, base_seed=base_seed, index=index)
    except Exception:  # reported in the parent as a failed experiment, the others go on
        return {"error": traceback.format_exc()}


def _load_claims(out: Path, exp_id: str) -> list[dict]:
    try:
        return json.loads((out / exp_id / "claims.json").read_text())
    except (OSError, ValueError):
        return []


# ----------------------------------------------------------------------------------------------
# several seeds: the claims together


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _spread(values: list):
    """The spread over seeds of one measured value (all seeds' values of the same claim): the
    same structure, with every number replaced by ``{"min", "max", "mean", "sd"}`` over the
    seeds (``None`` values, i.e. NaN, are left out and counted in ``"missing"``); a non-number
    that differs between seeds by ``{"values": [...]}``."""
    if all(isinstance(v, dict) for v in values) and len({tuple(v) for v in values}) == 1:
        return {k: _spread([v[k] for v in values]) for k in values[0]}
    if all(isinstance(v, list) for v in values) and len({len(v) for v in values}) == 1:
        return [_spread([v[i] for v in values]) for i in range(len(values[0]))]
    if all(_is_number(v) or v is None for v in values) and any(_is_number(v) for v in values):
        x = np.array([v for v in values if v is not None], dtype=float)
        out = {
            "min": float(x.min()),
            "max": float(x.max()),
            "mean": float(x.mean()),
            "sd": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        }
        if len(x) < len(values):
            out["missing"] = len(values) - len(x)
        return out
    if all(v == values[0] for v in values):
        return values[0]
    return {"values": values}


FRAGILE_MARGIN = 2.0
"""A claim whose margin over seeds is below this many seed standard deviations is fragile,
even if it held at every seed run."""


def _margins(rows: list[dict]) -> tuple[list[dict], float | None, str | None]:
    """Per check (matched by position and name across seeds): the seed mean of its slack, the
    seed standard deviation ``sd`` of its measured value (of its slack, where its bounds differ
    between seeds), and its margin ``mean / sd``; and the claim's margin, the smallest
    over its checks, with that check's name. The margin is ``None`` where it is not a finite
    number: a check with no seed spread (sd 0; it cannot pass or fail by seed noise), a check
    that is NaN at some seed (it failed there, which ``holds_at`` shows), no checks, checks
    that differ between seeds, or fewer than two seeds."""
    lists = [r.get("checks") or [] for r in rows]
    if not lists[0] or len({len(x) for x in lists}) != 1 or len(rows) < 2:
        return [], None, None
    out, worst, worst_name = [], None, None
    for k, first in enumerate(lists[0]):
        if any(x[k]["name"] != first["name"] for x in lists):
            return [], None, None
        slack = [x[k]["slack"] for x in lists]
        values = [x[k]["value"] for x in lists]
        fixed = all(
            (x[k]["lower"], x[k]["upper"]) == (first["lower"], first["upper"]) for x in lists
        )
        if any(v is None for v in slack):  # NaN at some seed: the check failed there
            m = -np.inf
            mean = sd = None
        else:
            s = np.asarray(slack, dtype=float)
            # the spread: of the measured value where the bounds are the same at every seed
            # (a two-sided slack can hide it: values symmetric about the centre have equal
            # slacks); of the slack itself where the bounds move with the seed
            spread_of = np.asarray(values, dtype=float) if fixed else s
            mean, sd = float(s.mean()), float(spread_of.std(ddof=1))
            scale = max(abs(mean), *(abs(float(v)) for v in values), 1e-300)
            if sd <= 1e-9 * scale:  # the same value at every seed up to rounding: no spread
                sd = 0.0
            if sd > 0:
                m = mean / sd
            else:
                m = np.inf if mean > 0 else -np.inf
        rec = {
            "name": first["name"],
            "lower": first["lower"],
            "upper": first["upper"],
            "value": _spread(values),
            "slack_mean": mean,
            "spread": sd,
            "margin": float(m) if np.isfinite(m) else None,
        }
        out.append(rec)
        if worst is None or m < worst:
            worst, worst_name = m, first["name"]
    if worst is None or not np.isfinite(worst):
        return out, None, worst_name
    return out, float(worst), worst_name


def _margin_note(checks: list[dict], margin: float | None, holds_at: list[bool]) -> str:
    """Why a claim has no margin, in words (empty when it has one)."""
    if margin is not None:
        return ""
    if not checks:
        return "exact, no checks" if len(holds_at) > 1 else "one seed"
    if any(c["slack_mean"] is None for c in checks):
        return "NaN at some seed"
    return "no seed spread"


def aggregate_claims(per_seed: list[list[dict]], seeds: list[dict[str, int]]) -> list[dict]:
    """The claims of one run at several seeds, from each seed's claims (``per_seed[j]``, the
    claims of every experiment at seed index ``j``; ``seeds[j]`` maps experiment id -> seed).

    One record per claim, in order: ``holds`` only if the claim holds at every seed where it
    was checked, ``fraction_holding``, ``fragile`` (holds at some seeds, not all, or at every
    seed by a margin under 2 spreads), ``status``
    (``"holds"``, ``"fragile"``, ``"does not hold"``), ``seeds`` and, per seed, ``holds_at``,
    ``measured`` and ``tolerances``; ``spread`` summarises the measured values (see
    :func:`_spread`); ``predicted``, ``statement`` and ``tolerance`` are seed 0's.

    The margin: for every check of the claim (:class:`moebif.experiments.base.Check`, the
    measured value and its bounds) the seed mean of its slack (distance from the nearer bound,
    positive inside) over the seed standard deviation of the measured value (of the slack,
    where the bounds themselves depend on the seed), i.e. how many seed spreads the measured
    value lies inside its tolerance; ``margin`` is the smallest over the checks
    (``margin_check`` names it; ``checks`` lists them all). A claim that holds at every seed
    but whose margin is below :data:`FRAGILE_MARGIN` (2 spreads) is ``fragile`` too: at five
    seeds it passed, yet a new seed fails it with a probability of a few percent or more.
    ``margin`` is ``None`` for a claim with no checks, or none with a seed spread."""
    order: list[tuple[str, str]] = []
    found: dict[tuple[str, str], list[tuple[int, dict]]] = {}
    for j, claims in enumerate(per_seed):
        for c in claims:
            key = (c.get("experiment", ""), c["id"])
            if key not in found:
                order.append(key)
                found[key] = []
            found[key].append((j, c))
    out = []
    for key in order:
        rows = found[key]
        first = rows[0][1]
        holds_at = [bool(c["holds"]) for _, c in rows]
        n_ok = sum(holds_at)
        checks, margin, margin_check = _margins([c for _, c in rows])
        if margin is None:
            margin_check = None
        thin = n_ok == len(rows) and margin is not None and margin < FRAGILE_MARGIN
        fragile = 0 < n_ok < len(rows) or thin
        out.append(
            {
                "id": first["id"],
                "experiment": first.get("experiment", ""),
                "statement": first["statement"],
                "predicted": first["predicted"],
                "measured": [c["measured"] for _, c in rows],
                "spread": _spread([c["measured"] for _, c in rows]),
                "tolerance": first["tolerance"],
                "tolerances": [c["tolerance"] for _, c in rows],
                "holds": n_ok == len(rows),
                "fraction_holding": n_ok / len(rows),
                "fragile": fragile,
                "margin": margin,
                "margin_check": margin_check,
                "margin_note": _margin_note(checks, margin, holds_at),
                "checks": checks,
                "status": "fragile" if fragile else ("holds" if n_ok else "does not hold"),
                "seed_indices": [j for j, _ in rows],
                "seeds": [seeds[j].get(key[0]) for j, _ in rows],
                "holds_at": holds_at,
            }
        )
    return out


def _seed_map(folder: Path) -> dict[str, int]:
    out = {}
    for i in REGISTRY:
        meta = _read_meta(folder, i)
        if meta is not None:
            out[i] = meta.get("seed")
    return out


def _collect(folder: Path) -> list[dict]:
    claims = []
    for i in REGISTRY:
        if (folder / i / "claims.json").exists():
            claims.extend(_load_claims(folder, i))
    return claims


def _write_summary(out: Path, quick: bool, n_seeds: int | None) -> list[dict]:
    """``claims.json`` and ``report.html`` of ``out`` from the experiment folders present."""
    from .report import write_report, write_seeds_report

    if n_seeds is None:
        claims = _collect(out)
        atomic_write_json(out / "claims.json", claims)
        write_report(out, quick=quick)
        return claims
    folders = [seed_folder(out, j) for j in range(n_seeds)]
    for f in folders:
        if f.is_dir():
            atomic_write_json(f / "claims.json", _collect(f))
            write_report(f, quick=quick)
    claims = aggregate_claims([_collect(f) for f in folders], [_seed_map(f) for f in folders])
    atomic_write_json(out / "claims.json", claims)
    write_seeds_report(out, claims, n_seeds=n_seeds, quick=quick)
    return claims


# ----------------------------------------------------------------------------------------------
# the run


class _Display:
    """Rich progress bars on a terminal (one per experiment); plain log lines otherwise."""

    def __init__(self, ids: list[str], enabled: bool):
        self.enabled = enabled
        self.progress = None
        self.tasks = {}
        if enabled:
            from rich.progress import (
                BarColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self.progress = Progress(
                TextColumn("{task.fields[name]:<16}"),
                BarColumn(),
                TextColumn("{task.fields[status]:<12}"),
                TimeElapsedColumn(),
                TextColumn("eta"),
                TimeRemainingColumn(),
                transient=False,
            )
            for i in ids:
                self.tasks[i] = self.progress.add_task("", total=1.0, name=i, status="queued")

    def __enter__(self):
        if self.progress:
            self.progress.start()
        return self

    def __exit__(self, *exc):
        if self.progress:
            self.progress.stop()

    def update(self, exp_id: str, frac: float | None = None, status: str | None = None):
        if self.progress:
            kw = {}
            if frac is not None:
                kw["completed"] = frac
            if status is not None:
                kw["status"] = status
            self.progress.update(self.tasks[exp_id], **kw)

    def log(self, msg: str):
        if self.progress:
            self.progress.console.print(msg, highlight=False, markup=False)
        else:
            print(msg, file=sys.stderr, flush=True)


def _read_run(out: Path) -> dict | None:
    try:
        run = json.loads((out / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    return run if isinstance(run, dict) else None


def reproduce(
    ids: list[str] | None = None,
    *,
    out: str | os.PathLike = "results",
    quick: bool = False,
    jobs: int = 1,
    force: bool = False,
    show_progress: bool | None = None,
    seed: int | None = None,
    seeds: int | None = None,
) -> list[ExperimentOutcome]:
    """Run the selected experiments (default: all registered), then write ``claims.json`` and
    ``report.html`` for everything present in ``out``.

    ``seed``: the base seed every experiment derives its seed from (:func:`experiment_seed`;
    default: each experiment's own). ``seeds``: run every experiment at this many seeds, each
    in its own folder ``out/seed-<j>``, and write the claims of all seeds together (see the
    module docstring). Returns one outcome per experiment (and seed)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    ids = list(REGISTRY) if not ids else ids
    if seeds is not None and seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    multi = seeds is not None
    indices = list(range(seeds)) if multi else [0]
    folders = {j: seed_folder(out, j) if multi else out for j in indices}
    tasks, outcomes = [], {}
    for j in indices:
        folders[j].mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(folders[j])
        for i in ids:
            mod = load_experiment(i)
            s = experiment_config(mod, quick, base_seed=seed, index=j).seed
            if force or not is_complete(folders[j], i, quick, s):
                tasks.append((i, j))
            else:
                outcomes[i, j] = ExperimentOutcome(
                    i, "skipped", 0.0, _load_claims(folders[j], i), seed_index=j
                )
    if jobs > 1:  # costliest first (stable: registry and seed order otherwise)
        tasks.sort(key=lambda t: -COST.get(t[0], (5, 40))[0 if quick else 1])
    atomic_write_json(
        out / RUN_FILE,
        {"quick": quick, "base_seed": seed, "seeds": seeds, "ids": ids, "moebif": __version__},
    )

    with _Display(ids, show_progress) as disp:
        for i, j in outcomes:
            where = f" (seed {j})" if multi else ""
            disp.log(f"[{i}]{where} already complete, skipped (use --force to recompute)")
        for i in ids:
            kept = sum((i, j) in outcomes for j in indices)
            disp.update(i, kept / len(indices), "done (kept)" if kept == len(indices) else None)
        if tasks:
            _run_all(tasks, quick, folders, seed, max(1, jobs), disp, outcomes, len(indices), multi)

    _write_summary(out, quick, seeds)
    return [outcomes[i, j] for j in indices for i in ids]


def _remove_stale_temporaries(out: Path) -> None:
    """Folders a killed run left half-written (never a finished experiment's folder)."""
    for d in out.glob(".*.partial-*"):
        shutil.rmtree(d, ignore_errors=True)
    for d in out.glob(".*.old-*"):
        shutil.rmtree(d, ignore_errors=True)


def _run_all(tasks, quick, folders, base_seed, jobs, disp, outcomes, n_seeds, multi):
    """Run ``tasks`` (experiment id, seed index): in worker processes, or with one job in this
    process (same code, same numbers; no start-up cost of a worker)."""
    frac: dict[tuple[str, int], float] = {k: 1.0 for k in outcomes}

    def show(exp_id, status=None):
        done = sum(v for (i, _), v in frac.items() if i == exp_id)
        disp.update(exp_id, done / n_seeds, status)

    def record(i, j, res):
        where = f" (seed {j})" if multi else ""
        frac[i, j] = 1.0
        if "error" in res:
            outcomes[i, j] = ExperimentOutcome(i, "failed", 0.0, [], res["error"], seed_index=j)
            show(i, "FAILED")
            last = res["error"].strip().splitlines()[-1]
            disp.log(f"[{i}]{where} FAILED: {last}")
            return
        n_ok = sum(c["holds"] for c in res["claims"])
        outcomes[i, j] = ExperimentOutcome(i, "done", res["seconds"], res["claims"], seed_index=j)
        finished = all(v == 1.0 for (e, _), v in frac.items() if e == i)
        show(i, "done" if finished else None)
        disp.log(
            f"[{i}]{where} done in {res['seconds']:.1f} s ({n_ok}/{len(res['claims'])} claims hold)"
        )

    for i, j in tasks:
        frac[i, j] = 0.0
        show(i, "queued")
    if jobs == 1:
        for i, j in tasks:

            def progress(done, total, key=(i, j)):
                frac[key] = done / total if total else 0.0
                show(key[0], "running")

            record(i, j, _worker(i, quick, str(folders[j]), base_seed, j, None, progress))
        return

    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # clean workers: no inherited numba/torch thread state
    with ctx.Manager() as manager:
        queue = manager.Queue()
        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=ctx) as pool:
            # each worker gets its share of the cores for the numba kernels (results do not
            # depend on the thread count); more threads than cores only spin and wait
            share = max(1, (os.cpu_count() or 1) // jobs)
            futures = {
                pool.submit(_worker, i, quick, str(folders[j]), base_seed, j, queue, None, share): (
                    i,
                    j,
                )
                for i, j in tasks
            }
            pending = set(futures)
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                while not queue.empty():
                    key, d, tot = queue.get_nowait()
                    frac[key] = d / tot if tot else 0.0
                    show(key[0], "running")
                for f in done:
                    record(*futures[f], f.result())


# ----------------------------------------------------------------------------------------------
# re-derive the claims of a finished run


class RecheckError(ValueError):
    """The folder given to :func:`recheck` holds no finished run."""


@dataclass
class RecheckOutcome:
    """One experiment (at one seed) re-checked: which claims changed, or why it could not be."""

    id: str
    seed_index: int | None
    claims: list[dict]
    changed: list[str] = field(default_factory=list)  # claim ids whose record differs
    added: list[str] = field(default_factory=list)  # re-derived, not stored before
    removed: list[str] = field(default_factory=list)  # stored, no longer derived
    error: str = ""

    @property
    def ok(self) -> bool:
        clean = not (self.changed or self.added or self.removed or self.error)
        return clean and all(c["holds"] for c in self.claims)


def _recheck_folder(folder: Path, ids: list[str], index: int | None) -> list[RecheckOutcome]:
    outcomes = []
    for exp_id in ids:
        meta = _read_meta(folder, exp_id)
        if meta is None or meta.get("complete") is not True:
            continue
        stored = _load_claims(folder, exp_id)
        try:
            mod = load_experiment(exp_id)
            config = config_from_dict(mod.Config, meta["config"])
            data = json.loads((folder / exp_id / "data.json").read_text())
            claims = _claim_dicts(mod.claims(data, config), exp_id)
            notes = mod.notes(data, config) if hasattr(mod, "notes") else ""
        except Exception as e:  # reported, the others go on
            outcomes.append(RecheckOutcome(exp_id, index, stored, error=f"{type(e).__name__}: {e}"))
            continue
        old = {c["id"]: c for c in stored}
        new = {c["id"]: c for c in claims}
        oc = RecheckOutcome(
            exp_id,
            index,
            claims,
            changed=[k for k in new if k in old and new[k] != old[k]],
            added=[k for k in new if k not in old],
            removed=[k for k in old if k not in new],
        )
        if claims != stored:
            atomic_write_text(
                folder / exp_id / "claims.json", json.dumps(claims, indent=2, allow_nan=False)
            )
        if notes != meta.get("notes", ""):
            atomic_write_text(
                folder / exp_id / "config.json",
                json.dumps({**meta, "notes": notes}, indent=2, allow_nan=False),
            )
        outcomes.append(oc)
    return outcomes


def recheck(out: str | os.PathLike, ids: list[str] | None = None) -> list[RecheckOutcome]:
    """Re-derive every claim of the finished run in ``out`` from its saved ``data.json`` and
    ``config.json`` (nothing is recomputed), rewrite the claims files and the report, and say
    which claims changed. A multi-seed run is re-checked seed by seed and summarised again.

    Raises :class:`RecheckError` if ``out`` holds no finished experiment."""
    out = Path(out)
    if not out.is_dir():
        raise RecheckError(f"{str(out)!r} is not a folder")
    ids = list(REGISTRY) if not ids else ids
    run = _read_run(out) or {}
    n_seeds = run.get("seeds")
    if n_seeds is None and seed_folder(out, 0).is_dir() and not _collect(out):
        n_seeds = len(list(out.glob("seed-*")))
    quick = run.get("quick")
    outcomes: list[RecheckOutcome] = []
    if n_seeds:
        for j in range(n_seeds):
            outcomes += _recheck_folder(seed_folder(out, j), ids, j)
    else:
        outcomes = _recheck_folder(out, ids, None)
    if not outcomes:
        raise RecheckError(f"no finished experiment in {str(out)!r}")
    if quick is None:  # a run from before run.json: the variant is in the experiments' config
        folder = seed_folder(out, 0) if n_seeds else out
        quick = any(
            (_read_meta(folder, o.id) or {}).get("quick") is True
            for o in outcomes
            if o.seed_index in (None, 0)
        )
    _write_summary(out, bool(quick), n_seeds or None)
    return outcomes
