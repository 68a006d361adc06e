"""Choosing the fitting window of a finished log (``moebif diagnose --window auto``).

``eta gamma`` (needed to express the recommended window in steps) is fitted on the stretch of the
log before the first load excursion, since a collapse inside the fitted stretch would pass for a
slow relaxation.
"""

from __future__ import annotations

import numpy as np

__all__ = ["auto_window", "first_excursion"]


def first_excursion(loads, top_k: int, level: float = 0.25) -> int:
    """First step at which the max-load excess ``(l_max - 1/N) / (1/k - 1/N)`` of the loads
    averaged over ``max(4, S // 100)`` steps reaches ``level`` (the monitor's ``excursion``);
    ``S`` if it never does."""
    from ..monitor import max_load_excess

    S, n = loads.shape
    m = max(4, S // 100)
    if S < m:
        return S
    c = np.cumsum(np.vstack([np.zeros((1, n)), loads]), axis=0)
    avg = (c[m:] - c[:-m]) / m  # avg[i]: mean of steps i .. i + m - 1
    ex = max_load_excess(avg.max(axis=1), n, top_k)
    hit = np.nonzero(ex >= level)[0]
    return int(hit[0]) if hit.size else S


def auto_window(counts, n: int, top_k: int = 1) -> tuple[int, float | None, int | None]:
    """``(window, eta gamma, recommended window)`` for ``--window auto``.

    ``eta gamma`` (needed to express the recommended window in steps) is fitted on the stretch
    of the log before the first load excursion: a collapse inside the fitted stretch would pass
    for a slow relaxation. The window is the recommended one, at most the whole log; when the
    log has an excursion, at most the longer of the pre-excursion stretch and a quarter of the
    log (the monitor's ``dwell``, half a window, must fit between a collapse and the end of the
    log for a recovery to show). When the pre-excursion stretch is too short (< 64 steps) or
    does not resolve ``eta gamma``, the window is that maximum and ``eta gamma`` is left to the
    monitor."""
    from ..monitor import fit_whittle, load_fractions, recommended_window

    S = counts.shape[0]
    loads = load_fractions(counts)
    P = first_excursion(loads, top_k)
    cap = S if P == S else max(32, S // 4)
    pre = loads[:P]
    block = max(1, P // 2048)
    M = P // block
    if P < 64 or M < 32:
        return cap, None, None
    bm = pre[: M * block].reshape(M, block, n).mean(axis=1)
    try:
        fit = fit_whittle(bm, block=block, n_experts=n)
    except ValueError:
        return cap, None, None
    if fit.at_edge or not 0.0 < fit.eta_gamma < 1.0:
        return cap, None, None
    rec = recommended_window(n, fit.eta_gamma)
    return int(np.clip(rec, 32, cap)), fit.eta_gamma, rec
