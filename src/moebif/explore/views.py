"""The views of ``moebif explore``, computed from the library: pure functions of the current
parameter point, JSON-ready dicts out. No plotting here; the page only draws what these return.

- :func:`state_view`: the drift ``F(y)`` of eq. (6) and the potential ``V(y)`` of eq. (12) with
  every equilibrium (:func:`moebif.equilibria`), its stability and eigenvalue ``F_y`` (15).
- :func:`plane_view`: the ``(a, h)`` plane with the fold curve (16), the cusp at
  ``a = 2 gamma T`` and the bistable region ``|h| < H(a)`` (17)-(18).
- :func:`bifurcation_view`: the equilibria of (6) against ``h`` or ``a``, stable and unstable.
- :func:`branches_view`: the N-expert (top-k) symmetric branches of eq. (8) / (8k), the
  linear threshold, the saddle-node ``a_SN`` and the metastable window between them.
- :func:`meanfield_view`: the mean-field load ``u(t)`` from ``y0`` (:func:`moebif.solve_meanfield`).

Every view is computed at the *effective* router of the chosen balancer
(:mod:`moebif.explore.balancers`) and drawn against the user's ``a`` through the balancer's
``user_a``. Equilibrium sets are sampled along the state ``y``: eq. (6) is affine in ``h`` and in
``a``, so on ``F = 0`` the parameter is an explicit function of ``y``, and stability is the sign
of ``F_y`` there. (This branch data, and :func:`branch_diagram`, would belong in ``model/``.)
"""

from __future__ import annotations

import contextvars
import math
import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..model import symmetric, topk
from ..model import two_expert as th
from ..model.meanfield import solve_meanfield
from ..model.thresholds import regime
from ..params import ParameterError, RouterParams
from .balancers import Balancer

__all__ = [
    "Cancelled",
    "Point",
    "cancelled",
    "h_slider",
    "bifurcation_view",
    "branch_diagram",
    "branches_view",
    "meanfield_view",
    "plane_view",
    "state_view",
    "theory_command",
    "n_regime",
]

# at most this many m-winner branches are drawn for top-1 (the m >= 2 ones are all unstable)
MAX_BRANCHES = 16


# ----------------------------------------------------------------------------------------------
# cooperative cancellation

CANCEL: contextvars.ContextVar[threading.Event | None] = contextvars.ContextVar(
    "moebif_explore_cancel", default=None
)
"""The cancel flag of the request computed in this thread (set by the server when its client
leaves or the server stops; ``None`` outside a request)."""


class Cancelled(Exception):
    """Raised between the chunks of a long view once its request is cancelled: nobody reads the
    answer, so the rest is not computed (and nothing partial is cached)."""


def cancelled() -> bool:
    """True once the client of the request being computed in this thread has gone away."""
    ev = CANCEL.get()
    return ev is not None and ev.is_set()


def check_cancelled() -> None:
    """:class:`Cancelled` if :func:`cancelled`: called between the chunks of the long views (the
    N-expert thresholds and branches, one branch at a time, each well under a second)."""
    if cancelled():
        raise Cancelled


@dataclass(frozen=True)
class Point:
    """The explorer's current parameter point.

    ``params``: the user's two-expert router (``a, gamma, T, h``); ``balancer`` and ``strength``:
    the balancing scheme; ``n_experts`` and ``top_k``: the N-expert view; ``y0``: the initial
    state of the mean-field curve and of the trajectories.
    """

    params: RouterParams
    balancer: Balancer
    strength: float = 0.0
    n_experts: int = 8
    top_k: int = 1
    y0: float = 0.0

    def __post_init__(self):
        n, k = self.n_experts, self.top_k
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise ParameterError("N", f"must be an integer >= 2, got {n!r}")
        if n > 256:
            raise ParameterError("N", f"must be <= 256 in the explorer, got {n}")
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < n:
            raise ParameterError("k", f"must be an integer in 1..{n - 1} for N = {n}, got {k!r}")
        if k > 1 and n > 64:
            raise ParameterError("k", f"top-k branches (k > 1) need N <= 64, got N = {n}")
        # the views sample states up to |y| ~ (a + |h|) / gamma: keep them representable
        p = self.params
        for name, value, bound in (
            ("a", p.a / (p.gamma * p.T), 1e6),
            ("h", abs(p.h) / (p.gamma * p.T), 1e6),
            ("gamma", max(p.gamma, 1.0 / p.gamma), 1e6),
            ("T", max(p.T, 1.0 / p.T), 1e6),
        ):
            if value > bound:
                raise ParameterError(
                    name,
                    "outside the explorer's range (|a|, |h| <= 1e6 gamma T; "
                    "gamma and T in [1e-6, 1e6])",
                )
        # fail early, naming the balancer's strength, when it has no effective router here
        object.__setattr__(self, "_eff", self.balancer.effective(self.params, self.strength))

    @property
    def effective(self) -> RouterParams:
        """The two-expert mean-field router the balanced router behaves as."""
        return self._eff

    def user_a(self, a_eff):
        """The user's ``a`` whose effective feedback is ``a_eff`` (vectorised)."""
        return self.balancer.user_a(np.asarray(a_eff, dtype=float), self.params, self.strength)

    def a_eff_of(self, a_user):
        """Inverse of :meth:`user_a` (the balancer's map is increasing in ``a``), by
        interpolation on a fine grid: exact for an affine map such as ``a - rho``."""
        top = max(float(np.max(a_user)), 1.0) * 4.0 + 10.0
        grid = np.linspace(0.0, top, 8001)
        return np.interp(a_user, self.user_a(grid), grid, left=-np.inf)


def _eq_dicts(p: RouterParams) -> list[dict]:
    return [e.to_dict() for e in th.equilibria(p)]


_NICE = (1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0)


def nice_ceil(x: float) -> float:
    """The smallest of 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6, 8 times a power of ten that is >= x > 0:
    default view windows move in steps while a slider moves, so the axes rarely change."""
    if not (x > 0.0 and math.isfinite(x)):
        return 1.0
    e = 10.0 ** math.floor(math.log10(x))
    return next(m * e for m in _NICE if m * e >= x * (1.0 - 1e-12))


def nice_span(lo: float, hi: float) -> list[float]:
    """``[lo, hi]`` widened by 5% and rounded out to multiples of a nice step (span / 4)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return [-1.0, 1.0]
    pad = 0.05 * (hi - lo) if hi > lo else max(abs(hi), 1.0) * 0.1
    lo, hi = lo - pad, hi + pad
    step = nice_ceil((hi - lo) / 4.0)
    return [math.floor(lo / step) * step, math.ceil(hi / step) * step]


def _check_range(name: str, rng, *, lo=-math.inf, hi=math.inf):
    if rng is None:
        return None
    a, b = (float(x) for x in rng)
    if not (math.isfinite(a) and math.isfinite(b) and a < b):
        raise ParameterError(name, f"must be two finite numbers lo < hi, got {a:g}, {b:g}")
    return max(a, lo), min(b, hi)


# ----------------------------------------------------------------------------------------------
# F(y) and V(y)


def state_view(pt: Point, *, y_range=None, points: int = 401) -> dict:
    """``F(y)`` (6) and ``V(y)`` (12) on ``points`` states in ``y_range`` (default: the
    equilibria and ``y0`` with a margin), with all equilibria."""
    p = pt.effective
    eqs = _eq_dicts(p)
    rng = _check_range("y_range", y_range)
    if rng is None:
        ys = [abs(e["y"]) for e in eqs] + [abs(pt.y0)]
        half = nice_ceil(max(1.3 * max(ys), 4.0 * p.T, 0.5))
        rng = (-half, half)
    y = np.linspace(rng[0], rng[1], points)
    for e in eqs:
        e["V"] = float(th.potential(e["y"], p))
    F, Vy = th.drift(y, p), th.potential(y, p)
    f_max = float(np.max(np.abs(F)))
    return {
        "y": y,
        "F": F,
        "V": Vy,
        "equilibria": eqs,
        "y0": pt.y0,
        "range": list(rng),
        "F_range": [-nice_ceil(1.05 * f_max), nice_ceil(1.05 * f_max)],
        "V_range": nice_span(float(np.min(Vy)), float(np.max(Vy))),
    }


# ----------------------------------------------------------------------------------------------
# (a, h) plane


def _user_cusp(pt: Point) -> float:
    p = pt.effective
    return float(pt.user_a(2.0 * p.gamma * p.T))


def plane_view(pt: Point, *, a_range=None, h_range=None, points: int = 601) -> dict:
    """The fold curve (16) in the user's ``(a, h)`` plane, sampled inside the view (two
    branches, ``q < 0`` with ``h > 0`` and ``q > 0`` with ``h < 0``, meeting at the cusp), the
    bistable band ``|h| < H(a_eff)`` (18) on the view's ``a`` grid, and the current point."""
    p, pu = pt.effective, pt.params
    c = 2.0 * p.gamma * p.T
    a_cusp = _user_cusp(pt)
    if a_range is None:
        a_range = (0.0, nice_ceil(max(2.5 * a_cusp, 1.15 * pu.a, a_cusp + 1.0)))
    a_lo, a_hi = _check_range("a_range", a_range)
    if h_range is None:
        H = th.hysteresis_halfwidth(max(pt.a_eff_of(a_hi), 0.0), p.gamma, p.T)
        half = nice_ceil(max(1.3 * H, 1.3 * abs(pu.h), 0.5 * c))
        h_range = (-half, half)
    h_lo, h_hi = _check_range("h_range", h_range)
    # the part of each fold branch inside the view (5% margin), found on a fine q grid, then
    # sampled at `points` points: zooming in samples the curve more finely
    ma, mh = 0.05 * (a_hi - a_lo), 0.05 * (h_hi - h_lo)
    qq = np.concatenate([[0.0], np.geomspace(1e-7, 40.0, 6000)])
    fold = []
    for sign in (-1.0, 1.0):
        fa, fh = th.fold_curve(sign * qq, p.gamma, p.T)
        ua = pt.user_a(fa)
        inside = (ua >= a_lo - ma) & (ua <= a_hi + ma) & (fh >= h_lo - mh) & (fh <= h_hi + mh)
        idx = np.flatnonzero(inside)
        if idx.size == 0:
            continue
        q1, q2 = qq[max(idx[0] - 1, 0)], qq[min(idx[-1] + 1, qq.size - 1)]
        q = sign * np.linspace(q1, q2, points // 2)
        fa, fh = th.fold_curve(q, p.gamma, p.T)
        fold.append({"q": q, "a": pt.user_a(fa), "h": fh, "y": 2.0 * p.T * q})
    a_grid = np.linspace(a_lo - ma, a_hi + ma, points)
    a_eff = pt.a_eff_of(a_grid)
    band = np.where(a_eff > c, th.hysteresis_halfwidth(np.maximum(a_eff, 0.0), p.gamma, p.T), 0.0)
    return {
        "fold": fold,
        "bistable_band": {"a": a_grid, "H": band},
        "cusp": {"a": a_cusp, "h": 0.0},
        "point": {
            "a": pu.a,
            "h": pu.h,
            "regime": regime(p),
            "halfwidth": th.hysteresis_halfwidth(p.a, p.gamma, p.T),
        },
        "range": {"a": [a_lo, a_hi], "h": [h_lo, h_hi]},
    }


# ----------------------------------------------------------------------------------------------
# bifurcation diagram of the two-expert router


def _segments(x, u, stable, y):
    """Split a sampled curve into runs of equal stability, each sharing its first point with
    the previous run (so the drawn curve has no gaps)."""
    out = []
    if x.size == 0:
        return out
    cut = np.flatnonzero(np.diff(stable.astype(np.int8)) != 0) + 1
    starts = np.r_[0, cut]
    ends = np.r_[cut, x.size]
    for s, e in zip(starts, ends, strict=True):
        s0 = max(s - 1, 0)
        out.append(
            {
                "x": x[s0:e],
                "u": u[s0:e],
                "y": y[s0:e],
                "stable": bool(stable[s]),
            }
        )
    return out


def bifurcation_view(
    pt: Point, *, against: str = "h", x_range=None, u_range=None, points: int = 801
) -> dict:
    """Equilibria ``u = tanh(y/2T)`` of (6) against ``h`` (``against="h"``) or the user's ``a``
    (``"a"``), in stable and unstable segments, sampled on ``points`` states with ``u`` in
    ``u_range``; the current point's equilibria and the folds at the current parameters."""
    if against not in ("h", "a"):
        raise ParameterError("against", f"must be 'h' or 'a', got {against!r}")
    p, pu = pt.effective, pt.params
    c = 2.0 * p.gamma * p.T
    u_lo, u_hi = _check_range("u_range", u_range, lo=-0.9999, hi=0.9999) or (-0.9999, 0.9999)
    if not u_lo < u_hi:
        raise ParameterError("u_range", "must overlap (-1, 1)")
    u = np.linspace(u_lo, u_hi, points)
    y = th.score_gap(u, p.T)
    segments = []
    if against == "h":
        # F(y) = F_0(y) + h with F_0 = F at h = 0: on F = 0, h = -F_0(y); F_y does not involve h
        x = -th.drift(y, p.replace(h=0.0))
        stable = th.drift_dy(y, p) < 0.0
        segments = _segments(x, u, stable, y)
        H = th.hysteresis_halfwidth(p.a, p.gamma, p.T)
        folds = [{"x": s * H, "u": float(th.load(y_f, p.T))} for s, y_f in _fold_states(p)]
        x_now = pu.h
        default = nice_ceil(max(1.5 * H, 1.3 * abs(pu.h), 0.5 * c))
        x_def = (-default, default)
    else:
        # F(y) = F_a0(y) + a tanh(y/2T) with F_a0 = F at a = 0, so a = -F_a0(y) / tanh(y/2T) on
        # F = 0 (y != 0), and F_y is affine in a as well
        p0, p1 = p.replace(a=0.0), p.replace(a=1.0)
        nz = u != 0.0
        y, u = y[nz], u[nz]
        a_eff = -th.drift(y, p0) / th.load(y, p.T)
        d0 = th.drift_dy(y, p0)
        fy = d0 + a_eff * (th.drift_dy(y, p1) - d0)
        ok = a_eff >= 0.0
        for side in (y < 0.0, y > 0.0):  # for h != 0 the two halves are separate curves
            m = side & ok
            if m.any():
                segments += _segments(pt.user_a(a_eff[m]), u[m], fy[m] < 0.0, y[m])
        if pu.h == 0.0:  # the balanced state y = 0 exists for every a
            a_grid = np.linspace(0.0, max(4.0 * c, 2.0 * p.a) + 10.0 * c, 3)
            a_grid = np.unique(np.r_[a_grid, c])
            st = a_grid <= c
            zero = np.zeros_like(a_grid)
            segments += _segments(pt.user_a(a_grid), zero, st, zero)
        folds = []
        x_now = pu.a
        a_cusp = _user_cusp(pt)
        x_def = (0.0, nice_ceil(max(2.5 * a_cusp, 1.3 * pu.a, a_cusp + 1.0)))
    x_rng = _check_range("x_range", x_range) or x_def
    return {
        "against": against,
        "segments": segments,
        "folds": folds,
        "current": {"x": x_now, "equilibria": _eq_dicts(p)},
        "range": {"x": list(x_rng), "u": [u_lo, u_hi]},
    }


def _fold_states(p: RouterParams):
    """``(sign, y)`` of the two folds at the current ``a`` (none for ``a <= 2 gamma T``): the
    critical points ``y = -+2T q_a`` of F, where ``h = +-H(a)``."""
    c = 2.0 * p.gamma * p.T
    if p.a <= c:
        return []
    q_a = math.acosh(math.sqrt(p.a / c))
    return [(1.0, -2.0 * p.T * q_a), (-1.0, 2.0 * p.T * q_a)]


# ----------------------------------------------------------------------------------------------
# N experts


@lru_cache(maxsize=64)
def _thresholds(n: int, k: int) -> tuple[float, float]:
    """``(a_SN, a_lin)`` in units of ``gamma T`` (both scale with ``gamma T``)."""
    if k == 1:
        return symmetric.collapse_threshold(n, 1.0, 1.0), float(n)
    # topk_collapse_threshold's scan, one branch at a time (its default branches; the smallest
    # onset, the first one on ties, as it does): ~0.1-0.5 s each at N = 64, k = 8, 4.5 s in all
    ms = range(1, n) if n <= 16 else sorted(set(range(1, k + 2)) | set(range(n - k - 1, n)))
    a_sn = math.inf
    for m in ms:
        check_cancelled()
        a_m, m_best = topk.topk_collapse_threshold(n, k, 1.0, 1.0, winners=[m])
        if m_best and a_m < a_sn:
            a_sn = a_m
    return a_sn, topk.topk_linear_threshold(n, k, 1.0, 1.0)


def _winners(n: int, k: int) -> list[int]:
    if k == 1:
        return list(range(1, min(n - 1, MAX_BRANCHES) + 1))
    return list(range(1, min(n - 1, 2 * k + 1) + 1))


def _branch(n: int, k: int, m: int, d):
    return symmetric.branch_curve(n, m, d) if k == 1 else topk.topk_branch(n, k, m, d)


@lru_cache(maxsize=32)
def _coarse(n: int, k: int, x_max: float) -> tuple:
    """Branch samples over ``a / (gamma T) <= x_max`` (cached: top-k branches cost ~1 ms a
    point)."""
    out = []
    for m in _winners(n, k):
        check_cancelled()  # one branch at a time: <= 0.5 s each at N = 64, k = 8
        d_top = x_max / m + 2.0 * math.log(n) + 10.0
        d = np.geomspace(1e-4 if k == 1 else 2e-3, d_top, 400 if k == 1 else 120)
        out.append(_branch(n, k, m, d))
    return tuple(out)


def branch_diagram(n: int, k: int, *, x_range=None, load_range=None, points=None) -> dict:
    """The symmetric branches of (8) (``k = 1``) or (8k) in units ``gamma = T = 1`` (``x`` is
    ``a / (gamma T)``, the ordinate the largest load ``max(pi) / k``), stable and unstable, with
    the thresholds ``a_SN`` and ``a_lin``.

    Without ranges the branches come from a cached coarse sampling; with ``x_range`` (and
    ``load_range``) every branch is re-sampled at ``points`` gaps inside the window (zoom that
    recomputes). Branches with ``m > 16`` winners (top-1, all unstable) are left out."""
    a_sn, a_lin = _thresholds(n, k)
    x_rng = _check_range("x_range", x_range)
    l_rng = _check_range("load_range", load_range)
    x_max = 1.35 * a_lin if x_rng is None else max(1.35 * a_lin, x_rng[1])
    coarse = _coarse(n, k, round(x_max, 6))
    if points is None:
        points = 400 if k == 1 else 100
    branches = []
    for br in coarse:
        if x_rng is not None:
            keep = (br.ratio >= x_rng[0]) & (br.ratio <= x_rng[1])
            if l_rng is not None:
                keep &= (br.max_load >= l_rng[0]) & (br.max_load <= l_rng[1])
            idx = np.flatnonzero(keep)
            if idx.size == 0:
                continue
            lo = br.d[max(idx[0] - 1, 0)]
            hi = br.d[min(idx[-1] + 1, br.d.size - 1)]
            br = _branch(n, k, br.winners, np.geomspace(lo, hi, points))
        keep = br.ratio <= x_max
        d, r, ml, st = br.d[keep], br.ratio[keep], br.max_load[keep], br.stable[keep]
        if d.size == 0:
            continue
        segs = _segments(r, ml, st, d)
        branches.append({"winners": br.winners, "segments": segs})
    # the uniform state: stable up to the linear threshold (eq. 10), unstable beyond
    uniform = [
        {"x": np.array(xs), "u": np.full(2, 1.0 / n), "y": np.zeros(2), "stable": stable}
        for xs, stable in (([0.0, a_lin], True), ([a_lin, x_max], False))
    ]
    return {
        "n_experts": n,
        "top_k": k,
        "collapse_threshold": a_sn,
        "linear_threshold": a_lin,
        "uniform_load": 1.0 / n,
        "uniform": uniform,
        "x_max": x_max,
        "branches": branches,
        "omitted_winners": max(0, n - 1 - MAX_BRANCHES) if k == 1 else 0,
    }


def n_regime(pt: Point) -> str:
    """``balanced`` / ``metastable`` / ``collapsing`` of the N-expert router at the point
    (:func:`moebif.model.thresholds.regime`, whose thresholds are cached)."""
    pe, n, k = pt.effective, pt.n_experts, pt.top_k
    return regime(pe.replace(h=0.0, n_experts=n), k)


def branches_view(pt: Point, *, x_range=None, load_range=None) -> dict:
    """The N-expert branch diagram against the user's ``a / (gamma T)``, the metastable window
    ``[a_SN, a_lin)`` and the equilibria at the current point (``b = 0``: ``h`` plays no part)."""
    n, k = pt.n_experts, pt.top_k
    pu = pt.params
    pe = pt.effective
    gt, gte = pu.gamma * pu.T, pe.gamma * pe.T

    def to_user(x_eff):
        return pt.user_a(np.asarray(x_eff, dtype=float) * gte) / gt

    x_eff = None
    if x_range is not None:
        lo, hi = _check_range("x_range", x_range)
        e_lo, e_hi = (float(v) / gte for v in pt.a_eff_of(np.array([lo, hi]) * gt))
        x_eff = (max(e_lo, 0.0) if math.isfinite(e_lo) else 0.0, max(e_hi, 1e-9))
    dg = branch_diagram(n, k, x_range=x_eff, load_range=load_range)
    for br in [*dg["branches"], {"segments": dg["uniform"]}]:
        for s in br["segments"]:
            s["x"] = to_user(s["x"])
    x_now = pe.a / gte
    a_sn, a_lin = dg["collapse_threshold"], dg["linear_threshold"]
    pn = pe.replace(h=0.0, n_experts=n)
    regime = n_regime(pt)
    if k == 1:
        eqs = [
            {**e.to_dict(), "x": float(to_user(x_now))} for e in symmetric.symmetric_equilibria(pn)
        ]
        exact = True
    else:
        eqs = _crossings(n, k, x_now)
        for e in eqs:
            e["x"] = float(to_user(x_now))
        exact = False
    return {
        **dg,
        "collapse_threshold": float(to_user(a_sn)),
        "linear_threshold": float(to_user(a_lin)),
        "metastable_window": [float(to_user(a_sn)), float(to_user(a_lin))]
        if a_sn < a_lin - 1e-9
        else None,
        "x_max": float(to_user(dg["x_max"])),
        "current": {
            "x": float(to_user(x_now)),
            "kappa": x_now / a_lin,
            "equilibria": eqs,
            "exact": exact,
            "regime": regime,
        },
        "units": "a / (gamma T) of the user's router",
    }


def _crossings(n: int, k: int, x: float) -> list[dict]:
    """Top-k states at ``a / (gamma T) = x``: the uniform state and the branch samples'
    crossings of ``x``, linearly interpolated (the branches are sampled, not solved)."""
    a_sn, a_lin = _thresholds(n, k)
    out = [
        {
            "winners": 0,
            "gap": 0.0,
            "max_load": 1.0 / n,
            "stable": bool(x < a_lin),
            "eigenvalue": None,
        }
    ]
    for br in _coarse(n, k, round(1.35 * a_lin, 6)):
        r = br.ratio - x
        for i in np.flatnonzero(np.sign(r[:-1]) * np.sign(r[1:]) < 0):
            w = r[i] / (r[i] - r[i + 1])
            out.append(
                {
                    "winners": br.winners,
                    "gap": float(br.d[i] + w * (br.d[i + 1] - br.d[i])),
                    "max_load": float(br.max_load[i] + w * (br.max_load[i + 1] - br.max_load[i])),
                    "stable": bool(br.stable[i] and br.stable[i + 1]),
                    "eigenvalue": None,
                }
            )
    return out


# ----------------------------------------------------------------------------------------------
# mean field in time


MEANFIELD_WORK = 2e4
"""Largest ``t * (gamma + |a|/2T)`` the mean-field view integrates: the explicit solver's steps
grow with the time in units of the field's fastest rate, ~25 us each, so this is ~0.5 s."""


def meanfield_t_max(p: RouterParams) -> float:
    """The end of the longest mean-field window computed at ``p`` (:data:`MEANFIELD_WORK`)."""
    return MEANFIELD_WORK / (p.gamma + abs(p.a) / (2.0 * p.T))


def meanfield_view(pt: Point, *, t_range=(0.0, 10.0), points: int = 301) -> dict:
    """``u(t)`` of the mean-field ODE (6) started at ``y0`` at ``t = 0``, on ``points`` times in
    ``t_range`` (ODE time ``t = n eta``) at the effective router, and the loads of its
    equilibria."""
    t_lo, t_hi = _check_range("t_range", t_range, lo=0.0)
    if not t_lo < t_hi:
        raise ParameterError("t_range", f"must end after t = 0, got {t_range}")
    p = pt.effective
    t_max = meanfield_t_max(p)
    if t_hi > t_max:
        raise ParameterError(
            "t_range",
            f"ends at t = {t_hi:.4g}; the mean field is drawn up to t * (gamma + |a|/2T) = "
            f"{MEANFIELD_WORK:.0e}, i.e. t <= {t_max:.4g} here (the load has settled long before)",
        )
    t = np.linspace(t_lo, t_hi, points)
    u = solve_meanfield(p, t if t_lo == 0.0 else np.r_[0.0, t], y0=pt.y0)
    return {
        "t": t,
        "u": u if t_lo == 0.0 else u[1:],
        "y0": pt.y0,
        "u0": float(th.load(pt.y0, p.T)),
        "equilibria": _eq_dicts(p),
        "range": [t_lo, t_hi],
    }


# ----------------------------------------------------------------------------------------------
# the equivalent command


def theory_command(pt: Point) -> str:
    """The ``moebif theory ... --json`` call(s) at the current point: the two-expert one and,
    for N >= 3, the N-expert one (which is at ``h = 0``, as the branch view)."""
    p = pt.effective
    note = pt.balancer.command(pt.strength) if pt.balancer.command else ""
    base = f"moebif theory --a {p.a!r} --gamma {p.gamma!r} --T {p.T!r}"
    lines = [f"{base} --h {p.h!r} --json"]
    if pt.n_experts > 2:
        cmd = f"{base} --experts {pt.n_experts}"
        if pt.top_k > 1:
            cmd += f" --top-k {pt.top_k}"
        lines.append(cmd + " --json")
    if note:
        lines = [f"{line}  # {note}" for line in lines]
    return "\n".join(lines)


def h_slider(params: RouterParams, *, limit: float) -> list[float]:
    """Ends and step of the page's h slider at this point: ``[-w, w, step]`` with
    ``w = max(1.5 H(a), 0.5)`` (``H``: the bistable half-width, eq. 18, at the effective ``a``)
    but at most ``limit``, and 2000 steps or more across. So the bistable window ``|h| < H`` is
    two thirds of the slider, whatever its width in pixels; a slider spanning the whole
    ``[-limit, limit]`` resolved h at 0.055 a pixel against H(3) = 0.415. Any h within
    ``limit`` can still be typed in the box beside it or clicked in the plane."""
    H = th.hysteresis_halfwidth(max(params.a, 0.0), params.gamma, params.T)
    w = min(max(1.5 * H, 0.5), limit)
    step = 10.0 ** math.floor(math.log10(2 * w / 2000))
    w = min(round(math.ceil(w / step) * step, 12), limit)  # the ends on the step grid
    return [-w, w, step]
