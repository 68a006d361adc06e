"""Router modules named as such (``...Router``, ``...Gate``, ``...Gating``: every MoE family of
transformers 5.x, and the 4.x routers that return their choice): the selection is read from the
router's own output (indices ``(..., k)``, a one-hot or capacity mask ``(..., N)``, NLLB's dense
gate matrix), else from the indices its block hands its ``experts`` module (DBRX), else top-k of
its scores; the scoring (softmax, sigmoid, or the router's own function) gives the importance."""

from __future__ import annotations

import re

from .base import Route, RouterAdapter
from .inspection import experts_dispatch, int_attr, is_router_name, router_k, router_n, scoring

__all__ = ["NamedRouterAdapter"]


class NamedRouterAdapter(RouterAdapter):
    name = "named-router"
    layout = (
        "router module: selection from its output (indices, mask, gates), else from its "
        "block's experts(index) call, else top-k of its scores"
    )

    def match(self, label, module, parent, config) -> Route | None:
        if not is_router_name(module):
            return None
        name = type(module).__name__
        gate_like = not name.lower().endswith("router")
        if gate_like and int_attr(module, "top_k") is None:
            return None  # ForgetGate, MessageGate, ...: not routers
        n, k = router_n(module), router_k(module, parent, config)
        if n is None or k is None or not 1 <= k < n:
            return None
        sel = "gates" if re.search(r"Nllb\w*Top2Router$", name) else "auto"
        r = Route(label, module, n, k, selection=sel)
        r.scores, r.score_fn, r.probabilities = scoring(module, parent)
        r.dispatch = experts_dispatch(parent)
        r.adapter = self.name
        return r
