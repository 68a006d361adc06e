"""The branches of m winners at gap ``d`` with a scheme's terms, and the one scan of them that
:func:`~moebif.model.balancer_theory.balanced_thresholds`, the strength scan and the capacity scan
share (part 2 of :mod:`moebif.model.balancer_theory`)."""

from __future__ import annotations

import functools
import math

import numpy as np

from ..field import VectorField
from ..topk import two_level_inclusion, two_level_inclusion_grid

__all__ = [
    "extreme_on_stable",
    "gap_grid",
    "max_eig",
    "point_a",
    "scan_branch",
    "two_level_state",
    "two_level_table",
    "winner_set",
]


def winner_set(n: int, k: int):
    if n <= 16:
        return list(range(1, n))
    return sorted(set(range(1, k + 2)) | set(range(n - k - 1, n)))


@functools.lru_cache(maxsize=64)
def two_level_table(n: int, k: int, m: int, grid: tuple) -> tuple:
    """``(pi_w, pi_l, J_ww, J_ll, J_wl)`` (logit units) on a grid of gaps; for top-1 the softmax
    values (cached: independent of the scheme)."""
    if k == 1:
        out = []
        for d in grid:
            e = math.exp(-d)
            pw = 1.0 / (m + (n - m) * e)
            pl = e * pw
            out.append((pw, pl, -pw * pw, -pl * pl, -pw * pl))
        return tuple(out)
    return tuple(tuple(float(v) for v in row) for row in two_level_inclusion_grid(n, m, k, grid))


def two_level_state(field: VectorField, n, k, m, d, c, vals, a: float):
    """The :class:`FieldState` of the m-winner state ``r = c + T d 1_W`` with its softmax and
    inclusion probabilities built from the two-level values (no integral evaluated)."""
    T = field.T
    e = math.exp(-d)
    pw = 1.0 / (m + (n - m) * e)
    p = np.full(n, e * pw)
    p[:m] = pw
    dp = (np.diag(p) - np.outer(p, p)) / T
    if k == 1:
        pi, dpi = p, dp
    else:
        pi_w, pi_l, j_ww, j_ll, j_wl = vals
        pi = np.full(n, pi_l)
        pi[:m] = pi_w
        D = np.full((n, n), j_wl)
        if m >= 2:
            D[:m, :m] = j_ww
        if n - m >= 2:
            D[m:, m:] = j_ll
        np.fill_diagonal(D, 0.0)
        np.fill_diagonal(D, -D.sum(axis=1))
        dpi = D / T
    r = np.full(n, c)
    r[:m] += T * d
    return field.state(r, p=p, dp=dp, pi=pi, dpi=dpi, a=a)


def max_eig(J: np.ndarray) -> float:
    return float(np.max(np.linalg.eigvals(J).real))


def point_a(field, n, k, m, d, vals, shift_inv):
    """``(a, lambda_max)`` of the m-winner equilibrium at gap ``d`` (None: no such state with
    ``a > 0``). The two equations are linear in ``a``; for shift-invariant terms the common
    level drops out, otherwise it is solved for."""

    def parts(c):
        s0 = two_level_state(field, n, k, m, d, c, vals, 0.0)
        f0 = field.drift_at(s0)
        f1 = field.drift_at(s0.with_a(1.0))
        return f1 - f0, f0

    if shift_inv:
        X, f0 = parts(0.0)
        dX = X[0] - X[-1]
        if not dX > 0:
            return None
        a = -(f0[0] - f0[-1]) / dX
        c = 0.0
    else:
        # the terms are affine in the common level c (the z-loss: through lse): solve the two
        # equations, linear in (a, c), exactly
        X0, f00 = parts(0.0)
        X1, f01 = parts(1.0)
        dc = f01 - f00
        M = np.array([[X0[0], dc[0]], [X0[-1], dc[-1]]])
        try:
            a, c = np.linalg.solve(M, [-f00[0], -f00[-1]])
        except np.linalg.LinAlgError:
            return None
    if not a > 0:
        return None
    st = two_level_state(field, n, k, m, d, c, vals, a)
    return float(a), max_eig(field.jacobian_at(st))


def extreme_on_stable(grid, vals, lams, point, *, largest: bool):
    """Smallest (or largest) value of a sampled branch quantity over its stable samples, refined
    at an interior extremum (a fold) or at a stability onset. ``point(d) -> (value, lam)`` or
    None. Returns ``(value, d, index)`` or None."""
    from scipy.optimize import brentq, minimize_scalar

    sgn = -1.0 if largest else 1.0
    ok = [v is not None and lam < 0.0 for v, lam in zip(vals, lams, strict=True)]
    idx = [i for i, o in enumerate(ok) if o]
    if not idx:
        return None
    i0 = min(idx, key=lambda i: sgn * vals[i])
    best_v, best_d = vals[i0], grid[i0]
    last = len(grid) - 1
    if 0 < i0 < last and ok[i0 - 1] and ok[i0 + 1]:

        def f(d):
            q = point(d)
            return sgn * q[0] if q is not None and q[1] < 0 else math.inf

        res = minimize_scalar(
            f, bounds=(grid[i0 - 1], grid[i0 + 1]), method="bounded", options={"xatol": 1e-10}
        )
        if math.isfinite(res.fun) and sgn * res.fun < sgn * best_v:
            best_v, best_d = sgn * float(res.fun), float(res.x)
    else:
        for j in (i0 - 1, i0 + 1):
            if 0 <= j <= last and not ok[j] and vals[j] is not None:

                def lam(d):
                    q = point(d)
                    return q[1] if q is not None else 1.0

                try:
                    d_on = brentq(lam, min(grid[j], grid[i0]), max(grid[j], grid[i0]), xtol=1e-12)
                except ValueError:
                    continue
                q = point(d_on)
                if q is not None and sgn * q[0] < sgn * best_v:
                    best_v, best_d = q[0], d_on
    return best_v, best_d, i0


def gap_grid(n: int, d_max: float, points: int) -> tuple:
    """Gaps ``0.01 .. d_max`` (``d_max`` rounded up to a multiple of 16, so that the cached
    two-level tables are shared between nearby calls)."""
    d_max = 16.0 * math.ceil(d_max / 16.0)
    return tuple(float(x) for x in np.geomspace(0.01, d_max, points))


def scan_branch(n: int, k: int, m: int, grid: tuple, point, *, largest: bool):
    """The one branch scan: ``point(d, vals) -> (value, lambda_max)`` or ``None`` at every gap of
    ``grid`` on the ``m``-winner branch (``vals``: the cached two-level values,
    :func:`two_level_table`), then the extreme of the value over the stable samples, refined
    with the exact two-level values (:func:`extreme_on_stable`). Returns ``(candidate,
    table)``; ``candidate`` is ``(value, d, index)`` or ``None``."""
    table = two_level_table(n, k, m, grid)
    pts = [point(d, table[i]) for i, d in enumerate(grid)]
    vals = [None if q is None else q[0] for q in pts]
    lams = [1.0 if q is None else q[1] for q in pts]

    def exact(d):
        v = two_level_inclusion(n, m, k, float(d)) if k > 1 else None
        return point(d, v)

    return extreme_on_stable(grid, vals, lams, exact, largest=largest), table
