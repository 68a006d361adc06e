"""Result records shared by the N-expert drivers (:mod:`.topk_router`, :mod:`.balanced_router`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..params import RouterParams

__all__ = ["NExpertRun"]


@dataclass(frozen=True, eq=False)
class NExpertRun:
    """Result of :func:`simulate_topk_router`.

    - ``t``: ODE time at the start of each record window, shape ``(K,)``.
    - ``loads``: mean load ``count_i / (k B)`` over each window, shape ``(runs, K, N)``
      (windows after a replica stopped hold zeros; ``K = 0`` when nothing was recorded).
    - ``a_t``, ``h_t``: feedback and skew amplitude at the start of each window, ``(K,)``.
    - ``scores``: the final scores, shape ``(runs, N)``.
    - ``hit``: step of the first passage ``max r - mean r >= stop_gap`` (-1: none), ``(runs,)``;
      ``hit_time = hit * eta`` (NaN: none).
    """

    t: np.ndarray
    loads: np.ndarray
    a_t: np.ndarray
    h_t: np.ndarray
    scores: np.ndarray
    hit: np.ndarray
    params: RouterParams
    top_k: int
    batch: int
    eta: float
    steps: int
    runs: int
    seed: int
    rho: float
    record_every: int
    seconds: float

    @property
    def hit_time(self) -> np.ndarray:
        return np.where(self.hit >= 0, self.hit * self.eta, np.nan)

    @property
    def max_load(self) -> np.ndarray:
        """Largest expert load in each window, shape ``(runs, K)``."""
        return self.loads.max(axis=2)
