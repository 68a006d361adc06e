"""What each balancing scheme does to the router's bifurcation, and how strong it must be.

Conventions: ``N`` experts, top-``k``, mean-field time ``t = n eta``; a gradient scheme enters the
field with ``rate = lr / eta`` (:mod:`moebif.model.balancers`). ``alpha_k`` is the uniform-state
slope of the inclusion probabilities (:func:`moebif.model.topk.topk_uniform_slope`,
``alpha_1 = 1/N``), ``A = a alpha_k / (k T)`` the contrast gain of the reinforcement, and
``lambda_c = A - gamma`` the contrast eigenvalue of the bare uniform state (eqs. 9-10, 8k).

**1. Effective parameters near balance (Remark 7.1 made concrete),** :func:`effective_parameters`.
A scheme shifts the contrast eigenvalue by ``dlambda_c`` (and the common mode by ``dlambda_0``).
The same shift is obtained from the bare router with ``a_eff = a + dlambda_c k T / alpha_k``
(``rho_eff = a - a_eff``, the load feedback of sec. 8.7), or with ``gamma_eff = gamma - dlambda_c``
on the contrasts, or with ``T_eff = a alpha_k / (k (A + dlambda_c))``. Closed forms:

- aux loss (``c, f`` of :func:`~moebif.model.balancers.aux_normalisation`):
  ``dlambda_c = -rate alpha c alpha_f / (N T^2)`` with ``alpha_f = alpha_k`` (``f`` over all
  choices) or ``1/N`` (first choice). So HF: ``rho_eff = rate alpha k / T``; Megatron / OLMo:
  ``rho_eff = rate alpha / T`` whatever ``N, k``. A load feedback, contrasts only.
- importance loss: ``dlambda_c = -2 rate w / (N T^2)``.
- z-loss (``y = 2 rate c / (N T^2)``): the common level settles where
  ``lse* = (gamma log N + a / (N T)) / (gamma + y)``; ``dlambda_c = -y lse*``,
  ``dlambda_0 = -y``. A ``gamma`` on both modes, whose contrast part saturates at
  ``gamma log N + a / (N T)``: the linear threshold becomes ``a_lin + 2 rate c (1 + log N) k /
  (N alpha_k T)`` (top-1: ``N gamma T + 2 rate c (1 + log N) / T``).
- capacity: ``a_eff = a phi``, ``phi = P(Binomial(B - 1, k/N) <= C - 1)`` (the slope of the
  served load ``E min(n_i, C)``; ``B -> inf``: 1 for ``cf > 1``). Remark 7.1's "lower ``a``".
- noisy gating / jitter: ``T_eff = T alpha_k / alpha_noise`` with the slope of the noisy
  selection (:func:`~moebif.model.balancers.noisy_uniform_slope`). Remark 7.1's "raise ``T``".
- quantile balancing with EMA ``e``: the bias low-passes the logits at ``omega = (1 - e) / eta``;
  the uniform state is stable iff ``A < gamma + omega`` (``gamma_eff = gamma + omega``; the loss
  of stability is a Hopf point, not a pitchfork). ``e = 0``: ``omega = 1/eta``, balanced.
- Sinkhorn, expert choice: the loads do not depend on the scores (``a_eff = 0``).

**2. Minimal strength that rules collapse out,** :func:`balanced_thresholds`,
:func:`minimal_strength`. The field with the scheme's terms is permutation-equivariant, so its
"m winners at gap d" states stay invariant: ``r = c 1 + T d 1_W``. Along each branch, the two
equations (winner, loser) are linear in ``a``; for shift-invariant terms
``a(d) = (gamma T d - dG0(d)) / dX(d)`` (``X``: the part of the field proportional to ``a``,
``G0`` the rest of the terms, ``d`` = winner minus loser), for the z-loss the common level ``c``
is solved for too. Stability is read from the eigenvalues of the full Jacobian there (built from
the two-level inclusion probabilities of :func:`~moebif.model.topk.two_level_inclusion`).
``collapse_a(strength)`` is the smallest ``a`` on a stable part of any branch (branches
``m = 1 .. N-1`` for ``N <= 16``, else ``m <= k + 1`` and ``m >= N - k - 1``, as
:func:`~moebif.model.topk.topk_collapse_threshold`); at zero strength it equals
``thresholds(N, k).collapse`` (``a_SN``). The minimal strength is the smallest one with
``collapse_a(strength) > a`` (capacity: the *largest* factor ``cf``). It is compared in
:func:`advise` with the two naive rules: the *linear* rule (strength for ``a_eff < a_lin``) and
the *rho* rule (strength for ``a_eff < a_SN``, as if the scheme were the linear feedback of
sec. 8.7). For the aux loss under SGD the gradient ``p_j (f_j - f.p)`` vanishes on a saturated
branch (like ``N e^{-d}``), so ``collapse_a`` grows only logarithmically in the coefficient and
the minimal coefficient grows exponentially with ``a / (gamma T)``.

**3. The loss-free bias as a relay integral controller,** :class:`BiasTheory`. Two experts,
``y = r1 - r2``, bias gap ``b = beta1 - beta2``, selection ``s = y + b``; the reinforcement
follows the selection, the forgetting acts on the scores:
``y' = a tanh(s / 2T) - gamma y + h``, ``b' = -U sign(s)``, ``U = 2 u / eta`` (each step moves
``b`` by ``2u``). Hence ``s' = a tanh(s / 2T) - gamma s + gamma b + h - U sign(s)``; linearised,

    s' = lambda s + (h + gamma b) - U sign(s),    lambda = a / (2T) - gamma.

So the issue's form ``s' = lambda s + h - u sign(s)`` holds with ``u -> U`` and ``h -> h + gamma
b``: the bias enters the forgetting term too, and that integral part helps. Solving the linear
system from ``b = 0``: ``s`` returns to 0 iff ``s0 < U (1 + gamma / lambda) / lambda =
U A / lambda^2`` (**capture radius**, not ``U / lambda``), and a step of skew ``h`` applied at
balance is absorbed iff ``h < U (1 + gamma / lambda) = U A / lambda`` (not ``U``). A slowly
rising skew is absorbed whatever its size: in the sliding state ``y = h / gamma``,
``b = -h / gamma`` and the equivalent control ``h + gamma b`` is 0. Any ``U > 0`` eventually
rebalances the selection (``b`` is unbounded); no excursion at all from any state needs
``U > max_d [a (pi_w - pi_l) / k - gamma T d]`` (the largest drift on the one-winner branch; the
same for N experts and top-k with ``U = 2 u / eta`` on the winner-loser gap). **Chattering**: at
balance, ``sign`` of a noisy count. When ``u sqrt(B) / T`` is small, the batch noise dithers the
relay into a linear integral gain ``kappa = sqrt(2B / pi) alpha_k / (T sqrt(q (1 - q)))``
(``q = k/N``) and the fluctuations follow a linear AR(1) system (:meth:`BiasTheory.chattering`,
discrete Lyapunov equation): their size grows like ``sqrt(u)`` (not ``u``), and for
``lambda > 0`` the loop holds balance only if ``u`` exceeds :meth:`BiasTheory.hold_rate`
(about ``eta lambda / kappa``). When ``u kappa >= 1`` the relay is deterministic and ``s``
cycles between ``0`` and ``+-2u`` (standard deviation ``sqrt(2) u``; ``u`` when
``lambda < 0``). The prediction "amplitude ~ u" holds only in that regime, with the factor
``sqrt(2)``.

**4. Capacity**: dropped fraction of assignments ``N E[(n_i - C)+] / (k B)`` with
``n_i ~ Binomial(B, pi_i)`` (exact marginal: tokens are independent), :func:`dropped_fraction`;
on a collapsed branch, ``sum_i (pi_i / k - cf / N)+``. Capacity bounds the *served* imbalance
at ``cf / N`` but keeps the selection's: a collapsed router keeps dropping.

**5. Balanced by construction** (quantile, Sinkhorn, expert choice): no collapsed state at any
``a``. Their cost: the selection ignores the scores, so a genuine preference is removed from the
loads (``skew_response = 0``), and expert choice leaves a fraction ``(1 - C/B)^N`` of tokens with
no expert (column-wise choice on iid token scores; :func:`expert_choice_unrouted`).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np

from ..params import ParameterError, RouterParams, check_positive
from .balancers import (
    BalancerSpec,
    CapacityTerm,
    aux_normalisation,
    expert_capacity,
    field_terms,
    noisy_two_level,
    noisy_uniform_slope,
)
from .field import VectorField
from .thresholds import thresholds
from .topk import topk_uniform_slope, two_level_inclusion, two_level_inclusion_grid

__all__ = [
    "BalancedThresholds",
    "BiasTheory",
    "EffectiveParameters",
    "STRENGTH_SCHEMES",
    "advise",
    "balanced_thresholds",
    "branch_drift_max",
    "dropped_fraction",
    "effective_parameters",
    "expert_choice_unrouted",
    "hysteresis_width",
    "minimal_strength",
    "scheme_spec",
]

# ----------------------------------------------------------------------------------------------
# 1. effective parameters near balance


@dataclass(frozen=True)
class EffectiveParameters:
    """The uniform state with a scheme (see the module docstring, part 1).

    ``contrast``, ``common``: eigenvalues of the Jacobian on the contrast and common modes;
    ``shift``: ``dlambda_c``; ``a_eff``, ``rho_eff``, ``gamma_eff``, ``T_eff`` (``inf``: no
    reinforcement left on the contrasts); ``acts_on``: the parameter the scheme naturally moves
    (``rho``, ``gamma``, ``a``, ``T``); ``oscillatory``: the loss of stability is a Hopf point."""

    contrast: float
    common: float
    shift: float
    a_eff: float
    rho_eff: float
    gamma_eff: float
    T_eff: float
    acts_on: str
    oscillatory: bool = False

    def to_dict(self) -> dict:
        return {
            "contrast_eigenvalue": self.contrast,
            "common_eigenvalue": self.common,
            "contrast_shift": self.shift,
            "a_eff": self.a_eff,
            "rho_eff": self.rho_eff,
            "gamma_eff": self.gamma_eff,
            "T_eff": self.T_eff if math.isfinite(self.T_eff) else None,
            "acts_on": self.acts_on,
            "oscillatory": self.oscillatory,
        }


def _capacity_slope(cf: float, n: int, k: int, batch: int | None) -> float:
    if batch is None:
        return 1.0 if cf > 1.0 else (0.5 if cf == 1.0 else 0.0)
    from scipy.stats import binom

    C = expert_capacity(batch, n, k, cf)
    return float(binom.cdf(C - 1, batch - 1, k / n))


def _shifts(
    spec: BalancerSpec, n: int, k: int, a: float, gamma: float, T: float, rate: float, batch, eta
):
    """``(dlambda_c, dlambda_0, acts_on, oscillatory)`` of the smooth parts of ``spec``."""
    alpha_k = topk_uniform_slope(n, k) if k > 1 else 1.0 / n
    A = a * alpha_k / (k * T)
    dc = d0 = 0.0
    acts, osc = [], False
    if spec.aux > 0:
        c, first = aux_normalisation(spec.aux_variant, n, k, spec.aux_layers)
        af = 1.0 / n if first else alpha_k
        dc -= rate * spec.aux * c * af / (n * T * T)
        acts.append("rho")
    if spec.importance > 0:
        dc -= 2.0 * rate * spec.importance / (n * T * T)
        acts.append("rho")
    if spec.zloss > 0:
        y = 2.0 * rate * spec.zloss / (n * T * T)
        lse = (gamma * math.log(n) + a / (n * T)) / (gamma + y)
        dc -= y * lse
        d0 -= y
        acts.append("gamma")
    if spec.capacity > 0:
        phi = _capacity_slope(spec.capacity, n, k, batch)
        dc -= (1.0 - phi) * A
        acts.append("a")
    if spec.noise > 0 or spec.jitter > 0:
        an = noisy_uniform_slope(n, k, sigma=spec.noise, jitter=spec.jitter)
        dc += a / (k * T) * (an - alpha_k)
        acts.append("T")
    if spec.quantile:
        if eta is None:
            raise ParameterError("eta", "quantile balancing's effective gamma needs eta")
        omega = (1.0 - spec.quantile_ema) / eta
        dc -= omega  # threshold-equivalent (the 2x2 system has trace A - gamma - omega)
        acts.append("gamma")
        osc = True
    if spec.sinkhorn or spec.expert_choice > 0:
        dc -= A
        acts.append("a")
    return dc, d0, "+".join(dict.fromkeys(acts)) or "none", osc


def effective_parameters(
    spec: BalancerSpec,
    params: RouterParams,
    *,
    top_k: int = 1,
    rate: float = 1.0,
    batch: int | None = None,
    eta: float | None = None,
) -> EffectiveParameters:
    """Effective ``(a_eff, gamma_eff, T_eff, rho_eff)`` of ``spec`` at the uniform state of
    ``params`` (module docstring, part 1). The loss-free bias has none (it is not smooth: see
    :class:`BiasTheory`); ``batch`` matters for capacity only (``None``: ``B -> inf``)."""
    p = params
    n, k = p.n_experts, int(top_k)
    alpha_k = topk_uniform_slope(n, k) if k > 1 else 1.0 / n
    A = p.a * alpha_k / (k * p.T)
    dc, d0, acts, osc = _shifts(spec, n, k, p.a, p.gamma, p.T, rate, batch, eta)
    a_eff = p.a + dc * k * p.T / alpha_k
    gain = A + dc
    return EffectiveParameters(
        contrast=A - p.gamma + dc,
        common=-p.gamma + d0,
        shift=dc,
        a_eff=a_eff,
        rho_eff=p.a - a_eff,
        gamma_eff=p.gamma - dc,
        T_eff=p.a * alpha_k / (k * gain) if gain > 0 else math.inf,
        acts_on=acts,
        oscillatory=osc,
    )


def linear_threshold(
    spec: BalancerSpec,
    n: int,
    k: int,
    gamma: float,
    T: float,
    *,
    rate: float = 1.0,
    batch=None,
    eta=None,
) -> float:
    """The ``a`` where the uniform state with ``spec`` loses stability (``inf``: never)."""
    from scipy.optimize import brentq

    def lam(a):
        alpha_k = topk_uniform_slope(n, k) if k > 1 else 1.0 / n
        dc = _shifts(spec, n, k, a, gamma, T, rate, batch, eta)[0]
        return a * alpha_k / (k * T) - gamma + dc

    hi = thresholds(n, k, gamma, T).linear
    for _ in range(60):
        if lam(hi) > 0:
            return float(brentq(lam, 0.0, hi, xtol=1e-12 * hi))
        hi *= 2.0
    return math.inf


# ----------------------------------------------------------------------------------------------
# 2. branches with the scheme's terms, collapse threshold, minimal strength


def _winner_set(n: int, k: int):
    if n <= 16:
        return list(range(1, n))
    return sorted(set(range(1, k + 2)) | set(range(n - k - 1, n)))


@functools.lru_cache(maxsize=64)
def _two_level_table(n: int, k: int, m: int, grid: tuple) -> tuple:
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


def _two_level_state(field: VectorField, n, k, m, d, c, vals, a: float):
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


def _max_eig(J: np.ndarray) -> float:
    return float(np.max(np.linalg.eigvals(J).real))


def _point_a(field, n, k, m, d, vals, shift_inv):
    """``(a, lambda_max)`` of the m-winner equilibrium at gap ``d`` (None: no such state with
    ``a > 0``). The two equations are linear in ``a``; for shift-invariant terms the common
    level drops out, otherwise it is solved for."""

    def parts(c):
        s0 = _two_level_state(field, n, k, m, d, c, vals, 0.0)
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
    st = _two_level_state(field, n, k, m, d, c, vals, a)
    return float(a), _max_eig(field.jacobian_at(st))


def _extreme_on_stable(grid, vals, lams, point, *, largest: bool):
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


@dataclass(frozen=True)
class BalancedThresholds:
    """Thresholds with a scheme: ``linear`` (uniform state), ``collapse`` (smallest ``a`` with a
    stable collapsed state; ``inf``: none found), ``winners`` (its branch), ``gap`` (its score
    gap ``d``, 0 for a branch born at the linear threshold)."""

    linear: float
    collapse: float
    winners: int
    gap: float

    def to_dict(self) -> dict:
        return {
            "linear": self.linear if math.isfinite(self.linear) else None,
            "collapse": self.collapse if math.isfinite(self.collapse) else None,
            "winners": self.winners,
            "gap": self.gap,
        }


def _grid(n: int, d_max: float, points: int) -> tuple:
    """Gaps ``0.01 .. d_max`` (``d_max`` rounded up to a multiple of 16, so that the cached
    two-level tables are shared between nearby calls)."""
    d_max = 16.0 * math.ceil(d_max / 16.0)
    return tuple(float(x) for x in np.geomspace(0.01, d_max, points))


def balanced_thresholds(
    spec: BalancerSpec,
    n_experts: int,
    top_k: int = 1,
    gamma: float = 1.0,
    T: float = 1.0,
    *,
    rate: float = 1.0,
    batch: int | None = None,
    eta: float | None = None,
    winners=None,
    points: int = 160,
) -> BalancedThresholds:
    """``collapse_a`` and the linear threshold of the field with the smooth terms of ``spec``
    (module docstring, part 2). Schemes without a static term (bias, quantile, Sinkhorn, expert
    choice) are not accepted here: they have no stable collapsed state at any ``a``. Noisy gating
    uses the fold of the one-winner branch (:func:`noisy_collapse_threshold`)."""
    gamma = check_positive("gamma", gamma)
    T = check_positive("T", T)
    n, k = int(n_experts), int(top_k)
    if spec.bias > 0 or spec.quantile or spec.sinkhorn or spec.expert_choice > 0:
        raise ParameterError("balancer", "selection overrides have no static collapsed state")
    lin = linear_threshold(spec, n, k, gamma, T, rate=rate, batch=batch, eta=eta)
    if spec.noise > 0 or spec.jitter > 0:
        if spec.has_gradient or spec.capacity > 0:
            raise ParameterError("balancer", "noisy gating thresholds: noise alone")
        a_sn, d = noisy_collapse_threshold(n, k, gamma, T, sigma=spec.noise, jitter=spec.jitter)
        return BalancedThresholds(lin, a_sn, 1, d)
    terms = field_terms(spec, rate=rate, batch=batch)
    field = VectorField(1.0, gamma, T, np.zeros(n), k, terms)
    shift_inv = all(getattr(t, "shift_invariant", True) for t in terms)
    ms = winners if winners is not None else _winner_set(n, k)
    d_max = 4.0 * math.log(n) + 12.0
    best = (math.inf, 0, math.nan)
    for _ in range(5):
        grid = _grid(n, d_max, points)
        at_end = False
        for m in ms:
            table = _two_level_table(n, k, m, grid)
            pts = [_point_a(field, n, k, m, d, table[i], shift_inv) for i, d in enumerate(grid)]
            vals = [None if q is None else q[0] for q in pts]
            lams = [1.0 if q is None else q[1] for q in pts]

            def point(d, m=m):
                v = two_level_inclusion(n, m, k, float(d)) if k > 1 else None
                return _point_a(field, n, k, m, d, v, shift_inv)

            cand = _extreme_on_stable(grid, vals, lams, point, largest=False)
            if cand is not None and cand[2] == 0:
                # stable from d -> 0: the branch leaves the uniform state at the linear
                # threshold (a supercritical pitchfork)
                cand = (min(cand[0], lin), 0.0, 0)
            if cand is not None and cand[0] < best[0]:
                best = (cand[0], m, cand[1])
                at_end = cand[2] == len(grid) - 1
        if not at_end:
            break
        d_max *= 2.0
    return BalancedThresholds(lin, best[0], best[1], best[2])


def _strength_scan(
    spec_unit: BalancerSpec,
    a: float,
    n: int,
    k: int,
    gamma: float,
    T: float,
    rate: float,
    points: int = 160,
) -> float:
    """For a scheme whose terms are linear in its strength ``s`` (aux, importance, z-loss):
    ``sup`` of the strengths at which a stable m-winner state exists at this ``a`` (0: none at
    any strength), from one scan of each branch: at gap ``d`` the winner and loser equations fix
    ``s(d)`` (and, for the z-loss, the common level)."""
    terms = field_terms(spec_unit, rate=rate)
    unit = VectorField(0.0, gamma, T, np.zeros(n), k, terms)
    bare = VectorField(0.0, gamma, T, np.zeros(n), k)
    zl = [t for t in terms if not getattr(t, "shift_invariant", True)]
    best = 0.0
    d_max = 4.0 * math.log(n) + 12.0 + 2.0 * math.log1p(a / (gamma * T))

    def point(m, d, vals):
        if zl:
            # E_l: a X_l - gamma c + s g_l(c) = 0, E_w likewise, g = -kappa (c/T + L0) p, so
            # g_w / g_l = p_w / p_l and the common level c is linear
            st0 = _two_level_state(bare, n, k, m, d, 0.0, vals, 1.0)
            X = st0.pi / k
            p = st0.p
            rho = p[0] / p[-1]
            if abs(rho - 1.0) < 1e-14:
                return None
            c = (gamma * T * d - a * X[0] + a * X[-1] * rho) / (gamma * (rho - 1.0))
        else:
            c = 0.0
        st = _two_level_state(unit, n, k, m, d, c, vals, 0.0)
        g = unit.drift_at(st) + gamma * st.r  # the terms at unit strength
        base = a * st.pi / k - gamma * st.r
        if zl:
            if not g[-1] < 0 and not g[-1] > 0:
                return None
            s = -base[-1] / g[-1]
        else:
            dg = g[0] - g[-1]
            if not dg < 0:
                return None
            s = -(base[0] - base[-1]) / dg
        if not s > 0:
            return None
        J = a / k * st.dpi - gamma * np.eye(n) + s * (unit.jacobian_at(st) + gamma * np.eye(n))
        return float(s), _max_eig(J)

    for m in _winner_set(n, k):
        grid = _grid(n, d_max, points)
        table = _two_level_table(n, k, m, grid)
        pts = [point(m, d, table[i]) for i, d in enumerate(grid)]
        vals = [None if q is None else q[0] for q in pts]
        lams = [1.0 if q is None else q[1] for q in pts]

        def pt(d, m=m):
            v = two_level_inclusion(n, m, k, float(d)) if k > 1 else None
            return point(m, d, v)

        cand = _extreme_on_stable(grid, vals, lams, pt, largest=True)
        if cand is not None:
            if cand[2] == len(grid) - 1:
                return math.inf  # still stable at the end of the scan: no finite strength
            if cand[2] == 0:
                # stable from d -> 0: the branch is born at the linear threshold, where the
                # strength is the one that makes the uniform state marginal
                cand = (max(cand[0], _linear_strength(spec_unit, a, n, k, gamma, T, rate)),)
            best = max(best, cand[0])
    return best


def _linear_strength(spec_unit, a, n, k, gamma, T, rate) -> float:
    """Strength at which the uniform state's contrast eigenvalue vanishes at this ``a``."""
    from scipy.optimize import brentq

    p = RouterParams(a=a, gamma=gamma, T=T, n_experts=n)

    def lam(s):
        return effective_parameters(spec_unit.scaled(s), p, top_k=k, rate=rate).contrast

    if lam(0.0) <= 0:
        return 0.0
    hi = 1.0
    while lam(hi) > 0:
        hi *= 4.0
        if hi > 1e12:
            return math.inf
    return float(brentq(lam, 0.0, hi, xtol=1e-14, rtol=1e-12))


def _capacity_scan(a: float, n: int, k: int, gamma: float, T: float, points: int = 160) -> float:
    """Smallest capacity factor (``B -> inf``) at which a stable m-winner state exists at this
    ``a``: on the part of a branch where the winners are clipped and the losers not,
    ``a (cf / N - pi_l / k) = gamma T d`` gives ``cf(d) = N (gamma T d / a + pi_l / k)``; an
    unclipped (bare) stable state at this ``a`` counts for ``cf >= N pi_w / k``."""
    from scipy.optimize import brentq

    best = math.inf
    d_max = 4.0 * math.log(n) + 12.0 + 2.0 * a / (gamma * T)
    grid = _grid(n, d_max, points)
    bare = VectorField(a, gamma, T, np.zeros(n), k)

    def kink(m, d, vals):
        # cf(d) - N pi_w / k: negative where the winners are clipped
        st = _two_level_state(bare, n, k, m, d, 0.0, vals, a)
        return n * (gamma * T * d / a + st.pi[-1] / k) - n * st.pi[0] / k

    def clipped(m, d, vals, exact=False):
        st = _two_level_state(bare, n, k, m, d, 0.0, vals, a)
        pw, pl = st.pi[0] / k, st.pi[-1] / k
        cf = n * (gamma * T * d / a + pl)
        if not exact and not (n * pl <= cf <= n * pw):
            return None
        J = field_cf(min(cf, n * pw)).jacobian_at(st)
        return cf, _max_eig(J)

    def field_cf(cf):
        return VectorField(a, gamma, T, np.zeros(n), k, (CapacityTerm(cf),))

    for m in _winner_set(n, k):
        table = _two_level_table(n, k, m, grid)
        pts = [clipped(m, d, table[i]) for i, d in enumerate(grid)]
        vals = [None if q is None else q[0] for q in pts]
        lams = [1.0 if q is None else q[1] for q in pts]

        def pt(d, m=m):
            v = two_level_inclusion(n, m, k, float(d)) if k > 1 else None
            return clipped(m, d, v)

        cand = _extreme_on_stable(grid, vals, lams, pt, largest=False)
        if cand is not None:
            best = min(best, cand[0])
        # the edge of the clipped part (winners exactly at capacity)
        kv = [kink(m, d, table[i]) for i, d in enumerate(grid)]
        for i in range(len(grid) - 1):
            if kv[i] * kv[i + 1] < 0:

                def fk(d, m=m):
                    v = two_level_inclusion(n, m, k, float(d)) if k > 1 else None
                    return kink(m, d, v)

                d0 = brentq(fk, grid[i], grid[i + 1], xtol=1e-13)
                v = two_level_inclusion(n, m, k, float(d0)) if k > 1 else None
                q = clipped(m, d0, v, exact=True)
                if q is not None and q[1] < 0:
                    best = min(best, q[0])
        # bare stable states at this a: a_bare(d) = a
        abare = []
        for i, d in enumerate(grid):
            q = _point_a(bare.with_terms(()), n, k, m, d, table[i], True)
            abare.append(math.nan if q is None else q[0] - a)
        for i in range(len(grid) - 1):
            if np.isfinite(abare[i]) and np.isfinite(abare[i + 1]) and abare[i] * abare[i + 1] < 0:

                def fa(d, m=m):
                    v = two_level_inclusion(n, m, k, float(d)) if k > 1 else None
                    q = _point_a(bare, n, k, m, d, v, True)
                    return q[0] - a

                d0 = brentq(fa, grid[i], grid[i + 1], xtol=1e-12)
                v = two_level_inclusion(n, m, k, float(d0)) if k > 1 else None
                st = _two_level_state(bare, n, k, m, d0, 0.0, v, a)
                if _max_eig(bare.jacobian_at(st)) < 0:
                    best = min(best, n * st.pi[0] / k)
    return best


def noisy_collapse_threshold(
    n_experts: int,
    top_k: int = 1,
    gamma: float = 1.0,
    T: float = 1.0,
    *,
    sigma: float = 0.0,
    jitter: float = 0.0,
) -> tuple[float, float]:
    """``(a_SN, d)`` of the noisy selection: the fold ``min_d k gamma T d / (pi_w - pi_l)`` of the
    one-winner branch with the inclusion probabilities of
    :func:`~moebif.model.balancers.noisy_two_level` (for Gumbel noise, ``sigma = 0``, the fold of
    :mod:`moebif.model.symmetric` for top-1)."""
    from scipy.optimize import minimize_scalar

    n, k = int(n_experts), int(top_k)

    def g(d):
        pw, pl = noisy_two_level(n, 1, k, d, sigma=sigma, jitter=jitter)
        return k * d / (pw - pl) if pw > pl else math.inf

    grid = np.geomspace(0.05, 4.0 * math.log(n) + 12.0 + 8.0 * sigma, 60)
    vals = [g(d) for d in grid]
    i = int(np.argmin(vals))
    if i == 0:
        return linear_noisy(n, k, gamma, T, sigma, jitter), 0.0
    res = minimize_scalar(
        g,
        bounds=(grid[i - 1], grid[min(i + 1, len(grid) - 1)]),
        method="bounded",
        options={"xatol": 1e-8},
    )
    return float(res.fun) * gamma * T, float(res.x)


def linear_noisy(n, k, gamma, T, sigma, jitter) -> float:
    """Linear threshold of the noisy selection: ``k gamma T / alpha_noise``."""
    return k * gamma * T / noisy_uniform_slope(n, k, sigma=sigma, jitter=jitter)


STRENGTH_SCHEMES = {
    # name -> (spec field, variant); the strength is that field's value
    "aux": ("aux", "hf"),
    "aux-megatron": ("aux", "megatron"),
    "aux-deepspeed": ("aux", "deepspeed"),
    "zloss": ("zloss", None),
    "importance": ("importance", None),
    "capacity": ("capacity", None),
    "noisy": ("noise", None),
}


def scheme_spec(name: str, strength: float) -> BalancerSpec:
    """The :class:`BalancerSpec` of one scheme of :data:`STRENGTH_SCHEMES` at ``strength``."""
    if name not in STRENGTH_SCHEMES:
        raise ParameterError("scheme", f"must be one of {', '.join(STRENGTH_SCHEMES)}")
    field_name, variant = STRENGTH_SCHEMES[name]
    kw = {field_name: float(strength)}
    if variant is not None:
        kw["aux_variant"] = variant
    return BalancerSpec(**kw)


def minimal_strength(
    name: str,
    a: float,
    n_experts: int,
    top_k: int = 1,
    gamma: float = 1.0,
    T: float = 1.0,
    *,
    rate: float = 1.0,
    batch: int | None = None,
    s_max: float = 1e6,
    rtol: float = 1e-7,
) -> float:
    """Smallest strength of scheme ``name`` (:data:`STRENGTH_SCHEMES`) with
    ``collapse_a(strength) > a``, i.e. no stable collapsed state at this ``a`` (0 if the bare
    router has none; ``inf`` if no finite strength does it). For ``capacity`` it is the *largest*
    capacity factor ``cf > 1`` with ``collapse_a(cf) > a`` (``inf``: any; ``nan``: none).

    Gradient schemes (linear in their coefficient) are solved by one scan of each branch
    (:func:`_strength_scan`); capacity and noise by bisection on ``collapse_a``."""
    from scipy.optimize import brentq

    n, k = int(n_experts), int(top_k)
    gamma = check_positive("gamma", gamma)
    T = check_positive("T", T)
    bare = thresholds(n, k, gamma, T).collapse
    if name in ("aux", "aux-megatron", "aux-deepspeed", "zloss", "importance"):
        if a < bare:
            return 0.0
        s = _strength_scan(scheme_spec(name, 1.0), a, n, k, gamma, T, rate)
        return s if s <= s_max else math.inf

    def excess(s):
        th = balanced_thresholds(scheme_spec(name, s), n, k, gamma, T, rate=rate, batch=batch)
        return th.collapse - a

    if name == "capacity" and batch is None:
        if a < bare:
            return math.inf
        cf = _capacity_scan(a, n, k, gamma, T)
        return cf if cf > 1.0 else math.nan
    if name == "capacity":
        if a < bare:
            return math.inf
        lo, hi = 1.0 + 1e-6, 1.5
        if excess(lo) <= 0:
            return math.nan
        while excess(hi) > 0:
            hi = 1.0 + 2.0 * (hi - 1.0)
            if hi > 64:
                return math.inf
        return float(brentq(excess, lo, hi, rtol=rtol))
    if a < bare:
        return 0.0
    lo, hi = 0.0, 0.5
    while excess(hi) <= 0:
        lo, hi = hi, 2.0 * hi
        if hi > s_max:
            return math.inf
    return float(brentq(excess, lo, hi, rtol=rtol, xtol=1e-10))


def branch_drift_max(
    a: float, n_experts: int, top_k: int = 1, gamma: float = 1.0, T: float = 1.0
) -> float:
    """``max_{m, d >= 0} [a (pi_w - pi_l) / k - gamma T d]``: the largest mean-field drift of the
    winner-loser score gap on the two-level branches (0 when the uniform state attracts every
    branch). A relay acting on that gap at a rate above it (the loss-free bias with
    ``2 u / eta``, or the aux loss under Adam with ``2 lr / eta``) leaves no collapsed state and
    no collapsing excursion."""
    from scipy.optimize import minimize_scalar

    n, k = int(n_experts), int(top_k)
    best = 0.0
    grid = _grid(n, 4.0 * math.log(n) + 12.0 + a / (gamma * T), 160)
    for m in _winner_set(n, k):
        table = _two_level_table(n, k, m, grid)
        vals = [a * (v[0] - v[1]) / k - gamma * T * d for v, d in zip(table, grid, strict=True)]
        i = int(np.argmax(vals))

        def drift(d, m=m):
            v = _two_level_table(n, k, m, (float(d),))[0]
            return a * (v[0] - v[1]) / k - gamma * T * d

        lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
        res = minimize_scalar(
            lambda d: -drift(d), bounds=(lo, hi), method="bounded", options={"xatol": 1e-10}
        )
        best = max(best, vals[i], -float(res.fun))
    return best


def hysteresis_width(
    spec: BalancerSpec,
    a: float,
    gamma: float = 1.0,
    T: float = 1.0,
    *,
    rate: float = 1.0,
    points: int = 600,
) -> float:
    """Width ``2 H`` of the hysteresis loop in the skew ``h = b1 - b2`` of two experts with the
    smooth terms of ``spec`` (eqs. 17-18 with the terms): along ``y = r1 - r2`` the skew that
    holds ``y`` at rest is ``h(y) = -(F_1 - F_2)`` (with the common level at rest for the
    z-loss); ``H = -min_{y > 0} h(y)`` (0 when ``h`` is increasing: no hysteresis)."""
    from scipy.optimize import brentq, minimize_scalar

    terms = field_terms(spec, rate=rate)
    field = VectorField(a, gamma, T, np.zeros(2), 1, terms)
    shift_inv = all(getattr(t, "shift_invariant", True) for t in terms)

    def h_of(y):
        def common(c):
            f = field(np.array([c + 0.5 * y, c - 0.5 * y]))
            return f[0] + f[1]

        c = 0.0
        if not shift_inv:
            lo, hi = -1.0, 1.0
            while common(lo) * common(hi) > 0:
                lo, hi = 2 * lo, 2 * hi
            c = brentq(common, lo, hi, xtol=1e-13)
        f = field(np.array([c + 0.5 * y, c - 0.5 * y]))
        return -(f[0] - f[1])

    y = np.linspace(1e-4, 2.0 * (a + 1.0) / gamma + 4.0 * T, points)
    hv = np.array([h_of(v) for v in y])
    i = int(np.argmin(hv))
    if hv[i] >= 0 or i == 0:
        return 0.0
    res = minimize_scalar(
        h_of,
        bounds=(y[max(i - 1, 0)], y[min(i + 1, points - 1)]),
        method="bounded",
        options={"xatol": 1e-10},
    )
    return float(-2.0 * min(res.fun, hv[i]))


# ----------------------------------------------------------------------------------------------
# 3. the loss-free bias


@dataclass(frozen=True)
class Chattering:
    """Stationary fluctuations of the biased router at balance (two experts: the pair
    variables ``s = y + b``, ``b``, ``y``; N experts: one expert's deviation from the mean).

    ``regime``: ``noise`` (dithered relay, linear AR(1) theory), ``relay`` (deterministic
    relay) or ``unheld`` (the bias is too slow to hold balance against the batch noise);
    ``dither``: ``u kappa`` (per-step gain of the dithered relay);
    ``s_std``, ``b_std``, ``y_std``."""

    regime: str
    dither: float
    s_std: float
    b_std: float
    y_std: float


@dataclass(frozen=True)
class BiasTheory:
    """The loss-free bias of rate ``u`` per step on a router with step ``eta`` and batch ``B``
    (module docstring, part 3). ``U = 2u / eta`` is the relay rate on the winner-loser gap;
    ``lam``: the contrast eigenvalue ``A - gamma`` of the bare uniform state."""

    params: RouterParams
    u: float
    eta: float
    batch: int
    top_k: int = 1

    @property
    def n(self) -> int:
        return self.params.n_experts

    @property
    def alpha(self) -> float:
        return topk_uniform_slope(self.n, self.top_k) if self.top_k > 1 else 1.0 / self.n

    @property
    def gain(self) -> float:
        """``A = a alpha_k / (k T)`` (``a / 2T`` for two experts)."""
        p = self.params
        return p.a * self.alpha / (self.top_k * p.T)

    @property
    def lam(self) -> float:
        return self.gain - self.params.gamma

    @property
    def U(self) -> float:
        return 2.0 * self.u / self.eta

    # linear theory ------------------------------------------------------------------------

    @property
    def capture_radius_linear(self) -> float:
        """``U A / lambda^2`` (score units): the corrected capture radius (``inf`` if
        ``lambda <= 0``)."""
        return self.U * self.gain / self.lam**2 if self.lam > 0 else math.inf

    @property
    def capture_radius_issue(self) -> float:
        """``U / lambda``: the issue's conjecture (``s' = lambda s + h - u sign s`` at ``b``
        frozen)."""
        return self.U / self.lam if self.lam > 0 else math.inf

    @property
    def absorbed_skew_linear(self) -> float:
        """``U A / lambda``: the largest skew step absorbed from balance (``inf`` if
        ``lambda <= 0``)."""
        return self.U * self.gain / self.lam if self.lam > 0 else math.inf

    @property
    def absorbed_skew_issue(self) -> float:
        """``U``: the issue's conjecture ``|h| < u`` in these units."""
        return self.U

    # nonlinear mean field (two-level, one winner) ------------------------------------------

    def _dpi(self):
        """``pi_w - pi_l`` of the one-winner state as a vectorised function of the score gap."""
        p, n, k = self.params, self.n, self.top_k
        if k == 1:

            def f(s):
                d = np.asarray(s, dtype=float) / p.T
                e = np.exp(-np.abs(d))
                # winner ahead (d > 0): (1 - e) / (1 + (N - 1) e); behind: the loser's view
                return np.sign(d) * (1.0 - e) / (1.0 + (n - 1) * e)

            return f
        grid = np.linspace(0.0, 12.0, 601)
        vals = np.diff(two_level_inclusion_grid(n, 1, k, grid)[:, 1::-1], axis=1)[:, 0]

        def g(s):
            d = np.asarray(s, dtype=float) / p.T
            return np.sign(d) * np.interp(np.abs(d), grid, vals)

        return g

    def _escape_many(self, s0, h, s_thr: float, t_max: float, dt: float = 0.02) -> np.ndarray:
        """Mean field (RK4, vectorised over the initial gaps ``s0`` and skews ``h``) from
        ``(y = s0, b = 0)``: does ``s = y + b`` reach ``s_thr`` before it returns to 0? While
        ``s > 0`` the relay is ``b = -U t``, so ``y' = a dpi(y - U t) / k - gamma y + h``."""
        p, k = self.params, self.top_k
        dpi = self._dpi()
        U = self.U
        y = np.array(s0, dtype=float)
        h = np.broadcast_to(np.asarray(h, dtype=float), y.shape)
        alive = np.ones(y.shape, dtype=bool)
        esc = np.zeros(y.shape, dtype=bool)
        t = 0.0

        def f(t, y):
            return p.a * dpi(y - U * t) / k - p.gamma * y + h

        for _ in range(int(t_max / dt)):
            k1 = f(t, y)
            k2 = f(t + dt / 2, y + dt / 2 * k1)
            k3 = f(t + dt / 2, y + dt / 2 * k2)
            k4 = f(t + dt, y + dt * k3)
            y = np.where(alive, y + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4), y)
            t += dt
            s = y - U * t
            up = alive & (s >= s_thr)
            esc |= up
            alive &= ~up & (s > 0.0)
            if not alive.any():
                break
        return esc

    def _boundary(self, make, s_thr: float, hi0: float) -> float:
        """Smallest value of a scanned quantity at which the mean field escapes: successive
        grids (64 points, zooming into the first escaping cell)."""
        t_max = 40.0 / self.params.gamma
        lo, hi = 0.0, hi0
        for _ in range(8):
            if make(np.array([hi]), s_thr, t_max)[0]:
                break
            lo, hi = hi, 2.0 * hi
        else:
            return math.inf
        for _ in range(4):
            x = np.linspace(lo, hi, 49)
            e = make(x, s_thr, t_max)
            i = int(np.argmax(e))
            if not e[i]:
                return hi
            lo, hi = x[max(i - 1, 0)], x[i]
        return 0.5 * (lo + hi)

    def escape_threshold(self) -> float:
        """Half the gap of the stable collapsed state of the bare reduced field (the level an
        excursion must reach to count as a collapse)."""
        from scipy.optimize import brentq

        p, k = self.params, self.top_k
        dpi = self._dpi()

        def f(s):
            return p.a * dpi(s) / k - p.gamma * s

        hi = (p.a + 1.0) / p.gamma + 1.0
        lo = 1e-6 * p.T
        if f(lo) <= 0:
            lo = self._peak() if self._peak() > 0 else lo
        try:
            return 0.5 * float(brentq(f, lo, hi))
        except ValueError:
            return 0.5 * hi

    def _peak(self) -> float:
        from scipy.optimize import minimize_scalar

        p, k = self.params, self.top_k
        dpi = self._dpi()
        res = minimize_scalar(
            lambda s: -(p.a * dpi(s) / k - p.gamma * s),
            bounds=(0.0, (p.a + 1.0) / p.gamma),
            method="bounded",
        )
        return float(res.x)

    def capture_radius(self, *, s_thr: float | None = None) -> float:
        """Largest initial gap ``s0`` (bias 0, no skew) from which the mean-field router returns
        to balance without reaching ``s_thr`` (default :meth:`escape_threshold`)."""
        s_thr = self.escape_threshold() if s_thr is None else s_thr

        def make(x, thr, t_max):
            return self._escape_many(np.minimum(x, 0.999 * thr), 0.0, thr, t_max)

        out = self._boundary(make, s_thr, min(self.capture_radius_linear, 0.9 * s_thr))
        return out if out < 0.999 * s_thr else math.inf

    def absorbed_skew(self, *, s_thr: float | None = None) -> float:
        """Largest skew step ``h`` (on the winner-loser gap, from balance with ``b = 0``) that
        the mean-field router absorbs without reaching ``s_thr``."""
        s_thr = self.escape_threshold() if s_thr is None else s_thr

        def make(x, thr, t_max):
            return self._escape_many(np.full(x.shape, 1e-12), x, thr, t_max)

        return self._boundary(make, s_thr, max(self.absorbed_skew_linear, self.U))

    # chattering ------------------------------------------------------------------------------

    @property
    def kappa(self) -> float:
        """``sqrt(2B/pi) alpha_k / (T sqrt(q (1 - q)))``, ``q = k/N``: slope of
        ``E[sign(mean n - n_i)]`` in the selection deviation of expert ``i`` (score units)."""
        q = self.top_k / self.n
        return (
            math.sqrt(2.0 * self.batch / math.pi)
            * self.alpha
            / (self.params.T * math.sqrt(q * (1.0 - q)))
        )

    def _ar_matrices(self, u: float):
        p, k, B = self.params, self.top_k, self.batch
        q = k / self.n
        eta = self.eta
        g = self.gain
        kap = self.kappa
        M = np.array([[1.0 - eta * p.gamma + eta * g, eta * g], [-u * kap, 1.0 - u * kap]])
        sd_xi = math.sqrt(q * (1.0 - q) / B) / k
        cov = -math.sqrt(2.0 / math.pi) * sd_xi
        Q = np.array(
            [[(eta * p.a * sd_xi) ** 2, eta * p.a * u * cov], [eta * p.a * u * cov, u * u]]
        )
        return M, Q

    def hold_rate(self) -> float:
        """Smallest ``u`` for which the dithered relay holds the balanced state at all against
        the batch noise (spectral radius of the AR(1) map below 1; 0 when the bare uniform
        state is stable). Below it the balanced state is lost to the noise-driven instability
        (slow alternating collapses), whatever the capture radius says."""
        from scipy.optimize import brentq

        if self.lam <= 0:
            return 0.0

        def rad(u):
            M, _ = self._ar_matrices(u)
            return float(np.max(np.abs(np.linalg.eigvals(M)))) - 1.0

        hi = 1.0 / self.kappa
        if rad(hi) >= 0:
            return math.nan
        return float(brentq(rad, 1e-14, hi, xtol=1e-16))

    def chattering(self) -> Chattering:
        """Stationary fluctuations at balance (module docstring, part 3), in three regimes.

        ``noise`` (``u kappa < 1``): per expert ``i``,
        ``dr' = (1 - eta gamma) dr + eta a (alpha_k ds / (k T) + xi)``,
        ``dbeta' = dbeta + u (-kappa ds + nu)``, ``ds = dr + dbeta``, with the batch noise
        ``Var xi = q (1 - q) / (k^2 B)``, ``Var nu = 1`` and ``Cov(xi, nu) = -sqrt(2/pi) sd(xi)``
        (the sign of a Gaussian count against the count itself); the stationary covariance
        solves the discrete Lyapunov equation. ``relay`` (``u kappa >= 1``): the sign is
        deterministic and ``s`` cycles with period 2; for ``lambda > 0`` the symmetric cycle
        ``+-u`` is unstable and the cycle touching 0, levels ``{0, +-2u}`` (pair units), is the
        attractor: ``sd(s) = sqrt(2) u`` (``u`` for ``lambda < 0``). ``unheld``: ``u`` below
        :meth:`hold_rate`, no stationary balance (``nan``). Two experts report the pair
        variables (twice one expert's deviation)."""
        from scipy.linalg import solve_discrete_lyapunov

        u = self.u
        scale = 2.0 if self.n == 2 else 1.0
        dither = u * self.kappa
        M, Q = self._ar_matrices(u)
        if dither >= 1.0:
            amp = (math.sqrt(2.0) if self.lam > 0 else 1.0) * 0.5 * u
            return Chattering("relay", dither, scale * amp, scale * amp, 0.0)
        if np.max(np.abs(np.linalg.eigvals(M))) >= 1.0:
            return Chattering("unheld", dither, math.nan, math.nan, math.nan)
        S = solve_discrete_lyapunov(M, Q)
        s_std = math.sqrt(max(S[0, 0] + 2 * S[0, 1] + S[1, 1], 0.0))
        return Chattering(
            "noise",
            dither,
            scale * s_std,
            scale * math.sqrt(S[1, 1]),
            scale * math.sqrt(S[0, 0]),
        )


# ----------------------------------------------------------------------------------------------
# 4-5. capacity and expert choice


def dropped_fraction(
    cf: float, n_experts: int, top_k: int = 1, batch: int | None = 512, pi=None
) -> float:
    """Fraction of token-expert assignments dropped by capacity ``C = ceil(cf k B / N)``:
    ``sum_i E[(n_i - C)+] / (k B)`` with ``n_i ~ Binomial(B, pi_i)`` (default: the uniform state
    ``pi_i = k / N``); ``batch = None``: the limit ``sum_i (pi_i / k - cf / N)+``."""
    n, k = int(n_experts), int(top_k)
    pi = np.full(n, k / n) if pi is None else np.asarray(pi, dtype=float)
    if batch is None:
        return float(np.sum(np.maximum(pi / k - cf / n, 0.0)))
    from scipy.stats import binom

    B = int(batch)
    C = expert_capacity(B, n, k, cf)
    if C >= B:
        return 0.0
    served = binom.sf(np.arange(C)[:, None], B, pi[None, :]).sum(axis=0)
    out = float(np.maximum(B * pi - served, 0.0).sum()) / (k * B)
    return out if out > 1e-13 else 0.0


def expert_choice_unrouted(cf: float, n_experts: int, top_k: int = 1, batch: int = 512) -> float:
    """Fraction of tokens taken by no expert under expert choice with ``C = ceil(cf k B / N)``,
    when each expert ranks the tokens by their own iid scores: ``(1 - C/B)^N``."""
    n = int(n_experts)
    C = min(expert_capacity(batch, n, top_k, cf), batch)
    return float((1.0 - C / batch) ** n)


# ----------------------------------------------------------------------------------------------
# advise


def _cost_of(spec: BalancerSpec, p: RouterParams, k: int, *, rate, batch, eta) -> dict:
    """``skew_response``: load response to a small genuine skew at balance, relative to the
    bare router at ``a = 0`` (the data alone); ``dropped_fraction`` at balance."""
    n = p.n_experts
    if spec.bias > 0 or spec.quantile or spec.sinkhorn or spec.expert_choice > 0:
        sr = 0.0
    else:
        eff = effective_parameters(spec, p, top_k=k, rate=rate, batch=batch, eta=eta)
        alpha_k = topk_uniform_slope(n, k) if k > 1 else 1.0 / n
        slope = alpha_k
        if spec.noise > 0 or spec.jitter > 0:
            slope = noisy_uniform_slope(n, k, sigma=spec.noise, jitter=spec.jitter)
        if spec.capacity > 0:
            slope *= _capacity_slope(spec.capacity, n, k, batch)
        sr = (slope / alpha_k) * p.gamma / (-eff.contrast) if eff.contrast < 0 else math.inf
    drop = 0.0
    if spec.capacity > 0:
        drop = dropped_fraction(spec.capacity, n, k, batch)
    if spec.expert_choice > 0:
        drop = expert_choice_unrouted(spec.expert_choice, n, k, batch or 512)
    return {"skew_response": sr if math.isfinite(sr) else None, "dropped_fraction": drop}


def advise(
    params: RouterParams,
    top_k: int = 1,
    *,
    lr: float = 1e-3,
    batch: int = 512,
) -> dict:
    """For each scheme, the minimal strength that rules out a stable collapsed state at
    ``params`` (N experts, top-k) and what it costs; JSON-ready (``moebif advise --json``).

    ``lr``: the router's step ``eta`` (ODE time advances ``lr`` a step; the gradient schemes use
    the same step, ``rate = 1``), used to turn the relay rates into per-step values; ``batch``:
    tokens a step, for the costs that depend on it. Field definitions: ``docs/balancing.md``.
    """
    p = params
    n, k = p.n_experts, int(top_k)
    lr = check_positive("lr", lr)
    thr = thresholds(n, k, p.gamma, p.T)
    if p.a >= thr.linear:
        reg = "collapsing"
    elif p.a >= thr.collapse:
        reg = "metastable"
    else:
        reg = "balanced"
    out: dict = {
        "params": p.to_dict(),
        "top_k": k,
        "lr": lr,
        "batch": batch,
        "critical_a": thr.linear,
        "collapse_a": thr.collapse,
        "kappa": p.a / thr.linear,
        "regime": reg,
        "balancers": {},
    }
    bal = out["balancers"]
    need_rho = max(p.a - thr.collapse, 0.0)  # a_eff must fall below a_SN
    need_lin = max(p.a - thr.linear, 0.0)  # the naive rule: a_eff below a_lin
    for name in ("aux", "aux-megatron", "aux-deepspeed", "zloss", "importance"):
        s = minimal_strength(name, p.a, n, k, p.gamma, p.T, batch=batch)
        unit = scheme_spec(name, 1.0)
        eff1 = effective_parameters(unit, p, top_k=k, batch=batch)
        per_unit = eff1.rho_eff  # rho_eff per unit strength (exact for aux and importance)
        entry = {
            "strength": s if math.isfinite(s) else None,
            "achievable": math.isfinite(s),
            "units": "coefficient of the loss (SGD at the router's step)",
            "linear_rule": need_lin / per_unit if per_unit > 0 and name != "zloss" else None,
            "rho_rule": need_rho / per_unit if per_unit > 0 and name != "zloss" else None,
        }
        if math.isfinite(s):
            spec = scheme_spec(name, s)
            entry["effective"] = effective_parameters(spec, p, top_k=k, batch=batch).to_dict()
            entry["cost"] = _cost_of(spec, p, k, rate=1.0, batch=batch, eta=lr)
        bal[name] = entry
    cf = minimal_strength("capacity", p.a, n, k, p.gamma, p.T)
    entry = {
        "strength": cf if math.isfinite(cf) else None,
        "achievable": not math.isnan(cf),
        "units": "largest capacity factor cf (> 1) that still rules collapse out (B -> inf)",
    }
    if math.isfinite(cf):
        entry["cost"] = _cost_of(scheme_spec("capacity", cf), p, k, rate=1.0, batch=batch, eta=lr)
    bal["capacity"] = entry
    phi = branch_drift_max(p.a, n, k, p.gamma, p.T)
    u_min = lr * phi / 2.0
    bt = BiasTheory(p, max(u_min, 1e-12), lr, batch, k)
    ch = bt.chattering()
    bal["bias"] = {
        "strength": u_min,
        "achievable": True,
        "units": "rate u per step (score units) above which no collapsing excursion exists",
        "relay_rate_needed": phi,
        "cost": {
            "skew_response": 0.0,
            "dropped_fraction": 0.0,
            "chattering_std": ch.s_std,
            "chattering_regime": ch.regime,
        },
    }
    bal["adam"] = {
        "strength": u_min,
        "achievable": True,
        "units": "Adam step lr (aux loss dominating Adam's second moment): relay 2 lr / eta",
    }
    for name, spec in (
        ("quantile", BalancerSpec(quantile=True)),
        ("sinkhorn", BalancerSpec(sinkhorn=True)),
        ("expert-choice", BalancerSpec(expert_choice=1.0)),
    ):
        bal[name] = {
            "strength": 0.0,
            "achievable": True,
            "units": "balanced by construction (on/off)",
            "cost": _cost_of(spec, p, k, rate=1.0, batch=batch, eta=lr),
        }
    sn = minimal_strength("noisy", p.a, n, k, p.gamma, p.T, s_max=1e3)
    bal["noisy"] = {
        "strength": sn if math.isfinite(sn) else None,
        "achievable": math.isfinite(sn),
        "units": "std sigma of Gaussian logit noise",
    }
    if math.isfinite(sn) and sn > 0:
        bal["noisy"]["cost"] = _cost_of(BalancerSpec(noise=sn), p, k, rate=1.0, batch=batch, eta=lr)
    return out
