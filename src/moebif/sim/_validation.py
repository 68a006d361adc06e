"""What every router driver shares: argument checks (each failure a :class:`ParameterError`
naming the argument), time schedules given as arrays or callables, and how work is cut into
kernel calls and replica blocks."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..params import ParameterError, RouterParams, check_finite

__all__ = [
    "BLOCK",
    "CHUNK_WORK",
    "check_int",
    "check_run",
    "evaluate_schedule",
    "finite_array",
    "parse_schedule",
    "replica_blocks",
    "schedule_chunk",
]

# replica-steps per kernel call: ~0.05-0.2 s of work, fine-grained enough for a progress bar
CHUNK_WORK = 1 << 22
# replicas interleaved by one thread (see moebif.sim._kernels.sampling): enough to overlap
# their dependency chains, few enough for their state to stay in L1
BLOCK = 16


def replica_blocks(runs: int, threads: int) -> int:
    """Number of replica blocks: about ``BLOCK`` replicas each, a multiple of ``threads``."""
    per_thread = -(-runs // (BLOCK * threads))
    return max(1, min(runs, threads * per_thread))


def check_int(name: str, value, minimum: int) -> int:
    """``value`` as an int, or :class:`ParameterError` unless it is an integer ``>= minimum``."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ParameterError(name, f"must be an integer, got {value!r}")
    if value < minimum:
        raise ParameterError(name, f"must be >= {minimum}, got {value}")
    return int(value)


def finite_array(name: str, value) -> np.ndarray:
    """``value`` as a float array, or :class:`ParameterError` unless numeric and finite."""
    try:
        arr = np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        raise ParameterError(name, f"must be numeric, got {value!r}") from None
    if not np.all(np.isfinite(arr)):
        raise ParameterError(name, "must be finite")
    return arr


def evaluate_schedule(fn: Callable, t: np.ndarray) -> np.ndarray:
    """``fn(t)`` on the ODE times ``t`` of a chunk of steps (a schedule such as ``h(t)``), finite,
    shape of ``t``; :class:`ParameterError` naming ``h`` otherwise."""
    # one vectorised call when the callable accepts arrays, otherwise point by point
    try:
        with np.errstate(all="ignore"):
            out = np.asarray(fn(t), dtype=float)
        out = np.broadcast_to(out, t.shape).copy() if out.ndim == 0 else out
    except Exception:
        out = None
    if out is None or out.shape != t.shape:
        try:
            out = np.array([float(fn(float(s))) for s in t])
        except Exception as exc:
            raise ParameterError("h", f"calling h(t) failed: {exc}") from exc
    if not np.all(np.isfinite(out)):
        bad = t[~np.isfinite(out)][0]
        raise ParameterError(
            "h", f"h(t) must be finite, got {out[~np.isfinite(out)][0]} at t={bad}"
        )
    return out


def check_run(params, batch, eta, steps, runs, seed, rho):
    """Validation shared by every router driver: returns ``(batch, eta, steps, runs, seed,
    rho)`` normalised, or raises :class:`ParameterError` naming the argument."""
    if not isinstance(params, RouterParams):
        raise ParameterError("params", f"must be a RouterParams, got {type(params).__name__}")
    batch = check_int("batch", batch, 1)
    steps = check_int("steps", steps, 1)
    runs = check_int("runs", runs, 1)
    seed = check_int("seed", seed, 0)
    if seed >= 2**64:
        raise ParameterError("seed", f"must be < 2**64, got {seed}")
    eta = check_finite("eta", eta)
    if eta <= 0.0:
        raise ParameterError("eta", f"must be > 0, got {eta:g}")
    if eta * params.gamma >= 2.0:
        # the forgetting term alone makes the discrete map diverge: |1 - eta gamma| >= 1
        raise ParameterError(
            "eta", f"eta * gamma must be < 2 for a bounded router, got {eta * params.gamma:g}"
        )
    rho = check_finite("rho", rho)
    if rho < 0.0:
        raise ParameterError("rho", f"must be >= 0, got {rho:g}")
    return batch, eta, steps, runs, seed, rho


def parse_schedule(name: str, value, default: float, steps: int, eta: float):
    """A per-step schedule given as ``None`` (``default``), a scalar, an array of shape
    ``(steps,)`` or a callable of ODE time: ``(values, stride, callable)``."""
    if value is None:
        return np.array([default]), 0, None
    if callable(value):
        evaluate_schedule(value, np.zeros(1))
        return None, 1, value
    if np.ndim(value) == 0:
        return np.array([check_finite(name, value)]), 0, None
    arr = finite_array(name, value)
    if arr.shape != (steps,):
        raise ParameterError(
            name, f"must be a scalar, a callable or of shape ({steps},), got {arr.shape}"
        )
    return np.ascontiguousarray(arr), 1, None


def schedule_chunk(vals, stride, fn, n0, n1, eta, name):
    """The values of a :func:`parse_schedule` schedule for steps ``n0 <= n < n1``."""
    if fn is None:
        return vals if stride == 0 else np.ascontiguousarray(vals[n0:n1])
    try:
        return evaluate_schedule(fn, np.arange(n0, n1) * eta)
    except ParameterError as exc:
        raise ParameterError(name, str(exc).split(": ", 1)[1]) from None
