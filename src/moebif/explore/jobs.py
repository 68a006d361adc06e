"""Stochastic trajectories for the explorer, run in one worker thread with progress and cancel.

A job runs :func:`moebif.simulate_batch_router` (two experts, the batch router of sec. 8) at the
current point with the balancer's simulator options, and the mean-field curve of the effective
router (:func:`moebif.solve_meanfield`) on the same record times. The simulator reports progress
after every chunk of steps; the callback raises :class:`Cancelled` once the job's cancel flag is
set, which ends the simulation at that chunk boundary: a cancelled job stops using the CPU
within one chunk (about a million replica-steps, tens of milliseconds), not when it would have
finished.
"""

from __future__ import annotations

import itertools
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from ..model.meanfield import solve_meanfield
from ..params import ParameterError
from .views import Point

__all__ = ["Cancelled", "JobRunner", "TrajectoryJob", "check_settings"]

# replica-steps per simulator chunk: the cancel latency (a few tens of ms on one core)
CHUNK_WORK = 1 << 20
MAX_RECORDS = 500  # records kept per run (record_every = steps // MAX_RECORDS)
SHOWN_RUNS = 8  # individual runs sent to the page besides the mean and sd
LIMITS = {"runs": 4000, "steps": 10**8, "work": 4 * 10**9, "trajectory_meanfield_work": 2e5}
"""``trajectory_meanfield_work``: the largest ``steps * eta * (gamma + |a_eff|/2T)`` of a job. The
mean-field
curve drawn beside the runs is solved once, after the simulation, on the whole time span, by an
explicit solver whose steps follow the field's fastest rate (~25 us each, one call that cannot
stop in between): 2e5 is a few seconds. It is ten times the view's bound (``MEANFIELD_WORK``): a
job runs once, in the background, not at every redraw."""


class Cancelled(Exception):
    """Raised inside the simulator's progress callback to stop a cancelled job."""


def _int(name: str, value, lo: int, hi: int) -> int:
    if isinstance(value, bool):
        raise ParameterError(name, f"must be an integer, got {value!r}")
    try:
        v = int(value)
    except (TypeError, ValueError):
        raise ParameterError(name, f"must be an integer, got {value!r}") from None
    if v != value and not (isinstance(value, str) and str(v) == value.strip()):
        raise ParameterError(name, f"must be an integer, got {value!r}")
    if not lo <= v <= hi:
        raise ParameterError(name, f"must be in {lo}..{hi}, got {v}")
    return v


def check_settings(pt: Point, *, batch, eta, steps, runs, seed) -> dict:
    """Validate the trajectory settings with the simulator's own checks (one step of the numpy
    reference router, microseconds) plus the explorer's size limits; :class:`ParameterError`
    naming the setting otherwise. Returns the settings with ``record_every``."""
    from ..sim.router import simulate_batch_router_reference

    steps = _int("steps", steps, 1, LIMITS["steps"])
    runs = _int("runs", runs, 1, LIMITS["runs"])
    batch = _int("batch", batch, 1, 10**9)
    seed = _int("seed", seed, 0, 2**63 - 1)
    if steps * runs > LIMITS["work"]:
        raise ParameterError(
            "runs", f"runs x steps must be <= {LIMITS['work']:.0e}, got {runs * steps:.3g}"
        )
    if pt.balancer.simulate is None:
        raise ParameterError(
            "balancer", f"{pt.balancer.name!r} is not implemented in the stochastic router yet"
        )
    extra = dict(pt.balancer.simulate(pt.strength))
    spec = extra.pop("balancer", None)
    if spec is not None:  # the balancing schemes of the stacks (moebif.model.balancers)
        from ..model.balancers import parse_balancers

        parse_balancers(spec)
    simulate_batch_router_reference(
        pt.params, batch=batch, eta=eta, steps=1, runs=1, seed=seed, y0=pt.y0, **extra
    )
    rate = pt.effective.gamma + abs(pt.effective.a) / (2.0 * pt.effective.T)
    t_end = steps * float(eta)
    if not math.isfinite(t_end * rate) or t_end * rate > LIMITS["trajectory_meanfield_work"]:
        most = max(1, int(LIMITS["trajectory_meanfield_work"] / (float(eta) * rate)))
        raise ParameterError(
            "steps",
            f"steps x eta = {t_end:.4g} is too long for the mean-field curve drawn beside the "
            f"runs (t * (gamma + |a|/2T) <= {LIMITS['trajectory_meanfield_work']:.0e}): at most "
            f"{most} steps at eta = {float(eta):g} here; use fewer steps or a smaller eta "
            "(longer runs: moebif simulate)",
        )
    return {
        "batch": batch,
        "eta": float(eta),
        "steps": steps,
        "runs": runs,
        "seed": seed,
        "record_every": max(1, steps // MAX_RECORDS),
    }


@dataclass
class TrajectoryJob:
    """One trajectory request. ``state``: ``queued``, ``running``, ``done``, ``cancelled`` or
    ``failed``; ``done_steps`` of ``settings["steps"]``; ``progress_calls`` counts the
    simulator's progress reports (it stops growing once the simulation has stopped)."""

    id: str
    point: Point
    settings: dict
    state: str = "queued"
    done_steps: int = 0
    progress_calls: int = 0
    result: dict | None = None
    error: str | None = None
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    cancel_flag: threading.Event = field(default_factory=threading.Event)
    finished_flag: threading.Event = field(default_factory=threading.Event)

    def status(self, *, with_result: bool = True) -> dict:
        out = {
            "id": self.id,
            "state": self.state,
            "done_steps": self.done_steps,
            "steps": self.settings["steps"],
            "settings": self.settings,
            "error": self.error,
        }
        if with_result and self.result is not None:
            out["result"] = self.result
        return out


class JobRunner:
    """Runs trajectory jobs one at a time (one worker thread; the simulator itself uses numba's
    threads). A new job cancels the ones still queued or running: the page shows one request at
    a time. Keeps the last ``keep`` jobs for their results and exports."""

    def __init__(self, keep: int = 16):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moebif-explore-sim")
        self._jobs: dict[str, TrajectoryJob] = {}
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._keep = keep
        self.warm = threading.Event()

    def warm_up(self) -> None:
        """Compile (or load from numba's cache) the simulator kernels in the worker, so that the
        first request does not wait for it."""

        def run():
            from ..params import RouterParams
            from ..sim.router import simulate_batch_router

            try:
                p = RouterParams(a=1.0, gamma=1.0, T=1.0)
                for runs in (1, 4):  # the serial and the parallel kernel
                    simulate_batch_router(p, batch=8, eta=0.01, steps=4, runs=runs)
            finally:
                self.warm.set()

        self._pool.submit(run)

    def submit(self, point: Point, settings: dict) -> TrajectoryJob:
        with self._lock:
            for job in self._jobs.values():
                if job.state in ("queued", "running"):
                    job.cancel_flag.set()
            job = TrajectoryJob(id=f"t{next(self._ids)}", point=point, settings=settings)
            self._jobs[job.id] = job
            while len(self._jobs) > self._keep:
                oldest = next(iter(self._jobs))
                if self._jobs[oldest].state in ("queued", "running"):
                    break
                del self._jobs[oldest]
        self._pool.submit(self._run, job)
        return job

    def get(self, job_id: str) -> TrajectoryJob | None:
        return self._jobs.get(job_id)

    def cancel(self, job_id: str) -> TrajectoryJob | None:
        job = self._jobs.get(job_id)
        if job is not None:
            job.cancel_flag.set()
        return job

    def shutdown(self, *, wait: bool = True) -> None:
        """Cancel every job; ``wait``: until the worker has stopped (a job stops within one
        chunk; the kernels' warm-up compilation cannot be interrupted)."""
        with self._lock:
            for job in self._jobs.values():
                job.cancel_flag.set()
        self._pool.shutdown(wait=wait, cancel_futures=not wait)

    def _run(self, job: TrajectoryJob) -> None:
        from ..sim.router import simulate_batch_router

        try:
            if job.cancel_flag.is_set():
                job.state = "cancelled"
                return
            job.state, job.started = "running", time.monotonic()
            s, pt = job.settings, job.point

            def progress(done: int, total: int) -> None:
                job.done_steps = int(done)
                job.progress_calls += 1
                if job.cancel_flag.is_set():
                    raise Cancelled

            res = simulate_batch_router(
                pt.params,
                batch=s["batch"],
                eta=s["eta"],
                steps=s["steps"],
                runs=s["runs"],
                seed=s["seed"],
                y0=pt.y0,
                record_every=s["record_every"],
                progress=progress,
                chunk_steps=max(1, CHUNK_WORK // s["runs"]),
                **pt.balancer.simulate(pt.strength),
            )
            if job.cancel_flag.is_set():  # the mean field below is one call: not started
                raise Cancelled
            u_mf = solve_meanfield(pt.effective, res.t, y0=pt.y0)
            mean, std = res.u_mean, res.u_std
            job.result = {
                "t": res.t,
                "u_mean": mean,
                "u_std": std,
                "u_runs": res.u_hat[:SHOWN_RUNS],
                "u_meanfield": u_mf,
                "sup_error": float(np.max(np.abs(mean - u_mf))),
                "final_u_mean": float(mean[-1]),
                "final_u_std": float(std[-1]),
                "seconds": res.seconds,
            }
            job.done_steps = s["steps"]
            job.state = "done"
        except Cancelled:
            job.state = "cancelled"
        except (ParameterError, FloatingPointError, ValueError) as e:
            job.state, job.error = "failed", str(e)
        except Exception as e:  # a bug: reported on the page, not a silent hang
            job.state, job.error = "failed", f"internal error: {type(e).__name__}: {e}"
        finally:
            job.finished = time.monotonic()
            job.finished_flag.set()
