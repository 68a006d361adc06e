"""``moebif reproduce``: run the registered experiments, write their outputs atomically, resume.

Layout of the output folder ``OUT``::

    OUT/<id>/figure.png, figure.svg   the figure
    OUT/<id>/data.json                its data
    OUT/<id>/claims.json              the claims it checks
    OUT/<id>/config.json              resolved config, seed, versions, wall time, variant
    OUT/claims.json                   every claim, in registry order
    OUT/report.html                   self-contained report (figures embedded)

Each experiment is built in a hidden temporary folder and renamed into place when complete, so a
killed run loses only the experiments in flight; a re-run skips the finished ones (same variant,
quick or full) unless ``force``.
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
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

from .._io import atomic_write_json, default_mode, jsonable
from .._version import __version__
from ..style import save_figure
from . import REGISTRY, load_experiment
from .base import ExperimentResult, config_to_dict

__all__ = ["ExperimentOutcome", "is_complete", "reproduce", "run_one"]


@dataclass
class ExperimentOutcome:
    id: str
    status: str  # "done", "skipped", "failed"
    seconds: float
    claims: list[dict]
    error: str = ""


def _versions() -> dict:
    import importlib.metadata as md

    out = {"moebif": __version__, "python": platform.python_version()}
    for name in ("numpy", "scipy", "numba", "matplotlib", "torch", "scikit-learn"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def is_complete(out: Path, exp_id: str, quick: bool) -> bool:
    cfg = out / exp_id / "config.json"
    try:
        meta = json.loads(cfg.read_text())
    except (OSError, ValueError):
        return False
    return meta.get("complete") is True and meta.get("quick") == quick


def evaluate(mod, config, progress: Callable | None = None) -> ExperimentResult:
    """Run one experiment module: its data, its claims (from the data alone) and notes."""
    out = mod.run(config, progress=progress)
    if isinstance(out, ExperimentResult):  # a module not yet split into run / claims / plot
        out.legacy = True
        return out
    notes = mod.notes(out, config) if hasattr(mod, "notes") else ""
    return ExperimentResult(data=out, claims=mod.claims(out, config), notes=notes)


def run_one(exp_id: str, quick: bool, out: str, progress: Callable | None = None) -> dict:
    """Run one experiment and move its finished folder into ``out/<exp_id>`` (atomic rename)."""
    import matplotlib.pyplot as plt

    mod = load_experiment(exp_id)
    config = mod.quick() if quick else mod.Config()
    t0 = time.perf_counter()
    result = evaluate(mod, config, progress)
    fig = mod.plot(result, config) if result.legacy else mod.plot(result.data, config)
    seconds = time.perf_counter() - t0

    out_dir = Path(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{exp_id}.partial-", dir=out_dir))
    try:
        os.chmod(tmp, default_mode(directory=True))
        save_figure(fig, tmp / "figure")
        plt.close(fig)
        (tmp / "data.json").write_text(json.dumps(jsonable(result.data), allow_nan=False))
        claims = [{**c.to_dict(), "experiment": exp_id} for c in result.claims]
        (tmp / "claims.json").write_text(json.dumps(claims, indent=2, allow_nan=False))
        meta = {
            "id": exp_id,
            "title": mod.TITLE,
            "paper": mod.PAPER,
            "quick": quick,
            "config": config_to_dict(config),
            "seed": getattr(config, "seed", None),
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


def _worker(exp_id: str, quick: bool, out: str, queue) -> dict:
    def progress(done, total):
        if queue is not None:
            queue.put((exp_id, float(done), float(total)))

    try:
        return run_one(exp_id, quick, out, progress)
    except Exception:  # reported in the parent as a failed experiment, the others go on
        return {"error": traceback.format_exc()}


def _load_claims(out: Path, exp_id: str) -> list[dict]:
    try:
        return json.loads((out / exp_id / "claims.json").read_text())
    except (OSError, ValueError):
        return []


class _Display:
    """Rich progress bars on a terminal; plain log lines otherwise."""

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
                TextColumn("{task.fields[name]:<8}"),
                BarColumn(),
                TextColumn("{task.fields[status]:<10}"),
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


def reproduce(
    ids: list[str] | None = None,
    *,
    out: str | os.PathLike = "results",
    quick: bool = False,
    jobs: int = 1,
    force: bool = False,
    show_progress: bool | None = None,
) -> list[ExperimentOutcome]:
    """Run the selected experiments (default: all registered), then write ``claims.json`` and
    ``report.html`` for everything present in ``out``. Returns one outcome per selected id."""
    from .report import write_report

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(out)
    ids = list(REGISTRY) if not ids else ids
    if show_progress is None:
        show_progress = sys.stderr.isatty()
    todo = [i for i in ids if force or not is_complete(out, i, quick)]
    outcomes: dict[str, ExperimentOutcome] = {}
    for i in ids:
        if i not in todo:
            outcomes[i] = ExperimentOutcome(i, "skipped", 0.0, _load_claims(out, i))

    with _Display(ids, show_progress) as disp:
        for i in outcomes:
            disp.update(i, 1.0, "done (kept)")
            disp.log(f"[{i}] already complete, skipped (use --force to recompute)")
        if todo:
            _run_all(todo, quick, out, max(1, jobs), disp, outcomes)

    all_claims = []
    for i in REGISTRY:
        if (out / i / "claims.json").exists():
            all_claims.extend(_load_claims(out, i))
    atomic_write_json(out / "claims.json", all_claims)
    write_report(out, quick=quick)
    return [outcomes[i] for i in ids]


def _remove_stale_temporaries(out: Path) -> None:
    """Folders a killed run left half-written (never a finished experiment's folder)."""
    for d in out.glob(".*.partial-*"):
        shutil.rmtree(d, ignore_errors=True)
    for d in out.glob(".*.old-*"):
        shutil.rmtree(d, ignore_errors=True)


def _run_all(todo, quick, out, jobs, disp, outcomes):
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # clean workers: no inherited numba/torch thread state
    with ctx.Manager() as manager:
        queue = manager.Queue()
        with ProcessPoolExecutor(max_workers=min(jobs, len(todo)), mp_context=ctx) as pool:
            futures = {}
            for i in todo:
                futures[pool.submit(_worker, i, quick, str(out), queue)] = i
                disp.update(i, 0.0, "queued")
            pending = set(futures)
            started = set()
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                while not queue.empty():
                    exp_id, d, tot = queue.get_nowait()
                    if exp_id not in started:
                        started.add(exp_id)
                    disp.update(exp_id, d / tot if tot else None, "running")
                for f in done:
                    i = futures[f]
                    res = f.result()
                    if "error" in res:
                        outcomes[i] = ExperimentOutcome(i, "failed", 0.0, [], res["error"])
                        disp.update(i, None, "FAILED")
                        last = res["error"].strip().splitlines()[-1]
                        disp.log(f"[{i}] FAILED: {last}")
                    else:
                        n_ok = sum(c["holds"] for c in res["claims"])
                        outcomes[i] = ExperimentOutcome(i, "done", res["seconds"], res["claims"])
                        disp.update(i, 1.0, "done")
                        disp.log(
                            f"[{i}] done in {res['seconds']:.1f} s "
                            f"({n_ok}/{len(res['claims'])} claims hold)"
                        )
