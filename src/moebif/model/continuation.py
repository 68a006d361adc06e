"""Numerical continuation of equilibria of the N-expert mean-field router (8) and of its folds.

Equilibria ``F(x, p) = 0`` of ``x' = F(x, p)`` (eq. 8: ``F = a pi(r)/k - gamma r + b``; ``k = 1``
is the paper's softmax router) are followed in one parameter ``p`` by pseudo-arclength steps
(Keller): with ``y = (x, p)`` and the unit tangent ``t`` (``[F_x F_p] t = 0``), a step of length
``ds`` predicts ``y + ds t`` and corrects by Newton's method on the extended system

    F(y) = 0,    t . (y - y_pred) = 0,

whose Jacobian ``[[F_x, F_p], [t^T]]`` stays regular at folds. The new tangent solves
``[[F_x, F_p], [t_old^T]] t = (0, 1)`` (orientation kept). The step grows after easy
corrections and shrinks after hard or failed ones.

Along the branch: stability from the eigenvalues of ``F_x`` (symmetric for (8), a gradient
system, so they are real); a **fold** (limit point) where the tangent's parameter component
changes sign; a **branch point** where ``det [[F_x, F_p], [t^T]]`` changes sign, or where the
number of unstable eigenvalues jumps without a fold. The second test is needed here: at the
uniform state the symmetric group S_N makes the kernel (N - 1)-dimensional, and a determinant
only changes sign through a kernel of odd dimension. Special points are located by bisection in
arclength.

Folds are continued in two parameters ``(p1, p2)`` on the standard extended system
``F = 0, F_x v = 0, c . v = 1`` in the unknowns ``(x, v, p1)`` with ``p2`` as the continuation
parameter. Its Jacobian needs ``d(F_x v)/dx``, analytic for the softmax router (see
:meth:`.field.VectorField.jacobian_derivative`) and by central differences otherwise.

We write our own (a few hundred lines) rather than use a library: of the maintained Python
packages, pacopy is no longer open source, bice is built around PDE discretisations, and
pycont-lite is matrix-free (finite-difference Jacobian-vector products) with no two-parameter
fold continuation, while here exact Jacobians are cheap and the symmetric branch points need the
eigenvalue-count test.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ..params import RouterParams
from .field import VectorField

__all__ = [
    "Branch",
    "FoldCurve",
    "SpecialPoint",
    "continue_equilibria",
    "continue_folds",
    "meanfield_problem",
    "pseudo_arclength",
]


@dataclass(frozen=True)
class SpecialPoint:
    """A fold (``kind="fold"``) or branch point (``kind="branch"``) found along a branch.
    ``multiplicity``: number of eigenvalues crossing zero there."""

    kind: str
    index: int  # the branch point sample just before it
    x: np.ndarray
    param: float
    multiplicity: int = 1


@dataclass(frozen=True, eq=False)
class Branch:
    """A continued branch: ``x`` shape ``(M, n)``, ``param`` ``(M,)``, ``eigenvalues`` ``(M, n)``
    (ascending real parts), ``stable`` ``(M,)``, ``unstable_count`` ``(M,)``, and the special
    points found."""

    x: np.ndarray
    param: np.ndarray
    eigenvalues: np.ndarray
    stable: np.ndarray
    unstable_count: np.ndarray
    points: list[SpecialPoint] = field(default_factory=list)

    @property
    def folds(self) -> list[SpecialPoint]:
        return [s for s in self.points if s.kind == "fold"]

    @property
    def branch_points(self) -> list[SpecialPoint]:
        return [s for s in self.points if s.kind == "branch"]


# ----------------------------------------------------------------------------------------------
# the generic pseudo-arclength driver (y = (x, p), G: R^{n+1} -> R^n)


def _newton(G, GJ, y_pred, t, tol, max_iter):
    y = y_pred.copy()
    for it in range(1, max_iter + 1):
        try:
            # ValueError: a parameter left its domain (T <= 0): a failed step, not an error
            r = np.append(G(y), t @ (y - y_pred))
            A = np.vstack([GJ(y), t])
            dy = np.linalg.solve(A, -r)
        except (np.linalg.LinAlgError, ValueError):
            return None, it
        y = y + dy
        if np.linalg.norm(dy) <= tol * (1.0 + np.linalg.norm(y)):
            if np.linalg.norm(G(y)) <= 1e3 * tol * (1.0 + np.linalg.norm(y)):
                # one more step: quadratic convergence takes the point to round-off, which
                # the eigenvalue tests at special points need
                try:
                    y = y - np.linalg.solve(A, np.append(G(y), t @ (y - y_pred)))
                except (np.linalg.LinAlgError, ValueError):
                    pass
                return y, it
    return None, max_iter


def _tangent(GJ, y, t_old):
    A = GJ(y)
    if t_old is None:
        # null vector of the n x (n+1) Jacobian
        _, _, vt = np.linalg.svd(A)
        t = vt[-1]
    else:
        t = np.linalg.solve(np.vstack([A, t_old]), np.append(np.zeros(A.shape[0]), 1.0))
    return t / np.linalg.norm(t)


def pseudo_arclength(
    G: Callable,
    GJ: Callable,
    y0,
    *,
    direction: float = 1.0,
    ds: float = 0.02,
    ds_min: float = 1e-8,
    ds_max: float = 0.2,
    max_steps: int = 2000,
    p_min: float = -math.inf,
    p_max: float = math.inf,
    tol: float = 1e-11,
    max_newton: int = 10,
    monitor: Callable | None = None,
    stop: Callable | None = None,
):
    """Follow the curve ``G(y) = 0``, ``y = (x, p)`` in R^{n+1}, from ``y0`` (corrected first).

    ``direction``: sign of the initial ``dp/ds``. ``monitor(y, t)`` returns a dict of test
    functions kept for each point. Stops after ``max_steps`` points, when ``p`` leaves
    ``[p_min, p_max]``, when ``stop(y)`` is true, or when the step falls below ``ds_min``.

    **Returns:** ``(Y, Ts, tests, locate)``: points ``(M, n+1)``, unit tangents ``(M, n+1)``, the
    monitor's values, and ``locate(i, fn)``: bisection in arclength between points ``i`` and
    ``i+1`` for the zero of ``fn(y, t)`` (a scalar changing sign there).
    """
    y0 = np.asarray(y0, dtype=float)
    # correct the start at fixed p (x-Newton through the extended system with t = e_p)
    e_p = np.zeros(y0.size)
    e_p[-1] = 1.0
    y, _ = _newton(G, GJ, y0, e_p, tol, 30)
    if y is None:
        raise RuntimeError("continuation: Newton's method failed at the starting point")
    t = _tangent(GJ, y, None)
    if t[-1] * direction < 0 or (t[-1] == 0 and direction < 0):
        t = -t
    Y, Ts, tests = [y], [t], [monitor(y, t) if monitor else {}]
    h = ds
    while len(Y) < max_steps:
        y_new, its = _newton(G, GJ, y + h * t, t, tol, max_newton)
        if y_new is None:
            h *= 0.5
            if h < ds_min:
                break
            continue
        t_new = _tangent(GJ, y_new, t)
        if t_new @ t < 0.5:  # too sharp a turn: likely jumped to another branch
            h *= 0.5
            if h < ds_min:
                break
            continue
        y, t = y_new, t_new
        Y.append(y)
        Ts.append(t)
        tests.append(monitor(y, t) if monitor else {})
        if not p_min <= y[-1] <= p_max or (stop is not None and stop(y)):
            break
        h = min(ds_max, h * 1.3) if its <= 3 else (0.7 * h if its >= 6 else h)

    def locate(i: int, fn: Callable, iters: int = 60):
        """Bisect between points i and i+1 for a sign change of ``fn(y, t)``. Each new point is
        predicted on the chord of the current bracket and corrected orthogonally to it, so it
        stays on this branch even next to a branch point, where another branch is near."""
        ya, yb, ta = Y[i], Y[i + 1], Ts[i]
        fa = fn(ya, ta)
        best = (ya, ta)
        for _ in range(iters):
            chord = yb - ya
            size = np.linalg.norm(chord)
            if size <= 1e-14 * (1.0 + np.linalg.norm(ya)):
                break
            c = chord / size
            pred = 0.5 * (ya + yb)
            # a looser tolerance: next to a branch point the extended system is nearly singular
            # in the transverse directions and round-off stalls Newton at ~eps / distance
            ym, _ = _newton(G, GJ, pred, c, max(tol, 1e-9), 20)
            if ym is None or np.linalg.norm(ym - pred) > 0.25 * size:
                break
            tm = _tangent(GJ, ym, ta)
            fm = fn(ym, tm)
            best = (ym, tm)
            if fm == 0.0:
                break
            if (fm > 0) == (fa > 0):
                ya, ta = ym, tm
            else:
                yb = ym
        return best

    return np.array(Y), np.array(Ts), tests, locate


# ----------------------------------------------------------------------------------------------
# the mean-field problem (8) in one parameter


@dataclass(frozen=True)
class MeanFieldProblem:
    """``F(r, p)``, ``F_r``, ``F_p`` of (8) (or (8k)) with one free parameter."""

    params: RouterParams
    parameter: str  # "a", "h", "T" or "b<i>"
    b: np.ndarray
    top_k: int = 1

    def _with(self, value):
        name = self.parameter
        p, b = self.params, self.b.copy()
        if name == "a":
            p = p.replace(a=max(value, 0.0))
        elif name == "T":
            p = p.replace(T=value)
        elif name == "h":
            b[0], b[1] = b[0] + 0.5 * value, b[1] - 0.5 * value
        else:
            b[int(name[1:])] += value
        return p, b

    def value(self) -> float:
        name = self.parameter
        if name in ("a", "T"):
            return getattr(self.params, name)
        return 0.0  # h and b_i are offsets added to the base drift

    def field(self, val) -> VectorField:
        """The vector field (8) / (8k) at parameter value ``val``."""
        p, b = self._with(val)
        return VectorField.of(p, top_k=self.top_k, b=b)

    def F(self, y):
        return self.field(y[-1])(y[:-1])

    def Fx(self, r, val):
        return self.field(val).jacobian(r)

    def Fp(self, r, val):
        f = self.field(val)
        n, name = r.size, self.parameter
        if name == "a":
            return f.inclusion(r) / self.top_k
        if name == "T":
            # d/dT pi(r/T) = dpi/dz . (-r / T^2) = dpi/dr . (-r / T)
            return f.a / self.top_k * f.inclusion_jacobian(r) @ (-r / f.T)
        e = np.zeros(n)
        if name == "h":
            e[0], e[1] = 0.5, -0.5
        else:
            e[int(name[1:])] = 1.0
        return e

    def GJ(self, y):
        r, val = y[:-1], y[-1]
        return np.column_stack([self.Fx(r, val), self.Fp(r, val)])


def meanfield_problem(params: RouterParams, parameter: str = "a", *, b=None, top_k: int = 1):
    """The equilibrium problem of (8) (``top_k = 1``) or (8k) with free ``parameter``:
    ``"a"``, ``"T"``, ``"h"`` (adds ``(h/2, -h/2, 0, ...)`` to ``b``) or ``"b<i>"`` (adds to
    ``b_i``). ``b`` defaults to ``params.b``."""
    if not (parameter in ("a", "T", "h") or (parameter[:1] == "b" and parameter[1:].isdigit())):
        raise ValueError(f"parameter: must be a, T, h or b<i>, got {parameter!r}")
    if parameter[:1] == "b" and int(parameter[1:]) >= params.n_experts:
        raise ValueError(f"parameter: expert index out of range in {parameter!r}")
    b = params.b if b is None else np.asarray(b, dtype=float)
    return MeanFieldProblem(params, parameter, b.copy(), int(top_k))


def continue_equilibria(
    params: RouterParams,
    r0,
    *,
    parameter: str = "a",
    b=None,
    top_k: int = 1,
    direction: float = 1.0,
    p_min: float = -math.inf,
    p_max: float = math.inf,
    ds: float = 0.02,
    ds_max: float = 0.2,
    max_steps: int = 2000,
    tol: float = 1e-11,
) -> Branch:
    """Follow an equilibrium branch of (8) from the scores ``r0`` (an approximate equilibrium at
    ``params``) in ``parameter``, detecting folds and branch points, with stability.

    For ``h`` and ``b<i>`` the parameter value reported is the offset added to the base drift
    (starting at 0). ``p_min``, ``p_max`` bound the parameter; ``direction`` is the sign of its
    initial change."""
    prob = meanfield_problem(params, parameter, b=b, top_k=top_k)
    y0 = np.append(np.asarray(r0, dtype=float), prob.value())
    if parameter == "a":
        p_min = max(p_min, 0.0)
    if parameter == "T":
        p_min = max(p_min, 1e-6)

    def spectrum(y):
        J = prob.Fx(y[:-1], y[-1])
        return np.linalg.eigh(0.5 * (J + J.T))

    def monitor(y, t):
        ev, V = spectrum(y)
        A = np.vstack([prob.GJ(y), t])
        sign, _ = np.linalg.slogdet(A)
        # eigenvalues within round-off of zero count as zero
        scale = 1e-13 * (1.0 + np.abs(ev).max())
        return {"ev": ev, "V": V, "tp": t[-1], "det": sign, "unstable": int(np.sum(ev > scale))}

    Y, Ts, tests, locate = pseudo_arclength(
        prob.F,
        prob.GJ,
        y0,
        direction=direction,
        ds=ds,
        ds_max=ds_max,
        max_steps=max_steps,
        p_min=p_min,
        p_max=p_max,
        tol=tol,
        monitor=monitor,
    )
    ev = np.array([m["ev"] for m in tests])
    unstable = np.array([m["unstable"] for m in tests])
    points = []
    for i in range(len(Y) - 1):
        a, c = tests[i], tests[i + 1]
        fold = a["tp"] * c["tp"] < 0
        if fold:
            y, _ = locate(i, lambda y, t: t[-1])
            points.append(SpecialPoint("fold", i, y[:-1].copy(), float(y[-1])))
        # eigenvalues followed from point i to i+1 by their eigenvectors: the count of sign
        # changes also sees simultaneous crossings in opposite directions, which leave the
        # number of unstable eigenvalues (and the determinant) unchanged
        crossed = _tracked_crossings(a["ev"], a["V"], c["ev"], c["V"])
        det_flip = a["det"] * c["det"] < 0
        n_cross = len(crossed)
        if n_cross > 1 or (not fold and (n_cross == 1 or det_flip)):
            v0 = a["V"][:, crossed[0]] if crossed else a["V"][:, np.argmin(np.abs(a["ev"]))]

            def tracked(y, t, v0=v0):
                e, V = spectrum(y)
                return e[np.argmax(np.abs(v0 @ V))]

            y, _ = locate(i, tracked)
            points.append(SpecialPoint("branch", i, y[:-1].copy(), float(y[-1]), max(n_cross, 1)))
    return Branch(
        x=Y[:, :-1],
        param=Y[:, -1],
        eigenvalues=ev,
        stable=unstable == 0,
        unstable_count=unstable,
        points=points,
    )


def _tracked_crossings(ea, Va, eb, Vb) -> list[int]:
    """Indices (at the first point) of the eigenvalues that change sign between two points,
    each eigenvalue matched to the one at the second point with the largest eigenvector
    overlap (greedy; inside a degenerate eigenspace any matching gives the same signs)."""
    overlap = np.abs(Va.T @ Vb)
    match = np.full(ea.size, -1)
    taken = np.zeros(eb.size, dtype=bool)
    for flat in np.argsort(overlap, axis=None)[::-1]:
        i, j = divmod(int(flat), eb.size)
        if match[i] < 0 and not taken[j]:
            match[i], taken[j] = j, True
    tiny = 1e-13 * (1.0 + np.abs(ea).max())
    return [i for i in range(ea.size) if abs(ea[i]) > tiny and ea[i] * eb[match[i]] < 0]


# ----------------------------------------------------------------------------------------------
# folds in two parameters


@dataclass(frozen=True, eq=False)
class FoldCurve:
    """Fold points continued in two parameters: ``x`` ``(M, n)``, ``p1`` and ``p2`` ``(M,)``,
    ``v`` ``(M, n)`` the null vectors of ``F_x``."""

    x: np.ndarray
    v: np.ndarray
    p1: np.ndarray
    p2: np.ndarray
    parameters: tuple[str, str]


def continue_folds(
    params: RouterParams,
    fold: SpecialPoint,
    *,
    parameters: tuple[str, str] = ("h", "a"),
    b=None,
    direction: float = 1.0,
    p2_min: float = -math.inf,
    p2_max: float = math.inf,
    ds: float = 0.02,
    ds_max: float = 0.1,
    max_steps: int = 1000,
    tol: float = 1e-11,
) -> FoldCurve:
    """Continue a fold of (8) (a :class:`SpecialPoint` found by :func:`continue_equilibria` in
    ``parameters[0]``) in the second parameter ``parameters[1]``.

    Unknowns ``(x, v, p1)``, parameter ``p2``; equations ``F = 0``, ``F_x v = 0``,
    ``c . v = 1`` (``c`` the null vector at the start)."""
    n1, n2 = parameters
    if n2 not in ("a", "T"):
        raise ValueError("parameters: the second parameter must be a or T")
    base = meanfield_problem(params, n1, b=b)
    x0, p10 = fold.x, fold.param
    J0 = base.Fx(x0, p10)
    w, V = np.linalg.eigh(0.5 * (J0 + J0.T))
    c = V[:, np.argmin(np.abs(w))]

    def prob_at(p2):
        return meanfield_problem(params.replace(**{n2: p2}), n1, b=b)

    n = x0.size

    def G(y):
        x, v, p1, p2 = y[:n], y[n : 2 * n], y[2 * n], y[2 * n + 1]
        pr = prob_at(p2)
        yy = np.append(x, p1)
        return np.concatenate([pr.F(yy), pr.Fx(x, p1) @ v, [c @ v - 1.0]])

    def GJ(y):
        x, v, p1, p2 = y[:n], y[n : 2 * n], y[2 * n], y[2 * n + 1]
        pr = prob_at(p2)
        Fx, Fp1 = pr.Fx(x, p1), pr.Fp(x, p1)
        # d(F_x v)/dx analytic (softmax router); d/dp1 and d/dp2 by central differences
        Hx = pr.field(p1).jacobian_derivative(x, v)
        e1 = 1e-6 * (1.0 + abs(p1))
        dFxv_p1 = (pr.Fx(x, p1 + e1) @ v - pr.Fx(x, p1 - e1) @ v) / (2 * e1)
        e2 = 1e-6 * (1.0 + abs(p2))
        pa, pb = prob_at(p2 + e2), prob_at(p2 - e2)
        ya = np.append(x, p1)
        dF_p2 = (pa.F(ya) - pb.F(ya)) / (2 * e2)
        dFxv_p2 = (pa.Fx(x, p1) @ v - pb.Fx(x, p1) @ v) / (2 * e2)
        top = np.column_stack([Fx, np.zeros((n, n)), Fp1, dF_p2])
        mid = np.column_stack([Hx, Fx, dFxv_p1, dFxv_p2])
        bot = np.concatenate([np.zeros(n), c, [0.0, 0.0]])[None, :]
        return np.vstack([top, mid, bot])

    p20 = getattr(params, n2)
    y0 = np.concatenate([x0, c, [p10, p20]])
    Y, _, _, _ = pseudo_arclength(
        G,
        GJ,
        y0,
        direction=direction,
        ds=ds,
        ds_max=ds_max,
        max_steps=max_steps,
        p_min=p2_min,
        p_max=p2_max,
        tol=tol,
    )
    return FoldCurve(Y[:, :n], Y[:, n : 2 * n], Y[:, 2 * n], Y[:, 2 * n + 1], (n1, n2))
