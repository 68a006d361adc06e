"""Thresholds and regimes of the router, for any N and top-k: the one place that names a regime.

Two thresholds in ``a`` (units of ``gamma T``; each scales with ``gamma T``):

- the **linear threshold** ``a_lin`` where the uniform state loses stability: ``N gamma T``
  (eq. 10) for top-1, ``k gamma T / alpha_k`` for top-k (:mod:`.topk`);
- the **collapse threshold** ``a_SN``, the smallest ``a`` at which a stable collapsed state
  exists: the pitchfork ``2 gamma T`` for two experts (Thm 4.1), the saddle-node of the
  one-winner branch for ``N >= 3`` (:mod:`.symmetric`, top-1; :mod:`.topk`, top-k).

Regimes: two experts (Thm 4.1, 5.1): ``balanced`` (``a <= 2 gamma T``), ``bistable``
(``|h| < H(a)``: hysteresis) or ``biased``; ``N >= 3``: ``balanced`` (``a < a_SN``),
``metastable`` (``a_SN <= a < a_lin``: the balanced state is only metastable) or ``collapsing``
(``a >= a_lin``).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal

from ..params import RouterParams, check_positive

__all__ = ["Regime", "Thresholds", "regime", "theory_report", "thresholds"]

Regime = Literal["balanced", "bistable", "biased", "metastable", "collapsing"]


@dataclass(frozen=True)
class Thresholds:
    """The thresholds of an ``N``-expert top-``k`` router at ``(gamma, T)`` (see the module
    docstring). ``winners``: experts that win on the branch where the stable collapsed state
    appears (1 for top-1; several winners or starved experts are possible for top-k)."""

    n_experts: int
    top_k: int
    gamma: float
    T: float
    linear: float
    collapse: float
    winners: int

    @property
    def kappa_sn(self) -> float:
        """``a_SN / a_lin``: the stability ratio at which a stable collapsed state appears
        (1 for two experts, the pitchfork)."""
        return self.collapse / self.linear

    def to_dict(self) -> dict:
        return {
            "n_experts": self.n_experts,
            "top_k": self.top_k,
            "linear": self.linear,
            "collapse": self.collapse,
            "winners": self.winners,
            "kappa_sn": self.kappa_sn,
        }


@functools.lru_cache(maxsize=256)
def _thresholds(n: int, k: int, gamma: float, T: float) -> Thresholds:
    if k == 1:
        from .symmetric import collapse_threshold

        return Thresholds(n, 1, gamma, T, n * gamma * T, collapse_threshold(n, gamma, T), 1)
    from .topk import topk_collapse_threshold, topk_linear_threshold

    a_sn, m = topk_collapse_threshold(n, k, gamma, T)
    return Thresholds(n, k, gamma, T, topk_linear_threshold(n, k, gamma, T), a_sn, m)


def thresholds(n_experts: int, top_k: int = 1, gamma: float = 1.0, T: float = 1.0) -> Thresholds:
    """The linear and collapse thresholds of ``N`` experts with top-``k`` routing (cached)."""
    gamma = check_positive("gamma", gamma)
    T = check_positive("T", T)
    n, k = int(n_experts), int(top_k)
    if n < 2:
        raise ValueError(f"n_experts: must be >= 2, got {n}")
    if not 1 <= k < n:
        raise ValueError(f"top_k: must be in 1..{n - 1} for {n} experts, got {k}")
    return _thresholds(n, k, gamma, T)


def regime(params: RouterParams, top_k: int = 1) -> Regime:
    """The regime of ``params`` (see the module docstring); two experts use ``params.h``."""
    p = params
    if p.n_experts == 2:
        from .two_expert import hysteresis_halfwidth

        if p.a <= 2.0 * p.gamma * p.T:
            return "balanced"
        return "bistable" if abs(p.h) < hysteresis_halfwidth(p.a, p.gamma, p.T) else "biased"
    thr = thresholds(p.n_experts, top_k, p.gamma, p.T)
    if p.a >= thr.linear:
        return "collapsing"
    return "metastable" if p.a >= thr.collapse else "balanced"


def theory_report(params: RouterParams, top_k: int = 1) -> dict:
    """Everything the theory says at ``params``, as one JSON-ready dict (``moebif theory
    --json``): ``params``, ``critical_a`` (the linear threshold), ``kappa`` (``a / critical_a``),
    ``regime``, ``uniform_state_eigenvalues``; for two experts ``hysteresis_halfwidth`` and the
    ``equilibria`` (sorted by ``y``); for ``N >= 3`` ``collapse_a`` and the symmetric
    equilibria; for top-k (``top_k > 1``) ``top_k``, ``collapse_a`` and ``collapse_winners``."""
    p = params
    if top_k > 1:
        from .topk import topk_uniform_slope

        thr = thresholds(p.n_experts, top_k, p.gamma, p.T)
        alpha = topk_uniform_slope(p.n_experts, top_k)
        return {
            "params": p.to_dict(),
            "top_k": top_k,
            "critical_a": thr.linear,
            "kappa": p.a / thr.linear,
            "collapse_a": thr.collapse,
            "collapse_winners": thr.winners,
            "regime": regime(p, top_k),
            "uniform_state_eigenvalues": {
                "common": -p.gamma,
                "contrast": p.a * alpha / (top_k * p.T) - p.gamma,
                "contrast_multiplicity": p.n_experts - 1,
            },
        }
    from . import symmetric, two_expert

    out: dict = {
        "params": p.to_dict(),
        "critical_a": p.critical_a,
        "kappa": p.kappa,
        "uniform_state_eigenvalues": two_expert.uniform_state_eigenvalues(p),
    }
    out["regime"] = regime(p)
    if p.n_experts == 2:
        out["hysteresis_halfwidth"] = two_expert.hysteresis_halfwidth(p.a, p.gamma, p.T)
        out["equilibria"] = [e.to_dict() for e in two_expert.equilibria(p)]
    else:
        out["collapse_a"] = thresholds(p.n_experts, 1, p.gamma, p.T).collapse
        out["equilibria"] = [e.to_dict() for e in symmetric.symmetric_equilibria(p)]
    return out
