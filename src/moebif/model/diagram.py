"""The bifurcation diagram of the N-expert router, eq. (8) (top-1) or (8k) (top-k): every
symmetric "m winners" branch against ``a / (gamma T)``, with stability, the folds and the two
thresholds (:mod:`.thresholds`). Pure data (JSON-ready); the figure is drawn by
:func:`moebif.experiments.many_branches.plot_diagram`."""

from __future__ import annotations

import math

import numpy as np

from .symmetric import branch_curve, saddle_node_gap, winner_load
from .thresholds import thresholds
from .topk import topk_branch

__all__ = ["branch_diagram"]


def branch_diagram(
    n: int, *, top_k: int = 1, a_max: float | None = None, points: int = 500
) -> dict:
    """Branches of the symmetric equilibria of (8) (``top_k = 1``) or (8k), in units
    ``gamma = T = 1`` (``a`` stands for ``a / (gamma T)``): JSON-ready."""
    thr = thresholds(n, top_k)
    a_lin, a_sn = thr.linear, thr.collapse
    ms = range(1, n) if top_k == 1 else range(1, min(n - 1, 2 * top_k + 1) + 1)
    a_max = a_max or 1.35 * a_lin
    branches = []
    for m in ms:
        if n == 2 and m == 1:
            # the pitchfork: both signs of d on the one branch
            d = np.geomspace(1e-4, a_max + 10.0, points)
        else:
            d = np.geomspace(1e-4, a_max / m + 2.0 * math.log(n) + 10.0, points)
        if top_k == 1:
            br = branch_curve(n, m, d)
        else:
            d = np.geomspace(2e-3, a_max / m + 2.0 * math.log(n) + 10.0, min(points, 160))
            br = topk_branch(n, top_k, m, d)
        keep = br.ratio <= a_max
        branches.append(
            {
                "winners": m,
                "d": d[keep],
                "a": br.ratio[keep],
                "max_load": br.max_load[keep],
                "stable": br.stable[keep],
            }
        )
    folds = []
    if top_k > 1 and branches[0]["a"].size:
        # the fold of the one-winner branch (its smallest a), from the samples
        b1 = branches[0]
        i = int(np.argmin(b1["a"]))
        folds = [{"winners": 1, "a": float(b1["a"][i]), "max_load": float(b1["max_load"][i])}]
    if top_k == 1:
        folds = [
            {
                "winners": m,
                "a": saddle_node_gap(n, m)[1],
                "max_load": winner_load(n, m, saddle_node_gap(n, m)[0]),
            }
            for m in range(1, n)
            if 2 * m < n
        ]
    return {
        "n_experts": n,
        "top_k": top_k,
        "linear_threshold": a_lin,
        "collapse_threshold": a_sn,
        "a_max": a_max,
        "uniform_load": 1.0 / n,
        "branches": branches,
        "folds": folds,
    }
